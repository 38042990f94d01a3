//! Sparse-dense products and LightGCN propagation, forward and backward.

use super::CsrGraph;
use crate::backend::{run_each, split_lengths, Par};
use crate::error::{check_finite_array_par, Error, Result};
use crate::simd::{avx2_dispatch, prefetch, Real};
use ndarray::{Array2, ArrayView2, ArrayViewMut2};

fn check_input<F: Real>(
    op: &'static str,
    what: &str,
    rows_expected: usize,
    x: ArrayView2<'_, F>,
    par: Par,
) -> Result<()> {
    if x.nrows() != rows_expected {
        return Err(Error::shape(
            op,
            format!("rows of {what} vs graph"),
            rows_expected,
            x.nrows(),
        ));
    }
    check_finite_array_par(op, what, &x, par)
}

/// Feature columns per register tile of [`spmm_rows`] (eight AVX registers of f32).
const TILE: usize = 64;

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
) {
    // one monomorphised loop per weight kind, so the hot loop has no per-edge branch
    match a.weights() {
        Some(ws) => spmm_rows_with(a, |e| ws[e], xs, d, rows, out, sum),
        None => spmm_rows_with(a, |_| F::one(), xs, d, rows, out, sum),
    }
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
) {
    let (ind, ptr) = (a.indices(), a.indptr());
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
        }
    }
}

avx2_dispatch!(spmm_rows_dispatch, spmm_rows_avx2, spmm_rows, <F>, (a: &CsrGraph<F>, xs: &[F], d: usize, rows: std::ops::Range<usize>, out: &mut [F], sum: &mut [F]));

/// `Y = A X` into `y` (n_rows x d, row-major), rows in parallel; when `sum` is not empty (same shape as
/// `y`), also `sum += Y` in the same pass, while each output tile is still in registers.
fn spmm_into_unchecked<F: Real>(
    a: &CsrGraph<F>,
    x: ArrayView2<'_, F>,
    y: &mut [F],
    sum: &mut [F],
    par: Par,
) {
    let d = x.ncols();
    if d == 0 {
        return;
    }
    let x = x.as_standard_layout();
    let xs = x.as_slice().expect("standard layout");
    let summing = !sum.is_empty();
    let bounds = a.row_chunks(par);
    let ys = split_lengths(y, bounds.iter().map(|r| r.len() * d));
    let sums = split_lengths(
        sum,
        bounds.iter().map(|r| r.len() * d * usize::from(summing)),
    );
    run_each(
        par,
        bounds.into_iter().zip(ys).zip(sums).collect(),
        |((rows, out), s)| spmm_rows_dispatch(a, xs, d, rows, out, s),
    );
}

fn spmm_unchecked<F: Real>(a: &CsrGraph<F>, x: ArrayView2<'_, F>, par: Par) -> Array2<F> {
    let mut y = Array2::<F>::zeros((a.n_rows(), x.ncols()));
    spmm_into_unchecked(a, x, y.as_slice_mut().expect("fresh array"), &mut [], par);
    y
}

/// [`spmm`] into a caller's buffer (no allocation: what a training loop wants).
///
/// # Errors
/// As [`spmm`], plus [`Error::Shape`] when `y` is not `n_rows x d` in standard layout.
pub fn spmm_into<F: Real>(
    a: &CsrGraph<F>,
    x: ArrayView2<'_, F>,
    mut y: ArrayViewMut2<'_, F>,
    par: Par,
) -> Result<()> {
    const OP: &str = "spmm_into";
    check_input(OP, "x", a.n_cols(), x, par)?;
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
    spmm_into_unchecked(a, x, ys, &mut [], par);
    Ok(())
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
pub fn spmm<F: Real>(a: &CsrGraph<F>, x: ArrayView2<'_, F>, par: Par) -> Result<Array2<F>> {
    check_input("spmm", "x", a.n_cols(), x, par)?;
    Ok(spmm_unchecked(a, x, par))
}

/// Backward of [`spmm`]: `dX = A^T dY`, over the cached transposed graph (no atomics).
///
/// # Errors
/// [`Error::Shape`] when `grad_y` does not have `n_rows` rows, [`Error::NonFinite`] for NaN/Inf.
pub fn spmm_backward<F: Real>(
    a: &CsrGraph<F>,
    grad_y: ArrayView2<'_, F>,
    par: Par,
) -> Result<Array2<F>> {
    check_input("spmm_backward", "grad_y", a.n_rows(), grad_y, par)?;
    Ok(spmm_unchecked(&a.transposed().graph, grad_y, par))
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
    par: Par,
) -> Result<Array2<F>> {
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
    par: Par,
) -> Result<()> {
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
    par: Par,
) -> Result<Array2<F>> {
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
    par: Par,
) -> Result<()> {
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
    check_input(op, what, rows, x, par)?;
    if out.dim() != x.dim() {
        return Err(Error::shape(op, "out", x.dim(), out.dim()));
    }
    let outs = out
        .as_slice_mut()
        .ok_or_else(|| Error::shape(op, "out layout", "standard (row-major)", "strided"))?;
    propagate_mean(graph, x, layers, outs, buffers, par);
    Ok(())
}

/// `out = mean(X, A X, ..., A^L X)`, the running sum kept in `out` and filled inside the SpMM passes.
fn propagate_mean<F: Real>(
    a: &CsrGraph<F>,
    x: ArrayView2<'_, F>,
    layers: usize,
    out: &mut [F],
    buf: &mut PropagationBuffers<F>,
    par: Par,
) {
    let len = x.len();
    match x.as_slice() {
        Some(xs) => out.copy_from_slice(xs),
        None => out.iter_mut().zip(x.iter()).for_each(|(o, &v)| *o = v),
    }
    buf.cur.resize(len, F::zero());
    buf.next.resize(if layers > 1 { len } else { 0 }, F::zero());
    spmm_into_unchecked(a, x, &mut buf.cur, out, par);
    let d = x.ncols();
    for _ in 1..layers {
        let cur =
            ArrayView2::from_shape((a.n_rows(), d), &buf.cur[..]).expect("sized to the graph");
        spmm_into_unchecked(a, cur, &mut buf.next, out, par);
        std::mem::swap(&mut buf.cur, &mut buf.next);
    }
    let inv = F::one() / F::from_usize(layers + 1).expect("layer count fits");
    out.iter_mut().for_each(|v| *v *= inv);
}
