//! Approximate (HNSW) kNN graphs: recall against the exact graph, determinism with one thread, errors, and
//! the model built on them.
#![cfg(feature = "ann")]

use ndarray::Array2;
use recgoat_core::graph::{
    knn_graph, neighbour_recall, sampled_neighbour_recall, HnswConfig, KnnConfig, KnnMethod,
};
use recgoat_core::model::{RecGoatConfig, Trainer};
use recgoat_core::{testing, Backend, Par};

mod common;

/// `n` rows in 40 Gaussian clusters in 32 dimensions (features with structure, as embeddings have).
fn clustered(n: usize, seed: u64) -> Array2<f32> {
    let mut rng = testing::rng(seed);
    let centres = testing::randn::<f64, _, _>(&mut rng, (40, 32));
    let noise = testing::randn::<f64, _, _>(&mut rng, (n, 32));
    Array2::from_shape_fn((n, 32), |(i, j)| {
        (centres[[i % 40, j]] + 0.6 * noise[[i, j]]) as f32
    })
}

fn directed(k: usize, method: KnnMethod) -> KnnConfig {
    KnnConfig {
        symmetric: false,
        method,
        ..KnnConfig::new(k)
    }
}

#[test]
fn hnsw_finds_most_exact_neighbours() {
    let x = clustered(3000, 1);
    let exact = knn_graph(x.view(), &directed(10, KnnMethod::Exact), Par::default()).unwrap();
    let hnsw = KnnMethod::Hnsw(HnswConfig::default());
    let approx = knn_graph(x.view(), &directed(10, hnsw), Par::default()).unwrap();
    assert_eq!(approx.nnz(), 3000 * 10, "k neighbours per row");
    for i in 0..3000 {
        assert!(!approx.row(i).contains(&(i as u32)), "row {i} lists itself");
    }
    let recall = neighbour_recall(&approx, &exact).unwrap();
    assert!(recall > 0.95, "recall@10 {recall}");
    // a narrow search finds fewer: the recall measures something
    let narrow = KnnMethod::Hnsw(HnswConfig {
        ef_construction: 4,
        ef_search: 1,
        seed: 0,
    });
    let poor = knn_graph(x.view(), &directed(10, narrow), Par::default()).unwrap();
    // rows the sparse index reaches too few others from are completed by a scan: k per row still
    assert_eq!(poor.nnz(), 3000 * 10);
    let low = neighbour_recall(&poor, &exact).unwrap();
    assert!(low < recall, "narrow search recall {low} vs {recall}");
    assert_eq!(neighbour_recall(&exact, &exact).unwrap(), 1.0);
}

#[test]
fn hnsw_with_one_thread_is_deterministic() {
    let x = clustered(600, 2);
    let cfg = |seed| {
        directed(
            5,
            KnnMethod::Hnsw(HnswConfig {
                seed,
                ..HnswConfig::default()
            }),
        )
    };
    let a = knn_graph(x.view(), &cfg(7), Par::Seq).unwrap();
    let b = knn_graph(x.view(), &cfg(7), Par::Seq).unwrap();
    assert_eq!(a, b);
}

#[test]
fn hnsw_refuses_what_exact_refuses() {
    let x = clustered(50, 3);
    let hnsw = KnnMethod::Hnsw(HnswConfig::default());
    let e = knn_graph(x.view(), &directed(50, hnsw), Par::Seq)
        .unwrap_err()
        .to_string();
    assert!(e.contains("k") && e.contains("1..50"), "{e}");
    let mut bad = x.clone();
    bad[[3, 4]] = f32::NAN;
    let e = knn_graph(bad.view(), &directed(5, hnsw), Par::Seq)
        .unwrap_err()
        .to_string();
    assert!(
        e.to_lowercase().contains("finite") || e.contains("NaN"),
        "{e}"
    );
    let zero = KnnMethod::Hnsw(HnswConfig {
        ef_construction: 0,
        ..HnswConfig::default()
    });
    let e = knn_graph(x.view(), &directed(5, zero), Par::Seq)
        .unwrap_err()
        .to_string();
    assert!(e.contains("ef_construction"), "{e}");
}

/// A model on HNSW graphs: set from text, trained and evaluated.
#[test]
fn the_model_builds_its_graphs_with_hnsw() {
    let ds = common::tiny();
    let mut cfg = RecGoatConfig {
        embedding_dim: 8,
        gat_heads: 2,
        knn_k: 3,
        gat_layers: 1,
        epochs: 2,
        batch_size: 8,
        ..RecGoatConfig::recgoat()
    };
    cfg.set(r#"knn_method={"Hnsw":{"ef_construction":50,"ef_search":20,"seed":3}}"#)
        .unwrap();
    assert!(matches!(cfg.knn_method, KnnMethod::Hnsw(h) if h.ef_search == 20));
    let mut t = Trainer::new(cfg.clone(), &ds, Backend::Cpu(Par::Seq)).unwrap();
    t.fit(|_, _| {}).unwrap();
    assert_eq!(t.state().epoch, 2);
    let e = cfg
        .set(r#"knn_method={"Hnsw":{"ef_construction":0,"ef_search":20,"seed":3}}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("ef_construction"), "{e}");
}

#[test]
fn sampled_recall_on_every_row_is_the_graph_recall() {
    let x = clustered(300, 21);
    let exact = knn_graph(x.view(), &directed(6, KnnMethod::Exact), Par::Seq).unwrap();
    let all: Vec<usize> = (0..300).collect();
    assert_eq!(
        sampled_neighbour_recall(x.view(), &exact, &all, 6).unwrap(),
        1.0
    );
    // drop the first listed neighbour of every third row: each such row keeps 5 of its 6
    let mut edges = Vec::new();
    for i in 0..300 {
        let skip = usize::from(i % 3 == 0);
        edges.extend(exact.row(i).iter().skip(skip).map(|&j| (i, j as usize)));
    }
    let damaged = recgoat_core::graph::CsrGraph::<f32>::from_edges(300, 300, &edges, None).unwrap();
    let whole = neighbour_recall(&damaged, &exact).unwrap();
    assert!(
        (whole - (1.0 - 100.0 / 300.0 / 6.0)).abs() < 1e-12,
        "{whole}"
    );
    let sampled = sampled_neighbour_recall(x.view(), &damaged, &all, 6).unwrap();
    assert!((sampled - whole).abs() < 1e-12, "{sampled} vs {whole}");
    // only damaged rows, then only intact ones
    let thirds: Vec<usize> = (0..300).step_by(3).collect();
    let r = sampled_neighbour_recall(x.view(), &damaged, &thirds, 6).unwrap();
    assert!((r - 5.0 / 6.0).abs() < 1e-12, "{r}");
    assert_eq!(
        sampled_neighbour_recall(x.view(), &damaged, &[1, 2, 4], 6).unwrap(),
        1.0
    );
    // an HNSW graph measured on a sample lands near its whole-graph recall
    let approx = knn_graph(
        x.view(),
        &directed(6, KnnMethod::Hnsw(HnswConfig::default())),
        Par::Seq,
    )
    .unwrap();
    let a = sampled_neighbour_recall(x.view(), &approx, &all, 6).unwrap();
    assert!((a - neighbour_recall(&approx, &exact).unwrap()).abs() < 1e-12);
}

#[test]
fn sampled_recall_refuses_bad_requests() {
    let x = clustered(50, 3);
    let g = knn_graph(x.view(), &directed(4, KnnMethod::Exact), Par::Seq).unwrap();
    let err = |r: recgoat_core::Result<f64>| r.unwrap_err().to_string();
    assert!(err(sampled_neighbour_recall(x.view(), &g, &[], 4)).contains("rows"));
    assert!(err(sampled_neighbour_recall(x.view(), &g, &[0], 0)).contains("k"));
    assert!(err(sampled_neighbour_recall(x.view(), &g, &[0], 50)).contains("k"));
    assert!(err(sampled_neighbour_recall(x.view(), &g, &[0, 50], 4)).contains("50"));
    let small = knn_graph(
        x.slice(ndarray::s![..40, ..]),
        &directed(4, KnnMethod::Exact),
        Par::Seq,
    )
    .unwrap();
    assert!(err(sampled_neighbour_recall(x.view(), &small, &[0], 4)).contains("40"));
    let mut bad = x.clone();
    bad[[7, 3]] = f32::NAN;
    assert!(sampled_neighbour_recall(bad.view(), &g, &[0], 4).is_err());
}
