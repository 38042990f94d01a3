//! The model's one definition: the forward pass over the full graphs, the batch losses and the hand-written
//! backward pass, written once over [`Exec`] and run by every backend (the CPU's `ndarray` ops, the GPU's
//! kernels). A backend supplies storage and kernels; which terms the loss has, where each gradient goes and
//! in which order it accumulates is decided here.
//!
//! Parameters live on the backend as one tensor list in [`Params::tensors`]' order ([`State`]); the
//! [`Layout`] says which tensor is which.

use super::config::{Cmcl, Fusion};
use super::params::{Branch, Params};
use super::profile::{Profile, Stage};
use super::recgoat::{row_cap, LossParts, RecGoat, BRANCH_SLOPE};
use crate::attention::{GatParams, Mode};
use crate::contrastive::{
    cmcl_official_pairs, cmcl_paper_pairs, InfoNceConfig, PairTerm, ViewPair,
};
use crate::data::Batch;
use crate::dist::World;
use crate::error::{Error, Result};
use crate::exec::{Exec, GatRefs};
use crate::nn::{dropout_mask, Adam, AdamState};
use crate::simd::Real;
use ndarray::ArrayView2;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const OP: &str = "RecGoat step";

/// Where a graph-attention layer's tensors sit in the tensor list.
#[derive(Debug, Clone)]
pub(super) struct GatIdx {
    w: usize,
    a_src: usize,
    a_dst: Option<usize>,
    bias: Option<usize>,
    w_res: Option<usize>,
}

impl GatIdx {
    fn refs<'a, M>(&self, t: &'a [M]) -> GatRefs<'a, M> {
        GatRefs {
            w: &t[self.w],
            a_src: &t[self.a_src],
            a_dst: self.a_dst.map(|k| &t[k]),
            bias: self.bias.map(|k| &t[k]),
            w_res: self.w_res.map(|k| &t[k]),
        }
    }
    /// In [`GatRefs`]' field order, as [`Exec::gat_backward`] returns the gradients.
    fn indices(&self) -> impl Iterator<Item = usize> {
        [
            Some(self.w),
            Some(self.a_src),
            self.a_dst,
            self.bias,
            self.w_res,
        ]
        .into_iter()
        .flatten()
    }
}

/// Where a branch's tensors sit in the tensor list.
#[derive(Debug, Clone)]
pub(super) struct BranchIdx {
    w: usize,
    b: Option<usize>,
    gat: Vec<GatIdx>,
}

/// Which tensor of [`Params::tensors`]' list (the embedding table first) is which parameter.
#[derive(Debug, Clone, Default)]
pub(crate) struct Layout {
    branches: Vec<BranchIdx>,
    user: Option<BranchIdx>,
    deltas: Vec<usize>,
    fusion: Option<usize>,
    norm: Option<(usize, usize)>,
    len: usize,
}

impl Layout {
    /// The layout of `p`'s structure, in the order of [`Params::tensors`].
    pub(super) fn of<F: Real>(p: &Params<F>) -> Layout {
        let mut k = 1; // the embedding table is tensor 0
        let mut take = || {
            k += 1;
            k - 1
        };
        let branch = |b: &Branch<F>, take: &mut dyn FnMut() -> usize| BranchIdx {
            w: take(),
            b: b.proj.b.as_ref().map(|_| take()),
            gat: (b.gat.iter())
                .map(|g: &GatParams<F>| GatIdx {
                    w: take(),
                    a_src: take(),
                    a_dst: g.a_dst.as_ref().map(|_| take()),
                    bias: g.bias.as_ref().map(|_| take()),
                    w_res: g.w_res.as_ref().map(|_| take()),
                })
                .collect(),
        };
        let branches = p.branches.iter().map(|b| branch(b, &mut take)).collect();
        let user = p.user_branch.as_ref().map(|b| branch(b, &mut take));
        let deltas = p.deltas.iter().map(|_| take()).collect();
        let fusion = p.fusion.as_ref().map(|_| take());
        let norm = p.norm.as_ref().map(|_| (take(), take()));
        Layout {
            branches,
            user,
            deltas,
            fusion,
            norm,
            len: take(),
        }
    }
}

/// A model's parameters on a backend: [`Params::tensors`]' list, and the fusion LayerNorm's `eps`.
pub(crate) struct State<E: Exec> {
    t: Vec<E::M>,
    eps: E::F,
}

impl<E: Exec> State<E> {
    pub(super) fn upload(ex: &E, p: &Params<E::F>) -> Result<Self> {
        Ok(State {
            t: (p.tensors().iter())
                .map(|(_, v)| ex.upload(*v))
                .collect::<Result<_>>()?,
            eps: p.norm.as_ref().map_or(E::F::c(1e-5), |n| n.eps),
        })
    }
}

/// Copies `tensors` (in [`Params::tensors`]' order) into `p`.
fn download_into<E: Exec>(ex: &E, tensors: &[E::M], p: &mut Params<E::F>) -> Result<()> {
    let mut dst = p.tensors_mut();
    if dst.len() != tensors.len() {
        return Err(Error::shape(OP, "tensor count", dst.len(), tensors.len()));
    }
    for ((name, d), m) in dst.iter_mut().zip(tensors) {
        let host = ex.download(m)?;
        if host.dim() != d.dim() {
            return Err(Error::shape(OP, name.clone(), d.dim(), host.dim()));
        }
        d.assign(&host);
    }
    Ok(())
}

struct LayerRec<E: Exec> {
    pre: E::M,
    mask: Option<E::M>,
    cache: E::GatCache,
    /// The layer's input.
    x: E::M,
}

struct BranchRec<E: Exec> {
    layers: Vec<LayerRec<E>>,
    out: E::M,
}

struct FusionRec<E: Exec> {
    weights: E::Fusion,
    /// LayerNorm cache and the L2 row norms, with `fusion_normalize`.
    norm: Option<(E::NormCache, E::M)>,
    mask: Option<E::M>,
    items: E::M,
}

/// A forward pass on a backend: the final user vectors, the collaborative items, every branch, OAT map and
/// the fusion with what the backward pass needs, and the checks the backend deferred.
pub(super) struct Fwd<E: Exec> {
    pub(super) users: E::M,
    pub(super) zcf: E::M,
    /// The item-graph view `S^L E_items`.
    ig: Option<E::M>,
    branches: Vec<BranchRec<E>>,
    user_branch: Option<BranchRec<E>>,
    aligned: Vec<E::M>,
    oat: Vec<E::Oat>,
    fusion: Option<FusionRec<E>>,
    checks: Vec<E::Scalar>,
    /// The modality branches were not run over every item: the batch terms project the rows they use
    /// ([`RecGoat::rowwise_branches`]).
    rowwise: bool,
}

impl<E: Exec> Fwd<E> {
    /// The final item vectors (the fused ones; LightGCN's when ID-only).
    pub(super) fn items(&self) -> &E::M {
        self.fusion.as_ref().map_or(&self.zcf, |f| &f.items)
    }
    /// The branch outputs `z^m`, in modality order.
    pub(super) fn modal(&self) -> impl Iterator<Item = &E::M> {
        self.branches.iter().map(|b| &b.out)
    }
    /// The OAT states, in modality order.
    pub(super) fn oat(&self) -> &[E::Oat] {
        &self.oat
    }
    /// The weighted views: the collaborative items (unless the fusion is residual: they are then added with
    /// weight 1), the item-graph view, then per modality its OAT output (or branch output).
    fn views(&self, residual: bool) -> Vec<&E::M> {
        let mut v = if residual { vec![] } else { vec![&self.zcf] };
        v.extend(&self.ig);
        if self.aligned.is_empty() {
            v.extend(self.modal());
        } else {
            v.extend(self.aligned.iter());
        }
        v
    }
}

/// `dLoss/d` of a forward pass's outputs, dense.
struct OutGrads<E: Exec> {
    users: E::M,
    items: E::M,
    zcf: E::M,
    modal: Vec<E::M>,
    aligned: Vec<E::M>,
    /// The regulariser's gradients of the batches' ego rows with their selections.
    ego: Vec<(E::Sel, E::M)>,
    /// With row-wise branches, per modality the feature rows the batch terms projected and the gradients
    /// of those projections.
    rows: Vec<Vec<(E::M, E::M)>>,
}

impl<E: Exec> OutGrads<E> {
    /// Zero gradients of a forward pass's outputs (no ego rows yet).
    fn zeros(ex: &E, (nu, ni, d, m): (usize, usize, usize, usize), fwd: &Fwd<E>) -> Result<Self> {
        let items = |n: usize| (0..n).map(|_| ex.zeros(ni, d)).collect::<Result<Vec<_>>>();
        Ok(OutGrads {
            users: ex.zeros(nu, d)?,
            items: ex.zeros(ni, d)?,
            zcf: ex.zeros(ni, d)?,
            modal: items(fwd.branches.len())?,
            aligned: items(fwd.aligned.len())?,
            ego: Vec::new(),
            rows: (0..m).map(|_| Vec::new()).collect(),
        })
    }
}

/// With row-wise branches, one modality's encoder output over the rows both batch terms read: the modality
/// term's rows first, then the content term's rows it lacks (in a batch they are almost the same items),
/// projected once. Each term reads its rows from `out` and adds its gradient into `grad`, which takes one
/// projection backward.
struct SharedRows<E: Exec> {
    out: E::M,
    /// The feature rows projected.
    x: E::M,
    /// `dLoss/dout`.
    grad: E::M,
}

/// The items [`SharedRows`] hold, and where each term's rows sit among them.
struct SharedIndex<E: Exec> {
    /// The shared rows' items.
    all: E::Sel,
    /// The modality term's rows, the shared rows' first ones.
    prefix: E::Sel,
    /// The content term's rows.
    content: E::Sel,
    /// How many rows are shared.
    len: usize,
}

/// `w x` (`x` itself when `w` is 1).
fn scaled<E: Exec>(ex: &E, w: E::F, x: E::M) -> Result<E::M> {
    if w == <E::F as num_traits::One>::one() {
        return Ok(x);
    }
    let (r, c) = ex.dim(&x);
    let mut out = ex.zeros(r, c)?;
    ex.axpy(w, &x, &mut out)?;
    Ok(out)
}

/// One pass of training steps: the parameters and their Adam states (updated in place when the pass
/// succeeds), the optimiser, the batches with their modes, the profile and a callback after each batch
/// (`done`, `total`).
pub(crate) struct TrainPass<'a, F> {
    pub(crate) params: &'a mut Params<F>,
    pub(crate) states: &'a mut [AdamState<F>],
    /// The optimiser; its weight decay applies to every parameter but the embedding table and the
    /// non-residual fusion weights.
    pub(crate) adam: &'a Adam<F>,
    pub(crate) batches: &'a [(Batch, Mode)],
    pub(crate) profile: &'a mut Profile,
    pub(crate) on_batch: &'a mut dyn FnMut(usize, usize),
    /// The ranks that share the steps ([`World::single`] for one process).
    pub(crate) world: &'a World,
    /// What a rank's error says, before the ranks share it (the trainer's hint on divergence).
    pub(crate) explain: &'a dyn Fn(Error) -> Error,
}

/// What a step leaves to read: the forward pass's checks, the BPR and regulariser terms, the contrastive
/// term's parts and the sample-level OT term.
pub(crate) struct Pending<S> {
    checks: Vec<S>,
    bpr: S,
    reg: S,
    cl: Vec<S>,
    ot: S,
    /// The content term's parts (their sum is the term).
    content: Vec<S>,
}

impl<F: Real> RecGoat<F> {
    /// Whether the fusion weights go through a softmax, and whether it is residual.
    fn fusion_kind(&self) -> (bool, bool) {
        (
            self.cfg.fusion == Fusion::Softmax,
            self.cfg.fusion == Fusion::Residual,
        )
    }

    /// The dropout mask of a `shape` activation for `mode` and `salt` (drawn on the host from the seed, so
    /// every backend uses the same), on the backend.
    fn mask<E: Exec<F = F>>(
        &self,
        ex: &E,
        shape: (usize, usize),
        mode: Mode,
        salt: u64,
    ) -> Result<Option<E::M>> {
        match Self::derived(mode, salt) {
            Mode::Train { seed } if self.cfg.dropout > 0.0 => {
                let p = F::c(self.cfg.dropout);
                let m = dropout_mask(shape, p, &mut ChaCha8Rng::seed_from_u64(seed));
                Ok(Some(ex.upload(m.view())?))
            }
            _ => Ok(None),
        }
    }

    /// Branch `slot`: the projection of its features, then each GAT layer with LeakyReLU and dropout.
    fn branch_forward<E: Exec<F = F>>(
        &self,
        ex: &E,
        t: &[E::M],
        idx: &BranchIdx,
        slot: usize,
        mode: Mode,
        salt: u64,
    ) -> Result<BranchRec<E>> {
        let mut h = ex.project(slot, &t[idx.w], idx.b.map(|k| &t[k]))?;
        let mut layers = Vec::with_capacity(idx.gat.len());
        for (l, gi) in idx.gat.iter().enumerate() {
            let salt = salt * 64 + l as u64;
            let (pre, cache) =
                ex.gat_forward(slot, gi.refs(t), &h, Self::derived(mode, 2 * salt))?;
            let mask = self.mask(ex, ex.dim(&pre), mode, 2 * salt + 1)?;
            let act = ex.leaky_relu_masked(&pre, F::c(BRANCH_SLOPE), mask.as_ref())?;
            let x = std::mem::replace(&mut h, act);
            layers.push(LayerRec {
                pre,
                mask,
                cache,
                x,
            });
        }
        Ok(BranchRec { layers, out: h })
    }

    /// The backward pass of [`RecGoat::branch_forward`] for `g = dL/d out`, into `grads`.
    fn branch_backward<E: Exec<F = F>>(
        &self,
        ex: &E,
        t: &[E::M],
        (idx, slot): (&BranchIdx, usize),
        rec: &BranchRec<E>,
        g_out: &E::M,
        grads: &mut [Option<E::M>],
    ) -> Result<()> {
        let mut owned: Option<E::M> = None;
        for (gi, layer) in idx.gat.iter().zip(&rec.layers).rev() {
            let g = owned.as_ref().unwrap_or(g_out);
            let slope = F::c(BRANCH_SLOPE);
            let gl = ex.leaky_relu_masked_backward(&layer.pre, slope, layer.mask.as_ref(), g)?;
            let (gx, params) = ex.gat_backward(slot, gi.refs(t), &layer.cache, &layer.x, &gl)?;
            for (k, gk) in gi.indices().zip(params) {
                grads[k] = Some(gk);
            }
            owned = Some(gx);
        }
        let g = owned.as_ref().unwrap_or(g_out);
        let (gw, gb) = ex.project_backward(slot, g, idx.b.is_some())?;
        grads[idx.w] = Some(gw);
        if let (Some(k), Some(gb)) = (idx.b, gb) {
            grads[k] = Some(gb);
        }
        Ok(())
    }

    /// The forward pass over the full graphs: LightGCN, each modality branch, OAT, fusion and the user-user
    /// branch. `mode` switches dropout; `profile`, when given, accumulates each stage's time.
    pub(super) fn forward_on<E: Exec<F = F>>(
        &self,
        ex: &E,
        st: &State<E>,
        mode: Mode,
        profile: Option<&mut Profile>,
    ) -> Result<Fwd<E>> {
        self.forward_branches(ex, st, mode, profile, true)
    }

    /// Whether the modality branches can run on the rows the batch terms use alone: projections with no
    /// graph attention whose outputs over every item nothing else reads (no OAT, no fusion).
    pub(super) fn rowwise_branches(&self) -> bool {
        self.cfg.gat_layers == 0
            && self.oat.is_none()
            && self.cfg.fusion == Fusion::None
            && self.cfg.cmcl == Cmcl::Paper
    }

    /// Modality `m`'s encoder output at the rows of `sel`: gathered from its output over every item, or,
    /// with row-wise branches, projected there (with the feature rows, for the backward pass).
    fn encode_rows<E: Exec<F = F>>(
        &self,
        ex: &E,
        st: &State<E>,
        fwd: &Fwd<E>,
        m: usize,
        sel: &E::Sel,
    ) -> Result<(E::M, Option<E::M>)> {
        if fwd.rowwise {
            let idx = &self.layout.branches[m];
            let (out, x) = ex.project_rows(m, sel, &st.t[idx.w], idx.b.map(|k| &st.t[k]))?;
            Ok((out, Some(x)))
        } else {
            Ok((ex.gather(sel, &fwd.branches[m].out)?, None))
        }
    }

    /// Routes the gradient `g` of [`RecGoat::encode_rows`]' output for modality `m`: into the dense
    /// gradient of its output over every item, or (row-wise) beside the feature rows it came from.
    #[allow(clippy::too_many_arguments)]
    fn encode_rows_grad<E: Exec<F = F>>(
        ex: &E,
        modal: &mut [E::M],
        rows: &mut [Vec<(E::M, E::M)>],
        m: usize,
        sel: &E::Sel,
        x: Option<E::M>,
        g: E::M,
    ) -> Result<()> {
        match x {
            Some(x) => {
                rows[m].push((x, g));
                Ok(())
            }
            None => ex.scatter_add(sel, &g, &mut modal[m]),
        }
    }

    /// The rows both batch terms read, for [`SharedRows`]: the modality term's items `keep` (distinct) and
    /// then the content term's items `content` (distinct) that `keep` lacks, with where each term's rows sit.
    fn shared_index<E: Exec<F = F>>(
        &self,
        ex: &E,
        keep: &[usize],
        content: &[usize],
    ) -> Result<SharedIndex<E>> {
        let mut at: std::collections::HashMap<usize, usize> =
            keep.iter().enumerate().map(|(r, &i)| (i, r)).collect();
        let mut all = keep.to_vec();
        let content_at: Vec<usize> = (content.iter())
            .map(|&i| {
                *at.entry(i).or_insert_with(|| {
                    all.push(i);
                    all.len() - 1
                })
            })
            .collect();
        let len = all.len();
        Ok(SharedIndex {
            all: ex.select(&all, self.n_items)?,
            prefix: ex.select(&(0..keep.len()).collect::<Vec<_>>(), len)?,
            content: ex.select(&content_at, len)?,
            len,
        })
    }

    /// [`RecGoat::forward_on`], the modality branches over every item when `full` or when
    /// [`RecGoat::rowwise_branches`] does not hold, else left to the batch terms.
    fn forward_branches<E: Exec<F = F>>(
        &self,
        ex: &E,
        st: &State<E>,
        mode: Mode,
        mut profile: Option<&mut Profile>,
        full: bool,
    ) -> Result<Fwd<E>> {
        let rowwise = !full && self.rowwise_branches();
        let (nu, ni) = (self.n_users, self.n_items);
        let (t, layout) = (&st.t, &self.layout);
        let t0 = Profile::start();
        let z = ex.propagate(&t[0], false)?;
        let mut users = ex.rows(&z, 0, nu)?;
        let zcf = ex.rows(&z, nu, ni)?;
        drop(z);
        let ig = match &self.item_graph {
            Some(_) => Some(ex.item_propagate(&ex.rows(&t[0], nu, ni)?, false)?),
            None => None,
        };
        Profile::add(&mut profile, Stage::Propagation, t0);

        let t0 = Profile::start();
        let branches = match rowwise {
            true => Vec::new(),
            false => (layout.branches.iter().enumerate())
                .map(|(m, idx)| self.branch_forward(ex, t, idx, m, mode, 1 + m as u64))
                .collect::<Result<Vec<_>>>()?,
        };
        let user_branch = match &layout.user {
            Some(idx) => {
                let rec = self.branch_forward(ex, t, idx, layout.branches.len(), mode, 1000)?;
                ex.axpy(F::one(), &rec.out, &mut users)?;
                Some(rec)
            }
            None => None,
        };
        Profile::add(&mut profile, Stage::Gat, t0);

        let t0 = Profile::start();
        let (mut aligned, mut oat, mut checks) = (Vec::new(), Vec::new(), Vec::new());
        for (b, &k) in branches.iter().zip(&layout.deltas) {
            let (a, state, check) = ex.oat_forward(&b.out, &zcf, &t[k])?;
            aligned.push(a);
            oat.push(state);
            checks.extend(check);
        }
        Profile::add(&mut profile, Stage::Transport, t0);

        let mut fwd = Fwd {
            users,
            zcf,
            ig,
            branches,
            user_branch,
            aligned,
            oat,
            fusion: None,
            checks,
            rowwise,
        };
        if let Some(fi) = layout.fusion {
            let t0 = Profile::start();
            let (softmax, residual) = self.fusion_kind();
            let (mut fused, weights) = ex.fusion(&fwd.views(residual), &t[fi], softmax)?;
            if residual {
                ex.axpy(F::one(), &fwd.zcf, &mut fused)?;
            }
            let mask = self.mask(ex, ex.dim(&fused), mode, 2000)?;
            let (items, norm) = match layout.norm {
                Some((g, b)) => {
                    let (normed, cache) = ex.layer_norm((&t[g], &t[b], st.eps), &fused)?;
                    let dropped = ex.masked(normed, mask.as_ref())?;
                    let (items, norms, check) = ex.l2_normalize(&dropped, "the fused items")?;
                    fwd.checks.extend(check);
                    (items, Some((cache, norms)))
                }
                None => (ex.masked(fused, mask.as_ref())?, None),
            };
            fwd.fusion = Some(FusionRec {
                weights,
                norm,
                mask,
                items,
            });
            Profile::add(&mut profile, Stage::Fusion, t0);
        }
        Ok(fwd)
    }

    /// The loss of one batch on a forward pass and its gradient with respect to the forward outputs: BPR on
    /// `z_u . z_i`, the regulariser on the batch's ego embeddings, the contrastive term and the sample-level
    /// OT term as configured.
    fn loss_on<E: Exec<F = F>>(
        &self,
        ex: &E,
        st: &State<E>,
        fwd: &Fwd<E>,
        (batch, w): (&Batch, F),
        og: &mut OutGrads<E>,
        mut profile: Option<&mut Profile>,
    ) -> Result<Pending<E::Scalar>> {
        let (nu, ni) = (self.n_users, self.n_items);
        let bsz = batch.check(OP, nu, ni)?;
        let t0 = Profile::start();
        let items = fwd.items();
        let s_u = ex.select(&batch.users, nu)?;
        let pos_neg: Vec<usize> = batch.pos.iter().chain(&batch.neg).copied().collect();
        let s_i = ex.select(&pos_neg, ni)?;
        let ego: Vec<usize> = (batch.users.iter().copied())
            .chain(pos_neg.iter().map(|&i| nu + i))
            .collect();
        let s_e = ex.select(&ego, nu + ni)?;
        let zu = ex.gather(&s_u, &fwd.users)?;
        let zi = ex.gather(&s_i, items)?;
        let eb = ex.gather(&s_e, &st.t[0])?;
        let bo = ex.bpr(&zu, &zi, &eb, F::c(self.cfg.reg_weight))?;
        let OutGrads {
            users: g_users,
            items: g_items,
            zcf: g_zcf,
            modal: g_modal,
            aligned: g_aligned,
            ego: g_ego,
            rows: g_rows,
        } = og;
        ex.scatter_add(&s_u, &scaled(ex, w, bo.grad_users)?, g_users)?;
        ex.scatter_add(&s_i, &scaled(ex, w, bo.grad_items)?, g_items)?;
        g_ego.push((s_e, scaled(ex, w, bo.grad_ego)?));
        Profile::add(&mut profile, Stage::Loss, t0);

        let clw = self.cfg.cl_weight;
        let otw = self.cfg.ot_sample_weight;
        let ot_loss = otw > 0.0 && !fwd.aligned.is_empty();
        // the positives' selection, shared by the contrastive and the sample-level OT terms
        let s_pos = if clw > 0.0 || ot_loss {
            Some(ex.select(&batch.pos, ni)?)
        } else {
            None
        };

        // the content term's rows (its items and the users who chose them), chosen before the contrastive
        // term so that, with row-wise branches, each modality projects the rows both read once
        let content_rows = match self.content_on() {
            true => self.content_rows(batch),
            false => (Vec::new(), Vec::new()),
        };
        let mut shared: Vec<Option<SharedRows<E>>> =
            (0..self.modalities.len()).map(|_| None).collect();
        let mut shared_index: Option<SharedIndex<E>> = None;

        let mut cl = Vec::new();
        // the term's rows: every row (sharing the BPR gathers and selections), or a subset with its own
        let subset = if clw > 0.0 {
            self.contrastive_subset(batch)
        } else {
            None
        };
        // one row has no negative to contrast with: the term would be 0, and is left out
        let cl_rows = subset.as_ref().map_or(batch.users.len(), |r| r.users.len());
        if clw > 0.0 && cl_rows >= 2 {
            let t0 = Profile::start();
            let own;
            let (s_cu, s_cp, cu, cp) = match &subset {
                Some(rows) => {
                    let (su, sp) = (ex.select(&rows.users, nu)?, ex.select(&rows.pos, ni)?);
                    let (u, p) = (ex.gather(&su, &fwd.users)?, ex.gather(&sp, items)?);
                    own = (su, sp, u);
                    (&own.0, &own.1, &own.2, p)
                }
                None => {
                    let sp = s_pos.as_ref().expect("built for the contrastive term");
                    (&s_u, sp, &zu, ex.rows(&zi, 0, bsz)?)
                }
            };
            let rows = subset.as_ref().unwrap_or(batch);
            // each further view with where its gradient goes (2 collaborative items, 3 + m modality m)
            let mut extra: Vec<(E::M, usize, &E::Sel)> = Vec::new();
            // the feature rows of each further view projected row-wise
            let mut extra_rows: Vec<Option<E::M>> = Vec::new();
            let (s_n, s_m);
            let pairs = match self.cfg.cmcl {
                Cmcl::Paper => {
                    // the modality terms at `cl_modality_weight` (0: the user term alone), each at its
                    // trust with `cl_modality_trust`; a modality of weight 0 is left out
                    let weights = self.modality_term_weights();
                    let mut pairs = cmcl_paper_pairs::<F>(0);
                    // they train the encoders: the rows of items that lack a modality (an all-zero feature
                    // row says nothing) and, with the content term, the probe items' rows stay out of them
                    // (the user term keeps every row), against the items on the rows left
                    let active = weights.iter().any(|&w| w > 0.0);
                    let keep: Vec<usize> = (rows.pos.iter().copied())
                        .filter(|&i| active && !self.incomplete[i])
                        .filter(|&i| !(self.content_on() && self.is_probe[i]))
                        .take(row_cap(self.cfg.cl_modality_max_rows))
                        .collect();
                    // one row has no negative to contrast with: its terms would be 0
                    let terms = keep.len() >= 2;
                    let (sel, items_at) = if !terms || keep.len() == rows.pos.len() {
                        (s_cp, 1)
                    } else {
                        s_m = ex.select(&keep, ni)?;
                        extra.push((ex.gather(&s_m, items)?, 1, &s_m));
                        extra_rows.push(None);
                        (&s_m, 1 + extra.len())
                    };
                    // row-wise with the content term: the rows both terms read, projected once
                    if fwd.rowwise && terms && !content_rows.1.is_empty() {
                        shared_index = Some(self.shared_index(ex, &keep, &content_rows.1)?);
                    }
                    for (m, &mw) in weights
                        .iter()
                        .enumerate()
                        .filter(|&(_, &w)| terms && w > 0.0)
                    {
                        pairs.push(ViewPair {
                            first: 2 + extra.len(),
                            second: items_at,
                            weight: F::c(mw),
                            term: PairTerm::InfoNce,
                        });
                        let (view, x) = match &shared_index {
                            Some(ix) => {
                                let (out, x) = self.encode_rows(ex, st, fwd, m, &ix.all)?;
                                let x = x.expect("row-wise branches return their feature rows");
                                let view = ex.rows(&out, 0, keep.len())?;
                                let d = ex.dim(&out).1;
                                let grad = ex.zeros(ix.len, d)?;
                                shared[m] = Some(SharedRows { out, x, grad });
                                (view, None)
                            }
                            None => self.encode_rows(ex, st, fwd, m, sel)?,
                        };
                        extra.push((view, 3 + m, sel));
                        extra_rows.push(x);
                    }
                    pairs
                }
                Cmcl::OfficialCode => {
                    s_n = ex.select(&rows.neg, ni)?;
                    for sel in [s_cp, &s_n] {
                        extra.push((ex.gather(sel, &fwd.zcf)?, 2, sel));
                        for (m, b) in fwd.branches.iter().enumerate() {
                            extra.push((ex.gather(sel, &b.out)?, 3 + m, sel));
                        }
                    }
                    extra_rows.extend(extra.iter().map(|_| None));
                    cmcl_official_pairs::<F>(1 + fwd.branches.len())
                }
            };
            let mut views: Vec<(&E::M, usize, &E::Sel)> = vec![(cu, 0, s_cu), (&cp, 1, s_cp)];
            views.extend(extra.iter().map(|(v, target, s)| (v, *target, *s)));
            let cfg = InfoNceConfig {
                temperature: F::c(self.cfg.cl_temperature),
                ..InfoNceConfig::default()
            };
            let refs: Vec<&E::M> = views.iter().map(|v| v.0).collect();
            // the terms are read unweighted; their gradients carry the batch's share `w` of the step
            let (terms, grads) = ex.info_nce(&refs, &pairs, &cfg, F::c(clw) * w)?;
            let xs = [None, None].into_iter().chain(extra_rows);
            for (((_, target, sel), g), x) in views.into_iter().zip(grads).zip(xs) {
                match target {
                    0 => ex.scatter_add(sel, &g, g_users)?,
                    1 => ex.scatter_add(sel, &g, g_items)?,
                    2 => ex.scatter_add(sel, &g, g_zcf)?,
                    m => match (&mut shared[m - 3], &shared_index) {
                        (Some(sh), Some(ix)) => ex.scatter_add(&ix.prefix, &g, &mut sh.grad)?,
                        _ => Self::encode_rows_grad(ex, g_modal, g_rows, m - 3, sel, x, g)?,
                    },
                }
            }
            cl = terms;
            Profile::add(&mut profile, Stage::Contrastive, t0);
        }

        let mut ot = 0.0;
        if ot_loss {
            // B x B divergences through the transport module's host-in / host-out API
            let t0 = Profile::start();
            let s_p = s_pos.as_ref().expect("built for the OT term");
            let yc = ex.download(&ex.gather(s_p, &fwd.zcf)?)?;
            let rows = (fwd.aligned.iter())
                .map(|a| ex.download(&ex.gather(s_p, a)?))
                .collect::<Result<Vec<_>>>()?;
            let (value, grads) = self.sample_ot_loss(&rows, yc.view())?;
            ot = value.to_f64().unwrap_or(f64::NAN);
            for ((gx, gy), acc) in grads.iter().zip(g_aligned.iter_mut()) {
                ex.scatter_add(s_p, &ex.upload(gx.mapv(|v| v * w).view())?, acc)?;
                ex.scatter_add(s_p, &ex.upload(gy.mapv(|v| v * w).view())?, g_zcf)?;
            }
            Profile::add(&mut profile, Stage::Transport, t0);
        }
        let mut content = Vec::new();
        if self.content_on() {
            let t0 = Profile::start();
            let (owners, rows) = &content_rows;
            if !rows.is_empty() {
                // each encoder against the items' final vectors (held fixed), at the batch's share `w`
                let sel = ex.select(rows, ni)?;
                let target = ex.gather(&sel, fwd.items())?;
                let m = self.modalities.len();
                let m_count = F::c(m as f64);
                let scale = F::c(self.cfg.content_weight) * w / m_count;
                // the ranking part: the users who chose the items (held fixed) score every row's item,
                // raw dot products as logits; one row has nothing to rank against
                let rank = self.cfg.content_rank_weight;
                let anchors = if rank > 0.0 && rows.len() >= 2 {
                    Some(ex.gather(&ex.select(owners, nu)?, &fwd.users)?)
                } else {
                    None
                };
                let rank_cfg = InfoNceConfig {
                    temperature: F::one(),
                    normalize: false,
                    ..InfoNceConfig::default()
                };
                let rank_pair = [ViewPair {
                    first: 0,
                    second: 1,
                    weight: F::c(rank) / m_count,
                    term: PairTerm::InfoNce,
                }];
                for (k, slot) in shared.iter_mut().enumerate() {
                    let (c, x) = match (&*slot, &shared_index) {
                        (Some(sh), Some(ix)) => (ex.gather(&ix.content, &sh.out)?, None),
                        _ => self.encode_rows(ex, st, fwd, k, &sel)?,
                    };
                    let (value, mut g) = ex.sq_dist(&c, &target, scale, m_count)?;
                    content.push(value);
                    if let Some(u) = &anchors {
                        let scale = F::c(self.cfg.content_weight) * w;
                        let (terms, grads) = ex.info_nce(&[u, &c], &rank_pair, &rank_cfg, scale)?;
                        ex.axpy(F::one(), &grads[1], &mut g)?;
                        content.extend(terms);
                    }
                    match (slot, &shared_index) {
                        (Some(sh), Some(ix)) => ex.scatter_add(&ix.content, &g, &mut sh.grad)?,
                        _ => Self::encode_rows_grad(ex, g_modal, g_rows, k, &sel, x, g)?,
                    }
                }
            }
            Profile::add(&mut profile, Stage::Loss, t0);
        }
        // each shared projection's gradient, once
        for (m, sh) in shared.into_iter().enumerate() {
            if let Some(SharedRows { x, grad, .. }) = sh {
                g_rows[m].push((x, grad));
            }
        }
        let pending = Pending {
            checks: Vec::new(),
            bpr: bo.bpr,
            reg: bo.reg,
            cl,
            ot: ex.scalar(ot),
            content,
        };
        Ok(pending)
    }

    /// Gradients of the batch loss with respect to every parameter (in [`Params::tensors`]' order), from
    /// the forward pass and the output gradients.
    fn backward_on<E: Exec<F = F>>(
        &self,
        ex: &E,
        st: &State<E>,
        fwd: &Fwd<E>,
        og: OutGrads<E>,
        mut profile: Option<&mut Profile>,
    ) -> Result<Vec<E::M>> {
        let (t, layout) = (&st.t, &self.layout);
        let mut grads: Vec<Option<E::M>> = (0..layout.len).map(|_| None).collect();
        let OutGrads {
            users: g_users,
            items: g_items,
            zcf: mut g_zcf,
            mut modal,
            mut aligned,
            ego,
            rows,
        } = og;
        let one = F::one();
        let mut g_ig = None;
        let t0 = Profile::start();
        if let (Some(idx), Some(rec)) = (&layout.user, &fwd.user_branch) {
            let slot = layout.branches.len();
            self.branch_backward(ex, t, (idx, slot), rec, &g_users, &mut grads)?;
        }
        Profile::add(&mut profile, Stage::Gat, t0);

        match (&fwd.fusion, layout.fusion) {
            (Some(f), Some(fi)) => {
                let t0 = Profile::start();
                let mut g = g_items;
                match (&f.norm, layout.norm) {
                    (Some((cache, norms)), Some((gk, bk))) => {
                        g = ex.l2_normalize_backward(&f.items, norms, &g)?;
                        g = ex.masked(g, f.mask.as_ref())?;
                        let ln = (&t[gk], &t[bk], st.eps);
                        let (gx, g_gamma, g_beta) = ex.layer_norm_backward(ln, cache, &g)?;
                        grads[gk] = Some(g_gamma);
                        grads[bk] = Some(g_beta);
                        g = gx;
                    }
                    _ => g = ex.masked(g, f.mask.as_ref())?,
                }
                let (softmax, residual) = self.fusion_kind();
                let (g_views, g_logits) =
                    ex.fusion_backward(&fwd.views(residual), &f.weights, &t[fi], softmax, &g)?;
                grads[fi] = Some(g_logits);
                let mut g_views = g_views.into_iter();
                let g0 = if residual { Some(g) } else { g_views.next() };
                if let Some(g0) = g0 {
                    ex.axpy(one, &g0, &mut g_zcf)?;
                }
                if fwd.ig.is_some() {
                    g_ig = g_views.next();
                }
                for (m, gv) in g_views.enumerate() {
                    let acc = if fwd.aligned.is_empty() {
                        &mut modal[m]
                    } else {
                        &mut aligned[m]
                    };
                    ex.axpy(one, &gv, acc)?;
                }
                Profile::add(&mut profile, Stage::Fusion, t0);
            }
            _ => ex.axpy(one, &g_items, &mut g_zcf)?,
        }

        let t0 = Profile::start();
        for (m, state) in fwd.oat.iter().enumerate() {
            let out = &fwd.branches[m].out;
            let [gm, gz, gd] = ex.oat_backward(state, out, &fwd.zcf, &aligned[m])?;
            ex.axpy(one, &gm, &mut modal[m])?;
            ex.axpy(one, &gz, &mut g_zcf)?;
            grads[layout.deltas[m]] = Some(gd);
        }
        Profile::add(&mut profile, Stage::Transport, t0);

        let t0 = Profile::start();
        if fwd.rowwise {
            // each branch's projection from the rows the batch terms projected
            for (idx, rows) in layout.branches.iter().zip(&rows) {
                let (r, c) = ex.dim(&t[idx.w]);
                let mut gw = ex.zeros(r, c)?;
                let mut gb = match idx.b {
                    Some(_) => Some(ex.zeros(1, c)?),
                    None => None,
                };
                for (x, g) in rows {
                    let (w, b) = ex.project_rows_backward(x, g, idx.b.is_some())?;
                    ex.axpy(one, &w, &mut gw)?;
                    if let (Some(acc), Some(b)) = (gb.as_mut(), b) {
                        ex.axpy(one, &b, acc)?;
                    }
                }
                grads[idx.w] = Some(gw);
                if let Some(k) = idx.b {
                    grads[k] = gb;
                }
            }
        }
        for (m, g) in modal.iter().enumerate() {
            let idx = &layout.branches[m];
            self.branch_backward(ex, t, (idx, m), &fwd.branches[m], g, &mut grads)?;
        }
        Profile::add(&mut profile, Stage::Gat, t0);

        let t0 = Profile::start();
        let gz = ex.concat_rows(&g_users, &g_zcf)?;
        let mut ge = ex.propagate(&gz, true)?;
        if let Some(g) = g_ig {
            let gi = ex.item_propagate(&g, true)?;
            let pad = ex.zeros(self.n_users, self.cfg.embedding_dim)?;
            ex.axpy(one, &ex.concat_rows(&pad, &gi)?, &mut ge)?;
        }
        for (s_e, g_ego) in &ego {
            ex.scatter_add(s_e, g_ego, &mut ge)?;
        }
        grads[0] = Some(ge);
        Profile::add(&mut profile, Stage::Propagation, t0);
        (grads.into_iter().enumerate())
            .map(|(k, g)| g.ok_or_else(|| Error::shape(OP, "gradient of tensor", k, "none")))
            .collect()
    }

    /// The checks a forward pass deferred, read and judged.
    ///
    /// # Errors
    /// The first failed check.
    pub(super) fn resolve_checks<E: Exec<F = F>>(&self, ex: &E, fwd: &Fwd<E>) -> Result<()> {
        let refs: Vec<&E::Scalar> = fwd.checks.iter().collect();
        for v in ex.read(&refs)? {
            v?;
        }
        Ok(())
    }

    /// One step: a forward pass (with the first batch's mode), each batch's losses on it, and the backward
    /// pass of the batches' mean loss: what to read of each batch's loss, and every parameter's gradient.
    /// One batch is the exact step; several are gradient accumulation over one forward pass.
    #[allow(clippy::type_complexity)]
    pub(super) fn step_on<E: Exec<F = F>>(
        &self,
        ex: &E,
        st: &State<E>,
        (mode, group): (Mode, usize),
        batches: &[(Batch, Mode)],
        mut profile: Option<&mut Profile>,
        with_grads: bool,
    ) -> Result<(Vec<Pending<E::Scalar>>, Vec<E::M>)> {
        if batches.is_empty() || group < batches.len() {
            return Err(Error::shape(
                OP,
                "batches in a step",
                format!("1..={group}"),
                batches.len(),
            ));
        }
        let mut fwd = self.forward_branches(ex, st, mode, profile.as_deref_mut(), false)?;
        let w = F::one() / F::c(group as f64);
        let dims = (self.n_users, self.n_items, self.cfg.embedding_dim);
        let mut og = OutGrads::zeros(ex, (dims.0, dims.1, dims.2, self.modalities.len()), &fwd)?;
        let mut pendings = Vec::with_capacity(batches.len());
        for (batch, _) in batches {
            let p = self.loss_on(ex, st, &fwd, (batch, w), &mut og, profile.as_deref_mut())?;
            pendings.push(p);
        }
        pendings[0].checks = std::mem::take(&mut fwd.checks);
        let grads = if with_grads {
            self.backward_on(ex, st, &fwd, og, profile)?
        } else {
            Vec::new()
        };
        Ok((pendings, grads))
    }

    /// Data-parallel training's exchange: every rank's share of the step's gradient (`None`: no batch of
    /// the step fell to this rank) summed over the ranks by one all-reduce of one contiguous buffer, whose
    /// last value counts the ranks that failed; when any did, every rank returns the error
    /// ([`World::agree`]). With one rank, the gradient as it is.
    fn exchange<E: Exec<F = F>>(
        &self,
        ex: &E,
        st: &State<E>,
        world: &World,
        stepped: Result<Option<Vec<E::M>>>,
    ) -> Result<Vec<E::M>> {
        if world.size() == 1 {
            return stepped?.ok_or_else(|| Error::shape(OP, "batches in a step", ">= 1", 0));
        }
        let dims: Vec<(usize, usize)> = st.t.iter().map(|t| ex.dim(t)).collect();
        let n: usize = dims.iter().map(|&(r, c)| r * c).sum();
        let mut buf = vec![F::zero(); n + 1];
        let local = stepped.and_then(|grads| {
            let Some(grads) = grads else { return Ok(()) };
            if grads.len() != dims.len() {
                return Err(Error::shape(OP, "gradients", dims.len(), grads.len()));
            }
            let mut at = 0;
            for (g, &(r, c)) in grads.iter().zip(&dims) {
                let host = ex.download(g)?;
                if host.dim() != (r, c) {
                    return Err(Error::shape(OP, "gradient", (r, c), host.dim()));
                }
                for (d, v) in buf[at..at + r * c].iter_mut().zip(host.iter()) {
                    *d = *v;
                }
                at += r * c;
            }
            Ok(())
        });
        if local.is_err() {
            buf.fill(F::zero());
            buf[n] = F::one();
        }
        world.sum(&mut buf)?;
        if buf[n] > F::zero() {
            world.agree(local)?;
            return Err(Error::Distributed {
                rank: world.rank(),
                size: world.size(),
                reason: "a rank reported a failed step but no rank kept its error".into(),
            });
        }
        let mut at = 0;
        (dims.iter())
            .map(|&(r, c)| {
                let v = ArrayView2::from_shape((r, c), &buf[at..at + r * c])
                    .map_err(|e| Error::shape(OP, "gradient", (r, c), e.to_string()))?;
                at += r * c;
                ex.upload(v)
            })
            .collect()
    }

    /// The losses of `steps`, read from the backend in one go and judged in step order: the forward
    /// pass's checks, the contrastive term's, then a non-finite term.
    ///
    /// # Errors
    /// The first failed check; [`Error::NonFinite`] for a non-finite loss term.
    pub(super) fn resolve<E: Exec<F = F>>(
        &self,
        ex: &E,
        steps: &[Pending<E::Scalar>],
    ) -> Result<Vec<LossParts<F>>> {
        let refs: Vec<&E::Scalar> = (steps.iter())
            .flat_map(|p| {
                (p.checks.iter().chain(&p.cl))
                    .chain([&p.bpr, &p.reg, &p.ot])
                    .chain(&p.content)
            })
            .collect();
        let mut values = ex.read(&refs)?.into_iter();
        let mut next = || {
            values
                .next()
                .unwrap_or_else(|| Err(Error::shape(OP, "values read", refs.len(), "fewer")))
        };
        let (clw, otw) = (self.cfg.cl_weight, self.cfg.ot_sample_weight);
        let mut out = Vec::with_capacity(steps.len());
        for p in steps {
            for _ in &p.checks {
                next()?;
            }
            let mut cl = 0.0;
            for _ in &p.cl {
                cl += next()?;
            }
            let (bpr, reg, ot) = (next()?, next()?, next()?);
            let mut content = 0.0;
            for _ in &p.content {
                content += next()?;
            }
            let terms = [
                ("BPR loss", bpr),
                ("regulariser", reg),
                ("contrastive loss", cl),
                ("sample-level OT loss", ot),
            ];
            for (what, v) in terms.into_iter().chain([("content term", content)]) {
                if !v.is_finite() {
                    return Err(Error::NonFinite {
                        op: OP,
                        what: what.into(),
                        index: 0,
                        value: v.to_string(),
                    });
                }
            }
            let c = |v: f64| F::c(v);
            let (bpr, reg, cl, ot, content) = (c(bpr), c(reg), c(cl), c(ot), c(content));
            out.push(LossParts {
                total: bpr + reg + c(clw) * cl + c(otw) * ot + c(self.cfg.content_weight) * content,
                bpr,
                reg,
                cl,
                ot,
                content,
            });
        }
        Ok(out)
    }

    /// Runs `batches` on a backend: each step's forward, loss, backward and an Adam update of every
    /// parameter, the parameters and their Adam states kept on the backend throughout; then the losses are
    /// read in one go and the parameters and states come back into `params` and `states`. After an error
    /// `params` and `states` are those of the start.
    pub(super) fn train_on<E: Exec<F = F>>(
        &self,
        ex: &E,
        pass: TrainPass<'_, F>,
    ) -> Result<Vec<LossParts<F>>> {
        let TrainPass {
            params,
            states,
            adam,
            batches,
            profile,
            on_batch,
            world,
            explain,
        } = pass;
        // on a deferring backend the stages overlap on the device: the whole step is timed as one
        let t0 = Profile::start();
        // every rank sets up before the first exchange: one that fails says so there and every rank stops
        let setup = State::upload(ex, params).and_then(|st| {
            let adam_states = (states.iter())
                .map(|s| ex.adam_state(s))
                .collect::<Result<Vec<_>>>()?;
            if adam_states.len() != st.t.len() {
                return Err(Error::shape(
                    OP,
                    "Adam states",
                    st.t.len(),
                    adam_states.len(),
                ));
            }
            Ok((st, adam_states))
        });
        let (mut st, mut adam_states) = world.agree(setup)?;
        if E::DEFERRED {
            profile.record(Stage::Device, t0.elapsed());
        }
        // the embedding table has its own regulariser and the non-residual fusion weights scale the backbone:
        // neither is decayed; the residual gates learn at `fusion_gate_lr` times the rate (0: frozen)
        let plain = Adam {
            weight_decay: F::zero(),
            ..*adam
        };
        let (rate, residual) = (self.cfg.fusion_gate_lr, self.fusion_kind().1);
        let gates = (rate > 0.0).then(|| Adam {
            lr: adam.lr * F::c(rate),
            ..*adam
        });
        let optimisers: Vec<Option<Adam<F>>> = (0..st.t.len())
            .map(|k| match k {
                0 => Some(plain),
                k if Some(k) == self.layout.fusion => {
                    if residual {
                        gates
                    } else {
                        Some(plain)
                    }
                }
                _ => Some(*adam),
            })
            .collect();
        // one step per batch, or `steps_per_epoch` groups of consecutive batches (gradient accumulation);
        // with several ranks each takes its share of a group's batches, the forward pass in the group's
        // first batch's mode and each batch weighted by the group's size, so that the summed gradient is
        // the one process's; without `steps_per_epoch` a step then groups one batch per rank
        let group = match self.cfg.steps_per_epoch {
            0 => world.size(),
            k => batches.len().div_ceil(k).max(1),
        };
        let mut pending = Vec::with_capacity(batches.len());
        let (mut done, mut failed) = (0, None);
        for steps in batches.chunks(group) {
            let t0 = Profile::start();
            let stages = (!E::DEFERRED).then_some(&mut *profile);
            let mine = &steps[world.share(steps.len())];
            // an optimiser step that failed on this rank is reported at the next exchange
            let stepped = match failed.take() {
                Some(e) => Err(e),
                None if mine.is_empty() => Ok(None),
                None => self
                    .step_on(ex, &st, (steps[0].1, steps.len()), mine, stages, true)
                    .map(|(p, grads)| {
                        pending.extend(p);
                        Some(grads)
                    }),
            };
            let t1 = Profile::start();
            let grads = self.exchange(ex, &st, world, stepped.map_err(explain))?;
            if world.size() > 1 {
                profile.record(Stage::Exchange, t1.elapsed());
            }
            let t1 = Profile::start();
            for (k, ((t, g), s)) in
                st.t.iter_mut()
                    .zip(&grads)
                    .zip(&mut adam_states)
                    .enumerate()
            {
                if let Some(a) = &optimisers[k] {
                    if let Err(e) = ex.adam_step(a, t, g, s) {
                        failed = Some(e);
                        break;
                    }
                }
            }
            if E::DEFERRED {
                profile.record(Stage::Device, t0.elapsed());
            } else {
                profile.record(Stage::Optimizer, t1.elapsed());
            }
            done += steps.len();
            on_batch(done, batches.len());
        }
        let t0 = Profile::start();
        let finished = failed.map_or(Ok(()), Err).and_then(|()| {
            let losses = self.resolve(ex, &pending)?;
            let mut new_params = params.clone();
            download_into(ex, &st.t, &mut new_params)?;
            let new_states = (adam_states.iter())
                .map(|s| ex.adam_state_download(s))
                .collect::<Result<Vec<_>>>()?;
            Ok((losses, new_params, new_states))
        });
        let (losses, new_params, new_states) = world.agree(finished.map_err(explain))?;
        *params = new_params;
        states.clone_from_slice(&new_states);
        if E::DEFERRED {
            profile.record(Stage::Device, t0.elapsed());
        }
        Ok(losses)
    }

    /// Each step's batch losses and (with `with_grads`) the gradient of their mean through one forward
    /// pass (see [`RecGoat::step_on`]), into host values.
    #[allow(clippy::type_complexity)]
    pub(super) fn loss_grad_on<E: Exec<F = F>>(
        &self,
        ex: &E,
        p: &Params<F>,
        steps: &[(Batch, Mode)],
        profile: Option<&mut Profile>,
        with_grads: bool,
    ) -> Result<(Vec<LossParts<F>>, Option<Params<F>>)> {
        let st = State::upload(ex, p)?;
        let mode = steps.first().map_or(Mode::Eval, |s| s.1);
        let (pending, grads) =
            self.step_on(ex, &st, (mode, steps.len()), steps, profile, with_grads)?;
        let losses = self.resolve(ex, &pending)?;
        if !with_grads {
            return Ok((losses, None));
        }
        let mut g = p.zeros_like();
        download_into(ex, &grads, &mut g)?;
        Ok((losses, Some(g)))
    }
}
