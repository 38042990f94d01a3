//! The ops on numpy arrays: entropic optimal transport (Sinkhorn, unbalanced, divergence), InfoNCE, graphs
//! (CSR, kNN, LightGCN propagation) and graph attention, each with its gradient.

use crate::{arr1, arr2, by_dtype, int64_array, py_err, value_error};
use ndarray::{Array1, Array2, ArrayView2};
use num_traits::{FromPrimitive, One, ToPrimitive};
use numpy::{Element, IntoPyArray, PyReadonlyArray1};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use recgoat_core::attention::{GatConfig, GatLayer, GatParams, Mode, Scoring};
use recgoat_core::contrastive::{info_nce as core_info_nce, Direction, InfoNceConfig, Reduction};
use recgoat_core::graph::{
    knn_graph as core_knn_graph, lightgcn_backward, lightgcn_forward, spmm, CsrGraph, HnswConfig,
    KnnConfig, KnnMethod,
};
use recgoat_core::transport::{
    envelope, point_cloud_gradients, sinkhorn as core_sinkhorn,
    sinkhorn_divergence as core_divergence, AdaptiveTransport, AdaptiveTransportConfig, Domain,
    EpsScale, Epsilon, Geometry, ImplicitConfig, Marginal, PlanGradient, SinkhornConfig,
};
use recgoat_core::{Backend, Par, Real};
use std::sync::OnceLock;

/// The CPU parallelism of `threads` (0: every core; 1: in order on the calling thread).
fn par(threads: usize) -> Par {
    match threads {
        1 => Par::Seq,
        n => Par::Rayon(n),
    }
}

/// The eps of `eps` (with `eps_scale`, a factor of the cost's mean, median or max).
fn epsilon<F: Real>(eps: f64, eps_scale: Option<&str>) -> PyResult<Epsilon<F>> {
    let factor = F::from_f64(eps).expect("a float");
    let scale = match eps_scale {
        None => return Ok(Epsilon::Absolute(factor)),
        Some("mean") => EpsScale::Mean,
        Some("median") => EpsScale::Median,
        Some("max") => EpsScale::Max,
        Some(other) => {
            return Err(value_error(format!(
                "eps_scale: {other:?} is not one of \"mean\", \"median\", \"max\" (or None for an absolute eps)"
            )))
        }
    };
    Ok(Epsilon::Relative { scale, factor })
}

/// A marginal: balanced (`None`) or a KL penalty of strength `rho`.
fn marginal<F: Real>(rho: Option<f64>) -> Marginal<F> {
    rho.map_or(Marginal::Balanced, |r| {
        Marginal::Kl(F::from_f64(r).expect("a float"))
    })
}

#[allow(clippy::too_many_arguments)]
fn sinkhorn_config<F: Real>(
    eps: f64,
    eps_scale: Option<&str>,
    domain: &str,
    tol: f64,
    max_iter: usize,
    reg_m_a: Option<f64>,
    reg_m_b: Option<f64>,
    return_plan: bool,
) -> PyResult<SinkhornConfig<F>> {
    let domain = match domain {
        "log" => Domain::Log,
        "scaling" => Domain::Scaling,
        other => {
            return Err(value_error(format!(
                "domain: {other:?} is not \"log\" or \"scaling\""
            )))
        }
    };
    let mut cfg = SinkhornConfig::new(epsilon(eps, eps_scale)?)
        .with_domain(domain)
        .with_marginals(marginal(reg_m_a), marginal(reg_m_b))
        .with_plan(return_plan);
    cfg.tol = F::from_f64(tol).expect("a float");
    cfg.max_iter = max_iter;
    Ok(cfg)
}

/// Sets `key` to a numpy array of `x`.
fn put<'py, A: IntoPyArray>(d: &Bound<'py, PyDict>, key: &str, x: A) -> PyResult<()> {
    d.set_item(key, x.into_pyarray(d.py()))
}

/// Entropic optimal transport between the weights `a` (n) and `b` (m).
///
/// The cost is `cost` (n x m), or the squared Euclidean distance between the point clouds `x` (n x d) and
/// `y` (m x d) computed on the fly. `eps` is the regularisation: absolute, or with `eps_scale` ("mean",
/// "median", "max") a factor of that statistic of the cost. `domain` is "log" or "scaling"; `reg_m_a` /
/// `reg_m_b` relax a marginal to a KL penalty of that strength (unbalanced). Stops at a marginal error
/// (L1) of `tol` or after `max_iter` iterations. Returns a dict: `f`, `g`, `plan`, `transport_cost`,
/// `value`, `eps`, `marginal_error`, `iterations`, `converged`, and the value's gradients `grad_a`,
/// `grad_b` (and `grad_x`, `grad_y` for point clouds).
///
/// >>> import numpy as np, recgoat
/// >>> c = np.array([[0.0, 1.0], [1.0, 0.0]])
/// >>> w = np.array([0.5, 0.5])
/// >>> out = recgoat.sinkhorn(w, w, c, eps=0.05, tol=1e-9)
/// >>> bool(out["converged"]), round(float(out["plan"][0, 0]), 6)
/// (True, 0.5)
#[pyfunction]
#[pyo3(signature = (a, b, cost=None, *, x=None, y=None, eps=0.05, eps_scale=None, domain="log", tol=1e-6,
    max_iter=1000, reg_m_a=None, reg_m_b=None, return_plan=true, threads=0))]
#[allow(clippy::too_many_arguments)]
fn sinkhorn<'py>(
    py: Python<'py>,
    a: &Bound<'py, PyAny>,
    b: &Bound<'py, PyAny>,
    cost: Option<&Bound<'py, PyAny>>,
    x: Option<&Bound<'py, PyAny>>,
    y: Option<&Bound<'py, PyAny>>,
    eps: f64,
    eps_scale: Option<&str>,
    domain: &str,
    tol: f64,
    max_iter: usize,
    reg_m_a: Option<f64>,
    reg_m_b: Option<f64>,
    return_plan: bool,
    threads: usize,
) -> PyResult<Bound<'py, PyDict>> {
    by_dtype!("a", a, |F| {
        let cfg = sinkhorn_config::<F>(
            eps,
            eps_scale,
            domain,
            tol,
            max_iter,
            reg_m_a,
            reg_m_b,
            return_plan,
        )?;
        let (a, b) = (arr1::<F>("a", a)?, arr1::<F>("b", b)?);
        let clouds = match (cost, x, y) {
            (Some(c), None, None) => Err(arr2::<F>("cost", c)?),
            (None, Some(x), Some(y)) => Ok((arr2::<F>("x", x)?, arr2::<F>("y", y)?)),
            _ => return Err(value_error(
                "give either a cost matrix, or the point clouds x and y (squared Euclidean cost)",
            )),
        };
        let (av, bv) = (a.as_array(), b.as_array());
        let d = PyDict::new(py);
        let backend = Backend::Cpu(par(threads));
        let (out, env, grads) = match &clouds {
            Err(c) => {
                let c = c.as_array();
                py.detach(|| {
                    let geom = Geometry::dense(c)?;
                    let out = core_sinkhorn(&geom, av, bv, &cfg, &backend)?;
                    let env = envelope(&out, av, bv)?;
                    Ok((out, env, None))
                })
            }
            Ok((x, y)) => {
                let (x, y) = (x.as_array(), y.as_array());
                py.detach(|| {
                    let geom = Geometry::sq_euclidean(x, y)?;
                    let out = core_sinkhorn(&geom, av, bv, &cfg, &backend)?;
                    let env = envelope(&out, av, bv)?;
                    let grads = point_cloud_gradients(&geom, &out, av, bv, par(threads))?;
                    Ok((out, env, Some(grads)))
                })
            }
        }
        .map_err(py_err)?;
        d.set_item(
            "transport_cost",
            out.transport_cost.to_f64().unwrap_or(f64::NAN),
        )?;
        d.set_item("value", out.value.to_f64().unwrap_or(f64::NAN))?;
        d.set_item("eps", out.eps.to_f64().unwrap_or(f64::NAN))?;
        d.set_item(
            "marginal_error",
            out.marginal_error.to_f64().unwrap_or(f64::NAN),
        )?;
        d.set_item("iterations", out.total_iterations)?;
        d.set_item("converged", out.converged)?;
        put(&d, "f", out.f)?;
        put(&d, "g", out.g)?;
        if let Some(p) = out.plan {
            put(&d, "plan", p)?;
        }
        put(&d, "grad_a", env.grad_a)?;
        put(&d, "grad_b", env.grad_b)?;
        if let Some((gx, gy)) = grads {
            put(&d, "grad_x", gx)?;
            put(&d, "grad_y", gy)?;
        }
        Ok(d)
    })
}

/// The debiased Sinkhorn divergence `OT(x, y) - (OT(x, x) + OT(y, y)) / 2` between weighted point clouds
/// (uniform weights by default; squared Euclidean cost), with its gradients `grad_x`, `grad_y`, `grad_a`,
/// `grad_b`. Zero when the clouds coincide.
///
/// >>> import numpy as np, recgoat
/// >>> x = np.array([[0.0, 0.0], [1.0, 0.0]])
/// >>> abs(recgoat.sinkhorn_divergence(x, x, eps=0.1, tol=1e-10)["value"]) < 1e-9
/// True
/// >>> recgoat.sinkhorn_divergence(x, x + 0.5, eps=0.1)["value"] > 0.1
/// True
#[pyfunction]
#[pyo3(signature = (x, y, a=None, b=None, *, eps=0.05, eps_scale=None, tol=1e-6, max_iter=1000, threads=0))]
#[allow(clippy::too_many_arguments)]
fn sinkhorn_divergence<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    y: &Bound<'py, PyAny>,
    a: Option<&Bound<'py, PyAny>>,
    b: Option<&Bound<'py, PyAny>>,
    eps: f64,
    eps_scale: Option<&str>,
    tol: f64,
    max_iter: usize,
    threads: usize,
) -> PyResult<Bound<'py, PyDict>> {
    by_dtype!("x", x, |F| {
        let cfg = sinkhorn_config::<F>(eps, eps_scale, "log", tol, max_iter, None, None, false)?;
        let (x, y) = (arr2::<F>("x", x)?, arr2::<F>("y", y)?);
        let (xv, yv) = (x.as_array(), y.as_array());
        let uniform = |n: usize| Array1::from_elem(n, F::one() / F::from_usize(n.max(1)).unwrap());
        let weights = |name: &str, w: Option<&Bound<'py, PyAny>>, n: usize| {
            w.map(|w| arr1::<F>(name, w).map(|w| w.as_array().to_owned()))
                .unwrap_or_else(|| Ok(uniform(n)))
        };
        let (a, b) = (weights("a", a, xv.nrows())?, weights("b", b, yv.nrows())?);
        let backend = Backend::Cpu(par(threads));
        let out = py
            .detach(|| core_divergence(xv, yv, a.view(), b.view(), &cfg, &backend))
            .map_err(py_err)?;
        let d = PyDict::new(py);
        d.set_item("value", out.value.to_f64().unwrap_or(f64::NAN))?;
        d.set_item("ot_xy", out.ot_xy.to_f64().unwrap_or(f64::NAN))?;
        d.set_item("ot_xx", out.ot_xx.to_f64().unwrap_or(f64::NAN))?;
        d.set_item("ot_yy", out.ot_yy.to_f64().unwrap_or(f64::NAN))?;
        d.set_item("converged", out.converged)?;
        put(&d, "grad_x", out.grad_x)?;
        put(&d, "grad_y", out.grad_y)?;
        put(&d, "grad_a", out.grad_a)?;
        put(&d, "grad_b", out.grad_b)?;
        Ok(d)
    })
}

/// InfoNCE over two views of B pairs (B x d each; row b of each is a positive pair, the other rows and
/// `negatives` (K x d) the negatives), with its gradients `grad_v1`, `grad_v2` (and `grad_negatives`).
/// `normalize` uses cosine similarities; `symmetric` averages both directions; `weights` (B, >= 0) weigh
/// the pairs; `reduction` is "mean" or "sum".
///
/// >>> import numpy as np, recgoat
/// >>> out = recgoat.info_nce(np.eye(2), np.eye(2), temperature=0.2)
/// >>> round(out["loss"], 6)  # -log(e^5 / (e^5 + 1))
/// 0.006715
/// >>> out["grad_v1"].shape
/// (2, 2)
#[pyfunction]
#[pyo3(signature = (v1, v2, *, temperature=0.2, normalize=true, symmetric=false, negatives=None,
    weights=None, reduction="mean", threads=0))]
#[allow(clippy::too_many_arguments)]
fn info_nce<'py>(
    py: Python<'py>,
    v1: &Bound<'py, PyAny>,
    v2: &Bound<'py, PyAny>,
    temperature: f64,
    normalize: bool,
    symmetric: bool,
    negatives: Option<&Bound<'py, PyAny>>,
    weights: Option<&Bound<'py, PyAny>>,
    reduction: &str,
    threads: usize,
) -> PyResult<Bound<'py, PyDict>> {
    let reduction = match reduction {
        "mean" => Reduction::Mean,
        "sum" => Reduction::Sum,
        other => {
            return Err(value_error(format!(
                "reduction: {other:?} is not \"mean\" or \"sum\""
            )))
        }
    };
    by_dtype!("v1", v1, |F| {
        let cfg = InfoNceConfig {
            temperature: F::from_f64(temperature).expect("a float"),
            normalize,
            direction: if symmetric {
                Direction::Symmetric
            } else {
                Direction::OneWay
            },
            reduction,
            ..InfoNceConfig::default()
        };
        let (v1, v2) = (arr2::<F>("v1", v1)?, arr2::<F>("v2", v2)?);
        let negatives = negatives.map(|n| arr2::<F>("negatives", n)).transpose()?;
        let weights = weights.map(|w| arr1::<F>("weights", w)).transpose()?;
        let (a, b) = (v1.as_array(), v2.as_array());
        let n = negatives.as_ref().map(|n| n.as_array());
        let w = weights.as_ref().map(|w| w.as_array());
        let out = py
            .detach(|| core_info_nce(a, b, n, w, &cfg, par(threads)))
            .map_err(py_err)?;
        let d = PyDict::new(py);
        d.set_item("loss", out.loss.to_f64().unwrap_or(f64::NAN))?;
        put(&d, "grad_v1", out.grad_v1)?;
        put(&d, "grad_v2", out.grad_v2)?;
        if let Some(g) = out.grad_negatives {
            put(&d, "grad_negatives", g)?;
        }
        Ok(d)
    })
}

/// A sparse graph (or matrix) in CSR form: float64 edge weights, and a float32 twin made when a float32 op
/// needs it. `Graph(indptr, indices, weights=None, shape=(n_rows, n_cols))`, `Graph.from_edges(edges,
/// weights=None, shape=...)`, or `recgoat.graph_from_scipy(matrix)`.
///
/// >>> import numpy as np, recgoat
/// >>> g = recgoat.Graph.from_edges(np.array([[0, 1], [1, 0], [1, 2], [2, 1]]), shape=(3, 3))
/// >>> g
/// Graph(3 x 3, 4 edges, unweighted)
/// >>> a = g.sym_normalized()
/// >>> e = a.lightgcn_forward(np.eye(3), 2)  # the mean of e0, A e0 and A^2 e0
/// >>> bool(np.allclose(e, (np.eye(3) + a.to_dense() + a.to_dense() @ a.to_dense()) / 3))
/// True
#[pyclass(name = "Graph", module = "recgoat", frozen)]
pub(crate) struct PyGraph {
    g64: CsrGraph<f64>,
    g32: OnceLock<CsrGraph<f32>>,
}

/// The graph of a float type.
trait OfGraph: Real + Element {
    fn of(g: &PyGraph) -> &CsrGraph<Self>;
}

impl OfGraph for f64 {
    fn of(g: &PyGraph) -> &CsrGraph<f64> {
        &g.g64
    }
}

impl OfGraph for f32 {
    fn of(g: &PyGraph) -> &CsrGraph<f32> {
        g.g32.get_or_init(|| {
            let w = g
                .g64
                .weights()
                .map(|w| w.iter().map(|&v| v as f32).collect());
            let (indptr, indices) = (g.g64.indptr().to_vec(), g.g64.indices().to_vec());
            CsrGraph::new(g.g64.n_rows(), g.g64.n_cols(), indptr, indices, w)
                .expect("the float64 graph was checked")
        })
    }
}

impl PyGraph {
    fn wrap(g64: CsrGraph<f64>) -> Self {
        PyGraph {
            g64,
            g32: OnceLock::new(),
        }
    }

    /// `op(graph, x)` on the graph of `F`, the GIL released.
    fn apply<'py, F: OfGraph>(
        &self,
        py: Python<'py>,
        (name, x): (&str, &Bound<'py, PyAny>),
        threads: usize,
        op: impl FnOnce(&CsrGraph<F>, ArrayView2<'_, F>, Par) -> recgoat_core::Result<Array2<F>> + Send,
    ) -> PyResult<Bound<'py, PyAny>> {
        let x = arr2::<F>(name, x)?;
        let (g, xv) = (F::of(self), x.as_array());
        let y = py.detach(move || op(g, xv, par(threads))).map_err(py_err)?;
        Ok(y.into_pyarray(py).into_any())
    }
}

/// Integer ids of a numpy array (any integer dtype), as `usize`.
fn ids(name: &str, x: &Bound<'_, PyAny>) -> PyResult<Vec<usize>> {
    let as64 = int64_array(name, x, "integers")?;
    let v: PyReadonlyArray1<'_, i64> = as64.call_method0("ravel")?.extract()?;
    v.as_array()
        .iter()
        .enumerate()
        .map(|(k, &i)| {
            usize::try_from(i).map_err(|_| value_error(format!("{name}[{k}] = {i} is negative")))
        })
        .collect()
}

/// Optional float64 weights.
fn weights64(x: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Vec<f64>>> {
    x.map(|w| {
        let np = w.py().import("numpy")?;
        let arr = np.call_method1("asarray", (w, "float64"))?;
        let v: PyReadonlyArray1<'_, f64> = arr.call_method0("ravel")?.extract()?;
        Ok(v.as_array().to_vec())
    })
    .transpose()
}

#[pymethods]
impl PyGraph {
    /// A graph from CSR arrays: `indptr` (n_rows + 1), `indices` (column of each edge, sorted and unique
    /// within a row), optional `weights` (one per edge), and `shape = (n_rows, n_cols)`.
    #[new]
    #[pyo3(signature = (indptr, indices, weights=None, *, shape))]
    fn new(
        indptr: &Bound<'_, PyAny>,
        indices: &Bound<'_, PyAny>,
        weights: Option<&Bound<'_, PyAny>>,
        shape: (usize, usize),
    ) -> PyResult<Self> {
        let indptr = ids("indptr", indptr)?;
        let indices = ids("indices", indices)?;
        let indices = (indices.into_iter())
            .map(|i| u32::try_from(i).map_err(|_| value_error(format!("index {i} exceeds u32"))))
            .collect::<PyResult<Vec<u32>>>()?;
        let g = CsrGraph::new(shape.0, shape.1, indptr, indices, weights64(weights)?);
        Ok(Self::wrap(g.map_err(py_err)?))
    }

    /// A graph from edges: an `E x 2` integer array of `(row, column)` pairs (repeated pairs summed).
    #[staticmethod]
    #[pyo3(signature = (edges, weights=None, *, shape))]
    fn from_edges(
        edges: &Bound<'_, PyAny>,
        weights: Option<&Bound<'_, PyAny>>,
        shape: (usize, usize),
    ) -> PyResult<Self> {
        let flat = ids("edges", edges)?;
        if flat.len() % 2 != 0 {
            return Err(value_error(
                "edges: expected an E x 2 array of (row, column)",
            ));
        }
        let pairs: Vec<(usize, usize)> = flat.chunks(2).map(|p| (p[0], p[1])).collect();
        let w = weights64(weights)?;
        let g = CsrGraph::from_edges(shape.0, shape.1, &pairs, w.as_deref());
        Ok(Self::wrap(g.map_err(py_err)?))
    }

    /// `(n_rows, n_cols)`.
    #[getter]
    fn shape(&self) -> (usize, usize) {
        (self.g64.n_rows(), self.g64.n_cols())
    }

    /// Edge count.
    #[getter]
    fn nnz(&self) -> usize {
        self.g64.nnz()
    }

    /// Row pointers (int64).
    #[getter]
    fn indptr<'py>(&self, py: Python<'py>) -> Bound<'py, numpy::PyArray1<i64>> {
        let v: Vec<i64> = self.g64.indptr().iter().map(|&i| i as i64).collect();
        v.into_pyarray(py)
    }

    /// Column of each edge (int64).
    #[getter]
    fn indices<'py>(&self, py: Python<'py>) -> Bound<'py, numpy::PyArray1<i64>> {
        let v: Vec<i64> = self.g64.indices().iter().map(|&i| i64::from(i)).collect();
        v.into_pyarray(py)
    }

    /// Edge weights (float64), or None for an unweighted graph.
    #[getter]
    fn weights<'py>(&self, py: Python<'py>) -> Option<Bound<'py, numpy::PyArray1<f64>>> {
        self.g64.weights().map(|w| w.to_vec().into_pyarray(py))
    }

    /// The symmetrically normalised graph `D^-1/2 A D^-1/2` (LightGCN's adjacency).
    fn sym_normalized(&self) -> PyResult<Self> {
        Ok(Self::wrap(self.g64.sym_normalized().map_err(py_err)?))
    }

    /// The graph with a self loop on every node.
    fn with_self_loops(&self) -> PyResult<Self> {
        Ok(Self::wrap(self.g64.with_self_loops().map_err(py_err)?))
    }

    /// The dense matrix (float64).
    fn to_dense<'py>(&self, py: Python<'py>) -> Bound<'py, numpy::PyArray2<f64>> {
        self.g64.to_dense().into_pyarray(py)
    }

    /// `A @ x` for features `x` (n_cols x d).
    #[pyo3(signature = (x, *, threads=0))]
    fn spmm<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        threads: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        by_dtype!("x", x, |F| self.apply::<F>(py, ("x", x), threads, spmm))
    }

    /// LightGCN's output: the mean of `e0` and its `layers` propagations over this (normalised) graph.
    #[pyo3(signature = (e0, layers, *, threads=0))]
    fn lightgcn_forward<'py>(
        &self,
        py: Python<'py>,
        e0: &Bound<'py, PyAny>,
        layers: usize,
        threads: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        by_dtype!("e0", e0, |F| {
            let op = |g: &CsrGraph<F>, v: ArrayView2<'_, F>, p| lightgcn_forward(g, v, layers, p);
            self.apply::<F>(py, ("e0", e0), threads, op)
        })
    }

    /// The gradient of `lightgcn_forward` with respect to `e0`, for `grad_out` (its output's gradient).
    #[pyo3(signature = (grad_out, layers, *, threads=0))]
    fn lightgcn_backward<'py>(
        &self,
        py: Python<'py>,
        grad_out: &Bound<'py, PyAny>,
        layers: usize,
        threads: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        by_dtype!("grad_out", grad_out, |F| {
            let op = |g: &CsrGraph<F>, v: ArrayView2<'_, F>, p| lightgcn_backward(g, v, layers, p);
            self.apply::<F>(py, ("grad_out", grad_out), threads, op)
        })
    }

    fn __repr__(&self) -> String {
        let (r, c) = self.shape();
        let w = if self.g64.weights().is_some() {
            "weighted"
        } else {
            "unweighted"
        };
        format!("Graph({r} x {c}, {} edges, {w})", self.nnz())
    }
}

/// The cosine k-nearest-neighbour graph of the rows of `features`: an unweighted edge from each row to its
/// `k` most similar other rows, exact (`method="exact"`) or approximate through HNSW ("hnsw",
/// `ef_construction`, `ef_search` and `seed` tune it); `symmetric` adds the reverse edges, `self_loops`
/// one per row.
///
/// >>> import numpy as np, recgoat
/// >>> x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
/// >>> g = recgoat.knn_graph(x, 1)
/// >>> g.indices.tolist()
/// [1, 0, 3, 2]
#[pyfunction]
#[pyo3(signature = (features, k, *, method="exact", symmetric=false, self_loops=false,
    ef_construction=None, ef_search=None, seed=None, threads=0))]
#[allow(clippy::too_many_arguments)]
fn knn_graph(
    py: Python<'_>,
    features: &Bound<'_, PyAny>,
    k: usize,
    method: &str,
    symmetric: bool,
    self_loops: bool,
    ef_construction: Option<usize>,
    ef_search: Option<usize>,
    seed: Option<u64>,
    threads: usize,
) -> PyResult<PyGraph> {
    let method = match method {
        "exact" => KnnMethod::Exact,
        "hnsw" => {
            let mut h = HnswConfig::default();
            h.ef_construction = ef_construction.unwrap_or(h.ef_construction);
            h.ef_search = ef_search.unwrap_or(h.ef_search);
            h.seed = seed.unwrap_or(h.seed);
            KnnMethod::Hnsw(h)
        }
        other => {
            return Err(value_error(format!(
                "method: {other:?} is not \"exact\" or \"hnsw\""
            )))
        }
    };
    let cfg = KnnConfig {
        symmetric,
        self_loops,
        method,
        ..KnnConfig::new(k)
    };
    by_dtype!("features", features, |F| {
        let x = arr2::<F>("features", features)?;
        let xv = x.as_array();
        let g = (py.detach(|| core_knn_graph(xv, &cfg, par(threads)))).map_err(py_err)?;
        let w = g
            .weights()
            .map(|w| w.iter().map(|v| v.to_f64().unwrap()).collect());
        let (indptr, indices) = (g.indptr().to_vec(), g.indices().to_vec());
        let g64 = CsrGraph::new(g.n_rows(), g.n_cols(), indptr, indices, w).map_err(py_err)?;
        Ok(PyGraph::wrap(g64))
    })
}

/// Heads, concatenation, scoring, slope, self loops and residual of a graph attention call.
type GatSettings<'a> = (usize, bool, &'a str, f64, bool, bool);

/// The layer and its parameters from the Python arguments.
#[allow(clippy::too_many_arguments)]
fn gat_layer<'py, F: Real + Element>(
    x: &Bound<'py, PyAny>,
    w: &Bound<'py, PyAny>,
    a_src: &Bound<'py, PyAny>,
    a_dst: Option<&Bound<'py, PyAny>>,
    bias: Option<&Bound<'py, PyAny>>,
    w_res: Option<&Bound<'py, PyAny>>,
    (heads, concat, scoring, negative_slope, add_self_loops, residual): GatSettings<'_>,
) -> PyResult<(GatLayer<F>, GatParams<F>, Array2<F>)> {
    let scoring = match scoring {
        "gat" => Scoring::GatConv,
        "gatv2" => Scoring::GatV2,
        other => {
            return Err(value_error(format!(
                "scoring: {other:?} is not \"gat\" or \"gatv2\""
            )))
        }
    };
    let x = arr2::<F>("x", x)?.as_array().to_owned();
    let w = arr2::<F>("w", w)?.as_array().to_owned();
    if heads == 0 || w.ncols() % heads != 0 {
        return Err(value_error(format!(
            "w has {} columns: not heads ({heads}) x head width",
            w.ncols()
        )));
    }
    let cfg = GatConfig {
        in_dim: w.nrows(),
        heads,
        head_dim: w.ncols() / heads,
        concat,
        negative_slope: F::from_f64(negative_slope).expect("a float"),
        scoring,
        bias: bias.is_some(),
        residual,
        feat_drop: F::zero(),
        attn_drop: F::zero(),
        add_self_loops,
    };
    let params = GatParams {
        w,
        a_src: arr2::<F>("a_src", a_src)?.as_array().to_owned(),
        a_dst: a_dst
            .map(|a| arr2::<F>("a_dst", a).map(|a| a.as_array().to_owned()))
            .transpose()?,
        bias: bias
            .map(|b| arr1::<F>("bias", b).map(|b| b.as_array().to_owned()))
            .transpose()?,
        w_res: w_res
            .map(|r| arr2::<F>("w_res", r).map(|r| r.as_array().to_owned()))
            .transpose()?,
    };
    let layer = GatLayer::new(cfg).map_err(py_err)?;
    Ok((layer, params, x))
}

/// Graph attention over `graph` (row i attends over its columns): GATConv (`scoring="gat"`, with `a_dst`)
/// or GATv2 (`"gatv2"`, `a_dst` None). `x` is N x F_in, `w` F_in x (heads C), `a_src` / `a_dst` heads x C;
/// `concat` concatenates the heads (else averages them); `bias` (the output width); `residual` (through
/// `w_res` when the widths differ). Returns `out`, and with `grad_out` (the output's gradient)
/// `grad_x`, `grad_w`, `grad_a_src` (and `grad_a_dst`, `grad_bias`, `grad_w_res`).
///
/// >>> import numpy as np, recgoat
/// >>> g = recgoat.Graph.from_edges(np.array([[0, 1], [1, 0]]), shape=(2, 2))
/// >>> rng = np.random.default_rng(0)
/// >>> x, w = rng.normal(size=(2, 3)), rng.normal(size=(3, 4))
/// >>> a_src, a_dst = rng.normal(size=(2, 2)), rng.normal(size=(2, 2))
/// >>> out = recgoat.gat(g, x, w, a_src, a_dst, heads=2, grad_out=np.ones((2, 4)))
/// >>> out["out"].shape, out["grad_w"].shape
/// ((2, 4), (3, 4))
#[pyfunction]
#[pyo3(signature = (graph, x, w, a_src, a_dst=None, *, heads, bias=None, residual=false, w_res=None,
    concat=true, scoring="gat", negative_slope=0.2, add_self_loops=true, grad_out=None, threads=0))]
#[allow(clippy::too_many_arguments)]
fn gat<'py>(
    py: Python<'py>,
    graph: &PyGraph,
    x: &Bound<'py, PyAny>,
    w: &Bound<'py, PyAny>,
    a_src: &Bound<'py, PyAny>,
    a_dst: Option<&Bound<'py, PyAny>>,
    heads: usize,
    bias: Option<&Bound<'py, PyAny>>,
    residual: bool,
    w_res: Option<&Bound<'py, PyAny>>,
    concat: bool,
    scoring: &str,
    negative_slope: f64,
    add_self_loops: bool,
    grad_out: Option<&Bound<'py, PyAny>>,
    threads: usize,
) -> PyResult<Bound<'py, PyDict>> {
    let settings = (
        heads,
        concat,
        scoring,
        negative_slope,
        add_self_loops,
        residual,
    );
    by_dtype!("x", x, |F| {
        let (layer, params, xv) = gat_layer::<F>(x, w, a_src, a_dst, bias, w_res, settings)?;
        let g_out = grad_out.map(|g| arr2::<F>("grad_out", g)).transpose()?;
        let g_out = g_out.as_ref().map(|g| g.as_array());
        let g = <F as OfGraph>::of(graph);
        let (out, grads) = py
            .detach(|| {
                let (out, cache) =
                    layer.forward(&params, g, xv.view(), Mode::Eval, par(threads))?;
                let grads = g_out
                    .map(|go| layer.backward(&params, g, &cache, go, par(threads)))
                    .transpose()?;
                Ok((out, grads))
            })
            .map_err(py_err)?;
        let d = PyDict::new(py);
        put(&d, "out", out)?;
        if let Some(gr) = grads {
            put(&d, "grad_x", gr.grad_x)?;
            put(&d, "grad_w", gr.grad_w)?;
            put(&d, "grad_a_src", gr.grad_a_src)?;
            if let Some(v) = gr.grad_a_dst {
                put(&d, "grad_a_dst", v)?;
            }
            if let Some(v) = gr.grad_bias {
                put(&d, "grad_bias", v)?;
            }
            if let Some(v) = gr.grad_w_res {
                put(&d, "grad_w_res", v)?;
            }
        }
        Ok(d)
    })
}

/// RecGOAT's optimal adaptive transport (OAT): aligns a modality embedding `m` (I x d) to the collaborative
/// one `z` (I x d) through a plan `T` between their dimensions (cost `cost_scale * mean_i (m_ia - z_ib)^2`,
/// entropic, uniform marginals) and a correction `delta` (d x d): `aligned = m (d T + delta)`
/// (`barycentric`; else `m (T + delta)`). Returns `aligned`, `plan`, `cost` and the OT `value`; with
/// `grad_out` (a loss's gradient with respect to `aligned`) or `grad_value` (the OT value's weight in it)
/// also `grad_m`, `grad_z` and `grad_delta`, through the plan by implicit differentiation ("implicit"), as
/// a constant ("detached"), or through `unrolled_iters` iterations ("unrolled").
///
/// >>> import numpy as np, recgoat
/// >>> m = np.random.default_rng(0).normal(size=(8, 3))
/// >>> out = recgoat.adaptive_transport(m, m, np.zeros((3, 3)))
/// >>> bool(np.allclose(out["plan"].sum(axis=1), 1 / 3))  # each dimension's mass
/// True
#[pyfunction]
#[pyo3(signature = (m, z, delta, *, cost_scale=100.0, eps=0.05, eps_scale=Some("mean"), tol=1e-5,
    max_iter=500, barycentric=true, gradient="implicit", unrolled_iters=20, grad_out=None, grad_value=0.0))]
#[allow(clippy::too_many_arguments)]
fn adaptive_transport<'py>(
    py: Python<'py>,
    m: &Bound<'py, PyAny>,
    z: &Bound<'py, PyAny>,
    delta: &Bound<'py, PyAny>,
    cost_scale: f64,
    eps: f64,
    eps_scale: Option<&str>,
    tol: f64,
    max_iter: usize,
    barycentric: bool,
    gradient: &str,
    unrolled_iters: usize,
    grad_out: Option<&Bound<'py, PyAny>>,
    grad_value: f64,
) -> PyResult<Bound<'py, PyDict>> {
    by_dtype!("m", m, |F| {
        let gradient = match gradient {
            "implicit" => PlanGradient::Implicit(ImplicitConfig::default()),
            "detached" => PlanGradient::Detached,
            "unrolled" => PlanGradient::Unrolled {
                iters: unrolled_iters,
            },
            other => {
                return Err(value_error(format!(
                    "gradient: {other:?} is not \"implicit\", \"detached\" or \"unrolled\""
                )))
            }
        };
        let mut sk = sinkhorn_config::<F>(eps, eps_scale, "log", tol, max_iter, None, None, true)?;
        sk.check_every = 5;
        let cfg = AdaptiveTransportConfig {
            cost_scale: F::from_f64(cost_scale).expect("a float"),
            sinkhorn: sk,
            barycentric,
            gradient,
        };
        let oat = AdaptiveTransport::new(cfg).map_err(py_err)?;
        let (m, z, delta) = (
            arr2::<F>("m", m)?,
            arr2::<F>("z", z)?,
            arr2::<F>("delta", delta)?,
        );
        let g_out = grad_out.map(|g| arr2::<F>("grad_out", g)).transpose()?;
        let (mv, zv, dv) = (m.as_array(), z.as_array(), delta.as_array());
        let g_out = g_out.as_ref().map(|g| g.as_array());
        let gv = F::from_f64(grad_value).expect("a float");
        let want_grads = g_out.is_some() || grad_value != 0.0;
        let (aligned, cache, grads) = py
            .detach(|| {
                let (aligned, cache) = oat.forward(mv, zv, dv, &Backend::Cpu(Par::Seq))?;
                let grads = match want_grads {
                    true => Some(oat.backward(&cache, g_out, gv)?),
                    false => None,
                };
                Ok((aligned, cache, grads))
            })
            .map_err(py_err)?;
        let d = PyDict::new(py);
        put(&d, "aligned", aligned)?;
        put(&d, "plan", cache.plan().clone())?;
        put(&d, "cost", cache.cost().clone())?;
        d.set_item("value", cache.value().to_f64().unwrap_or(f64::NAN))?;
        if let Some(g) = grads {
            put(&d, "grad_m", g.grad_m)?;
            put(&d, "grad_z", g.grad_z)?;
            put(&d, "grad_delta", g.grad_delta)?;
        }
        Ok(d)
    })
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(adaptive_transport, m)?)?;
    m.add_function(wrap_pyfunction!(sinkhorn, m)?)?;
    m.add_function(wrap_pyfunction!(sinkhorn_divergence, m)?)?;
    m.add_function(wrap_pyfunction!(info_nce, m)?)?;
    m.add_function(wrap_pyfunction!(knn_graph, m)?)?;
    m.add_function(wrap_pyfunction!(gat, m)?)?;
    m.add_class::<PyGraph>()?;
    Ok(())
}
