//! The crate's error type. Every message is one line and names the offending parameter,
//! file or array, so a failing run says what to change.

/// Errors of the finite-width simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A configuration or data value is out of range; the message names it (e.g.
    /// "sim.widths contains 0").
    #[error("{0}")]
    Invalid(String),
    /// The run would need more memory than the caller allowed.
    #[error(
        "memory estimate {estimate} bytes ({gib:.3} GiB) exceeds sim.memory_budget = {budget} bytes; reduce sim.seeds, the width, the number of recorded steps or test points",
        gib = *.estimate as f64 / (1u64 << 30) as f64
    )]
    MemoryBudget { estimate: u64, budget: u64 },
    /// Fewer than two seeds survived, so no variance can be formed.
    #[error(
        "only {converged} of {seeds} seeds converged at width {width} (first divergence: seed {seed} at step {step}, loss {loss:.3e}); reduce train.eta or raise sim.divergence_threshold"
    )]
    TooFewConverged {
        width: usize,
        seeds: usize,
        converged: usize,
        seed: usize,
        step: usize,
        loss: f64,
    },
    /// A proportional-regime network's loss stopped being finite (that setting stops at the
    /// first diverging seed, since its curves are seed means).
    #[error("simulation diverged at step {step} (D = {dim}, seed {seed}); reduce train.eta")]
    Diverged {
        step: usize,
        dim: usize,
        seed: usize,
    },
    /// A data file could not be read or has the wrong content.
    #[error("{path}: {reason}")]
    Data { path: String, reason: String },
}

pub type Result<T> = std::result::Result<T, SimError>;

/// Shorthand for [`SimError::Invalid`] with a formatted message.
pub(crate) fn invalid(message: impl Into<String>) -> SimError {
    SimError::Invalid(message.into())
}
