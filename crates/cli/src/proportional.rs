//! `dmft run` for `data.kind = "proportional"` (docs/proportional.md): solves the
//! proportional-regime DMFT of a deep linear network and writes `theory/t.npy`,
//! `theory/loss.npy` (train), `theory/test_loss.npy` (population), `plots/loss.svg` and
//! `summary.json`, at the recorded steps of [train].

use crate::config::Config;
use crate::failure::Failure;
use crate::progress::Bar;
use crate::results::{FORMAT_VERSION, create_dir, save, write_atomically, write_file};
use dmft_report::Figure;
use dmft_runtime::proportional::{DataUse, LossCurves, solve};
use ndarray::Array1;
use serde_json::json;
use std::path::Path;
use std::time::Instant;

/// The loss curves at the recorded steps, and the solver's wall time.
pub struct Solved {
    pub t: Array1<f64>,
    pub train: Array1<f64>,
    pub test: Array1<f64>,
    pub wall_time: f64,
}

/// Solves the config's proportional setting with a progress bar.
pub fn solve_config(config: &Config, name: &str, quiet: bool) -> Result<Solved, Failure> {
    let setting = config
        .proportional()
        .map_err(|e| Failure::Input(format!("{name}: {e}")))?;
    let bar = Bar::new(setting.steps as u64, "steps", name, quiet);
    let started = Instant::now();
    let curves = solve(&setting, &|k| bar.advance(k as u64));
    bar.finish();
    let LossCurves { t, train, test } = curves.map_err(|e| Failure::from_solver(name, e))?;
    let keep = config.schedule().recorded_steps();
    let pick = |a: &Array1<f64>| keep.iter().map(|&k| a[k]).collect::<Array1<f64>>();
    Ok(Solved {
        t: pick(&t),
        train: pick(&train),
        test: pick(&test),
        wall_time: started.elapsed().as_secs_f64(),
    })
}

/// Solves and writes the results folder `out`.
pub fn run(config: &Config, name: &str, out: &Path, quiet: bool) -> Result<Solved, Failure> {
    let solved = solve_config(config, name, quiet)?;
    let d = &config.data;
    let training = match d.batch_ratio {
        Some(_) => "one-pass SGD",
        None => "repeated data (full-batch GD)",
    };
    let svg = Figure::new(format!(
        "proportional DMFT, L = {}, ν = {}, {training}",
        config.model.depth, d.nu
    ))
    .x_label("t = kη")
    .y_label("loss")
    .log_y(true)
    .line("train", &solved.t, &solved.train)
    .line("test (population)", &solved.t, &solved.test)
    .to_svg();
    let last = solved.t.len() - 1;
    write_atomically(out, |tmp| {
        let theory = tmp.join("theory");
        create_dir(&theory)?;
        save(&theory, "t", &solved.t)?;
        save(&theory, "loss", &solved.train)?;
        save(&theory, "test_loss", &solved.test)?;
        create_dir(&tmp.join("plots"))?;
        write_file(&tmp.join("plots/loss.svg"), svg.as_bytes())?;
        let setting = config
            .proportional()
            .map_err(|e| Failure::Input(format!("{name}: {e}")))?;
        let summary = json!({
            "format_version": FORMAT_VERSION,
            "config_file": name,
            "config": config,
            "solver": "proportional",
            "method": "closed form (linear Gaussian site processes, marched in time)",
            "sizes": {
                "alpha": match setting.data { DataUse::Repeated { alpha } => Some(alpha), DataUse::OnePass { .. } => None },
                "batch_ratio": d.batch_ratio,
                "nu": d.nu,
                "depth": setting.depth,
                "effective_gamma": setting.effective_gamma(),
                "spectrum_sites": setting.spectrum.lambda.len(),
                "steps": setting.steps,
                "recorded_steps": solved.t.len(),
            },
            "initial": { "train_loss": solved.train[0], "test_loss": solved.test[0] },
            "final": {
                "t": solved.t[last],
                "train_loss": solved.train[last],
                "test_loss": solved.test[last],
            },
            "wall_time_seconds": solved.wall_time,
            "versions": { "dmft": env!("CARGO_PKG_VERSION") },
            "files": ["theory/t.npy", "theory/loss.npy", "theory/test_loss.npy", "plots/loss.svg"],
        });
        let text = serde_json::to_string_pretty(&summary)
            .map_err(|e| Failure::Runtime(format!("cannot encode summary.json: {e}")))?;
        write_file(&tmp.join("summary.json"), format!("{text}\n").as_bytes())
    })?;
    Ok(solved)
}
