//! All-item ranking evaluation with the MMRec protocol, for any user and item embeddings (the model's
//! [`crate::model::Trainer::evaluate`] uses it).

use crate::backend::{map_chunks, Par};
use crate::data::Pair;
use crate::error::{check_finite_array, Error, Result};
use ndarray::{s, Array2, ArrayView2};

/// Ranking metrics averaged over the users that have at least one ground-truth item.
#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    /// The cut-offs, ascending.
    pub ks: Vec<usize>,
    /// Recall@K = hits / |ground truth|.
    pub recall: Vec<f64>,
    /// NDCG@K with binary gains, IDCG over `min(|ground truth|, K)` positions.
    pub ndcg: Vec<f64>,
    /// Precision@K = hits / K.
    pub precision: Vec<f64>,
    /// Hit@K = 1 when at least one ground-truth item is in the top K.
    pub hit: Vec<f64>,
    /// Users evaluated.
    pub users: usize,
}

impl Metrics {
    /// The value of a metric at cut-off `k` (`None` when `k` was not asked for).
    pub fn at(&self, metric: &[f64], k: usize) -> Option<f64> {
        self.ks.iter().position(|&x| x == k).map(|i| metric[i])
    }
}

/// Sorted, de-duplicated per-user item lists from pairs.
pub(crate) fn by_user(pairs: &[Pair], n_users: usize) -> Vec<Vec<u32>> {
    let mut lists = vec![Vec::new(); n_users];
    for &(u, i) in pairs {
        lists[u].push(i as u32);
    }
    for l in &mut lists {
        l.sort_unstable();
        l.dedup();
    }
    lists
}

/// Users scored per GEMM block (scores held: `BLOCK x n_items`).
const BLOCK: usize = 64;

/// All-item ranking metrics: every user with ground-truth items ranks all items by `user . item`, the items in
/// `masked` (train, and valid when scoring test) removed, ties broken by the smaller item id.
///
/// # Arguments
/// * `users`, `items` - embeddings, `n_users x d` and `n_items x d`.
/// * `ground_truth` - `(user, item)` pairs to retrieve (the test or valid split).
/// * `masked` - splits whose items are excluded from each user's ranking.
/// * `ks` - cut-offs (each >= 1).
///
/// # Errors
/// [`Error::Shape`] for embeddings of different widths, [`Error::Param`] for an empty `ks`, a cut-off of 0 or
/// an id out of range, [`Error::NonFinite`] for NaN/Inf embeddings.
///
/// # Complexity
/// `O(U I d)` flops in GEMM blocks of 64 users, parallel over users as `par` says; memory
/// `O(64 I)` scores per thread (the users x items score matrix is never held).
///
/// # Example
/// ```
/// use ndarray::array;
/// use recgoat_core::{Par, model::evaluate};
/// let users = array![[1.0f32, 0.0]];
/// let items = array![[0.9f32, 0.0], [0.5, 0.0], [0.1, 0.0]];
/// // item 0 is a training item (masked), item 2 is the test item: it ranks second after item 1
/// let m = evaluate(users.view(), items.view(), &[(0, 2)], &[&[(0, 0)]], &[1, 2], Par::Seq).unwrap();
/// assert_eq!(m.recall, vec![0.0, 1.0]);
/// assert!((m.ndcg[1] - 1.0 / 3f64.log2()).abs() < 1e-12);
/// ```
pub fn evaluate(
    users: ArrayView2<'_, f32>,
    items: ArrayView2<'_, f32>,
    ground_truth: &[Pair],
    masked: &[&[Pair]],
    ks: &[usize],
    par: impl Into<Par>,
) -> Result<Metrics> {
    let par: Par = par.into();
    const OP: &str = "evaluate";
    let (n_users, n_items) = (users.nrows(), items.nrows());
    if users.ncols() != items.ncols() {
        return Err(Error::shape(
            OP,
            "item embedding width vs user embedding width",
            users.ncols(),
            items.ncols(),
        ));
    }
    check_finite_array(OP, "users", &users)?;
    check_finite_array(OP, "items", &items)?;
    let mut ks: Vec<usize> = ks.to_vec();
    ks.sort_unstable();
    ks.dedup();
    if ks.is_empty() || ks[0] == 0 {
        return Err(Error::param(
            OP,
            "ks",
            format!("{ks:?}"),
            "give at least one cut-off, each >= 1",
        ));
    }
    for (name, split) in
        std::iter::once(("ground_truth", ground_truth)).chain(masked.iter().map(|m| ("masked", *m)))
    {
        if let Some(p) = split.iter().find(|p| p.0 >= n_users || p.1 >= n_items) {
            return Err(Error::param(
                OP,
                "pairs",
                format!("{name} {p:?}"),
                format!("out of range for {n_users} users, {n_items} items"),
            ));
        }
    }
    let truth = by_user(ground_truth, n_users);
    let mut mask = vec![Vec::new(); n_users];
    for split in masked {
        for &(u, i) in *split {
            mask[u].push(i as u32);
        }
    }
    let evaluated: Vec<usize> = (0..n_users).filter(|&u| !truth[u].is_empty()).collect();
    let kmax = ks[ks.len() - 1].min(n_items);
    let nk = ks.len();
    let blocks: Vec<&[usize]> = evaluated.chunks(BLOCK).collect();
    let sums = map_chunks(par, blocks.len(), |_, range| {
        let mut acc = vec![0.0f64; 4 * nk];
        let mut order: Vec<u32> = Vec::with_capacity(n_items);
        for blk in &blocks[range] {
            let ub = Array2::from_shape_fn((blk.len(), users.ncols()), |(r, c)| users[[blk[r], c]]);
            let scores = ub.dot(&items.t());
            for (r, &u) in blk.iter().enumerate() {
                let row = scores.slice(s![r, ..]);
                let mut row = row.to_vec();
                for &i in &mask[u] {
                    row[i as usize] = f32::NEG_INFINITY;
                }
                order.clear();
                order.extend(0..n_items as u32);
                let cmp =
                    |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
                if kmax < n_items {
                    order.select_nth_unstable_by(kmax, cmp);
                }
                let top = &mut order[..kmax];
                top.sort_unstable_by(cmp);
                score_user(top, &truth[u], &ks, &mut acc);
            }
        }
        acc
    });
    let mut acc = vec![0.0f64; 4 * nk];
    for part in sums {
        for (a, p) in acc.iter_mut().zip(part) {
            *a += p;
        }
    }
    let n = evaluated.len().max(1) as f64;
    let take = |m: usize| {
        acc[m * nk..(m + 1) * nk]
            .iter()
            .map(|v| v / n)
            .collect::<Vec<f64>>()
    };
    Ok(Metrics {
        ks,
        recall: take(0),
        ndcg: take(1),
        precision: take(2),
        hit: take(3),
        users: evaluated.len(),
    })
}

/// Adds one user's recall, NDCG, precision and hit at every cut-off into `acc` (4 blocks of `ks.len()`).
fn score_user(top: &[u32], truth: &[u32], ks: &[usize], acc: &mut [f64]) {
    let nk = ks.len();
    let (mut hits, mut dcg, mut pos) = (0usize, 0.0f64, 0usize);
    for (ki, &k) in ks.iter().enumerate() {
        while pos < k.min(top.len()) {
            if truth.binary_search(&top[pos]).is_ok() {
                hits += 1;
                dcg += 1.0 / ((pos + 2) as f64).log2();
            }
            pos += 1;
        }
        let idcg: f64 = (0..truth.len().min(k))
            .map(|i| 1.0 / ((i + 2) as f64).log2())
            .sum();
        acc[ki] += hits as f64 / truth.len() as f64;
        acc[nk + ki] += dcg / idcg;
        acc[2 * nk + ki] += hits as f64 / k as f64;
        acc[3 * nk + ki] += f64::from(u8::from(hits > 0));
    }
}

/// Naive reference of [`evaluate`] (full f64 score matrix, a full sort per user). For tests.
pub fn evaluate_reference(
    users: &Array2<f64>,
    items: &Array2<f64>,
    ground_truth: &[Pair],
    masked: &[&[Pair]],
    ks: &[usize],
) -> Metrics {
    let scores = users.dot(&items.t());
    let (n_users, n_items) = scores.dim();
    let truth = by_user(ground_truth, n_users);
    let mut out = Metrics {
        ks: ks.to_vec(),
        recall: vec![0.0; ks.len()],
        ndcg: vec![0.0; ks.len()],
        precision: vec![0.0; ks.len()],
        hit: vec![0.0; ks.len()],
        users: 0,
    };
    for u in 0..n_users {
        if truth[u].is_empty() {
            continue;
        }
        out.users += 1;
        let masked_u: Vec<usize> = masked
            .iter()
            .flat_map(|m| m.iter().filter(|p| p.0 == u).map(|p| p.1))
            .collect();
        let mut ranked: Vec<usize> = (0..n_items).filter(|i| !masked_u.contains(i)).collect();
        ranked.sort_by(|&a, &b| {
            scores[[u, b]]
                .partial_cmp(&scores[[u, a]])
                .unwrap()
                .then(a.cmp(&b))
        });
        for (ki, &k) in ks.iter().enumerate() {
            let top = &ranked[..k.min(ranked.len())];
            let hits: Vec<usize> = top
                .iter()
                .enumerate()
                .filter(|(_, i)| truth[u].contains(&(**i as u32)))
                .map(|(p, _)| p)
                .collect();
            let dcg: f64 = hits.iter().map(|&p| 1.0 / ((p + 2) as f64).log2()).sum();
            let idcg: f64 = (0..truth[u].len().min(k))
                .map(|i| 1.0 / ((i + 2) as f64).log2())
                .sum();
            out.recall[ki] += hits.len() as f64 / truth[u].len() as f64;
            out.ndcg[ki] += dcg / idcg;
            out.precision[ki] += hits.len() as f64 / k as f64;
            out.hit[ki] += if hits.is_empty() { 0.0 } else { 1.0 };
        }
    }
    let n = out.users.max(1) as f64;
    for v in [
        &mut out.recall,
        &mut out.ndcg,
        &mut out.precision,
        &mut out.hit,
    ] {
        v.iter_mut().for_each(|x| *x /= n);
    }
    out
}
