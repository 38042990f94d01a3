#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod attention;
pub mod backend;
pub mod contrastive;
pub mod data;
pub mod dist;
pub mod error;
pub mod eval;
mod exec;
pub mod fuzz;
pub mod gpu;
pub mod graph;
pub mod io;
pub mod model;
pub mod nn;
pub mod recommend;
pub mod simd;
pub mod testing;
pub mod transport;

pub use backend::{Backend, GpuBackend, Par};
pub use error::{Error, Result};
pub use simd::Real;

/// The `ndarray` version the crate's signatures use (`ArrayView2`, `Array2`, ...): depend on it through
/// here to get the same one.
pub use ndarray;
/// The `rand` version behind the functions that take a random number generator
/// ([`attention::GatParams::init`], [`nn::Linear::new`]): use it (or [`testing::rng`]) to get a generator
/// that fits, whatever `rand` your own crate depends on.
pub use rand;

/// The types a program that trains, saves, loads and serves the model needs, in one `use`.
///
/// ```
/// use recgoat_core::prelude::*;
/// let cfg = RecGoatConfig::lightgcn();
/// assert!(cfg.validate().is_ok());
/// let _: Array2<f32> = Array2::zeros((2, 2));
/// ```
pub mod prelude {
    pub use crate::attention::Mode;
    pub use crate::backend::{Backend, Par};
    pub use crate::data::{Batch, Dataset};
    pub use crate::error::{Error, Result};
    pub use crate::model::{Metrics, Params, RecGoat, RecGoatConfig, Split, Trainer};
    pub use crate::recommend::Recommender;
    pub use ndarray::{Array1, Array2, ArrayView1, ArrayView2};
}
