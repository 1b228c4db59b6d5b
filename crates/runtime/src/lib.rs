//! Infinite-width DMFT of wide networks in discrete time: the numerical core.
//!
//! Conventions follow `docs/dmft.md` (μP with feature strength γ₀, c = ηγ₀/P, kernels
//! Φ^ℓ and G^ℓ over (time, sample), response functions R_φ and R_g). Every solver marches
//! forward in time once; none iterates a global fixed point.

pub mod activation;
pub mod problem;

pub use activation::Activation;
pub use problem::*;

/// Runs the chosen infinite-width solver and returns the recorded trajectory.
pub fn solve(
    problem: &Problem,
    model: &Model,
    schedule: &Schedule,
    solver: SolverKind,
    options: &SolverOptions,
    progress: Progress,
) -> Result<Trajectory> {
    let _ = (problem, model, schedule, options, progress);
    Err(DmftError::Unsupported(format!("solver {solver} is being written")))
}
