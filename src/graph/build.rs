//! Graph builders: LightGCN's bipartite user-item graph and kNN graphs from dense features.

use super::CsrGraph;
use crate::backend::{map_chunks, Par};
use crate::error::{check_finite, Error, Result};
use crate::simd::Real;
use ndarray::{s, Array2, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

/// The symmetric user-item graph `A = [[0, R], [R^T, 0]]` over `n_users + n_items` nodes (users first,
/// item `i` is node `n_users + i`), unweighted, one edge per unique pair in each direction.
///
/// Normalise it with [`CsrGraph::sym_normalized`] for LightGCN.
///
/// # Errors
/// [`Error::Graph`] for a user or item id out of range.
///
/// # Complexity
/// `O(P log P)` for `P` pairs.
///
/// # Example
/// ```
/// use recgoat_core::graph::bipartite_user_item;
/// let g = bipartite_user_item::<f32>(2, 3, &[(0, 1), (1, 2), (0, 1)]).unwrap();
/// assert_eq!((g.n_rows(), g.nnz()), (5, 4)); // the duplicate pair is merged
/// assert_eq!(g.row(0), &[3]); // user 0 <- item 1 (node 2 + 1)
/// ```
pub fn bipartite_user_item<F: Real>(
    n_users: usize,
    n_items: usize,
    pairs: &[(usize, usize)],
) -> Result<CsrGraph<F>> {
    const OP: &str = "bipartite_user_item";
    let n = n_users + n_items;
    let mut edges = Vec::with_capacity(2 * pairs.len());
    for (k, &(u, i)) in pairs.iter().enumerate() {
        if u >= n_users || i >= n_items {
            return Err(Error::Graph {
                op: OP,
                reason: format!("pair {k} = (user {u}, item {i}) out of range ({n_users} users, {n_items} items)"),
            });
        }
        edges.push((u, n_users + i));
        edges.push((n_users + i, u));
    }
    CsrGraph::from_edges(n, n, &edges, None)
}

/// Settings of [`knn_graph`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnnConfig {
    /// Neighbours per node (`1 <= k < n`).
    pub k: usize,
    /// Rows of the similarity block computed at once (memory `block_rows x n` per thread).
    pub block_rows: usize,
    /// Symmetrise as a union (`i ~ j` if either lists the other); otherwise row `i` holds its own top-k.
    pub symmetric: bool,
    /// Add a self loop on every node (graph attention wants them).
    pub self_loops: bool,
    /// Exact search, or approximate (HNSW).
    pub method: KnnMethod,
}

/// How [`knn_graph`] finds each row's neighbours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum KnnMethod {
    /// Every pair's cosine, in GEMM blocks: `O(n^2 d)`, the exact top `k` (ties to the smaller index).
    #[default]
    Exact,
    /// An HNSW index (the `instant-distance` crate, 32 links per node) searched once per row: about
    /// `O(n log n)` distance evaluations, most but not all of the exact neighbours (docs/SCALE.md measures
    /// the recall). Needs the `ann` feature (on by default).
    Hnsw(HnswConfig),
}

/// Settings of the HNSW build ([`KnnMethod::Hnsw`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HnswConfig {
    /// Candidates kept while inserting a point (`efConstruction`; higher: better graph, slower build).
    pub ef_construction: usize,
    /// Candidates kept while searching a row's neighbours (`ef`; raised to `k + 1` when below). A row whose
    /// search reaches fewer than `k` other rows (an index built with a very small `ef_construction`) is
    /// completed by a scan of every row, so each row lists `k` neighbours.
    pub ef_search: usize,
    /// Seed of the index's layer assignment. With `Par::Seq` the graph is the same on every run; with
    /// threads the insertion order, and so a few neighbours, may vary from run to run.
    pub seed: u64,
}

impl Default for HnswConfig {
    /// `ef_construction` 40, `ef_search` 100, seed 0: recall@20 about 0.99 on 10^5 clustered items
    /// (docs/SCALE.md).
    fn default() -> Self {
        HnswConfig {
            ef_construction: 40,
            ef_search: 100,
            seed: 0,
        }
    }
}

impl KnnConfig {
    /// `k` neighbours, exact, symmetrised, no self loops, blocks of 128 rows.
    pub fn new(k: usize) -> Self {
        KnnConfig {
            k,
            block_rows: 128,
            symmetric: true,
            self_loops: false,
            method: KnnMethod::Exact,
        }
    }
}

/// Cosine kNN graph of the rows of `features`: for every row its `k` most similar other rows (diagonal
/// excluded; exact ties broken by the smaller index, so the result is deterministic), then optionally
/// symmetrised as a union and given self loops. Unweighted. With `cfg.method` [`KnnMethod::Hnsw`] the
/// neighbours come from an HNSW index instead (approximate; [`neighbour_recall`] measures it against the
/// exact graph); what follows describes the exact build.
///
/// The similarity matrix is computed in row blocks (one GEMM per block), so memory stays
/// `O(block_rows * n)` per thread plus `O(n k)` for the graph; blocks run in parallel as `par` says.
/// A zero row has similarity 0 to every row.
///
/// # Errors
/// [`Error::Empty`] for no rows or columns, [`Error::NonFinite`] for NaN/Inf features, [`Error::Param`]
/// for `k == 0`, `k >= n` or `block_rows == 0`.
///
/// # Complexity
/// `O(n^2 d)` flops (GEMM) plus `O(n^2)` for the selections.
///
/// # Example
/// ```
/// use ndarray::array;
/// use recgoat_core::{Par, graph::{knn_graph, KnnConfig}};
/// let x = array![[1.0f32, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]];
/// let g = knn_graph(x.view(), &KnnConfig::new(1), Par::Seq).unwrap();
/// assert_eq!(g.row(0), &[1]);
/// assert_eq!(g.row(2), &[3]);
/// ```
pub fn knn_graph<F: Real>(
    features: ArrayView2<'_, F>,
    cfg: &KnnConfig,
    par: impl Into<Par>,
) -> Result<CsrGraph<F>> {
    let par: Par = par.into();
    const OP: &str = "knn_graph";
    match cfg.method {
        KnnMethod::Exact => {}
        #[cfg(feature = "ann")]
        KnnMethod::Hnsw(h) => return super::ann::hnsw_knn_graph(features, cfg, &h, par),
        #[cfg(not(feature = "ann"))]
        KnnMethod::Hnsw(_) => {
            return Err(Error::param(
                OP,
                "method",
                "Hnsw",
                "the approximate build needs the crate's `ann` feature",
            ))
        }
    }
    validate_knn(OP, features, cfg)?;
    let n = features.nrows();
    let mut xn: Array2<F> = features.to_owned();
    crate::nn::normalize_nonzero_rows_in_place(&mut xn);
    let k = cfg.k;
    let lists = map_chunks(par, n, |_, rows| {
        let mut out: Vec<u32> = Vec::with_capacity(rows.len() * k);
        let mut order: Vec<u32> = Vec::with_capacity(n);
        let mut start = rows.start;
        while start < rows.end {
            let end = (start + cfg.block_rows).min(rows.end);
            let sims = xn.slice(s![start..end, ..]).dot(&xn.t());
            for (r, srow) in sims.axis_iter(Axis(0)).enumerate() {
                let i = start + r;
                let srow = srow.as_slice().expect("a fresh GEMM result is row-major");
                order.clear();
                order.extend((0..n as u32).filter(|&j| j as usize != i));
                // descending similarity, then ascending index: a total order, so ties are deterministic
                let cmp = |&p: &u32, &q: &u32| {
                    srow[q as usize]
                        .partial_cmp(&srow[p as usize])
                        .expect("finite similarities")
                        .then(p.cmp(&q))
                };
                order.select_nth_unstable_by(k - 1, cmp);
                let mut top = order[..k].to_vec();
                top.sort_unstable();
                out.extend(top);
            }
            start = end;
        }
        out
    });
    knn_lists_to_graph(n, &lists.concat(), cfg)
}

/// The checks of [`knn_graph`] (shared with the GPU build).
pub(crate) fn validate_knn<F: Real>(
    op: &'static str,
    features: ArrayView2<'_, F>,
    cfg: &KnnConfig,
) -> Result<()> {
    let (n, d) = features.dim();
    if n == 0 || d == 0 {
        return Err(Error::Empty {
            op,
            what: format!("features of shape {:?}", (n, d)),
        });
    }
    check_finite(op, "features", features.iter().copied())?;
    if cfg.k == 0 || cfg.k >= n {
        return Err(Error::param(
            op,
            "k",
            cfg.k,
            format!("must be in 1..{n} (fewer than the {n} rows)"),
        ));
    }
    if cfg.block_rows == 0 {
        return Err(Error::param(op, "block_rows", 0, "must be >= 1"));
    }
    Ok(())
}

/// The graph from every row's `k` neighbours (`neighbours[i k..(i + 1) k]`): symmetrised as a union and
/// given self loops as `cfg` says (shared with the GPU build).
pub(crate) fn knn_lists_to_graph<F: Real>(
    n: usize,
    neighbours: &[u32],
    cfg: &KnnConfig,
) -> Result<CsrGraph<F>> {
    let k = cfg.k;
    let mut edges = Vec::with_capacity(neighbours.len() * if cfg.symmetric { 2 } else { 1 } + n);
    for i in 0..n {
        for &j in &neighbours[i * k..(i + 1) * k] {
            edges.push((i, j as usize));
            if cfg.symmetric {
                edges.push((j as usize, i));
            }
        }
        if cfg.self_loops {
            edges.push((i, i));
        }
    }
    CsrGraph::from_edges(n, n, &edges, None)
}

/// The item-item graph of several feature matrices over the same rows (FREEDOM's frozen modality graph):
/// each matrix's rows scaled to unit length and set side by side, so that the cosine of two rows is the mean
/// of their per-matrix cosines; then every row's `k` most similar rows ([`knn_graph`], symmetrised as a
/// union, no self loops), normalised as `D^-1/2 A D^-1/2`.
///
/// # Errors
/// [`Error::Empty`] for no matrices; [`Error::Shape`] for matrices with different row counts; as
/// [`knn_graph`].
///
/// # Example
/// ```
/// use ndarray::array;
/// use recgoat_core::{Par, graph::{multi_view_knn_graph, KnnMethod}};
/// let text = array![[1.0f32, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]];
/// let audio = array![[1.0f32], [1.0], [-1.0], [-1.0]];
/// let g = multi_view_knn_graph(&[text.view(), audio.view()], 1, KnnMethod::Exact, Par::Seq).unwrap();
/// assert_eq!(g.row(0), &[1]);
/// assert!((g.weight(0) - 1.0).abs() < 1e-6); // one neighbour each way: 1 / sqrt(1 * 1)
/// ```
pub fn multi_view_knn_graph<F: Real>(
    views: &[ArrayView2<'_, F>],
    k: usize,
    method: KnnMethod,
    par: impl Into<Par>,
) -> Result<CsrGraph<F>> {
    const OP: &str = "multi_view_knn_graph";
    let Some(first) = views.first() else {
        return Err(Error::Empty {
            op: OP,
            what: "feature matrices (none given)".into(),
        });
    };
    if let Some(v) = views.iter().find(|v| v.nrows() != first.nrows()) {
        return Err(Error::shape(
            OP,
            "rows of every matrix",
            first.nrows(),
            v.nrows(),
        ));
    }
    let mut blocks = Vec::with_capacity(views.len());
    for v in views {
        let mut x = v.to_owned();
        crate::nn::normalize_nonzero_rows_in_place(&mut x);
        blocks.push(x);
    }
    let side: Vec<ArrayView2<'_, F>> = blocks.iter().map(|b| b.view()).collect();
    let x = ndarray::concatenate(Axis(1), &side)
        .map_err(|e| Error::shape(OP, "feature matrices", first.nrows(), e.to_string()))?;
    let cfg = KnnConfig {
        method,
        ..KnnConfig::new(k)
    };
    knn_graph(x.view(), &cfg, par)?.sym_normalized()
}

/// The mean over rows of the fraction of `exact`'s neighbours that `approx` lists too (recall@k of an
/// approximate kNN graph, when both are built unsymmetrised without self loops).
///
/// # Errors
/// [`Error::Shape`] for graphs with different row counts.
///
/// # Example
/// ```
/// use ndarray::array;
/// use recgoat_core::{Par, graph::{knn_graph, neighbour_recall, KnnConfig}};
/// let x = array![[1.0f32, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]];
/// let g = knn_graph(x.view(), &KnnConfig::new(1), Par::Seq).unwrap();
/// assert_eq!(neighbour_recall(&g, &g).unwrap(), 1.0);
/// ```
pub fn neighbour_recall<F: Real>(approx: &CsrGraph<F>, exact: &CsrGraph<F>) -> Result<f64> {
    const OP: &str = "neighbour_recall";
    if approx.n_rows() != exact.n_rows() {
        return Err(Error::shape(OP, "rows", exact.n_rows(), approx.n_rows()));
    }
    let (mut sum, mut rows) = (0.0, 0usize);
    for i in 0..exact.n_rows() {
        let want = exact.row(i);
        if want.is_empty() {
            continue;
        }
        let have = approx.row(i);
        // rows are sorted: a merge
        let (mut a, mut b, mut hit) = (0, 0, 0usize);
        while a < have.len() && b < want.len() {
            match have[a].cmp(&want[b]) {
                std::cmp::Ordering::Less => a += 1,
                std::cmp::Ordering::Greater => b += 1,
                std::cmp::Ordering::Equal => {
                    hit += 1;
                    a += 1;
                    b += 1;
                }
            }
        }
        sum += hit as f64 / want.len() as f64;
        rows += 1;
    }
    Ok(if rows == 0 { 1.0 } else { sum / rows as f64 })
}

/// Recall@k of `approx` on some rows of `x`, each row's exact neighbours found by brute force: the measure of
/// [`neighbour_recall`] for catalogues too large for the exact graph. A row's neighbours are the `k` other
/// rows of highest cosine similarity (ties to the smaller index; a zero row is similar to nothing); the
/// result is the mean over `rows` of the fraction of them that `approx`'s row lists.
///
/// # Errors
/// [`Error::Empty`] for no rows or an empty `x`; [`Error::Shape`] when `approx` has another row count than
/// `x`; [`Error::Param`] for `k` not in `1..n` or a row out of range; [`Error::NonFinite`] for NaN/Inf in `x`.
///
/// # Complexity
/// `O(rows.len() * n * d)` time, `O(n)` extra memory.
///
/// # Example
/// ```
/// use ndarray::array;
/// use recgoat_core::{Par, graph::{knn_graph, sampled_neighbour_recall, KnnConfig}};
/// let x = array![[1.0f32, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]];
/// let g = knn_graph(x.view(), &KnnConfig { symmetric: false, ..KnnConfig::new(1) }, Par::Seq).unwrap();
/// assert_eq!(sampled_neighbour_recall(x.view(), &g, &[0, 2], 1).unwrap(), 1.0);
/// ```
pub fn sampled_neighbour_recall<F: Real>(
    x: ArrayView2<'_, F>,
    approx: &CsrGraph<F>,
    rows: &[usize],
    k: usize,
) -> Result<f64> {
    const OP: &str = "sampled_neighbour_recall";
    let (n, d) = x.dim();
    if n == 0 || d == 0 || rows.is_empty() {
        return Err(Error::Empty {
            op: OP,
            what: format!("features of shape {:?} or rows ({})", (n, d), rows.len()),
        });
    }
    if approx.n_rows() != n {
        return Err(Error::shape(OP, "approx rows", n, approx.n_rows()));
    }
    if k == 0 || k >= n {
        return Err(Error::param(OP, "k", k, format!("must be in 1..{n}")));
    }
    if let Some(&bad) = rows.iter().find(|&&i| i >= n) {
        return Err(Error::param(OP, "rows", bad, format!("must be below {n}")));
    }
    check_finite(OP, "x", x.iter().copied())?;
    let inv: Vec<f64> = (x.rows().into_iter())
        .map(|r| {
            let nn: f64 = r.iter().map(|&v| v.to_f64().unwrap_or(0.0).powi(2)).sum();
            if nn > 0.0 {
                1.0 / nn.sqrt()
            } else {
                0.0
            }
        })
        .collect();
    let mut sum = 0.0;
    let mut order: Vec<(f64, usize)> = Vec::with_capacity(n);
    for &i in rows {
        let sims = x.dot(&x.row(i));
        order.clear();
        order.extend(
            (sims.iter().enumerate())
                .filter(|&(j, _)| j != i)
                .map(|(j, &s)| (s.to_f64().unwrap_or(0.0) * inv[i] * inv[j], j)),
        );
        order.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let have = approx.row(i);
        let hits = (order[..k].iter())
            .filter(|&&(_, j)| have.binary_search(&(j as u32)).is_ok())
            .count();
        sum += hits as f64 / k as f64;
    }
    Ok(sum / rows.len() as f64)
}
