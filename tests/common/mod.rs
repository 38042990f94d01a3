//! Fixtures shared by the integration test files (each includes this module with `mod common;`).

use recgoat_core::attention::{GatConfig, Scoring};

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
