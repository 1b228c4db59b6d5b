//! `dmft sweep` for `data.kind = "proportional"`: the learning-rate transfer grid.
//!
//! For every depth L in `sim.depths`, width ratio ν in `sim.nus` and learning rate η in
//! `sim.etas`, the proportional DMFT is solved for `train.steps` steps and, with
//! `sim.seeds > 0`, networks at input dimension `sim.dim` are trained from that many seeds
//! (`dmft_sim::proportional::run_ensemble`). The final train and test losses are kept; the
//! optimal η per (L, ν) is the grid point of least final test loss, and the sweep reports
//! whether it moves across widths. A grid point that diverges (the solver or a seed names
//! the step) is recorded and left out of the loss arrays; the sweep goes on. docs/sweep.md
//! describes the results folder.

use crate::config::Config;
use crate::failure::Failure;
use crate::progress::Bar;
use crate::results::{FORMAT_VERSION, create_dir, save, write_atomically, write_file};
use dmft_report::{Figure, Grid};
use dmft_runtime::DmftError;
use dmft_runtime::proportional::{DataUse, MEMORY_BUDGET_BYTES, Setting, solve};
use dmft_sim::SimError;
use dmft_sim::proportional::{run_ensemble, width};
use ndarray::Array1;
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

const GIB: f64 = (1u64 << 30) as f64;

/// Refuse grids above this many estimated floating-point operations (about a day at
/// [`OPERATIONS_PER_SECOND`]): such a grid is a typo (a stray zero in train.steps, sim.dim
/// or sim.seeds), not a plan.
const MAX_OPERATIONS: f64 = 2e14;

/// The rate the estimate achieved on examples/proportional-transfer-mup.toml (8.3·10¹⁰
/// estimated operations in 34 s, release build, 2 shared cores at load ≈ 6): the
/// simulation is matrix-vector work, bound by memory traffic.
const OPERATIONS_PER_SECOND: f64 = 2.5e9;

/// The grid, each axis in increasing order.
struct Axes {
    depths: Vec<usize>,
    nus: Vec<f64>,
    etas: Vec<f64>,
}

/// Final train and test loss of one grid point, with standard errors for simulations.
#[derive(Clone, Copy)]
struct Final {
    train: f64,
    test: f64,
    train_se: f64,
    test_se: f64,
}

/// One (L, ν) line of the grid: per η, the final losses or the divergence message.
struct Curve {
    depth: usize,
    nu: f64,
    theory: Vec<Result<Final, String>>,
    /// Empty without simulations.
    sim: Vec<Result<Final, String>>,
}

impl Curve {
    fn folder(&self) -> String {
        format!("proportional/L{}_nu{}", self.depth, self.nu)
    }
}

pub fn run(config: &Config, name: &str, out: &Path, quiet: bool) -> Result<(), Failure> {
    let started = Instant::now();
    let input = |e: String| Failure::Input(format!("{name}: {e}"));
    let axes = axes(config).map_err(input)?;
    let sim = &config.sim;
    let dim = sim.dim.unwrap_or(config.data.dim);
    let threads = rayon::current_num_threads();
    // Every setting is validated before any work, so an error inside the loop is a
    // divergence, never a bad value discovered halfway.
    for &depth in &axes.depths {
        for &nu in &axes.nus {
            for &eta in &axes.etas {
                setting_at(config, depth, nu, eta)?
                    .validate()
                    .map_err(|e| input(e.to_string()))?;
            }
        }
    }
    check_cost(config, &axes, dim, threads).map_err(input)?;

    let points = axes.depths.len() * axes.nus.len() * axes.etas.len();
    let bar = Bar::new(points as u64, "grid points", "transfer sweep", quiet);
    let mut done = 0;
    let mut curves = Vec::new();
    for &depth in &axes.depths {
        for &nu in &axes.nus {
            let mut curve = Curve {
                depth,
                nu,
                theory: Vec::new(),
                sim: Vec::new(),
            };
            for &eta in &axes.etas {
                let setting = setting_at(config, depth, nu, eta)?;
                curve.theory.push(theory_point(&setting, name)?);
                if sim.seeds > 0 {
                    curve
                        .sim
                        .push(sim_point(&setting, dim, sim.seeds, sim.base_seed, name)?);
                }
                done += 1;
                bar.advance(done);
            }
            bar.suspend(|| println!("{}", curve_line(&curve, &axes.etas)));
            curves.push(curve);
        }
    }
    bar.finish();
    let wall_time = started.elapsed().as_secs_f64();
    write(config, name, out, &axes, &curves, dim, wall_time)?;
    println!("report in {}", out.join("report.md").display());
    Ok(())
}

/// The grid axes, sorted; `sim.etas` is required.
fn axes(config: &Config) -> Result<Axes, String> {
    let sim = &config.sim;
    let mut etas = sim.etas.clone().ok_or(
        "dmft sweep with data.kind = \"proportional\" needs sim.etas, the learning rates of the transfer grid (e.g. etas = [0.01, 0.03, 0.1])",
    )?;
    let mut nus = sim.nus.clone().unwrap_or_else(|| vec![config.data.nu]);
    let mut depths = sim
        .depths
        .clone()
        .unwrap_or_else(|| vec![config.model.depth]);
    etas.sort_by(f64::total_cmp);
    nus.sort_by(f64::total_cmp);
    depths.sort_unstable();
    Ok(Axes { depths, nus, etas })
}

fn setting_at(config: &Config, depth: usize, nu: f64, eta: f64) -> Result<Setting, Failure> {
    let mut setting = config.proportional().map_err(Failure::Input)?;
    setting.depth = depth;
    setting.nu = nu;
    setting.eta = eta;
    Ok(setting)
}

/// The solver's final losses, or its divergence message. Other errors abort the sweep.
fn theory_point(setting: &Setting, name: &str) -> Result<Result<Final, String>, Failure> {
    match solve(setting, &|_| {}) {
        Ok(c) => {
            let k = setting.steps;
            Ok(Ok(Final {
                train: c.train[k],
                test: c.test[k],
                train_se: 0.0,
                test_se: 0.0,
            }))
        }
        Err(e @ (DmftError::Numerical(_) | DmftError::Diverged { .. })) => Ok(Err(e.to_string())),
        Err(e) => Err(Failure::from_solver(name, e)),
    }
}

/// The seed-mean final losses with standard errors, or the divergence message of the first
/// seed that diverged. Other errors abort the sweep.
fn sim_point(
    setting: &Setting,
    dim: usize,
    seeds: usize,
    base_seed: u64,
    name: &str,
) -> Result<Result<Final, String>, Failure> {
    match run_ensemble(setting, dim, seeds, base_seed) {
        Ok(s) => {
            let k = setting.steps;
            Ok(Ok(Final {
                train: s.train[k],
                test: s.test[k],
                train_se: s.train_se[k],
                test_se: s.test_se[k],
            }))
        }
        Err(e @ SimError::Diverged { .. }) => Ok(Err(e.to_string())),
        Err(e) => Err(Failure::Runtime(format!("{name}: {e}"))),
    }
}

/// Refuses grids whose estimated memory exceeds sim.memory_gib (or the solver's own limit)
/// or whose estimated operation count exceeds [`MAX_OPERATIONS`].
fn check_cost(config: &Config, axes: &Axes, dim: usize, threads: usize) -> Result<(), String> {
    let steps = config.train.steps as f64;
    let budget = (config.sim.memory_gib * GIB).min(MEMORY_BUDGET_BYTES);
    let (mut operations, mut peak) = (0.0f64, 0.0f64);
    for &depth in &axes.depths {
        for &nu in &axes.nus {
            let setting = setting_at(config, depth, nu, axes.etas[0]).map_err(|e| e.to_string())?;
            let l = depth as f64;
            let sites = setting.spectrum.lambda.len() as f64;
            // The march: O((L² + n_λ) T³) (docs/proportional.md, cost).
            let per_solve = 4.0 * (l * l + sites + 4.0) * (steps + 1.0).powi(3);
            let mut point = per_solve;
            peak = peak.max(setting.memory_bytes());
            if config.sim.seeds > 0 {
                let d = dim as f64;
                let n = width(&setting, dim) as f64;
                let rows = (setting.step_ratio() * d).round().max(1.0);
                let weights = n * d + (l - 1.0) * n * n + n;
                // A step of a linear network is matrix-vector work: about five passes over
                // the weights (backward vectors, forward images, rank-one updates) and two
                // over the data; initialization draws every weight.
                point += config.sim.seeds as f64
                    * ((steps + 1.0) * (10.0 * weights + 4.0 * rows * d) + 20.0 * weights);
                // Per worker: the weights, the data and a few vectors of every layer.
                let sim_bytes =
                    8.0 * threads as f64 * (weights + rows * d + 4.0 * (rows + n * (l + 1.0)));
                peak = peak.max(sim_bytes);
            }
            operations += point * axes.etas.len() as f64;
        }
    }
    if peak > budget {
        return Err(format!(
            "the transfer grid needs an estimated {:.3} GiB at its largest point, more than the limit of {:.3} GiB (sim.memory_gib, at most {:.0} GiB for the solver); lower train.steps, sim.depths, sim.nus or sim.dim",
            peak / GIB,
            budget / GIB,
            MEMORY_BUDGET_BYTES / GIB
        ));
    }
    if operations > MAX_OPERATIONS {
        return Err(format!(
            "the transfer grid needs an estimated {operations:.2e} floating-point operations (about {:.0} hours at {:.1} GFLOP/s), more than the limit of {MAX_OPERATIONS:.0e}; shrink the grid (sim.etas, sim.nus, sim.depths), train.steps, sim.seeds or sim.dim",
            operations / OPERATIONS_PER_SECOND / 3600.0,
            OPERATIONS_PER_SECOND / 1e9
        ));
    }
    Ok(())
}

/// The grid index of least final test loss among the converged points, if any.
fn optimum(points: &[Result<Final, String>]) -> Option<usize> {
    points
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.as_ref().ok().map(|f| (i, f.test)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(i, _)| i)
}

/// How far the optimal η moves across widths: the spread of the optimal grid indices over
/// the widths that have one, in grid steps.
fn spread(optima: &[Option<usize>]) -> Option<usize> {
    let found: Vec<usize> = optima.iter().flatten().copied().collect();
    Some(found.iter().max()? - found.iter().min()?)
}

fn curve_line(curve: &Curve, etas: &[f64]) -> String {
    let describe = |points: &[Result<Final, String>], what: &str| {
        let diverged = points.iter().filter(|p| p.is_err()).count();
        let best = match optimum(points) {
            Some(i) => {
                let f = points[i].as_ref().expect("the optimum converged");
                format!("optimum η = {} (test loss {:.3e})", etas[i], f.test)
            }
            None => "no converged η".into(),
        };
        format!("{what} {best}, {diverged} of {} diverged", points.len())
    };
    let mut line = format!(
        "L = {}, ν = {}: {}",
        curve.depth,
        curve.nu,
        describe(&curve.theory, "theory")
    );
    if !curve.sim.is_empty() {
        line += &format!("; {}", describe(&curve.sim, "simulation"));
    }
    line
}

/// The JSON of one side (theory or simulation) of a curve.
fn side_json(points: &[Result<Final, String>], etas: &[f64]) -> Value {
    let best = optimum(points);
    let diverged: Vec<Value> = points
        .iter()
        .zip(etas)
        .filter_map(|(p, eta)| p.as_ref().err().map(|m| json!({"eta": eta, "message": m})))
        .collect();
    json!({
        "optimal_eta": best.map(|i| etas[i]),
        "optimal_test_loss": best.map(|i| points[i].as_ref().map(|f| f.test).ok()),
        "optimum_at_grid_edge": best.map(|i| i == 0 || i + 1 == etas.len()),
        "diverged": diverged,
    })
}

/// The transfer verdict of one side over the widths of one depth.
fn transfer_json(optima: &[Option<usize>], etas: &[f64]) -> Value {
    let steps = spread(optima);
    json!({
        "optimal_eta_per_nu": optima.iter().map(|o| o.map(|i| etas[i])).collect::<Vec<_>>(),
        "spread_grid_steps": steps,
        "moved_more_than_one_step": steps.map(|s| s > 1),
    })
}

/// Converged η and final losses (with SE) of one side, in grid order.
fn converged(points: &[Result<Final, String>], etas: &[f64]) -> (Vec<f64>, Vec<Final>) {
    points
        .iter()
        .zip(etas)
        .filter_map(|(p, &eta)| p.as_ref().ok().map(|f| (eta, *f)))
        .unzip()
}

fn save_side(
    dir: &Path,
    prefix: &str,
    points: &[Result<Final, String>],
    etas: &[f64],
    with_se: bool,
) -> Result<(), Failure> {
    let mask: Array1<u8> = points.iter().map(|p| u8::from(p.is_err())).collect();
    save(dir, &format!("{prefix}_diverged"), &mask)?;
    let (_, finals) = converged(points, etas);
    let column = |pick: fn(&Final) -> f64| finals.iter().map(pick).collect::<Array1<f64>>();
    let suffix = if with_se { "_mean" } else { "" };
    save(
        dir,
        &format!("{prefix}_test_loss{suffix}"),
        &column(|f| f.test),
    )?;
    save(
        dir,
        &format!("{prefix}_train_loss{suffix}"),
        &column(|f| f.train),
    )?;
    if with_se {
        save(
            dir,
            &format!("{prefix}_test_loss_se"),
            &column(|f| f.test_se),
        )?;
        save(
            dir,
            &format!("{prefix}_train_loss_se"),
            &column(|f| f.train_se),
        )?;
    }
    Ok(())
}

/// Final test loss vs η at one depth: a theory line and simulation points per width.
fn figure(config: &Config, depth: usize, curves: &[&Curve], etas: &[f64], dim: usize) -> Figure {
    let mut fig = Figure::new(format!(
        "{}, L = {depth}: test loss after {} steps vs η",
        config.model.parameterization, config.train.steps
    ))
    .x_label("η")
    .y_label("test loss")
    .log_x(true)
    .log_y(true);
    for (c, curve) in curves.iter().enumerate() {
        let (x, finals) = converged(&curve.theory, etas);
        if !x.is_empty() {
            let y: Vec<f64> = finals.iter().map(|f| f.test).collect();
            fig = fig
                .line(format!("ν = {} theory", curve.nu), &x, &y)
                .color(c);
        }
        let (x, finals) = converged(&curve.sim, etas);
        if !x.is_empty() {
            let y: Vec<f64> = finals.iter().map(|f| f.test).collect();
            let se: Vec<f64> = finals.iter().map(|f| f.test_se).collect();
            fig = fig
                .points_with_errors(format!("ν = {} sim D = {dim}", curve.nu), &x, &y, &se)
                .color(c);
        }
    }
    fig
}

fn write(
    config: &Config,
    name: &str,
    out: &Path,
    axes: &Axes,
    curves: &[Curve],
    dim: usize,
    wall_time: f64,
) -> Result<(), Failure> {
    let etas = &axes.etas;
    let with_sim = config.sim.seeds > 0;
    let at_depth =
        |depth: usize| -> Vec<&Curve> { curves.iter().filter(|c| c.depth == depth).collect() };
    let figures: Vec<Figure> = axes
        .depths
        .iter()
        .map(|&d| figure(config, d, &at_depth(d), etas, dim))
        .collect();
    let svg = match figures.as_slice() {
        [one] => one.to_svg(),
        many => many
            .iter()
            .fold(
                Grid::new(2).title("learning-rate transfer across widths, per depth"),
                |g, f| g.figure(f.clone()),
            )
            .to_svg(),
    };
    let mut files = vec![
        "summary.json".to_string(),
        "report.md".into(),
        "figures/transfer.svg".into(),
    ];
    let mut curve_json = Vec::new();
    for c in curves {
        let folder = c.folder();
        files.push(format!("{folder}/eta.npy"));
        curve_json.push(json!({
            "depth": c.depth,
            "nu": c.nu,
            "folder": folder,
            "sim_width": with_sim.then(|| width_at(c.nu, dim)),
            "theory": side_json(&c.theory, etas),
            "sim": with_sim.then(|| side_json(&c.sim, etas)),
        }));
    }
    let transfer: Vec<Value> = axes
        .depths
        .iter()
        .map(|&d| {
            let cs = at_depth(d);
            let theory: Vec<_> = cs.iter().map(|c| optimum(&c.theory)).collect();
            let sim: Vec<_> = cs.iter().map(|c| optimum(&c.sim)).collect();
            json!({
                "depth": d,
                "nus": axes.nus,
                "theory": transfer_json(&theory, etas),
                "sim": with_sim.then(|| transfer_json(&sim, etas)),
            })
        })
        .collect();
    let summary = json!({
        "format_version": FORMAT_VERSION,
        "config_file": name,
        "config": config,
        "solver": "proportional",
        "grid": {
            "depths": axes.depths,
            "nus": axes.nus,
            "etas": etas,
            "loss_at_step": config.train.steps,
            "parameterization": config.model.parameterization.to_string(),
            "data": match config.data.batch_ratio {
                Some(b) => json!({"one_pass_batch_ratio": b}),
                None => json!({"alpha": config.data.alpha}),
            },
        },
        "simulation": with_sim.then(|| json!({
            "dim": dim,
            "seeds": config.sim.seeds,
            "base_seed": config.sim.base_seed,
        })),
        "curves": curve_json,
        "transfer": transfer,
        "wall_time_seconds": wall_time,
        "versions": { "dmft": env!("CARGO_PKG_VERSION") },
        "files": files,
    });
    let report = report(config, axes, curves, dim);
    write_atomically(out, |tmp| {
        for c in curves {
            let dir = tmp.join(c.folder());
            create_dir(&dir)?;
            save(&dir, "eta", &Array1::from_vec(etas.clone()))?;
            save_side(&dir, "theory", &c.theory, etas, false)?;
            if with_sim {
                save_side(&dir, "sim", &c.sim, etas, true)?;
            }
        }
        create_dir(&tmp.join("figures"))?;
        write_file(&tmp.join("figures/transfer.svg"), svg.as_bytes())?;
        let text = serde_json::to_string_pretty(&summary)
            .map_err(|e| Failure::Runtime(format!("cannot encode summary.json: {e}")))?;
        write_file(&tmp.join("summary.json"), format!("{text}\n").as_bytes())?;
        write_file(&tmp.join("report.md"), report.as_bytes())
    })
}

fn width_at(nu: f64, dim: usize) -> usize {
    ((nu * dim as f64).round() as usize).max(1)
}

/// report.md: the setting, then per depth a table of the optimal η per ν and the verdict.
fn report(config: &Config, axes: &Axes, curves: &[Curve], dim: usize) -> String {
    let etas = &axes.etas;
    let with_sim = config.sim.seeds > 0;
    let data = match config.proportional().map(|s| s.data) {
        Ok(DataUse::OnePass { batch_ratio }) => format!("one-pass SGD, α_B = {batch_ratio}"),
        _ => format!("repeated data, α = {}", config.data.alpha),
    };
    let mut md = String::new();
    let _ = writeln!(md, "# Learning-rate transfer, proportional regime\n");
    let _ = writeln!(
        md,
        "{} deep linear networks, {data}, test loss after train.steps = {} steps; η grid {:?}.",
        config.model.parameterization, config.train.steps, etas
    );
    if with_sim {
        let _ = writeln!(
            md,
            "Simulation: D = {dim}, {} seeds (mean ± standard error).",
            config.sim.seeds
        );
    }
    for &depth in &axes.depths {
        let cs: Vec<&Curve> = curves.iter().filter(|c| c.depth == depth).collect();
        let _ = writeln!(md, "\n## L = {depth}\n");
        let cell = |points: &[Result<Final, String>], se: bool| match optimum(points) {
            Some(i) => {
                let f = points[i].as_ref().expect("the optimum converged");
                let edge = if i == 0 || i + 1 == etas.len() {
                    " (grid edge)"
                } else {
                    ""
                };
                let loss = if se {
                    format!("{:.4e} ± {:.1e}", f.test, f.test_se)
                } else {
                    format!("{:.4e}", f.test)
                };
                format!("{}{edge} | {loss}", etas[i])
            }
            None => "all diverged | –".into(),
        };
        let diverged = |p: &[Result<Final, String>]| p.iter().filter(|x| x.is_err()).count();
        if with_sim {
            let _ = writeln!(
                md,
                "| ν | theory optimal η | theory test loss | sim optimal η | sim test loss | diverged η (theory, sim) |\n|---|---|---|---|---|---|"
            );
        } else {
            let _ = writeln!(
                md,
                "| ν | theory optimal η | theory test loss | diverged η |\n|---|---|---|---|"
            );
        }
        for c in &cs {
            if with_sim {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {}, {} |",
                    c.nu,
                    cell(&c.theory, false),
                    cell(&c.sim, true),
                    diverged(&c.theory),
                    diverged(&c.sim)
                );
            } else {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} |",
                    c.nu,
                    cell(&c.theory, false),
                    diverged(&c.theory)
                );
            }
        }
        let verdict = |optima: Vec<Option<usize>>, what: &str| match spread(&optima) {
            Some(s) => format!(
                "{what}: the optimal η spans {s} grid step{} across ν ({}).",
                if s == 1 { "" } else { "s" },
                if s > 1 {
                    "moved by more than one step"
                } else {
                    "within one step"
                }
            ),
            None => format!("{what}: no converged η."),
        };
        let _ = writeln!(
            md,
            "\n{}",
            verdict(cs.iter().map(|c| optimum(&c.theory)).collect(), "Theory")
        );
        if with_sim {
            let _ = writeln!(
                md,
                "{}",
                verdict(cs.iter().map(|c| optimum(&c.sim)).collect(), "Simulation")
            );
        }
    }
    let _ = writeln!(md, "\n![transfer](figures/transfer.svg)");
    md
}
