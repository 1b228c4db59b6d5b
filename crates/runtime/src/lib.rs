//! Infinite-width DMFT of wide networks in discrete time: the numerical core.
//!
//! Conventions follow `docs/dmft.md` (μP with feature strength γ₀, c = ηγ₀/P, kernels
//! Φ^ℓ and G^ℓ over (time, sample), response functions R_φ and R_g). Every solver marches
//! forward in time once; none iterates a global fixed point.

pub mod activation;
pub mod deep_linear;
pub mod deep_linear_propagator;
pub mod deep_nonlinear;
pub mod kernel_variances;
pub mod lazy;
pub mod lazy_fluctuations;
pub mod linalg;
pub mod mean_shift;
pub mod problem;
pub mod propagator;
pub mod proportional;
pub mod quadrature;
pub mod record;
pub mod sampling;
pub mod two_layer;

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
    validate(model, schedule, solver)?;
    match solver {
        SolverKind::Lazy => lazy::solve(problem, model, schedule, options.quadrature, progress),
        SolverKind::TwoLayer if options.quadrature > 0 => {
            two_layer::solve_quadrature(problem, model, schedule, options.quadrature, progress)
        }
        SolverKind::TwoLayer => {
            two_layer::solve_monte_carlo(problem, model, schedule, options, progress)
        }
        SolverKind::DeepLinear if model.residual.is_some() => {
            deep_linear::residual::solve(problem, model, schedule, progress)
        }
        SolverKind::DeepLinear => deep_linear::solve(problem, model, schedule, progress),
        SolverKind::DeepNonlinear => {
            deep_nonlinear::solve(problem, model, schedule, options, progress)
        }
    }
}

/// The input checks every solver shares; errors name the offending key.
pub fn validate(model: &Model, schedule: &Schedule, solver: SolverKind) -> Result<()> {
    let bad = |msg: String| Err(DmftError::Invalid(msg));
    if model.depth == 0 {
        return bad("model.depth must be ≥ 1, got 0".into());
    }
    if !(model.gamma0.is_finite() && model.gamma0 > 0.0) {
        return bad(format!(
            "model.gamma0 must be a positive number, got {}",
            model.gamma0
        ));
    }
    if !(schedule.eta.is_finite() && schedule.eta > 0.0) {
        return bad(format!(
            "train.eta must be a positive number, got {}",
            schedule.eta
        ));
    }
    if schedule.record_every == 0 {
        return bad("train.record_every must be ≥ 1, got 0".into());
    }
    if solver != SolverKind::Lazy && model.parameterization == Parameterization::Ntk {
        return bad(format!(
            "theory.solver = {solver} needs model.parameterization = mup; the NTK parameterization's \
             infinite-width limit is lazy (use solver = lazy or auto)"
        ));
    }
    if let Some(beta) = model.residual {
        if !(beta.is_finite() && beta > 0.0) {
            return bad(format!(
                "model.residual_beta must be a positive number, got {beta}"
            ));
        }
        if solver != SolverKind::DeepLinear || model.activation != Activation::Linear {
            return bad(format!(
                "model.residual_beta (residual branches) is solved for linear networks only (theory.solver = deep-linear, \
                 model.activation = linear), got solver {solver}, activation {}",
                model.activation
            ));
        }
    }
    if model.readout == Readout::Frozen && solver != SolverKind::TwoLayer {
        return bad(format!(
            "model.readout = frozen is implemented by the two-layer solver only (model.depth = 1, \
             parameterization = mup), not by theory.solver = {solver}"
        ));
    }
    match solver {
        SolverKind::TwoLayer if model.depth != 1 => bad(format!(
            "theory.solver = two-layer needs model.depth = 1, got {}",
            model.depth
        )),
        SolverKind::DeepLinear if model.activation != Activation::Linear => bad(format!(
            "theory.solver = deep-linear needs model.activation = linear, got {}",
            model.activation
        )),
        SolverKind::DeepNonlinear if model.depth < 2 => bad(
            "theory.solver = deep-nonlinear needs model.depth ≥ 2 (use two-layer for depth 1)"
                .into(),
        ),
        _ => Ok(()),
    }
}
