//! `GpuExec`: the model's backend on a GPU, [`GpuMatrix`] buffers through the crate's WGSL kernels.
//!
//! Nothing is read back unless asked: a loss term or a check (a zero row that cannot be normalised, an OAT
//! solve's status, a non-finite BPR term) stays on the device as a [`GpuScalar`] until [`Exec::read`]
//! copies every one of them in one go. The kernels are f32; a model of another float type cannot be built
//! on a GPU backend ([`GpuInputs::new`] refuses it), so the host values' conversions here are copies
//! between equal types.

use super::{BprOut, Exec, GatRefs, Inputs};
use crate::attention::{GatLayer, Mode};
use crate::backend::GpuBackend;
use crate::contrastive::{InfoNceConfig, PairTerm, ViewPair};
use crate::error::{Error, Result};

use crate::gpu::elementwise::{axpy, col_sums, hadamard, leaky_relu_masked};
use crate::gpu::f32_twin::{from_f32, same, to_f32};
use crate::gpu::fusion::{
    fusion_logits_backward, fusion_weight_rows, weighted_sum_backward_scaled, weighted_sum_scaled,
};
use crate::gpu::norm::{judge_norms, l2_normalize_unchecked};
use crate::gpu::PendingInfoNce;
use crate::gpu::{
    self, GpuAdamState, GpuAdaptiveCache, GpuAttentionGraph, GpuContext, GpuGatCache, GpuGatParams,
    GpuGraph, GpuLayerNorm, GpuLayerNormCache, GpuMatrix,
};
use crate::graph::CsrGraph;
use crate::nn::{Adam, AdamState};
use crate::simd::Real;
use crate::transport::AdaptiveTransport;
use ndarray::{Array2, ArrayView2};
use std::marker::PhantomData;
use std::sync::Arc;

const OP: &str = "RecGoat (GPU backend)";

/// `a` as its f32 twin: the GPU path runs f32 models only.
fn f32_of<'a, A: 'static, B: 'static>(a: &'a A, what: &str) -> Result<&'a B> {
    same(a).ok_or_else(|| {
        Error::param(
            OP,
            "float type",
            what,
            "the GPU path runs f32 models only: use RecGoat::<f32>",
        )
    })
}

/// A model's fixed inputs on the device, uploaded once when the model is built.
#[derive(Debug)]
pub(crate) struct GpuInputs {
    ctx: Arc<GpuContext>,
    adj: GpuGraph,
    layers: usize,
    item_graph: Option<(GpuGraph, usize)>,
    /// Each branch's attended graph, features and a column of ones as long (the projection's bias as a
    /// rank-one product).
    branches: Vec<(GpuAttentionGraph, GpuMatrix, GpuMatrix)>,
    gat: GatLayer<f32>,
    oat: Option<AdaptiveTransport<f32>>,
}

impl GpuInputs {
    /// Uploads the user-item graph, each branch's graph as the model's layer attends over it, and each
    /// branch's features.
    ///
    /// # Errors
    /// [`Error::Param`] when `F` is not `f32`; the upload errors ([`Error::Gpu`] beyond a device limit).
    pub(crate) fn new<F: Real>(backend: &GpuBackend, inputs: &Inputs<'_, F>) -> Result<GpuInputs> {
        let ctx = backend.context().clone();
        let name = std::any::type_name::<F>();
        let gat: &GatLayer<f32> = f32_of(inputs.gat, name)?;
        let adj: &CsrGraph<f32> = f32_of(inputs.adj, name)?;
        let branches = (inputs.branches.iter())
            .map(|&(x, g)| {
                let x: &Array2<f32> = f32_of(x, name)?;
                Ok((
                    GpuAttentionGraph::upload(&ctx, gat, f32_of(g, name)?)?,
                    GpuMatrix::upload(&ctx, x.view())?,
                    GpuMatrix::upload(&ctx, Array2::ones((x.nrows(), 1)).view())?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let oat = match inputs.oat {
            Some(op) => Some(f32_of::<_, AdaptiveTransport<f32>>(op, name)?.clone()),
            None => None,
        };
        Ok(GpuInputs {
            adj: GpuGraph::upload(&ctx, adj)?,
            layers: inputs.layers,
            item_graph: match inputs.item_graph {
                Some((g, l)) => Some((GpuGraph::upload(&ctx, f32_of(g, name)?)?, l)),
                None => None,
            },
            branches,
            gat: gat.clone(),
            oat,
            ctx,
        })
    }

    pub(crate) fn exec<F: Real>(&self) -> GpuExec<'_, F> {
        GpuExec {
            dev: self,
            ctx: &self.ctx,
            _f: PhantomData,
        }
    }
}

/// The GPU backend of a model, on its uploaded inputs.
#[derive(Debug)]
pub(crate) struct GpuExec<'a, F> {
    dev: &'a GpuInputs,
    ctx: &'a GpuContext,
    _f: PhantomData<F>,
}

/// A value or a check of a [`GpuExec`], on the device until [`Exec::read`].
#[derive(Debug)]
pub(crate) enum GpuScalar {
    /// Known on the host.
    Host(f64),
    /// Row norms that must all be positive (value 0).
    Norms(&'static str, GpuMatrix),
    /// An OAT solve's status (value 0).
    Status(GpuMatrix),
    /// One InfoNCE term of a multi-view loss: `weight * loss` or `weight * (1 - loss)`.
    Nce {
        term: PairTerm,
        weight: f32,
        pending: PendingInfoNce,
    },
    /// `scale` times the mean of column `col` of a `b x 2` matrix of per-triple terms, all finite.
    Terms {
        terms: GpuMatrix,
        col: usize,
        scale: f64,
    },
    /// `scale` times the mean of a `rows x 1` matrix of per-row values, all finite (`what` names them).
    RowMean {
        values: GpuMatrix,
        scale: f64,
        what: &'static str,
    },
}

impl GpuScalar {
    fn reads(&self) -> Vec<(&wgpu::Buffer, usize)> {
        match self {
            GpuScalar::Host(_) => Vec::new(),
            GpuScalar::Norms(_, n) => vec![(&n.buf, n.rows())],
            GpuScalar::Status(s) => vec![(&s.buf, s.cols())],
            GpuScalar::Nce { pending, .. } => pending.reads(),
            GpuScalar::Terms { terms, .. } => vec![(&terms.buf, 2 * terms.rows())],
            GpuScalar::RowMean { values, .. } => vec![(&values.buf, values.rows())],
        }
    }

    fn judge(
        &self,
        values: &mut impl Iterator<Item = Vec<f32>>,
        oat: Option<&AdaptiveTransport<f32>>,
    ) -> Result<f64> {
        let mut next = || values.next().unwrap_or_default();
        match self {
            GpuScalar::Host(v) => Ok(*v),
            GpuScalar::Norms(what, _) => judge_norms(OP, what, &next()).map(|_| 0.0),
            GpuScalar::Status(_) => {
                let status = next();
                match oat {
                    Some(op) => gpu::judge_adaptive_status(&status, op).map(|_| 0.0),
                    None => Ok(0.0),
                }
            }
            GpuScalar::Nce {
                term,
                weight,
                pending,
            } => {
                let n = pending.reads().len();
                let loss = pending.judge((0..n).map(|_| next()))?;
                Ok(f64::from(match term {
                    PairTerm::InfoNce => weight * loss,
                    PairTerm::OneMinusInfoNce => weight * (1.0 - loss),
                }))
            }
            GpuScalar::Terms { terms, col, scale } => {
                let all = next();
                let b = terms.rows();
                let column = (0..b).map(|r| all.get(2 * r + col).copied().unwrap_or(f32::NAN));
                let mut sum = 0.0f64;
                for (r, v) in column.enumerate() {
                    if !v.is_finite() {
                        return Err(Error::NonFinite {
                            op: OP,
                            what: ["BPR term of a triple", "regulariser term of a triple"][*col]
                                .into(),
                            index: r,
                            value: v.to_string(),
                        });
                    }
                    sum += f64::from(v);
                }
                Ok(scale * sum / b as f64)
            }
            GpuScalar::RowMean {
                values,
                scale,
                what,
            } => {
                let all = next();
                let mut sum = 0.0f64;
                for r in 0..values.rows() {
                    let v = all.get(r).copied().unwrap_or(f32::NAN);
                    if !v.is_finite() {
                        return Err(Error::NonFinite {
                            op: OP,
                            what: (*what).into(),
                            index: r,
                            value: v.to_string(),
                        });
                    }
                    sum += f64::from(v);
                }
                Ok(scale * sum / values.rows().max(1) as f64)
            }
        }
    }
}

impl<F: Real> GpuExec<'_, F> {
    fn oat(&self) -> Result<&AdaptiveTransport<f32>> {
        self.dev
            .oat
            .as_ref()
            .ok_or_else(|| Error::param(OP, "oat", "off", "the model has no OAT"))
    }

    fn branch(&self, slot: usize) -> Result<&(GpuAttentionGraph, GpuMatrix, GpuMatrix)> {
        (self.dev.branches.get(slot))
            .ok_or_else(|| Error::param(OP, "branch", slot, "no such branch in the model"))
    }

    fn gat_params(&self, p: GatRefs<'_, GpuMatrix>) -> Result<GpuGatParams> {
        GpuGatParams::from_parts(&self.dev.gat, p.w, p.a_src, p.a_dst, p.bias, p.w_res)
    }

    fn f(v: F) -> f32 {
        v.to_f32().unwrap_or(f32::NAN)
    }
}

impl<F: Real> Exec for GpuExec<'_, F> {
    type F = F;
    type M = GpuMatrix;
    type Sel = GpuGraph;
    type GatCache = GpuGatCache;
    type NormCache = GpuLayerNormCache;
    type Oat = GpuAdaptiveCache;
    type Fusion = Vec<GpuMatrix>;
    type Adam = GpuAdamState;
    type Scalar = GpuScalar;
    const DEFERRED: bool = true;

    fn upload(&self, x: ArrayView2<'_, F>) -> Result<GpuMatrix> {
        GpuMatrix::upload(self.ctx, to_f32(x).view())
    }
    fn download(&self, x: &GpuMatrix) -> Result<Array2<F>> {
        Ok(from_f32(x.download(self.ctx)?))
    }
    fn zeros(&self, rows: usize, cols: usize) -> Result<GpuMatrix> {
        GpuMatrix::zeros(self.ctx, rows, cols)
    }
    fn dim(&self, x: &GpuMatrix) -> (usize, usize) {
        (x.rows(), x.cols())
    }
    fn rows(&self, x: &GpuMatrix, r0: usize, n: usize) -> Result<GpuMatrix> {
        x.rows_range(self.ctx, r0, n)
    }
    fn concat_rows(&self, a: &GpuMatrix, b: &GpuMatrix) -> Result<GpuMatrix> {
        let out = self.zeros(a.rows() + b.rows(), a.cols())?;
        out.set_rows(self.ctx, 0, a)?;
        out.set_rows(self.ctx, a.rows(), b)?;
        Ok(out)
    }
    fn axpy(&self, a: F, x: &GpuMatrix, y: &mut GpuMatrix) -> Result<()> {
        axpy(self.ctx, Self::f(a), x, y)
    }
    fn masked(&self, x: GpuMatrix, mask: Option<&GpuMatrix>) -> Result<GpuMatrix> {
        match mask {
            Some(m) => hadamard(self.ctx, &x, m),
            None => Ok(x),
        }
    }

    fn propagate(&self, x: &GpuMatrix, backward: bool) -> Result<GpuMatrix> {
        let mut out = self.zeros(x.rows(), x.cols())?;
        let (adj, layers) = (&self.dev.adj, self.dev.layers);
        if backward {
            gpu::lightgcn_backward_into(self.ctx, adj, x, layers, &mut out)?;
        } else {
            gpu::lightgcn_forward_into(self.ctx, adj, x, layers, &mut out)?;
        }
        Ok(out)
    }
    fn item_propagate(&self, x: &GpuMatrix, backward: bool) -> Result<GpuMatrix> {
        let (s, layers) = (self.dev.item_graph.as_ref())
            .ok_or_else(|| Error::param("GpuExec", "item_graph", "none", "the model has none"))?;
        let mut h = self.rows(x, 0, x.rows())?;
        for _ in 0..*layers {
            let mut next = self.zeros(x.rows(), x.cols())?;
            if backward {
                gpu::spmm_backward_into(self.ctx, s, &h, &mut next)?;
            } else {
                gpu::spmm_into(self.ctx, s, &h, &mut next)?;
            }
            h = next;
        }
        Ok(h)
    }
    fn project(&self, slot: usize, w: &GpuMatrix, b: Option<&GpuMatrix>) -> Result<GpuMatrix> {
        let (_, x, ones) = self.branch(slot)?;
        let mut h = self.zeros(x.rows(), w.cols())?;
        gpu::gemm(self.ctx, 1.0, x, false, w, false, 0.0, &mut h)?;
        if let Some(b) = b {
            gpu::gemm(self.ctx, 1.0, ones, false, b, false, 1.0, &mut h)?;
        }
        Ok(h)
    }
    fn project_backward(
        &self,
        slot: usize,
        g: &GpuMatrix,
        bias: bool,
    ) -> Result<(GpuMatrix, Option<GpuMatrix>)> {
        let x = &self.branch(slot)?.1;
        let mut w = self.zeros(x.cols(), g.cols())?;
        gpu::gemm(self.ctx, 1.0, x, true, g, false, 0.0, &mut w)?;
        let b = bias.then(|| col_sums(self.ctx, g)).transpose()?;
        Ok((w, b))
    }
    fn project_rows(
        &self,
        slot: usize,
        s: &GpuGraph,
        w: &GpuMatrix,
        b: Option<&GpuMatrix>,
    ) -> Result<(GpuMatrix, GpuMatrix)> {
        let x = self.gather(s, &self.branch(slot)?.1)?;
        let mut h = self.zeros(x.rows(), w.cols())?;
        gpu::gemm(self.ctx, 1.0, &x, false, w, false, 0.0, &mut h)?;
        if let Some(b) = b {
            let ones = GpuMatrix::upload(self.ctx, Array2::ones((x.rows(), 1)).view())?;
            gpu::gemm(self.ctx, 1.0, &ones, false, b, false, 1.0, &mut h)?;
        }
        Ok((h, x))
    }
    fn project_rows_backward(
        &self,
        x: &GpuMatrix,
        g: &GpuMatrix,
        bias: bool,
    ) -> Result<(GpuMatrix, Option<GpuMatrix>)> {
        let mut w = self.zeros(x.cols(), g.cols())?;
        gpu::gemm(self.ctx, 1.0, x, true, g, false, 0.0, &mut w)?;
        let b = bias.then(|| col_sums(self.ctx, g)).transpose()?;
        Ok((w, b))
    }
    fn gat_forward(
        &self,
        slot: usize,
        p: GatRefs<'_, GpuMatrix>,
        x: &GpuMatrix,
        mode: Mode,
    ) -> Result<(GpuMatrix, GpuGatCache)> {
        let gp = self.gat_params(p)?;
        let graph = &self.branch(slot)?.0;
        gpu::gat_forward_with(self.ctx, &self.dev.gat, &gp, graph, x, mode)
    }
    fn gat_backward(
        &self,
        slot: usize,
        p: GatRefs<'_, GpuMatrix>,
        cache: &GpuGatCache,
        x: &GpuMatrix,
        g: &GpuMatrix,
    ) -> Result<(GpuMatrix, Vec<GpuMatrix>)> {
        let gp = self.gat_params(p)?;
        let graph = &self.branch(slot)?.0;
        let gg = gpu::gat_backward_with(self.ctx, &self.dev.gat, &gp, graph, cache, x, g)?;
        Ok(gg.into_parts())
    }
    fn leaky_relu_masked(
        &self,
        pre: &GpuMatrix,
        slope: F,
        mask: Option<&GpuMatrix>,
    ) -> Result<GpuMatrix> {
        leaky_relu_masked(self.ctx, pre, Self::f(slope), mask, None)
    }
    fn leaky_relu_masked_backward(
        &self,
        pre: &GpuMatrix,
        slope: F,
        mask: Option<&GpuMatrix>,
        g: &GpuMatrix,
    ) -> Result<GpuMatrix> {
        leaky_relu_masked(self.ctx, pre, Self::f(slope), mask, Some(g))
    }

    fn oat_forward(
        &self,
        m: &GpuMatrix,
        z: &GpuMatrix,
        delta: &GpuMatrix,
    ) -> Result<(GpuMatrix, GpuAdaptiveCache, Option<GpuScalar>)> {
        let (a, cache) = gpu::adaptive_transport_forward_with(self.ctx, self.oat()?, m, z, delta)?;
        let status = cache.status().map(|s| GpuScalar::Status(s.alias()));
        Ok((a, cache, status))
    }
    fn oat_backward(
        &self,
        oat: &GpuAdaptiveCache,
        m: &GpuMatrix,
        z: &GpuMatrix,
        g: &GpuMatrix,
    ) -> Result<[GpuMatrix; 3]> {
        let op = self.oat()?;
        let ag = gpu::adaptive_transport_backward_with(self.ctx, op, oat, m, z, Some(g), 0.0)?;
        Ok([ag.grad_m, ag.grad_z, ag.grad_delta])
    }
    fn oat_plan(&self, oat: &GpuAdaptiveCache) -> Result<Array2<F>> {
        Ok(from_f32(oat.plan(self.ctx)?))
    }
    fn fusion(
        &self,
        views: &[&GpuMatrix],
        logits: &GpuMatrix,
        softmax: bool,
    ) -> Result<(GpuMatrix, Vec<GpuMatrix>)> {
        let scales = fusion_weight_rows(self.ctx, logits, views[0].cols(), softmax)?;
        let fused = weighted_sum_scaled(self.ctx, views, &scales)?;
        Ok((fused, scales))
    }
    fn fusion_backward(
        &self,
        views: &[&GpuMatrix],
        scales: &Vec<GpuMatrix>,
        logits: &GpuMatrix,
        softmax: bool,
        g: &GpuMatrix,
    ) -> Result<(Vec<GpuMatrix>, GpuMatrix)> {
        let (g_views, sums) = weighted_sum_backward_scaled(self.ctx, views, scales, g)?;
        let g_logits = fusion_logits_backward(self.ctx, logits, &sums, softmax)?;
        Ok((g_views, g_logits))
    }
    fn layer_norm(
        &self,
        (gamma, beta, eps): (&GpuMatrix, &GpuMatrix, F),
        x: &GpuMatrix,
    ) -> Result<(GpuMatrix, GpuLayerNormCache)> {
        let ln = GpuLayerNorm::from_parts(gamma, beta, Self::f(eps))?;
        gpu::layer_norm_forward_with(self.ctx, &ln, x)
    }
    fn layer_norm_backward(
        &self,
        (gamma, beta, eps): (&GpuMatrix, &GpuMatrix, F),
        cache: &GpuLayerNormCache,
        g: &GpuMatrix,
    ) -> Result<(GpuMatrix, GpuMatrix, GpuMatrix)> {
        let ln = GpuLayerNorm::from_parts(gamma, beta, Self::f(eps))?;
        gpu::layer_norm_backward_with(self.ctx, &ln, cache, g)
    }
    fn l2_normalize(
        &self,
        x: &GpuMatrix,
        what: &'static str,
    ) -> Result<(GpuMatrix, GpuMatrix, Option<GpuScalar>)> {
        let (y, norms) = l2_normalize_unchecked(self.ctx, x)?;
        let check = GpuScalar::Norms(what, norms.alias());
        Ok((y, norms, Some(check)))
    }
    fn l2_normalize_backward(
        &self,
        y: &GpuMatrix,
        norms: &GpuMatrix,
        g: &GpuMatrix,
    ) -> Result<GpuMatrix> {
        gpu::l2_normalize_backward(self.ctx, y, norms, g)
    }

    fn select(&self, ids: &[usize], n: usize) -> Result<GpuGraph> {
        // every id is below n, whose row count fit the u32 offsets of the uploaded graphs
        let idx: Vec<u32> = ids.iter().map(|&r| r as u32).collect();
        let k = idx.len();
        GpuGraph::upload(
            self.ctx,
            &CsrGraph::new(k, n, (0..=k).collect(), idx, None)?,
        )
    }
    fn gather(&self, s: &GpuGraph, table: &GpuMatrix) -> Result<GpuMatrix> {
        let mut y = self.zeros(s.n_rows(), table.cols())?;
        gpu::spmm_into(self.ctx, s, table, &mut y)?;
        Ok(y)
    }
    fn scatter_add(&self, s: &GpuGraph, g: &GpuMatrix, acc: &mut GpuMatrix) -> Result<()> {
        let scratch = self.zeros(acc.rows(), acc.cols())?;
        gpu::propagation::spmm_backward_add(self.ctx, s, g, &scratch, acc)
    }
    fn bpr(&self, zu: &GpuMatrix, zi: &GpuMatrix, e: &GpuMatrix, reg: F) -> Result<BprOut<Self>> {
        let (b, d) = (zu.rows(), zu.cols());
        let (gu, gi, ge) = (
            self.zeros(b, d)?,
            self.zeros(2 * b, d)?,
            self.zeros(3 * b, d)?,
        );
        let terms = self.zeros(b, 2)?;
        let reg = Self::f(reg);
        gpu::bpr::bpr_rows(self.ctx, (zu, zi, e), reg, (&gu, &gi, &ge, &terms))?;
        Ok(BprOut {
            bpr: GpuScalar::Terms {
                terms: terms.alias(),
                col: 0,
                scale: 1.0,
            },
            reg: GpuScalar::Terms {
                terms,
                col: 1,
                scale: f64::from(reg),
            },
            grad_users: gu,
            grad_items: gi,
            grad_ego: ge,
        })
    }
    fn info_nce(
        &self,
        views: &[&GpuMatrix],
        pairs: &[ViewPair<F>],
        cfg: &InfoNceConfig<F>,
        scale: F,
    ) -> Result<(Vec<GpuScalar>, Vec<GpuMatrix>)> {
        let cfg: &InfoNceConfig<f32> = f32_of(cfg, "InfoNCE config")?;
        let grads = (views.iter())
            .map(|v| self.zeros(v.rows(), v.cols()))
            .collect::<Result<Vec<_>>>()?;
        let mut terms = Vec::with_capacity(pairs.len());
        for pair in pairs {
            let (v1, v2) = (
                views.get(pair.first).ok_or_else(|| {
                    Error::param(OP, "pairs", pair.first, "view index out of range")
                })?,
                views.get(pair.second).ok_or_else(|| {
                    Error::param(OP, "pairs", pair.second, "view index out of range")
                })?,
            );
            let out = gpu::info_nce_deferred(self.ctx, v1, v2, None, None, cfg)?;
            let weight = Self::f(pair.weight);
            let sign = match pair.term {
                PairTerm::InfoNce => weight,
                PairTerm::OneMinusInfoNce => -weight,
            };
            let s = sign * Self::f(scale);
            axpy(self.ctx, s, &out.grad_v1, &grads[pair.first])?;
            axpy(self.ctx, s, &out.grad_v2, &grads[pair.second])?;
            terms.push(GpuScalar::Nce {
                term: pair.term,
                weight,
                pending: out.pending,
            });
        }
        Ok((terms, grads))
    }
    fn sq_dist(
        &self,
        a: &GpuMatrix,
        t: &GpuMatrix,
        scale: F,
        parts: F,
    ) -> Result<(GpuScalar, GpuMatrix)> {
        let (rows, cols) = (a.rows(), a.cols());
        if (t.rows(), t.cols()) != (rows, cols) {
            return Err(Error::shape(
                OP,
                "sq_dist target",
                (rows, cols),
                (t.rows(), t.cols()),
            ));
        }
        let diff = self.zeros(rows, cols)?;
        axpy(self.ctx, 1.0, a, &diff)?;
        axpy(self.ctx, -1.0, t, &diff)?;
        let grad = self.zeros(rows, cols)?;
        axpy(
            self.ctx,
            2.0 * Self::f(scale) / rows.max(1) as f32,
            &diff,
            &grad,
        )?;
        let squares = hadamard(self.ctx, &diff, &diff)?;
        let ones = GpuMatrix::upload(self.ctx, Array2::ones((cols, 1)).view())?;
        let mut values = self.zeros(rows, 1)?;
        gpu::gemm(
            self.ctx,
            1.0,
            &squares,
            false,
            &ones,
            false,
            0.0,
            &mut values,
        )?;
        let value = GpuScalar::RowMean {
            values,
            scale: 1.0 / f64::from(Self::f(parts)),
            what: "content term of an item",
        };
        Ok((value, grad))
    }
    fn scalar(&self, v: f64) -> GpuScalar {
        GpuScalar::Host(v)
    }
    fn read(&self, xs: &[&GpuScalar]) -> Result<Vec<Result<f64>>> {
        let reads: Vec<(&wgpu::Buffer, usize)> = xs.iter().flat_map(|x| x.reads()).collect();
        let mut values = self.ctx.read_many::<f32>(OP, &reads)?.into_iter();
        let oat = self.dev.oat.as_ref();
        Ok(xs.iter().map(|x| x.judge(&mut values, oat)).collect())
    }

    fn adam_state(&self, st: &AdamState<F>) -> Result<GpuAdamState> {
        GpuAdamState::upload(self.ctx, f32_of(st, "Adam state")?)
    }
    fn adam_state_download(&self, st: &GpuAdamState) -> Result<AdamState<F>> {
        let st = st.download(self.ctx)?;
        same::<AdamState<f32>, AdamState<F>>(&st)
            .cloned()
            .ok_or_else(|| Error::param(OP, "float type", "Adam state", "f32 only"))
    }
    fn adam_step(
        &self,
        adam: &Adam<F>,
        p: &mut GpuMatrix,
        g: &GpuMatrix,
        st: &mut GpuAdamState,
    ) -> Result<()> {
        gpu::adam_step(self.ctx, f32_of(adam, "Adam")?, p, g, st)
    }
}
