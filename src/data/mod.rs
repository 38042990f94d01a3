//! Loaders and validation for recommendation data: LightGCN split files, MMRec `.inter` files, and item (or
//! user) feature matrices in `.npy`.
//!
//! Every problem is an [`Error`] naming the file and, for text files, the 1-based line: a malformed token,
//! an id out of range, ids that are not contiguous, users present only in the test split, feature rows that do
//! not match the item count, NaN/Inf features, an empty training split.

mod batch;
mod cold;
mod interactions;
mod synthetic;

pub use batch::Batch;
pub use interactions::{
    read_interactions, read_interactions_with, Column, IdMap, Interactions, ReadOptions,
};
pub use synthetic::{clustered_features, scale_up, MAX_SCALED_INTERACTIONS, MAX_SYNTHETIC_VALUES};

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
    /// User features by name, each `n_users x d`, f32: the user-user branch's profiles when given (see
    /// [`Dataset::with_user_features`]).
    pub user_features: Vec<(String, Array2<f32>)>,
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

/// The largest user or item id the loaders accept: ids index 32-bit graph offsets (on the GPU too).
pub const MAX_ID: usize = u32::MAX as usize - 1;

/// A non-negative integer id of at most [`MAX_ID`], or the error naming `path`, `line` and the token.
fn parse_id(tok: &str, path: &Path, line: usize, what: &str) -> Result<usize> {
    let id = tok.parse::<u64>().map_err(|_| {
        data_err(
            path,
            line,
            format!("{what} `{tok}` is not a non-negative integer id"),
        )
    })?;
    usize::try_from(id)
        .ok()
        .filter(|&id| id <= MAX_ID)
        .ok_or_else(|| {
            data_err(
                path,
                line,
                format!("{what} {id} exceeds the largest id, {MAX_ID}"),
            )
        })
}

/// Where the pairs of a split came from: the file and each pair's 1-based line.
#[derive(Debug, Clone, Default)]
struct Origin {
    path: std::path::PathBuf,
    lines: Vec<usize>,
}

/// [`read_lightgcn_split`] with each pair's line.
fn read_split_lines(path: &Path) -> Result<(Vec<Pair>, Origin)> {
    let text = read_text("read_lightgcn_split", path)?;
    let (mut pairs, mut lines) = (Vec::new(), Vec::new());
    for (no, line) in text.lines().enumerate() {
        let mut ids = line
            .split_whitespace()
            .map(|tok| parse_id(tok, path, no + 1, "id"));
        if let Some(user) = ids.next() {
            let user = user?;
            for item in ids {
                pairs.push((user, item?));
                lines.push(no + 1);
            }
        }
    }
    let origin = Origin {
        path: path.to_path_buf(),
        lines,
    };
    Ok((pairs, origin))
}

/// Reads a LightGCN split file: one line per user, `user item item ...`, whitespace separated, 0-based ids
/// (at most [`MAX_ID`]). Blank lines and lines with a user and no items are allowed.
///
/// # Errors
/// [`Error::Io`] when the file cannot be read; [`Error::Data`] with the line number for a token that is not
/// a non-negative integer or an id above [`MAX_ID`].
pub fn read_lightgcn_split(path: impl AsRef<Path>) -> Result<Vec<Pair>> {
    Ok(read_split_lines(path.as_ref())?.0)
}

/// Reads an MMRec `.inter` file: a tab-separated header naming at least `userID`, `itemID` and `x_label`, then
/// one interaction per line; `x_label` 0 = train, 1 = valid, 2 = test. Returns `(train, valid, test)`.
///
/// # Errors
/// [`Error::Io`]; [`Error::Data`] for a missing column in the header, a line with too few fields, a non-integer
/// id or one above [`MAX_ID`], or an `x_label` other than 0, 1, 2 (with its line number).
pub fn read_mmrec_inter(path: impl AsRef<Path>) -> Result<(Vec<Pair>, Vec<Pair>, Vec<Pair>)> {
    let ([train, valid, test], _) = read_inter_lines(path.as_ref())?;
    Ok((train, valid, test))
}

/// [`read_mmrec_inter`] with each pair's line.
fn read_inter_lines(path: &Path) -> Result<([Vec<Pair>; 3], [Origin; 3])> {
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
    let mut splits: [Vec<Pair>; 3] = Default::default();
    let mut origins: [Origin; 3] = std::array::from_fn(|_| Origin {
        path: path.to_path_buf(),
        lines: Vec::new(),
    });
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
        let pair = (
            parse_id(f[cu], path, no + 1, "userID")?,
            parse_id(f[ci], path, no + 1, "itemID")?,
        );
        let k = match f[cx] {
            "0" => 0,
            "1" => 1,
            "2" => 2,
            x => {
                return Err(data_err(
                    path,
                    no + 1,
                    format!("x_label {x} is not 0 (train), 1 (valid) or 2 (test)"),
                ))
            }
        };
        splits[k].push(pair);
        origins[k].lines.push(no + 1);
    }
    Ok((splits, origins))
}

/// The shape and data offset an `.npy` header claims, checked against the file's length before anything is
/// allocated for it: a 2-D float32 or float64 array, either byte order, C or Fortran order.
fn npy_layout(path: &Path, bytes: &[u8]) -> Result<()> {
    let bad = |reason: String| Error::Io {
        op: "read_features",
        path: path.display().to_string(),
        reason,
    };
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("not an .npy file (no \\x93NUMPY magic)".into()));
    }
    let (len, start): (usize, usize) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 if bytes.len() >= 12 => {
            let l = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
            (l as usize, 12)
        }
        v => return Err(bad(format!("unsupported .npy version {v}"))),
    };
    let end = start
        .checked_add(len)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| {
            bad(format!(
                "header of {len} bytes runs past the end of the file"
            ))
        })?;
    let header = String::from_utf8_lossy(&bytes[start..end]);
    let field = |key: &str| -> Option<&str> {
        let at = header.find(&format!("'{key}'"))? + key.len() + 2;
        let rest = header[at..].trim_start().strip_prefix(':')?.trim_start();
        Some(rest)
    };
    // either byte order and either memory order: ndarray-npy converts both to a native C-order matrix
    let itemsize = match field("descr").map(|d| &d[..d.find(',').unwrap_or(d.len())]) {
        Some("'<f4'" | "'>f4'") => 4usize,
        Some("'<f8'" | "'>f8'") => 8,
        Some(d) => {
            let why =
                "expected float32 or float64 ('<f4', '>f4', '<f8' or '>f8'); convert with x.astype(np.float32)";
            return Err(bad(format!("dtype {d}: {why}")));
        }
        None => return Err(bad("header has no dtype ('descr')".into())),
    };
    let shape = field("shape")
        .and_then(|s| s.strip_prefix('('))
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("header has no shape".into()))?;
    let dims = shape
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<usize>()
                .map_err(|_| bad(format!("shape ({shape}) is not integers")))
        })
        .collect::<Result<Vec<_>>>()?;
    if dims.len() != 2 {
        return Err(bad(format!("shape ({shape}): expected a 2-D matrix")));
    }
    let data = bytes.len() - end;
    let claimed = dims[0]
        .checked_mul(dims[1])
        .and_then(|n| n.checked_mul(itemsize));
    if claimed != Some(data) {
        return Err(bad(format!(
            "shape ({shape}) of {itemsize}-byte values needs {} bytes of data, the file has {data}",
            claimed.map_or("more than 2^64".to_string(), |c| c.to_string())
        )));
    }
    Ok(())
}

/// Reads a feature matrix from `.npy` as f32: float32 or float64, little- or big-endian, C or Fortran order
/// (every layout `np.save` writes for a 2-D float matrix, `np.save(x.T)` included). The header's
/// shape is checked against the file's length before the matrix is allocated.
///
/// # Errors
/// [`Error::Io`] for a missing file, a malformed header, a shape the file's length does not hold, or an
/// unsupported dtype or rank; [`Error::Data`] for NaN/Inf (naming the row).
pub fn read_features(path: impl AsRef<Path>) -> Result<Array2<f32>> {
    use ndarray_npy::{ReadNpyError, ReadNpyExt};
    let path = path.as_ref();
    let io = |e: ReadNpyError| Error::Io {
        op: "read_features",
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let bytes = std::fs::read(path).map_err(|e| Error::Io {
        op: "read_features",
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    npy_layout(path, &bytes)?;
    let x: Array2<f32> = match Array2::<f32>::read_npy(&bytes[..]) {
        Ok(x) => x,
        Err(ReadNpyError::WrongDescriptor(_)) => Array2::<f64>::read_npy(&bytes[..])
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

/// Where a dataset came from, for error messages: the source, and when loaded from files each split's
/// file and lines and each feature matrix's file.
#[derive(Debug)]
struct Sources<'a> {
    source: &'a Path,
    splits: Option<[Origin; 3]>,
    features: Vec<std::path::PathBuf>,
}

impl Sources<'_> {
    /// The file and line of pair `k` of split `s` (0 train, 1 valid, 2 test).
    fn at(&self, s: usize, k: usize) -> (&Path, usize) {
        match &self.splits {
            Some(o) => (&o[s].path, o[s].lines.get(k).copied().unwrap_or(0)),
            None => (self.source, 0),
        }
    }
    fn split_file(&self, s: usize) -> &Path {
        self.splits.as_ref().map_or(self.source, |o| &o[s].path)
    }
}

const SPLITS: [&str; 3] = ["train", "valid", "test"];

/// Feeds `(user, item)` pairs to a fingerprint's hash, each id as a little-endian u64.
fn hash_pairs(h: &mut crc32fast::Hasher, pairs: &[Pair]) {
    for &(u, i) in pairs {
        h.update(&(u as u64).to_le_bytes());
        h.update(&(i as u64).to_le_bytes());
    }
}

impl Dataset {
    /// The dataset with a user feature matrix added (one row per user; [`Dataset::read_user_features`] reads
    /// one from a file). With [`crate::model::RecGoatConfig::user_user`], the user-user branch takes the user
    /// features (side by side) as its profiles instead of the mean of each user's training items' features.
    ///
    /// # Errors
    /// [`Error::Data`] for a matrix without one finite row per user, naming `name`.
    pub fn with_user_features(self, name: &str, x: Array2<f32>) -> Result<Self> {
        self.add_user_features(name, x, Path::new(name))
    }

    /// [`Dataset::with_user_features`] of the matrix in an `.npy` file ([`read_features`]), named by the
    /// file's stem; errors name the file.
    ///
    /// # Errors
    /// As [`read_features`]; [`Error::Data`] naming the file for a matrix without one row per user.
    pub fn read_user_features(self, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let x = read_features(path)?;
        let name = path.file_stem().map_or_else(
            || path.display().to_string(),
            |s| s.to_string_lossy().into_owned(),
        );
        self.add_user_features(&name, x, path)
    }

    fn add_user_features(mut self, name: &str, x: Array2<f32>, at: &Path) -> Result<Self> {
        if x.nrows() != self.n_users {
            let reason = format!(
                "user features `{name}` have {} rows for {} users",
                x.nrows(),
                self.n_users
            );
            return Err(data_err(at, 0, reason));
        }
        if let Some(k) = x.iter().position(|v| !v.is_finite()) {
            let row = k / x.ncols().max(1);
            return Err(data_err(
                at,
                0,
                format!(
                    "user features `{name}`: row {row} (user {row}) has a NaN or infinite value"
                ),
            ));
        }
        self.user_features.push((name.to_string(), x));
        Ok(self)
    }

    /// The user-user branch's profiles: the user features side by side (rows scaled to unit length with
    /// `normalize`) when the dataset has any, else [`user_profiles`] of the given item features.
    ///
    /// # Errors
    /// [`Error::Shape`] when the user feature matrices do not have one row per user.
    pub fn user_profiles<F: crate::simd::Real>(
        &self,
        item_features: &[&Array2<F>],
        normalize: bool,
    ) -> Result<Array2<F>> {
        if self.user_features.is_empty() {
            return Ok(user_profiles(self.n_users, &self.train, item_features));
        }
        let views: Vec<_> = self.user_features.iter().map(|(_, x)| x.view()).collect();
        let mut x = ndarray::concatenate(ndarray::Axis(1), &views)
            .map_err(|e| Error::shape("Dataset::user_profiles", "user features", self.n_users, e))?
            .mapv(|v| F::c(f64::from(v)));
        if normalize {
            crate::nn::normalize_nonzero_rows_in_place(&mut x);
        }
        Ok(x)
    }

    /// Users with no training interaction, ascending: they have only held-out interactions. The model has
    /// nothing to learn their vectors from, so the ranking metrics leave them out (and the trainer counts
    /// them); they can still be scored.
    pub fn cold_users(&self) -> Vec<usize> {
        let mut warm = vec![false; self.n_users];
        for &(u, _) in &self.train {
            warm[u] = true;
        }
        (0..self.n_users).filter(|&u| !warm[u]).collect()
    }

    /// Items with no training interaction, ascending: the ID embedding learns nothing for them. A model
    /// with a content encoder ([`crate::model::RecGoatConfig::content_weight`]) scores them from their
    /// features; an ID-only model cannot rank them. The ranking metrics report them apart
    /// ([`crate::eval::Metrics::cold`]).
    pub fn cold_items(&self) -> Vec<usize> {
        let mut warm = vec![false; self.n_items];
        for &(_, i) in &self.train {
            warm[i] = true;
        }
        (0..self.n_items).filter(|&i| !warm[i]).collect()
    }

    /// Per item feature matrix, how many of its rows are all zero. Feature files commonly store an item
    /// without that modality (no image, no audio) as a row of zeros; the model reads such a row as the item
    /// lacking the modality: it trains no encoder and places no item through it
    /// ([`crate::model::RecGoat`]), and an item without any feature row gets no content vector.
    ///
    /// # Example
    /// ```
    /// use ndarray::array;
    /// use recgoat_core::data::Dataset;
    /// let x = array![[1.0f32, 0.0], [0.0, 0.0], [0.5, 0.5]];
    /// let ds = Dataset::new("d", vec![(0, 0), (0, 2), (1, 1)], vec![], vec![], vec![("img".into(), x)])?;
    /// assert_eq!(ds.zero_feature_rows(), vec![("img", 1)]);
    /// # Ok::<(), recgoat_core::Error>(())
    /// ```
    pub fn zero_feature_rows(&self) -> Vec<(&str, usize)> {
        (self.item_features.iter())
            .map(|(n, x)| {
                let zeros = crate::nn::zero_rows(x.view())
                    .iter()
                    .filter(|&&z| z)
                    .count();
                (n.as_str(), zeros)
            })
            .collect()
    }

    /// A short fingerprint of everything a training run depends on: the counts and a CRC-32 of the three
    /// splits and of the item and user feature matrices (names, shapes and values). Checkpoints store it, so
    /// that resuming with another split, other features or another dataset of the same shape is refused.
    ///
    /// # Example
    /// ```
    /// use recgoat_core::data::Dataset;
    /// let a = Dataset::new("a", vec![(0, 0), (1, 1)], vec![], vec![(0, 1)], vec![]).unwrap();
    /// let b = Dataset::new("b", vec![(0, 1), (1, 0)], vec![], vec![(0, 0)], vec![]).unwrap();
    /// let c = Dataset::new("c", vec![(0, 0), (1, 1)], vec![], vec![(1, 0)], vec![]).unwrap();
    /// assert_ne!(a.fingerprint(), b.fingerprint());
    /// assert_ne!(a.fingerprint(), c.fingerprint()); // the same training pairs, another test split
    /// ```
    pub fn fingerprint(&self) -> String {
        let mut h = crc32fast::Hasher::new();
        for (tag, split) in [(b'T', &self.train), (b'V', &self.valid), (b'E', &self.test)] {
            h.update(&[tag]);
            h.update(&(split.len() as u64).to_le_bytes());
            hash_pairs(&mut h, split);
        }
        let mut row = Vec::new();
        for (tag, features) in [(b'I', &self.item_features), (b'U', &self.user_features)] {
            for (name, x) in features {
                h.update(&[tag]);
                h.update(name.as_bytes());
                h.update(&[0]);
                h.update(&(x.nrows() as u64).to_le_bytes());
                h.update(&(x.ncols() as u64).to_le_bytes());
                for r in x.rows() {
                    row.clear();
                    crate::io::extend_le_bytes(&mut row, r.iter());
                    h.update(&row);
                }
            }
        }
        format!(
            "{} users, {} items, {} / {} / {} train / valid / test pairs, {} item and {} user feature matrices, \
             crc32 {:08x}",
            self.n_users,
            self.n_items,
            self.train.len(),
            self.valid.len(),
            self.test.len(),
            self.item_features.len(),
            self.user_features.len(),
            h.finalize()
        )
    }

    /// The fingerprint checkpoints of format version 2 stored: the counts and a CRC-32 of the training pairs.
    pub(crate) fn training_fingerprint(&self) -> String {
        let mut h = crc32fast::Hasher::new();
        hash_pairs(&mut h, &self.train);
        format!(
            "{} users, {} items, {} training pairs, crc32 {:08x}",
            self.n_users,
            self.n_items,
            self.train.len(),
            h.finalize()
        )
    }

    /// Loads a LightGCN-format folder (`train.txt`, `valid.txt` (optional), `test.txt`) and the named `.npy`
    /// item features in it, and validates the whole; an error names the file and, where one line holds
    /// the problem, the line.
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
        let (train, train_at) = read_split_lines(&dir.join("train.txt"))?;
        let valid_path = dir.join("valid.txt");
        let (valid, valid_at) = if valid_path.exists() {
            read_split_lines(&valid_path)?
        } else {
            (Vec::new(), Origin::default())
        };
        let (test, test_at) = read_split_lines(&dir.join("test.txt"))?;
        let origins = [train_at, valid_at, test_at];
        Dataset::from_files((dir, dir), [train, valid, test], origins, features)
    }

    /// The dataset of splits read from `source` (with each pair's line) and the named `.npy` item features in
    /// `dir`, validated.
    fn from_files(
        (source, dir): (&Path, &Path),
        splits: [Vec<Pair>; 3],
        origins: [Origin; 3],
        features: &[&str],
    ) -> Result<Self> {
        let paths: Vec<_> = (features.iter())
            .map(|name| dir.join(format!("{name}.npy")))
            .collect();
        let item_features = (features.iter().zip(&paths))
            .map(|(name, p)| Ok((name.to_string(), read_features(p)?)))
            .collect::<Result<Vec<_>>>()?;
        let sources = Sources {
            source,
            splits: Some(origins),
            features: paths,
        };
        Dataset::assemble(sources, splits, item_features)
    }

    /// Loads an MMRec dataset: the `.inter` file at `inter` (splits by `x_label`) and the named `.npy` item
    /// features in the same folder, and validates the whole; errors name the file and the line.
    ///
    /// # Errors
    /// As [`read_mmrec_inter`], [`read_features`] and [`Dataset::validate`].
    pub fn load_mmrec(inter: impl AsRef<Path>, features: &[&str]) -> Result<Self> {
        let inter = inter.as_ref();
        let dir = inter.parent().unwrap_or(Path::new("."));
        let (splits, origins) = read_inter_lines(inter)?;
        Dataset::from_files((inter, dir), splits, origins, features)
    }

    /// Loads a dataset folder in either format: LightGCN split files when it has `train.txt`, else MMRec
    /// when it has exactly one `.inter` file.
    ///
    /// # Errors
    /// [`Error::Io`] for a folder with neither; as [`Dataset::load_lightgcn_dir`] and
    /// [`Dataset::load_mmrec`].
    ///
    /// # Example
    /// ```
    /// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/data/baby");
    /// let ds = recgoat_core::data::Dataset::load_dir(dir, &[]).unwrap();
    /// assert_eq!((ds.n_users, ds.n_items), (19_445, 7_050));
    /// ```
    pub fn load_dir(dir: impl AsRef<Path>, features: &[&str]) -> Result<Self> {
        let dir = dir.as_ref();
        if dir.join("train.txt").exists() {
            return Dataset::load_lightgcn_dir(dir, features);
        }
        let io = |reason: String| Error::Io {
            op: "Dataset::load_dir",
            path: dir.display().to_string(),
            reason,
        };
        let inters: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| io(e.to_string()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "inter"))
            .collect();
        match inters.as_slice() {
            [one] => Dataset::load_mmrec(one, features),
            [] => Err(io(
                "no train.txt (LightGCN split files) and no .inter file (MMRec)".into(),
            )),
            many => Err(io(format!(
                "{} .inter files: name one with Dataset::load_mmrec",
                many.len()
            ))),
        }
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
        let sources = Sources {
            source: source.as_ref(),
            splits: None,
            features: Vec::new(),
        };
        Dataset::assemble(sources, [train, valid, test], item_features)
    }

    fn assemble(
        mut sources: Sources<'_>,
        [train, valid, test]: [Vec<Pair>; 3],
        item_features: Vec<(String, Array2<f32>)>,
    ) -> Result<Self> {
        // the largest ids (checked: they bound the counts, which validation bounds before allocating)
        let all = train.iter().chain(&valid).chain(&test);
        let count = |id: usize| id.saturating_add(1);
        let n_users = all.clone().map(|p| count(p.0)).max().unwrap_or(0);
        let n_items = all.map(|p| count(p.1)).max().unwrap_or(0);
        // training pairs sorted and de-duplicated, each keeping the line it first came from
        let mut order: Vec<usize> = (0..train.len()).collect();
        order.sort_by_key(|&k| (train[k], k));
        order.dedup_by_key(|k| train[*k]);
        if let Some(o) = sources.splits.as_mut() {
            let lines = &o[0].lines;
            o[0].lines = order
                .iter()
                .map(|&k| lines.get(k).copied().unwrap_or(0))
                .collect();
        }
        let ds = Dataset {
            n_users,
            n_items,
            train: order.iter().map(|&k| train[k]).collect(),
            valid,
            test,
            item_features,
            user_features: Vec::new(),
        };
        ds.check(&sources)?;
        Ok(ds)
    }

    /// Checks the dataset: a non-empty training split, contiguous user and item ids (every id in some split),
    /// and feature matrices with one finite row per item. The counts are checked against the interactions
    /// before anything is allocated for them. Users and items with no training interaction are allowed (see
    /// [`Dataset::cold_users`]).
    ///
    /// # Errors
    /// [`Error::Data`] naming the problem and the offending id or matrix.
    pub fn validate(&self, source: &Path) -> Result<()> {
        self.check(&Sources {
            source,
            splits: None,
            features: Vec::new(),
        })
    }

    fn check(&self, src: &Sources<'_>) -> Result<()> {
        let splits = [&self.train, &self.valid, &self.test];
        if self.train.is_empty() {
            let path = src.split_file(0);
            return Err(data_err(path, 0, "the training split is empty"));
        }
        for (s, split) in splits.iter().enumerate() {
            if let Some(k) = split
                .iter()
                .position(|p| p.0 >= self.n_users || p.1 >= self.n_items)
            {
                let (path, line) = src.at(s, k);
                return Err(data_err(
                    path,
                    line,
                    format!(
                        "{}: pair {:?} out of range ({} users, {} items)",
                        SPLITS[s], split[k], self.n_users, self.n_items
                    ),
                ));
            }
        }
        // sorted distinct ids: memory follows the interactions, never the counts the ids claim
        let distinct = |ids: &mut dyn Iterator<Item = usize>| {
            let mut v: Vec<usize> = ids.collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        // the first id below `n` missing from sorted distinct `ids`
        let first_gap = |ids: &[usize], n: usize| {
            let k = ids.iter().enumerate().position(|(k, &id)| id != k);
            k.or((ids.len() < n).then_some(ids.len()))
        };
        // users with no training interaction (cold users) are kept: the metrics leave them out and count them
        let users = distinct(&mut splits.iter().flat_map(|s| s.iter().map(|p| p.0)));
        // where the largest id stands: with a gap, the likeliest culprit
        let largest = |split_ids: &[usize], by: fn(&Pair) -> usize| {
            let (s, k) = (split_ids.iter().copied())
                .flat_map(|s| (0..splits[s].len()).map(move |k| (s, k)))
                .max_by_key(|&(s, k)| (by(&splits[s][k]), std::cmp::Reverse((s, k))))?;
            let (path, line) = src.at(s, k);
            Some((path, line, by(&splits[s][k])))
        };
        if let Some(u) = first_gap(&users, self.n_users) {
            let (path, line, id) =
                largest(&[0, 1, 2], |p| p.0).unwrap_or((src.split_file(0), 0, 0));
            return Err(data_err(
                path,
                line,
                format!("user ids are not contiguous: user {u} has no interaction (the largest user id is {id})"),
            ));
        }
        let items = distinct(&mut splits.iter().flat_map(|s| s.iter().map(|p| p.1)));
        if let Some(i) = first_gap(&items, self.n_items) {
            let (path, line, id) = largest(&[0, 1, 2], |p| p.1).unwrap_or((src.source, 0, 0));
            return Err(data_err(
                path,
                line,
                format!("item ids are not contiguous: item {i} has no interaction (the largest item id is {id})"),
            ));
        }
        if let Some((name, f)) = self
            .user_features
            .iter()
            .find(|(_, f)| f.nrows() != self.n_users)
        {
            let reason = format!(
                "user features `{name}` have {} rows for {} users",
                f.nrows(),
                self.n_users
            );
            return Err(data_err(src.source, 0, reason));
        }
        for (m, (name, f)) in self.item_features.iter().enumerate() {
            let path = src.features.get(m).map_or(src.source, |p| p.as_path());
            if f.nrows() != self.n_items {
                return Err(data_err(
                    path,
                    0,
                    format!(
                        "features `{name}` have {} rows for {} items",
                        f.nrows(),
                        self.n_items
                    ),
                ));
            }
            if let Some(k) = f.iter().position(|v| !v.is_finite()) {
                return Err(data_err(
                    path,
                    0,
                    format!(
                        "features `{name}`: row {} has a NaN or infinite value",
                        k / f.ncols().max(1)
                    ),
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
