//! Approximate cosine kNN graphs through HNSW (the `instant-distance` crate): `O(n log n)` work where the
//! exact build is `O(n^2 d)`.

use super::{knn_lists_to_graph, validate_knn, CsrGraph, HnswConfig, KnnConfig};
use crate::backend::{map_chunks, Par};
use crate::error::{Error, Result};
use crate::simd::Real;
use instant_distance::{Builder, Point, Search};
use ndarray::ArrayView2;

/// A unit-length row; the distance is `1 - cos` (a zero row is at distance 1 from every row, as the exact
/// build gives it similarity 0).
#[derive(Clone, Copy)]
struct UnitRow<'a>(&'a [f32]);

impl Point for UnitRow<'_> {
    fn distance(&self, other: &Self) -> f32 {
        // eight partial sums, so the loop vectorises
        let (a, b) = (self.0, other.0);
        let mut acc = [0f32; 8];
        let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
        let (ra, rb) = (ca.remainder(), cb.remainder());
        for (x, y) in ca.zip(cb) {
            for l in 0..8 {
                acc[l] += x[l] * y[l];
            }
        }
        let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
        1.0 - (acc.iter().sum::<f32>() + tail)
    }
}

/// Row `i`'s `k` nearest other rows by a scan of all of them (ties to the smaller index).
fn scanned_row(points: &[UnitRow<'_>], i: usize, k: usize) -> Vec<u32> {
    let mut all: Vec<(f32, u32)> = (0..points.len())
        .filter(|&j| j != i)
        .map(|j| (points[i].distance(&points[j]), j as u32))
        .collect();
    all.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    all.truncate(k);
    all.into_iter().map(|(_, j)| j).collect()
}

/// The HNSW build of [`super::knn_graph`] (`cfg.method` is [`super::KnnMethod::Hnsw`]).
pub(super) fn hnsw_knn_graph<F: Real>(
    features: ArrayView2<'_, F>,
    cfg: &KnnConfig,
    hnsw: &HnswConfig,
    par: Par,
) -> Result<CsrGraph<F>> {
    const OP: &str = "knn_graph (HNSW)";
    validate_knn(OP, features, cfg)?;
    if hnsw.ef_construction == 0 {
        return Err(Error::param(OP, "ef_construction", 0, "must be >= 1"));
    }
    let (n, d) = features.dim();
    let k = cfg.k;
    // unit rows in f32, one contiguous buffer
    let mut flat: Vec<f32> = Vec::with_capacity(n * d);
    for row in features.rows() {
        let norm = row
            .iter()
            .map(|&v| v * v)
            .fold(F::zero(), |a, b| a + b)
            .sqrt();
        let inv = if norm > F::zero() {
            F::one() / norm
        } else {
            F::zero()
        };
        flat.extend(row.iter().map(|&v| (v * inv).to_f32().unwrap_or(0.0)));
    }
    let points: Vec<UnitRow<'_>> = flat.chunks_exact(d).map(UnitRow).collect();
    // the query asks for itself and `k` others
    let ef_search = hnsw.ef_search.max(k + 1);
    let builder = Builder::default()
        .ef_construction(hnsw.ef_construction)
        .ef_search(ef_search)
        .seed(hnsw.seed);
    // insertion runs on rayon's threads; one thread makes it, and so the graph, deterministic
    let (index, ids) = match par {
        Par::Seq => rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .map_err(|e| Error::param(OP, "threads", 1, e.to_string()))?
            .install(|| builder.build_hnsw(points.clone())),
        _ => builder.build_hnsw(points.clone()),
    };
    // the index stores the points in its own order: back to row numbers
    let mut row_of = vec![0u32; n];
    for (row, id) in ids.iter().enumerate() {
        row_of[id.into_inner() as usize] = row as u32;
    }
    let lists = map_chunks(par, n, |_, rows| {
        let mut search = Search::default();
        let mut out: Vec<u32> = Vec::with_capacity(rows.len() * k);
        for i in rows {
            let start = out.len();
            let found = index.search(&points[i], &mut search);
            out.extend(
                found
                    .map(|item| row_of[item.pid.into_inner() as usize])
                    .filter(|&j| j as usize != i)
                    .take(k),
            );
            if out.len() - start < k {
                // an index too sparsely linked (a small ef_construction) can leave a search with fewer
                // than k other rows: that row is completed by a scan of every row, so each lists k
                out.truncate(start);
                out.extend(scanned_row(&points, i, k));
            }
            out[start..].sort_unstable();
        }
        out
    });
    knn_lists_to_graph(n, &lists.concat(), cfg)
}
