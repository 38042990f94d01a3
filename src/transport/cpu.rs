//! The fast CPU Sinkhorn: a fused, absorbed log-domain pass and the scaling-domain loop.
//!
//! # One pass per iteration
//! With `alpha_i = log a_i + f_i / eps` and `beta_j = log b_j + g_j / eps`, the current plan is
//! `P_ij = exp(alpha_i + beta_j - C_ij / eps)`. One pass over the rows of C does a whole iteration:
//!
//! 1. `e_ij = P_ij` (one SIMD exp per entry) and `r_i = sum_j e_ij`;
//! 2. the f-update is `f_i <- tau_a (f_i - eps log(r_i / a_i))`, exact because
//!    `r_i / a_i = sum_j b_j exp((f_i + g_j - C_ij) / eps)`;
//! 3. the updated plan row is `e_ij * exp(delta_i)` with `delta_i` the change of `f_i / eps`, so the column
//!    sums for the g-update accumulate without a second exp;
//! 4. after all rows, `g_j <- tau_b (g_j - eps log(c_j / b_j))`.
//!
//! Because the potentials are absorbed every iteration, after a g-update every column sums to (at most) its
//! target, hence `P_ij <= 1`: the exp never overflows. Rows or columns whose sum underflows (far from
//! convergence with a tiny eps) are recomputed with an exact max-shifted log-sum-exp, so f32 stays finite.
//! The row sums `r` of step 1 are the row marginals of the iterate before the update: the marginal error
//! comes for free.

use super::{ErrorNorm, Geometry, SinkhornConfig, SinkhornOutput, Termination};
use crate::backend::{map_chunks, map_items, Par};
use crate::error::Result;
use crate::simd::{affine_logsumexp, axpy, Real};
use ndarray::{Array1, Array2, ArrayView1};

/// Sums below this are treated as underflowed and recomputed exactly (keeps ~20 bits of headroom).
fn tiny<F: Real>() -> F {
    F::min_positive_value() * F::c(1048576.0)
}

fn damping<F: Real>(rho: Option<F>, eps: F) -> F {
    rho.map_or(F::one(), |r| r / (r + eps))
}

/// The target a row (or column) sum must reach at the optimum: `a` (balanced) or `a exp(-f / rho)`.
fn marginal_target<F: Real>(w: F, pot: F, rho: Option<F>) -> F {
    rho.map_or(w, |r| w * (-pot / r).exp())
}

/// `log w_i + pot_i / eps` (with `inv = 1 / eps`): the log-scalings that absorb a potential, so the plan is
/// `exp(alpha_i + beta_j - C_ij / eps)`.
pub(crate) fn log_scaling<F: Real>(pot: &[F], log_w: &[F], inv: F) -> Vec<F> {
    pot.iter().zip(log_w).map(|(&p, &l)| p * inv + l).collect()
}

pub(crate) struct Weights<'a, F> {
    pub a: &'a [F],
    pub b: &'a [F],
    pub la: Vec<F>,
    pub lb: Vec<F>,
}

impl<'a, F: Real> Weights<'a, F> {
    pub fn new(a: &'a [F], b: &'a [F]) -> Self {
        Weights {
            a,
            b,
            la: a.iter().map(|v| v.ln()).collect(),
            lb: b.iter().map(|v| v.ln()).collect(),
        }
    }
}

/// `log(r_i / a_i)` for the row sum `r = sum_j exp(alpha + beta_j - crow_j inv)` from the fast exp pass, and
/// whether that sum was usable: when it underflowed (or is not finite) the log is recomputed exactly by a
/// max-shifted log-sum-exp (`scratch` is overwritten then).
#[allow(clippy::too_many_arguments)]
#[inline]
fn log_row_ratio<F: Real>(
    r: F,
    alpha: F,
    beta: &[F],
    crow: &[F],
    inv: F,
    scratch: &mut [F],
    log_a: F,
) -> (F, bool) {
    let fast = r > tiny() && r.is_finite();
    let log_r = if fast {
        r.ln()
    } else {
        affine_logsumexp(alpha, beta, crow, inv, scratch)
    };
    (log_r - log_a, fast)
}

/// One full log-domain iteration (f then g), in place. Returns the error of the row marginal of the
/// iterate *before* the update, in `norm`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn log_iteration<F: Real>(
    geom: &Geometry<'_, F>,
    w: &Weights<'_, F>,
    f: &mut [F],
    g: &mut [F],
    eps: F,
    rho: (Option<F>, Option<F>),
    norm: ErrorNorm,
    par: Par,
) -> F {
    let (n, m) = (geom.n(), geom.m());
    let inv = F::one() / eps;
    let (tau_a, tau_b) = (damping(rho.0, eps), damping(rho.1, eps));
    let beta = log_scaling(g, &w.lb, inv);
    let f_old: &[F] = f;
    let parts = map_chunks(par, n, |_, rows| {
        let mut col = vec![F::zero(); m];
        let mut e = vec![F::zero(); m];
        let mut scratch = Vec::new();
        let mut out = Vec::with_capacity(rows.len());
        geom.for_rows(rows, &mut scratch, |i, crow| {
            let alpha = f_old[i] * inv + w.la[i];
            let r = F::exp_affine_sum(alpha, &beta, crow, inv, &mut e);
            let resid = r - marginal_target(w.a[i], f_old[i], rho.0);
            let (lr, fast) = log_row_ratio(r, alpha, &beta, crow, inv, &mut e, w.la[i]);
            let f_new = tau_a * (f_old[i] - eps * lr);
            let delta = (f_new - f_old[i]) * inv;
            let scale = delta.exp();
            if fast && scale.is_finite() {
                axpy(scale, &e, &mut col);
            } else {
                F::exp_affine_sum(alpha + delta, &beta, crow, inv, &mut e);
                axpy(F::one(), &e, &mut col);
            }
            out.push((resid, f_new));
        });
        (col, out)
    });
    let mut col = vec![F::zero(); m];
    let mut resid = Vec::with_capacity(n);
    let mut i = 0;
    for (c, rows) in parts {
        axpy(F::one(), &c, &mut col);
        for (r, fnew) in rows {
            resid.push(r);
            f[i] = fnew;
            i += 1;
        }
    }
    let alpha = log_scaling(f, &w.la, inv);
    let bad: Vec<usize> = (0..m)
        .filter(|&j| !(col[j] > tiny() && col[j].is_finite()))
        .collect();
    let exact = map_items(par, &bad, |&j| {
        let mut c = vec![F::zero(); n];
        let mut s = vec![F::zero(); n];
        geom.column(j, &mut c);
        affine_logsumexp(beta[j], &alpha, &c, inv, &mut s)
    });
    let mut lc: Vec<F> = col.iter().map(|c| c.ln()).collect();
    for (&j, v) in bad.iter().zip(exact) {
        lc[j] = v;
    }
    for j in 0..m {
        g[j] = tau_b * (g[j] - eps * (lc[j] - w.lb[j]));
    }
    norm.apply(resid.into_iter())
}

/// Row sums, column sums, `<P, C>` and optionally the plan, for given log-scalings.
pub(crate) struct Measure<F> {
    pub rows: Vec<F>,
    pub cols: Vec<F>,
    pub cost: F,
    pub plan: Option<Array2<F>>,
}

pub(crate) fn measure<F: Real>(
    geom: &Geometry<'_, F>,
    alpha: &[F],
    beta: &[F],
    eps: F,
    want_plan: bool,
    par: Par,
) -> Measure<F> {
    let (n, m) = (geom.n(), geom.m());
    let inv = F::one() / eps;
    let parts = map_chunks(par, n, |_, rows| {
        let mut col = vec![F::zero(); m];
        let mut e = vec![F::zero(); m];
        let mut scratch = Vec::new();
        let mut rs = Vec::with_capacity(rows.len());
        let mut cost = F::zero();
        let mut plan = Vec::with_capacity(if want_plan { rows.len() * m } else { 0 });
        geom.for_rows(rows, &mut scratch, |i, crow| {
            rs.push(F::exp_affine_sum(alpha[i], beta, crow, inv, &mut e));
            cost += e.iter().zip(crow).map(|(&p, &c)| p * c).sum::<F>();
            axpy(F::one(), &e, &mut col);
            if want_plan {
                plan.extend_from_slice(&e);
            }
        });
        (col, rs, cost, plan)
    });
    let mut out = Measure {
        rows: Vec::with_capacity(n),
        cols: vec![F::zero(); m],
        cost: F::zero(),
        plan: None,
    };
    let mut flat = Vec::with_capacity(if want_plan { n * m } else { 0 });
    for (c, rs, cost, plan) in parts {
        axpy(F::one(), &c, &mut out.cols);
        out.rows.extend(rs);
        out.cost += cost;
        flat.extend(plan);
    }
    if want_plan {
        out.plan = Some(Array2::from_shape_vec((n, m), flat).expect("plan rows are complete"));
    }
    out
}

pub(crate) fn materialise_plan<F: Real>(
    geom: &Geometry<'_, F>,
    out: &SinkhornOutput<F>,
    a: ArrayView1<'_, F>,
    b: ArrayView1<'_, F>,
) -> Array2<F> {
    let (al, be) = out.log_scalings(a, b);
    measure(geom, &al, &be, out.eps, true, Par::rayon())
        .plan
        .expect("plan requested")
}

/// How one eps stage ended.
pub(crate) struct StageResult<F> {
    pub(crate) iterations: usize,
    pub(crate) history: Vec<(usize, F)>,
    pub(crate) termination: Termination,
}

/// What one eps stage of [`solve_with`] runs with.
pub(crate) struct StageArgs<'w, F> {
    /// The marginals and their logs.
    pub(crate) w: &'w Weights<'w, F>,
    /// `(rho_a, rho_b)` at the target eps (`None`: balanced).
    pub(crate) rho: (Option<F>, Option<F>),
    /// This stage's eps.
    pub(crate) eps: F,
    /// This stage's iteration cap.
    pub(crate) max_iter: usize,
}

/// Runs one eps stage in place on `(f, g)`. The CPU stages below and the GPU's share the schedule and the
/// final measurement of [`solve_with`].
pub(crate) type Stage<'s, F> =
    dyn FnMut(&StageArgs<'_, F>, &mut [F], &mut [F]) -> Result<StageResult<F>> + 's;

/// The final measuring pass of [`solve_with`] without the plan: `(alpha, beta, eps)` (log scalings) to the
/// plan's row sums, column sums and `<P, C>`. `None` in [`solve_with`]: [`measure`] on the host.
pub(crate) type Measurer<'s, F> = dyn FnMut(&[F], &[F], F) -> Result<Measure<F>> + 's;

#[allow(clippy::too_many_arguments)]
fn log_stage<F: Real>(
    geom: &Geometry<'_, F>,
    w: &Weights<'_, F>,
    (f, g): (&mut [F], &mut [F]),
    eps: F,
    rho: (Option<F>, Option<F>),
    cfg: &SinkhornConfig<F>,
    max_iter: usize,
    par: Par,
) -> StageResult<F> {
    run_stage((f, g), cfg, max_iter, |f, g| {
        log_iteration(geom, w, f, g, eps, rho, cfg.norm, par)
    })
}

/// Runs `iterate` (one iteration in place, returning the error of the iterate before it) up to `max_iter`
/// times, checking the error every `cfg.check_every` iterations; on convergence the potentials are those of
/// the iterate whose error was measured.
fn run_stage<F: Real>(
    (f, g): (&mut [F], &mut [F]),
    cfg: &SinkhornConfig<F>,
    max_iter: usize,
    mut iterate: impl FnMut(&mut [F], &mut [F]) -> F,
) -> StageResult<F> {
    let mut history = Vec::new();
    let (mut f_prev, mut g_prev) = (Vec::new(), Vec::new());
    for it in 0..max_iter {
        let check = it % cfg.check_every == 0;
        if check {
            f_prev.clear();
            f_prev.extend_from_slice(f);
            g_prev.clear();
            g_prev.extend_from_slice(g);
        }
        let err = iterate(f, g);
        if check {
            history.push((it, err));
            if err <= cfg.tol {
                // the error measured belongs to the iterate before this pass: return that iterate
                f.copy_from_slice(&f_prev);
                g.copy_from_slice(&g_prev);
                return StageResult {
                    iterations: it,
                    history,
                    termination: Termination::Converged,
                };
            }
            if !err.is_finite() {
                return StageResult {
                    iterations: it,
                    history,
                    termination: Termination::NonFinite { iteration: it },
                };
            }
        }
    }
    StageResult {
        iterations: max_iter,
        history,
        termination: Termination::MaxIterations,
    }
}

/// One iteration of the symmetric problem `OT(a, a)` on a symmetric cost, balanced: with `g = f`, the
/// averaged update `f <- (f + T(f)) / 2`, where `T(f)_i = f_i - eps log(r_i / a_i)` is the ordinary f-update
/// (`r` the row sums of the plan with `g = f`). The optimal potentials of the symmetric problem are equal,
/// and their common value is the fixed point; averaging damps the alternating scheme's slow oscillation
/// between `f` and `g`, which on clustered clouds with a small eps takes hundreds of iterations. Returns the
/// row-marginal error of the iterate before the update (columns equal rows by symmetry); `g` ends equal to
/// `f`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn symmetric_iteration<F: Real>(
    geom: &Geometry<'_, F>,
    w: &Weights<'_, F>,
    f: &mut [F],
    g: &mut [F],
    eps: F,
    norm: ErrorNorm,
    par: Par,
) -> F {
    let n = geom.n();
    let inv = F::one() / eps;
    let beta = log_scaling(f, &w.la, inv);
    let f_old: &[F] = f;
    let parts = map_chunks(par, n, |_, rows| {
        let mut e = vec![F::zero(); n];
        let mut scratch = Vec::new();
        let mut out = Vec::with_capacity(rows.len());
        geom.for_rows(rows, &mut scratch, |i, crow| {
            let alpha = beta[i];
            let r = F::exp_affine_sum(alpha, &beta, crow, inv, &mut e);
            let (lr, _) = log_row_ratio(r, alpha, &beta, crow, inv, &mut e, w.la[i]);
            out.push((r - w.a[i], f_old[i] - F::c(0.5) * eps * lr));
        });
        out
    });
    let mut resid = Vec::with_capacity(n);
    for (i, (r, f_new)) in parts.into_iter().flatten().enumerate() {
        resid.push(r);
        f[i] = f_new;
    }
    g.copy_from_slice(f);
    norm.apply(resid.into_iter())
}

#[allow(clippy::too_many_arguments)]
fn scaling_stage<F: Real>(
    geom: &Geometry<'_, F>,
    w: &Weights<'_, F>,
    (f, g): (&mut [F], &mut [F]),
    eps: F,
    rho: (Option<F>, Option<F>),
    cfg: &SinkhornConfig<F>,
    max_iter: usize,
    par: Par,
) -> StageResult<F> {
    let (n, m) = (geom.n(), geom.m());
    let inv = F::one() / eps;
    let (tau_a, tau_b) = (damping(rho.0, eps), damping(rho.1, eps));
    // the kernel exp(-C / eps), rows in chunk order
    let mut kernel = Vec::with_capacity(n * m);
    for part in map_chunks(par, n, |_, rows| {
        let mut k = Vec::with_capacity(rows.len() * m);
        let mut scratch = Vec::new();
        geom.for_rows(rows, &mut scratch, |_, crow| {
            k.extend(crow.iter().map(|&c| (-c * inv).exp()))
        });
        k
    }) {
        kernel.extend(part);
    }
    let mut u: Vec<F> =
        w.a.iter()
            .zip(f.iter())
            .map(|(&a, &fi)| a * (fi * inv).exp())
            .collect();
    let mut v: Vec<F> =
        w.b.iter()
            .zip(g.iter())
            .map(|(&b, &gj)| b * (gj * inv).exp())
            .collect();
    let mut history = Vec::new();
    let mut result = None;
    for it in 0..max_iter {
        let kv: Vec<F> = map_chunks(par, n, |_, rows| {
            rows.map(|i| {
                kernel[i * m..(i + 1) * m]
                    .iter()
                    .zip(&v)
                    .map(|(&k, &vj)| k * vj)
                    .sum::<F>()
            })
            .collect::<Vec<F>>()
        })
        .concat();
        if it % cfg.check_every == 0 {
            let err = cfg.norm.apply((0..n).map(|i| {
                let fi = eps * (u[i] / w.a[i]).ln();
                u[i] * kv[i] - marginal_target(w.a[i], fi, rho.0)
            }));
            history.push((it, err));
            if err <= cfg.tol {
                result = Some((it, Termination::Converged));
                break;
            }
        }
        for i in 0..n {
            u[i] = (w.a[i] / kv[i]).powf(tau_a);
        }
        let parts = map_chunks(par, n, |_, rows| {
            let mut acc = vec![F::zero(); m];
            for i in rows {
                axpy(u[i], &kernel[i * m..(i + 1) * m], &mut acc);
            }
            acc
        });
        let mut ktu = vec![F::zero(); m];
        for p in parts {
            axpy(F::one(), &p, &mut ktu);
        }
        for j in 0..m {
            v[j] = (w.b[j] / ktu[j]).powf(tau_b);
        }
        let broken = |x: &F| !x.is_finite() || *x == F::zero();
        if u.iter().any(broken) || v.iter().any(broken) {
            result = Some((it, Termination::NonFinite { iteration: it }));
            break;
        }
    }
    for i in 0..n {
        f[i] = eps * (u[i] / w.a[i]).ln();
    }
    for j in 0..m {
        g[j] = eps * (v[j] / w.b[j]).ln();
    }
    let (iterations, termination) = result.unwrap_or((max_iter, Termination::MaxIterations));
    StageResult {
        iterations,
        history,
        termination,
    }
}

/// The eps of every stage, ending at `target`.
pub(crate) fn stages<F: Real>(
    geom: &Geometry<'_, F>,
    cfg: &SinkhornConfig<F>,
    target: F,
    par: Par,
) -> Result<Vec<(F, usize)>> {
    let mut out = Vec::new();
    if let super::EpsSchedule::Geometric {
        start,
        decay,
        stage_iters,
    } = cfg.schedule
    {
        let mut e = start.resolve(geom, par)?;
        while e > target {
            out.push((e, stage_iters));
            e *= decay;
        }
    }
    out.push((target, cfg.max_iter));
    Ok(out)
}

pub(crate) fn solve<F: Real>(
    geom: &Geometry<'_, F>,
    a: ArrayView1<'_, F>,
    b: ArrayView1<'_, F>,
    cfg: &SinkhornConfig<F>,
    target: F,
    par: Par,
) -> Result<SinkhornOutput<F>> {
    solve_with(geom, a, b, cfg, target, par, None, &mut |s, f, g| {
        let (w, rho, eps, iters) = (s.w, s.rho, s.eps, s.max_iter);
        Ok(match cfg.domain {
            super::Domain::Log => log_stage(geom, w, (f, g), eps, rho, cfg, iters, par),
            super::Domain::Scaling => scaling_stage(geom, w, (f, g), eps, rho, cfg, iters, par),
        })
    })
}

/// [`solve`] for `OT(a, a)` on a symmetric cost (`C_ij = C_ji`: the self terms of a Sinkhorn divergence):
/// balanced problems in the log domain run [`symmetric_iteration`], others [`solve`]'s iterations. The
/// result is the same problem's solution, to the same stopping rule.
pub(crate) fn solve_symmetric<F: Real>(
    geom: &Geometry<'_, F>,
    a: ArrayView1<'_, F>,
    cfg: &SinkhornConfig<F>,
    target: F,
    par: Par,
) -> Result<SinkhornOutput<F>> {
    let balanced = cfg.marginal_a.rho(target).is_none() && cfg.marginal_b.rho(target).is_none();
    if !balanced || cfg.domain != super::Domain::Log {
        return solve(geom, a, a, cfg, target, par);
    }
    solve_with(geom, a, a, cfg, target, par, None, &mut |s, f, g| {
        let (w, eps) = (s.w, s.eps);
        Ok(run_stage((f, g), cfg, s.max_iter, |f, g| {
            symmetric_iteration(geom, w, f, g, eps, cfg.norm, par)
        }))
    })
}

/// The eps schedule, warm-started stage after stage by `stage`, then the final measurement (row and column
/// sums, cost, value, errors): by `measurer` when given and no plan is asked for, else on the host.
#[allow(clippy::too_many_arguments)]
pub(crate) fn solve_with<F: Real>(
    geom: &Geometry<'_, F>,
    a: ArrayView1<'_, F>,
    b: ArrayView1<'_, F>,
    cfg: &SinkhornConfig<F>,
    target: F,
    par: Par,
    measurer: Option<&mut Measurer<'_, F>>,
    stage: &mut Stage<'_, F>,
) -> Result<SinkhornOutput<F>> {
    let (a_s, b_s) = (a.to_vec(), b.to_vec());
    let w = Weights::new(&a_s, &b_s);
    let rho = (cfg.marginal_a.rho(target), cfg.marginal_b.rho(target));
    let mut f = vec![F::zero(); geom.n()];
    let mut g = vec![F::zero(); geom.m()];
    let mut total = 0;
    let mut last = None;
    for (eps, iters) in stages(geom, cfg, target, par)? {
        let args = StageArgs {
            w: &w,
            rho,
            eps,
            max_iter: iters,
        };
        let st = stage(&args, &mut f, &mut g)?;
        total += st.iterations;
        let stop = matches!(st.termination, Termination::NonFinite { .. });
        last = Some(st);
        if stop {
            break;
        }
    }
    let st = last.expect("at least the target stage runs");
    let inv = F::one() / target;
    let alpha = log_scaling(&f, &w.la, inv);
    let beta = log_scaling(&g, &w.lb, inv);
    let ms = match measurer {
        Some(m) if !cfg.return_plan => m(&alpha, &beta, target)?,
        _ => measure(geom, &alpha, &beta, target, cfg.return_plan, par),
    };
    Ok(finish(&w, f, g, target, rho, cfg, st, total, ms))
}

#[allow(clippy::too_many_arguments)]
fn finish<F: Real>(
    w: &Weights<'_, F>,
    f: Vec<F>,
    g: Vec<F>,
    eps: F,
    rho: (Option<F>, Option<F>),
    cfg: &SinkhornConfig<F>,
    st: StageResult<F>,
    total: usize,
    ms: Measure<F>,
) -> SinkhornOutput<F> {
    let err_rows = cfg
        .norm
        .apply((0..f.len()).map(|i| ms.rows[i] - marginal_target(w.a[i], f[i], rho.0)));
    let err_cols = cfg
        .norm
        .apply((0..g.len()).map(|j| ms.cols[j] - marginal_target(w.b[j], g[j], rho.1)));
    let marginal_error = err_rows + err_cols;
    let side = |wts: &[F], pot: &[F], rho: Option<F>| -> F {
        match rho {
            None => wts.iter().zip(pot).map(|(&x, &p)| x * p).sum(),
            Some(r) => {
                -r * wts
                    .iter()
                    .zip(pot)
                    .map(|(&x, &p)| x * ((-p / r).exp() - F::one()))
                    .sum::<F>()
            }
        }
    };
    let mass: F = ms.rows.iter().copied().sum();
    let ma: F = w.a.iter().copied().sum();
    let mb: F = w.b.iter().copied().sum();
    let value = side(w.a, &f, rho.0) + side(w.b, &g, rho.1) - eps * (mass - ma * mb);
    // the loop measured the row error of exactly this iterate; its columns are exact after the g-update
    let converged = st.termination == Termination::Converged;
    SinkhornOutput {
        f: Array1::from(f),
        g: Array1::from(g),
        eps,
        rho_a: rho.0,
        rho_b: rho.1,
        transport_cost: ms.cost,
        value,
        row_sums: Array1::from(ms.rows),
        col_sums: Array1::from(ms.cols),
        marginal_error,
        error_history: st.history,
        iterations: st.iterations,
        total_iterations: total,
        converged,
        termination: st.termination,
        plan: ms.plan,
    }
}
