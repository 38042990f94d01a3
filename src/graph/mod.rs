//! Sparse graphs in CSR form, their builders, normalisation, and sparse-dense products.
//!
//! # Orientation
//! Row `i` of a [`CsrGraph`] lists the **sources** `j` of the edges `j -> i`: the graph is the sparse matrix
//! `A` with `A_ij != 0` for an edge into `i`. Then `Y = A X` aggregates messages into each node, and graph
//! attention normalises over a row. Symmetric graphs (LightGCN's user-item graph, symmetrised kNN graphs)
//! read the same either way.
//!
//! The transposed graph is built once, on first use, and cached ([`CsrGraph::transposed`]); it records for
//! every transposed entry the id of the original edge, so backward passes run over sources without atomics
//! and still find per-edge values (attention coefficients) by edge id.

#[cfg(feature = "ann")]
mod ann;
mod build;
mod spmm;

pub use build::{
    bipartite_user_item, knn_graph, multi_view_knn_graph, neighbour_recall,
    sampled_neighbour_recall, HnswConfig, KnnConfig, KnnMethod,
};
#[cfg(any(feature = "gpu", feature = "ann"))]
pub(crate) use build::{knn_lists_to_graph, validate_knn};
#[cfg(feature = "gpu")]
pub(crate) use spmm::check_layers;
pub use spmm::{
    lightgcn_backward, lightgcn_backward_into, lightgcn_forward, lightgcn_forward_into, spmm,
    spmm_backward, spmm_into, spmm_reference, PropagationBuffers,
};

use crate::backend::{chunk_bounds_by_work, Par};
use crate::error::{Error, Result};
use crate::simd::Real;
use std::sync::OnceLock;

/// A sparse graph (or sparse matrix) in compressed sparse row form, with optional edge weights.
///
/// Invariants (checked by every constructor): `indptr` has `n_rows + 1` non-decreasing entries from 0 to
/// `nnz`; column indices are `< n_cols` and strictly increasing within a row (no duplicates); weights, when
/// present, are finite and one per edge. Edge `e` is the `e`-th stored entry.
#[derive(Debug, Clone)]
pub struct CsrGraph<F> {
    n_rows: usize,
    n_cols: usize,
    indptr: Vec<usize>,
    indices: Vec<u32>,
    weights: Option<Vec<F>>,
    /// What is derived from the graph on first use and kept (a graph never changes).
    derived: Derived<F>,
}

/// The lazily built companions of a [`CsrGraph`].
#[derive(Debug, Clone)]
struct Derived<F> {
    transposed: OnceLock<Box<Transposed<F>>>,
    /// Columns no edge reads.
    unreferenced: OnceLock<Vec<u32>>,
    /// [`CsrGraph::structure_fingerprint`].
    fingerprint: OnceLock<u64>,
}

impl<F> Default for Derived<F> {
    fn default() -> Self {
        Derived {
            transposed: OnceLock::new(),
            unreferenced: OnceLock::new(),
            fingerprint: OnceLock::new(),
        }
    }
}

/// The transposed graph with, for each of its entries, the id of the original edge.
#[derive(Debug, Clone)]
pub struct Transposed<F> {
    /// The transposed graph (row `j` lists the destinations of the edges leaving `j`).
    pub graph: CsrGraph<F>,
    /// `edge_ids[t]` is the original edge id of transposed entry `t`.
    pub edge_ids: Vec<usize>,
}

impl<F: Real> PartialEq for CsrGraph<F> {
    fn eq(&self, o: &Self) -> bool {
        self.n_rows == o.n_rows
            && self.n_cols == o.n_cols
            && self.indptr == o.indptr
            && self.indices == o.indices
            && self.weights == o.weights
    }
}

impl<F: Real> CsrGraph<F> {
    /// A graph from raw CSR arrays, validated.
    ///
    /// # Errors
    /// [`Error::Shape`] for an `indptr` of the wrong length or weights of the wrong count,
    /// [`Error::Graph`] for a non-monotone `indptr`, an index out of range, unsorted or duplicate indices in
    /// a row, or sizes beyond `u32`; [`Error::NonFinite`] for NaN/Inf weights.
    ///
    /// A graph without edges (or without rows) is valid: every node is isolated, and propagating over it
    /// gives zero rows (a node with no in-edge receives nothing), which is what LightGCN and graph attention
    /// give such a node in any graph.
    ///
    /// # Example
    /// ```
    /// use ndarray::array;
    /// use recgoat_core::{Par, graph::{spmm, CsrGraph}};
    /// // 0 <- 1, 1 <- 0, 1 <- 2
    /// let g = CsrGraph::<f32>::new(3, 3, vec![0, 1, 3, 3], vec![1, 0, 2], None).unwrap();
    /// assert_eq!(g.row(1), &[0, 2]);
    /// assert!(CsrGraph::<f32>::new(3, 3, vec![0, 1, 3, 3], vec![1, 2, 0], None).is_err()); // unsorted row
    /// // no edges: valid, and nothing propagates
    /// let isolated = CsrGraph::<f32>::new(2, 2, vec![0, 0, 0], vec![], None).unwrap();
    /// let y = spmm(&isolated, array![[1.0f32], [10.0]].view(), Par::Seq).unwrap();
    /// assert_eq!((isolated.nnz(), y), (0, array![[0.0], [0.0]]));
    /// ```
    pub fn new(
        n_rows: usize,
        n_cols: usize,
        indptr: Vec<usize>,
        indices: Vec<u32>,
        weights: Option<Vec<F>>,
    ) -> Result<Self> {
        const OP: &str = "CsrGraph::new";
        if n_rows >= u32::MAX as usize || n_cols >= u32::MAX as usize {
            return Err(Error::Graph {
                op: OP,
                reason: format!("{n_rows} x {n_cols} exceeds u32 indices"),
            });
        }
        if indptr.len() != n_rows + 1 {
            return Err(Error::shape(
                OP,
                "indptr length (n_rows + 1)",
                n_rows + 1,
                indptr.len(),
            ));
        }
        if indptr[0] != 0 || indptr[n_rows] != indices.len() {
            return Err(Error::Graph {
                op: OP,
                reason: format!(
                    "indptr must run from 0 to nnz = {}, got {} .. {}",
                    indices.len(),
                    indptr[0],
                    indptr[n_rows]
                ),
            });
        }
        for i in 0..n_rows {
            let (s, e) = (indptr[i], indptr[i + 1]);
            if e < s {
                return Err(Error::Graph {
                    op: OP,
                    reason: format!("indptr decreases at row {i}: {s} > {e}"),
                });
            }
            if e > indices.len() {
                return Err(Error::Graph {
                    op: OP,
                    reason: format!("indptr[{}] = {e} beyond nnz = {}", i + 1, indices.len()),
                });
            }
            let row = &indices[s..e];
            for (k, &c) in row.iter().enumerate() {
                if c as usize >= n_cols {
                    return Err(Error::Graph {
                        op: OP,
                        reason: format!("row {i}: index {c} out of range (n_cols = {n_cols})"),
                    });
                }
                if k > 0 && row[k - 1] >= c {
                    return Err(Error::Graph {
                        op: OP,
                        reason: format!("row {i}: indices not strictly increasing ({} then {c}); sort and de-duplicate", row[k - 1]),
                    });
                }
            }
        }
        if let Some(w) = &weights {
            if w.len() != indices.len() {
                return Err(Error::shape(
                    OP,
                    "weights (one per edge)",
                    indices.len(),
                    w.len(),
                ));
            }
            crate::error::check_finite(OP, "weights", w.iter().copied())?;
        }
        Ok(CsrGraph {
            n_rows,
            n_cols,
            indptr,
            indices,
            weights,
            derived: Derived::default(),
        })
    }

    /// A graph from `(row, col)` pairs (for a graph: `(destination, source)`), sorted, with duplicates
    /// merged (their weights summed).
    ///
    /// # Errors
    /// [`Error::Graph`] for an index out of range, [`Error::Shape`] when `weights` has another length than
    /// `edges`, [`Error::NonFinite`] for NaN/Inf weights.
    ///
    /// # Complexity
    /// `O(E log E)`.
    pub fn from_edges(
        n_rows: usize,
        n_cols: usize,
        edges: &[(usize, usize)],
        weights: Option<&[F]>,
    ) -> Result<Self> {
        const OP: &str = "CsrGraph::from_edges";
        if let Some(w) = weights {
            if w.len() != edges.len() {
                return Err(Error::shape(
                    OP,
                    "weights (one per edge)",
                    edges.len(),
                    w.len(),
                ));
            }
        }
        for (k, &(r, c)) in edges.iter().enumerate() {
            if r >= n_rows || c >= n_cols {
                return Err(Error::Graph {
                    op: OP,
                    reason: format!("edge {k} = ({r}, {c}) out of range for {n_rows} x {n_cols}"),
                });
            }
        }
        let mut order: Vec<usize> = (0..edges.len()).collect();
        order.sort_unstable_by_key(|&k| (edges[k].0, edges[k].1));
        let mut indptr = vec![0usize; n_rows + 1];
        let mut indices = Vec::with_capacity(edges.len());
        let mut w_out: Option<Vec<F>> = weights.map(|_| Vec::with_capacity(edges.len()));
        let mut last: Option<(usize, usize)> = None;
        for &k in &order {
            let e = edges[k];
            if last == Some(e) {
                if let (Some(wo), Some(w)) = (w_out.as_mut(), weights) {
                    *wo.last_mut().expect("a previous entry exists") += w[k];
                }
                continue;
            }
            last = Some(e);
            indptr[e.0 + 1] += 1;
            indices.push(u32::try_from(e.1).map_err(|_| Error::Graph {
                op: OP,
                reason: format!("index {} exceeds u32", e.1),
            })?);
            if let (Some(wo), Some(w)) = (w_out.as_mut(), weights) {
                wo.push(w[k]);
            }
        }
        for i in 0..n_rows {
            indptr[i + 1] += indptr[i];
        }
        CsrGraph::new(n_rows, n_cols, indptr, indices, w_out)
    }

    /// Rows (destinations).
    pub fn n_rows(&self) -> usize {
        self.n_rows
    }
    /// Columns (sources).
    pub fn n_cols(&self) -> usize {
        self.n_cols
    }
    /// Stored edges.
    pub fn nnz(&self) -> usize {
        self.indices.len()
    }
    /// Row offsets (`n_rows + 1`).
    pub fn indptr(&self) -> &[usize] {
        &self.indptr
    }
    /// Column indices of every edge.
    pub fn indices(&self) -> &[u32] {
        &self.indices
    }
    /// Edge weights, when the graph has them.
    pub fn weights(&self) -> Option<&[F]> {
        self.weights.as_deref()
    }
    /// Contiguous row ranges of about equal work (edges plus one unit per row) for the row-parallel kernels.
    /// Four per thread with rayon, so that a thread slowed by a neighbour on a shared machine does not hold
    /// the others back.
    pub(crate) fn row_chunks(&self, par: Par) -> Vec<std::ops::Range<usize>> {
        self.row_chunks_per_worker(par, 4)
    }
    /// [`CsrGraph::row_chunks`] with `per_worker` ranges per thread with rayon (one range sequentially).
    pub(crate) fn row_chunks_per_worker(
        &self,
        par: Par,
        per_worker: usize,
    ) -> Vec<std::ops::Range<usize>> {
        let par = match par {
            Par::Seq => Par::Seq,
            Par::Rayon(_) => Par::Rayon(per_worker * par.chunks()),
        };
        chunk_bounds_by_work(par, |r| self.indptr[r] + r, self.n_rows)
    }
    /// The sources of the edges into `i`.
    pub fn row(&self, i: usize) -> &[u32] {
        &self.indices[self.indptr[i]..self.indptr[i + 1]]
    }
    /// The edge-id range of row `i`.
    pub fn row_range(&self, i: usize) -> std::ops::Range<usize> {
        self.indptr[i]..self.indptr[i + 1]
    }
    /// Weight of edge `e` (1 for an unweighted graph).
    #[inline]
    pub fn weight(&self, e: usize) -> F {
        self.weights.as_ref().map_or(F::one(), |w| w[e])
    }

    /// The columns that no edge reads (cached, `O(E + n_cols)` on first call): the rows of a dense operand
    /// that a product with this graph never gathers.
    pub(crate) fn unreferenced_cols(&self) -> &[u32] {
        self.derived.unreferenced.get_or_init(|| {
            let mut seen = vec![false; self.n_cols];
            for &c in &self.indices {
                seen[c as usize] = true;
            }
            (0..self.n_cols as u32)
                .filter(|&c| !seen[c as usize])
                .collect()
        })
    }

    /// The cached transpose (built on first call, `O(E)`), with original edge ids.
    pub fn transposed(&self) -> &Transposed<F> {
        self.derived
            .transposed
            .get_or_init(|| Box::new(self.build_transpose()))
    }

    fn build_transpose(&self) -> Transposed<F> {
        let mut counts = vec![0usize; self.n_cols + 1];
        for &c in &self.indices {
            counts[c as usize + 1] += 1;
        }
        for j in 0..self.n_cols {
            counts[j + 1] += counts[j];
        }
        let indptr = counts.clone();
        let mut next = counts;
        let nnz = self.nnz();
        let mut indices = vec![0u32; nnz];
        let mut edge_ids = vec![0usize; nnz];
        let mut weights = self.weights.as_ref().map(|_| vec![F::zero(); nnz]);
        // rows are visited in increasing order, so each transposed row comes out sorted
        for i in 0..self.n_rows {
            for e in self.row_range(i) {
                let j = self.indices[e] as usize;
                let t = next[j];
                next[j] += 1;
                indices[t] = i as u32;
                edge_ids[t] = e;
                if let (Some(w), Some(src)) = (weights.as_mut(), self.weights.as_ref()) {
                    w[t] = src[e];
                }
            }
        }
        let graph = CsrGraph {
            n_rows: self.n_cols,
            n_cols: self.n_rows,
            indptr,
            indices,
            weights,
            derived: Derived::default(),
        };
        Transposed { graph, edge_ids }
    }

    /// A hash of the structure (sizes, offsets, indices; not the weights), to check that two calls see the
    /// same graph.
    /// Hashed once per graph (the graph is immutable), so layers can check it on every call.
    pub fn structure_fingerprint(&self) -> u64 {
        *self.derived.fingerprint.get_or_init(|| {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (self.n_rows, self.n_cols).hash(&mut h);
            self.indptr.hash(&mut h);
            self.indices.hash(&mut h);
            h.finish()
        })
    }

    /// Whether every node `i < min(n_rows, n_cols)` has the edge `i -> i`.
    pub fn has_all_self_loops(&self) -> bool {
        (0..self.n_rows.min(self.n_cols)).all(|i| self.row(i).binary_search(&(i as u32)).is_ok())
    }

    /// The graph with a self loop on every node that lacks one (weight 1 on weighted graphs).
    ///
    /// # Errors
    /// [`Error::Graph`] for a non-square graph.
    pub fn with_self_loops(&self) -> Result<Self> {
        if self.n_rows != self.n_cols {
            return Err(Error::Graph {
                op: "CsrGraph::with_self_loops",
                reason: format!(
                    "self loops need a square graph, got {} x {}",
                    self.n_rows, self.n_cols
                ),
            });
        }
        let mut indptr = Vec::with_capacity(self.n_rows + 1);
        indptr.push(0);
        let mut indices = Vec::with_capacity(self.nnz() + self.n_rows);
        let mut weights = self
            .weights
            .as_ref()
            .map(|_| Vec::with_capacity(self.nnz() + self.n_rows));
        for i in 0..self.n_rows {
            let mut placed = false;
            for e in self.row_range(i) {
                let c = self.indices[e];
                if !placed && c as usize >= i {
                    if c as usize != i {
                        indices.push(i as u32);
                        if let Some(w) = weights.as_mut() {
                            w.push(F::one());
                        }
                    }
                    placed = true;
                }
                indices.push(c);
                if let Some(w) = weights.as_mut() {
                    w.push(self.weight(e));
                }
            }
            if !placed {
                indices.push(i as u32);
                if let Some(w) = weights.as_mut() {
                    w.push(F::one());
                }
            }
            indptr.push(indices.len());
        }
        Ok(CsrGraph {
            n_rows: self.n_rows,
            n_cols: self.n_cols,
            indptr,
            indices,
            weights,
            derived: Derived::default(),
        })
    }

    /// Symmetric normalisation `D_r^-1/2 A D_c^-1/2`: edge `(i, j)` gets `w_ij / sqrt(deg_i deg_j)`, with the
    /// row degrees `deg_i = sum_j w_ij` and column degrees `deg_j = sum_i w_ij` (for a symmetric graph both
    /// are the node degree, as in LightGCN). Nodes of degree 0 contribute 0.
    ///
    /// # Errors
    /// [`Error::Graph`] for negative degrees (negative weights).
    pub fn sym_normalized(&self) -> Result<Self> {
        let mut rdeg = vec![F::zero(); self.n_rows];
        let mut cdeg = vec![F::zero(); self.n_cols];
        for (i, d) in rdeg.iter_mut().enumerate() {
            for e in self.row_range(i) {
                *d += self.weight(e);
                cdeg[self.indices[e] as usize] += self.weight(e);
            }
        }
        if let Some(i) = rdeg.iter().chain(&cdeg).position(|&d| d < F::zero()) {
            return Err(Error::Graph {
                op: "CsrGraph::sym_normalized",
                reason: format!("negative degree at node {i}"),
            });
        }
        let inv = |d: F| {
            if d > F::zero() {
                F::one() / d.sqrt()
            } else {
                F::zero()
            }
        };
        let mut w = Vec::with_capacity(self.nnz());
        for (i, &d) in rdeg.iter().enumerate() {
            for e in self.row_range(i) {
                w.push(self.weight(e) * inv(d) * inv(cdeg[self.indices[e] as usize]));
            }
        }
        Ok(CsrGraph {
            n_rows: self.n_rows,
            n_cols: self.n_cols,
            indptr: self.indptr.clone(),
            indices: self.indices.clone(),
            weights: Some(w),
            derived: Derived::default(),
        })
    }

    /// Converts from a `sprs` matrix (CSR or CSC), its values becoming weights.
    ///
    /// # Errors
    /// As [`CsrGraph::new`] (sprs allows unsorted or duplicate indices in some constructions).
    pub fn from_csmat(m: &sprs::CsMat<F>) -> Result<Self> {
        let csr = m.to_csr();
        let indices = csr
            .indices()
            .iter()
            .map(|&c| {
                u32::try_from(c).map_err(|_| Error::Graph {
                    op: "CsrGraph::from_csmat",
                    reason: format!("index {c} exceeds u32"),
                })
            })
            .collect::<Result<Vec<u32>>>()?;
        CsrGraph::new(
            csr.rows(),
            csr.cols(),
            csr.indptr().to_proper().to_vec(),
            indices,
            Some(csr.data().to_vec()),
        )
    }

    /// Converts to a `sprs` CSR matrix (weight 1 on every edge of an unweighted graph).
    pub fn to_csmat(&self) -> sprs::CsMat<F> {
        let data = (0..self.nnz()).map(|e| self.weight(e)).collect();
        let indices = self.indices.iter().map(|&c| c as usize).collect();
        sprs::CsMat::new(
            (self.n_rows, self.n_cols),
            self.indptr.clone(),
            indices,
            data,
        )
    }

    /// The dense `n_rows x n_cols` matrix (tests and tiny graphs).
    pub fn to_dense(&self) -> ndarray::Array2<F> {
        let mut d = ndarray::Array2::zeros((self.n_rows, self.n_cols));
        for i in 0..self.n_rows {
            for e in self.row_range(i) {
                d[[i, self.indices[e] as usize]] = self.weight(e);
            }
        }
        d
    }

    /// The same graph with every row relabelled by `perm` (`new id = perm[old id]`, square graphs).
    ///
    /// # Errors
    /// [`Error::Graph`] when `perm` is not a permutation of `0..n` or the graph is not square.
    pub fn permuted(&self, perm: &[usize]) -> Result<Self> {
        const OP: &str = "CsrGraph::permuted";
        let n = self.n_rows;
        if self.n_cols != n || perm.len() != n {
            return Err(Error::Graph {
                op: OP,
                reason: format!("needs a square graph and a permutation of its {n} nodes"),
            });
        }
        let mut seen = vec![false; n];
        for &p in perm {
            if p >= n || std::mem::replace(&mut seen[p], true) {
                return Err(Error::Graph {
                    op: OP,
                    reason: format!("{p} appears twice or is out of range"),
                });
            }
        }
        let mut edges = Vec::with_capacity(self.nnz());
        let mut w = Vec::with_capacity(self.nnz());
        for i in 0..n {
            for e in self.row_range(i) {
                edges.push((perm[i], perm[self.indices[e] as usize]));
                w.push(self.weight(e));
            }
        }
        CsrGraph::from_edges(n, n, &edges, self.weights.as_ref().map(|_| &w[..]))
    }
}
