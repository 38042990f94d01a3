//! The model's GPU path ([`crate::Backend::Gpu`]): LightGCN propagation, every branch's graph attention, the
//! OAT maps and the contrastive loss, forward and backward, run on the device through [`crate::gpu`]. The user-item
//! graph and the attended kNN graphs are uploaded once, when the model is built; each call uploads its
//! dense input and reads its output back, and a GAT layer's forward state stays on the device for its
//! backward pass. The rest of a step (the projections, the OAT maps' `d x d` solves, fusion, BPR, the
//! sample-level OT loss, the optimizer) runs on the host.
//!
//! The GPU kernels are f32, so this path serves `RecGoat<f32>` only; building a model of another float
//! type on a GPU backend is an [`Error::Param`].

use crate::attention::{GatGrads, GatLayer, GatParams, Mode};
use crate::backend::GpuBackend;
use crate::contrastive::{InfoNceConfig, InfoNceOutput};
use crate::error::{Error, Result};
use crate::gpu::{self, GpuAttentionGraph, GpuContext, GpuGatCache, GpuGraph, GpuMatrix};
use crate::graph::CsrGraph;
use crate::simd::Real;
use crate::transport::{AdaptiveGrads, AdaptiveTransport};
use ndarray::{Array1, Array2, ArrayView2, Axis};
use std::any::TypeId;
use std::sync::Arc;

/// `a` as a `&B` when `A` and `B` are the same type.
fn same<A: 'static, B: 'static>(a: &A) -> Option<&B> {
    (TypeId::of::<A>() == TypeId::of::<B>())
        // SAFETY: A and B are the same type.
        .then(|| unsafe { &*(a as *const A).cast::<B>() })
}

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

fn to_f32<F: Real>(x: ArrayView2<'_, F>) -> Array2<f32> {
    x.mapv(|v| v.to_f32().expect("f32 holds every Real"))
}

fn from_f32<F: Real>(x: Array2<f32>) -> Array2<F> {
    x.mapv(|v| F::c(f64::from(v)))
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
    ctx: Arc<GpuContext>,
    adj: GpuGraph,
    /// The attended graph of each branch: the modalities in order, then the user branch.
    branches: Vec<GpuAttentionGraph>,
}

impl DeviceModel {
    /// Uploads the user-item graph `adj` and each branch's kNN graph as `layer` attends over it.
    ///
    /// # Errors
    /// [`Error::Param`] when `F` is not `f32`; the upload errors ([`Error::Gpu`] beyond a device limit).
    pub(crate) fn new<F: Real>(
        backend: &GpuBackend,
        adj: &CsrGraph<F>,
        layer: &GatLayer<F>,
        graphs: &[&CsrGraph<F>],
    ) -> Result<DeviceModel> {
        let ctx = backend.context().clone();
        let adj32: &CsrGraph<f32> = as_f32(adj, std::any::type_name::<F>())?;
        let layer32: &GatLayer<f32> = as_f32(layer, std::any::type_name::<F>())?;
        let branches = graphs
            .iter()
            .map(|g| GpuAttentionGraph::upload(&ctx, layer32, as_f32(*g, "graph")?))
            .collect::<Result<Vec<_>>>()?;
        Ok(DeviceModel {
            adj: GpuGraph::upload(&ctx, adj32)?,
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
        let get = |m: &GpuMatrix| download::<F>(ctx, m);
        let vector =
            |m: &GpuMatrix| -> Result<Array1<F>> { Ok(get(m)?.index_axis_move(Axis(0), 0)) };
        Ok(GatGrads {
            grad_x: get(&gg.grad_x)?,
            grad_w: get(&gg.grad_w)?,
            grad_a_src: get(&gg.grad_a_src)?,
            grad_a_dst: gg.grad_a_dst.as_ref().map(get).transpose()?,
            grad_bias: gg.grad_bias.as_ref().map(vector).transpose()?,
            grad_w_res: gg.grad_w_res.as_ref().map(get).transpose()?,
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
        let plan = from_f32(cache.plan().clone());
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

/// The device-resident training step of an ID-only model without a contrastive term (the `lightgcn()`
/// preset): the embedding table, Adam's moments and every intermediate stay on the device. Per step the
/// host uploads the batch's row ids (as a selection graph `S`, `3B x N`) and reads back the loss terms
/// (`B x 2` values), which it checks for NaN/Inf before the Adam step; nothing else crosses.
///
/// Per step: `Z = LightGCN(E)`; `Zb = S Z`, `Eb = S E` (gathers); BPR and the regulariser per triple
/// (`bpr_rows.wgsl`); `dZ = S^T dZb` (scatter-add); `dE = LightGCN^T(dZ) + S^T dEb`; Adam on `E`.
#[derive(Debug)]
pub(crate) struct DeviceStep {
    model: Arc<DeviceModel>,
    embedding: GpuMatrix,
    adam: gpu::GpuAdamState,
    /// Scratch, `N x d` each: the propagated table, its gradient, the embedding gradient, a product.
    z: GpuMatrix,
    gz: GpuMatrix,
    ge: GpuMatrix,
    scratch: GpuMatrix,
}

impl DeviceStep {
    /// The step with `embedding` and its Adam state uploaded.
    ///
    /// # Errors
    /// As [`GpuMatrix::upload`].
    pub(crate) fn new(
        model: Arc<DeviceModel>,
        embedding: ArrayView2<'_, f32>,
        state: &crate::nn::AdamState<f32>,
    ) -> Result<DeviceStep> {
        let ctx = &*model.ctx;
        let (n, d) = embedding.dim();
        let zeros = || GpuMatrix::zeros(ctx, n, d);
        Ok(DeviceStep {
            embedding: GpuMatrix::upload(ctx, embedding)?,
            adam: gpu::GpuAdamState::upload(ctx, state)?,
            z: zeros()?,
            gz: zeros()?,
            ge: zeros()?,
            scratch: zeros()?,
            model,
        })
    }

    /// One training step on `batch`: the BPR loss and the regulariser (already
    /// weighted by `reg`) of the parameters before the step.
    ///
    /// # Errors
    /// As [`crate::model::RecGoat::batch_loss`] for the batch; [`Error::NonFinite`] when a loss term is
    /// NaN/Inf (the parameters are then left as they were); the device errors.
    pub(crate) fn step(
        &mut self,
        batch: &crate::model::Batch,
        n_users: usize,
        (layers, reg): (usize, f32),
        adam: &crate::nn::Adam<f32>,
    ) -> Result<(f32, f32)> {
        const OP: &str = "RecGoat device step";
        let ctx = &*self.model.ctx;
        let (n, d) = (self.embedding.rows(), self.embedding.cols());
        let b = batch.check(OP, n_users, n - n_users)?;
        // ids are below n, which fits u32 as the uploaded graph did
        let rows: Vec<u32> = (batch.users.iter().copied())
            .chain(batch.pos.iter().map(|&i| n_users + i))
            .chain(batch.neg.iter().map(|&i| n_users + i))
            .map(|r| r as u32)
            .collect();
        let select = CsrGraph::<f32>::new(3 * b, n, (0..=3 * b).collect(), rows, None)?;
        let select = GpuGraph::upload(ctx, &select)?;
        gpu::lightgcn_forward_into(ctx, &self.model.adj, &self.embedding, layers, &mut self.z)?;
        let mut zb = GpuMatrix::zeros(ctx, 3 * b, d)?;
        let mut eb = GpuMatrix::zeros(ctx, 3 * b, d)?;
        gpu::spmm_into(ctx, &select, &self.z, &mut zb)?;
        gpu::spmm_into(ctx, &select, &self.embedding, &mut eb)?;
        let (gzb, geb) = (
            GpuMatrix::zeros(ctx, 3 * b, d)?,
            GpuMatrix::zeros(ctx, 3 * b, d)?,
        );
        let terms = GpuMatrix::zeros(ctx, b, 2)?;
        gpu::optim::bpr_rows(ctx, (&zb, &eb), reg, (&gzb, &geb, &terms))?;
        gpu::spmm_backward_into(ctx, &select, &gzb, &mut self.gz)?;
        gpu::lightgcn_backward_into(ctx, &self.model.adj, &self.gz, layers, &mut self.ge)?;
        gpu::propagation::spmm_backward_add(ctx, &select, &geb, &self.scratch, &self.ge)?;
        let terms = terms.download(ctx)?;
        if let Some(((row, col), v)) = terms.indexed_iter().find(|(_, v)| !v.is_finite()) {
            return Err(Error::NonFinite {
                op: OP,
                what: ["BPR term of a triple", "regulariser term of a triple"][col].into(),
                index: row,
                value: v.to_string(),
            });
        }
        let inv_b = 1.0 / b as f64;
        let bpr = terms.column(0).iter().map(|&v| f64::from(v)).sum::<f64>() * inv_b;
        let sq = terms.column(1).iter().map(|&v| f64::from(v)).sum::<f64>() * inv_b;
        gpu::adam_step(ctx, adam, &mut self.embedding, &self.ge, &mut self.adam)?;
        Ok((bpr as f32, (f64::from(reg) * sq) as f32))
    }

    /// The embedding table and its Adam state, back on the host.
    ///
    /// # Errors
    /// [`Error::Gpu`] for a failed read.
    pub(crate) fn download(&self) -> Result<(Array2<f32>, crate::nn::AdamState<f32>)> {
        let ctx = &*self.model.ctx;
        Ok((self.embedding.download(ctx)?, self.adam.download(ctx)?))
    }
}
