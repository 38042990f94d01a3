//! Sparse-dense products and LightGCN propagation, forward and backward.

use super::CsrGraph;
use crate::backend::check_finite_array_par;
use crate::backend::{run_in_order, split_lengths, Par};
use crate::error::{Error, Result};
use crate::simd::{avx2_dispatch, prefetch, Real};
use ndarray::{Array2, ArrayView2, ArrayViewMut2};
use std::sync::atomic::{AtomicBool, Ordering};

/// The shape check of a dense operand; its NaN/Inf check runs with the product ([`check_gathered`]).
fn check_rows<F: Real>(
    op: &'static str,
    what: &str,
    rows_expected: usize,
    x: ArrayView2<'_, F>,
) -> Result<()> {
    if x.nrows() != rows_expected {
        return Err(Error::shape(
            op,
            format!("rows of {what} vs graph"),
            rows_expected,
            x.nrows(),
        ));
    }
    Ok(())
}

/// The NaN/Inf check of the dense operand `x` of a product with `a`, after the product, which reported
/// whether all its accumulators stayed finite (`finite`). A NaN or an infinity in a gathered row makes its
/// accumulator non-finite (times any weight, zero included, and plus anything), so when they all stayed finite
/// only the rows that no edge gathers need a look. Otherwise the full scan names the first bad value, or
/// finds none: then finite inputs overflowed, which is not an input error.
fn check_gathered<F: Real>(
    op: &'static str,
    what: &str,
    a: &CsrGraph<F>,
    x: ArrayView2<'_, F>,
    finite: bool,
    par: Par,
) -> Result<()> {
    let unread_clean = || {
        a.unreferenced_cols()
            .iter()
            .all(|&c| x.row(c as usize).iter().all(|v| v.is_finite()))
    };
    if finite && unread_clean() {
        return Ok(());
    }
    check_finite_array_par(op, what, &x, par)
}

/// Feature columns per register tile of [`spmm_rows`] (eight AVX registers of f32).
const TILE: usize = 64;

/// Row chunks per worker in a parallel product, claimed in row order ([`run_in_order`]): both workers then
/// gather from the same region of the input at a time (2-3 % faster than one contiguous share per worker on
/// the Baby graph, measured side by side; 8 and 32 chunks were within 1 % of 16).
const CHUNKS_PER_WORKER: usize = 16;

/// How many edges ahead [`spmm_rows`] prefetches neighbour rows.
const PREFETCH: usize = 12;

/// Rows `rows` of `Y = A X` into `out` (those rows, row-major), overwriting it.
///
/// The feature dimension is walked in tiles of [`TILE`] columns and, per tile, all the row's edges: the
/// accumulator stays in registers and the loads of different edges are independent, so the random gathers
/// of neighbour rows overlap instead of queueing behind one another.
#[inline(always)]
fn spmm_rows<F: Real>(
    a: &CsrGraph<F>,
    xs: &[F],
    d: usize,
    rows: std::ops::Range<usize>,
    out: &mut [F],
    sum: &mut [F],
    finite: &mut bool,
) {
    // one monomorphised loop per weight kind, so the hot loop has no per-edge branch
    *finite = match a.weights() {
        Some(ws) => spmm_rows_with(a, |e| ws[e], xs, d, rows, out, sum),
        None => spmm_rows_with(a, |_| F::one(), xs, d, rows, out, sum),
    };
}

#[inline(always)]
fn spmm_rows_with<F: Real>(
    a: &CsrGraph<F>,
    weight: impl Fn(usize) -> F,
    xs: &[F],
    d: usize,
    rows: std::ops::Range<usize>,
    out: &mut [F],
    sum: &mut [F],
) -> bool {
    let (ind, ptr) = (a.indices(), a.indptr());
    // `v * 0` is NaN for a non-finite `v`: one sum says whether every output stayed finite
    let mut check = F::zero();
    let full = d / TILE * TILE;
    let summing = !sum.is_empty();
    let row_bytes = TILE * std::mem::size_of::<F>();
    for (ri, (r, yi)) in rows.zip(out.chunks_exact_mut(d)).enumerate() {
        let edges = ptr[r]..ptr[r + 1];
        for t0 in (0..full).step_by(TILE) {
            let mut acc = [F::zero(); TILE];
            for e in edges.clone() {
                // the neighbour row a few edges ahead (possibly of the next node) is known: fetch it now
                if let Some(&ahead) = ind.get(e + PREFETCH) {
                    prefetch(&xs[ahead as usize * d + t0..], row_bytes);
                }
                let (j, w) = (ind[e] as usize, weight(e));
                let xr: &[F; TILE] = xs[j * d + t0..j * d + t0 + TILE]
                    .try_into()
                    .expect("tile length");
                for k in 0..TILE {
                    acc[k] += w * xr[k];
                }
            }
            yi[t0..t0 + TILE].copy_from_slice(&acc);
            for &v in &acc {
                check += v * F::zero();
            }
            if summing {
                for (sv, &v) in sum[ri * d + t0..ri * d + t0 + TILE].iter_mut().zip(&acc) {
                    *sv += v;
                }
            }
        }
        if full < d {
            let tail = &mut yi[full..];
            tail.iter_mut().for_each(|v| *v = F::zero());
            for e in edges {
                let (j, w) = (ind[e] as usize, weight(e));
                for (y, &x) in tail.iter_mut().zip(&xs[j * d + full..(j + 1) * d]) {
                    *y += w * x;
                }
            }
            if summing {
                for (sv, &v) in sum[ri * d + full..(ri + 1) * d].iter_mut().zip(tail.iter()) {
                    *sv += v;
                }
            }
            for &v in tail.iter() {
                check += v * F::zero();
            }
        }
    }
    check == F::zero()
}

avx2_dispatch!(spmm_rows_dispatch, spmm_rows_avx2, spmm_rows, <F>, (a: &CsrGraph<F>, xs: &[F], d: usize, rows: std::ops::Range<usize>, out: &mut [F], sum: &mut [F], finite: &mut bool));

/// The slice as `f32` when `F` is `f32` (for kernels written for one type).
fn as_f32<F: Real>(xs: &[F]) -> Option<&[f32]> {
    (std::any::TypeId::of::<F>() == std::any::TypeId::of::<f32>())
        // SAFETY: F is f32 (same type, so same size, alignment and validity).
        .then(|| unsafe { std::slice::from_raw_parts(xs.as_ptr().cast::<f32>(), xs.len()) })
}

/// [`as_f32`] for a mutable slice.
fn as_f32_mut<F: Real>(xs: &mut [F]) -> Option<&mut [f32]> {
    (std::any::TypeId::of::<F>() == std::any::TypeId::of::<f32>())
        // SAFETY: as in `as_f32`; the borrow is moved into the result.
        .then(|| unsafe { std::slice::from_raw_parts_mut(xs.as_mut_ptr().cast::<f32>(), xs.len()) })
}

/// Rows `rows` of `Y = A X` for f32 with AVX-512F when `d` is a multiple of 16, else AVX2 + FMA when it is a
/// multiple of 8: whether every output stayed finite, or `None` (nothing done) for other types, widths and
/// CPUs.
fn spmm_rows_f32<F: Real>(
    a: &CsrGraph<F>,
    xs: &[F],
    d: usize,
    rows: std::ops::Range<usize>,
    out: &mut [F],
    sum: &mut [F],
) -> Option<bool> {
    #[cfg(target_arch = "x86_64")]
    if let (Some(xs), Some(out), Some(sum)) = (as_f32(xs), as_f32_mut(out), as_f32_mut(sum)) {
        let ws = a
            .weights()
            .map(|w| as_f32(w).expect("weights have the graph's type"));
        let (ptr, ind) = (a.indptr(), a.indices());
        #[cfg(recgoat_avx512)]
        if d % 16 == 0 && crate::simd::has_avx512f() {
            // SAFETY: AVX-512F is present (checked just before); indices and rows as below.
            return Some(unsafe { x86::spmm_rows_avx512(ptr, ind, ws, xs, d, rows, out, sum) });
        }
        if d % 8 == 0 && crate::simd::has_avx2_fma() {
            // SAFETY: AVX2 and FMA are present (checked just before); the graph's indices are below n_cols
            // (validated at construction) and `xs` holds n_cols rows of d (checked by the callers).
            return Some(unsafe { x86::spmm_rows(ptr, ind, ws, xs, d, rows, out, sum) });
        }
        return None;
    }
    let _ = (a, xs, d, rows, out, sum);
    None
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::PREFETCH;
    use std::arch::x86_64::*;

    /// One SIMD register of `f32` lanes with the operations of the row kernel [`rows_with`], so that one
    /// kernel serves AVX2 (`__m256`) and AVX-512F (`__m512`). The methods are inlined into the callers'
    /// `#[target_feature]` functions, which enable the instructions.
    trait Lanes: Copy {
        /// Lanes per register.
        const N: usize;
        unsafe fn zero() -> Self;
        unsafe fn splat(v: f32) -> Self;
        unsafe fn load(p: *const f32) -> Self;
        unsafe fn store(p: *mut f32, v: Self);
        /// `a * b + c`, one rounding.
        unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self;
        unsafe fn add(a: Self, b: Self) -> Self;
        unsafe fn any_nan(v: Self) -> bool;
    }

    impl Lanes for __m256 {
        const N: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> Self {
            _mm256_setzero_ps()
        }
        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            _mm256_set1_ps(v)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            _mm256_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: Self) {
            _mm256_storeu_ps(p, v)
        }
        #[inline(always)]
        unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
            _mm256_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn add(a: Self, b: Self) -> Self {
            _mm256_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn any_nan(v: Self) -> bool {
            _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_UNORD_Q>(v, v)) != 0
        }
    }

    #[cfg(recgoat_avx512)]
    #[clippy::msrv = "1.89"]
    impl Lanes for __m512 {
        const N: usize = 16;
        #[inline(always)]
        unsafe fn zero() -> Self {
            _mm512_setzero_ps()
        }
        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            _mm512_set1_ps(v)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            _mm512_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: Self) {
            _mm512_storeu_ps(p, v)
        }
        #[inline(always)]
        unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
            _mm512_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn add(a: Self, b: Self) -> Self {
            _mm512_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn any_nan(v: Self) -> bool {
            _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v) != 0
        }
    }

    /// [`super::spmm_rows`] for f32, `d % 8 == 0`, with AVX2 and FMA ([`rows_with`] on 8 lanes).
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn spmm_rows(
        ptr: &[usize],
        ind: &[u32],
        ws: Option<&[f32]>,
        xs: &[f32],
        d: usize,
        rows: std::ops::Range<usize>,
        out: &mut [f32],
        sum: &mut [f32],
    ) -> bool {
        rows_weighted::<__m256>(ptr, ind, ws, xs, d, rows, out, sum)
    }

    /// [`super::spmm_rows`] for f32, `d % 16 == 0`, with AVX-512F ([`rows_with`] on 16 lanes: half the
    /// loads and multiply-adds per edge of the AVX2 kernel, and the same results to the bit).
    #[cfg(recgoat_avx512)]
    #[clippy::msrv = "1.89"]
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn spmm_rows_avx512(
        ptr: &[usize],
        ind: &[u32],
        ws: Option<&[f32]>,
        xs: &[f32],
        d: usize,
        rows: std::ops::Range<usize>,
        out: &mut [f32],
        sum: &mut [f32],
    ) -> bool {
        rows_weighted::<__m512>(ptr, ind, ws, xs, d, rows, out, sum)
    }

    /// [`rows_with`] monomorphised per weight kind (the edge weights, or 1 for an unweighted graph), so the
    /// hot loop has no per-edge branch.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn rows_weighted<V: Lanes>(
        ptr: &[usize],
        ind: &[u32],
        ws: Option<&[f32]>,
        xs: &[f32],
        d: usize,
        rows: std::ops::Range<usize>,
        out: &mut [f32],
        sum: &mut [f32],
    ) -> bool {
        match ws {
            Some(ws) => rows_with::<V>(ptr, ind, |e| *ws.get_unchecked(e), xs, d, rows, out, sum),
            None => rows_with::<V>(ptr, ind, |_| 1.0, xs, d, rows, out, sum),
        }
    }

    /// Rows `rows` of `Y = A X` (and `sum += Y` when `sum` is not empty), `d` a multiple of `V::N`: 64-column
    /// tiles in `64 / V::N` accumulators (fused multiply-adds, unchecked loads), then `V::N`-column tiles.
    /// Every lane sums its products in edge order, whatever the width. Returns whether every output stayed
    /// finite.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn rows_with<V: Lanes>(
        ptr: &[usize],
        ind: &[u32],
        weight: impl Fn(usize) -> f32,
        xs: &[f32],
        d: usize,
        rows: std::ops::Range<usize>,
        out: &mut [f32],
        sum: &mut [f32],
    ) -> bool {
        debug_assert!(d % V::N == 0 && out.len() == rows.len() * d);
        debug_assert!(ind[ptr[rows.start]..ptr[rows.end]]
            .iter()
            .all(|&j| (j as usize + 1) * d <= xs.len()));
        // accumulators per 64-column tile (at most 8, the AVX2 count)
        let per = 64 / V::N;
        let summing = !sum.is_empty();
        let full = d / 64 * 64;
        let (x0, i0) = (xs.as_ptr(), ind.as_ptr());
        let n_ind = ind.len();
        // `v * 0 + check` turns NaN for a non-finite `v`
        let (zero, mut check) = (V::zero(), V::zero());
        for (ri, r) in rows.enumerate() {
            let (e0, e1) = (ptr[r], ptr[r + 1]);
            let yo = out.as_mut_ptr().add(ri * d);
            // (an offset pointer into `sum` only when there is one)
            let so = if summing {
                sum.as_mut_ptr().add(ri * d)
            } else {
                std::ptr::null_mut()
            };
            let mut t0 = 0;
            while t0 < full {
                let mut acc = [V::zero(); 8];
                for e in e0..e1 {
                    if e + PREFETCH < n_ind {
                        let p = x0.add(*i0.add(e + PREFETCH) as usize * d + t0) as *const i8;
                        _mm_prefetch::<_MM_HINT_T0>(p);
                        _mm_prefetch::<_MM_HINT_T0>(p.add(64));
                        _mm_prefetch::<_MM_HINT_T0>(p.add(128));
                        _mm_prefetch::<_MM_HINT_T0>(p.add(192));
                    }
                    let w = V::splat(weight(e));
                    let xr = x0.add(*i0.add(e) as usize * d + t0);
                    for (k, a) in acc[..per].iter_mut().enumerate() {
                        *a = V::fmadd(w, V::load(xr.add(V::N * k)), *a);
                    }
                }
                for (k, a) in acc[..per].iter().enumerate() {
                    V::store(yo.add(t0 + V::N * k), *a);
                    if summing {
                        let sp = so.add(t0 + V::N * k);
                        V::store(sp, V::add(V::load(sp), *a));
                    }
                }
                // a tree sum, so the check is not one long dependency chain (an overflowing sum of finite
                // outputs only sends the caller to the full scan)
                let mut step = 1;
                while step < per {
                    for i in (0..per).step_by(2 * step) {
                        acc[i] = V::add(acc[i], acc[i + step]);
                    }
                    step *= 2;
                }
                check = V::fmadd(acc[0], zero, check);
                t0 += 64;
            }
            while t0 < d {
                let mut acc = V::zero();
                for e in e0..e1 {
                    let w = V::splat(weight(e));
                    let xr = x0.add(*i0.add(e) as usize * d + t0);
                    acc = V::fmadd(w, V::load(xr), acc);
                }
                check = V::fmadd(acc, zero, check);
                V::store(yo.add(t0), acc);
                if summing {
                    let sp = so.add(t0);
                    V::store(sp, V::add(V::load(sp), acc));
                }
                t0 += V::N;
            }
        }
        !V::any_nan(check)
    }
}

/// `Y = A X` into `y` (n_rows x d, row-major), rows in parallel; when `sum` is not empty (same shape as
/// `y`), also `sum += Y` in the same pass, while each output tile is still in registers. Returns whether
/// every entry of `Y` is finite (the input check of [`check_gathered`]).
fn spmm_into_unchecked<F: Real>(
    a: &CsrGraph<F>,
    x: ArrayView2<'_, F>,
    y: &mut [F],
    sum: &mut [F],
    par: Par,
) -> bool {
    let d = x.ncols();
    if d == 0 {
        return true;
    }
    let x = x.as_standard_layout();
    let xs = x.as_slice().expect("standard layout");
    let summing = !sum.is_empty();
    let bounds = a.row_chunks_per_worker(par, CHUNKS_PER_WORKER);
    let ys = split_lengths(y, bounds.iter().map(|r| r.len() * d));
    let sums = split_lengths(
        sum,
        bounds.iter().map(|r| r.len() * d * usize::from(summing)),
    );
    let finite = AtomicBool::new(true);
    run_in_order(
        par,
        bounds.into_iter().zip(ys).zip(sums).collect(),
        |((rows, out), s)| {
            let ok = spmm_rows_f32(a, xs, d, rows.clone(), out, s).unwrap_or_else(|| {
                let mut ok = true;
                spmm_rows_dispatch(a, xs, d, rows, out, s, &mut ok);
                ok
            });
            if !ok {
                finite.store(false, Ordering::Relaxed);
            }
        },
    );
    finite.into_inner()
}

/// `Y = A X` into a fresh array, with the NaN/Inf check of `x` (named `what` in errors).
fn spmm_checked<F: Real>(
    op: &'static str,
    what: &str,
    a: &CsrGraph<F>,
    x: ArrayView2<'_, F>,
    par: Par,
) -> Result<Array2<F>> {
    let mut y = Array2::<F>::zeros((a.n_rows(), x.ncols()));
    let finite = spmm_into_unchecked(a, x, y.as_slice_mut().expect("fresh array"), &mut [], par);
    check_gathered(op, what, a, x, finite, par)?;
    Ok(y)
}

/// [`spmm`] into a caller's buffer (no allocation: what a training loop wants).
///
/// # Errors
/// As [`spmm`], plus [`Error::Shape`] when `y` is not `n_rows x d` in standard layout. Shapes are checked
/// before `y` is written; NaN/Inf in `x` is detected with the product, so after that error `y` holds
/// unspecified values.
pub fn spmm_into<F: Real>(
    a: &CsrGraph<F>,
    x: ArrayView2<'_, F>,
    mut y: ArrayViewMut2<'_, F>,
    par: impl Into<Par>,
) -> Result<()> {
    let par: Par = par.into();
    const OP: &str = "spmm_into";
    check_rows(OP, "x", a.n_cols(), x)?;
    if y.dim() != (a.n_rows(), x.ncols()) {
        return Err(Error::shape(
            OP,
            "y (n_rows x d)",
            (a.n_rows(), x.ncols()),
            y.dim(),
        ));
    }
    let ys = y
        .as_slice_mut()
        .ok_or_else(|| Error::shape(OP, "y layout", "standard (row-major)", "strided"))?;
    let finite = spmm_into_unchecked(a, x, ys, &mut [], par);
    check_gathered(OP, "x", a, x, finite, par)
}

/// Sparse-dense product `Y = A X`.
///
/// # Arguments
/// * `a` - the graph (`n_rows x n_cols`, weights or 1 per edge).
/// * `x` - `n_cols x d` dense features.
///
/// # Errors
/// [`Error::Shape`] when `x` does not have `n_cols` rows, [`Error::NonFinite`] for NaN/Inf in `x`.
///
/// # Complexity
/// `O(nnz d)`; rows in parallel, SIMD over `d`.
///
/// # Example
/// ```
/// use ndarray::array;
/// use recgoat_core::{Par, graph::{spmm, CsrGraph}};
/// let a = CsrGraph::new(2, 2, vec![0, 2, 3], vec![0, 1, 1], Some(vec![1.0f32, 2.0, 3.0])).unwrap();
/// let y = spmm(&a, array![[1.0f32], [10.0]].view(), Par::Seq).unwrap();
/// assert_eq!(y, array![[21.0], [30.0]]);
/// ```
pub fn spmm<F: Real>(
    a: &CsrGraph<F>,
    x: ArrayView2<'_, F>,
    par: impl Into<Par>,
) -> Result<Array2<F>> {
    let par: Par = par.into();
    check_rows("spmm", "x", a.n_cols(), x)?;
    spmm_checked("spmm", "x", a, x, par)
}

/// Backward of [`spmm`]: `dX = A^T dY`, over the cached transposed graph (no atomics).
///
/// # Errors
/// [`Error::Shape`] when `grad_y` does not have `n_rows` rows, [`Error::NonFinite`] for NaN/Inf.
pub fn spmm_backward<F: Real>(
    a: &CsrGraph<F>,
    grad_y: ArrayView2<'_, F>,
    par: impl Into<Par>,
) -> Result<Array2<F>> {
    let par: Par = par.into();
    check_rows("spmm_backward", "grad_y", a.n_rows(), grad_y)?;
    spmm_checked(
        "spmm_backward",
        "grad_y",
        &a.transposed().graph,
        grad_y,
        par,
    )
}

/// Dense f64 reference of [`spmm`] (tests).
pub fn spmm_reference(a: &CsrGraph<f64>, x: &Array2<f64>) -> Array2<f64> {
    a.to_dense().dot(x)
}

pub(crate) fn check_layers(
    op: &'static str,
    layers: usize,
    a_rows: usize,
    a_cols: usize,
) -> Result<()> {
    if a_rows != a_cols {
        return Err(Error::Graph {
            op,
            reason: format!("propagation needs a square graph, got {a_rows} x {a_cols}"),
        });
    }
    if layers == 0 {
        return Err(Error::param(op, "layers", 0, "must be >= 1"));
    }
    Ok(())
}

/// Reusable layer buffers for LightGCN propagation. A training loop that keeps one across calls avoids
/// allocating, and first-touching, two `n x d` arrays per call (page faults dominate propagation on small
/// graphs when every call allocates).
#[derive(Debug, Clone, Default)]
pub struct PropagationBuffers<F> {
    cur: Vec<F>,
    next: Vec<F>,
}

impl<F: Real> PropagationBuffers<F> {
    /// Empty buffers (they grow on first use).
    pub fn new() -> Self {
        PropagationBuffers {
            cur: Vec::new(),
            next: Vec::new(),
        }
    }
}

/// [`propagate_checked`] into a fresh output with fresh buffers (the allocating entry points).
fn propagate_owned<F: Real>(
    op: &'static str,
    side: Side,
    a: &CsrGraph<F>,
    x: ArrayView2<'_, F>,
    layers: usize,
    par: Par,
) -> Result<Array2<F>> {
    let mut out = Array2::<F>::zeros(x.dim());
    let mut buffers = PropagationBuffers::new();
    propagate_checked(op, side, a, x, layers, out.view_mut(), &mut buffers, par)?;
    Ok(out)
}

/// LightGCN propagation: `mean(E^0, A E^0, ..., A^L E^0)` for `L = layers`.
///
/// Pass the normalised adjacency ([`CsrGraph::sym_normalized`] of [`super::bipartite_user_item`]).
///
/// # Errors
/// [`Error::Graph`] for a non-square graph, [`Error::Param`] for `layers == 0`, and as [`spmm`].
///
/// # Complexity
/// `L` SpMMs: `O(L nnz d)` time, `O(n d)` extra memory (no per-layer outputs are kept: backward needs none).
pub fn lightgcn_forward<F: Real>(
    a: &CsrGraph<F>,
    e0: ArrayView2<'_, F>,
    layers: usize,
    par: impl Into<Par>,
) -> Result<Array2<F>> {
    let par: Par = par.into();
    propagate_owned("lightgcn_forward", Side::Forward, a, e0, layers, par)
}

/// [`lightgcn_forward`] into `out` (n x d, row-major) with reusable buffers: no allocation once `buffers`
/// has grown to the graph's size.
///
/// # Errors
/// As [`lightgcn_forward`], plus [`Error::Shape`] for an `out` of the wrong shape or layout.
pub fn lightgcn_forward_into<F: Real>(
    a: &CsrGraph<F>,
    e0: ArrayView2<'_, F>,
    layers: usize,
    out: ArrayViewMut2<'_, F>,
    buffers: &mut PropagationBuffers<F>,
    par: impl Into<Par>,
) -> Result<()> {
    let par: Par = par.into();
    propagate_checked(
        "lightgcn_forward_into",
        Side::Forward,
        a,
        e0,
        layers,
        out,
        buffers,
        par,
    )
}

/// Backward of [`lightgcn_forward`]: `dE^0 = mean over l of (A^T)^l dOut`.
///
/// # Errors
/// As [`lightgcn_forward`].
pub fn lightgcn_backward<F: Real>(
    a: &CsrGraph<F>,
    grad_out: ArrayView2<'_, F>,
    layers: usize,
    par: impl Into<Par>,
) -> Result<Array2<F>> {
    let par: Par = par.into();
    propagate_owned(
        "lightgcn_backward",
        Side::Backward,
        a,
        grad_out,
        layers,
        par,
    )
}

/// [`lightgcn_backward`] into `out` with reusable buffers.
///
/// # Errors
/// As [`lightgcn_backward`], plus [`Error::Shape`] for an `out` of the wrong shape or layout.
pub fn lightgcn_backward_into<F: Real>(
    a: &CsrGraph<F>,
    grad_out: ArrayView2<'_, F>,
    layers: usize,
    out: ArrayViewMut2<'_, F>,
    buffers: &mut PropagationBuffers<F>,
    par: impl Into<Par>,
) -> Result<()> {
    let par: Par = par.into();
    propagate_checked(
        "lightgcn_backward_into",
        Side::Backward,
        a,
        grad_out,
        layers,
        out,
        buffers,
        par,
    )
}

/// Which product a propagation applies: `A` (forward) or `A^T` over the cached transpose (backward).
#[derive(Clone, Copy)]
enum Side {
    Forward,
    Backward,
}

/// The checks and the call shared by the four LightGCN entry points; errors carry `op`.
#[allow(clippy::too_many_arguments)]
fn propagate_checked<F: Real>(
    op: &'static str,
    side: Side,
    a: &CsrGraph<F>,
    x: ArrayView2<'_, F>,
    layers: usize,
    mut out: ArrayViewMut2<'_, F>,
    buffers: &mut PropagationBuffers<F>,
    par: Par,
) -> Result<()> {
    check_layers(op, layers, a.n_rows(), a.n_cols())?;
    let (graph, what, rows) = match side {
        Side::Forward => (a, "e0", a.n_cols()),
        Side::Backward => (&a.transposed().graph, "grad_out", a.n_rows()),
    };
    check_rows(op, what, rows, x)?;
    if out.dim() != x.dim() {
        return Err(Error::shape(op, "out", x.dim(), out.dim()));
    }
    let outs = out
        .as_slice_mut()
        .ok_or_else(|| Error::shape(op, "out layout", "standard (row-major)", "strided"))?;
    let finite = propagate_mean(graph, x, layers, outs, buffers, par);
    check_gathered(op, what, graph, x, finite, par)
}

/// `out = mean(X, A X, ..., A^L X)`, the running sum kept in `out` and filled inside the SpMM passes.
/// Returns whether `A X` is finite (the first layer's input check).
fn propagate_mean<F: Real>(
    a: &CsrGraph<F>,
    x: ArrayView2<'_, F>,
    layers: usize,
    out: &mut [F],
    buf: &mut PropagationBuffers<F>,
    par: Par,
) -> bool {
    let len = x.len();
    match x.as_slice() {
        Some(xs) => out.copy_from_slice(xs),
        None => out.iter_mut().zip(x.iter()).for_each(|(o, &v)| *o = v),
    }
    buf.cur.resize(len, F::zero());
    buf.next.resize(if layers > 1 { len } else { 0 }, F::zero());
    let finite = spmm_into_unchecked(a, x, &mut buf.cur, out, par);
    let d = x.ncols();
    for _ in 1..layers {
        let cur =
            ArrayView2::from_shape((a.n_rows(), d), &buf.cur[..]).expect("sized to the graph");
        spmm_into_unchecked(a, cur, &mut buf.next, out, par);
        std::mem::swap(&mut buf.cur, &mut buf.next);
    }
    let inv = F::one() / F::from_usize(layers + 1).expect("layer count fits");
    out.iter_mut().for_each(|v| *v *= inv);
    finite
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// A random weighted CSR graph of `n` rows over `n` columns (up to 9 distinct sorted columns a row).
    fn graph(n: usize, seed: u64) -> CsrGraph<f32> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut indptr = vec![0];
        let (mut indices, mut weights) = (Vec::new(), Vec::new());
        for _ in 0..n {
            let mut cols: Vec<u32> = (0..rng.gen_range(2..10))
                .map(|_| rng.gen_range(0..n as u32))
                .collect();
            cols.sort_unstable();
            cols.dedup();
            for c in cols {
                indices.push(c);
                weights.push(rng.gen_range(-1.0f32..1.0));
            }
            indptr.push(indices.len());
        }
        CsrGraph::new(n, n, indptr, indices, Some(weights)).expect("a valid graph")
    }

    /// Every SIMD kernel the CPU has gives the portable kernel's rows (the AVX2 and AVX-512 kernels the
    /// very same bits: the same products summed in the same order), with and without weights and the
    /// running sum, and reports a non-finite input row it read.
    #[test]
    fn simd_kernels_match_the_portable_rows() {
        if !crate::simd::has_avx2_fma() {
            return;
        }
        for (d, seed) in [(16, 1), (64, 2), (80, 3), (128, 4), (8, 5)] {
            let n = 37;
            let g = graph(n, seed);
            let unweighted =
                CsrGraph::new(n, n, g.indptr().to_vec(), g.indices().to_vec(), None).unwrap();
            let xs: Vec<f32> = (0..n * d)
                .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
                .collect();
            for a in [&g, &unweighted] {
                let ws = a.weights();
                let rows = 3..n;
                let len = rows.len() * d;
                let mut portable = vec![0.0f32; len];
                let mut sum_p = vec![0.5f32; len];
                let mut finite = false;
                spmm_rows(
                    a,
                    &xs,
                    d,
                    rows.clone(),
                    &mut portable,
                    &mut sum_p,
                    &mut finite,
                );
                assert!(finite);
                let mut avx2 = vec![0.0f32; len];
                let mut sum2 = vec![0.5f32; len];
                // SAFETY: AVX2 and FMA are present (checked above); the indices are in range
                assert!(unsafe {
                    x86::spmm_rows(
                        a.indptr(),
                        a.indices(),
                        ws,
                        &xs,
                        d,
                        rows.clone(),
                        &mut avx2,
                        &mut sum2,
                    )
                });
                for (k, (&p, &v)) in portable.iter().zip(&avx2).enumerate() {
                    assert!(
                        (p - v).abs() <= 1e-5 * (1.0 + p.abs()),
                        "d {d} entry {k}: {p} vs {v}"
                    );
                }
                for (&p, &v) in sum_p.iter().zip(&sum2) {
                    assert!((p - v).abs() <= 1e-5 * (1.0 + p.abs()));
                }
                #[cfg(recgoat_avx512)]
                if d % 16 == 0 && crate::simd::has_avx512f() {
                    let mut avx512 = vec![0.0f32; len];
                    let mut sum5 = vec![0.5f32; len];
                    // SAFETY: AVX-512F is present (checked above); the indices are in range
                    assert!(unsafe {
                        x86::spmm_rows_avx512(
                            a.indptr(),
                            a.indices(),
                            ws,
                            &xs,
                            d,
                            rows.clone(),
                            &mut avx512,
                            &mut sum5,
                        )
                    });
                    assert_eq!(avx2, avx512, "d {d}");
                    assert_eq!(sum2, sum5, "d {d}");
                    let mut bad = xs.clone();
                    let j = a.indices()[a.indptr()[rows.start]] as usize;
                    bad[j * d + d - 1] = f32::NAN;
                    // SAFETY: as above
                    let ok = unsafe {
                        x86::spmm_rows_avx512(
                            a.indptr(),
                            a.indices(),
                            ws,
                            &bad,
                            d,
                            rows.clone(),
                            &mut avx512,
                            &mut [],
                        )
                    };
                    assert!(!ok, "d {d}: a NaN in a gathered row must be reported");
                }
            }
        }
    }
}
