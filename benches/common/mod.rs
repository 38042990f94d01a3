//! Helpers shared by the benchmark files (each includes this module with `mod common;`).
#![allow(dead_code)] // each bench uses a subset

/// `RECGOAT_BENCH_QUICK=1` shrinks the problems (smoke runs, software adapters).
pub fn quick() -> bool {
    std::env::var("RECGOAT_BENCH_QUICK").is_ok_and(|v| v == "1")
}

/// The symmetric-normalised Baby user-item graph (a twentieth of its edges with `quick()`), its transpose
/// cached, and a random `n x 64` embedding table: LightGCN's inputs.
pub fn baby_lightgcn_inputs() -> (recgoat_core::graph::CsrGraph<f32>, ndarray::Array2<f32>) {
    use recgoat_core::testing::{randn, rng};
    let (users, items, pairs) = baby_pairs();
    let pairs = if quick() {
        pairs[..pairs.len() / 20].to_vec()
    } else {
        pairs
    };
    let adj = recgoat_core::graph::bipartite_user_item::<f32>(users, items, &pairs)
        .unwrap()
        .sym_normalized()
        .unwrap();
    let n = adj.n_rows();
    eprintln!("baby user-item graph: {} nodes, {} non-zeros", n, adj.nnz());
    let e0: ndarray::Array2<f32> = randn::<f32, _, _>(&mut rng(4), (n, 64)) * 0.1;
    let _ = adj.transposed();
    (adj, e0)
}

/// The bundled datasets' folder: `RECGOAT_DATA_DIR` when set (a benchmark binary run from another checkout
/// than the one it was built in), else the crate's `data/`.
pub fn data_dir() -> std::path::PathBuf {
    std::env::var_os("RECGOAT_DATA_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data"))
}

/// The Baby train pairs (LightGCN split format: `user item item ...`): `(users, items, pairs)`.
pub fn baby_pairs() -> (usize, usize, Vec<(usize, usize)>) {
    let path = data_dir().join("baby/train.txt");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (the bundled Baby split)", path.display()));
    let mut pairs = Vec::new();
    for line in text.lines() {
        let mut it = line
            .split_whitespace()
            .map(|t| t.parse::<usize>().expect("integer ids"));
        if let Some(u) = it.next() {
            pairs.extend(it.map(|i| (u, i)));
        }
    }
    let users = pairs.iter().map(|p| p.0).max().unwrap_or(0) + 1;
    let items = pairs.iter().map(|p| p.1).max().unwrap_or(0) + 1;
    (users, items, pairs)
}
