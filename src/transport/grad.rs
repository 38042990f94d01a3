//! Hand-written gradients of the Sinkhorn family: envelope (value), implicit and unrolled (plan).

use super::{Geometry, SinkhornOutput};
use crate::backend::{map_chunks, Par};
use crate::error::{check_finite, Error, Result};
use crate::simd::{axpy, positive_finite, Real};
use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array1, Array2, ArrayView1, ArrayView2, Axis};

/// Gradients of the regularised value [`SinkhornOutput::value`] with respect to the weights.
///
/// The gradient with respect to the cost is the plan itself (`dV/dC = P`): take it from
/// [`SinkhornOutput::plan`] or [`SinkhornOutput::plan_for`].
#[derive(Debug, Clone)]
pub struct EnvelopeGrads<F> {
    /// `dV/da`.
    pub grad_a: Array1<F>,
    /// `dV/db`.
    pub grad_b: Array1<F>,
}

fn centre<F: Real>(v: &mut Array1<F>) {
    let mean = v.sum() / F::from_usize(v.len()).expect("length fits");
    v.mapv_inplace(|x| x - mean);
}

fn both_balanced<F: Real>(out: &SinkhornOutput<F>) -> bool {
    out.rho_a.is_none() && out.rho_b.is_none()
}

/// Gradient of the value with respect to `a` and `b` by the envelope (Danskin) theorem: the derivative of
/// the dual objective at the returned potentials.
///
/// Balanced on both sides, only perturbations that keep `sum(a) = sum(b)` exist, and the gradients are the
/// centred potentials `f - mean(f)`, `g - mean(g)`. With a KL side the exact dual derivative is returned:
/// `dV/da_i = -rho_a (exp(-f_i/rho_a) - 1) - eps (r_i / a_i - sum(b))` (with `f_i` in place of the first
/// term on a balanced side), where `r = P 1`.
///
/// # Errors
/// [`Error::Shape`] when the weights do not match the output.
///
/// # Complexity
/// `O(n + m)`.
///
/// # Example
/// ```
/// use ndarray::array;
/// use recgoat_core::{Backend, transport::*};
/// let c = array![[0.0f64, 1.0], [2.0, 0.5]];
/// let (a, b) = (array![0.3, 0.7], array![0.6, 0.4]);
/// let cfg = SinkhornConfig::new(Epsilon::Absolute(0.3)).with_tol(1e-12, ErrorNorm::L1);
/// let out = sinkhorn(&Geometry::dense(c.view()).unwrap(), a.view(), b.view(), &cfg, &Backend::default()).unwrap();
/// let g = envelope(&out, a.view(), b.view()).unwrap();
/// assert!(g.grad_a.sum().abs() < 1e-12); // centred
/// ```
pub fn envelope<F: Real>(
    out: &SinkhornOutput<F>,
    a: ArrayView1<'_, F>,
    b: ArrayView1<'_, F>,
) -> Result<EnvelopeGrads<F>> {
    const OP: &str = "envelope";
    if a.len() != out.f.len() || b.len() != out.g.len() {
        return Err(Error::shape(
            OP,
            "weights (a, b) vs potentials",
            (out.f.len(), out.g.len()),
            (a.len(), b.len()),
        ));
    }
    if both_balanced(out) {
        let (mut ga, mut gb) = (out.f.clone(), out.g.clone());
        centre(&mut ga);
        centre(&mut gb);
        return Ok(EnvelopeGrads {
            grad_a: ga,
            grad_b: gb,
        });
    }
    let eps = out.eps;
    let side = |w: ArrayView1<'_, F>,
                pot: &Array1<F>,
                sums: &Array1<F>,
                rho: Option<F>,
                other_mass: F|
     -> Array1<F> {
        Array1::from_shape_fn(w.len(), |i| {
            let first = rho.map_or(pot[i], |r| -r * ((-pot[i] / r).exp() - F::one()));
            first - eps * (sums[i] / w[i] - other_mass)
        })
    };
    Ok(EnvelopeGrads {
        grad_a: side(a, &out.f, &out.row_sums, out.rho_a, b.sum()),
        grad_b: side(b, &out.g, &out.col_sums, out.rho_b, a.sum()),
    })
}

/// Gradient of the value with respect to the points of an online squared Euclidean geometry:
/// `dV/dx_i = 2 (r_i x_i - (P y)_i)`, `dV/dy_j = 2 (c_j y_j - (P^T x)_j)`, by the envelope theorem.
///
/// # Errors
/// [`Error::Param`] when `geom` is not [`Geometry::SqEuclidean`]; [`Error::Shape`] when the weights or
/// potentials do not match it.
///
/// # Complexity
/// `O(n m d)` time, `O((n + m) d)` memory (the plan is never materialised).
pub fn point_cloud_gradients<F: Real>(
    geom: &Geometry<'_, F>,
    out: &SinkhornOutput<F>,
    a: ArrayView1<'_, F>,
    b: ArrayView1<'_, F>,
    par: impl Into<Par>,
) -> Result<(Array2<F>, Array2<F>)> {
    let par: Par = par.into();
    const OP: &str = "point_cloud_gradients";
    let Geometry::SqEuclidean(pc) = geom else {
        return Err(Error::param(
            OP,
            "geom",
            "Dense",
            "needs Geometry::sq_euclidean (point clouds)",
        ));
    };
    if geom.n() != out.f.len()
        || geom.m() != out.g.len()
        || a.len() != geom.n()
        || b.len() != geom.m()
    {
        return Err(Error::shape(
            OP,
            "geometry / weights vs potentials",
            (out.f.len(), out.g.len()),
            (geom.n(), geom.m(), a.len(), b.len()),
        ));
    }
    let (alpha, beta) = out.log_scalings(a, b);
    let inv = F::one() / out.eps;
    let (m, d) = (geom.m(), pc.x.ncols());
    // Rows in blocks: the block's plan rows are computed once, then `P Y` (for dV/dx) and the block's
    // share of `P^T X` (for dV/dy) are two GEMMs instead of a matrix-vector product and m axpys per row.
    const BLOCK: usize = 64;
    let parts = map_chunks(par, geom.n(), |_, rows| {
        let mut plan = Array2::<F>::zeros((BLOCK.min(rows.len()), m));
        let mut sums = vec![F::zero(); plan.nrows()];
        let mut scratch = Vec::new();
        let mut gy = Array2::<F>::zeros((m, d));
        let mut cols = vec![F::zero(); m];
        let mut gx = Array2::<F>::zeros((rows.len(), d));
        let mut py = Array2::<F>::zeros((plan.nrows(), d));
        for start in rows.clone().step_by(BLOCK) {
            let end = (start + BLOCK).min(rows.end);
            let k = end - start;
            geom.for_rows(start..end, &mut scratch, |i, crow| {
                let row = plan
                    .row_mut(i - start)
                    .into_slice()
                    .expect("owned row-major");
                sums[i - start] = F::exp_affine_sum(alpha[i], &beta, crow, inv, row);
                axpy(F::one(), row, &mut cols);
            });
            let (pb, xb) = (plan.slice(s![..k, ..]), pc.x.slice(s![start..end, ..]));
            let mut pyb = py.slice_mut(s![..k, ..]);
            general_mat_mul(F::one(), &pb, &pc.y, F::zero(), &mut pyb);
            general_mat_mul(F::one(), &pb.t(), &xb, F::one(), &mut gy);
            let two = F::c(2.0);
            let mut gxb = gx.slice_mut(s![start - rows.start..end - rows.start, ..]);
            for (r, ((mut g, x), p)) in gxb
                .rows_mut()
                .into_iter()
                .zip(xb.rows())
                .zip(pyb.rows())
                .enumerate()
            {
                let ri = sums[r];
                g.zip_mut_with(&x, |g, &x| *g = two * ri * x);
                g.zip_mut_with(&p, |g, &p| *g -= two * p);
            }
        }
        (gx, gy, cols)
    });
    // the plan's column sums come out of the same pass (summed in chunk order, deterministic for a Par)
    let mut gx = Vec::with_capacity(geom.n() * d);
    let mut ptx = Array2::<F>::zeros((m, d));
    let mut cols = vec![F::zero(); m];
    for (x, y, c) in parts {
        gx.extend(x.iter().copied());
        ptx += &y;
        axpy(F::one(), &c, &mut cols);
    }
    let gy = Array2::from_shape_fn((m, d), |(j, k)| {
        F::c(2.0) * (cols[j] * pc.y[[j, k]] - ptx[[j, k]])
    });
    Ok((
        Array2::from_shape_vec((geom.n(), d), gx).expect("rows complete"),
        gy,
    ))
}

/// How the implicit linear system is solved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LinearSolver {
    /// Matrix-free conjugate gradient on the Schur complement (`O(n m)` per iteration).
    #[default]
    ConjugateGradient,
    /// Dense LU solve of the `m x m` Schur complement through LAPACK (feature `linalg`; small problems).
    Dense,
}

/// Settings of implicit differentiation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImplicitConfig<F> {
    /// Ridge added to the Schur complement, relative to its largest diagonal entry (the balanced system
    /// is singular along `(1, -1)`; the ridge keeps rounding from exciting that direction).
    pub ridge: F,
    /// Relative residual at which CG stops.
    pub tol: F,
    /// CG iteration cap.
    pub max_iter: usize,
    /// Solver.
    pub solver: LinearSolver,
}

impl<F: Real> Default for ImplicitConfig<F> {
    fn default() -> Self {
        ImplicitConfig {
            ridge: F::epsilon() * F::c(16.0),
            tol: (F::epsilon().sqrt() * F::c(0.3)).max(F::c(1e-10)),
            max_iter: 2000,
            solver: LinearSolver::ConjugateGradient,
        }
    }
}

/// Gradients of a loss through the plan: `dL/dC`, `dL/da`, `dL/db`.
#[derive(Debug, Clone)]
pub struct PlanGrads<F> {
    /// `dL/dC` (n x m).
    pub grad_cost: Array2<F>,
    /// `dL/da` (centred when both sides are balanced).
    pub grad_a: Array1<F>,
    /// `dL/db` (centred when both sides are balanced).
    pub grad_b: Array1<F>,
    /// Iterations the linear solver used (0 for the dense solve and for unrolling).
    pub solver_iterations: usize,
}

fn check_grad_plan<F: Real>(
    op: &'static str,
    g: ArrayView2<'_, F>,
    n: usize,
    m: usize,
) -> Result<()> {
    if g.dim() != (n, m) {
        return Err(Error::shape(op, "grad_plan", (n, m), g.dim()));
    }
    check_finite(op, "grad_plan", g.iter().copied())
}

/// Vector-Jacobian product of the converged Sinkhorn plan by implicit differentiation.
///
/// Given `G = dL/dP` for a loss `L(P)` of the plan, returns `dL/dC`, `dL/da`, `dL/db` through the optimality
/// conditions `P 1 = a'`, `P^T 1 = b'` (the implicit function theorem), without unrolling the iterations.
/// The linear system in the potentials is reduced to its `m x m` Schur complement
/// `S = diag(k_b c) - P^T diag(1 / (k_a r)) P` (`k = 1 + eps / rho`, 1 when balanced), solved by CG
/// (matrix-free) or densely with LAPACK ([`LinearSolver::Dense`], feature `linalg`).
///
/// # Arguments
/// * `geom`, `a`, `b`, `out` - the problem and its converged solution.
/// * `grad_plan` - `G = dL/dP`, n x m.
///
/// # Errors
/// [`Error::Shape`] / [`Error::NonFinite`] for a bad `grad_plan`, [`Error::NotConverged`] when CG does not
/// reach `tol`, [`Error::FeatureDisabled`] for the dense solver without `linalg`.
///
/// # Complexity
/// `O(n m)` memory (the plan), `O(n m)` per CG iteration; the dense solve is `O(m^3)`.
pub fn implicit_plan_vjp<F: Real>(
    geom: &Geometry<'_, F>,
    a: ArrayView1<'_, F>,
    b: ArrayView1<'_, F>,
    out: &SinkhornOutput<F>,
    grad_plan: ArrayView2<'_, F>,
    cfg: &ImplicitConfig<F>,
) -> Result<PlanGrads<F>> {
    const OP: &str = "implicit_plan_vjp";
    let (n, m) = (out.f.len(), out.g.len());
    check_grad_plan(OP, grad_plan, n, m)?;
    let p = out.plan_for(geom, a, b)?;
    let eps = out.eps;
    let r = p.sum_axis(Axis(1));
    let c = p.sum_axis(Axis(0));
    let ka = out.rho_a.map_or(F::one(), |rho| F::one() + eps / rho);
    let kb = out.rho_b.map_or(F::one(), |rho| F::one() + eps / rho);
    let gp = &grad_plan * &p;
    // eps * h: the direct derivative of L with respect to the potentials, times eps
    let ehf = gp.sum_axis(Axis(1));
    let ehg = gp.sum_axis(Axis(0));
    let dinv = r.mapv(|x| F::one() / (ka * x));
    let diag_s = c.mapv(|x| kb * x);
    let ridge = cfg.ridge * diag_s.iter().fold(F::zero(), |s, &v| s.max(v));
    let rhs = &ehg - &p.t().dot(&(&ehf * &dinv));
    let (wg, iters) = match cfg.solver {
        LinearSolver::ConjugateGradient => {
            let apply = |v: &Array1<F>| -> Array1<F> {
                let pv = p.dot(v) * &dinv;
                &(&diag_s * v) - &p.t().dot(&pv) + &(v * ridge)
            };
            conjugate_gradient(OP, apply, &rhs, cfg.tol, cfg.max_iter)?
        }
        LinearSolver::Dense => (dense_schur_solve(OP, &p, &dinv, &diag_s, ridge, &rhs)?, 0),
    };
    let wf = (&ehf - &p.dot(&wg)) * &dinv;
    let inv = F::one() / eps;
    let mut grad_cost = p.clone();
    for ((i, j), v) in grad_cost.indexed_iter_mut() {
        *v = *v * (wf[i] + wg[j] - grad_plan[[i, j]]) * inv;
    }
    let pwg = p.dot(&wg);
    let ptwf = p.t().dot(&wf);
    let target = |w: F, pot: F, rho: Option<F>| rho.map_or(F::one(), |rh| (-pot / rh).exp()) * w;
    let mut grad_a = Array1::from_shape_fn(n, |i| {
        (ehf[i] - pwg[i]) / a[i] - wf[i] * (r[i] - target(a[i], out.f[i], out.rho_a)) / a[i]
    });
    let mut grad_b = Array1::from_shape_fn(m, |j| {
        (ehg[j] - ptwf[j]) / b[j] - wg[j] * (c[j] - target(b[j], out.g[j], out.rho_b)) / b[j]
    });
    if both_balanced(out) {
        centre(&mut grad_a);
        centre(&mut grad_b);
    }
    Ok(PlanGrads {
        grad_cost,
        grad_a,
        grad_b,
        solver_iterations: iters,
    })
}

/// Conjugate gradient for a symmetric positive (semi-)definite operator. Returns the solution and the
/// iterations used.
fn conjugate_gradient<F: Real>(
    op: &'static str,
    apply: impl Fn(&Array1<F>) -> Array1<F>,
    rhs: &Array1<F>,
    tol: F,
    max_iter: usize,
) -> Result<(Array1<F>, usize)> {
    let bnorm = rhs.dot(rhs).sqrt();
    let mut x = Array1::zeros(rhs.len());
    if bnorm == F::zero() {
        return Ok((x, 0));
    }
    let mut res = rhs.clone();
    let mut dir = res.clone();
    let mut rr = res.dot(&res);
    for it in 0..max_iter {
        if rr.sqrt() <= tol * bnorm {
            return Ok((x, it));
        }
        let ad = apply(&dir);
        let curv = dir.dot(&ad);
        if !positive_finite(curv) {
            break;
        }
        let step = rr / curv;
        x.scaled_add(step, &dir);
        res.scaled_add(-step, &ad);
        let rr_new = res.dot(&res);
        dir = &res + &(dir * (rr_new / rr));
        rr = rr_new;
    }
    let rel = rr.sqrt() / bnorm;
    if rel <= tol {
        return Ok((x, max_iter));
    }
    Err(Error::NotConverged {
        op,
        residual: rel.to_f64().unwrap_or(f64::NAN),
        iterations: max_iter,
        tolerance: tol.to_f64().unwrap_or(f64::NAN),
    })
}

#[cfg(feature = "linalg")]
fn dense_schur_solve<F: Real>(
    op: &'static str,
    p: &Array2<F>,
    dinv: &Array1<F>,
    diag_s: &Array1<F>,
    ridge: F,
    rhs: &Array1<F>,
) -> Result<Array1<F>> {
    use ndarray_linalg::Solve;
    let to64 = |x: &F| x.to_f64().unwrap_or(f64::NAN);
    let p64 = p.map(to64);
    let scaled = &p64 * &dinv.map(to64).insert_axis(Axis(1));
    let mut s = -p64.t().dot(&scaled);
    let r = ridge.to_f64().unwrap_or(0.0);
    for (j, v) in diag_s.iter().enumerate() {
        s[[j, j]] += to64(v) + r;
    }
    let x = s.solve_into(rhs.map(to64)).map_err(|e| Error::Numerical {
        op,
        reason: e.to_string(),
    })?;
    Ok(x.mapv(F::c))
}

#[cfg(not(feature = "linalg"))]
fn dense_schur_solve<F: Real>(
    op: &'static str,
    _p: &Array2<F>,
    _dinv: &Array1<F>,
    _diag_s: &Array1<F>,
    _ridge: F,
    _rhs: &Array1<F>,
) -> Result<Array1<F>> {
    Err(Error::FeatureDisabled {
        op,
        feature: "linalg",
    })
}

/// A fixed number of log-domain Sinkhorn iterations from zero potentials, with every iterate stored so
/// that [`unrolled_plan_vjp`] can backpropagate through them.
///
/// Same updates as [`super::sinkhorn`] (no eps schedule, constant eps), but the gradient is exact for the
/// `iters` iterations actually run rather than for the limit.
#[derive(Debug, Clone)]
pub struct UnrolledOutput<F> {
    cost: Array2<F>,
    a: Array1<F>,
    b: Array1<F>,
    eps: F,
    rho: (Option<F>, Option<F>),
    /// `f^1 .. f^K`.
    fs: Vec<Array1<F>>,
    /// `g^0 .. g^K` (`g^0 = 0`).
    gs: Vec<Array1<F>>,
    /// The plan after the last iteration.
    pub plan: Array2<F>,
}

fn lse_rows<F: Real>(logits: &Array2<F>) -> Array1<F> {
    logits.map_axis(Axis(1), |row| {
        let mx = row.iter().fold(F::neg_infinity(), |s, &v| s.max(v));
        mx + row.iter().map(|&v| (v - mx).exp()).sum::<F>().ln()
    })
}

/// Row softmax of `logits` in place; returns the log-sum-exp of each row.
fn softmax_rows<F: Real>(logits: &mut Array2<F>) -> Array1<F> {
    let l = lse_rows(logits);
    for (mut row, &li) in logits.rows_mut().into_iter().zip(&l) {
        row.mapv_inplace(|v| (v - li).exp());
    }
    l
}

impl<F: Real> UnrolledOutput<F> {
    /// Runs `iters` iterations on a dense cost.
    ///
    /// # Errors
    /// As [`super::sinkhorn`] for the cost and weights; [`Error::Param`] for `eps <= 0` or `iters == 0`.
    ///
    /// # Complexity
    /// `O(iters n m)` time, `O(n m + iters (n + m))` memory.
    pub fn new(
        cost: ArrayView2<'_, F>,
        a: ArrayView1<'_, F>,
        b: ArrayView1<'_, F>,
        eps: F,
        rho: (Option<F>, Option<F>),
        iters: usize,
    ) -> Result<Self> {
        const OP: &str = "UnrolledOutput::new";
        let geom = Geometry::dense(cost)?;
        let mut cfg = super::SinkhornConfig::new(super::Epsilon::Absolute(eps));
        cfg.marginal_a = rho.0.map_or(super::Marginal::Balanced, super::Marginal::Kl);
        cfg.marginal_b = rho.1.map_or(super::Marginal::Balanced, super::Marginal::Kl);
        super::validate_problem(OP, &geom, a, b, &cfg)?;
        if iters == 0 {
            return Err(Error::param(OP, "iters", 0, "must be >= 1"));
        }
        let (n, m) = cost.dim();
        let tau = |r: Option<F>| r.map_or(F::one(), |r| r / (r + eps));
        let (la, lb) = (a.mapv(|v| v.ln()), b.mapv(|v| v.ln()));
        let inv = F::one() / eps;
        let mut fs = Vec::with_capacity(iters);
        let mut gs = vec![Array1::zeros(m)];
        for _ in 0..iters {
            let g = gs.last().expect("g^0 exists");
            let logits =
                Array2::from_shape_fn((n, m), |(i, j)| lb[j] + (g[j] - cost[[i, j]]) * inv);
            let f = lse_rows(&logits).mapv(|l| -tau(rho.0) * eps * l);
            let logits_t =
                Array2::from_shape_fn((m, n), |(j, i)| la[i] + (f[i] - cost[[i, j]]) * inv);
            let g = lse_rows(&logits_t).mapv(|l| -tau(rho.1) * eps * l);
            fs.push(f);
            gs.push(g);
        }
        let (f, g) = (
            fs.last().expect("iters >= 1"),
            gs.last().expect("iters >= 1"),
        );
        let plan = Array2::from_shape_fn((n, m), |(i, j)| {
            (la[i] + lb[j] + (f[i] + g[j] - cost[[i, j]]) * inv).exp()
        });
        Ok(UnrolledOutput {
            cost: cost.to_owned(),
            a: a.to_owned(),
            b: b.to_owned(),
            eps,
            rho,
            fs,
            gs,
            plan,
        })
    }

    /// Potentials after the last iteration.
    pub fn potentials(&self) -> (&Array1<F>, &Array1<F>) {
        (
            self.fs.last().expect("iters >= 1"),
            self.gs.last().expect("iters >= 1"),
        )
    }

    /// The eps of the iterations.
    pub fn eps(&self) -> F {
        self.eps
    }

    /// Iterations run.
    pub fn iterations(&self) -> usize {
        self.fs.len()
    }

    /// The regularised primal objective `<P, C> + eps KL(P | a b^T)` (+ the marginal KL terms) of the plan.
    pub fn value(&self) -> F {
        let kl = |x: F, y: F| {
            if x > F::zero() {
                x * (x / y).ln() - x + y
            } else {
                y
            }
        };
        let mut v = F::zero();
        for ((i, j), &p) in self.plan.indexed_iter() {
            v += p * self.cost[[i, j]] + self.eps * kl(p, self.a[i] * self.b[j]);
        }
        let rows = self.plan.sum_axis(Axis(1));
        let cols = self.plan.sum_axis(Axis(0));
        if let Some(r) = self.rho.0 {
            v += r * rows.iter().zip(&self.a).map(|(&x, &y)| kl(x, y)).sum::<F>();
        }
        if let Some(r) = self.rho.1 {
            v += r * cols.iter().zip(&self.b).map(|(&x, &y)| kl(x, y)).sum::<F>();
        }
        v
    }
}

/// Vector-Jacobian product through the unrolled iterations of an [`UnrolledOutput`]: given `G = dL/dP`,
/// returns `dL/dC`, `dL/da`, `dL/db` exactly for the map that was computed.
///
/// # Errors
/// [`Error::Shape`] / [`Error::NonFinite`] for a bad `grad_plan`.
///
/// # Complexity
/// `O(iters n m)` time (the softmaxes are recomputed from the stored potentials), `O(n m)` extra memory.
pub fn unrolled_plan_vjp<F: Real>(
    u: &UnrolledOutput<F>,
    grad_plan: ArrayView2<'_, F>,
) -> Result<PlanGrads<F>> {
    const OP: &str = "unrolled_plan_vjp";
    let (n, m) = u.cost.dim();
    check_grad_plan(OP, grad_plan, n, m)?;
    let eps = u.eps;
    let inv = F::one() / eps;
    let tau = |r: Option<F>| r.map_or(F::one(), |r| r / (r + eps));
    let (ta, tb) = (tau(u.rho.0), tau(u.rho.1));
    let (la, lb) = (u.a.mapv(|v| v.ln()), u.b.mapv(|v| v.ln()));
    let gp = &grad_plan * &u.plan;
    let mut gc = gp.mapv(|v| -v * inv);
    let mut fbar = gp.sum_axis(Axis(1)) * inv;
    let mut gbar = gp.sum_axis(Axis(0)) * inv;
    let mut abar = Array1::from_shape_fn(n, |i| gp.row(i).sum() / u.a[i]);
    let mut bbar = Array1::from_shape_fn(m, |j| gp.column(j).sum() / u.b[j]);
    for k in (0..u.fs.len()).rev() {
        let f = &u.fs[k];
        let g_prev = &u.gs[k];
        // g^k = tau_b (-eps LSE_i(la_i + (f_i - C_ij) / eps)): column softmax over i, stored as m x n rows
        let mut sg = Array2::from_shape_fn((m, n), |(j, i)| la[i] + (f[i] - u.cost[[i, j]]) * inv);
        softmax_rows(&mut sg);
        let weighted = &sg * &gbar.view().insert_axis(Axis(1)); // [j, i] = gbar_j S_ij
        fbar -= &(weighted.sum_axis(Axis(0)) * tb);
        gc += &(weighted.t().mapv(|v| v * tb));
        abar -= &(Array1::from_shape_fn(n, |i| weighted.column(i).sum() / u.a[i]) * (tb * eps));
        // f^k = tau_a (-eps LSE_j(lb_j + (g_j - C_ij) / eps)): row softmax over j
        let mut sf =
            Array2::from_shape_fn((n, m), |(i, j)| lb[j] + (g_prev[j] - u.cost[[i, j]]) * inv);
        softmax_rows(&mut sf);
        let weighted = &sf * &fbar.view().insert_axis(Axis(1)); // [i, j] = fbar_i S_ij
        gbar = weighted.sum_axis(Axis(0)) * (-ta);
        gc += &(weighted.mapv(|v| v * ta));
        bbar -= &(Array1::from_shape_fn(m, |j| weighted.column(j).sum() / u.b[j]) * (ta * eps));
        fbar.fill(F::zero());
    }
    if u.rho.0.is_none() && u.rho.1.is_none() {
        centre(&mut abar);
        centre(&mut bbar);
    }
    Ok(PlanGrads {
        grad_cost: gc,
        grad_a: abar,
        grad_b: bbar,
        solver_iterations: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{randn, rng};
    use crate::transport::{sinkhorn, Epsilon, ErrorNorm, SinkhornConfig};
    use crate::Backend;

    #[test]
    fn point_gradients_over_several_row_blocks_match_the_dense_plan() {
        // 150 rows: two full 64-row blocks and a partial one per chunk count below
        let (n, m, d) = (150, 40, 3);
        let x: Array2<f64> = randn(&mut rng(7), (n, d));
        let y: Array2<f64> = randn(&mut rng(8), (m, d));
        let (a, b) = (
            Array1::from_elem(n, 1.0 / n as f64),
            Array1::from_elem(m, 1.0 / m as f64),
        );
        let geom = Geometry::sq_euclidean(x.view(), y.view()).unwrap();
        let cfg = SinkhornConfig::new(Epsilon::Absolute(0.5)).with_tol(1e-9, ErrorNorm::L1);
        let out = sinkhorn(&geom, a.view(), b.view(), &cfg, &Backend::default()).unwrap();
        // reference: the plan in full, then 2 (r x - P y) and 2 (c y - P^T x)
        let (alpha, beta) = out.log_scalings(a.view(), b.view());
        let c = geom.to_dense();
        let plan = Array2::from_shape_fn((n, m), |(i, j)| {
            (alpha[i] + beta[j] - c[[i, j]] / out.eps).exp()
        });
        let (r, cs) = (plan.sum_axis(Axis(1)), plan.sum_axis(Axis(0)));
        let want_x = (&x * &r.insert_axis(Axis(1)) - plan.dot(&y)) * 2.0;
        let want_y = (&y * &cs.insert_axis(Axis(1)) - plan.t().dot(&x)) * 2.0;
        for par in [Par::Seq, Par::Rayon(2), Par::Rayon(3)] {
            let (gx, gy) = point_cloud_gradients(&geom, &out, a.view(), b.view(), par).unwrap();
            for (got, want) in [(&gx, &want_x), (&gy, &want_y)] {
                let diff = (got - want).mapv(f64::abs).fold(0.0f64, |m, &v| m.max(v));
                assert!(diff < 1e-12, "{par:?}: off by {diff}");
            }
        }
    }
}
