//! Sparse-dense products and LightGCN propagation, forward and backward.

use super::CsrGraph;
use crate::backend::{for_row_chunks, Par};
use crate::error::{check_finite_array, Error, Result};
use crate::simd::{avx2_dispatch, prefetch, Real};
use ndarray::{Array2, ArrayView2, ArrayViewMut2};

fn check_input<F: Real>(
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
    check_finite_array(op, what, &x)
}

/// Feature columns per register tile of [`spmm_rows`] (eight AVX registers of f32).
const TILE: usize = 64;

/// How many edges ahead [`spmm_rows`] prefetches neighbour rows.
const PREFETCH: usize = 6;

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
) {
    // one monomorphised loop per weight kind, so the hot loop has no per-edge branch
    match a.weights() {
        Some(ws) => spmm_rows_with(a, |e| ws[e], xs, d, rows, out),
        None => spmm_rows_with(a, |_| F::one(), xs, d, rows, out),
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
) {
    let (ind, ptr) = (a.indices(), a.indptr());
    let full = d / TILE * TILE;
    let row_bytes = TILE * std::mem::size_of::<F>();
    for (r, yi) in rows.zip(out.chunks_exact_mut(d)) {
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
        }
    }
}

avx2_dispatch!(spmm_rows_dispatch, spmm_rows_avx2, spmm_rows, <F>, (a: &CsrGraph<F>, xs: &[F], d: usize, rows: std::ops::Range<usize>, out: &mut [F]));

/// `Y = A X` into `y` (n_rows x d, row-major), rows in parallel.
fn spmm_into_unchecked<F: Real>(a: &CsrGraph<F>, x: ArrayView2<'_, F>, y: &mut [F], par: Par) {
    let d = x.ncols();
    if d == 0 {
        return;
    }
    let x = x.as_standard_layout();
    let xs = x.as_slice().expect("standard layout");
    for_row_chunks(par, y, d, |rows, out| {
        spmm_rows_dispatch(a, xs, d, rows, out)
    });
}

fn spmm_unchecked<F: Real>(a: &CsrGraph<F>, x: ArrayView2<'_, F>, par: Par) -> Array2<F> {
    let mut y = Array2::<F>::zeros((a.n_rows(), x.ncols()));
    spmm_into_unchecked(a, x, y.as_slice_mut().expect("fresh array"), par);
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
    check_input(OP, "x", a.n_cols(), x)?;
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
    spmm_into_unchecked(a, x, ys, par);
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
    check_input("spmm", "x", a.n_cols(), x)?;
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
    check_input("spmm_backward", "grad_y", a.n_rows(), grad_y)?;
    Ok(spmm_unchecked(&a.transposed().graph, grad_y, par))
}

/// Dense f64 reference of [`spmm`] (tests).
pub fn spmm_reference(a: &CsrGraph<f64>, x: &Array2<f64>) -> Array2<f64> {
    a.to_dense().dot(x)
}

fn check_layers(op: &'static str, layers: usize, a_rows: usize, a_cols: usize) -> Result<()> {
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
    const OP: &str = "lightgcn_forward";
    check_layers(OP, layers, a.n_rows(), a.n_cols())?;
    check_input(OP, "e0", a.n_cols(), e0)?;
    Ok(propagate_mean(a, e0, layers, par))
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
    const OP: &str = "lightgcn_backward";
    check_layers(OP, layers, a.n_rows(), a.n_cols())?;
    check_input(OP, "grad_out", a.n_rows(), grad_out)?;
    Ok(propagate_mean(&a.transposed().graph, grad_out, layers, par))
}

fn propagate_mean<F: Real>(
    a: &CsrGraph<F>,
    x: ArrayView2<'_, F>,
    layers: usize,
    par: Par,
) -> Array2<F> {
    // two buffers, ping-ponged: no allocation per layer
    let mut acc = x.to_owned();
    let mut cur = spmm_unchecked(a, x, par);
    let mut next = Array2::<F>::zeros(cur.dim());
    for l in 1..=layers {
        acc += &cur;
        if l < layers {
            spmm_into_unchecked(a, cur.view(), next.as_slice_mut().expect("owned"), par);
            std::mem::swap(&mut cur, &mut next);
        }
    }
    acc.mapv_inplace(|v| v / F::from_usize(layers + 1).expect("layer count fits"));
    acc
}
