//! Helpers shared by the benchmark files (each includes this module with `mod common;`).
#![allow(dead_code)] // each bench uses a subset

/// `RECGOAT_BENCH_QUICK=1` shrinks the problems (smoke runs, software adapters).
pub fn quick() -> bool {
    std::env::var("RECGOAT_BENCH_QUICK").is_ok_and(|v| v == "1")
}

/// The Baby train pairs (LightGCN split format: `user item item ...`): `(users, items, pairs)`.
pub fn baby_pairs() -> (usize, usize, Vec<(usize, usize)>) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/data/baby/train.txt");
    let text = std::fs::read_to_string(path).expect("data/baby/train.txt is bundled");
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
