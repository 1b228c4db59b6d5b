//! Solvers generated from derived equations (`cargo xtask gen`, docs/codegen.md), and the
//! choice between them and the runtime's hand-written reference solvers.
//!
//! `generated/` is written by the generator and never edited by hand. Data flows one way:
//! the runtime knows nothing of this crate; this crate calls the runtime's primitives and,
//! when no generated solver serves a variant, the runtime's reference solver.

pub mod generated;

use dmft_runtime::deep_linear_propagator::{self, DeepLinearFluctuations};
use dmft_runtime::propagator::{self, PredictionFluctuations};
use dmft_runtime::{
    Activation, Model, Problem, Progress, Readout, Result, Schedule, SolverKind, SolverOptions,
    Trajectory,
};
use std::fmt;

/// A generated solver's entry point; same contract as `dmft_runtime::solve` for its variant.
pub type SolveFn = fn(&Problem, &Model, &Schedule, &SolverOptions, Progress) -> Result<Trajectory>;

/// A generated prediction propagator; same contract as
/// `dmft_runtime::propagator::two_layer_prediction_fluctuations` for its variant.
pub type PropagatorFn =
    fn(&Problem, &Model, &Schedule, &SolverOptions, Progress) -> Result<PredictionFluctuations>;

/// A generated deep linear propagator; same contract as
/// `dmft_runtime::deep_linear_propagator::deep_linear_prediction_fluctuations_with_progress`.
pub type DeepPropagatorFn =
    fn(&Problem, &Model, &Schedule, Progress) -> Result<DeepLinearFluctuations>;

/// A registry row: the variant (spec name and file) and the runtime variant it serves.
pub struct Generated {
    pub variant: &'static str,
    pub spec: &'static str,
    pub solver: SolverKind,
    pub depth: usize,
    pub activation: Activation,
    pub readout: Readout,
    /// Serves models with residual branches (`Model::residual` set) and only those.
    pub residual: bool,
    pub solve: SolveFn,
    /// The variant's prediction propagator (Σ_f), for two-layer site marches.
    pub propagator: Option<PropagatorFn>,
    /// The variant's deep linear propagator (Σ_f of the joint site), for residual streams.
    pub deep_propagator: Option<DeepPropagatorFn>,
}

/// Which implementation produced a trajectory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A generated solver, named by its variant (the spec's name).
    Generated(&'static str),
    /// The runtime's hand-written solver.
    Reference,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Generated(v) => write!(f, "generated:{v}"),
            Source::Reference => f.write_str("reference"),
        }
    }
}

/// The generated solver serving `solver` on `model`, if the catalogue has one.
pub fn find(solver: SolverKind, model: &Model) -> Option<&'static Generated> {
    generated::REGISTRY.iter().find(|g| {
        g.solver == solver
            && g.depth == model.depth
            && g.activation == model.activation
            && g.readout == model.readout
            && g.residual == model.residual.is_some()
    })
}

/// Solves with the generated solver of the variant when there is one, else with the
/// reference; the same input checks apply to both.
pub fn solve(
    problem: &Problem,
    model: &Model,
    schedule: &Schedule,
    solver: SolverKind,
    options: &SolverOptions,
    progress: Progress,
) -> Result<(Trajectory, Source)> {
    dmft_runtime::validate(model, schedule, solver)?;
    match find(solver, model) {
        Some(g) => Ok((
            (g.solve)(problem, model, schedule, options, progress)?,
            Source::Generated(g.variant),
        )),
        None => Ok((
            dmft_runtime::solve(problem, model, schedule, solver, options, progress)?,
            Source::Reference,
        )),
    }
}

/// The two-layer prediction propagator Σ_f with the generated site recorder of the
/// variant when there is one, else with the reference; says which ran.
pub fn prediction_fluctuations(
    problem: &Problem,
    model: &Model,
    schedule: &Schedule,
    options: &SolverOptions,
    progress: Progress,
) -> Result<(PredictionFluctuations, Source)> {
    let generated =
        find(SolverKind::TwoLayer, model).and_then(|g| Some((g.variant, g.propagator?)));
    match generated {
        Some((variant, run)) => Ok((
            run(problem, model, schedule, options, progress)?,
            Source::Generated(variant),
        )),
        None => Ok((
            propagator::two_layer_prediction_fluctuations(
                problem, model, schedule, options, progress,
            )?,
            Source::Reference,
        )),
    }
}

/// The deep linear propagator Σ_f with the generated one of the variant when there is one,
/// else with the reference; says which ran.
pub fn deep_linear_prediction_fluctuations(
    problem: &Problem,
    model: &Model,
    schedule: &Schedule,
    progress: Progress,
) -> Result<(DeepLinearFluctuations, Source)> {
    let generated =
        find(SolverKind::DeepLinear, model).and_then(|g| Some((g.variant, g.deep_propagator?)));
    match generated {
        Some((variant, run)) => Ok((
            run(problem, model, schedule, progress)?,
            Source::Generated(variant),
        )),
        None => Ok((
            deep_linear_propagator::deep_linear_prediction_fluctuations_with_progress(
                problem, model, schedule, progress,
            )?,
            Source::Reference,
        )),
    }
}
