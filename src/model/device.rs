//! The model's GPU path ([`crate::Backend::Gpu`]): LightGCN propagation, every branch's graph attention, the
//! OAT maps and the contrastive loss, forward and backward, run on the device through [`crate::gpu`]. The user-item
//! graph and the attended kNN graphs are uploaded once, when the model is built; each call uploads its
//! dense input and reads its output back, and a GAT layer's forward state stays on the device for its
//! backward pass. The sample-level OT loss reaches the GPU through [`crate::transport::sinkhorn_divergence`]
//! on the model's backend. The rest of a step (the projections, fusion, BPR, the optimizer) runs on the
//! host.
//!
//! The GPU kernels are f32, so this path serves `RecGoat<f32>` only; building a model of another float
//! type on a GPU backend is an [`Error::Param`].

use crate::attention::{GatGrads, GatLayer, GatParams, Mode};
use crate::backend::GpuBackend;
use crate::contrastive::{InfoNceConfig, InfoNceOutput};
use crate::error::{Error, Result};
use crate::gpu::f32_twin::{from_f32, same, to_f32};
use crate::gpu::{self, GpuAttentionGraph, GpuContext, GpuGatCache, GpuGraph, GpuMatrix};
use crate::graph::CsrGraph;
use crate::simd::Real;
use crate::transport::{AdaptiveGrads, AdaptiveTransport};
use ndarray::{Array1, Array2, ArrayView2};
use std::sync::Arc;

/// The f32 twin of a value of the model's float type (which the GPU backend requires to be f32).
fn as_f32<'a, A: 'static, B: 'static>(a: &'a A, what: &str) -> Result<&'a B> {
    same(a).ok_or_else(|| {
        Error::param(
            "RecGoat (GPU backend)",
            "float type",
            what,
            "the GPU path runs f32 models only: use RecGoat::<f32>",
        )
    })
}

fn upload<F: Real>(ctx: &GpuContext, x: ArrayView2<'_, F>) -> Result<GpuMatrix> {
    GpuMatrix::upload(ctx, to_f32(x).view())
}

fn download<F: Real>(ctx: &GpuContext, x: &GpuMatrix) -> Result<Array2<F>> {
    Ok(from_f32(x.download(ctx)?))
}

/// One GAT layer's forward state on the device: the layer's cache and its input.
#[derive(Debug)]
pub(crate) struct DeviceGat {
    cache: GpuGatCache,
    x: GpuMatrix,
}

/// One OAT map's forward state on the device: the cache and the two embeddings it aligned.
#[derive(Debug)]
pub(crate) struct DeviceOat {
    cache: gpu::GpuAdaptiveCache,
    m: GpuMatrix,
    z: GpuMatrix,
}

/// A model's inputs on the device and the context that holds them.
#[derive(Debug)]
pub(crate) struct DeviceModel {
    pub(super) ctx: Arc<GpuContext>,
    pub(super) adj: GpuGraph,
    /// The attended graph of each branch: the modalities in order, then the user branch.
    pub(super) branches: Vec<GpuAttentionGraph>,
    /// Each branch's input features (the device-resident step projects them on the device) and a column of
    /// ones as long (the projection's bias as a rank-one product), in the order of `branches`.
    pub(super) features: Vec<(GpuMatrix, GpuMatrix)>,
}

impl DeviceModel {
    /// Uploads the user-item graph `adj`, each branch's kNN graph as `layer` attends over it, and each
    /// branch's input features.
    ///
    /// # Errors
    /// [`Error::Param`] when `F` is not `f32`; the upload errors ([`Error::Gpu`] beyond a device limit).
    pub(crate) fn new<F: Real>(
        backend: &GpuBackend,
        adj: &CsrGraph<F>,
        layer: &GatLayer<F>,
        graphs: &[&CsrGraph<F>],
        features: &[&Array2<F>],
    ) -> Result<DeviceModel> {
        let ctx = backend.context().clone();
        let adj32: &CsrGraph<f32> = as_f32(adj, std::any::type_name::<F>())?;
        let layer32: &GatLayer<f32> = as_f32(layer, std::any::type_name::<F>())?;
        let branches = graphs
            .iter()
            .map(|g| GpuAttentionGraph::upload(&ctx, layer32, as_f32(*g, "graph")?))
            .collect::<Result<Vec<_>>>()?;
        let features = features
            .iter()
            .map(|x| {
                let ones = GpuMatrix::upload(&ctx, Array2::ones((x.nrows(), 1)).view())?;
                Ok((upload(&ctx, x.view())?, ones))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(DeviceModel {
            adj: GpuGraph::upload(&ctx, adj32)?,
            features,
            ctx,
            branches,
        })
    }

    /// LightGCN over the user-item graph (`backward`: its transpose, for the gradient).
    ///
    /// # Errors
    /// As [`gpu::lightgcn_forward_into`], [`Error::NonFinite`] for NaN/Inf in `x`.
    pub(crate) fn propagate<F: Real>(
        &self,
        x: ArrayView2<'_, F>,
        layers: usize,
        backward: bool,
    ) -> Result<Array2<F>> {
        let ctx = &*self.ctx;
        let x = upload(ctx, x)?;
        let mut out = GpuMatrix::zeros(ctx, x.rows(), x.cols())?;
        if backward {
            gpu::lightgcn_backward_into(ctx, &self.adj, &x, layers, &mut out)?;
        } else {
            gpu::lightgcn_forward_into(ctx, &self.adj, &x, layers, &mut out)?;
        }
        download(ctx, &out)
    }

    /// [`GatLayer::forward`] of branch `slot` on the device: the output and the state for the backward pass.
    ///
    /// # Errors
    /// As [`gpu::gat_forward`].
    pub(crate) fn gat_forward<F: Real>(
        &self,
        slot: usize,
        layer: &GatLayer<F>,
        p: &GatParams<F>,
        x: ArrayView2<'_, F>,
        mode: Mode,
    ) -> Result<(Array2<F>, DeviceGat)> {
        let ctx = &*self.ctx;
        let x = upload(ctx, x)?;
        let (out, cache) = gpu::gat_forward(
            ctx,
            as_f32(layer, "layer")?,
            as_f32(p, "parameters")?,
            &self.branches[slot],
            &x,
            mode,
        )?;
        Ok((download(ctx, &out)?, DeviceGat { cache, x }))
    }

    /// [`GatLayer::backward`] of branch `slot` on the device, from the state of its forward pass.
    ///
    /// # Errors
    /// As [`gpu::gat_backward`].
    pub(crate) fn gat_backward<F: Real>(
        &self,
        slot: usize,
        layer: &GatLayer<F>,
        p: &GatParams<F>,
        state: &DeviceGat,
        grad_out: ArrayView2<'_, F>,
    ) -> Result<GatGrads<F>> {
        let ctx = &*self.ctx;
        let g = upload(ctx, grad_out)?;
        let gg = gpu::gat_backward(
            ctx,
            as_f32(layer, "layer")?,
            as_f32(p, "parameters")?,
            &self.branches[slot],
            &state.cache,
            &state.x,
            &g,
        )?;
        let p = gat_param_grads::<F>(ctx, &gg)?;
        Ok(GatGrads {
            grad_x: download(ctx, &gg.grad_x)?,
            grad_w: p.w,
            grad_a_src: p.a_src,
            grad_a_dst: p.a_dst,
            grad_bias: p.bias,
            grad_w_res: p.w_res,
        })
    }

    /// [`AdaptiveTransport::forward`] on the device (the `I x d` products; the `d x d` solve on the host):
    /// the aligned embeddings, the plan, and the state for the backward pass.
    ///
    /// # Errors
    /// As [`gpu::adaptive_transport_forward`].
    pub(crate) fn oat_forward<F: Real>(
        &self,
        oat: &AdaptiveTransport<F>,
        m: ArrayView2<'_, F>,
        z: ArrayView2<'_, F>,
        delta: ArrayView2<'_, F>,
    ) -> Result<(Array2<F>, Array2<F>, DeviceOat)> {
        let ctx = &*self.ctx;
        let (m, z) = (upload(ctx, m)?, upload(ctx, z)?);
        let oat32 = as_f32(oat, "OAT")?;
        let (aligned, cache) =
            gpu::adaptive_transport_forward(ctx, oat32, &m, &z, to_f32(delta).view())?;
        let plan = from_f32(cache.plan(ctx)?);
        Ok((download(ctx, &aligned)?, plan, DeviceOat { cache, m, z }))
    }

    /// [`AdaptiveTransport::backward`] on the device for `grad_out = dL/d aligned` (no OT value term).
    ///
    /// # Errors
    /// As [`gpu::adaptive_transport_backward`].
    pub(crate) fn oat_backward<F: Real>(
        &self,
        oat: &AdaptiveTransport<F>,
        state: &DeviceOat,
        grad_out: ArrayView2<'_, F>,
    ) -> Result<AdaptiveGrads<F>> {
        let ctx = &*self.ctx;
        let g = upload(ctx, grad_out)?;
        let oat32 = as_f32(oat, "OAT")?;
        let gg = gpu::adaptive_transport_backward(
            ctx,
            oat32,
            &state.cache,
            &state.m,
            &state.z,
            Some(&g),
            0.0,
        )?;
        Ok(AdaptiveGrads {
            grad_m: download(ctx, &gg.grad_m)?,
            grad_z: download(ctx, &gg.grad_z)?,
            grad_delta: download(ctx, &gg.grad_delta)?,
        })
    }

    /// InfoNCE of one pair of views on the device ([`gpu::info_nce`]).
    ///
    /// # Errors
    /// As [`gpu::info_nce`].
    pub(crate) fn info_nce<F: Real>(
        &self,
        v1: ArrayView2<'_, F>,
        v2: ArrayView2<'_, F>,
        cfg: &InfoNceConfig<F>,
    ) -> Result<InfoNceOutput<F>> {
        let ctx = &*self.ctx;
        let cfg = as_f32(cfg, "config")?;
        let out = gpu::info_nce(ctx, to_f32(v1).view(), to_f32(v2).view(), None, None, cfg)?;
        Ok(InfoNceOutput {
            loss: F::c(f64::from(out.loss)),
            grad_v1: from_f32(out.grad_v1),
            grad_v2: from_f32(out.grad_v2),
            grad_negatives: None,
        })
    }
}

/// A GAT layer's parameter gradients read back from the device (shaped as its parameters).
pub(super) fn gat_param_grads<F: Real>(
    ctx: &GpuContext,
    gg: &gpu::GpuGatGrads,
) -> Result<GatParams<F>> {
    let get = |m: &GpuMatrix| download::<F>(ctx, m);
    let vector = |m: &GpuMatrix| -> Result<Array1<F>> {
        Ok(m.download_flat(ctx)?.mapv(|v| F::c(f64::from(v))))
    };
    Ok(GatParams {
        w: get(&gg.grad_w)?,
        a_src: get(&gg.grad_a_src)?,
        a_dst: gg.grad_a_dst.as_ref().map(get).transpose()?,
        bias: gg.grad_bias.as_ref().map(vector).transpose()?,
        w_res: gg.grad_w_res.as_ref().map(get).transpose()?,
    })
}
