//! Hostile input: one regression test per class of failure that input once caused (an abort from a size a
//! file claimed, a panic, a silently accepted corruption or NaN, a vague error), and a short fuzz run of
//! every loader.

mod common;

use ndarray::{array, Array2};
use recgoat_core::attention::{GatConfig, GatLayer, GatParams, Mode};
use recgoat_core::contrastive::{info_nce, InfoNceConfig};
use recgoat_core::data::{read_features, Dataset};
use recgoat_core::fuzz::{run, Target};
use recgoat_core::graph::CsrGraph;
use recgoat_core::model::{RecGoat, RecGoatConfig, Trainer};
use recgoat_core::nn::{l2_regularization, leaky_relu, AdamState};
use recgoat_core::testing::tiny_config;
use recgoat_core::transport::{Epsilon, SinkhornConfig};
use recgoat_core::{Backend, Error, Par};
use std::path::PathBuf;

fn scratch(test: &str) -> common::Scratch {
    common::Scratch::new("recgoat-hostile", test)
}

// --- sizes a file or a config claims: refused before anything is allocated for them

#[test]
fn a_huge_id_in_a_split_file_is_an_error_naming_the_file_and_line() {
    let dir = scratch("huge-id");
    std::fs::write(dir.join("train.txt"), "0 0\n1 1000000000000\n").unwrap();
    std::fs::write(dir.join("test.txt"), "0 1\n").unwrap();
    let e = Dataset::load_lightgcn_dir(&dir, &[]).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, Error::Data { line: 2, .. }) && msg.contains("train.txt:2"),
        "{msg}"
    );
    // within the id range, a large id is checked against the interactions before any allocation
    std::fs::write(dir.join("train.txt"), "0 0\n1 4000000000\n").unwrap();
    let e = Dataset::load_lightgcn_dir(&dir, &[]).unwrap_err();
    assert!(
        e.to_string().contains("train.txt:2") && e.to_string().contains("not contiguous"),
        "{e}"
    );
    // ids beyond 2^63 (and 2^64) do not overflow
    std::fs::write(dir.join("train.txt"), "18446744073709551615 0\n").unwrap();
    assert!(matches!(
        Dataset::load_lightgcn_dir(&dir, &[]),
        Err(Error::Data { line: 1, .. })
    ));
    let e = Dataset::new(
        "pairs",
        vec![(usize::MAX, 0), (0, 0)],
        vec![],
        vec![],
        vec![],
    );
    assert!(matches!(e, Err(Error::Data { .. })), "{e:?}");
}

#[test]
fn an_npy_header_claiming_more_than_the_file_holds_is_an_error() {
    let dir = scratch("npy");
    let mut header =
        b"{'descr': '<f4', 'fortran_order': False, 'shape': (1000000, 1000000), }".to_vec();
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(b' ');
    }
    header.push(b'\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(&header);
    bytes.extend([0u8; 64]);
    std::fs::write(dir.join("x.npy"), &bytes).unwrap();
    let e = read_features(dir.join("x.npy")).unwrap_err();
    assert!(
        matches!(e, Error::Io { .. }) && e.to_string().contains("needs 4000000000000 bytes"),
        "{e}"
    );
}

#[test]
fn configs_claiming_huge_sizes_are_refused_before_the_model_is_built() {
    let ds = common::tiny();
    for cfg in [
        RecGoatConfig {
            embedding_dim: 1 << 40,
            ..tiny_config(RecGoatConfig::paper())
        },
        RecGoatConfig {
            gat_layers: 100_000_000,
            ..tiny_config(RecGoatConfig::paper())
        },
        RecGoatConfig {
            lightgcn_layers: 1 << 20,
            ..tiny_config(RecGoatConfig::lightgcn())
        },
    ] {
        let e = RecGoat::<f32>::new(cfg, &ds, Backend::Cpu(Par::Seq)).unwrap_err();
        assert!(matches!(e, Error::Param { .. }), "{e}");
    }
}

// --- panics that were reachable

#[test]
fn malformed_graphs_and_moments_are_errors_not_panics() {
    let e = CsrGraph::<f32>::new(2, 2, vec![0, 5, 1], vec![0], None).unwrap_err();
    assert!(
        matches!(e, Error::Graph { .. }) && e.to_string().contains("beyond nnz"),
        "{e}"
    );
    let e = AdamState::from_moments(Array2::<f32>::zeros((2, 2)), Array2::zeros((3, 2)), 1);
    assert!(matches!(e, Err(Error::Shape { .. })), "{e:?}");
    let e = AdamState::from_moments(array![[f32::NAN]], array![[0.0]], 1);
    assert!(matches!(e, Err(Error::NonFinite { .. })), "{e:?}");
}

// --- corruption and NaN that were accepted silently

/// A trained tiny trainer's checkpoint bytes.
fn checkpoint(ds: &Dataset, dir: &std::path::Path) -> (PathBuf, Vec<u8>) {
    let mut t = Trainer::new(
        tiny_config(RecGoatConfig::paper()),
        ds,
        Backend::Cpu(Par::Seq),
    )
    .unwrap();
    t.run_epoch(|_, _| {}).unwrap();
    let path = dir.join("a.safetensors");
    t.save_checkpoint(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    (path, bytes)
}

fn resume_err(path: &std::path::Path, ds: &Dataset) -> String {
    Trainer::resume(path, ds, Backend::Cpu(Par::Seq), None)
        .map(|_| ())
        .expect_err("must be refused")
        .to_string()
}

#[test]
fn checkpoints_are_verified_by_content() {
    let dir = scratch("ckpt");
    let ds = common::tiny();
    let (path, bytes) = checkpoint(&ds, &dir);
    assert!(Trainer::resume(&path, &ds, Backend::Cpu(Par::Seq), None).is_ok());
    // a flipped byte in the last tensor's data
    let mut b = bytes.clone();
    let n = b.len();
    b[n - 3] ^= 0x10;
    std::fs::write(&path, &b).unwrap();
    assert!(resume_err(&path, &ds).contains("checksum"));
    // an edited learning rate in the header, the length unchanged
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let at = text.find("\\\"lr\\\":0.001").expect("the lr in the config");
    let mut b = bytes.clone();
    b[at + 10] = b'2';
    std::fs::write(&path, &b).unwrap();
    assert!(resume_err(&path, &ds).contains("checksum"));
    // truncated
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let e = resume_err(&path, &ds);
    assert!(e.contains("is truncated"), "{e}");
    // another dataset of the same shape
    let other = {
        // two users swap one item each
        let mut train = ds.train.clone();
        let a = train[0];
        let k = (1..train.len())
            .find(|&k| {
                let b = train[k];
                b.0 != a.0 && !train.contains(&(a.0, b.1)) && !train.contains(&(b.0, a.1))
            })
            .expect("a pair to swap with");
        let b = train[k];
        train[0] = (a.0, b.1);
        train[k] = (b.0, a.1);
        Dataset::new(
            "other",
            train,
            ds.valid.clone(),
            ds.test.clone(),
            ds.item_features.clone(),
        )
        .unwrap()
    };
    assert_eq!((other.n_users, other.n_items), (ds.n_users, ds.n_items));
    assert_ne!(other.fingerprint(), ds.fingerprint());
    std::fs::write(&path, &bytes).unwrap();
    assert!(resume_err(&path, &other).contains("another dataset"));
}

/// `bytes` (a checkpoint) with metadata fields replaced, re-framed; its checksum is left as it was.
fn with_metadata(bytes: &[u8], edits: &[(&str, String)]) -> Vec<u8> {
    use safetensors::SafeTensors;
    let st = SafeTensors::deserialize(bytes).unwrap();
    let (_, meta) = SafeTensors::read_metadata(bytes).unwrap();
    let mut meta = meta.metadata().clone().unwrap();
    for (k, v) in edits {
        meta.insert((*k).to_string(), v.clone());
    }
    safetensors::tensor::serialize(st.tensors(), Some(meta)).unwrap()
}

/// The fingerprint covers the validation and test splits and the features; a format tag edited back to
/// version 1 skips nothing (it needs `resume_unverified`, which still checks the training state).
#[test]
fn checkpoints_cover_splits_features_format_and_state() {
    let dir = scratch("ckpt-cover");
    let ds = common::tiny();
    let (path, bytes) = checkpoint(&ds, &dir);
    let rebuilt =
        |valid: Vec<(usize, usize)>, test: Vec<(usize, usize)>, f: Vec<(String, Array2<f32>)>| {
            Dataset::new("other", ds.train.clone(), valid, test, f).unwrap()
        };
    // the same training pairs, one held-out interaction moved from test to validation
    let (mut valid, mut test) = (ds.valid.clone(), ds.test.clone());
    valid.push(test.pop().unwrap());
    let moved = rebuilt(valid, test, ds.item_features.clone());
    assert!(resume_err(&path, &moved).contains("another dataset"));
    // the same splits, one feature value changed
    let mut features = ds.item_features.clone();
    features[0].1[[0, 0]] += 1.0;
    let edited = rebuilt(ds.valid.clone(), ds.test.clone(), features);
    assert!(resume_err(&path, &edited).contains("another dataset"));
    // the tag edited back to version 1
    let v1 = with_metadata(&bytes, &[("format", "recgoat-core/checkpoint-v1".into())]);
    std::fs::write(&path, &v1).unwrap();
    let e = resume_err(&path, &ds);
    assert!(e.contains("resume_unverified"), "{e}");
    assert!(Trainer::resume_unverified(&path, &ds, Backend::Cpu(Par::Seq), None).is_ok());
    // an inconsistent state: more epochs than logs, a best epoch beyond them
    let state = |edit: &dyn Fn(&mut serde_json::Value)| {
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let mut v: serde_json::Value =
            serde_json::from_str(&meta.metadata().as_ref().unwrap()["state"]).unwrap();
        edit(&mut v);
        let edits = [
            ("format", "recgoat-core/checkpoint-v1".to_string()),
            ("state", v.to_string()),
        ];
        std::fs::write(&path, with_metadata(&bytes, &edits)).unwrap();
        Trainer::resume_unverified(&path, &ds, Backend::Cpu(Par::Seq), None)
            .map(|_| ())
            .expect_err("an inconsistent state")
            .to_string()
    };
    let e = state(&|v| v["epoch"] = 5.into());
    assert!(
        e.contains("inconsistent") && e.contains("5 epochs with 1 epoch logs"),
        "{e}"
    );
    let e = state(&|v| v["best_epoch"] = 3.into());
    assert!(e.contains("best epoch 3 beyond"), "{e}");
    let e = state(&|v| v["best_recall"] = 7.into());
    assert!(e.contains("best Recall@20 7"), "{e}");
}

#[test]
fn nan_parameters_and_tiny_scales_are_errors() {
    let cfg = GatConfig::<f64>::new(3, 4, 2).unwrap();
    let layer = GatLayer::new(cfg).unwrap();
    let g = CsrGraph::<f64>::new(2, 2, vec![0, 2, 4], vec![0, 1, 0, 1], None).unwrap();
    let x = Array2::<f64>::ones((2, 3));
    let good = GatParams::init(layer.config(), &mut recgoat_core::testing::rng(1));
    for which in ["a_dst", "bias"] {
        let mut p = good.clone();
        match which {
            "a_dst" => p.a_dst.as_mut().unwrap()[[0, 0]] = f64::NAN,
            _ => p.bias.as_mut().unwrap()[0] = f64::NAN,
        }
        let e = layer
            .forward(&p, &g, x.view(), Mode::Eval, Par::Seq)
            .unwrap_err();
        assert!(
            matches!(e, Error::NonFinite { .. }) && e.to_string().contains(which),
            "{e}"
        );
    }
    // a positive temperature too small to divide by
    let v = Array2::<f32>::ones((2, 3));
    let cfg = InfoNceConfig {
        temperature: f32::from_bits(1),
        ..InfoNceConfig::default()
    };
    let e = info_nce(v.view(), v.view(), None, None, &cfg, Par::Seq).unwrap_err();
    assert!(matches!(e, Error::Param { .. }), "{e}");
    let e = SinkhornConfig::new(Epsilon::Absolute(1e-40f32))
        .validate()
        .unwrap_err();
    assert!(matches!(e, Error::Param { .. }), "{e}");
    // the small layers report what they cannot compute
    assert!(l2_regularization(&[array![[f64::NAN]].view()], 0.1).is_err());
    assert!(l2_regularization(&[array![[1.0]].view()], -0.1).is_err());
    assert!(leaky_relu(array![[f64::INFINITY]].view(), 0.2).is_err());
}

// --- errors that did not say enough

#[test]
fn errors_name_the_file_and_line_and_say_what_to_do() {
    let dir = scratch("lines");
    std::fs::write(dir.join("train.txt"), "0 0 1\n1 1\n").unwrap();
    // user 5 (line 3 of the test split) leaves users 2 to 4 without any interaction
    std::fs::write(dir.join("test.txt"), "0 1\n\n5 0\n").unwrap();
    let e = Dataset::load_lightgcn_dir(&dir, &[])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("test.txt:3") && e.contains("user 2 has no interaction"),
        "{e}"
    );
    // divergence says so
    let cfg = RecGoatConfig {
        lr: 1e30,
        ..tiny_config(RecGoatConfig::lightgcn())
    };
    let ds = common::tiny();
    let mut t = Trainer::new(
        RecGoatConfig {
            batch_size: 8,
            ..cfg
        },
        &ds,
        Backend::Cpu(Par::Seq),
    )
    .unwrap();
    let e = t.run_epoch(|_, _| {}).unwrap_err().to_string();
    assert!(e.contains("diverged") && e.contains("lower it"), "{e}");
}

#[test]
fn a_short_fuzz_run_of_every_loader_finds_no_panic() {
    for target in Target::ALL {
        let dir = scratch(&format!("fuzz-{}", target.name()));
        let report = run(target, 7, 300, &dir).unwrap();
        assert_eq!(report.runs, 300);
        assert!(
            report.panics.is_empty(),
            "{}: {:?}",
            target.name(),
            report.panics
        );
        assert!(
            report.errors > 0,
            "{}: every mutation was accepted",
            target.name()
        );
    }
}
