//! The crate's one error type.
//!
//! Every variant names the operation that refused its input (`op`) and carries the offending values, so a
//! message read in a log is enough to find the bad argument without a debugger.

/// Errors returned by every fallible function of the crate.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Two inputs whose shapes must agree do not.
    #[error("{op}: shape mismatch: {what} (expected {expected}, got {got})")]
    Shape {
        /// Operation that checked the shape.
        op: &'static str,
        /// Which argument or relation is wrong.
        what: String,
        /// The expected shape, as text.
        expected: String,
        /// The shape that was passed, as text.
        got: String,
    },
    /// An input has no elements where at least one is needed.
    #[error("{op}: {what} is empty")]
    Empty {
        /// Operation that refused the input.
        op: &'static str,
        /// Which argument is empty.
        what: String,
    },
    /// An input holds NaN or an infinity.
    #[error("{op}: {what} has a non-finite value {value} at index {index}")]
    NonFinite {
        /// Operation that refused the input.
        op: &'static str,
        /// Which argument holds the value.
        what: String,
        /// Flat index (or row, for per-row checks) of the first bad value.
        index: usize,
        /// The bad value, printed.
        value: String,
    },
    /// A marginal (weight vector) is invalid: negative or zero entries, or masses that do not match.
    #[error("{op}: bad marginals: {reason}")]
    Marginals {
        /// Operation that refused the marginals.
        op: &'static str,
        /// What is wrong, with the values.
        reason: String,
    },
    /// A scalar parameter or configuration field is out of its domain.
    #[error("{op}: invalid parameter `{name}` = {value}: {reason}")]
    Param {
        /// Operation (or config type) that validated the parameter.
        op: &'static str,
        /// Field or argument name.
        name: &'static str,
        /// The value that was passed, printed.
        value: String,
        /// The accepted domain.
        reason: String,
    },
    /// A cost matrix holds a negative entry where costs must be non-negative.
    #[error("{op}: {what} has a negative value {value} at index {index}")]
    Negative {
        /// Operation that refused the input.
        op: &'static str,
        /// Which argument.
        what: String,
        /// Flat index of the first bad value.
        index: usize,
        /// The bad value, printed.
        value: String,
    },
    /// An iterative linear solve (for implicit differentiation) did not reach its tolerance.
    #[error("{op}: linear solve did not converge: residual {residual} after {iterations} iterations (tolerance {tolerance})")]
    NotConverged {
        /// Operation that ran the solve.
        op: &'static str,
        /// Relative residual reached.
        residual: f64,
        /// Iterations run.
        iterations: usize,
        /// Requested tolerance.
        tolerance: f64,
    },
    /// A graph is malformed or does not fit the operation (index out of range, unsorted row, missing self
    /// loops, ...).
    #[error("{op}: bad graph: {reason}")]
    Graph {
        /// Operation that refused the graph.
        op: &'static str,
        /// What is wrong, with the offending values.
        reason: String,
    },
    /// A file could not be read.
    #[error("{op}: cannot read {path}: {reason}")]
    Io {
        /// Operation that read the file.
        op: &'static str,
        /// The file.
        path: String,
        /// The system's or the decoder's message.
        reason: String,
    },
    /// A file could not be written.
    #[error("{op}: cannot write {path}: {reason}")]
    Write {
        /// Operation that wrote the file.
        op: &'static str,
        /// The file.
        path: String,
        /// The system's message.
        reason: String,
    },
    /// A line of a data file is malformed, or the data it holds is inconsistent.
    #[error("{path}{}: {reason}", at_line(*.line))]
    Data {
        /// The file.
        path: String,
        /// 1-based line number (0 when the problem is not on one line).
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A checkpoint that cannot be used: not a recgoat-core checkpoint, corrupt, or made for another
    /// configuration or dataset.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A saved recommender that cannot be used: not a recgoat-core recommender file, truncated, corrupt, or
    /// inconsistent.
    #[error("recommender {path}: {reason}")]
    Recommender {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A feature needed by the call was not compiled in.
    #[error("{op}: needs the cargo feature `{feature}`")]
    FeatureDisabled {
        /// Operation that needs the feature.
        op: &'static str,
        /// The cargo feature to enable.
        feature: &'static str,
    },
    /// No GPU adapter could be used: the `gpu` feature is off, no adapter matches, or the device could not
    /// be opened.
    #[error("GPU unavailable: {reason}")]
    GpuUnavailable {
        /// Why (the feature, the adapters seen, or the driver's message).
        reason: String,
    },
    /// The GPU refused or failed an operation (a device limit the input cannot be chunked under, a driver
    /// error, a lost device).
    #[error("{op}: GPU error: {reason}")]
    Gpu {
        /// Operation that ran on the GPU.
        op: &'static str,
        /// What went wrong, with the limit's name and value where one was exceeded.
        reason: String,
    },
    /// Data-parallel training ([`crate::dist::World`]) stopped: another process of the job failed (its
    /// rank and message), the processes disagree on what they train (their data, configuration or
    /// parameters), or the launch and the build do not fit together.
    #[error("rank {rank} of {size}: {reason}")]
    Distributed {
        /// The rank whose error or value stopped the job.
        rank: usize,
        /// Processes in the job.
        size: usize,
        /// That rank's message.
        reason: String,
    },
    /// A numerical routine from an external library failed.
    #[error("{op}: numerical failure: {reason}")]
    Numerical {
        /// Operation that failed.
        op: &'static str,
        /// Library message.
        reason: String,
    },
}

/// Shorthand for `std::result::Result<T, recgoat_core::Error>`.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn shape(
        op: &'static str,
        what: impl Into<String>,
        expected: impl std::fmt::Debug,
        got: impl std::fmt::Debug,
    ) -> Self {
        Error::Shape {
            op,
            what: what.into(),
            expected: format!("{expected:?}"),
            got: format!("{got:?}"),
        }
    }

    pub(crate) fn param(
        op: &'static str,
        name: &'static str,
        value: impl std::fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        Error::Param {
            op,
            name,
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

/// Checks that every value is finite; the error names the first bad flat index and value.
pub(crate) fn check_finite<F: num_traits::Float + std::fmt::Display>(
    op: &'static str,
    what: &str,
    it: impl Iterator<Item = F>,
) -> Result<()> {
    for (k, v) in it.enumerate() {
        if !v.is_finite() {
            return Err(Error::NonFinite {
                op,
                what: what.into(),
                index: k,
                value: v.to_string(),
            });
        }
    }
    Ok(())
}

/// [`check_finite`] for a contiguous slice: a vectorised all-finite test first, the scan for the first bad
/// index only when it fails.
pub(crate) fn check_finite_slice<F: num_traits::Float + std::fmt::Display>(
    op: &'static str,
    what: &str,
    xs: &[F],
) -> Result<()> {
    if crate::simd::all_finite(xs) {
        return Ok(());
    }
    check_finite(op, what, xs.iter().copied())
}

/// [`check_finite`] for an array view (fast when it is contiguous).
pub(crate) fn check_finite_array<
    F: num_traits::Float + std::fmt::Display,
    D: ndarray::Dimension,
>(
    op: &'static str,
    what: &str,
    x: &ndarray::ArrayView<'_, F, D>,
) -> Result<()> {
    match x.as_slice() {
        Some(s) => check_finite_slice(op, what, s),
        None => check_finite(op, what, x.iter().copied()),
    }
}

/// `:line` for a problem on a line of a file, nothing for one that is not on a line (line 0).
fn at_line(line: usize) -> String {
    match line {
        0 => String::new(),
        l => format!(":{l}"),
    }
}
