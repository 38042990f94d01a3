//! The debiased Sinkhorn divergence between two weighted point clouds.

use super::grad::{envelope, point_cloud_gradients};
use super::{
    cpu, sinkhorn, validate_problem, EpsSchedule, Epsilon, Geometry, SinkhornConfig, SinkhornOutput,
};
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
/// three problems, as the definition requires. The self terms `OT(a, a)`, `OT(b, b)` (balanced, log domain)
/// use the symmetric averaged iteration `f <- (f + T(f)) / 2`, which converges in far fewer iterations
/// than the alternating one on clustered clouds.
///
/// On `Backend::Gpu` an f32 problem runs [`crate::gpu::sinkhorn_divergence`] (feature `gpu`), and another
/// float type is an [`Error::Param`](crate::Error::Param).
///
/// # Errors
/// As [`sinkhorn`] and [`Geometry::sq_euclidean`].
///
/// # Complexity
/// Three solves. When the three cost matrices together fit in [`MATERIALIZE_BYTES`], each is computed once
/// ([`Geometry::sq_euclidean_materialized`]: `O((n + m)^2 d)` once, then `O((n + m)^2)` loads and exps per
/// iteration, `O((n + m)^2)` memory); larger problems use online geometries (`O((n + m)^2 d)` per
/// iteration, `O((n + m) d)` memory).
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
    #[cfg(feature = "gpu")]
    if let Backend::Gpu(gpu) = backend {
        return super::on_gpu::sinkhorn_divergence(gpu, (x, y), (a, b), cfg);
    }
    let (n, m) = (x.nrows(), y.nrows());
    let bytes = [
        n.saturating_mul(m),
        n.saturating_mul(n),
        m.saturating_mul(m),
    ]
    .iter()
    .fold(0usize, |t, &e| t.saturating_add(e))
    .saturating_mul(std::mem::size_of::<F>());
    divergence(x, y, a, b, cfg, backend, bytes <= MATERIALIZE_BYTES)
}

/// `OT(a, a)` on the symmetric cost `geom` (the self terms), by the symmetric averaged iteration.
fn sinkhorn_self<F: Real>(
    geom: &Geometry<'_, F>,
    a: ArrayView1<'_, F>,
    cfg: &SinkhornConfig<F>,
    backend: &Backend,
) -> Result<SinkhornOutput<F>> {
    validate_problem("sinkhorn_divergence", geom, a, a, cfg)?;
    let par = backend.par();
    let target = cfg.eps.resolve(geom, par)?;
    cpu::solve_symmetric(geom, a, cfg, target, par)
}

/// `cfg` with its eps (and a schedule's start) resolved on the cross problem's cost and made absolute, so
/// that the three problems of a divergence share them.
pub(crate) fn fixed_eps<F: Real>(
    cfg: &SinkhornConfig<F>,
    gxy: &Geometry<'_, F>,
    par: crate::backend::Par,
) -> Result<SinkhornConfig<F>> {
    let mut fixed = cfg.clone();
    fixed.eps = Epsilon::Absolute(cfg.eps.resolve(gxy, par)?);
    if let EpsSchedule::Geometric {
        start,
        decay,
        stage_iters,
    } = cfg.schedule
    {
        let start = Epsilon::Absolute(start.resolve(gxy, par)?);
        fixed.schedule = EpsSchedule::Geometric {
            start,
            decay,
            stage_iters,
        };
    }
    Ok(fixed)
}

/// The most bytes of cost that [`sinkhorn_divergence`] holds in memory (its three matrices together) to
/// save recomputing them at every iteration: 256 MiB, three 2048 x 2048 f32 problems take 48 MiB.
pub const MATERIALIZE_BYTES: usize = 1 << 28;

/// [`sinkhorn_divergence`] with the choice of materialised or online geometries made by the caller.
#[allow(clippy::too_many_arguments)]
fn divergence<F: Real>(
    x: ArrayView2<'_, F>,
    y: ArrayView2<'_, F>,
    a: ArrayView1<'_, F>,
    b: ArrayView1<'_, F>,
    cfg: &SinkhornConfig<F>,
    backend: &Backend,
    materialize: bool,
) -> Result<DivergenceOutput<F>> {
    cfg.validate()?;
    let par = backend.par();
    let geom = |p, q| {
        if materialize {
            Geometry::sq_euclidean_materialized(p, q)
        } else {
            Geometry::sq_euclidean(p, q)
        }
    };
    let gxy = geom(x, y)?;
    let gxx = geom(x, x)?;
    let gyy = geom(y, y)?;
    let fixed = fixed_eps(cfg, &gxy, par)?;
    let oxy = sinkhorn(&gxy, a, b, &fixed, backend)?;
    let oxx = sinkhorn_self(&gxx, a, &fixed, backend)?;
    let oyy = sinkhorn_self(&gyy, b, &fixed, backend)?;
    let xy = (&oxy, point_cloud_gradients(&gxy, &oxy, a, b, par)?);
    let xx = (&oxx, point_cloud_gradients(&gxx, &oxx, a, a, par)?);
    let yy = (&oyy, point_cloud_gradients(&gyy, &oyy, b, b, par)?);
    assemble(xy, xx, yy, a, b)
}

/// One solved problem of a divergence with the gradients of its value with respect to its first and its
/// second point cloud.
pub(crate) type Term<'o, F> = (&'o SinkhornOutput<F>, (Array2<F>, Array2<F>));

/// The divergence from its three solved terms `OT(x, y)`, `OT(x, x)` and `OT(y, y)`: the value (with the
/// mass-gap correction of unequal masses), the point gradients and the weight gradients (envelope theorem).
/// Shared by the CPU function and the GPU one, which differ only in how they solve and differentiate.
pub(crate) fn assemble<F: Real>(
    (oxy, (gx_xy, gy_xy)): Term<'_, F>,
    (oxx, (gx1, gx2)): Term<'_, F>,
    (oyy, (gy1, gy2)): Term<'_, F>,
    a: ArrayView1<'_, F>,
    b: ArrayView1<'_, F>,
) -> Result<DivergenceOutput<F>> {
    let eps = oxy.eps;
    let half = F::c(0.5);
    let mass_gap = a.sum() - b.sum();
    let value = oxy.value - half * (oxx.value + oyy.value) + half * eps * mass_gap * mass_gap;
    let grad_x = gx_xy - &((gx1 + gx2) * half);
    let grad_y = gy_xy - &((gy1 + gy2) * half);
    let exy = envelope(oxy, a, b)?;
    let exx = envelope(oxx, a, a)?;
    let eyy = envelope(oyy, b, b)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{randn, rng};
    use crate::transport::ErrorNorm;

    #[test]
    fn the_symmetric_self_solve_matches_the_alternating_one() {
        // a clustered cloud (two tight groups) with a small eps: the case where alternating updates crawl
        let mut x: Array2<f64> = randn(&mut rng(5), (40, 3)) * 0.05;
        x.slice_mut(ndarray::s![20.., ..]).mapv_inplace(|v| v + 1.0);
        let a = Array1::from_elem(40, 1.0 / 40.0);
        let geom = Geometry::sq_euclidean(x.view(), x.view()).unwrap();
        let cfg = SinkhornConfig::new(Epsilon::Absolute(0.01))
            .with_tol(1e-8, ErrorNorm::L1)
            .with_iters(100_000, 1);
        let be = Backend::default();
        let sym = sinkhorn_self(&geom, a.view(), &cfg, &be).unwrap();
        let alt = sinkhorn(&geom, a.view(), a.view(), &cfg, &be).unwrap();
        assert!(sym.converged && alt.converged);
        // rows and columns (equal by symmetry), each within the stopping tolerance
        assert!(sym.marginal_error <= 2e-8, "{}", sym.marginal_error);
        assert!(
            (sym.value - alt.value).abs() < 1e-7,
            "{} vs {}",
            sym.value,
            alt.value
        );
        // (the potentials themselves are not compared: with two far-apart clusters, shifting one cluster's
        // potentials against the other's changes the plan by about exp(-1 / eps), so they are not identified)
        assert_eq!(sym.f, sym.g);
    }

    #[test]
    fn materialised_and_online_geometries_give_the_same_divergence() {
        let x: Array2<f64> = randn(&mut rng(1), (13, 3));
        let y: Array2<f64> = randn(&mut rng(2), (9, 3)) * 0.7 + 0.3;
        let (a, b) = (
            Array1::from_elem(13, 1.0 / 13.0),
            Array1::from_elem(9, 1.0 / 9.0),
        );
        let cfg = SinkhornConfig::new(Epsilon::Absolute(1.0)).with_tol(1e-9, ErrorNorm::L1);
        let be = Backend::default();
        let run =
            |kept| divergence(x.view(), y.view(), a.view(), b.view(), &cfg, &be, kept).unwrap();
        let (kept, online) = (run(true), run(false));
        assert!(kept.converged && online.converged);
        assert!(
            (kept.value - online.value).abs() < 1e-12,
            "{} vs {}",
            kept.value,
            online.value
        );
        assert!(kept.value > 0.05);
        for (g, h) in [
            (&kept.grad_x, &online.grad_x),
            (&kept.grad_y, &online.grad_y),
        ] {
            let diff = (g - h).mapv(f64::abs).fold(0.0f64, |m, &v| m.max(v));
            assert!(diff < 1e-10, "point gradients differ by {diff}");
        }
        let diff = (&kept.grad_a - &online.grad_a).mapv(f64::abs).sum();
        assert!(diff < 1e-10, "weight gradients differ by {diff}");
    }
}
