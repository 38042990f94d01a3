//! All-item ranking evaluation with the MMRec protocol, for any user and item embeddings (the model's
//! [`crate::model::Trainer::evaluate`] uses it).

use crate::backend::{map_chunks, Par};
use crate::data::{Dataset, Pair};
use crate::dist::World;
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
    /// The same metrics over the ground-truth items that have training interactions (warm items), on the
    /// same all-item ranking, averaged over the users with at least one such item; present when the
    /// ground truth also holds items without training interactions ([`evaluate_grouped`]).
    pub warm: Option<Box<Metrics>>,
    /// The same over the ground-truth items without training interactions (cold items): how well a model
    /// places new items among the whole catalogue; present beside [`Metrics::warm`].
    pub cold: Option<Box<Metrics>>,
}

impl Metrics {
    /// The value of a metric at cut-off `k` (`None` when `k` was not asked for).
    pub fn at(&self, metric: &[f64], k: usize) -> Option<f64> {
        self.ks.iter().position(|&x| x == k).map(|i| metric[i])
    }

    /// Recall@`k` and NDCG@`k` (NaN when `k` was not asked for).
    pub fn recall_ndcg(&self, k: usize) -> (f64, f64) {
        let at = |m: &[f64]| self.at(m, k).unwrap_or(f64::NAN);
        (at(&self.recall), at(&self.ndcg))
    }
}

/// Which held-out split to rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Validation: train items masked.
    Valid,
    /// Test: train and validation items masked.
    Test,
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
    evaluate_grouped(users, items, ground_truth, masked, &[], ks, par)
}

/// [`evaluate`] with the metrics also given apart for warm and cold ground-truth items, on the one all-item
/// ranking: `cold[i]` says that item `i` has no training interaction. When the ground truth holds both
/// kinds, [`Metrics::warm`] averages over the users with a warm ground-truth item the metrics of their warm
/// items alone (so a cold item ranked above them costs them, as it would in a served list), and
/// [`Metrics::cold`] likewise for cold items; an empty `cold` (or a ground truth of one kind) gives none.
///
/// # Errors
/// As [`evaluate`]; [`Error::Shape`] for a non-empty `cold` whose length is not the item count.
///
/// # Example
/// ```
/// use ndarray::array;
/// use recgoat_core::{Par, eval::evaluate_grouped};
/// let users = array![[1.0f32, 0.0]];
/// let items = array![[0.9f32, 0.0], [0.5, 0.0], [0.1, 0.0]];
/// // item 2 is new (cold): the user's truth is items 1 (ranked 2nd) and 2 (ranked 3rd)
/// let m = evaluate_grouped(users.view(), items.view(), &[(0, 1), (0, 2)], &[], &[false, false, true],
///                          &[2], Par::Seq).unwrap();
/// assert_eq!(m.recall, vec![0.5]);
/// assert_eq!((m.warm.unwrap().recall[0], m.cold.unwrap().recall[0]), (1.0, 0.0));
/// ```
pub fn evaluate_grouped(
    users: ArrayView2<'_, f32>,
    items: ArrayView2<'_, f32>,
    ground_truth: &[Pair],
    masked: &[&[Pair]],
    cold: &[bool],
    ks: &[usize],
    par: impl Into<Par>,
) -> Result<Metrics> {
    let mut out = evaluate_cold_scales(users, items, ground_truth, masked, cold, &[1.0], ks, par)?;
    Ok(out.remove(0))
}

/// [`evaluate_grouped`] for each of several scales of the cold items' scores at once: with scale `s` the
/// cold items score `s (user . item)` (what scaling their vectors by `s` gives), the warm items as they
/// are. One scoring pass ranks the warm and the cold items apart; each scale's ranking merges the two.
/// Masked items keep their place at the end whatever the scale. Scale 1 is [`evaluate_grouped`].
///
/// # Errors
/// As [`evaluate_grouped`]; [`Error::Param`] for a scale that is not finite and >= 0, or none.
///
/// # Example
/// ```
/// use ndarray::array;
/// use recgoat_core::{Par, eval::evaluate_cold_scales};
/// let users = array![[1.0f32, 0.0]];
/// let items = array![[0.9f32, 0.0], [0.5, 0.0], [0.1, 0.0]];
/// let cold = [false, false, true];
/// let m = evaluate_cold_scales(users.view(), items.view(), &[(0, 1), (0, 2)], &[], &cold, &[1.0, 10.0],
///                              &[1], Par::Seq).unwrap();
/// // scaled tenfold, the cold item (score 1.0) ranks first
/// assert_eq!((m[0].recall[0], m[1].recall[0]), (0.0, 0.5));
/// ```
#[allow(clippy::too_many_arguments)]
pub fn evaluate_cold_scales(
    users: ArrayView2<'_, f32>,
    items: ArrayView2<'_, f32>,
    ground_truth: &[Pair],
    masked: &[&[Pair]],
    cold: &[bool],
    scales: &[f64],
    ks: &[usize],
    par: impl Into<Par>,
) -> Result<Vec<Metrics>> {
    let truth = (ground_truth, masked, cold);
    cold_scales_in(
        &World::single(),
        users,
        items,
        truth,
        scales,
        ks,
        par.into(),
    )
}

/// [`evaluate_cold_scales`] with the users split over the ranks of `world` and their sums added up
/// (collective: every rank gets the metrics of every user).
fn cold_scales_in(
    world: &World,
    users: ArrayView2<'_, f32>,
    items: ArrayView2<'_, f32>,
    (ground_truth, masked, cold): (&[Pair], &[&[Pair]], &[bool]),
    scales: &[f64],
    ks: &[usize],
    par: Par,
) -> Result<Vec<Metrics>> {
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
    if !cold.is_empty() && cold.len() != n_items {
        return Err(Error::shape(
            OP,
            "cold flags (one per item)",
            n_items,
            cold.len(),
        ));
    }
    if scales.is_empty() || scales.iter().any(|s| !(s.is_finite() && *s >= 0.0)) {
        let why = "give at least one, each finite and >= 0";
        return Err(Error::param(OP, "scales", format!("{scales:?}"), why));
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
    let is_cold = |i: u32| cold.get(i as usize).copied().unwrap_or(false);
    // the groups: every item, then (when the truth holds both kinds) warm and cold items apart
    let n_cold = ground_truth.iter().filter(|p| is_cold(p.1 as u32)).count();
    let grouped = n_cold > 0 && n_cold < ground_truth.len();
    let groups: Vec<Vec<Vec<u32>>> = if grouped {
        let part = |want: bool| -> Vec<Vec<u32>> {
            (truth.iter())
                .map(|t| t.iter().copied().filter(|&i| is_cold(i) == want).collect())
                .collect()
        };
        vec![part(false), part(true)]
    } else {
        Vec::new()
    };
    let mut mask = vec![Vec::new(); n_users];
    for split in masked {
        for &(u, i) in *split {
            mask[u].push(i as u32);
        }
    }
    let (warm_ids, cold_ids): (Vec<u32>, Vec<u32>) =
        (0..n_items as u32).partition(|&i| !is_cold(i));
    let evaluated: Vec<usize> = (0..n_users).filter(|&u| !truth[u].is_empty()).collect();
    // with several ranks each ranks its share of the users; the sums are added up below
    let evaluated = evaluated[world.share(evaluated.len())].to_vec();
    let kmax = ks[ks.len() - 1].min(n_items);
    let nk = ks.len();
    // per scale and group (all, then warm and cold): 4 metrics x nk sums and the user count
    let n_groups = 1 + groups.len();
    let width = 4 * nk + 1;
    let per_scale = n_groups * width;
    let blocks: Vec<&[usize]> = evaluated.chunks(BLOCK).collect();
    let sums = map_chunks(par, blocks.len(), |_, range| {
        let mut acc = vec![0.0f64; scales.len() * per_scale];
        let (mut warm_top, mut cold_top, mut cold_zero) = (Vec::new(), Vec::new(), Vec::new());
        // the sampled scores and the candidates of `top_by_score`, reused user after user
        let mut scratch = (Vec::new(), Vec::new());
        let mut merged: Vec<u32> = Vec::with_capacity(kmax);
        for blk in &blocks[range] {
            let ub = Array2::from_shape_fn((blk.len(), users.ncols()), |(r, c)| users[[blk[r], c]]);
            let scores = ub.dot(&items.t());
            for (r, &u) in blk.iter().enumerate() {
                let mut row = scores.slice(s![r, ..]).to_vec();
                for &i in &mask[u] {
                    row[i as usize] = f32::NEG_INFINITY;
                }
                top_by_score(&warm_ids, kmax, &row, &mut scratch, &mut warm_top);
                top_by_score(&cold_ids, kmax, &row, &mut scratch, &mut cold_top);
                // at scale 0 every unmasked cold item scores 0: they tie, the smaller id first
                let masked_last = |a: &u32, b: &u32| {
                    let m = |i: &u32| row[*i as usize] == f32::NEG_INFINITY;
                    m(a).cmp(&m(b)).then(a.cmp(b))
                };
                top_into(&cold_ids, kmax, masked_last, &mut cold_zero);
                for (k, &scale) in scales.iter().enumerate() {
                    let sf = scale as f32;
                    let cold_score = |i: u32| match row[i as usize] {
                        v if v == f32::NEG_INFINITY => v,
                        v => sf * v,
                    };
                    let cold_list = if scale == 0.0 { &cold_zero } else { &cold_top };
                    merge_top(
                        (&warm_top, |i: u32| row[i as usize]),
                        (cold_list, cold_score),
                        kmax,
                        &mut merged,
                    );
                    let truths = std::iter::once(&truth[u]).chain(groups.iter().map(|g| &g[u]));
                    for (g, t) in truths.enumerate() {
                        if !t.is_empty() {
                            let at = k * per_scale + g * width;
                            let a = &mut acc[at..at + width];
                            score_user(&merged, t, &ks, &mut a[..4 * nk]);
                            a[4 * nk] += 1.0;
                        }
                    }
                }
            }
        }
        acc
    });
    let mut acc = vec![0.0f64; scales.len() * per_scale];
    for part in sums {
        for (a, p) in acc.iter_mut().zip(part) {
            *a += p;
        }
    }
    world.sum(&mut acc)?;
    let group = |k: usize, g: usize| {
        let a = &acc[k * per_scale + g * width..k * per_scale + (g + 1) * width];
        let users = a[4 * nk] as usize;
        let n = users.max(1) as f64;
        let take = |m: usize| {
            a[m * nk..(m + 1) * nk]
                .iter()
                .map(|v| v / n)
                .collect::<Vec<f64>>()
        };
        Metrics {
            ks: ks.clone(),
            recall: take(0),
            ndcg: take(1),
            precision: take(2),
            hit: take(3),
            users,
            warm: None,
            cold: None,
        }
    };
    Ok((0..scales.len())
        .map(|k| {
            let mut out = group(k, 0);
            if grouped {
                out.warm = Some(Box::new(group(k, 1)));
                out.cold = Some(Box::new(group(k, 2)));
            }
            out
        })
        .collect())
}

/// The first `k` of `ids` in the order `cmp`, sorted, into `out`.
fn top_into(
    ids: &[u32],
    k: usize,
    cmp: impl Fn(&u32, &u32) -> std::cmp::Ordering,
    out: &mut Vec<u32>,
) {
    out.clear();
    out.extend_from_slice(ids);
    let k = k.min(out.len());
    if k < out.len() {
        out.select_nth_unstable_by(k, &cmp);
        out.truncate(k);
    }
    out.sort_unstable_by(&cmp);
}

/// [`top_into`] in the order of `scores` (descending, [`f32::total_cmp`], the smaller id first on ties).
///
/// A long list is first cut to the ids that can make the top `k`: the `k`-th best score of an evenly
/// spaced sample of `16 k` ids bounds the `k`-th best of all from below, so one pass keeps the ids scoring at
/// least that (ties included, typically a few per cent of the list) and the exact selection runs on those.
fn top_by_score(
    ids: &[u32],
    k: usize,
    scores: &[f32],
    (sample, candidates): &mut (Vec<f32>, Vec<u32>),
    out: &mut Vec<u32>,
) {
    let by_score = |a: &u32, b: &u32| {
        scores[*b as usize]
            .total_cmp(&scores[*a as usize])
            .then(a.cmp(b))
    };
    let sample_len = 16 * k;
    if k == 0 || ids.len() <= 2 * sample_len {
        return top_into(ids, k, by_score, out);
    }
    let step = ids.len() / sample_len;
    sample.clear();
    sample.extend(ids.iter().step_by(step).map(|&i| scores[i as usize]));
    // the k-th largest of the sample (at least k values: len / step >= 16 k)
    let (_, &mut bound, _) = sample.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    candidates.clear();
    candidates.extend(
        ids.iter()
            .copied()
            .filter(|&i| scores[i as usize].total_cmp(&bound).is_ge()),
    );
    top_into(candidates, k, by_score, out);
}

/// The first `k` of two lists, each sorted by its scores (descending, the smaller id first on ties), merged
/// in that order, into `out`.
fn merge_top(
    (a, sa): (&[u32], impl Fn(u32) -> f32),
    (b, sb): (&[u32], impl Fn(u32) -> f32),
    k: usize,
    out: &mut Vec<u32>,
) {
    out.clear();
    let (mut i, mut j) = (0, 0);
    while out.len() < k && (i < a.len() || j < b.len()) {
        let take_a = match (a.get(i), b.get(j)) {
            (Some(&x), Some(&y)) => sa(x).total_cmp(&sb(y)).then(y.cmp(&x)).is_ge(),
            (Some(_), None) => true,
            _ => false,
        };
        if take_a {
            out.push(a[i]);
            i += 1;
        } else {
            out.push(b[j]);
            j += 1;
        }
    }
}

/// The ranking protocol on a dataset's split: the users with training interactions rank every item (the
/// training items masked, and the validation items when ranking test) by `user . item`, with the metrics
/// at [`EVAL_KS`] and, when the split holds items without training interactions, apart for warm and cold
/// items ([`evaluate_grouped`]). Users without training interactions ([`Dataset::cold_users`]) are left out:
/// nothing is known of them.
///
/// # Errors
/// As [`evaluate_grouped`]; [`Error::Shape`] for vectors that do not have one row per user and per item.
pub fn evaluate_split(
    data: &Dataset,
    users: ArrayView2<'_, f32>,
    items: ArrayView2<'_, f32>,
    split: Split,
    par: impl Into<Par>,
) -> Result<Metrics> {
    split_in(&World::single(), data, (users, items), split, par.into())
}

/// [`evaluate_split`] with the users split over the ranks of `world` (collective).
pub(crate) fn split_in(
    world: &World,
    data: &Dataset,
    vectors: (ArrayView2<'_, f32>, ArrayView2<'_, f32>),
    split: Split,
    par: Par,
) -> Result<Metrics> {
    let mut out = split_scales_in(world, data, vectors, split, &[], &[1.0], par)?;
    Ok(out.remove(0))
}

/// [`evaluate_split`] for several scales of the cold items' scores at once ([`evaluate_cold_scales`]).
///
/// # Errors
/// As [`evaluate_cold_scales`]; [`Error::Shape`] for vectors that do not have one row per user and per
/// item.
pub fn evaluate_split_scales(
    data: &Dataset,
    users: ArrayView2<'_, f32>,
    items: ArrayView2<'_, f32>,
    split: Split,
    scales: &[f64],
    par: impl Into<Par>,
) -> Result<Vec<Metrics>> {
    evaluate_split_scales_as_new(data, users, items, split, &[], scales, par)
}

/// [`evaluate_split_scales`] with the items `as_new` counted and scaled as cold items too, although they
/// have training interactions (their training pairs stay masked): how new items would fare, simulated with
/// items whose vectors were replaced by what a new item gets.
///
/// # Errors
/// As [`evaluate_split_scales`]; [`Error::Param`] for an item id out of range.
pub fn evaluate_split_scales_as_new(
    data: &Dataset,
    users: ArrayView2<'_, f32>,
    items: ArrayView2<'_, f32>,
    split: Split,
    as_new: &[usize],
    scales: &[f64],
    par: impl Into<Par>,
) -> Result<Vec<Metrics>> {
    let world = World::single();
    split_scales_in(
        &world,
        data,
        (users, items),
        split,
        as_new,
        scales,
        par.into(),
    )
}

/// [`evaluate_split_scales_as_new`] with the users split over the ranks of `world` (collective).
pub(crate) fn split_scales_in(
    world: &World,
    data: &Dataset,
    (users, items): (ArrayView2<'_, f32>, ArrayView2<'_, f32>),
    split: Split,
    as_new: &[usize],
    scales: &[f64],
    par: Par,
) -> Result<Vec<Metrics>> {
    const OP: &str = "evaluate_split";
    if (users.nrows(), items.nrows()) != (data.n_users, data.n_items) {
        return Err(Error::shape(
            OP,
            "(user rows, item rows)",
            (data.n_users, data.n_items),
            (users.nrows(), items.nrows()),
        ));
    }
    let (truth, masked): (&[Pair], Vec<&[Pair]>) = match split {
        Split::Valid => (&data.valid, vec![&data.train]),
        Split::Test => (&data.test, vec![&data.train, &data.valid]),
    };
    let mut warm_user = vec![false; data.n_users];
    let mut cold = vec![true; data.n_items];
    for &(u, i) in &data.train {
        warm_user[u] = true;
        cold[i] = false;
    }
    for &i in as_new {
        if i >= data.n_items {
            return Err(Error::param(OP, "as_new item", i, "out of range"));
        }
        cold[i] = true;
    }
    let truth: Vec<Pair> = truth.iter().copied().filter(|p| warm_user[p.0]).collect();
    let truth = (&truth[..], &masked[..], &cold[..]);
    cold_scales_in(world, users, items, truth, scales, &EVAL_KS, par)
}

/// Cut-offs every evaluation of the protocol reports.
pub const EVAL_KS: [usize; 3] = [10, 20, 50];

/// The raw-feature baseline of the cold-start literature: every item is its feature rows scaled to unit
/// length per matrix, side by side (each matrix weighted alike), and every user the mean of its training
/// items' rows; both scaled to unit length, so that `user . item` is their cosine. It needs no training and
/// ranks new items as it ranks the others: the figure a content encoder has to beat on cold items.
///
/// # Errors
/// [`Error::Empty`] for no feature matrix; [`Error::Shape`] for a matrix without one row per item.
///
/// # Example
/// ```
/// use recgoat_core::{data::Dataset, eval::{evaluate_split, feature_cosine, Split}};
/// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/data/lfm2k");
/// let ds = Dataset::load_lightgcn_dir(dir, &["text_feat"])?;
/// let x: Vec<_> = ds.item_features.iter().map(|(_, x)| x.view()).collect();
/// let (users, items) = feature_cosine(ds.n_users, &ds.train, &x)?;
/// let m = evaluate_split(&ds, users.view(), items.view(), Split::Test, recgoat_core::Par::Seq)?;
/// assert!((m.recall_ndcg(20).0 - 0.208).abs() < 0.01); // data/README.md's sanity figure
/// # Ok::<(), recgoat_core::Error>(())
/// ```
pub fn feature_cosine(
    n_users: usize,
    train: &[Pair],
    features: &[ArrayView2<'_, f32>],
) -> Result<(Array2<f32>, Array2<f32>)> {
    const OP: &str = "feature_cosine";
    let Some(first) = features.first() else {
        return Err(Error::Empty {
            op: OP,
            what: "feature matrices".into(),
        });
    };
    let n_items = first.nrows();
    if let Some(x) = features.iter().find(|x| x.nrows() != n_items) {
        return Err(Error::shape(
            OP,
            "feature rows (one per item)",
            n_items,
            x.nrows(),
        ));
    }
    let weight = 1.0 / (features.len() as f32).sqrt();
    let blocks: Vec<Array2<f32>> = (features.iter())
        .map(|x| {
            let mut x = x.to_owned();
            crate::nn::normalize_nonzero_rows_in_place(&mut x);
            x * weight
        })
        .collect();
    let views: Vec<_> = blocks.iter().map(|b| b.view()).collect();
    let items = ndarray::concatenate(ndarray::Axis(1), &views)
        .map_err(|e| Error::shape(OP, "feature matrices", n_items, e))?;
    if let Some(p) = train.iter().find(|p| p.0 >= n_users || p.1 >= n_items) {
        let why = format!("out of range for {n_users} users, {n_items} items");
        return Err(Error::param(OP, "train", format!("{p:?}"), why));
    }
    let mut users = crate::data::user_profiles(n_users, train, &[&items]);
    crate::nn::normalize_nonzero_rows_in_place(&mut users);
    Ok((users, items))
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
        warm: None,
        cold: None,
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
