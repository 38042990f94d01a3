//! Every fast path against the slow f64 reference, on every available backend.

mod common;

use ndarray::{Array2, Axis};
use recgoat_core::testing::{cloud_problem, randn, rng, uniform, CloudProblem, Tolerance};
use recgoat_core::transport::{self, reference, *};
use recgoat_core::{Backend, Par};

/// Expands one test body per backend (`fn case(be: &Backend)`), labelled by the backend name.
macro_rules! per_backend {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn cpu_seq() { super::$name(&recgoat_core::Backend::Cpu(recgoat_core::Par::Seq)) }
            #[test]
            fn cpu_rayon() { super::$name(&recgoat_core::Backend::Cpu(recgoat_core::Par::Rayon(3))) }
        }
    )*};
}

per_backend!(
    log_iterations_match_reference,
    unbalanced_iterations_match_reference,
    online_geometry_matches_dense,
    converged_value_is_the_primal_objective,
    scaling_domain_matches_log_domain,
    eps_schedule_reaches_the_same_solution,
    f32_matches_f64,
    batch_equals_single_solves,
    plan_and_marginals_are_consistent,
);

fn problem(seed: u64, n: usize, m: usize) -> CloudProblem<f64> {
    cloud_problem(seed, n, m, 3)
}

/// A config that runs exactly `iters` iterations (the tolerance cannot be met).
fn fixed_iters(eps: f64, iters: usize) -> SinkhornConfig<f64> {
    SinkhornConfig::new(Epsilon::Absolute(eps))
        .with_tol(1e-300, ErrorNorm::L1)
        .with_iters(iters, 1)
}

fn log_iterations_match_reference(be: &Backend) {
    // rectangular, different masses per point, and an eps small enough that absorption matters
    for &(n, m, eps, iters) in &[
        (7usize, 5usize, 0.5, 3usize),
        (13, 19, 0.05, 40),
        (1, 4, 0.2, 5),
    ] {
        let CloudProblem { cost: c, a, b, .. } = problem(n as u64, n, m);
        let out = sinkhorn(
            &Geometry::dense(c.view()).unwrap(),
            a.view(),
            b.view(),
            &fixed_iters(eps, iters),
            be,
        )
        .unwrap();
        // a single source row is solved exactly by one iteration (error exactly 0), others run to the cap
        let expected_iters = if n == 1 { 1 } else { iters };
        assert_eq!(
            out.iterations, expected_iters,
            "n={n}: {:?}",
            out.error_history
        );
        let (f, g) = reference::sinkhorn_log(&c, &a, &b, eps, (None, None), out.iterations);
        let tol = Tolerance::new(1e-9, 1e-11);
        tol.assert_close("f", &out.f.view(), &f.view());
        tol.assert_close("g", &out.g.view(), &g.view());
    }
}

fn unbalanced_iterations_match_reference(be: &Backend) {
    let CloudProblem { cost: c, a, b, .. } = problem(3, 9, 6);
    let b = b * 1.7; // masses differ
    for rho in [(Some(0.3), Some(2.0)), (None, Some(0.5)), (Some(1.0), None)] {
        if rho.0.is_none() && rho.1.is_none() {
            continue;
        }
        let mut cfg = fixed_iters(0.1, 25);
        cfg.marginal_a = rho.0.map_or(Marginal::Balanced, Marginal::Kl);
        cfg.marginal_b = rho.1.map_or(Marginal::Balanced, Marginal::Kl);
        let out = sinkhorn(
            &Geometry::dense(c.view()).unwrap(),
            a.view(),
            b.view(),
            &cfg,
            be,
        )
        .unwrap();
        let (f, g) = reference::sinkhorn_log(&c, &a, &b, 0.1, rho, 25);
        let tol = Tolerance::new(1e-9, 1e-11);
        tol.assert_close("f", &out.f.view(), &f.view());
        tol.assert_close("g", &out.g.view(), &g.view());
    }
    // Tau(t) is Kl(eps t / (1 - t))
    let mut by_tau = fixed_iters(0.1, 10);
    by_tau.marginal_a = Marginal::Tau(0.75);
    by_tau.marginal_b = Marginal::Tau(0.75);
    let out = sinkhorn(
        &Geometry::dense(c.view()).unwrap(),
        a.view(),
        b.view(),
        &by_tau,
        be,
    )
    .unwrap();
    let (f, _) = reference::sinkhorn_log(&c, &a, &b, 0.1, (Some(0.3), Some(0.3)), 10);
    Tolerance::new(1e-9, 1e-11).assert_close("f (tau)", &out.f.view(), &f.view());
}

fn online_geometry_matches_dense(be: &Backend) {
    // m large enough that the online geometry splits rows into several blocks
    let CloudProblem {
        x,
        y,
        cost: c,
        a,
        b,
        ..
    } = problem(11, 40, 3000);
    let cfg = fixed_iters(0.3, 6);
    let dense = sinkhorn(
        &Geometry::dense(c.view()).unwrap(),
        a.view(),
        b.view(),
        &cfg,
        be,
    )
    .unwrap();
    let online = sinkhorn(
        &Geometry::sq_euclidean(x.view(), y.view()).unwrap(),
        a.view(),
        b.view(),
        &cfg,
        be,
    )
    .unwrap();
    let tol = Tolerance::new(1e-8, 1e-10);
    tol.assert_close("f", &online.f.view(), &dense.f.view());
    tol.assert_close("g", &online.g.view(), &dense.g.view());
    tol.assert_scalar("cost", online.transport_cost, dense.transport_cost);
    let geom = Geometry::sq_euclidean(x.view(), y.view()).unwrap();
    tol.assert_close("to_dense", &geom.to_dense().view(), &c.view());
    for s in [EpsScale::Mean, EpsScale::Max, EpsScale::Median] {
        let on = geom.statistic(s, be.par());
        let de = Geometry::dense(c.view()).unwrap().statistic(s, be.par());
        tol.assert_scalar(&format!("{s:?}"), on, de);
    }
}

fn converged_value_is_the_primal_objective(be: &Backend) {
    let CloudProblem { cost: c, a, b, .. } = problem(5, 8, 11);
    for rho in [(None, None), (Some(0.5), Some(0.8))] {
        let cfg = SinkhornConfig::new(Epsilon::Absolute(0.2))
            .with_tol(1e-13, ErrorNorm::L1)
            .with_iters(5000, 1)
            .with_marginals(
                rho.0.map_or(Marginal::Balanced, Marginal::Kl),
                rho.1.map_or(Marginal::Balanced, Marginal::Kl),
            )
            .with_plan(true);
        let out = sinkhorn(
            &Geometry::dense(c.view()).unwrap(),
            a.view(),
            b.view(),
            &cfg,
            be,
        )
        .unwrap();
        assert!(out.converged, "{rho:?}: {:?}", out.termination);
        let p = out.plan.as_ref().unwrap();
        let primal = reference::primal(&c, &a, &b, p, 0.2, rho);
        // strong duality at the optimum
        Tolerance::new(1e-9, 1e-12).assert_scalar("dual value vs primal", out.value, primal);
        let cost: f64 = (p * &c).sum();
        Tolerance::new(1e-12, 1e-14).assert_scalar("transport cost", out.transport_cost, cost);
    }
}

fn scaling_domain_matches_log_domain(be: &Backend) {
    let CloudProblem { cost: c, a, b, .. } = problem(8, 12, 9);
    let cfg = SinkhornConfig::new(Epsilon::Absolute(0.5))
        .with_tol(1e-12, ErrorNorm::L2)
        .with_iters(3000, 1);
    let geom = Geometry::dense(c.view()).unwrap();
    let log = sinkhorn(&geom, a.view(), b.view(), &cfg, be).unwrap();
    let sc = sinkhorn(
        &geom,
        a.view(),
        b.view(),
        &cfg.clone().with_domain(Domain::Scaling),
        be,
    )
    .unwrap();
    assert!(log.converged && sc.converged);
    let tol = Tolerance::new(1e-7, 1e-9);
    // potentials are unique up to (f + t, g - t): compare f + g pairs through the plan and value
    tol.assert_scalar("value", sc.value, log.value);
    tol.assert_close("row sums", &sc.row_sums.view(), &log.row_sums.view());
    let shift = sc.f[0] - log.f[0];
    tol.assert_close("f", &(&sc.f - shift).view(), &log.f.view());
    tol.assert_close("g", &(&sc.g + shift).view(), &log.g.view());
}

fn eps_schedule_reaches_the_same_solution(be: &Backend) {
    let CloudProblem { cost: c, a, b, .. } = problem(9, 15, 15);
    let geom = Geometry::dense(c.view()).unwrap();
    let target = Epsilon::relative(EpsScale::Mean, 0.01);
    let base = SinkhornConfig::new(target)
        .with_tol(1e-10, ErrorNorm::L1)
        .with_iters(20000, 5);
    let direct = sinkhorn(&geom, a.view(), b.view(), &base, be).unwrap();
    let scaled = base.clone().with_schedule(EpsSchedule::Geometric {
        start: Epsilon::relative(EpsScale::Max, 1.0),
        decay: 0.5,
        stage_iters: 50,
    });
    let sched = sinkhorn(&geom, a.view(), b.view(), &scaled, be).unwrap();
    assert!(direct.converged && sched.converged);
    assert!(
        sched.total_iterations > sched.iterations,
        "intermediate stages ran"
    );
    assert!(
        sched.iterations < direct.iterations,
        "warm start saves final-stage iterations"
    );
    Tolerance::new(1e-6, 1e-9).assert_scalar("value", sched.value, direct.value);
    Tolerance::new(1e-6, 1e-9).assert_scalar("eps", sched.eps, direct.eps);
}

fn f32_matches_f64(be: &Backend) {
    let CloudProblem {
        x,
        y,
        cost: c,
        a,
        b,
        ..
    } = problem(12, 30, 25);
    let cfg64 = SinkhornConfig::new(Epsilon::Absolute(0.1))
        .with_tol(1e-9, ErrorNorm::L1)
        .with_iters(2000, 5);
    let out64 = sinkhorn(
        &Geometry::dense(c.view()).unwrap(),
        a.view(),
        b.view(),
        &cfg64,
        be,
    )
    .unwrap();
    let (x32, y32) = (x.mapv(|v| v as f32), y.mapv(|v| v as f32));
    let (a32, b32) = (a.mapv(|v| v as f32), b.mapv(|v| v as f32));
    let cfg32 = SinkhornConfig::new(Epsilon::Absolute(0.1f32))
        .with_tol(1e-5, ErrorNorm::L1)
        .with_iters(2000, 5);
    let out32 = sinkhorn(
        &Geometry::sq_euclidean(x32.view(), y32.view()).unwrap(),
        a32.view(),
        b32.view(),
        &cfg32,
        be,
    )
    .unwrap();
    assert!(out64.converged && out32.converged);
    Tolerance::new(1e-3, 1e-4).assert_scalar("value", out32.value as f64, out64.value);
    let shift = out32.f[0] as f64 - out64.f[0];
    Tolerance::new(1e-3, 2e-3).assert_close(
        "f",
        &(out32.f.mapv(|v| v as f64) - shift).view(),
        &out64.f.view(),
    );
}

fn batch_equals_single_solves(be: &Backend) {
    let sizes = [(4usize, 6usize), (9, 3), (5, 5), (12, 2)];
    let data: Vec<_> = sizes
        .iter()
        .enumerate()
        .map(|(k, &(n, m))| problem(100 + k as u64, n, m))
        .collect();
    let cfg = SinkhornConfig::new(Epsilon::relative(EpsScale::Median, 0.2))
        .with_tol(1e-11, ErrorNorm::L1);
    let batch: Vec<BatchProblem<'_, f64>> = data
        .iter()
        .map(|CloudProblem { cost: c, a, b, .. }| BatchProblem {
            geom: Geometry::dense(c.view()).unwrap(),
            a: a.view(),
            b: b.view(),
        })
        .collect();
    let outs = sinkhorn_batch(&batch, &cfg, be);
    for (CloudProblem { cost: c, a, b, .. }, out) in data.iter().zip(outs) {
        let out = out.unwrap();
        let single = sinkhorn(
            &Geometry::dense(c.view()).unwrap(),
            a.view(),
            b.view(),
            &cfg,
            &Backend::Cpu(Par::Seq),
        )
        .unwrap();
        assert_eq!(
            out.f, single.f,
            "batch is bit-identical to a sequential solve"
        );
        assert_eq!(out.value, single.value);
    }
}

fn plan_and_marginals_are_consistent(be: &Backend) {
    let CloudProblem { cost: c, a, b, .. } = problem(21, 10, 14);
    let geom = Geometry::dense(c.view()).unwrap();
    let cfg = SinkhornConfig::new(Epsilon::Absolute(0.2))
        .with_tol(1e-10, ErrorNorm::LInf)
        .with_plan(true);
    let out = sinkhorn(&geom, a.view(), b.view(), &cfg, be).unwrap();
    let p = out.plan.clone().unwrap();
    let tol = Tolerance::new(0.0, 1e-10);
    tol.assert_close("rows", &p.sum_axis(Axis(1)).view(), &a.view());
    tol.assert_close("cols", &p.sum_axis(Axis(0)).view(), &b.view());
    Tolerance::F64_EXACT.assert_close(
        "plan_for",
        &out.plan_for(&geom, a.view(), b.view()).unwrap().view(),
        &p.view(),
    );
    let refp = reference::plan(&c, &a, &b, &out.f, &out.g, out.eps);
    Tolerance::new(1e-12, 1e-15).assert_close("plan vs reference formula", &p.view(), &refp.view());
    assert!(out.marginal_error <= 1e-10 && out.converged);
    assert!(out.error_history.windows(2).all(|w| w[0].0 < w[1].0));
}

#[test]
fn dimension_cost_matches_the_naive_tensor() {
    let mut r = rng(4);
    let m: Array2<f64> = randn(&mut r, (17, 5));
    let z: Array2<f64> = uniform(&mut r, (17, 5), -2.0, 2.0);
    let c = transport::dimension_cost(m.view(), z.view(), 100.0).unwrap();
    let naive = Array2::from_shape_fn((5, 5), |(a, b)| {
        100.0
            * (0..17)
                .map(|i| (m[[i, a]] - z[[i, b]]).powi(2))
                .sum::<f64>()
            / 17.0
    });
    Tolerance::F64_EXACT
        .for_reduction(17)
        .assert_close("dimension cost", &c.view(), &naive.view());
}

// ---------------------------------------------------------------- graphs, LightGCN, graph attention

mod graphs {
    use ndarray::{Array1, Array2};
    use recgoat_core::attention::*;
    use recgoat_core::graph::*;
    use recgoat_core::testing::{randn, rng, uniform, Tolerance};
    use recgoat_core::Backend;
    use std::collections::BTreeSet;

    per_backend!(
        spmm_matches_dense,
        lightgcn_matches_dense_powers,
        knn_matches_brute_force,
        gat_matches_dense_reference,
        gat_training_mode_is_deterministic_across_backends,
    );

    /// A random directed graph with `n` nodes, about `deg` in-edges each, optional weights.
    pub fn random_graph(
        seed: u64,
        n: usize,
        m: usize,
        deg: usize,
        weighted: bool,
    ) -> CsrGraph<f64> {
        use rand::Rng;
        let mut r = rng(seed);
        let mut edges = Vec::new();
        for i in 0..n {
            for _ in 0..deg {
                edges.push((i, r.gen_range(0..m)));
            }
        }
        let w: Vec<f64> = (0..edges.len()).map(|_| r.gen_range(0.1..2.0)).collect();
        CsrGraph::from_edges(n, m, &edges, weighted.then_some(&w[..])).unwrap()
    }

    /// The graph in f32 (the same edges and weights).
    fn to_f32(a: &CsrGraph<f64>) -> CsrGraph<f32> {
        CsrGraph::<f32>::new(
            a.n_rows(),
            a.n_cols(),
            a.indptr().to_vec(),
            a.indices().to_vec(),
            a.weights().map(|w| w.iter().map(|&v| v as f32).collect()),
        )
        .unwrap()
    }

    fn spmm_matches_dense(be: &Backend) {
        // widths: generic kernel (9), and the f32 AVX2 kernel's 8-column tiles (8), one 64-column tile (64),
        // both (72, 136)
        for (weighted, d) in [
            (false, 9),
            (true, 9),
            (false, 8),
            (true, 64),
            (false, 72),
            (true, 136),
        ] {
            let a = random_graph(1, 23, 17, 4, weighted);
            let x: Array2<f64> = randn(&mut rng(2), (17, d));
            let y = spmm(&a, x.view(), be.par()).unwrap();
            Tolerance::F64_EXACT.assert_close("spmm", &y.view(), &spmm_reference(&a, &x).view());
            let gy: Array2<f64> = randn(&mut rng(3), (23, d));
            let gx = spmm_backward(&a, gy.view(), be.par()).unwrap();
            Tolerance::F64_EXACT.assert_close(
                "spmm_backward",
                &gx.view(),
                &a.to_dense().t().dot(&gy).view(),
            );
            // f32 path against f64
            let a32 = to_f32(&a);
            let y32 = spmm(&a32, x.mapv(|v| v as f32).view(), be.par()).unwrap();
            Tolerance::F32.assert_close("spmm f32", &y32.mapv(f64::from).view(), &y.view());
            let gx32 = spmm_backward(&a32, gy.mapv(|v| v as f32).view(), be.par()).unwrap();
            Tolerance::F32.assert_close(
                "spmm_backward f32",
                &gx32.mapv(f64::from).view(),
                &gx.view(),
            );
        }
    }

    fn lightgcn_matches_dense_powers(be: &Backend) {
        let pairs: Vec<(usize, usize)> = (0..40).map(|k| ((k * 7) % 11, (k * 5) % 13)).collect();
        let a = bipartite_user_item::<f64>(11, 13, &pairs)
            .unwrap()
            .sym_normalized()
            .unwrap();
        let dense = a.to_dense();
        // widths for the generic kernel (6) and the f32 AVX2 kernel's tiles (72)
        for d in [6, 72] {
            let e0: Array2<f64> = randn(&mut rng(4), (24, d));
            let mut want = e0.clone();
            let mut cur = e0.clone();
            for _ in 0..3 {
                cur = dense.dot(&cur);
                want += &cur;
            }
            want /= 4.0;
            let got = lightgcn_forward(&a, e0.view(), 3, be.par()).unwrap();
            Tolerance::F64_EXACT.assert_close("lightgcn", &got.view(), &want.view());
            let go: Array2<f64> = randn(&mut rng(5), (24, d));
            let mut want_b = go.clone();
            let mut cur = go.clone();
            for _ in 0..3 {
                cur = dense.t().dot(&cur);
                want_b += &cur;
            }
            want_b /= 4.0;
            let got_b = lightgcn_backward(&a, go.view(), 3, be.par()).unwrap();
            Tolerance::F64_EXACT.assert_close("lightgcn backward", &got_b.view(), &want_b.view());
            let a32 = to_f32(&a);
            let got32 = lightgcn_forward(&a32, e0.mapv(|v| v as f32).view(), 3, be.par()).unwrap();
            Tolerance::F32.assert_close(
                "lightgcn f32",
                &got32.mapv(f64::from).view(),
                &want.view(),
            );
            let got_b32 =
                lightgcn_backward(&a32, go.mapv(|v| v as f32).view(), 3, be.par()).unwrap();
            Tolerance::F32.assert_close(
                "lightgcn backward f32",
                &got_b32.mapv(f64::from).view(),
                &want_b.view(),
            );
        }
    }

    /// Brute force: all cosine similarities, sorted by (similarity desc, index asc).
    pub fn brute_knn(x: &Array2<f64>, k: usize) -> Vec<BTreeSet<usize>> {
        let n = x.nrows();
        let norms: Array1<f64> = x.rows().into_iter().map(|r| r.dot(&r).sqrt()).collect();
        (0..n)
            .map(|i| {
                let mut c: Vec<(f64, usize)> = (0..n)
                    .filter(|&j| j != i)
                    .map(|j| (x.row(i).dot(&x.row(j)) / (norms[i] * norms[j]), j))
                    .collect();
                c.sort_by(|p, q| q.0.partial_cmp(&p.0).unwrap().then(p.1.cmp(&q.1)));
                c[..k].iter().map(|p| p.1).collect()
            })
            .collect()
    }

    fn knn_matches_brute_force(be: &Backend) {
        let x: Array2<f64> = uniform(&mut rng(6), (57, 8), -1.0, 1.0);
        let want = brute_knn(&x, 5);
        let mut cfg = KnnConfig::new(5);
        cfg.block_rows = 7; // several blocks per chunk
        cfg.symmetric = false;
        let g = knn_graph(x.view(), &cfg, be.par()).unwrap();
        for (i, w) in want.iter().enumerate() {
            let got: BTreeSet<usize> = g.row(i).iter().map(|&j| j as usize).collect();
            assert_eq!(&got, w, "row {i}");
        }
        cfg.symmetric = true;
        cfg.self_loops = true;
        let s = knn_graph(x.view(), &cfg, be.par()).unwrap();
        for i in 0..57 {
            let mut expect: BTreeSet<usize> = want[i].clone();
            expect.extend((0..57).filter(|&j| want[j].contains(&i)));
            expect.insert(i);
            let got: BTreeSet<usize> = s.row(i).iter().map(|&j| j as usize).collect();
            assert_eq!(got, expect, "symmetrised row {i}");
        }
        // one-hot rows e_(i mod 16): every similarity is exactly 1 (the row's two or three copies) or 0 (the
        // rest), whatever the GEMM's summation order, so the smaller index decides both tie groups
        let tied = Array2::from_shape_fn((57, 16), |(i, c)| f64::from(u8::from(i % 16 == c)));
        let want = brute_knn(&tied, 5);
        cfg.symmetric = false;
        cfg.self_loops = false;
        let g = knn_graph(tied.view(), &cfg, be.par()).unwrap();
        for (i, w) in want.iter().enumerate() {
            let got: BTreeSet<usize> = g.row(i).iter().map(|&j| j as usize).collect();
            assert_eq!(&got, w, "tied row {i}");
        }
    }

    fn gat_matches_dense_reference(be: &Backend) {
        let g = random_graph(7, 12, 12, 3, false);
        for (name, cfg) in crate::common::gat_variants() {
            let layer = GatLayer::new(cfg).unwrap();
            let params = GatParams::init(&cfg, &mut rng(8));
            let x: Array2<f64> = randn(&mut rng(9), (12, cfg.in_dim));
            let (out, cache) = layer
                .forward(&params, &g, x.view(), Mode::Eval, be.par())
                .unwrap();
            let want = reference_forward(&cfg, &params, &g.with_self_loops().unwrap(), &x);
            Tolerance::F64_EXACT.assert_close(name, &out.view(), &want.view());
            let looped = g.with_self_loops().unwrap();
            let att = layer.attention(&g, &cache).unwrap();
            assert_eq!(att.len(), looped.nnz() * cfg.heads);
            // every node's attention sums to 1 per head
            for i in 0..looped.n_rows() {
                for h in 0..cfg.heads {
                    let s: f64 = looped.row_range(i).map(|e| att[e * cfg.heads + h]).sum();
                    assert!((s - 1.0).abs() < 1e-12, "{name}: node {i} head {h}: {s}");
                }
            }
        }
    }

    fn gat_training_mode_is_deterministic_across_backends(be: &Backend) {
        let g = random_graph(10, 30, 30, 4, false);
        let cfg = GatConfig {
            feat_drop: 0.3,
            attn_drop: 0.2,
            ..GatConfig::<f64>::new(4, 8, 2).unwrap()
        };
        let layer = GatLayer::new(cfg).unwrap();
        let params = GatParams::init(&cfg, &mut rng(11));
        let x: Array2<f64> = randn(&mut rng(12), (30, 4));
        let mode = Mode::Train { seed: 99 };
        let (o1, c1) = layer
            .forward(&params, &g, x.view(), mode, be.par())
            .unwrap();
        let (o2, _) = layer
            .forward(&params, &g, x.view(), mode, recgoat_core::Par::Seq)
            .unwrap();
        assert_eq!(o1, o2, "same seed, same output on every backend");
        let (o3, _) = layer
            .forward(&params, &g, x.view(), Mode::Train { seed: 100 }, be.par())
            .unwrap();
        assert_ne!(o1, o3, "another seed draws other masks");
        let (oe, _) = layer
            .forward(&params, &g, x.view(), Mode::Eval, be.par())
            .unwrap();
        assert_ne!(o1, oe, "dropout is off in eval mode");
        let go: Array2<f64> = randn(&mut rng(13), o1.dim());
        let gr1 = layer
            .backward(&params, &g, &c1, go.view(), be.par())
            .unwrap();
        let gr2 = layer
            .backward(&params, &g, &c1, go.view(), recgoat_core::Par::Seq)
            .unwrap();
        Tolerance::F64_EXACT.assert_close(
            "grad_w across backends",
            &gr1.grad_w.view(),
            &gr2.grad_w.view(),
        );
        Tolerance::F64_EXACT.assert_close(
            "grad_x across backends",
            &gr1.grad_x.view(),
            &gr2.grad_x.view(),
        );
    }
}

#[test]
fn propagation_into_reused_buffers_equals_allocating_calls() {
    use recgoat_core::graph::*;
    let pairs: Vec<(usize, usize)> = (0..30).map(|k| ((k * 7) % 9, (k * 5) % 11)).collect();
    let a = bipartite_user_item::<f64>(9, 11, &pairs)
        .unwrap()
        .sym_normalized()
        .unwrap();
    let mut bufs = PropagationBuffers::new();
    let mut out = Array2::<f64>::zeros((20, 5));
    for (seed, layers) in [(1u64, 3usize), (2, 1), (3, 4)] {
        let e0: Array2<f64> = randn(&mut rng(seed), (20, 5));
        for par in [recgoat_core::Par::Seq, recgoat_core::Par::Rayon(3)] {
            lightgcn_forward_into(&a, e0.view(), layers, out.view_mut(), &mut bufs, par).unwrap();
            assert_eq!(out, lightgcn_forward(&a, e0.view(), layers, par).unwrap());
            lightgcn_backward_into(&a, e0.view(), layers, out.view_mut(), &mut bufs, par).unwrap();
            assert_eq!(out, lightgcn_backward(&a, e0.view(), layers, par).unwrap());
        }
    }
    let e = lightgcn_forward_into(
        &a,
        Array2::<f64>::zeros((20, 5)).view(),
        2,
        Array2::<f64>::zeros((20, 4)).view_mut(),
        &mut bufs,
        recgoat_core::Par::Seq,
    )
    .unwrap_err();
    assert!(e.to_string().contains("out"), "{e}");
}

// ---------------------------------------------------------------- InfoNCE

mod contrastive {
    use ndarray::{Array1, Array2};
    use recgoat_core::contrastive::*;
    use recgoat_core::testing::{randn, rng, uniform, Tolerance};
    use recgoat_core::Backend;

    per_backend!(info_nce_matches_the_naive_reference);

    fn info_nce_matches_the_naive_reference(be: &Backend) {
        let mut r = rng(40);
        let (v1, v2): (Array2<f64>, Array2<f64>) = (randn(&mut r, (37, 6)), randn(&mut r, (37, 6)));
        let negs: Array2<f64> = randn(&mut r, (5, 6));
        let wts: Array1<f64> = uniform(&mut r, 37, 0.0, 2.0);
        for direction in [Direction::OneWay, Direction::Symmetric] {
            for reduction in [Reduction::Mean, Reduction::Sum] {
                for normalize in [true, false] {
                    // weights without negatives: the symmetric shared-similarity path takes them too
                    for (negatives, weights) in
                        [(None, None), (None, Some(&wts)), (Some(&negs), Some(&wts))]
                    {
                        // blocks of 8 rows: several blocks per chunk, and a ragged last block
                        let cfg = InfoNceConfig {
                            temperature: 0.3,
                            normalize,
                            direction,
                            reduction,
                            block_rows: 8,
                        };
                        let out = info_nce(
                            v1.view(),
                            v2.view(),
                            negatives.map(|n| n.view()),
                            weights.map(|w| w.view()),
                            &cfg,
                            be.par(),
                        )
                        .unwrap();
                        let want = info_nce_reference(&v1, &v2, negatives, weights, &cfg);
                        Tolerance::new(1e-12, 1e-12).assert_scalar(
                            &format!(
                                "{direction:?} {reduction:?} norm={normalize} extra={}",
                                negatives.is_some()
                            ),
                            out.loss,
                            want,
                        );
                    }
                }
            }
        }
        // f32 against f64, B = 300 over 3 blocks
        let (a, b): (Array2<f64>, Array2<f64>) =
            (randn(&mut r, (300, 16)), randn(&mut r, (300, 16)));
        let cfg64 = InfoNceConfig {
            block_rows: 128,
            ..InfoNceConfig::<f64>::default()
        };
        let cfg32 = InfoNceConfig {
            block_rows: 128,
            ..InfoNceConfig::<f32>::default()
        };
        // one-way, then symmetric (one shared similarity matrix in f32 and f64 alike)
        for direction in [Direction::OneWay, Direction::Symmetric] {
            let cfg64 = InfoNceConfig { direction, ..cfg64 };
            let cfg32 = InfoNceConfig { direction, ..cfg32 };
            let o64 = info_nce(a.view(), b.view(), None, None, &cfg64, be.par()).unwrap();
            let o32 = info_nce(
                a.mapv(|v| v as f32).view(),
                b.mapv(|v| v as f32).view(),
                None,
                None,
                &cfg32,
                be.par(),
            )
            .unwrap();
            let what = format!("{direction:?} f32");
            Tolerance::F32.assert_scalar(&format!("{what} loss"), f64::from(o32.loss), o64.loss);
            for (name, g32, g64) in [
                ("grad_v1", &o32.grad_v1, &o64.grad_v1),
                ("grad_v2", &o32.grad_v2, &o64.grad_v2),
            ] {
                Tolerance::new(1e-3, 1e-6).assert_close(
                    &format!("{what} {name}"),
                    &g32.mapv(f64::from).view(),
                    &g64.view(),
                );
            }
        }
    }
}

#[test]
fn symmetric_info_nce_repeats_exactly_whatever_ran_before_on_the_thread() {
    // the shared symmetric path keeps its B x B buffer between calls on a thread: a call must give the same
    // numbers after a larger call, a smaller one, and with other values left in the buffer
    use recgoat_core::contrastive::*;
    use recgoat_core::testing::{randn, rng};
    let mut r = rng(91);
    let cfg = InfoNceConfig {
        direction: Direction::Symmetric,
        block_rows: 5,
        ..InfoNceConfig::<f32>::default()
    };
    let views = |r: &mut _, b| -> (ndarray::Array2<f32>, ndarray::Array2<f32>) {
        (randn(r, (b, 8)), randn(r, (b, 8)))
    };
    let (a, b) = views(&mut r, 12);
    for par in [recgoat_core::Par::Seq, recgoat_core::Par::Rayon(3)] {
        let first = info_nce(a.view(), b.view(), None, None, &cfg, par).unwrap();
        for rows in [40, 7, 12] {
            let (x, y) = views(&mut r, rows);
            info_nce(x.view(), y.view(), None, None, &cfg, par).unwrap();
            let again = info_nce(a.view(), b.view(), None, None, &cfg, par).unwrap();
            assert_eq!(
                first.loss.to_bits(),
                again.loss.to_bits(),
                "after B = {rows}"
            );
            assert_eq!(first.grad_v1, again.grad_v1, "after B = {rows}");
            assert_eq!(first.grad_v2, again.grad_v2, "after B = {rows}");
        }
    }
}

// ---------------------------------------------------------------- small layers against references

mod layers {
    use ndarray::{array, Array2};
    use recgoat_core::nn::*;
    use recgoat_core::testing::{randn, rng, Tolerance};

    #[test]
    fn adam_matches_a_hand_written_f64_loop() {
        let mut r = rng(70);
        let mut p: Array2<f64> = randn(&mut r, (3, 2));
        let mut reference = p.clone();
        let opt = Adam {
            weight_decay: 0.01,
            ..Adam::new(0.05)
        };
        let mut st = AdamState::new((3, 2));
        let (mut m, mut v) = (Array2::<f64>::zeros((3, 2)), Array2::<f64>::zeros((3, 2)));
        for t in 1..=5 {
            let g: Array2<f64> = randn(&mut r, (3, 2));
            opt.step(p.view_mut(), g.view(), &mut st).unwrap();
            let g = &g + &(&reference * 0.01);
            m = &m * 0.9 + &(&g * 0.1);
            v = &v * 0.999 + &(&g * &g * 0.001);
            let mhat = &m / (1.0 - 0.9f64.powi(t));
            let vhat = &v / (1.0 - 0.999f64.powi(t));
            reference = &reference - &(&mhat * 0.05 / &(vhat.mapv(f64::sqrt) + 1e-8));
        }
        Tolerance::F64_EXACT.assert_close("adam", &p.view(), &reference.view());
        assert_eq!(st.t, 5);
    }

    #[test]
    fn adam_on_contiguous_and_strided_views_agrees_bit_for_bit() {
        // f32 (the vectorised path's type): 37 x 24 contiguous against the same values seen through a
        // transposed (strided) view, which takes the element-wise path
        let mut r = rng(71);
        let p0: Array2<f32> = randn(&mut r, (37, 24));
        let opt = Adam {
            weight_decay: 0.01,
            ..Adam::new(0.05f32)
        };
        let (mut a, mut b) = (p0.clone(), p0.t().to_owned());
        let (mut sa, mut sb) = (AdamState::new((37, 24)), AdamState::new((37, 24)));
        for _ in 0..4 {
            let g: Array2<f32> = randn(&mut r, (37, 24));
            opt.step(a.view_mut(), g.view(), &mut sa).unwrap();
            let mut bt = b.view_mut().reversed_axes();
            let gt = g.t().to_owned();
            opt.step(bt.view_mut(), gt.t(), &mut sb).unwrap();
        }
        assert_eq!(a, b.t(), "parameters");
        assert!(a != p0, "the steps moved the parameters");
    }

    #[test]
    fn sparse_rows_gather_and_lazy_adam() {
        let table = array![[1.0f64, 2.0], [3.0, 4.0], [5.0, 6.0]];
        assert_eq!(
            gather(table.view(), &[2, 0, 2]).unwrap(),
            array![[5.0, 6.0], [1.0, 2.0], [5.0, 6.0]]
        );
        let g = gather_backward(
            &[2, 0, 2],
            array![[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]].view(),
        )
        .unwrap();
        assert_eq!(g.rows, vec![0, 2]);
        assert_eq!(
            g.values,
            array![[2.0, 2.0], [4.0, 4.0]],
            "repeated ids are summed"
        );
        let mut p = table.clone();
        let mut st = AdamState::new((3, 2));
        Adam::new(0.1).step_rows(p.view_mut(), &g, &mut st).unwrap();
        assert_eq!(p.row(1), table.row(1), "untouched rows keep their values");
        assert!(
            p.row(0)
                .iter()
                .zip(table.row(0))
                .all(|(a, b)| (b - a - 0.1).abs() < 1e-6),
            "first Adam step moves by lr"
        );
        assert!(gather(table.view(), &[3]).is_err());
    }

    #[test]
    fn dropout_is_seeded_scaled_and_off_in_eval() {
        let x = Array2::<f64>::ones((200, 50));
        let (y, m) = dropout(x.view(), 0.3, true, &mut rng(1)).unwrap();
        let kept = m.as_ref().unwrap().iter().filter(|&&s| s > 0.0).count() as f64 / 10_000.0;
        assert!((kept - 0.7).abs() < 0.03, "{kept}");
        assert!(y.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.7).abs() < 1e-12));
        let (y2, _) = dropout(x.view(), 0.3, true, &mut rng(1)).unwrap();
        assert_eq!(y, y2, "same seed, same mask");
        let (ye, me) = dropout(x.view(), 0.3, false, &mut rng(1)).unwrap();
        assert!(me.is_none() && ye == x);
        let g = randn::<f64, _, _>(&mut rng(2), (200, 50));
        Tolerance::F64_EXACT.assert_close(
            "dropout backward",
            &dropout_backward(g.view(), m.as_ref()).unwrap().view(),
            &(&g * m.as_ref().unwrap()).view(),
        );
        assert!(dropout(x.view(), 1.0, true, &mut rng(1)).is_err());
    }
}

#[test]
fn layer_norm_and_fusion_forward_match_naive_formulas() {
    use recgoat_core::nn::*;
    let mut r = rng(80);
    let x: Array2<f64> = randn(&mut r, (4, 5));
    let mut ln = LayerNorm::<f64>::new(5);
    ln.gamma = randn(&mut r, 5);
    ln.beta = randn(&mut r, 5);
    let (y, _) = ln.forward(x.view()).unwrap();
    let naive = Array2::from_shape_fn((4, 5), |(i, j)| {
        let row = x.row(i);
        let mean = row.sum() / 5.0;
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 5.0;
        ln.gamma[j] * (x[[i, j]] - mean) / (var + ln.eps).sqrt() + ln.beta[j]
    });
    Tolerance::F64_EXACT.assert_close("layer norm", &y.view(), &naive.view());
    let views: Vec<Array2<f64>> = (0..3).map(|_| randn(&mut r, (4, 5))).collect();
    let logits = ndarray::array![0.3, -1.0, 2.0];
    let vs: Vec<_> = views.iter().map(|v| v.view()).collect();
    let (f, w) = softmax_fusion(&vs, logits.view()).unwrap();
    let z: f64 = logits.iter().map(|l: &f64| l.exp()).sum();
    let naive = views
        .iter()
        .zip(&logits)
        .fold(Array2::<f64>::zeros((4, 5)), |acc, (v, l)| {
            acc + v * (l.exp() / z)
        });
    Tolerance::F64_EXACT.assert_close("fusion", &f.view(), &naive.view());
    Tolerance::F64_EXACT.assert_scalar("weight 2", w[2], 2f64.exp() / z);
}

// ---------------------------------------------------------------- evaluation

#[test]
fn evaluation_matches_the_naive_reference() {
    // 90 items, more than the largest k: the selection keeps a strict subset
    let want = check_evaluation(90, &[1, 5, 10, 20, 50], 90);
    assert!(want.users > 100 && want.recall[4] > want.recall[0]);
    // 400 items for k up to 5: long enough for the sampled bound that cuts the list before the selection
    let want = check_evaluation(400, &[1, 3, 5], 91);
    assert!(want.users > 100 && want.recall[2] > want.recall[0]);
}

/// `evaluate` against `evaluate_reference` on 150 users, `n_items` items, integer embeddings (f32 scores are
/// exact, so ties break identically: the smaller item id first), sequential and parallel.
fn check_evaluation(n_items: usize, ks: &[usize], seed: u64) -> recgoat_core::model::Metrics {
    use rand::Rng;
    use recgoat_core::model::{evaluate, evaluate_reference};
    let mut r = rng(seed);
    let users = Array2::<f64>::from_shape_simple_fn((150, 3), || r.gen_range(-3..=3) as f64);
    let items = Array2::<f64>::from_shape_simple_fn((n_items, 3), || r.gen_range(-3..=3) as f64);
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for u in 0..150 {
        for i in 0..n_items {
            match r.gen_range(0..10) {
                0 | 1 => train.push((u, i)),
                2 => test.push((u, i)),
                _ => {}
            }
        }
    }
    let want = evaluate_reference(&users, &items, &test, &[&train], ks);
    for par in [recgoat_core::Par::Seq, recgoat_core::Par::Rayon(3)] {
        let got = evaluate(
            users.mapv(|v| v as f32).view(),
            items.mapv(|v| v as f32).view(),
            &test,
            &[&train],
            ks,
            par,
        )
        .unwrap();
        assert_eq!(got.users, want.users);
        for (name, a, b) in [
            ("recall", &got.recall, &want.recall),
            ("ndcg", &got.ndcg, &want.ndcg),
            ("precision", &got.precision, &want.precision),
            ("hit", &got.hit, &want.hit),
        ] {
            Tolerance::F64_EXACT.assert_close(
                &format!("{n_items} items: {name}"),
                &ndarray::ArrayView1::from(&a[..]),
                &ndarray::ArrayView1::from(&b[..]),
            );
        }
    }
    want
}
