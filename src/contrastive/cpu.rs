//! The blocked, fused InfoNCE kernels: one direction, and both directions from one similarity matrix.

use crate::backend::{map_chunks, map_row_chunks, with_spare, Par};
use crate::simd::Real;
use ndarray::{s, Array2, ArrayView1, ArrayView2, ArrayViewMut2, Axis};

pub(super) struct DirectionGrads<F> {
    pub loss: F,
    /// Each anchor's unweighted `LSE_b - s_b,pos(b)`, in row order.
    pub row_losses: Vec<F>,
    pub grad_anchor: Array2<F>,
    pub grad_positive: Array2<F>,
    pub grad_negatives: Option<Array2<F>>,
}

/// Loss `sum_b c_b (LSE_b - s_b,b mod P)` for anchors `a` (`k P` rows, `k >= 1`), positives `p` (`P` rows:
/// row `b mod P` is anchor b's positive, every other row a negative) and extra negatives `n`, with
/// `s = a p^T / tau`, and its gradients. With `k > 1` the anchors are `k` views stacked over the same
/// positives: `k` InfoNCE terms in one set of taller GEMMs.
///
/// Each block of rows makes one pass over its logits: they become `E = exp(s - m)` in place (`m` the row's
/// maximum, or `shift` when the caller knows a bound on every logit, see [`fixed_shift`]) with their row
/// sums `z`. The softmax's scale `c_b / z_b` is not applied to the `B`-wide rows: it goes to the `d`-wide
/// rows on either side of the two gradient GEMMs (`dL/da = (diag(c / z) E p - c p_diag) / tau`,
/// `dL/dp = (E^T diag(c / z) a - c a_diag) / tau`), which leaves the GEMMs and one exp per logit.
#[allow(clippy::too_many_arguments)]
pub(super) fn one_direction<F: Real>(
    a: ArrayView2<'_, F>,
    p: ArrayView2<'_, F>,
    n: Option<ArrayView2<'_, F>>,
    coef: ArrayView1<'_, F>,
    inv_tau: F,
    shift: Option<F>,
    block_rows: usize,
    par: Par,
) -> DirectionGrads<F> {
    let (bsz, d) = a.dim();
    let np = p.nrows();
    debug_assert!(
        np > 0 && bsz % np == 0,
        "anchors stack whole copies of the positives"
    );
    let k = n.map_or(0, |n| n.nrows());
    let blocks = bsz.div_ceil(block_rows);
    let parts = map_chunks(par, blocks, |_, blks| {
        let mut loss = F::zero();
        let rows = (blks.start * block_rows)..(blks.end * block_rows).min(bsz);
        let mut row_losses = Vec::with_capacity(rows.len());
        let mut grad_a = Array2::<F>::zeros((rows.len(), d));
        let mut grad_p = Array2::<F>::zeros((np, d));
        let mut grad_n = Array2::<F>::zeros((k, d));
        // block buffers, allocated once per chunk: row-major by construction (a plain `dot` may choose
        // column-major for thin shapes) and reused, so no block pays for fresh pages
        let mut sim_buf = Array2::<F>::zeros((block_rows.min(bsz), np));
        let mut simn_buf = Array2::<F>::zeros((block_rows.min(bsz), k));
        let mut scaled_buf = Array2::<F>::zeros((block_rows.min(bsz), d));
        let mut scales = vec![F::zero(); block_rows.min(bsz)];
        for blk in blks {
            let (r0, r1) = (blk * block_rows, ((blk + 1) * block_rows).min(bsz));
            let ab = a.slice(s![r0..r1, ..]);
            let mut sim = sim_buf.slice_mut(s![..r1 - r0, ..]);
            ndarray::linalg::general_mat_mul(inv_tau, &ab, &p.t(), F::zero(), &mut sim);
            let mut simn = n.map(|_| simn_buf.slice_mut(s![..r1 - r0, ..]));
            if let (Some(m), Some(nv)) = (simn.as_mut(), n) {
                ndarray::linalg::general_mat_mul(inv_tau, &ab, &nv.t(), F::zero(), m);
            }
            for ((ri, b), scale) in (r0..r1).enumerate().zip(scales.iter_mut()) {
                let mut srow = sim.row_mut(ri);
                let srow = srow.as_slice_mut().expect("row-major by construction");
                let mut nrow = simn.as_mut().map(|m| m.row_mut(ri));
                let nrow = nrow
                    .as_mut()
                    .map(|r| r.as_slice_mut().expect("row-major by construction"));
                let diag = srow[b % np];
                let mx = shift.unwrap_or_else(|| {
                    nrow.as_deref()
                        .map_or(F::neg_infinity(), F::max_of)
                        .max(F::max_of(srow))
                });
                // the logits become exp(s - mx) in place: their sum gives the log-sum-exp
                let z = F::exp_shift_sum_in_place(mx, srow)
                    + nrow.map_or(F::zero(), |r| F::exp_shift_sum_in_place(mx, r));
                let cb = coef[b];
                let lb = mx + z.ln() - diag;
                row_losses.push(lb);
                loss += cb * lb;
                // dL/dlogits of row b is c_b (E_b / z_b - onehot(b)): the scale is applied below
                *scale = cb / z;
            }
            let scales = &scales[..r1 - r0];
            // dL/da: the unscaled products, then each row's scale and its positive's term
            let mut ga = grad_a.slice_mut(s![r0 - rows.start..r1 - rows.start, ..]);
            ndarray::linalg::general_mat_mul(inv_tau, &sim, &p, F::zero(), &mut ga);
            if let (Some(e), Some(nv)) = (simn.as_ref(), n) {
                ndarray::linalg::general_mat_mul(inv_tau, e, &nv, F::one(), &mut ga);
            }
            for ((mut g, &sc), b) in ga.rows_mut().into_iter().zip(scales).zip(r0..r1) {
                let cb = coef[b] * inv_tau;
                g.zip_mut_with(&p.row(b % np), |gv, &pv| *gv = *gv * sc - cb * pv);
            }
            // dL/dp and dL/dn: E^T times the block's anchors scaled by row, then the positives' terms
            let mut scaled = scaled_buf.slice_mut(s![..r1 - r0, ..]);
            for ((mut o, arow), &sc) in scaled.rows_mut().into_iter().zip(ab.rows()).zip(scales) {
                o.zip_mut_with(&arow, |ov, &av| *ov = av * sc);
            }
            ndarray::linalg::general_mat_mul(inv_tau, &sim.t(), &scaled, F::one(), &mut grad_p);
            for (b, arow) in (r0..r1).zip(ab.rows()) {
                let cb = coef[b] * inv_tau;
                grad_p.row_mut(b % np).scaled_add(-cb, &arow);
            }
            if let (Some(e), Some(_)) = (simn.as_ref(), n) {
                ndarray::linalg::general_mat_mul(inv_tau, &e.t(), &scaled, F::one(), &mut grad_n);
            }
        }
        (loss, row_losses, grad_a, grad_p, grad_n)
    });
    let mut loss = F::zero();
    let mut row_losses = Vec::with_capacity(bsz);
    let mut grad_anchor = Array2::<F>::zeros((0, d));
    let mut grad_positive = Array2::<F>::zeros((np, d));
    let mut grad_negatives = Array2::<F>::zeros((k, d));
    for (l, rl, ga, gp, gn) in parts {
        loss += l;
        row_losses.extend(rl);
        grad_anchor.append(Axis(0), ga.view()).expect("same width");
        grad_positive += &gp;
        grad_negatives += &gn;
    }
    DirectionGrads {
        loss,
        row_losses,
        grad_anchor,
        grad_positive,
        grad_negatives: n.map(|_| grad_negatives),
    }
}

/// The block height for `rows` rows under `par`: at most `max_rows`, and an equal number of about equally
/// tall blocks for every worker (the blocks are dealt to the workers in contiguous runs), so that a batch of
/// a few hundred rows keeps every thread busy instead of leaving one block, or one worker's extra block, to a
/// single thread. `max_rows` itself with one worker.
pub(super) fn balanced_block_rows(max_rows: usize, rows: usize, par: Par) -> usize {
    let (max_rows, workers) = (max_rows.max(1), par.chunks().max(1));
    if workers == 1 || rows == 0 {
        return max_rows;
    }
    let blocks = workers * rows.div_ceil(workers * max_rows);
    rows.div_ceil(blocks).max(1)
}

/// A shift that bounds every logit from above, so the row maxima need not be found: `1/tau` when every
/// row is L2-normalised (each logit is a cosine over `tau`), provided `exp(s - 1/tau)` cannot underflow to
/// zero for the smallest logit, `-1/tau` (that is, `2/tau` stays clear of `F`'s smallest normal exponent).
/// `None` otherwise (the rows' maxima are used).
pub(super) fn fixed_shift<F: Real>(normalized: bool, inv_tau: F) -> Option<F> {
    let no_underflow = F::c(2.0) * inv_tau <= -F::min_positive_value().ln() - F::c(8.0);
    (normalized && no_underflow).then_some(inv_tau)
}

/// The most memory [`symmetric_shared`] may hold for the similarity matrix (bytes).
pub(super) const SHARED_SIMILARITY_BYTES: usize = 256 << 20;

/// Whether [`symmetric_shared`] can compute a symmetric loss exactly: rows L2-normalised (so every logit
/// lies in `[-1/tau, 1/tau]` and `exp(s - 1/tau)` neither overflows nor underflows to 0 when `2 / tau` stays
/// clear of `F`'s smallest normal exponent), no extra negatives, and a `B x B` matrix within
/// [`SHARED_SIMILARITY_BYTES`].
pub(super) fn symmetric_shared_applies<F: Real>(
    normalized: bool,
    negatives: bool,
    bsz: usize,
    inv_tau: F,
) -> bool {
    let fits = bsz
        .checked_mul(bsz)
        .and_then(|n| n.checked_mul(std::mem::size_of::<F>()))
        .is_some_and(|bytes| bytes <= SHARED_SIMILARITY_BYTES);
    fixed_shift(normalized, inv_tau).is_some() && !negatives && fits
}

/// Both directions of a symmetric InfoNCE from one similarity matrix `S = u w^T / tau` (unit rows), its
/// loss `sum_i c_i (LSE_j S_ij - S_ii) + sum_j c_j (LSE_i S_ij - S_jj)` and its gradients.
///
/// A first pass computes `E = exp(S - 1/tau)` block by block with the row sums (the `u -> w` direction's
/// normalisers) and the column sums (the `w -> u` direction's), keeping `E` (`B x B`); a second turns each
/// block into `dL/dS = E (c_i / rowsum_i + c_j / colsum_j) - diag(2 c)` and sends it to both inputs. Three
/// GEMMs in all, where two one-way passes take six, and one exp per logit. The fixed shift `1/tau` bounds
/// every logit from above (see [`symmetric_shared_applies`] for when it is exact).
pub(super) fn symmetric_shared<F: Real>(
    u: ArrayView2<'_, F>,
    w: ArrayView2<'_, F>,
    coef: ArrayView1<'_, F>,
    inv_tau: F,
    block_rows: usize,
    par: Par,
) -> (F, Array2<F>, Array2<F>) {
    let bsz = u.nrows();
    // E is kept between calls on this thread (up to `SPARE_KEPT_BYTES`): every entry is written by the first
    // pass's GEMM (beta 0) before it is read
    with_spare(bsz * bsz, |e: &mut [F]| {
        shared_passes(u, w, coef, inv_tau, (block_rows, par), e)
    })
}

/// The two passes of [`symmetric_shared`] with `E` in `e` (`B x B`, any contents).
fn shared_passes<F: Real>(
    u: ArrayView2<'_, F>,
    w: ArrayView2<'_, F>,
    coef: ArrayView1<'_, F>,
    inv_tau: F,
    (block_rows, par): (usize, Par),
    e: &mut [F],
) -> (F, Array2<F>, Array2<F>) {
    let (bsz, d) = u.dim();
    let blocks_of = |rows: std::ops::Range<usize>| {
        (rows.start..rows.end)
            .step_by(block_rows)
            .map(move |r0| r0..(r0 + block_rows).min(rows.end))
    };
    let firsts = map_row_chunks(par, e, bsz, |rows, chunk| {
        let start = rows.start;
        let mut stats = Vec::with_capacity(rows.len());
        let mut colsum = vec![F::zero(); bsz];
        for blk in blocks_of(rows) {
            let data = &mut chunk[(blk.start - start) * bsz..(blk.end - start) * bsz];
            let mut sim = ArrayViewMut2::from_shape((blk.len(), bsz), &mut *data)
                .expect("block rows fit the chunk");
            let ub = u.slice(s![blk.clone(), ..]);
            ndarray::linalg::general_mat_mul(inv_tau, &ub, &w.t(), F::zero(), &mut sim);
            for (i, row) in blk.zip(data.chunks_exact_mut(bsz)) {
                let diag = row[i];
                stats.push((diag, F::exp_shift_sum_in_place(inv_tau, row)));
                F::axpy(F::one(), row, &mut colsum);
            }
        }
        (stats, colsum)
    });
    let mut colsum = vec![F::zero(); bsz];
    let mut stats = Vec::with_capacity(bsz);
    for (st, cs) in firsts {
        stats.extend(st);
        F::axpy(F::one(), &cs, &mut colsum);
    }
    let mut loss = F::zero();
    for (i, &(diag, rowsum)) in stats.iter().enumerate() {
        loss += coef[i] * (F::c(2.0) * (inv_tau - diag) + rowsum.ln() + colsum[i].ln());
    }
    // per-row and per-column softmax scales (E_ij times either is at most c: no overflow)
    let row_scale: Vec<F> = stats.iter().zip(coef).map(|(&(_, z), &c)| c / z).collect();
    let col_scale: Vec<F> = colsum.iter().zip(coef).map(|(&z, &c)| c / z).collect();
    let seconds = map_row_chunks(par, e, bsz, |rows, chunk| {
        let start = rows.start;
        let mut grad_u = Array2::<F>::zeros((rows.len(), d));
        let mut grad_w = Array2::<F>::zeros((bsz, d));
        for blk in blocks_of(rows) {
            let data = &mut chunk[(blk.start - start) * bsz..(blk.end - start) * bsz];
            for (i, row) in blk.clone().zip(data.chunks_exact_mut(bsz)) {
                let ri = row_scale[i];
                for (g, &cj) in row.iter_mut().zip(&col_scale) {
                    *g = *g * ri + *g * cj;
                }
                row[i] -= coef[i] + coef[i];
            }
            let grad = ArrayView2::from_shape((blk.len(), bsz), &*data).expect("block rows fit");
            let mut gu = grad_u.slice_mut(s![blk.start - start..blk.end - start, ..]);
            ndarray::linalg::general_mat_mul(inv_tau, &grad, &w, F::zero(), &mut gu);
            let ub = u.slice(s![blk, ..]);
            ndarray::linalg::general_mat_mul(inv_tau, &grad.t(), &ub, F::one(), &mut grad_w);
        }
        (grad_u, grad_w)
    });
    let mut grad_u = Array2::<F>::zeros((0, d));
    let mut grad_w = Array2::<F>::zeros((bsz, d));
    for (gu, gw) in seconds {
        grad_u.append(Axis(0), gu.view()).expect("same width");
        grad_w += &gw;
    }
    (loss, grad_u, grad_w)
}
