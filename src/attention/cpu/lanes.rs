//! GATConv with 8 heads of width 8 (the RecGOAT setting) in a head-minor layout.
//!
//! The `H C = 64` features of a node are stored channel-major, `gT[c H + h] = g[h C + c]`, so that the
//! eight heads of one channel sit side by side: every per-head quantity (a logit, an attention, a logit
//! gradient) is then one 8-lane vector, and every per-edge operation is lane-wise. A head-major layout needs
//! a horizontal sum per head for each attention gradient and a broadcast per head for each message; here
//! `dalpha = sum_c dacc_i[c] * g_j[c]` and `acc[c] += alpha * g_j[c]` are eight vector multiply-adds each.
//!
//! The projection produces this layout directly: `gT = x W_P`, where `W_P` is `W` with its columns
//! permuted, and its gradient comes back through the same permutation. Moving between the layouts is the
//! transpose of each row's 8 x 8 block, its own inverse ([`swap_rows`]).
//!
//! The equations, the cache, the edge order and the summation order over edges are those of the general
//! kernels in the parent module; the tests run both on the same problems.

use super::{
    leaky, leaky_grad, prefetch, scatter_chunks, sum_parts, Ctx, Par, Real, NODE_FIELDS, PREFETCH,
    SOFT_FIELDS,
};
use crate::backend::{for_row_chunks, map_row_chunks, run_each};
use crate::simd::avx2_dispatch;
use ndarray::{Array2, ArrayView2, ArrayViewMut2};

/// Heads and head width of this kernel family.
pub(super) const L: usize = 8;
/// Features per node, `L * L`.
const W: usize = L * L;

type Lane<F> = [F; L];

/// Whether a layer runs on these kernels.
pub(super) fn applies<F: Real>(cfg: &super::GatConfig<F>) -> bool {
    cfg.scoring == super::Scoring::GatConv && cfg.heads == L && cfg.head_dim == L
}

#[inline(always)]
fn lane<F: Copy>(s: &[F]) -> Lane<F> {
    s[..L].try_into().expect("eight lanes")
}

/// Transposes the 8 x 8 block of each 64-wide row of `src` into `dst` (head-major <-> head-minor; the
/// operation is its own inverse).
pub(super) fn swap_rows<F: Copy>(src: &[F], dst: &mut [F]) {
    for (s, d) in src.chunks_exact(W).zip(dst.chunks_exact_mut(W)) {
        for a in 0..L {
            for b in 0..L {
                d[b * L + a] = s[a * L + b];
            }
        }
    }
}

/// [`swap_rows`] of a whole matrix with 64 columns, its rows split over `par`'s chunks.
pub(super) fn swapped<F: Real>(a: ArrayView2<'_, F>, par: Par) -> Array2<F> {
    let mut out = Array2::<F>::zeros(a.dim());
    swap_into(a, out.as_slice_mut().expect("fresh"), par);
    out
}

/// [`swap_rows`] of a matrix with 64 columns into `dst` (its rows' length), the rows split over `par`'s chunks.
pub(super) fn swap_into<F: Real>(a: ArrayView2<'_, F>, dst: &mut [F], par: Par) {
    let a = a.as_standard_layout();
    let src = a.as_slice().expect("standard layout");
    for_row_chunks(par, dst, W, |rows, chunk| {
        swap_rows(&src[rows.start * W..rows.end * W], chunk);
    });
}

/// `W_P` (columns permuted into the head-minor order), or the transpose of an `L x L` parameter block.
pub(super) fn permuted<F: Real>(w: &Array2<F>) -> Array2<F> {
    swapped(w.view(), Par::Seq)
}

/// Per-head scores `s[h] = sum_c gT[c L + h] aT[c L + h]` of every node (`N x L`), `gT`, `aT` head-minor,
/// the nodes split over `par`'s chunks.
pub(super) fn node_scores<F: Real>(g: &[F], a_t: &[F], par: Par) -> Array2<F> {
    let n = g.len() / W;
    let mut out = Array2::<F>::zeros((n, L));
    for_row_chunks(par, out.as_slice_mut().expect("fresh"), L, |rows, chunk| {
        for (o, gi) in chunk
            .chunks_exact_mut(L)
            .zip(g[rows.start * W..rows.end * W].chunks_exact(W))
        {
            let mut s = [F::zero(); L];
            for c in 0..L {
                for h in 0..L {
                    s[h] += gi[c * L + h] * a_t[c * L + h];
                }
            }
            o.copy_from_slice(&s);
        }
    });
    out
}

avx2_dispatch!(forward_rows_dispatch, forward_rows_avx2, forward_rows, <F>, (
    ctx: &Ctx<'_, F>, rows: std::ops::Range<usize>, out_c: &mut [F], soft_c: &mut [F]
));

/// [`forward_rows`] on one chunk of destination rows (AVX2+FMA where the CPU has them).
pub(super) fn forward_chunk<F: Real>(
    ctx: &Ctx<'_, F>,
    rows: std::ops::Range<usize>,
    out_c: &mut [F],
    soft_c: &mut [F],
) {
    forward_rows_dispatch(ctx, rows, out_c, soft_c)
}

/// The destination-major forward kernel: logits, softmax, aggregation, for a chunk of rows. `ctx.g` is
/// head-minor; `out` is in the usual layout, the soft record's messages are head-minor. The attention is
/// not stored (GATConv's backward recomputes it).
#[inline(always)]
fn forward_rows<F: Real>(
    ctx: &Ctx<'_, F>,
    rows: std::ops::Range<usize>,
    out_c: &mut [F],
    soft_c: &mut [F],
) {
    let (cfg, graph) = (ctx.cfg, ctx.graph);
    let slope = cfg.negative_slope;
    let out_w = cfg.out_dim();
    let sw = SOFT_FIELDS * L + W;
    let fsz = std::mem::size_of::<F>();
    let (mut tiled, mut ex, mut scratch) = (Vec::new(), Vec::new(), Vec::new());
    for i in rows.clone() {
        let li = i - rows.start;
        let range = graph.row_range(i);
        let deg = range.len();
        let edges = &graph.indices()[range.clone()];
        // the row's attention, in scratch: GATConv stores none (backward recomputes it)
        scratch.clear();
        scratch.resize(deg * L, F::zero());
        let att = &mut scratch[..];
        let er_i = lane(&ctx.er[i * L..]);
        let mut mx = [F::neg_infinity(); L];
        for (k, (&j, dst)) in edges.iter().zip(att.chunks_exact_mut(L)).enumerate() {
            if let Some(&ahead) = edges.get(k + PREFETCH) {
                prefetch(&ctx.el[ahead as usize * L..], L * fsz);
                prefetch(&ctx.g[ahead as usize * W..], W * fsz);
            }
            let el_j = lane(&ctx.el[j as usize * L..]);
            for h in 0..L {
                let v = leaky(el_j[h] + er_i[h], slope);
                dst[h] = v;
                mx[h] = mx[h].max(v);
            }
        }
        tiled.resize(deg * L, F::zero());
        ex.resize(deg * L, F::zero());
        for t in tiled.chunks_exact_mut(L) {
            t.copy_from_slice(&mx);
        }
        F::exp_affine_sum(F::zero(), att, &tiled, F::one(), &mut ex);
        let mut iz = [F::zero(); L];
        for e in ex.chunks_exact(L) {
            for h in 0..L {
                iz[h] += e[h];
            }
        }
        for v in &mut iz {
            *v = F::one() / *v;
        }
        for (a, e) in att.chunks_exact_mut(L).zip(ex.chunks_exact(L)) {
            for h in 0..L {
                a[h] = e[h] * iz[h];
            }
        }
        // aggregation, lane-wise: acc[c] += coef * g_j[c]
        let mut acc = [[F::zero(); L]; L];
        for (k, (&j, a_e)) in edges.iter().zip(att.chunks_exact(L)).enumerate() {
            let mut coef = lane(a_e);
            if let Some(m) = ctx.mask_row(range.start + k) {
                for h in 0..L {
                    coef[h] *= m[h];
                }
            }
            let gj = &ctx.g[j as usize * W..(j as usize + 1) * W];
            for (c, ac) in acc.iter_mut().enumerate() {
                let gc = lane(&gj[c * L..]);
                for h in 0..L {
                    ac[h] += coef[h] * gc[h];
                }
            }
        }
        let orow = &mut out_c[li * out_w..(li + 1) * out_w];
        if cfg.concat {
            for (c, ac) in acc.iter().enumerate() {
                for h in 0..L {
                    orow[h * L + c] = ac[h];
                }
            }
        } else {
            let inv = F::one() / F::from_usize(L).expect("small");
            for (o, ac) in orow.iter_mut().zip(&acc) {
                *o = F::zero();
                for &v in ac {
                    *o += v * inv;
                }
            }
        }
        let rec = &mut soft_c[li * sw..(li + 1) * sw];
        rec[..L].copy_from_slice(&mx);
        rec[L..2 * L].copy_from_slice(&iz);
        for (c, ac) in acc.iter().enumerate() {
            rec[2 * L + c * L..2 * L + (c + 1) * L].copy_from_slice(ac);
        }
    }
}

/// The backward pass after `dacc`, as the general GATConv backward of the parent module (one source-major
/// pass that recomputes each edge's values from its destination's node record; `dL/der` scattered into one
/// buffer per work chunk), lane-wise.
///
/// `das` is `dL/dacc` head-minor, `a_src_t` / `a_dst_t` the score vectors head-minor (64 values each).
/// Adds the head-minor `dL/dgT` into `dg_t` and returns `(dL/da_src, dL/da_dst)` head-major.
pub(super) fn backward<F: Real>(
    ctx: &Ctx<'_, F>,
    das: &[F],
    soft: &[F],
    a_src_t: &[F],
    a_dst_t: &[F],
    dg_t: &mut ArrayViewMut2<'_, F>,
    par: Par,
) -> (Array2<F>, Array2<F>) {
    let graph = ctx.graph;
    let n = graph.n_rows();
    let sw = SOFT_FIELDS * L + W;
    let nw = NODE_FIELDS * L;
    // node records [er, shift, normaliser, s = <dacc_i, acc_i> per head]
    let mut node = vec![F::zero(); n * nw];
    for_row_chunks(par, &mut node, nw, |rows, part| {
        for (i, rec) in rows.zip(part.chunks_exact_mut(nw)) {
            let (st, di) = (&soft[i * sw..(i + 1) * sw], &das[i * W..(i + 1) * W]);
            rec[..L].copy_from_slice(&ctx.er[i * L..(i + 1) * L]);
            rec[L..3 * L].copy_from_slice(&st[..2 * L]);
            let mut s = [F::zero(); L];
            for c in 0..L {
                for h in 0..L {
                    s[h] += di[c * L + h] * st[2 * L + c * L + h];
                }
            }
            rec[3 * L..].copy_from_slice(&s);
        }
    });

    let tr = graph.transposed();
    let chunks = scatter_chunks(&tr.graph, dg_t.as_slice_mut().expect("fresh"), W, par);
    let mut ga_parts = vec![vec![F::zero(); W]; chunks.len()];
    let mut der_parts = vec![vec![F::zero(); n * L]; chunks.len()];
    let items: Vec<_> = chunks
        .into_iter()
        .zip(ga_parts.iter_mut().zip(der_parts.iter_mut()))
        .collect();
    let node = &node[..];
    run_each(par, items, |((rows, dg_c), (ga_c, der_c))| {
        source_rows_dispatch(ctx, tr, das, node, a_src_t, rows, dg_c, ga_c, der_c)
    });

    let der = sum_parts(&der_parts);
    // dL/der_i complete: its terms of dL/dg_i and dL/da_dst (per-chunk partials, summed in chunk order)
    let ga_dst_parts = map_row_chunks(par, dg_t.as_slice_mut().expect("fresh"), W, |rows, dg_c| {
        let mut gd = vec![F::zero(); L * L];
        for ((dgi, der_i), gi) in dg_c
            .chunks_exact_mut(W)
            .zip(der[rows.start * L..rows.end * L].chunks_exact(L))
            .zip(ctx.g[rows.start * W..rows.end * W].chunks_exact(W))
        {
            for c in 0..L {
                for h in 0..L {
                    dgi[c * L + h] += der_i[h] * a_dst_t[c * L + h];
                    gd[c * L + h] += der_i[h] * gi[c * L + h];
                }
            }
        }
        gd
    });
    let ga_src_t = sum_parts(&ga_parts);
    let ga_dst_t = sum_parts(&ga_dst_parts);
    let head_major = |t: &[F]| {
        let mut out = Array2::<F>::zeros((L, L));
        swap_rows(t, out.as_slice_mut().expect("fresh"));
        out
    };
    (head_major(&ga_src_t), head_major(&ga_dst_t))
}

avx2_dispatch!(source_rows_dispatch, source_rows_avx2, source_rows, <F>, (
    ctx: &Ctx<'_, F>, tr: &crate::graph::Transposed<F>, das: &[F], node: &[F], a_src_t: &[F],
    rows: std::ops::Range<usize>, dg_c: &mut [F], ga_c: &mut [F], der_c: &mut [F]
));

/// One chunk of source rows `j` of the backward pass: for each edge `j -> i`, the attention (recomputed),
/// `dalpha = mask <dacc_i, g_j>`, the message gradient into `dg_j`, and the logit gradient into `dL/del_j`
/// and (scattered) `dL/der_i`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn source_rows<F: Real>(
    ctx: &Ctx<'_, F>,
    tr: &crate::graph::Transposed<F>,
    das: &[F],
    node: &[F],
    a_src_t: &[F],
    rows: std::ops::Range<usize>,
    dg_c: &mut [F],
    ga_c: &mut [F],
    der_c: &mut [F],
) {
    let slope = ctx.cfg.negative_slope;
    let tg = &tr.graph;
    let nw = NODE_FIELDS * L;
    let fsz = std::mem::size_of::<F>();
    let (mut lg, mut shift, mut ex) = (Vec::new(), Vec::new(), Vec::new());
    for j in rows.clone() {
        let lj = j - rows.start;
        let gj = &ctx.g[j * W..(j + 1) * W];
        let el_j = lane(&ctx.el[j * L..]);
        let range = tg.row_range(j);
        let dests = &tg.indices()[range.clone()];
        // the logits of j's out-edges and their destinations' shifts, then one vectorised exp for them all
        lg.resize(dests.len() * L, F::zero());
        shift.resize(dests.len() * L, F::zero());
        ex.resize(dests.len() * L, F::zero());
        for (k, ((&i, l), m)) in dests
            .iter()
            .zip(lg.chunks_exact_mut(L))
            .zip(shift.chunks_exact_mut(L))
            .enumerate()
        {
            if let Some(&ahead) = dests.get(k + PREFETCH) {
                prefetch(&node[ahead as usize * nw..], nw * fsz);
                prefetch(&das[ahead as usize * W..], W * fsz);
            }
            let r = &node[i as usize * nw..(i as usize + 1) * nw];
            for h in 0..L {
                l[h] = leaky(el_j[h] + r[h], slope);
            }
            m.copy_from_slice(&r[L..2 * L]);
        }
        F::exp_affine_sum(F::zero(), &lg, &shift, F::one(), &mut ex);
        let mut dst = [[F::zero(); L]; L];
        let mut del = [F::zero(); L];
        for (k, (&i, exk)) in dests.iter().zip(ex.chunks_exact(L)).enumerate() {
            let i = i as usize;
            let r = &node[i * nw..(i + 1) * nw];
            let di = &das[i * W..(i + 1) * W];
            let (er_i, iz_i, s_i) = (lane(r), lane(&r[2 * L..]), lane(&r[3 * L..]));
            let mut al = lane(exk);
            for h in 0..L {
                al[h] *= iz_i[h];
            }
            // dalpha = <dacc_i, g_j> per head, lane-wise over the channels
            let mut dal = [F::zero(); L];
            for c in 0..L {
                let (dc, gc) = (lane(&di[c * L..]), lane(&gj[c * L..]));
                for h in 0..L {
                    dal[h] += dc[h] * gc[h];
                }
            }
            let mut coef = al;
            if let Some(m) = ctx.mask_row(tr.edge_ids[range.start + k]) {
                for h in 0..L {
                    coef[h] *= m[h];
                    dal[h] *= m[h];
                }
            }
            // message gradient
            for (c, dc_acc) in dst.iter_mut().enumerate() {
                let dc = lane(&di[c * L..]);
                for h in 0..L {
                    dc_acc[h] += coef[h] * dc[h];
                }
            }
            // softmax and LeakyReLU backward: the logit gradient, into dL/del_j and dL/der_i
            let der_i = &mut der_c[i * L..(i + 1) * L];
            for h in 0..L {
                let v = al[h] * (dal[h] - s_i[h]) * leaky_grad(el_j[h] + er_i[h], slope);
                del[h] += v;
                der_i[h] += v;
            }
        }
        // node j's source score el_j (per head) is now fully differentiated
        let out = &mut dg_c[lj * W..(lj + 1) * W];
        for (c, dc_acc) in dst.iter().enumerate() {
            for h in 0..L {
                let q = c * L + h;
                out[q] += dc_acc[h] + del[h] * a_src_t[q];
                ga_c[q] += del[h] * gj[q];
            }
        }
    }
}
