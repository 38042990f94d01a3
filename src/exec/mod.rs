//! The backends of the reference model: what the model's one definition (its forward pass, losses and
//! hand-written backward pass, `src/model/step.rs`) needs from a backend, as one trait, [`Exec`], with an
//! implementation per backend that supplies storage and kernels only:
//!
//! - [`cpu::CpuExec`]: `ndarray` matrices through the crate's CPU ops, generic over the float type (f64 keeps
//!   the model's central-difference gradient checks sharp);
//! - `gpu::GpuExec` (feature `gpu`): [`crate::gpu::GpuMatrix`] buffers through the crate's WGSL kernels. Its
//!   values stay on the device: losses and checks come back as [`Exec::Scalar`]s that are read together
//!   ([`Exec::read`]) when the caller chooses (the trainer: once per epoch).
//!
//! An op is as large as a backend needs to run it well (a fused BPR-with-regulariser, the fusion of the
//! views, a multi-view InfoNCE) and no larger: which terms the loss has, in which order the gradients
//! accumulate and where they go is the model's, written once.

pub(crate) mod cpu;
#[cfg(feature = "gpu")]
pub(crate) mod gpu;

use crate::attention::Mode;
use crate::contrastive::{InfoNceConfig, ViewPair};
use crate::error::Result;
use crate::nn::{Adam, AdamState};
use crate::simd::Real;
use ndarray::{Array2, ArrayView2};

/// A graph-attention layer's parameters on a backend, borrowed from the model's tensor list.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GatRefs<'a, M> {
    pub(crate) w: &'a M,
    pub(crate) a_src: &'a M,
    pub(crate) a_dst: Option<&'a M>,
    /// `1 x out_dim`.
    pub(crate) bias: Option<&'a M>,
    pub(crate) w_res: Option<&'a M>,
}

/// What [`Exec::bpr`] returns: the mean BPR term, the regulariser's value (already weighted), and the
/// gradients of the final user rows, the final item rows (`[positives; negatives]`) and the ego rows
/// (`[users; positives; negatives]`).
pub(crate) struct BprOut<E: Exec + ?Sized> {
    pub(crate) bpr: E::Scalar,
    pub(crate) reg: E::Scalar,
    pub(crate) grad_users: E::M,
    pub(crate) grad_items: E::M,
    pub(crate) grad_ego: E::M,
}

/// Storage and kernels of one backend of the reference model, bound to a model's fixed inputs (its
/// user-item graph, each branch's features and attended kNN graph, its graph-attention layer and OAT
/// operator). Branches are named by their slot: the modalities in order, then the user branch.
///
/// Every method validates what the underlying op validates; a backend whose values stay on the device
/// returns the checks it cannot make yet as [`Exec::Scalar`]s.
// the ops return tuples of the trait's associated types: one-off structs would only rename them
#[allow(clippy::type_complexity)]
pub(crate) trait Exec {
    /// The float type of the host values (parameters, losses).
    type F: Real;
    /// A dense matrix.
    type M;
    /// A row selection: gathers rows of a table, scatter-adds rows into one.
    type Sel;
    /// A graph-attention layer's forward state.
    type GatCache;
    /// A LayerNorm's forward state.
    type NormCache;
    /// An OAT map's forward state.
    type Oat;
    /// The fusion weights of a forward pass.
    type Fusion;
    /// A tensor's Adam moments.
    type Adam;
    /// A loss value or a deferred check, resolved by [`Exec::read`].
    type Scalar;
    /// Whether values stay on the device until [`Exec::read`] (per-stage wall-clock times mean nothing
    /// then).
    const DEFERRED: bool;

    // --- storage
    fn upload(&self, x: ArrayView2<'_, Self::F>) -> Result<Self::M>;
    fn download(&self, x: &Self::M) -> Result<Array2<Self::F>>;
    fn zeros(&self, rows: usize, cols: usize) -> Result<Self::M>;
    /// `(rows, cols)`.
    fn dim(&self, x: &Self::M) -> (usize, usize);
    /// A copy of `n` rows from `r0`.
    fn rows(&self, x: &Self::M, r0: usize, n: usize) -> Result<Self::M>;
    /// `[a; b]`.
    fn concat_rows(&self, a: &Self::M, b: &Self::M) -> Result<Self::M>;
    /// `y += a x`.
    fn axpy(&self, a: Self::F, x: &Self::M, y: &mut Self::M) -> Result<()>;
    /// `x * mask` elementwise (`x` without a mask).
    fn masked(&self, x: Self::M, mask: Option<&Self::M>) -> Result<Self::M>;

    // --- graphs and branches
    /// LightGCN over the user-item graph, or (`backward`) its gradient.
    fn propagate(&self, x: &Self::M, backward: bool) -> Result<Self::M>;
    /// `S^L x` over the item-item graph, or (`backward`) `(S^T)^L x`.
    fn item_propagate(&self, x: &Self::M, backward: bool) -> Result<Self::M>;
    /// `X W + 1 b` of branch `slot`'s features.
    fn project(&self, slot: usize, w: &Self::M, b: Option<&Self::M>) -> Result<Self::M>;
    /// `(X^T g, colsum(g))` of branch `slot`'s features (the sums when `bias`).
    fn project_backward(
        &self,
        slot: usize,
        g: &Self::M,
        bias: bool,
    ) -> Result<(Self::M, Option<Self::M>)>;
    /// `X_s W + 1 b` for the rows `s` of branch `slot`'s features, and those rows (what
    /// [`Exec::project_rows_backward`] needs).
    fn project_rows(
        &self,
        slot: usize,
        s: &Self::Sel,
        w: &Self::M,
        b: Option<&Self::M>,
    ) -> Result<(Self::M, Self::M)>;
    /// `(x^T g, colsum(g))` for the feature rows `x` of [`Exec::project_rows`] (the sums when `bias`).
    fn project_rows_backward(
        &self,
        x: &Self::M,
        g: &Self::M,
        bias: bool,
    ) -> Result<(Self::M, Option<Self::M>)>;
    /// One graph-attention layer over branch `slot`'s graph.
    fn gat_forward(
        &self,
        slot: usize,
        p: GatRefs<'_, Self::M>,
        x: &Self::M,
        mode: Mode,
    ) -> Result<(Self::M, Self::GatCache)>;
    /// Its backward pass: the input gradient and the parameter gradients in [`GatRefs`]' field order.
    fn gat_backward(
        &self,
        slot: usize,
        p: GatRefs<'_, Self::M>,
        cache: &Self::GatCache,
        x: &Self::M,
        g: &Self::M,
    ) -> Result<(Self::M, Vec<Self::M>)>;
    /// `LeakyReLU(pre) * mask`.
    fn leaky_relu_masked(
        &self,
        pre: &Self::M,
        slope: Self::F,
        mask: Option<&Self::M>,
    ) -> Result<Self::M>;
    /// Its backward pass for `g = dL/d out`.
    fn leaky_relu_masked_backward(
        &self,
        pre: &Self::M,
        slope: Self::F,
        mask: Option<&Self::M>,
        g: &Self::M,
    ) -> Result<Self::M>;

    // --- alignment and fusion
    /// The model's OAT map of modality embeddings `m` towards collaborative ones `z` with correction
    /// `delta`: the aligned rows, the state, and the solve's deferred check.
    fn oat_forward(
        &self,
        m: &Self::M,
        z: &Self::M,
        delta: &Self::M,
    ) -> Result<(Self::M, Self::Oat, Option<Self::Scalar>)>;
    /// Its backward pass for `g = dL/d aligned`: `[dL/dm, dL/dz, dL/ddelta]`.
    fn oat_backward(
        &self,
        oat: &Self::Oat,
        m: &Self::M,
        z: &Self::M,
        g: &Self::M,
    ) -> Result<[Self::M; 3]>;
    /// The transport plan of an OAT state, on the host.
    fn oat_plan(&self, oat: &Self::Oat) -> Result<Array2<Self::F>>;
    /// The weighted sum of the views with weights from `logits` (`1 x V`): their softmax, or the logits
    /// themselves.
    fn fusion(
        &self,
        views: &[&Self::M],
        logits: &Self::M,
        softmax: bool,
    ) -> Result<(Self::M, Self::Fusion)>;
    /// Its backward pass: each view's gradient and the logits' (`1 x V`).
    fn fusion_backward(
        &self,
        views: &[&Self::M],
        weights: &Self::Fusion,
        logits: &Self::M,
        softmax: bool,
        g: &Self::M,
    ) -> Result<(Vec<Self::M>, Self::M)>;
    /// LayerNorm with `gamma`, `beta` (`1 x d`) and `eps`.
    fn layer_norm(
        &self,
        ln: (&Self::M, &Self::M, Self::F),
        x: &Self::M,
    ) -> Result<(Self::M, Self::NormCache)>;
    /// Its backward pass: `(dL/dx, dL/dgamma, dL/dbeta)`.
    fn layer_norm_backward(
        &self,
        ln: (&Self::M, &Self::M, Self::F),
        cache: &Self::NormCache,
        g: &Self::M,
    ) -> Result<(Self::M, Self::M, Self::M)>;
    /// Rows scaled to unit length: the rows, their norms (`n x 1`) and the deferred zero-row check
    /// naming `what`.
    fn l2_normalize(
        &self,
        x: &Self::M,
        what: &'static str,
    ) -> Result<(Self::M, Self::M, Option<Self::Scalar>)>;
    /// Its backward pass from the normalised rows `y` and the norms.
    fn l2_normalize_backward(&self, y: &Self::M, norms: &Self::M, g: &Self::M) -> Result<Self::M>;

    // --- batches and losses
    /// A selection of rows `ids` of an `n`-row table (every id below `n`).
    fn select(&self, ids: &[usize], n: usize) -> Result<Self::Sel>;
    fn gather(&self, s: &Self::Sel, table: &Self::M) -> Result<Self::M>;
    /// `acc[ids[k]] += g[k]` for every row `k`, in order.
    fn scatter_add(&self, s: &Self::Sel, g: &Self::M, acc: &mut Self::M) -> Result<()>;
    /// BPR on `zu . zi` for `b` triples and the regulariser `reg` on the ego rows `e` (see [`BprOut`]).
    fn bpr(&self, zu: &Self::M, zi: &Self::M, e: &Self::M, reg: Self::F) -> Result<BprOut<Self>>;
    /// The multi-view InfoNCE of `pairs`: scalars whose sum is the loss, and each view's gradient scaled by
    /// `scale`.
    fn info_nce(
        &self,
        views: &[&Self::M],
        pairs: &[ViewPair<Self::F>],
        cfg: &InfoNceConfig<Self::F>,
        scale: Self::F,
    ) -> Result<(Vec<Self::Scalar>, Vec<Self::M>)>;
    /// The squared distances of the rows of `a` to those of `t`, averaged over the rows and divided by
    /// `parts`, as a scalar; and the gradient of their mean with respect to `a`, times `scale`
    /// (`2 scale (a - t) / rows`; `t` is held fixed).
    fn sq_dist(
        &self,
        a: &Self::M,
        t: &Self::M,
        scale: Self::F,
        parts: Self::F,
    ) -> Result<(Self::Scalar, Self::M)>;
    /// A value known on the host.
    fn scalar(&self, v: f64) -> Self::Scalar;
    /// Every scalar's value (or the error of its check), in order, read in one go.
    ///
    /// # Errors
    /// The outer error is the backend's failing to read at all.
    fn read(&self, xs: &[&Self::Scalar]) -> Result<Vec<Result<f64>>>;

    // --- optimiser
    fn adam_state(&self, st: &AdamState<Self::F>) -> Result<Self::Adam>;
    fn adam_state_download(&self, st: &Self::Adam) -> Result<AdamState<Self::F>>;
    fn adam_step(
        &self,
        adam: &Adam<Self::F>,
        p: &mut Self::M,
        g: &Self::M,
        st: &mut Self::Adam,
    ) -> Result<()>;
}

/// The fixed inputs of a model that a backend binds to: the normalised user-item graph, LightGCN's depth,
/// each branch's features and attended graph (modalities, then the user branch), the graph-attention
/// layer and the OAT operator.
#[derive(Debug, Clone)]
pub(crate) struct Inputs<'a, F: Real> {
    pub(crate) adj: &'a crate::graph::CsrGraph<F>,
    pub(crate) layers: usize,
    /// The item-item graph and its layers, when the model has the item-graph view.
    pub(crate) item_graph: Option<(&'a crate::graph::CsrGraph<F>, usize)>,
    pub(crate) branches: Vec<(&'a Array2<F>, &'a crate::graph::CsrGraph<F>)>,
    pub(crate) gat: &'a crate::attention::GatLayer<F>,
    pub(crate) oat: Option<&'a crate::transport::AdaptiveTransport<F>>,
    pub(crate) backend: &'a crate::Backend,
}

/// A model's inputs uploaded to a device once, when the model is built on [`crate::Backend::Gpu`].
#[cfg(feature = "gpu")]
pub(crate) type Device = Option<std::sync::Arc<gpu::GpuInputs>>;
/// Without the `gpu` feature there is no device to upload to.
#[cfg(not(feature = "gpu"))]
pub(crate) type Device = Option<std::convert::Infallible>;

/// Uploads `inputs` when `backend` is a GPU (the model must be f32 there).
///
/// # Errors
/// [`crate::Error::Param`] for a float type other than f32 on a GPU; the upload errors.
pub(crate) fn attach<F: Real>(inputs: &Inputs<'_, F>) -> Result<Device> {
    #[cfg(feature = "gpu")]
    if let crate::Backend::Gpu(gb) = inputs.backend {
        return Ok(Some(std::sync::Arc::new(gpu::GpuInputs::new(gb, inputs)?)));
    }
    let _ = inputs;
    Ok(None)
}
