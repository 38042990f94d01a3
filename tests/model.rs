//! The whole RecGOAT model: central-difference checks of the full loss gradient in f64, determinism,
//! training, checkpoints.

use ndarray::Array2;
use recgoat_core::attention::Mode;
use recgoat_core::data::Dataset;
use recgoat_core::model::*;
use recgoat_core::testing::{self, central_difference, Tolerance};
use recgoat_core::{Backend, Par};

/// 9 users, 12 items, two modalities of widths 5 and 3; every user has 3-4 training items.
fn tiny() -> Dataset {
    let mut rng = testing::rng(42);
    let f1: Array2<f32> = testing::randn::<f64, _, _>(&mut rng, (12, 5)).mapv(|v| v as f32);
    let f2: Array2<f32> = testing::randn::<f64, _, _>(&mut rng, (12, 3)).mapv(|v| v as f32);
    let mut train = Vec::new();
    for u in 0..9 {
        for k in 0..(3 + u % 2) {
            train.push((u, (u * 5 + k * 3) % 12));
        }
    }
    let test: Vec<_> = (0..9).map(|u| (u, (u * 5 + 1) % 12)).collect();
    Dataset::new(
        "tiny",
        train,
        vec![],
        test,
        vec![("a".into(), f1), ("b".into(), f2)],
    )
    .unwrap()
}

fn tiny_config(base: RecGoatConfig) -> RecGoatConfig {
    RecGoatConfig {
        embedding_dim: 4,
        gat_heads: 2,
        knn_k: 3,
        // absolute eps: a relative eps is held constant in the gradient, which a finite difference cannot do
        oat_eps_relative: None,
        oat_eps_absolute: 0.5,
        oat_tol: 1e-13,
        oat_iters: 20_000,
        ot_sample_tol: 1e-13,
        ..base
    }
}

fn batch() -> Batch {
    Batch {
        users: vec![0, 3, 5, 8, 2],
        pos: vec![0, 3, 1, 4, 10],
        neg: vec![7, 11, 2, 6, 9],
    }
}

/// Directional derivative of the full loss along a random direction: analytic vs central difference.
fn gradient_check(cfg: RecGoatConfig) {
    let ds = tiny();
    let name = format!("{cfg:?}");
    let model = RecGoat::<f64>::new(cfg, &ds, Backend::Cpu(Par::Seq)).unwrap();
    let params = model.init_params();
    let mode = Mode::Train { seed: 11 };
    let b = batch();
    let (loss, grads) = model.loss_and_grad(&params, &b, mode, None).unwrap();
    assert!(loss.total.is_finite());
    let mut rng = testing::rng(5);
    let mut dir = params.zeros_like();
    for (_, mut t) in dir.tensors_mut() {
        let r = testing::randn::<f64, _, _>(&mut rng, t.dim());
        t.assign(&r);
    }
    let analytic = grads.dot(&dir);
    let numeric = central_difference(
        |h| {
            let mut p = params.clone();
            p.scaled_add(h, &dir);
            model.loss(&p, &b, mode).unwrap().total
        },
        1e-5,
    );
    Tolerance::new(1e-5, 1e-8).assert_scalar(
        &format!("directional derivative, {name}"),
        analytic,
        numeric,
    );
    // and per tensor: the gradient of each parameter along its own slice of the direction
    for (k, (tname, g)) in grads.tensors().into_iter().enumerate() {
        let mut only = dir.zeros_like();
        only.tensors_mut()[k].1.assign(&dir.tensors()[k].1);
        let numeric = central_difference(
            |h| {
                let mut p = params.clone();
                p.scaled_add(h, &only);
                model.loss(&p, &b, mode).unwrap().total
            },
            1e-5,
        );
        let analytic = (&g * &dir.tensors()[k].1).sum();
        Tolerance::new(1e-5, 1e-8).assert_scalar(&tname, analytic, numeric);
    }
}

#[test]
fn gradient_paper() {
    gradient_check(tiny_config(RecGoatConfig::paper()));
}

#[test]
fn gradient_paper_unrolled_with_sample_ot_and_user_branch() {
    gradient_check(tiny_config(RecGoatConfig {
        oat_gradient: OtGradient::Unrolled(30),
        ot_sample_weight: 0.3,
        user_user: true,
        gatv2: true,
        gat_layers: 2,
        ..RecGoatConfig::paper()
    }));
}

/// The released code's semantics (free fusion scalars, raw plan, `1 - InfoNCE` CMCL) with the plan
/// differentiated: its own `Detached` mode is by design not the derivative of the loss (the plan is a
/// constant), which the next test shows.
#[test]
fn gradient_official_code() {
    gradient_check(tiny_config(RecGoatConfig {
        cl_weight: 0.5,
        oat_gradient: OtGradient::Implicit,
        ..RecGoatConfig::official_code()
    }));
}

/// Detaching the plan changes exactly the cost's share of the gradient: `Delta`, the fusion weights and the
/// branch parameters downstream of nothing but the map agree, the collaborative embedding does not.
#[test]
fn detached_plan_drops_only_the_path_through_the_cost() {
    let ds = tiny();
    let grads = |g: OtGradient| {
        let cfg = tiny_config(RecGoatConfig {
            oat_gradient: g,
            ..RecGoatConfig::official_code()
        });
        let model = RecGoat::<f64>::new(cfg, &ds, Backend::Cpu(Par::Seq)).unwrap();
        let p = model.init_params();
        model
            .loss_and_grad(&p, &batch(), Mode::Train { seed: 3 }, None)
            .unwrap()
            .1
    };
    let (det, imp) = (grads(OtGradient::Detached), grads(OtGradient::Implicit));
    Tolerance::F64_EXACT.assert_close("grad delta", &det.deltas[0].view(), &imp.deltas[0].view());
    let fd = det.fusion.as_ref().unwrap();
    Tolerance::F64_EXACT.assert_close(
        "grad fusion",
        &fd.view(),
        &imp.fusion.as_ref().unwrap().view(),
    );
    let diff = (&det.embedding - &imp.embedding).mapv(f64::abs).sum();
    assert!(
        diff > 1e-9,
        "the cost path must reach the embeddings when the plan is differentiated"
    );
}

#[test]
fn gradient_lightgcn() {
    gradient_check(tiny_config(RecGoatConfig::lightgcn()));
}

#[test]
fn gradient_without_oat() {
    gradient_check(tiny_config(RecGoatConfig {
        oat: false,
        fusion: Fusion::Free,
        ..RecGoatConfig::paper()
    }));
}
