#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod attention;
pub mod backend;
pub mod contrastive;
pub mod data;
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
