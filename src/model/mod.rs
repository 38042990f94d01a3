//! The reference RecGOAT model (RECGOAT.md): configuration and presets, parameters, the forward pass and its
//! hand-written backward pass over the whole model, training with early stopping, checkpoints and
//! all-item ranking evaluation.

mod config;
mod eval;
mod params;
mod profile;
mod recgoat;

pub use config::{Cmcl, Fusion, Modalities, OtGradient, RecGoatConfig};
pub use eval::{evaluate, evaluate_reference, Metrics};
pub use params::{Branch, Params};
pub use profile::{Profile, Stage};
pub use recgoat::{Batch, Forward, LossParts, OutputGrads, RecGoat};
