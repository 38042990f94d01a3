//! Sinkhorn benchmarks: the n = m = 2000 (64-d clouds, eps = 0.01 x mean cost) problem, the
//! machine floor measured in the same run, and the other transport entry points.
//!
//! Per-iteration time = (t(30 iterations) - t(10 iterations)) / 20: both solves pay the same fixed costs
//! (weights check, final measuring pass), so the difference is iterations only.
//!
//! `RECGOAT_BENCH_QUICK=1` shrinks the problems (smoke runs).

mod common;

use common::quick;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use ndarray::{Array1, Array2};
use recgoat_core::testing::{randn, rng};
use recgoat_core::transport::*;
use recgoat_core::{Backend, Par, Real};
use std::time::Duration;

fn size() -> usize {
    if quick() {
        200
    } else {
        2000
    }
}

fn clouds(n: usize, d: usize) -> (Array2<f32>, Array2<f32>) {
    let mut r = rng(2000);
    (randn(&mut r, (n, d)), randn(&mut r, (n, d)))
}

fn fixed(eps: f32, iters: usize) -> SinkhornConfig<f32> {
    SinkhornConfig::new(Epsilon::Absolute(eps))
        .with_tol(1e-30, ErrorNorm::L1)
        .with_iters(iters, iters)
}

fn backends() -> [Backend; 2] {
    [Backend::Cpu(Par::Seq), Backend::Cpu(Par::rayon())]
}

fn sinkhorn_2000(c: &mut Criterion) {
    let n = size();
    let (x, y) = clouds(n, 64);
    let cost = sq_euclidean_cost(x.view(), y.view()).unwrap();
    let dense = Geometry::dense(cost.view()).unwrap();
    let online = Geometry::sq_euclidean(x.view(), y.view()).unwrap();
    let eps = 0.01 * dense.statistic(EpsScale::Mean, Par::rayon());
    let w = Array1::from_elem(n, 1.0f32 / n as f32);
    let mut g = c.benchmark_group(format!("sinkhorn_log_{n}"));
    g.sample_size(15)
        .measurement_time(Duration::from_secs(6))
        .warm_up_time(Duration::from_secs(1));
    for be in backends() {
        for iters in [10usize, 30] {
            let cfg = fixed(eps, iters);
            g.bench_function(
                BenchmarkId::new(format!("dense_{iters}iters"), be.name()),
                |bch| {
                    bch.iter(|| {
                        sinkhorn(&dense, w.view(), w.view(), &cfg, &be)
                            .unwrap()
                            .value
                    })
                },
            );
        }
    }
    let be = Backend::Cpu(Par::rayon());
    for iters in [10usize, 30] {
        let cfg = fixed(eps, iters);
        g.bench_function(
            BenchmarkId::new(format!("online_{iters}iters"), be.name()),
            |bch| {
                bch.iter(|| {
                    sinkhorn(&online, w.view(), w.view(), &cfg, &be)
                        .unwrap()
                        .value
                })
            },
        );
    }
    // f64 (scalar exp): what the sharp-check type costs
    let cost64 = cost.mapv(f64::from);
    let dense64 = Geometry::dense(cost64.view()).unwrap();
    let w64 = w.mapv(f64::from);
    for iters in [10usize, 30] {
        let cfg = SinkhornConfig::new(Epsilon::Absolute(f64::from(eps)))
            .with_tol(1e-300, ErrorNorm::L1)
            .with_iters(iters, iters);
        g.bench_function(
            BenchmarkId::new(format!("dense_f64_{iters}iters"), be.name()),
            |bch| {
                bch.iter(|| {
                    sinkhorn(&dense64, w64.view(), w64.view(), &cfg, &be)
                        .unwrap()
                        .value
                })
            },
        );
    }
    g.finish();

    // The floor, measured in the same run on both cores: reading C once, and one exp per entry of C.
    let mut g = c.benchmark_group(format!("floor_{n}"));
    g.sample_size(30)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    let flat = cost.as_slice().unwrap();
    // 16 independent accumulators so the loop vectorises and is bound by loads, not by add latency
    let read = |xs: &[f32]| -> f32 {
        let mut acc = [0.0f32; 16];
        for ch in xs.chunks_exact(16) {
            for (a, &v) in acc.iter_mut().zip(ch) {
                *a += v;
            }
        }
        acc.iter().sum()
    };
    g.bench_function("read_cost_seq", |bch| bch.iter(|| read(black_box(flat))));
    g.bench_function("read_cost_rayon", |bch| {
        bch.iter(|| {
            let (x, y) = flat.split_at(flat.len() / 2);
            let (p, q) = rayon::join(|| read(black_box(x)), || read(black_box(y)));
            p + q
        })
    });
    // exp throughput on an L1-resident row, with exponents in the range a solve sees (plan entries of
    // 1e-9..1): inputs near the f32 underflow edge would time subnormal arithmetic, not exp
    let beta: Vec<f32> = (0..n).map(|j| -20.0 * (j as f32) / (n as f32)).collect();
    let row = vec![0.0f32; n];
    let exp_rows = |rows: std::ops::Range<usize>, out: &mut Vec<f32>| -> f32 {
        rows.map(|i| f32::exp_affine_sum(black_box(-(i as f32) * 1e-4), &beta, &row, 1.0, out))
            .sum::<f32>()
    };
    g.bench_function("exp_per_entry_seq", |bch| {
        bch.iter(|| exp_rows(0..n, &mut vec![0.0f32; n]))
    });
    g.bench_function("exp_per_entry_rayon", |bch| {
        bch.iter(|| {
            let half = n / 2;
            let (x, y) = rayon::join(
                || exp_rows(0..half, &mut vec![0.0f32; n]),
                || exp_rows(half..n, &mut vec![0.0f32; n]),
            );
            x + y
        })
    });
    g.finish();
}

fn transport_misc(c: &mut Criterion) {
    let q = quick();
    let mut g = c.benchmark_group("transport_misc");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    let be = Backend::Cpu(Par::rayon());

    // RecGOAT's OAT at Baby scale with the paper's d = 64 embedding (I = 7050 items)
    let (items, d) = if q { (500, 16) } else { (7050, 64) };
    let mut r = rng(3);
    let m: Array2<f32> = randn(&mut r, (items, d));
    let z: Array2<f32> = randn(&mut r, (items, d));
    let delta = Array2::<f32>::zeros((d, d));
    g.bench_function(
        BenchmarkId::new(format!("dimension_cost_{items}x{d}"), be.name()),
        |bch| bch.iter(|| dimension_cost(m.view(), z.view(), 100.0f32).unwrap()),
    );
    for (name, mode) in [
        ("detached", PlanGradient::Detached),
        (
            "implicit",
            PlanGradient::Implicit(ImplicitConfig::default()),
        ),
        ("unrolled50", PlanGradient::Unrolled { iters: 50 }),
    ] {
        let oat = AdaptiveTransport::new(AdaptiveTransportConfig {
            gradient: mode,
            ..Default::default()
        })
        .unwrap();
        g.bench_function(
            BenchmarkId::new(format!("oat_fwd_bwd_{name}_{items}x{d}"), be.name()),
            |bch| {
                bch.iter(|| {
                    let (out, cache) = oat.forward(m.view(), z.view(), delta.view(), &be).unwrap();
                    oat.backward(&cache, Some(out.view()), 0.1).unwrap().grad_m
                })
            },
        );
    }

    // a batch of 64 independent 128 x 128 problems
    let probs: Vec<(Array2<f32>, Array1<f32>)> = (0..64)
        .map(|k| {
            let mut r = rng(100 + k);
            let (x, y): (Array2<f32>, Array2<f32>) =
                (randn(&mut r, (128, 16)), randn(&mut r, (128, 16)));
            (
                sq_euclidean_cost(x.view(), y.view()).unwrap(),
                Array1::from_elem(128, 1.0 / 128.0),
            )
        })
        .collect();
    let batch: Vec<BatchProblem<'_, f32>> = probs
        .iter()
        .map(|(c, w)| BatchProblem {
            geom: Geometry::dense(c.view()).unwrap(),
            a: w.view(),
            b: w.view(),
        })
        .collect();
    let cfg = SinkhornConfig::new(Epsilon::relative(EpsScale::Mean, 0.05f32))
        .with_tol(1e-5, ErrorNorm::L1);
    for be in backends() {
        g.bench_function(BenchmarkId::new("batch_64x128", be.name()), |bch| {
            bch.iter(|| sinkhorn_batch(&batch, &cfg, &be).len())
        });
    }
    g.finish();
}

criterion_group!(benches, sinkhorn_2000, transport_misc);
criterion_main!(benches);
