//! [`Batch`]: the `(user, positive item, negative item)` triples of one training step.

use crate::error::{Error, Result};

/// A batch of `(user, positive item, negative item)` triples.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// User ids.
    pub users: Vec<usize>,
    /// Positive item ids (a training interaction of the user).
    pub pos: Vec<usize>,
    /// Negative item ids.
    pub neg: Vec<usize>,
}

impl Batch {
    /// The batch size, after checking that the lists are non-empty, of one length, and in range.
    ///
    /// # Errors
    /// [`Error::Empty`] for an empty batch, [`Error::Shape`] for lists of different lengths,
    /// [`Error::Param`] for an id out of range (`n_users` users, `n_items` items).
    pub(crate) fn check(&self, op: &'static str, n_users: usize, n_items: usize) -> Result<usize> {
        let bsz = self.users.len();
        if bsz == 0 {
            return Err(Error::Empty {
                op,
                what: "batch".into(),
            });
        }
        if self.pos.len() != bsz || self.neg.len() != bsz {
            return Err(Error::shape(
                op,
                "pos / neg lengths vs users",
                bsz,
                (self.pos.len(), self.neg.len()),
            ));
        }
        for (what, ids, n) in [
            ("users", &self.users, n_users),
            ("pos", &self.pos, n_items),
            ("neg", &self.neg, n_items),
        ] {
            if let Some((k, &id)) = ids.iter().enumerate().find(|(_, &id)| id >= n) {
                return Err(Error::param(
                    op,
                    "batch",
                    format!("{what}[{k}] = {id}"),
                    format!("out of range ({n})"),
                ));
            }
        }
        Ok(bsz)
    }

    /// The rows whose user and positive item both appear for the first time, in batch order: no two rows
    /// share a user or a positive item. The contrastive term runs on these rows when
    /// [`RecGoatConfig::cl_distinct_rows`](crate::model::RecGoatConfig::cl_distinct_rows) is set, so that no row's in-batch negatives hold its own user or
    /// its own item (a duplicate would be a false negative, pushing a user away from its own positives).
    ///
    /// # Example
    /// ```
    /// use recgoat_core::data::Batch;
    /// let batch = Batch { users: vec![0, 1, 0, 2, 3], pos: vec![5, 5, 6, 7, 8], neg: vec![1, 2, 3, 4, 0] };
    /// let rows = batch.distinct_rows();
    /// // row 1 repeats item 5, row 2 repeats user 0
    /// assert_eq!(rows, Batch { users: vec![0, 2, 3], pos: vec![5, 7, 8], neg: vec![1, 4, 0] });
    /// ```
    pub fn distinct_rows(&self) -> Batch {
        let mut seen_users = std::collections::HashSet::new();
        let mut seen_items = std::collections::HashSet::new();
        let mut out = Batch::default();
        for ((&u, &p), &n) in self.users.iter().zip(&self.pos).zip(&self.neg) {
            if !seen_users.contains(&u) && !seen_items.contains(&p) {
                seen_users.insert(u);
                seen_items.insert(p);
                out.users.push(u);
                out.pos.push(p);
                out.neg.push(n);
            }
        }
        out
    }
}
