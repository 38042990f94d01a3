//! Loaders and validation for recommendation data: LightGCN split files, MMRec `.inter` files, and item (or
//! user) feature matrices in `.npy`.
//!
//! Every problem is an [`Error`] naming the file and, for text files, the 1-based line: a malformed token,
//! an id out of range, ids that are not contiguous, users present only in the test split, feature rows that do
//! not match the item count, NaN/Inf features, an empty training split.

use crate::error::{Error, Result};
use ndarray::Array2;
use std::path::Path;

/// A `(user, item)` interaction.
pub type Pair = (usize, usize);

/// A dataset: train / valid / test interactions and named item feature matrices (rows = item ids).
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Number of users (ids `0..n_users`).
    pub n_users: usize,
    /// Number of items (ids `0..n_items`).
    pub n_items: usize,
    /// Training interactions (unique pairs, sorted).
    pub train: Vec<Pair>,
    /// Validation interactions.
    pub valid: Vec<Pair>,
    /// Test interactions.
    pub test: Vec<Pair>,
    /// Item features by name, each `n_items x d_m`, f32.
    pub item_features: Vec<(String, Array2<f32>)>,
}

fn read_text(op: &'static str, path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::Io {
        op,
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

fn data_err(path: &Path, line: usize, reason: impl Into<String>) -> Error {
    Error::Data {
        path: path.display().to_string(),
        line,
        reason: reason.into(),
    }
}

/// Reads a LightGCN split file: one line per user, `user item item ...`, whitespace separated, 0-based ids.
/// Blank lines and lines with a user and no items are allowed.
///
/// # Errors
/// [`Error::Io`] when the file cannot be read; [`Error::Data`] with the line number for a token that is not
/// a non-negative integer.
pub fn read_lightgcn_split(path: impl AsRef<Path>) -> Result<Vec<Pair>> {
    let path = path.as_ref();
    let text = read_text("read_lightgcn_split", path)?;
    let mut pairs = Vec::new();
    for (no, line) in text.lines().enumerate() {
        let mut ids = line.split_whitespace().map(|tok| {
            tok.parse::<usize>().map_err(|_| {
                data_err(
                    path,
                    no + 1,
                    format!("`{tok}` is not a non-negative integer id"),
                )
            })
        });
        if let Some(user) = ids.next() {
            let user = user?;
            for item in ids {
                pairs.push((user, item?));
            }
        }
    }
    Ok(pairs)
}

/// Reads an MMRec `.inter` file: a tab-separated header naming at least `userID`, `itemID` and `x_label`, then
/// one interaction per line; `x_label` 0 = train, 1 = valid, 2 = test. Returns `(train, valid, test)`.
///
/// # Errors
/// [`Error::Io`]; [`Error::Data`] for a missing column in the header, a line with too few fields, a non-integer
/// id, or an `x_label` other than 0, 1, 2 (with its line number).
pub fn read_mmrec_inter(path: impl AsRef<Path>) -> Result<(Vec<Pair>, Vec<Pair>, Vec<Pair>)> {
    let path = path.as_ref();
    let text = read_text("read_mmrec_inter", path)?;
    let mut lines = text.lines().enumerate();
    let header = lines.next().map(|(_, h)| h).unwrap_or_default();
    let cols: Vec<&str> = header.split('\t').map(str::trim).collect();
    let col = |name: &str| {
        cols.iter().position(|c| *c == name).ok_or_else(|| {
            data_err(
                path,
                1,
                format!("header has no `{name}` column: {header:?}"),
            )
        })
    };
    let (cu, ci, cx) = (col("userID")?, col("itemID")?, col("x_label")?);
    let need = cu.max(ci).max(cx) + 1;
    let mut splits = (Vec::new(), Vec::new(), Vec::new());
    for (no, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split('\t').map(str::trim).collect();
        if f.len() < need {
            return Err(data_err(
                path,
                no + 1,
                format!("{} fields, the header needs {need}", f.len()),
            ));
        }
        let int = |k: usize, what: &str| {
            f[k].parse::<usize>().map_err(|_| {
                data_err(
                    path,
                    no + 1,
                    format!("{what} `{}` is not a non-negative integer", f[k]),
                )
            })
        };
        let pair = (int(cu, "userID")?, int(ci, "itemID")?);
        match int(cx, "x_label")? {
            0 => splits.0.push(pair),
            1 => splits.1.push(pair),
            2 => splits.2.push(pair),
            x => {
                return Err(data_err(
                    path,
                    no + 1,
                    format!("x_label {x} is not 0 (train), 1 (valid) or 2 (test)"),
                ))
            }
        }
    }
    Ok(splits)
}

/// Reads a feature matrix from `.npy` (float32 or float64, C order), as f32.
///
/// # Errors
/// [`Error::Io`] for a missing file or an unsupported dtype / shape; [`Error::Data`] for NaN/Inf (naming the
/// row).
pub fn read_features(path: impl AsRef<Path>) -> Result<Array2<f32>> {
    use ndarray_npy::{read_npy, ReadNpyError};
    let path = path.as_ref();
    let io = |e: ReadNpyError| Error::Io {
        op: "read_features",
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let x: Array2<f32> = match read_npy::<_, Array2<f32>>(path) {
        Ok(x) => x,
        Err(ReadNpyError::WrongDescriptor(_)) => read_npy::<_, Array2<f64>>(path)
            .map_err(io)?
            .mapv(|v| v as f32),
        Err(e) => return Err(io(e)),
    };
    if let Some((i, _)) = x
        .rows()
        .into_iter()
        .enumerate()
        .find(|(_, r)| r.iter().any(|v| !v.is_finite()))
    {
        return Err(data_err(
            path,
            0,
            format!("row {i} (item {i}) has a NaN or infinite feature"),
        ));
    }
    Ok(x)
}

impl Dataset {
    /// Loads a LightGCN-format folder (`train.txt`, `valid.txt` (optional), `test.txt`) and the named `.npy`
    /// item features in it, and validates the whole.
    ///
    /// # Errors
    /// As the readers, and as [`Dataset::validate`].
    ///
    /// # Example
    /// ```
    /// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/data/lfm2k");
    /// let ds = recgoat_core::data::Dataset::load_lightgcn_dir(dir, &["text_feat"]).unwrap();
    /// assert_eq!((ds.n_users, ds.n_items, ds.train.len()), (1858, 1425, 44_327));
    /// assert_eq!(ds.item_features[0].1.dim(), (1425, 384));
    /// ```
    pub fn load_lightgcn_dir(dir: impl AsRef<Path>, features: &[&str]) -> Result<Self> {
        let dir = dir.as_ref();
        let train = read_lightgcn_split(dir.join("train.txt"))?;
        let valid_path = dir.join("valid.txt");
        let valid = if valid_path.exists() {
            read_lightgcn_split(&valid_path)?
        } else {
            Vec::new()
        };
        let test = read_lightgcn_split(dir.join("test.txt"))?;
        let item_features = features
            .iter()
            .map(|name| {
                Ok((
                    name.to_string(),
                    read_features(dir.join(format!("{name}.npy")))?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Dataset::new(dir, train, valid, test, item_features)
    }

    /// A dataset from interactions, with the id counts inferred and everything validated (`source` names the
    /// data in error messages).
    ///
    /// # Errors
    /// As [`Dataset::validate`].
    pub fn new(
        source: impl AsRef<Path>,
        train: Vec<Pair>,
        valid: Vec<Pair>,
        test: Vec<Pair>,
        item_features: Vec<(String, Array2<f32>)>,
    ) -> Result<Self> {
        let all = train.iter().chain(&valid).chain(&test);
        let n_users = all.clone().map(|p| p.0 + 1).max().unwrap_or(0);
        let n_items = all.map(|p| p.1 + 1).max().unwrap_or(0);
        let mut train = train;
        train.sort_unstable();
        train.dedup();
        let ds = Dataset {
            n_users,
            n_items,
            train,
            valid,
            test,
            item_features,
        };
        ds.validate(source.as_ref())?;
        Ok(ds)
    }

    /// Checks the dataset: a non-empty training split, contiguous user ids all present in training (no user
    /// only in valid/test), contiguous item ids (every id in some split), and feature matrices with one finite
    /// row per item.
    ///
    /// # Errors
    /// [`Error::Data`] naming the problem and the offending id or matrix.
    pub fn validate(&self, source: &Path) -> Result<()> {
        let err = |reason: String| Err(data_err(source, 0, reason));
        if self.train.is_empty() {
            return err("the training split is empty".into());
        }
        for (name, split) in [
            ("train", &self.train),
            ("valid", &self.valid),
            ("test", &self.test),
        ] {
            if let Some(p) = split
                .iter()
                .find(|p| p.0 >= self.n_users || p.1 >= self.n_items)
            {
                return err(format!(
                    "{name}: pair {p:?} out of range ({} users, {} items)",
                    self.n_users, self.n_items
                ));
            }
        }
        let mut user_in_train = vec![false; self.n_users];
        for p in &self.train {
            user_in_train[p.0] = true;
        }
        for (name, split) in [("valid", &self.valid), ("test", &self.test)] {
            if let Some(p) = split.iter().find(|p| !user_in_train[p.0]) {
                return err(format!(
                    "user {} appears in {name} but has no training interaction",
                    p.0
                ));
            }
        }
        if let Some(u) = user_in_train.iter().position(|&t| !t) {
            return err(format!(
                "user ids are not contiguous: user {u} has no interaction"
            ));
        }
        let mut item_seen = vec![false; self.n_items];
        for p in self.train.iter().chain(&self.valid).chain(&self.test) {
            item_seen[p.1] = true;
        }
        if let Some(i) = item_seen.iter().position(|&t| !t) {
            return err(format!(
                "item ids are not contiguous: item {i} has no interaction"
            ));
        }
        for (name, f) in &self.item_features {
            if f.nrows() != self.n_items {
                return err(format!(
                    "features `{name}` have {} rows for {} items",
                    f.nrows(),
                    self.n_items
                ));
            }
            if let Some(k) = f.iter().position(|v| !v.is_finite()) {
                return err(format!(
                    "features `{name}`: row {} has a NaN or infinite value",
                    k / f.ncols().max(1)
                ));
            }
        }
        Ok(())
    }
}

/// Each user's profile: the mean of the feature rows of the user's training items, the feature matrices
/// `feats` (one row per item) side by side; zeros for a user without training items.
///
/// # Example
/// ```
/// let f = ndarray::array![[1.0f32, 0.0], [0.0, 2.0]];
/// let p = recgoat_core::data::user_profiles(2, &[(0, 0), (0, 1)], &[&f]);
/// assert_eq!(p, ndarray::array![[0.5, 1.0], [0.0, 0.0]]);
/// ```
///
/// # Panics
/// When a pair names a user or an item beyond the profiles or the features (a validated dataset's pairs
/// never do).
pub fn user_profiles<F: crate::simd::Real>(
    n_users: usize,
    train: &[Pair],
    feats: &[&Array2<F>],
) -> Array2<F> {
    let width: usize = feats.iter().map(|x| x.ncols()).sum();
    let mut profiles = Array2::<F>::zeros((n_users, width));
    let mut counts = vec![0usize; n_users];
    for &(u, i) in train {
        counts[u] += 1;
        let mut col = 0;
        for x in feats {
            let w = x.ncols();
            profiles
                .slice_mut(ndarray::s![u, col..col + w])
                .scaled_add(F::one(), &x.row(i));
            col += w;
        }
    }
    for (mut r, &c) in profiles.rows_mut().into_iter().zip(&counts) {
        let n = F::from_usize(c.max(1)).unwrap_or_else(F::one);
        r.mapv_inplace(|v| v / n);
    }
    profiles
}
