//! GPU parity: every GPU op against the CPU path (f64 reference, f32 tolerance) on small shapes.
//!
//! With `RECGOAT_REQUIRE_GPU=1` (set by `.ci/run`, which installs Mesa's software Vulkan) a missing adapter
//! fails every test; without it, a machine with no adapter skips them with a printed reason.
#![cfg(feature = "gpu")]

mod common;

use ndarray::Array2;
use rand::Rng;
use recgoat_core::gpu::{self, GpuContext, GpuGraph, GpuMatrix, GpuOptions};
use recgoat_core::graph::{self, bipartite_user_item, CsrGraph};
use recgoat_core::testing::Tolerance;
use recgoat_core::testing::{randn, rng};
use recgoat_core::{Error, Par};
use std::sync::{Arc, OnceLock};

/// The shared context, or `None` (with the reason printed) when no adapter exists and none is required.
fn ctx() -> Option<&'static GpuContext> {
    shared().map(|c| &**c)
}

/// [`ctx`] as the `Arc` a [`recgoat_core::Backend::Gpu`] holds.
fn shared() -> Option<&'static Arc<GpuContext>> {
    static CTX: OnceLock<Option<Arc<GpuContext>>> = OnceLock::new();
    CTX.get_or_init(|| recgoat_core::testing::gpu_context().map(Arc::new))
        .as_ref()
}

/// f32 SpMM / propagation against an f64 reference: rounding of a weighted sum of `deg` terms.
const TOL: Tolerance = Tolerance::new(1e-5, 1e-6);

/// A random directed graph: `n x m`, about `deg` edges per row, some rows empty, random positive weights
/// (or none).
fn random_graph(seed: u64, n: usize, m: usize, deg: usize, weighted: bool) -> CsrGraph<f64> {
    let mut r = rng(seed);
    let mut edges = Vec::new();
    for i in 0..n {
        if i % 7 == 3 {
            continue; // a row with no edges
        }
        for _ in 0..r.gen_range(1..=2 * deg) {
            edges.push((i, r.gen_range(0..m)));
        }
    }
    let w: Vec<f64> = (0..edges.len()).map(|_| r.gen_range(0.1..2.0)).collect();
    CsrGraph::from_edges(n, m, &edges, weighted.then_some(&w[..])).unwrap()
}

fn to_f32(g: &CsrGraph<f64>) -> CsrGraph<f32> {
    CsrGraph::new(
        g.n_rows(),
        g.n_cols(),
        g.indptr().to_vec(),
        g.indices().to_vec(),
        g.weights().map(|w| w.iter().map(|&v| v as f32).collect()),
    )
    .unwrap()
}

fn f32_of(x: &Array2<f64>) -> Array2<f32> {
    x.mapv(|v| v as f32)
}

fn f64_of(x: &Array2<f32>) -> Array2<f64> {
    x.mapv(f64::from)
}

fn adapter_note(c: &GpuContext) {
    eprintln!(
        "adapter: {} ({:?})",
        c.adapter_name(),
        c.adapter_info().backend
    );
}

#[test]
fn spmm_matches_the_cpu_reference() {
    let Some(c) = ctx() else { return };
    adapter_note(c);
    // widths below, at and above the shader's 64 lanes; weighted and unweighted; rectangular
    for (seed, (n, m, d, weighted)) in [
        (33, 17, 5, true),
        (40, 40, 64, false),
        (25, 31, 70, true),
        (1, 1, 1, true),
    ]
    .into_iter()
    .enumerate()
    {
        let g = random_graph(seed as u64, n, m, 4, weighted);
        let x: Array2<f64> = randn(&mut rng(100 + seed as u64), (m, d));
        let want = graph::spmm_reference(&g, &f64_of(&f32_of(&x)));
        let got = gpu::spmm(c, &to_f32(&g), f32_of(&x).view()).unwrap();
        TOL.assert_close(
            &format!("spmm {n}x{m} d={d} weighted={weighted}"),
            &f64_of(&got).view(),
            &want.view(),
        );
    }
}

#[test]
fn spmm_vec4_path_matches_the_cpu_at_every_lane_count() {
    // widths that are multiples of 4 take spmm_vec4.wgsl: 1, 2, 4, 8, 16, 32 and 64 lanes per row, rows per
    // workgroup from 64 down to 1, widths above 64 vec4s looping; 37 rows fill no group evenly
    let Some(c) = ctx() else { return };
    for (i, d) in [4, 8, 12, 16, 32, 64, 128, 256, 260, 516]
        .into_iter()
        .enumerate()
    {
        let weighted = i % 2 == 0;
        let g = random_graph(70 + i as u64, 37, 23, 5, weighted);
        let x: Array2<f64> = randn(&mut rng(80 + i as u64), (23, d));
        let want = graph::spmm_reference(&g, &f64_of(&f32_of(&x)));
        let got = gpu::spmm(c, &to_f32(&g), f32_of(&x).view()).unwrap();
        TOL.assert_close(
            &format!("spmm vec4 d={d} weighted={weighted}"),
            &f64_of(&got).view(),
            &want.view(),
        );
        // the transpose (backward) and the running mean (LightGCN) through the same kernel
        let dy: Array2<f64> = f64_of(&f32_of(&randn(&mut rng(90 + i as u64), (37, d))));
        let (gg, dyd) = (
            GpuGraph::upload(c, &to_f32(&g)).unwrap(),
            GpuMatrix::upload(c, f32_of(&dy).view()).unwrap(),
        );
        let mut dx = GpuMatrix::zeros(c, 23, d).unwrap();
        gpu::spmm_backward_into(c, &gg, &dyd, &mut dx).unwrap();
        let want = graph::spmm_backward(&g, dy.view(), Par::Seq).unwrap();
        TOL.assert_close(
            &format!("spmm vec4 backward d={d}"),
            &f64_of(&dx.download(c).unwrap()).view(),
            &want.view(),
        );
    }
    let g = user_item_graph();
    for (layers, d) in [(2, 4), (3, 260)] {
        let e0 = f64_of(&f32_of(&randn::<f64, _, _>(&mut rng(95), (g.n_rows(), d))));
        let want = graph::lightgcn_forward(&g, e0.view(), layers, Par::Seq).unwrap();
        let got = gpu::lightgcn_forward(c, &to_f32(&g), f32_of(&e0).view(), layers).unwrap();
        TOL.assert_close(
            &format!("vec4 forward L={layers} d={d}"),
            &f64_of(&got).view(),
            &want.view(),
        );
    }
}

/// `got` against `want` for sums of up to `terms` f32 products per element: within the forward error bound
/// of f32 summation, `terms * eps` times the sum of the terms' magnitudes (`magnitude`), doubled.
fn assert_within_sum_bound(
    label: &str,
    got: &Array2<f64>,
    want: &Array2<f64>,
    magnitude: &Array2<f64>,
    terms: usize,
) {
    for (((idx, g), w), m) in got.indexed_iter().zip(want).zip(magnitude) {
        let bound = 2.0 * terms as f64 * f64::from(f32::EPSILON) * m + 1e-7;
        assert!(
            (g - w).abs() <= bound,
            "{label}: {idx:?}: {g} vs {w} (bound {bound})"
        );
    }
}

#[test]
fn spmm_vec4_long_rows_match_the_cpu() {
    // rows 0, 7 and 100 are hubs of 100+ edges (over the 64-edge and 8x-mean threshold: a workgroup each),
    // and every row links column 5, a hub of the transpose; at 64 lanes (d = 256) the hubs stay in place
    let Some(c) = ctx() else { return };
    let mut r = rng(140);
    let mut pairs = Vec::new();
    for i in 0..200 {
        let deg = if [0, 7, 100].contains(&i) {
            100 + i % 40
        } else {
            i % 4
        };
        for _ in 0..deg {
            pairs.push((i, r.gen_range(0..150)));
        }
        pairs.push((i, 5));
    }
    let w: Vec<f64> = (0..pairs.len()).map(|_| r.gen_range(0.1..2.0)).collect();
    for (i, d) in [4, 8, 12, 64, 128, 256].into_iter().enumerate() {
        let weighted = i % 2 == 1;
        let g = CsrGraph::from_edges(200, 150, &pairs, weighted.then_some(&w[..])).unwrap();
        assert!(g.row(7).len() > 64 && g.transposed().graph.row(5).len() == 200);
        let x: Array2<f64> = f64_of(&f32_of(&randn(&mut rng(141 + i as u64), (150, d))));
        let want = graph::spmm_reference(&g, &x);
        let got = gpu::spmm(c, &to_f32(&g), f32_of(&x).view()).unwrap();
        let label = format!("long rows d={d} weighted={weighted}");
        // the hubs sum 100 to 200 terms: f32 rounding grows with them
        let size = graph::spmm_reference(&g, &x.mapv(f64::abs));
        assert_within_sum_bound(&label, &f64_of(&got), &want, &size, 200);
        let dy: Array2<f64> = f64_of(&f32_of(&randn(&mut rng(151 + i as u64), (200, d))));
        let gg = GpuGraph::upload(c, &to_f32(&g)).unwrap();
        let dyd = GpuMatrix::upload(c, f32_of(&dy).view()).unwrap();
        let mut dx = GpuMatrix::zeros(c, 150, d).unwrap();
        gpu::spmm_backward_into(c, &gg, &dyd, &mut dx).unwrap();
        let want = graph::spmm_backward(&g, dy.view(), Par::Seq).unwrap();
        let dx = f64_of(&dx.download(c).unwrap());
        let size = graph::spmm_backward(&g, dy.mapv(f64::abs).view(), Par::Seq).unwrap();
        assert_within_sum_bound(&format!("{label}, backward"), &dx, &want, &size, 200);
    }
    // LightGCN's running mean through the long-row kernel: a user who rated every item
    let mut pairs: Vec<(usize, usize)> = (0..90).map(|j| (0, j)).collect();
    pairs.extend((1..40).map(|u| (u, (u * 7) % 90)));
    let g = bipartite_user_item::<f64>(40, 90, &pairs)
        .unwrap()
        .sym_normalized()
        .unwrap();
    for (layers, d) in [(2, 8), (3, 64)] {
        let e0 = f64_of(&f32_of(&randn::<f64, _, _>(&mut rng(160), (g.n_rows(), d))));
        let want = graph::lightgcn_forward(&g, e0.view(), layers, Par::Seq).unwrap();
        let got = gpu::lightgcn_forward(c, &to_f32(&g), f32_of(&e0).view(), layers).unwrap();
        let label = format!("long rows, lightgcn L={layers} d={d}");
        TOL.assert_close(&label, &f64_of(&got).view(), &want.view());
    }
}

#[test]
fn repeated_ops_share_uniforms_and_reach_the_queue_at_the_next_read() {
    // a context of its own: the shared one counts the other tests' work too
    if ctx().is_none() {
        return;
    }
    let c = GpuContext::with_options(&GpuOptions::from_env()).unwrap();
    let g = random_graph(31, 40, 40, 3, true);
    let gg = GpuGraph::upload(&c, &to_f32(&g)).unwrap();
    let x: Array2<f64> = f64_of(&f32_of(&randn(&mut rng(32), (40, 8))));
    let xd = GpuMatrix::upload(&c, f32_of(&x).view()).unwrap();
    let mut y = GpuMatrix::zeros(&c, 40, 8).unwrap();
    let mut z = GpuMatrix::zeros(&c, 40, 8).unwrap();
    gpu::spmm_into(&c, &gg, &xd, &mut y).unwrap();
    let before = c.counters();
    // y = A x five more times, then z = A y: every later dispatch has parameters seen before
    for _ in 0..5 {
        gpu::spmm_into(&c, &gg, &xd, &mut y).unwrap();
    }
    gpu::spmm_into(&c, &gg, &y, &mut z).unwrap();
    let d = c.counters() - before;
    assert_eq!(d.dispatches, 6);
    assert_eq!(d.buffers, 0, "the same parameters share one uniform buffer");
    assert_eq!(
        d.submissions, 0,
        "nothing reaches the queue before the host looks"
    );
    let got = z.download(&c).unwrap();
    assert_eq!(
        (c.counters() - before).submissions,
        1,
        "one submission at the read"
    );
    let ax = graph::spmm_reference(&g, &x);
    let want = graph::spmm_reference(&g, &f64_of(&f32_of(&ax)));
    TOL.assert_close(
        "A (A x) after queued work",
        &f64_of(&got).view(),
        &want.view(),
    );
}

#[test]
fn spmm_backward_matches_the_transpose() {
    let Some(c) = ctx() else { return };
    let g = random_graph(5, 30, 20, 3, true);
    let dy: Array2<f64> = randn(&mut rng(6), (30, 9));
    let g32 = to_f32(&g);
    let (gg, dyd) = (
        GpuGraph::upload(c, &g32).unwrap(),
        GpuMatrix::upload(c, f32_of(&dy).view()).unwrap(),
    );
    let mut dx = GpuMatrix::zeros(c, 20, 9).unwrap();
    gpu::spmm_backward_into(c, &gg, &dyd, &mut dx).unwrap();
    let want = graph::spmm_backward(&g, f64_of(&f32_of(&dy)).view(), Par::Seq).unwrap();
    TOL.assert_close(
        "spmm backward",
        &f64_of(&dx.download(c).unwrap()).view(),
        &want.view(),
    );
}

fn user_item_graph() -> CsrGraph<f64> {
    let mut r = rng(9);
    let pairs: Vec<(usize, usize)> = (0..120)
        .map(|_| (r.gen_range(0..15), r.gen_range(0..22)))
        .collect();
    bipartite_user_item::<f64>(15, 22, &pairs)
        .unwrap()
        .sym_normalized()
        .unwrap()
}

#[test]
fn lightgcn_forward_and_backward_match_the_cpu() {
    let Some(c) = ctx() else { return };
    let g = user_item_graph();
    let g32 = to_f32(&g);
    let n = g.n_rows();
    for (layers, d) in [(1, 8), (3, 64), (4, 67)] {
        let e0 = f64_of(&f32_of(&randn::<f64, _, _>(
            &mut rng(layers as u64),
            (n, d),
        )));
        let want = graph::lightgcn_forward(&g, e0.view(), layers, Par::Seq).unwrap();
        let got = gpu::lightgcn_forward(c, &g32, f32_of(&e0).view(), layers).unwrap();
        TOL.assert_close(
            &format!("forward L={layers} d={d}"),
            &f64_of(&got).view(),
            &want.view(),
        );
        let want = graph::lightgcn_backward(&g, e0.view(), layers, Par::Seq).unwrap();
        let got = gpu::lightgcn_backward(c, &g32, f32_of(&e0).view(), layers).unwrap();
        TOL.assert_close(
            &format!("backward L={layers} d={d}"),
            &f64_of(&got).view(),
            &want.view(),
        );
    }
}

#[test]
fn lightgcn_backward_on_a_directed_graph_uses_the_transpose() {
    // a non-symmetric square graph: forward and backward differ, and backward must be A^T's propagation
    let Some(c) = ctx() else { return };
    let g = random_graph(12, 26, 26, 3, true);
    let grad: Array2<f64> = f64_of(&f32_of(&randn(&mut rng(13), (26, 6))));
    let want = graph::lightgcn_backward(&g, grad.view(), 2, Par::Seq).unwrap();
    let got = gpu::lightgcn_backward(c, &to_f32(&g), f32_of(&grad).view(), 2).unwrap();
    TOL.assert_close("directed backward", &f64_of(&got).view(), &want.view());
    let fwd = graph::lightgcn_forward(&g, grad.view(), 2, Par::Seq).unwrap();
    assert!(Tolerance::new(1e-3, 1e-3)
        .check("fwd != bwd", &want.view(), &fwd.view())
        .is_err());
}

#[test]
fn large_inputs_are_chunked_under_the_dispatch_limit() {
    // a cap of 2 workgroups (8 rows) per dispatch forces many dispatches on 50 rows
    let opts = GpuOptions {
        max_workgroups_per_dispatch: Some(2),
        ..GpuOptions::from_env()
    };
    if ctx().is_none() {
        return;
    }
    let c = GpuContext::with_options(&opts).unwrap();
    let g = random_graph(21, 50, 50, 3, true);
    let x: Array2<f64> = f64_of(&f32_of(&randn(&mut rng(22), (50, 3))));
    let want = graph::lightgcn_forward(&g, x.view(), 2, Par::Seq).unwrap();
    let got = gpu::lightgcn_forward(&c, &to_f32(&g), f32_of(&x).view(), 2).unwrap();
    TOL.assert_close("chunked propagation", &f64_of(&got).view(), &want.view());
    // the vec4 kernel's chunks: 1 row per workgroup (d = 256, 25 dispatches) and 64 (d = 4, 300 rows)
    for (n, d) in [(50, 256), (300, 4)] {
        let g = random_graph(23, n, n, 3, true);
        let x: Array2<f64> = f64_of(&f32_of(&randn(&mut rng(24), (n, d))));
        let want = graph::lightgcn_forward(&g, x.view(), 2, Par::Seq).unwrap();
        let got = gpu::lightgcn_forward(&c, &to_f32(&g), f32_of(&x).view(), 2).unwrap();
        TOL.assert_close(
            &format!("chunked vec4 propagation d={d}"),
            &f64_of(&got).view(),
            &want.view(),
        );
    }
}

#[test]
fn device_resident_chain_needs_no_round_trip() {
    // two propagations chained on the device equal the host composition
    let Some(c) = ctx() else { return };
    let g = user_item_graph();
    let g32 = to_f32(&g);
    let e0: Array2<f64> = f64_of(&f32_of(&randn(&mut rng(31), (g.n_rows(), 16))));
    let gg = GpuGraph::upload(c, &g32).unwrap();
    let x = GpuMatrix::upload(c, f32_of(&e0).view()).unwrap();
    let mut y = GpuMatrix::zeros(c, g.n_rows(), 16).unwrap();
    let mut z = GpuMatrix::zeros(c, g.n_rows(), 16).unwrap();
    gpu::lightgcn_forward_into(c, &gg, &x, 2, &mut y).unwrap();
    gpu::lightgcn_backward_into(c, &gg, &y, 2, &mut z).unwrap();
    let fy = graph::lightgcn_forward(&g, e0.view(), 2, Par::Seq).unwrap();
    let want = graph::lightgcn_backward(&g, fy.view(), 2, Par::Seq).unwrap();
    TOL.assert_close(
        "chain",
        &f64_of(&z.download(c).unwrap()).view(),
        &want.view(),
    );
    let mut copy = GpuMatrix::zeros(c, g.n_rows(), 16).unwrap();
    copy.copy_from(c, &z).unwrap();
    assert_eq!(copy.download(c).unwrap(), z.download(c).unwrap());
}

#[test]
fn bad_gpu_inputs_are_clear_errors() {
    let Some(c) = ctx() else { return };
    let g = to_f32(&random_graph(3, 10, 8, 2, true));
    // x with the wrong number of rows
    let e = gpu::spmm(c, &g, Array2::<f32>::zeros((9, 4)).view()).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    // NaN is refused at upload
    let mut x = Array2::<f32>::zeros((8, 4));
    x[[2, 1]] = f32::NAN;
    let e = GpuMatrix::upload(c, x.view()).unwrap_err();
    assert!(matches!(e, Error::NonFinite { .. }), "{e}");
    // an output of the wrong shape
    let gg = GpuGraph::upload(c, &g).unwrap();
    let xd = GpuMatrix::zeros(c, 8, 4).unwrap();
    let mut y = GpuMatrix::zeros(c, 10, 5).unwrap();
    let e = gpu::spmm_into(c, &gg, &xd, &mut y).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    // propagation needs a square graph and at least one layer
    let e = gpu::lightgcn_forward(c, &g, Array2::<f32>::zeros((8, 4)).view(), 2).unwrap_err();
    assert!(matches!(e, Error::Graph { .. }), "{e}");
    let sq = to_f32(&user_item_graph());
    let e = gpu::lightgcn_forward(c, &sq, Array2::<f32>::zeros((37, 4)).view(), 0).unwrap_err();
    assert!(matches!(e, Error::Param { .. }), "{e}");
    // an adapter that does not exist
    let e = GpuContext::with_options(&GpuOptions {
        adapter: Some("no such adapter 1234".into()),
        ..GpuOptions::default()
    })
    .unwrap_err();
    assert!(matches!(e, Error::GpuUnavailable { .. }), "{e}");
}

fn gemm_reference(a: &Array2<f64>, ta: bool, b: &Array2<f64>, tb: bool) -> Array2<f64> {
    let a = if ta { a.t().to_owned() } else { a.clone() };
    let b = if tb { b.t().to_owned() } else { b.clone() };
    a.dot(&b)
}

#[test]
fn gemm_matches_the_reference_for_every_transposition() {
    let Some(c) = ctx() else { return };
    // sizes off the 64 x 64 output tile and the 16-wide K slice, several tiles each way; then a long K
    // over one tile (split into K slices summed afterwards); alpha and beta both used
    for (m, n, k, ta, tb) in [(70, 131, 37), (20, 30, 1100)]
        .into_iter()
        .flat_map(|(m, n, k)| {
            [(false, false), (true, false), (false, true), (true, true)]
                .map(|(ta, tb)| (m, n, k, ta, tb))
        })
    {
        let a = f64_of(&f32_of(&randn(
            &mut rng(41),
            if ta { (k, m) } else { (m, k) },
        )));
        let b = f64_of(&f32_of(&randn(
            &mut rng(42),
            if tb { (n, k) } else { (k, n) },
        )));
        let c0 = f64_of(&f32_of(&randn(&mut rng(43), (m, n))));
        let want = gemm_reference(&a, ta, &b, tb) * 0.5 - &c0 * 2.0;
        let (ga, gb) = (
            GpuMatrix::upload(c, f32_of(&a).view()).unwrap(),
            GpuMatrix::upload(c, f32_of(&b).view()).unwrap(),
        );
        let mut gc = GpuMatrix::upload(c, f32_of(&c0).view()).unwrap();
        gpu::gemm(c, 0.5, &ga, ta, &gb, tb, -2.0, &mut gc).unwrap();
        TOL.for_reduction(k).assert_close(
            &format!("gemm {m}x{n}x{k} ta={ta} tb={tb}"),
            &f64_of(&gc.download(c).unwrap()).view(),
            &want.view(),
        );
    }
    let a = GpuMatrix::zeros(c, 3, 4).unwrap();
    let mut out = GpuMatrix::zeros(c, 3, 3).unwrap();
    let e = gpu::gemm(c, 1.0, &a, false, &a, false, 0.0, &mut out).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
}

#[test]
fn gemm_is_chunked_under_the_dispatch_limit() {
    if ctx().is_none() {
        return;
    }
    let c = GpuContext::with_options(&GpuOptions {
        max_workgroups_per_dispatch: Some(2),
        ..GpuOptions::from_env()
    })
    .unwrap();
    // 300 x 140 output = 3 x 2 chunks of 128 x 128 (two 64-wide tiles a dispatch)
    let a = f64_of(&f32_of(&randn(&mut rng(44), (300, 9))));
    let b = f64_of(&f32_of(&randn(&mut rng(45), (140, 9))));
    let (ga, gb) = (
        GpuMatrix::upload(&c, f32_of(&a).view()).unwrap(),
        GpuMatrix::upload(&c, f32_of(&b).view()).unwrap(),
    );
    let mut gc = GpuMatrix::zeros(&c, 300, 140).unwrap();
    gpu::gemm(&c, 1.0, &ga, false, &gb, true, 0.0, &mut gc).unwrap();
    TOL.for_reduction(9).assert_close(
        "chunked gemm",
        &f64_of(&gc.download(&c).unwrap()).view(),
        &a.dot(&b.t()).view(),
    );
}

#[test]
fn l2_normalize_and_backward_match_the_cpu() {
    let Some(c) = ctx() else { return };
    // widths below and above the 64-lane reduction
    for d in [3, 64, 130] {
        let x = f64_of(&f32_of(&randn(&mut rng(50 + d as u64), (11, d))));
        let g = f64_of(&f32_of(&randn(&mut rng(60 + d as u64), (11, d))));
        let (y, n) = recgoat_core::nn::l2_normalize(x.view()).unwrap();
        let want_dx =
            recgoat_core::nn::l2_normalize_backward(y.view(), n.view(), g.view()).unwrap();
        let xd = GpuMatrix::upload(c, f32_of(&x).view()).unwrap();
        let (gy, gn) = gpu::l2_normalize(c, &xd).unwrap();
        TOL.assert_close(
            "normalised rows",
            &f64_of(&gy.download(c).unwrap()).view(),
            &y.view(),
        );
        let norms = f64_of(&gn.download(c).unwrap());
        TOL.assert_close("norms", &norms.column(0), &n.view());
        let gd = GpuMatrix::upload(c, f32_of(&g).view()).unwrap();
        let dx = gpu::l2_normalize_backward(c, &gy, &gn, &gd).unwrap();
        TOL.assert_close(
            "normalise backward",
            &f64_of(&dx.download(c).unwrap()).view(),
            &want_dx.view(),
        );
    }
    let mut x = Array2::<f32>::ones((4, 3));
    x.row_mut(2).fill(0.0);
    let e = gpu::l2_normalize(c, &GpuMatrix::upload(c, x.view()).unwrap()).unwrap_err();
    assert!(
        matches!(&e, Error::Param { value, .. } if value.contains("row 2")),
        "{e}"
    );
}

/// f32 InfoNCE against the f64 CPU path: softmax sums over B + K terms and GEMMs over d.
const TOL_NCE: Tolerance = Tolerance::new(1e-4, 1e-5);

fn nce_case(
    c: &GpuContext,
    label: &str,
    (b, d, k): (usize, usize, usize),
    cfg: recgoat_core::contrastive::InfoNceConfig<f64>,
    weighted: bool,
) {
    use recgoat_core::contrastive::{info_nce, InfoNceConfig};
    let v1 = f64_of(&f32_of(&randn(&mut rng(70), (b, d))));
    let v2 = f64_of(&f32_of(
        &(&v1 * 0.5 + randn::<f64, _, _>(&mut rng(71), (b, d))),
    ));
    let neg = (k > 0).then(|| f64_of(&f32_of(&randn(&mut rng(72), (k, d)))));
    let w = weighted.then(|| ndarray::Array1::from_shape_fn(b, |i| 0.5 + (i % 3) as f64 * 0.25));
    let want = info_nce(
        v1.view(),
        v2.view(),
        neg.as_ref().map(|n| n.view()),
        w.as_ref().map(|w| w.view()),
        &cfg,
        Par::Seq,
    )
    .unwrap();
    let cfg32 = InfoNceConfig::<f32> {
        temperature: cfg.temperature as f32,
        normalize: cfg.normalize,
        direction: cfg.direction,
        reduction: cfg.reduction,
        block_rows: cfg.block_rows,
    };
    let w32 = w.as_ref().map(|w| w.mapv(|v| v as f32));
    let neg32 = neg.as_ref().map(f32_of);
    let got = gpu::info_nce(
        c,
        f32_of(&v1).view(),
        f32_of(&v2).view(),
        neg32.as_ref().map(|n| n.view()),
        w32.as_ref().map(|w| w.view()),
        &cfg32,
    )
    .unwrap();
    TOL_NCE.assert_scalar(&format!("{label}: loss"), f64::from(got.loss), want.loss);
    TOL_NCE.assert_close(
        &format!("{label}: grad v1"),
        &f64_of(&got.grad_v1).view(),
        &want.grad_v1.view(),
    );
    TOL_NCE.assert_close(
        &format!("{label}: grad v2"),
        &f64_of(&got.grad_v2).view(),
        &want.grad_v2.view(),
    );
    match (got.grad_negatives, want.grad_negatives) {
        (Some(g), Some(w)) => TOL_NCE.assert_close(
            &format!("{label}: grad negatives"),
            &f64_of(&g).view(),
            &w.view(),
        ),
        (None, None) => {}
        _ => panic!("{label}: negatives' gradient present on one side only"),
    }
}

#[test]
fn info_nce_matches_the_cpu_for_every_option() {
    use recgoat_core::contrastive::{Direction, InfoNceConfig, Reduction};
    let Some(c) = ctx() else { return };
    let base = InfoNceConfig::<f64>::default();
    nce_case(c, "default", (37, 16, 0), base, false);
    nce_case(
        c,
        "symmetric, negatives, weights, sum",
        (20, 70, 9),
        InfoNceConfig {
            direction: Direction::Symmetric,
            reduction: Reduction::Sum,
            temperature: 0.5,
            ..base
        },
        true,
    );
    nce_case(
        c,
        "unnormalised",
        (13, 5, 4),
        InfoNceConfig {
            normalize: false,
            temperature: 2.0,
            ..base
        },
        false,
    );
    // several 64-column tiles of positives and of negatives, and logits up to 1 / tau = 100, whose
    // exponentials overflow f32 unless each row's maximum is taken out first
    nce_case(
        c,
        "several tiles, sharp temperature",
        (150, 24, 70),
        InfoNceConfig {
            direction: Direction::Symmetric,
            temperature: 0.01,
            ..base
        },
        true,
    );
}

#[test]
fn info_nce_blocks_under_a_small_binding_limit() {
    use recgoat_core::contrastive::{Direction, InfoNceConfig};
    if ctx().is_none() {
        return;
    }
    // 512 bytes per binding: similarity blocks of 4 rows of B + K = 26 floats (6 blocks for B = 21), and
    // dispatch chunks of 2 workgroups
    let c = GpuContext::with_options(&GpuOptions {
        max_storage_binding: Some(512),
        max_workgroups_per_dispatch: Some(2),
        ..GpuOptions::from_env()
    })
    .unwrap();
    let cfg = InfoNceConfig::<f64> {
        direction: Direction::Symmetric,
        ..InfoNceConfig::default()
    };
    nce_case(&c, "blocked", (21, 4, 5), cfg, true);
    // blocks of 3 rows of 70 + 66 columns (3 dispatch chunks of 2 x 64 columns), 46 blocks for B = 70
    let c = GpuContext::with_options(&GpuOptions {
        max_storage_binding: Some(2048),
        max_workgroups_per_dispatch: Some(1),
        ..GpuOptions::from_env()
    })
    .unwrap();
    nce_case(&c, "blocked, chunked", (70, 4, 66), cfg, true);
    // a matrix beyond the binding is refused with the limit named
    let e = GpuMatrix::zeros(&c, 100, 100).unwrap_err();
    assert!(
        matches!(&e, Error::Gpu { reason, .. } if reason.contains("max_storage_buffer_binding_size")),
        "{e}"
    );
}

mod sinkhorn {
    use super::*;
    use recgoat_core::transport::{
        sinkhorn, BatchProblem, Domain, EpsScale, EpsSchedule, Epsilon, ErrorNorm, Geometry,
        Marginal, SinkhornConfig, SinkhornOutput,
    };
    use recgoat_core::Backend;

    fn weights(n: usize, seed: u64) -> ndarray::Array1<f32> {
        let mut r = rng(seed);
        let w: ndarray::Array1<f32> = (0..n).map(|_| r.gen_range(0.5f32..1.5)).collect();
        let s = w.sum();
        w / s
    }

    /// GPU against the CPU solver (f32, same configuration): the same iterate up to rounding.
    fn compare(c: &GpuContext, label: &str, geom: &Geometry<'_, f32>, cfg: &SinkhornConfig<f32>) {
        let (a, b) = (weights(geom.n(), 80), weights(geom.m(), 81));
        let want = sinkhorn(geom, a.view(), b.view(), cfg, &Backend::Cpu(Par::Seq)).unwrap();
        let got = gpu::sinkhorn(c, geom, a.view(), b.view(), cfg).unwrap();
        same_solution(label, &got, &want, cfg);
    }

    /// Two outputs of one problem agree up to f32 rounding (iterations within one check interval).
    fn same_solution(
        label: &str,
        got: &SinkhornOutput<f32>,
        want: &SinkhornOutput<f32>,
        cfg: &SinkhornConfig<f32>,
    ) {
        assert_eq!(got.converged, want.converged, "{label}: converged");
        assert_eq!(got.termination, want.termination, "{label}: termination");
        let scale = f64::from(
            want.f
                .iter()
                .chain(&want.g)
                .fold(0f32, |m, v| m.max(v.abs())),
        )
        .max(1e-3);
        let tol = Tolerance::new(1e-3, 1e-3 * scale);
        tol.assert_close(
            &format!("{label}: f"),
            &got.f.mapv(f64::from).view(),
            &want.f.mapv(f64::from).view(),
        );
        tol.assert_close(
            &format!("{label}: g"),
            &got.g.mapv(f64::from).view(),
            &want.g.mapv(f64::from).view(),
        );
        let t = Tolerance::new(1e-3, 1e-6);
        t.assert_scalar(
            &format!("{label}: cost"),
            got.transport_cost.into(),
            want.transport_cost.into(),
        );
        t.assert_scalar(
            &format!("{label}: value"),
            got.value.into(),
            want.value.into(),
        );
        assert!(
            got.iterations.abs_diff(want.iterations) <= cfg.check_every,
            "{label}: iterations {} vs {}",
            got.iterations,
            want.iterations
        );
    }

    #[test]
    fn sinkhorn_matches_the_cpu_solver() {
        let Some(c) = ctx() else { return };
        let x: Array2<f32> = randn(&mut rng(82), (40, 5));
        let y: Array2<f32> = randn(&mut rng(83), (300, 5)); // more columns than the 128 lanes
        let cloud = Geometry::sq_euclidean(x.view(), y.view()).unwrap();
        let cost = cloud.to_dense();
        let dense = Geometry::dense(cost.view()).unwrap();
        let base = SinkhornConfig::new(Epsilon::relative(EpsScale::Mean, 0.05))
            .with_tol(1e-4, ErrorNorm::L1)
            .with_iters(500, 5);
        compare(c, "dense", &dense, &base);
        compare(c, "online", &cloud, &base);
        let sched = base.clone().with_schedule(EpsSchedule::Geometric {
            start: Epsilon::relative(EpsScale::Max, 1.0),
            decay: 0.5,
            stage_iters: 20,
        });
        compare(c, "eps schedule", &cloud, &sched);
        let unbalanced = base
            .clone()
            .with_marginals(Marginal::Kl(0.5), Marginal::Tau(0.9));
        compare(c, "unbalanced", &dense, &unbalanced);
        compare(c, "online unbalanced", &cloud, &unbalanced);
        // more than one 16-coordinate slice and several 64-point tiles each way (the tiled online kernel)
        let x: Array2<f32> = randn(&mut rng(84), (130, 21));
        let y: Array2<f32> = randn(&mut rng(85), (70, 21));
        compare(
            c,
            "online, wide points",
            &Geometry::sq_euclidean(x.view(), y.view()).unwrap(),
            &base,
        );
        // the cap stops it before tol: MaxIterations on both
        compare(c, "capped", &dense, &base.clone().with_iters(7, 3));
    }

    /// The gradients of a plan formed in row blocks on the device (a binding limit small enough for
    /// several blocks, dispatch chunks of 3 workgroups) against the CPU's, for the same potentials.
    #[test]
    fn point_cloud_gradients_match_the_cpu_in_blocks() {
        use recgoat_core::transport::point_cloud_gradients;
        if ctx().is_none() {
            return;
        }
        // 4 KiB per binding: plan blocks of 8 rows of 120 columns
        let c = GpuContext::with_options(&GpuOptions {
            max_storage_binding: Some(4096),
            max_workgroups_per_dispatch: Some(3),
            ..GpuOptions::from_env()
        })
        .unwrap();
        let x: Array2<f32> = randn(&mut rng(60), (37, 5));
        let y: Array2<f32> = randn(&mut rng(61), (120, 5));
        let (a, b) = (weights(37, 62), weights(120, 63));
        let geom = Geometry::sq_euclidean(x.view(), y.view()).unwrap();
        let cfg = SinkhornConfig::new(Epsilon::relative(EpsScale::Mean, 0.05));
        let out = sinkhorn(&geom, a.view(), b.view(), &cfg, &Backend::Cpu(Par::Seq)).unwrap();
        let (wx, wy) = point_cloud_gradients(&geom, &out, a.view(), b.view(), Par::Seq).unwrap();
        let (gx, gy) =
            gpu::point_cloud_gradients(&c, x.view(), y.view(), &out, a.view(), b.view()).unwrap();
        let scale = f64::from(wx.iter().chain(&wy).fold(0f32, |m, v| m.max(v.abs())));
        let tol = Tolerance::new(1e-4, 1e-5 * scale);
        tol.assert_close(
            "grad x",
            &gx.mapv(f64::from).view(),
            &wx.mapv(f64::from).view(),
        );
        tol.assert_close(
            "grad y",
            &gy.mapv(f64::from).view(),
            &wy.mapv(f64::from).view(),
        );
        let e = gpu::point_cloud_gradients(&c, x.view(), x.view(), &out, a.view(), b.view());
        assert!(matches!(e, Err(Error::Shape { .. })), "{e:?}");
    }

    /// The debiased divergence on the device against the CPU function: value and every gradient.
    #[test]
    fn sinkhorn_divergence_matches_the_cpu() {
        use recgoat_core::transport::sinkhorn_divergence;
        let Some(c) = ctx() else { return };
        let x: Array2<f32> = randn(&mut rng(64), (90, 4));
        let y: Array2<f32> = randn(&mut rng(65), (70, 4)) + 0.5;
        let (a, b) = (weights(90, 66), weights(70, 67));
        let cfg = SinkhornConfig::new(Epsilon::Absolute(0.5))
            .with_tol(1e-5, ErrorNorm::L1)
            .with_iters(5000, 1);
        let be = Backend::Cpu(Par::Seq);
        let want = sinkhorn_divergence(x.view(), y.view(), a.view(), b.view(), &cfg, &be).unwrap();
        let got =
            gpu::sinkhorn_divergence(c, x.view(), y.view(), a.view(), b.view(), &cfg).unwrap();
        assert!(want.converged && got.converged);
        Tolerance::new(1e-3, 1e-5).assert_scalar("value", got.value.into(), want.value.into());
        let close = |what: &str, g: &ndarray::Array2<f32>, w: &ndarray::Array2<f32>| {
            let scale = f64::from(w.iter().fold(0f32, |m, v| m.max(v.abs())));
            Tolerance::new(1e-3, 1e-3 * scale).assert_close(
                what,
                &g.mapv(f64::from).view(),
                &w.mapv(f64::from).view(),
            );
        };
        close("grad x", &got.grad_x, &want.grad_x);
        close("grad y", &got.grad_y, &want.grad_y);
        let vec2 = |v: &ndarray::Array1<f32>| v.clone().insert_axis(ndarray::Axis(0));
        close("grad a", &vec2(&got.grad_a), &vec2(&want.grad_a));
        close("grad b", &vec2(&got.grad_b), &vec2(&want.grad_b));
    }

    /// Problems of up to 256 points a side, of several sizes, solved together in one dispatch: each as the
    /// CPU solver solves it alone, for every norm, balanced or not, with an eps schedule; a larger problem
    /// in the same batch goes through the per-problem path.
    #[test]
    fn small_problems_in_one_dispatch_match_the_cpu() {
        let Some(c) = ctx() else { return };
        let sizes = [(1, 1), (7, 3), (64, 64), (256, 200), (30, 256), (300, 20)];
        let pts: Vec<(Array2<f32>, Array2<f32>)> = sizes
            .iter()
            .enumerate()
            .map(|(k, &(n, m))| {
                let s = 90 + 2 * k as u64;
                (randn(&mut rng(s), (n, 4)), randn(&mut rng(s + 1), (m, 4)))
            })
            .collect();
        let costs: Vec<Array2<f32>> = pts
            .iter()
            .map(|(x, y)| {
                Geometry::sq_euclidean(x.view(), y.view())
                    .unwrap()
                    .to_dense()
            })
            .collect();
        let ws: Vec<_> = sizes
            .iter()
            .enumerate()
            .map(|(k, &(n, m))| (weights(n, 40 + k as u64), weights(m, 50 + k as u64)))
            .collect();
        let base = SinkhornConfig::new(Epsilon::relative(EpsScale::Mean, 0.05))
            .with_tol(1e-4, ErrorNorm::L1)
            .with_iters(2000, 5);
        let configs = [
            ("l1", base.clone()),
            (
                "l2 + schedule",
                SinkhornConfig {
                    norm: ErrorNorm::L2,
                    schedule: EpsSchedule::Geometric {
                        start: Epsilon::relative(EpsScale::Max, 1.0),
                        decay: 0.5,
                        stage_iters: 30,
                    },
                    ..base.clone()
                },
            ),
            (
                "linf unbalanced",
                SinkhornConfig {
                    norm: ErrorNorm::LInf,
                    marginal_a: Marginal::Kl(1.0),
                    marginal_b: Marginal::Kl(2.0),
                    ..base.clone()
                },
            ),
            ("capped", base.clone().with_iters(12, 5)),
        ];
        for (name, cfg) in &configs {
            let batch: Vec<BatchProblem<'_, f32>> = costs
                .iter()
                .zip(&pts)
                .zip(&ws)
                .enumerate()
                .map(|(k, ((cost, (x, y)), (a, b)))| BatchProblem {
                    // dense costs and point clouds both
                    geom: if k % 2 == 0 {
                        Geometry::dense(cost.view()).unwrap()
                    } else {
                        Geometry::sq_euclidean(x.view(), y.view()).unwrap()
                    },
                    a: a.view(),
                    b: b.view(),
                })
                .collect();
            let outs = gpu::sinkhorn_batch(c, &batch, cfg);
            for (k, (p, got)) in batch.iter().zip(&outs).enumerate() {
                let want = sinkhorn(&p.geom, p.a, p.b, cfg, &Backend::Cpu(Par::Seq)).unwrap();
                let label = format!("{name}, problem {k} {:?}", sizes[k]);
                same_solution(&label, got.as_ref().unwrap(), &want, cfg);
            }
        }
    }

    #[test]
    fn sinkhorn_is_chunked_and_refuses_the_scaling_domain() {
        if ctx().is_none() {
            return;
        }
        let c = GpuContext::with_options(&GpuOptions {
            max_workgroups_per_dispatch: Some(3),
            ..GpuOptions::from_env()
        })
        .unwrap();
        let x: Array2<f32> = randn(&mut rng(84), (20, 3));
        let y: Array2<f32> = randn(&mut rng(85), (11, 3));
        let cloud = Geometry::sq_euclidean(x.view(), y.view()).unwrap();
        let cfg = SinkhornConfig::new(Epsilon::relative(EpsScale::Mean, 0.1)).with_iters(300, 4);
        compare(&c, "chunked", &cloud, &cfg);
        let (a, b) = (weights(20, 1), weights(11, 2));
        let e = gpu::sinkhorn(
            &c,
            &cloud,
            a.view(),
            b.view(),
            &cfg.clone().with_domain(Domain::Scaling),
        )
        .unwrap_err();
        assert!(matches!(&e, Error::Param { name: "domain", .. }), "{e}");
        let e = gpu::sinkhorn(&c, &cloud, b.view(), a.view(), &cfg).unwrap_err();
        assert!(matches!(e, Error::Shape { .. }), "{e}");
    }
}

#[test]
fn layer_norm_forward_and_backward_match_the_cpu() {
    use recgoat_core::nn::LayerNorm;
    let Some(c) = ctx() else { return };
    // (600, 5): column sums over several row slices (dgamma, dbeta)
    for (n, d) in [(7, 3), (70, 64), (33, 130), (600, 5)] {
        let x = f64_of(&f32_of(&randn(&mut rng(90 + d as u64), (n, d))));
        let g = f64_of(&f32_of(&randn(&mut rng(91 + d as u64), (n, d))));
        let mut ln = LayerNorm::<f64>::new(d);
        ln.gamma = randn::<f64, _, _>(&mut rng(92), d).mapv(|v| (v as f32) as f64);
        ln.beta = randn::<f64, _, _>(&mut rng(93), d).mapv(|v| (v as f32) as f64);
        let (y, cache) = ln.forward(x.view()).unwrap();
        let (dx, dgamma, dbeta) = ln.backward(&cache, g.view()).unwrap();
        let ln32 = LayerNorm::<f32> {
            gamma: ln.gamma.mapv(|v| v as f32),
            beta: ln.beta.mapv(|v| v as f32),
            eps: 1e-5,
        };
        let xd = GpuMatrix::upload(c, f32_of(&x).view()).unwrap();
        let (gy, gcache) = gpu::layer_norm_forward(c, &ln32, &xd).unwrap();
        TOL.for_reduction(d).assert_close(
            &format!("layer norm {n}x{d}"),
            &f64_of(&gy.download(c).unwrap()).view(),
            &y.view(),
        );
        let gd = GpuMatrix::upload(c, f32_of(&g).view()).unwrap();
        let (gdx, gdg, gdb) = gpu::layer_norm_backward(c, &ln32, &gcache, &gd).unwrap();
        let t = Tolerance::new(1e-4, 1e-5).for_reduction(n.max(d));
        t.assert_close("dx", &f64_of(&gdx.download(c).unwrap()).view(), &dx.view());
        t.assert_close(
            "dgamma",
            &f64_of(&gdg.download(c).unwrap()).row(0),
            &dgamma.view(),
        );
        t.assert_close(
            "dbeta",
            &f64_of(&gdb.download(c).unwrap()).row(0),
            &dbeta.view(),
        );
    }
    let ln = LayerNorm::<f32>::new(4);
    let e = gpu::layer_norm_forward(c, &ln, &GpuMatrix::zeros(c, 2, 5).unwrap()).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let bad = LayerNorm::<f32> {
        eps: 0.0,
        ..LayerNorm::new(5)
    };
    let e = gpu::layer_norm_forward(c, &bad, &GpuMatrix::zeros(c, 2, 5).unwrap()).unwrap_err();
    assert!(matches!(e, Error::Param { name: "eps", .. }), "{e}");
}

#[test]
fn knn_graph_matches_brute_force() {
    use recgoat_core::graph::{knn_graph, KnnConfig};
    let Some(c) = ctx() else { return };
    // a duplicated row makes exact ties (broken by the smaller index on both paths); a zero row has
    // similarity 0 to everything
    let mut x: Array2<f32> = randn(&mut rng(95), (150, 7));
    let dup = x.row(3).to_owned();
    x.row_mut(10).assign(&dup);
    x.row_mut(20).fill(0.0);
    for cfg in [
        KnnConfig::new(5),
        KnnConfig {
            symmetric: false,
            self_loops: true,
            ..KnnConfig::new(12)
        },
    ] {
        let want = knn_graph(x.view(), &cfg, Par::Seq).unwrap();
        let got = gpu::knn_graph(c, x.view(), &cfg).unwrap();
        assert_eq!(got.indptr(), want.indptr(), "k = {}", cfg.k);
        assert_eq!(got.indices(), want.indices(), "k = {}", cfg.k);
    }
    // a hub: every row leans towards one direction and row 0 lies on it, so row 0 is in most lists and,
    // symmetrised, holds over 200 neighbours (a row sorted over several passes of the workgroup)
    let centre: Array2<f32> = randn(&mut rng(97), (1, 16));
    let hub = Array2::from_shape_fn((300, 16), |(_, j)| 3.0 * centre[[0, j]])
        + randn::<f32, _, _>(&mut rng(98), (300, 16));
    let mut hub = hub;
    hub.row_mut(0).assign(&centre.row(0));
    for cfg in [
        KnnConfig::new(20),
        KnnConfig {
            self_loops: true,
            ..KnnConfig::new(7)
        },
    ] {
        let want = knn_graph(hub.view(), &cfg, Par::Seq).unwrap();
        let got = gpu::knn_graph(c, hub.view(), &cfg).unwrap();
        assert!(
            cfg.k < 20 || want.row(0).len() > 200,
            "the hub has {}",
            want.row(0).len()
        );
        assert_eq!(got.indptr(), want.indptr(), "hub, k = {}", cfg.k);
        assert_eq!(got.indices(), want.indices(), "hub, k = {}", cfg.k);
    }
    let e = gpu::knn_graph(c, x.view(), &KnnConfig::new(65)).unwrap_err();
    assert!(matches!(e, Error::Param { name: "k", .. }), "{e}");
    let e = gpu::knn_graph(c, x.view(), &KnnConfig::new(150)).unwrap_err();
    assert!(matches!(e, Error::Param { name: "k", .. }), "{e}");
}

#[test]
fn knn_graph_blocks_under_a_small_binding_limit() {
    use recgoat_core::graph::{knn_graph, KnnConfig};
    if ctx().is_none() {
        return;
    }
    // 40 nodes: similarity blocks of 2048 / (4 * 40) = 12 rows, 4 blocks
    let c = GpuContext::with_options(&GpuOptions {
        max_storage_binding: Some(2048),
        ..GpuOptions::from_env()
    })
    .unwrap();
    let x: Array2<f32> = randn(&mut rng(96), (40, 6));
    let cfg = KnnConfig::new(4);
    let want = knn_graph(x.view(), &cfg, Par::Seq).unwrap();
    let got = gpu::knn_graph(&c, x.view(), &cfg).unwrap();
    assert_eq!(got.indices(), want.indices());
    assert_eq!(got.indptr(), want.indptr());
    // the lists (40 x 6 x 4 = 960 bytes) fit 1024 bytes, the assembled columns (up to 40 x 13 x 4) do not:
    // the lists are read back and assembled on the host, to the same graph
    let c = GpuContext::with_options(&GpuOptions {
        max_storage_binding: Some(1024),
        ..GpuOptions::from_env()
    })
    .unwrap();
    let cfg = KnnConfig::new(6);
    let want = knn_graph(x.view(), &cfg, Par::Seq).unwrap();
    let got = gpu::knn_graph(&c, x.view(), &cfg).unwrap();
    assert_eq!(got, want);
    // dispatches of one workgroup: the edge passes and the row sorts in chunks
    let c = GpuContext::with_options(&GpuOptions {
        max_workgroups_per_dispatch: Some(1),
        ..GpuOptions::from_env()
    })
    .unwrap();
    let x: Array2<f32> = randn(&mut rng(99), (70, 5));
    let cfg = KnnConfig {
        self_loops: true,
        ..KnnConfig::new(9)
    };
    let want = knn_graph(x.view(), &cfg, Par::Seq).unwrap();
    assert_eq!(gpu::knn_graph(&c, x.view(), &cfg).unwrap(), want);
}

#[test]
fn adaptive_transport_matches_the_cpu_in_every_gradient_mode() {
    use recgoat_core::transport::{
        AdaptiveTransport, AdaptiveTransportConfig, ImplicitConfig, PlanGradient,
    };
    let Some(c) = ctx() else { return };
    // d = 40: the d x d kernels stride over more entries than a workgroup has invocations
    for (n, d) in [(90, 6), (120, 40)] {
        let m: Array2<f32> = randn(&mut rng(100), (n, d));
        let z: Array2<f32> = &m * 0.3 + randn::<f32, _, _>(&mut rng(101), (n, d));
        let delta: Array2<f32> = randn::<f32, _, _>(&mut rng(102), (d, d)) * 0.1;
        let go: Array2<f32> = randn(&mut rng(103), (n, d));
        for (label, gradient, barycentric) in [
            ("detached", PlanGradient::Detached, false),
            (
                "implicit",
                PlanGradient::Implicit(ImplicitConfig::default()),
                true,
            ),
            ("unrolled", PlanGradient::Unrolled { iters: 30 }, true),
        ] {
            let oat = AdaptiveTransport::new(AdaptiveTransportConfig {
                gradient,
                barycentric,
                ..AdaptiveTransportConfig::default()
            })
            .unwrap();
            let (want, cache) = oat
                .forward(
                    m.view(),
                    z.view(),
                    delta.view(),
                    &recgoat_core::Backend::Cpu(Par::Seq),
                )
                .unwrap();
            let grads = oat.backward(&cache, Some(go.view()), 0.5).unwrap();
            let (md, zd, gd) = (
                GpuMatrix::upload(c, m.view()).unwrap(),
                GpuMatrix::upload(c, z.view()).unwrap(),
                GpuMatrix::upload(c, go.view()).unwrap(),
            );
            let (got, gcache) =
                gpu::adaptive_transport_forward(c, &oat, &md, &zd, delta.view()).unwrap();
            let gg = gpu::adaptive_transport_backward(c, &oat, &gcache, &md, &zd, Some(&gd), 0.5)
                .unwrap();
            let close = |what: &str, a: &Array2<f32>, b: &Array2<f32>| {
                let scale = f64::from(b.iter().fold(0f32, |s, v| s.max(v.abs())));
                Tolerance::new(2e-3, 1e-4 * scale).assert_close(
                    &format!("{label} d {d}: {what}"),
                    &f64_of(a).view(),
                    &f64_of(b).view(),
                );
            };
            close("plan", &gcache.plan(c).unwrap(), cache.plan());
            close("aligned", &got.download(c).unwrap(), &want);
            close("grad m", &gg.grad_m.download(c).unwrap(), &grads.grad_m);
            close("grad z", &gg.grad_z.download(c).unwrap(), &grads.grad_z);
            close(
                "grad delta",
                &gg.grad_delta.download(c).unwrap(),
                &grads.grad_delta,
            );
            Tolerance::new(1e-3, 1e-6).assert_scalar(
                &format!("{label}: value"),
                gcache.value(c).unwrap().into(),
                cache.value().into(),
            );
        }
    }
    let (n, d) = (90, 6);
    let m: Array2<f32> = randn(&mut rng(100), (n, d));
    let delta: Array2<f32> = randn::<f32, _, _>(&mut rng(102), (d, d)) * 0.1;
    // shapes are checked
    let oat = AdaptiveTransport::new(AdaptiveTransportConfig::<f32>::default()).unwrap();
    let md = GpuMatrix::upload(c, m.view()).unwrap();
    let short = GpuMatrix::zeros(c, n - 1, d).unwrap();
    let e = gpu::adaptive_transport_forward(c, &oat, &md, &short, delta.view()).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let e = gpu::adaptive_transport_forward(c, &oat, &md, &md, Array2::<f32>::zeros((2, 2)).view())
        .unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
}

/// The device solve's two failures are the CPU path's errors: a constant dimension cost (eps resolves to 0)
/// and conjugate gradients that stop short of their tolerance. The `_with` calls read nothing back; the
/// cache's status holds the failure until `check`.
#[test]
fn adaptive_transport_reports_the_device_solve_failures() {
    use recgoat_core::transport::{
        AdaptiveTransport, AdaptiveTransportConfig, ImplicitConfig, PlanGradient,
    };
    let Some(c) = ctx() else { return };
    let (n, d) = (40, 5);
    let cpu = recgoat_core::Backend::Cpu(Par::Seq);
    let delta = Array2::<f32>::zeros((d, d));
    let dd = GpuMatrix::upload(c, delta.view()).unwrap();
    // a zero cost: eps relative to its mean is 0
    let oat = AdaptiveTransport::new(AdaptiveTransportConfig::<f32>::default()).unwrap();
    let zero = Array2::<f32>::zeros((n, d));
    let cpu_err = oat
        .forward(zero.view(), zero.view(), delta.view(), &cpu)
        .unwrap_err();
    assert!(matches!(cpu_err, Error::Param { .. }), "{cpu_err}");
    let zd = GpuMatrix::upload(c, zero.view()).unwrap();
    let e = gpu::adaptive_transport_forward(c, &oat, &zd, &zd, delta.view()).unwrap_err();
    assert!(matches!(e, Error::Param { .. }), "{e}");
    let (aligned, cache) = gpu::adaptive_transport_forward_with(c, &oat, &zd, &zd, &dd).unwrap();
    assert!(aligned.download(c).unwrap().iter().all(|v| v.is_nan()));
    let e = cache.check(c, &oat).unwrap_err();
    assert!(matches!(e, Error::Param { .. }), "{e}");
    // CG capped at one iteration with an unreachable tolerance
    let oat = AdaptiveTransport::new(AdaptiveTransportConfig {
        gradient: PlanGradient::Implicit(ImplicitConfig {
            max_iter: 1,
            tol: 1e-12,
            ..ImplicitConfig::default()
        }),
        ..AdaptiveTransportConfig::default()
    })
    .unwrap();
    let m: Array2<f32> = randn(&mut rng(110), (n, d));
    let z: Array2<f32> = &m * 0.5 + randn::<f32, _, _>(&mut rng(111), (n, d));
    let go: Array2<f32> = randn(&mut rng(112), (n, d));
    let (_, cpu_cache) = oat.forward(m.view(), z.view(), delta.view(), &cpu).unwrap();
    let cpu_err = oat.backward(&cpu_cache, Some(go.view()), 0.0).unwrap_err();
    assert!(matches!(cpu_err, Error::NotConverged { .. }), "{cpu_err}");
    let (md, zd, gd) = (
        GpuMatrix::upload(c, m.view()).unwrap(),
        GpuMatrix::upload(c, z.view()).unwrap(),
        GpuMatrix::upload(c, go.view()).unwrap(),
    );
    let (_, cache) = gpu::adaptive_transport_forward_with(c, &oat, &md, &zd, &dd).unwrap();
    cache.check(c, &oat).unwrap();
    gpu::adaptive_transport_backward_with(c, &oat, &cache, &md, &zd, Some(&gd), 0.0).unwrap();
    let e = cache.check(c, &oat).unwrap_err();
    assert!(
        matches!(e, Error::NotConverged { iterations: 1, .. }),
        "{e}"
    );
    let e =
        gpu::adaptive_transport_backward(c, &oat, &cache, &md, &zd, Some(&gd), 0.0).unwrap_err();
    assert!(matches!(e, Error::NotConverged { .. }), "{e}");
}

mod attention {
    use super::*;
    use recgoat_core::attention::{GatConfig, GatLayer, GatParams, Mode};

    fn cfg32(c: &GatConfig<f64>) -> GatConfig<f32> {
        GatConfig {
            in_dim: c.in_dim,
            heads: c.heads,
            head_dim: c.head_dim,
            concat: c.concat,
            negative_slope: c.negative_slope as f32,
            scoring: c.scoring,
            bias: c.bias,
            residual: c.residual,
            feat_drop: c.feat_drop as f32,
            attn_drop: c.attn_drop as f32,
            add_self_loops: c.add_self_loops,
        }
    }

    /// f32-representable f64 parameters and their f32 copy.
    fn params_pair(cfg: &GatConfig<f64>) -> (GatParams<f64>, GatParams<f32>) {
        let r = |a: &Array2<f64>| a.mapv(|v| (v as f32) as f64);
        let p = GatParams::init(cfg, &mut rng(8));
        let p = GatParams {
            w: r(&p.w),
            a_src: r(&p.a_src),
            a_dst: p.a_dst.as_ref().map(r),
            bias: p.bias.as_ref().map(|b| b.mapv(|v| (v as f32) as f64 + 0.1)),
            w_res: p.w_res.as_ref().map(r),
        };
        let q = GatParams {
            w: f32_of(&p.w),
            a_src: f32_of(&p.a_src),
            a_dst: p.a_dst.as_ref().map(f32_of),
            bias: p.bias.as_ref().map(|b| b.mapv(|v| v as f32)),
            w_res: p.w_res.as_ref().map(f32_of),
        };
        (p, q)
    }

    #[test]
    fn gat_forward_and_backward_match_the_cpu_in_every_variant() {
        let Some(c) = ctx() else { return };
        // a directed random graph (self loops added by the layer) with uneven in-degrees
        let g = random_graph(30, 25, 25, 3, false);
        let g32 = to_f32(&g);
        let tol = Tolerance::new(2e-4, 2e-5);
        // every variant in evaluation mode and in training mode (the dropout variants draw their masks)
        let modes = [Mode::Eval, Mode::Train { seed: 5 }];
        for ((name, cfg), mode) in common::gat_variants()
            .into_iter()
            .flat_map(|v| modes.iter().map(move |&m| (v, m)))
        {
            let (p64, p32) = params_pair(&cfg);
            let layer = GatLayer::new(cfg).unwrap();
            let layer32 = GatLayer::new(cfg32(&cfg)).unwrap();
            let x = f64_of(&f32_of(&randn(&mut rng(31), (25, cfg.in_dim))));
            let (want, cache) = layer.forward(&p64, &g, x.view(), mode, Par::Seq).unwrap();
            let xd = GpuMatrix::upload(c, f32_of(&x).view()).unwrap();
            let gg32 = gpu::GpuAttentionGraph::upload(c, &layer32, &g32).unwrap();
            let (got, gcache) = gpu::gat_forward(c, &layer32, &p32, &gg32, &xd, mode).unwrap();
            tol.assert_close(
                &format!("{name} {mode:?}: out"),
                &f64_of(&got.download(c).unwrap()).view(),
                &want.view(),
            );
            let att: Vec<f64> = gcache
                .attention(c)
                .unwrap()
                .iter()
                .map(|&v| v.into())
                .collect();
            tol.assert_close(
                &format!("{name} {mode:?}: attention"),
                &ndarray::ArrayView1::from(&att[..]),
                &ndarray::ArrayView1::from(&layer.attention(&g, &cache).unwrap()[..]),
            );
            let go = f64_of(&f32_of(&randn(&mut rng(32), want.dim())));
            let grads = layer
                .backward(&p64, &g, &cache, go.view(), Par::Seq)
                .unwrap();
            let god = GpuMatrix::upload(c, f32_of(&go).view()).unwrap();
            let gg = gpu::gat_backward(c, &layer32, &p32, &gg32, &gcache, &xd, &god).unwrap();
            let check = |what: &str, a: &GpuMatrix, b: ndarray::ArrayView2<'_, f64>| {
                tol.assert_close(
                    &format!("{name} {mode:?}: {what}"),
                    &f64_of(&a.download(c).unwrap()).view(),
                    &b,
                );
            };
            check("grad x", &gg.grad_x, grads.grad_x.view());
            check("grad w", &gg.grad_w, grads.grad_w.view());
            check("grad a_src", &gg.grad_a_src, grads.grad_a_src.view());
            match (&gg.grad_a_dst, &grads.grad_a_dst) {
                (Some(a), Some(b)) => check("grad a_dst", a, b.view()),
                (None, None) => {}
                _ => panic!("{name} {mode:?}: a_dst gradient on one side only"),
            }
            match (&gg.grad_bias, &grads.grad_bias) {
                (Some(a), Some(b)) => check("grad bias", a, b.view().insert_axis(ndarray::Axis(0))),
                (None, None) => {}
                _ => panic!("{name} {mode:?}: bias gradient on one side only"),
            }
            match (&gg.grad_w_res, &grads.grad_w_res) {
                (Some(a), Some(b)) => check("grad w_res", a, b.view()),
                (None, None) => {}
                _ => panic!("{name} {mode:?}: residual gradient on one side only"),
            }
        }
    }

    #[test]
    fn gat_bad_shapes_and_graphs_are_errors() {
        let Some(c) = ctx() else { return };
        let g = to_f32(&random_graph(33, 10, 10, 2, false));
        let cfg = GatConfig {
            attn_drop: 0.1,
            ..GatConfig::<f32>::new(4, 8, 2).unwrap()
        };
        let layer = GatLayer::new(cfg).unwrap();
        let p = GatParams::init(&cfg, &mut rng(1));
        let gd = gpu::GpuAttentionGraph::upload(c, &layer, &g).unwrap();
        assert_eq!(gd.nnz(), g.with_self_loops().unwrap().nnz());
        let x = GpuMatrix::zeros(c, 10, 4).unwrap();
        let bad = GpuMatrix::zeros(c, 10, 5).unwrap();
        let e = gpu::gat_forward(c, &layer, &p, &gd, &bad, Mode::Eval).unwrap_err();
        assert!(matches!(e, Error::Shape { .. }), "{e}");
        // backward with another graph than the forward pass's
        let (_, cache) = gpu::gat_forward(c, &layer, &p, &gd, &x, Mode::Eval).unwrap();
        let other = to_f32(&random_graph(34, 10, 10, 4, false));
        let od = gpu::GpuAttentionGraph::upload(c, &layer, &other).unwrap();
        let go = GpuMatrix::zeros(c, 10, 8).unwrap();
        if od.nnz() != gd.nnz() {
            let e = gpu::gat_backward(c, &layer, &p, &od, &cache, &x, &go).unwrap_err();
            assert!(matches!(e, Error::Graph { .. }), "{e}");
        }
    }
}

#[test]
fn softmax_fusion_matches_the_cpu() {
    use recgoat_core::nn::{softmax_fusion, softmax_fusion_backward};
    let Some(c) = ctx() else { return };
    let views: Vec<Array2<f64>> = (0..3)
        .map(|m| f64_of(&f32_of(&randn(&mut rng(110 + m), (17, 70)))))
        .collect();
    let logits = ndarray::array![0.3f64, -1.0, 0.8];
    let gy = f64_of(&f32_of(&randn(&mut rng(113), (17, 70))));
    let vv: Vec<_> = views.iter().map(|v| v.view()).collect();
    let (y, w) = softmax_fusion(&vv, logits.view()).unwrap();
    let (gv, gl) = softmax_fusion_backward(&vv, w.view(), gy.view()).unwrap();
    let dv: Vec<GpuMatrix> = views
        .iter()
        .map(|v| GpuMatrix::upload(c, f32_of(v).view()).unwrap())
        .collect();
    let refs: Vec<&GpuMatrix> = dv.iter().collect();
    let (gy_d, w32) = gpu::softmax_fusion(c, &refs, logits.mapv(|v| v as f32).view()).unwrap();
    TOL.assert_close(
        "fused",
        &f64_of(&gy_d.download(c).unwrap()).view(),
        &y.view(),
    );
    TOL.assert_close("weights", &w32.mapv(f64::from).view(), &w.view());
    let gyd = GpuMatrix::upload(c, f32_of(&gy).view()).unwrap();
    let (ggv, ggl) = gpu::softmax_fusion_backward(c, &refs, w32.view(), &gyd).unwrap();
    for (m, (a, b)) in ggv.iter().zip(&gv).enumerate() {
        TOL.assert_close(
            &format!("grad view {m}"),
            &f64_of(&a.download(c).unwrap()).view(),
            &b.view(),
        );
    }
    Tolerance::new(1e-4, 1e-4).assert_close("grad logits", &ggl.mapv(f64::from).view(), &gl.view());
    let e = gpu::softmax_fusion(c, &refs, ndarray::array![1.0f32].view()).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let e = gpu::softmax_fusion(c, &[], ndarray::Array1::<f32>::zeros(0).view()).unwrap_err();
    assert!(matches!(e, Error::Empty { .. }), "{e}");
}

/// The `&Backend`-taking solvers run the GPU path on `Backend::Gpu` for f32 (the same numbers as the
/// `gpu::` calls, close to the CPU's) and refuse f64 there.
#[test]
fn transport_solvers_run_on_a_gpu_backend() {
    use recgoat_core::transport::{
        sinkhorn, sinkhorn_batch, sinkhorn_divergence, BatchProblem, Epsilon, ErrorNorm, Geometry,
        SinkhornConfig,
    };
    use recgoat_core::{Backend, GpuBackend};
    let Some(sh) = shared() else { return };
    let c = &**sh;
    let be = Backend::Gpu(GpuBackend::new(sh.clone(), Par::Seq));
    let cpu = Backend::Cpu(Par::Seq);
    // power-of-two counts: the uniform weights sum to exactly 1 in f32
    let x: Array2<f32> = randn(&mut rng(120), (32, 4));
    let y: Array2<f32> = randn(&mut rng(121), (16, 4));
    let (a, b) = (
        ndarray::Array1::from_elem(32, 1.0f32 / 32.0),
        ndarray::Array1::from_elem(16, 1.0f32 / 16.0),
    );
    let cfg = SinkhornConfig::new(Epsilon::Absolute(0.5)).with_tol(1e-5, ErrorNorm::L1);
    for geom in [
        Geometry::sq_euclidean(x.view(), y.view()).unwrap(),
        Geometry::sq_euclidean_materialized(x.view(), y.view()).unwrap(),
    ] {
        let got = sinkhorn(&geom, a.view(), b.view(), &cfg, &be).unwrap();
        let direct = gpu::sinkhorn(c, &geom, a.view(), b.view(), &cfg).unwrap();
        let want = sinkhorn(&geom, a.view(), b.view(), &cfg, &cpu).unwrap();
        assert_eq!(got.f, direct.f, "the backend call is the gpu:: call");
        assert_eq!(got.iterations, direct.iterations);
        Tolerance::new(1e-3, 1e-4).assert_scalar("value", got.value.into(), want.value.into());
    }
    let cost = Geometry::sq_euclidean(x.view(), y.view())
        .unwrap()
        .to_dense();
    let dense = Geometry::dense(cost.view()).unwrap();
    let batch = [BatchProblem {
        geom: dense.clone(),
        a: a.view(),
        b: b.view(),
    }];
    let got = sinkhorn_batch(&batch, &cfg, &be).remove(0).unwrap();
    let direct = gpu::sinkhorn_batch(c, &batch, &cfg).remove(0).unwrap();
    assert_eq!(got.f, direct.f);
    let got = sinkhorn_divergence(x.view(), y.view(), a.view(), b.view(), &cfg, &be).unwrap();
    let direct = gpu::sinkhorn_divergence(c, x.view(), y.view(), a.view(), b.view(), &cfg).unwrap();
    assert_eq!(got.value, direct.value);
    assert_eq!(got.grad_x, direct.grad_x);
    // f64 is refused on the GPU backend, by each
    let (x64, y64) = (x.mapv(f64::from), y.mapv(f64::from));
    let (a64, b64) = (a.mapv(f64::from), b.mapv(f64::from));
    let cfg64 = SinkhornConfig::new(Epsilon::Absolute(0.5));
    let g64 = Geometry::sq_euclidean(x64.view(), y64.view()).unwrap();
    let e = sinkhorn(&g64, a64.view(), b64.view(), &cfg64, &be).unwrap_err();
    assert!(matches!(e, Error::Param { .. }), "{e}");
    let batch64 = [BatchProblem {
        geom: g64,
        a: a64.view(),
        b: b64.view(),
    }];
    let e = sinkhorn_batch(&batch64, &cfg64, &be).remove(0).unwrap_err();
    assert!(matches!(e, Error::Param { .. }), "{e}");
    let e = sinkhorn_divergence(x64.view(), y64.view(), a64.view(), b64.view(), &cfg64, &be)
        .unwrap_err();
    assert!(matches!(e, Error::Param { .. }), "{e}");
}

#[test]
fn sinkhorn_batch_solves_each_problem_in_order() {
    use recgoat_core::transport::{sinkhorn, BatchProblem, Epsilon, Geometry, SinkhornConfig};
    let Some(c) = ctx() else { return };
    let c1 = ndarray::array![[0.0f32, 1.0], [1.0, 0.0]];
    let c2 = ndarray::array![[0.0f32, 2.0, 1.0]];
    let (w2, w1, w3) = (
        ndarray::array![0.5f32, 0.5],
        ndarray::array![1.0f32],
        ndarray::array![0.2f32, 0.3, 0.5],
    );
    let bad = ndarray::array![0.5f32, 0.6];
    let batch = [
        BatchProblem {
            geom: Geometry::dense(c1.view()).unwrap(),
            a: w2.view(),
            b: w2.view(),
        },
        BatchProblem {
            geom: Geometry::dense(c2.view()).unwrap(),
            a: w1.view(),
            b: w3.view(),
        },
        BatchProblem {
            geom: Geometry::dense(c1.view()).unwrap(),
            a: bad.view(),
            b: w2.view(),
        },
    ];
    let cfg = SinkhornConfig::new(Epsilon::Absolute(0.1));
    let outs = gpu::sinkhorn_batch(c, &batch, &cfg);
    assert_eq!(outs.len(), 3);
    for (p, out) in batch.iter().zip(&outs).take(2) {
        let want = sinkhorn(
            &p.geom,
            p.a,
            p.b,
            &cfg,
            &recgoat_core::Backend::Cpu(Par::Seq),
        )
        .unwrap();
        let got = out.as_ref().unwrap();
        Tolerance::new(1e-4, 1e-6).assert_scalar(
            "cost",
            got.transport_cost.into(),
            want.transport_cost.into(),
        );
    }
    assert!(
        outs[2].is_err(),
        "unequal masses are refused, the others still solved"
    );
}

#[test]
fn profiling_times_each_kernel() {
    let Some(plain) = ctx() else { return };
    assert!(plain.profile().is_none(), "profiling is opt-in");
    let c = match GpuContext::with_options(&GpuOptions {
        profile: true,
        ..GpuOptions::from_env()
    }) {
        Ok(c) => c,
        // an adapter without timestamp queries refuses profiling, by name
        Err(Error::GpuUnavailable { reason }) if reason.contains("timestamp") => {
            eprintln!("profiling not tested: {reason}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let ah: Array2<f32> = randn(&mut rng(3), (70, 9));
    let a = GpuMatrix::upload(&c, ah.view()).unwrap();
    let mut out = GpuMatrix::zeros(&c, 70, 70).unwrap();
    for _ in 0..3 {
        gpu::gemm(&c, 1.0, &a, false, &a, true, 0.0, &mut out).unwrap();
    }
    let _ = gpu::l2_normalize(&c, &a).unwrap();
    let report = c.profile().expect("a profiling context reports");
    let find = |k: &str| report.iter().find(|t| t.kernel == k).cloned();
    let g = find("gemm").expect("gemm was timed");
    assert_eq!(g.dispatches, 3);
    assert!(g.total_ms.is_finite() && g.total_ms >= 0.0, "{g:?}");
    assert_eq!(find("normalize_rows").map(|t| t.dispatches), Some(1));
    // timing leaves the results alone
    let ah = f64_of(&ah);
    TOL.for_reduction(9).assert_close(
        "profiled gemm",
        &f64_of(&out.download(&c).unwrap()).view(),
        &ah.dot(&ah.t()).view(),
    );
    c.reset_profile();
    assert!(c.profile().expect("still profiling").is_empty());
}

/// The model on the GPU backend (propagation and graph attention on the device) against the same f32 model
/// on the CPU: losses and every parameter gradient, in evaluation and training mode (dropout masks drawn
/// from the same seed on both).
mod model_backend {
    use super::*;
    use recgoat_core::attention::Mode;
    use recgoat_core::model::{Batch, RecGoat, RecGoatConfig, Split, Trainer};
    use recgoat_core::{Backend, GpuBackend};

    fn gpu_backend() -> Option<Backend> {
        shared().map(|c| Backend::Gpu(GpuBackend::new(c.clone(), Par::Seq)))
    }

    fn small(base: RecGoatConfig, user_user: bool) -> RecGoatConfig {
        RecGoatConfig {
            embedding_dim: 8,
            gat_heads: 2,
            knn_k: 3,
            user_user,
            batch_size: 16,
            epochs: 2,
            eval_every: 1,
            // the dropout masks stay in the comparison whatever the preset's dropout
            dropout: 0.1,
            ..base
        }
    }

    /// Both paths are f32 and differ in summation order; the OAT solve and the losses sit between the
    /// device ops, so differences are compared relative to each tensor's largest entry (the largest seen on
    /// lavapipe: 1.0e-5 of it, in a projection gradient of `official_code()` in training mode).
    const MODEL_TOL: Tolerance = Tolerance::new(1e-3, 2e-5);

    /// The losses and gradients of one batch on each backend. The two f32 paths no longer share the OAT
    /// solve (the GPU backend solves it on the device), and the `official_code()` OAT (eps 0.01 against
    /// the dimension cost) amplifies f32 rounding in the plan: there the CPU path's own f32 gradients are
    /// 5e-5 of a tensor's largest entry away from the f64 model's. So each gradient is compared with the
    /// f64 model's, and may be off by [`MODEL_TOL`] plus 4 times what the CPU f32 path is off by in the same
    /// tensor: as accurate as the CPU path, up to summation order.
    #[test]
    fn loss_and_gradients_match_the_cpu_backend() {
        let Some(be) = gpu_backend() else { return };
        let ds = common::tiny();
        let batch = Batch {
            users: vec![0, 3, 5, 8, 2, 3, 6],
            pos: vec![0, 3, 1, 4, 10, 5, 1],
            neg: vec![7, 11, 2, 6, 9, 8, 0],
        };
        for (name, cfg) in [
            ("recgoat", small(RecGoatConfig::recgoat(), true)),
            (
                "recgoat, content ranking part",
                small(
                    RecGoatConfig {
                        content_rank_weight: 0.7,
                        ..RecGoatConfig::recgoat()
                    },
                    true,
                ),
            ),
            ("paper", small(RecGoatConfig::paper(), true)),
            (
                "official_code",
                small(RecGoatConfig::official_code(), false),
            ),
            ("lightgcn", small(RecGoatConfig::lightgcn(), false)),
        ] {
            let cpu = RecGoat::<f32>::new(cfg.clone(), &ds, Backend::Cpu(Par::Seq)).unwrap();
            let exact = RecGoat::<f64>::new(cfg.clone(), &ds, Backend::Cpu(Par::Seq)).unwrap();
            let gpu = RecGoat::<f32>::new(cfg, &ds, be.clone()).unwrap();
            let p = cpu.init_params();
            let p64 = p.cast::<f64>();
            for mode in [Mode::Eval, Mode::Train { seed: 3 }] {
                let (lc, gc) = cpu.loss_and_grad(&p, &batch, mode, None).unwrap();
                let (_, g64) = exact.loss_and_grad(&p64, &batch, mode, None).unwrap();
                let (lg, gg) = gpu.loss_and_grad(&p, &batch, mode, None).unwrap();
                let label = format!("{name} {mode:?}");
                for (what, a, b) in [
                    ("total", lg.total, lc.total),
                    ("bpr", lg.bpr, lc.bpr),
                    ("cl", lg.cl, lc.cl),
                    ("content", lg.content, lc.content),
                ] {
                    assert!(
                        (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                        "{label}: loss {what}: gpu {a} vs cpu {b}"
                    );
                }
                let (g32, g64) = (gc.tensors(), g64.tensors());
                for (((n, a), (_, c)), (_, b)) in gg.tensors().iter().zip(&g32).zip(&g64) {
                    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-3);
                    let norm = |x: &ndarray::ArrayView2<'_, f32>| x.mapv(|v| f64::from(v) / scale);
                    let (a, c, b) = (norm(a), norm(c), b.mapv(|v| v / scale));
                    let cpu_err = (&c - &b).iter().fold(0f64, |m, v| m.max(v.abs()));
                    let tol = Tolerance::new(MODEL_TOL.rel, MODEL_TOL.abs + 4.0 * cpu_err);
                    tol.assert_close(&format!("{label}: grad {n}"), &a.view(), &b.view());
                }
            }
        }
    }

    /// Two epochs on each backend: the same losses, parameters and test metrics; the GPU trainer used the
    /// device-resident step (timed as its own stage).
    fn trains_like_the_cpu(name: &str, cfg: RecGoatConfig) {
        trains_like_the_cpu_on(name, cfg, &common::tiny());
    }

    /// [`trains_like_the_cpu`] on the dataset `ds`.
    fn trains_like_the_cpu_on(name: &str, cfg: RecGoatConfig, ds: &recgoat_core::data::Dataset) {
        let Some(be) = gpu_backend() else { return };
        let ot_loss = cfg.ot_sample_weight > 0.0;
        let ds = ds.clone();
        let mut cpu = Trainer::new(cfg.clone(), &ds, Backend::Cpu(Par::Seq)).unwrap();
        let mut gpu = Trainer::new(cfg, &ds, be).unwrap();
        for _ in 0..2 {
            let (a, b) = (
                gpu.run_epoch(|_, _| {}).unwrap(),
                cpu.run_epoch(|_, _| {}).unwrap(),
            );
            assert_eq!(b.ot > 0.0, ot_loss, "{name}: sample-level OT loss present");
            for (what, x, y) in [
                ("loss", a.loss, b.loss),
                ("bpr", a.bpr, b.bpr),
                ("cl", a.cl, b.cl),
                ("ot", a.ot, b.ot),
                ("content", a.content, b.content),
            ] {
                assert!(
                    (x - y).abs() <= 1e-4 * y.abs().max(1e-3),
                    "{name} epoch {}: gpu {what} {x} vs cpu {y}",
                    a.epoch
                );
            }
        }
        use recgoat_core::model::Stage;
        assert!(
            gpu.profile().get(Stage::Device) > 0.0,
            "{name}: device-resident step used"
        );
        // the step's stages are not timed one by one there
        for stage in [Stage::Loss, Stage::Propagation, Stage::Gat] {
            assert_eq!(gpu.profile().get(stage), 0.0, "{name}: {stage:?} timed");
        }
        let tol = Tolerance::new(1e-3, 1e-5);
        for ((n, a), (_, b)) in gpu.params().tensors().iter().zip(&cpu.params().tensors()) {
            tol.assert_close(&format!("{name}: {n} after 2 epochs"), a, b);
        }
        let (a, b) = (
            gpu.evaluate(Split::Test).unwrap(),
            cpu.evaluate(Split::Test).unwrap(),
        );
        assert_eq!(format!("{a:?}"), format!("{b:?}"), "{name}: test metrics");
    }

    fn several_steps(base: RecGoatConfig) -> RecGoatConfig {
        RecGoatConfig {
            batch_size: 8,
            lr: 0.02,
            ..small(base, false)
        }
    }

    /// A loss that turns non-finite mid-epoch (a learning rate of 1e30 overflows the scores after one step)
    /// is an error on both backends: the CPU path stops before that step's update, the device-resident path
    /// reads its losses at the epoch's end and abandons the epoch, keeping the parameters of its start.
    #[test]
    fn a_non_finite_loss_abandons_the_device_epoch() {
        let Some(be) = gpu_backend() else { return };
        let ds = common::tiny();
        let cfg = RecGoatConfig {
            lr: 1e30,
            ..several_steps(RecGoatConfig::lightgcn())
        };
        let mut cpu = Trainer::new(cfg.clone(), &ds, Backend::Cpu(Par::Seq)).unwrap();
        let mut gpu = Trainer::new(cfg, &ds, be).unwrap();
        let before = gpu.params().clone();
        let e = cpu.run_epoch(|_, _| {}).unwrap_err();
        assert!(matches!(e, Error::NonFinite { .. }), "cpu: {e}");
        let e = gpu.run_epoch(|_, _| {}).unwrap_err();
        assert!(matches!(e, Error::NonFinite { .. }), "gpu: {e}");
        for ((n, a), (_, b)) in gpu.params().tensors().iter().zip(&before.tensors()) {
            assert_eq!(a, b, "{n}: the epoch's start kept");
        }
    }

    #[test]
    fn recgoat_trains_device_resident_like_the_cpu() {
        trains_like_the_cpu("recgoat", several_steps(RecGoatConfig::recgoat()));
    }

    /// Items that lack a modality (all-zero feature rows) leave the terms that read every modality on the
    /// device as on the host.
    #[test]
    fn items_lacking_a_modality_train_device_resident_like_the_cpu() {
        let mut ds = common::tiny();
        for (k, (_, x)) in ds.item_features.iter_mut().enumerate() {
            for i in [1 + k, 4, 7] {
                x.row_mut(i).fill(0.0);
            }
        }
        for (name, base) in [
            ("recgoat", RecGoatConfig::recgoat()),
            ("paper", RecGoatConfig::paper()),
        ] {
            trains_like_the_cpu_on(name, several_steps(base), &ds);
        }
    }

    /// On a dataset without item features `recgoat()` is the backbone with the user-item term, on the device
    /// as on the host.
    #[test]
    fn recgoat_without_features_trains_device_resident_like_the_cpu() {
        let mut ds = common::tiny();
        ds.item_features.clear();
        trains_like_the_cpu_on("recgoat", several_steps(RecGoatConfig::recgoat()), &ds);
    }

    #[test]
    fn paper_trains_device_resident_like_the_cpu() {
        let cfg = several_steps(RecGoatConfig::paper());
        trains_like_the_cpu("paper", cfg);
    }

    #[test]
    fn official_code_trains_device_resident_like_the_cpu() {
        let cfg = several_steps(RecGoatConfig::official_code());
        trains_like_the_cpu("official_code", cfg);
    }

    #[test]
    fn lightgcn_trains_device_resident_like_the_cpu() {
        trains_like_the_cpu("lightgcn", several_steps(RecGoatConfig::lightgcn()));
    }

    /// No OAT, no fusion normalisation, two GAT layers, GATv2 scoring.
    #[test]
    fn other_options_train_device_resident_like_the_cpu() {
        let cfg = RecGoatConfig {
            oat: false,
            fusion_normalize: false,
            gat_layers: 2,
            gatv2: true,
            ..several_steps(RecGoatConfig::paper())
        };
        trains_like_the_cpu("options", cfg);
    }

    /// The residual fusion with the item-graph view (two layers over the modality item-item graph).
    #[test]
    fn the_residual_fusion_and_item_graph_train_device_resident_like_the_cpu() {
        let cfg = RecGoatConfig {
            fusion: recgoat_core::model::Fusion::Residual,
            fusion_gate_init: 0.2,
            fusion_normalize: false,
            item_graph_layers: 2,
            item_graph_k: 3,
            ..several_steps(RecGoatConfig::paper())
        };
        trains_like_the_cpu("residual + item graph", cfg);
    }

    /// Grouped steps (`steps_per_epoch`): several batches' losses on one forward pass, their mean gradient
    /// through one backward pass, on the device.
    #[test]
    fn grouped_steps_train_device_resident_like_the_cpu() {
        let cfg = RecGoatConfig {
            steps_per_epoch: 2,
            ..several_steps(RecGoatConfig::paper())
        };
        trains_like_the_cpu("paper_reading, 2 steps per epoch", cfg);
    }

    /// The user-user branch and the sample-level OT loss (its `B x B` solves on the host).
    #[test]
    fn the_user_branch_and_the_ot_loss_train_device_resident_like_the_cpu() {
        let cfg = RecGoatConfig {
            user_user: true,
            ot_sample_weight: 0.1,
            ..several_steps(RecGoatConfig::paper())
        };
        trains_like_the_cpu("user_user + ot loss", cfg);
    }

    #[test]
    fn adam_on_the_device_matches_the_cpu_step() {
        let Some(c) = ctx() else { return };
        use recgoat_core::nn::{Adam, AdamState};
        let adam = Adam {
            weight_decay: 0.01,
            ..Adam::new(0.02f32)
        };
        let mut p = f32_of(&randn(&mut rng(40), (37, 9)));
        let mut st = AdamState::new(p.dim());
        let mut pd = GpuMatrix::upload(c, p.view()).unwrap();
        let mut sd = gpu::GpuAdamState::zeros(c, 37, 9).unwrap();
        for k in 0..4 {
            let g = f32_of(&randn(&mut rng(41 + k), (37, 9)));
            adam.step(p.view_mut(), g.view(), &mut st).unwrap();
            let gd = GpuMatrix::upload(c, g.view()).unwrap();
            gpu::adam_step(c, &adam, &mut pd, &gd, &mut sd).unwrap();
        }
        let tol = Tolerance::new(1e-5, 1e-6);
        tol.assert_close("param", &pd.download(c).unwrap().view(), &p.view());
        let back = sd.download(c).unwrap();
        assert_eq!(back.t, st.t);
        tol.assert_close("m", &back.m().view(), &st.m().view());
        tol.assert_close("v", &back.v().view(), &st.v().view());
        let wrong = GpuMatrix::zeros(c, 9, 37).unwrap();
        let e = gpu::adam_step(c, &adam, &mut pd, &wrong, &mut sd).unwrap_err();
        assert!(matches!(e, Error::Shape { .. }), "{e}");
        let bad = Adam { lr: -1.0, ..adam };
        let e = gpu::adam_step(
            c,
            &bad,
            &mut pd,
            &GpuMatrix::zeros(c, 37, 9).unwrap(),
            &mut sd,
        );
        assert!(matches!(e, Err(Error::Param { .. })), "{e:?}");
    }

    #[test]
    fn an_f64_model_on_the_gpu_is_an_error() {
        let Some(be) = gpu_backend() else { return };
        let cfg = small(RecGoatConfig::paper(), false);
        let e = RecGoat::<f64>::new(cfg, &common::tiny(), be).unwrap_err();
        assert!(
            matches!(e, Error::Param { .. }) && e.to_string().contains("f32"),
            "{e}"
        );
    }
}
