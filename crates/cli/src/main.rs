//! `dmft`: infinite-width DMFT experiments from the command line.
//!
//! `dmft` alone runs a built-in two-layer experiment at three feature strengths;
//! `dmft run CONFIG.toml --out DIR` runs one experiment described in TOML (docs/config.md)
//! and writes its results folder; `dmft sweep CONFIG.toml --out DIR` trains finite-width
//! networks of the same config over widths and seeds and reports them next to the theory
//! (docs/sweep.md). Errors are one line on stderr; the exit code is 2 for bad input
//! (config, data, output folder) and 1 when the run itself fails.

mod config;
mod default_run;
mod experiment;
mod failure;
mod fluctuations;
mod plots;
mod progress;
mod proportional;
mod results;
mod sweep;

use clap::{Parser, Subcommand};
use config::Config;
use experiment::Source;
use failure::Failure;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The built-in experiment, also the documented example config.
pub(crate) const DEFAULT_CONFIG: &str = include_str!("default.toml");

#[derive(Parser)]
#[command(
    name = "dmft",
    version,
    about = "Infinite-width DMFT of wide neural networks trained by gradient descent",
    long_about = "Infinite-width DMFT of wide neural networks trained by gradient descent.\n\n\
                  Without a command, runs the built-in two-layer experiment at γ₀ = 0.1, 1, 3 \
                  and writes dmft-out/default/."
)]
struct Cli {
    /// Hide the progress bar (it is also hidden when stderr is not a terminal).
    #[arg(long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the experiment described by a TOML config and write its results folder.
    Run {
        /// The experiment config (see docs/config.md).
        config: PathBuf,
        /// Results folder; replaced if it holds a previous result, refused if it holds
        /// anything else.
        #[arg(long)]
        out: PathBuf,
        /// With [theory] fluctuations = true: also write the variances at this width N
        /// (theory/var_*_N{N}.npy), beside the width-free N·Var.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        width: Option<u64>,
    },
    /// Train finite-width networks of the config over widths and seeds (the [sim] table),
    /// solve its infinite-width theory, and write arrays, figures and a report comparing
    /// them.
    Sweep {
        /// The experiment config with a [sim] table (see docs/sweep.md).
        config: PathBuf,
        /// Results folder; replaced if it holds a previous result, refused if it holds
        /// anything else.
        #[arg(long)]
        out: PathBuf,
    },
    /// Derive the infinite-width field equations, closure equations and Hessian blocks of
    /// an architecture spec (see docs/derivation.md) by e-graph rewriting, and print them.
    Derive {
        /// The architecture spec (TOML).
        spec: PathBuf,
        /// Print LaTeX instead of Unicode.
        #[arg(long)]
        latex: bool,
        /// Write to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    // A bug must still end in one line, not a backtrace dumped on the user.
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let place = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!(
            "error: internal error{place}: {}",
            message.replace('\n', " ")
        );
    }));
    let cli = Cli::parse();
    let result = match &cli.command {
        None => default_run::run(cli.quiet),
        Some(Command::Run { config, out, width }) => {
            run(config, out, width.map(|w| w as usize), cli.quiet)
        }
        Some(Command::Sweep { config, out }) => sweep::run(config, out, cli.quiet),
        Some(Command::Derive { spec, latex, out }) => derive(spec, *latex, out.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

/// `dmft derive`: bad specs are input errors (exit code 2) that name the file and the key.
fn derive(spec_path: &Path, latex: bool, out: Option<&Path>) -> Result<(), Failure> {
    use dmft_expr::print::{Style, derivation};
    let name = spec_path.display().to_string();
    let text = std::fs::read_to_string(spec_path)
        .map_err(|e| Failure::Input(format!("{name}: cannot read the spec: {e}")))?;
    let spec =
        dmft_expr::Spec::from_toml(&text).map_err(|e| Failure::Input(format!("{name}: {e}")))?;
    let d = dmft_expr::derive(&spec).map_err(|e| Failure::Input(format!("{name}: {e}")))?;
    let style = if latex { Style::Latex } else { Style::Unicode };
    let text = derivation(&d, style);
    match out {
        Some(path) => std::fs::write(path, text)
            .map_err(|e| Failure::Input(format!("{}: cannot write: {e}", path.display()))),
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

/// Reads and validates the config file; returns it with its name as given.
pub(crate) fn read_config(config_path: &Path) -> Result<(Config, String), Failure> {
    let name = config_path.display().to_string();
    let text = std::fs::read_to_string(config_path)
        .map_err(|e| Failure::Input(format!("{name}: cannot read the config: {e}")))?;
    let config = Config::parse(&text).map_err(|e| Failure::Input(format!("{name}: {e}")))?;
    Ok((config, name))
}

/// The folder a config's relative `data.path` is resolved against: the config's own.
pub(crate) fn config_dir(config_path: &Path) -> &Path {
    match config_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn run(config_path: &Path, out: &Path, width: Option<usize>, quiet: bool) -> Result<(), Failure> {
    let (config, name) = read_config(config_path)?;
    if width.is_some() && !config.theory.fluctuations {
        return Err(Failure::Input(format!(
            "--width converts the finite-width variances, which {name} does not compute: set [theory] fluctuations = true"
        )));
    }
    results::check_destination(out)?;
    if config.data.kind == config::DataKind::Proportional {
        let solved = proportional::run(&config, &name, out, quiet)?;
        let last = solved.t.len() - 1;
        println!(
            "proportional solver, α = {}, ν = {}, L = {}: train loss {:.3e} → {:.3e}, test loss {:.3e} → {:.3e} at t = {}",
            config.data.alpha,
            config.data.nu,
            config.model.depth,
            solved.train[0],
            solved.train[last],
            solved.test[0],
            solved.test[last],
            solved.t[last]
        );
        println!("results in {}", out.display());
        return Ok(());
    }
    let source = Source {
        name: &name,
        base_dir: config_dir(config_path),
    };
    let data = experiment::load_data(&config, &source)?;
    let outcome = experiment::run_and_write(&config, &data, &source, out, &name, width, quiet)?;
    let (traj, m) = (&outcome.trajectory, &outcome.metrics);
    let test = m
        .test_loss_final
        .map_or(String::new(), |v| format!(", test loss {v:.3e}"));
    let change = m.ntk_change.map_or(String::new(), |v| {
        format!(", ‖K(T)−K(0)‖_F/‖K(0)‖_F = {v:.4}")
    });
    println!(
        "{} solver ({}), P = {}, Q = {}, D = {}: train loss {:.3e} → {:.3e} at t = {}{test}{change}",
        traj.solver,
        traj.method,
        data.n_train(),
        data.n_test(),
        data.dim(),
        m.train_loss_initial,
        m.train_loss_final,
        m.t_final
    );
    if let Some(fl) = &outcome.fluctuations {
        let last = fl.var_loss().len() - 1;
        let max = |a: ndarray::ArrayView1<f64>| a.iter().cloned().fold(0.0f64, f64::max);
        println!(
            "finite width (N·Var, width-free, {} propagator) at t = {}: max over train points {:.3e}, test {:.3e}, loss {:.3e}",
            fl.propagator(),
            fl.t()[last],
            max(fl.var_f_train().row(last)),
            max(fl.var_f_test().row(last)),
            fl.var_loss()[last]
        );
        if let Some(shift) = &fl.mean_shift {
            let variance: f64 = fl.var_f_train().row(last).sum() / (2 * data.n_train()) as f64;
            println!(
                "mean shift N(E ℒ_N − ℒ∞) of the train loss at t = {}: {:.3e} = variance term {:.3e} (removed by ensembling) + bias term {:.3e} (not)",
                fl.t()[last],
                shift.shift_loss[last],
                variance,
                shift.shift_loss[last] - variance
            );
        }
        // Gradient descent is linearly unstable once η λ_max / P > 2 (the edge of stability).
        let top = fl.ntk().ntk_top;
        let threshold = 2.0 * data.n_train() as f64 / config.train.eta;
        if let Some(i) = top.iter().position(|&l| l > threshold) {
            eprintln!(
                "warning: the top NTK eigenvalue {:.3e} exceeds 2P/η = {threshold:.3e} at t = {}: past the edge of stability the linearized fluctuations can grow without bound; check Σ_f against ensembles (dmft sweep)",
                top[i],
                fl.t()[i]
            );
        }
        if let Some(ratio) = fl.ntk().crossing_jump_ratio
            && config.model.readout == dmft_runtime::Readout::Frozen
            && ratio > dmft_runtime::propagator::CROSSING_JUMP_LIMIT
        {
            eprintln!(
                "warning: relu with a frozen readout: a unit's preactivation moves up to {:.2} × twice the relu crossing kernel's width per step (limit {}); there the kernel's D_f and D_K are known to miss (γ₀ = 2 on the validation data: Σ_f 30 % low; docs/dmft.md, \"Where the kernel fails\"); check Σ_f against ensembles (dmft sweep)",
                ratio,
                dmft_runtime::propagator::CROSSING_JUMP_LIMIT
            );
        }
    }
    println!("results in {}", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::Command;

    /// Runs a Python script with numpy, passing `dir` as its argument; returns its stdout, or
    /// None when python3 or numpy is unavailable. A failing script fails the test.
    pub fn python(script: &str, dir: &Path) -> Option<String> {
        let out = Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(dir)
            .output()
            .ok()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            if stderr.contains("No module named 'numpy'") {
                return None;
            }
            panic!("python failed: {stderr}");
        }
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}
