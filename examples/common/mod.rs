//! What several examples share (a module of each, not an example of its own).

/// Sizes rayon's global pool to `threads` (0 keeps rayon's default: every core).
pub fn rayon_threads(threads: usize) -> Result<(), rayon::ThreadPoolBuildError> {
    if threads > 0 {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()?;
    }
    Ok(())
}
