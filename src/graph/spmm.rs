//! Sparse-dense products and LightGCN propagation, forward and backward.

use super::CsrGraph;
use crate::backend::{for_row_chunks, Par};
use crate::error::{check_finite, Error, Result};
use crate::simd::Real;
use ndarray::{Array2, ArrayView2};

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
    check_finite(op, what, x.iter().copied())
}

/// `Y = A X` into a fresh array, rows in parallel; `X` must be row-major.
fn spmm_unchecked<F: Real>(a: &CsrGraph<F>, x: ArrayView2<'_, F>, par: Par) -> Array2<F> {
    let d = x.ncols();
    let x = x.as_standard_layout();
    let xs = x.as_slice().expect("standard layout");
    let mut y = Array2::<F>::zeros((a.n_rows(), d));
    let ys = y.as_slice_mut().expect("fresh array");
    for_row_chunks(par, ys, d, |rows, out| {
        for (r, yi) in rows.clone().zip(out.chunks_exact_mut(d.max(1))) {
            for e in a.row_range(r) {
                let j = a.indices()[e] as usize;
                F::axpy(a.weight(e), &xs[j * d..(j + 1) * d], yi);
            }
        }
    });
    y
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
    let mut acc = x.to_owned();
    let mut cur = spmm_unchecked(a, x, par);
    for l in 1..=layers {
        acc += &cur;
        if l < layers {
            cur = spmm_unchecked(a, cur.view(), par);
        }
    }
    acc.mapv_inplace(|v| v / F::from_usize(layers + 1).expect("layer count fits"));
    acc
}
