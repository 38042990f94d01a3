//! The reference RecGOAT model (RECGOAT.md): configuration and presets, parameters, the forward pass and its
//! hand-written backward pass over the whole model, training with early stopping, checkpoints and
//! all-item ranking evaluation.

mod checkpoint;
mod config;
mod eval;
mod params;
mod profile;
mod recgoat;
mod step;
mod train;

pub use checkpoint::{write_atomic, write_npy_atomic};
pub use config::{Cmcl, Fusion, Modalities, OtGradient, RecGoatConfig};
pub use eval::{evaluate, evaluate_reference, Metrics};
pub use params::{Branch, Params};
pub use profile::{Profile, Stage};
pub use recgoat::{Batch, Forward, LossParts, RecGoat};
pub use train::{EpochLog, Split, TrainState, Trainer, EVAL_KS};
