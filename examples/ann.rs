//! Approximate kNN graphs (HNSW) against the exact build: recall@k and build time, on the bundled item
//! features and on synthetic catalogues up to a million items.
//!
//! ```text
//! cargo run --release --example ann                                   # Last.fm-2k, then 10^4 .. 10^6 items
//! cargo run --release --example ann -- --sizes 10000,100000 --ef-search 50,100
//! ```
//! The synthetic items are Gaussian clusters (`--dim` wide, one cluster per 100 items, each item's noise as
//! large as the spread of the centres). Recall@k is the mean fraction of a row's exact neighbours the HNSW
//! graph lists; above `--exact-up-to` items the exact graph is not built and recall is measured on
//! `--sample` random rows by brute force. Writes `--out/ann.md`.

use clap::Parser;
use ndarray::ArrayView2;
use rand::{Rng, SeedableRng};
use recgoat_core::data::{clustered_features, Dataset};
use recgoat_core::graph::{
    knn_graph, neighbour_recall, sampled_neighbour_recall, HnswConfig, KnnConfig, KnnMethod,
};
use recgoat_core::model::write_atomic;
use recgoat_core::Par;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

mod common;

#[derive(Parser, Debug)]
#[command(about = "HNSW kNN graphs against exact ones: recall and build time")]
struct Args {
    /// Dataset folder whose item features are measured first ("" to skip).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/data/lfm2k"))]
    data: String,
    /// Synthetic catalogue sizes.
    #[arg(long, value_delimiter = ',', default_values_t = [10_000usize, 100_000, 1_000_000])]
    sizes: Vec<usize>,
    /// Width of the synthetic features.
    #[arg(long, default_value_t = 64)]
    dim: usize,
    /// Neighbours per item.
    #[arg(long, default_value_t = 20)]
    k: usize,
    /// HNSW efConstruction.
    #[arg(long, default_value_t = 40)]
    ef_construction: usize,
    /// HNSW ef values to search with (one graph each).
    #[arg(long, value_delimiter = ',', default_values_t = [100usize])]
    ef_search: Vec<usize>,
    /// The largest synthetic size the exact graph is built for.
    #[arg(long, default_value_t = 100_000)]
    exact_up_to: usize,
    /// Rows whose recall is measured by brute force above `--exact-up-to`.
    #[arg(long, default_value_t = 1000)]
    sample: usize,
    /// CPU threads (0: all).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Output folder.
    #[arg(long, default_value = "out/ann")]
    out: PathBuf,
}

/// Unsymmetrised, no self loops: row `i` is its own top `k`, comparable with the exact graph's.
fn cfg(k: usize, method: KnnMethod) -> KnnConfig {
    KnnConfig {
        symmetric: false,
        method,
        ..KnnConfig::new(k)
    }
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t = Instant::now();
    let v = f();
    (v, t.elapsed().as_secs_f64())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    common::rayon_threads(args.threads)?;
    let par = Par::default();
    let hnsw = |ef_search| {
        KnnMethod::Hnsw(HnswConfig {
            ef_construction: args.ef_construction,
            ef_search,
            seed: 0,
        })
    };
    let mut md = String::new();
    writeln!(
        md,
        "k = {}, efConstruction {}, {} rayon threads.\n",
        args.k,
        args.ef_construction,
        rayon::current_num_threads()
    )?;
    writeln!(
        md,
        "| features | items | dim | exact build (s) | ef | HNSW build (s) | recall@{} | speed-up |",
        args.k
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|---|")?;
    let row = |md: &mut String,
               name: &str,
               x: ArrayView2<'_, f32>,
               exact: bool|
     -> Result<(), Box<dyn std::error::Error>> {
        let (n, d) = x.dim();
        let (exact_graph, exact_s) = if exact {
            let (g, s) = timed(|| knn_graph(x, &cfg(args.k, KnnMethod::Exact), par));
            (Some(g?), Some(s))
        } else {
            (None, None)
        };
        for &ef in &args.ef_search {
            let (g, s) = timed(|| knn_graph(x, &cfg(args.k, hnsw(ef)), par));
            let g = g?;
            let (recall, how) = match &exact_graph {
                Some(e) => (neighbour_recall(&g, e)?, String::new()),
                None => {
                    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
                    let rows: Vec<usize> = (0..args.sample.min(n))
                        .map(|_| rng.gen_range(0..n))
                        .collect();
                    let r = sampled_neighbour_recall(x, &g, &rows, args.k)?;
                    (r, format!(" ({} sampled rows)", rows.len()))
                }
            };
            let exact_txt = exact_s.map_or("not built".into(), |e| format!("{e:.2}"));
            let speed = exact_s.map_or("".into(), |e| format!("{:.1}x", e / s));
            writeln!(
                md,
                "| {name} | {n} | {d} | {exact_txt} | {ef} | {s:.2} | {recall:.4}{how} | {speed} |"
            )?;
            eprintln!("{name}: {n} x {d}, ef {ef}: HNSW {s:.2} s, exact {exact_txt} s, recall {recall:.4}{how}");
        }
        Ok(())
    };
    if !args.data.is_empty() {
        let ds = Dataset::load_lightgcn_dir(&args.data, &["text_feat", "audio_whisper_feat"])?;
        for (name, x) in &ds.item_features {
            row(&mut md, name, x.view(), true)?;
        }
    }
    for &n in &args.sizes {
        let (x, gen_s) = timed(|| clustered_features(n, args.dim, 100, 1.0, n as u64));
        let x = x?;
        eprintln!("synthetic {n} x {}: generated in {gen_s:.1} s", args.dim);
        row(
            &mut md,
            "synthetic clusters",
            x.view(),
            n <= args.exact_up_to,
        )?;
    }
    println!("\n{md}");
    std::fs::create_dir_all(&args.out)?;
    write_atomic(args.out.join("ann.md"), md.as_bytes())?;
    eprintln!("wrote {}", args.out.join("ann.md").display());
    Ok(())
}
