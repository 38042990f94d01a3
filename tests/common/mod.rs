//! Fixtures shared by the integration test files (each includes this module with `mod common;`).
// each test file uses some of them
#![allow(dead_code)]

use ndarray::Array2;
use recgoat_core::attention::{GatConfig, Scoring};
use recgoat_core::data::Dataset;
use recgoat_core::testing;

/// The graph attention configurations every GAT test runs: both scorings, concatenated and averaged heads,
/// residual (projection and identity), no bias, slope 0, and the head shapes that take specialised kernels
/// (head width 8 and 16; 8 heads x 8). Some configure dropout: parity tests run them in eval mode, gradient
/// tests in training mode.
pub fn gat_variants() -> Vec<(&'static str, GatConfig<f64>)> {
    let base = GatConfig::<f64>::new(5, 6, 3).unwrap();
    let c8 = GatConfig::<f64>::new(5, 16, 2).unwrap();
    let c16 = GatConfig::<f64>::new(5, 32, 2).unwrap();
    let h8c8 = GatConfig::<f64>::new(5, 64, 8).unwrap();
    vec![
        ("gatconv concat", base),
        (
            "gatconv mean",
            GatConfig {
                concat: false,
                ..base
            },
        ),
        (
            "gatv2 concat",
            GatConfig {
                scoring: Scoring::GatV2,
                ..base
            },
        ),
        (
            "gatv2 mean residual",
            GatConfig {
                scoring: Scoring::GatV2,
                concat: false,
                residual: true,
                ..base
            },
        ),
        (
            "residual projection, no bias",
            GatConfig {
                residual: true,
                bias: false,
                ..base
            },
        ),
        (
            "residual identity",
            GatConfig {
                residual: true,
                in_dim: 6,
                ..base
            },
        ),
        (
            "slope 0",
            GatConfig {
                negative_slope: 0.0,
                ..base
            },
        ),
        (
            "C=8 mean, dropout",
            GatConfig {
                concat: false,
                feat_drop: 0.2,
                attn_drop: 0.2,
                ..c8
            },
        ),
        (
            "gatv2 C=16",
            GatConfig {
                scoring: Scoring::GatV2,
                ..c16
            },
        ),
        (
            "8 heads x 8, dropout",
            GatConfig {
                feat_drop: 0.2,
                attn_drop: 0.3,
                ..h8c8
            },
        ),
        (
            "8 heads x 8 mean, residual, slope 0.5",
            GatConfig {
                concat: false,
                residual: true,
                negative_slope: 0.5,
                ..h8c8
            },
        ),
        (
            "8 heads x 8 gatv2 mean",
            GatConfig {
                scoring: Scoring::GatV2,
                concat: false,
                ..h8c8
            },
        ),
    ]
}

/// 9 users, 12 items, two modalities of widths 5 and 3; every user has 3-4 training items.
pub fn tiny() -> recgoat_core::data::Dataset {
    let mut rng = recgoat_core::testing::rng(42);
    let f1: ndarray::Array2<f32> =
        recgoat_core::testing::randn::<f64, _, _>(&mut rng, (12, 5)).mapv(|v| v as f32);
    let f2: ndarray::Array2<f32> =
        recgoat_core::testing::randn::<f64, _, _>(&mut rng, (12, 3)).mapv(|v| v as f32);
    let mut train = Vec::new();
    for u in 0..9 {
        for k in 0..(3 + u % 2) {
            train.push((u, (u * 5 + k * 3) % 12));
        }
    }
    let test: Vec<_> = (0..9).map(|u| (u, (u * 5 + 1) % 12)).collect();
    recgoat_core::data::Dataset::new(
        "tiny",
        train,
        vec![],
        test,
        vec![("a".into(), f1), ("b".into(), f2)],
    )
    .unwrap()
}

/// 60 users in 3 taste groups over `3 * per_group` items; each user has 6 training, 1 valid and 1 test item
/// from their group. A model that learns anything ranks group items first.
pub fn clustered_groups(per_group: usize) -> Dataset {
    let (mut train, mut valid, mut test) = (Vec::new(), Vec::new(), Vec::new());
    for u in 0..60 {
        let g = u % 3;
        let items: Vec<usize> = (0..8)
            .map(|k| g * per_group + (u / 3 + 3 * k) % per_group)
            .collect();
        train.extend(items[..6].iter().map(|&i| (u, i)));
        valid.push((u, items[6]));
        test.push((u, items[7]));
    }
    let mut rng = testing::rng(9);
    // a feature that knows the groups, plus noise
    let feat = Array2::from_shape_fn((3 * per_group, 6), |(i, j)| {
        let signal = if j == i / per_group { 2.0 } else { 0.0 };
        signal + 0.3 * testing::randn::<f64, _, _>(&mut rng, (1, 1))[[0, 0]]
    })
    .mapv(|v| v as f32);
    Dataset::new("clustered", train, valid, test, vec![("f".into(), feat)]).unwrap()
}

/// A fresh folder under the system's temporary directory for one test (named by `prefix`, the process id
/// and `test`), removed with everything in it when the guard is dropped, so that repeated runs leave
/// nothing behind.
pub struct Scratch(std::path::PathBuf);

impl Scratch {
    /// The folder, emptied first if an earlier run of the same process id left it.
    pub fn new(prefix: &str, test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl std::ops::Deref for Scratch {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::path::Path> for Scratch {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
