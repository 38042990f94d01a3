//! Items without training interactions: the content term and its trusts, the cold items' vectors, the
//! warm / cold metrics and the scales tried on validation, the cold-item split, and serving new items and
//! new users from a recommender.

use ndarray::{array, s, Array1, Array2, Axis};
use recgoat_core::attention::Mode;
use recgoat_core::data::Dataset;
use recgoat_core::eval::{
    evaluate_cold_scales, evaluate_grouped, evaluate_reference, feature_cosine, Metrics,
};
use recgoat_core::model::*;
use recgoat_core::recommend::{ContentEncoder, Neighbours, Recommender};
use recgoat_core::testing::{randn, rng, Tolerance};
use recgoat_core::{Backend, Par};

mod common;
use common::tiny;

/// A dataset whose first feature matrix places items in clusters that users prefer (it carries signal)
/// and whose second is noise; items 0..4 have no training interaction.
fn clustered() -> Dataset {
    clustered_with(40, false)
}

/// [`clustered`] with `n_items` items; with `half`, each user likes about half of its cluster's items (a
/// list of 20 then holds only some of the items a user might like).
fn clustered_with(n_items: usize, half: bool) -> Dataset {
    let (n_users, clusters) = (60, 4);
    let mut r = rng(7);
    let centres = randn::<f64, _, _>(&mut r, (clusters, 6));
    let jitter = randn::<f64, _, _>(&mut r, (n_items, 6));
    let signal = Array2::from_shape_fn((n_items, 6), |(i, c)| {
        (centres[[i % clusters, c]] + 0.2 * jitter[[i, c]]) as f32
    });
    let noise = randn::<f64, _, _>(&mut r, (n_items, 5)).mapv(|v| v as f32);
    let (mut train, mut valid, mut test) = (Vec::new(), Vec::new(), Vec::new());
    for u in 0..n_users {
        // each user likes the items of one cluster; the first four items (one per cluster) have no
        // training interaction, and of the others each user holds one out for validation and one for test
        let c = u % clusters;
        let liked: Vec<usize> = (clusters..n_items)
            .filter(|i| i % clusters == c && (!half || (i * 7 + u * 13) % 5 < 3))
            .collect();
        let (v, t) = (
            (u / clusters) % liked.len(),
            (u / clusters + 1) % liked.len(),
        );
        for (k, &i) in liked.iter().enumerate() {
            match k {
                k if k == v => valid.push((u, i)),
                k if k == t => test.push((u, i)),
                _ => train.push((u, i)),
            }
        }
        if u % 2 == 0 {
            valid.push((u, c));
        } else {
            test.push((u, c));
        }
    }
    Dataset::new(
        "clustered",
        train,
        valid,
        test,
        vec![("signal".into(), signal), ("noise".into(), noise)],
    )
    .unwrap()
}

/// The feature rows of the items `items`, by modality name.
fn feature_rows(ds: &Dataset, items: &[usize]) -> Vec<(String, Array2<f32>)> {
    (ds.item_features.iter())
        .map(|(n, x)| (n.clone(), x.select(Axis(0), items)))
        .collect()
}

/// Feature rows as the named views `ContentEncoder::encode` and `Recommender::embed_items` take.
fn named(rows: &[(String, Array2<f32>)]) -> Vec<(&str, ndarray::ArrayView2<'_, f32>)> {
    rows.iter().map(|(n, x)| (n.as_str(), x.view())).collect()
}

#[test]
fn content_trust_recovers_a_known_mix_and_drops_what_does_not_help() {
    let mut r = rng(3);
    let users = randn::<f64, _, _>(&mut r, (50, 4));
    let c1 = randn::<f64, _, _>(&mut r, (30, 4));
    let c2 = randn::<f64, _, _>(&mut r, (30, 4));
    let items = &c1 * 0.7 + &c2 * 0.2;
    let rows: Vec<usize> = (0..30).collect();
    let t = content_trust(users.view(), items.view(), &[c1.view(), c2.view()], &rows).unwrap();
    Tolerance::new(1e-6, 1e-9).assert_scalar("trust of c1", t[0], 0.7);
    Tolerance::new(1e-6, 1e-9).assert_scalar("trust of c2", t[1], 0.2);
    // an encoder anti-correlated with the items gets 0, not a negative weight
    let anti = c1.mapv(|v| -v);
    let t = content_trust(users.view(), c1.view(), &[anti.view(), c1.view()], &rows).unwrap();
    assert_eq!(t[0], 0.0);
    Tolerance::new(1e-6, 1e-9).assert_scalar("trust of the right one", t[1], 1.0);
    // noise gets (almost) nothing beside an exact predictor
    let noise = randn::<f64, _, _>(&mut r, (30, 4));
    let t = content_trust(users.view(), c1.view(), &[c1.view(), noise.view()], &rows).unwrap();
    assert!(t[1] < 1e-6, "{t:?}");
    assert!(content_trust(
        users.view(),
        c1.view(),
        &[c2.row(0).insert_axis(Axis(0))],
        &rows
    )
    .is_err());
}

#[test]
fn cold_items_get_the_trusted_sum_of_their_encoders_at_the_cold_scale() {
    let ds = clustered();
    let mut cfg = RecGoatConfig::recgoat();
    (cfg.embedding_dim, cfg.gat_heads, cfg.knn_k, cfg.batch_size) = (8, 2, 3, 64);
    let mut model = RecGoat::<f64>::new(cfg, &ds, Backend::Cpu(Par::Seq)).unwrap();
    assert_eq!(model.cold_items().iter().filter(|&&c| c).count(), 4);
    assert!(!model.probe_items().is_empty());
    assert!(model.probe_items().iter().all(|&i| !model.cold_items()[i]));
    let p = model.init_params();
    let fwd = model.forward(&p, Mode::Eval, None).unwrap();
    let trust = fwd.content_trust().to_vec();
    assert_eq!(trust.len(), 2);
    let modal = fwd.content_embeddings();
    // the closed-form encoders: each modality's projection fitted on the item vectors, as a recommender keeps
    let (projections, trusts) = model.content_projections(&p).unwrap();
    assert_eq!(trusts, trust);
    assert_eq!(projections.len(), 2);
    let enc = model.content_encoder(&p).unwrap();
    for (((((z, (w, b)), m), (_, raw)), near), t) in (modal.iter().zip(&projections))
        .zip(fwd.modality_embeddings())
        .zip(&ds.item_features)
        .zip(enc.neighbours())
        .zip(&trust)
    {
        assert_ne!(z, &m, "the closed form is not the trained encoder");
        if near.is_some() || *t == 0.0 {
            // blended with the items' neighbours (an encoder keeps no neighbours for a modality without
            // trust): the encoder below checks it whole
            continue;
        }
        // rows scaled to unit length, as the model reads them
        let mut x = raw.mapv(f64::from);
        for mut r in x.rows_mut() {
            let n = r.dot(&r).sqrt();
            if n > 0.0 {
                r.mapv_inplace(|v| v / n);
            }
        }
        let want = x.dot(w) + b;
        assert!(z.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-9));
    }
    for i in 0..ds.n_items {
        let want: Array1<f64> = if i < 4 {
            &modal[0].row(i) * trust[0] + &modal[1].row(i) * trust[1]
        } else {
            fwd.collaborative_items().row(i).to_owned()
        };
        for (a, b) in fwd.items.row(i).iter().zip(&want) {
            assert!((a - b).abs() < 1e-12, "item {i}: {a} vs {b}");
        }
    }
    // the encoder a recommender keeps gives the cold items their vectors from their feature rows
    let cold: Vec<usize> = (0..4).collect();
    let rows = feature_rows(&ds, &cold);
    let feats = named(&rows);
    let encoded = enc.encode(&feats).unwrap();
    for (k, &i) in cold.iter().enumerate() {
        for (a, b) in encoded.row(k).iter().zip(fwd.items.row(i)) {
            assert!(
                (f64::from(*a) - b).abs() < 1e-4 * (1.0 + b.abs()),
                "item {i}: {a} vs {b}"
            );
        }
    }
    // the scale multiplies the cold rows only
    model.set_cold_scale(2.5).unwrap();
    let (_, scaled) = model.embeddings(&p).unwrap();
    for i in 0..ds.n_items {
        let k = if i < 4 { 2.5 } else { 1.0 };
        for (a, b) in scaled.row(i).iter().zip(fwd.items.row(i)) {
            assert!((a - k * b).abs() < 1e-12, "item {i}");
        }
    }
    assert!(model.set_cold_scale(-1.0).is_err() && model.set_cold_scale(f64::NAN).is_err());
}

/// The taste term: with share `a` a cold item's vector is `s (content + a w_i)`, `w_i = r B^T c_i` with
/// `c_i` the item's centred feature code, `B` the ridge map from the users' unit vectors to their tastes
/// (the unit mean of the codes of their training items outside the probe items) and `r` the warm items'
/// mean norm (computed here by hand); warm items are untouched, and the encoder a recommender keeps gives
/// the same vectors from the feature rows, also after a round trip through a file. Features that carry
/// nothing get no taste term: their taste vectors explain nothing on the probe items.
#[test]
fn the_taste_term_adds_the_users_tastes_to_cold_items_and_serves_them() {
    let ds = clustered();
    let t = trained(small(RecGoatConfig::recgoat()), &ds);
    let mut model = t.model().clone();
    let p = t.params().clone();
    model.set_cold_scale(1.5).unwrap();
    model.set_taste_share(0.0).unwrap();
    let (users, base) = model.embeddings(&p).unwrap();
    let w = model
        .taste_vectors(users.view(), base.view())
        .unwrap()
        .unwrap();
    // by hand: the codes, the tastes, the ridge map and the warm items' mean norm
    let unit = |x: &Array2<f64>| {
        let mut x = x.clone();
        for mut r in x.rows_mut() {
            let n = r.dot(&r).sqrt();
            if n > 0.0 {
                r /= n;
            }
        }
        x
    };
    let warm: Vec<usize> = (4..ds.n_items).collect();
    let blocks: Vec<Array2<f64>> = (ds.item_features.iter())
        .map(|(_, x)| {
            let x = unit(&x.mapv(f64::from));
            let mean = x.select(Axis(0), &warm).mean_axis(Axis(0)).unwrap();
            (x - &mean) / 2f64.sqrt()
        })
        .collect();
    let views: Vec<_> = blocks.iter().map(|b| b.view()).collect();
    let codes = unit(&ndarray::concatenate(Axis(1), &views).unwrap());
    let mut tastes = Array2::<f64>::zeros((ds.n_users, codes.ncols()));
    let probe = model.probe_items().to_vec();
    for &(u, i) in ds.train.iter().filter(|p| !probe.contains(&p.1)) {
        tastes.row_mut(u).scaled_add(1.0, &codes.row(i));
    }
    let tastes = unit(&tastes);
    let (users64, base64) = (users.mapv(f64::from), base.mapv(f64::from));
    let z = unit(&users64);
    let d = z.ncols();
    let mut a = z.t().dot(&z);
    let penalty = 1e-3 * a.diag().sum() / d as f64;
    a.diag_mut().mapv_inplace(|v| v + penalty);
    // solve a B = z^T q by Gauss-Jordan elimination
    let mut aug = ndarray::concatenate(Axis(1), &[a.view(), z.t().dot(&tastes).view()]).unwrap();
    for c in 0..d {
        let pivot = aug[[c, c]];
        aug.row_mut(c).mapv_inplace(|v| v / pivot);
        for r in (0..d).filter(|&r| r != c) {
            let f = aug[[r, c]];
            let row = aug.row(c).to_owned();
            aug.row_mut(r).scaled_add(-f, &row);
        }
    }
    let b = aug.slice(s![.., d..]).to_owned();
    let norm = |i: usize| base64.row(i).dot(&base64.row(i)).sqrt();
    let r = warm.iter().map(|&i| norm(i)).sum::<f64>() / warm.len() as f64;
    for i in 0..ds.n_items {
        let want: Array1<f64> = match i < 4 {
            true => b.dot(&codes.row(i)) * r,
            false => Array1::zeros(d),
        };
        // (the model keeps the codes and tastes in f32)
        let got = w.row(i).mapv(f64::from);
        Tolerance::new(1e-4, 1e-6).assert_close(
            &format!("taste of item {i}"),
            &got.view(),
            &want.view(),
        );
    }
    assert!(
        w.row(0).iter().any(|v| v.abs() > 1e-3),
        "the taste moves a cold item"
    );
    // the share adds it, at the scale, to the cold items only
    model.set_taste_share(2.0).unwrap();
    let (_, placed) = model.embeddings(&p).unwrap();
    let want = &base + &(&w * 3.0);
    Tolerance::new(1e-5, 1e-6).assert_close("placed", &placed.view(), &want.view());
    // the encoder gives the same vectors from the feature rows, also from a file
    let enc = model.content_encoder(&p).unwrap();
    assert!(enc.has_taste());
    let cold: Vec<usize> = (0..4).collect();
    let rows = feature_rows(&ds, &cold);
    let feats = named(&rows);
    let encoded = enc.encode(&feats).unwrap();
    for (k, &i) in cold.iter().enumerate() {
        Tolerance::new(1e-4, 1e-5).assert_close(
            &format!("item {i}"),
            &encoded.row(k),
            &placed.row(i),
        );
    }
    let rec = Recommender::new(users.clone(), placed.clone(), vec![vec![]; ds.n_users])
        .unwrap()
        .with_encoder(enc)
        .unwrap();
    let path =
        std::env::temp_dir().join(format!("recgoat-taste-{}.safetensors", std::process::id()));
    rec.save(&path).unwrap();
    let back = Recommender::load(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(back, rec);
    assert_eq!(back.embed_items(&feats).unwrap(), encoded);
    // a share that is not one, or one without the term, is refused
    assert!(model.set_taste_share(-1.0).is_err() && model.set_taste_share(f64::NAN).is_err());
    assert!(model.embeddings_placing(&p, (1.0, -0.5)).is_err());
    let off = RecGoatConfig {
        content_taste: false,
        ..t.config().clone()
    };
    let mut off = RecGoat::<f32>::new(off, &ds, Backend::Cpu(Par::Seq)).unwrap();
    assert!(off
        .taste_vectors(users.view(), base.view())
        .unwrap()
        .is_none());
    assert!(off.set_taste_share(1.0).is_err() && off.set_taste_share(0.0).is_ok());
    let e = off
        .embeddings_placing(&p, (1.0, 1.0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("taste share"), "{e}");
    // noise features: their taste vectors explain nothing on the probe items, and the term stays off
    let mut noise = ds.clone();
    noise.item_features.retain(|(n, _)| n == "noise");
    let t = trained(small(RecGoatConfig::recgoat()), &noise);
    let (users, items) = t.model().embeddings(t.params()).unwrap();
    assert!(t
        .model()
        .taste_vectors(users.view(), items.view())
        .unwrap()
        .is_none());
    assert_eq!(t.state().taste_share, 0.0);
}

/// The content term trains the encoders only: the loss of a batch moves with their parameters, and the
/// backbone's gradient is the one without the term.
#[test]
fn the_content_term_trains_the_encoders_and_leaves_the_backbone_alone() {
    let ds = tiny();
    let base = tiny_recgoat();
    // no contrastive term: it leaves out the probe items' rows when the content term is on
    let base = RecGoatConfig {
        cl_weight: 0.0,
        ..base
    };
    let without = RecGoatConfig {
        content_weight: 0.0,
        ..base.clone()
    };
    let a = RecGoat::<f64>::new(base, &ds, Backend::Cpu(Par::Seq)).unwrap();
    let b = RecGoat::<f64>::new(without, &ds, Backend::Cpu(Par::Seq)).unwrap();
    let p = a.init_params();
    let batch = Batch {
        users: vec![0, 1, 2, 3],
        pos: vec![0, 5, 10, 3],
        neg: vec![7, 2, 1, 6],
    };
    let (la, ga) = a.loss_and_grad(&p, &batch, Mode::Eval, None).unwrap();
    let (lb, gb) = b.loss_and_grad(&p, &batch, Mode::Eval, None).unwrap();
    assert!(la.content > 0.0 && lb.content == 0.0);
    assert!((la.total - lb.total - la.content).abs() < 1e-12);
    assert_eq!(
        ga.embedding, gb.embedding,
        "the items' vectors are the term's fixed target"
    );
    assert!(ga.branches[0].proj.w.iter().any(|v| v.abs() > 0.0));
    assert!(gb.branches[0].proj.w.iter().all(|&v| v == 0.0));
}

/// Row-wise branches (the encoders run only on the rows the batch terms use) give the loss and gradients
/// of the same model with the branches run over every item (a residual fusion whose gates are held at 0
/// scores items alike).
#[test]
fn row_wise_branches_match_branches_over_every_item() {
    let ds = tiny();
    let base = RecGoatConfig {
        cl_modality_weight: 0.5,
        content_max_rows: 3,
        ..tiny_recgoat()
    };
    let full = RecGoatConfig {
        fusion: Fusion::Residual,
        fusion_gate_lr: 0.0,
        ..base.clone()
    };
    let mut a = RecGoat::<f64>::new(base, &ds, Backend::Cpu(Par::Seq)).unwrap();
    let mut b = RecGoat::<f64>::new(full, &ds, Backend::Cpu(Par::Seq)).unwrap();
    for m in [&mut a, &mut b] {
        m.set_modality_trust(&[0.4, 3.0]).unwrap();
    }
    let pa = a.init_params();
    let mut pb = b.init_params();
    pb.embedding.assign(&pa.embedding);
    pb.branches = pa.branches.clone();
    let batch = Batch {
        users: vec![0, 1, 2, 3, 4],
        pos: vec![0, 5, 10, 3, 8],
        neg: vec![7, 2, 1, 6, 4],
    };
    let (la, ga) = a.loss_and_grad(&pa, &batch, Mode::Eval, None).unwrap();
    let (lb, gb) = b.loss_and_grad(&pb, &batch, Mode::Eval, None).unwrap();
    let tol = Tolerance::new(1e-10, 1e-12);
    tol.assert_scalar("loss", la.total, lb.total);
    tol.assert_scalar("content", la.content, lb.content);
    tol.assert_scalar("cl", la.cl, lb.cl);
    tol.assert_close("embedding", &ga.embedding.view(), &gb.embedding.view());
    for (m, (x, y)) in ga.branches.iter().zip(&gb.branches).enumerate() {
        tol.assert_close(&format!("branch {m} w"), &x.proj.w.view(), &y.proj.w.view());
        let (bx, by) = (x.proj.b.as_ref().unwrap(), y.proj.b.as_ref().unwrap());
        tol.assert_close(&format!("branch {m} b"), &bx.view(), &by.view());
    }
}

/// With `cl_modality_trust` a modality's contrastive term weighs `min(trust, 1)`: trust 0 leaves it out,
/// a trust above 1 counts as 1.
#[test]
fn modality_terms_follow_their_trust() {
    let ds = tiny();
    let cfg = RecGoatConfig {
        cl_modality_weight: 1.0,
        cl_modality_trust: true,
        ..tiny_recgoat()
    };
    let mut m = RecGoat::<f64>::new(cfg.clone(), &ds, Backend::Cpu(Par::Seq)).unwrap();
    let p = m.init_params();
    let batch = Batch {
        users: vec![0, 1, 2, 3],
        pos: vec![0, 5, 10, 3],
        neg: vec![7, 2, 1, 6],
    };
    let cl = |m: &RecGoat<f64>| m.loss(&p, &batch, Mode::Eval).unwrap().cl;
    assert_eq!(m.modality_trust(), &[0.0, 0.0]);
    let none = cl(&m);
    let user_only = RecGoat::<f64>::new(
        RecGoatConfig {
            cl_modality_weight: 0.0,
            cl_modality_trust: false,
            ..cfg
        },
        &ds,
        Backend::Cpu(Par::Seq),
    )
    .unwrap();
    assert_eq!(none, cl(&user_only), "trust 0: the user term alone");
    m.set_modality_trust(&[1.0, 0.0]).unwrap();
    let one = cl(&m);
    m.set_modality_trust(&[7.0, 0.0]).unwrap();
    assert_eq!(cl(&m), one, "a trust above 1 counts as 1");
    assert!(one > none);
    assert!(m.set_modality_trust(&[1.0]).is_err() && m.set_modality_trust(&[1.0, -0.1]).is_err());
    let bad = RecGoatConfig {
        content_weight: 0.0,
        cl_modality_trust: true,
        ..RecGoatConfig::recgoat()
    };
    assert!(bad
        .validate()
        .unwrap_err()
        .to_string()
        .contains("cl_modality_trust"));
}

/// The scales evaluated at once equal the metrics of the vectors with the cold rows scaled.
#[test]
fn cold_scales_evaluated_at_once_match_scaled_vectors() {
    let mut r = rng(11);
    let users = randn::<f32, _, _>(&mut r, (40, 6));
    let items = randn::<f32, _, _>(&mut r, (30, 6));
    let cold: Vec<bool> = (0..30).map(|i| i % 4 == 1).collect();
    let truth: Vec<(usize, usize)> = (0..40)
        .flat_map(|u| [(u, (u * 7) % 30), (u, (u * 3 + 1) % 30)])
        .collect();
    let masked: Vec<(usize, usize)> = (0..40).map(|u| (u, (u * 11 + 2) % 30)).collect();
    let scales = [0.0, 0.3, 1.0, 2.0];
    let at_once = evaluate_cold_scales(
        users.view(),
        items.view(),
        &truth,
        &[&masked],
        &cold,
        &scales,
        &[1, 5, 10],
        Par::Rayon(3),
    )
    .unwrap();
    for (s, got) in scales.iter().zip(&at_once) {
        let mut scaled = items.clone();
        for (i, _) in cold.iter().enumerate().filter(|(_, &c)| c) {
            scaled.row_mut(i).mapv_inplace(|v| v * *s as f32);
        }
        let want = evaluate_grouped(
            users.view(),
            scaled.view(),
            &truth,
            &[&masked],
            &cold,
            &[1, 5, 10],
            Par::Seq,
        )
        .unwrap();
        assert_eq!(got, &want, "scale {s}");
        assert!(got.warm.is_some() && got.cold.is_some());
    }
}

/// The warm and cold parts are the reference metrics of the same ranking with the truth restricted.
#[test]
fn warm_and_cold_parts_are_the_restricted_reference() {
    let mut r = rng(12);
    let users = randn::<f32, _, _>(&mut r, (25, 5));
    let items = randn::<f32, _, _>(&mut r, (20, 5));
    let cold: Vec<bool> = (0..20).map(|i| i >= 15).collect();
    let truth: Vec<(usize, usize)> = (0..25)
        .flat_map(|u| [(u, u % 20), (u, 15 + u % 5)])
        .filter(|p| p.0 % 3 != 0 || p.1 < 15)
        .collect();
    let ks = [1, 3, 10];
    let got = evaluate_grouped(
        users.view(),
        items.view(),
        &truth,
        &[],
        &cold,
        &ks,
        Par::Seq,
    )
    .unwrap();
    let reference = |keep: &dyn Fn(usize) -> bool| -> Metrics {
        let t: Vec<_> = truth.iter().copied().filter(|p| keep(p.1)).collect();
        evaluate_reference(&users.mapv(f64::from), &items.mapv(f64::from), &t, &[], &ks)
    };
    let close = |a: &Metrics, b: &Metrics, what: &str| {
        assert_eq!(a.users, b.users, "{what}");
        for (x, y) in a
            .recall
            .iter()
            .chain(&a.ndcg)
            .zip(b.recall.iter().chain(&b.ndcg))
        {
            assert!((x - y).abs() < 1e-9, "{what}: {x} vs {y}");
        }
    };
    close(&got, &reference(&|_| true), "all");
    close(
        got.warm.as_ref().unwrap(),
        &reference(&|i| !cold[i]),
        "warm",
    );
    close(got.cold.as_ref().unwrap(), &reference(&|i| cold[i]), "cold");
    // a truth of one kind has no parts
    let warm_only: Vec<_> = truth.iter().copied().filter(|p| p.1 < 15).collect();
    let m = evaluate_grouped(
        users.view(),
        items.view(),
        &warm_only,
        &[],
        &cold,
        &ks,
        Par::Seq,
    )
    .unwrap();
    assert!(m.warm.is_none() && m.cold.is_none());
    let e = evaluate_grouped(
        users.view(),
        items.view(),
        &truth,
        &[],
        &[true],
        &ks,
        Par::Seq,
    );
    assert!(e.unwrap_err().to_string().contains("cold flags"));
}

#[test]
fn feature_cosine_is_the_cosine_of_the_mean_profile() {
    let x = array![[1.0f32, 0.0], [0.0, 3.0], [1.0, 1.0]];
    let (users, items) = feature_cosine(2, &[(0, 0), (0, 1), (1, 2)], &[x.view()]).unwrap();
    // user 0: the mean of (1, 0) and (0, 1), at unit length
    let h = std::f32::consts::FRAC_1_SQRT_2;
    assert!((users[[0, 0]] - h).abs() < 1e-6 && (users[[0, 1]] - h).abs() < 1e-6);
    let s = users.row(0).dot(&items.row(2));
    assert!((s - 1.0).abs() < 1e-6, "{s}");
    assert!(feature_cosine(2, &[(0, 0)], &[]).is_err());
    assert!(feature_cosine(2, &[(0, 9)], &[x.view()]).is_err());
}

fn trained(cfg: RecGoatConfig, ds: &Dataset) -> Trainer<'_> {
    let mut t = Trainer::new(cfg, ds, Backend::Cpu(Par::Seq)).unwrap();
    t.fit(|_, _| {}).unwrap();
    t.finish().unwrap();
    t
}

/// `recgoat()` at the sizes of the tiny dataset.
fn tiny_recgoat() -> RecGoatConfig {
    RecGoatConfig {
        embedding_dim: 4,
        gat_heads: 2,
        knn_k: 3,
        ..RecGoatConfig::recgoat()
    }
}

fn small(base: RecGoatConfig) -> RecGoatConfig {
    RecGoatConfig {
        embedding_dim: 8,
        gat_heads: 2,
        knn_k: 3,
        batch_size: 64,
        epochs: 30,
        lr: 0.02,
        patience: 0,
        ..base
    }
}

/// On data whose first modality carries the users' preferences and whose second is noise, the trusts
/// say so and the cold items reach the lists of the users who like their cluster (the latest epoch's
/// parameters: without a validation split, at scale 1). With one, the scale chosen keeps the warm items
/// within the tolerance.
#[test]
fn training_places_cold_items_by_their_informative_features() {
    let mut ds = clustered();
    let valid = std::mem::take(&mut ds.valid);
    ds.test.extend(valid);
    let t = trained(small(RecGoatConfig::recgoat()), &ds);
    assert_eq!(t.model().cold_scale(), 1.0);
    let fwd = t.model().forward(t.params(), Mode::Eval, None).unwrap();
    let trust = fwd.content_trust();
    assert!(trust[0] > 0.3 && trust[1] < 0.5 * trust[0], "{trust:?}");
    // the noise modality's closed form explains nothing on the probe items: it places nothing
    let content = fwd.content_embeddings();
    assert!(
        content[1].iter().all(|&v| v == 0.0) && trust[1] == 0.0,
        "{trust:?}"
    );
    assert!(content[0].iter().any(|&v| v != 0.0));
    // at the head of the lists, where the user's unseen items of its cluster compete
    let cold_at = |t: &Trainer<'_>, k: usize| {
        let (users, items) = t.embeddings().unwrap();
        let cold = t.model().cold_items();
        let masked = [&ds.train[..], &ds.valid[..]];
        let m = evaluate_grouped(
            users.view(),
            items.view(),
            &ds.test,
            &masked,
            cold,
            &[k],
            Par::Seq,
        );
        m.unwrap().cold.unwrap().recall[0]
    };
    let cold = cold_at(&t, 2);
    // an ID-only model cannot rank them
    let id = trained(small(RecGoatConfig::lightgcn()), &ds);
    let cold_id = cold_at(&id, 2);
    assert!(
        cold > 0.4 && cold > cold_id + 0.3,
        "cold Recall@2 {cold} vs {cold_id}"
    );

    let ds = clustered();
    let t = trained(small(RecGoatConfig::recgoat()), &ds);
    let trials = &t.state().cold_trials;
    assert!(!trials.is_empty() && trials[0].scale == 0.0);
    let st = t.state();
    let chosen = (trials.iter())
        .find(|c| (c.scale, c.share) == (st.cold_scale, st.taste_share))
        .unwrap();
    // every taste share has its grid of scales
    let shares: Vec<f64> = trials
        .iter()
        .filter(|c| c.scale == 0.0)
        .map(|c| c.share)
        .collect();
    assert_eq!(shares, [0.0, 0.25, 0.5, 1.0, 2.0, 4.0]);
    assert_eq!(
        trials.len(),
        6 * trials.iter().filter(|c| c.share == 0.0).count()
    );
    let floor = trials[0].warm * (1.0 - t.config().content_warm_tolerance);
    assert!(chosen.warm >= floor);
    // the best overall figure among the allowed trials, or one that keeps the overall figure within the
    // overall tolerance of the backbone alone's (scale 0) and places more of the new items' held-out
    // interactions
    let allowed: Vec<&ColdTrial> = trials.iter().filter(|c| c.warm >= floor).collect();
    let best = allowed.iter().map(|c| c.recall).fold(f64::MIN, f64::max);
    let within = trials[0].recall * (1.0 - t.config().content_overall_tolerance);
    assert!(chosen.recall >= within && best >= within);
    let best_at = allowed.iter().find(|c| c.recall == best).unwrap();
    assert!(
        (chosen.scale, chosen.share) == (best_at.scale, best_at.share)
            || chosen.cold > best_at.cold
    );
    // and no allowed trial within the tolerance places more
    assert!(allowed
        .iter()
        .all(|c| c.recall < within || c.cold <= chosen.cold));
    assert_eq!(t.model().cold_scale(), st.cold_scale);
    assert_eq!(t.model().taste_share(), st.taste_share);
}

/// The cold items' placement does not select the epoch, so it is chosen once, when `finish` restores the
/// best epoch's parameters, and is what `validate` gives on them; a second `finish` keeps it.
#[test]
fn the_placement_is_chosen_once_on_the_best_epoch() {
    let ds = clustered();
    let mut t = Trainer::new(small(RecGoatConfig::recgoat()), &ds, Backend::Cpu(Par::Seq)).unwrap();
    t.fit(|_, _| {}).unwrap();
    let st = t.state();
    assert!(st.best_epoch > 0);
    assert!(st.cold_trials.is_empty() && st.placed_at == 0);
    t.finish().unwrap();
    let st = t.state().clone();
    assert_eq!(st.placed_at, st.best_epoch);
    let (_, chosen, trials) = t.validate().unwrap();
    assert!(!trials.is_empty());
    assert_eq!(
        (chosen, trials),
        ((st.cold_scale, st.taste_share), st.cold_trials.clone())
    );
    assert_eq!(
        (t.model().cold_scale(), t.model().taste_share()),
        (st.cold_scale, st.taste_share)
    );
    t.finish().unwrap();
    assert_eq!(t.state(), &st);
}

/// The scale rule on the trials it sees: the best overall figure within the warm tolerance, or of the
/// trials within the overall tolerance of the backbone alone's figure (scale 0) that place more new items'
/// interactions the one that places the most (of equal ones the best overall); with the probe items, the
/// largest scale within the warm tolerance that changes anything.
#[test]
fn the_cold_scale_rule_on_hand_made_trials() {
    let trial = |scale, recall, warm, cold| ColdTrial {
        scale,
        share: 0.0,
        recall,
        warm,
        cold,
    };
    // a catalogue's tail of new items: every scale that lets them in costs a little of the overall figure
    let tail = [
        trial(0.0, 0.2430, 0.2517, 0.0),
        trial(1.0, 0.2430, 0.2517, 0.0),
        trial(1.3, 0.2425, 0.2504, 0.0396),
        trial(1.5, 0.2419, 0.2493, 0.0495),
        trial(1.75, 0.2396, 0.2448, 0.1188),
        trial(2.0, 0.2318, 0.2352, 0.1782),
        trial(3.0, 0.1927, 0.1880, 0.3663),
    ];
    assert_eq!(choose_cold_scale(&tail, 0.1, Some(0.0)), 0);
    assert_eq!(choose_cold_scale(&tail, 0.1, Some(0.02)), 4);
    assert_eq!(choose_cold_scale(&tail, 0.1, Some(0.05)), 5);
    // the warm tolerance still binds: 2 costs the warm items 6.6 %
    assert_eq!(choose_cold_scale(&tail, 0.05, Some(0.05)), 4);
    assert_eq!(choose_cold_scale(&tail, 0.1, Some(1.0)), 5);
    // new items worth their place: the best overall figure is already a large scale
    let head = [
        trial(0.0, 0.4240, 0.4520, 0.0),
        trial(1.5, 0.4300, 0.4480, 0.1300),
        trial(2.0, 0.4330, 0.4400, 0.3000),
        trial(2.5, 0.4320, 0.4300, 0.4000),
        trial(3.0, 0.4200, 0.4000, 0.5000),
    ];
    // 2.5 is below the best overall figure (2) but above the backbone alone's, and places more
    assert_eq!(choose_cold_scale(&head, 0.1, Some(0.0)), 3);
    assert_eq!(choose_cold_scale(&head, 0.1, Some(0.02)), 3);
    // the warm items may give 2 %: 1.5 is the best allowed, and nothing allowed places more
    assert_eq!(choose_cold_scale(&head, 0.02, Some(0.0)), 1);
    // 3 costs the warm items more than 10 %
    assert_eq!(choose_cold_scale(&head, 0.1, Some(0.05)), 3);
    // a larger scale that costs overall but places no more new items is not taken
    let idle = [
        trial(0.0, 0.30, 0.31, 0.0),
        trial(1.0, 0.299, 0.309, 0.0),
        trial(2.0, 0.298, 0.305, 0.0),
    ];
    assert_eq!(choose_cold_scale(&idle, 0.1, Some(0.02)), 0);
    // features that carry nothing: every figure that of scale 0, under either rule
    let flat = [
        trial(0.0, 0.3, 0.31, 0.0),
        trial(1.0, 0.3, 0.31, 0.0),
        trial(2.0, 0.3, 0.31, 0.0),
    ];
    assert_eq!(choose_cold_scale(&flat, 0.1, Some(0.02)), 0);
    assert_eq!(choose_cold_scale(&flat, 0.1, None), 0);
    // the probe items: the largest scale within the warm tolerance that moves anything
    assert_eq!(choose_cold_scale(&tail, 0.1, None), 5);
    assert_eq!(choose_cold_scale(&tail, 0.01, None), 3);
    assert_eq!(choose_cold_scale(&[], 0.1, Some(0.02)), 0);
    // several shares of the taste term, a grid of scales each: the trial that places the most new
    // items' interactions within the tolerances, of equal ones the best overall
    let with_share = |(scale, share), recall, warm, cold| ColdTrial {
        scale,
        share,
        recall,
        warm,
        cold,
    };
    let grid = [
        with_share((0.0, 0.0), 0.2430, 0.2517, 0.0),
        with_share((1.0, 0.0), 0.2430, 0.2517, 0.0),
        with_share((2.0, 0.0), 0.2318, 0.2352, 0.1782),
        with_share((0.0, 1.0), 0.2430, 0.2517, 0.0),
        with_share((1.0, 1.0), 0.2410, 0.2490, 0.1000),
        with_share((2.0, 1.0), 0.2400, 0.2480, 0.1000),
        with_share((1.0, 2.0), 0.2390, 0.2470, 0.0900),
    ];
    assert_eq!(choose_cold_scale(&grid, 0.1, Some(0.02)), 4);
    assert_eq!(choose_cold_scale(&grid, 0.1, Some(0.05)), 2);
    assert_eq!(choose_cold_scale(&grid, 0.1, Some(0.0)), 0);
}

/// A validation split without new items: the probe items stand in for them (ranked through their content
/// vectors), and the scale is the largest that keeps the warm items within the tolerance; an ID-only model
/// tries none.
#[test]
fn without_new_items_in_validation_the_probe_items_choose_the_scale() {
    // enough items, each user liking some of its cluster's, that a list of 20 is not every item it might like
    let mut ds = clustered_with(400, true);
    let cold = ds.cold_items();
    let (new, kept): (Vec<_>, Vec<_>) = ds.valid.iter().partition(|p| cold.contains(&p.1));
    ds.valid = kept;
    ds.test.extend(new);
    // a tolerance that the scaling by probe / new items changes the choice under
    let cfg = RecGoatConfig {
        content_warm_tolerance: 0.01,
        ..small(RecGoatConfig::recgoat())
    };
    let t = trained(cfg, &ds);
    let probe = t.model().probe_items().to_vec();
    assert!(ds.valid.iter().any(|p| probe.contains(&p.1)));
    let st = t.state();
    let trials = &st.cold_trials;
    assert!(trials.len() > 1 && trials[0].scale == 0.0, "{trials:?}");
    // the probe items' figures move with the scale: their content vectors place them
    assert!(trials.iter().any(|c| c.cold > trials[0].cold), "{trials:?}");
    // the largest scale that changes the ranking and keeps the warm items within the tolerance, scaled by
    // probe / new items (what the catalogue's fewer new items would cost)
    let new = cold.len() as f64;
    assert!(new > 0.0 && (probe.len() as f64) > new);
    let moves = |c: &ColdTrial| {
        (c.recall, c.warm, c.cold) != (trials[0].recall, trials[0].warm, trials[0].cold)
    };
    let largest_within = |tolerance: f64| {
        let floor = trials[0].warm * (1.0 - tolerance);
        (trials.iter().rev())
            .find(|c| c.warm >= floor && moves(c))
            .map_or(0.0, |c| c.scale)
    };
    let tolerance = (t.config().content_warm_tolerance * probe.len() as f64 / new).min(1.0);
    let want = largest_within(tolerance);
    assert!(want > 0.0, "{trials:?}");
    assert_eq!(st.cold_scale, want);
    assert_ne!(
        want,
        largest_within(t.config().content_warm_tolerance),
        "the data does not tell the scaled tolerance from the plain one: {trials:?}"
    );
    assert_eq!(t.model().cold_scale(), st.cold_scale);
    // the reference: the probe items' rows replaced by their trusted content vectors, ranked as new items
    let fwd = t.model().forward(t.params(), Mode::Eval, None).unwrap();
    let mut items = fwd.items.clone();
    for &i in &probe {
        let mut row = items.row_mut(i);
        row.fill(0.0);
        for (&w, z) in fwd.content_trust().iter().zip(fwd.content_embeddings()) {
            row.scaled_add(w, &z.row(i));
        }
    }
    let scales: Vec<f64> = trials.iter().map(|c| c.scale).collect();
    let by_hand = recgoat_core::eval::evaluate_split_scales_as_new(
        &ds,
        fwd.users.view(),
        items.view(),
        Split::Valid,
        &probe,
        &scales,
        Par::Seq,
    )
    .unwrap();
    for (c, m) in trials.iter().zip(&by_hand) {
        let cold = m.cold.as_ref().unwrap().recall_ndcg(20).0;
        assert!(
            (c.recall - m.recall_ndcg(20).0).abs() < 1e-9 && (c.cold - cold).abs() < 1e-9,
            "scale {}: {c:?} vs {} / {cold}",
            c.scale,
            m.recall_ndcg(20).0
        );
    }

    // the probe items' rows are their content vectors at the scale, the others' as in the lists
    let (u2, as_new) = t.model().embeddings_probe_as_new(t.params(), 1.5).unwrap();
    let (u1, listed) = t
        .model()
        .embeddings_with_cold_scale(t.params(), 1.5)
        .unwrap();
    assert_eq!(u1, u2);
    for i in 0..ds.n_items {
        let want = if probe.contains(&i) {
            items.row(i).mapv(|v| 1.5 * v)
        } else {
            listed.row(i).to_owned()
        };
        Tolerance::new(1e-5, 1e-6).assert_close(
            &format!("item {i}"),
            &as_new.row(i).insert_axis(Axis(0)),
            &want.view().insert_axis(Axis(0)),
        );
    }
    assert!(probe.iter().any(|&i| listed.row(i) != as_new.row(i)));

    let id = trained(small(RecGoatConfig::lightgcn()), &ds);
    assert!(id.state().cold_trials.is_empty());
    assert_eq!(id.state().cold_scale, 1.0);
}

#[test]
fn a_recommender_folds_users_in_and_adds_items_from_features() {
    let ds = clustered();
    let t = trained(small(RecGoatConfig::recgoat()), &ds);
    let mut rec = Recommender::from_trainer(&t).unwrap();
    assert!(rec.can_fold_in());
    // a known user's training items give back its trained vector
    let users = rec.user_vectors().to_owned();
    for u in [0, 7, 33] {
        let z = rec.fold_in(Some(u), &[]).unwrap();
        Tolerance::new(1e-4, 1e-6).assert_close(&format!("user {u}"), &z.view(), &users.row(u));
    }
    // a new user who liked cluster 1's items gets cluster 1's items first
    let history: Vec<usize> = (5..40).step_by(4).take(4).collect();
    let top = rec.recommend_history(None, &history, 5).unwrap();
    assert!(
        top.iter()
            .all(|&(i, _)| i % 4 == 1 && !history.contains(&i)),
        "{top:?}"
    );
    assert!(rec.fold_in(None, &[]).is_err() && rec.fold_in(None, &[40]).is_err());
    // a new item with a cluster-2 signal reaches the lists of cluster-2 users
    let enc = rec.encoder().unwrap().clone();
    assert_eq!(enc.modalities()[0], ("signal".to_string(), 6));
    let (sig, noise) = (&ds.item_features[0].1, &ds.item_features[1].1);
    let new_sig = sig.row(2).insert_axis(Axis(0)).to_owned();
    let new_noise = noise.row(2).insert_axis(Axis(0)).to_owned();
    let feats = [("signal", new_sig.view()), ("noise", new_noise.view())];
    let v = rec.embed_items(&feats).unwrap();
    let ids = rec.add_items(&feats, None).unwrap();
    assert_eq!(ids, 40..41);
    assert_eq!(rec.item_vectors().row(40), v.row(0));
    let fans: Vec<usize> = (0..60).filter(|u| u % 4 == 2).collect();
    let lists = rec.recommend(&fans, 10).unwrap();
    let reached = lists
        .iter()
        .filter(|l| l.iter().any(|&(i, _)| i == 40))
        .count();
    assert!(reached * 2 > fans.len(), "{reached} of {}", fans.len());
    // wrong inputs are named
    let wide = Array2::<f32>::zeros((1, 7));
    for (bad, what) in [
        (vec![("signal", new_sig.view())], "missing"),
        (
            vec![("signal", wide.view()), ("noise", new_noise.view())],
            "signal",
        ),
        (
            vec![("signal", new_sig.view()), ("audio", new_noise.view())],
            "audio",
        ),
    ] {
        let e = rec.embed_items(&bad).unwrap_err().to_string();
        assert!(e.contains(what), "{e}");
    }
    let nan = array![[f32::NAN, 0.0, 0.0, 0.0, 0.0, 0.0]];
    assert!(rec
        .embed_items(&[("signal", nan.view()), ("noise", new_noise.view())])
        .is_err());
    assert!(
        rec.add_items(&feats, Some(vec!["x".into()])).is_err(),
        "no ids kept"
    );
    // saved and loaded with everything
    let path =
        std::env::temp_dir().join(format!("recgoat-cold-{}.safetensors", std::process::id()));
    rec.save(&path).unwrap();
    let back = Recommender::load(&path).unwrap();
    assert_eq!(back, rec);
    assert_eq!(back.recommend_history(None, &history, 5).unwrap(), top);
    // cut short, it says so, as a recommender file
    let bytes = std::fs::read(&path).unwrap();
    for keep in [5, 100, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..keep]).unwrap();
        let e = Recommender::load(&path).unwrap_err();
        assert!(matches!(e, recgoat_core::Error::Recommender { .. }), "{e}");
        let e = e.to_string();
        assert!(
            e.starts_with("recommender ") && e.contains("truncated"),
            "{keep}: {e}"
        );
    }
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn a_recommender_without_encoder_or_tables_says_why() {
    let rec = Recommender::new(
        array![[1.0f32, 0.0]],
        array![[1.0f32, 0.0], [0.0, 1.0]],
        vec![],
    )
    .unwrap();
    let x = array![[1.0f32]];
    let e = rec
        .embed_items(&[("text", x.view())])
        .unwrap_err()
        .to_string();
    assert!(e.contains("no content encoder"), "{e}");
    let e = rec.fold_in(None, &[0]).unwrap_err().to_string();
    assert!(e.contains("no fold-in tables"), "{e}");
    assert!(!rec.can_fold_in() && rec.encoder().is_none());
}

#[test]
fn content_encoders_check_their_parts() {
    let ok = || {
        (
            vec![("a".to_string(), 2)],
            vec![array![[1.0f32, 0.0], [0.0, 1.0]]],
            vec![array![0.0f32, 0.0]],
            vec![1.0f32],
        )
    };
    let (m, w, b, t) = ok();
    assert!(ContentEncoder::new(m, true, w, b, t).is_ok());
    let (m, w, _, t) = ok();
    assert!(ContentEncoder::new(m, true, w, vec![array![0.0f32]], t).is_err());
    let (m, w, b, _) = ok();
    assert!(ContentEncoder::new(m, true, w, b, vec![-1.0]).is_err());
    let (_, w, b, t) = ok();
    assert!(ContentEncoder::new(vec![("a".into(), 3)], true, w, b, t).is_err());
    let (m, _, b, t) = ok();
    assert!(ContentEncoder::new(m, true, vec![array![[f32::NAN, 0.0], [0.0, 1.0]]], b, t).is_err());
    assert!(ContentEncoder::new(vec![], true, vec![], vec![], vec![]).is_err());
}

/// A checkpoint keeps the cold scale and the modality trusts: the resumed trainer serves the same vectors.
/// An encoder's neighbours: validated, blended with the projection at their share, and kept in the
/// recommender file; a file of format version 2 (an encoder without neighbours) still loads.
#[test]
fn content_encoders_lean_on_neighbours_and_keep_them_in_files() {
    let refs = array![[2.0f32, 0.0], [0.0, 1.0], [1.0, 1.0]];
    let vectors = array![[1.0f32, 0.0], [0.0, 1.0], [5.0, 5.0]];
    let near = |k, t, s| Neighbours::new(refs.clone(), vectors.clone(), k, t, s);
    for bad in [
        near(0, 0.1, 0.5),
        near(4, 0.1, 0.5),
        near(1, 0.0, 0.5),
        near(1, 0.1, 1.5),
    ] {
        assert!(
            matches!(bad, Err(recgoat_core::Error::Param { .. })),
            "{bad:?}"
        );
    }
    assert!(Neighbours::new(
        refs.clone(),
        vectors.slice(s![..2, ..]).to_owned(),
        1,
        0.1,
        0.5
    )
    .is_err());
    let nan = array![[f32::NAN, 0.0], [0.0, 1.0], [1.0, 1.0]];
    assert!(Neighbours::new(nan, vectors.clone(), 1, 0.1, 0.5).is_err());
    // the two nearest of (1, 0.1): ref 0 (cosine 0.995) and ref 2 (0.774), softmax at 0.1
    let n = near(2, 0.1, 0.5).unwrap();
    let x = array![[1.0f32, 0.1]];
    let (c0, c2) = (1.0 / 1.01f32.sqrt(), 1.1 / (1.01f32 * 2.0).sqrt());
    let e = ((c2 - c0) / 0.1).exp();
    let want = (&vectors.row(0) + &(&vectors.row(2) * e)) / (1.0 + e);
    Tolerance::new(1e-5, 1e-6).assert_close(
        "neighbours",
        &n.predict(x.view()).row(0),
        &want.view(),
    );
    // blended half and half with the projection x W + b, times the trust
    let enc = ContentEncoder::new(
        vec![("a".into(), 2)],
        false,
        vec![array![[1.0f32, 0.0], [0.0, 1.0]]],
        vec![array![0.0f32, 1.0]],
        vec![2.0],
    )
    .unwrap();
    assert!(
        enc.clone().with_neighbours(1, n.clone()).is_err(),
        "one modality"
    );
    let wide = Neighbours::new(
        array![[1.0f32, 0.0, 0.0]],
        array![[1.0f32, 0.0]],
        1,
        0.1,
        0.5,
    );
    assert!(enc.clone().with_neighbours(0, wide.unwrap()).is_err());
    let linear = enc.encode(&[("a", x.view())]).unwrap();
    let enc = enc.with_neighbours(0, n).unwrap();
    let blended = enc.encode(&[("a", x.view())]).unwrap();
    let want = (&linear * 0.5) + &(&want * 2.0 * 0.5);
    Tolerance::new(1e-5, 1e-6).assert_close("blend", &blended.row(0), &want.row(0));
    // kept in the file to the bit
    let rec = Recommender::new(array![[1.0f32, 0.0]], vectors.clone(), vec![vec![0]])
        .unwrap()
        .with_encoder(enc.clone())
        .unwrap();
    let path =
        std::env::temp_dir().join(format!("recgoat-near-{}.safetensors", std::process::id()));
    rec.save(&path).unwrap();
    let back = Recommender::load(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(back, rec);
    assert!(back.encoder().unwrap().neighbours()[0].is_some());
    assert_eq!(back.embed_items(&[("a", x.view())]).unwrap(), blended);
    let narrow = Recommender::new(array![[1.0f32]], array![[1.0f32]], vec![vec![]]).unwrap();
    assert!(narrow.with_encoder(enc).is_err());
}

#[test]
fn checkpoints_keep_the_cold_scale_and_the_trusts() {
    let ds = clustered();
    let cfg = RecGoatConfig {
        epochs: 6,
        cl_modality_weight: 0.5,
        cl_modality_trust: true,
        ..small(RecGoatConfig::recgoat())
    };
    let mut t = Trainer::new(cfg.clone(), &ds, Backend::Cpu(Par::Seq)).unwrap();
    for _ in 0..3 {
        t.run_epoch(|_, _| {}).unwrap();
    }
    assert!(t.state().modality_trust.iter().any(|&x| x > 0.0));
    let path = std::env::temp_dir().join(format!(
        "recgoat-cold-ckpt-{}.safetensors",
        std::process::id()
    ));
    t.save_checkpoint(&path).unwrap();
    let mut back = Trainer::resume(&path, &ds, Backend::Cpu(Par::Seq), Some(&cfg)).unwrap();
    assert_eq!(back.model().modality_trust(), t.model().modality_trust());
    assert_eq!(back.state().cold_scale, t.state().cold_scale);
    t.finish().unwrap();
    back.finish().unwrap();
    assert_eq!(back.model().cold_scale(), t.model().cold_scale());
    assert_eq!(back.embeddings().unwrap(), t.embeddings().unwrap());
    std::fs::remove_file(&path).unwrap();
}

/// The probe items never train the encoders: neither the content term nor the modality contrastive terms
/// take their rows (the user term does), so the trusts fitted on them measure items the encoders never saw.
#[test]
fn probe_items_never_train_the_encoders() {
    let ds = tiny();
    let cfg = RecGoatConfig {
        cl_modality_weight: 1.0,
        ..tiny_recgoat()
    };
    let m = RecGoat::<f64>::new(cfg, &ds, Backend::Cpu(Par::Seq)).unwrap();
    let probe = m.probe_items()[0];
    let other = (0..ds.n_items)
        .find(|&i| i != probe && !m.probe_items().contains(&i))
        .unwrap();
    let p = m.init_params();
    let batch = |pos: Vec<usize>| Batch {
        users: vec![0, 1, 2, 3],
        neg: (0..4).map(|k| (probe + 1 + k) % ds.n_items).collect(),
        pos,
    };
    let encoders = |g: &Params<f64>| {
        g.branches
            .iter()
            .map(|b| b.proj.w.mapv(f64::abs).sum())
            .sum::<f64>()
    };
    let (loss, g) = m
        .loss_and_grad(&p, &batch(vec![probe; 4]), Mode::Eval, None)
        .unwrap();
    assert_eq!(encoders(&g), 0.0, "probe rows reached the encoders");
    assert_eq!(loss.content, 0.0);
    assert!(g.embedding.iter().any(|v| *v != 0.0));
    let (_, g) = m
        .loss_and_grad(&p, &batch(vec![other; 4]), Mode::Eval, None)
        .unwrap();
    assert!(encoders(&g) > 0.0);
}

/// An all-zero feature row stands for an item without that modality (a missing image, say). Such items
/// train (before, the first batch that held one stopped training: its modality view had no direction to
/// normalise), stay out of the terms that read every modality, and get nothing from the modality they
/// lack: a cold item without the noise modality is placed by the signal one alone, one without any gets
/// the vector 0 at every placement (it neither floods the lists nor takes a place), and the encoder a
/// recommender keeps does the same.
#[test]
fn items_without_a_modality_train_and_get_nothing_from_it() {
    let mut ds = clustered();
    // cold item 0 and warm items 9 and 22 lack the noise; cold item 1 and warm item 9 lack both; warm
    // items 8 and 13 lack the signal
    for (name, x) in ds.item_features.iter_mut() {
        let rows: &[usize] = match name.as_str() {
            "signal" => &[1, 8, 9, 13],
            _ => &[0, 1, 9, 22],
        };
        for &i in rows {
            x.row_mut(i).fill(0.0);
        }
    }
    let mut cfg = small(RecGoatConfig::recgoat());
    cfg.epochs = 8;
    let mut t = Trainer::new(cfg, &ds, Backend::Cpu(Par::Seq)).unwrap();
    t.fit(|_, _| {}).unwrap();
    t.finish().unwrap();
    let (p, mut model) = (t.params(), t.model().clone());
    let fwd = model.forward(p, Mode::Eval, None).unwrap();
    let trust = fwd.content_trust().to_vec();
    assert!(trust[0] > 0.0, "the signal is trusted: {trust:?}");
    let content = fwd.content_embeddings();
    // no modality places an item through a row it lacks; the signal places the items that have it
    for (m, rows) in [(0, [1, 8, 9, 13]), (1, [0, 1, 9, 22])] {
        for i in rows {
            assert!(content[m].row(i).iter().all(|&v| v == 0.0), "{m}, item {i}");
        }
    }
    assert!(content[0].row(0).iter().any(|&v| v != 0.0));
    // cold item 0 by the signal alone; cold item 1 at 0 whatever the placement
    model.set_taste_share(0.0).unwrap();
    model.set_cold_scale(1.5).unwrap();
    let (_, items) = model.embeddings(p).unwrap();
    for (a, b) in items.row(0).iter().zip(content[0].row(0)) {
        let want = 1.5 * f64::from(trust[0]) * f64::from(*b);
        Tolerance::new(1e-5, 1e-6).assert_scalar("item 0", f64::from(*a), want);
    }
    let (_, placed) = t.model().embeddings(p).unwrap();
    for v in [&items, &placed] {
        assert!(v.row(1).iter().all(|&x| x == 0.0), "{:?}", v.row(1));
    }
    // the encoder gives new items what the model gives its cold items, from the same rows
    let enc = t.model().content_encoder(p).unwrap();
    let rows = feature_rows(&ds, &[0, 1]);
    let encoded = enc.encode(&named(&rows)).unwrap();
    for k in 0..2 {
        for (a, b) in encoded.row(k).iter().zip(placed.row(k)) {
            let close = (a - b).abs() < 1e-4 * (1.0 + b.abs());
            assert!(close, "item {k}: {a} vs {b}");
        }
    }
}

/// The paper's reading (graph attention over feature kNN graphs, OAT, fusion) and the released code's
/// contrastive terms train on items that lack a modality too: their rows stay out of the terms that read
/// every modality, and their zero rows join no kNN neighbourhood. So does every preset when one modality
/// is zero for every item (a placeholder file): it places nothing, and `recgoat()` still trains the other
/// modality's encoder on every item and places the cold items through it.
#[test]
fn every_preset_trains_with_items_that_lack_a_modality() {
    let mut some = clustered();
    for (_, x) in some.item_features.iter_mut() {
        for i in [1, 5, 9] {
            x.row_mut(i).fill(0.0);
        }
    }
    let mut placeholder = clustered();
    placeholder.item_features[1].1.fill(0.0);
    for ds in [&some, &placeholder] {
        for base in [
            RecGoatConfig::recgoat(),
            RecGoatConfig::paper(),
            RecGoatConfig::official_code(),
        ] {
            let name = base.name.clone();
            let mut cfg = small(base);
            cfg.epochs = 2;
            let mut t = Trainer::new(cfg, ds, Backend::Cpu(Par::Seq)).unwrap();
            t.fit(|_, _| {}).unwrap_or_else(|e| panic!("{name}: {e}"));
            let (_, items) = t.model().embeddings(t.params()).unwrap();
            assert!(items.iter().all(|v| v.is_finite()), "{name}");
        }
    }
    let t = trained(small(RecGoatConfig::recgoat()), &placeholder);
    let fwd = t.model().forward(t.params(), Mode::Eval, None).unwrap();
    let content = fwd.content_embeddings();
    assert!(
        content[1].iter().all(|&v| v == 0.0),
        "the placeholder places nothing"
    );
    for i in 0..4 {
        assert!(content[0].row(i).iter().any(|&v| v != 0.0), "cold item {i}");
    }
}
