//! InfoNCE contrastive losses with in-batch negatives, forward and hand-written backward.
//!
//! # The loss
//! For two views `v1`, `v2` (B x d) of B pairs, rows L2-normalised when asked (`u`, `w`), temperature `tau`:
//!
//! ```text
//! l_b = -log( exp(u_b . w_b / tau) / (sum_j exp(u_b . w_j / tau) + sum_k exp(u_b . n_k / tau)) )
//! ```
//!
//! with optional extra negatives `n_k` (K x d, normalised like the views). The loss is `sum_b c_b l_b` with
//! `c_b = weight_b / B` ([`Reduction::Mean`]) or `weight_b` ([`Reduction::Sum`]); weights default to 1.
//! [`Direction::Symmetric`] averages the `v1 -> v2` loss and the `v2 -> v1` loss (anchors and positives
//! swapped, the same extra negatives).
//!
//! # Computation
//! Row blocks of at most `block_rows` anchors: one GEMM gives the block's similarities, one pass of a shifted
//! exp (SIMD; the shift is the row's maximum, or `1/tau` for normalised rows, which bounds every logit) its
//! log-sum-exp and loss, and two more GEMMs send the softmax minus the one-hot target to the anchors and the
//! positives, the softmax's row scale applied to their `d`-wide rows rather than to the logits. The
//! `B x (B + K)` similarity matrix is never held at once, and each block is computed once per direction for
//! the loss and the gradients together. Blocks run in parallel as `par` says, every worker with the same
//! number of equally tall blocks; the positives' gradient is summed over per-chunk partials in chunk order
//! (deterministic for a given `par`).
//!
//! A symmetric loss over L2-normalised rows without extra negatives computes the similarity matrix once for
//! both directions (three GEMMs instead of six): every logit is at most `1/tau`, so `exp(s - 1/tau)` serves
//! the row softmax and the column softmax alike, and the matrix (`B x B`, kept while the column sums are
//! gathered) is used by both gradients. It applies while `2/tau` stays clear of the float's underflow
//! (`tau` above about 0.025 in `f32`) and the matrix fits in 256 MiB (`B` up to 8192 in `f32`); other
//! cases run the two directions one after the other. The calling thread keeps the matrix's memory for its
//! next call when it is at most 64 MiB (`B` up to 4096 in `f32`), so that repeated calls (a training loop)
//! do not fault in and zero fresh pages every time.

mod cpu;

use crate::backend::Par;
use crate::error::{check_finite_array, Error, Result};
use crate::nn::{normalize_rows, normalize_rows_backward};
use crate::simd::{positive_normal, Real};
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};

/// Which way the views are contrasted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    /// Anchors from `v1`, positives and in-batch negatives from `v2`.
    #[default]
    OneWay,
    /// The mean of both one-way losses.
    Symmetric,
}

/// How per-pair losses are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reduction {
    /// `sum_b weight_b l_b / B`.
    #[default]
    Mean,
    /// `sum_b weight_b l_b`.
    Sum,
}

/// Settings of [`info_nce`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InfoNceConfig<F> {
    /// Temperature `tau > 0` (RecGOAT: 0.2).
    pub temperature: F,
    /// L2-normalise the rows of every input first (cosine similarities).
    pub normalize: bool,
    /// One-way or symmetric.
    pub direction: Direction,
    /// Mean or sum over pairs.
    pub reduction: Reduction,
    /// The most anchor rows per similarity block (memory `block_rows x (B + K)` per thread); on several
    /// threads a batch is cut into shorter, equal blocks when that gives every thread the same work.
    pub block_rows: usize,
}

impl<F: Real> Default for InfoNceConfig<F> {
    fn default() -> Self {
        InfoNceConfig {
            temperature: F::c(0.2),
            normalize: true,
            direction: Direction::OneWay,
            reduction: Reduction::Mean,
            block_rows: 256,
        }
    }
}

impl<F: Real> InfoNceConfig<F> {
    /// Checks every field.
    ///
    /// # Errors
    /// [`Error::Param`] for a temperature that is not finite and > 0, or `block_rows == 0`.
    pub fn validate(&self) -> Result<()> {
        const OP: &str = "InfoNceConfig";
        if !positive_normal(self.temperature) {
            return Err(Error::param(
                OP,
                "temperature",
                self.temperature,
                "must be finite, > 0 and large enough to divide by (a normal float)",
            ));
        }
        if self.block_rows == 0 {
            return Err(Error::param(OP, "block_rows", 0, "must be >= 1"));
        }
        Ok(())
    }
}

/// Loss and gradients from [`info_nce`].
#[derive(Debug, Clone)]
pub struct InfoNceOutput<F> {
    /// The loss.
    pub loss: F,
    /// `dloss/dv1` (B x d).
    pub grad_v1: Array2<F>,
    /// `dloss/dv2` (B x d).
    pub grad_v2: Array2<F>,
    /// `dloss/dnegatives` (K x d), when extra negatives were given.
    pub grad_negatives: Option<Array2<F>>,
}

pub(crate) fn validate_inputs<F: Real>(
    op: &'static str,
    v1: ArrayView2<'_, F>,
    v2: ArrayView2<'_, F>,
    negatives: Option<ArrayView2<'_, F>>,
    weights: Option<ArrayView1<'_, F>>,
) -> Result<()> {
    if v1.dim() != v2.dim() {
        return Err(Error::shape(
            op,
            "v2 vs v1 (pairs x dim)",
            v1.dim(),
            v2.dim(),
        ));
    }
    if v1.is_empty() {
        return Err(Error::Empty {
            op,
            what: format!("views of shape {:?}", v1.dim()),
        });
    }
    if v1.nrows() == 1 && !negatives.is_some_and(|n| n.nrows() > 0) {
        let why = "one pair without extra negatives has nothing to contrast with (its loss would be 0): give \
                   at least 2 pairs or extra negatives";
        return Err(Error::param(op, "v1 (pairs)", 1, why));
    }
    check_finite_array(op, "v1", &v1)?;
    check_finite_array(op, "v2", &v2)?;
    if let Some(n) = negatives {
        if n.ncols() != v1.ncols() {
            return Err(Error::shape(
                op,
                "negatives (K x dim)",
                ("K", v1.ncols()),
                n.dim(),
            ));
        }
        check_finite_array(op, "negatives", &n)?;
    }
    if let Some(w) = weights {
        if w.len() != v1.nrows() {
            return Err(Error::shape(
                op,
                "weights (one per pair)",
                v1.nrows(),
                w.len(),
            ));
        }
        check_finite_array(op, "weights", &w)?;
        if let Some(i) = w.iter().position(|&x| x < F::zero()) {
            return Err(Error::Negative {
                op,
                what: "weights".into(),
                index: i,
                value: w[i].to_string(),
            });
        }
    }
    Ok(())
}

/// InfoNCE loss and its gradients with respect to both views (and the extra negatives), in one fused pass.
///
/// # Arguments
/// * `v1`, `v2` - the two views of B pairs, B x d; row `b` of each is a positive pair.
/// * `negatives` - optional extra negatives, K x d, shared by every anchor.
/// * `weights` - optional non-negative per-pair weights (length B).
/// * `cfg` - temperature, normalisation, direction, reduction, block size.
///
/// # Returns
/// The loss and `dloss/dv1`, `dloss/dv2`, `dloss/dnegatives` (scale them by the upstream gradient).
///
/// # Errors
/// [`Error::Shape`] for views of different shapes, negatives of another width, or weights of another length;
/// [`Error::Empty`] for no pairs; [`Error::NonFinite`] for NaN/Inf anywhere; [`Error::Negative`] for negative
/// weights; [`Error::Param`] for a bad config, one pair without extra negatives (nothing to contrast with) or,
/// with normalisation on, a zero row (named).
///
/// # Complexity
/// `O(B (B + K) d)` flops in GEMMs per direction, `O(block_rows (B + K))` extra memory per thread.
///
/// # Example
/// ```
/// use ndarray::array;
/// use recgoat_core::{Par, contrastive::{info_nce, InfoNceConfig}};
/// let v1 = array![[1.0f64, 0.0], [0.0, 1.0]];
/// let out = info_nce(v1.view(), v1.view(), None, None, &InfoNceConfig::default(), Par::Seq).unwrap();
/// // each anchor matches its own pair (cos 1) against the other (cos 0): -log(e^5 / (e^5 + 1))
/// assert!((out.loss - (1.0 + (-5.0f64).exp()).ln()).abs() < 1e-12);
/// ```
pub fn info_nce<F: Real>(
    v1: ArrayView2<'_, F>,
    v2: ArrayView2<'_, F>,
    negatives: Option<ArrayView2<'_, F>>,
    weights: Option<ArrayView1<'_, F>>,
    cfg: &InfoNceConfig<F>,
    par: impl Into<Par>,
) -> Result<InfoNceOutput<F>> {
    let par: Par = par.into();
    const OP: &str = "info_nce";
    cfg.validate()?;
    validate_inputs(OP, v1, v2, negatives, weights)?;
    let b = v1.nrows();
    let (u, nu) = prepared_rows(OP, "v1", v1, cfg.normalize)?;
    let (w, nw) = prepared_rows(OP, "v2", v2, cfg.normalize)?;
    let neg = negatives
        .map(|n| prepared_rows(OP, "negatives", n, cfg.normalize))
        .transpose()?;
    let base = reduction_base(cfg.reduction, b);
    let half = if cfg.direction == Direction::Symmetric {
        F::c(0.5)
    } else {
        F::one()
    };
    let coef: Array1<F> = match weights {
        Some(wt) => wt.mapv(|x| x * base * half),
        None => Array1::from_elem(b, base * half),
    };
    let inv_tau = F::one() / cfg.temperature;
    let nview = neg.as_ref().map(|(a, _)| a.view());
    let block_rows = cpu::balanced_block_rows(cfg.block_rows, b, par);
    let shared = cfg.direction == Direction::Symmetric
        && cpu::symmetric_shared_applies(cfg.normalize, nview.is_some(), b, inv_tau);
    let (loss, gu, gw, gn) = if shared {
        let (loss, gu, gw) =
            cpu::symmetric_shared(u.view(), w.view(), coef.view(), inv_tau, block_rows, par);
        (loss, gu, gw, None)
    } else {
        // normalised rows bound every logit (the negatives are normalised with them)
        let shift = cpu::fixed_shift(cfg.normalize, inv_tau);
        let d1 = cpu::one_direction(
            u.view(),
            w.view(),
            nview,
            coef.view(),
            inv_tau,
            shift,
            block_rows,
            par,
        );
        let (mut loss, mut gu, mut gw, mut gn) =
            (d1.loss, d1.grad_anchor, d1.grad_positive, d1.grad_negatives);
        if cfg.direction == Direction::Symmetric {
            let d2 = cpu::one_direction(
                w.view(),
                u.view(),
                nview,
                coef.view(),
                inv_tau,
                shift,
                block_rows,
                par,
            );
            loss += d2.loss;
            gu += &d2.grad_positive;
            gw += &d2.grad_anchor;
            if let (Some(g), Some(g2)) = (gn.as_mut(), d2.grad_negatives) {
                *g += &g2;
            }
        }
        (loss, gu, gw, gn)
    };
    let gn = match (gn, neg.as_ref()) {
        (Some(g), Some((a, n))) => Some(prepared_rows_backward(a, n.as_ref(), g)),
        (g, _) => g,
    };
    Ok(InfoNceOutput {
        loss,
        grad_v1: prepared_rows_backward(&u, nu.as_ref(), gu),
        grad_v2: prepared_rows_backward(&w, nw.as_ref(), gw),
        grad_negatives: gn,
    })
}

/// The rows InfoNCE works on: `v` L2-normalised row by row when `normalize` (with the norms, for
/// [`prepared_rows_backward`]), else a copy of `v`.
fn prepared_rows<F: Real>(
    op: &'static str,
    what: &str,
    v: ArrayView2<'_, F>,
    normalize: bool,
) -> Result<(Array2<F>, Option<Array1<F>>)> {
    if normalize {
        let (a, n) = normalize_rows(op, what, v)?;
        Ok((a, Some(n)))
    } else {
        Ok((v.to_owned(), None))
    }
}

/// The gradient `g` with respect to rows from [`prepared_rows`] (`a`, their norms `norms` when they were
/// normalised), taken back to the input rows.
fn prepared_rows_backward<F: Real>(
    a: &Array2<F>,
    norms: Option<&Array1<F>>,
    g: Array2<F>,
) -> Array2<F> {
    match norms {
        Some(n) => normalize_rows_backward(a.view(), n.view(), g),
        None => g,
    }
}

/// Each pair's share of the loss before its weight: `1 / B` for a mean over `B` pairs, 1 for a sum.
fn reduction_base<F: Real>(reduction: Reduction, b: usize) -> F {
    match reduction {
        Reduction::Mean => F::one() / F::from_usize(b).expect("batch fits"),
        Reduction::Sum => F::one(),
    }
}

/// Naive f64 reference: every similarity row written out, `-log softmax` taken at the positive, no blocks,
/// no stabilisation tricks beyond `f64`. For tests.
pub fn info_nce_reference(
    v1: &Array2<f64>,
    v2: &Array2<f64>,
    negatives: Option<&Array2<f64>>,
    weights: Option<&Array1<f64>>,
    cfg: &InfoNceConfig<f64>,
) -> f64 {
    let norm = |x: &Array2<f64>| {
        if cfg.normalize {
            let n = x.map_axis(Axis(1), |r| r.dot(&r).sqrt());
            x / &n.insert_axis(Axis(1))
        } else {
            x.clone()
        }
    };
    let (u, w) = (norm(v1), norm(v2));
    let nn = negatives.map(norm);
    let b = u.nrows();
    let one_way = |a: &Array2<f64>, p: &Array2<f64>| -> f64 {
        (0..b)
            .map(|i| {
                let mut logits: Vec<f64> = (0..b)
                    .map(|j| a.row(i).dot(&p.row(j)) / cfg.temperature)
                    .collect();
                if let Some(n) = &nn {
                    logits.extend(
                        n.rows()
                            .into_iter()
                            .map(|r| a.row(i).dot(&r) / cfg.temperature),
                    );
                }
                let denom: f64 = logits.iter().map(|l| l.exp()).sum();
                let l = -(logits[i].exp() / denom).ln();
                let wt = weights.map_or(1.0, |w| w[i]);
                wt * l
                    * if cfg.reduction == Reduction::Mean {
                        1.0 / b as f64
                    } else {
                        1.0
                    }
            })
            .sum()
    };
    match cfg.direction {
        Direction::OneWay => one_way(&u, &w),
        Direction::Symmetric => 0.5 * (one_way(&u, &w) + one_way(&w, &u)),
    }
}

/// How a pair of views enters a multi-view loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairTerm {
    /// `weight * InfoNCE(first, second)`.
    InfoNce,
    /// `weight * (1 - InfoNCE(first, second))`: the released RecGOAT code's CMCL term, which *rewards* a large
    /// InfoNCE (pushes the views of one item apart). Kept only to reproduce that code.
    OneMinusInfoNce,
}

/// One term of [`multi_view_info_nce`]: views `first` (anchors) and `second` (positives) by index.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ViewPair<F> {
    /// Index of the anchor view.
    pub first: usize,
    /// Index of the positive view.
    pub second: usize,
    /// Weight of the term.
    pub weight: F,
    /// Form of the term.
    pub term: PairTerm,
}

/// Loss and per-view gradients from [`multi_view_info_nce`].
#[derive(Debug, Clone)]
pub struct MultiViewOutput<F> {
    /// Total loss.
    pub loss: F,
    /// Each pair's InfoNCE value (before weight and form), in pair order.
    pub terms: Vec<F>,
    /// `dloss/dview` for every view, in view order (zeros for views no pair uses).
    pub grads: Vec<Array2<F>>,
}

/// A weighted sum of InfoNCE terms over pairs of views (RecGOAT's CMCL), with the gradient of every view.
///
/// Each pair is [`info_nce`] with `cfg` (no extra negatives, no per-pair weights); a view used by several
/// pairs accumulates their gradients. One-way InfoNCE pairs against the same positives (the paper's CMCL
/// modality terms, each modality against the fused item) are computed together: their anchors stacked into
/// one taller problem, the same numbers up to rounding in fewer, larger GEMMs.
///
/// # Errors
/// [`Error::Param`] for a pair naming a view that does not exist or a non-finite weight, and every error of
/// [`info_nce`] for the views a pair uses.
///
/// # Example
/// ```
/// use recgoat_core::{Par, contrastive::*, testing};
/// let mut r = testing::rng(0);
/// let (user, fused, text) = (testing::randn::<f64, _, _>(&mut r, (8, 4)), testing::randn(&mut r, (8, 4)), testing::randn(&mut r, (8, 4)));
/// let views = [user.view(), fused.view(), text.view()];
/// let out = multi_view_info_nce(&views, &cmcl_paper_pairs(1), &InfoNceConfig::default(), Par::Seq).unwrap();
/// assert_eq!(out.grads.len(), 3);
/// assert!((out.loss - out.terms.iter().sum::<f64>()).abs() < 1e-12); // both weights are 1 here
/// ```
pub fn multi_view_info_nce<F: Real>(
    views: &[ArrayView2<'_, F>],
    pairs: &[ViewPair<F>],
    cfg: &InfoNceConfig<F>,
    par: impl Into<Par>,
) -> Result<MultiViewOutput<F>> {
    const OP: &str = "multi_view_info_nce";
    let par: Par = par.into();
    for (k, p) in pairs.iter().enumerate() {
        if p.first >= views.len() || p.second >= views.len() {
            return Err(Error::param(
                OP,
                "pairs",
                format!("#{k} = ({}, {})", p.first, p.second),
                format!("view index out of range: {} views given", views.len()),
            ));
        }
        if !p.weight.is_finite() {
            return Err(Error::param(
                OP,
                "pairs",
                format!("#{k} weight {}", p.weight),
                "weights must be finite",
            ));
        }
    }
    let mut grads: Vec<Array2<F>> = views.iter().map(|v| Array2::zeros(v.dim())).collect();
    let mut loss = F::zero();
    let mut terms = vec![F::zero(); pairs.len()];
    let mut done = vec![false; pairs.len()];
    for k in 0..pairs.len() {
        if done[k] {
            continue;
        }
        let group = stack_group(views, pairs, cfg, k, &done);
        if group.len() >= 2 {
            let (values, g_anchors, g_positive) = stacked_info_nce(views, pairs, &group, cfg, par)?;
            for ((&j, value), g) in group.iter().zip(values).zip(g_anchors) {
                loss += pairs[j].weight * value;
                terms[j] = value;
                grads[pairs[j].first] += &g;
                done[j] = true;
            }
            grads[pairs[k].second] += &g_positive;
            continue;
        }
        let p = &pairs[k];
        let out = info_nce(views[p.first], views[p.second], None, None, cfg, par)?;
        let (value, scale) = match p.term {
            PairTerm::InfoNce => (p.weight * out.loss, p.weight),
            PairTerm::OneMinusInfoNce => (p.weight * (F::one() - out.loss), -p.weight),
        };
        loss += value;
        terms[k] = out.loss;
        grads[p.first].scaled_add(scale, &out.grad_v1);
        grads[p.second].scaled_add(scale, &out.grad_v2);
        done[k] = true;
    }
    Ok(MultiViewOutput { loss, terms, grads })
}

/// The pairs from `k` on (not yet `done`) that [`multi_view_info_nce`] computes as one stacked problem with
/// pair `k`: one-way [`PairTerm::InfoNce`] terms against the same positives, with anchors of the positives'
/// shape that are other views than the positives. Only `k` when `k` itself is not such a term.
fn stack_group<F: Real>(
    views: &[ArrayView2<'_, F>],
    pairs: &[ViewPair<F>],
    cfg: &InfoNceConfig<F>,
    k: usize,
    done: &[bool],
) -> Vec<usize> {
    let second = pairs[k].second;
    let fits = |p: &ViewPair<F>| {
        p.term == PairTerm::InfoNce
            && p.second == second
            && p.first != second
            && views[p.first].dim() == views[second].dim()
    };
    if cfg.direction != Direction::OneWay || !fits(&pairs[k]) {
        return vec![k];
    }
    (k..pairs.len())
        .filter(|&j| !done[j] && fits(&pairs[j]))
        .collect()
}

/// The one-way InfoNCE terms `group` (pairs sharing their positives, see [`stack_group`]) as one problem:
/// the anchor views stacked (`k B` rows) against the `B` positives, each row's positive at its row modulo
/// `B` and its coefficient carrying its pair's weight, so that the `k` terms take one set of `k`-times-taller
/// GEMMs. Returns each term's unweighted value, each anchor view's gradient and the positives' gradient,
/// weights applied; the same numbers as [`info_nce`] per pair, up to rounding.
#[allow(clippy::type_complexity)]
fn stacked_info_nce<F: Real>(
    views: &[ArrayView2<'_, F>],
    pairs: &[ViewPair<F>],
    group: &[usize],
    cfg: &InfoNceConfig<F>,
    par: Par,
) -> Result<(Vec<F>, Vec<Array2<F>>, Array2<F>)> {
    const OP: &str = "info_nce";
    cfg.validate()?;
    let positives = views[pairs[group[0]].second];
    for &j in group {
        validate_inputs(OP, views[pairs[j].first], positives, None, None)?;
    }
    let b = positives.nrows();
    let (w, nw) = prepared_rows(OP, "v2", positives, cfg.normalize)?;
    let anchors = group
        .iter()
        .map(|&j| prepared_rows(OP, "v1", views[pairs[j].first], cfg.normalize))
        .collect::<Result<Vec<_>>>()?;
    let stacked = ndarray::concatenate(
        Axis(0),
        &anchors.iter().map(|(a, _)| a.view()).collect::<Vec<_>>(),
    )
    .expect("anchors of one width");
    let base = reduction_base(cfg.reduction, b);
    let coef: Array1<F> = group
        .iter()
        .flat_map(|&j| std::iter::repeat(pairs[j].weight * base).take(b))
        .collect();
    let inv_tau = F::one() / cfg.temperature;
    let rows = stacked.nrows();
    let out = cpu::one_direction(
        stacked.view(),
        w.view(),
        None,
        coef.view(),
        inv_tau,
        cpu::fixed_shift(cfg.normalize, inv_tau),
        cpu::balanced_block_rows(cfg.block_rows, rows, par),
        par,
    );
    let values = out
        .row_losses
        .chunks(b)
        .map(|r| r.iter().fold(F::zero(), |acc, &l| acc + l) * base)
        .collect();
    let grad_anchors = anchors
        .iter()
        .enumerate()
        .map(|(t, (a, n))| {
            let g = out
                .grad_anchor
                .slice(ndarray::s![t * b..(t + 1) * b, ..])
                .to_owned();
            prepared_rows_backward(a, n.as_ref(), g)
        })
        .collect();
    let grad_positive = prepared_rows_backward(&w, nw.as_ref(), out.grad_positive);
    Ok((values, grad_anchors, grad_positive))
}

/// The paper's CMCL (supplement, Lemma 3.3) as pairs over the views `[user, fused, modality_1 .. modality_M]`
/// (rows aligned by batch item): `InfoNCE(user, fused) + mean_m InfoNCE(modality_m, fused)`.
pub fn cmcl_paper_pairs<F: Real>(modalities: usize) -> Vec<ViewPair<F>> {
    let mut pairs = vec![ViewPair {
        first: 0,
        second: 1,
        weight: F::one(),
        term: PairTerm::InfoNce,
    }];
    let w = F::one() / F::from_usize(modalities.max(1)).expect("count fits");
    pairs.extend((0..modalities).map(|m| ViewPair {
        first: 2 + m,
        second: 1,
        weight: w,
        term: PairTerm::InfoNce,
    }));
    pairs
}

/// The released code's CMCL as pairs over the views `[user, fused_pos, pos_1 .. pos_k, neg_1 .. neg_k]`
/// (`k` per-item views, e.g. collaborative, image, text, for the positive and the negative items):
/// `0.5 InfoNCE(user, fused_pos) + 0.5 mean over the unordered pairs within the positive views and within the
/// negative views of (1 - InfoNCE)` (RECGOAT.md section 4; `k = 3` gives its 6 pairs).
pub fn cmcl_official_pairs<F: Real>(views_per_item: usize) -> Vec<ViewPair<F>> {
    let k = views_per_item;
    let mut within = Vec::new();
    for base in [2, 2 + k] {
        for i in 0..k {
            for j in i + 1..k {
                within.push((base + i, base + j));
            }
        }
    }
    let half = F::c(0.5);
    let w = half / F::from_usize(within.len().max(1)).expect("count fits");
    let mut pairs = vec![ViewPair {
        first: 0,
        second: 1,
        weight: half,
        term: PairTerm::InfoNce,
    }];
    pairs.extend(within.into_iter().map(|(a, b)| ViewPair {
        first: a,
        second: b,
        weight: w,
        term: PairTerm::OneMinusInfoNce,
    }));
    pairs
}
