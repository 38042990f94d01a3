//! Interactions in a delimited file (CSV or TSV, a header naming the columns or `user,item[,timestamp]` by
//! position) with any ids, mapped to contiguous ones and split into train / valid / test.

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

    /// The first original id that names two users or two items, as `("user" | "item", id)`; `None` when
    /// every id names one (what [`IdMap::user`] and [`IdMap::item`] need).
    pub fn duplicate(&self) -> Option<(&'static str, &str)> {
        (first_repeated(&self.users).map(|id| ("user", id)))
            .or_else(|| first_repeated(&self.items).map(|id| ("item", id)))
    }
}

/// The first id that occurs twice.
fn first_repeated(ids: &[String]) -> Option<&str> {
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    ids.iter()
        .find(|id| !seen.insert(id.as_str()))
        .map(String::as_str)
}

/// Interactions read by [`read_interactions`]: contiguous ids in order of first appearance, the original
/// ids, and each interaction's timestamp when the file has one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Interactions {
    /// `(user, item)` with contiguous ids, in file order.
    pub pairs: Vec<Pair>,
    /// Each pair's timestamp, when the file has a timestamp column.
    pub timestamps: Option<Vec<f64>>,
    /// The original ids.
    pub ids: IdMap,
}

/// What a column of an interaction file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    /// The user's id (any text).
    User,
    /// The item's id (any text).
    Item,
    /// When the interaction happened: a finite number (seconds, days: any unit that orders).
    Timestamp,
    /// An explicit rating: a finite number, used with [`ReadOptions::min_rating`].
    Rating,
}

impl Column {
    /// The header names each column is known by (compared case-insensitively, MMRec's `:token` / `:float`
    /// type suffix ignored).
    pub const NAMES: [(Column, &'static [&'static str]); 4] = [
        (
            Column::User,
            &[
                "user",
                "userid",
                "user_id",
                "uid",
                "reviewerid",
                "customer_id",
                "visitorid",
            ],
        ),
        (
            Column::Item,
            &[
                "item",
                "itemid",
                "item_id",
                "iid",
                "movieid",
                "movie_id",
                "asin",
                "product_id",
                "productid",
                "track_id",
                "artist_id",
                "business_id",
                "book_id",
                "isbn",
            ],
        ),
        (
            Column::Timestamp,
            &[
                "timestamp",
                "ts",
                "time",
                "unix_time",
                "unixreviewtime",
                "datetime",
            ],
        ),
        (
            Column::Rating,
            &["rating", "ratings", "score", "stars", "overall"],
        ),
    ];

    /// The column a header field names, if any.
    pub fn from_name(name: &str) -> Option<Column> {
        let name = name.trim().to_ascii_lowercase();
        let name = name.split(':').next().unwrap_or("");
        (Self::NAMES.iter())
            .find(|(_, names)| names.contains(&name))
            .map(|&(c, _)| c)
    }

    fn word(self) -> &'static str {
        match self {
            Column::User => "user",
            Column::Item => "item",
            Column::Timestamp => "timestamp",
            Column::Rating => "rating",
        }
    }
}

/// Options of [`read_interactions_with`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReadOptions {
    /// With a rating column, the interactions rated at least this are kept (the positives of implicit
    /// feedback) and the others dropped; `f64::NEG_INFINITY` keeps every one. `None` (the default): a file
    /// with a rating column is refused with a message that says how to choose, since no one threshold suits
    /// every rating scale (4 is usual for 1-5 stars).
    pub min_rating: Option<f64>,
}

/// Reads an interaction file with the default [`ReadOptions`]: see [`read_interactions_with`].
///
/// # Errors
/// As [`read_interactions_with`].
///
/// # Example
/// ```
/// let path = std::env::temp_dir().join(format!("recgoat-doc-{}.csv", std::process::id()));
/// std::fs::write(&path, "user,item,ts\nalice,song-9,3\nbob,\"song,2\",1\nalice,\"song,2\",2\n").unwrap();
/// let x = recgoat_core::data::read_interactions(&path).unwrap();
/// assert_eq!(x.pairs, vec![(0, 0), (1, 1), (0, 1)]);
/// assert_eq!((x.ids.users[1].as_str(), x.ids.items[1].as_str()), ("bob", "song,2"));
/// std::fs::remove_file(&path).unwrap();
/// ```
pub fn read_interactions(path: impl AsRef<Path>) -> Result<Interactions> {
    read_interactions_with(path, &ReadOptions::default())
}

/// Reads interactions from a comma- or tab-separated file (a tab on the first line makes it tab-separated),
/// RFC 4180 quoting, UTF-8 with or without a byte-order mark; blank lines are skipped; ids of any text are
/// mapped to contiguous ids in order of first appearance.
///
/// The columns ([`Column`]):
/// - **with a header** (a first line with a known column name among its fields, [`Column::NAMES`]: `user`,
///   `userId`, `user_id:token`, `item`, `movieId`, `timestamp`, `rating`, ...), by name, in any order; user
///   and item are required, timestamp and rating optional, and any other column is an error that says how
///   to name it (or that it should be removed);
/// - **without one**, by position: `user, item[, timestamp]`; a fourth field needs a header to say what it is.
///
/// Every line has the header's (or the first line's) number of fields. Timestamps and ratings are finite
/// numbers. A rating column needs [`ReadOptions::min_rating`]. The pairs come back as they are in the file,
/// repeated pairs included; [`Dataset::from_interactions`] merges them.
///
/// # Errors
/// [`Error::Io`] for an unreadable file; [`Error::Data`] naming the file and line for a header with an
/// unknown, repeated or missing column, a line with another number of fields, an empty id, a timestamp or
/// rating that is not a finite number, a rating column without `min_rating`, text that is not UTF-8, or a
/// file without interactions.
pub fn read_interactions_with(path: impl AsRef<Path>, opts: &ReadOptions) -> Result<Interactions> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::Io {
        op: "read_interactions",
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    let first = body
        .split(|&b| b == b'\n')
        .find(|l| !l.iter().all(u8::is_ascii_whitespace));
    let delimiter = match first {
        Some(l) if l.contains(&b'\t') => b'\t',
        _ => b',',
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .delimiter(delimiter)
        .from_reader(body);
    let mut columns: Option<Vec<Column>> = None;
    let (mut users, mut items) = (HashMap::new(), HashMap::new());
    let mut out = Interactions::default();
    let mut stamps = Vec::new();
    let mut record = csv::ByteRecord::new();
    loop {
        let more = reader.read_byte_record(&mut record).map_err(|e| {
            let line = e.position().map_or(0, |p| p.line() as usize);
            data_err(path, line, format!("not a readable CSV line: {e}"))
        })?;
        if !more {
            break;
        }
        let line = record.position().map_or(0, |p| p.line() as usize);
        let fields = (record.iter())
            .map(std::str::from_utf8)
            .collect::<std::result::Result<Vec<&str>, _>>()
            .map_err(|e| data_err(path, line, format!("not valid UTF-8 ({e})")))?;
        if fields.iter().all(|f| f.is_empty()) {
            continue;
        }
        let cols = match &columns {
            Some(c) => c,
            None => {
                let (cols, header) = columns_of(path, line, &fields, opts)?;
                let cols = &*columns.insert(cols);
                if header {
                    continue;
                }
                cols
            }
        };
        if fields.len() != cols.len() {
            let names: Vec<&str> = cols.iter().map(|c| c.word()).collect();
            let why = format!(
                "{} fields where the file has {} ({})",
                fields.len(),
                cols.len(),
                names.join(", ")
            );
            return Err(data_err(path, line, why));
        }
        let (mut user, mut item, mut time) = ("", "", None);
        let mut keep = true;
        for (&c, &f) in cols.iter().zip(&fields) {
            let number = |what: &str| -> Result<f64> {
                match f.parse::<f64>() {
                    Ok(v) if v.is_finite() => Ok(v),
                    _ => Err(data_err(
                        path,
                        line,
                        format!("{what} `{f}` is not a finite number"),
                    )),
                }
            };
            match c {
                Column::User => user = f,
                Column::Item => item = f,
                Column::Timestamp => time = Some(number("timestamp")?),
                Column::Rating => {
                    let r = number("rating")?;
                    keep = opts.min_rating.is_some_and(|min| r >= min);
                }
            }
        }
        if user.is_empty() || item.is_empty() {
            let which = if user.is_empty() { "user" } else { "item" };
            return Err(data_err(path, line, format!("the {which} id is empty")));
        }
        if !keep {
            continue;
        }
        let id = |map: &mut HashMap<String, usize>, names: &mut Vec<String>, raw: &str| {
            let next = map.len();
            *map.entry(raw.to_string()).or_insert_with(|| {
                names.push(raw.to_string());
                next
            })
        };
        let u = id(&mut users, &mut out.ids.users, user);
        let i = id(&mut items, &mut out.ids.items, item);
        out.pairs.push((u, i));
        stamps.extend(time);
    }
    if out.pairs.is_empty() {
        let why = match opts.min_rating {
            Some(min)
                if columns
                    .as_ref()
                    .is_some_and(|c| c.contains(&Column::Rating)) =>
            {
                format!("no interaction is rated at least {min} (ReadOptions::min_rating)")
            }
            _ => "the file has no interactions".to_string(),
        };
        return Err(data_err(path, 0, why));
    }
    if columns.is_some_and(|c| c.contains(&Column::Timestamp)) {
        out.timestamps = Some(stamps);
    }
    Ok(out)
}

/// The columns of an interaction file from its first non-blank line, and whether that line is a header.
fn columns_of(
    path: &Path,
    line: usize,
    fields: &[&str],
    opts: &ReadOptions,
) -> Result<(Vec<Column>, bool)> {
    // a header names at least one known column; its other fields must then be known too
    if !fields.iter().any(|f| Column::from_name(f).is_some()) {
        return match fields.len() {
            2 => Ok((vec![Column::User, Column::Item], false)),
            3 => Ok((vec![Column::User, Column::Item, Column::Timestamp], false)),
            n => {
                let why = if n < 2 {
                    "expected `user, item[, timestamp]`".to_string()
                } else {
                    format!(
                        "{n} fields and no header: without one the columns are `user, item[, timestamp]`; add a \
                         header line naming each column (user, item, timestamp, rating)"
                    )
                };
                Err(data_err(path, line, why))
            }
        };
    }
    let mut cols = Vec::with_capacity(fields.len());
    for f in fields {
        let Some(c) = Column::from_name(f) else {
            let why = format!(
                "column `{f}` of the header is not one this reader knows: name it user, item, timestamp or \
                 rating (or a name from recgoat_core::data::Column::NAMES), or remove it from the file"
            );
            return Err(data_err(path, line, why));
        };
        if cols.contains(&c) {
            let why = format!("the header names the {} column twice (`{f}`)", c.word());
            return Err(data_err(path, line, why));
        }
        cols.push(c);
    }
    for need in [Column::User, Column::Item] {
        if !cols.contains(&need) {
            let why = format!("the header has no {} column", need.word());
            return Err(data_err(path, line, why));
        }
    }
    if cols.contains(&Column::Rating) && opts.min_rating.is_none() {
        let why = "the file has a rating column: say which ratings count as interactions with \
                   ReadOptions::min_rating (the train example's --min-rating), for example 4 on a 1-5 scale, \
                   or negative infinity to keep every one";
        return Err(data_err(path, line, why));
    }
    Ok((cols, true))
}

impl Dataset {
    /// A dataset from [`read_interactions`]'s output, split per user: the user's interactions in time
    /// order (file order without timestamps), the last `holdout` share of them (rounded down) to test and the
    /// same share before those to validation, the rest to training; users with fewer than three
    /// interactions keep them all in training. A pair that occurs more than once is kept once, at its
    /// earliest time (its first line without timestamps), so no pair is both trained on and held out.
    /// `source` names the data in errors.
    ///
    /// # Errors
    /// [`Error::Param`] for `holdout` outside `[0, 0.5)`, a pair whose ids are beyond `x.ids`' lists, a
    /// timestamp count other than the pair count, or a timestamp that is not finite; as [`Dataset::new`].
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
        const OP: &str = "Dataset::from_interactions";
        let (n_users, n_items) = (x.ids.users.len(), x.ids.items.len());
        if let Some(k) = (x.pairs.iter()).position(|&(u, i)| u >= n_users || i >= n_items) {
            let (u, i) = x.pairs[k];
            let why = format!("pair {k} has ids beyond x.ids ({n_users} users, {n_items} items)");
            return Err(Error::param(OP, "x.pairs", format!("({u}, {i})"), why));
        }
        if let Some(ts) = &x.timestamps {
            if ts.len() != x.pairs.len() {
                let why = format!("{} timestamps for {} pairs", ts.len(), x.pairs.len());
                return Err(Error::param(OP, "x.timestamps", ts.len(), why));
            }
            if let Some(k) = ts.iter().position(|t| !t.is_finite()) {
                let why = format!("timestamp {k} is not finite");
                return Err(Error::param(OP, "x.timestamps", ts[k], why));
            }
        }
        let mut by_user: Vec<Vec<usize>> = vec![Vec::new(); n_users];
        for (k, &(u, _)) in x.pairs.iter().enumerate() {
            by_user[u].push(k);
        }
        let (mut train, mut valid, mut test) = (Vec::new(), Vec::new(), Vec::new());
        let mut seen = std::collections::HashSet::new();
        for mut ks in by_user {
            if let Some(ts) = &x.timestamps {
                ks.sort_by(|&a, &b| ts[a].total_cmp(&ts[b]).then(a.cmp(&b)));
            }
            seen.clear();
            ks.retain(|&k| seen.insert(x.pairs[k].1));
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
