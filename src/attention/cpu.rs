//! CPU kernels of the graph attention layer: destination-major forward, two-pass backward.
//!
//! Every per-edge loop runs over the `H C` features of an edge at once, with per-head scalars (attention
//! coefficients, logit gradients) expanded to `H C` first: the loops are contiguous and vectorise whatever
//! the head size. The per-chunk kernels are compiled for AVX2+FMA where the CPU has them, and prefetch the
//! rows of the neighbours a few edges ahead (the CSR knows them), since the random neighbour gathers, not
//! the arithmetic, bound these loops.

use super::{leaky, leaky_grad, GatCache, GatConfig, GatGrads, GatParams, Mode, Scoring};
use crate::backend::{par_dot, par_t_dot, run_each, split_lengths, Par};
use crate::graph::CsrGraph;
use crate::simd::{avx2_dispatch, prefetch, Real};
use ndarray::{Array2, ArrayView2, Axis};
use rand::{Rng, SeedableRng};

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
        None => x.to_owned(),
    };
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
    let out_w = cfg.out_dim();
    let mut out = Array2::<F>::zeros((n, out_w));
    let mut alpha = vec![F::zero(); graph.nnz() * hn];
    let bounds = graph.row_chunks(par);
    let ip = graph.indptr();
    let out_parts = split_lengths(
        out.as_slice_mut().expect("fresh"),
        bounds.iter().map(|r| r.len() * out_w),
    );
    let alpha_parts = split_lengths(
        &mut alpha,
        bounds.iter().map(|r| (ip[r.end] - ip[r.start]) * hn),
    );
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
    let items: Vec<_> = bounds.into_iter().zip(out_parts).zip(alpha_parts).collect();
    run_each(par, items, |((rows, out_c), alpha_c)| {
        forward_rows_dispatch(&ctx, rows, out_c, alpha_c)
    });
    if cfg.residual {
        match &p.w_res {
            Some(r) => out += &x_drop.dot(r),
            None => out += &x_drop,
        }
    }
    if let Some(b) = &p.bias {
        out += b;
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
        attn_mask,
    };
    (out, cache)
}

/// How many edges ahead the kernels prefetch neighbour data.
const PREFETCH: usize = 4;

avx2_dispatch!(forward_rows_dispatch, forward_rows_avx2, forward_rows, <F>, (ctx: &Ctx<'_, F>, rows: std::ops::Range<usize>, out_c: &mut [F], alpha_c: &mut [F]));

/// Runs [`forward_rows_impl`] with the head count and width as constants when they are 8 x 8 (the RecGOAT
/// setting), so its per-edge head loops unroll and vectorise; other shapes take the general instance.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn forward_rows<F: Real>(
    ctx: &Ctx<'_, F>,
    rows: std::ops::Range<usize>,
    out_c: &mut [F],
    alpha_c: &mut [F],
) {
    match (ctx.cfg.heads, ctx.cfg.head_dim) {
        (8, 8) => forward_rows_impl::<F, 8, 8>(ctx, rows, out_c, alpha_c),
        _ => forward_rows_impl::<F, 0, 0>(ctx, rows, out_c, alpha_c),
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn forward_rows_impl<F: Real, const H: usize, const C: usize>(
    ctx: &Ctx<'_, F>,
    rows: std::ops::Range<usize>,
    out_c: &mut [F],
    alpha_c: &mut [F],
) {
    let (cfg, graph) = (ctx.cfg, ctx.graph);
    let (hn, c, hc) = ctx.dims::<H, C>();
    let row = |j: usize| ctx.row_of(j, hc);
    let slope = cfg.negative_slope;
    let out_w = cfg.out_dim();
    let e0 = graph.indptr()[rows.start];
    let fsz = std::mem::size_of::<F>();
    let (mut tiled, mut ex) = (Vec::new(), Vec::new());
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
        let att = &mut alpha_c[(range.start - e0) * hn..(range.end - e0) * hn];
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
    let dacc: Array2<F> = if cfg.concat {
        grad_out.to_owned()
    } else {
        let inv = F::one() / F::from_usize(hn).expect("heads fit");
        Array2::from_shape_fn((n, hc), |(i, k)| grad_out[[i, k % c]] * inv)
    };
    let grad_bias = p.bias.as_ref().map(|_| grad_out.sum_axis(Axis(0)));
    let mut dxd = Array2::<F>::zeros(cache.x_drop.dim());
    let mut grad_w_res = None;
    if cfg.residual {
        match &p.w_res {
            Some(r) => {
                grad_w_res = Some(cache.x_drop.t().dot(&grad_out));
                dxd += &grad_out.dot(&r.t());
            }
            None => dxd += &grad_out,
        }
    }
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
    let ip = graph.indptr();
    let v2 = cfg.scoring == Scoring::GatV2;

    // pass 1, destination-major: softmax and LeakyReLU backward. dlogit[e h] is dL/d(pre-LeakyReLU score)
    // for GATConv and dL/d(logit) for GATv2.
    let mut dlogit = vec![F::zero(); graph.nnz() * hn];
    let mut der = Array2::<F>::zeros((n, if v2 { 0 } else { hn }));
    let mut dg_dest = Array2::<F>::zeros((n, if v2 { hc } else { 0 }));
    let bounds = graph.row_chunks(par);
    let dl_parts = split_lengths(
        &mut dlogit,
        bounds.iter().map(|r| (ip[r.end] - ip[r.start]) * hn),
    );
    let der_w = der.ncols();
    let der_parts = split_lengths(
        der.as_slice_mut().expect("fresh"),
        bounds.iter().map(|r| r.len() * der_w),
    );
    let dgd_w = dg_dest.ncols();
    let dgd_parts = split_lengths(
        dg_dest.as_slice_mut().expect("fresh"),
        bounds.iter().map(|r| r.len() * dgd_w),
    );
    let mut da_parts: Vec<Vec<F>> = vec![vec![F::zero(); if v2 { hc } else { 0 }]; bounds.len()];
    let items: Vec<_> = bounds
        .into_iter()
        .zip(dl_parts)
        .zip(der_parts)
        .zip(dgd_parts)
        .zip(da_parts.iter_mut())
        .collect();
    run_each(par, items, |((((rows, dl_c), der_c), dgd_c), da_c)| {
        backward_dest_rows_dispatch(&ctx, das, alpha, rows, dl_c, der_c, dgd_c, da_c)
    });

    // pass 2, source-major over the transposed graph: message gradients, source-score gradients, and (for
    // GATConv) the node-score terms of dL/dg and the a_src / a_dst gradients, each node's once it is complete
    let tr = graph.transposed();
    let mut dg = Array2::<F>::zeros((n, hc));
    let bounds = tr.graph.row_chunks(par);
    let dg_parts = split_lengths(
        dg.as_slice_mut().expect("fresh"),
        bounds.iter().map(|r| r.len() * hc),
    );
    let mut ga_parts: Vec<Vec<F>> =
        vec![vec![F::zero(); if v2 { 0 } else { 2 * hc }]; bounds.len()];
    let a_dst_flat: Vec<F> = p
        .a_dst
        .as_ref()
        .map_or_else(Vec::new, |a| a.iter().copied().collect());
    let items: Vec<_> = bounds
        .into_iter()
        .zip(dg_parts)
        .zip(ga_parts.iter_mut())
        .collect();
    let (dlogit, der_s) = (&dlogit[..], der.as_slice().expect("fresh"));
    let a_dst_s = &a_dst_flat[..];
    run_each(par, items, |((rows, dg_c), ga_c)| {
        backward_source_rows_dispatch(
            &ctx, tr, das, alpha, dlogit, der_s, a_dst_s, rows, dg_c, ga_c,
        )
    });

    let (grad_a_src, grad_a_dst) = if v2 {
        dg += &dg_dest;
        let mut da = vec![F::zero(); hc];
        for part in &da_parts {
            F::axpy(F::one(), part, &mut da);
        }
        (Array2::from_shape_vec((hn, c), da).expect("sized"), None)
    } else {
        let mut ga = vec![F::zero(); 2 * hc];
        for part in &ga_parts {
            F::axpy(F::one(), part, &mut ga);
        }
        let ga_dst = ga.split_off(hc);
        (
            Array2::from_shape_vec((hn, c), ga).expect("sized"),
            Some(Array2::from_shape_vec((hn, c), ga_dst).expect("sized")),
        )
    };
    let grad_w = par_t_dot(par, &cache.x_drop.view(), &dg.view());
    dxd += &par_dot(par, &dg.view(), &p.w.t());
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

avx2_dispatch!(backward_dest_rows_dispatch, backward_dest_rows_avx2, backward_dest_rows, <F>, (
    ctx: &Ctx<'_, F>, das: &[F], alpha: &[F], rows: std::ops::Range<usize>,
    dl_c: &mut [F], der_c: &mut [F], dgd_c: &mut [F], da_c: &mut [F]
));

/// Runs [`backward_dest_rows_impl`] with the head count and width as constants when they are 8 x 8 (the RecGOAT
/// setting), so its per-edge head loops unroll and vectorise; other shapes take the general instance.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn backward_dest_rows<F: Real>(
    ctx: &Ctx<'_, F>,
    das: &[F],
    alpha: &[F],
    rows: std::ops::Range<usize>,
    dl_c: &mut [F],
    der_c: &mut [F],
    dgd_c: &mut [F],
    da_c: &mut [F],
) {
    match (ctx.cfg.heads, ctx.cfg.head_dim) {
        (8, 8) => {
            backward_dest_rows_impl::<F, 8, 8>(ctx, das, alpha, rows, dl_c, der_c, dgd_c, da_c)
        }
        _ => backward_dest_rows_impl::<F, 0, 0>(ctx, das, alpha, rows, dl_c, der_c, dgd_c, da_c),
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn backward_dest_rows_impl<F: Real, const H: usize, const C: usize>(
    ctx: &Ctx<'_, F>,
    das: &[F],
    alpha: &[F],
    rows: std::ops::Range<usize>,
    dl_c: &mut [F],
    der_c: &mut [F],
    dgd_c: &mut [F],
    da_c: &mut [F],
) {
    let (cfg, graph) = (ctx.cfg, ctx.graph);
    let (hn, c, hc) = ctx.dims::<H, C>();
    let row = |j: usize| ctx.row_of(j, hc);
    let slope = cfg.negative_slope;
    let v2 = cfg.scoring == Scoring::GatV2;
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
        let dl_row = &mut dl_c[(range.start - e0) * hn..(range.end - e0) * hn];
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
        let er_i: &[F] = if v2 {
            &[]
        } else {
            &ctx.er[i * hn..(i + 1) * hn]
        };
        let der_i: &mut [F] = if v2 {
            &mut []
        } else {
            &mut der_c[li * hn..(li + 1) * hn]
        };
        for ((&j, dl), a) in edges
            .iter()
            .zip(dl_row.chunks_exact_mut(hn))
            .zip(al_row.chunks_exact(hn))
        {
            let j = j as usize;
            // softmax backward: dlogit = alpha (dalpha - sum_k alpha_k dalpha_k)
            for ((d, &av), &sh) in dl.iter_mut().zip(a).zip(&s) {
                *d = av * (*d - sh);
            }
            if v2 {
                expand(dl, c, &mut dlx);
                let (gj, gi) = (row(j), row(i));
                let dgd = &mut dgd_c[li * hc..(li + 1) * hc];
                for q in 0..hc {
                    let t = gj[q] + gi[q];
                    da_c[q] += dlx[q] * leaky(t, slope);
                    dgd[q] += dlx[q] * ctx.a_flat[q] * leaky_grad(t, slope);
                }
            } else {
                let el_j = &ctx.el[j * hn..(j + 1) * hn];
                for (((d, &l), &r), dr) in dl.iter_mut().zip(el_j).zip(er_i).zip(der_i.iter_mut()) {
                    *d *= leaky_grad(l + r, slope);
                    *dr += *d;
                }
            }
        }
    }
}

avx2_dispatch!(backward_source_rows_dispatch, backward_source_rows_avx2, backward_source_rows, <F>, (
    ctx: &Ctx<'_, F>, tr: &crate::graph::Transposed<F>, das: &[F], alpha: &[F], dlogit: &[F], der: &[F],
    a_dst: &[F], rows: std::ops::Range<usize>, dg_c: &mut [F], ga_c: &mut [F]
));

/// Runs [`backward_source_rows_impl`] with the head count and width as constants when they are 8 x 8 (the RecGOAT
/// setting), so its per-edge head loops unroll and vectorise; other shapes take the general instance.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn backward_source_rows<F: Real>(
    ctx: &Ctx<'_, F>,
    tr: &crate::graph::Transposed<F>,
    das: &[F],
    alpha: &[F],
    dlogit: &[F],
    der: &[F],
    a_dst: &[F],
    rows: std::ops::Range<usize>,
    dg_c: &mut [F],
    ga_c: &mut [F],
) {
    match (ctx.cfg.heads, ctx.cfg.head_dim) {
        (8, 8) => backward_source_rows_impl::<F, 8, 8>(
            ctx, tr, das, alpha, dlogit, der, a_dst, rows, dg_c, ga_c,
        ),
        _ => backward_source_rows_impl::<F, 0, 0>(
            ctx, tr, das, alpha, dlogit, der, a_dst, rows, dg_c, ga_c,
        ),
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn backward_source_rows_impl<F: Real, const H: usize, const C: usize>(
    ctx: &Ctx<'_, F>,
    tr: &crate::graph::Transposed<F>,
    das: &[F],
    alpha: &[F],
    dlogit: &[F],
    der: &[F],
    a_dst: &[F],
    rows: std::ops::Range<usize>,
    dg_c: &mut [F],
    ga_c: &mut [F],
) {
    let cfg = ctx.cfg;
    let (hn, c, hc) = ctx.dims::<H, C>();
    let row = |j: usize| ctx.row_of(j, hc);
    let slope = cfg.negative_slope;
    let v2 = cfg.scoring == Scoring::GatV2;
    let tg = &tr.graph;
    let fsz = std::mem::size_of::<F>();
    let mut coef = vec![F::zero(); hn];
    let mut coefx = vec![F::zero(); hc];
    let mut dlx = vec![F::zero(); hc];
    let mut del = vec![F::zero(); hn];
    let (mut delx, mut derx) = (vec![F::zero(); hc], vec![F::zero(); hc]);
    for j in rows.clone() {
        let lj = j - rows.start;
        let dst = &mut dg_c[lj * hc..(lj + 1) * hc];
        del.iter_mut().for_each(|v| *v = F::zero());
        for t in tg.row_range(j) {
            if let (Some(&ea), Some(&ia)) = (
                tr.edge_ids.get(t + PREFETCH),
                tg.indices().get(t + PREFETCH),
            ) {
                prefetch(&das[ia as usize * hc..], hc * fsz);
                prefetch(&alpha[ea * hn..], hn * fsz);
                prefetch(&dlogit[ea * hn..], hn * fsz);
                if let Some(m) = ctx.attn_mask {
                    prefetch(&m[ea * hn..], hn * fsz);
                }
            }
            let e = tr.edge_ids[t];
            let i = tg.indices()[t] as usize;
            ctx.masked(e, &alpha[e * hn..(e + 1) * hn], &mut coef);
            expand(&coef, c, &mut coefx);
            for ((d, &w), &g) in dst.iter_mut().zip(&coefx).zip(&das[i * hc..(i + 1) * hc]) {
                *d += w * g;
            }
            let dl = &dlogit[e * hn..(e + 1) * hn];
            if v2 {
                expand(dl, c, &mut dlx);
                let (gj, gi) = (row(j), row(i));
                for q in 0..hc {
                    dst[q] += dlx[q] * ctx.a_flat[q] * leaky_grad(gj[q] + gi[q], slope);
                }
            } else {
                for (d, &v) in del.iter_mut().zip(dl) {
                    *d += v;
                }
            }
        }
        if !v2 {
            // node j's scores el_j = g_j . a_src and er_j = g_j . a_dst (per head) are now fully differentiated
            expand(&del, c, &mut delx);
            expand(&der[j * hn..(j + 1) * hn], c, &mut derx);
            let gj = row(j);
            let (ga_src, ga_dst) = ga_c.split_at_mut(hc);
            for q in 0..hc {
                dst[q] += delx[q] * ctx.a_flat[q] + derx[q] * a_dst[q];
                ga_src[q] += delx[q] * gj[q];
                ga_dst[q] += derx[q] * gj[q];
            }
        }
    }
}
