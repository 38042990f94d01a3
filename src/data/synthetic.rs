//! Synthetic scale-ups of a dataset for measuring how training cost grows with the data.

use super::{Dataset, Pair, MAX_ID};
use crate::error::{Error, Result};
use ndarray::Array2;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, StandardNormal};
use std::collections::HashSet;

const OP: &str = "data::scale_up";

/// The most interactions a scale-up may have (all splits together).
pub const MAX_SCALED_INTERACTIONS: usize = 1 << 31;

/// A synthetic dataset `factor` times the size of `base`: `factor` copies of every user and every item, each
/// copy with its original's number of interactions in each split, the items of every split wired at random
/// (a configuration model: each item copy is drawn as often as its original was, so the user and item
/// degree distributions are kept while the pairs are new). Each item copy's features are its original's plus
/// Gaussian noise of 0.1 times the matrix's standard deviation, so no two rows are equal.
///
/// A pair drawn twice for a user (within or across splits) is swapped with another draw of the split when
/// one fits, else dropped; users and items left with no interaction are then removed and the ids renumbered,
/// so the result is a valid [`Dataset`]. Deterministic per `seed`; `factor` 1 rewires `base` itself.
///
/// # Errors
/// [`Error::Param`] when `factor` is 0 or the scale-up would exceed [`MAX_ID`] ids or
/// [`MAX_SCALED_INTERACTIONS`] interactions; [`Error::Data`] from checking the result.
///
/// # Example
/// ```
/// use recgoat_core::data::{scale_up, Dataset};
/// let base = Dataset::new("toy", vec![(0, 0), (0, 1), (1, 1), (2, 2)], vec![], vec![(1, 0)], vec![])?;
/// let big = scale_up(&base, 4, 7)?;
/// assert!(big.n_users <= 12 && big.train.len() <= 16 && big.train.len() >= 12);
/// # Ok::<(), recgoat_core::Error>(())
/// ```
pub fn scale_up(base: &Dataset, factor: usize, seed: u64) -> Result<Dataset> {
    let total = base.train.len() + base.valid.len() + base.test.len();
    let too_big = |what: &str, v: Option<usize>, max: usize| match v {
        Some(v) if v <= max => Ok(v),
        _ => Err(Error::param(
            OP,
            "factor",
            factor,
            format!("the scale-up's {what} would exceed {max}"),
        )),
    };
    if factor == 0 {
        return Err(Error::param(OP, "factor", 0, "must be >= 1"));
    }
    let n_users = too_big("user count", base.n_users.checked_mul(factor), MAX_ID)?;
    let n_items = too_big("item count", base.n_items.checked_mul(factor), MAX_ID)?;
    too_big(
        "interaction count",
        total.checked_mul(factor),
        MAX_SCALED_INTERACTIONS,
    )?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (nu, ni) = (base.n_users, base.n_items);
    // every user's items over the splits drawn so far
    let mut seen: Vec<HashSet<u32>> = vec![HashSet::new(); n_users];
    let mut splits: Vec<Vec<Pair>> = Vec::with_capacity(3);
    for split in [&base.train, &base.valid, &base.test] {
        let (mut user_deg, mut item_deg) = (vec![0usize; nu], vec![0usize; ni]);
        for &(u, i) in split {
            user_deg[u] += 1;
            item_deg[i] += 1;
        }
        // one stub per draw of an item copy, shuffled
        let mut stubs: Vec<u32> = Vec::with_capacity(split.len() * factor);
        for c in 0..factor {
            for (i, &k) in item_deg.iter().enumerate() {
                let id = (c * ni + i) as u32;
                stubs.extend(std::iter::repeat(id).take(k));
            }
        }
        stubs.shuffle(&mut rng);
        let mut pairs = Vec::with_capacity(stubs.len());
        let mut next = 0;
        for c in 0..factor {
            for (u, &k) in user_deg.iter().enumerate() {
                let user = c * nu + u;
                for _ in 0..k {
                    // a repeat swaps with a random later stub (a few tries), else the draw is dropped
                    for _ in 0..8 {
                        if !seen[user].contains(&stubs[next]) || next + 1 == stubs.len() {
                            break;
                        }
                        let j = rng.gen_range(next + 1..stubs.len());
                        stubs.swap(next, j);
                    }
                    let item = stubs[next];
                    next += 1;
                    if seen[user].insert(item) {
                        pairs.push((user, item as usize));
                    }
                }
            }
        }
        splits.push(pairs);
    }
    // ids that drew nothing are removed: the rest renumbered in order
    let renumber = |n: usize, used: &mut dyn Iterator<Item = usize>| {
        let mut map = vec![usize::MAX; n];
        for id in used {
            map[id] = 0;
        }
        for (k, m) in map.iter_mut().filter(|m| **m == 0).enumerate() {
            *m = k;
        }
        map
    };
    let user_map = renumber(n_users, &mut splits.iter().flatten().map(|p| p.0));
    let item_map = renumber(n_items, &mut splits.iter().flatten().map(|p| p.1));
    for split in &mut splits {
        for p in split.iter_mut() {
            *p = (user_map[p.0], item_map[p.1]);
        }
    }
    let kept: Vec<usize> = (0..n_items)
        .filter(|&i| item_map[i] != usize::MAX)
        .collect();
    let features = (base.item_features.iter())
        .map(|(name, x)| {
            let n = x.len().max(1) as f64;
            let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
            let var = x
                .iter()
                .map(|&v| (f64::from(v) - mean).powi(2))
                .sum::<f64>()
                / n;
            let noise = Normal::new(0.0, 0.1 * var.sqrt()).map_err(|e| {
                Error::param(OP, "features", name.clone(), format!("noise scale: {e}"))
            })?;
            let mut out = Array2::<f32>::zeros((kept.len(), x.ncols()));
            for (row, &i) in out.rows_mut().into_iter().zip(&kept) {
                let src = x.row(i % ni);
                for (o, &v) in row.into_iter().zip(src) {
                    *o = v + noise.sample(&mut rng) as f32;
                }
            }
            Ok((name.clone(), out))
        })
        .collect::<Result<Vec<_>>>()?;
    let [train, valid, test]: [Vec<Pair>; 3] = splits
        .try_into()
        .map_err(|_| Error::shape(OP, "splits", 3, "fewer"))?;
    let name = format!("synthetic scale-up x{factor} (seed {seed})");
    Dataset::new(name, train, valid, test, features)
}

/// The most values [`clustered_features`] makes (2^31, 8 GiB of `f32`).
pub const MAX_SYNTHETIC_VALUES: usize = 1 << 31;

/// `n` feature rows of width `dim` with cluster structure, for measuring kNN builds on catalogues of any
/// size: `max(n / per_cluster, 1)` centres drawn from the standard normal, row `i` the centre `i mod
/// clusters` plus standard normal noise times `noise` (1: each row's noise as large as the spread of the
/// centres). Deterministic per `seed`.
///
/// # Errors
/// [`Error::Param`] for `n`, `dim` or `per_cluster` of 0, a negative or non-finite `noise`, or more than
/// [`MAX_SYNTHETIC_VALUES`] values.
///
/// # Example
/// ```
/// use recgoat_core::data::clustered_features;
/// let x = clustered_features(1000, 16, 100, 1.0, 7)?;
/// assert_eq!(x.dim(), (1000, 16));
/// assert_eq!(x, clustered_features(1000, 16, 100, 1.0, 7)?);
/// # Ok::<(), recgoat_core::Error>(())
/// ```
pub fn clustered_features(
    n: usize,
    dim: usize,
    per_cluster: usize,
    noise: f32,
    seed: u64,
) -> Result<Array2<f32>> {
    const OP: &str = "data::clustered_features";
    for (name, v) in [("n", n), ("dim", dim), ("per_cluster", per_cluster)] {
        if v == 0 {
            return Err(Error::param(OP, name, 0, "must be >= 1"));
        }
    }
    if !(noise.is_finite() && noise >= 0.0) {
        return Err(Error::param(OP, "noise", noise, "must be finite and >= 0"));
    }
    match n.checked_mul(dim) {
        Some(v) if v <= MAX_SYNTHETIC_VALUES => {}
        _ => {
            return Err(Error::param(
                OP,
                "n",
                n,
                format!("n x dim (dim {dim}) must be at most {MAX_SYNTHETIC_VALUES} values"),
            ))
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let clusters = (n / per_cluster).max(1);
    let centres =
        Array2::<f32>::from_shape_simple_fn((clusters, dim), || StandardNormal.sample(&mut rng));
    let mut x = Array2::<f32>::zeros((n, dim));
    for (i, mut row) in x.rows_mut().into_iter().enumerate() {
        for (o, &m) in row.iter_mut().zip(centres.row(i % clusters)) {
            let e: f32 = StandardNormal.sample(&mut rng);
            *o = m + noise * e;
        }
    }
    Ok(x)
}
