//! Interactions in a plain delimited file, `user,item[,timestamp]` with any ids, mapped to contiguous ones
//! and split into train / valid / test.

use super::{data_err, Dataset, Pair};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// The original ids behind a dataset's contiguous ones: user `u` is `users[u]`, item `i` is `items[i]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    /// Original user ids, by contiguous id.
    pub users: Vec<String>,
    /// Original item ids, by contiguous id.
    pub items: Vec<String>,
}

impl IdMap {
    /// The contiguous id of an original user id.
    pub fn user(&self, id: &str) -> Option<usize> {
        self.users.iter().position(|u| u == id)
    }
    /// The contiguous id of an original item id.
    pub fn item(&self, id: &str) -> Option<usize> {
        self.items.iter().position(|i| i == id)
    }
}

/// Interactions read by [`read_interactions`]: contiguous ids in order of first appearance, the original
/// ids, and each interaction's timestamp when the file has one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Interactions {
    /// `(user, item)` with contiguous ids, in file order.
    pub pairs: Vec<Pair>,
    /// Each pair's timestamp (third field), when every line has one.
    pub timestamps: Option<Vec<f64>>,
    /// The original ids.
    pub ids: IdMap,
}

/// Reads `user<sep>item[<sep>timestamp]` lines, the separator a comma or a tab (whichever the first line
/// has), ids of any text (mapped to contiguous ids in order of first appearance), an optional header line
/// whose first field is `user`, `userID` or `user_id`; blank lines are skipped.
///
/// # Errors
/// [`Error::Io`] for an unreadable file; [`Error::Data`] naming the line for a line with fewer than two
/// fields, an empty id, or a timestamp that is not a number (or missing on some lines only).
///
/// # Example
/// ```
/// let path = std::env::temp_dir().join(format!("recgoat-doc-{}.csv", std::process::id()));
/// std::fs::write(&path, "user,item,ts\nalice,song-9,3\nbob,song-2,1\nalice,song-2,2\n").unwrap();
/// let x = recgoat_core::data::read_interactions(&path).unwrap();
/// assert_eq!(x.pairs, vec![(0, 0), (1, 1), (0, 1)]);
/// assert_eq!((x.ids.users[1].as_str(), x.ids.items[0].as_str()), ("bob", "song-9"));
/// ```
pub fn read_interactions(path: impl AsRef<Path>) -> Result<Interactions> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
        op: "read_interactions",
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let sep = match text.lines().find(|l| !l.trim().is_empty()) {
        Some(l) if l.contains('\t') => '\t',
        _ => ',',
    };
    let (mut users, mut items) = (HashMap::new(), HashMap::new());
    let mut out = Interactions::default();
    let mut stamps: Vec<Option<f64>> = Vec::new();
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .peekable();
    if let Some((_, first)) = lines.peek() {
        let head = first
            .split(sep)
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if ["user", "userid", "user_id"].contains(&head.as_str()) {
            lines.next();
        }
    }
    for (no, line) in lines {
        let f: Vec<&str> = line.split(sep).map(str::trim).collect();
        if f.len() < 2 || f[0].is_empty() || f[1].is_empty() {
            return Err(data_err(path, no + 1, "expected `user, item[, timestamp]`"));
        }
        let id = |map: &mut HashMap<String, usize>, names: &mut Vec<String>, raw: &str| {
            let next = map.len();
            *map.entry(raw.to_string()).or_insert_with(|| {
                names.push(raw.to_string());
                next
            })
        };
        let u = id(&mut users, &mut out.ids.users, f[0]);
        let i = id(&mut items, &mut out.ids.items, f[1]);
        out.pairs.push((u, i));
        let ts =
            match f.get(2) {
                Some(t) if !t.is_empty() => Some(t.parse::<f64>().map_err(|_| {
                    data_err(path, no + 1, format!("timestamp `{t}` is not a number"))
                })?),
                _ => None,
            };
        if !stamps.is_empty() && stamps[0].is_some() != ts.is_some() {
            return Err(data_err(
                path,
                no + 1,
                "some lines have a timestamp and some do not",
            ));
        }
        stamps.push(ts);
    }
    if stamps.first().is_some_and(|t| t.is_some()) {
        out.timestamps = Some(stamps.into_iter().flatten().collect());
    }
    Ok(out)
}

impl Dataset {
    /// A dataset from [`read_interactions`]'s output, split per user: the user's interactions in time
    /// order (file order without timestamps), the last `holdout` share of them (rounded down) to test and the
    /// same share before those to validation, the rest to training; users with fewer than three
    /// interactions keep them all in training. `source` names the data in errors.
    ///
    /// # Errors
    /// [`Error::Param`] for `holdout` outside `[0, 0.5)`; as [`Dataset::new`].
    pub fn from_interactions(
        source: impl AsRef<Path>,
        x: &Interactions,
        holdout: f64,
        item_features: Vec<(String, ndarray::Array2<f32>)>,
    ) -> Result<Self> {
        if !(0.0..0.5).contains(&holdout) {
            return Err(Error::param(
                "Dataset::from_interactions",
                "holdout",
                holdout,
                "must be in [0, 0.5)",
            ));
        }
        let mut by_user: Vec<Vec<usize>> = vec![Vec::new(); x.ids.users.len()];
        for (k, &(u, _)) in x.pairs.iter().enumerate() {
            by_user[u].push(k);
        }
        let (mut train, mut valid, mut test) = (Vec::new(), Vec::new(), Vec::new());
        for mut ks in by_user {
            if let Some(ts) = &x.timestamps {
                ks.sort_by(|&a, &b| ts[a].total_cmp(&ts[b]).then(a.cmp(&b)));
            }
            let n = ks.len();
            let h = if n < 3 {
                0
            } else {
                ((n as f64) * holdout) as usize
            };
            for (r, &k) in ks.iter().enumerate() {
                let split = if r >= n - h {
                    &mut test
                } else if r >= n - 2 * h {
                    &mut valid
                } else {
                    &mut train
                };
                split.push(x.pairs[k]);
            }
        }
        Dataset::new(source, train, valid, test, item_features)
    }
}
