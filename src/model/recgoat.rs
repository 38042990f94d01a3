//! [`RecGoat`]: the graphs and inputs built once from a dataset, the forward pass over the full graphs, the
//! batch losses, and the hand-written backward pass of the whole model.

use super::config::{Cmcl, Fusion, Modalities, OtGradient, RecGoatConfig};
use super::params::{add1, add_gat, split_gat, Branch, Params};
use super::profile::{Profile, Stage};
use crate::attention::{GatCache, GatConfig, GatGrads, GatLayer, GatParams, Mode, Scoring};
use crate::backend::Backend;
#[cfg(feature = "gpu")]
use crate::contrastive::multi_view_with;
use crate::contrastive::{
    cmcl_official_pairs, cmcl_paper_pairs, multi_view_info_nce, InfoNceConfig, MultiViewOutput,
    ViewPair,
};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::graph::{bipartite_user_item, knn_graph, lightgcn_backward, lightgcn_forward};
use crate::graph::{CsrGraph, KnnConfig};
use crate::nn::{self, Init, LayerNorm, LayerNormCache, Linear};
use crate::simd::Real;
use crate::transport::{
    sinkhorn_divergence, AdaptiveCache, AdaptiveGrads, AdaptiveTransport, AdaptiveTransportConfig,
    DivergenceOutput, EpsScale, Epsilon, ErrorNorm, ImplicitConfig, PlanGradient, SinkhornConfig,
};
use ndarray::{s, Array1, Array2, ArrayView2, Axis};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

/// LeakyReLU slope after each GAT layer of a branch (RECGOAT.md section 2).
pub(super) const BRANCH_SLOPE: f64 = 0.2;

/// A batch of `(user, positive item, negative item)` triples.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// User ids.
    pub users: Vec<usize>,
    /// Positive item ids (a training interaction of the user).
    pub pos: Vec<usize>,
    /// Negative item ids.
    pub neg: Vec<usize>,
}

impl Batch {
    /// The batch size, after checking that the lists are non-empty, of one length, and in range.
    ///
    /// # Errors
    /// [`Error::Empty`] for an empty batch, [`Error::Shape`] for lists of different lengths,
    /// [`Error::Param`] for an id out of range (`n_users` users, `n_items` items).
    pub(crate) fn check(&self, op: &'static str, n_users: usize, n_items: usize) -> Result<usize> {
        let bsz = self.users.len();
        if bsz == 0 {
            return Err(Error::Empty {
                op,
                what: "batch".into(),
            });
        }
        if self.pos.len() != bsz || self.neg.len() != bsz {
            return Err(Error::shape(
                op,
                "pos / neg lengths vs users",
                bsz,
                (self.pos.len(), self.neg.len()),
            ));
        }
        for (what, ids, n) in [
            ("users", &self.users, n_users),
            ("pos", &self.pos, n_items),
            ("neg", &self.neg, n_items),
        ] {
            if let Some((k, &id)) = ids.iter().enumerate().find(|(_, &id)| id >= n) {
                return Err(Error::param(
                    op,
                    "batch",
                    format!("{what}[{k}] = {id}"),
                    format!("out of range ({n})"),
                ));
            }
        }
        Ok(bsz)
    }

    /// The rows whose user and positive item both appear for the first time, in batch order: no two rows
    /// share a user or a positive item. The contrastive term runs on these rows when
    /// [`RecGoatConfig::cl_distinct_rows`] is set, so that no row's in-batch negatives hold its own user or
    /// its own item (a duplicate would be a false negative, pushing a user away from its own positives).
    ///
    /// # Example
    /// ```
    /// use recgoat_core::model::Batch;
    /// let batch = Batch { users: vec![0, 1, 0, 2, 3], pos: vec![5, 5, 6, 7, 8], neg: vec![1, 2, 3, 4, 0] };
    /// let rows = batch.distinct_rows();
    /// // row 1 repeats item 5, row 2 repeats user 0
    /// assert_eq!(rows, Batch { users: vec![0, 2, 3], pos: vec![5, 7, 8], neg: vec![1, 4, 0] });
    /// ```
    pub fn distinct_rows(&self) -> Batch {
        let mut seen_users = std::collections::HashSet::new();
        let mut seen_items = std::collections::HashSet::new();
        let mut out = Batch::default();
        for ((&u, &p), &n) in self.users.iter().zip(&self.pos).zip(&self.neg) {
            if !seen_users.contains(&u) && !seen_items.contains(&p) {
                seen_users.insert(u);
                seen_items.insert(p);
                out.users.push(u);
                out.pos.push(p);
                out.neg.push(n);
            }
        }
        out
    }
}

/// The terms of the training loss of one batch (`total` is their weighted sum).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LossParts<F> {
    /// Weighted total.
    pub total: F,
    /// BPR.
    pub bpr: F,
    /// Embedding regularisation (already weighted).
    pub reg: F,
    /// Contrastive loss (unweighted).
    pub cl: F,
    /// Sample-level OT loss (unweighted mean over modalities).
    pub ot: F,
}

/// The inputs of one graph-attention branch: node features and the attended kNN graph.
#[derive(Debug, Clone)]
pub(super) struct BranchInput<F> {
    pub(super) name: String,
    /// Index of the branch's graph on the device: the modalities in order, then the user branch.
    #[cfg_attr(not(feature = "gpu"), allow(dead_code))]
    pub(super) slot: usize,
    pub(super) x: Array2<F>,
    pub(super) graph: CsrGraph<F>,
}

/// The reference RecGOAT model bound to a dataset: the normalised user-item graph, the modality features
/// and their kNN graphs are built once here; [`RecGoat::init_params`] draws parameters, and
/// [`RecGoat::forward`] / [`RecGoat::batch_loss`] / [`RecGoat::backward`] compute the loss and its exact
/// gradient for any parameter set.
///
/// # Example
/// ```
/// use recgoat_core::{Backend, attention::Mode, data::Dataset, model::*};
/// // three users, four items, one 3-d feature per item
/// let feats = ndarray::Array2::from_shape_fn((4, 3), |(i, j)| ((i * 3 + j) as f32).sin());
/// let train = vec![(0, 0), (0, 1), (1, 1), (1, 2), (2, 2), (2, 3)];
/// let ds = Dataset::new("toy", train, vec![], vec![(0, 3)], vec![("f".into(), feats)]).unwrap();
/// let mut cfg = RecGoatConfig::paper();
/// (cfg.embedding_dim, cfg.gat_heads, cfg.knn_k) = (4, 2, 2);
/// let model = RecGoat::<f64>::new(cfg, &ds, Backend::default()).unwrap();
/// let params = model.init_params();
/// let batch = Batch { users: vec![0, 1], pos: vec![1, 2], neg: vec![3, 0] };
/// let fwd = model.forward(&params, Mode::Train { seed: 7 }, None).unwrap();
/// let (loss, out_grads) = model.batch_loss(&params, &fwd, &batch, None).unwrap();
/// let grads = model.backward(&params, &fwd, out_grads, None).unwrap();
/// assert!(loss.total.is_finite() && grads.embedding.dim() == (7, 4));
/// ```
#[derive(Debug, Clone)]
pub struct RecGoat<F: Real> {
    pub(super) cfg: RecGoatConfig,
    pub(super) n_users: usize,
    pub(super) n_items: usize,
    pub(super) adj: CsrGraph<F>,
    pub(super) modalities: Vec<BranchInput<F>>,
    pub(super) user_input: Option<BranchInput<F>>,
    pub(super) gat: GatLayer<F>,
    pub(super) oat: Option<AdaptiveTransport<F>>,
    pub(super) sample_ot: SinkhornConfig<F>,
    pub(super) backend: Backend,
    /// The graphs on the device, with [`Backend::Gpu`].
    #[cfg(feature = "gpu")]
    pub(super) device: Option<std::sync::Arc<super::device::DeviceModel>>,
    /// Name and shape of every parameter tensor, in [`Params::tensors`] order.
    pub(super) shapes: Vec<(String, (usize, usize))>,
}

/// Cache of one branch's forward pass.
#[derive(Debug, Clone)]
struct BranchCache<F> {
    layers: Vec<LayerCache<F>>,
    out: Array2<F>,
}

#[derive(Debug, Clone)]
struct LayerCache<F> {
    gat: LayerState<F>,
    pre: Array2<F>,
    mask: Option<Array2<F>>,
}

/// Gradients of a batch's aligned rows and collaborative rows (one modality's sample-level OT term).
pub(super) type RowGrads<F> = (Array2<F>, Array2<F>);

/// An OAT map's forward state: on the host, or on the device (with its plan read back) with the GPU backend.
// one per modality in a forward cache: the variants' size difference costs nothing worth a box
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
enum OatState<F: Real> {
    Cpu(AdaptiveCache<F>),
    #[cfg(feature = "gpu")]
    Gpu {
        state: std::sync::Arc<super::device::DeviceOat>,
        plan: Array2<F>,
    },
}

/// A GAT layer's forward state: on the host, or on the device with the GPU backend.
// one per layer in a forward cache: the variants' size difference costs nothing worth a box
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
enum LayerState<F> {
    Cpu(GatCache<F>),
    #[cfg(feature = "gpu")]
    Gpu(std::sync::Arc<super::device::DeviceGat>),
}

#[derive(Debug, Clone)]
struct FusionCache<F> {
    weights: Array1<F>,
    /// LayerNorm cache and the row norms of the L2 normalisation (`None` without `fusion_normalize`).
    norm: Option<(LayerNormCache<F>, Array1<F>)>,
    mask: Option<Array2<F>>,
}

/// Everything [`RecGoat::forward`] computed: the final user and item vectors (scores are their dot
/// products) and what [`RecGoat::backward`] needs.
#[derive(Debug, Clone)]
pub struct Forward<F: Real> {
    /// Final user vectors, `U x d`.
    pub users: Array2<F>,
    /// Final item vectors (fused and L2-normalised; LightGCN's when ID-only), `I x d`.
    pub items: Array2<F>,
    z: Array2<F>,
    branches: Vec<BranchCache<F>>,
    user_branch: Option<BranchCache<F>>,
    aligned: Vec<Array2<F>>,
    oat: Vec<OatState<F>>,
    fusion: Option<FusionCache<F>>,
}

impl<F: Real> Forward<F> {
    /// The modality embeddings `z^m` (branch outputs), in modality order.
    pub fn modality_embeddings(&self) -> Vec<ArrayView2<'_, F>> {
        self.branches.iter().map(|b| b.out.view()).collect()
    }
    /// The collaborative (LightGCN) item vectors `z^cf`.
    pub fn collaborative_items(&self) -> ArrayView2<'_, F> {
        self.z.slice(s![self.z.nrows() - self.items.nrows().., ..])
    }
    /// The OAT transport plans, one per modality (empty when OAT is off).
    pub fn plans(&self) -> Vec<&Array2<F>> {
        self.oat
            .iter()
            .map(|c| match c {
                OatState::Cpu(c) => c.plan(),
                #[cfg(feature = "gpu")]
                OatState::Gpu { plan, .. } => plan,
            })
            .collect()
    }
}

/// `dLoss/d` of the forward outputs, from [`RecGoat::batch_loss`]; dense, zero where the batch did not reach.
#[derive(Debug, Clone)]
pub struct OutputGrads<F> {
    users: Array2<F>,
    items: Array2<F>,
    z: Array2<F>,
    modal: Vec<Array2<F>>,
    aligned: Vec<Array2<F>>,
    /// The regulariser's gradient on ego-embedding rows: `(row ids, one gradient row per id)`.
    embedding: Vec<(Vec<usize>, Array2<F>)>,
}

fn scatter_add<F: Real>(dst: &mut Array2<F>, ids: &[usize], rows: ArrayView2<'_, F>) {
    for (&id, r) in ids.iter().zip(rows.rows()) {
        dst.row_mut(id).scaled_add(F::one(), &r);
    }
}

/// The fused views in order: the collaborative items, then per modality the OAT output (or, without OAT, the
/// branch output).
fn fusion_views<'a, F: Real>(
    zcf: ArrayView2<'a, F>,
    aligned: &'a [Array2<F>],
    branches: &'a [BranchCache<F>],
) -> Vec<ArrayView2<'a, F>> {
    let mut views = vec![zcf];
    if aligned.is_empty() {
        views.extend(branches.iter().map(|b| b.out.view()));
    } else {
        views.extend(aligned.iter().map(|a| a.view()));
    }
    views
}

fn cast<F: Real>(x: f64) -> F {
    F::c(x)
}

impl<F: Real> RecGoat<F> {
    /// Builds the model's fixed inputs from a dataset: the symmetric-normalised user-item graph of the
    /// training pairs, each modality's features and cosine kNN graph (symmetrised, self loops), and with
    /// `user_user` the user profiles (mean of the features of the user's training items, modalities
    /// concatenated) and their kNN graph.
    ///
    /// # Errors
    /// [`Error::Param`] for an invalid config, a modality the dataset lacks, or `knn_k` not below the node
    /// count; [`Error::Data`] for an invalid dataset; the graph builders' errors.
    pub fn new(cfg: RecGoatConfig, data: &Dataset, backend: Backend) -> Result<Self> {
        const OP: &str = "RecGoat::new";
        cfg.validate()?;
        data.validate(std::path::Path::new("dataset"))?;
        let par = backend.par();
        let (n_users, n_items) = (data.n_users, data.n_items);
        let adj = bipartite_user_item::<F>(n_users, n_items, &data.train)?.sym_normalized()?;
        let selected: Vec<&(String, Array2<f32>)> = match &cfg.modalities {
            Modalities::All => data.item_features.iter().collect(),
            Modalities::Named(names) => names
                .iter()
                .map(|n| {
                    data.item_features
                        .iter()
                        .find(|(k, _)| k == n)
                        .ok_or_else(|| {
                            let have: Vec<&str> =
                                data.item_features.iter().map(|(k, _)| k.as_str()).collect();
                            Error::param(
                                OP,
                                "modalities",
                                n,
                                format!("the dataset has no such feature matrix (it has {have:?})"),
                            )
                        })
                })
                .collect::<Result<_>>()?,
        };
        if matches!(cfg.modalities, Modalities::All) && selected.is_empty() {
            return Err(Error::param(
                OP,
                "modalities",
                "All",
                "the dataset has no item features: use the lightgcn preset",
            ));
        }
        let knn = KnnConfig {
            self_loops: true,
            ..KnnConfig::new(cfg.knn_k)
        };
        let modalities = selected
            .iter()
            .enumerate()
            .map(|(slot, (name, x))| {
                let mut x: Array2<F> = x.mapv(|v| F::c(v as f64));
                if cfg.normalize_features {
                    nn::normalize_nonzero_rows_in_place(&mut x);
                }
                let graph = knn_graph(x.view(), &knn, par)?;
                Ok(BranchInput {
                    name: name.clone(),
                    slot,
                    x,
                    graph,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let user_input = if cfg.user_user {
            if modalities.is_empty() {
                return Err(Error::param(
                    OP,
                    "user_user",
                    true,
                    "user profiles are built from item features: select at least one modality",
                ));
            }
            let width: usize = modalities.iter().map(|m| m.x.ncols()).sum();
            let mut profiles = Array2::<F>::zeros((n_users, width));
            let mut counts = vec![0usize; n_users];
            for &(u, i) in &data.train {
                counts[u] += 1;
                let mut col = 0;
                for m in &modalities {
                    let w = m.x.ncols();
                    profiles
                        .slice_mut(s![u, col..col + w])
                        .scaled_add(F::one(), &m.x.row(i));
                    col += w;
                }
            }
            for (mut r, &c) in profiles.rows_mut().into_iter().zip(&counts) {
                r.mapv_inplace(|v| v / F::from_usize(c.max(1)).expect("count fits"));
            }
            let graph = knn_graph(profiles.view(), &knn, par)?;
            Some(BranchInput {
                name: "users".into(),
                slot: modalities.len(),
                x: profiles,
                graph,
            })
        } else {
            None
        };
        let d = cfg.embedding_dim;
        let mut gat_cfg = GatConfig::new(d, d, cfg.gat_heads.max(1))?;
        gat_cfg.scoring = if cfg.gatv2 {
            Scoring::GatV2
        } else {
            Scoring::GatConv
        };
        gat_cfg.feat_drop = cast(cfg.dropout);
        gat_cfg.attn_drop = cast(cfg.dropout);
        let gat = GatLayer::new(gat_cfg)?;
        let oat = if cfg.oat {
            let eps = match cfg.oat_eps_relative {
                Some(r) => Epsilon::relative(EpsScale::Mean, cast(r)),
                None => Epsilon::Absolute(cast(cfg.oat_eps_absolute)),
            };
            let gradient = match cfg.oat_gradient {
                OtGradient::Detached => PlanGradient::Detached,
                OtGradient::Implicit => PlanGradient::Implicit(ImplicitConfig::default()),
                OtGradient::Unrolled(iters) => PlanGradient::Unrolled { iters },
            };
            let base = AdaptiveTransportConfig::<F>::default();
            Some(AdaptiveTransport::new(AdaptiveTransportConfig {
                cost_scale: cast(cfg.oat_cost_scale),
                sinkhorn: SinkhornConfig {
                    eps,
                    max_iter: cfg.oat_iters,
                    tol: cast(cfg.oat_tol),
                    ..base.sinkhorn
                },
                barycentric: cfg.oat_barycentric,
                gradient,
            })?)
        } else {
            None
        };
        let sample_ot = SinkhornConfig::new(Epsilon::Absolute(cast(cfg.ot_sample_eps)))
            .with_tol(cast(cfg.ot_sample_tol), ErrorNorm::L1)
            .with_iters(1000, 10);
        let mut model = RecGoat {
            cfg,
            n_users,
            n_items,
            adj,
            modalities,
            user_input,
            gat,
            oat,
            sample_ot,
            backend,
            #[cfg(feature = "gpu")]
            device: None,
            shapes: Vec::new(),
        };
        model.attach_device()?;
        model.shapes = model
            .init_params()
            .tensors()
            .iter()
            .map(|(n, t)| (n.clone(), t.dim()))
            .collect();
        Ok(model)
    }

    /// With [`Backend::Gpu`], uploads the user-item graph and the attended graphs (the model must be
    /// `RecGoat<f32>`); without the `gpu` feature a GPU backend cannot exist, so this is a no-op.
    fn attach_device(&mut self) -> Result<()> {
        #[cfg(feature = "gpu")]
        if let Backend::Gpu(gb) = &self.backend {
            let graphs: Vec<&CsrGraph<F>> = self
                .modalities
                .iter()
                .chain(&self.user_input)
                .map(|b| &b.graph)
                .collect();
            let features: Vec<&Array2<F>> = self
                .modalities
                .iter()
                .chain(&self.user_input)
                .map(|b| &b.x)
                .collect();
            let dm = super::device::DeviceModel::new(gb, &self.adj, &self.gat, &graphs, &features)?;
            self.device = Some(std::sync::Arc::new(dm));
        }
        Ok(())
    }

    /// LightGCN over the user-item graph, or (`backward`) its gradient, on the model's backend.
    fn propagate(&self, x: ArrayView2<'_, F>, backward: bool) -> Result<Array2<F>> {
        let layers = self.cfg.lightgcn_layers;
        #[cfg(feature = "gpu")]
        if let Some(dm) = &self.device {
            return dm.propagate(x, layers, backward);
        }
        let par = self.backend.par();
        if backward {
            lightgcn_backward(&self.adj, x, layers, par)
        } else {
            lightgcn_forward(&self.adj, x, layers, par)
        }
    }

    /// One GAT layer of a branch on the model's backend.
    fn gat_forward(
        &self,
        gp: &GatParams<F>,
        input: &BranchInput<F>,
        h: ArrayView2<'_, F>,
        mode: Mode,
    ) -> Result<(Array2<F>, LayerState<F>)> {
        #[cfg(feature = "gpu")]
        if let Some(dm) = &self.device {
            let (out, state) = dm.gat_forward(input.slot, &self.gat, gp, h, mode)?;
            return Ok((out, LayerState::Gpu(std::sync::Arc::new(state))));
        }
        let (out, cache) = self
            .gat
            .forward(gp, &input.graph, h, mode, self.backend.par())?;
        Ok((out, LayerState::Cpu(cache)))
    }

    /// The backward pass of [`RecGoat::gat_forward`].
    fn gat_backward(
        &self,
        gp: &GatParams<F>,
        input: &BranchInput<F>,
        state: &LayerState<F>,
        grad_out: ArrayView2<'_, F>,
    ) -> Result<GatGrads<F>> {
        match state {
            LayerState::Cpu(cache) => {
                self.gat
                    .backward(gp, &input.graph, cache, grad_out, self.backend.par())
            }
            #[cfg(feature = "gpu")]
            LayerState::Gpu(state) => {
                let dm = self
                    .device
                    .as_ref()
                    .expect("a device state comes from a model on the device");
                dm.gat_backward(input.slot, &self.gat, gp, state, grad_out)
            }
        }
    }

    /// One OAT map on the model's backend.
    fn oat_forward(
        &self,
        op: &AdaptiveTransport<F>,
        m: ArrayView2<'_, F>,
        z: ArrayView2<'_, F>,
        delta: ArrayView2<'_, F>,
    ) -> Result<(Array2<F>, OatState<F>)> {
        #[cfg(feature = "gpu")]
        if let Some(dm) = &self.device {
            let (aligned, plan, state) = dm.oat_forward(op, m, z, delta)?;
            let state = std::sync::Arc::new(state);
            return Ok((aligned, OatState::Gpu { state, plan }));
        }
        let (aligned, cache) = op.forward(m, z, delta, &self.backend)?;
        Ok((aligned, OatState::Cpu(cache)))
    }

    /// The backward pass of [`RecGoat::oat_forward`] for `grad_out = dL/d aligned`.
    fn oat_backward(
        &self,
        op: &AdaptiveTransport<F>,
        state: &OatState<F>,
        grad_out: ArrayView2<'_, F>,
    ) -> Result<AdaptiveGrads<F>> {
        match state {
            OatState::Cpu(cache) => op.backward(cache, Some(grad_out), F::zero()),
            #[cfg(feature = "gpu")]
            OatState::Gpu { state, .. } => self
                .device
                .as_ref()
                .expect("a device state comes from a model on the device")
                .oat_backward(op, state, grad_out),
        }
    }

    /// The contrastive loss over views on the model's backend.
    fn multi_view_info_nce(
        &self,
        views: &[ArrayView2<'_, F>],
        pairs: &[ViewPair<F>],
        cfg: &InfoNceConfig<F>,
    ) -> Result<MultiViewOutput<F>> {
        #[cfg(feature = "gpu")]
        if let Some(dm) = &self.device {
            return multi_view_with(views, pairs, |a, b| dm.info_nce(a, b, cfg));
        }
        multi_view_info_nce(views, pairs, cfg, self.backend.par())
    }

    /// The configuration.
    pub fn config(&self) -> &RecGoatConfig {
        &self.cfg
    }
    /// Users and items.
    pub fn shape(&self) -> (usize, usize) {
        (self.n_users, self.n_items)
    }
    /// The modality names and feature widths, in order.
    pub fn modalities(&self) -> Vec<(String, usize)> {
        self.modalities
            .iter()
            .map(|m| (m.name.clone(), m.x.ncols()))
            .collect()
    }
    /// The backend every op runs on.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }
    /// The kNN graph of each modality (with self loops), in order.
    pub fn item_graphs(&self) -> Vec<&CsrGraph<F>> {
        self.modalities.iter().map(|m| &m.graph).collect()
    }

    pub(super) fn id_only(&self) -> bool {
        self.modalities.is_empty()
    }

    /// The rows of `batch` the contrastive term runs on when they are not all of them: its
    /// [`Batch::distinct_rows`] with [`RecGoatConfig::cl_distinct_rows`], `None` otherwise.
    pub(super) fn contrastive_subset(&self, batch: &Batch) -> Option<Batch> {
        self.cfg.cl_distinct_rows.then(|| batch.distinct_rows())
    }

    /// Fresh parameters from `cfg.seed`: `E^0 ~ N(0, 0.1^2)`, Xavier-uniform projections and `Delta`,
    /// GAT parameters as [`GatParams::init`], fusion weights with the collaborative view at
    /// `fusion_cf_init` and the modalities sharing the rest, LayerNorm at identity.
    pub fn init_params(&self) -> Params<F> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.cfg.seed);
        let d = self.cfg.embedding_dim;
        let normal = Normal::new(0.0, 0.1).expect("positive std");
        let embedding = Array2::from_shape_simple_fn((self.n_users + self.n_items, d), || {
            F::c(normal.sample(&mut rng))
        });
        let mut branch = |input: &BranchInput<F>| Branch {
            proj: Linear::new(input.x.ncols(), d, true, Init::XavierUniform, &mut rng),
            gat: (0..self.cfg.gat_layers)
                .map(|_| GatParams::init(self.gat.config(), &mut rng))
                .collect(),
        };
        let branches: Vec<Branch<F>> = self.modalities.iter().map(&mut branch).collect();
        let user_branch = self.user_input.as_ref().map(&mut branch);
        let m = self.modalities.len();
        let deltas = if self.oat.is_some() {
            (0..m)
                .map(|_| Init::XavierUniform.sample(d, d, &mut rng))
                .collect()
        } else {
            Vec::new()
        };
        let cf = self.cfg.fusion_cf_init.unwrap_or(match self.cfg.fusion {
            Fusion::Softmax => 1.0 / (m + 1) as f64,
            Fusion::Free => 0.15,
        });
        let rest = (1.0 - cf) / m.max(1) as f64;
        let fusion = (!self.id_only()).then(|| match self.cfg.fusion {
            // logits whose softmax is (cf, rest, ..., rest)
            Fusion::Softmax => {
                let mut w = Array1::from_elem(m + 1, F::c(rest.ln()));
                w[0] = F::c(cf.ln());
                w
            }
            Fusion::Free => {
                let mut w = Array1::from_elem(m + 1, F::c(rest));
                w[0] = F::c(cf);
                w
            }
        });
        Params {
            embedding,
            branches,
            user_branch,
            deltas,
            fusion,
            norm: (!self.id_only() && self.cfg.fusion_normalize).then(|| LayerNorm::new(d)),
        }
    }

    /// Checks that `params` has this model's structure and shapes.
    ///
    /// # Errors
    /// [`Error::Shape`] naming the first tensor that differs from [`RecGoat::init_params`].
    pub fn check_params(&self, params: &Params<F>) -> Result<()> {
        const OP: &str = "RecGoat::check_params";
        let have = params.tensors();
        if have.len() != self.shapes.len() {
            return Err(Error::shape(
                OP,
                "tensor count",
                self.shapes.len(),
                have.len(),
            ));
        }
        for (k, ((n, dim), (m, t))) in self.shapes.iter().zip(&have).enumerate() {
            if n != m || *dim != t.dim() {
                return Err(Error::shape(
                    OP,
                    format!("tensor #{k} ({n})"),
                    (n.clone(), *dim),
                    (m.clone(), t.dim()),
                ));
            }
        }
        Ok(())
    }

    pub(super) fn derived(mode: Mode, salt: u64) -> Mode {
        match mode {
            Mode::Train { seed } => Mode::Train {
                seed: seed
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    .wrapping_add(salt.wrapping_mul(0xBF58_476D_1CE4_E5B9)),
            },
            Mode::Eval => Mode::Eval,
        }
    }

    fn dropout(
        &self,
        x: Array2<F>,
        mode: Mode,
        salt: u64,
    ) -> Result<(Array2<F>, Option<Array2<F>>)> {
        match Self::derived(mode, salt) {
            Mode::Train { seed } => nn::dropout(
                x.view(),
                cast(self.cfg.dropout),
                true,
                &mut ChaCha8Rng::seed_from_u64(seed),
            ),
            Mode::Eval => Ok((x, None)),
        }
    }

    fn branch_forward(
        &self,
        p: &Branch<F>,
        input: &BranchInput<F>,
        mode: Mode,
        salt: u64,
    ) -> Result<BranchCache<F>> {
        let mut h = p.proj.forward(input.x.view())?;
        let mut layers = Vec::with_capacity(p.gat.len());
        for (l, gp) in p.gat.iter().enumerate() {
            let salt = salt * 64 + l as u64;
            let (pre, gat) =
                self.gat_forward(gp, input, h.view(), Self::derived(mode, 2 * salt))?;
            let act = nn::leaky_relu(pre.view(), cast(BRANCH_SLOPE));
            let (out, mask) = self.dropout(act, mode, 2 * salt + 1)?;
            h = out;
            layers.push(LayerCache { gat, pre, mask });
        }
        Ok(BranchCache { layers, out: h })
    }

    fn branch_backward(
        &self,
        p: &Branch<F>,
        input: &BranchInput<F>,
        cache: &BranchCache<F>,
        mut g: Array2<F>,
        grads: &mut Branch<F>,
    ) -> Result<()> {
        for ((gp, lc), gg) in p
            .gat
            .iter()
            .zip(&cache.layers)
            .zip(grads.gat.iter_mut())
            .rev()
        {
            let gd = nn::dropout_backward(g.view(), lc.mask.as_ref());
            let gl = nn::leaky_relu_backward(lc.pre.view(), gd.view(), cast(BRANCH_SLOPE))?;
            let (gx, gp_grads) = split_gat(self.gat_backward(gp, input, &lc.gat, gl.view())?);
            add_gat(gg, gp_grads);
            g = gx;
        }
        let lin = p.proj.backward(input.x.view(), g.view())?;
        grads.proj.w += &lin.grad_w;
        add1(&mut grads.proj.b, lin.grad_b);
        Ok(())
    }

    /// The forward pass over the full graphs: LightGCN, each modality branch, OAT, fusion, and the user-user
    /// branch. `mode` switches dropout (its masks come from the seed). `profile`, when given, accumulates
    /// the time of each stage.
    ///
    /// # Errors
    /// [`Error::Shape`] for parameters that do not fit the model, and the errors of the ops (NaN/Inf values,
    /// a Sinkhorn solve that fails).
    pub fn forward(
        &self,
        p: &Params<F>,
        mode: Mode,
        mut profile: Option<&mut Profile>,
    ) -> Result<Forward<F>> {
        self.check_params(p)?;
        let nu = self.n_users;
        let t = Profile::start();
        let z = self.propagate(p.embedding.view(), false)?;
        Profile::add(&mut profile, Stage::Propagation, t);

        let t = Profile::start();
        let branches = self
            .modalities
            .iter()
            .zip(&p.branches)
            .enumerate()
            .map(|(m, (input, bp))| self.branch_forward(bp, input, mode, 1 + m as u64))
            .collect::<Result<Vec<_>>>()?;
        let user_branch = match (&self.user_input, &p.user_branch) {
            (Some(input), Some(bp)) => Some(self.branch_forward(bp, input, mode, 1000)?),
            _ => None,
        };
        Profile::add(&mut profile, Stage::Gat, t);

        let mut users = z.slice(s![..nu, ..]).to_owned();
        if let Some(ub) = &user_branch {
            users += &ub.out;
        }
        let zcf = z.slice(s![nu.., ..]);
        let t = Profile::start();
        let mut aligned = Vec::new();
        let mut oat = Vec::new();
        if let Some(op) = &self.oat {
            for (b, delta) in branches.iter().zip(&p.deltas) {
                let (a, c) = self.oat_forward(op, b.out.view(), zcf, delta.view())?;
                aligned.push(a);
                oat.push(c);
            }
        }
        Profile::add(&mut profile, Stage::Transport, t);

        let t = Profile::start();
        let (items, fusion) = if self.id_only() {
            (zcf.to_owned(), None)
        } else {
            let (items, cache) = self.fuse(p, fusion_views(zcf, &aligned, &branches), mode)?;
            (items, Some(cache))
        };
        Profile::add(&mut profile, Stage::Fusion, t);
        Ok(Forward {
            users,
            items,
            z,
            branches,
            user_branch,
            aligned,
            oat,
            fusion,
        })
    }

    /// Weighted sum of the views, then (with `fusion_normalize`) LayerNorm, dropout and L2 normalisation.
    fn fuse(
        &self,
        p: &Params<F>,
        views: Vec<ArrayView2<'_, F>>,
        mode: Mode,
    ) -> Result<(Array2<F>, FusionCache<F>)> {
        let logits = p
            .fusion
            .as_ref()
            .expect("fusion weights exist with modalities");
        let (fused, weights) = match self.cfg.fusion {
            Fusion::Softmax => nn::softmax_fusion(&views, logits.view())?,
            Fusion::Free => {
                let mut y = Array2::zeros(views[0].dim());
                for (v, &w) in views.iter().zip(logits) {
                    y.scaled_add(w, v);
                }
                (y, logits.clone())
            }
        };
        let (items, mask, norm) = match &p.norm {
            Some(ln) => {
                let (normed, norm_cache) = ln.forward(fused.view())?;
                let (dropped, mask) = self.dropout(normed, mode, 2000)?;
                let (items, norms) = nn::l2_normalize(dropped.view())?;
                (items, mask, Some((norm_cache, norms)))
            }
            None => {
                let (items, mask) = self.dropout(fused, mode, 2000)?;
                (items, mask, None)
            }
        };
        Ok((
            items,
            FusionCache {
                weights,
                norm,
                mask,
            },
        ))
    }

    /// The loss of one batch on a forward pass, and its gradient with respect to the forward outputs:
    /// BPR on `z_u . z_i`, the regulariser on the batch's ego embeddings, the contrastive term and the
    /// sample-level OT term as configured.
    ///
    /// # Errors
    /// [`Error::Empty`] for an empty batch, [`Error::Shape`] for lists of different lengths,
    /// [`Error::Param`] for an id out of range, and the losses' errors.
    pub fn batch_loss(
        &self,
        p: &Params<F>,
        fwd: &Forward<F>,
        batch: &Batch,
        mut profile: Option<&mut Profile>,
    ) -> Result<(LossParts<F>, OutputGrads<F>)> {
        let (nu, ni) = (self.n_users, self.n_items);
        batch.check("RecGoat::batch_loss", nu, ni)?;
        let d = self.cfg.embedding_dim;
        let t = Profile::start();
        let mut og = OutputGrads {
            users: Array2::zeros((nu, d)),
            items: Array2::zeros((ni, d)),
            z: Array2::zeros((nu + ni, d)),
            modal: fwd
                .branches
                .iter()
                .map(|_| Array2::zeros((ni, d)))
                .collect(),
            aligned: fwd.aligned.iter().map(|_| Array2::zeros((ni, d))).collect(),
            embedding: Vec::new(),
        };
        let u = nn::gather(fwd.users.view(), &batch.users)?;
        let ip = nn::gather(fwd.items.view(), &batch.pos)?;
        let ineg = nn::gather(fwd.items.view(), &batch.neg)?;
        let sp = (&u * &ip).sum_axis(Axis(1));
        let sn = (&u * &ineg).sum_axis(Axis(1));
        let (bpr, gp, gn) = nn::bpr_loss(sp.view(), sn.view())?;
        let gpc = gp.view().insert_axis(Axis(1));
        let gnc = gn.view().insert_axis(Axis(1));
        scatter_add(
            &mut og.users,
            &batch.users,
            (&ip * &gpc + &ineg * &gnc).view(),
        );
        scatter_add(&mut og.items, &batch.pos, (&u * &gpc).view());
        scatter_add(&mut og.items, &batch.neg, (&u * &gnc).view());

        let shifted = |ids: &[usize]| ids.iter().map(|&i| nu + i).collect::<Vec<_>>();
        let (pos_rows, neg_rows) = (shifted(&batch.pos), shifted(&batch.neg));
        let e_u = nn::gather(p.embedding.view(), &batch.users)?;
        let e_p = nn::gather(p.embedding.view(), &pos_rows)?;
        let e_n = nn::gather(p.embedding.view(), &neg_rows)?;
        let (reg, rg) = nn::l2_regularization(
            &[e_u.view(), e_p.view(), e_n.view()],
            cast(self.cfg.reg_weight),
        );
        og.embedding = [batch.users.clone(), pos_rows.clone(), neg_rows.clone()]
            .into_iter()
            .zip(rg)
            .collect();
        Profile::add(&mut profile, Stage::Loss, t);

        let mut cl = F::zero();
        let clw: F = cast(self.cfg.cl_weight);
        if clw > F::zero() {
            let t = Profile::start();
            let cfg = InfoNceConfig {
                temperature: cast(self.cfg.cl_temperature),
                ..InfoNceConfig::default()
            };
            let zcf = fwd.collaborative_items();
            let subset = self.contrastive_subset(batch);
            let (batch, mut views) = match &subset {
                Some(rows) => {
                    let u = nn::gather(fwd.users.view(), &rows.users)?;
                    (rows, vec![u, nn::gather(fwd.items.view(), &rows.pos)?])
                }
                None => (batch, vec![u.clone(), ip.clone()]),
            };
            // where each view's gradient goes: 0 users, 1 fused items, 2 collaborative items, 3 + m modality m
            let mut targets: Vec<(usize, &[usize])> = vec![(0, &batch.users), (1, &batch.pos)];
            let pairs = match self.cfg.cmcl {
                Cmcl::Paper => {
                    for (m, b) in fwd.branches.iter().enumerate() {
                        views.push(nn::gather(b.out.view(), &batch.pos)?);
                        targets.push((3 + m, &batch.pos));
                    }
                    cmcl_paper_pairs(fwd.branches.len())
                }
                Cmcl::OfficialCode => {
                    for ids in [&batch.pos, &batch.neg] {
                        views.push(nn::gather(zcf, ids)?);
                        targets.push((2, ids));
                        for (m, b) in fwd.branches.iter().enumerate() {
                            views.push(nn::gather(b.out.view(), ids)?);
                            targets.push((3 + m, ids));
                        }
                    }
                    cmcl_official_pairs(1 + fwd.branches.len())
                }
            };
            let vv: Vec<ArrayView2<'_, F>> = views.iter().map(|v| v.view()).collect();
            let out = self.multi_view_info_nce(&vv, &pairs, &cfg)?;
            cl = out.loss;
            for ((target, ids), g) in targets.into_iter().zip(out.grads) {
                let g = g * clw;
                match target {
                    0 => scatter_add(&mut og.users, ids, g.view()),
                    1 => scatter_add(&mut og.items, ids, g.view()),
                    2 => {
                        let rows = shifted(ids);
                        scatter_add(&mut og.z, &rows, g.view());
                    }
                    m => scatter_add(&mut og.modal[m - 3], ids, g.view()),
                }
            }
            Profile::add(&mut profile, Stage::Contrastive, t);
        }

        let mut ot = F::zero();
        let otw: F = cast(self.cfg.ot_sample_weight);
        if otw > F::zero() && !fwd.aligned.is_empty() {
            let t = Profile::start();
            let zc = nn::gather(fwd.collaborative_items(), &batch.pos)?;
            let rows = fwd
                .aligned
                .iter()
                .map(|a| nn::gather(a.view(), &batch.pos))
                .collect::<Result<Vec<_>>>()?;
            let (value, grads) = self.sample_ot_loss(&rows, zc.view())?;
            ot = value;
            for (m, (gx, gy)) in grads.iter().enumerate() {
                scatter_add(&mut og.aligned[m], &batch.pos, gx.view());
                scatter_add(&mut og.z, &pos_rows, gy.view());
            }
            Profile::add(&mut profile, Stage::Transport, t);
        }
        let total = bpr + reg + clw * cl + otw * ot;
        Ok((
            LossParts {
                total,
                bpr,
                reg,
                cl,
                ot,
            },
            og,
        ))
    }

    /// The debiased Sinkhorn divergence of the sample-level OT loss (uniform weights `w` on both sides) on the
    /// model's backend.
    fn divergence(
        &self,
        x: ArrayView2<'_, F>,
        y: ArrayView2<'_, F>,
        w: ndarray::ArrayView1<'_, F>,
    ) -> Result<DivergenceOutput<F>> {
        sinkhorn_divergence(x, y, w, w, &self.sample_ot, &self.backend)
    }

    /// The sample-level OT loss of a batch: the mean over modalities of the debiased Sinkhorn divergence
    /// between the L2-normalised aligned rows (`rows[m]`, `B x d`) and the normalised collaborative rows
    /// `zc`, and per modality the gradients (already weighted by `ot_sample_weight`) of the aligned and the
    /// collaborative rows.
    pub(super) fn sample_ot_loss(
        &self,
        rows: &[Array2<F>],
        zc: ArrayView2<'_, F>,
    ) -> Result<(F, Vec<RowGrads<F>>)> {
        let bsz = zc.nrows();
        let otw: F = cast(self.cfg.ot_sample_weight);
        let m_count = F::from_usize(rows.len()).expect("count fits");
        let (yc, yn) = nn::l2_normalize(zc)?;
        let w = Array1::from_elem(bsz, F::one() / F::from_usize(bsz).expect("batch fits"));
        let mut ot = F::zero();
        let mut grads = Vec::with_capacity(rows.len());
        for xa in rows {
            let (xn, xnorms) = nn::l2_normalize(xa.view())?;
            let div = self.divergence(xn.view(), yc.view(), w.view())?;
            ot += div.value / m_count;
            let scale = otw / m_count;
            let gx =
                nn::l2_normalize_backward(xn.view(), xnorms.view(), (div.grad_x * scale).view())?;
            let gy = nn::l2_normalize_backward(yc.view(), yn.view(), (div.grad_y * scale).view())?;
            grads.push((gx, gy));
        }
        Ok((ot, grads))
    }

    /// Gradients of the batch loss with respect to every parameter, from the forward pass and the output
    /// gradients of [`RecGoat::batch_loss`].
    ///
    /// # Errors
    /// As the ops' backward passes (for example a non-converged implicit OT solve).
    pub fn backward(
        &self,
        p: &Params<F>,
        fwd: &Forward<F>,
        og: OutputGrads<F>,
        mut profile: Option<&mut Profile>,
    ) -> Result<Params<F>> {
        let nu = self.n_users;
        let mut grads = p.zeros_like();
        let OutputGrads {
            users: g_users,
            items: g_items,
            mut z,
            mut modal,
            mut aligned,
            embedding,
        } = og;
        let t = Profile::start();
        if let (Some(input), Some(bp), Some(cache), Some(gb)) = (
            &self.user_input,
            &p.user_branch,
            &fwd.user_branch,
            grads.user_branch.as_mut(),
        ) {
            self.branch_backward(bp, input, cache, g_users.clone(), gb)?;
        }
        Profile::add(&mut profile, Stage::Gat, t);
        z.slice_mut(s![..nu, ..]).scaled_add(F::one(), &g_users);

        if let Some(fc) = &fwd.fusion {
            let t = Profile::start();
            let g = match (&fc.norm, p.norm.as_ref(), grads.norm.as_mut()) {
                (Some((ln_cache, norms)), Some(ln), Some(gn)) => {
                    let g =
                        nn::l2_normalize_backward(fwd.items.view(), norms.view(), g_items.view())?;
                    let g = nn::dropout_backward(g.view(), fc.mask.as_ref());
                    let (g, g_gamma, g_beta) = ln.backward(ln_cache, g.view())?;
                    gn.gamma += &g_gamma;
                    gn.beta += &g_beta;
                    g
                }
                _ => nn::dropout_backward(g_items.view(), fc.mask.as_ref()),
            };
            let zcf = fwd.collaborative_items();
            let views = fusion_views(zcf, &fwd.aligned, &fwd.branches);
            let (g_views, g_w) = match self.cfg.fusion {
                Fusion::Softmax => {
                    nn::softmax_fusion_backward(&views, fc.weights.view(), g.view())?
                }
                Fusion::Free => (
                    fc.weights.iter().map(|&w| &g * w).collect(),
                    views.iter().map(|v| (v * &g).sum()).collect(),
                ),
            };
            *grads.fusion.as_mut().expect("fusion weights exist") += &g_w;
            let mut g_views = g_views.into_iter();
            z.slice_mut(s![nu.., ..])
                .scaled_add(F::one(), &g_views.next().expect("collaborative view"));
            for (m, gv) in g_views.enumerate() {
                if self.oat.is_some() {
                    aligned[m] += &gv;
                } else {
                    modal[m] += &gv;
                }
            }
            Profile::add(&mut profile, Stage::Fusion, t);
        } else {
            z.slice_mut(s![nu.., ..]).scaled_add(F::one(), &g_items);
        }

        if let Some(op) = &self.oat {
            let t = Profile::start();
            for (m, cache) in fwd.oat.iter().enumerate() {
                let ag = self.oat_backward(op, cache, aligned[m].view())?;
                modal[m] += &ag.grad_m;
                z.slice_mut(s![nu.., ..]).scaled_add(F::one(), &ag.grad_z);
                grads.deltas[m] += &ag.grad_delta;
            }
            Profile::add(&mut profile, Stage::Transport, t);
        }

        let t = Profile::start();
        for (m, g) in modal.into_iter().enumerate() {
            self.branch_backward(
                &p.branches[m],
                &self.modalities[m],
                &fwd.branches[m],
                g,
                &mut grads.branches[m],
            )?;
        }
        Profile::add(&mut profile, Stage::Gat, t);

        let t = Profile::start();
        let mut ge = self.propagate(z.view(), true)?;
        for (ids, g) in &embedding {
            scatter_add(&mut ge, ids, g.view());
        }
        grads.embedding = ge;
        Profile::add(&mut profile, Stage::Propagation, t);
        Ok(grads)
    }

    /// Loss and gradient of one batch in one call: [`RecGoat::forward`], [`RecGoat::batch_loss`],
    /// [`RecGoat::backward`].
    ///
    /// # Errors
    /// As those three.
    pub fn loss_and_grad(
        &self,
        p: &Params<F>,
        batch: &Batch,
        mode: Mode,
        mut profile: Option<&mut Profile>,
    ) -> Result<(LossParts<F>, Params<F>)> {
        let fwd = self.forward(p, mode, profile.as_deref_mut())?;
        let (loss, og) = self.batch_loss(p, &fwd, batch, profile.as_deref_mut())?;
        let grads = self.backward(p, &fwd, og, profile)?;
        Ok((loss, grads))
    }

    /// The loss alone (for gradient checks and monitoring).
    ///
    /// # Errors
    /// As [`RecGoat::loss_and_grad`].
    pub fn loss(&self, p: &Params<F>, batch: &Batch, mode: Mode) -> Result<LossParts<F>> {
        let fwd = self.forward(p, mode, None)?;
        Ok(self.batch_loss(p, &fwd, batch, None)?.0)
    }
}
