//! Mathematical properties of the solvers: the unregularised limit, invariances, f32 robustness, proptest.

use ndarray::{Array1, Array2, Axis};
use proptest::prelude::*;
use recgoat_core::testing::{naive_sq_euclidean, randn, rng, simplex, uniform, Tolerance};
use recgoat_core::transport::{reference, *};
use recgoat_core::{Backend, Par};

fn be() -> Backend {
    Backend::Cpu(Par::Seq)
}

#[test]
fn small_eps_approaches_brute_force_exact_ot() {
    // uniform weights, n = m <= 6: the exact optimum is a permutation (Birkhoff)
    for (seed, n) in [(1u64, 3usize), (2, 5), (3, 6)] {
        let c: Array2<f64> = uniform(&mut rng(seed), (n, n), 0.0, 1.0);
        let w = Array1::from_elem(n, 1.0 / n as f64);
        let exact = reference::exact_uniform_ot(&c);
        let mut gaps = Vec::new();
        for eps in [1e-1, 1e-2, 1e-3] {
            let cfg = SinkhornConfig::new(Epsilon::Absolute(eps))
                .with_tol(1e-7, ErrorNorm::L1)
                .with_iters(50_000, 10)
                .with_schedule(EpsSchedule::Geometric {
                    start: Epsilon::Absolute(1.0),
                    decay: 0.5,
                    stage_iters: 200,
                });
            let out = sinkhorn(
                &Geometry::dense(c.view()).unwrap(),
                w.view(),
                w.view(),
                &cfg,
                &be(),
            )
            .unwrap();
            // near-ties between assignments make Sinkhorn contract very slowly at moderate eps (the reference
            // iteration from zero is still at 3e-5 after 20k iterations on seed 2), so ask for 1e-6, not convergence
            assert!(
                out.marginal_error <= 1e-6,
                "n={n} eps={eps}: {:e}",
                out.marginal_error
            );
            // <P, C> can never beat the exact optimum, and the entropic bias is O(eps log n)
            assert!(
                out.transport_cost >= exact - 1e-12,
                "n={n} eps={eps}: {} < {exact}",
                out.transport_cost
            );
            assert!(
                out.transport_cost - exact <= 2.0 * eps * (n as f64).ln() + 1e-9,
                "n={n} eps={eps}"
            );
            gaps.push(out.transport_cost - exact);
        }
        assert!(
            gaps[2] <= gaps[0] + 1e-12,
            "the gap shrinks with eps: {gaps:?}"
        );
        assert!(
            gaps[2] < 1e-3,
            "n={n}: eps = 1e-3 is within 1e-3 of exact OT: {gaps:?}"
        );
    }
}

#[test]
fn plan_is_invariant_to_row_and_column_shifts_of_the_cost() {
    let mut r = rng(4);
    let c: Array2<f64> = uniform(&mut r, (8, 6), 0.0, 2.0);
    let (a, b) = (simplex::<f64>(&mut r, 8), simplex::<f64>(&mut r, 6));
    let (u, v): (Array1<f64>, Array1<f64>) =
        (uniform(&mut r, 8, 0.0, 3.0), uniform(&mut r, 6, 0.0, 3.0));
    let shifted = &c + &u.view().insert_axis(Axis(1)) + v.view().insert_axis(Axis(0));
    let cfg = SinkhornConfig::new(Epsilon::Absolute(0.1))
        .with_tol(1e-13, ErrorNorm::L1)
        .with_iters(50000, 1)
        .with_plan(true);
    let p1 = sinkhorn(
        &Geometry::dense(c.view()).unwrap(),
        a.view(),
        b.view(),
        &cfg,
        &be(),
    )
    .unwrap()
    .plan
    .unwrap();
    let p2 = sinkhorn(
        &Geometry::dense(shifted.view()).unwrap(),
        a.view(),
        b.view(),
        &cfg,
        &be(),
    )
    .unwrap()
    .plan
    .unwrap();
    Tolerance::new(1e-8, 1e-12).assert_close(
        "plan(C + u 1^T + 1 v^T) = plan(C)",
        &p2.view(),
        &p1.view(),
    );
}

#[test]
fn f32_log_domain_stays_finite_for_eps_from_1e_4_to_10_times_the_median() {
    let mut r = rng(5);
    let x: Array2<f32> = randn(&mut r, (48, 8));
    let y: Array2<f32> = randn::<f32, _, _>(&mut r, (40, 8)) * 2.0;
    let (a, b) = (simplex::<f32>(&mut r, 48), simplex::<f32>(&mut r, 40));
    for geom in [
        Geometry::sq_euclidean(x.view(), y.view()).unwrap(),
        Geometry::Dense(naive_sq_euclidean(&x, &y).into()),
    ] {
        for factor in [1e-4f32, 1e-3, 1e-2, 1e-1, 1.0, 10.0] {
            for schedule in [
                EpsSchedule::Constant,
                EpsSchedule::Geometric {
                    start: Epsilon::relative(EpsScale::Max, 1.0),
                    decay: 0.3,
                    stage_iters: 20,
                },
            ] {
                let cfg = SinkhornConfig::new(Epsilon::relative(EpsScale::Median, factor))
                    .with_tol(1e-5, ErrorNorm::L1)
                    .with_iters(300, 10)
                    .with_schedule(schedule);
                let out = sinkhorn(&geom, a.view(), b.view(), &cfg, &be()).unwrap();
                let label = format!("eps = {factor} x median, {schedule:?}");
                assert!(
                    out.f.iter().chain(out.g.iter()).all(|v| v.is_finite()),
                    "{label}: potentials"
                );
                assert!(
                    out.value.is_finite() && out.transport_cost.is_finite(),
                    "{label}: value {}",
                    out.value
                );
                assert!(out.marginal_error.is_finite(), "{label}: error");
                assert!(
                    out.row_sums.iter().all(|v| v.is_finite() && *v >= 0.0),
                    "{label}: row sums"
                );
                // 300 iterations suffice from 0.1 x median up; smaller eps only has to stay finite here
                if factor >= 1e-1 {
                    assert!(out.converged, "{label}: {:?}", out.error_history.last());
                }
            }
        }
    }
}

#[test]
fn scaling_domain_breaks_down_where_log_domain_does_not_and_says_so() {
    let mut r = rng(6);
    let x: Array2<f32> = randn(&mut r, (30, 4));
    let y: Array2<f32> = randn::<f32, _, _>(&mut r, (30, 4)) + 3.0;
    let w = Array1::from_elem(30, 1.0f32 / 30.0);
    let geom = Geometry::sq_euclidean(x.view(), y.view()).unwrap();
    let cfg = SinkhornConfig::new(Epsilon::relative(EpsScale::Mean, 0.01f32)).with_iters(200, 1);
    let sc = sinkhorn(
        &geom,
        w.view(),
        w.view(),
        &cfg.clone().with_domain(Domain::Scaling),
        &be(),
    )
    .unwrap();
    assert!(!sc.converged);
    assert!(
        matches!(sc.termination, Termination::NonFinite { .. }),
        "{:?}",
        sc.termination
    );
    let lg = sinkhorn(&geom, w.view(), w.view(), &cfg, &be()).unwrap();
    assert!(lg.f.iter().all(|v| v.is_finite()) && lg.value.is_finite());
}

#[test]
fn divergence_is_zero_on_identical_clouds_and_symmetric() {
    let mut r = rng(7);
    let x: Array2<f64> = randn(&mut r, (10, 3));
    let y: Array2<f64> = randn(&mut r, (8, 3));
    let (a, b) = (simplex::<f64>(&mut r, 10), simplex::<f64>(&mut r, 8));
    let cfg = SinkhornConfig::new(Epsilon::Absolute(0.3))
        .with_tol(1e-12, ErrorNorm::L1)
        .with_iters(20000, 1);
    let same = sinkhorn_divergence(x.view(), x.view(), a.view(), a.view(), &cfg, &be()).unwrap();
    assert!(same.value.abs() < 1e-10, "{}", same.value);
    let xy = sinkhorn_divergence(x.view(), y.view(), a.view(), b.view(), &cfg, &be()).unwrap();
    let yx = sinkhorn_divergence(y.view(), x.view(), b.view(), a.view(), &cfg, &be()).unwrap();
    Tolerance::new(1e-9, 1e-12).assert_scalar("S(a,b) = S(b,a)", xy.value, yx.value);
    assert!(xy.value > 0.0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// On random problems: converged outputs meet their marginals, the plan is non-negative, and
    /// `OT_eps >= <P, C> - eps KL-bound` holds through weak duality (value <= primal).
    #[test]
    fn random_problems_meet_marginals(seed in 0u64..10_000, n in 1usize..9, m in 1usize..9, log_eps in -2.0f64..1.0) {
        let mut r = rng(seed);
        let c: Array2<f64> = uniform(&mut r, (n, m), 0.0, 1.0);
        let (a, b) = (simplex::<f64>(&mut r, n), simplex::<f64>(&mut r, m));
        let eps = 10f64.powf(log_eps);
        let cfg = SinkhornConfig::new(Epsilon::Absolute(eps)).with_tol(1e-9, ErrorNorm::L1).with_iters(100_000, 5).with_plan(true);
        let out = sinkhorn(&Geometry::dense(c.view()).unwrap(), a.view(), b.view(), &cfg, &be()).unwrap();
        prop_assert!(out.converged);
        let p = out.plan.unwrap();
        prop_assert!(p.iter().all(|&v| v >= 0.0));
        let err = (p.sum_axis(Axis(1)) - &a).mapv(f64::abs).sum() + (p.sum_axis(Axis(0)) - &b).mapv(f64::abs).sum();
        prop_assert!(err <= 2e-9, "marginal error {}", err);
        let primal = reference::primal(&c, &a, &b, &p, eps, (None, None));
        prop_assert!(out.value <= primal + 1e-9 * primal.abs().max(1.0), "weak duality: {} > {}", out.value, primal);
    }

    /// Relabelling the rows and columns of a problem relabels its potentials.
    #[test]
    fn potentials_follow_a_relabelling(seed in 0u64..10_000, n in 2usize..7) {
        let mut r = rng(seed);
        let c: Array2<f64> = uniform(&mut r, (n, n), 0.0, 1.0);
        let (a, b) = (simplex::<f64>(&mut r, n), simplex::<f64>(&mut r, n));
        let perm: Vec<usize> = (0..n).rev().collect();
        let cp = Array2::from_shape_fn((n, n), |(i, j)| c[[perm[i], perm[j]]]);
        let (ap, bp) = (Array1::from_shape_fn(n, |i| a[perm[i]]), Array1::from_shape_fn(n, |j| b[perm[j]]));
        let cfg = SinkhornConfig::new(Epsilon::Absolute(0.2)).with_tol(1e-11, ErrorNorm::L1).with_iters(100_000, 1);
        let o1 = sinkhorn(&Geometry::dense(c.view()).unwrap(), a.view(), b.view(), &cfg, &be()).unwrap();
        let o2 = sinkhorn(&Geometry::dense(cp.view()).unwrap(), ap.view(), bp.view(), &cfg, &be()).unwrap();
        prop_assert!((o1.value - o2.value).abs() < 1e-9);
        let shift = o2.f[0] - o1.f[perm[0]];
        for (i, &pi) in perm.iter().enumerate() {
            prop_assert!((o2.f[i] - shift - o1.f[pi]).abs() < 1e-7);
        }
    }
}

// ---------------------------------------------------------------- graphs and graph attention

mod graphs {
    use ndarray::{Array1, Array2};
    use proptest::prelude::*;
    use recgoat_core::attention::*;
    use recgoat_core::graph::*;
    use recgoat_core::testing::{randn, rng, Tolerance};
    use recgoat_core::Par;

    fn graph_from(n: usize, edges: &[(usize, usize)]) -> CsrGraph<f64> {
        CsrGraph::from_edges(n, n, edges, None).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

        /// Attention weights of each node (and head) sum to 1 over its incoming edges, and are positive.
        #[test]
        fn attention_of_each_node_sums_to_one(seed in 0u64..10_000, n in 1usize..15, raw in proptest::collection::vec((0usize..15, 0usize..15), 0..60), v2 in any::<bool>()) {
            let edges: Vec<(usize, usize)> = raw.into_iter().map(|(i, j)| (i % n, j % n)).collect();
            let g = graph_from(n, &edges);
            let cfg = GatConfig { scoring: if v2 { Scoring::GatV2 } else { Scoring::GatConv }, ..GatConfig::<f64>::new(3, 4, 2).unwrap() };
            let layer = GatLayer::new(cfg).unwrap();
            let p = GatParams::init(&cfg, &mut rng(seed));
            let x: Array2<f64> = randn(&mut rng(seed + 1), (n, 3));
            let (_, cache) = layer.forward(&p, &g, x.view(), Mode::Eval, Par::Seq).unwrap();
            let looped = g.with_self_loops().unwrap();
            let a = layer.attention(&g, &cache).unwrap();
            for i in 0..n {
                for h in 0..2 {
                    let s: f64 = looped.row_range(i).map(|e| a[e * 2 + h]).sum();
                    prop_assert!((s - 1.0).abs() < 1e-12, "node {} head {}: {}", i, h, s);
                    prop_assert!(looped.row_range(i).all(|e| a[e * 2 + h] > 0.0));
                }
            }
        }

        /// Relabelling the nodes relabels the output rows (permutation equivariance).
        #[test]
        fn gat_output_is_equivariant_under_relabelling(seed in 0u64..10_000, n in 2usize..12, shift in 1usize..11) {
            let edges: Vec<(usize, usize)> = (0..n).flat_map(|i| [(i, (i + 1) % n), ((i * 3 + 1) % n, i)]).collect();
            let g = graph_from(n, &edges);
            let perm: Vec<usize> = (0..n).map(|i| (i * (2 * shift + 1) + shift) % n).collect();
            prop_assume!({ let mut s = perm.clone(); s.sort(); s.dedup(); s.len() == n });
            let gp = g.permuted(&perm).unwrap();
            let cfg = GatConfig { residual: true, ..GatConfig::<f64>::new(3, 4, 2).unwrap() };
            let layer = GatLayer::new(cfg).unwrap();
            let p = GatParams::init(&cfg, &mut rng(seed));
            let x: Array2<f64> = randn(&mut rng(seed + 1), (n, 3));
            let mut xp = Array2::zeros((n, 3));
            for (i, &pi) in perm.iter().enumerate() {
                xp.row_mut(pi).assign(&x.row(i));
            }
            let (o, _) = layer.forward(&p, &g, x.view(), Mode::Eval, Par::Seq).unwrap();
            let (op, _) = layer.forward(&p, &gp, xp.view(), Mode::Eval, Par::Seq).unwrap();
            for (i, &pi) in perm.iter().enumerate() {
                for k in 0..4 {
                    prop_assert!((o[[i, k]] - op[[pi, k]]).abs() < 1e-12);
                }
            }
        }

        /// The blocked kNN graph equals brute force for any block size and k.
        #[test]
        fn knn_equals_brute_force(seed in 0u64..10_000, n in 2usize..30, k in 1usize..6, block in 1usize..9) {
            prop_assume!(k < n);
            let x: Array2<f64> = randn(&mut rng(seed), (n, 4));
            let cfg = KnnConfig { k, block_rows: block, symmetric: false, self_loops: false, ..KnnConfig::new(k) };
            let g = knn_graph(x.view(), &cfg, Par::Rayon(3)).unwrap();
            let norms: Array1<f64> = x.rows().into_iter().map(|r| r.dot(&r).sqrt()).collect();
            for i in 0..n {
                let mut c: Vec<(f64, usize)> = (0..n).filter(|&j| j != i).map(|j| (x.row(i).dot(&x.row(j)) / (norms[i] * norms[j]), j)).collect();
                c.sort_by(|p, q| q.0.partial_cmp(&p.0).unwrap().then(p.1.cmp(&q.1)));
                let mut want: Vec<u32> = c[..k].iter().map(|p| p.1 as u32).collect();
                want.sort();
                prop_assert_eq!(g.row(i), &want[..]);
            }
        }
    }

    #[test]
    fn csr_round_trips_and_normalisation() {
        let g = CsrGraph::<f64>::from_edges(
            4,
            3,
            &[(0, 2), (0, 0), (3, 1), (0, 2), (2, 1)],
            Some(&[1.0, 2.0, 3.0, 4.0, 5.0]),
        )
        .unwrap();
        assert_eq!(g.row(0), &[0, 2]);
        assert_eq!(
            g.weights().unwrap(),
            &[2.0, 5.0, 5.0, 3.0],
            "duplicate (0, 2) summed"
        );
        let back = CsrGraph::from_csmat(&g.to_csmat()).unwrap();
        assert_eq!(back, g);
        let tt = &g.transposed().graph.transposed().graph;
        assert_eq!(tt, &g, "transpose twice is the identity");
        assert_eq!(g.transposed().graph.to_dense(), g.to_dense().t());
        // symmetric normalisation on a symmetric graph: D^-1/2 A D^-1/2, isolated node 3 stays 0
        let s = CsrGraph::<f64>::from_edges(4, 4, &[(0, 1), (1, 0), (1, 2), (2, 1)], None)
            .unwrap()
            .sym_normalized()
            .unwrap();
        let want = ndarray::array![
            [0.0, 0.5f64.sqrt(), 0.0, 0.0],
            [0.5f64.sqrt(), 0.0, 0.5f64.sqrt(), 0.0],
            [0.0, 0.5f64.sqrt(), 0.0, 0.0],
            [0.0; 4]
        ];
        Tolerance::F64_EXACT.assert_close("sym normalised", &s.to_dense().view(), &want.view());
        let l = s.with_self_loops().unwrap();
        assert!(l.has_all_self_loops() && l.nnz() == s.nnz() + 4);
        assert_eq!(
            l.with_self_loops().unwrap(),
            l,
            "adding self loops twice changes nothing"
        );
    }
}

// ---------------------------------------------------------------- InfoNCE

mod contrastive {
    use ndarray::Array2;
    use proptest::prelude::*;
    use recgoat_core::contrastive::*;
    use recgoat_core::testing::{randn, rng};
    use recgoat_core::Par;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

        /// The loss is >= 0, invariant to a joint permutation of the pairs, and the symmetric loss is the mean
        /// of the two one-way losses (from 2 pairs: one pair alone is refused).
        #[test]
        fn info_nce_properties(seed in 0u64..10_000, b in 2usize..20, d in 1usize..6, tau in 0.05f64..2.0, shift in 0usize..19) {
            let mut r = rng(seed);
            let (v1, v2): (Array2<f64>, Array2<f64>) = (randn(&mut r, (b, d)), randn(&mut r, (b, d)));
            let cfg = InfoNceConfig { temperature: tau, block_rows: 3, ..InfoNceConfig::default() };
            let loss = |x: &Array2<f64>, y: &Array2<f64>, c: &InfoNceConfig<f64>| info_nce(x.view(), y.view(), None, None, c, Par::Rayon(2)).unwrap().loss;
            let l = loss(&v1, &v2, &cfg);
            prop_assert!(l >= 0.0);
            let perm: Vec<usize> = (0..b).map(|i| (i + shift) % b).collect();
            let (p1, p2) = (v1.select(ndarray::Axis(0), &perm), v2.select(ndarray::Axis(0), &perm));
            prop_assert!((loss(&p1, &p2, &cfg) - l).abs() <= 1e-10 * l.max(1.0));
            let sym = InfoNceConfig { direction: Direction::Symmetric, ..cfg };
            let back = loss(&v2, &v1, &cfg);
            prop_assert!((loss(&v1, &v2, &sym) - 0.5 * (l + back)).abs() <= 1e-10 * l.max(1.0));
        }
    }
}
