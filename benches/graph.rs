//! Graph benchmarks: GAT forward + backward on an Amazon-Baby-sized item kNN graph, LightGCN propagation on
//! the real Baby user-item graph (data/baby/train.txt), the kNN graph build, and two floors of propagation
//! measured in the same run: streaming the bytes it touches, and gathering the same number of rows with the
//! same kernel from a cache-resident window (the gather floor, which the interleaved ratio uses).
//!
//! `RECGOAT_BENCH_QUICK=1` shrinks the problems (smoke runs).

mod common;

use common::{baby_lightgcn_inputs, quick};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use ndarray::Array2;
use recgoat_core::attention::{GatConfig, GatLayer, GatParams, Mode};
use recgoat_core::graph::*;
use recgoat_core::testing::{randn, rng};
use recgoat_core::{Backend, Par};
use std::time::Duration;

fn backends() -> [Backend; 2] {
    [Backend::Cpu(Par::Seq), Backend::Cpu(Par::rayon())]
}

fn gat(c: &mut Criterion) {
    let n = if quick() { 500 } else { 7050 };
    let feats: Array2<f32> = randn(&mut rng(7050), (n, 64));
    let knn = KnnConfig {
        self_loops: true,
        ..KnnConfig::new(20)
    };
    let graph = knn_graph(feats.view(), &knn, Par::rayon()).unwrap();
    eprintln!(
        "gat graph: {} nodes, {} edges (k = 20, symmetrised, self loops)",
        graph.n_rows(),
        graph.nnz()
    );
    let cfg = GatConfig::<f32>::new(64, 64, 8).unwrap();
    let layer = GatLayer::new(cfg).unwrap();
    let params = GatParams::init(&cfg, &mut rng(1));
    let x: Array2<f32> = randn(&mut rng(2), (n, 64));
    let go: Array2<f32> = randn(&mut rng(3), (n, 64));
    let _ = graph.transposed(); // built once per graph, like a training loop would
    let mut g = c.benchmark_group(format!("gat_knn_{n}"));
    g.sample_size(20)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1));
    for be in backends() {
        g.bench_function(BenchmarkId::new("forward", be.name()), |b| {
            b.iter(|| {
                layer
                    .forward(&params, &graph, x.view(), Mode::Eval, be.par())
                    .unwrap()
                    .0
            })
        });
        g.bench_function(BenchmarkId::new("forward_backward", be.name()), |b| {
            b.iter(|| {
                let (_, cache) = layer
                    .forward(&params, &graph, x.view(), Mode::Eval, be.par())
                    .unwrap();
                layer
                    .backward(&params, &graph, &cache, go.view(), be.par())
                    .unwrap()
                    .grad_w
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group(format!("knn_{n}x384"));
    g.sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .warm_up_time(Duration::from_secs(1));
    let f384: Array2<f32> = randn(&mut rng(384), (n, 384));
    for be in backends() {
        g.bench_function(BenchmarkId::new("k20", be.name()), |b| {
            b.iter(|| {
                knn_graph(f384.view(), &KnnConfig::new(20), be.par())
                    .unwrap()
                    .nnz()
            })
        });
    }
    g.finish();
}

/// Reads `buf` `reps` times with 16 accumulators (vectorised, bound by loads).
fn stream(buf: &[f32], reps: usize) -> f32 {
    let mut acc = [0.0f32; 16];
    for _ in 0..reps {
        for ch in buf.chunks_exact(16) {
            for (a, &v) in acc.iter_mut().zip(ch) {
                *a += v;
            }
        }
    }
    acc.iter().sum()
}

/// [`stream`] with the buffer's halves on two threads: the floor's 2-thread reference.
fn stream_2threads(buf: &[f32], reps: usize) -> f32 {
    let (p, q) = buf.split_at(buf.len() / 2);
    let (x, y) = rayon::join(|| stream(black_box(p), reps), || stream(black_box(q), reps));
    x + y
}

fn lightgcn(c: &mut Criterion) {
    let (adj, e0) = baby_lightgcn_inputs();
    let n = adj.n_rows();
    let mut g = c.benchmark_group("lightgcn_baby");
    g.sample_size(30)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    for be in backends() {
        g.bench_function(BenchmarkId::new("spmm_d64", be.name()), |b| {
            b.iter(|| spmm(&adj, e0.view(), be.par()).unwrap())
        });
        let mut y = Array2::<f32>::zeros((n, 64));
        g.bench_function(BenchmarkId::new("spmm_into_d64", be.name()), |b| {
            b.iter(|| spmm_into(&adj, e0.view(), y.view_mut(), be.par()).unwrap())
        });
        g.bench_function(BenchmarkId::new("propagate_3layers_fwd", be.name()), |b| {
            b.iter(|| lightgcn_forward(&adj, e0.view(), 3, be.par()).unwrap())
        });
        g.bench_function(BenchmarkId::new("propagate_3layers_bwd", be.name()), |b| {
            b.iter(|| lightgcn_backward(&adj, e0.view(), 3, be.par()).unwrap())
        });
        let (mut out, mut bufs) = (Array2::<f32>::zeros((n, 64)), PropagationBuffers::new());
        g.bench_function(
            BenchmarkId::new("propagate_3layers_fwd_into", be.name()),
            |b| {
                b.iter(|| {
                    lightgcn_forward_into(&adj, e0.view(), 3, out.view_mut(), &mut bufs, be.par())
                        .unwrap()
                })
            },
        );
    }
    // The floor of one SpMM: the bytes it must touch (every gathered 64-float row, the CSR arrays, the
    // output) streamed sequentially at this machine's bandwidth for data of E's size.
    let flat = e0.as_slice().unwrap();
    let reps = adj.nnz().div_ceil(n) + 1; // gathered rows + the output write, in row units
    eprintln!(
        "floor: {} bytes per SpMM",
        (reps * n * 64 + adj.nnz() * 2) * 4
    );
    g.bench_function(
        BenchmarkId::new("floor_stream_same_bytes", "cpu_seq"),
        |b| b.iter(|| stream(black_box(flat), reps)),
    );
    g.bench_function(
        BenchmarkId::new("floor_stream_same_bytes", "cpu_rayon"),
        |b| b.iter(|| stream_2threads(flat, reps)),
    );
    // The gather floor: the same kernel on a graph of the same row degrees and weights whose rows gather
    // from a window of 1024 + (largest degree) rows (resident in L2 on the machines measured), so every
    // gathered row comes from cache; what SpMM costs beyond it is the memory system's.
    let cached = cache_resident_twin(&adj);
    let window = e0.slice(ndarray::s![..cached.n_cols(), ..]);
    let mut y = Array2::<f32>::zeros((n, 64));
    for be in backends() {
        g.bench_function(BenchmarkId::new("floor_gather_cached", be.name()), |b| {
            b.iter(|| spmm_into(&cached, window, y.view_mut(), be.par()).unwrap())
        });
    }
    g.finish();
    interleaved_ratio(&adj, e0.view(), &cached, window);
}

/// `a`'s row degrees and weights with row `r`'s `deg` neighbours moved to `o_r, o_r + 1, ..` for an offset
/// `o_r` in `0..1024`: the same work as `a`, over only `1024 + max degree` columns (so that its input is that
/// window of rows, and no unread row needs the separate finiteness scan).
fn cache_resident_twin(a: &CsrGraph<f32>) -> CsrGraph<f32> {
    let n = a.n_rows();
    let max_deg = (0..n).map(|r| a.row(r).len()).max().unwrap_or(0);
    assert!(1024 + max_deg <= n, "the window fits the graph");
    let mut indices = Vec::with_capacity(a.nnz());
    for r in 0..n {
        let o = (r * 61) % 1024;
        indices.extend((0..a.row(r).len()).map(|k| (o + k) as u32));
    }
    let window = 1024 + max_deg;
    eprintln!("gather floor: rows gathered from a window of {window} rows");
    let w = a.weights().map(|w| w.to_vec());
    CsrGraph::new(n, window, a.indptr().to_vec(), indices, w).expect("a valid CSR twin")
}

/// SpMM time over the gather floor's, each pair measured back to back (2 threads), so that the machine's
/// slow phases hit both sides of a ratio alike: on a shared, noisy VM this ratio is steadier than a ratio of
/// two separately measured medians.
fn interleaved_ratio(
    adj: &CsrGraph<f32>,
    e0: ndarray::ArrayView2<'_, f32>,
    cached: &CsrGraph<f32>,
    window: ndarray::ArrayView2<'_, f32>,
) {
    use std::time::Instant;
    let mut y = Array2::<f32>::zeros(e0.dim());
    let par = Par::rayon();
    let pairs = if quick() { 20 } else { 400 };
    let (mut ratios, mut spmm_t, mut floor_t) = (Vec::new(), Vec::new(), Vec::new());
    for k in 0..pairs + 20 {
        let t0 = Instant::now();
        spmm_into(adj, e0, y.view_mut(), par).unwrap();
        let t1 = Instant::now();
        spmm_into(cached, window, y.view_mut(), par).unwrap();
        let t2 = Instant::now();
        if k >= 20 {
            let (s, f) = ((t1 - t0).as_secs_f64(), (t2 - t1).as_secs_f64());
            ratios.push(s / f);
            spmm_t.push(s);
            floor_t.push(f);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    eprintln!(
        "spmm_into d64 vs gather floor, {pairs} interleaved pairs on 2 threads: spmm median {:.3} ms, floor \
         median {:.3} ms, ratio median {:.2}x (quartiles {:.2}x..{:.2}x)",
        median(&mut spmm_t) * 1e3,
        median(&mut floor_t) * 1e3,
        median(&mut ratios),
        ratios[ratios.len() / 4],
        ratios[3 * ratios.len() / 4],
    );
}

criterion_group!(benches, gat, lightgcn);
criterion_main!(benches);
