//! The debiased Sinkhorn divergence between two weighted point clouds.

use super::grad::{envelope, point_cloud_gradients};
use super::{sinkhorn, EpsSchedule, Epsilon, Geometry, SinkhornConfig};
use crate::backend::Backend;
use crate::error::Result;
use crate::simd::Real;
use ndarray::{Array1, Array2, ArrayView1, ArrayView2};

/// Value and gradients of [`sinkhorn_divergence`].
#[derive(Debug, Clone)]
pub struct DivergenceOutput<F> {
    /// `S_eps(a, b)`.
    pub value: F,
    /// `OT_eps(a, b)`, `OT_eps(a, a)`, `OT_eps(b, b)`.
    pub ot_xy: F,
    /// See `ot_xy`.
    pub ot_xx: F,
    /// See `ot_xy`.
    pub ot_yy: F,
    /// The absolute eps of all three solves.
    pub eps: F,
    /// `dS/dx` (n x d).
    pub grad_x: Array2<F>,
    /// `dS/dy` (m x d).
    pub grad_y: Array2<F>,
    /// `dS/da`.
    pub grad_a: Array1<F>,
    /// `dS/db`.
    pub grad_b: Array1<F>,
    /// Whether all three solves converged.
    pub converged: bool,
}

/// Debiased Sinkhorn divergence with squared Euclidean cost:
/// `S(a, b) = OT(a, b) - OT(a, a) / 2 - OT(b, b) / 2 + eps (m(a) - m(b))^2 / 2`
/// (the last term only matters with KL marginals), with gradients for the points and the weights by the
/// envelope theorem. `S >= 0` and `S = 0` when the two weighted clouds coincide, unlike `OT_eps` itself.
///
/// A relative eps (and a relative schedule start) is resolved once on the `x`-`y` cost and used for all
/// three problems, as the definition requires.
///
/// # Errors
/// As [`sinkhorn`] and [`Geometry::sq_euclidean`].
///
/// # Complexity
/// Three solves on online geometries: `O((n + m)^2 d)` per iteration, `O((n + m) d)` memory.
///
/// # Example
/// ```
/// use ndarray::array;
/// use recgoat_core::{Backend, transport::*};
/// let x = array![[0.0f64, 0.0], [1.0, 0.0]];
/// let w = array![0.5f64, 0.5];
/// let cfg = SinkhornConfig::new(Epsilon::Absolute(0.1)).with_tol(1e-10, ErrorNorm::L1);
/// let same = sinkhorn_divergence(x.view(), x.view(), w.view(), w.view(), &cfg, &Backend::default()).unwrap();
/// assert!(same.value.abs() < 1e-9);
/// let moved = x.mapv(|v| v + 0.5);
/// let apart = sinkhorn_divergence(x.view(), moved.view(), w.view(), w.view(), &cfg, &Backend::default()).unwrap();
/// assert!(apart.value > 0.1);
/// ```
pub fn sinkhorn_divergence<F: Real>(
    x: ArrayView2<'_, F>,
    y: ArrayView2<'_, F>,
    a: ArrayView1<'_, F>,
    b: ArrayView1<'_, F>,
    cfg: &SinkhornConfig<F>,
    backend: &Backend,
) -> Result<DivergenceOutput<F>> {
    cfg.validate()?;
    let par = backend.par();
    let gxy = Geometry::sq_euclidean(x, y)?;
    let gxx = Geometry::sq_euclidean(x, x)?;
    let gyy = Geometry::sq_euclidean(y, y)?;
    let mut fixed = cfg.clone();
    fixed.eps = Epsilon::Absolute(cfg.eps.resolve(&gxy, par)?);
    if let EpsSchedule::Geometric {
        start,
        decay,
        stage_iters,
    } = cfg.schedule
    {
        let start = Epsilon::Absolute(start.resolve(&gxy, par)?);
        fixed.schedule = EpsSchedule::Geometric {
            start,
            decay,
            stage_iters,
        };
    }
    let oxy = sinkhorn(&gxy, a, b, &fixed, backend)?;
    let oxx = sinkhorn(&gxx, a, a, &fixed, backend)?;
    let oyy = sinkhorn(&gyy, b, b, &fixed, backend)?;
    let eps = oxy.eps;
    let half = F::c(0.5);
    let mass_gap = a.sum() - b.sum();
    let value = oxy.value - half * (oxx.value + oyy.value) + half * eps * mass_gap * mass_gap;

    let (gx_xy, gy_xy) = point_cloud_gradients(&gxy, &oxy, a, b, par)?;
    let (g1, g2) = point_cloud_gradients(&gxx, &oxx, a, a, par)?;
    let grad_x = gx_xy - &((g1 + g2) * half);
    let (g1, g2) = point_cloud_gradients(&gyy, &oyy, b, b, par)?;
    let grad_y = gy_xy - &((g1 + g2) * half);

    let exy = envelope(&oxy, a, b)?;
    let exx = envelope(&oxx, a, a)?;
    let eyy = envelope(&oyy, b, b)?;
    let grad_a = exy.grad_a - &((exx.grad_a + exx.grad_b) * half) + eps * mass_gap;
    let grad_b = exy.grad_b - &((eyy.grad_a + eyy.grad_b) * half) - eps * mass_gap;
    Ok(DivergenceOutput {
        value,
        ot_xy: oxy.value,
        ot_xx: oxx.value,
        ot_yy: oyy.value,
        eps,
        grad_x,
        grad_y,
        grad_a,
        grad_b,
        converged: oxy.converged && oxx.converged && oyy.converged,
    })
}
