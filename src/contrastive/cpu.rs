//! The blocked, fused InfoNCE kernel (one direction).

use crate::backend::{map_chunks, Par};
use crate::simd::Real;
use ndarray::{s, Array2, ArrayView1, ArrayView2, Axis};

pub(super) struct DirectionGrads<F> {
    pub loss: F,
    pub grad_anchor: Array2<F>,
    pub grad_positive: Array2<F>,
    pub grad_negatives: Option<Array2<F>>,
}

/// Loss `sum_b c_b (LSE_b - s_bb)` for anchors `a`, positives `p` (row b is b's positive, every other row a
/// negative) and extra negatives `n`, with `s = a p^T / tau`, and its gradients.
pub(super) fn one_direction<F: Real>(
    a: ArrayView2<'_, F>,
    p: ArrayView2<'_, F>,
    n: Option<ArrayView2<'_, F>>,
    coef: ArrayView1<'_, F>,
    inv_tau: F,
    block_rows: usize,
    par: Par,
) -> DirectionGrads<F> {
    let (bsz, d) = a.dim();
    let k = n.map_or(0, |n| n.nrows());
    let blocks = bsz.div_ceil(block_rows);
    let parts = map_chunks(par, blocks, |_, blks| {
        let mut loss = F::zero();
        let rows = (blks.start * block_rows)..(blks.end * block_rows).min(bsz);
        let mut grad_a = Array2::<F>::zeros((rows.len(), d));
        let mut grad_p = Array2::<F>::zeros((bsz, d));
        let mut grad_n = Array2::<F>::zeros((k, d));
        let mut ex = vec![F::zero(); bsz + k];
        // block buffers, allocated once per chunk: row-major by construction (a plain `dot` may choose
        // column-major for thin shapes) and reused, so no block pays for fresh pages
        let mut sim_buf = Array2::<F>::zeros((block_rows.min(bsz), bsz));
        let mut simn_buf = Array2::<F>::zeros((block_rows.min(bsz), k));
        for blk in blks {
            let (r0, r1) = (blk * block_rows, ((blk + 1) * block_rows).min(bsz));
            let ab = a.slice(s![r0..r1, ..]);
            let mut sim = sim_buf.slice_mut(s![..r1 - r0, ..]);
            ndarray::linalg::general_mat_mul(inv_tau, &ab, &p.t(), F::zero(), &mut sim);
            let mut simn = n.map(|_| simn_buf.slice_mut(s![..r1 - r0, ..]));
            if let (Some(m), Some(nv)) = (simn.as_mut(), n) {
                ndarray::linalg::general_mat_mul(inv_tau, &ab, &nv.t(), F::zero(), m);
            }
            for (ri, b) in (r0..r1).enumerate() {
                let row = sim.row(ri);
                let row = row.as_slice().expect("row-major by construction");
                let nrow = simn
                    .as_ref()
                    .map(|m| m.row(ri).to_vec())
                    .unwrap_or_default();
                let mx = row
                    .iter()
                    .chain(&nrow)
                    .fold(F::neg_infinity(), |m, &v| m.max(v));
                // exp(s - mx) through the SIMD kernel (its cost term multiplied by 0)
                let z = F::exp_affine_sum(-mx, row, row, F::zero(), &mut ex[..bsz])
                    + F::exp_affine_sum(
                        -mx,
                        &nrow,
                        &nrow,
                        F::zero(),
                        &mut ex[bsz..bsz + nrow.len()],
                    );
                let lse = mx + z.ln();
                let cb = coef[b];
                loss += cb * (lse - row[b]);
                // gradient of c_b l_b w.r.t. the logits: c_b (softmax - onehot(b))
                let scale = cb / z;
                let mut grow = sim.row_mut(ri);
                for (g, &e) in grow.iter_mut().zip(&ex[..bsz]) {
                    *g = e * scale;
                }
                grow[b] -= cb;
                if let Some(m) = simn.as_mut() {
                    for (g, &e) in m.row_mut(ri).iter_mut().zip(&ex[bsz..bsz + k]) {
                        *g = e * scale;
                    }
                }
            }
            // sim now holds dL/dlogits for the block; logits = a p^T / tau
            let mut ga = grad_a.slice_mut(s![r0 - rows.start..r1 - rows.start, ..]);
            ndarray::linalg::general_mat_mul(inv_tau, &sim, &p, F::zero(), &mut ga);
            ndarray::linalg::general_mat_mul(inv_tau, &sim.t(), &ab, F::one(), &mut grad_p);
            if let (Some(gn_blk), Some(nv)) = (simn.as_ref(), n) {
                ndarray::linalg::general_mat_mul(inv_tau, gn_blk, &nv, F::one(), &mut ga);
                ndarray::linalg::general_mat_mul(inv_tau, &gn_blk.t(), &ab, F::one(), &mut grad_n);
            }
        }
        (loss, grad_a, grad_p, grad_n)
    });
    let mut loss = F::zero();
    let mut grad_anchor = Array2::<F>::zeros((0, d));
    let mut grad_positive = Array2::<F>::zeros((bsz, d));
    let mut grad_negatives = Array2::<F>::zeros((k, d));
    for (l, ga, gp, gn) in parts {
        loss += l;
        grad_anchor.append(Axis(0), ga.view()).expect("same width");
        grad_positive += &gp;
        grad_negatives += &gn;
    }
    DirectionGrads {
        loss,
        grad_anchor,
        grad_positive,
        grad_negatives: n.map(|_| grad_negatives),
    }
}
