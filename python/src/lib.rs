//! The `recgoat` Python package's native module (`recgoat._recgoat`): the ops of recgoat-core on numpy
//! arrays and the reference model. The Python side (`python/recgoat/`) re-exports it with type stubs.
//!
//! Conventions: every op takes float32 or float64 arrays (the first array sets the dtype, the others must
//! match it), in C or Fortran order without a copy; it releases the GIL while computing; a crate error is
//! raised as `ValueError` (bad input), `OSError` (a file) or `RuntimeError` (anything else), with the
//! crate's message.

use numpy::{
    Element, PyArrayDescrMethods, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use recgoat_core::Error;

mod model;
mod ops;

/// The Python exception for a crate error.
pub(crate) fn py_err(e: Error) -> PyErr {
    let msg = e.to_string();
    match e {
        Error::Io { .. } | Error::Write { .. } => PyOSError::new_err(msg),
        Error::Shape { .. }
        | Error::Empty { .. }
        | Error::NonFinite { .. }
        | Error::Marginals { .. }
        | Error::Param { .. }
        | Error::Negative { .. }
        | Error::Graph { .. }
        | Error::Data { .. }
        | Error::Checkpoint { .. }
        | Error::Recommender { .. } => PyValueError::new_err(msg),
        _ => PyRuntimeError::new_err(msg),
    }
}

/// `ValueError(msg)`.
pub(crate) fn value_error(msg: impl Into<String>) -> PyErr {
    PyValueError::new_err(msg.into())
}

/// The floating-point types the ops take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dtype {
    F32,
    F64,
}

/// What `x` is, for messages: its type, and for an array its dtype and shape.
fn describe(x: &Bound<'_, PyAny>) -> String {
    let ty = x
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into());
    match (x.getattr("dtype"), x.getattr("shape")) {
        (Ok(d), Ok(s)) => format!("{ty} of dtype {d} and shape {s}"),
        _ => ty,
    }
}

/// The dtype of the float array `x` (named `name` in errors).
pub(crate) fn dtype_of(name: &str, x: &Bound<'_, PyAny>) -> PyResult<Dtype> {
    if let Ok(a) = x.cast::<PyUntypedArray>() {
        let (py, d) = (x.py(), a.dtype());
        if d.is_equiv_to(&numpy::dtype::<f32>(py)) {
            return Ok(Dtype::F32);
        }
        if d.is_equiv_to(&numpy::dtype::<f64>(py)) {
            return Ok(Dtype::F64);
        }
    }
    Err(value_error(format!(
        "{name}: expected a float32 or float64 numpy array, got {}",
        describe(x)
    )))
}

/// numpy's name of `F`.
fn dtype_name<F>() -> &'static str {
    match std::any::type_name::<F>() {
        "f32" => "float32",
        "f64" => "float64",
        other => other,
    }
}

/// `x` as a numpy array of int64 (any integer dtype is taken; `what` says what was expected, in errors).
pub(crate) fn int64_array<'py>(
    name: &str,
    x: &Bound<'py, PyAny>,
    what: &str,
) -> PyResult<Bound<'py, PyAny>> {
    let arr = x.py().import("numpy")?.call_method1("asarray", (x,))?;
    let kind: String = arr.getattr("dtype")?.getattr("kind")?.extract()?;
    if kind != "i" && kind != "u" {
        return Err(value_error(format!(
            "{name}: expected {what}, got {}",
            describe(&arr)
        )));
    }
    arr.call_method1("astype", ("int64",))
}

/// `x` as a 2-D array of `F` (its dtype must be `F`'s; any strides).
pub(crate) fn arr2<'py, F: Element>(
    name: &str,
    x: &Bound<'py, PyAny>,
) -> PyResult<PyReadonlyArray2<'py, F>> {
    x.extract::<PyReadonlyArray2<'py, F>>().map_err(|_| {
        value_error(format!(
            "{name}: expected a 2-D numpy array of {} (the dtype of the call's first array), got {}",
            dtype_name::<F>(),
            describe(x)
        ))
    })
}

/// `x` as a 1-D array of `F`.
pub(crate) fn arr1<'py, F: Element>(
    name: &str,
    x: &Bound<'py, PyAny>,
) -> PyResult<PyReadonlyArray1<'py, F>> {
    x.extract::<PyReadonlyArray1<'py, F>>().map_err(|_| {
        value_error(format!(
            "{name}: expected a 1-D numpy array of {} (the dtype of the call's first array), got {}",
            dtype_name::<F>(),
            describe(x)
        ))
    })
}

/// Runs `$body` with the type alias `$F` set to the dtype of the float array `$x`.
macro_rules! by_dtype {
    ($name:expr, $x:expr, |$F:ident| $body:expr) => {
        match $crate::dtype_of($name, $x)? {
            $crate::Dtype::F32 => {
                #[allow(dead_code)]
                type $F = f32;
                $body
            }
            $crate::Dtype::F64 => {
                #[allow(dead_code)]
                type $F = f64;
                $body
            }
        }
    };
}
pub(crate) use by_dtype;

/// The native module.
#[pymodule]
fn _recgoat(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    ops::register(m)?;
    model::register(m)?;
    Ok(())
}
