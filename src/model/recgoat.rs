//! [`RecGoat`]: the graphs and inputs built once from a dataset, the forward pass over the full graphs, the
//! batch losses, and the hand-written backward pass of the whole model.

use super::config::{Cmcl, Fusion, Modalities, OtGradient, RecGoatConfig};
use super::params::{Branch, Params};
use super::profile::Profile;
use super::ridge::{to_f32, unit_rows, ContentFit, Ridge};
use super::step::{Layout, State, TrainPass};
use super::taste::Taste;
use crate::attention::{GatConfig, GatLayer, GatParams, Mode, Scoring};
use crate::backend::Backend;
use crate::data::{Batch, Dataset};
use crate::error::{Error, Result};
use crate::exec::cpu::CpuExec;
use crate::exec::{Exec, Inputs};
use crate::graph::{bipartite_user_item, knn_graph, multi_view_knn_graph};
use crate::graph::{CsrGraph, KnnConfig};
use crate::nn::{self, Init, LayerNorm, Linear};
use crate::recommend::{ContentEncoder, Neighbours};
use crate::simd::Real;
use crate::transport::{
    sinkhorn_divergence, AdaptiveTransport, AdaptiveTransportConfig, EpsScale, Epsilon, ErrorNorm,
    ImplicitConfig, PlanGradient, SinkhornConfig,
};
use ndarray::{Array1, Array2, ArrayView2, Axis};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

/// LeakyReLU slope after each GAT layer of a branch (RECGOAT.md section 2).
pub(super) const BRANCH_SLOPE: f64 = 0.2;

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
    /// Content term (unweighted): the mean squared distance of the modality encoders' outputs to the items'
    /// final vectors.
    pub content: F,
}

/// The inputs of one graph-attention branch: node features and the attended kNN graph.
#[derive(Debug, Clone)]
pub(super) struct BranchInput<F> {
    pub(super) name: String,
    pub(super) x: Array2<F>,
    pub(super) graph: CsrGraph<F>,
}

/// The reference RecGOAT model bound to a dataset: the normalised user-item graph, the modality features
/// and their kNN graphs are built once here; [`RecGoat::init_params`] draws parameters, and
/// [`RecGoat::forward`] and [`RecGoat::loss_and_grad`] compute the outputs, the loss and its exact gradient
/// for any parameter set, on the model's backend.
///
/// # Example
/// ```
/// use recgoat_core::{Backend, attention::Mode, data::Dataset, model::*};
/// // three users, four items, one 3-d feature per item
/// let feats = ndarray::Array2::from_shape_fn((4, 3), |(i, j)| ((i * 3 + j) as f32).sin());
/// let train = vec![(0, 0), (0, 1), (1, 1), (1, 2), (2, 2), (2, 3)];
/// let ds = Dataset::new("toy", train, vec![], vec![(0, 3)], vec![("f".into(), feats)]).unwrap();
/// let mut cfg = RecGoatConfig::recgoat();
/// (cfg.embedding_dim, cfg.gat_heads, cfg.knn_k) = (4, 2, 2);
/// let model = RecGoat::<f64>::new(cfg, &ds, Backend::default()).unwrap();
/// let params = model.init_params();
/// let batch = Batch { users: vec![0, 1], pos: vec![1, 2], neg: vec![3, 0] };
/// let fwd = model.forward(&params, Mode::Eval, None).unwrap();
/// assert_eq!((fwd.users.dim(), fwd.items.dim()), ((3, 4), (4, 4)));
/// let (loss, grads) = model.loss_and_grad(&params, &batch, Mode::Train { seed: 7 }, None).unwrap();
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
    /// The frozen modality item-item graph of the item-graph view.
    pub(super) item_graph: Option<CsrGraph<F>>,
    pub(super) gat: GatLayer<F>,
    pub(super) oat: Option<AdaptiveTransport<F>>,
    pub(super) sample_ot: SinkhornConfig<F>,
    pub(super) backend: Backend,
    /// The inputs on the device, with [`Backend::Gpu`].
    device: crate::exec::Device,
    /// Name and shape of every parameter tensor, in [`Params::tensors`] order.
    pub(super) shapes: Vec<(String, (usize, usize))>,
    /// Which of those tensors is which parameter.
    pub(super) layout: Layout,
    /// Items without training interactions: scored through the content encoders when the model has them.
    pub(super) cold: Vec<bool>,
    /// Warm items held out of the content term, ascending: the trusts are fitted on them.
    pub(super) probe: Vec<usize>,
    /// Whether an item is a probe item.
    pub(super) is_probe: Vec<bool>,
    /// Per modality, whether each item's feature row is all zero: the item lacks the modality.
    missing: Vec<Vec<bool>>,
    /// Per modality, whether some item has it (a feature row that is not all zero).
    present: Vec<bool>,
    /// Whether some item lacks some modality (a placeholder modality included).
    some_lack: bool,
    /// Whether an item lacks some modality that other items have: the batch terms that read every
    /// modality's rows (the modality contrastive terms, the content term) leave it out.
    pub(super) incomplete: Vec<bool>,
    /// The scale of the cold items' content vectors (1: as the trusts fit them).
    pub(super) cold_scale: f64,
    /// The modalities' trusts as last fitted, weighing their contrastive terms with `cl_modality_trust`.
    pub(super) modality_trust: Vec<f64>,
    /// Per modality its closed-form content encoder (`content_ridge`), or `None`: the trained one.
    ridge: Vec<Option<Ridge>>,
    /// The items' codes and users' tastes of the taste term (`content_taste`).
    taste: Option<Taste>,
    /// The taste term's share in the cold items' vectors (0: none).
    pub(super) taste_share: f64,
}

/// What [`RecGoat::forward`] computed, on the host: the final user and item vectors (scores are their dot
/// products) and the intermediate embeddings worth inspecting.
#[derive(Debug, Clone)]
pub struct Forward<F: Real> {
    /// Final user vectors, `U x d`.
    pub users: Array2<F>,
    /// Final item vectors (fused, and L2-normalised with `fusion_normalize`; LightGCN's when ID-only), `I x d`.
    pub items: Array2<F>,
    zcf: Array2<F>,
    modal: Vec<Array2<F>>,
    content: Vec<Array2<F>>,
    plans: Vec<Array2<F>>,
    trust: Vec<F>,
}

impl<F: Real> Forward<F> {
    /// The modality embeddings `z^m` (branch outputs), in modality order.
    pub fn modality_embeddings(&self) -> Vec<ArrayView2<'_, F>> {
        self.modal.iter().map(|m| m.view()).collect()
    }
    /// The content encoders' outputs that place the items without training interactions, in modality
    /// order: the modality embeddings, or with [`RecGoatConfig::content_ridge`] each modality's closed-form
    /// encoder fitted on the item vectors (empty without the content term).
    pub fn content_embeddings(&self) -> Vec<ArrayView2<'_, F>> {
        self.content.iter().map(|m| m.view()).collect()
    }
    /// The collaborative (LightGCN) item vectors `z^cf`.
    pub fn collaborative_items(&self) -> ArrayView2<'_, F> {
        self.zcf.view()
    }
    /// The OAT transport plans, one per modality (empty when OAT is off).
    pub fn plans(&self) -> Vec<&Array2<F>> {
        self.plans.iter().collect()
    }
    /// The per-modality trusts `t_m` that score items without training interactions as
    /// `sum_m t_m z^m_i` (empty without the content term, [`RecGoatConfig::content_weight`]).
    pub fn content_trust(&self) -> &[F] {
        &self.trust
    }
}

/// A configured row limit as a count to take: 0 means no limit.
pub(super) fn row_cap(limit: usize) -> usize {
    match limit {
        0 => usize::MAX,
        c => c,
    }
}

/// Writes `scale sum_m t_m z^m_i` into the rows `rows` of `items`.
fn place_content<F: Real>(
    items: &mut Array2<F>,
    rows: &[usize],
    trust: &[F],
    modal: &[Array2<F>],
    scale: f64,
) {
    let scale = F::c(scale);
    for &i in rows {
        let mut row = items.row_mut(i);
        row.fill(F::zero());
        for (t, z) in trust.iter().zip(modal) {
            row.scaled_add(*t * scale, &z.row(i));
        }
    }
}

/// `graph` (a kNN graph of feature rows) without the edges that touch a row of `absent` (an all-zero
/// feature row: an item without the modality, similar to nothing), self loops kept: such an item's arbitrary
/// "neighbours" (every similarity 0) neither feed it nor are fed by it.
fn without_absent_rows<F: Real>(graph: CsrGraph<F>, absent: &[bool]) -> Result<CsrGraph<F>> {
    if !absent.contains(&true) {
        return Ok(graph);
    }
    let edges: Vec<(usize, usize)> = (0..graph.n_rows())
        .flat_map(|i| graph.row(i).iter().map(move |&j| (i, j as usize)))
        .filter(|&(i, j)| i == j || !(absent[i] || absent[j]))
        .collect();
    CsrGraph::from_edges(graph.n_rows(), graph.n_rows(), &edges, None)
}

/// The probe items of the content term: a seeded `fraction` of the warm items (`cold[i]` false), ascending;
/// none when that rounds to 0 or would leave no warm item for the term itself.
fn probe_items(cold: &[bool], fraction: f64, seed: u64) -> Vec<usize> {
    use rand::seq::SliceRandom;
    let mut warm: Vec<usize> = (0..cold.len()).filter(|&i| !cold[i]).collect();
    let k = (fraction * warm.len() as f64).round() as usize;
    if k == 0 || k >= warm.len() {
        return Vec::new();
    }
    warm.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ 0x5EED_C0DE_D1CE_F00D));
    let mut probe = warm[..k].to_vec();
    probe.sort_unstable();
    probe
}

/// The per-modality trusts of the content encoders: `t >= 0` minimising, over the items `rows`,
/// `sum_i (z_i - sum_m t_m c^m_i)^T G (z_i - sum_m t_m c^m_i)` with `G = users^T users / U`, the squared
/// error of the scores `u . z_i` averaged over the users: the content vector `sum_m t_m c^m_i` is the best
/// non-negative combination of the encoders for ranking. Solved by projected coordinate descent on the
/// `M x M` normal equations (a convex quadratic); encoders that carry nothing the others do not get 0.
///
/// # Errors
/// [`Error::Shape`] for encoder outputs that are not `items`' shape.
pub fn content_trust<F: Real>(
    users: ArrayView2<'_, F>,
    items: ArrayView2<'_, F>,
    encoders: &[ArrayView2<'_, F>],
    rows: &[usize],
) -> Result<Vec<F>> {
    const OP: &str = "content_trust";
    if let Some(c) = encoders.iter().find(|c| c.dim() != items.dim()) {
        return Err(Error::shape(OP, "encoder output", items.dim(), c.dim()));
    }
    let m = encoders.len();
    let to64 = |a: ArrayView2<'_, F>| a.mapv(|v| v.to_f64().unwrap_or(0.0));
    let g = score_metric(users);
    let z = crate::nn::gather(to64(items).view(), rows)?;
    let c: Vec<Array2<f64>> = (encoders.iter())
        .map(|e| crate::nn::gather(to64(*e).view(), rows))
        .collect::<Result<_>>()?;
    // in the metric G: <x, y>_G = sum_i x_i^T G y_i
    let gc: Vec<Array2<f64>> = c.iter().map(|x| x.dot(&g)).collect();
    let mut a = Array2::<f64>::zeros((m, m));
    let mut b = vec![0.0; m];
    for p in 0..m {
        b[p] = (&gc[p] * &z).sum();
        for q in 0..m {
            a[[p, q]] = (&gc[p] * &c[q]).sum();
        }
    }
    let scale = (0..m).map(|p| a[[p, p]]).sum::<f64>() / m.max(1) as f64;
    let mut t = vec![0.0f64; m];
    for _ in 0..500 {
        let mut change = 0.0f64;
        for p in 0..m {
            let diag = a[[p, p]] + 1e-9 * scale;
            if diag <= 0.0 {
                continue;
            }
            let rest: f64 = (0..m).filter(|&q| q != p).map(|q| a[[p, q]] * t[q]).sum();
            let new = ((b[p] - rest) / diag).max(0.0);
            change = change.max((new - t[p]).abs());
            t[p] = new;
        }
        if change <= 1e-12 * (1.0 + t.iter().fold(0.0f64, |x, y| x.max(*y))) {
            break;
        }
    }
    Ok(t.into_iter().map(F::c).collect())
}

/// The users' second moment `G = U^T U / n`: `sum_i x_i^T G x_i` is the squared error of the scores
/// `u . x_i` averaged over the users, the metric the trusts and the taste term are fitted in.
pub(super) fn score_metric<F: Real>(users: ArrayView2<'_, F>) -> Array2<f64> {
    let u = users.mapv(|v| v.to_f64().unwrap_or(0.0));
    u.t().dot(&u) / (u.nrows().max(1) as f64)
}

/// Gradients of a batch's aligned rows and collaborative rows (one modality's sample-level OT term).
pub(super) type RowGrads<F> = (Array2<F>, Array2<F>);

/// A modality's content projection `(W, b)`: its closed form's linear part (`Some(Some)`), nothing for a
/// closed form that explains nothing (`Some(None)`), or the trained branch `br` (`None`).
fn projection<F: Real>(
    fitted: &Option<Option<ContentFit>>,
    br: &Branch<F>,
) -> (Array2<F>, Array1<F>) {
    let d = br.proj.w.ncols();
    match fitted {
        Some(Some(f)) => (f.w.mapv(F::c), f.b.mapv(F::c)),
        Some(None) => (Array2::zeros(br.proj.w.dim()), Array1::zeros(d)),
        None => (
            br.proj.w.clone(),
            (br.proj.b.clone()).unwrap_or_else(|| Array1::zeros(d)),
        ),
    }
}

fn cast<F: Real>(x: f64) -> F {
    F::c(x)
}

/// Runs `$body` with `$ex` bound to the model's backend ([`Exec`]): the one place the backend is chosen.
macro_rules! with_exec {
    ($model:expr, $ex:ident => $body:expr) => {
        match &$model.device {
            #[cfg(feature = "gpu")]
            Some(dev) => {
                let $ex = dev.exec::<F>();
                $body
            }
            _ => {
                let $ex = CpuExec::new($model.inputs());
                $body
            }
        }
    };
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
        let table = (n_users + n_items).checked_mul(cfg.embedding_dim);
        if table.map_or(true, |t| t > 1 << 32) {
            let dims = format!("({n_users} + {n_items}) x {}", cfg.embedding_dim);
            return Err(Error::param(
                OP,
                "embedding_dim",
                dims,
                "the table exceeds 2^32 values",
            ));
        }
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
        // every modality of a dataset without features is none: the backbone, the user-item contrastive
        // term and the regulariser train as configured, the modality and content terms have nothing to
        // act on; the parts that are built on a modality are refused by name
        if matches!(cfg.modalities, Modalities::All) && selected.is_empty() {
            let needs = [
                (cfg.oat, "OAT"),
                (
                    cfg.cl_weight > 0.0 && cfg.cmcl == Cmcl::OfficialCode,
                    "the released code's contrastive terms",
                ),
                (cfg.gat_layers > 0, "graph attention"),
                (cfg.fusion != Fusion::None, "the fusion of the views"),
            ];
            if let Some((_, part)) = needs.iter().find(|(on, _)| *on) {
                return Err(Error::param(
                    OP,
                    "modalities",
                    "All",
                    format!(
                        "the dataset has no item features, and {part} needs at least one modality \
                         (recgoat() and lightgcn() train without features)"
                    ),
                ));
            }
        }
        let knn = KnnConfig {
            self_loops: true,
            method: cfg.knn_method,
            ..KnnConfig::new(cfg.knn_k)
        };
        // only graph attention reads a branch's kNN graph: without GAT layers it stays edgeless (no
        // O(items^2) build)
        let branch_graph = |x: ArrayView2<'_, F>| match cfg.gat_layers {
            0 => CsrGraph::from_edges(x.nrows(), x.nrows(), &[], None),
            _ => without_absent_rows(knn_graph(x, &knn, par)?, &nn::zero_rows(x)),
        };
        let modalities = selected
            .iter()
            .map(|(name, x)| {
                let mut x: Array2<F> = x.mapv(|v| F::c(v as f64));
                if cfg.normalize_features {
                    nn::normalize_nonzero_rows_in_place(&mut x);
                }
                let graph = branch_graph(x.view())?;
                Ok(BranchInput {
                    name: name.clone(),
                    x,
                    graph,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let item_graph = if cfg.item_graph_layers > 0 {
            let views: Vec<_> = modalities.iter().map(|m| m.x.view()).collect();
            Some(multi_view_knn_graph(
                &views,
                cfg.item_graph_k,
                cfg.knn_method,
                par,
            )?)
        } else {
            None
        };
        let user_input = if cfg.user_user {
            if modalities.is_empty() && data.user_features.is_empty() {
                return Err(Error::param(
                    OP,
                    "user_user",
                    true,
                    "user profiles need user features or item features: give either",
                ));
            }
            let feats: Vec<&Array2<F>> = modalities.iter().map(|m| &m.x).collect();
            let profiles = data.user_profiles(&feats, cfg.normalize_features)?;
            let graph = branch_graph(profiles.view())?;
            Some(BranchInput {
                name: "users".into(),
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
        let mut cold = vec![true; n_items];
        for &(_, i) in &data.train {
            cold[i] = false;
        }
        let probe = probe_items(&cold, cfg.content_probe, cfg.seed);
        let mut is_probe = vec![false; n_items];
        for &i in &probe {
            is_probe[i] = true;
        }
        let missing: Vec<Vec<bool>> = (modalities.iter())
            .map(|b| nn::zero_rows(b.x.view()))
            .collect();
        let present: Vec<bool> = missing.iter().map(|m| m.contains(&false)).collect();
        let some_lack = missing.iter().any(|m| m.contains(&true));
        // a modality without any row (a placeholder file of zeros) leaves every item as it is
        let incomplete: Vec<bool> = (0..n_items)
            .map(|i| (missing.iter().zip(&present)).any(|(m, &p)| p && m[i]))
            .collect();
        // the closed-form encoders fit the items the content term trains on
        let ridge = match cfg.content_ridge && cfg.content_weight > 0.0 {
            true => {
                let fit: Vec<usize> = (0..n_items).filter(|&i| !cold[i] && !is_probe[i]).collect();
                (modalities.iter())
                    .map(|b| Ridge::new(b.x.view(), &fit, cfg.content_neighbours))
                    .collect::<Result<Vec<_>>>()?
            }
            false => vec![None; modalities.len()],
        };
        let taste = match cfg.content_taste && cfg.content_weight > 0.0 && !modalities.is_empty() {
            true => {
                let views: Vec<ArrayView2<'_, F>> = modalities.iter().map(|b| b.x.view()).collect();
                let warm: Vec<bool> = cold.iter().map(|c| !c).collect();
                Some(Taste::new(&views, &data.train, (&warm, &probe), n_users))
            }
            false => None,
        };
        let mut model = RecGoat {
            cfg,
            n_users,
            n_items,
            adj,
            modalities,
            user_input,
            item_graph,
            gat,
            oat,
            sample_ot,
            backend,
            device: None,
            shapes: Vec::new(),
            layout: Layout::default(),
            cold,
            probe,
            is_probe,
            missing,
            present,
            some_lack,
            incomplete,
            cold_scale: 1.0,
            modality_trust: Vec::new(),
            ridge,
            taste,
            taste_share: 0.0,
        };
        model.device = crate::exec::attach(&model.inputs())?;
        let init = model.init_params();
        model.shapes = (init.tensors().iter())
            .map(|(n, t)| (n.clone(), t.dim()))
            .collect();
        model.layout = Layout::of(&init);
        model.modality_trust = vec![0.0; model.modalities.len()];
        Ok(model)
    }

    /// The fixed inputs the backends bind to.
    fn inputs(&self) -> Inputs<'_, F> {
        Inputs {
            adj: &self.adj,
            layers: self.cfg.lightgcn_layers,
            item_graph: (self.item_graph.as_ref()).map(|g| (g, self.cfg.item_graph_layers)),
            branches: (self.modalities.iter().chain(&self.user_input))
                .map(|b| (&b.x, &b.graph))
                .collect(),
            gat: &self.gat,
            oat: self.oat.as_ref(),
            backend: &self.backend,
        }
    }

    /// The forward pass over the full graphs on the model's backend: LightGCN, each modality branch, OAT,
    /// fusion and the user-user branch. `mode` switches dropout (its masks come from the seed). `profile`,
    /// when given, accumulates the time of each stage (on the CPU).
    ///
    /// # Errors
    /// [`Error::Shape`] for parameters that do not fit the model, and the errors of the ops (NaN/Inf values,
    /// a Sinkhorn solve that fails).
    pub fn forward(
        &self,
        p: &Params<F>,
        mode: Mode,
        profile: Option<&mut Profile>,
    ) -> Result<Forward<F>> {
        self.check_params(p)?;
        with_exec!(self, ex => {
            let st = State::upload(&ex, p)?;
            let fwd = self.forward_on(&ex, &st, mode, profile)?;
            self.resolve_checks(&ex, &fwd)?;
            let users = ex.download(&fwd.users)?;
            let mut items = ex.download(fwd.items())?;
            let modal: Vec<Array2<F>> = fwd.modal().map(|m| ex.download(m)).collect::<Result<_>>()?;
            let (trust, content) =
                self.place_cold_items(users.view(), &mut items, &modal, self.placing(), true)?;
            Ok(Forward {
                users,
                items,
                zcf: ex.download(&fwd.zcf)?,
                modal,
                content,
                plans: fwd.oat().iter().map(|o| ex.oat_plan(o)).collect::<Result<_>>()?,
                trust,
            })
        })
    }

    /// The final user and item vectors only (evaluation mode): what ranking needs. With the content term,
    /// the items without training interactions have their content vectors ([`Forward::content_trust`]).
    ///
    /// # Errors
    /// As [`RecGoat::forward`].
    pub fn embeddings(&self, p: &Params<F>) -> Result<(Array2<F>, Array2<F>)> {
        self.embeddings_with_cold_scale(p, self.cold_scale)
    }

    /// [`RecGoat::embeddings`] with the cold items' vectors at `scale` instead of [`RecGoat::cold_scale`].
    ///
    /// # Errors
    /// As [`RecGoat::embeddings`]; [`Error::Param`] for a scale that is not finite and >= 0.
    pub fn embeddings_with_cold_scale(
        &self,
        p: &Params<F>,
        scale: f64,
    ) -> Result<(Array2<F>, Array2<F>)> {
        let (users, items, _) = self.vectors_placing(p, (scale, self.taste_share), false)?;
        Ok((users, items))
    }

    /// [`RecGoat::embeddings`] with the cold items' vectors at `scale` and taste share `share` instead of
    /// [`RecGoat::cold_scale`] and [`RecGoat::taste_share`].
    ///
    /// # Errors
    /// As [`RecGoat::embeddings`]; [`Error::Param`] for a scale or share that is not finite and >= 0, or a
    /// share above 0 without the taste term.
    pub fn embeddings_placing(
        &self,
        p: &Params<F>,
        (scale, share): (f64, f64),
    ) -> Result<(Array2<F>, Array2<F>)> {
        let (users, items, _) = self.vectors_placing(p, (scale, share), false)?;
        Ok((users, items))
    }

    /// [`RecGoat::embeddings_with_cold_scale`] without the taste term, and the trusts fitted on the way
    /// (empty without the content term).
    pub(crate) fn vectors_and_trust(
        &self,
        p: &Params<F>,
        scale: f64,
    ) -> Result<(Array2<F>, Array2<F>, Vec<F>)> {
        self.vectors_placing(p, (scale, 0.0), false)
    }

    /// [`RecGoat::embeddings_with_cold_scale`] with the probe items ([`RecGoat::probe_items`]) also given
    /// what a new item gets, their content vectors at `scale` (their own vectors replaced): the probe items
    /// stand in for new items when a validation split holds none ([`crate::model::Trainer::validate`]).
    /// Without the content term, [`RecGoat::embeddings_with_cold_scale`].
    ///
    /// # Errors
    /// As [`RecGoat::embeddings_with_cold_scale`].
    pub fn embeddings_probe_as_new(
        &self,
        p: &Params<F>,
        scale: f64,
    ) -> Result<(Array2<F>, Array2<F>)> {
        let (users, items, _) = self.vectors_placing(p, (scale, 0.0), true)?;
        Ok((users, items))
    }

    fn vectors_placing(
        &self,
        p: &Params<F>,
        (scale, share): (f64, f64),
        probe_as_new: bool,
    ) -> Result<(Array2<F>, Array2<F>, Vec<F>)> {
        self.check_placing("RecGoat::embeddings", (scale, share))?;
        self.check_params(p)?;
        with_exec!(self, ex => {
            let st = State::upload(&ex, p)?;
            let fwd = self.forward_on(&ex, &st, Mode::Eval, None)?;
            self.resolve_checks(&ex, &fwd)?;
            let users = ex.download(&fwd.users)?;
            let mut items = ex.download(fwd.items())?;
            let mut trust = Vec::new();
            if self.content_on() {
                let modal: Vec<Array2<F>> =
                    fwd.modal().map(|m| ex.download(m)).collect::<Result<_>>()?;
                let (t, content) =
                    self.place_cold_items(users.view(), &mut items, &modal, (scale, share), false)?;
                if probe_as_new {
                    place_content(&mut items, &self.probe, &t, &content, scale);
                }
                trust = t;
            }
            Ok((users, items, trust))
        })
    }

    /// What folding a user in from an item history needs ([`crate::recommend::Recommender::fold_in`]):
    /// per item `f_i = sum_{l<L} e_i^(l) / ((L + 1) sqrt(d_i))`, the item's first `L` LightGCN layers
    /// scaled by its training degree `d_i`, and per user its ego embedding `e_u^(0) / (L + 1)`. A user of
    /// history `H` then has `z_u = e_u^(0) / (L + 1) + sum_{i in H} f_i / sqrt(|H|)` (no ego term for a new
    /// user): LightGCN's own propagation of the user's row with the items' layers held fixed, which gives a
    /// known user its trained vector back from its training items. Items without training interactions
    /// get `f_i = L z_i / (L + 1)` from their final vector `z_i` (as if each layer were that vector at
    /// degree 1).
    ///
    /// # Errors
    /// [`Error::Param`] when the model has a user-user branch (its vectors do not come from the history
    /// alone); as [`RecGoat::embeddings`].
    pub fn fold_in_tables(&self, p: &Params<F>) -> Result<(Array2<F>, Array2<F>)> {
        const OP: &str = "RecGoat::fold_in_tables";
        if self.user_input.is_some() {
            let why = "a user-user branch adds to each user what its history alone does not give";
            return Err(Error::param(OP, "user_user", true, why));
        }
        self.check_params(p)?;
        let (nu, ni, layers) = (self.n_users, self.n_items, self.cfg.lightgcn_layers);
        let (_, items) = self.embeddings(p)?;
        let norm = F::c(1.0 / (layers + 1) as f64);
        let par = self.backend.par();
        let mut e = p.embedding.clone();
        let mut acc = Array2::<F>::zeros((ni, self.cfg.embedding_dim));
        for l in 0..layers {
            acc += &e.slice(ndarray::s![nu.., ..]);
            if l + 1 < layers {
                e = crate::graph::spmm(&self.adj, e.view(), par)?;
            }
        }
        let indptr = self.adj.indptr();
        for (i, mut row) in acc.rows_mut().into_iter().enumerate() {
            let degree = indptr[nu + i + 1] - indptr[nu + i];
            if degree == 0 {
                row.assign(&(&items.row(i) * F::c(layers as f64)));
            } else {
                row.mapv_inplace(|v| v / F::c(degree as f64).sqrt());
            }
            row.mapv_inplace(|v| v * norm);
        }
        let ego = p.embedding.slice(ndarray::s![..nu, ..]).mapv(|v| v * norm);
        Ok((acc, ego))
    }

    /// Whether the model has the content term (and scores items without training interactions through
    /// its encoders).
    pub fn content_on(&self) -> bool {
        self.cfg.content_weight > 0.0 && !self.modalities.is_empty()
    }

    /// Items without training interactions, as flags by item id.
    pub fn cold_items(&self) -> &[bool] {
        &self.cold
    }

    /// The probe items: items with training interactions that the content term never trains on, on which
    /// the trusts are fitted (ascending).
    pub fn probe_items(&self) -> &[usize] {
        &self.probe
    }

    /// The modalities' trusts as last set ([`RecGoat::set_modality_trust`]; 0 each until then), which
    /// weigh their contrastive terms when [`RecGoatConfig::cl_modality_trust`] is set.
    pub fn modality_trust(&self) -> &[f64] {
        &self.modality_trust
    }

    /// Sets the modalities' trusts (the trainer sets those fitted after each epoch,
    /// [`Forward::content_trust`]).
    ///
    /// # Errors
    /// [`Error::Shape`] for a count other than the modalities'; [`Error::Param`] for a trust that is not
    /// finite and >= 0.
    pub fn set_modality_trust(&mut self, trust: &[f64]) -> Result<()> {
        const OP: &str = "RecGoat::set_modality_trust";
        if trust.len() != self.modalities.len() {
            return Err(Error::shape(
                OP,
                "trusts",
                self.modalities.len(),
                trust.len(),
            ));
        }
        if let Some(t) = trust.iter().find(|t| !(t.is_finite() && **t >= 0.0)) {
            return Err(Error::param(OP, "trust", t, "must be finite and >= 0"));
        }
        self.modality_trust = trust.to_vec();
        Ok(())
    }

    /// The weight of each modality's contrastive term (its share of [`Cmcl::Paper`]'s modality terms):
    /// `cl_modality_weight / M`, times `min(trust, 1)` with `cl_modality_trust`; 0 for a modality whose
    /// every feature row is zero (no item has it: its view has no direction).
    pub(super) fn modality_term_weights(&self) -> Vec<f64> {
        let m = self.modalities.len();
        let w = self.cfg.cl_modality_weight / m.max(1) as f64;
        (0..m)
            .map(|k| match self.cfg.cl_modality_trust {
                true => w * self.modality_trust.get(k).copied().unwrap_or(0.0).min(1.0),
                false => w,
            })
            .zip(&self.present)
            .map(|(w, &present)| if present { w } else { 0.0 })
            .collect()
    }

    /// The scale of the cold items' content vectors: 1 as the trusts fit them on the probe items, or what
    /// [`crate::model::Trainer::validate`] chose on the validation split's cold items.
    pub fn cold_scale(&self) -> f64 {
        self.cold_scale
    }

    /// Sets the scale of the cold items' content vectors (`s * sum_m t_m z^m_i`).
    ///
    /// # Errors
    /// [`Error::Param`] for a scale that is not finite and >= 0.
    pub fn set_cold_scale(&mut self, s: f64) -> Result<()> {
        self.check_placing("RecGoat::set_cold_scale", (s, self.taste_share))?;
        self.cold_scale = s;
        Ok(())
    }

    /// The taste term's share in the cold items' vectors ([`RecGoatConfig::content_taste`]; 0 until the
    /// trainer chooses one on validation).
    pub fn taste_share(&self) -> f64 {
        self.taste_share
    }

    /// Sets [`RecGoat::taste_share`]: a cold item's vector becomes `s (sum_m t_m z^m_i + a w_i)`, `a` the
    /// share and `w_i` its taste vector.
    ///
    /// # Errors
    /// [`Error::Param`] for a share that is not finite and >= 0, or above 0 without the taste term.
    pub fn set_taste_share(&mut self, a: f64) -> Result<()> {
        self.check_placing("RecGoat::set_taste_share", (self.cold_scale, a))?;
        self.taste_share = a;
        Ok(())
    }

    /// The cold items' scale and taste share the model places them with.
    fn placing(&self) -> (f64, f64) {
        (self.cold_scale, self.taste_share)
    }

    /// Checks a placement of the cold items for `op`: a scale and a taste share finite and >= 0, and a
    /// share above 0 only with the taste term.
    fn check_placing(&self, op: &'static str, (scale, share): (f64, f64)) -> Result<()> {
        for (what, v) in [("cold scale", scale), ("taste share", share)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::param(op, what, v, "must be finite and >= 0"));
            }
        }
        if share > 0.0 && self.taste.is_none() {
            let why = "the model has no taste term (content_taste off, or no content term)";
            return Err(Error::param(op, "taste share", share, why));
        }
        Ok(())
    }

    /// The taste vectors of the cold items (the other rows 0) for the final vectors `users` and `items`
    /// ([`RecGoatConfig::content_taste`]), or `None` without the taste term (or no user to fit it on).
    ///
    /// # Errors
    /// [`Error::Param`] when the map cannot be fitted (non-finite vectors).
    pub fn taste_vectors(
        &self,
        users: ArrayView2<'_, F>,
        items: ArrayView2<'_, F>,
    ) -> Result<Option<Array2<F>>> {
        let Some(taste) = &self.taste else {
            return Ok(None);
        };
        let Some(map) = taste.map(users, items)? else {
            return Ok(None);
        };
        let cold: Vec<usize> = (0..self.n_items).filter(|&i| self.cold[i]).collect();
        let mut out = Array2::<F>::zeros((self.n_items, map.ncols()));
        for (&i, v) in cold.iter().zip(taste.vectors(&map, &cold).rows()) {
            out.row_mut(i).assign(&v.mapv(F::c));
        }
        Ok(Some(out))
    }

    /// With the content term: fits the trusts on the probe items and writes each cold item's content
    /// vector `s (sum_m t_m z^m_i + a w_i)` into `items` (`s` the scale, `a` the taste share, `w_i` the
    /// item's taste vector); returns the trusts (empty without the term).
    fn place_cold_items(
        &self,
        users: ArrayView2<'_, F>,
        items: &mut Array2<F>,
        modal: &[Array2<F>],
        (scale, share): (f64, f64),
        every_row: bool,
    ) -> Result<(Vec<F>, Vec<Array2<F>>)> {
        if !self.content_on() {
            return Ok((Vec::new(), Vec::new()));
        }
        let warm: Vec<usize> = (0..self.n_items).filter(|&i| !self.cold[i]).collect();
        // the probe items, or (a catalogue too small to spare any) every warm item, in sample
        let fit_on = if self.probe.is_empty() {
            &warm
        } else {
            &self.probe
        };
        let cold: Vec<usize> = (0..self.n_items).filter(|&i| self.cold[i]).collect();
        // the rows the trusts and the placement read (every row for a caller that shows them all)
        let read: Vec<usize> = match every_row {
            true => (0..self.n_items).collect(),
            false => {
                let mut r = [&fit_on[..], &cold[..]].concat();
                r.sort_unstable();
                r
            }
        };
        let content = self.content_views(items.view(), modal, &read);
        let views: Vec<ArrayView2<'_, F>> = content.iter().map(|m| m.view()).collect();
        let trust = content_trust(users, items.view(), &views, fit_on)?;
        let taste = match share > 0.0 {
            true => self.taste_vectors(users, items.view())?,
            false => None,
        };
        place_content(items, &cold, &trust, &content, scale);
        if let Some(t) = taste {
            items.scaled_add(F::c(scale * share), &t);
        }
        Ok((trust, content))
    }

    /// The content encoders' outputs over every item, which place the cold items: each modality's trained
    /// encoder (`modal`), or with [`RecGoatConfig::content_ridge`] its closed form fitted on the current
    /// item vectors `items`, computed at the rows `rows` (ascending; the others 0). An item that lacks a
    /// modality (an all-zero feature row) gets 0 from it.
    fn content_views(
        &self,
        items: ArrayView2<'_, F>,
        modal: &[Array2<F>],
        rows: &[usize],
    ) -> Vec<Array2<F>> {
        let mut views = self.encoder_outputs(items, modal, rows);
        for (view, missing) in views.iter_mut().zip(&self.missing) {
            nn::clear_rows(view, missing);
        }
        views
    }

    /// [`RecGoat::content_views`] before the rows of items without the modality are cleared.
    fn encoder_outputs(
        &self,
        items: ArrayView2<'_, F>,
        modal: &[Array2<F>],
        rows: &[usize],
    ) -> Vec<Array2<F>> {
        (modal.iter().zip(self.fits(items)))
            .zip(self.ridge.iter().zip(&self.modalities))
            .map(|((m, fitted), (ridge, b))| match (fitted, ridge) {
                (Some(Some(fit)), Some(r)) => {
                    let mut out = Array2::zeros(m.dim());
                    let z = r.predict(&fit, b.x.view(), items, rows);
                    for (&i, zr) in rows.iter().zip(z.rows()) {
                        out.row_mut(i).assign(&zr.mapv(F::c));
                    }
                    out
                }
                // a closed form that explains nothing on the probe items places nothing
                (Some(_), _) => Array2::zeros(m.dim()),
                (None, _) => m.clone(),
            })
            .collect()
    }

    /// Each modality's content encoder as a projection `(W, b)` (`width x d`, `d`), and the trusts that weigh
    /// them ([`Forward::content_trust`]), from one forward pass of `p`: the trained projection, or with
    /// [`RecGoatConfig::content_ridge`] the linear part of its closed form fitted on the item vectors of `p`
    /// (which may also lean on the items' neighbours: [`RecGoat::content_encoder`] is the whole encoder).
    ///
    /// # Errors
    /// As [`RecGoat::forward`].
    #[allow(clippy::type_complexity)]
    pub fn content_projections(
        &self,
        p: &Params<F>,
    ) -> Result<(Vec<(Array2<F>, Array1<F>)>, Vec<F>)> {
        let fwd = self.forward(p, Mode::Eval, None)?;
        let projections = (self.fits(fwd.items.view()).iter().zip(&p.branches))
            .map(|(fitted, br)| projection(fitted, br))
            .collect();
        Ok((projections, fwd.trust))
    }

    /// Per modality its closed-form fit on the item vectors `items` (`Some(None)`: it explains nothing and
    /// places nothing), or `None`: the trained projection. The fits read the warm items' rows only, which
    /// placing the cold items leaves as they are.
    fn fits(&self, items: ArrayView2<'_, F>) -> Vec<Option<Option<ContentFit>>> {
        (self.ridge.iter().zip(&self.modalities))
            .map(|(ridge, b)| (ridge.as_ref()).map(|r| r.fit(b.x.view(), items, &self.probe)))
            .collect()
    }

    /// The content encoder that gives a new item the vector this model gives its items without training
    /// interactions, at the cold items' scale: each modality's projection ([`RecGoat::content_projections`])
    /// and, where its closed form leans on neighbours, the unit feature rows and vectors of the items it
    /// averages, weighed by the trusts. What [`crate::recommend::Recommender::from_trainer`] keeps.
    ///
    /// # Errors
    /// As [`RecGoat::forward`]; [`Error::Param`] for a model without content term.
    pub fn content_encoder(&self, p: &Params<F>) -> Result<ContentEncoder> {
        if !self.content_on() {
            let why = "the model has no content term (content_weight 0 or no modality)";
            return Err(Error::param(
                "RecGoat::content_encoder",
                "model",
                "no content term",
                why,
            ));
        }
        let fwd = self.forward(p, Mode::Eval, None)?;
        let fits = self.fits(fwd.items.view());
        let scale = self.cold_scale;
        let (mut weights, mut biases, mut near) = (Vec::new(), Vec::new(), Vec::new());
        for (((fitted, br), (b, ridge)), trust) in (fits.iter().zip(&p.branches))
            .zip(self.modalities.iter().zip(&self.ridge))
            .zip(&fwd.trust)
        {
            let (w, bias) = projection(fitted, br);
            weights.push(to_f32(w.view()));
            biases.push(to_f32(bias.view()));
            // (a modality without trust adds nothing: its neighbours are not kept)
            let kept = match fitted {
                Some(Some(f)) => f.neighbours.filter(|_| *trust > F::zero()),
                _ => None,
            };
            near.push(match (kept, ridge) {
                (Some((s, k, t)), Some(r)) => {
                    let refs = r.fit_rows();
                    Some(Neighbours::new(
                        unit_rows(b.x.select(Axis(0), refs).view()),
                        to_f32(fwd.items.select(Axis(0), refs).view()),
                        k,
                        t as f32,
                        s as f32,
                    )?)
                }
                _ => None,
            });
        }
        let trust = (fwd.trust.iter())
            .map(|t| (t.to_f64().unwrap_or(f64::NAN) * scale) as f32)
            .collect();
        let mut enc = ContentEncoder::new(
            self.modalities(),
            self.cfg.normalize_features,
            weights,
            biases,
            trust,
        )?;
        for (m, n) in near.into_iter().enumerate() {
            if let Some(n) = n {
                enc = enc.with_neighbours(m, n)?;
            }
        }
        if let (Some(taste), true) = (&self.taste, self.taste_share > 0.0) {
            if let Some(map) = taste.map(fwd.users.view(), fwd.items.view())? {
                let map = map * (scale * self.taste_share);
                enc = enc.with_taste(taste.means.clone(), map.mapv(|v| v as f32))?;
            }
        }
        Ok(enc)
    }

    /// Loss and gradient of one batch (forward pass, losses, backward pass) on the model's backend.
    ///
    /// # Errors
    /// [`Error::Empty`] for an empty batch, [`Error::Shape`] for lists of different lengths or parameters
    /// that do not fit, [`Error::Param`] for an id out of range, [`Error::NonFinite`] for a non-finite
    /// loss term, and the ops' errors.
    pub fn loss_and_grad(
        &self,
        p: &Params<F>,
        batch: &Batch,
        mode: Mode,
        profile: Option<&mut Profile>,
    ) -> Result<(LossParts<F>, Params<F>)> {
        let (mut losses, grads) =
            self.batches_loss_and_grad(p, std::slice::from_ref(batch), mode, profile)?;
        Ok((losses.remove(0), grads))
    }

    /// The losses of several batches on one forward pass (`mode` sets its dropout) and the gradient of their
    /// mean loss: what one step applies when `steps_per_epoch` groups batches. With one batch this is
    /// [`RecGoat::loss_and_grad`].
    ///
    /// # Errors
    /// As [`RecGoat::loss_and_grad`]; [`Error::Shape`] for an empty list.
    pub fn batches_loss_and_grad(
        &self,
        p: &Params<F>,
        batches: &[Batch],
        mode: Mode,
        profile: Option<&mut Profile>,
    ) -> Result<(Vec<LossParts<F>>, Params<F>)> {
        const OP: &str = "RecGoat::batches_loss_and_grad";
        self.check_params(p)?;
        if batches.is_empty() {
            return Err(Error::shape(OP, "batches", ">= 1", 0));
        }
        let steps: Vec<(Batch, Mode)> = batches.iter().map(|b| (b.clone(), mode)).collect();
        let (losses, grads) =
            with_exec!(self, ex => self.loss_grad_on(&ex, p, &steps, profile, true))?;
        let grads = grads.ok_or_else(|| Error::shape(OP, "gradients", 1, 0))?;
        Ok((losses, grads))
    }

    /// The loss alone (for gradient checks and monitoring).
    ///
    /// # Errors
    /// As [`RecGoat::loss_and_grad`].
    pub fn loss(&self, p: &Params<F>, batch: &Batch, mode: Mode) -> Result<LossParts<F>> {
        self.check_params(p)?;
        let steps = [(batch.clone(), mode)];
        let (mut losses, _) =
            with_exec!(self, ex => self.loss_grad_on(&ex, p, &steps, None, false))?;
        Ok(losses.remove(0))
    }

    /// One pass of training steps on the model's backend (see [`TrainPass`]).
    pub(super) fn train_pass(&self, pass: TrainPass<'_, F>) -> Result<Vec<LossParts<F>>> {
        self.check_params(pass.params)?;
        with_exec!(self, ex => self.train_on(&ex, pass))
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
    /// The kNN graph of each modality (with self loops), in order; edgeless without graph-attention layers
    /// (`gat_layers` 0), which alone read them.
    pub fn item_graphs(&self) -> Vec<&CsrGraph<F>> {
        self.modalities.iter().map(|m| &m.graph).collect()
    }

    pub(super) fn id_only(&self) -> bool {
        self.modalities.is_empty()
    }

    /// The rows of `batch` the contrastive term runs on when they are not all of them: its
    /// [`Batch::distinct_rows`] with [`RecGoatConfig::cl_distinct_rows`], then the first
    /// [`RecGoatConfig::cl_max_rows`] of those when that is set and fewer; `None` when every row is kept.
    /// With the content term, the modality terms leave out the rows of probe items; with the released code's
    /// terms ([`Cmcl::OfficialCode`]), the rows whose positive or negative item lacks a modality are left out.
    pub(super) fn contrastive_subset(&self, batch: &Batch) -> Option<Batch> {
        let mut rows = self.cfg.cl_distinct_rows.then(|| batch.distinct_rows());
        // the released code's terms read every modality's view of the positive and the negative items: the
        // rows with an item that lacks a modality stay out of all of them
        let lacks = |i: usize| self.missing.iter().any(|m| m[i]);
        if self.cfg.cmcl == Cmcl::OfficialCode && self.some_lack {
            let from = rows.as_ref().unwrap_or(batch);
            let kept: Vec<usize> = (0..from.users.len())
                .filter(|&r| !lacks(from.pos[r]) && !lacks(from.neg[r]))
                .collect();
            let pick = |v: &[usize]| kept.iter().map(|&r| v[r]).collect::<Vec<_>>();
            rows = Some(Batch {
                users: pick(&from.users),
                pos: pick(&from.pos),
                neg: pick(&from.neg),
            });
        }
        let cap = self.cfg.cl_max_rows;
        let len = rows.as_ref().unwrap_or(batch).users.len();
        if cap == 0 || len <= cap {
            return rows;
        }
        let from = rows.as_ref().unwrap_or(batch);
        Some(Batch {
            users: from.users[..cap].to_vec(),
            pos: from.pos[..cap].to_vec(),
            neg: from.neg[..cap].to_vec(),
        })
    }

    /// The items of `batch` the content term runs on: its distinct positive items that are not probe items
    /// and lack no modality, in batch order, at most [`RecGoatConfig::content_max_rows`] of them when that is set; beside each, the
    /// user of its first row (the ranking part's anchor, [`RecGoatConfig::content_rank_weight`]).
    pub(super) fn content_rows(&self, batch: &Batch) -> (Vec<usize>, Vec<usize>) {
        let mut seen = std::collections::HashSet::new();
        (batch.users.iter().copied().zip(batch.pos.iter().copied()))
            .filter(|&(_, i)| !self.is_probe[i] && !self.incomplete[i] && seen.insert(i))
            .take(row_cap(self.cfg.content_max_rows))
            .unzip()
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
            // unused: the collaborative items enter with weight 1, or alone
            Fusion::Residual | Fusion::None => 1.0,
        });
        let rest = (1.0 - cf) / m.max(1) as f64;
        let fused = !self.id_only() && self.cfg.fusion != Fusion::None;
        let fusion = fused.then(|| match self.cfg.fusion {
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
            // the item-graph view's weight (when on), then the modality gates
            Fusion::Residual | Fusion::None => {
                let g = usize::from(self.item_graph.is_some());
                let mut w = Array1::from_elem(g + m, F::c(self.cfg.fusion_gate_init));
                w.slice_mut(ndarray::s![..g]).fill(F::one());
                w
            }
        });
        Params {
            embedding,
            branches,
            user_branch,
            deltas,
            fusion,
            norm: (fused && self.cfg.fusion_normalize).then(|| LayerNorm::new(d)),
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
            let (x, y, w) = (xn.view(), yc.view(), w.view());
            let div = sinkhorn_divergence(x, y, w, w, &self.sample_ot, &self.backend)?;
            ot += div.value / m_count;
            let scale = otw / m_count;
            let gx =
                nn::l2_normalize_backward(xn.view(), xnorms.view(), (div.grad_x * scale).view())?;
            let gy = nn::l2_normalize_backward(yc.view(), yn.view(), (div.grad_y * scale).view())?;
            grads.push((gx, gy));
        }
        Ok((ot, grads))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_rows_keep_their_self_loop_and_nothing_else() {
        let edges: Vec<(usize, usize)> = (0..4).flat_map(|i| (0..4).map(move |j| (i, j))).collect();
        let g = CsrGraph::<f32>::from_edges(4, 4, &edges, None).unwrap();
        let kept = without_absent_rows(g.clone(), &[false; 4]).unwrap();
        assert_eq!(kept.nnz(), 16);
        let g = without_absent_rows(g, &[false, true, false, false]).unwrap();
        assert_eq!(g.row(1), &[1]);
        for i in [0, 2, 3] {
            assert!(!g.row(i).contains(&1), "row {i}: {:?}", g.row(i));
            assert_eq!(g.row(i).len(), 3);
        }
    }
}
