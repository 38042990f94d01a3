//! Helpers for tests of numerical code: tolerances as a type, seeded random inputs, central differences.
//!
//! Public so that crates embedding recgoat-core can test their own compositions the same way.

use crate::simd::Real;
use ndarray::{Array, Array1, Array2, ArrayView, Dimension, IntoDimension};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal, Uniform};

/// Seeded random number generator used by every test and example (ChaCha8: stable across platforms).
pub type TestRng = rand_chacha::ChaCha8Rng;

/// A generator from a seed.
pub fn rng(seed: u64) -> TestRng {
    TestRng::seed_from_u64(seed)
}

/// Array of standard normal samples.
pub fn randn<F: Real, D: Dimension, Sh: IntoDimension<Dim = D>>(
    rng: &mut TestRng,
    shape: Sh,
) -> Array<F, D> {
    Array::from_shape_simple_fn(shape.into_dimension(), || {
        F::c(<StandardNormal as Distribution<f64>>::sample(
            &StandardNormal,
            rng,
        ))
    })
}

/// Array of uniform samples in `[lo, hi)`.
pub fn uniform<F: Real, D: Dimension, Sh: IntoDimension<Dim = D>>(
    rng: &mut TestRng,
    shape: Sh,
    lo: f64,
    hi: f64,
) -> Array<F, D> {
    let u = Uniform::new(lo, hi);
    Array::from_shape_simple_fn(shape.into_dimension(), || F::c(u.sample(rng)))
}

/// Random probability vector of length `n` with entries bounded away from 0 (each in `[0.5, 1.5] / n` before
/// normalisation), so that solvers see well-conditioned marginals.
pub fn simplex<F: Real>(rng: &mut TestRng, n: usize) -> Array1<F> {
    let w: Array1<F> = uniform(rng, n, 0.5, 1.5);
    let s = w.sum();
    w / s
}

/// A random transport problem between two point clouds (see [`cloud_problem`]).
#[derive(Debug, Clone)]
pub struct CloudProblem<F> {
    /// Source points, n x dim, standard normal.
    pub x: Array2<F>,
    /// Target points, m x dim, standard normal.
    pub y: Array2<F>,
    /// Their squared Euclidean cost, computed naively.
    pub cost: Array2<F>,
    /// Source weights from [`simplex`].
    pub a: Array1<F>,
    /// Target weights from [`simplex`].
    pub b: Array1<F>,
}

/// A seeded random transport problem: two standard normal clouds of `n` and `m` points in `dim`
/// dimensions, their squared Euclidean cost and non-uniform weights of mass 1.
pub fn cloud_problem<F: Real>(seed: u64, n: usize, m: usize, dim: usize) -> CloudProblem<F> {
    let mut r = rng(seed);
    let x: Array2<F> = randn(&mut r, (n, dim));
    let y: Array2<F> = randn(&mut r, (m, dim));
    let cost = naive_sq_euclidean(&x, &y);
    let (a, b) = (simplex(&mut r, n), simplex(&mut r, m));
    CloudProblem { x, y, cost, a, b }
}

/// Squared Euclidean cost between two point clouds, computed naively in the element type (test reference).
pub fn naive_sq_euclidean<F: Real>(x: &Array2<F>, y: &Array2<F>) -> Array2<F> {
    Array2::from_shape_fn((x.nrows(), y.nrows()), |(i, j)| {
        x.row(i)
            .iter()
            .zip(y.row(j))
            .map(|(&a, &b)| (a - b) * (a - b))
            .sum()
    })
}

/// Relative and absolute tolerance: `|actual - expected| <= abs + rel * |expected|`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    /// Relative part.
    pub rel: f64,
    /// Absolute part.
    pub abs: f64,
}

impl Tolerance {
    /// f64 computations compared against an f64 reference doing the same arithmetic in another order.
    pub const F64_EXACT: Tolerance = Tolerance {
        rel: 1e-10,
        abs: 1e-12,
    };
    /// f64 quantities derived from iterative solves (converged to ~1e-12) or finite differences.
    pub const F64_SOLVE: Tolerance = Tolerance {
        rel: 1e-6,
        abs: 1e-9,
    };
    /// f32 kernels against an f64 reference.
    pub const F32: Tolerance = Tolerance {
        rel: 1e-4,
        abs: 1e-6,
    };

    /// A tolerance with the given parts.
    pub const fn new(rel: f64, abs: f64) -> Self {
        Tolerance { rel, abs }
    }

    /// This tolerance widened for a reduction over `n` terms (rounding error grows like `sqrt(n)` for
    /// random-signed terms; we use `n.sqrt()` times the base, at least the base).
    pub fn for_reduction(self, n: usize) -> Self {
        let g = (n.max(1) as f64).sqrt();
        Tolerance {
            rel: self.rel * g,
            abs: self.abs * g,
        }
    }

    /// Whether `actual` is within tolerance of `expected`.
    pub fn accepts(&self, actual: f64, expected: f64) -> bool {
        (actual - expected).abs() <= self.abs + self.rel * expected.abs()
    }

    /// Checks two arrays element by element; the error names the first failing index, both values and
    /// the tolerance.
    pub fn check<F: Real, D: Dimension>(
        &self,
        what: &str,
        actual: &ArrayView<'_, F, D>,
        expected: &ArrayView<'_, F, D>,
    ) -> Result<(), String> {
        if actual.shape() != expected.shape() {
            return Err(format!(
                "{what}: shape {:?} != expected {:?}",
                actual.shape(),
                expected.shape()
            ));
        }
        for (k, (&a, &e)) in actual.iter().zip(expected.iter()).enumerate() {
            let (a, e) = (
                a.to_f64().unwrap_or(f64::NAN),
                e.to_f64().unwrap_or(f64::NAN),
            );
            if !self.accepts(a, e) {
                return Err(format!(
                    "{what}: element {k}: actual {a:e}, expected {e:e}, |diff| {:e} > abs {:e} + rel {:e} * |expected|",
                    (a - e).abs(),
                    self.abs,
                    self.rel
                ));
            }
        }
        Ok(())
    }

    /// Like [`Tolerance::check`], panicking with the message (for tests).
    #[track_caller]
    pub fn assert_close<F: Real, D: Dimension>(
        &self,
        what: &str,
        actual: &ArrayView<'_, F, D>,
        expected: &ArrayView<'_, F, D>,
    ) {
        if let Err(m) = self.check(what, actual, expected) {
            panic!("{m}");
        }
    }

    /// Scalar version of [`Tolerance::assert_close`].
    #[track_caller]
    pub fn assert_scalar(&self, what: &str, actual: f64, expected: f64) {
        assert!(
            self.accepts(actual, expected),
            "{what}: actual {actual:e}, expected {expected:e}, |diff| {:e} > abs {:e} + rel {:e} * |expected|",
            (actual - expected).abs(),
            self.abs,
            self.rel
        );
    }
}

/// Central difference `(f(h) - f(-h)) / 2h` of a scalar function of a step size: the directional derivative
/// of a loss along a direction when `f(t) = loss(x + t * dir)`.
pub fn central_difference(mut f: impl FnMut(f64) -> f64, h: f64) -> f64 {
    (f(h) - f(-h)) / (2.0 * h)
}

/// A GPU context for a test: `Some` when an adapter opens; `None` when none does, after a line on stderr
/// (the caller skips its test), unless the environment sets `RECGOAT_REQUIRE_GPU=1`, which turns a missing
/// adapter into a panic (continuous integration sets it, so that no GPU test passes without running).
///
/// # Panics
/// With `RECGOAT_REQUIRE_GPU=1` and no adapter.
#[cfg(feature = "gpu")]
pub fn gpu_context() -> Option<crate::gpu::GpuContext> {
    match crate::gpu::GpuContext::new() {
        Ok(c) => Some(c),
        Err(e) if std::env::var("RECGOAT_REQUIRE_GPU").is_ok_and(|v| v == "1") => {
            panic!("RECGOAT_REQUIRE_GPU=1 but no GPU context: {e}")
        }
        Err(e) => {
            eprintln!("skipping GPU test: {e}");
            None
        }
    }
}

/// `base` at the sizes of a tiny test dataset (a dozen items): embedding 4, 2 heads, kNN 3, batches of 16,
/// one epoch. The fuzz corpus' model files and the hostile-input tests train at these sizes.
pub fn tiny_config(base: crate::model::RecGoatConfig) -> crate::model::RecGoatConfig {
    crate::model::RecGoatConfig {
        embedding_dim: 4,
        gat_heads: 2,
        knn_k: 3,
        batch_size: 16,
        epochs: 1,
        ..base
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn tolerance_reports_index_and_values() {
        let a = array![1.0f64, 2.0, 3.5];
        let b = array![1.0f64, 2.0, 3.0];
        let err = Tolerance::F64_EXACT
            .check("x", &a.view(), &b.view())
            .unwrap_err();
        assert!(err.contains("element 2") && err.contains("3.5e0"), "{err}");
        assert!(Tolerance::new(0.2, 0.0)
            .check("x", &a.view(), &b.view())
            .is_ok());
        assert!(Tolerance::new(1e-3, 0.0).for_reduction(100).rel > 9e-3);
    }

    #[test]
    fn central_difference_of_a_cubic() {
        let d = central_difference(|t| (2.0 + t).powi(3), 1e-4);
        assert!((d - 12.0).abs() < 1e-6);
    }
}
