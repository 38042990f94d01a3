//! Entropic and adaptive optimal transport: the Sinkhorn family with hand-written gradients.
//!
//! # The problem
//! For a cost `C` (n x m) and positive weights `a` (n), `b` (m), the solvers compute
//!
//! ```text
//! OT_eps(a, b) = min_P <P, C> + eps KL(P | a b^T) + rho_a KL(P 1 | a) + rho_b KL(P^T 1 | b)
//! ```
//!
//! where the two marginal terms are hard constraints (`P 1 = a`, `P^T 1 = b`) in the balanced case
//! ([`Marginal::Balanced`]) and KL penalties otherwise ([`Marginal::Kl`]). The plan is
//! `P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps)` for the dual potentials `f`, `g` that
//! [`SinkhornOutput`] returns. The entropy is taken relative to `a b^T` (as OTT-JAX and GeomLoss do), so
//! `f` and `g` stay bounded as the weights change and the debiased divergence is well defined.
//!
//! # Choosing eps and the solver
//! * **eps sets the blur.** The plan spreads mass over pairs whose cost is within a few eps of the best one.
//!   Set it relative to the cost ([`Epsilon::relative`]): `0.01 x mean(C)` is sharp, `0.1 x` smooth, `1 x`
//!   close to the independent coupling. An absolute eps only makes sense when the cost has a known scale.
//! * **Log domain by default.** [`Domain::Log`] never overflows and stays finite in f32 down to
//!   `eps = 1e-4 x median(C)`. [`Domain::Scaling`] (POT's `sinkhorn_knopp`) stores `exp(-C/eps)`; it is only
//!   safe when `C/eps` stays below about 80 (f32) or 700 (f64): beyond that the kernel underflows and the
//!   output comes back with `converged = false` and [`Termination::NonFinite`].
//! * **Small eps converges slowly.** Iterations grow like `max(C)/eps`. With eps below about `0.01 x mean(C)`,
//!   use an eps schedule ([`EpsSchedule::Geometric`]): solve for a large eps, warm-start the next, decay to
//!   the target. It costs a few cheap stages and saves most of the iterations.
//! * **Unbalanced** when the masses differ or outliers should be dropped: `rho` is the price of creating or
//!   destroying mass, in cost units; `rho -> inf` is the balanced problem. `tau = rho / (rho + eps)` is the
//!   same knob as a damping factor in `(0, 1)` ([`Marginal::Tau`]).
//! * **Large point clouds** (`n m` over a few million): pass a [`Geometry::sq_euclidean`] instead of a dense
//!   matrix; the cost is recomputed per row block and memory stays `O((n + m) d)`.
//! * **Gradients.** The value's gradient needs nothing more than the potentials ([`envelope`]). A loss on the
//!   *plan* needs [`implicit_plan_vjp`] (exact at convergence, one linear solve) or [`unrolled_plan_vjp`]
//!   (exact for a fixed number of iterations, memory grows with it).
//!
//! # Stopping rule
//! The marginal error is `||P 1 - a'||_p + ||P^T 1 - b'||_p` in the norm [`ErrorNorm`] names, with `a' = a`
//! (balanced) or `a' = a exp(-f / rho_a)` (the unbalanced optimality condition). After each update of `g`
//! the column term is zero, so the solver measures the row term every `check_every` iterations and stops
//! when it is at most `tol`.

mod adaptive;
mod cost;
pub(crate) mod cpu;
pub(crate) mod divergence;
mod grad;
#[cfg(feature = "gpu")]
mod on_gpu;
pub mod reference;

#[cfg(feature = "gpu")]
pub(crate) use adaptive::PlanState;
pub use adaptive::{
    AdaptiveCache, AdaptiveGrads, AdaptiveTransport, AdaptiveTransportConfig, PlanGradient,
};
#[cfg(feature = "gpu")]
pub(crate) use cost::dimension_cost_from_moments;
pub use cost::{dimension_cost, dimension_cost_backward, sq_euclidean_cost, Geometry, PointCloud};
pub use divergence::{sinkhorn_divergence, DivergenceOutput, MATERIALIZE_BYTES};
pub use grad::{
    envelope, implicit_plan_vjp, point_cloud_gradients, unrolled_plan_vjp, EnvelopeGrads,
    ImplicitConfig, LinearSolver, PlanGrads, UnrolledOutput,
};

use crate::backend::{map_items, Backend, Par};
use crate::error::{Error, Result};
use crate::simd::{positive_finite, positive_normal, Real};
use ndarray::{Array1, Array2, ArrayView1};

/// Which summary of the cost entries a relative eps multiplies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpsScale {
    /// Mean of all entries.
    Mean,
    /// Median of all entries (a deterministic subsample for large point clouds).
    Median,
    /// Largest entry.
    Max,
}

/// The entropic regularisation strength.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Epsilon<F> {
    /// An absolute value, in cost units.
    Absolute(F),
    /// `factor x statistic(C)`.
    Relative {
        /// Summary statistic of the cost.
        scale: EpsScale,
        /// Multiplier.
        factor: F,
    },
}

impl<F: Real> Epsilon<F> {
    /// `factor x scale(C)`.
    pub fn relative(scale: EpsScale, factor: F) -> Self {
        Epsilon::Relative { scale, factor }
    }

    fn validate(&self, name: &'static str) -> Result<()> {
        let v = match *self {
            Epsilon::Absolute(e) => e,
            Epsilon::Relative { factor, .. } => factor,
        };
        if !positive_normal(v) {
            return Err(Error::param(
                "SinkhornConfig",
                name,
                v,
                "eps (or its factor) must be finite, > 0 and a normal float (1 / eps finite)",
            ));
        }
        Ok(())
    }

    /// The absolute eps for a geometry.
    ///
    /// # Errors
    /// [`Error::Param`] when a relative eps resolves to 0 (an all-zero cost).
    pub fn resolve(&self, geom: &Geometry<'_, F>, par: impl Into<Par>) -> Result<F> {
        let par: Par = par.into();
        let e = match *self {
            Epsilon::Absolute(e) => e,
            Epsilon::Relative { scale, factor } => factor * geom.statistic(scale, par),
        };
        if !positive_normal(e) {
            return Err(Error::param(
                "SinkhornConfig",
                "eps",
                e,
                format!("{self:?} resolves to a non-positive eps (is the cost all zeros?); give Epsilon::Absolute"),
            ));
        }
        Ok(e)
    }
}

/// How eps moves during a solve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EpsSchedule<F> {
    /// Solve directly at the target eps.
    Constant,
    /// eps-scaling: start at `start`, multiply by `decay` after each stage until the target is reached;
    /// each intermediate stage runs at most `stage_iters` iterations (or until `tol`), warm-starting the next.
    Geometric {
        /// First eps.
        start: Epsilon<F>,
        /// Factor in (0, 1) between stages.
        decay: F,
        /// Iteration cap of each intermediate stage.
        stage_iters: usize,
    },
}

/// Iteration domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Domain {
    /// Potentials in the log domain, absorbed every iteration (stable; the default).
    #[default]
    Log,
    /// Scaling vectors `u, v` against the kernel `exp(-C/eps)` (POT's `sinkhorn_knopp`; fast but underflows
    /// for small eps). Needs an `n x m` kernel in memory.
    Scaling,
}

/// Norm of the marginal error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorNorm {
    /// Sum of absolute deviations (total mass misplaced).
    #[default]
    L1,
    /// Euclidean norm (POT's choice).
    L2,
    /// Largest absolute deviation.
    LInf,
}

impl ErrorNorm {
    pub(crate) fn apply<F: Real>(self, it: impl Iterator<Item = F>) -> F {
        match self {
            ErrorNorm::L1 => it.fold(F::zero(), |s, v| s + v.abs()),
            ErrorNorm::L2 => it.fold(F::zero(), |s, v| s + v * v).sqrt(),
            ErrorNorm::LInf => it.fold(F::zero(), |s, v| s.max(v.abs())),
        }
    }
}

/// How one marginal is enforced.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Marginal<F> {
    /// Hard constraint (balanced OT on this side).
    #[default]
    Balanced,
    /// KL penalty of strength `rho > 0` (cost units).
    Kl(F),
    /// KL penalty given as the damping `tau = rho / (rho + eps)` in (0, 1), at the target eps.
    Tau(F),
}

impl<F: Real> Marginal<F> {
    /// The penalty `rho` at the target eps (`None` for balanced).
    pub fn rho(&self, eps: F) -> Option<F> {
        match *self {
            Marginal::Balanced => None,
            Marginal::Kl(r) => Some(r),
            Marginal::Tau(t) => Some(eps * t / (F::one() - t)),
        }
    }

    fn validate(&self, name: &'static str) -> Result<()> {
        match *self {
            Marginal::Balanced => Ok(()),
            Marginal::Kl(r) if r > F::zero() && r.is_finite() => Ok(()),
            Marginal::Kl(r) => Err(Error::param(
                "SinkhornConfig",
                name,
                r,
                "rho must be finite and > 0",
            )),
            Marginal::Tau(t) if t > F::zero() && t < F::one() => Ok(()),
            Marginal::Tau(t) => Err(Error::param(
                "SinkhornConfig",
                name,
                t,
                "tau must be in (0, 1)",
            )),
        }
    }
}

/// Settings of a Sinkhorn solve. Build with [`SinkhornConfig::new`] and the `with_*` methods; every solve
/// validates it first.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkhornConfig<F> {
    /// Target regularisation.
    pub eps: Epsilon<F>,
    /// eps schedule.
    pub schedule: EpsSchedule<F>,
    /// Iteration domain.
    pub domain: Domain,
    /// Stop when the marginal error is at most this.
    pub tol: F,
    /// Norm of the marginal error.
    pub norm: ErrorNorm,
    /// Measure the error every this many iterations.
    pub check_every: usize,
    /// Iteration cap of the final stage.
    pub max_iter: usize,
    /// Constraint on the row marginal `a`.
    pub marginal_a: Marginal<F>,
    /// Constraint on the column marginal `b`.
    pub marginal_b: Marginal<F>,
    /// Materialise the plan in the output.
    pub return_plan: bool,
}

impl<F: Real> Default for SinkhornConfig<F> {
    fn default() -> Self {
        SinkhornConfig {
            eps: Epsilon::relative(EpsScale::Mean, F::c(0.05)),
            schedule: EpsSchedule::Constant,
            domain: Domain::Log,
            tol: F::c(1e-6).max(F::epsilon() * F::c(64.0)),
            norm: ErrorNorm::L1,
            check_every: 10,
            max_iter: 1000,
            marginal_a: Marginal::Balanced,
            marginal_b: Marginal::Balanced,
            return_plan: false,
        }
    }
}

impl<F: Real> SinkhornConfig<F> {
    /// Defaults (balanced, log domain, tol 1e-6 in L1, 1000 iterations) with the given eps.
    pub fn new(eps: Epsilon<F>) -> Self {
        SinkhornConfig {
            eps,
            ..Default::default()
        }
    }
    /// Sets the tolerance and its norm.
    pub fn with_tol(mut self, tol: F, norm: ErrorNorm) -> Self {
        self.tol = tol;
        self.norm = norm;
        self
    }
    /// Sets the iteration cap and how often the error is measured.
    pub fn with_iters(mut self, max_iter: usize, check_every: usize) -> Self {
        self.max_iter = max_iter;
        self.check_every = check_every;
        self
    }
    /// Sets the iteration domain.
    pub fn with_domain(mut self, domain: Domain) -> Self {
        self.domain = domain;
        self
    }
    /// Sets the eps schedule.
    pub fn with_schedule(mut self, schedule: EpsSchedule<F>) -> Self {
        self.schedule = schedule;
        self
    }
    /// Sets both marginal constraints.
    pub fn with_marginals(mut self, a: Marginal<F>, b: Marginal<F>) -> Self {
        self.marginal_a = a;
        self.marginal_b = b;
        self
    }
    /// Asks for the plan in the output.
    pub fn with_plan(mut self, on: bool) -> Self {
        self.return_plan = on;
        self
    }

    /// Checks every field.
    ///
    /// # Errors
    /// [`Error::Param`] naming the field: eps or factor not > 0, tol not > 0, `max_iter` or `check_every`
    /// of 0, rho not > 0, tau outside (0, 1), schedule decay outside (0, 1) or `stage_iters` of 0.
    pub fn validate(&self) -> Result<()> {
        const OP: &str = "SinkhornConfig";
        self.eps.validate("eps")?;
        if !positive_finite(self.tol) {
            return Err(Error::param(OP, "tol", self.tol, "must be finite and > 0"));
        }
        if self.max_iter == 0 {
            return Err(Error::param(OP, "max_iter", 0, "must be >= 1"));
        }
        if self.check_every == 0 {
            return Err(Error::param(OP, "check_every", 0, "must be >= 1"));
        }
        self.marginal_a.validate("marginal_a")?;
        self.marginal_b.validate("marginal_b")?;
        if let EpsSchedule::Geometric {
            start,
            decay,
            stage_iters,
        } = self.schedule
        {
            start.validate("schedule.start")?;
            if !positive_finite(decay) || decay >= F::one() {
                return Err(Error::param(
                    OP,
                    "schedule.decay",
                    decay,
                    "must be in (0, 1)",
                ));
            }
            if stage_iters == 0 {
                return Err(Error::param(OP, "schedule.stage_iters", 0, "must be >= 1"));
            }
        }
        Ok(())
    }
}

/// Why the solver stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    /// The marginal error reached `tol`.
    Converged,
    /// `max_iter` iterations ran without reaching `tol`.
    MaxIterations,
    /// A potential or scaling became NaN/Inf or zero at this iteration (scaling domain with too small eps).
    NonFinite {
        /// Iteration of the breakdown.
        iteration: usize,
    },
}

/// Result of a Sinkhorn solve. It always comes back, converged or not; check [`SinkhornOutput::converged`].
#[derive(Debug, Clone)]
pub struct SinkhornOutput<F> {
    /// Row potential (n).
    pub f: Array1<F>,
    /// Column potential (m).
    pub g: Array1<F>,
    /// The eps of the final stage (absolute).
    pub eps: F,
    /// `rho_a` at the final eps (`None` when balanced).
    pub rho_a: Option<F>,
    /// `rho_b` at the final eps (`None` when balanced).
    pub rho_b: Option<F>,
    /// `<P, C>`, the transport cost of the plan.
    pub transport_cost: F,
    /// The regularised objective (dual value at the returned potentials): what [`envelope`] differentiates.
    pub value: F,
    /// Row sums of the plan, `P 1`.
    pub row_sums: Array1<F>,
    /// Column sums of the plan, `P^T 1`.
    pub col_sums: Array1<F>,
    /// Final marginal error, measured afresh on the returned potentials: row side plus column side, in the
    /// configured norm. The stopping test uses the row side alone (the column side is exactly zero after a
    /// g-update), so in f32 this can exceed `tol` by the column sums' rounding (about `m` ulps of `b`).
    pub marginal_error: F,
    /// `(iteration, error)` at every check of the final stage.
    pub error_history: Vec<(usize, F)>,
    /// Iterations of the final stage applied to the returned potentials.
    pub iterations: usize,
    /// Iterations over all stages.
    pub total_iterations: usize,
    /// Whether the stopping test (row-side marginal error `<= tol` at a check) was met.
    pub converged: bool,
    /// Why the solver stopped.
    pub termination: Termination,
    /// The plan, when `return_plan` was set.
    pub plan: Option<Array2<F>>,
}

impl<F: Real> SinkhornOutput<F> {
    /// `log a_i + f_i / eps` and `log b_j + g_j / eps`: the plan is `exp(alpha_i + beta_j - C_ij / eps)`.
    pub(crate) fn log_scalings(
        &self,
        a: ArrayView1<'_, F>,
        b: ArrayView1<'_, F>,
    ) -> (Vec<F>, Vec<F>) {
        let inv = F::one() / self.eps;
        let (la, lb): (Vec<F>, Vec<F>) = (
            a.iter().map(|v| v.ln()).collect(),
            b.iter().map(|v| v.ln()).collect(),
        );
        let (f, g) = (
            self.f.as_slice().expect("owned"),
            self.g.as_slice().expect("owned"),
        );
        (cpu::log_scaling(f, &la, inv), cpu::log_scaling(g, &lb, inv))
    }

    /// The plan `P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps)` for the geometry the output was solved on.
    ///
    /// # Errors
    /// [`Error::Shape`] when the geometry or weights do not match the potentials.
    pub fn plan_for(
        &self,
        geom: &Geometry<'_, F>,
        a: ArrayView1<'_, F>,
        b: ArrayView1<'_, F>,
    ) -> Result<Array2<F>> {
        let (n, m) = (self.f.len(), self.g.len());
        if geom.n() != n || geom.m() != m || a.len() != n || b.len() != m {
            return Err(Error::shape(
                "SinkhornOutput::plan_for",
                "geometry (n, m) and weights vs potentials",
                (n, m),
                (geom.n(), geom.m(), a.len(), b.len()),
            ));
        }
        Ok(cpu::materialise_plan(geom, self, a, b))
    }
}

/// Checks the weights against the geometry and the balance condition.
pub(crate) fn validate_problem<F: Real>(
    op: &'static str,
    geom: &Geometry<'_, F>,
    a: ArrayView1<'_, F>,
    b: ArrayView1<'_, F>,
    cfg: &SinkhornConfig<F>,
) -> Result<()> {
    cfg.validate()?;
    if a.len() != geom.n() {
        return Err(Error::shape(
            op,
            "a (row weights) vs cost rows",
            geom.n(),
            a.len(),
        ));
    }
    if b.len() != geom.m() {
        return Err(Error::shape(
            op,
            "b (column weights) vs cost columns",
            geom.m(),
            b.len(),
        ));
    }
    for (name, w) in [("a", a), ("b", b)] {
        for (i, &v) in w.iter().enumerate() {
            if !v.is_finite() {
                return Err(Error::NonFinite {
                    op,
                    what: format!("weights {name}"),
                    index: i,
                    value: v.to_string(),
                });
            }
            if v <= F::zero() {
                return Err(Error::Marginals {
                    op,
                    reason: format!(
                        "{name}[{i}] = {v}: weights must be > 0 (drop points of zero weight before solving)"
                    ),
                });
            }
        }
    }
    if cfg.marginal_a == Marginal::Balanced && cfg.marginal_b == Marginal::Balanced {
        let (sa, sb) = (a.sum(), b.sum());
        let tol = F::epsilon().sqrt() * sa.max(sb).max(F::one());
        if (sa - sb).abs() > tol {
            return Err(Error::Marginals {
                op,
                reason: format!(
                    "balanced OT needs equal masses, got sum(a) = {sa} and sum(b) = {sb} (difference above {tol}); \
                     normalise them or use Marginal::Kl"
                ),
            });
        }
    }
    Ok(())
}

/// Solves entropic optimal transport between weights `a` and `b` for the cost of `geom`.
///
/// # Arguments
/// * `geom` - the cost ([`Geometry::dense`] or the online [`Geometry::sq_euclidean`]), n x m.
/// * `a`, `b` - positive weights (n and m); equal masses when both sides are balanced.
/// * `cfg` - eps, schedule, domain, stopping rule, marginal penalties.
/// * `backend` - where to run (`Backend::Cpu(Par::Seq)` or parallel rows with `Par::Rayon`); on
///   `Backend::Gpu` an f32 problem is solved by [`crate::gpu::sinkhorn`] (feature `gpu`) and another float
///   type is an [`Error::Param`].
///
/// # Returns
/// A [`SinkhornOutput`]: potentials, transport cost, regularised value, marginals, error history and the
/// `converged` flag. Not converging within `max_iter` is not an error.
///
/// # Errors
/// [`Error::Shape`] when the weights do not match the cost, [`Error::Marginals`] for weights that are not
/// positive or masses that differ in the balanced case, [`Error::NonFinite`] for NaN/Inf weights,
/// [`Error::Param`] for a bad config field or an eps that resolves to 0.
///
/// # Complexity
/// Log domain, per iteration: one pass over the cost (`n m` loads and `n m` exp; `O(n m d)` flops for
/// online point clouds), `O(n + m)` extra memory per thread. The scaling domain holds the `n x m` kernel.
///
/// # Example
/// ```
/// use ndarray::array;
/// use recgoat_core::{Backend, Par, transport::{sinkhorn, Epsilon, Geometry, SinkhornConfig}};
/// let c = array![[0.0f64, 1.0], [1.0, 0.0]];
/// let w = array![0.5f64, 0.5];
/// let cfg = SinkhornConfig::new(Epsilon::Absolute(0.05)).with_tol(1e-9, Default::default());
/// let out = sinkhorn(&Geometry::dense(c.view()).unwrap(), w.view(), w.view(), &cfg, &Backend::Cpu(Par::Seq)).unwrap();
/// assert!(out.converged);
/// // almost all mass stays on the zero-cost diagonal: <P, C> = 2 / (1 + e^(1/0.05)) ~ 4e-9
/// assert!(out.transport_cost < 1e-8);
/// ```
pub fn sinkhorn<F: Real>(
    geom: &Geometry<'_, F>,
    a: ArrayView1<'_, F>,
    b: ArrayView1<'_, F>,
    cfg: &SinkhornConfig<F>,
    backend: &Backend,
) -> Result<SinkhornOutput<F>> {
    validate_problem("sinkhorn", geom, a, b, cfg)?;
    #[cfg(feature = "gpu")]
    if let Backend::Gpu(gpu) = backend {
        return on_gpu::sinkhorn(gpu, geom, a, b, cfg);
    }
    let par = backend.par();
    let target = cfg.eps.resolve(geom, par)?;
    cpu::solve(geom, a, b, cfg, target, par)
}

/// One problem of a batch: a geometry and its two weight vectors.
#[derive(Debug, Clone)]
pub struct BatchProblem<'a, F: Real> {
    /// The cost.
    pub geom: Geometry<'a, F>,
    /// Row weights.
    pub a: ArrayView1<'a, F>,
    /// Column weights.
    pub b: ArrayView1<'a, F>,
}

/// Solves independent problems (of the same or of different sizes) in parallel, one problem per task.
///
/// Each problem runs sequentially inside its task, so the batch parallelism does not oversubscribe the
/// cores; the results are in input order and equal [`sinkhorn`] with `Par::Seq` on each problem.
///
/// On `Backend::Gpu` the batch goes to [`crate::gpu::sinkhorn_batch`] for f32 (feature `gpu`: the small
/// problems in one dispatch); another float type is an [`Error::Param`] for every problem.
///
/// # Returns
/// One `Result` per problem: a bad problem does not spoil the others.
///
/// # Example
/// ```
/// use ndarray::array;
/// use recgoat_core::{Backend, Par, transport::*};
/// let c1 = array![[0.0f64, 1.0], [1.0, 0.0]];
/// let c2 = array![[0.0f64, 2.0, 1.0]];
/// let (w2, w1, w3) = (array![0.5, 0.5], array![1.0], array![0.2, 0.3, 0.5]);
/// let batch = [
///     BatchProblem { geom: Geometry::dense(c1.view()).unwrap(), a: w2.view(), b: w2.view() },
///     BatchProblem { geom: Geometry::dense(c2.view()).unwrap(), a: w1.view(), b: w3.view() },
/// ];
/// let outs = sinkhorn_batch(&batch, &SinkhornConfig::new(Epsilon::Absolute(0.1)), &Backend::Cpu(Par::rayon()));
/// // a single source point must ship to every target: <P, C> = 0.3 * 2 + 0.5 * 1
/// assert!((outs[1].as_ref().unwrap().transport_cost - 1.1).abs() < 1e-5);
/// ```
pub fn sinkhorn_batch<F: Real>(
    problems: &[BatchProblem<'_, F>],
    cfg: &SinkhornConfig<F>,
    backend: &Backend,
) -> Vec<Result<SinkhornOutput<F>>> {
    #[cfg(feature = "gpu")]
    if let Backend::Gpu(gpu) = backend {
        return on_gpu::sinkhorn_batch(gpu, problems, cfg);
    }
    let seq = Backend::Cpu(Par::Seq);
    map_items(backend.par(), problems, |p| {
        sinkhorn(&p.geom, p.a, p.b, cfg, &seq)
    })
}
