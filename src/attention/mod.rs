//! Graph attention layers (GATConv and GATv2 scoring) with hand-written backward passes.
//!
//! # The layer (GATConv semantics, as DGL and PyG define them)
//! For node features `x` (N x F_in) on a graph whose row `i` lists the sources of the edges into `i`:
//!
//! ```text
//! x' = feature_dropout(x)
//! g  = x' W                                   N x (H C), head h in columns h C .. (h + 1) C
//! GATConv:  e_ij^h = LeakyReLU(a_src^h . g_j^h + a_dst^h . g_i^h)
//! GATv2:    e_ij^h = a^h . LeakyReLU(g_j^h + g_i^h)          (shared W, "share_weights")
//! alpha_ij^h = softmax over the incoming edges j of i (self loops included when the graph has them)
//! out_i^h  = sum_j attention_dropout(alpha)_ij^h g_j^h
//! out      = concat_h out^h  or  mean_h out^h,  + x' W_res (or + x' when the widths match), + bias
//! ```
//!
//! # Memory
//! GATConv scores are node-level (`el = g a_src`, `er = g a_dst`: N x H), and GATConv keeps no edge-level
//! array at all: the forward pass stores, per node, the softmax shift and normaliser of each head and the
//! aggregated messages (N x (2H + H C)), from which any edge's attention is recomputed exactly
//! ([`GatLayer::attention`], and the backward pass). No E x H x C intermediate exists, forward or backward.
//! GATv2 keeps its attention (E x H) and, in backward, one E x H buffer of logit gradients; it needs the
//! per-edge C-vectors `g_j^h + g_i^h`, which are recomputed where used (twice in backward) instead of stored,
//! at about twice the scoring flops.
//!
//! # Backward without atomics
//! GATConv: one source-major pass over the cached transposed CSR ([`crate::graph::CsrGraph::transposed`],
//! which carries edge ids). For each edge `j -> i` it recomputes the attention from `i`'s node record and
//! `dalpha = <dacc_i, g_j>` per head; `sum_k alpha_ik dalpha_ik` is node-level (`<dacc_i, acc_i>` per head).
//! Each node's message and source-score gradients are accumulated in one place; the destination-score
//! gradients (`N x H`) are scattered into one buffer per work chunk, summed in chunk order afterwards.
//! GATv2: a destination-major pass over the CSR computes the softmax and LeakyReLU backward, then a
//! source-major pass over the transposed CSR accumulates the message and source-side gradients.
//!
//! With 8 heads of width 8 (the RecGOAT setting) GATConv runs on kernels that keep the features
//! head-minor, so that every per-head quantity is one 8-lane vector (see `attention/cpu/lanes.rs`).

pub(crate) mod cpu;

use crate::backend::Par;
use crate::error::{check_finite, check_finite_array, Error, Result};
use crate::graph::CsrGraph;
use crate::simd::Real;
use ndarray::{Array1, Array2, ArrayView2};
use rand::Rng;
use rand_distr::{Distribution, Normal};
use std::borrow::Cow;

/// How attention logits are scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scoring {
    /// GAT (Velickovic et al.): `LeakyReLU(a_src . g_j + a_dst . g_i)`.
    #[default]
    GatConv,
    /// GATv2 (Brody et al.) with shared weights: `a . LeakyReLU(g_j + g_i)`.
    GatV2,
}

/// Whether dropout is active.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Training: feature and attention dropout on, masks drawn from this seed (same seed, same masks,
    /// whatever the parallelism).
    Train {
        /// Seed of the dropout masks.
        seed: u64,
    },
    /// Evaluation: dropout off.
    Eval,
}

/// Configuration of a [`GatLayer`]; check it with [`GatConfig::validate`] (done by [`GatLayer::new`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GatConfig<F> {
    /// Input width F_in.
    pub in_dim: usize,
    /// Number of heads H.
    pub heads: usize,
    /// Width of each head C.
    pub head_dim: usize,
    /// Concatenate heads (output H C) or average them (output C).
    pub concat: bool,
    /// LeakyReLU slope of the scores (0.2 in GAT).
    pub negative_slope: F,
    /// Scoring function.
    pub scoring: Scoring,
    /// Learnable output bias.
    pub bias: bool,
    /// Residual connection (a projection when F_in differs from the output width, else the identity).
    pub residual: bool,
    /// Dropout probability on the input features.
    pub feat_drop: F,
    /// Dropout probability on the attention coefficients.
    pub attn_drop: F,
    /// Add a self loop to every node that lacks one before attending.
    pub add_self_loops: bool,
}

impl<F: Real> GatConfig<F> {
    /// `heads` heads splitting `out_dim` (concatenated), GATConv scoring, slope 0.2, bias, self loops, no
    /// residual, no dropout.
    ///
    /// # Errors
    /// [`Error::Param`] when `heads` does not divide `out_dim` or a size is 0.
    pub fn new(in_dim: usize, out_dim: usize, heads: usize) -> Result<Self> {
        const OP: &str = "GatConfig::new";
        if heads == 0 || out_dim % heads != 0 {
            return Err(Error::param(
                OP,
                "heads",
                heads,
                format!("must divide the output width {out_dim}"),
            ));
        }
        let cfg = GatConfig {
            in_dim,
            heads,
            head_dim: out_dim / heads,
            concat: true,
            negative_slope: F::c(0.2),
            scoring: Scoring::GatConv,
            bias: true,
            residual: false,
            feat_drop: F::zero(),
            attn_drop: F::zero(),
            add_self_loops: true,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Output width: `heads * head_dim` when concatenating, else `head_dim`.
    pub fn out_dim(&self) -> usize {
        if self.concat {
            self.heads * self.head_dim
        } else {
            self.head_dim
        }
    }

    /// Whether the residual needs a projection (`in_dim != out_dim`).
    pub fn residual_projection(&self) -> bool {
        self.residual && self.in_dim != self.out_dim()
    }

    /// Checks every field.
    ///
    /// # Errors
    /// [`Error::Param`] naming the field: sizes of 0, a negative or non-finite slope, dropout outside `[0, 1)`.
    pub fn validate(&self) -> Result<()> {
        const OP: &str = "GatConfig";
        for (name, v) in [
            ("in_dim", self.in_dim),
            ("heads", self.heads),
            ("head_dim", self.head_dim),
        ] {
            if v == 0 {
                return Err(Error::param(OP, name, 0, "must be >= 1"));
            }
        }
        let slope_ok = self.negative_slope.is_finite() && self.negative_slope >= F::zero();
        if !slope_ok {
            return Err(Error::param(
                OP,
                "negative_slope",
                self.negative_slope,
                "must be finite and >= 0",
            ));
        }
        for (name, p) in [("feat_drop", self.feat_drop), ("attn_drop", self.attn_drop)] {
            let in_range = p >= F::zero() && p < F::one();
            if !in_range {
                return Err(Error::param(
                    OP,
                    name,
                    p,
                    "dropout probability must be in [0, 1)",
                ));
            }
        }
        Ok(())
    }
}

/// Parameters of a [`GatLayer`].
#[derive(Debug, Clone, PartialEq)]
pub struct GatParams<F> {
    /// Projection W, F_in x (H C), no bias.
    pub w: Array2<F>,
    /// Source attention vectors a_src, H x C (GATv2: its single vector a).
    pub a_src: Array2<F>,
    /// Destination attention vectors a_dst, H x C (GATConv only; `None` for GATv2).
    pub a_dst: Option<Array2<F>>,
    /// Output bias (out_dim), when configured.
    pub bias: Option<Array1<F>>,
    /// Residual projection F_in x out_dim, when the residual needs one.
    pub w_res: Option<Array2<F>>,
}

impl<F: Real> GatParams<F> {
    /// [`GatParams::init`] from a seed (a ChaCha8 generator): no `rand` types in the call.
    ///
    /// # Example
    /// ```
    /// use recgoat_core::attention::{GatConfig, GatParams};
    /// let cfg = GatConfig::<f32>::new(4, 8, 2).unwrap();
    /// assert_eq!(GatParams::seeded(&cfg, 7), GatParams::seeded(&cfg, 7));
    /// ```
    pub fn seeded(cfg: &GatConfig<F>, seed: u64) -> Self {
        Self::init(cfg, &mut crate::testing::rng(seed))
    }

    /// Xavier-normal initialisation with gain `sqrt(2)` (as DGL's GATConv), zero bias.
    pub fn init(cfg: &GatConfig<F>, rng: &mut impl Rng) -> Self {
        let hc = cfg.heads * cfg.head_dim;
        let mut xavier = |rows: usize, cols: usize| {
            let std = 2f64.sqrt() * (2.0 / (rows + cols) as f64).sqrt();
            let dist = Normal::new(0.0, std).expect("positive std");
            Array2::from_shape_simple_fn((rows, cols), || F::c(dist.sample(rng)))
        };
        let w = xavier(cfg.in_dim, hc);
        let a_src = xavier(cfg.heads, cfg.head_dim);
        let a_dst = (cfg.scoring == Scoring::GatConv).then(|| xavier(cfg.heads, cfg.head_dim));
        let w_res = cfg
            .residual_projection()
            .then(|| xavier(cfg.in_dim, cfg.out_dim()));
        let bias = cfg.bias.then(|| Array1::zeros(cfg.out_dim()));
        GatParams {
            w,
            a_src,
            a_dst,
            bias,
            w_res,
        }
    }

    pub(crate) fn check(&self, cfg: &GatConfig<F>) -> Result<()> {
        const OP: &str = "GatLayer: params";
        let hc = cfg.heads * cfg.head_dim;
        let want = |what: &str, got: (usize, usize), exp: (usize, usize)| -> Result<()> {
            if got != exp {
                return Err(Error::shape(OP, what.to_string(), exp, got));
            }
            Ok(())
        };
        want("w", self.w.dim(), (cfg.in_dim, hc))?;
        want("a_src", self.a_src.dim(), (cfg.heads, cfg.head_dim))?;
        match (&self.a_dst, cfg.scoring) {
            (Some(a), Scoring::GatConv) => want("a_dst", a.dim(), (cfg.heads, cfg.head_dim))?,
            (None, Scoring::GatV2) => {}
            (got, s) => {
                return Err(Error::Param {
                    op: OP,
                    name: "a_dst",
                    value: (if got.is_some() { "Some" } else { "None" }).to_string(),
                    reason: format!(
                        "{s:?} scoring needs a_dst {}",
                        if s == Scoring::GatConv {
                            "Some"
                        } else {
                            "None"
                        }
                    ),
                })
            }
        }
        match (&self.bias, cfg.bias) {
            (Some(b), true) if b.len() == cfg.out_dim() => {}
            (None, false) => {}
            (b, _) => {
                return Err(Error::shape(
                    OP,
                    "bias",
                    cfg.bias.then(|| cfg.out_dim()),
                    b.as_ref().map(|b| b.len()),
                ))
            }
        }
        match (&self.w_res, cfg.residual_projection()) {
            (Some(r), true) => want("w_res", r.dim(), (cfg.in_dim, cfg.out_dim()))?,
            (None, false) => {}
            (r, need) => {
                return Err(Error::shape(
                    OP,
                    "w_res",
                    need.then(|| (cfg.in_dim, cfg.out_dim())),
                    r.as_ref().map(|r| r.dim()),
                ))
            }
        }
        check_finite(OP, "w", self.w.iter().copied())?;
        check_finite(OP, "a_src", self.a_src.iter().copied())?;
        for (what, t) in [("a_dst", &self.a_dst), ("w_res", &self.w_res)] {
            if let Some(t) = t {
                check_finite(OP, what, t.iter().copied())?;
            }
        }
        if let Some(b) = &self.bias {
            check_finite(OP, "bias", b.iter().copied())?;
        }
        Ok(())
    }
}

/// What [`GatLayer::backward`] needs from the forward pass.
#[derive(Debug, Clone)]
pub struct GatCache<F> {
    /// The graph with self loops, when the layer added them.
    looped: Option<CsrGraph<F>>,
    /// [`CsrGraph::structure_fingerprint`] of the graph given to the forward pass.
    fingerprint: u64,
    x_drop: Array2<F>,
    feat_mask: Option<Array2<F>>,
    g: Array2<F>,
    el: Array2<F>,
    er: Array2<F>,
    /// GATv2: the attention (E x H, edge-major); empty for GATConv, whose attention is recomputed from `el`,
    /// `er` and `soft` where needed.
    alpha: Vec<F>,
    /// GATConv: per node, the softmax shift (max logit) and normaliser (1 / sum of exps) of each head and
    /// the aggregated messages (`N x (2H + H C)`); empty for GATv2.
    soft: Vec<F>,
    attn_mask: Option<Vec<F>>,
}

/// Gradients from [`GatLayer::backward`].
#[derive(Debug, Clone)]
pub struct GatGrads<F> {
    /// `dL/dx` (N x F_in).
    pub grad_x: Array2<F>,
    /// `dL/dW`.
    pub grad_w: Array2<F>,
    /// `dL/da_src`.
    pub grad_a_src: Array2<F>,
    /// `dL/da_dst` (GATConv).
    pub grad_a_dst: Option<Array2<F>>,
    /// `dL/dbias`.
    pub grad_bias: Option<Array1<F>>,
    /// `dL/dW_res`.
    pub grad_w_res: Option<Array2<F>>,
}

/// A graph attention layer. See the module documentation for the equations.
///
/// # Example
/// ```
/// use ndarray::array;
/// use recgoat_core::{Par, attention::*, graph::CsrGraph, testing};
/// // a triangle, as (destination, source) pairs; the layer adds the self loops
/// let g = CsrGraph::<f64>::from_edges(3, 3, &[(0, 1), (1, 0), (1, 2), (2, 1), (0, 2), (2, 0)], None).unwrap();
/// let cfg = GatConfig::new(2, 4, 2).unwrap();
/// let layer = GatLayer::new(cfg).unwrap();
/// let params = GatParams::init(&cfg, &mut testing::rng(0));
/// let x = array![[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]];
/// let (out, cache) = layer.forward(&params, &g, x.view(), Mode::Eval, Par::Seq).unwrap();
/// assert_eq!(out.dim(), (3, 4));
/// // each node attends over 3 edges (2 neighbours + itself) per head, and the weights sum to 1
/// let a = layer.attention(&g, &cache).unwrap();
/// assert_eq!(a.len(), 9 * 2);
/// assert!((a[0] + a[2] + a[4] - 1.0).abs() < 1e-12);
/// let grads = layer.backward(&params, &g, &cache, out.view(), Par::Seq).unwrap();
/// assert_eq!(grads.grad_w.dim(), (2, 4));
/// ```
#[derive(Debug, Clone)]
pub struct GatLayer<F> {
    cfg: GatConfig<F>,
}

impl<F: Real> GatLayer<F> {
    /// A layer with a validated configuration.
    ///
    /// # Errors
    /// As [`GatConfig::validate`].
    pub fn new(cfg: GatConfig<F>) -> Result<Self> {
        cfg.validate()?;
        Ok(GatLayer { cfg })
    }

    /// The configuration.
    pub fn config(&self) -> &GatConfig<F> {
        &self.cfg
    }

    pub(crate) fn attended<'g>(&self, graph: &'g CsrGraph<F>) -> Result<Cow<'g, CsrGraph<F>>> {
        const OP: &str = "GatLayer";
        if graph.n_rows() != graph.n_cols() {
            return Err(Error::Graph {
                op: OP,
                reason: format!(
                    "attention needs a square graph, got {} x {}",
                    graph.n_rows(),
                    graph.n_cols()
                ),
            });
        }
        let g = if self.cfg.add_self_loops && !graph.has_all_self_loops() {
            Cow::Owned(graph.with_self_loops()?)
        } else {
            Cow::Borrowed(graph)
        };
        if let Some(i) = (0..g.n_rows()).find(|&i| g.row_range(i).is_empty()) {
            return Err(Error::Graph {
                op: OP,
                reason: format!("node {i} has no incoming edge (zero in-degree) and add_self_loops is off: its softmax is empty"),
            });
        }
        Ok(g)
    }

    /// Forward pass: the output (N x out_dim) and the cache for [`GatLayer::backward`].
    ///
    /// # Errors
    /// [`Error::Shape`] for features that do not match the graph or `in_dim`, or parameters of the wrong
    /// shape; [`Error::NonFinite`] for NaN/Inf features or parameters; [`Error::Graph`] for a non-square
    /// graph or a node without incoming edges when self loops are not added.
    ///
    /// # Complexity
    /// `O(N F_in H C)` for the projection, `O(E H C)` for attention and aggregation; memory `O(N H C + E H)`.
    pub fn forward(
        &self,
        params: &GatParams<F>,
        graph: &CsrGraph<F>,
        x: ArrayView2<'_, F>,
        mode: Mode,
        par: impl Into<Par>,
    ) -> Result<(Array2<F>, GatCache<F>)> {
        let par: Par = par.into();
        const OP: &str = "GatLayer::forward";
        params.check(&self.cfg)?;
        if x.dim() != (graph.n_rows(), self.cfg.in_dim) {
            return Err(Error::shape(
                OP,
                "x (nodes x in_dim)",
                (graph.n_rows(), self.cfg.in_dim),
                x.dim(),
            ));
        }
        check_finite_array(OP, "x", &x)?;
        let g = self.attended(graph)?;
        let (out, mut cache) = cpu::forward(&self.cfg, params, &g, x, mode, par);
        cache.fingerprint = graph.structure_fingerprint();
        if let Cow::Owned(looped) = g {
            cache.looped = Some(looped);
        }
        Ok((out, cache))
    }

    /// Backward pass: gradients of `L` for `grad_out = dL/d out`, for the inputs and every parameter.
    ///
    /// `graph` is the graph given to [`GatLayer::forward`].
    ///
    /// # Errors
    /// [`Error::Shape`] for a `grad_out` of the wrong shape or a graph that is not the forward one;
    /// [`Error::NonFinite`] for NaN/Inf in `grad_out`.
    ///
    /// # Complexity
    /// As the forward pass; the transposed graph is built once per graph and cached on it.
    pub fn backward(
        &self,
        params: &GatParams<F>,
        graph: &CsrGraph<F>,
        cache: &GatCache<F>,
        grad_out: ArrayView2<'_, F>,
        par: impl Into<Par>,
    ) -> Result<GatGrads<F>> {
        let par: Par = par.into();
        const OP: &str = "GatLayer::backward";
        params.check(&self.cfg)?;
        if graph.structure_fingerprint() != cache.fingerprint {
            return Err(Error::Graph {
                op: OP,
                reason: "not the graph of the forward pass (structure differs)".into(),
            });
        }
        let g = cache.looped.as_ref().unwrap_or(graph);
        if grad_out.dim() != (g.n_rows(), self.cfg.out_dim()) {
            return Err(Error::shape(
                OP,
                "grad_out",
                (g.n_rows(), self.cfg.out_dim()),
                grad_out.dim(),
            ));
        }
        check_finite_array(OP, "grad_out", &grad_out)?;
        Ok(cpu::backward(&self.cfg, params, g, cache, grad_out, par))
    }

    /// The attention coefficients of a forward pass (before attention dropout), edge-major:
    /// `alpha[e * H + h]`, for the edges of the graph the layer attended over (`graph` with the added self
    /// loops, if the layer added them).
    ///
    /// GATConv keeps no E x H array in its cache: the coefficients are recomputed here, in `O(E H)`, from
    /// the node scores and per-node softmax statistics it does keep (exactly as the forward pass computed
    /// them). GATv2 returns a copy of its stored coefficients.
    ///
    /// # Errors
    /// [`Error::Graph`] when `graph` is not the graph of the forward pass.
    pub fn attention(&self, graph: &CsrGraph<F>, cache: &GatCache<F>) -> Result<Vec<F>> {
        if graph.structure_fingerprint() != cache.fingerprint {
            return Err(Error::Graph {
                op: "GatLayer::attention",
                reason: "not the graph of the forward pass (structure differs)".into(),
            });
        }
        let g = cache.looped.as_ref().unwrap_or(graph);
        Ok(match self.cfg.scoring {
            Scoring::GatV2 => cache.alpha.clone(),
            Scoring::GatConv => cpu::attention(&self.cfg, g, cache),
        })
    }
}

/// Dense f64 reference of the forward pass in evaluation mode: explicit loops over a dense adjacency mask,
/// the softmax over each row's non-zeros. `graph` must already contain the self loops it should attend over.
pub fn reference_forward(
    cfg: &GatConfig<f64>,
    params: &GatParams<f64>,
    graph: &CsrGraph<f64>,
    x: &Array2<f64>,
) -> Array2<f64> {
    let n = graph.n_rows();
    let (h, c) = (cfg.heads, cfg.head_dim);
    let mask = Array2::from_shape_fn((n, n), |(i, j)| graph.row(i).contains(&(j as u32)));
    let g = x.dot(&params.w);
    let lrelu = |v: f64| if v > 0.0 { v } else { cfg.negative_slope * v };
    let mut out = Array2::<f64>::zeros((n, cfg.out_dim()));
    for i in 0..n {
        for hh in 0..h {
            let gi = g.row(i).slice(ndarray::s![hh * c..(hh + 1) * c]).to_owned();
            let score = |j: usize| -> f64 {
                let gj = g.row(j).slice(ndarray::s![hh * c..(hh + 1) * c]).to_owned();
                match cfg.scoring {
                    Scoring::GatConv => lrelu(
                        params.a_src.row(hh).dot(&gj)
                            + params
                                .a_dst
                                .as_ref()
                                .expect("GATConv has a_dst")
                                .row(hh)
                                .dot(&gi),
                    ),
                    Scoring::GatV2 => params.a_src.row(hh).dot(&(&gj + &gi).mapv(lrelu)),
                }
            };
            let nbrs: Vec<usize> = (0..n).filter(|&j| mask[[i, j]]).collect();
            let logits: Vec<f64> = nbrs.iter().map(|&j| score(j)).collect();
            let mx = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = logits.iter().map(|l| (l - mx).exp()).sum();
            for (&j, l) in nbrs.iter().zip(&logits) {
                let a = (l - mx).exp() / z;
                for cc in 0..c {
                    let v = a * g[[j, hh * c + cc]];
                    if cfg.concat {
                        out[[i, hh * c + cc]] += v;
                    } else {
                        out[[i, cc]] += v / h as f64;
                    }
                }
            }
        }
    }
    if cfg.residual {
        out += &params
            .w_res
            .as_ref()
            .map_or_else(|| x.clone(), |r| x.dot(r));
    }
    if let Some(b) = &params.bias {
        out += b;
    }
    out
}

pub(crate) fn leaky<F: Real>(v: F, slope: F) -> F {
    if v > F::zero() {
        v
    } else {
        v * slope
    }
}

pub(crate) fn leaky_grad<F: Real>(v: F, slope: F) -> F {
    if v > F::zero() {
        F::one()
    } else {
        slope
    }
}
