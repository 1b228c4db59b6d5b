//! `dmft sweep CONFIG.toml --out DIR`: the theory-versus-experiment command.
//!
//! The config of `dmft run` plus a [sim] table. Real networks of each width in `sim.widths`
//! are trained from `sim.seeds` seeds (dmft-sim, exact full-batch GD or online SGD) and
//! reduced to means and variances over seeds; with `sim.theory` the infinite-width solver
//! of [theory] runs on the same data. Everything is then written at once (`write`): arrays,
//! `summary.json`, the figures (`figures`) and `report.md` (`report`). docs/sweep.md
//! describes the results and the statistics.
//!
//! With `data.kind = "proportional"` the sweep is instead the learning-rate transfer grid
//! of `proportional` (η × ν × depth, theory and optionally finite-D simulations).
//!
//! Everything that can be refused is refused before any training: the config, the output
//! folder, the data, and the estimated peak memory against `sim.memory_gib`.

mod compare;
mod figures;
mod proportional;
mod report;
mod write;

use crate::config::{Config, DataKind, TrainingChoice};
use crate::experiment::{self, Solved, Source};
use crate::failure::Failure;
use crate::fluctuations::Fluctuations;
use crate::progress::Bar;
use crate::results;
use dmft_data::{Dataset, GaussianTask};
use dmft_sim::{
    Architecture, DataSampler, EnsembleConfig, EnsembleStats, SimError, SimRng, Training,
    memory_estimate,
};
use ndarray::{Array1, Array2};
use rand::Rng;
use rand_distr::StandardNormal;
use std::path::Path;
use std::time::Instant;

/// One width's ensemble and what it cost.
pub struct WidthRun {
    /// Moments over the converged seeds; the per-layer kernels Φ^ℓ, G^ℓ are dropped after
    /// the run (they are not part of the results), so a sweep keeps only what it writes.
    pub stats: EnsembleStats,
    pub wall_time: f64,
    /// `dmft_sim::memory_estimate` for this width, in bytes.
    pub memory_estimate: u64,
}

/// A finished sweep: everything the results folder is written from.
pub struct Sweep<'a> {
    pub config: &'a Config,
    /// The config file as given on the command line.
    pub source: &'a str,
    pub data: &'a Dataset,
    pub theory: Option<Solved>,
    /// The propagator Σ_f, with `theory.fluctuations = true`.
    pub fluctuations: Option<Fluctuations>,
    /// In increasing width.
    pub widths: Vec<WidthRun>,
    /// rayon threads the seeds ran on.
    pub threads: usize,
    pub wall_time: f64,
}

impl Sweep<'_> {
    /// The widest width's run (the reference of the ensemble and pointwise figures).
    pub fn widest(&self) -> &WidthRun {
        self.widths.last().expect("a sweep has at least one width")
    }
}

pub fn run(config_path: &Path, out: &Path, quiet: bool) -> Result<(), Failure> {
    let started = Instant::now();
    let (config, name) = crate::read_config(config_path)?;
    results::check_destination(out)?;
    if config.data.kind == DataKind::Proportional {
        return proportional::run(&config, &name, out, quiet);
    }
    let source = Source {
        name: &name,
        base_dir: crate::config_dir(config_path),
    };
    let mut data = experiment::load_data(&config, &source)?;
    if data.n_test() == 0 {
        // No test points, no test loss: the theory would otherwise report 0/0 as 0.
        data.y_test = None;
    }
    let sim_data = dmft_sim::Dataset::new(
        data.x_train.clone(),
        data.y_train.clone(),
        data.x_test.clone(),
        data.y_test.clone(),
    )
    .map_err(|e| Failure::Input(format!("{name}: {e}")))?;
    let sampler = match config.sim.training {
        TrainingChoice::OnlineSgd => Some(teacher_sampler(&config)),
        TrainingChoice::Gd => None,
    };
    let training = match &sampler {
        Some(s) => Training::Online {
            batch: config.sim.batch,
            sampler: s,
        },
        None => Training::FullBatch,
    };
    let mut widths = config.sim.widths.clone();
    widths.sort_unstable();
    let ensemble = EnsembleConfig {
        arch: Architecture::from_model(&config.model(), widths[0]),
        schedule: config.schedule(),
        training,
        seeds: config.sim.seeds,
        base_seed: config.sim.base_seed,
        ensemble_sizes: config.sim.ensemble_sizes.clone(),
        divergence_threshold: config.sim.divergence_threshold,
        // Checked below for the whole sweep, with a message in the config's terms.
        memory_budget: None,
        keep_trajectories: false,
    };
    ensemble
        .validate()
        .map_err(|e| Failure::Input(format!("{name}: {e}")))?;
    let threads = rayon::current_num_threads();
    let estimates = check_memory(&config, &data, &sim_data, &ensemble, &widths, threads)
        .map_err(|e| Failure::Input(format!("{name}: {e}")))?;

    if config.sim.theory {
        experiment::check_propagator_size(&config, &data, &source)?;
    }
    let (theory, fluctuations) = if config.sim.theory {
        let solved = experiment::solve(&config, &data, &source, "theory", quiet)?;
        let fluctuations = experiment::fluctuations(&config, &data, &source, "theory", quiet)?;
        (Some(solved), fluctuations)
    } else {
        (None, None)
    };
    let cost = |w: usize| width_cost(&config, data.dim(), w);
    let bar = Bar::percent(widths.iter().map(|&w| cost(w)).sum(), "networks", quiet);
    let mut done = 0;
    let mut runs = Vec::with_capacity(widths.len());
    for (&width, memory_estimate) in widths.iter().zip(estimates) {
        let mut at_width = ensemble.clone();
        at_width.arch.width = width;
        let width_started = Instant::now();
        let mut stats = dmft_sim::run_ensemble(&sim_data, &at_width).map_err(|e| match e {
            SimError::TooFewConverged { .. } => Failure::Runtime(format!("{name}: {e}")),
            e => Failure::Input(format!("{name}: {e}")),
        })?;
        let wall_time = width_started.elapsed().as_secs_f64();
        stats.phi_kernel = Vec::new();
        stats.grad_kernel = Vec::new();
        done += cost(width);
        bar.advance(done);
        bar.suspend(|| {
            if !stats.diverged.is_empty() {
                eprintln!("warning: {}", divergence_line(&stats));
            }
            println!("{}", width_line(&stats, wall_time));
        });
        runs.push(WidthRun {
            stats,
            wall_time,
            memory_estimate,
        });
    }
    bar.finish();
    let sweep = Sweep {
        config: &config,
        source: &name,
        data: &data,
        theory,
        fluctuations,
        widths: runs,
        threads,
        wall_time: started.elapsed().as_secs_f64(),
    };
    write::write(out, &sweep)?;
    if let Some(line) = report::deviation_line(&sweep) {
        println!("{line}");
    }
    println!("report in {}", out.join("report.md").display());
    Ok(())
}

/// Online SGD's data: fresh x ~ N(0, I_D) labelled by the Gaussian task's own teacher (same
/// β as the fixed points, which become the evaluation set).
fn teacher_sampler(config: &Config) -> impl DataSampler + use<> {
    let d = &config.data;
    let task = GaussianTask {
        p_train: d.p_train,
        p_test: d.p_test,
        dim: d.dim,
        teacher: d.teacher,
        seed: d.seed,
    };
    let beta = task.teacher_weights();
    let teacher = d.teacher;
    move |rng: &mut SimRng, batch: usize| -> (Array2<f64>, Array1<f64>) {
        let x = Array2::from_shape_simple_fn((batch, beta.len()), || rng.sample(StandardNormal));
        let y = teacher.label(beta.view(), x.view());
        (x, y)
    }
}

/// Relative cost of training one width: seeds × steps × weights, which is what a step's
/// products scale with. Only ratios matter (the progress bar).
fn width_cost(config: &Config, dim: usize, width: usize) -> u64 {
    let arch = Architecture::from_model(&config.model(), width);
    (config.sim.seeds as u64)
        .saturating_mul(config.train.steps as u64)
        .saturating_mul(arch.parameter_count(dim) as u64)
}

const GIB: f64 = (1u64 << 30) as f64;

/// Estimated bytes per width (`dmft_sim::memory_estimate` with `threads` workers), after
/// checking the sweep's peak against `sim.memory_gib`. The peak is the largest width's
/// training plus what the sweep keeps for writing: every width's moments and the theory.
fn check_memory(
    config: &Config,
    data: &Dataset,
    sim_data: &dmft_sim::Dataset,
    ensemble: &EnsembleConfig,
    widths: &[usize],
    threads: usize,
) -> Result<Vec<u64>, String> {
    let estimates: Vec<u64> = widths
        .iter()
        .map(|&width| {
            let mut at_width = ensemble.clone();
            at_width.arch.width = width;
            memory_estimate(sim_data, &at_width, threads)
        })
        .collect();
    let (largest, training) = widths
        .iter()
        .zip(&estimates)
        .max_by_key(|(_, e)| **e)
        .map(|(w, e)| (*w, *e))
        .expect("sim.widths is not empty");
    let kept = kept_bytes(config, data, widths.len());
    let peak = training.saturating_add(kept);
    let budget = config.sim.memory_gib * GIB;
    if peak as f64 > budget {
        return Err(format!(
            "the sweep needs an estimated {:.3} GiB ({peak} bytes), more than sim.memory_gib = {}: {:.3} GiB to train width {largest} with {threads} threads plus {:.3} GiB of results kept for the report; lower sim.widths or sim.seeds, record fewer steps (train.record_every), or raise sim.memory_gib",
            peak as f64 / GIB,
            config.sim.memory_gib,
            training as f64 / GIB,
            kept as f64 / GIB,
        ));
    }
    Ok(estimates)
}

/// Bytes of results held until the end: per width, mean, variance and 4th moment of f
/// (T_rec × (P+Q)), the loss and test loss and the NTK (T_rec × P × P), and the ensemble
/// losses; plus the theory's trajectory.
fn kept_bytes(config: &Config, data: &Dataset, widths: usize) -> u64 {
    let t = config.schedule().recorded_steps().len() as u64;
    let (p, q) = (data.n_train() as u64, data.n_test() as u64);
    let ensembles = config.sim.ensemble_sizes.len() as u64;
    let per_width = 3 * t * (p + q + 2 + p * p) + ensembles * 6 * t * 2 + t;
    let theory = if config.sim.theory {
        t * (2 * (p + q) + 3 + p * p)
    } else {
        0
    };
    8 * (widths as u64 * per_width + theory)
}

/// "N = 256: 3 of 64 seeds diverged (seed 5 at step 12, loss 2.1e13; ...)".
fn divergence_line(stats: &EnsembleStats) -> String {
    let list = stats
        .diverged
        .iter()
        .map(|d| format!("seed {} at step {} (loss {:.3e})", d.seed, d.step, d.loss))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "N = {}: {} of {} seeds diverged and are left out of every statistic: {list}",
        stats.width,
        stats.diverged.len(),
        stats.seeds
    )
}

/// One line per finished width for the console.
fn width_line(stats: &EnsembleStats, wall_time: f64) -> String {
    let last = stats.t.len() - 1;
    let loss_se = stats.loss.se_mean();
    let test = stats.test_loss.as_ref().map_or(String::new(), |m| {
        format!(
            ", test loss {:.3e} ± {:.1e}",
            m.mean[last],
            m.se_mean()[last]
        )
    });
    format!(
        "N = {}: {}/{} seeds in {wall_time:.1} s, train loss {:.3e} ± {:.1e} at t = {}{test}",
        stats.width,
        stats.converged,
        stats.seeds,
        stats.loss.mean[last],
        loss_se[last],
        stats.t[last]
    )
}
