//! One experiment from config to written results: load the data, run the solver with a
//! progress bar, write the results folder.

use crate::config::{Config, DataKind, SolverChoice};
use crate::failure::Failure;
use crate::fluctuations::{Fluctuations, Sigma};
use crate::progress::Bar;
use crate::results::{self, Metrics};
use dmft_data::{Dataset, GaussianTask};
use dmft_runtime::propagator;
use dmft_runtime::{Parameterization, SolverKind, Trajectory};
use dmft_runtime::{deep_linear_propagator, lazy_fluctuations, mean_shift};
use dmft_sim::digits::{self, ClassSplit};
use std::path::Path;
use std::time::Instant;

/// The shipped digits (data/digits.npz, see scripts/export_digits.py), embedded in the
/// binary so that `data.kind = "digits"` works from any working directory.
const DIGITS_NPZ: &[u8] = include_bytes!("../../../data/digits.npz");
/// How the embedded file is named in error messages.
const DIGITS_NAME: &str = "data/digits.npz (embedded)";

/// Where a config came from, for error messages and the summary echo.
pub struct Source<'a> {
    /// Shown at the start of error messages: the config file as given, or a description.
    pub name: &'a str,
    /// Folder that a relative `data.path` is resolved against.
    pub base_dir: &'a Path,
}

/// Arrays above this many f64 values in total (2 GiB) are refused before any work: the
/// machine would swap or abort, and a config asking for it is almost surely a typo.
const MAX_VALUES: u128 = 1 << 28;

pub fn load_data(config: &Config, source: &Source) -> Result<Dataset, Failure> {
    let d = &config.data;
    match d.kind {
        DataKind::Gaussian => {
            let values = (d.p_train as u128 + d.p_test as u128) * d.dim as u128;
            if values > MAX_VALUES {
                return Err(Failure::Input(format!(
                    "{}: data.p_train + data.p_test = {} points of data.dim = {} would hold {values} input values; the limit is {MAX_VALUES}",
                    source.name,
                    d.p_train as u128 + d.p_test as u128,
                    d.dim
                )));
            }
            let task = GaussianTask {
                p_train: d.p_train,
                p_test: d.p_test,
                dim: d.dim,
                teacher: d.teacher,
                seed: d.seed,
            };
            Ok(task.generate())
        }
        DataKind::Npz => {
            let relative = d.path.as_deref().ok_or_else(|| {
                Failure::Input(format!(
                    "{}: data.path is required when data.kind = \"npz\"",
                    source.name
                ))
            })?;
            let path = source.base_dir.join(relative);
            dmft_data::load_npz(&path).map_err(|e| Failure::Input(e.to_string()))
        }
        DataKind::Digits => load_digits(config, source),
        DataKind::Proportional => Err(Failure::Input(format!(
            "{}: data.kind = \"proportional\" describes the D → ∞ limit, not a point set; `dmft run` and the proportional `dmft sweep` handle it",
            source.name
        ))),
    }
}

/// The ±1 digits task of the config (module docs of `dmft_sim::digits`: a seeded choice of
/// images, centred and scaled so the training inputs have mean x·x/D = 1).
fn load_digits(config: &Config, source: &Source) -> Result<Dataset, Failure> {
    let d = &config.data;
    // A damaged embedded file is a broken build, not the user's input.
    let all =
        digits::from_bytes(DIGITS_NPZ, DIGITS_NAME).map_err(|e| Failure::Runtime(e.to_string()))?;
    let split = d.class_split();
    let which = match split {
        ClassSplit::Pair(a, b) => format!("images of digits {a} and {b}"),
        ClassSplit::OneVsRest(_) => "images".to_string(),
    };
    let eligible = all
        .label
        .iter()
        .filter(|&&l| match split {
            ClassSplit::Pair(a, b) => l == a || l == b,
            ClassSplit::OneVsRest(_) => true,
        })
        .count();
    let wanted = d.n_train as u128 + d.n_test as u128;
    if wanted > eligible as u128 {
        return Err(Failure::Input(format!(
            "{}: data.n_train + data.n_test = {wanted} exceeds the {eligible} {which} in the shipped digits set",
            source.name
        )));
    }
    let task = digits::binary_task(&all, split, d.n_train, d.n_test, d.seed)
        .map_err(|e| Failure::Input(format!("{}: {e}", source.name)))?;
    Ok(Dataset {
        x_train: task.x_train().to_owned(),
        y_train: task.y_train().to_owned(),
        x_test: task.x_test().to_owned(),
        y_test: task.y_test().map(|y| y.to_owned()),
    })
}

/// Refuses runs whose recorded arrays would not fit in memory, naming the sizes involved.
fn check_result_size(config: &Config, data: &Dataset, source: &Source) -> Result<(), Failure> {
    let (p, q) = (data.n_train() as u128, data.n_test() as u128);
    let t_rec = (config.train.steps / config.train.record_every) as u128 + 2;
    let values = t_rec * (p * p + 2 * (p + q) + 4) + (p + q) * (p + q);
    if values > MAX_VALUES {
        return Err(Failure::Input(format!(
            "{}: recording {t_rec} steps of a {p}×{p} NTK would hold {values} values; the limit is {MAX_VALUES} (raise train.record_every or use fewer points)",
            source.name
        )));
    }
    Ok(())
}

/// A finished run: what was computed and how long it took.
pub struct Outcome {
    pub trajectory: Trajectory,
    pub fluctuations: Option<Fluctuations>,
    pub metrics: Metrics,
}

/// The propagator needs dense (step, point) matrices; above this many bytes it is refused
/// before any work, with the estimate.
const MAX_PROPAGATOR_BYTES: u128 = 4 << 30;

/// Refuses a `theory.fluctuations` problem above what its propagator can hold, naming the
/// sizes and what to reduce; call it before any solving.
pub fn check_propagator_size(
    config: &Config,
    data: &Dataset,
    source: &Source,
) -> Result<(), Failure> {
    if !config.theory.fluctuations {
        return Ok(());
    }
    let (p, q, steps) = (data.n_train(), data.n_test(), config.train.steps);
    let depth = config.model.depth;
    let lazy = lazy_universal_form(config);
    if depth > 1 && !lazy {
        let order_parameters = deep_linear_propagator::order_parameters(depth, p + q, steps);
        let limit = deep_linear_propagator::MAX_ORDER_PARAMETERS;
        if order_parameters > limit as u128 {
            return Err(Failure::Input(format!(
                "{}: theory.fluctuations at model.depth = {depth} uses the dense deep linear propagator, which holds at most {limit} order parameters; P + Q = {} points over T + 1 = {} steps give {order_parameters} (reduce train.steps, the number of points or model.depth)",
                source.name,
                p + q,
                steps + 1
            )));
        }
        return Ok(());
    }
    let recorded = config.schedule().recorded_steps().len();
    let bytes = if lazy {
        lazy_fluctuations::memory_bytes(p, q, steps, depth)
    } else {
        let kernels = if config.theory.kernel_variances {
            propagator::kernel_memory_bytes(p, q, steps, recorded)
        } else {
            0
        };
        propagator::memory_bytes(p, q, steps, recorded) + kernels
    };
    if bytes > MAX_PROPAGATOR_BYTES {
        return Err(Failure::Input(format!(
            "{}: theory.fluctuations over {} (step, point) pairs (P + Q = {}, T + 1 = {}) needs about {:.1} GiB; the limit is {} GiB (use fewer points or steps)",
            source.name,
            (p + q) * (steps + 1),
            p + q,
            steps + 1,
            bytes as f64 / (1u64 << 30) as f64,
            MAX_PROPAGATOR_BYTES >> 30
        )));
    }
    Ok(())
}

/// Whether Σ_f is the lazy universal form: the lazy solver (named, or `auto` under the NTK
/// parameterization) at depth ≥ 2 or under the NTK parameterization. Two-layer μP keeps the
/// tangent propagator, which contains the lazy limit and has the mean shift.
fn lazy_universal_form(config: &Config) -> bool {
    let model = config.model();
    config.solver() == SolverKind::Lazy
        && (model.depth > 1 || model.parameterization == Parameterization::Ntk)
}

/// Computes the finite-width propagator Σ_f when `theory.fluctuations = true`, with a
/// progress bar: over the sites for two-layer μP, over the estimated work for deep linear
/// networks (the config allows depth ≥ 2 only for linear μP ones or the lazy solver). With
/// `theory.solver = "auto"` a two-layer μP variant of the catalogue uses its generated site
/// recorder, and a residual one its generated joint-site propagator.
pub fn fluctuations(
    config: &Config,
    data: &Dataset,
    source: &Source,
    label: &str,
    quiet: bool,
) -> Result<Option<Fluctuations>, Failure> {
    if !config.theory.fluctuations {
        return Ok(None);
    }
    check_propagator_size(config, data, source)?;
    let problem = data
        .to_problem()
        .map_err(|e| Failure::from_solver(source.name, e))?;
    let (model, schedule, options) = (config.model(), config.schedule(), config.solver_options());
    let solver_failure = |e| Failure::from_solver(source.name, e);
    if lazy_universal_form(config) {
        // The kernel frozen at its initial value: the universal form from κ_K.
        return lazy_fluctuations::lazy_prediction_fluctuations(
            &problem, &model, &schedule, &options,
        )
        .map(|fl| Some(Fluctuations::reference(Sigma::Lazy(Box::new(fl)))))
        .map_err(solver_failure);
    }
    if model.depth > 1 {
        let bar = Bar::percent(
            deep_linear_propagator::PROGRESS_TOTAL as u64,
            &format!("{label} Σ_f"),
            quiet,
        );
        let progress = |done: usize| bar.advance(done as u64);
        let computed = if config.theory.solver == SolverChoice::Auto {
            dmft_solvers::deep_linear_prediction_fluctuations(
                &problem, &model, &schedule, &progress,
            )
            .map(|(fl, from)| (fl, from.to_string()))
        } else {
            deep_linear_propagator::deep_linear_prediction_fluctuations_with_progress(
                &problem, &model, &schedule, &progress,
            )
            .map(|fl| (fl, dmft_solvers::Source::Reference.to_string()))
        };
        bar.finish();
        return computed
            .map(|(fl, source)| {
                Some(Fluctuations {
                    sigma: Sigma::DeepLinear(Box::new(fl)),
                    source,
                    mean_shift: None,
                    kernel_variances: config.theory.kernel_variances,
                })
            })
            .map_err(solver_failure);
    }
    let total = if options.quadrature > 0 {
        dmft_runtime::two_layer::SiteSet::quadrature(problem.kx.view(), options.quadrature)
            .map_err(solver_failure)?
            .r
            .len()
    } else {
        options.sites
    };
    // The mean shift passes over the sites a second time.
    let passes = if config.theory.mean_shift { 2 } else { 1 };
    let bar = Bar::new(
        (passes * total) as u64,
        "sites",
        &format!("{label} Σ_f"),
        quiet,
    );
    let progress = |done: usize| bar.advance(done as u64);
    let reference = || dmft_solvers::Source::Reference.to_string();
    let computed = if config.theory.kernel_variances {
        // The generated recorders fill the same trajectory record, but their entry points
        // take no propagator options: the reference serves the kernel variances.
        let observe = propagator::PropagatorOptions {
            kernel_variances: true,
        };
        let recorder = propagator::ReferenceSites {
            activation: model.activation,
            readout: model.readout,
        };
        propagator::two_layer_prediction_fluctuations_observing(
            &problem, &model, &schedule, &options, &observe, &recorder, &progress,
        )
        .map(|fl| (fl, reference(), None))
    } else if config.theory.mean_shift {
        // The second pass needs φ''' at every site: the reference march computes both orders.
        mean_shift::two_layer_mean_shift(&problem, &model, &schedule, &options, &progress)
            .map(|(fl, shift)| (fl, reference(), Some(shift)))
    } else if config.theory.solver == SolverChoice::Auto {
        dmft_solvers::prediction_fluctuations(&problem, &model, &schedule, &options, &progress)
            .map(|(fl, from)| (fl, from.to_string(), None))
    } else {
        propagator::two_layer_prediction_fluctuations(
            &problem, &model, &schedule, &options, &progress,
        )
        .map(|fl| (fl, reference(), None))
    };
    bar.finish();
    computed
        .map(|(fl, source, mean_shift)| {
            Some(Fluctuations {
                sigma: Sigma::TwoLayer(Box::new(fl)),
                source,
                mean_shift,
                kernel_variances: config.theory.kernel_variances,
            })
        })
        .map_err(solver_failure)
}

/// A solved infinite-width trajectory, which implementation produced it, and the seconds
/// the solver took.
pub struct Solved {
    pub trajectory: Trajectory,
    /// "generated:<variant>" or "reference" (see `dmft_solvers::Source`).
    pub solver_source: String,
    pub wall_time: f64,
}

/// Runs the infinite-width solver of the config on `data` with a progress bar.
pub fn solve(
    config: &Config,
    data: &Dataset,
    source: &Source,
    label: &str,
    quiet: bool,
) -> Result<Solved, Failure> {
    check_result_size(config, data, source)?;
    let problem = data
        .to_problem()
        .map_err(|e| Failure::from_solver(source.name, e))?;
    let bar = Bar::new(config.train.steps as u64, "steps", label, quiet);
    let started = Instant::now();
    let progress = |k: usize| bar.advance(k as u64);
    let (model, schedule, options) = (config.model(), config.schedule(), config.solver_options());
    // `auto` takes the generated solver of the variant when the catalogue has one; an
    // explicitly named solver is always the hand-written reference.
    let solved = if config.theory.solver == SolverChoice::Auto {
        dmft_solvers::solve(
            &problem,
            &model,
            &schedule,
            config.solver(),
            &options,
            &progress,
        )
        .map(|(t, from)| (t, from.to_string()))
    } else {
        dmft_runtime::solve(
            &problem,
            &model,
            &schedule,
            config.solver(),
            &options,
            &progress,
        )
        .map(|t| (t, dmft_solvers::Source::Reference.to_string()))
    };
    bar.finish();
    let (trajectory, solver_source) = solved.map_err(|e| Failure::from_solver(source.name, e))?;
    Ok(Solved {
        trajectory,
        solver_source,
        wall_time: started.elapsed().as_secs_f64(),
    })
}

/// Solves the config on `data` (and its propagator when asked) and writes the results
/// folder `out` (see `results`); `width` adds the variances at that width.
pub fn run_and_write(
    config: &Config,
    data: &Dataset,
    source: &Source,
    out: &Path,
    label: &str,
    width: Option<usize>,
    quiet: bool,
) -> Result<Outcome, Failure> {
    check_propagator_size(config, data, source)?;
    let Solved {
        trajectory,
        solver_source,
        wall_time,
    } = solve(config, data, source, label, quiet)?;
    let fluctuations = fluctuations(config, data, source, label, quiet)?;
    let record = results::Record {
        config,
        source: source.name,
        data,
        trajectory: &trajectory,
        solver_source: &solver_source,
        fluctuations: fluctuations.as_ref(),
        width,
        wall_time,
    };
    let metrics = results::write(out, &record)?;
    Ok(Outcome {
        trajectory,
        fluctuations,
        metrics,
    })
}
