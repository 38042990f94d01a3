//! The device-resident training step of a model on the GPU ([`crate::Backend::Gpu`]).
//!
//! For a whole epoch the parameters and their Adam moments stay on the device: the embedding table `E`,
//! every branch (projection, GAT layers), the OAT corrections `Delta`, the fusion logits and the fusion's
//! LayerNorm ([`DeviceState`]). So does every activation of a step and its gradient: LightGCN, each
//! branch's projection (the features are uploaded once) and graph-attention layers with their LeakyReLU and
//! dropout, the OAT maps (their `d x d` Sinkhorn solves and implicit plan gradients too, in the
//! configurations [`crate::gpu::adaptive_transport_forward_with`] solves on the device), the fusion (its
//! view weights from the logits by `shaders/fusion_weights.wgsl`), the batch gathers (SpMMs over selection
//! graphs), BPR with the regulariser, the CMCL InfoNCE terms, the scatter-adds (SpMMs over the selection
//! graphs' transposes), the backward passes and Adam.
//!
//! What crosses per step: the batch's row ids and the dropout masks (drawn from the same seeds as the CPU
//! path) go down, and nothing comes up: the host never waits for the device during an epoch. What a step
//! checks and reports (the BPR and regulariser terms, each InfoNCE term's loss terms and row norms, the
//! fused items' row norms, the OAT solves' status) stays on the device in a [`PendingLoss`] until
//! [`RecGoat::device_losses`] reads the whole epoch's at once. No `(U + I) x d` or `I x d` matrix crosses,
//! and no parameter or gradient. The OAT configurations whose
//! `d x d` part runs on the host (unrolled gradients, the dense linear solver) move each map's `d x d`
//! moments, `Delta` and `Delta`'s gradient across as well.
//!
//! Every configuration has it. The sample-level OT loss (optional, off in the presets) runs
//! [`crate::gpu::sinkhorn_divergence`], whose API takes host arrays: the batch's `B x d` rows go down and
//! back up, and their gradients come back.

use super::config::{Cmcl, Fusion};
use super::device::DeviceModel;
use super::params::{Branch, Params};
use super::recgoat::{Batch, LossParts, RecGoat, BRANCH_SLOPE};
use crate::attention::GatLayer;
use crate::attention::Mode;
use crate::contrastive::{cmcl_official_pairs, cmcl_paper_pairs, InfoNceConfig, PairTerm};
use crate::error::{Error, Result};
use crate::gpu::dense::{
    axpy, col_sums, fusion_logits_backward, fusion_weight_rows, hadamard, judge_norms,
    l2_normalize_unchecked, leaky_relu_masked, row_vector, weighted_sum_backward_scaled,
    weighted_sum_scaled,
};
use crate::gpu::{
    self, GpuAdamState, GpuContext, GpuGatCache, GpuGatParams, GpuGraph, GpuLayerNorm, GpuMatrix,
};
use crate::graph::CsrGraph;
use crate::nn::{dropout_mask, Adam, AdamState, Linear};
use ndarray::Array2;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const OP: &str = "RecGoat device step";

/// The parameters and their Adam states on the device, for the device-resident step: the embedding table
/// and [`DeviceParams`].
#[derive(Debug)]
pub(crate) struct DeviceState {
    embedding: GpuMatrix,
    adam: GpuAdamState,
    params: DeviceParams,
    /// The Adam states of [`DeviceParams::tensors_mut`], in that order: [`Params::tensors`]' after the
    /// table.
    small: Vec<GpuAdamState>,
}

/// The small parameters on the device: every branch (projection and GAT layers), the OAT corrections
/// `Delta` (`d x d`), the fusion logits (`1 x V`) and the fusion's LayerNorm.
#[derive(Debug)]
struct DeviceParams {
    branches: Vec<DeviceBranch>,
    user_branch: Option<DeviceBranch>,
    deltas: Vec<GpuMatrix>,
    fusion: Option<GpuMatrix>,
    norm: Option<GpuLayerNorm>,
}

impl DeviceParams {
    /// Every tensor, in [`Params::tensors`]' order.
    fn tensors_mut(&mut self) -> Vec<&mut GpuMatrix> {
        let mut v: Vec<&mut GpuMatrix> = Vec::new();
        for b in self.branches.iter_mut().chain(self.user_branch.as_mut()) {
            v.extend(b.tensors_mut());
        }
        v.extend(self.deltas.iter_mut());
        v.extend(self.fusion.as_mut());
        if let Some(n) = self.norm.as_mut() {
            v.extend(n.tensors_mut());
        }
        v
    }
}

/// A branch's parameters on the device.
#[derive(Debug)]
struct DeviceBranch {
    w: GpuMatrix,
    b: Option<GpuMatrix>,
    gat: Vec<GpuGatParams>,
}

impl DeviceBranch {
    fn upload(ctx: &GpuContext, layer: &GatLayer<f32>, b: &Branch<f32>) -> Result<DeviceBranch> {
        Ok(DeviceBranch {
            w: GpuMatrix::upload(ctx, b.proj.w.view())?,
            b: b.proj.b.as_ref().map(|v| row_vector(ctx, v)).transpose()?,
            gat: (b.gat.iter())
                .map(|g| GpuGatParams::upload(ctx, layer, g))
                .collect::<Result<_>>()?,
        })
    }

    fn download(&self, ctx: &GpuContext) -> Result<Branch<f32>> {
        Ok(Branch {
            proj: Linear {
                w: self.w.download(ctx)?,
                b: self.b.as_ref().map(|v| v.download_flat(ctx)).transpose()?,
            },
            gat: (self.gat.iter())
                .map(|g| g.download(ctx))
                .collect::<Result<_>>()?,
        })
    }

    /// The tensors in [`Params::tensors`]' order within a branch.
    fn tensors_mut(&mut self) -> Vec<&mut GpuMatrix> {
        let mut v = vec![&mut self.w];
        v.extend(self.b.as_mut());
        for g in &mut self.gat {
            v.extend(g.tensors_mut());
        }
        v
    }
}

/// A branch's parameter gradients on the device (GAT layers in layer order).
struct BranchGrads {
    w: GpuMatrix,
    b: Option<GpuMatrix>,
    /// Per layer, [`GpuGatParams::tensors_mut`]'s order.
    gat: Vec<Vec<GpuMatrix>>,
}

impl BranchGrads {
    /// The gradients in [`DeviceBranch::tensors_mut`]'s order.
    fn into_tensors(self) -> Vec<GpuMatrix> {
        let mut v = vec![self.w];
        v.extend(self.b);
        v.extend(self.gat.into_iter().flatten());
        v
    }
}

/// One GAT layer of a branch on the device: the pre-activation, the dropout mask, the layer's cache and its
/// input.
struct Layer {
    pre: GpuMatrix,
    mask: Option<GpuMatrix>,
    gat: GpuGatCache,
    x: GpuMatrix,
}

/// A branch's forward pass on the device.
struct BranchPass {
    layers: Vec<Layer>,
    out: GpuMatrix,
}

/// The fusion's forward state on the device.
struct FusionPass {
    /// Each view's weight as a `1 x d` row of column scales.
    scales: Vec<GpuMatrix>,
    /// LayerNorm cache and the L2 row norms, with `fusion_normalize`.
    norm: Option<(gpu::GpuLayerNormCache, GpuMatrix)>,
    mask: Option<GpuMatrix>,
    items: GpuMatrix,
}

/// What a device step leaves to check and report, on the device until [`RecGoat::device_losses`] reads
/// every step of an epoch at once.
pub(crate) struct PendingLoss {
    /// The fused items' L2 row norms (with `fusion_normalize`).
    fused_norms: Option<GpuMatrix>,
    /// Each CMCL pair: its term, weight and deferred InfoNCE (loss terms and norms).
    cl_terms: Vec<(PairTerm, f32, gpu::DeferredInfoNce)>,
    /// The OAT maps' forward states, for their solve status.
    oat: Vec<gpu::GpuAdaptiveCache>,
    /// BPR and regulariser term of each triple (`B x 2`).
    terms: GpuMatrix,
    /// The sample-level OT loss (computed on the host).
    ot: f64,
}

impl PendingLoss {
    fn statuses(&self) -> impl Iterator<Item = &GpuMatrix> {
        self.oat.iter().filter_map(|c| c.status())
    }
}

/// A selection graph: row `k` picks row `rows[k]` of an `n`-row table (a gather by SpMM, a scatter-add by
/// its transpose).
fn selection(ctx: &GpuContext, rows: impl Iterator<Item = usize>, n: usize) -> Result<GpuGraph> {
    // every id is below n, whose row count fit the u32 offsets of the uploaded graphs
    let idx: Vec<u32> = rows.map(|r| r as u32).collect();
    let k = idx.len();
    GpuGraph::upload(ctx, &CsrGraph::new(k, n, (0..=k).collect(), idx, None)?)
}

fn gather(ctx: &GpuContext, s: &GpuGraph, table: &GpuMatrix) -> Result<GpuMatrix> {
    let mut y = GpuMatrix::zeros(ctx, s.n_rows(), table.cols())?;
    gpu::spmm_into(ctx, s, table, &mut y)?;
    Ok(y)
}

/// `acc += S^T g`.
fn scatter_add(ctx: &GpuContext, s: &GpuGraph, g: &GpuMatrix, acc: &GpuMatrix) -> Result<()> {
    let scratch = GpuMatrix::zeros(ctx, acc.rows(), acc.cols())?;
    gpu::propagation::spmm_backward_add(ctx, s, g, &scratch, acc)
}

impl RecGoat<f32> {
    fn device(&self) -> &DeviceModel {
        self.device
            .as_deref()
            .expect("the device step runs on a model with a device")
    }

    /// The parameters and their Adam states uploaded for [`RecGoat::device_step`] (see [`DeviceState`]), when
    /// this model is on a GPU backend; `states` in [`Params::tensors`] order.
    pub(crate) fn device_state(
        &self,
        p: &Params<f32>,
        states: &[AdamState<f32>],
    ) -> Option<Result<DeviceState>> {
        let dm = self.device.as_deref()?;
        let ctx = &*dm.ctx;
        Some((|| {
            let branch = |b: &Branch<f32>| DeviceBranch::upload(ctx, &self.gat, b);
            let mut state = DeviceState {
                embedding: GpuMatrix::upload(ctx, p.embedding.view())?,
                adam: GpuAdamState::upload(ctx, &states[0])?,
                params: DeviceParams {
                    branches: p.branches.iter().map(branch).collect::<Result<_>>()?,
                    user_branch: p.user_branch.as_ref().map(branch).transpose()?,
                    deltas: (p.deltas.iter())
                        .map(|d| GpuMatrix::upload(ctx, d.view()))
                        .collect::<Result<_>>()?,
                    fusion: p.fusion.as_ref().map(|f| row_vector(ctx, f)).transpose()?,
                    norm: (p.norm.as_ref())
                        .map(|n| GpuLayerNorm::upload(ctx, n))
                        .transpose()?,
                },
                small: (states[1..].iter())
                    .map(|st| GpuAdamState::upload(ctx, st))
                    .collect::<Result<_>>()?,
            };
            // every tensor but the table (the first) is one of `DeviceParams`, in the host order
            let n = state.params.tensors_mut().len();
            if n != state.small.len() {
                return Err(Error::shape(
                    OP,
                    "device-held tensors",
                    state.small.len(),
                    n,
                ));
            }
            Ok(state)
        })())
    }

    /// The parameters and Adam states back on the host, into `p` and `states` ([`Params::tensors`] order).
    pub(crate) fn device_download(
        &self,
        state: &DeviceState,
        p: &mut Params<f32>,
        states: &mut [AdamState<f32>],
    ) -> Result<()> {
        let ctx = &*self.device().ctx;
        p.embedding = state.embedding.download(ctx)?;
        states[0] = state.adam.download(ctx)?;
        let dp = &state.params;
        for (dst, b) in p.branches.iter_mut().zip(&dp.branches) {
            *dst = b.download(ctx)?;
        }
        if let (Some(dst), Some(b)) = (p.user_branch.as_mut(), &dp.user_branch) {
            *dst = b.download(ctx)?;
        }
        for (dst, d) in p.deltas.iter_mut().zip(&dp.deltas) {
            *dst = d.download(ctx)?;
        }
        if let (Some(dst), Some(f)) = (p.fusion.as_mut(), &dp.fusion) {
            *dst = f.download_flat(ctx)?;
        }
        if let (Some(dst), Some(n)) = (p.norm.as_mut(), &dp.norm) {
            *dst = n.download(ctx)?;
        }
        for (dst, st) in states[1..].iter_mut().zip(&state.small) {
            *dst = st.download(ctx)?;
        }
        Ok(())
    }

    /// The dropout mask of a `shape` activation (the CPU path's, for the same mode and salt), on the device.
    fn device_mask(
        &self,
        shape: (usize, usize),
        mode: Mode,
        salt: u64,
    ) -> Result<Option<GpuMatrix>> {
        let p = self.cfg.dropout as f32;
        match Self::derived(mode, salt) {
            Mode::Train { seed } if p > 0.0 => {
                let m = dropout_mask(shape, p, &mut ChaCha8Rng::seed_from_u64(seed));
                Ok(Some(GpuMatrix::upload(&self.device().ctx, m.view())?))
            }
            _ => Ok(None),
        }
    }

    fn masked(&self, x: GpuMatrix, mask: Option<&GpuMatrix>) -> Result<GpuMatrix> {
        match mask {
            Some(m) => hadamard(&self.device().ctx, &x, m),
            None => Ok(x),
        }
    }

    /// Branch `m`: the projection of its features, then each GAT layer with LeakyReLU and dropout.
    fn branch_pass(
        &self,
        m: usize,
        bp: &DeviceBranch,
        mode: Mode,
        salt: u64,
    ) -> Result<BranchPass> {
        let dm = self.device();
        let ctx = &*dm.ctx;
        let (x, ones) = &dm.features[m];
        let mut h = GpuMatrix::zeros(ctx, x.rows(), bp.w.cols())?;
        gpu::gemm(ctx, 1.0, x, false, &bp.w, false, 0.0, &mut h)?;
        if let Some(b) = &bp.b {
            gpu::gemm(ctx, 1.0, ones, false, b, false, 1.0, &mut h)?;
        }
        let mut layers = Vec::with_capacity(bp.gat.len());
        for (l, gp) in bp.gat.iter().enumerate() {
            let salt = salt * 64 + l as u64;
            let graph = &dm.branches[m];
            let (pre, gat) = gpu::gat_forward_with(
                ctx,
                &self.gat,
                gp,
                graph,
                &h,
                Self::derived(mode, 2 * salt),
            )?;
            let mask = self.device_mask((pre.rows(), pre.cols()), mode, 2 * salt + 1)?;
            let act = leaky_relu_masked(ctx, &pre, BRANCH_SLOPE as f32, mask.as_ref(), None)?;
            let x = std::mem::replace(&mut h, act);
            layers.push(Layer { pre, mask, gat, x });
        }
        Ok(BranchPass { layers, out: h })
    }

    /// The backward pass of [`RecGoat::branch_pass`] for `g = dL/d out`: the branch's parameter gradients.
    fn branch_back(
        &self,
        m: usize,
        bp: &DeviceBranch,
        pass: &BranchPass,
        mut g: GpuMatrix,
    ) -> Result<BranchGrads> {
        let dm = self.device();
        let ctx = &*dm.ctx;
        let mut gat = Vec::with_capacity(bp.gat.len());
        for (gp, layer) in bp.gat.iter().zip(&pass.layers).rev() {
            let slope = BRANCH_SLOPE as f32;
            let gl = leaky_relu_masked(ctx, &layer.pre, slope, layer.mask.as_ref(), Some(&g))?;
            let graph = &dm.branches[m];
            let dg = gpu::gat_backward_with(ctx, &self.gat, gp, graph, &layer.gat, &layer.x, &gl)?;
            // the input gradient goes on to the layer below; the parameter gradients stay here
            let (gx, params) = dg.into_parts();
            g = gx;
            gat.push(params);
        }
        gat.reverse();
        let x = &dm.features[m].0;
        let mut w = GpuMatrix::zeros(ctx, x.cols(), g.cols())?;
        gpu::gemm(ctx, 1.0, x, true, &g, false, 0.0, &mut w)?;
        let b = bp.b.as_ref().map(|_| col_sums(ctx, &g)).transpose()?;
        Ok(BranchGrads { w, b, gat })
    }

    /// Weighted sum of the views, then (with `fusion_normalize`) LayerNorm, dropout and L2 normalisation.
    fn fusion_pass(
        &self,
        dp: &DeviceParams,
        views: &[&GpuMatrix],
        mode: Mode,
    ) -> Result<FusionPass> {
        let ctx = &*self.device().ctx;
        let logits = (dp.fusion.as_ref()).expect("fusion weights exist with modalities");
        let softmax = self.cfg.fusion == Fusion::Softmax;
        let scales = fusion_weight_rows(ctx, logits, views[0].cols(), softmax)?;
        let fused = weighted_sum_scaled(ctx, views, &scales)?;
        let mask = self.device_mask((fused.rows(), fused.cols()), mode, 2000)?;
        let (items, norm) = match &dp.norm {
            Some(ln) => {
                let (normed, cache) = gpu::layer_norm_forward_with(ctx, ln, &fused)?;
                let dropped = self.masked(normed, mask.as_ref())?;
                // the norms are checked at the end of the step, with the loss
                let (items, norms) = l2_normalize_unchecked(ctx, &dropped)?;
                (items, Some((cache, norms)))
            }
            None => (self.masked(fused, mask.as_ref())?, None),
        };
        Ok(FusionPass {
            scales,
            norm,
            mask,
            items,
        })
    }

    /// One device-resident training step on `batch`: the forward pass, the losses and the backward pass on
    /// the device, then Adam on every parameter in `state`. The tensors of the host parameters and their
    /// Adam states are stale until [`RecGoat::device_download`]. Nothing is read back: the loss terms and
    /// the deferred checks stay on the device in the [`PendingLoss`], for [`RecGoat::device_losses`] at the
    /// end of the epoch. After an error there, `state` is stale too (later updates ran on a non-finite
    /// loss), and the epoch is abandoned.
    ///
    /// # Errors
    /// As [`RecGoat::batch_loss`] for the batch, the ops' errors.
    pub(crate) fn device_step(
        &self,
        adam: &Adam<f32>,
        state: &mut DeviceState,
        batch: &Batch,
        mode: Mode,
    ) -> Result<PendingLoss> {
        let dm = self.device();
        let ctx = &*dm.ctx;
        let (nu, ni, d) = (self.n_users, self.n_items, self.cfg.embedding_dim);
        let n = nu + ni;
        let bsz = batch.check(OP, nu, ni)?;
        let layers = self.cfg.lightgcn_layers;

        // forward
        let mut z = GpuMatrix::zeros(ctx, n, d)?;
        gpu::lightgcn_forward_into(ctx, &dm.adj, &state.embedding, layers, &mut z)?;
        let users = z.rows_range(ctx, 0, nu)?;
        let zcf = z.rows_range(ctx, nu, ni)?;
        let n_modal = self.modalities.len();
        let user_pass = match &state.params.user_branch {
            Some(bp) => {
                let pass = self.branch_pass(n_modal, bp, mode, 1000)?;
                axpy(ctx, 1.0, &pass.out, &users)?;
                Some(pass)
            }
            None => None,
        };
        let branches = state
            .params
            .branches
            .iter()
            .enumerate()
            .map(|(m, bp)| self.branch_pass(m, bp, mode, 1 + m as u64))
            .collect::<Result<Vec<_>>>()?;
        let mut aligned = Vec::new();
        let mut oat = Vec::new();
        if let Some(op) = &self.oat {
            for (b, delta) in branches.iter().zip(&state.params.deltas) {
                let (a, c) = gpu::adaptive_transport_forward_with(ctx, op, &b.out, &zcf, delta)?;
                aligned.push(a);
                oat.push(c);
            }
        }
        let mut views = vec![&zcf];
        if aligned.is_empty() {
            views.extend(branches.iter().map(|b| &b.out));
        } else {
            views.extend(aligned.iter());
        }
        let fusion = if self.id_only() {
            None
        } else {
            Some(self.fusion_pass(&state.params, &views, mode)?)
        };
        let items = fusion.as_ref().map_or(&zcf, |f| &f.items);

        // BPR and the regulariser
        let s_u = selection(ctx, batch.users.iter().copied(), nu)?;
        let s_i = selection(ctx, batch.pos.iter().chain(&batch.neg).copied(), ni)?;
        let ego = (batch.users.iter().copied())
            .chain(batch.pos.iter().map(|&i| nu + i))
            .chain(batch.neg.iter().map(|&i| nu + i));
        let s_e = selection(ctx, ego, n)?;
        let zu = gather(ctx, &s_u, &users)?;
        let zi = gather(ctx, &s_i, items)?;
        let eb = gather(ctx, &s_e, &state.embedding)?;
        let zeros = |r: usize| GpuMatrix::zeros(ctx, r, d);
        let (gu, gi, geb) = (zeros(bsz)?, zeros(2 * bsz)?, zeros(3 * bsz)?);
        let terms = GpuMatrix::zeros(ctx, bsz, 2)?;
        let reg = self.cfg.reg_weight as f32;
        gpu::optim::bpr_rows(ctx, (&zu, &zi, &eb), reg, (&gu, &gi, &geb, &terms))?;
        let g_users = zeros(nu)?;
        scatter_add(ctx, &s_u, &gu, &g_users)?;
        let g_items = zeros(ni)?;
        scatter_add(ctx, &s_i, &gi, &g_items)?;
        let g_zcf = zeros(ni)?;
        let g_modal = (0..branches.len())
            .map(|_| zeros(ni))
            .collect::<Result<Vec<_>>>()?;
        let g_aligned = (0..aligned.len())
            .map(|_| zeros(ni))
            .collect::<Result<Vec<_>>>()?;

        let clw = self.cfg.cl_weight as f32;
        let otw = self.cfg.ot_sample_weight as f32;
        let ot_loss = otw > 0.0 && !aligned.is_empty();
        // the positives' selection, shared by the contrastive and the sample-level OT terms
        let s_pos = if clw > 0.0 || ot_loss {
            Some(selection(ctx, batch.pos.iter().copied(), ni)?)
        } else {
            None
        };

        // the contrastive term (its loss values are read at the end of the step)
        let mut cl_terms = Vec::new();
        if clw > 0.0 {
            // the rows of the term: every row (sharing the BPR gathers and selections), or a subset with
            // its own; each view below with where its gradient goes (0 users, 1 fused items,
            // 2 collaborative items, 3 + m modality m) and the selection that gathered it
            let subset = self.contrastive_subset(batch);
            let cl_batch = subset.as_ref().unwrap_or(batch);
            let bsz = cl_batch.users.len();
            let (own_sel, own_u);
            let (s_u, s_p, zu, ip) = match &subset {
                Some(rows) => {
                    own_sel = (
                        selection(ctx, rows.users.iter().copied(), nu)?,
                        selection(ctx, rows.pos.iter().copied(), ni)?,
                    );
                    own_u = gather(ctx, &own_sel.0, &users)?;
                    let ip = gather(ctx, &own_sel.1, items)?;
                    (&own_sel.0, &own_sel.1, &own_u, ip)
                }
                None => (
                    &s_u,
                    s_pos.as_ref().expect("built for the contrastive term"),
                    &zu,
                    zi.rows_range(ctx, 0, bsz)?,
                ),
            };
            let s_n = selection(ctx, cl_batch.neg.iter().copied(), ni)?;
            let mut owned: Vec<(GpuMatrix, usize, &GpuGraph)> = Vec::new();
            let pairs = match self.cfg.cmcl {
                Cmcl::Paper => {
                    for (m, b) in branches.iter().enumerate() {
                        owned.push((gather(ctx, s_p, &b.out)?, 3 + m, s_p));
                    }
                    cmcl_paper_pairs::<f32>(branches.len())
                }
                Cmcl::OfficialCode => {
                    for sel in [s_p, &s_n] {
                        owned.push((gather(ctx, sel, &zcf)?, 2, sel));
                        for (m, b) in branches.iter().enumerate() {
                            owned.push((gather(ctx, sel, &b.out)?, 3 + m, sel));
                        }
                    }
                    cmcl_official_pairs::<f32>(1 + branches.len())
                }
            };
            let mut cl_views: Vec<(&GpuMatrix, usize, &GpuGraph)> =
                vec![(zu, 0, s_u), (&ip, 1, s_p)];
            cl_views.extend(owned.iter().map(|(v, t, s)| (v, *t, *s)));
            let grads = (0..cl_views.len())
                .map(|_| zeros(bsz))
                .collect::<Result<Vec<_>>>()?;
            let cfg = InfoNceConfig {
                temperature: self.cfg.cl_temperature as f32,
                ..InfoNceConfig::default()
            };
            for pair in &pairs {
                let (v1, v2) = (cl_views[pair.first].0, cl_views[pair.second].0);
                let out = gpu::info_nce_deferred(ctx, v1, v2, None, None, &cfg)?;
                let scale = match pair.term {
                    PairTerm::InfoNce => pair.weight,
                    PairTerm::OneMinusInfoNce => -pair.weight,
                };
                axpy(ctx, scale * clw, &out.grad_v1, &grads[pair.first])?;
                axpy(ctx, scale * clw, &out.grad_v2, &grads[pair.second])?;
                cl_terms.push((pair.term, pair.weight, out));
            }
            for ((_, target, sel), g) in cl_views.iter().zip(&grads) {
                let acc = match target {
                    0 => &g_users,
                    1 => &g_items,
                    2 => &g_zcf,
                    m => &g_modal[m - 3],
                };
                scatter_add(ctx, sel, g, acc)?;
            }
        }

        // the sample-level OT loss: B x B divergences on the device, through the host-in / host-out API
        let mut ot = 0.0f64;
        if ot_loss {
            let s_p = s_pos.as_ref().expect("built for the OT term");
            let yc = gather(ctx, s_p, &zcf)?.download(ctx)?;
            let rows: Vec<Array2<f32>> = aligned
                .iter()
                .map(|a| gather(ctx, s_p, a)?.download(ctx))
                .collect::<Result<_>>()?;
            let (value, grads) = self.sample_ot_loss(&rows, yc.view())?;
            ot = f64::from(value);
            for ((gx, gy), acc) in grads.iter().zip(&g_aligned) {
                scatter_add(ctx, s_p, &GpuMatrix::upload(ctx, gx.view())?, acc)?;
                scatter_add(ctx, s_p, &GpuMatrix::upload(ctx, gy.view())?, &g_zcf)?;
            }
        }

        // backward: every gradient stays on the device (`small_grads`, in `DeviceState::small` order)
        let mut small_grads: Vec<GpuMatrix> = Vec::with_capacity(state.small.len());
        let mut deltas_grad: Vec<GpuMatrix> = Vec::with_capacity(state.params.deltas.len());
        let mut fusion_grad: Option<GpuMatrix> = None;
        let mut norm_grads: Option<[GpuMatrix; 2]> = None;
        match &fusion {
            Some(f) => {
                let mut g = g_items;
                if let (Some((cache, norms)), Some(ln)) = (&f.norm, state.params.norm.as_ref()) {
                    g = gpu::l2_normalize_backward(ctx, &f.items, norms, &g)?;
                    g = self.masked(g, f.mask.as_ref())?;
                    let (gx, dgamma, dbeta) = gpu::layer_norm_backward_with(ctx, ln, cache, &g)?;
                    norm_grads = Some([dgamma, dbeta]);
                    g = gx;
                } else {
                    g = self.masked(g, f.mask.as_ref())?;
                }
                let (g_views, sums) = weighted_sum_backward_scaled(ctx, &views, &f.scales, &g)?;
                let logits = (state.params.fusion.as_ref()).expect("fusion weights exist");
                let softmax = self.cfg.fusion == Fusion::Softmax;
                fusion_grad = Some(fusion_logits_backward(ctx, logits, &sums, softmax)?);
                axpy(ctx, 1.0, &g_views[0], &g_zcf)?;
                for (m, gv) in g_views[1..].iter().enumerate() {
                    let acc = if self.oat.is_some() {
                        &g_aligned[m]
                    } else {
                        &g_modal[m]
                    };
                    axpy(ctx, 1.0, gv, acc)?;
                }
            }
            None => axpy(ctx, 1.0, &g_items, &g_zcf)?,
        }
        if let Some(op) = &self.oat {
            for (m, cache) in oat.iter().enumerate() {
                let (mo, ga) = (&branches[m].out, &g_aligned[m]);
                let ag =
                    gpu::adaptive_transport_backward_with(ctx, op, cache, mo, &zcf, Some(ga), 0.0)?;
                axpy(ctx, 1.0, &ag.grad_m, &g_modal[m])?;
                axpy(ctx, 1.0, &ag.grad_z, &g_zcf)?;
                deltas_grad.push(ag.grad_delta);
            }
        }
        for (m, (g, pass)) in g_modal.into_iter().zip(&branches).enumerate() {
            let bg = self.branch_back(m, &state.params.branches[m], pass, g)?;
            small_grads.extend(bg.into_tensors());
        }
        if let (Some(bp), Some(pass)) = (&state.params.user_branch, &user_pass) {
            let g = g_users.rows_range(ctx, 0, nu)?;
            let bg = self.branch_back(n_modal, bp, pass, g)?;
            small_grads.extend(bg.into_tensors());
        }
        small_grads.extend(deltas_grad);
        small_grads.extend(fusion_grad);
        small_grads.extend(norm_grads.into_iter().flatten());
        let gz = zeros(n)?;
        gz.set_rows(ctx, 0, &g_users)?;
        gz.set_rows(ctx, nu, &g_zcf)?;
        let mut ge = zeros(n)?;
        gpu::lightgcn_backward_into(ctx, &dm.adj, &gz, layers, &mut ge)?;
        scatter_add(ctx, &s_e, &geb, &ge)?;

        // Adam, on the device
        gpu::adam_step(ctx, adam, &mut state.embedding, &ge, &mut state.adam)?;
        let params = state.params.tensors_mut();
        if params.len() != state.small.len() || small_grads.len() != state.small.len() {
            return Err(Error::shape(
                OP,
                "device-held tensors, gradients",
                (state.small.len(), state.small.len()),
                (params.len(), small_grads.len()),
            ));
        }
        for ((t, g), st) in params.into_iter().zip(&small_grads).zip(&mut state.small) {
            gpu::adam_step(ctx, adam, t, g, st)?;
        }
        // what the step checks and reports stays on the device until the epoch's end
        Ok(PendingLoss {
            fused_norms: fusion.and_then(|f| f.norm).map(|(_, n)| n),
            cl_terms,
            oat,
            terms,
            ot,
        })
    }

    /// The losses of an epoch's device steps, read back together (one copy and one wait), and the checks
    /// each step deferred, in step order: the fused items' row norms, each InfoNCE term's norms (the zero-row
    /// error of the CPU path), the OAT solves' status, then a non-finite BPR, regulariser, contrastive or
    /// sample-level OT term.
    ///
    /// # Errors
    /// The first failed check, [`Error::Gpu`].
    pub(crate) fn device_losses(&self, steps: &[PendingLoss]) -> Result<Vec<LossParts<f32>>> {
        let ctx = &*self.device().ctx;
        let mut reads: Vec<(&wgpu::Buffer, usize)> = Vec::new();
        for st in steps {
            reads.extend(st.fused_norms.as_ref().map(|n| (&n.buf, n.rows())));
            for (_, _, out) in &st.cl_terms {
                reads.extend(out.reads());
            }
            reads.extend(st.statuses().map(|m| (&m.buf, m.cols())));
            reads.push((&st.terms.buf, 2 * st.terms.rows()));
        }
        let mut values = ctx.read_many(OP, &reads)?.into_iter();
        let mut next = |k: usize| values.by_ref().take(k).collect::<Vec<_>>();
        let clw = self.cfg.cl_weight as f32;
        let otw = self.cfg.ot_sample_weight as f32;
        let mut out = Vec::with_capacity(steps.len());
        for st in steps {
            if st.fused_norms.is_some() {
                judge_norms(OP, "the fused items", &next(1)[0])?;
            }
            let mut cl = 0.0f64;
            for (term, weight, nce) in &st.cl_terms {
                let norms = next(nce.norms.len());
                let loss = nce.judge(&norms, &next(nce.losses.len()))?;
                cl += f64::from(match term {
                    PairTerm::InfoNce => weight * loss,
                    PairTerm::OneMinusInfoNce => weight * (1.0 - loss),
                });
            }
            if let Some(op) = &self.oat {
                for status in next(st.statuses().count()) {
                    gpu::judge_adaptive_status(&status, op)?;
                }
            }
            let terms =
                Array2::from_shape_vec((st.terms.rows(), 2), next(1).remove(0)).map_err(|e| {
                    Error::Gpu {
                        op: OP,
                        reason: e.to_string(),
                    }
                })?;
            if let Some(((r, c), v)) = terms.indexed_iter().find(|(_, v)| !v.is_finite()) {
                return Err(Error::NonFinite {
                    op: OP,
                    what: ["BPR term of a triple", "regulariser term of a triple"][c].into(),
                    index: r,
                    value: v.to_string(),
                });
            }
            let ot = st.ot;
            if !(cl.is_finite() && ot.is_finite()) {
                return Err(Error::NonFinite {
                    op: OP,
                    what: "contrastive or sample-level OT loss".into(),
                    index: usize::from(cl.is_finite()),
                    value: if cl.is_finite() { ot } else { cl }.to_string(),
                });
            }
            let inv_b = 1.0 / st.terms.rows() as f64;
            let bpr = terms.column(0).iter().map(|&v| f64::from(v)).sum::<f64>() * inv_b;
            let sq = terms.column(1).iter().map(|&v| f64::from(v)).sum::<f64>() * inv_b;
            let reg_value = f64::from(self.cfg.reg_weight as f32) * sq;
            let (cl, ot) = (cl as f32, ot as f32);
            let (bpr, reg_value) = (bpr as f32, reg_value as f32);
            out.push(LossParts {
                total: bpr + reg_value + clw * cl + otw * ot,
                bpr,
                reg: reg_value,
                cl,
                ot,
            });
        }
        Ok(out)
    }
}
