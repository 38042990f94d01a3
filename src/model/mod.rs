//! The reference RecGOAT model (`docs/`'s method notes): configuration and presets, parameters, the forward
//! pass, losses and hand-written backward pass written once over the execution backends of
//! `crate::exec` (`step.rs`), training with early stopping, and checkpoints. Ranking evaluation lives in
//! [`crate::eval`] (re-exported here).

mod checkpoint;
mod config;
mod params;
mod profile;
mod recgoat;
mod ridge;
mod taste;
pub(crate) use ridge::{neighbour_weights, spd_inverse, top_cosines};
pub(crate) use taste::taste_codes;
mod step;
mod train;

pub use crate::data::Batch;
pub use crate::eval::{evaluate, evaluate_reference, Metrics};
pub use crate::io::{write_atomic, write_npy_atomic};
pub use config::{Cmcl, Fusion, Modalities, OtGradient, RecGoatConfig};
pub use params::{Branch, Params};
pub use profile::{Profile, Stage};
pub use recgoat::{content_trust, Forward, LossParts, RecGoat};
pub use train::{
    choose_cold_scale, ColdTrial, EpochLog, Split, TrainState, Trainer, Validated, EGO_SHARES,
    EVAL_KS,
};
