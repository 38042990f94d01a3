//! InfoNCE forward + backward at B = 4096, d = 64 (f32), and the machine's GEMM throughput measured in the
//! same run (the floor: one direction is 3 GEMMs of 2 B^2 d flops each).
//!
//! `RECGOAT_BENCH_QUICK=1` shrinks the problem (smoke runs).

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use ndarray::Array2;
use recgoat_core::contrastive::{info_nce, Direction, InfoNceConfig};
use recgoat_core::testing::{randn, rng};
use recgoat_core::Par;
use std::time::Duration;

fn bench(c: &mut Criterion) {
    let b = if std::env::var("RECGOAT_BENCH_QUICK").is_ok_and(|v| v == "1") {
        512
    } else {
        4096
    };
    let mut r = rng(4096);
    let (v1, v2): (Array2<f32>, Array2<f32>) = (randn(&mut r, (b, 64)), randn(&mut r, (b, 64)));
    let mut g = c.benchmark_group(format!("info_nce_{b}x64"));
    g.sample_size(15)
        .measurement_time(Duration::from_secs(6))
        .warm_up_time(Duration::from_secs(1));
    for par in [Par::Seq, Par::rayon()] {
        for (name, direction) in [
            ("one_way", Direction::OneWay),
            ("symmetric", Direction::Symmetric),
        ] {
            let cfg = InfoNceConfig {
                direction,
                ..InfoNceConfig::default()
            };
            g.bench_function(
                BenchmarkId::new(format!("fwd_bwd_{name}"), par.name()),
                |bch| {
                    bch.iter(|| {
                        info_nce(v1.view(), v2.view(), None, None, &cfg, par)
                            .unwrap()
                            .loss
                    })
                },
            );
        }
    }
    // GEMM floor reference: the B x d by d x B product at this machine's sgemm speed (matrixmultiply, 1 thread)
    // into a preallocated output, so the figure is arithmetic throughput, not first-touch page faults
    let mut out = Array2::<f32>::zeros((b, b));
    g.bench_function(BenchmarkId::new("gemm_b_by_b", "cpu_seq"), |bch| {
        bch.iter(|| ndarray::linalg::general_mat_mul(1.0, &v1, &v2.t(), 0.0, black_box(&mut out)))
    });
    // the same product on both cores (row halves), the floor's 2-thread reference
    let half = b / 2;
    let (mut top, mut bottom) = (
        Array2::<f32>::zeros((half, b)),
        Array2::<f32>::zeros((b - half, b)),
    );
    g.bench_function(BenchmarkId::new("gemm_b_by_b", "cpu_rayon"), |bch| {
        bch.iter(|| {
            rayon::join(
                || {
                    ndarray::linalg::general_mat_mul(
                        1.0,
                        &v1.slice(ndarray::s![..half, ..]),
                        &v2.t(),
                        0.0,
                        &mut top,
                    )
                },
                || {
                    ndarray::linalg::general_mat_mul(
                        1.0,
                        &v1.slice(ndarray::s![half.., ..]),
                        &v2.t(),
                        0.0,
                        &mut bottom,
                    )
                },
            )
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
