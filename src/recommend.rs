//! Serving a trained model: [`Recommender`] holds the final user and item vectors (a score is their dot
//! product) and each user's training items, saved and loaded on its own, without the training data.
//!
//! # Example
//! ```
//! use recgoat_core::recommend::Recommender;
//! use ndarray::array;
//! let users = array![[1.0f32, 0.0], [0.0, 1.0]];
//! let items = array![[0.9f32, 0.1], [0.2, 0.8], [0.5, 0.5]];
//! let rec = Recommender::new(users, items, vec![vec![0], vec![]]).unwrap();
//! // user 0 has seen item 0: its best unseen item is 2
//! let top = rec.recommend(&[0, 1], 2).unwrap();
//! assert_eq!(top[0].iter().map(|r| r.0).collect::<Vec<_>>(), vec![2, 1]);
//! assert_eq!(top[1][0].0, 1);
//! assert!((rec.score(&[(1, 2)]).unwrap()[0] - 0.5).abs() < 1e-6);
//! ```

use crate::backend::{map_chunks, Par};
use crate::data::IdMap;
use crate::error::{check_finite_array, Error, Result};
use crate::io::{content_checksum, write_atomic};
use ndarray::{Array2, ArrayView2};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::HashMap;
use std::path::Path;

/// Format tag of a saved [`Recommender`].
pub const FORMAT: &str = "recgoat-core/recommender-v1";

/// Users scored together: a block of `BLOCK x items` scores at a time, never a users x items matrix.
const BLOCK: usize = 64;

/// Top-k items for users, scores for pairs and item neighbours, from final user and item vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct Recommender {
    users: Array2<f32>,
    items: Array2<f32>,
    /// Each user's items to leave out of recommendations (the training items), sorted.
    seen: Vec<Vec<u32>>,
    /// The original user and item ids, when the data had its own.
    ids: Option<IdMap>,
    par: Par,
}

fn bad(what: &str, reason: impl Into<String>) -> Error {
    Error::param("Recommender", "input", what.to_string(), reason)
}

impl Recommender {
    /// A recommender from final user vectors (`U x d`), item vectors (`I x d`) and each user's seen items
    /// (one list per user, or none at all), parallel over users with rayon.
    ///
    /// # Errors
    /// [`Error::Shape`] for widths that differ or a seen list per user that does not match; [`Error::Param`]
    /// for a seen item out of range; [`Error::NonFinite`] for NaN/Inf vectors.
    pub fn new(users: Array2<f32>, items: Array2<f32>, seen: Vec<Vec<usize>>) -> Result<Self> {
        const OP: &str = "Recommender::new";
        if users.ncols() != items.ncols() {
            return Err(Error::shape(
                OP,
                "item width vs user width",
                users.ncols(),
                items.ncols(),
            ));
        }
        check_finite_array(OP, "users", &users.view())?;
        check_finite_array(OP, "items", &items.view())?;
        let seen = if seen.is_empty() {
            vec![Vec::new(); users.nrows()]
        } else if seen.len() != users.nrows() {
            return Err(Error::shape(
                OP,
                "seen lists (one per user)",
                users.nrows(),
                seen.len(),
            ));
        } else {
            let n = items.nrows();
            seen.into_iter()
                .enumerate()
                .map(|(u, mut s)| {
                    s.sort_unstable();
                    s.dedup();
                    match s.iter().find(|&&i| i >= n) {
                        Some(i) => Err(bad(
                            &format!("seen[{u}]"),
                            format!("item {i} out of range ({n} items)"),
                        )),
                        None => Ok(s.into_iter().map(|i| i as u32).collect()),
                    }
                })
                .collect::<Result<Vec<_>>>()?
        };
        Ok(Recommender {
            users,
            items,
            seen,
            ids: None,
            par: Par::rayon(),
        })
    }

    /// The recommender of a trainer's current parameters (call [`crate::model::Trainer::finish`] first for
    /// the best epoch's), leaving out each user's training items.
    ///
    /// # Errors
    /// The forward pass's errors.
    pub fn from_trainer(t: &crate::model::Trainer<'_>) -> Result<Self> {
        let (users, items) = t.embeddings()?;
        let mut seen = vec![Vec::new(); users.nrows()];
        for &(u, i) in &t.data.train {
            seen[u].push(i);
        }
        Recommender::new(users, items, seen)
    }

    /// The same recommender knowing the original ids behind its contiguous ones (saved with it).
    ///
    /// # Errors
    /// [`Error::Shape`] when the map does not have one id per user and per item.
    pub fn with_ids(mut self, ids: IdMap) -> Result<Self> {
        if (ids.users.len(), ids.items.len()) != self.shape() {
            return Err(Error::shape(
                "Recommender::with_ids",
                "ids (users, items)",
                self.shape(),
                (ids.users.len(), ids.items.len()),
            ));
        }
        self.ids = Some(ids);
        Ok(self)
    }

    /// The original ids, when known.
    pub fn ids(&self) -> Option<&IdMap> {
        self.ids.as_ref()
    }

    /// The same recommender running on `par`.
    pub fn with_par(mut self, par: Par) -> Self {
        self.par = par;
        self
    }

    /// `(users, items)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.users.nrows(), self.items.nrows())
    }

    fn check_user(&self, u: usize) -> Result<()> {
        if u >= self.users.nrows() {
            return Err(bad(
                "user",
                format!("{u} out of range ({} users)", self.users.nrows()),
            ));
        }
        Ok(())
    }

    /// The `k` best items for each of `users` with the user's seen items left out, best first, as
    /// `(item, score)`; ties go to the smaller item id. Users are scored in blocks, in parallel.
    ///
    /// # Errors
    /// [`Error::Param`] for a user out of range or `k == 0`.
    pub fn recommend(&self, users: &[usize], k: usize) -> Result<Vec<Vec<(usize, f32)>>> {
        self.recommend_excluding(users, k, |u| &self.seen[u])
    }

    /// [`Recommender::recommend`] leaving out, for user `u`, the sorted items `exclude(u)` instead of its
    /// seen ones.
    ///
    /// # Errors
    /// As [`Recommender::recommend`].
    pub fn recommend_excluding<'a>(
        &'a self,
        users: &[usize],
        k: usize,
        exclude: impl Fn(usize) -> &'a [u32] + Sync,
    ) -> Result<Vec<Vec<(usize, f32)>>> {
        if k == 0 {
            return Err(bad("k", "must be >= 1"));
        }
        for &u in users {
            self.check_user(u)?;
        }
        let blocks: Vec<&[usize]> = users.chunks(BLOCK).collect();
        let out = map_chunks(self.par, blocks.len(), |_, range| {
            let mut res = Vec::new();
            for block in &blocks[range] {
                let rows = Array2::from_shape_fn((block.len(), self.users.ncols()), |(r, c)| {
                    self.users[[block[r], c]]
                });
                let scores = rows.dot(&self.items.t());
                for (r, &u) in block.iter().enumerate() {
                    res.push(top_k(
                        scores.row(r).as_slice().unwrap_or(&[]),
                        k,
                        exclude(u),
                    ));
                }
            }
            res
        });
        Ok(out.into_iter().flatten().collect())
    }

    /// The scores of `(user, item)` pairs.
    ///
    /// # Errors
    /// [`Error::Param`] for an id out of range.
    pub fn score(&self, pairs: &[(usize, usize)]) -> Result<Vec<f32>> {
        pairs
            .iter()
            .map(|&(u, i)| {
                self.check_user(u)?;
                if i >= self.items.nrows() {
                    return Err(bad(
                        "item",
                        format!("{i} out of range ({} items)", self.items.nrows()),
                    ));
                }
                Ok(self.users.row(u).dot(&self.items.row(i)))
            })
            .collect()
    }

    /// The `k` items nearest to `item` by cosine similarity of their vectors (the item itself left out).
    ///
    /// # Errors
    /// [`Error::Param`] for an item out of range or `k == 0`.
    pub fn similar_items(&self, item: usize, k: usize) -> Result<Vec<(usize, f32)>> {
        let n = self.items.nrows();
        if item >= n {
            return Err(bad("item", format!("{item} out of range ({n} items)")));
        }
        if k == 0 {
            return Err(bad("k", "must be >= 1"));
        }
        let norm = |r: ndarray::ArrayView1<'_, f32>| r.dot(&r).sqrt().max(f32::MIN_POSITIVE);
        let q = self.items.row(item);
        let qn = norm(q);
        let sims: Vec<f32> = (0..n)
            .map(|j| self.items.row(j).dot(&q) / (norm(self.items.row(j)) * qn))
            .collect();
        Ok(top_k(&sims, k, &[item as u32]))
    }

    /// Saves the vectors and the seen items (safetensors, atomically) with the format tag [`FORMAT`].
    ///
    /// # Errors
    /// [`Error::Write`] when the file cannot be written.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let err = |e: safetensors::SafeTensorError| Error::Write {
            op: "Recommender::save",
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let f32s = |a: &Array2<f32>| a.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
        let indptr: Vec<u8> = std::iter::once(0u64)
            .chain(self.seen.iter().scan(0u64, |acc, s| {
                *acc += s.len() as u64;
                Some(*acc)
            }))
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let indices: Vec<u8> = self
            .seen
            .iter()
            .flatten()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let (u, i) = (f32s(&self.users), f32s(&self.items));
        let nnz = self.seen.iter().map(Vec::len).sum::<usize>();
        let views = vec![
            (
                "users",
                TensorView::new(Dtype::F32, self.users.shape().to_vec(), &u),
            ),
            (
                "items",
                TensorView::new(Dtype::F32, self.items.shape().to_vec(), &i),
            ),
            (
                "seen_indptr",
                TensorView::new(Dtype::U64, vec![self.seen.len() + 1], &indptr),
            ),
            (
                "seen_indices",
                TensorView::new(Dtype::U32, vec![nnz], &indices),
            ),
        ];
        let views = views
            .into_iter()
            .map(|(n, v)| v.map(|v| (n.to_string(), v)))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(err)?;
        let mut meta: HashMap<String, String> = [("format".to_string(), FORMAT.to_string())].into();
        if let Some(ids) = &self.ids {
            meta.insert("ids".into(), serde_json::to_string(ids).unwrap_or_default());
        }
        let sum = content_checksum(views.iter().cloned(), &meta);
        meta.insert("checksum".into(), sum);
        let bytes = safetensors::tensor::serialize(views, Some(meta)).map_err(err)?;
        write_atomic(path, &bytes)
    }

    /// Loads a recommender saved by [`Recommender::save`], checking its format tag, shapes and values.
    ///
    /// # Errors
    /// [`Error::Io`] for an unreadable file; [`Error::Checkpoint`] for another format or a malformed file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::Io {
            op: "Recommender::load",
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let fail = |reason: String| Error::Checkpoint {
            path: path.display().to_string(),
            reason,
        };
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| fail(format!("not a readable safetensors file: {e}")))?;
        let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| fail(e.to_string()))?;
        let format = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("format").cloned());
        if format.as_deref() != Some(FORMAT) {
            return Err(fail(format!("format {format:?}, expected {FORMAT:?}")));
        }
        let m = meta.metadata().clone().unwrap_or_default();
        let want = content_checksum(st.tensors().into_iter(), &m);
        if m.get("checksum") != Some(&want) {
            return Err(fail(format!(
                "checksum {:?} does not match its contents ({want}): the file is corrupt or was edited",
                m.get("checksum")
            )));
        }
        let tensor = |name: &str, dtype: Dtype| {
            let t = st
                .tensor(name)
                .map_err(|_| fail(format!("tensor `{name}` missing")))?;
            if t.dtype() != dtype {
                return Err(fail(format!(
                    "tensor `{name}` is {:?}, expected {dtype:?}",
                    t.dtype()
                )));
            }
            Ok(t)
        };
        let matrix = |name: &str| -> Result<Array2<f32>> {
            let t = tensor(name, Dtype::F32)?;
            let &[r, c] = t.shape() else {
                return Err(fail(format!(
                    "tensor `{name}` is not a matrix: {:?}",
                    t.shape()
                )));
            };
            let v: Vec<f32> = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            Array2::from_shape_vec((r, c), v).map_err(|e| fail(format!("tensor `{name}`: {e}")))
        };
        let (users, items) = (matrix("users")?, matrix("items")?);
        let u64s: Vec<u64> = tensor("seen_indptr", Dtype::U64)?
            .data()
            .chunks_exact(8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
            .collect();
        let idx: Vec<u32> = tensor("seen_indices", Dtype::U32)?
            .data()
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let ok = u64s.len() == users.nrows() + 1
            && u64s.first() == Some(&0)
            && u64s.last() == Some(&(idx.len() as u64))
            && u64s.windows(2).all(|w| w[0] <= w[1]);
        if !ok {
            return Err(fail("seen_indptr does not index seen_indices".into()));
        }
        let seen = u64s
            .windows(2)
            .map(|w| {
                idx[w[0] as usize..w[1] as usize]
                    .iter()
                    .map(|&i| i as usize)
                    .collect()
            })
            .collect();
        let rec = Recommender::new(users, items, seen).map_err(|e| fail(e.to_string()))?;
        match meta.metadata().as_ref().and_then(|m| m.get("ids")) {
            Some(json) => {
                let ids: IdMap =
                    serde_json::from_str(json).map_err(|e| fail(format!("ids: {e}")))?;
                rec.with_ids(ids).map_err(|e| fail(e.to_string()))
            }
            None => Ok(rec),
        }
    }

    /// The final user vectors.
    pub fn user_vectors(&self) -> ArrayView2<'_, f32> {
        self.users.view()
    }

    /// The final item vectors.
    pub fn item_vectors(&self) -> ArrayView2<'_, f32> {
        self.items.view()
    }
}

/// The `k` largest of `scores` outside the sorted `exclude`, best first, ties to the smaller index.
fn top_k(scores: &[f32], k: usize, exclude: &[u32]) -> Vec<(usize, f32)> {
    let mut cand: Vec<(usize, f32)> = scores
        .iter()
        .enumerate()
        .filter(|(j, _)| exclude.binary_search(&(*j as u32)).is_err())
        .map(|(j, &s)| (j, s))
        .collect();
    let order = |a: &(usize, f32), b: &(usize, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let k = k.min(cand.len());
    if k < cand.len() {
        cand.select_nth_unstable_by(k, order);
        cand.truncate(k);
    }
    cand.sort_by(order);
    cand
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference: every score, sorted.
    fn brute(rec: &Recommender, u: usize, k: usize) -> Vec<usize> {
        let mut all: Vec<(usize, f32)> = (0..rec.items.nrows())
            .filter(|i| !rec.seen[u].contains(&(*i as u32)))
            .map(|i| (i, rec.users.row(u).dot(&rec.items.row(i))))
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        all.into_iter().take(k).map(|x| x.0).collect()
    }

    #[test]
    fn top_k_matches_brute_force_and_survives_a_round_trip() {
        let mut r = crate::testing::rng(3);
        let users = crate::testing::randn::<f32, _, _>(&mut r, (150, 8));
        let items = crate::testing::randn::<f32, _, _>(&mut r, (90, 8));
        let seen: Vec<Vec<usize>> = (0..150)
            .map(|u| (0..u % 7).map(|k| (u * 3 + k * 11) % 90).collect())
            .collect();
        let ids = IdMap {
            users: (0..150).map(|u| format!("u{u}")).collect(),
            items: (0..90).map(|i| format!("i{i}")).collect(),
        };
        let rec = Recommender::new(users, items, seen)
            .unwrap()
            .with_ids(ids)
            .unwrap();
        let all: Vec<usize> = (0..150).collect();
        for par in [Par::Seq, Par::Rayon(3)] {
            let got = rec.clone().with_par(par).recommend(&all, 10).unwrap();
            for (u, top) in got.iter().enumerate() {
                let ids: Vec<usize> = top.iter().map(|x| x.0).collect();
                assert_eq!(ids, brute(&rec, u, 10), "user {u}");
            }
        }
        let path =
            std::env::temp_dir().join(format!("recgoat-rec-{}.safetensors", std::process::id()));
        rec.save(&path).unwrap();
        assert_eq!(Recommender::load(&path).unwrap(), rec);
        std::fs::remove_file(&path).unwrap();
        let sim = rec.similar_items(4, 5).unwrap();
        assert_eq!(sim.len(), 5);
        assert!(sim.iter().all(|x| x.0 != 4) && sim.windows(2).all(|w| w[0].1 >= w[1].1));
        assert!(rec.recommend(&[150], 3).is_err() && rec.recommend(&[0], 0).is_err());
        assert!(rec.score(&[(0, 90)]).is_err());
    }
}
