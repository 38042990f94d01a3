//! Cold-item splits: a seeded fraction of the items held out of training entirely, as new items are in a
//! live catalogue, or a seeded share of each user's training interactions kept, which leaves the tail's
//! items without any.

use super::{Dataset, Pair};
use crate::error::{Error, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const OP: &str = "Dataset::hold_out_items";

impl Dataset {
    /// The same data with a seeded `fraction` of the items held out of training entirely: every training,
    /// validation and test interaction of the first half of the held-out items (rounded up) goes to the
    /// validation split, every one of the second half to the test split, so the two held-out sets are
    /// disjoint (validation chooses settings on other new items than the ones test measures). The other
    /// items keep their splits. Held-out items keep their ids and features and stay in the catalogue: they
    /// are the dataset's [`Dataset::cold_items`], and the ranking metrics report them apart
    /// ([`crate::eval::Metrics::cold`]). Users whose training interactions were all on held-out items
    /// become [`Dataset::cold_users`].
    ///
    /// Items that have no interaction in any split cannot be held out meaningfully and are never chosen;
    /// `fraction` counts over all items.
    ///
    /// # Errors
    /// [`Error::Param`] for a `fraction` outside `(0, 1)`, or one that leaves fewer than two items to hold
    /// out or no training interaction; [`Error::Data`] from checking the result.
    ///
    /// # Example
    /// ```
    /// use recgoat_core::data::Dataset;
    /// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/data/lfm2k");
    /// let ds = Dataset::load_lightgcn_dir(dir, &["text_feat"])?;
    /// let cold = ds.hold_out_items(0.2, 7)?;
    /// assert_eq!(cold.cold_items().len(), 285); // 20 % of 1,425 items
    /// assert_eq!(cold.n_items, ds.n_items);
    /// let held: std::collections::HashSet<usize> = cold.cold_items().into_iter().collect();
    /// assert!(cold.train.iter().all(|p| !held.contains(&p.1)));
    /// # Ok::<(), recgoat_core::Error>(())
    /// ```
    pub fn hold_out_items(&self, fraction: f64, seed: u64) -> Result<Dataset> {
        if !(fraction > 0.0 && fraction < 1.0) {
            return Err(Error::param(OP, "fraction", fraction, "must be in (0, 1)"));
        }
        let k = (fraction * self.n_items as f64).round() as usize;
        if k < 2 {
            let why = format!(
                "holds out {k} of {} items: needs at least 2 (one for validation, one for test)",
                self.n_items
            );
            return Err(Error::param(OP, "fraction", fraction, why));
        }
        let mut seen = vec![false; self.n_items];
        for &(_, i) in self.train.iter().chain(&self.valid).chain(&self.test) {
            seen[i] = true;
        }
        let mut order: Vec<usize> = (0..self.n_items).filter(|&i| seen[i]).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        if k >= order.len() {
            let why = format!(
                "holds out {k} of the {} items with interactions",
                order.len()
            );
            return Err(Error::param(OP, "fraction", fraction, why));
        }
        // 0: stays, 1: held out to validation, 2: held out to test
        let mut held = vec![0u8; self.n_items];
        let to_valid = k.div_ceil(2);
        for (r, &i) in order[..k].iter().enumerate() {
            held[i] = if r < to_valid { 1 } else { 2 };
        }
        let all = || self.train.iter().chain(&self.valid).chain(&self.test);
        let keep = |split: &[Pair]| -> Vec<Pair> {
            split.iter().copied().filter(|p| held[p.1] == 0).collect()
        };
        let moved = |to: u8| -> Vec<Pair> { all().copied().filter(|p| held[p.1] == to).collect() };
        let train = keep(&self.train);
        if train.is_empty() {
            let why = "no training interaction is left";
            return Err(Error::param(OP, "fraction", fraction, why));
        }
        let dedup = |mut v: Vec<Pair>| {
            v.sort_unstable();
            v.dedup();
            v
        };
        let valid = dedup([keep(&self.valid), moved(1)].concat());
        let test = dedup([keep(&self.test), moved(2)].concat());
        let mut ds = Dataset::new(
            "cold-item split",
            train,
            valid,
            test,
            self.item_features.clone(),
        )?;
        // ids come from the interactions: an id at the end with none left would shrink the counts
        (ds.n_users, ds.n_items) = (self.n_users, self.n_items);
        ds.user_features = self.user_features.clone();
        ds.validate(std::path::Path::new("cold-item split"))?;
        Ok(ds)
    }

    /// A sparser copy: a seeded `keep` share of each user's training interactions (rounded, at least one),
    /// the validation and test splits as they are (an item whose interactions were all in training keeps
    /// one of them). Items that lose every training interaction become
    /// [`Dataset::cold_items`] with their held-out interactions in place: the new items of a catalogue's
    /// long tail, few of them with few interactions each, where [`Dataset::hold_out_items`] takes whole items
    /// at random (whatever their popularity). Ids, counts and features are kept.
    ///
    /// # Errors
    /// [`Error::Param`] for a `keep` outside `(0, 1]`; [`Error::Data`] from checking the result.
    ///
    /// # Example
    /// ```
    /// use recgoat_core::data::Dataset;
    /// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/data/lfm2k");
    /// let ds = Dataset::load_lightgcn_dir(dir, &["text_feat"])?;
    /// let thin = ds.thin_train(0.25, 7)?;
    /// assert!(thin.train.len() < ds.train.len() / 3);
    /// assert_eq!((thin.valid.len(), thin.n_items), (ds.valid.len(), ds.n_items));
    /// assert!(!thin.cold_items().is_empty()); // tail items left without training interactions
    /// # Ok::<(), recgoat_core::Error>(())
    /// ```
    pub fn thin_train(&self, keep: f64, seed: u64) -> Result<Dataset> {
        const OP: &str = "Dataset::thin_train";
        if !(keep > 0.0 && keep <= 1.0) {
            return Err(Error::param(OP, "keep", keep, "must be in (0, 1]"));
        }
        let mut by_user: Vec<Vec<Pair>> = vec![Vec::new(); self.n_users];
        for &p in &self.train {
            by_user[p.0].push(p);
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (mut train, mut dropped) = (Vec::new(), Vec::new());
        for mut pairs in by_user.into_iter().filter(|p| !p.is_empty()) {
            pairs.shuffle(&mut rng);
            let k = ((keep * pairs.len() as f64).round() as usize).clamp(1, pairs.len());
            dropped.extend(pairs.drain(k..));
            train.extend(pairs);
        }
        // an item whose interactions were all dropped keeps one (every id keeps an interaction somewhere)
        let mut seen = vec![false; self.n_items];
        for &(_, i) in train.iter().chain(&self.valid).chain(&self.test) {
            seen[i] = true;
        }
        dropped.sort_unstable();
        for p in dropped {
            if !seen[p.1] {
                seen[p.1] = true;
                train.push(p);
            }
        }
        train.sort_unstable();
        let name = "thinned training split";
        let (valid, test) = (self.valid.clone(), self.test.clone());
        let mut ds = Dataset::new(name, train, valid, test, self.item_features.clone())?;
        // ids come from the interactions: an id at the end with none left would shrink the counts
        (ds.n_users, ds.n_items) = (self.n_users, self.n_items);
        ds.user_features = self.user_features.clone();
        ds.validate(std::path::Path::new(name))?;
        Ok(ds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> Dataset {
        // 6 users, 10 items, every item in training
        let train: Vec<Pair> = (0..6)
            .flat_map(|u| (0..4).map(move |k| (u, (u + 2 * k) % 10)))
            .collect();
        let valid = vec![(0, 1), (1, 4), (2, 5)];
        let test = vec![(3, 0), (4, 7), (5, 6)];
        Dataset::new("toy", train, valid, test, vec![]).unwrap()
    }

    #[test]
    fn held_out_items_leave_training_and_split_between_validation_and_test() {
        let base = toy();
        let ds = base.hold_out_items(0.4, 3).unwrap();
        let cold = ds.cold_items();
        assert_eq!(cold.len(), 4);
        assert_eq!((ds.n_users, ds.n_items), (base.n_users, base.n_items));
        let in_valid: Vec<usize> = cold
            .iter()
            .copied()
            .filter(|&i| ds.valid.iter().any(|p| p.1 == i))
            .collect();
        let in_test: Vec<usize> = cold
            .iter()
            .copied()
            .filter(|&i| ds.test.iter().any(|p| p.1 == i))
            .collect();
        // disjoint halves, each holding every interaction of its items
        assert!(in_valid.iter().all(|i| !in_test.contains(i)));
        assert_eq!(in_valid.len() + in_test.len(), 4);
        for &i in &cold {
            let before = (base.train.iter().chain(&base.valid).chain(&base.test))
                .filter(|p| p.1 == i)
                .count();
            let after = ds.valid.iter().chain(&ds.test).filter(|p| p.1 == i).count();
            assert_eq!(before, after, "item {i}");
        }
        // the other items keep their interactions where they were
        let warm = |p: &&Pair| !cold.contains(&p.1);
        assert_eq!(
            base.train.iter().filter(warm).count(),
            ds.train.len(),
            "training keeps the other items"
        );
        // seeded
        assert_eq!(base.hold_out_items(0.4, 3).unwrap().test, ds.test);
        assert_ne!(base.hold_out_items(0.4, 4).unwrap().cold_items(), cold);
    }

    #[test]
    fn thinning_keeps_a_share_of_each_users_training_and_every_held_out_pair() {
        let base = toy();
        let ds = base.thin_train(0.5, 3).unwrap();
        // every user keeps 2 of its 4 training pairs, drawn from them, beside those kept for items that
        // would have no interaction left anywhere
        let only_in_train = |i: usize| !base.valid.iter().chain(&base.test).any(|p| p.1 == i);
        for u in 0..6 {
            let kept: Vec<&Pair> = ds.train.iter().filter(|p| p.0 == u).collect();
            assert!(kept.iter().all(|p| base.train.contains(p)));
            let drawn = kept.len() - kept.iter().filter(|p| only_in_train(p.1)).count();
            assert!(drawn <= 2 && kept.len() >= 2, "user {u}: {kept:?}");
        }
        assert!(ds.train.len() < base.train.len());
        for i in (0..base.n_items).filter(|&i| only_in_train(i)) {
            assert!(
                ds.train.iter().any(|p| p.1 == i),
                "item {i} keeps an interaction"
            );
        }
        assert_eq!((&ds.valid, &ds.test), (&base.valid, &base.test));
        assert_eq!((ds.n_users, ds.n_items), (base.n_users, base.n_items));
        // the items left without training pairs are the cold ones
        let cold = ds.cold_items();
        assert!(!cold.is_empty());
        for i in 0..base.n_items {
            assert_eq!(
                cold.contains(&i),
                !ds.train.iter().any(|p| p.1 == i),
                "item {i}"
            );
        }
        // at least one pair per user; seeded
        let sparse = base.thin_train(0.01, 3).unwrap();
        assert!((0..6).all(|u| sparse.train.iter().any(|p| p.0 == u)));
        assert_eq!(base.thin_train(0.5, 3).unwrap().train, ds.train);
        assert_ne!(base.thin_train(0.5, 4).unwrap().train, ds.train);
        assert_eq!(
            base.thin_train(1.0, 3).unwrap().train.len(),
            base.train.len()
        );
        for keep in [0.0, -0.5, 1.5, f64::NAN] {
            let e = base.thin_train(keep, 1).unwrap_err().to_string();
            assert!(e.contains("keep"), "{keep}: {e}");
        }
    }

    #[test]
    fn fractions_that_hold_out_too_little_or_everything_are_refused() {
        let base = toy();
        for f in [0.0, -0.1, 1.0, f64::NAN, 0.05] {
            let e = base.hold_out_items(f, 1).unwrap_err().to_string();
            assert!(e.contains("fraction"), "{f}: {e}");
        }
    }
}
