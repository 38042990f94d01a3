//! What several examples share (a module of each, not an example of its own).
// each example uses some of it
#![allow(dead_code, unused_macros, unused_imports)]

use std::sync::atomic::{AtomicBool, Ordering};

/// Whether this process prints its reports: under `mpirun` rank 0 alone does ([`reports_from`]).
pub static REPORTS: AtomicBool = AtomicBool::new(true);

/// Lets this process print its reports when it is rank 0 of `world` (every process alone is).
pub fn reports_from(world: &recgoat_core::dist::World) {
    REPORTS.store(world.is_root(), Ordering::Relaxed);
}

/// Whether this process prints its reports.
pub fn reports() -> bool {
    REPORTS.load(Ordering::Relaxed)
}

/// `println!` on the reporting process.
macro_rules! say {
    ($($t:tt)*) => {
        if $crate::common::reports() {
            println!($($t)*)
        }
    };
}

/// `eprintln!` on the reporting process.
macro_rules! note {
    ($($t:tt)*) => {
        if $crate::common::reports() {
            eprintln!($($t)*)
        }
    };
}

pub(crate) use {note, say};

/// Sizes rayon's global pool to `threads` (0 keeps rayon's default: every core).
pub fn rayon_threads(threads: usize) -> Result<(), rayon::ThreadPoolBuildError> {
    if threads > 0 {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()?;
    }
    Ok(())
}

/// The mean of `v` and its sample standard deviation (0 for one value).
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0).max(1.0);
    (m, var.sqrt())
}
