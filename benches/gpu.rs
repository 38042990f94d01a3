//! CPU vs GPU for the ops that have a GPU path: one SpMM and a 3-layer LightGCN propagation (forward and
//! backward) on the real Amazon Baby user-item graph (26,495 nodes, 237k non-zeros), d = 64, f32, and InfoNCE
//! forward + backward at B = 4096, d = 64, Sinkhorn solves at n = m = 2000 (dense) and 16384 (online), and
//! the kNN graph of 7050 x 384 features (k = 20), GATConv forward + backward on a 7050-node kNN graph, and a
//! training epoch of the model (`lightgcn()` on Baby, `recgoat()` on Last.fm-2k) on each backend.
//! Data stays on the device between iterations (as in training); each GPU sample ends with a device
//! synchronisation.
//! The benchmark id carries the adapter's name.
//!
//! Needs `--features gpu` and an adapter. On a software adapter (lavapipe) run it with
//! `RECGOAT_BENCH_QUICK=1` only: a twentieth of the graph's edges.
//!
//! With `RECGOAT_GPU_PROFILE=1` each GPU problem is first run 10 times with kernel timestamps and the
//! device time per kernel and call is printed (profiling serialises the queue, so the criterion figures of
//! such a run are not the ones to quote; `cargo bench --features gpu --bench gpu -- profile-only` filters
//! the timed benchmarks out and leaves the profiles).

mod common;

use common::{baby_lightgcn_inputs, quick};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use ndarray::Array2;
use recgoat_core::gpu::{self, GpuContext, GpuGraph, GpuMatrix};
use recgoat_core::graph::*;
use recgoat_core::testing::{randn, rng};
use recgoat_core::Par;
use std::time::Duration;

fn propagation(c: &mut Criterion) {
    let ctx = GpuContext::new().expect("the GPU benchmark needs an adapter");
    let adapter = adapter_id(&ctx);
    let (adj, e0) = baby_lightgcn_inputs();
    let n = adj.n_rows();
    let (g, x) = (
        GpuGraph::upload(&ctx, &adj).unwrap(),
        GpuMatrix::upload(&ctx, e0.view()).unwrap(),
    );
    let mut y = GpuMatrix::zeros(&ctx, n, 64).unwrap();
    let mut grp = c.benchmark_group("gpu_vs_cpu_baby_d64");
    grp.sample_size(20)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    let mut yc = Array2::<f32>::zeros((n, 64));
    grp.bench_function(BenchmarkId::new("spmm", "cpu_rayon"), |b| {
        b.iter(|| spmm_into(&adj, e0.view(), yc.view_mut(), Par::rayon()).unwrap())
    });
    print_profile(&ctx, "spmm", || {
        gpu::spmm_into(&ctx, &g, &x, &mut y).unwrap()
    });
    print_profile(&ctx, "lightgcn_3_fwd", || {
        gpu::lightgcn_forward_into(&ctx, &g, &x, 3, &mut y).unwrap()
    });
    grp.bench_function(BenchmarkId::new("spmm", format!("gpu_{adapter}")), |b| {
        b.iter(|| {
            gpu::spmm_into(&ctx, &g, &x, &mut y).unwrap();
            ctx.synchronize().unwrap()
        })
    });
    let mut bufs = PropagationBuffers::new();
    grp.bench_function(BenchmarkId::new("lightgcn_3_fwd", "cpu_rayon"), |b| {
        b.iter(|| {
            lightgcn_forward_into(&adj, e0.view(), 3, yc.view_mut(), &mut bufs, Par::rayon())
                .unwrap()
        })
    });
    grp.bench_function(
        BenchmarkId::new("lightgcn_3_fwd", format!("gpu_{adapter}")),
        |b| {
            b.iter(|| {
                gpu::lightgcn_forward_into(&ctx, &g, &x, 3, &mut y).unwrap();
                ctx.synchronize().unwrap()
            })
        },
    );
    grp.bench_function(BenchmarkId::new("lightgcn_3_bwd", "cpu_rayon"), |b| {
        b.iter(|| {
            lightgcn_backward_into(&adj, e0.view(), 3, yc.view_mut(), &mut bufs, Par::rayon())
                .unwrap()
        })
    });
    grp.bench_function(
        BenchmarkId::new("lightgcn_3_bwd", format!("gpu_{adapter}")),
        |b| {
            b.iter(|| {
                gpu::lightgcn_backward_into(&ctx, &g, &x, 3, &mut y).unwrap();
                ctx.synchronize().unwrap()
            })
        },
    );
    grp.finish();
}

fn infonce(c: &mut Criterion) {
    use recgoat_core::contrastive::{info_nce, InfoNceConfig};
    let ctx = GpuContext::new().expect("the GPU benchmark needs an adapter");
    let adapter = adapter_id(&ctx);
    let b = if quick() { 256 } else { 4096 };
    let v1: Array2<f32> = randn(&mut rng(1), (b, 64));
    let v2: Array2<f32> = randn(&mut rng(2), (b, 64));
    let cfg = InfoNceConfig::<f32>::default();
    let (g1, g2) = (
        GpuMatrix::upload(&ctx, v1.view()).unwrap(),
        GpuMatrix::upload(&ctx, v2.view()).unwrap(),
    );
    let mut grp = c.benchmark_group(format!("gpu_vs_cpu_infonce_b{b}_d64"));
    grp.sample_size(20)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    grp.bench_function(BenchmarkId::new("forward_backward", "cpu_rayon"), |bch| {
        bch.iter(|| info_nce(v1.view(), v2.view(), None, None, &cfg, Par::rayon()).unwrap())
    });
    print_profile(&ctx, "infonce", || {
        gpu::info_nce_on_device(&ctx, &g1, &g2, None, None, &cfg).unwrap()
    });
    // the loss is read back, so every sample ends synchronised
    grp.bench_function(
        BenchmarkId::new("forward_backward", format!("gpu_{adapter}")),
        |bch| bch.iter(|| gpu::info_nce_on_device(&ctx, &g1, &g2, None, None, &cfg).unwrap()),
    );
    grp.finish();
}

/// With profiling on (`RECGOAT_GPU_PROFILE=1`): the device time per kernel of one call of `f` (the mean of
/// 10 calls after a warm-up), printed to stderr.
fn print_profile<T>(ctx: &GpuContext, what: &str, mut f: impl FnMut() -> T) {
    if ctx.profile().is_none() {
        return;
    }
    let _ = f();
    ctx.reset_profile();
    let calls: u32 = 10;
    let t0 = std::time::Instant::now();
    for _ in 0..calls {
        let _ = f();
    }
    let wall_ms = t0.elapsed().as_secs_f64() * 1e3 / f64::from(calls);
    let report = ctx.profile().unwrap_or_default();
    let device_ms: f64 = report.iter().map(|t| t.total_ms).sum::<f64>() / f64::from(calls);
    eprintln!(
        "profile {what}: {device_ms:.3} ms in kernels per call ({wall_ms:.3} ms wall with profiling on)"
    );
    for t in report {
        eprintln!(
            "  {:<26} {:>5} dispatches {:>9.3} ms",
            t.kernel,
            t.dispatches / u64::from(calls),
            t.total_ms / f64::from(calls)
        );
    }
}

/// The adapter's name as a benchmark-id fragment (printed in full once).
fn adapter_id(ctx: &GpuContext) -> String {
    eprintln!(
        "adapter: {} ({:?})",
        ctx.adapter_name(),
        ctx.adapter_info().backend
    );
    ctx.adapter_name()
        .chars()
        .map(|ch| if ch.is_ascii_alphanumeric() { ch } else { '_' })
        .collect()
}

/// Sinkhorn solves of a fixed number of log-domain iterations (tol unreachable; one check at the start), the
/// issue's sizes: n = m = 2000 with a dense cost and n = m = 16384 with the online squared Euclidean cost
/// (64-d clouds, eps = 0.01 x mean cost). Both sides include eps resolution and the final measuring pass
/// (on the CPU for both).
fn sinkhorn(c: &mut Criterion) {
    use recgoat_core::transport::{self, EpsScale, Epsilon, ErrorNorm, Geometry, SinkhornConfig};
    use recgoat_core::Backend;
    let ctx = GpuContext::new().expect("the GPU benchmark needs an adapter");
    let adapter = adapter_id(&ctx);
    let sizes: &[(usize, bool, usize)] = if quick() {
        &[(200, true, 10)]
    } else {
        &[(2000, true, 20), (16384, false, 3)]
    };
    for &(n, dense, iters) in sizes {
        let x: Array2<f32> = randn(&mut rng(7), (n, 64));
        let y: Array2<f32> = randn(&mut rng(8), (n, 64));
        let cloud = Geometry::sq_euclidean(x.view(), y.view()).unwrap();
        let cost;
        let geom = if dense {
            cost = cloud.to_dense();
            Geometry::dense(cost.view()).unwrap()
        } else {
            cloud
        };
        let w = ndarray::Array1::from_elem(n, 1.0 / n as f32);
        let cfg = SinkhornConfig::new(Epsilon::relative(EpsScale::Mean, 0.01))
            .with_tol(1e-30, ErrorNorm::L1)
            .with_iters(iters, iters);
        let kind = if dense { "dense" } else { "online" };
        let mut grp = c.benchmark_group(format!("gpu_vs_cpu_sinkhorn_{kind}_{n}_{iters}iters"));
        grp.sample_size(10)
            .measurement_time(Duration::from_secs(5))
            .warm_up_time(Duration::from_secs(1));
        grp.bench_function(BenchmarkId::new("solve", "cpu_rayon"), |b| {
            b.iter(|| {
                transport::sinkhorn(&geom, w.view(), w.view(), &cfg, &Backend::Cpu(Par::rayon()))
                    .unwrap()
            })
        });
        print_profile(&ctx, &format!("sinkhorn {kind} {n}"), || {
            gpu::sinkhorn(&ctx, &geom, w.view(), w.view(), &cfg).unwrap()
        });
        grp.bench_function(BenchmarkId::new("solve", format!("gpu_{adapter}")), |b| {
            b.iter(|| gpu::sinkhorn(&ctx, &geom, w.view(), w.view(), &cfg).unwrap())
        });
        grp.finish();
    }
}

/// The exact cosine kNN graph of 7050 x 384 features (Baby's items, a text-embedding width), k = 20.
fn knn(c: &mut Criterion) {
    use recgoat_core::graph::{knn_graph, KnnConfig};
    let ctx = GpuContext::new().expect("the GPU benchmark needs an adapter");
    let adapter = adapter_id(&ctx);
    let n = if quick() { 500 } else { 7050 };
    let feats: Array2<f32> = randn(&mut rng(9), (n, 384));
    let cfg = KnnConfig::new(20);
    let mut grp = c.benchmark_group(format!("gpu_vs_cpu_knn_{n}x384_k20"));
    grp.sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1));
    grp.bench_function(BenchmarkId::new("build", "cpu_rayon"), |b| {
        b.iter(|| knn_graph(feats.view(), &cfg, Par::rayon()).unwrap())
    });
    print_profile(&ctx, "knn", || {
        gpu::knn_graph(&ctx, feats.view(), &cfg).unwrap()
    });
    grp.bench_function(BenchmarkId::new("build", format!("gpu_{adapter}")), |b| {
        b.iter(|| gpu::knn_graph(&ctx, feats.view(), &cfg).unwrap())
    });
    grp.finish();
}

/// GATConv 64 -> 8 heads x 8 on a 7050-node symmetrised kNN graph with self loops (the graph bench's
/// problem), evaluation mode, forward + backward (with `RECGOAT_GPU_PROFILE=1` each half profiled alone).
fn gat(c: &mut Criterion) {
    use recgoat_core::attention::{GatConfig, GatLayer, GatParams, Mode};
    use recgoat_core::graph::{knn_graph, KnnConfig};
    let ctx = GpuContext::new().expect("the GPU benchmark needs an adapter");
    let adapter = adapter_id(&ctx);
    let n = if quick() { 500 } else { 7050 };
    let feats: Array2<f32> = randn(&mut rng(7050), (n, 64));
    let knn = KnnConfig {
        self_loops: true,
        ..KnnConfig::new(20)
    };
    let graph = knn_graph(feats.view(), &knn, Par::rayon()).unwrap();
    let cfg = GatConfig::<f32>::new(64, 64, 8).unwrap();
    let layer = GatLayer::new(cfg).unwrap();
    let params = GatParams::init(&cfg, &mut rng(1));
    let go: Array2<f32> = randn(&mut rng(2), (n, 64));
    let _ = graph.transposed();
    let (xd, god) = (
        GpuMatrix::upload(&ctx, feats.view()).unwrap(),
        GpuMatrix::upload(&ctx, go.view()).unwrap(),
    );
    let gd = gpu::GpuAttentionGraph::upload(&ctx, &layer, &graph).unwrap();
    let mut grp = c.benchmark_group(format!("gpu_vs_cpu_gat_knn_{n}"));
    grp.sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1));
    grp.bench_function(BenchmarkId::new("forward_backward", "cpu_rayon"), |b| {
        b.iter(|| {
            let (_, cache) = layer
                .forward(&params, &graph, feats.view(), Mode::Eval, Par::rayon())
                .unwrap();
            layer
                .backward(&params, &graph, &cache, go.view(), Par::rayon())
                .unwrap()
        })
    });
    let fwd = || gpu::gat_forward(&ctx, &layer, &params, &gd, &xd, Mode::Eval).unwrap();
    print_profile(&ctx, "gat forward", fwd);
    let (_, cache) = fwd();
    print_profile(&ctx, "gat backward", || {
        gpu::gat_backward(&ctx, &layer, &params, &gd, &cache, &xd, &god).unwrap()
    });
    // the graph stays on the device; the parameters are uploaded per call, as the API does
    grp.bench_function(
        BenchmarkId::new("forward_backward", format!("gpu_{adapter}")),
        |b| {
            b.iter(|| {
                let (_, cache) =
                    gpu::gat_forward(&ctx, &layer, &params, &gd, &xd, Mode::Eval).unwrap();
                let g = gpu::gat_backward(&ctx, &layer, &params, &gd, &cache, &xd, &god).unwrap();
                ctx.synchronize().unwrap();
                g
            })
        },
    );
    grp.finish();
}

/// One training epoch on each backend (no evaluation): `lightgcn()` on Baby and `recgoat()` on Last.fm-2k
/// (three modalities), both with the device-resident step on the GPU. Each epoch ends with its parameters
/// on the host, so the device is synchronised. With `RECGOAT_BENCH_QUICK=1`: `lightgcn()` on Last.fm-2k
/// only. With profiling on, the GPU epoch's kernels are profiled first (10 epochs).
fn model_epoch(c: &mut Criterion) {
    use recgoat_core::data::Dataset;
    use recgoat_core::model::{RecGoatConfig, Trainer};
    use recgoat_core::{Backend, GpuBackend};
    let ctx = std::sync::Arc::new(GpuContext::new().expect("the GPU benchmark needs an adapter"));
    let adapter = adapter_id(&ctx);
    let data = |name: &str, feats: &[&str]| {
        let dir = common::data_dir().join(name);
        Dataset::load_lightgcn_dir(dir, feats).expect("bundled dataset")
    };
    let lfm = data(
        "lfm2k",
        &["text_feat", "audio_vggish_feat", "audio_whisper_feat"],
    );
    let mut cases = vec![("lightgcn_lfm2k", RecGoatConfig::lightgcn(), &lfm)];
    let baby;
    if !quick() {
        baby = data("baby", &[]);
        cases = vec![
            ("lightgcn_baby", RecGoatConfig::lightgcn(), &baby),
            ("recgoat_lfm2k", RecGoatConfig::recgoat(), &lfm),
        ];
    }
    let backends = [
        ("cpu_rayon".to_string(), Backend::Cpu(Par::rayon())),
        (
            format!("gpu_{adapter}"),
            Backend::Gpu(GpuBackend::new(ctx.clone(), Par::rayon())),
        ),
    ];
    for (name, base, ds) in cases {
        let cfg = RecGoatConfig {
            lr: 5e-3,
            epochs: 1 << 30,
            eval_every: 1 << 30,
            ..base
        };
        let mut grp = c.benchmark_group(format!("model_epoch_{name}"));
        grp.sample_size(10)
            .measurement_time(Duration::from_secs(20))
            .warm_up_time(Duration::from_secs(1));
        for (label, backend) in &backends {
            let mut trainer = Trainer::new(cfg.clone(), ds, backend.clone()).unwrap();
            if matches!(backend, Backend::Gpu(_)) {
                print_profile(&ctx, &format!("epoch {name}"), || {
                    trainer.run_epoch(|_, _| {}).unwrap()
                });
            }
            grp.bench_function(BenchmarkId::new("epoch", label), |b| {
                b.iter(|| trainer.run_epoch(|_, _| {}).unwrap())
            });
        }
        grp.finish();
    }
}

criterion_group!(
    benches,
    propagation,
    infonce,
    sinkhorn,
    knn,
    gat,
    model_epoch
);
criterion_main!(benches);
