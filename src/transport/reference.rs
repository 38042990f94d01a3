//! Obviously-correct slow references in f64: dense loops, two-pass log-sum-exp, no absorption, no SIMD.
//!
//! The fast solvers are tested against these; they are public so that users can check their own setups.

use ndarray::{Array1, Array2};

fn lse(xs: impl Iterator<Item = f64> + Clone) -> f64 {
    let m = xs.clone().fold(f64::NEG_INFINITY, f64::max);
    if !m.is_finite() {
        return m;
    }
    m + xs.map(|x| (x - m).exp()).sum::<f64>().ln()
}

/// `iters` Sinkhorn iterations (f-update then g-update) from zero potentials, in the log domain:
/// `f_i = tau_a (-eps LSE_j(log b_j + (g_j - C_ij) / eps))`, `g_j = tau_b (-eps LSE_i(log a_i + (f_i - C_ij) / eps))`,
/// with `tau = rho / (rho + eps)` (1 when `rho` is `None`). Returns `(f, g)`.
pub fn sinkhorn_log(
    c: &Array2<f64>,
    a: &Array1<f64>,
    b: &Array1<f64>,
    eps: f64,
    rho: (Option<f64>, Option<f64>),
    iters: usize,
) -> (Array1<f64>, Array1<f64>) {
    let (n, m) = c.dim();
    let tau = |r: Option<f64>| r.map_or(1.0, |r| r / (r + eps));
    let (mut f, mut g) = (Array1::<f64>::zeros(n), Array1::<f64>::zeros(m));
    for _ in 0..iters {
        for i in 0..n {
            f[i] = -tau(rho.0) * eps * lse((0..m).map(|j| b[j].ln() + (g[j] - c[[i, j]]) / eps));
        }
        for j in 0..m {
            g[j] = -tau(rho.1) * eps * lse((0..n).map(|i| a[i].ln() + (f[i] - c[[i, j]]) / eps));
        }
    }
    (f, g)
}

/// The plan `P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps)`.
pub fn plan(
    c: &Array2<f64>,
    a: &Array1<f64>,
    b: &Array1<f64>,
    f: &Array1<f64>,
    g: &Array1<f64>,
    eps: f64,
) -> Array2<f64> {
    Array2::from_shape_fn(c.dim(), |(i, j)| {
        a[i] * b[j] * ((f[i] + g[j] - c[[i, j]]) / eps).exp()
    })
}

/// The primal objective `<P, C> + eps KL(P | a b^T) + rho_a KL(P 1 | a) + rho_b KL(P^T 1 | b)` of a plan,
/// with `KL(p | q) = sum p log(p / q) - p + q`.
pub fn primal(
    c: &Array2<f64>,
    a: &Array1<f64>,
    b: &Array1<f64>,
    p: &Array2<f64>,
    eps: f64,
    rho: (Option<f64>, Option<f64>),
) -> f64 {
    let kl = |x: f64, y: f64| if x > 0.0 { x * (x / y).ln() - x + y } else { y };
    let mut v = 0.0;
    for ((i, j), &pij) in p.indexed_iter() {
        v += pij * c[[i, j]] + eps * kl(pij, a[i] * b[j]);
    }
    let rows = p.sum_axis(ndarray::Axis(1));
    let cols = p.sum_axis(ndarray::Axis(0));
    if let Some(r) = rho.0 {
        v += r * rows.iter().zip(a).map(|(&x, &y)| kl(x, y)).sum::<f64>();
    }
    if let Some(r) = rho.1 {
        v += r * cols.iter().zip(b).map(|(&x, &y)| kl(x, y)).sum::<f64>();
    }
    v
}

/// Exact (unregularised) OT between two uniform measures of `n` points each, by enumerating all `n!`
/// permutations (Birkhoff: an optimal plan is a permutation). For `n <= 8`.
///
/// # Panics
/// If the cost is not square or `n > 8` (this is a test oracle, not a solver).
pub fn exact_uniform_ot(c: &Array2<f64>) -> f64 {
    let n = c.nrows();
    assert!(
        c.ncols() == n && n <= 8,
        "exact_uniform_ot is for square costs up to 8 x 8"
    );
    let mut perm: Vec<usize> = (0..n).collect();
    let mut best = f64::INFINITY;
    permute(&mut perm, 0, c, &mut best);
    best / n as f64
}

fn permute(p: &mut Vec<usize>, k: usize, c: &Array2<f64>, best: &mut f64) {
    if k == p.len() {
        let v: f64 = p.iter().enumerate().map(|(i, &j)| c[[i, j]]).sum();
        *best = best.min(v);
        return;
    }
    for i in k..p.len() {
        p.swap(k, i);
        permute(p, k + 1, c, best);
        p.swap(k, i);
    }
}
