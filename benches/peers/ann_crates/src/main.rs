//! HNSW crates side by side on one problem: the unsymmetrised cosine kNN graph of clustered synthetic rows
//! (`recgoat_core::data::clustered_features`, one cluster per 100 rows, noise 1), built and searched for
//! every row, timed as one call, recall@k on sampled rows against brute force
//! (`recgoat_core::graph::sampled_neighbour_recall`).
//!
//! ```text
//! cd benches/peers/ann_crates && cargo run --release -- 10000,100000
//! ```
//! Candidates: `instant-distance` (through `KnnMethod::Hnsw`, the crate's choice) and `hnsw_rs` with 16 and
//! 32 links per node (its cosine distance: its dot-product one asserts a distance >= 0, which rounding on unit
//! rows breaks); the same
//! `efConstruction` 40 and `ef` 100, the rayon pool's threads for both.

use anndists::dist::DistCosine;
use hnsw_rs::hnsw::Hnsw;
use rand::{Rng, SeedableRng};
use recgoat_core::data::clustered_features;
use recgoat_core::graph::{
    knn_graph, sampled_neighbour_recall, CsrGraph, HnswConfig, KnnConfig, KnnMethod,
};
use recgoat_core::ndarray::ArrayView2;
use recgoat_core::Par;
use std::time::Instant;

const K: usize = 20;
const EF_CONSTRUCTION: usize = 40;
const EF_SEARCH: usize = 100;
const DIM: usize = 64;
const SAMPLE: usize = 1000;

fn hnsw_rs_graph(x: ArrayView2<'_, f32>, links: usize) -> CsrGraph<f32> {
    let n = x.nrows();
    let unit: Vec<Vec<f32>> = (x.rows().into_iter())
        .map(|r| {
            let norm = r.dot(&r).sqrt().max(f32::MIN_POSITIVE);
            r.iter().map(|v| v / norm).collect()
        })
        .collect();
    let layers = 16.min((n as f64).ln().ceil() as usize).max(1);
    let index = Hnsw::<f32, DistCosine>::new(links, n, layers, EF_CONSTRUCTION, DistCosine {});
    let with_ids: Vec<(&Vec<f32>, usize)> = unit.iter().zip(0..n).collect();
    index.parallel_insert(&with_ids);
    let found = index.parallel_search(&unit, K + 1, EF_SEARCH);
    let mut edges = Vec::with_capacity(n * K);
    for (i, list) in found.iter().enumerate() {
        edges.extend(
            (list.iter().map(|nb| nb.d_id))
                .filter(|&j| j != i)
                .take(K)
                .map(|j| (i, j)),
        );
    }
    CsrGraph::from_edges(n, n, &edges, None).expect("edges within the rows")
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "10000,100000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("sizes: comma-separated integers"))
        .collect();
    println!(
        "k = {K}, efConstruction {EF_CONSTRUCTION}, ef {EF_SEARCH}, dim {DIM}, {} rayon threads\n",
        rayon::current_num_threads()
    );
    println!("| rows | crate | build + search (s) | recall@{K} ({SAMPLE} sampled rows) |");
    println!("|---|---|---|---|");
    for n in sizes {
        let x = clustered_features(n, DIM, 100, 1.0, n as u64).expect("valid sizes");
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let rows: Vec<usize> = (0..SAMPLE.min(n)).map(|_| rng.gen_range(0..n)).collect();
        let cfg = KnnConfig {
            symmetric: false,
            method: KnnMethod::Hnsw(HnswConfig {
                ef_construction: EF_CONSTRUCTION,
                ef_search: EF_SEARCH,
                seed: 0,
            }),
            ..KnnConfig::new(K)
        };
        let mut runs: Vec<(String, Box<dyn Fn() -> CsrGraph<f32>>)> = vec![(
            "instant-distance 0.6 (KnnMethod::Hnsw)".into(),
            Box::new(|| knn_graph(x.view(), &cfg, Par::default()).expect("a valid kNN problem")),
        )];
        for links in [16, 32] {
            let xv = x.view();
            runs.push((
                format!("hnsw_rs 0.3, {links} links"),
                Box::new(move || hnsw_rs_graph(xv, links)),
            ));
        }
        for (name, build) in &runs {
            let t = Instant::now();
            let g = build();
            let secs = t.elapsed().as_secs_f64();
            let recall = sampled_neighbour_recall(x.view(), &g, &rows, K).expect("a valid sample");
            println!("| {n} | {name} | {secs:.2} | {recall:.4} |");
        }
    }
}
