//! InfoNCE forward + backward at B = 4096, d = 64 (f32), and the machine's GEMM throughput measured in the
//! same run (the floor: one direction is 3 GEMMs of 2 B^2 d flops each).
//!
//! `RECGOAT_BENCH_QUICK=1` shrinks the problem (smoke runs).

mod common;

use common::quick;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use ndarray::Array2;
use recgoat_core::contrastive::{info_nce, Direction, InfoNceConfig};
use recgoat_core::testing::{randn, rng};
use recgoat_core::Par;
use std::time::Duration;

fn bench(c: &mut Criterion) {
    let b = if quick() { 512 } else { 4096 };
    let mut r = rng(4096);
    let (v1, v2): (Array2<f32>, Array2<f32>) = (randn(&mut r, (b, 64)), randn(&mut r, (b, 64)));
    let mut g = c.benchmark_group(format!("info_nce_{b}x64"));
    g.sample_size(15)
        .measurement_time(Duration::from_secs(6))
        .warm_up_time(Duration::from_secs(1));
    for par in [Par::Seq, Par::rayon()] {
        for (name, cfg) in directions() {
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
    // The products InfoNCE's forward and backward compute, in their shapes and with its row blocks, and
    // nothing else: per block of rows S = A P^T, dA = S P and dP += S^T A (the backward's two have the long
    // inner dimension B, which this GEMM runs more slowly than the forward's). InfoNCE over this floor is
    // what its exps, scales and reductions cost.
    let block = InfoNceConfig::<f32>::default().block_rows.min(b);
    let mut whole = ThreeProducts::new(block, b);
    g.bench_function(BenchmarkId::new("gemm_three_products", "cpu_seq"), |bch| {
        bch.iter(|| whole.run(v1.view(), v2.view(), 0..b))
    });
    let (mut top, mut bottom) = (ThreeProducts::new(block, b), ThreeProducts::new(block, b));
    g.bench_function(
        BenchmarkId::new("gemm_three_products", "cpu_rayon"),
        |bch| {
            bch.iter(|| {
                rayon::join(
                    || top.run(v1.view(), v2.view(), 0..half),
                    || bottom.run(v1.view(), v2.view(), half..b),
                )
            })
        },
    );
    g.finish();
    interleaved_ratios(v1.view(), v2.view(), block);
}

/// The two InfoNCE forms measured, by name: one-way and symmetric, default settings otherwise.
fn directions() -> [(&'static str, InfoNceConfig<f32>); 2] {
    [
        ("one_way", Direction::OneWay),
        ("symmetric", Direction::Symmetric),
    ]
    .map(|(name, direction)| {
        let cfg = InfoNceConfig {
            direction,
            ..InfoNceConfig::default()
        };
        (name, cfg)
    })
}

/// InfoNCE's time over its three products' ([`ThreeProducts`]), each pair measured back to back on 2 threads,
/// so that the machine's slow phases hit both sides of a ratio alike (steadier on a shared VM than a ratio
/// of two separately measured medians).
fn interleaved_ratios(
    v1: ndarray::ArrayView2<'_, f32>,
    v2: ndarray::ArrayView2<'_, f32>,
    block: usize,
) {
    use std::time::Instant;
    let (b, pairs) = (v1.nrows(), if quick() { 4 } else { 40 });
    let half = b / 2;
    let (mut top, mut bottom) = (ThreeProducts::new(block, b), ThreeProducts::new(block, b));
    let mut line =
        format!("info_nce over its three products, {pairs} interleaved pairs on 2 threads:");
    for (name, cfg) in directions() {
        let mut ratios = Vec::new();
        for k in 0..pairs + 3 {
            let t0 = Instant::now();
            black_box(
                info_nce(v1, v2, None, None, &cfg, Par::rayon())
                    .unwrap()
                    .loss,
            );
            let t1 = Instant::now();
            rayon::join(|| top.run(v1, v2, 0..half), || bottom.run(v1, v2, half..b));
            if k >= 3 {
                ratios.push((t1 - t0).as_secs_f64() / t1.elapsed().as_secs_f64());
            }
        }
        ratios.sort_by(f64::total_cmp);
        let n = ratios.len();
        line += &format!(
            " {name} ratio median {:.2}x (quartiles {:.2}x..{:.2}x);",
            ratios[n / 2],
            ratios[n / 4],
            ratios[3 * n / 4]
        );
    }
    eprintln!("{}", line.trim_end_matches(';'));
}

/// Preallocated outputs of [`ThreeProducts::run`]: one block of similarities and the two gradients.
struct ThreeProducts {
    block: usize,
    sim: Array2<f32>,
    grad_a: Array2<f32>,
    grad_p: Array2<f32>,
}

impl ThreeProducts {
    fn new(block: usize, b: usize) -> Self {
        ThreeProducts {
            block,
            sim: Array2::zeros((block, b)),
            grad_a: Array2::zeros((b, 64)),
            grad_p: Array2::zeros((b, 64)),
        }
    }

    /// The three products for anchor rows `rows`, block by block.
    fn run(
        &mut self,
        a: ndarray::ArrayView2<'_, f32>,
        p: ndarray::ArrayView2<'_, f32>,
        rows: std::ops::Range<usize>,
    ) {
        use ndarray::linalg::general_mat_mul;
        use ndarray::s;
        for r0 in rows.clone().step_by(self.block) {
            let r1 = (r0 + self.block).min(rows.end);
            let ab = a.slice(s![r0..r1, ..]);
            let mut sim = self.sim.slice_mut(s![..r1 - r0, ..]);
            general_mat_mul(5.0, &ab, &p.t(), 0.0, &mut sim);
            let mut ga = self
                .grad_a
                .slice_mut(s![r0 - rows.start..r1 - rows.start, ..]);
            general_mat_mul(5.0, &sim, &p, 0.0, &mut ga);
            general_mat_mul(5.0, &sim.t(), &ab, 1.0, &mut self.grad_p);
        }
        black_box(&self.grad_p);
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
