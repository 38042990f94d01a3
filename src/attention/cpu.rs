//! CPU kernels of the graph attention layer: destination-major forward, two-pass backward.

use super::{leaky, leaky_grad, GatCache, GatConfig, GatGrads, GatParams, Mode, Scoring};
use crate::backend::{chunk_bounds, run_each, split_lengths, Par};
use crate::graph::CsrGraph;
use crate::simd::Real;
use ndarray::{Array2, ArrayView2, Axis};
use rand::{Rng, SeedableRng};

fn dot<F: Real>(a: &[F], b: &[F]) -> F {
    a.iter().zip(b).fold(F::zero(), |s, (&x, &y)| s + x * y)
}

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

/// Per-edge, per-head logit.
#[inline]
#[allow(clippy::too_many_arguments)]
fn logit<F: Real>(
    cfg: &GatConfig<F>,
    p: &GatParams<F>,
    g: &[F],
    el: &[F],
    er: &[F],
    i: usize,
    j: usize,
    h: usize,
) -> F {
    let (hn, c, hc) = (cfg.heads, cfg.head_dim, cfg.heads * cfg.head_dim);
    match cfg.scoring {
        Scoring::GatConv => leaky(el[j * hn + h] + er[i * hn + h], cfg.negative_slope),
        Scoring::GatV2 => {
            let a = p.a_src.row(h);
            let (gj, gi) = (
                &g[j * hc + h * c..j * hc + (h + 1) * c],
                &g[i * hc + h * c..i * hc + (h + 1) * c],
            );
            (0..c).fold(F::zero(), |s, k| {
                s + a[k] * leaky(gj[k] + gi[k], cfg.negative_slope)
            })
        }
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
    let hc = hn * c;
    let (feat_mask, attn_mask) = match mode {
        Mode::Train { seed } => {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let fm = (cfg.feat_drop > F::zero()).then(|| {
                Array2::from_shape_vec(x.dim(), dropout_scales(&mut rng, x.len(), cfg.feat_drop))
                    .expect("sized")
            });
            let am = (cfg.attn_drop > F::zero())
                .then(|| dropout_scales(&mut rng, graph.nnz() * hn, cfg.attn_drop));
            (fm, am)
        }
        Mode::Eval => (None, None),
    };
    let x_drop = match &feat_mask {
        Some(m) => &x * m,
        None => x.to_owned(),
    };
    let g = x_drop.dot(&p.w);
    let (el, er) = match (cfg.scoring, &p.a_dst) {
        (Scoring::GatConv, Some(a_dst)) => {
            let score = |a: &Array2<F>| {
                Array2::from_shape_fn((n, hn), |(i, h)| {
                    dot(
                        &g.row(i).as_slice().expect("row-major")[h * c..(h + 1) * c],
                        a.row(h).as_slice().expect("row-major"),
                    )
                })
            };
            (score(&p.a_src), score(a_dst))
        }
        _ => (Array2::zeros((0, 0)), Array2::zeros((0, 0))),
    };
    let out_w = cfg.out_dim();
    let mut out = Array2::<F>::zeros((n, out_w));
    let mut alpha = vec![F::zero(); graph.nnz() * hn];
    let bounds = chunk_bounds(par, n);
    let ip = graph.indptr();
    let out_parts = split_lengths(
        out.as_slice_mut().expect("fresh"),
        bounds.iter().map(|r| r.len() * out_w),
    );
    let alpha_parts = split_lengths(
        &mut alpha,
        bounds.iter().map(|r| (ip[r.end] - ip[r.start]) * hn),
    );
    let (gs, els, ers) = (
        g.as_slice().expect("fresh"),
        el.as_slice().unwrap_or(&[]),
        er.as_slice().unwrap_or(&[]),
    );
    let items: Vec<_> = bounds.into_iter().zip(out_parts).zip(alpha_parts).collect();
    run_each(par, items, |((rows, out_c), alpha_c)| {
        let e0 = ip[rows.start];
        let mut acc = vec![F::zero(); hc];
        for i in rows.clone() {
            let range = graph.row_range(i);
            for e in range.clone() {
                let j = graph.indices()[e] as usize;
                for h in 0..hn {
                    alpha_c[(e - e0) * hn + h] = logit(cfg, p, gs, els, ers, i, j, h);
                }
            }
            for h in 0..hn {
                let slot = |e: usize| (e - e0) * hn + h;
                let mx = range
                    .clone()
                    .fold(F::neg_infinity(), |m, e| m.max(alpha_c[slot(e)]));
                let mut z = F::zero();
                for e in range.clone() {
                    let v = (alpha_c[slot(e)] - mx).exp();
                    alpha_c[slot(e)] = v;
                    z += v;
                }
                for e in range.clone() {
                    alpha_c[slot(e)] /= z;
                }
            }
            acc.iter_mut().for_each(|v| *v = F::zero());
            for e in range {
                let j = graph.indices()[e] as usize;
                for h in 0..hn {
                    let m = attn_mask.as_ref().map_or(F::one(), |am| am[e * hn + h]);
                    F::axpy(
                        alpha_c[(e - e0) * hn + h] * m,
                        &gs[j * hc + h * c..j * hc + (h + 1) * c],
                        &mut acc[h * c..(h + 1) * c],
                    );
                }
            }
            let orow = &mut out_c[(i - rows.start) * out_w..(i - rows.start + 1) * out_w];
            if cfg.concat {
                orow.copy_from_slice(&acc);
            } else {
                let inv = F::one() / F::from_usize(hn).expect("heads fit");
                for (k, o) in orow.iter_mut().enumerate() {
                    *o = (0..hn).fold(F::zero(), |s, h| s + acc[h * c + k]) * inv;
                }
            }
        }
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
    let slope = cfg.negative_slope;
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
    let (gs, das) = (
        cache.g.as_slice().expect("row-major"),
        dacc.as_slice().expect("row-major"),
    );
    let (els, ers) = (
        cache.el.as_slice().unwrap_or(&[]),
        cache.er.as_slice().unwrap_or(&[]),
    );
    let mask = |e: usize, h: usize| cache.attn_mask.as_ref().map_or(F::one(), |m| m[e * hn + h]);
    let ip = graph.indptr();
    let v2 = cfg.scoring == Scoring::GatV2;

    // pass 1, destination-major: softmax and LeakyReLU backward; dlogit[e h] is dL/d(pre-LeakyReLU score)
    // for GATConv and dL/d(logit) for GATv2
    let mut dlogit = vec![F::zero(); graph.nnz() * hn];
    let mut der = Array2::<F>::zeros((n, if v2 { 0 } else { hn }));
    let mut dg_dest = Array2::<F>::zeros((n, if v2 { hc } else { 0 }));
    let bounds = chunk_bounds(par, n);
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
    let n_chunks = bounds.len();
    let mut da_parts: Vec<Vec<F>> = vec![vec![F::zero(); if v2 { hc } else { 0 }]; n_chunks];
    let items: Vec<_> = bounds
        .into_iter()
        .zip(dl_parts)
        .zip(der_parts)
        .zip(dgd_parts)
        .zip(da_parts.iter_mut())
        .collect();
    run_each(par, items, |((((rows, dl_c), der_c), dgd_c), da_c)| {
        let e0 = ip[rows.start];
        for i in rows.clone() {
            let range = graph.row_range(i);
            let li = i - rows.start;
            for e in range.clone() {
                let j = graph.indices()[e] as usize;
                for h in 0..hn {
                    let dcoef = dot(
                        &das[i * hc + h * c..i * hc + (h + 1) * c],
                        &gs[j * hc + h * c..j * hc + (h + 1) * c],
                    );
                    dl_c[(e - e0) * hn + h] = dcoef * mask(e, h);
                }
            }
            for h in 0..hn {
                let s = range.clone().fold(F::zero(), |s, e| {
                    s + cache.alpha[e * hn + h] * dl_c[(e - e0) * hn + h]
                });
                for e in range.clone() {
                    let j = graph.indices()[e] as usize;
                    let slot = (e - e0) * hn + h;
                    let dl = cache.alpha[e * hn + h] * (dl_c[slot] - s);
                    if v2 {
                        dl_c[slot] = dl;
                        let a = p.a_src.row(h);
                        for k in 0..c {
                            let t = gs[j * hc + h * c + k] + gs[i * hc + h * c + k];
                            da_c[h * c + k] += dl * leaky(t, slope);
                            dgd_c[li * hc + h * c + k] += dl * a[k] * leaky_grad(t, slope);
                        }
                    } else {
                        let dz = dl * leaky_grad(els[j * hn + h] + ers[i * hn + h], slope);
                        dl_c[slot] = dz;
                        der_c[li * hn + h] += dz;
                    }
                }
            }
        }
    });

    // pass 2, source-major over the transposed graph: message gradients and source-score gradients
    let tr = graph.transposed();
    let tg = &tr.graph;
    let mut dg = Array2::<F>::zeros((n, hc));
    let mut del = Array2::<F>::zeros((n, if v2 { 0 } else { hn }));
    let bounds = chunk_bounds(par, n);
    let dg_parts = split_lengths(
        dg.as_slice_mut().expect("fresh"),
        bounds.iter().map(|r| r.len() * hc),
    );
    let del_w = del.ncols();
    let del_parts = split_lengths(
        del.as_slice_mut().expect("fresh"),
        bounds.iter().map(|r| r.len() * del_w),
    );
    let items: Vec<_> = bounds.into_iter().zip(dg_parts).zip(del_parts).collect();
    run_each(par, items, |((rows, dg_c), del_c)| {
        for j in rows.clone() {
            let lj = j - rows.start;
            for t in tg.row_range(j) {
                let e = tr.edge_ids[t];
                let i = tg.indices()[t] as usize;
                for h in 0..hn {
                    let coef = cache.alpha[e * hn + h] * mask(e, h);
                    let dst = &mut dg_c[lj * hc + h * c..lj * hc + (h + 1) * c];
                    F::axpy(coef, &das[i * hc + h * c..i * hc + (h + 1) * c], dst);
                    let dl = dlogit[e * hn + h];
                    if v2 {
                        let a = p.a_src.row(h);
                        for k in 0..c {
                            let tv = gs[j * hc + h * c + k] + gs[i * hc + h * c + k];
                            dst[k] += dl * a[k] * leaky_grad(tv, slope);
                        }
                    } else {
                        del_c[lj * hn + h] += dl;
                    }
                }
            }
        }
    });

    let (grad_a_src, grad_a_dst) = if v2 {
        dg += &dg_dest;
        let mut da = vec![F::zero(); hc];
        for part in &da_parts {
            F::axpy(F::one(), part, &mut da);
        }
        (Array2::from_shape_vec((hn, c), da).expect("sized"), None)
    } else {
        let a_dst = p.a_dst.as_ref().expect("GATConv has a_dst");
        let mut ga_src = Array2::<F>::zeros((hn, c));
        let mut ga_dst = Array2::<F>::zeros((hn, c));
        for i in 0..n {
            for h in 0..hn {
                let gi = cache.g.row(i);
                let (dl, dr) = (del[[i, h]], der[[i, h]]);
                for k in 0..c {
                    dg[[i, h * c + k]] += dl * p.a_src[[h, k]] + dr * a_dst[[h, k]];
                    ga_src[[h, k]] += dl * gi[h * c + k];
                    ga_dst[[h, k]] += dr * gi[h * c + k];
                }
            }
        }
        (ga_src, Some(ga_dst))
    };
    let grad_w = cache.x_drop.t().dot(&dg);
    dxd += &dg.dot(&p.w.t());
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
