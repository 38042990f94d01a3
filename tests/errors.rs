//! Bad input gives a clear `Error` naming what is wrong, never a panic.

use ndarray::{array, Array1, Array2};
use recgoat_core::transport::*;
use recgoat_core::{Backend, Error};

fn be() -> Backend {
    Backend::default()
}

fn cfg() -> SinkhornConfig<f64> {
    SinkhornConfig::new(Epsilon::Absolute(0.1))
}

fn solve(
    c: &Array2<f64>,
    a: &Array1<f64>,
    b: &Array1<f64>,
    cfg: &SinkhornConfig<f64>,
) -> Result<SinkhornOutput<f64>, Error> {
    sinkhorn(&Geometry::dense(c.view())?, a.view(), b.view(), cfg, &be())
}

#[test]
fn shapes_that_do_not_match() {
    let c = Array2::<f64>::ones((3, 2));
    let e = solve(&c, &array![0.5, 0.5], &array![0.5, 0.5], &cfg()).unwrap_err();
    assert!(
        matches!(e, Error::Shape { .. }) && e.to_string().contains("a (row weights)"),
        "{e}"
    );
    let e = solve(&c, &Array1::from_elem(3, 1.0 / 3.0), &array![1.0], &cfg()).unwrap_err();
    assert!(e.to_string().contains("b (column weights)"), "{e}");
    let e = Geometry::sq_euclidean(
        Array2::<f64>::ones((2, 3)).view(),
        Array2::<f64>::ones((2, 4)).view(),
    )
    .unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let e = dimension_cost(
        Array2::<f64>::ones((4, 3)).view(),
        Array2::<f64>::ones((5, 3)).view(),
        1.0,
    )
    .unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
}

#[test]
fn negative_zero_or_non_finite_weights() {
    let c = Array2::<f64>::ones((2, 2));
    let ok = array![0.5, 0.5];
    for (bad, needle) in [
        (array![1.5, -0.5], "a[1] = -0.5"),
        (array![1.0, 0.0], "a[1] = 0"),
        (array![f64::NAN, 0.5], "non-finite"),
        (array![f64::INFINITY, 0.5], "non-finite"),
    ] {
        let e = solve(&c, &bad, &ok, &cfg()).unwrap_err();
        assert!(e.to_string().contains(needle), "{needle}: {e}");
    }
}

#[test]
fn negative_or_non_finite_costs() {
    let e = Geometry::dense(array![[0.0, -1.0], [1.0, 0.0]].view()).unwrap_err();
    assert!(matches!(e, Error::Negative { index: 1, .. }), "{e}");
    let e = Geometry::dense(array![[0.0, 1.0], [f64::NAN, 0.0]].view()).unwrap_err();
    assert!(matches!(e, Error::NonFinite { index: 2, .. }), "{e}");
    let e = Geometry::sq_euclidean(
        array![[0.0, f64::INFINITY]].view(),
        array![[1.0, 1.0]].view(),
    )
    .unwrap_err();
    assert!(matches!(e, Error::NonFinite { .. }), "{e}");
}

#[test]
fn balanced_marginals_of_different_mass() {
    let c = Array2::<f64>::ones((2, 2));
    let e = solve(&c, &array![0.5, 0.5], &array![0.5, 0.7], &cfg()).unwrap_err();
    assert!(
        matches!(e, Error::Marginals { .. }) && e.to_string().contains("equal masses"),
        "{e}"
    );
    // fine once a side is penalised
    let ub = cfg().with_marginals(Marginal::Balanced, Marginal::Kl(1.0));
    assert!(solve(&c, &array![0.5, 0.5], &array![0.5, 0.7], &ub).is_ok());
}

#[test]
fn eps_and_other_parameters_out_of_domain() {
    let c = Array2::<f64>::ones((2, 2));
    let w = array![0.5, 0.5];
    let cases: Vec<(SinkhornConfig<f64>, &str)> = vec![
        (SinkhornConfig::new(Epsilon::Absolute(0.0)), "eps"),
        (SinkhornConfig::new(Epsilon::Absolute(-1.0)), "eps"),
        (SinkhornConfig::new(Epsilon::Absolute(f64::NAN)), "eps"),
        (
            SinkhornConfig::new(Epsilon::relative(EpsScale::Mean, 0.0)),
            "eps",
        ),
        (cfg().with_tol(0.0, ErrorNorm::L1), "tol"),
        (cfg().with_iters(0, 1), "max_iter"),
        (cfg().with_iters(10, 0), "check_every"),
        (
            cfg().with_marginals(Marginal::Kl(0.0), Marginal::Balanced),
            "marginal_a",
        ),
        (
            cfg().with_marginals(Marginal::Balanced, Marginal::Tau(1.0)),
            "marginal_b",
        ),
        (
            cfg().with_schedule(EpsSchedule::Geometric {
                start: Epsilon::Absolute(1.0),
                decay: 1.5,
                stage_iters: 5,
            }),
            "schedule.decay",
        ),
    ];
    for (bad, field) in cases {
        let e = solve(&c, &w, &w, &bad).unwrap_err();
        assert!(
            matches!(e, Error::Param { name, .. } if name == field),
            "{field}: {e}"
        );
    }
    // a relative eps on an all-zero cost resolves to 0: say so
    let zero = Array2::<f64>::zeros((2, 2));
    let e = solve(
        &zero,
        &w,
        &w,
        &SinkhornConfig::new(Epsilon::relative(EpsScale::Mean, 0.1)),
    )
    .unwrap_err();
    assert!(e.to_string().contains("Epsilon::Absolute"), "{e}");
    let e = dimension_cost(
        Array2::<f64>::ones((2, 2)).view(),
        Array2::<f64>::ones((2, 2)).view(),
        0.0,
    )
    .unwrap_err();
    assert!(matches!(e, Error::Param { name: "scale", .. }), "{e}");
}

#[test]
fn zero_size_inputs() {
    let e = Geometry::dense(Array2::<f64>::zeros((0, 3)).view()).unwrap_err();
    assert!(matches!(e, Error::Empty { .. }), "{e}");
    let e = Geometry::sq_euclidean(
        Array2::<f64>::zeros((3, 0)).view(),
        Array2::<f64>::zeros((3, 0)).view(),
    )
    .unwrap_err();
    assert!(matches!(e, Error::Empty { .. }), "{e}");
    let e = dimension_cost(
        Array2::<f64>::zeros((0, 2)).view(),
        Array2::<f64>::zeros((0, 2)).view(),
        1.0,
    )
    .unwrap_err();
    assert!(matches!(e, Error::Empty { .. }), "{e}");
}

#[test]
fn gradient_inputs_are_checked() {
    let c = array![[0.0, 1.0], [1.0, 0.0]];
    let w = array![0.5, 0.5];
    let out = solve(&c, &w, &w, &cfg()).unwrap();
    let geom = Geometry::dense(c.view()).unwrap();
    let e = implicit_plan_vjp(
        &geom,
        w.view(),
        w.view(),
        &out,
        Array2::<f64>::ones((3, 2)).view(),
        &ImplicitConfig::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("grad_plan"), "{e}");
    let e = implicit_plan_vjp(
        &geom,
        w.view(),
        w.view(),
        &out,
        array![[f64::NAN, 0.0], [0.0, 0.0]].view(),
        &ImplicitConfig::default(),
    )
    .unwrap_err();
    assert!(matches!(e, Error::NonFinite { .. }), "{e}");
    let e =
        point_cloud_gradients(&geom, &out, w.view(), w.view(), recgoat_core::Par::Seq).unwrap_err();
    assert!(e.to_string().contains("sq_euclidean"), "{e}");
    let e = envelope(&out, array![1.0].view(), w.view()).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let e = UnrolledOutput::new(c.view(), w.view(), w.view(), 0.1, (None, None), 0).unwrap_err();
    assert!(matches!(e, Error::Param { name: "iters", .. }), "{e}");
    let oat = AdaptiveTransport::new(AdaptiveTransportConfig::<f64>::default()).unwrap();
    let m = Array2::<f64>::ones((4, 3));
    let e = oat
        .forward(
            m.view(),
            m.view(),
            Array2::<f64>::zeros((2, 2)).view(),
            &be(),
        )
        .unwrap_err();
    assert!(e.to_string().contains("delta"), "{e}");
    let bad = AdaptiveTransportConfig::<f64> {
        cost_scale: -1.0,
        ..Default::default()
    };
    assert!(matches!(
        AdaptiveTransport::new(bad).unwrap_err(),
        Error::Param {
            name: "cost_scale",
            ..
        }
    ));
}

// ---------------------------------------------------------------- graphs and graph attention

mod graphs {
    use ndarray::Array2;
    use recgoat_core::attention::*;
    use recgoat_core::graph::*;
    use recgoat_core::{Error, Par};

    fn msg<T: std::fmt::Debug>(r: Result<T, Error>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn malformed_graphs() {
        assert!(
            msg(CsrGraph::<f32>::new(2, 2, vec![0, 1, 2], vec![0, 5], None))
                .contains("index 5 out of range")
        );
        assert!(
            msg(CsrGraph::<f32>::new(1, 3, vec![0, 2], vec![2, 1], None))
                .contains("not strictly increasing")
        );
        assert!(
            msg(CsrGraph::<f32>::new(1, 3, vec![0, 2], vec![1, 1], None))
                .contains("not strictly increasing")
        );
        assert!(msg(CsrGraph::<f32>::new(
            3,
            2,
            vec![0, 2, 1, 2],
            vec![0, 1],
            None
        ))
        .contains("decreases"));
        assert!(
            msg(CsrGraph::<f32>::new(2, 2, vec![0, 1], vec![0], None)).contains("indptr length")
        );
        assert!(msg(CsrGraph::<f32>::new(
            1,
            2,
            vec![0, 1],
            vec![0],
            Some(vec![f32::NAN])
        ))
        .contains("non-finite"));
        assert!(msg(CsrGraph::<f32>::from_edges(2, 2, &[(0, 2)], None)).contains("out of range"));
        assert!(msg(bipartite_user_item::<f32>(2, 2, &[(0, 3)])).contains("item 3"));
        assert!(msg(CsrGraph::<f32>::from_edges(2, 3, &[], None)
            .unwrap()
            .with_self_loops())
        .contains("square"));
    }

    #[test]
    fn bad_dense_inputs() {
        let g = CsrGraph::<f32>::from_edges(3, 3, &[(0, 1), (1, 2), (2, 0)], None).unwrap();
        assert!(matches!(
            spmm(&g, Array2::<f32>::zeros((4, 2)).view(), Par::Seq).unwrap_err(),
            Error::Shape { .. }
        ));
        // NaN/Inf is detected with the product: in a gathered row (its output turns non-finite, whatever the
        // weight, zero included) and in a row no edge reads (column 3 of `h`), with its flat index, for the
        // generic kernel (d = 2) and the f32 AVX2 one (d = 8), sequential and parallel
        let h = CsrGraph::<f32>::from_edges(
            4,
            4,
            &[(0, 1), (1, 2), (2, 0), (3, 0)],
            Some(&[1.0, 0.0, 2.0, 1.0]),
        )
        .unwrap();
        for d in [2, 8] {
            for par in [Par::Seq, Par::Rayon(2), Par::Rayon(3)] {
                for (row, col) in [(0, 0), (1, 1), (2, d - 1), (3, 1)] {
                    let index = row * d + col;
                    let mut x = Array2::<f32>::zeros((4, d));
                    x[[row, col]] = f32::INFINITY;
                    assert!(matches!(
                        spmm(&h, x.view(), par).unwrap_err(),
                        Error::NonFinite { index: i, .. } if i == index
                    ));
                    x[[row, col]] = f32::NAN;
                    let e = lightgcn_forward(&h, x.view(), 2, par).unwrap_err();
                    assert!(matches!(e, Error::NonFinite { index: i, .. } if i == index));
                    let mut y = Array2::<f32>::zeros((4, d));
                    let e = spmm_into(&h, x.view(), y.view_mut(), par).unwrap_err();
                    assert!(matches!(e, Error::NonFinite { index: i, .. } if i == index));
                    let e = spmm_backward(&h, x.view(), par).unwrap_err();
                    assert!(matches!(e, Error::NonFinite { index: i, .. } if i == index));
                }
                // finite inputs whose product overflows are not an input error
                let big = Array2::<f32>::from_elem((4, d), f32::MAX);
                let y = spmm(&h, big.view(), par).unwrap();
                assert!(y[[2, 0]].is_infinite() && y[[1, 0]] == 0.0);
            }
        }
        assert!(msg(lightgcn_forward(
            &g,
            Array2::<f32>::zeros((3, 2)).view(),
            0,
            Par::Seq
        ))
        .contains("layers"));
        let f = Array2::<f32>::ones((4, 3));
        assert!(matches!(
            knn_graph(f.view(), &KnnConfig::new(4), Par::Seq).unwrap_err(),
            Error::Param { name: "k", .. }
        ));
        assert!(matches!(
            knn_graph(
                Array2::<f32>::zeros((0, 3)).view(),
                &KnnConfig::new(1),
                Par::Seq
            )
            .unwrap_err(),
            Error::Empty { .. }
        ));
    }

    #[test]
    fn bad_attention_inputs() {
        assert!(matches!(
            GatConfig::<f32>::new(4, 10, 3).unwrap_err(),
            Error::Param { name: "heads", .. }
        ));
        let cfg = GatConfig::<f32>::new(2, 4, 2).unwrap();
        assert!(matches!(
            GatLayer::new(GatConfig {
                attn_drop: 1.0,
                ..cfg
            })
            .unwrap_err(),
            Error::Param {
                name: "attn_drop",
                ..
            }
        ));
        let layer = GatLayer::new(cfg).unwrap();
        let p = GatParams::init(&cfg, &mut recgoat_core::testing::rng(0));
        let g = CsrGraph::<f32>::from_edges(3, 3, &[(0, 1), (1, 2)], None).unwrap();
        // feature rows that do not match the graph, and a wrong input width
        assert!(msg(layer.forward(
            &p,
            &g,
            Array2::<f32>::zeros((4, 2)).view(),
            Mode::Eval,
            Par::Seq
        ))
        .contains("x (nodes x in_dim)"));
        assert!(msg(layer.forward(
            &p,
            &g,
            Array2::<f32>::zeros((3, 3)).view(),
            Mode::Eval,
            Par::Seq
        ))
        .contains("x (nodes x in_dim)"));
        let mut x = Array2::<f32>::zeros((3, 2));
        x[[2, 0]] = f32::NAN;
        assert!(matches!(
            layer
                .forward(&p, &g, x.view(), Mode::Eval, Par::Seq)
                .unwrap_err(),
            Error::NonFinite { .. }
        ));
        // node 2 has no incoming edge and self loops are off
        let no_loops = GatLayer::new(GatConfig {
            add_self_loops: false,
            ..cfg
        })
        .unwrap();
        let e = msg(no_loops.forward(
            &p,
            &g,
            Array2::<f32>::zeros((3, 2)).view(),
            Mode::Eval,
            Par::Seq,
        ));
        assert!(e.contains("node 2") && e.contains("zero in-degree"), "{e}");
        // parameters of the wrong shape, and a backward with a wrong gradient shape
        let bad = GatParams {
            w: Array2::zeros((3, 4)),
            ..p.clone()
        };
        assert!(msg(layer.forward(
            &bad,
            &g,
            Array2::<f32>::zeros((3, 2)).view(),
            Mode::Eval,
            Par::Seq
        ))
        .contains("w"));
        let (_, cache) = layer
            .forward(
                &p,
                &g,
                Array2::<f32>::zeros((3, 2)).view(),
                Mode::Eval,
                Par::Seq,
            )
            .unwrap();
        assert!(msg(layer.backward(
            &p,
            &g,
            &cache,
            Array2::<f32>::zeros((3, 5)).view(),
            Par::Seq
        ))
        .contains("grad_out"));
        let other =
            CsrGraph::<f32>::from_edges(3, 3, &[(0, 1), (1, 2), (2, 1), (0, 2)], None).unwrap();
        assert!(msg(layer.backward(
            &p,
            &other,
            &cache,
            Array2::<f32>::zeros((3, 4)).view(),
            Par::Seq
        ))
        .contains("not the graph of the forward pass"));
    }
}

// ---------------------------------------------------------------- InfoNCE

mod contrastive {
    use ndarray::{array, Array1, Array2};
    use recgoat_core::contrastive::*;
    use recgoat_core::{Error, Par};

    #[test]
    fn bad_info_nce_inputs() {
        let cfg = InfoNceConfig::<f64>::default();
        let a = Array2::<f64>::ones((3, 2));
        let run = |x: &Array2<f64>, y: &Array2<f64>, c: &InfoNceConfig<f64>| {
            info_nce(x.view(), y.view(), None, None, c, Par::Seq)
        };
        assert!(matches!(
            run(&a, &Array2::ones((4, 2)), &cfg).unwrap_err(),
            Error::Shape { .. }
        ));
        assert!(matches!(
            run(&Array2::zeros((0, 2)), &Array2::zeros((0, 2)), &cfg).unwrap_err(),
            Error::Empty { .. }
        ));
        for t in [0.0, -1.0, f64::NAN] {
            let e = run(
                &a,
                &a,
                &InfoNceConfig {
                    temperature: t,
                    ..cfg
                },
            )
            .unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::Param {
                        name: "temperature",
                        ..
                    }
                ),
                "{e}"
            );
        }
        let mut z = a.clone();
        z.row_mut(1).fill(0.0);
        let e = run(&z, &a, &cfg).unwrap_err().to_string();
        assert!(
            e.contains("row 1 of v1") && e.contains("L2-normalised"),
            "{e}"
        );
        assert!(
            run(
                &z,
                &a,
                &InfoNceConfig {
                    normalize: false,
                    ..cfg
                }
            )
            .is_ok(),
            "zero rows are fine without normalisation"
        );
        let mut nan = a.clone();
        nan[[2, 1]] = f64::NAN;
        assert!(matches!(
            run(&a, &nan, &cfg).unwrap_err(),
            Error::NonFinite { .. }
        ));
        let e = info_nce(
            a.view(),
            a.view(),
            Some(Array2::<f64>::ones((2, 3)).view()),
            None,
            &cfg,
            Par::Seq,
        )
        .unwrap_err();
        assert!(e.to_string().contains("negatives"), "{e}");
        let e = info_nce(
            a.view(),
            a.view(),
            None,
            Some(Array1::<f64>::ones(2).view()),
            &cfg,
            Par::Seq,
        )
        .unwrap_err();
        assert!(e.to_string().contains("weights"), "{e}");
        let e = info_nce(
            a.view(),
            a.view(),
            None,
            Some(array![1.0, -1.0, 1.0].view()),
            &cfg,
            Par::Seq,
        )
        .unwrap_err();
        assert!(matches!(e, Error::Negative { index: 1, .. }), "{e}");
    }
}

// ---------------------------------------------------------------- small layers

#[test]
fn bad_layer_inputs() {
    use recgoat_core::nn::*;
    let lin = Linear::<f64>::new(
        3,
        2,
        true,
        Init::KaimingUniform,
        &mut recgoat_core::testing::rng(0),
    );
    assert!(matches!(
        lin.forward(Array2::<f64>::zeros((4, 2)).view())
            .unwrap_err(),
        Error::Shape { .. }
    ));
    assert!(matches!(
        lin.backward(
            Array2::<f64>::zeros((4, 3)).view(),
            Array2::<f64>::zeros((5, 2)).view()
        )
        .unwrap_err(),
        Error::Shape { .. }
    ));
    let mut z = Array2::<f64>::ones((3, 2));
    z.row_mut(2).fill(0.0);
    assert!(l2_normalize(z.view())
        .unwrap_err()
        .to_string()
        .contains("row 2"));
    let ln = LayerNorm {
        eps: 0.0,
        ..LayerNorm::<f64>::new(2)
    };
    assert!(matches!(
        ln.forward(Array2::<f64>::ones((2, 2)).view()).unwrap_err(),
        Error::Param { name: "eps", .. }
    ));
    assert!(matches!(
        bpr_loss(array![1.0].view(), array![1.0, 2.0].view()).unwrap_err(),
        Error::Shape { .. }
    ));
    assert!(matches!(
        softmax_fusion::<f64>(&[], array![].view()).unwrap_err(),
        Error::Empty { .. }
    ));
    let v = Array2::<f64>::ones((2, 2));
    assert!(matches!(
        softmax_fusion(&[v.view()], array![0.0, 1.0].view()).unwrap_err(),
        Error::Shape { .. }
    ));
    let mut st = AdamState::new((2, 2));
    let mut p = Array2::<f64>::zeros((2, 2));
    assert!(matches!(
        Adam::new(0.0)
            .step(p.view_mut(), v.view(), &mut st)
            .unwrap_err(),
        Error::Param { name: "lr", .. }
    ));
    let mut g = v.clone();
    g[[0, 0]] = f64::NAN;
    assert!(matches!(
        Adam::new(0.1)
            .step(p.view_mut(), g.view(), &mut st)
            .unwrap_err(),
        Error::NonFinite { .. }
    ));
    assert!(gather(v.view(), &[0, 5])
        .unwrap_err()
        .to_string()
        .contains("ids[1] = 5"));
}

/// No op hands back a non-finite result from a non-finite parameter, and degenerate shapes are refused: a
/// NaN weight or bias, a LayerNorm of width 0, an Adam step on a NaN parameter, one InfoNCE pair with
/// nothing to contrast it with.
#[test]
fn non_finite_parameters_and_degenerate_shapes_are_refused() {
    use recgoat_core::contrastive::{info_nce, InfoNceConfig};
    use recgoat_core::nn::*;
    use recgoat_core::Par;
    let x = Array2::<f64>::ones((2, 2));
    let mut lin = Linear {
        w: Array2::<f64>::ones((2, 3)),
        b: Some(Array1::zeros(3)),
    };
    lin.w[[1, 2]] = f64::NAN;
    let e = lin.forward(x.view()).unwrap_err();
    assert!(
        matches!(e, Error::NonFinite { .. }) && e.to_string().contains('w'),
        "{e}"
    );
    lin.w[[1, 2]] = 0.0;
    lin.b = Some(array![0.0, f64::INFINITY, 0.0]);
    assert!(matches!(
        lin.forward(x.view()).unwrap_err(),
        Error::NonFinite { .. }
    ));
    lin.b = Some(array![0.0]);
    assert!(matches!(
        lin.forward(x.view()).unwrap_err(),
        Error::Shape { .. }
    ));
    let e = LayerNorm::<f64>::new(0)
        .forward(Array2::<f64>::zeros((2, 0)).view())
        .unwrap_err();
    assert!(matches!(e, Error::Param { name: "width", .. }), "{e}");
    let mut ln = LayerNorm::<f64>::new(2);
    ln.gamma[0] = f64::NAN;
    assert!(matches!(
        ln.forward(x.view()).unwrap_err(),
        Error::NonFinite { .. }
    ));
    let mut p = Array2::<f64>::zeros((2, 2));
    p[[1, 0]] = f64::NAN;
    let mut st = AdamState::new((2, 2));
    let e = Adam::new(0.1)
        .step(p.view_mut(), x.view(), &mut st)
        .unwrap_err();
    assert!(
        matches!(e, Error::NonFinite { .. }) && e.to_string().contains("param"),
        "{e}"
    );
    assert_eq!(st.t, 0, "a refused step is not counted");
    // a row-sparse step checks the rows it touches only
    let rows = gather_backward(&[0], x.row(0).insert_axis(ndarray::Axis(0))).unwrap();
    Adam::new(0.1)
        .step_rows(p.view_mut(), &rows, &mut st)
        .unwrap();
    let rows = gather_backward(&[1], x.row(0).insert_axis(ndarray::Axis(0))).unwrap();
    assert!(Adam::new(0.1)
        .step_rows(p.view_mut(), &rows, &mut st)
        .is_err());
    let one = array![[1.0f64, 0.0]];
    let cfg = InfoNceConfig::default();
    let e = info_nce(one.view(), one.view(), None, None, &cfg, Par::Seq).unwrap_err();
    assert!(e.to_string().contains("nothing to contrast"), "{e}");
    let negatives = array![[0.0f64, 1.0]];
    let out = info_nce(
        one.view(),
        one.view(),
        Some(negatives.view()),
        None,
        &cfg,
        Par::Seq,
    )
    .unwrap();
    assert!(out.loss > 0.0);
}

#[test]
fn bad_evaluation_inputs() {
    use recgoat_core::model::evaluate;
    let (u, i) = (Array2::<f32>::ones((3, 2)), Array2::<f32>::ones((4, 2)));
    let run = |ks: &[usize], gt: &[(usize, usize)]| {
        evaluate(u.view(), i.view(), gt, &[], ks, recgoat_core::Par::Seq)
    };
    assert!(matches!(
        run(&[], &[(0, 1)]).unwrap_err(),
        Error::Param { name: "ks", .. }
    ));
    assert!(matches!(
        run(&[0, 5], &[(0, 1)]).unwrap_err(),
        Error::Param { name: "ks", .. }
    ));
    assert!(run(&[5], &[(3, 1)])
        .unwrap_err()
        .to_string()
        .contains("out of range"));
    let wide = Array2::<f32>::ones((4, 3));
    assert!(matches!(
        evaluate(
            u.view(),
            wide.view(),
            &[(0, 1)],
            &[],
            &[5],
            recgoat_core::Par::Seq
        )
        .unwrap_err(),
        Error::Shape { .. }
    ));
    let mut nan = u.clone();
    nan[[1, 1]] = f32::NAN;
    assert!(matches!(
        evaluate(
            nan.view(),
            i.view(),
            &[(0, 1)],
            &[],
            &[5],
            recgoat_core::Par::Seq
        )
        .unwrap_err(),
        Error::NonFinite { .. }
    ));
}

#[cfg(not(feature = "gpu"))]
#[test]
fn gpu_context_without_the_feature_is_unavailable() {
    let e = recgoat_core::gpu::GpuContext::new().unwrap_err();
    assert!(
        matches!(&e, recgoat_core::Error::GpuUnavailable { reason } if reason.contains("`gpu`")),
        "{e}"
    );
}
