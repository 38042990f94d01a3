//! The device-resident training step of a model on the GPU ([`crate::Backend::Gpu`]).
//!
//! For a whole epoch the embedding table `E` and its Adam moments stay on the device, and so does every
//! activation of a step and its gradient: LightGCN, each branch's projection (the features are uploaded
//! once) and graph-attention layers with their LeakyReLU and dropout, the OAT maps, the fusion, the batch
//! gathers (SpMMs over selection graphs), BPR with the regulariser, the CMCL InfoNCE terms, the scatter-adds
//! (SpMMs over the selection graphs' transposes) and the backward passes. Per step the host sends the batch's
//! row ids, the dropout masks (drawn from the same seeds as the CPU path) and the small parameters (the
//! projections, attention, `Delta`, fusion and LayerNorm tensors, which it updates with Adam), and it
//! receives their gradients, the loss terms, each OAT map's `d x d` moments (its Sinkhorn solve and plan
//! gradient run on the host, as in [`crate::gpu::adaptive_transport_forward`]) and the fused items' row
//! norms (checked as on the CPU). No `(U + I) x d` or `I x d` matrix crosses.
//!
//! Every configuration has it. The sample-level OT loss (optional, off in the presets) runs
//! [`crate::gpu::sinkhorn_divergence`], whose API takes host arrays: the batch's `B x d` rows go down and
//! back up, and their gradients come back.

use super::config::{Cmcl, Fusion};
use super::device::{gat_param_grads, DeviceModel};
use super::params::{add_gat, Branch, Params};
use super::recgoat::{Batch, LossParts, RecGoat, BRANCH_SLOPE};
use crate::attention::Mode;
use crate::contrastive::{cmcl_official_pairs, cmcl_paper_pairs, InfoNceConfig, PairTerm};
use crate::error::{Error, Result};
use crate::gpu::dense::{
    axpy, col_sums, hadamard, leaky_relu_masked, row_vector, weighted_sum, weighted_sum_backward,
};
use crate::gpu::{self, GpuAdamState, GpuContext, GpuGatCache, GpuGraph, GpuMatrix};
use crate::graph::CsrGraph;
use crate::nn::{dropout_mask, Adam, AdamState};
use ndarray::{Array1, Array2, ArrayView2};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const OP: &str = "RecGoat device step";

/// The embedding table and its Adam state on the device, for the device-resident step.
#[derive(Debug)]
pub(crate) struct DeviceState {
    embedding: GpuMatrix,
    adam: GpuAdamState,
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
    weights: Array1<f32>,
    /// LayerNorm cache and the L2 row norms, with `fusion_normalize`.
    norm: Option<(gpu::GpuLayerNormCache, GpuMatrix)>,
    mask: Option<GpuMatrix>,
    items: GpuMatrix,
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

    /// The embedding table and its Adam state uploaded for [`RecGoat::device_step`], when this model is on a
    /// GPU backend.
    pub(crate) fn device_state(
        &self,
        embedding: ArrayView2<'_, f32>,
        state: &AdamState<f32>,
    ) -> Option<Result<DeviceState>> {
        let dm = self.device.as_deref()?;
        let ctx = &*dm.ctx;
        Some((|| {
            Ok(DeviceState {
                embedding: GpuMatrix::upload(ctx, embedding)?,
                adam: GpuAdamState::upload(ctx, state)?,
            })
        })())
    }

    /// The embedding table and its Adam state back on the host.
    pub(crate) fn device_download(
        &self,
        state: &DeviceState,
    ) -> Result<(Array2<f32>, AdamState<f32>)> {
        let ctx = &*self.device().ctx;
        Ok((state.embedding.download(ctx)?, state.adam.download(ctx)?))
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
    fn branch_pass(&self, m: usize, bp: &Branch<f32>, mode: Mode, salt: u64) -> Result<BranchPass> {
        let dm = self.device();
        let ctx = &*dm.ctx;
        let (x, ones) = &dm.features[m];
        let mut h = GpuMatrix::zeros(ctx, x.rows(), bp.proj.w.ncols())?;
        let w = GpuMatrix::upload(ctx, bp.proj.w.view())?;
        gpu::gemm(ctx, 1.0, x, false, &w, false, 0.0, &mut h)?;
        if let Some(b) = &bp.proj.b {
            gpu::gemm(
                ctx,
                1.0,
                ones,
                false,
                &row_vector(ctx, b)?,
                false,
                1.0,
                &mut h,
            )?;
        }
        let mut layers = Vec::with_capacity(bp.gat.len());
        for (l, gp) in bp.gat.iter().enumerate() {
            let salt = salt * 64 + l as u64;
            let graph = &dm.branches[m];
            let (pre, gat) =
                gpu::gat_forward(ctx, &self.gat, gp, graph, &h, Self::derived(mode, 2 * salt))?;
            let mask = self.device_mask((pre.rows(), pre.cols()), mode, 2 * salt + 1)?;
            let act = leaky_relu_masked(ctx, &pre, BRANCH_SLOPE as f32, mask.as_ref(), None)?;
            let x = std::mem::replace(&mut h, act);
            layers.push(Layer { pre, mask, gat, x });
        }
        Ok(BranchPass { layers, out: h })
    }

    /// The backward pass of [`RecGoat::branch_pass`] for `g = dL/d out`, into `grads`.
    fn branch_back(
        &self,
        m: usize,
        bp: &Branch<f32>,
        pass: &BranchPass,
        mut g: GpuMatrix,
        grads: &mut Branch<f32>,
    ) -> Result<()> {
        let dm = self.device();
        let ctx = &*dm.ctx;
        for ((gp, layer), gg) in bp
            .gat
            .iter()
            .zip(&pass.layers)
            .zip(grads.gat.iter_mut())
            .rev()
        {
            let slope = BRANCH_SLOPE as f32;
            let gl = leaky_relu_masked(ctx, &layer.pre, slope, layer.mask.as_ref(), Some(&g))?;
            let graph = &dm.branches[m];
            let dg = gpu::gat_backward(ctx, &self.gat, gp, graph, &layer.gat, &layer.x, &gl)?;
            // the parameter gradients come back; the input gradient stays on the device
            add_gat(gg, gat_param_grads(ctx, &dg)?);
            g = dg.grad_x;
        }
        let x = &dm.features[m].0;
        let mut gw = GpuMatrix::zeros(ctx, x.cols(), g.cols())?;
        gpu::gemm(ctx, 1.0, x, true, &g, false, 0.0, &mut gw)?;
        grads.proj.w += &gw.download(ctx)?;
        if let Some(b) = grads.proj.b.as_mut() {
            *b += &col_sums(ctx, &g)?;
        }
        Ok(())
    }

    /// Weighted sum of the views, then (with `fusion_normalize`) LayerNorm, dropout and L2 normalisation.
    fn fusion_pass(&self, p: &Params<f32>, views: &[&GpuMatrix], mode: Mode) -> Result<FusionPass> {
        let ctx = &*self.device().ctx;
        let logits = p
            .fusion
            .as_ref()
            .expect("fusion weights exist with modalities");
        let (fused, weights) = match self.cfg.fusion {
            Fusion::Softmax => gpu::softmax_fusion(ctx, views, logits.view())?,
            Fusion::Free => (weighted_sum(ctx, views, logits)?, logits.clone()),
        };
        let mask = self.device_mask((fused.rows(), fused.cols()), mode, 2000)?;
        let (items, norm) = match &p.norm {
            Some(ln) => {
                let (normed, cache) = gpu::layer_norm_forward(ctx, ln, &fused)?;
                let dropped = self.masked(normed, mask.as_ref())?;
                let (items, norms) = gpu::l2_normalize(ctx, &dropped)?;
                (items, Some((cache, norms)))
            }
            None => (self.masked(fused, mask.as_ref())?, None),
        };
        Ok(FusionPass {
            weights,
            norm,
            mask,
            items,
        })
    }

    /// One device-resident training step on `batch`: the forward pass, the losses and the backward pass on
    /// the device, then Adam on every parameter (`E` on the device, the rest on the host). `p` holds the
    /// current small parameters (its embedding table is the host copy, stale until
    /// [`RecGoat::device_download`]); `states` are their Adam states in [`Params::tensors`] order (the first,
    /// the table's, is unused: the table's lives in `state`).
    ///
    /// # Errors
    /// As [`RecGoat::batch_loss`] for the batch, [`Error::NonFinite`] for a non-finite loss (before any
    /// update), the ops' errors.
    pub(crate) fn device_step(
        &self,
        p: &mut Params<f32>,
        states: &mut [AdamState<f32>],
        adam: &Adam<f32>,
        state: &mut DeviceState,
        batch: &Batch,
        mode: Mode,
    ) -> Result<LossParts<f32>> {
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
        let user_pass = match &p.user_branch {
            Some(bp) => {
                let pass = self.branch_pass(n_modal, bp, mode, 1000)?;
                axpy(ctx, 1.0, &pass.out, &users)?;
                Some(pass)
            }
            None => None,
        };
        let branches = p
            .branches
            .iter()
            .enumerate()
            .map(|(m, bp)| self.branch_pass(m, bp, mode, 1 + m as u64))
            .collect::<Result<Vec<_>>>()?;
        let mut aligned = Vec::new();
        let mut oat = Vec::new();
        if let Some(op) = &self.oat {
            for (b, delta) in branches.iter().zip(&p.deltas) {
                let (a, c) = gpu::adaptive_transport_forward(ctx, op, &b.out, &zcf, delta.view())?;
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
            Some(self.fusion_pass(p, &views, mode)?)
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

        // the contrastive term
        let mut cl = 0.0f64;
        if clw > 0.0 {
            let s_p = s_pos.as_ref().expect("built for the contrastive term");
            let s_n = selection(ctx, batch.neg.iter().copied(), ni)?;
            // each view with where its gradient goes: 0 users, 1 fused items, 2 collaborative items,
            // 3 + m modality m; and the selection that gathered it
            let ip = zi.rows_range(ctx, 0, bsz)?;
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
                vec![(&zu, 0, &s_u), (&ip, 1, s_p)];
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
                let out = gpu::info_nce_on_device(ctx, v1, v2, None, None, &cfg)?;
                let (value, scale) = match pair.term {
                    PairTerm::InfoNce => (pair.weight * out.loss, pair.weight),
                    PairTerm::OneMinusInfoNce => (pair.weight * (1.0 - out.loss), -pair.weight),
                };
                cl += f64::from(value);
                axpy(ctx, scale * clw, &out.grad_v1, &grads[pair.first])?;
                axpy(ctx, scale * clw, &out.grad_v2, &grads[pair.second])?;
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

        // the loss, checked before any update
        let terms = terms.download(ctx)?;
        if let Some(((r, c), v)) = terms.indexed_iter().find(|(_, v)| !v.is_finite()) {
            return Err(Error::NonFinite {
                op: OP,
                what: ["BPR term of a triple", "regulariser term of a triple"][c].into(),
                index: r,
                value: v.to_string(),
            });
        }
        if !(cl.is_finite() && ot.is_finite()) {
            return Err(Error::NonFinite {
                op: OP,
                what: "contrastive or sample-level OT loss".into(),
                index: usize::from(cl.is_finite()),
                value: if cl.is_finite() { ot } else { cl }.to_string(),
            });
        }
        let inv_b = 1.0 / bsz as f64;
        let bpr = terms.column(0).iter().map(|&v| f64::from(v)).sum::<f64>() * inv_b;
        let sq = terms.column(1).iter().map(|&v| f64::from(v)).sum::<f64>() * inv_b;
        let reg_value = f64::from(reg) * sq;

        // backward
        let mut grads = Params {
            embedding: Array2::zeros((0, 0)),
            branches: p.branches.clone(),
            user_branch: p.user_branch.clone(),
            deltas: p.deltas.clone(),
            fusion: p.fusion.clone(),
            norm: p.norm.clone(),
        };
        for (_, mut t) in grads.tensors_mut() {
            t.fill(0.0);
        }
        match &fusion {
            Some(f) => {
                let mut g = g_items;
                if let (Some((cache, norms)), Some(ln), Some(gn)) =
                    (&f.norm, p.norm.as_ref(), grads.norm.as_mut())
                {
                    g = gpu::l2_normalize_backward(ctx, &f.items, norms, &g)?;
                    g = self.masked(g, f.mask.as_ref())?;
                    let (gx, dgamma, dbeta) = gpu::layer_norm_backward(ctx, ln, cache, &g)?;
                    gn.gamma += &dgamma.download_flat(ctx)?;
                    gn.beta += &dbeta.download_flat(ctx)?;
                    g = gx;
                } else {
                    g = self.masked(g, f.mask.as_ref())?;
                }
                let (g_views, g_w) = match self.cfg.fusion {
                    Fusion::Softmax => {
                        gpu::softmax_fusion_backward(ctx, &views, f.weights.view(), &g)?
                    }
                    Fusion::Free => weighted_sum_backward(ctx, &views, f.weights.view(), &g)?,
                };
                *grads.fusion.as_mut().expect("fusion weights exist") += &g_w;
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
                let ag = gpu::adaptive_transport_backward(ctx, op, cache, mo, &zcf, Some(ga), 0.0)?;
                axpy(ctx, 1.0, &ag.grad_m, &g_modal[m])?;
                axpy(ctx, 1.0, &ag.grad_z, &g_zcf)?;
                grads.deltas[m] += &ag.grad_delta.download(ctx)?;
            }
        }
        for (m, (g, pass)) in g_modal.into_iter().zip(&branches).enumerate() {
            self.branch_back(m, &p.branches[m], pass, g, &mut grads.branches[m])?;
        }
        if let (Some(bp), Some(pass), Some(gb)) =
            (&p.user_branch, &user_pass, grads.user_branch.as_mut())
        {
            let g = g_users.rows_range(ctx, 0, nu)?;
            self.branch_back(n_modal, bp, pass, g, gb)?;
        }
        let gz = zeros(n)?;
        gz.set_rows(ctx, 0, &g_users)?;
        gz.set_rows(ctx, nu, &g_zcf)?;
        let mut ge = zeros(n)?;
        gpu::lightgcn_backward_into(ctx, &dm.adj, &gz, layers, &mut ge)?;
        scatter_add(ctx, &s_e, &geb, &ge)?;

        // Adam: the table on the device, the rest on the host
        gpu::adam_step(ctx, adam, &mut state.embedding, &ge, &mut state.adam)?;
        for (((_, t), (_, g)), st) in p
            .tensors_mut()
            .into_iter()
            .zip(grads.tensors())
            .zip(states.iter_mut())
            .skip(1)
        {
            adam.step(t, g, st)?;
        }
        let (cl, ot) = (cl as f32, ot as f32);
        let (bpr, reg_value) = (bpr as f32, reg_value as f32);
        Ok(LossParts {
            total: bpr + reg_value + clw * cl + otw * ot,
            bpr,
            reg: reg_value,
            cl,
            ot,
        })
    }
}
