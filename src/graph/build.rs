//! Graph builders: LightGCN's bipartite user-item graph and kNN graphs from dense features.

use super::CsrGraph;
use crate::backend::{chunk_bounds_by_work, map_items, Par};
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
/// Only the upper triangle of the similarity matrix is computed, in row blocks (one GEMM of a block against
/// the rows from its first on), and each similarity is offered to both rows' lists of the `k` best so
/// far: half the flops of the full matrix. Memory stays `O(block_rows * n)` per thread plus `O(n k)` lists
/// per thread; blocks run in parallel as `par` says, split by their work. A zero row has similarity 0 to
/// every row.
///
/// # Errors
/// [`Error::Empty`] for no rows or columns, [`Error::NonFinite`] for NaN/Inf features, [`Error::Param`]
/// for `k == 0`, `k >= n` or `block_rows == 0`.
///
/// # Complexity
/// `n^2 d` flops (GEMM) plus `O(n^2)` comparisons for the selections.
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
    let t = cfg.block_rows.min(n);
    let tiles = n.div_ceil(t);
    // tile row q scores its rows against rows q t.. (the upper triangle): n - q t similarities per row
    let work = |r: usize| r * n - t * r * r.saturating_sub(1) / 2;
    let bounds = chunk_bounds_by_work(par, work, tiles);
    let parts = map_items(par, &bounds, |tile_rows| {
        let mut lists = TopLists::new(n, k);
        for q in tile_rows.clone() {
            let (r0, r1) = (q * t, ((q + 1) * t).min(n));
            let sims = xn.slice(s![r0..r1, ..]).dot(&xn.slice(s![r0.., ..]).t());
            for (i, srow) in (r0..r1).zip(sims.axis_iter(Axis(0))) {
                let srow = srow.as_slice().expect("a fresh GEMM result is row-major");
                // 64 columns at a time: a branch-free pass marks the entries that may enter row i's list
                // or (beyond the diagonal tile) column j's, against bounds that only rise, then only those
                // are offered
                for c0 in (0..srow.len()).step_by(64) {
                    let c1 = (c0 + 64).min(srow.len());
                    let wi = lists.worst[i];
                    let mut mask = 0u64;
                    for (b, (&v, &wj)) in srow[c0..c1]
                        .iter()
                        .zip(&lists.worst[r0 + c0..r0 + c1])
                        .enumerate()
                    {
                        let outside = r0 + c0 + b >= r1;
                        mask |= u64::from((v >= wi) | (outside & (v >= wj))) << b;
                    }
                    while mask != 0 {
                        let j = r0 + c0 + mask.trailing_zeros() as usize;
                        mask &= mask - 1;
                        if j == i {
                            continue;
                        }
                        let v = srow[j - r0];
                        lists.offer(i, v, j as u32);
                        // the pair's other side; inside the diagonal tile, row j's own scan offers it
                        if j >= r1 {
                            lists.offer(j, v, i as u32);
                        }
                    }
                }
            }
        }
        lists
    });
    let mut parts = parts.into_iter();
    let mut lists = parts.next().expect("at least one chunk");
    for other in parts {
        lists.absorb(&other);
    }
    let mut out: Vec<u32> = Vec::with_capacity(n * k);
    for i in 0..n {
        let first = out.len();
        out.extend(lists.row(i).iter().map(|&(_, j)| j));
        out[first..].sort_unstable();
    }
    knn_lists_to_graph(n, &out, cfg)
}

/// For each of `n` rows, the `k` best candidates offered so far in descending value, then ascending index
/// (a total order, so ties are deterministic whatever order candidates come in).
///
/// Each row is a heap whose root is the worst of its `k` (lowest value, then highest index), and `worst`
/// keeps the roots' values in one array: most offers to a full row are one comparison against it.
struct TopLists<F> {
    k: usize,
    items: Vec<(F, u32)>,
    len: Vec<usize>,
    worst: Vec<F>,
}

/// `a` comes after `b`: a lower value, or the same value and a higher index.
fn worse<F: Real>(a: (F, u32), b: (F, u32)) -> bool {
    a.0 < b.0 || (a.0 == b.0 && a.1 > b.1)
}

impl<F: Real> TopLists<F> {
    fn new(n: usize, k: usize) -> Self {
        TopLists {
            k,
            items: vec![(F::zero(), 0); n * k],
            len: vec![0; n],
            worst: vec![F::neg_infinity(); n],
        }
    }

    /// Row `row`'s candidates, in heap order.
    fn row(&self, row: usize) -> &[(F, u32)] {
        &self.items[row * self.k..row * self.k + self.len[row]]
    }

    /// Offers candidate `j` with value `v` to row `row`.
    #[inline]
    fn offer(&mut self, row: usize, v: F, j: u32) {
        if v < self.worst[row] {
            return;
        }
        let k = self.k;
        let len = self.len[row];
        let h = &mut self.items[row * k..(row + 1) * k];
        if len < k {
            h[len] = (v, j);
            let mut i = len;
            while i > 0 && worse(h[i], h[(i - 1) / 2]) {
                h.swap(i, (i - 1) / 2);
                i = (i - 1) / 2;
            }
            self.len[row] = len + 1;
        } else if worse(h[0], (v, j)) {
            h[0] = (v, j);
            let mut i = 0;
            loop {
                let (l, r) = (2 * i + 1, 2 * i + 2);
                let mut w = i;
                if l < k && worse(h[l], h[w]) {
                    w = l;
                }
                if r < k && worse(h[r], h[w]) {
                    w = r;
                }
                if w == i {
                    break;
                }
                h.swap(i, w);
                i = w;
            }
        } else {
            return;
        }
        if self.len[row] == k {
            self.worst[row] = h[0].0;
        }
    }

    /// Offers every candidate of `other` (lists over the same rows) to the same row here.
    fn absorb(&mut self, other: &TopLists<F>) {
        for row in 0..self.len.len() {
            for &(v, j) in other.row(row) {
                self.offer(row, v, j);
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::TopLists;
    use rand::{Rng, SeedableRng};

    /// The k first of the row in (descending value, ascending index), by a full sort.
    fn by_sort(row: &[f32], skip: usize, k: usize) -> Vec<u32> {
        let mut idx: Vec<u32> = (0..row.len() as u32)
            .filter(|&j| j as usize != skip)
            .collect();
        idx.sort_by(|&p, &q| row[q as usize].total_cmp(&row[p as usize]).then(p.cmp(&q)));
        let mut top = idx[..k].to_vec();
        top.sort_unstable();
        top
    }

    #[test]
    fn top_lists_match_a_full_sort_with_ties_in_any_offer_order() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for n in [2usize, 3, 9, 40, 257] {
            for k in [1usize, 2, 5, 20].into_iter().filter(|&k| k < n) {
                for levels in [3u32, 1000] {
                    // few distinct values: many ties, decided by the index
                    let row: Vec<f32> = (0..n).map(|_| rng.gen_range(0..levels) as f32).collect();
                    for skip in [0, n / 2, n - 1] {
                        // offered in a shuffled order, as the pairs of other tiles and chunks come
                        let mut order: Vec<usize> = (0..n).filter(|&j| j != skip).collect();
                        for a in (1..order.len()).rev() {
                            order.swap(a, rng.gen_range(0..=a));
                        }
                        let mut top = TopLists::new(1, k);
                        for &j in &order {
                            top.offer(0, row[j], j as u32);
                        }
                        let mut got: Vec<u32> = top.row(0).iter().map(|p| p.1).collect();
                        got.sort_unstable();
                        assert_eq!(
                            got,
                            by_sort(&row, skip, k),
                            "n={n} k={k} skip={skip} {row:?}"
                        );
                    }
                }
            }
        }
    }
}
