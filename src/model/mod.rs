//! The reference RecGOAT model. So far: evaluation (all-item ranking metrics); the configuration, the
//! training loop and checkpoints arrive with the model issue.

mod eval;

pub use eval::{evaluate, evaluate_reference, Metrics};
