//! OAT, RecGOAT's optimal adaptive transport: align a modality embedding to the collaborative one through
//! a transport plan between embedding dimensions plus a learnable correction.

use super::cost::{
    check_dimension_inputs, dimension_cost_backward_unchecked, dimension_cost_unchecked,
};
use super::grad::{implicit_plan_vjp, unrolled_plan_vjp, ImplicitConfig, UnrolledOutput};
use super::{sinkhorn, Epsilon, Geometry, Marginal, SinkhornConfig, SinkhornOutput};
use crate::backend::Backend;
use crate::error::{check_finite, Error, Result};
use crate::simd::{positive_finite, Real};
use ndarray::{Array1, Array2, ArrayView2};

/// How the loss reaches the cost (hence `M` and `Z`) through the transport plan `T`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PlanGradient<F> {
    /// `T` is a constant (the released code's `no_grad`): only `M` (directly) and `Delta` get gradients.
    Detached,
    /// Implicit differentiation of the converged plan.
    Implicit(ImplicitConfig<F>),
    /// Backpropagation through exactly this many iterations from zero potentials (the forward pass then
    /// runs this fixed number of iterations instead of the tolerance-driven solver).
    Unrolled {
        /// Iterations, forward and backward.
        iters: usize,
    },
}

/// Settings of [`AdaptiveTransport`].
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptiveTransportConfig<F> {
    /// `s` in the cost `C_ab = s mean_i (M_ia - Z_ib)^2` (the released code: 100).
    pub cost_scale: F,
    /// The Sinkhorn solve (eps, tolerance, ...); marginals are always balanced and uniform `1/d`.
    pub sinkhorn: SinkhornConfig<F>,
    /// Use the barycentric map `d T` (rows sum to 1; the paper reading) instead of the raw `T` (the
    /// released code, whose entries are about `1/d^2`).
    pub barycentric: bool,
    /// Gradient through the plan.
    pub gradient: PlanGradient<F>,
}

impl<F: Real> Default for AdaptiveTransportConfig<F> {
    fn default() -> Self {
        AdaptiveTransportConfig {
            cost_scale: F::c(100.0),
            sinkhorn: SinkhornConfig::new(Epsilon::relative(super::EpsScale::Mean, F::c(0.05)))
                .with_tol(
                    F::c(1e-5).max(F::epsilon() * F::c(64.0)),
                    super::ErrorNorm::L1,
                )
                .with_iters(500, 5),
            barycentric: true,
            gradient: PlanGradient::Implicit(ImplicitConfig::default()),
        }
    }
}

/// The OAT map `aligned = M (d T + Delta)` of RecGOAT (RECGOAT.md section 3), forward and backward.
///
/// `T` is the entropic transport plan between the `d` embedding dimensions of the modality embedding `M`
/// and the collaborative embedding `Z` (uniform marginals `1/d`) for the cost [`super::dimension_cost`];
/// `Delta` is a learnable `d x d` correction.
///
/// # Example
/// ```
/// use recgoat_core::{Backend, testing, transport::*};
/// let mut rng = testing::rng(1);
/// let m = testing::randn::<f64, _, _>(&mut rng, (50, 4));
/// let z = testing::randn::<f64, _, _>(&mut rng, (50, 4));
/// let delta = ndarray::Array2::<f64>::zeros((4, 4));
/// let oat = AdaptiveTransport::new(AdaptiveTransportConfig::default()).unwrap();
/// let (aligned, cache) = oat.forward(m.view(), z.view(), delta.view(), &Backend::default()).unwrap();
/// assert_eq!(aligned.dim(), (50, 4));
/// // d T is a barycentric map: its rows sum to 1
/// let dt = cache.plan() * 4.0;
/// assert!(dt.rows().into_iter().all(|r| (r.sum() - 1.0).abs() < 1e-4));
/// let grads = oat.backward(&cache, Some(aligned.view()), 0.0).unwrap();
/// assert_eq!(grads.grad_delta.dim(), (4, 4));
/// ```
#[derive(Debug, Clone)]
pub struct AdaptiveTransport<F> {
    cfg: AdaptiveTransportConfig<F>,
}

/// What [`AdaptiveTransport::backward`] needs from the forward pass.
#[derive(Debug, Clone)]
pub struct AdaptiveCache<F: Real> {
    m: Array2<F>,
    z: Array2<F>,
    map: Array2<F>,
    plan: PlanState<F>,
}

/// The `d x d` part of the OAT map: the cost, the solved plan and what its gradient needs. Shared by the CPU
/// path and the GPU one (which computes the `I x d` products on the device and this part on the host).
#[derive(Debug, Clone)]
pub(crate) struct PlanState<F: Real> {
    pub(crate) cost: Array2<F>,
    pub(crate) plan: Array2<F>,
    weights: Array1<F>,
    pub(crate) value: F,
    solver: Option<SinkhornOutput<F>>,
    unrolled: Option<UnrolledOutput<F>>,
}

impl<F: Real> AdaptiveCache<F> {
    /// The transport plan `T` (d x d).
    pub fn plan(&self) -> &Array2<F> {
        &self.plan.plan
    }
    /// The dimension cost `C` (d x d).
    pub fn cost(&self) -> &Array2<F> {
        &self.plan.cost
    }
    /// The regularised OT value (a loss term whose gradient [`AdaptiveTransport::backward`] adds with
    /// weight `grad_value`): the dual value of the converged solve, or the primal objective of the
    /// unrolled plan.
    pub fn value(&self) -> F {
        self.plan.value
    }
    /// The Sinkhorn output (`None` in unrolled mode).
    pub fn solver_output(&self) -> Option<&SinkhornOutput<F>> {
        self.plan.solver.as_ref()
    }
}

/// Gradients of [`AdaptiveTransport::backward`].
#[derive(Debug, Clone)]
pub struct AdaptiveGrads<F> {
    /// `dL/dM` (I x d).
    pub grad_m: Array2<F>,
    /// `dL/dZ` (I x d); zero in [`PlanGradient::Detached`] mode without an OT value term.
    pub grad_z: Array2<F>,
    /// `dL/dDelta` (d x d).
    pub grad_delta: Array2<F>,
}

impl<F: Real> AdaptiveTransport<F> {
    /// Validates the configuration.
    ///
    /// # Errors
    /// [`Error::Param`] for `cost_scale <= 0`, unbalanced marginals, `iters == 0`, or any invalid Sinkhorn field.
    pub fn new(cfg: AdaptiveTransportConfig<F>) -> Result<Self> {
        const OP: &str = "AdaptiveTransportConfig";
        cfg.sinkhorn.validate()?;
        if !positive_finite(cfg.cost_scale) {
            return Err(Error::param(
                OP,
                "cost_scale",
                cfg.cost_scale,
                "must be finite and > 0",
            ));
        }
        if cfg.sinkhorn.marginal_a != Marginal::Balanced
            || cfg.sinkhorn.marginal_b != Marginal::Balanced
        {
            return Err(Error::param(
                OP,
                "sinkhorn.marginal_a/b",
                "Kl",
                "OAT uses balanced uniform marginals",
            ));
        }
        if let PlanGradient::Unrolled { iters: 0 } = cfg.gradient {
            return Err(Error::param(OP, "gradient.iters", 0, "must be >= 1"));
        }
        Ok(AdaptiveTransport { cfg })
    }

    /// The configuration.
    pub fn config(&self) -> &AdaptiveTransportConfig<F> {
        &self.cfg
    }

    /// Computes `aligned = M (d T + Delta)`.
    ///
    /// # Arguments
    /// * `m` - modality embedding, I x d; `z` - collaborative embedding, I x d; `delta` - d x d.
    ///
    /// # Errors
    /// [`Error::Shape`] for mismatched shapes, [`Error::NonFinite`] for NaN/Inf inputs, and the Sinkhorn errors.
    ///
    /// # Complexity
    /// `O(I d^2)` for the cost and the map plus the Sinkhorn solve on `d x d`; memory `O(I d + d^2)`.
    pub fn forward(
        &self,
        m: ArrayView2<'_, F>,
        z: ArrayView2<'_, F>,
        delta: ArrayView2<'_, F>,
        backend: &Backend,
    ) -> Result<(Array2<F>, AdaptiveCache<F>)> {
        const OP: &str = "AdaptiveTransport::forward";
        check_dimension_inputs(OP, m, z)?;
        let d = m.ncols();
        if delta.dim() != (d, d) {
            return Err(Error::shape(OP, "delta", (d, d), delta.dim()));
        }
        check_finite(OP, "delta", delta.iter().copied())?;
        let cost = dimension_cost_unchecked(m, z, self.cfg.cost_scale);
        let plan = self.solve_plan(cost, backend)?;
        let map = self.map(&plan, delta);
        let aligned = m.dot(&map);
        let cache = AdaptiveCache {
            m: m.to_owned(),
            z: z.to_owned(),
            map,
            plan,
        };
        Ok((aligned, cache))
    }

    /// `d T + Delta` (barycentric) or `T + Delta`.
    pub(crate) fn map(&self, state: &PlanState<F>, delta: ArrayView2<'_, F>) -> Array2<F> {
        &state.plan * self.plan_factor(state.plan.nrows()) + delta
    }

    /// The plan's factor in the map: `d` (barycentric) or 1.
    pub(crate) fn plan_factor(&self, d: usize) -> F {
        if self.cfg.barycentric {
            F::from_usize(d).expect("d fits")
        } else {
            F::one()
        }
    }

    /// The entropic plan for a `d x d` dimension cost, as the gradient mode needs it solved.
    pub(crate) fn solve_plan(&self, cost: Array2<F>, backend: &Backend) -> Result<PlanState<F>> {
        let d = cost.nrows();
        let weights = Array1::from_elem(d, F::one() / F::from_usize(d).expect("d fits"));
        let geom = Geometry::dense(cost.view())?;
        let (plan, value, solver, unrolled) = match self.cfg.gradient {
            PlanGradient::Unrolled { iters } => {
                let eps = self.cfg.sinkhorn.eps.resolve(&geom, backend.par())?;
                let u = UnrolledOutput::new(
                    cost.view(),
                    weights.view(),
                    weights.view(),
                    eps,
                    (None, None),
                    iters,
                )?;
                (u.plan.clone(), u.value(), None, Some(u))
            }
            _ => {
                let mut cfg = self.cfg.sinkhorn.clone();
                cfg.return_plan = true;
                let mut out = sinkhorn(&geom, weights.view(), weights.view(), &cfg, backend)?;
                let plan = out.plan.take().expect("plan requested");
                (plan, out.value, Some(out), None)
            }
        };
        Ok(PlanState {
            cost,
            plan,
            weights,
            value,
            solver,
            unrolled,
        })
    }

    /// Gradients of `L = <grad_out, aligned> + grad_value * OT value` with respect to `M`, `Z` and `Delta`.
    ///
    /// The plan's contribution goes through the configured [`PlanGradient`]; the OT value's through the
    /// envelope theorem (`dV/dC = T`).
    ///
    /// # Arguments
    /// * `grad_out` - `dL/d aligned` (I x d), or `None` when only the OT value is a loss.
    /// * `grad_value` - weight of the OT value in the loss (0 for none).
    ///
    /// # Errors
    /// [`Error::Shape`] / [`Error::NonFinite`] for a bad `grad_out`; [`Error::NotConverged`] from the implicit solve.
    pub fn backward(
        &self,
        cache: &AdaptiveCache<F>,
        grad_out: Option<ArrayView2<'_, F>>,
        grad_value: F,
    ) -> Result<AdaptiveGrads<F>> {
        const OP: &str = "AdaptiveTransport::backward";
        let (i_n, d) = cache.m.dim();
        let mut grad_m = Array2::zeros((i_n, d));
        let mut grad_delta = Array2::zeros((d, d));
        let mut grad_plan = None;
        if let Some(go) = grad_out {
            if go.dim() != (i_n, d) {
                return Err(Error::shape(OP, "grad_out", (i_n, d), go.dim()));
            }
            check_finite(OP, "grad_out", go.iter().copied())?;
            grad_m = go.dot(&cache.map.t());
            grad_delta = cache.m.t().dot(&go);
            grad_plan = Some(self.plan_gradient(&grad_delta));
        }
        let grad_cost = self.cost_gradient(&cache.plan, grad_plan, grad_value)?;
        let (gm, grad_z) = dimension_cost_backward_unchecked(
            cache.m.view(),
            cache.z.view(),
            self.cfg.cost_scale,
            grad_cost.view(),
        );
        grad_m += &gm;
        Ok(AdaptiveGrads {
            grad_m,
            grad_z,
            grad_delta,
        })
    }

    /// `dL/dT` from `dL/dDelta = M^T dL/d aligned` (the map is `factor T + Delta`).
    pub(crate) fn plan_gradient(&self, grad_delta: &Array2<F>) -> Array2<F> {
        grad_delta * self.plan_factor(grad_delta.nrows())
    }

    /// `dL/dC` (d x d) for `L = <dL/dT, T> + grad_value * value`: the envelope term of the value, plus the
    /// plan's contribution through the configured [`PlanGradient`].
    pub(crate) fn cost_gradient(
        &self,
        state: &PlanState<F>,
        grad_plan: Option<Array2<F>>,
        grad_value: F,
    ) -> Result<Array2<F>> {
        // the value's explicit dependence on the cost (the envelope term, exact for a converged plan)
        let mut grad_cost = &state.plan * grad_value;
        let mut grad_plan = grad_plan;
        if let (Some(u), true) = (&state.unrolled, grad_value != F::zero()) {
            // an unrolled plan is not optimal, so the value also depends on C through P:
            // dV/dP = C + eps log(P / (a b^T)), sent back through the iterations like any plan gradient
            let w2 = state.weights[0] * state.weights[0];
            let mut dv = state.cost.clone();
            dv.zip_mut_with(&state.plan, |c, &p| {
                *c = (*c + u.eps() * (p / w2).ln()) * grad_value
            });
            grad_plan = Some(grad_plan.map_or(dv.clone(), |g| g + &dv));
        }
        if let Some(gp) = grad_plan {
            let through_plan = match (&self.cfg.gradient, &state.solver, &state.unrolled) {
                (PlanGradient::Detached, _, _) => None,
                (PlanGradient::Implicit(ic), Some(out), _) => {
                    let geom = Geometry::dense(state.cost.view())?;
                    Some(implicit_plan_vjp(
                        &geom,
                        state.weights.view(),
                        state.weights.view(),
                        out,
                        gp.view(),
                        ic,
                    )?)
                }
                (PlanGradient::Unrolled { .. }, _, Some(u)) => {
                    Some(unrolled_plan_vjp(u, gp.view())?)
                }
                _ => unreachable!("the forward pass stores what its gradient mode needs"),
            };
            if let Some(pg) = through_plan {
                grad_cost += &pg.grad_cost;
            }
        }
        Ok(grad_cost)
    }
}
