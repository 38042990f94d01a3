//! Central-difference checks (f64, seeded random directions) of every hand-written gradient, plus the
//! analytic identity dV/dC = plan.

mod common;

use ndarray::{Array1, Array2};
use recgoat_core::testing::{
    central_difference, cloud_problem, randn, rng, CloudProblem, Tolerance,
};
use recgoat_core::transport::*;
use recgoat_core::Backend;

const H: f64 = 1e-5;

fn be() -> Backend {
    Backend::default()
}

fn tight(eps: f64) -> SinkhornConfig<f64> {
    SinkhornConfig::new(Epsilon::Absolute(eps))
        .with_tol(1e-14, ErrorNorm::L1)
        .with_iters(20000, 1)
}

fn kl(rho: Option<f64>) -> Marginal<f64> {
    rho.map_or(Marginal::Balanced, Marginal::Kl)
}

fn value(
    c: &Array2<f64>,
    a: &Array1<f64>,
    b: &Array1<f64>,
    cfg: &SinkhornConfig<f64>,
) -> SinkhornOutput<f64> {
    sinkhorn(
        &Geometry::dense(c.view()).unwrap(),
        a.view(),
        b.view(),
        cfg,
        &be(),
    )
    .unwrap()
}

/// A zero-sum direction (keeps balanced masses equal).
fn zero_sum(r: &mut recgoat_core::testing::TestRng, n: usize) -> Array1<f64> {
    let d: Array1<f64> = randn(r, n);
    let mean = d.mean().unwrap();
    d - mean
}

fn setup(seed: u64, n: usize, m: usize) -> CloudProblem<f64> {
    cloud_problem(seed, n, m, 2)
}

#[test]
fn value_gradient_in_the_cost_is_the_plan() {
    for (seed, rho) in [(1u64, (None, None)), (2, (Some(0.7), Some(0.4)))] {
        let CloudProblem { cost: c, a, b, .. } = setup(seed, 6, 8);
        let cfg = tight(0.3)
            .with_marginals(kl(rho.0), kl(rho.1))
            .with_plan(true);
        let out = value(&c, &a, &b, &cfg);
        let plan = out.plan.clone().unwrap();
        let dir: Array2<f64> = randn(&mut rng(seed + 10), c.dim());
        let fd = central_difference(|t| value(&(&c + &(&dir * t)), &a, &b, &cfg).value, H);
        Tolerance::F64_SOLVE.assert_scalar("<dV/dC, dir>", (&plan * &dir).sum(), fd);
    }
}

#[test]
fn value_gradient_in_the_weights_is_the_envelope() {
    for (seed, rho) in [
        (3u64, (None, None)),
        (4, (Some(0.5), Some(1.5))),
        (5, (None, Some(0.8))),
    ] {
        let CloudProblem { cost: c, a, b, .. } = setup(seed, 7, 5);
        let cfg = tight(0.25).with_marginals(kl(rho.0), kl(rho.1));
        let out = value(&c, &a, &b, &cfg);
        let g = envelope(&out, a.view(), b.view()).unwrap();
        let mut r = rng(seed + 20);
        let balanced = rho.0.is_none() && rho.1.is_none();
        let (da, db) = if balanced {
            (zero_sum(&mut r, 7), zero_sum(&mut r, 5))
        } else {
            (randn(&mut r, 7), randn(&mut r, 5))
        };
        let fd = central_difference(
            |t| value(&c, &(&a + &(&da * t)), &(&b + &(&db * t)), &cfg).value,
            H,
        );
        Tolerance::F64_SOLVE.assert_scalar(
            &format!("{rho:?} <dV/d(a,b), dir>"),
            g.grad_a.dot(&da) + g.grad_b.dot(&db),
            fd,
        );
    }
}

#[test]
fn value_gradient_in_the_points() {
    let CloudProblem { x, y, a, b, .. } = setup(6, 9, 7);
    let cfg = tight(0.4);
    let solve = |x: &Array2<f64>, y: &Array2<f64>| {
        sinkhorn(
            &Geometry::sq_euclidean(x.view(), y.view()).unwrap(),
            a.view(),
            b.view(),
            &cfg,
            &be(),
        )
        .unwrap()
    };
    let out = solve(&x, &y);
    let (gx, gy) = point_cloud_gradients(
        &Geometry::sq_euclidean(x.view(), y.view()).unwrap(),
        &out,
        a.view(),
        b.view(),
        be().par(),
    )
    .unwrap();
    let mut r = rng(60);
    let (dx, dy): (Array2<f64>, Array2<f64>) = (randn(&mut r, x.dim()), randn(&mut r, y.dim()));
    let fd = central_difference(|t| solve(&(&x + &(&dx * t)), &(&y + &(&dy * t))).value, H);
    Tolerance::F64_SOLVE.assert_scalar(
        "<dV/d(x,y), dir>",
        (&gx * &dx).sum() + (&gy * &dy).sum(),
        fd,
    );
}

/// L(P) = <G, P> for a fixed random G.
fn plan_loss(
    c: &Array2<f64>,
    a: &Array1<f64>,
    b: &Array1<f64>,
    cfg: &SinkhornConfig<f64>,
    g: &Array2<f64>,
) -> f64 {
    let cfg = cfg.clone().with_plan(true);
    (value(c, a, b, &cfg).plan.unwrap() * g).sum()
}

fn implicit_case(solver: LinearSolver) {
    for (seed, rho) in [(7u64, (None, None)), (8, (Some(0.6), Some(0.9)))] {
        let CloudProblem { cost: c, a, b, .. } = setup(seed, 6, 7);
        let cfg = tight(0.3).with_marginals(kl(rho.0), kl(rho.1));
        let out = value(&c, &a, &b, &cfg);
        let mut r = rng(seed + 30);
        let gp: Array2<f64> = randn(&mut r, c.dim());
        let ic = ImplicitConfig {
            solver,
            tol: 1e-12,
            ridge: 1e-14,
            ..Default::default()
        };
        let grads = implicit_plan_vjp(
            &Geometry::dense(c.view()).unwrap(),
            a.view(),
            b.view(),
            &out,
            gp.view(),
            &ic,
        )
        .unwrap();
        let dc: Array2<f64> = randn(&mut r, c.dim());
        let fd = central_difference(|t| plan_loss(&(&c + &(&dc * t)), &a, &b, &cfg, &gp), H);
        Tolerance::F64_SOLVE.assert_scalar(
            &format!("{solver:?} {rho:?} dL/dC"),
            (&grads.grad_cost * &dc).sum(),
            fd,
        );
        let balanced = rho.0.is_none();
        let (da, db) = if balanced {
            (zero_sum(&mut r, 6), zero_sum(&mut r, 7))
        } else {
            (randn(&mut r, 6), randn(&mut r, 7))
        };
        let fd = central_difference(
            |t| plan_loss(&c, &(&a + &(&da * t)), &(&b + &(&db * t)), &cfg, &gp),
            H,
        );
        Tolerance::F64_SOLVE.assert_scalar(
            &format!("{solver:?} {rho:?} dL/d(a,b)"),
            grads.grad_a.dot(&da) + grads.grad_b.dot(&db),
            fd,
        );
    }
}

#[test]
fn implicit_plan_gradient_by_conjugate_gradient() {
    implicit_case(LinearSolver::ConjugateGradient);
}

#[cfg(feature = "linalg")]
#[test]
fn implicit_plan_gradient_by_dense_solve() {
    implicit_case(LinearSolver::Dense);
}

#[cfg(not(feature = "linalg"))]
#[test]
fn dense_solve_without_linalg_is_a_clear_error() {
    let CloudProblem { cost: c, a, b, .. } = setup(9, 3, 3);
    let out = value(&c, &a, &b, &tight(0.5));
    let gp = Array2::<f64>::ones((3, 3));
    let ic = ImplicitConfig {
        solver: LinearSolver::Dense,
        ..Default::default()
    };
    let err = implicit_plan_vjp(
        &Geometry::dense(c.view()).unwrap(),
        a.view(),
        b.view(),
        &out,
        gp.view(),
        &ic,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            recgoat_core::Error::FeatureDisabled {
                feature: "linalg",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn unrolled_plan_gradient_is_exact_for_the_iterations_run() {
    for (seed, rho, iters) in [
        (10u64, (None, None), 1usize),
        (11, (None, None), 12),
        (12, (Some(0.5), Some(1.0)), 8),
    ] {
        let CloudProblem { cost: c, a, b, .. } = setup(seed, 5, 6);
        let eps = 0.2;
        let run = |c: &Array2<f64>, a: &Array1<f64>, b: &Array1<f64>| {
            UnrolledOutput::new(c.view(), a.view(), b.view(), eps, rho, iters).unwrap()
        };
        let mut r = rng(seed + 40);
        let gp: Array2<f64> = randn(&mut r, c.dim());
        let grads = unrolled_plan_vjp(&run(&c, &a, &b), gp.view()).unwrap();
        let dc: Array2<f64> = randn(&mut r, c.dim());
        let fd = central_difference(|t| (run(&(&c + &(&dc * t)), &a, &b).plan * &gp).sum(), H);
        Tolerance::F64_SOLVE.assert_scalar(
            &format!("iters={iters} dL/dC"),
            (&grads.grad_cost * &dc).sum(),
            fd,
        );
        let balanced = rho.0.is_none();
        let (da, db) = if balanced {
            (zero_sum(&mut r, 5), zero_sum(&mut r, 6))
        } else {
            (randn(&mut r, 5), randn(&mut r, 6))
        };
        let fd = central_difference(
            |t| (run(&c, &(&a + &(&da * t)), &(&b + &(&db * t))).plan * &gp).sum(),
            H,
        );
        Tolerance::F64_SOLVE.assert_scalar(
            &format!("iters={iters} dL/d(a,b)"),
            grads.grad_a.dot(&da) + grads.grad_b.dot(&db),
            fd,
        );
    }
}

#[test]
fn unrolled_gradient_approaches_implicit_as_iterations_grow() {
    let CloudProblem { cost: c, a, b, .. } = setup(13, 6, 6);
    let gp: Array2<f64> = randn(&mut rng(77), c.dim());
    let out = value(&c, &a, &b, &tight(0.5));
    let imp = implicit_plan_vjp(
        &Geometry::dense(c.view()).unwrap(),
        a.view(),
        b.view(),
        &out,
        gp.view(),
        &ImplicitConfig::default(),
    )
    .unwrap();
    let unr = unrolled_plan_vjp(
        &UnrolledOutput::new(c.view(), a.view(), b.view(), 0.5, (None, None), 300).unwrap(),
        gp.view(),
    )
    .unwrap();
    Tolerance::new(1e-6, 1e-8).assert_close(
        "dL/dC unrolled(300) vs implicit",
        &unr.grad_cost.view(),
        &imp.grad_cost.view(),
    );
}

#[test]
fn divergence_gradients() {
    let CloudProblem { x, y, a, b, .. } = setup(14, 6, 5);
    let cfg = tight(0.5);
    let div = |x: &Array2<f64>, y: &Array2<f64>, a: &Array1<f64>, b: &Array1<f64>| {
        sinkhorn_divergence(x.view(), y.view(), a.view(), b.view(), &cfg, &be()).unwrap()
    };
    let out = div(&x, &y, &a, &b);
    assert!(out.converged && out.value > 0.0);
    let mut r = rng(140);
    let (dx, dy): (Array2<f64>, Array2<f64>) = (randn(&mut r, x.dim()), randn(&mut r, y.dim()));
    let (da, db) = (zero_sum(&mut r, 6), zero_sum(&mut r, 5));
    let fd = central_difference(
        |t| div(&(&x + &(&dx * t)), &(&y + &(&dy * t)), &a, &b).value,
        H,
    );
    Tolerance::F64_SOLVE.assert_scalar(
        "dS/d(x,y)",
        (&out.grad_x * &dx).sum() + (&out.grad_y * &dy).sum(),
        fd,
    );
    let fd = central_difference(
        |t| div(&x, &y, &(&a + &(&da * t)), &(&b + &(&db * t))).value,
        H,
    );
    Tolerance::F64_SOLVE.assert_scalar("dS/d(a,b)", out.grad_a.dot(&da) + out.grad_b.dot(&db), fd);
}

#[test]
fn dimension_cost_backward_matches_central_differences() {
    let mut r = rng(15);
    let (m, z): (Array2<f64>, Array2<f64>) = (randn(&mut r, (11, 4)), randn(&mut r, (11, 4)));
    let gc: Array2<f64> = randn(&mut r, (4, 4));
    let (gm, gz) = dimension_cost_backward(m.view(), z.view(), 3.0, gc.view()).unwrap();
    let (dm, dz): (Array2<f64>, Array2<f64>) = (randn(&mut r, m.dim()), randn(&mut r, z.dim()));
    let fd = central_difference(
        |t| {
            (dimension_cost((&m + &(&dm * t)).view(), (&z + &(&dz * t)).view(), 3.0).unwrap() * &gc)
                .sum()
        },
        H,
    );
    Tolerance::F64_SOLVE.assert_scalar("dC/d(M,Z)", (&gm * &dm).sum() + (&gz * &dz).sum(), fd);
}

fn oat_loss(
    oat: &AdaptiveTransport<f64>,
    m: &Array2<f64>,
    z: &Array2<f64>,
    delta: &Array2<f64>,
    go: &Array2<f64>,
    wv: f64,
) -> f64 {
    let (out, cache) = oat
        .forward(m.view(), z.view(), delta.view(), &be())
        .unwrap();
    (&out * go).sum() + wv * cache.value()
}

#[test]
fn adaptive_transport_gradients_in_every_mode() {
    let mut r = rng(16);
    let (m, z): (Array2<f64>, Array2<f64>) = (randn(&mut r, (20, 5)), randn(&mut r, (20, 5)));
    let delta: Array2<f64> = randn(&mut r, (5, 5)) * 0.1;
    let go: Array2<f64> = randn(&mut r, (20, 5));
    let modes = [
        PlanGradient::Implicit(ImplicitConfig {
            tol: 1e-12,
            ..Default::default()
        }),
        PlanGradient::Unrolled { iters: 30 },
    ];
    for mode in modes {
        for wv in [0.0, 0.7] {
            let mut cfg = AdaptiveTransportConfig::<f64> {
                gradient: mode,
                cost_scale: 2.0,
                ..Default::default()
            };
            cfg.sinkhorn = cfg
                .sinkhorn
                .with_tol(1e-13, ErrorNorm::L1)
                .with_iters(20000, 1);
            cfg.sinkhorn.eps = Epsilon::Absolute(0.5);
            let oat = AdaptiveTransport::new(cfg).unwrap();
            let (_, cache) = oat
                .forward(m.view(), z.view(), delta.view(), &be())
                .unwrap();
            let g = oat.backward(&cache, Some(go.view()), wv).unwrap();
            let (dm, dz, dd): (Array2<f64>, Array2<f64>, Array2<f64>) = (
                randn(&mut r, m.dim()),
                randn(&mut r, z.dim()),
                randn(&mut r, (5, 5)),
            );
            let fd = central_difference(
                |t| {
                    oat_loss(
                        &oat,
                        &(&m + &(&dm * t)),
                        &(&z + &(&dz * t)),
                        &(&delta + &(&dd * t)),
                        &go,
                        wv,
                    )
                },
                H,
            );
            let analytic =
                (&g.grad_m * &dm).sum() + (&g.grad_z * &dz).sum() + (&g.grad_delta * &dd).sum();
            Tolerance::F64_SOLVE.assert_scalar(&format!("{mode:?} wv={wv}"), analytic, fd);
        }
    }
}

#[test]
fn detached_adaptive_transport_treats_the_plan_as_constant() {
    let mut r = rng(17);
    let (m, z): (Array2<f64>, Array2<f64>) = (randn(&mut r, (12, 4)), randn(&mut r, (12, 4)));
    let delta = Array2::<f64>::eye(4) * 0.1;
    let go: Array2<f64> = randn(&mut r, (12, 4));
    let oat = AdaptiveTransport::new(AdaptiveTransportConfig {
        gradient: PlanGradient::Detached,
        ..Default::default()
    })
    .unwrap();
    let (_, cache) = oat
        .forward(m.view(), z.view(), delta.view(), &be())
        .unwrap();
    let g = oat.backward(&cache, Some(go.view()), 0.0).unwrap();
    let map = cache.plan() * 4.0 + &delta;
    Tolerance::F64_EXACT.assert_close(
        "grad_m = G map^T",
        &g.grad_m.view(),
        &go.dot(&map.t()).view(),
    );
    Tolerance::F64_EXACT.assert_close(
        "grad_delta = M^T G",
        &g.grad_delta.view(),
        &m.t().dot(&go).view(),
    );
    assert!(
        g.grad_z.iter().all(|&v| v == 0.0),
        "no path reaches Z when T is detached"
    );
}

// ---------------------------------------------------------------- graphs and graph attention

mod graphs {
    use super::H;
    use ndarray::Array2;
    use recgoat_core::attention::*;
    use recgoat_core::graph::*;
    use recgoat_core::testing::{central_difference, randn, rng, Tolerance};
    use recgoat_core::Par;

    fn ring_graph(n: usize) -> CsrGraph<f64> {
        let mut edges = Vec::new();
        for i in 0..n {
            edges.push((i, (i + 1) % n));
            edges.push((i, (i + 3) % n));
            edges.push(((i + 2) % n, i));
        }
        CsrGraph::from_edges(n, n, &edges, None).unwrap()
    }

    #[test]
    fn lightgcn_backward_matches_central_differences() {
        let pairs: Vec<(usize, usize)> = (0..25).map(|k| ((k * 3) % 7, (k * 5) % 9)).collect();
        let a = bipartite_user_item::<f64>(7, 9, &pairs)
            .unwrap()
            .sym_normalized()
            .unwrap();
        let mut r = rng(20);
        let e0: Array2<f64> = randn(&mut r, (16, 4));
        let go: Array2<f64> = randn(&mut r, (16, 4));
        let dir: Array2<f64> = randn(&mut r, (16, 4));
        let g = lightgcn_backward(&a, go.view(), 3, Par::Seq).unwrap();
        let fd = central_difference(
            |t| {
                (lightgcn_forward(&a, (&e0 + &(&dir * t)).view(), 3, Par::Seq).unwrap() * &go).sum()
            },
            H,
        );
        Tolerance::F64_SOLVE.assert_scalar("dE0", (&g * &dir).sum(), fd);
    }

    /// Loss `<G, out>` of a layer, as a function of (x, params).
    fn loss(
        layer: &GatLayer<f64>,
        p: &GatParams<f64>,
        g: &CsrGraph<f64>,
        x: &Array2<f64>,
        go: &Array2<f64>,
        mode: Mode,
    ) -> f64 {
        (layer.forward(p, g, x.view(), mode, Par::Seq).unwrap().0 * go).sum()
    }

    fn step(p: &GatParams<f64>, d: &GatParams<f64>, t: f64) -> GatParams<f64> {
        GatParams {
            w: &p.w + &(&d.w * t),
            a_src: &p.a_src + &(&d.a_src * t),
            a_dst: p
                .a_dst
                .as_ref()
                .map(|a| a + &(d.a_dst.as_ref().unwrap() * t)),
            bias: p.bias.as_ref().map(|b| b + &(d.bias.as_ref().unwrap() * t)),
            w_res: p
                .w_res
                .as_ref()
                .map(|w| w + &(d.w_res.as_ref().unwrap() * t)),
        }
    }

    fn inner(a: &GatGrads<f64>, d: &GatParams<f64>) -> f64 {
        (&a.grad_w * &d.w).sum()
            + (&a.grad_a_src * &d.a_src).sum()
            + a.grad_a_dst
                .as_ref()
                .map_or(0.0, |g| (g * d.a_dst.as_ref().unwrap()).sum())
            + a.grad_bias
                .as_ref()
                .map_or(0.0, |g| (g * d.bias.as_ref().unwrap()).sum())
            + a.grad_w_res
                .as_ref()
                .map_or(0.0, |g| (g * d.w_res.as_ref().unwrap()).sum())
    }

    #[test]
    fn gat_gradients_match_central_differences_for_every_parameter_and_variant() {
        let g = ring_graph(10);
        let mut variants = crate::common::gat_variants();
        variants.push((
            "dropout",
            GatConfig {
                feat_drop: 0.25,
                attn_drop: 0.3,
                ..GatConfig::<f64>::new(5, 6, 3).unwrap()
            },
        ));
        variants.push((
            "gatv2 dropout",
            GatConfig {
                feat_drop: 0.2,
                attn_drop: 0.2,
                scoring: Scoring::GatV2,
                ..GatConfig::<f64>::new(5, 6, 3).unwrap()
            },
        ));
        for (k, (name, cfg)) in variants.into_iter().enumerate() {
            let layer = GatLayer::new(cfg).unwrap();
            let mut r = rng(30 + k as u64);
            let p = GatParams::init(&cfg, &mut r);
            let d = GatParams::init(&cfg, &mut r);
            let d = GatParams {
                bias: d.bias.map(|b| b.mapv(|_| 0.7)),
                ..d
            };
            let x: Array2<f64> = randn(&mut r, (10, cfg.in_dim));
            let dx: Array2<f64> = randn(&mut r, (10, cfg.in_dim));
            let mode = Mode::Train { seed: 5 };
            let (out, cache) = layer.forward(&p, &g, x.view(), mode, Par::Seq).unwrap();
            let go: Array2<f64> = randn(&mut r, out.dim());
            let grads = layer.backward(&p, &g, &cache, go.view(), Par::Seq).unwrap();
            let fd = central_difference(|t| loss(&layer, &step(&p, &d, t), &g, &x, &go, mode), H);
            Tolerance::F64_SOLVE.assert_scalar(&format!("{name}: params"), inner(&grads, &d), fd);
            let fd = central_difference(|t| loss(&layer, &p, &g, &(&x + &(&dx * t)), &go, mode), H);
            Tolerance::F64_SOLVE.assert_scalar(
                &format!("{name}: x"),
                (&grads.grad_x * &dx).sum(),
                fd,
            );
        }
    }
}

// ---------------------------------------------------------------- InfoNCE

#[test]
fn info_nce_gradients_match_central_differences() {
    use recgoat_core::contrastive::*;
    let mut r = rng(50);
    let (v1, v2): (Array2<f64>, Array2<f64>) = (randn(&mut r, (11, 4)), randn(&mut r, (11, 4)));
    let negs: Array2<f64> = randn(&mut r, (3, 4));
    let wts: Array1<f64> = recgoat_core::testing::uniform(&mut r, 11, 0.1, 2.0);
    for direction in [Direction::OneWay, Direction::Symmetric] {
        for normalize in [true, false] {
            for (extra, weighted) in [(false, false), (false, true), (true, true)] {
                let cfg = InfoNceConfig {
                    temperature: 0.5,
                    normalize,
                    direction,
                    reduction: Reduction::Mean,
                    block_rows: 4,
                };
                let n = extra.then(|| negs.view());
                let w = weighted.then(|| wts.view());
                let out =
                    info_nce(v1.view(), v2.view(), n, w, &cfg, recgoat_core::Par::Seq).unwrap();
                let (d1, d2, dn): (Array2<f64>, Array2<f64>, Array2<f64>) = (
                    randn(&mut r, v1.dim()),
                    randn(&mut r, v2.dim()),
                    randn(&mut r, negs.dim()),
                );
                let fd = central_difference(
                    |t| {
                        let nn = &negs + &(&dn * t);
                        let n = if extra { Some(nn.view()) } else { None };
                        info_nce(
                            (&v1 + &(&d1 * t)).view(),
                            (&v2 + &(&d2 * t)).view(),
                            n,
                            w,
                            &cfg,
                            recgoat_core::Par::Seq,
                        )
                        .unwrap()
                        .loss
                    },
                    H,
                );
                let mut analytic = (&out.grad_v1 * &d1).sum() + (&out.grad_v2 * &d2).sum();
                if let Some(g) = &out.grad_negatives {
                    analytic += (g * &dn).sum();
                }
                assert_eq!(out.grad_negatives.is_some(), extra);
                Tolerance::F64_SOLVE.assert_scalar(
                    &format!("{direction:?} norm={normalize} extra={extra} weighted={weighted}"),
                    analytic,
                    fd,
                );
            }
        }
    }
}

#[test]
fn multi_view_gradients_match_central_differences_in_both_readings() {
    use recgoat_core::contrastive::*;
    let mut r = rng(51);
    let views: Vec<Array2<f64>> = (0..8).map(|_| randn(&mut r, (6, 3))).collect();
    let cfg = InfoNceConfig {
        temperature: 0.4,
        ..InfoNceConfig::default()
    };
    for (name, pairs, n_views) in [
        ("recgoat", cmcl_paper_pairs::<f64>(3), 5),
        ("official", cmcl_official_pairs::<f64>(3), 8),
    ] {
        let vs: Vec<_> = views[..n_views].iter().map(|v| v.view()).collect();
        let out = multi_view_info_nce(&vs, &pairs, &cfg, recgoat_core::Par::Seq).unwrap();
        let dirs: Vec<Array2<f64>> = (0..n_views).map(|_| randn(&mut r, (6, 3))).collect();
        let fd = central_difference(
            |t| {
                let moved: Vec<Array2<f64>> = views[..n_views]
                    .iter()
                    .zip(&dirs)
                    .map(|(v, d)| v + &(d * t))
                    .collect();
                let vs: Vec<_> = moved.iter().map(|v| v.view()).collect();
                multi_view_info_nce(&vs, &pairs, &cfg, recgoat_core::Par::Seq)
                    .unwrap()
                    .loss
            },
            H,
        );
        let analytic: f64 = out
            .grads
            .iter()
            .zip(&dirs)
            .map(|(g, d)| (g * d).sum())
            .sum();
        Tolerance::F64_SOLVE.assert_scalar(name, analytic, fd);
        // the total is the weighted sum of the individual InfoNCE calls
        let mut total = 0.0;
        for p in &pairs {
            let l = info_nce(
                vs[p.first],
                vs[p.second],
                None,
                None,
                &cfg,
                recgoat_core::Par::Seq,
            )
            .unwrap()
            .loss;
            total += match p.term {
                PairTerm::InfoNce => p.weight * l,
                PairTerm::OneMinusInfoNce => p.weight * (1.0 - l),
            };
        }
        Tolerance::F64_EXACT.assert_scalar(&format!("{name} total"), out.loss, total);
    }
    assert_eq!(
        cmcl_official_pairs::<f64>(3).len(),
        7,
        "user-fused plus the released code's 6 within-item pairs"
    );
    let bad = [ViewPair {
        first: 0,
        second: 9,
        weight: 1.0,
        term: PairTerm::InfoNce,
    }];
    let vs: Vec<_> = views[..2].iter().map(|v| v.view()).collect();
    let e = multi_view_info_nce(&vs, &bad, &cfg, recgoat_core::Par::Seq).unwrap_err();
    assert!(e.to_string().contains("out of range"), "{e}");
}

#[test]
fn stacked_multi_view_terms_match_separate_calls() {
    // one-way pairs sharing their positives run as one stacked problem: every term and every view's
    // gradient must be what the separate calls give (mixed weights and forms, both reductions, raw and
    // normalised rows, one and several workers; a symmetric configuration is never stacked)
    use recgoat_core::contrastive::*;
    use recgoat_core::Par;
    let mut r = rng(52);
    let views: Vec<Array2<f64>> = (0..5).map(|_| randn(&mut r, (7, 4))).collect();
    let vs: Vec<_> = views.iter().map(|v| v.view()).collect();
    let pair = |first, second, weight, term| ViewPair {
        first,
        second,
        weight,
        term,
    };
    let pairs = [
        pair(0, 1, 1.0, PairTerm::InfoNce),
        pair(2, 1, 0.5, PairTerm::InfoNce),
        pair(3, 1, 0.25, PairTerm::OneMinusInfoNce),
        pair(1, 0, 0.75, PairTerm::InfoNce),
        pair(4, 1, 2.0, PairTerm::InfoNce),
        pair(4, 0, 0.0, PairTerm::InfoNce),
    ];
    for normalize in [true, false] {
        for reduction in [Reduction::Mean, Reduction::Sum] {
            for direction in [Direction::OneWay, Direction::Symmetric] {
                let cfg = InfoNceConfig {
                    temperature: 0.3,
                    normalize,
                    reduction,
                    direction,
                    block_rows: 5,
                };
                let mut grads: Vec<Array2<f64>> =
                    views.iter().map(|v| Array2::zeros(v.dim())).collect();
                let mut terms = Vec::new();
                let mut loss = 0.0;
                for p in &pairs {
                    let o =
                        info_nce(vs[p.first], vs[p.second], None, None, &cfg, Par::Seq).unwrap();
                    let s = match p.term {
                        PairTerm::InfoNce => p.weight,
                        PairTerm::OneMinusInfoNce => -p.weight,
                    };
                    loss += match p.term {
                        PairTerm::InfoNce => p.weight * o.loss,
                        PairTerm::OneMinusInfoNce => p.weight * (1.0 - o.loss),
                    };
                    terms.push(o.loss);
                    grads[p.first].scaled_add(s, &o.grad_v1);
                    grads[p.second].scaled_add(s, &o.grad_v2);
                }
                for par in [Par::Seq, Par::Rayon(3)] {
                    let what = format!(
                        "norm={normalize} {reduction:?} {direction:?} {}",
                        par.name()
                    );
                    let out = multi_view_info_nce(&vs, &pairs, &cfg, par).unwrap();
                    Tolerance::F64_SOLVE.assert_scalar(&format!("{what} loss"), out.loss, loss);
                    for (k, (&a, &b)) in out.terms.iter().zip(&terms).enumerate() {
                        Tolerance::F64_SOLVE.assert_scalar(&format!("{what} term {k}"), a, b);
                    }
                    for (k, (a, b)) in out.grads.iter().zip(&grads).enumerate() {
                        let err = (a - b).iter().fold(0.0f64, |m, v| m.max(v.abs()));
                        assert!(err < 1e-12, "{what}: view {k} gradient off by {err:e}");
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------- small layers

mod layers {
    use super::H;
    use ndarray::{Array1, Array2};
    use recgoat_core::nn::*;
    use recgoat_core::testing::{central_difference, randn, rng, Tolerance};

    fn check(what: &str, analytic: f64, f: impl FnMut(f64) -> f64) {
        Tolerance::F64_SOLVE.assert_scalar(what, analytic, central_difference(f, H));
    }

    #[test]
    fn linear_leaky_relu_layer_norm_and_l2_normalize() {
        let mut r = rng(60);
        let x: Array2<f64> = randn(&mut r, (5, 4));
        let dx: Array2<f64> = randn(&mut r, (5, 4));
        // Linear
        let lin = Linear::new(4, 3, true, Init::XavierNormal, &mut r);
        let go: Array2<f64> = randn(&mut r, (5, 3));
        let g = lin.backward(x.view(), go.view()).unwrap();
        let (dw, db): (Array2<f64>, Array1<f64>) = (randn(&mut r, (4, 3)), randn(&mut r, 3));
        check(
            "linear",
            (&g.grad_x * &dx).sum() + (&g.grad_w * &dw).sum() + g.grad_b.as_ref().unwrap().dot(&db),
            |t| {
                let l = Linear {
                    w: &lin.w + &(&dw * t),
                    b: Some(lin.b.as_ref().unwrap() + &(&db * t)),
                };
                (l.forward((&x + &(&dx * t)).view()).unwrap() * &go).sum()
            },
        );
        // LeakyReLU (x kept away from the kink)
        let xs = x.mapv(|v| if v.abs() < 0.05 { v + 0.2 } else { v });
        let gl: Array2<f64> = randn(&mut r, (5, 4));
        let gr = leaky_relu_backward(xs.view(), gl.view(), 0.2).unwrap();
        check("leaky_relu", (&gr * &dx).sum(), |t| {
            (leaky_relu((&xs + &(&dx * t)).view(), 0.2).unwrap() * &gl).sum()
        });
        // LayerNorm
        let mut ln = LayerNorm::<f64>::new(4);
        ln.gamma = randn(&mut r, 4);
        ln.beta = randn(&mut r, 4);
        let (_, cache) = ln.forward(x.view()).unwrap();
        let gy: Array2<f64> = randn(&mut r, (5, 4));
        let (gx, gg, gb) = ln.backward(&cache, gy.view()).unwrap();
        let (dg, dbeta): (Array1<f64>, Array1<f64>) = (randn(&mut r, 4), randn(&mut r, 4));
        check(
            "layer_norm",
            (&gx * &dx).sum() + gg.dot(&dg) + gb.dot(&dbeta),
            |t| {
                let l = LayerNorm {
                    gamma: &ln.gamma + &(&dg * t),
                    beta: &ln.beta + &(&dbeta * t),
                    eps: ln.eps,
                };
                (l.forward((&x + &(&dx * t)).view()).unwrap().0 * &gy).sum()
            },
        );
        // L2 normalisation
        let (y, norms) = l2_normalize(x.view()).unwrap();
        let gn = l2_normalize_backward(y.view(), norms.view(), gy.view()).unwrap();
        check("l2_normalize", (&gn * &dx).sum(), |t| {
            (l2_normalize((&x + &(&dx * t)).view()).unwrap().0 * &gy).sum()
        });
    }

    #[test]
    fn fusion_bpr_and_regularisation() {
        let mut r = rng(61);
        let views: Vec<Array2<f64>> = (0..3).map(|_| randn(&mut r, (4, 2))).collect();
        let dirs: Vec<Array2<f64>> = (0..3).map(|_| randn(&mut r, (4, 2))).collect();
        let logits: Array1<f64> = randn(&mut r, 3);
        let dl: Array1<f64> = randn(&mut r, 3);
        let gy: Array2<f64> = randn(&mut r, (4, 2));
        let vs: Vec<_> = views.iter().map(|v| v.view()).collect();
        let (_, w) = softmax_fusion(&vs, logits.view()).unwrap();
        assert!((w.sum() - 1.0).abs() < 1e-12);
        let (gv, glog) = softmax_fusion_backward(&vs, w.view(), gy.view()).unwrap();
        let analytic: f64 = gv
            .iter()
            .zip(&dirs)
            .map(|(g, d)| (g * d).sum())
            .sum::<f64>()
            + glog.dot(&dl);
        check("softmax_fusion", analytic, |t| {
            let moved: Vec<Array2<f64>> =
                views.iter().zip(&dirs).map(|(v, d)| v + &(d * t)).collect();
            let vs: Vec<_> = moved.iter().map(|v| v.view()).collect();
            (softmax_fusion(&vs, (&logits + &(&dl * t)).view())
                .unwrap()
                .0
                * &gy)
                .sum()
        });
        let (pos, neg): (Array1<f64>, Array1<f64>) = (randn(&mut r, 7), randn(&mut r, 7));
        let (dp, dn): (Array1<f64>, Array1<f64>) = (randn(&mut r, 7), randn(&mut r, 7));
        let (loss, gp, gn) = bpr_loss(pos.view(), neg.view()).unwrap();
        let naive: f64 = pos
            .iter()
            .zip(&neg)
            .map(|(p, q)| -(1.0 / (1.0 + (q - p).exp())).ln())
            .sum::<f64>()
            / 7.0;
        Tolerance::F64_EXACT.assert_scalar("bpr value", loss, naive);
        check("bpr", gp.dot(&dp) + gn.dot(&dn), |t| {
            bpr_loss((&pos + &(&dp * t)).view(), (&neg + &(&dn * t)).view())
                .unwrap()
                .0
        });
        // extreme margins stay finite
        let (big, _, _) = bpr_loss(
            ndarray::array![0.0f64].view(),
            ndarray::array![800.0].view(),
        )
        .unwrap();
        assert!((big - 800.0).abs() < 1e-9);
        let (reg, grads) = l2_regularization(&[views[0].view(), views[1].view()], 1e-2).unwrap();
        check(
            "l2_regularization",
            (&grads[0] * &dirs[0]).sum() + (&grads[1] * &dirs[1]).sum(),
            |t| {
                l2_regularization(
                    &[
                        (&views[0] + &(&dirs[0] * t)).view(),
                        (&views[1] + &(&dirs[1] * t)).view(),
                    ],
                    1e-2,
                )
                .unwrap()
                .0
            },
        );
        assert!(reg > 0.0);
    }
}
