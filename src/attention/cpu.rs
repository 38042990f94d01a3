//! CPU kernels of the graph attention layer: destination-major forward, two-pass backward.
//!
//! Every per-edge loop runs over the `H C` features of an edge at once, with per-head scalars (attention
//! coefficients, logit gradients) expanded to `H C` first: the loops are contiguous and vectorise whatever
//! the head size. The per-chunk kernels are compiled for AVX2+FMA where the CPU has them, and prefetch the
//! rows of the neighbours a few edges ahead (the CSR knows them), since the random neighbour gathers, not
//! the arithmetic, bound these loops.

use super::{leaky, leaky_grad, GatCache, GatConfig, GatGrads, GatParams, Mode, Scoring};
use crate::backend::{
    chunk_bounds_by_work, for_row_chunks, par_dot, par_owned, par_t_dot, run_each, split_lengths,
    with_spare, Par,
};
use crate::graph::CsrGraph;
use crate::simd::{avx2_dispatch, prefetch, Real};
use ndarray::{Array2, ArrayView2, ArrayViewMut2, Axis, CowArray, Ix2};
use rand::{Rng, SeedableRng};
use std::borrow::Cow;

mod lanes;

/// Dropout scales: 0 with probability `p`, else `1 / (1 - p)`.
fn dropout_scales<F: Real>(rng: &mut rand_chacha::ChaCha8Rng, len: usize, p: F) -> Vec<F> {
    let keep = F::one() / (F::one() - p);
    let p = p.to_f64().expect("probability converts");
    (0..len)
        .map(|_| {
            if rng.gen::<f64>() < p {
                F::zero()
            } else {
                keep
            }
        })
        .collect()
}

/// `out[h C + c] = v[h]`.
#[inline(always)]
fn expand<F: Real>(v: &[F], c: usize, out: &mut [F]) {
    for (o, &x) in out.chunks_exact_mut(c).zip(v) {
        o.iter_mut().for_each(|y| *y = x);
    }
}

/// `out[h] = sum_c prod[h C + c]`, pairwise for C = 8 (a tree of depth 3, not a chain of 8 dependent adds).
#[inline(always)]
fn head_sums<F: Real>(prod: &[F], c: usize, out: &mut [F]) {
    if c == 8 {
        for (o, p) in out.iter_mut().zip(prod.chunks_exact(8)) {
            *o = ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));
        }
        return;
    }
    for (o, p) in out.iter_mut().zip(prod.chunks_exact(c)) {
        *o = p.iter().fold(F::zero(), |s, &x| s + x);
    }
}

/// Read-only inputs shared by the kernels.
struct Ctx<'a, F> {
    cfg: &'a GatConfig<F>,
    graph: &'a CsrGraph<F>,
    g: &'a [F],
    el: &'a [F],
    er: &'a [F],
    a_flat: &'a [F],
    attn_mask: Option<&'a [F]>,
}

impl<F: Real> Ctx<'_, F> {
    /// (heads, head width, their product): compile-time constants in a kernel instance with `H, C > 0`,
    /// which is what lets its per-edge head loops unroll.
    #[inline(always)]
    fn dims<const H: usize, const C: usize>(&self) -> (usize, usize, usize) {
        let hn = if H > 0 { H } else { self.cfg.heads };
        let c = if C > 0 { C } else { self.cfg.head_dim };
        (hn, c, hn * c)
    }

    /// Row `j` of the projected features `g` (`hc` values).
    #[inline(always)]
    fn row_of(&self, j: usize, hc: usize) -> &[F] {
        &self.g[j * hc..(j + 1) * hc]
    }

    /// The attention-dropout scales of edge `e` (one per head), when dropout is on.
    #[inline(always)]
    fn mask_row(&self, e: usize) -> Option<&[F]> {
        let hn = self.cfg.heads;
        self.attn_mask.map(|m| &m[e * hn..(e + 1) * hn])
    }

    /// `coef = alpha_e * mask_e` (per head).
    #[inline(always)]
    fn masked(&self, e: usize, alpha_e: &[F], coef: &mut [F]) {
        match self.mask_row(e) {
            Some(m) => {
                for ((c, &a), &mv) in coef.iter_mut().zip(alpha_e).zip(m) {
                    *c = a * mv;
                }
            }
            None => coef.copy_from_slice(alpha_e),
        }
    }
}

/// The dropout scales of one forward pass: the feature mask (`x`'s shape) and the attention mask (`nnz x H`,
/// edge-major), each `None` when its rate is 0 or in evaluation mode. Shared with the GPU path, so that a
/// seed gives the same masks on both.
pub(crate) fn dropout_masks<F: Real>(
    cfg: &GatConfig<F>,
    x_dim: (usize, usize),
    nnz: usize,
    mode: Mode,
) -> (Option<Array2<F>>, Option<Vec<F>>) {
    match mode {
        Mode::Train { seed } => {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let fm = (cfg.feat_drop > F::zero()).then(|| {
                let len = x_dim.0 * x_dim.1;
                Array2::from_shape_vec(x_dim, dropout_scales(&mut rng, len, cfg.feat_drop))
                    .expect("sized")
            });
            let am = (cfg.attn_drop > F::zero())
                .then(|| dropout_scales(&mut rng, nnz * cfg.heads, cfg.attn_drop));
            (fm, am)
        }
        Mode::Eval => (None, None),
    }
}

pub(super) fn forward<F: Real>(
    cfg: &GatConfig<F>,
    p: &GatParams<F>,
    graph: &CsrGraph<F>,
    x: ArrayView2<'_, F>,
    mode: Mode,
    par: Par,
) -> (Array2<F>, GatCache<F>) {
    let n = x.nrows();
    let (hn, c) = (cfg.heads, cfg.head_dim);
    let (feat_mask, attn_mask) = dropout_masks(cfg, x.dim(), graph.nnz(), mode);
    let x_drop = match &feat_mask {
        Some(m) => &x * m,
        None => par_owned(par, x),
    };
    if lanes::applies(cfg) {
        // the head-minor layout of the 8 x 8 kernels (see `lanes`): g comes out of the projection in it
        let g = par_dot(par, &x_drop.view(), &lanes::permuted(&p.w).view());
        let a_dst = p.a_dst.as_ref().expect("GATConv has a_dst");
        let score = |a: &Array2<F>| {
            let a_t = lanes::permuted(a);
            let (gs, at) = (g.as_slice().expect("fresh"), a_t.as_slice().expect("fresh"));
            lanes::node_scores(gs, at, par)
        };
        let (el, er) = (score(&p.a_src), score(a_dst));
        return forward_tail(cfg, p, graph, x_drop, feat_mask, attn_mask, g, el, er, par);
    }
    let g = par_dot(par, &x_drop.view(), &p.w.view());
    let node_scores = |a: &Array2<F>| -> Array2<F> {
        let (gs, af) = (
            g.as_slice().expect("row-major"),
            a.as_slice().expect("row-major"),
        );
        let mut prod = vec![F::zero(); hn * c];
        let mut out = Array2::<F>::zeros((n, hn));
        for (i, mut o) in out.rows_mut().into_iter().enumerate() {
            for ((pk, &gk), &ak) in prod
                .iter_mut()
                .zip(&gs[i * hn * c..(i + 1) * hn * c])
                .zip(af)
            {
                *pk = gk * ak;
            }
            head_sums(&prod, c, o.as_slice_mut().expect("row-major"));
        }
        out
    };
    let (el, er) = match (cfg.scoring, &p.a_dst) {
        (Scoring::GatConv, Some(a_dst)) => (node_scores(&p.a_src), node_scores(a_dst)),
        _ => (Array2::zeros((0, 0)), Array2::zeros((0, 0))),
    };
    forward_tail(cfg, p, graph, x_drop, feat_mask, attn_mask, g, el, er, par)
}

/// The edge kernels and the node-level tail of the forward pass, once the projection and the node scores
/// are known.
#[allow(clippy::too_many_arguments)]
fn forward_tail<F: Real>(
    cfg: &GatConfig<F>,
    p: &GatParams<F>,
    graph: &CsrGraph<F>,
    x_drop: Array2<F>,
    feat_mask: Option<Array2<F>>,
    attn_mask: Option<Vec<F>>,
    g: Array2<F>,
    el: Array2<F>,
    er: Array2<F>,
    par: Par,
) -> (Array2<F>, GatCache<F>) {
    let n = x_drop.nrows();
    let (hn, c) = (cfg.heads, cfg.head_dim);
    let out_w = cfg.out_dim();
    let mut out = Array2::<F>::zeros((n, out_w));
    // the attention is kept for GATv2 only; GATConv's backward recomputes it (see `backward_conv`)
    let v2 = cfg.scoring == Scoring::GatV2;
    let mut alpha = vec![F::zero(); if v2 { graph.nnz() * hn } else { 0 }];
    // GATConv keeps, per node, the softmax shift and normaliser (from which backward recomputes the attention
    // of any edge from node-level data alone) and the aggregated messages
    let soft_w = if cfg.scoring == Scoring::GatConv {
        SOFT_FIELDS * hn + hn * c
    } else {
        0
    };
    let mut soft = vec![F::zero(); n * soft_w];
    let bounds = graph.row_chunks(par);
    let ip = graph.indptr();
    let out_parts = split_lengths(
        out.as_slice_mut().expect("fresh"),
        bounds.iter().map(|r| r.len() * out_w),
    );
    let alpha_parts = split_lengths(
        &mut alpha,
        bounds
            .iter()
            .map(|r| (ip[r.end] - ip[r.start]) * hn * usize::from(v2)),
    );
    let soft_parts = split_lengths(&mut soft, bounds.iter().map(|r| r.len() * soft_w));
    let a_flat = p
        .a_src
        .as_standard_layout()
        .to_owned()
        .into_raw_vec_and_offset()
        .0;
    let ctx = Ctx {
        cfg,
        graph,
        g: g.as_slice().expect("fresh"),
        el: el.as_slice().unwrap_or(&[]),
        er: er.as_slice().unwrap_or(&[]),
        a_flat: &a_flat,
        attn_mask: attn_mask.as_deref(),
    };
    let items: Vec<_> = bounds
        .into_iter()
        .zip(out_parts)
        .zip(alpha_parts)
        .zip(soft_parts)
        .collect();
    let lanes = lanes::applies(cfg);
    run_each(par, items, |(((rows, out_c), alpha_c), soft_c)| {
        if lanes {
            lanes::forward_chunk(&ctx, rows, out_c, soft_c)
        } else {
            forward_rows_dispatch(&ctx, rows, out_c, alpha_c, soft_c)
        }
    });
    if cfg.residual {
        match &p.w_res {
            Some(r) => out += &x_drop.dot(r),
            None => out += &x_drop,
        }
    }
    if let Some(b) = &p.bias {
        let b = b.as_slice().expect("a fresh vector");
        for_row_chunks(
            par,
            out.as_slice_mut().expect("fresh"),
            out_w,
            |_, chunk| {
                for row in chunk.chunks_exact_mut(out_w) {
                    F::axpy(F::one(), b, row);
                }
            },
        );
    }
    let cache = GatCache {
        looped: None,
        fingerprint: 0,
        x_drop,
        feat_mask,
        g,
        el,
        er,
        alpha,
        soft,
        attn_mask,
    };
    (out, cache)
}

/// GATConv's per-node softmax record in the cache: the shift (max logit) and the normaliser (1 / sum of
/// exps) of each head, `SOFT_FIELDS x H` values, followed by the node's aggregated messages (`H C`).
const SOFT_FIELDS: usize = 2;

/// How many edges ahead the kernels prefetch neighbour data.
const PREFETCH: usize = 4;

avx2_dispatch!(forward_rows_dispatch, forward_rows_avx2, forward_rows, <F>, (ctx: &Ctx<'_, F>, rows: std::ops::Range<usize>, out_c: &mut [F], alpha_c: &mut [F], soft_c: &mut [F]));

/// Runs [`forward_rows_impl`] with the head count and width as constants when they are 8 x 8 (the RecGOAT
/// setting), so its per-edge head loops unroll and vectorise; other shapes take the general instance.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn forward_rows<F: Real>(
    ctx: &Ctx<'_, F>,
    rows: std::ops::Range<usize>,
    out_c: &mut [F],
    alpha_c: &mut [F],
    soft_c: &mut [F],
) {
    match (ctx.cfg.heads, ctx.cfg.head_dim) {
        (8, 8) => forward_rows_impl::<F, 8, 8>(ctx, rows, out_c, alpha_c, soft_c),
        _ => forward_rows_impl::<F, 0, 0>(ctx, rows, out_c, alpha_c, soft_c),
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn forward_rows_impl<F: Real, const H: usize, const C: usize>(
    ctx: &Ctx<'_, F>,
    rows: std::ops::Range<usize>,
    out_c: &mut [F],
    alpha_c: &mut [F],
    soft_c: &mut [F],
) {
    let (cfg, graph) = (ctx.cfg, ctx.graph);
    let (hn, c, hc) = ctx.dims::<H, C>();
    let row = |j: usize| ctx.row_of(j, hc);
    let slope = cfg.negative_slope;
    let out_w = cfg.out_dim();
    let e0 = graph.indptr()[rows.start];
    let fsz = std::mem::size_of::<F>();
    let (mut tiled, mut ex, mut scratch) = (Vec::new(), Vec::new(), Vec::new());
    let mut acc = vec![F::zero(); hc];
    let mut prod = vec![F::zero(); hc];
    let (mut mx, mut z) = (vec![F::zero(); hn], vec![F::zero(); hn]);
    let mut coef = vec![F::zero(); hn];
    let mut coefx = vec![F::zero(); hc];
    for i in rows.clone() {
        let range = graph.row_range(i);
        let deg = range.len();
        let edges = &graph.indices()[range.clone()];
        // edge-major: the H logits of an edge are contiguous, and become its attention in place
        let att: &mut [F] = if alpha_c.is_empty() {
            scratch.clear();
            scratch.resize(deg * hn, F::zero());
            &mut scratch
        } else {
            &mut alpha_c[(range.start - e0) * hn..(range.end - e0) * hn]
        };
        for (k, (&j, dst)) in edges.iter().zip(att.chunks_exact_mut(hn)).enumerate() {
            let j = j as usize;
            if let Some(&ahead) = graph.indices().get(range.start + k + PREFETCH) {
                prefetch(row(ahead as usize), hc * fsz);
                if !ctx.el.is_empty() {
                    prefetch(&ctx.el[ahead as usize * hn..], hn * fsz);
                }
            }
            match cfg.scoring {
                Scoring::GatConv => {
                    let (el_j, er_i) =
                        (&ctx.el[j * hn..(j + 1) * hn], &ctx.er[i * hn..(i + 1) * hn]);
                    for ((d, &l), &r) in dst.iter_mut().zip(el_j).zip(er_i) {
                        *d = leaky(l + r, slope);
                    }
                }
                Scoring::GatV2 => {
                    for ((pq, &aq), (&gj, &gi)) in prod
                        .iter_mut()
                        .zip(ctx.a_flat)
                        .zip(row(j).iter().zip(row(i)))
                    {
                        *pq = aq * leaky(gj + gi, slope);
                    }
                    head_sums(&prod, c, dst);
                }
            }
        }
        // softmax over the row's edges, all heads at once
        mx.iter_mut().for_each(|m| *m = F::neg_infinity());
        for chunk in att.chunks_exact(hn) {
            for (m, &v) in mx.iter_mut().zip(chunk) {
                *m = m.max(v);
            }
        }
        tiled.resize(deg * hn, F::zero());
        ex.resize(deg * hn, F::zero());
        for chunk in tiled.chunks_exact_mut(hn) {
            chunk.copy_from_slice(&mx);
        }
        F::exp_affine_sum(F::zero(), att, &tiled, F::one(), &mut ex);
        z.iter_mut().for_each(|v| *v = F::zero());
        for chunk in ex.chunks_exact(hn) {
            for (zh, &v) in z.iter_mut().zip(chunk) {
                *zh += v;
            }
        }
        z.iter_mut().for_each(|v| *v = F::one() / *v);
        for (dst, src) in att.chunks_exact_mut(hn).zip(ex.chunks_exact(hn)) {
            for ((d, &v), &iz) in dst.iter_mut().zip(src).zip(&z) {
                *d = v * iz;
            }
        }
        // aggregation
        acc.iter_mut().for_each(|v| *v = F::zero());
        for (k, (&j, a_e)) in edges.iter().zip(att.chunks_exact(hn)).enumerate() {
            let e = range.start + k;
            ctx.masked(e, a_e, &mut coef);
            expand(&coef, c, &mut coefx);
            for ((a, &w), &x) in acc.iter_mut().zip(&coefx).zip(row(j as usize)) {
                *a += w * x;
            }
        }
        if !soft_c.is_empty() {
            let w = SOFT_FIELDS * hn + hc;
            let rec = &mut soft_c[(i - rows.start) * w..(i - rows.start + 1) * w];
            rec[..hn].copy_from_slice(&mx);
            rec[hn..2 * hn].copy_from_slice(&z);
            rec[2 * hn..].copy_from_slice(&acc);
        }
        let orow = &mut out_c[(i - rows.start) * out_w..(i - rows.start + 1) * out_w];
        if cfg.concat {
            orow.copy_from_slice(&acc);
        } else {
            let inv = F::one() / F::from_usize(hn).expect("heads fit");
            orow.iter_mut().for_each(|o| *o = F::zero());
            for part in acc.chunks_exact(c) {
                for (o, &v) in orow.iter_mut().zip(part) {
                    *o += v * inv;
                }
            }
        }
    }
}

pub(super) fn backward<F: Real>(
    cfg: &GatConfig<F>,
    p: &GatParams<F>,
    graph: &CsrGraph<F>,
    cache: &GatCache<F>,
    grad_out: ArrayView2<'_, F>,
    par: Par,
) -> GatGrads<F> {
    let n = graph.n_rows();
    let (hn, c) = (cfg.heads, cfg.head_dim);
    let hc = hn * c;
    // gradient of the aggregated messages acc (N x H C)
    let dacc: CowArray<'_, F, Ix2> = if cfg.concat {
        grad_out.as_standard_layout()
    } else {
        let inv = F::one() / F::from_usize(hn).expect("heads fit");
        Array2::from_shape_fn((n, hc), |(i, k)| grad_out[[i, k % c]] * inv).into()
    };
    let grad_bias = p.bias.as_ref().map(|_| grad_out.sum_axis(Axis(0)));
    let grad_w_res = match (cfg.residual, &p.w_res) {
        (true, Some(_)) => Some(cache.x_drop.t().dot(&grad_out)),
        _ => None,
    };
    let a_flat = p
        .a_src
        .as_standard_layout()
        .to_owned()
        .into_raw_vec_and_offset()
        .0;
    let ctx = Ctx {
        cfg,
        graph,
        g: cache.g.as_slice().expect("row-major"),
        el: cache.el.as_slice().unwrap_or(&[]),
        er: cache.er.as_slice().unwrap_or(&[]),
        a_flat: &a_flat,
        attn_mask: cache.attn_mask.as_deref(),
    };
    let das = dacc.as_slice().expect("row-major");
    let alpha = &cache.alpha[..];
    let v2 = cfg.scoring == Scoring::GatV2;

    let lanes = lanes::applies(cfg);
    // dL/dg (and, head-minor, dacc) live in this thread's spare buffer: two graph-sized arrays that would
    // otherwise be faulted in afresh at every call
    let scratch = n * hc * if lanes { 2 } else { 1 };
    let (grad_a_src, grad_a_dst, grad_w, mut dxd) = with_spare(scratch, |buf: &mut [F]| {
        let (dg_mem, das_mem) = buf.split_at_mut(n * hc);
        for_row_chunks(par, dg_mem, hc, |_, chunk| chunk.fill(F::zero()));
        let mut dg = ArrayViewMut2::from_shape((n, hc), dg_mem).expect("sized");
        let (grad_a_src, grad_a_dst) = if lanes {
            // head-minor throughout (see `lanes`): dacc enters it, dg and W's gradient come back through W_P
            lanes::swap_into(dacc.view(), das_mem, par);
            let a_src_t = lanes::permuted(&p.a_src);
            let a_dst_t = lanes::permuted(p.a_dst.as_ref().expect("GATConv has a_dst"));
            let (ga_src, ga_dst) = lanes::backward(
                &ctx,
                das_mem,
                &cache.soft,
                a_src_t.as_slice().expect("fresh"),
                a_dst_t.as_slice().expect("fresh"),
                &mut dg,
                par,
            );
            (ga_src, Some(ga_dst))
        } else if v2 {
            backward_v2(&ctx, das, alpha, &mut dg, par)
        } else {
            let a_dst = p.a_dst.as_ref().expect("GATConv has a_dst");
            backward_conv(&ctx, das, &cache.soft, a_dst, &mut dg, par)
        };
        let grad_w = par_t_dot(par, &cache.x_drop.view(), &dg.view());
        let (grad_w, w) = if lanes {
            (
                lanes::swapped(grad_w.view(), Par::Seq),
                Cow::Owned(lanes::permuted(&p.w)),
            )
        } else {
            (grad_w, Cow::Borrowed(&p.w))
        };
        let dxd = par_dot(par, &dg.view(), &w.t());
        (grad_a_src, grad_a_dst, grad_w, dxd)
    });
    if cfg.residual {
        match &p.w_res {
            Some(r) => dxd += &grad_out.dot(&r.t()),
            None => dxd += &grad_out,
        }
    }
    let grad_x = match &cache.feat_mask {
        Some(m) => dxd * m,
        None => dxd,
    };
    GatGrads {
        grad_x,
        grad_w,
        grad_a_src,
        grad_a_dst,
        grad_bias,
        grad_w_res,
    }
}

/// GATConv backward after `dacc`: one source-major pass over the transposed graph.
///
/// Every edge value it needs (the attention, its dropout scale, the logit gradient) is recomputed from
/// node-level data of the edge's destination, so no edge-level array is read at random and none is
/// written: the per-node record (`er`, the softmax shift and normaliser from the forward pass, and
/// `s_i = sum_k alpha_ik dalpha_ik`, which is the per-head dot of `dacc_i` with the aggregated messages of
/// `i`, so node-level too) and the `dacc` row that the message gradient gathers anyway. The attention is
/// recomputed exactly as the forward pass computed it (same logit, same shift, same vectorised exp). The
/// gradient of each destination's score (`dL/der_i`, a sum over its incoming edges) is scattered into one
/// `N x H` buffer per work chunk, summed afterwards in chunk order: no atomics, and the result does not
/// depend on scheduling.
///
/// Returns `(dL/da_src, dL/da_dst)` and adds `dL/dg` into `dg`.
fn backward_conv<F: Real>(
    ctx: &Ctx<'_, F>,
    das: &[F],
    soft: &[F],
    a_dst: &Array2<F>,
    dg: &mut ArrayViewMut2<'_, F>,
    par: Par,
) -> (Array2<F>, Option<Array2<F>>) {
    let (graph, (hn, c, hc)) = (ctx.graph, ctx.dims::<0, 0>());
    let n = graph.n_rows();
    // the node records
    let sw = SOFT_FIELDS * hn + hc;
    let nw = NODE_FIELDS * hn;
    let mut node = vec![F::zero(); n * nw];
    for_row_chunks(par, &mut node, nw, |rows, part| {
        let mut prod = vec![F::zero(); hc];
        for (i, rec) in rows.zip(part.chunks_exact_mut(nw)) {
            let (st, di) = (&soft[i * sw..(i + 1) * sw], &das[i * hc..(i + 1) * hc]);
            rec[..hn].copy_from_slice(&ctx.er[i * hn..(i + 1) * hn]);
            rec[hn..3 * hn].copy_from_slice(&st[..2 * hn]);
            for ((pq, &dq), &aq) in prod.iter_mut().zip(di).zip(&st[2 * hn..]) {
                *pq = dq * aq;
            }
            head_sums(&prod, c, &mut rec[3 * hn..]);
        }
    });

    let tr = graph.transposed();
    let chunks = scatter_chunks(&tr.graph, dg.as_slice_mut().expect("fresh"), hc, par);
    let mut ga_src_parts = vec![vec![F::zero(); hc]; chunks.len()];
    let mut der_parts = vec![vec![F::zero(); n * hn]; chunks.len()];
    let items: Vec<_> = chunks
        .into_iter()
        .zip(ga_src_parts.iter_mut().zip(der_parts.iter_mut()))
        .map(|((rows, dg), (ga_src, der))| (rows, ConvOut { dg, ga_src, der }))
        .collect();
    let src = SourceIn {
        tr,
        das,
        node: &node,
    };
    run_each(par, items, |(rows, out)| {
        source_rows_conv_dispatch(ctx, &src, rows, out)
    });

    // dL/der_i complete: its terms of dL/dg_i and dL/da_dst
    let der = sum_parts(&der_parts);
    let a_dst: Vec<F> = a_dst.iter().copied().collect();
    let mut derx = vec![F::zero(); hc];
    let mut ga_dst = vec![F::zero(); hc];
    let gs = ctx.g;
    for ((dgi, der_i), gi) in dg
        .as_slice_mut()
        .expect("fresh")
        .chunks_exact_mut(hc)
        .zip(der.chunks_exact(hn))
        .zip(gs.chunks_exact(hc))
    {
        expand(der_i, c, &mut derx);
        for q in 0..hc {
            dgi[q] += derx[q] * a_dst[q];
            ga_dst[q] += derx[q] * gi[q];
        }
    }
    (
        Array2::from_shape_vec((hn, c), sum_parts(&ga_src_parts)).expect("sized"),
        Some(Array2::from_shape_vec((hn, c), ga_dst).expect("sized")),
    )
}

/// The chunks of GATConv's scatter pass: work-balanced rows of the transposed graph `tg`, two per thread
/// (each chunk holds an `N x H` scatter buffer, so fewer and larger chunks than the other passes), each with
/// its rows of `dg` (`width` values per row).
fn scatter_chunks<'a, F: Real>(
    tg: &CsrGraph<F>,
    dg: &'a mut [F],
    width: usize,
    par: Par,
) -> Vec<(std::ops::Range<usize>, &'a mut [F])> {
    let chunks = match par {
        Par::Seq => Par::Seq,
        Par::Rayon(_) => Par::Rayon(2 * par.chunks()),
    };
    let bounds = chunk_bounds_by_work(chunks, |r| tg.indptr()[r] + r, tg.n_rows());
    let parts = split_lengths(dg, bounds.iter().map(|r| r.len() * width));
    bounds.into_iter().zip(parts).collect()
}

/// The sum of per-chunk partial vectors, in chunk order (so the result does not depend on scheduling).
fn sum_parts<F: Real>(parts: &[Vec<F>]) -> Vec<F> {
    let mut out = parts.first().cloned().unwrap_or_default();
    for part in parts.iter().skip(1) {
        F::axpy(F::one(), part, &mut out);
    }
    out
}

/// GATConv's per-node record for the backward pass, `NODE_FIELDS x H` values: `er`, the softmax shift, the
/// softmax normaliser, and `s = sum_k alpha_k dalpha_k` over the node's incoming edges.
const NODE_FIELDS: usize = 4;

/// The backward pass's shared inputs of GATConv.
struct SourceIn<'a, F> {
    tr: &'a crate::graph::Transposed<F>,
    /// `dL/dacc` (N x H C).
    das: &'a [F],
    /// The node records (N x [`NODE_FIELDS`] H).
    node: &'a [F],
}

/// What one chunk of source rows produces.
struct ConvOut<'a, F> {
    /// `dL/dg` of the chunk's rows (the message and `el` terms).
    dg: &'a mut [F],
    /// The chunk's part of `dL/da_src`.
    ga_src: &'a mut [F],
    /// `dL/der` over all nodes, this chunk's edges only (N x H).
    der: &'a mut [F],
}

avx2_dispatch!(source_rows_conv_dispatch, source_rows_conv_avx2, source_rows_conv, <F>, (
    ctx: &Ctx<'_, F>, src: &SourceIn<'_, F>, rows: std::ops::Range<usize>, out: ConvOut<'_, F>
));

/// Runs [`source_rows_conv_impl`] with the head count and width as constants when they are 8 x 8 (the
/// RecGOAT setting), so its per-edge head loops unroll and vectorise; other shapes take the general instance.
#[inline(always)]
fn source_rows_conv<F: Real>(
    ctx: &Ctx<'_, F>,
    src: &SourceIn<'_, F>,
    rows: std::ops::Range<usize>,
    out: ConvOut<'_, F>,
) {
    match (ctx.cfg.heads, ctx.cfg.head_dim) {
        (8, 8) => source_rows_conv_impl::<F, 8, 8>(ctx, src, rows, out),
        _ => source_rows_conv_impl::<F, 0, 0>(ctx, src, rows, out),
    }
}

#[inline(always)]
fn source_rows_conv_impl<F: Real, const H: usize, const C: usize>(
    ctx: &Ctx<'_, F>,
    src: &SourceIn<'_, F>,
    rows: std::ops::Range<usize>,
    out: ConvOut<'_, F>,
) {
    let (hn, c, hc) = ctx.dims::<H, C>();
    let row = |j: usize| ctx.row_of(j, hc);
    let slope = ctx.cfg.negative_slope;
    let (tg, das, node) = (&src.tr.graph, src.das, src.node);
    let nw = NODE_FIELDS * hn;
    let rec = |i: usize| &node[i * nw..(i + 1) * nw];
    let fsz = std::mem::size_of::<F>();
    let (mut lg, mut shift, mut ex) = (Vec::new(), Vec::new(), Vec::new());
    let (mut al, mut coef, mut dal) = (
        vec![F::zero(); hn],
        vec![F::zero(); hn],
        vec![F::zero(); hn],
    );
    let (mut dlog, mut del) = (vec![F::zero(); hn], vec![F::zero(); hn]);
    let (mut coefx, mut prod, mut delx) = (
        vec![F::zero(); hc],
        vec![F::zero(); hc],
        vec![F::zero(); hc],
    );
    for j in rows.clone() {
        let lj = j - rows.start;
        let dst = &mut out.dg[lj * hc..(lj + 1) * hc];
        let (gj, el_j) = (row(j), &ctx.el[j * hn..(j + 1) * hn]);
        let range = tg.row_range(j);
        let dests = &tg.indices()[range.clone()];
        // the logits of j's out-edges and their destinations' shifts, then one vectorised exp for them all
        lg.resize(dests.len() * hn, F::zero());
        shift.resize(dests.len() * hn, F::zero());
        ex.resize(dests.len() * hn, F::zero());
        for (k, ((&i, l), m)) in dests
            .iter()
            .zip(lg.chunks_exact_mut(hn))
            .zip(shift.chunks_exact_mut(hn))
            .enumerate()
        {
            if let Some(&ahead) = dests.get(k + PREFETCH) {
                prefetch(rec(ahead as usize), nw * fsz);
                prefetch(&das[ahead as usize * hc..], hc * fsz);
            }
            let r = rec(i as usize);
            for ((lv, &a), &b) in l.iter_mut().zip(el_j).zip(&r[..hn]) {
                *lv = leaky(a + b, slope);
            }
            m.copy_from_slice(&r[hn..2 * hn]);
        }
        F::exp_affine_sum(F::zero(), &lg, &shift, F::one(), &mut ex);
        del.iter_mut().for_each(|v| *v = F::zero());
        for (k, (&i, exk)) in dests.iter().zip(ex.chunks_exact(hn)).enumerate() {
            let i = i as usize;
            let (r, di) = (rec(i), &das[i * hc..(i + 1) * hc]);
            let (er_i, iz_i, s_i) = (&r[..hn], &r[2 * hn..3 * hn], &r[3 * hn..]);
            for ((a, &x), &iz) in al.iter_mut().zip(exk).zip(iz_i) {
                *a = x * iz;
            }
            // dalpha = mask * <dacc_i, g_j> per head
            for ((pq, &dq), &gq) in prod.iter_mut().zip(di).zip(gj) {
                *pq = dq * gq;
            }
            head_sums(&prod, c, &mut dal);
            match ctx.mask_row(src.tr.edge_ids[range.start + k]) {
                Some(m) => {
                    for (((cv, dv), &a), &mv) in coef.iter_mut().zip(dal.iter_mut()).zip(&al).zip(m)
                    {
                        *cv = a * mv;
                        *dv *= mv;
                    }
                }
                None => coef.copy_from_slice(&al),
            }
            // message gradient
            expand(&coef, c, &mut coefx);
            for ((d, &w), &g) in dst.iter_mut().zip(&coefx).zip(di) {
                *d += w * g;
            }
            // softmax and LeakyReLU backward: the logit gradient, into dL/del_j and dL/der_i
            for (((dv, &a), (&dq, &sh)), (&l, &r)) in dlog
                .iter_mut()
                .zip(&al)
                .zip(dal.iter().zip(s_i))
                .zip(el_j.iter().zip(er_i))
            {
                *dv = a * (dq - sh) * leaky_grad(l + r, slope);
            }
            for ((dl, dr), &v) in del
                .iter_mut()
                .zip(&mut out.der[i * hn..(i + 1) * hn])
                .zip(&dlog)
            {
                *dl += v;
                *dr += v;
            }
        }
        // node j's source score el_j = g_j . a_src (per head) is now fully differentiated
        expand(&del, c, &mut delx);
        for q in 0..hc {
            dst[q] += delx[q] * ctx.a_flat[q];
            out.ga_src[q] += delx[q] * gj[q];
        }
    }
}

/// GATv2 backward after `dacc`: a destination-major pass over the CSR (softmax and LeakyReLU backward, one
/// E x H buffer of logit gradients, and the destination-side terms), then a source-major pass over the cached
/// transposed CSR that accumulates each node's message and source-side gradients in one place.
///
/// Returns `(dL/da, None)` and adds `dL/dg` into `dg`.
fn backward_v2<F: Real>(
    ctx: &Ctx<'_, F>,
    das: &[F],
    alpha: &[F],
    dg: &mut ArrayViewMut2<'_, F>,
    par: Par,
) -> (Array2<F>, Option<Array2<F>>) {
    let (graph, (hn, c, hc)) = (ctx.graph, ctx.dims::<0, 0>());
    let n = graph.n_rows();
    let ip = graph.indptr();
    let mut dlogit = vec![F::zero(); graph.nnz() * hn];
    let mut dg_dest = Array2::<F>::zeros((n, hc));
    let bounds = graph.row_chunks(par);
    let dl_parts = split_lengths(
        &mut dlogit,
        bounds.iter().map(|r| (ip[r.end] - ip[r.start]) * hn),
    );
    let dgd_parts = split_lengths(
        dg_dest.as_slice_mut().expect("fresh"),
        bounds.iter().map(|r| r.len() * hc),
    );
    let mut da_parts: Vec<Vec<F>> = vec![vec![F::zero(); hc]; bounds.len()];
    let items: Vec<_> = bounds
        .into_iter()
        .zip(dl_parts)
        .zip(dgd_parts)
        .zip(da_parts.iter_mut())
        .map(|(((rows, dl), dgd), da)| (rows, DestOut { dl, dgd, da }))
        .collect();
    run_each(par, items, |(rows, out)| {
        backward_dest_rows_dispatch(ctx, das, alpha, rows, out)
    });

    let tr = graph.transposed();
    let bounds = tr.graph.row_chunks(par);
    let dg_parts = split_lengths(
        dg.as_slice_mut().expect("fresh"),
        bounds.iter().map(|r| r.len() * hc),
    );
    let items: Vec<_> = bounds.into_iter().zip(dg_parts).collect();
    let (dlogit, tr_ref) = (&dlogit[..], tr);
    run_each(par, items, |(rows, dg_c)| {
        source_rows_v2_dispatch(ctx, tr_ref, das, alpha, dlogit, rows, dg_c)
    });
    *dg += &dg_dest;
    (
        Array2::from_shape_vec((hn, c), sum_parts(&da_parts)).expect("sized"),
        None,
    )
}

/// GATv2 pass 1's outputs for one chunk of destination rows.
struct DestOut<'a, F> {
    /// `dlogit` of the chunk's edges (edges x H).
    dl: &'a mut [F],
    /// The destination-side part of `dL/dg` (rows x H C).
    dgd: &'a mut [F],
    /// This chunk's part of `dL/da`.
    da: &'a mut [F],
}

avx2_dispatch!(backward_dest_rows_dispatch, backward_dest_rows_avx2, backward_dest_rows, <F>, (
    ctx: &Ctx<'_, F>, das: &[F], alpha: &[F], rows: std::ops::Range<usize>, out: DestOut<'_, F>
));

/// Runs [`backward_dest_rows_impl`] with the head count and width as constants when they are 8 x 8 (the RecGOAT
/// setting), so its per-edge head loops unroll and vectorise; other shapes take the general instance.
#[inline(always)]
fn backward_dest_rows<F: Real>(
    ctx: &Ctx<'_, F>,
    das: &[F],
    alpha: &[F],
    rows: std::ops::Range<usize>,
    out: DestOut<'_, F>,
) {
    match (ctx.cfg.heads, ctx.cfg.head_dim) {
        (8, 8) => backward_dest_rows_impl::<F, 8, 8>(ctx, das, alpha, rows, out),
        _ => backward_dest_rows_impl::<F, 0, 0>(ctx, das, alpha, rows, out),
    }
}

/// GATv2 pass 1. `dlogit[e h]` is `dL/d(logit)`.
#[inline(always)]
fn backward_dest_rows_impl<F: Real, const H: usize, const C: usize>(
    ctx: &Ctx<'_, F>,
    das: &[F],
    alpha: &[F],
    rows: std::ops::Range<usize>,
    out: DestOut<'_, F>,
) {
    let (cfg, graph) = (ctx.cfg, ctx.graph);
    let (hn, c, hc) = ctx.dims::<H, C>();
    let row = |j: usize| ctx.row_of(j, hc);
    let slope = cfg.negative_slope;
    let e0 = graph.indptr()[rows.start];
    let fsz = std::mem::size_of::<F>();
    let mut s = vec![F::zero(); hn];
    let mut dlx = vec![F::zero(); hc];
    let mut prod = vec![F::zero(); hc];
    for i in rows.clone() {
        let range = graph.row_range(i);
        let li = i - rows.start;
        let di = &das[i * hc..(i + 1) * hc];
        let edges = &graph.indices()[range.clone()];
        let dl_row = &mut out.dl[(range.start - e0) * hn..(range.end - e0) * hn];
        let al_row = &alpha[range.start * hn..range.end * hn];
        s.iter_mut().for_each(|v| *v = F::zero());
        for (k, ((&j, dl), a)) in edges
            .iter()
            .zip(dl_row.chunks_exact_mut(hn))
            .zip(al_row.chunks_exact(hn))
            .enumerate()
        {
            if let Some(&ahead) = graph.indices().get(range.start + k + PREFETCH) {
                prefetch(row(ahead as usize), hc * fsz);
            }
            // dalpha = mask * <dacc_i, g_j> per head
            for ((pq, &dq), &gq) in prod.iter_mut().zip(di).zip(row(j as usize)) {
                *pq = dq * gq;
            }
            head_sums(&prod, c, dl);
            if let Some(m) = ctx.mask_row(range.start + k) {
                for (d, &mv) in dl.iter_mut().zip(m) {
                    *d *= mv;
                }
            }
            for ((sh, &av), &d) in s.iter_mut().zip(a).zip(dl.iter()) {
                *sh += av * d;
            }
        }
        let dgd = &mut out.dgd[li * hc..(li + 1) * hc];
        for ((&j, dl), a) in edges
            .iter()
            .zip(dl_row.chunks_exact_mut(hn))
            .zip(al_row.chunks_exact(hn))
        {
            // softmax backward: dlogit = alpha (dalpha - sum_k alpha_k dalpha_k)
            for ((d, &av), &sh) in dl.iter_mut().zip(a).zip(&s) {
                *d = av * (*d - sh);
            }
            expand(dl, c, &mut dlx);
            let (gj, gi) = (row(j as usize), row(i));
            for q in 0..hc {
                let t = gj[q] + gi[q];
                out.da[q] += dlx[q] * leaky(t, slope);
                dgd[q] += dlx[q] * ctx.a_flat[q] * leaky_grad(t, slope);
            }
        }
    }
}

avx2_dispatch!(source_rows_v2_dispatch, source_rows_v2_avx2, source_rows_v2, <F>, (
    ctx: &Ctx<'_, F>, tr: &crate::graph::Transposed<F>, das: &[F], alpha: &[F], dlogit: &[F],
    rows: std::ops::Range<usize>, dg_c: &mut [F]
));

/// Runs [`source_rows_v2_impl`] with the head count and width as constants when they are 8 x 8.
#[inline(always)]
fn source_rows_v2<F: Real>(
    ctx: &Ctx<'_, F>,
    tr: &crate::graph::Transposed<F>,
    das: &[F],
    alpha: &[F],
    dlogit: &[F],
    rows: std::ops::Range<usize>,
    dg_c: &mut [F],
) {
    match (ctx.cfg.heads, ctx.cfg.head_dim) {
        (8, 8) => source_rows_v2_impl::<F, 8, 8>(ctx, tr, das, alpha, dlogit, rows, dg_c),
        _ => source_rows_v2_impl::<F, 0, 0>(ctx, tr, das, alpha, dlogit, rows, dg_c),
    }
}

/// GATv2 pass 2: reads the attention and the stored logit gradients through the transposed graph's edge ids.
#[inline(always)]
fn source_rows_v2_impl<F: Real, const H: usize, const C: usize>(
    ctx: &Ctx<'_, F>,
    tr: &crate::graph::Transposed<F>,
    das: &[F],
    alpha: &[F],
    dlogit: &[F],
    rows: std::ops::Range<usize>,
    dg_c: &mut [F],
) {
    let (hn, c, hc) = ctx.dims::<H, C>();
    let row = |j: usize| ctx.row_of(j, hc);
    let slope = ctx.cfg.negative_slope;
    let tg = &tr.graph;
    let fsz = std::mem::size_of::<F>();
    let mut coef = vec![F::zero(); hn];
    let (mut coefx, mut dlx) = (vec![F::zero(); hc], vec![F::zero(); hc]);
    for j in rows.clone() {
        let lj = j - rows.start;
        let dst = &mut dg_c[lj * hc..(lj + 1) * hc];
        let gj = row(j);
        for t in tg.row_range(j) {
            if let (Some(&ea), Some(&ia)) = (
                tr.edge_ids.get(t + PREFETCH),
                tg.indices().get(t + PREFETCH),
            ) {
                prefetch(&das[ia as usize * hc..], hc * fsz);
                prefetch(&alpha[ea * hn..], hn * fsz);
                prefetch(&dlogit[ea * hn..], hn * fsz);
            }
            let e = tr.edge_ids[t];
            let i = tg.indices()[t] as usize;
            ctx.masked(e, &alpha[e * hn..(e + 1) * hn], &mut coef);
            expand(&coef, c, &mut coefx);
            expand(&dlogit[e * hn..(e + 1) * hn], c, &mut dlx);
            let gi = row(i);
            for q in 0..hc {
                dst[q] += coefx[q] * das[i * hc + q]
                    + dlx[q] * ctx.a_flat[q] * leaky_grad(gj[q] + gi[q], slope);
            }
        }
    }
}

/// GATConv's attention coefficients (edge-major, `E x H`), recomputed from the cache's node scores and
/// per-node softmax statistics exactly as the forward pass computed them.
pub(super) fn attention<F: Real>(
    cfg: &GatConfig<F>,
    graph: &CsrGraph<F>,
    cache: &GatCache<F>,
) -> Vec<F> {
    let hn = cfg.heads;
    let sw = SOFT_FIELDS * hn + hn * cfg.head_dim;
    let (el, er) = (
        cache.el.as_slice().expect("row-major"),
        cache.er.as_slice().expect("row-major"),
    );
    let mut alpha = vec![F::zero(); graph.nnz() * hn];
    let (mut shift, mut ex) = (Vec::new(), Vec::new());
    for i in 0..graph.n_rows() {
        let range = graph.row_range(i);
        let rec = &cache.soft[i * sw..(i + 1) * sw];
        let (m_i, iz_i, er_i) = (&rec[..hn], &rec[hn..2 * hn], &er[i * hn..(i + 1) * hn]);
        let att = &mut alpha[range.start * hn..range.end * hn];
        for (&j, a) in graph.row(i).iter().zip(att.chunks_exact_mut(hn)) {
            let el_j = &el[j as usize * hn..(j as usize + 1) * hn];
            for ((v, &l), &r) in a.iter_mut().zip(el_j).zip(er_i) {
                *v = leaky(l + r, cfg.negative_slope);
            }
        }
        shift.clear();
        for _ in range.clone() {
            shift.extend_from_slice(m_i);
        }
        ex.resize(att.len(), F::zero());
        F::exp_affine_sum(F::zero(), att, &shift, F::one(), &mut ex);
        for (a, e) in att.chunks_exact_mut(hn).zip(ex.chunks_exact(hn)) {
            for ((v, &x), &iz) in a.iter_mut().zip(e).zip(iz_i) {
                *v = x * iz;
            }
        }
    }
    alpha
}
