//! `dmft` without arguments: the built-in experiment (src/default.toml) at three feature
//! strengths, from nearly lazy to rich, with a comparison table and an overlaid loss plot.

use crate::DEFAULT_CONFIG;
use crate::config::Config;
use crate::experiment::{self, Outcome, Source};
use crate::failure::Failure;
use crate::plots;
use crate::results::{self, Metrics};
use std::fs;
use std::path::Path;

/// γ₀ values of the sweep: 0.1 stays close to the lazy (NTK) limit, 3 learns features.
const GAMMA0S: [f64; 3] = [0.1, 1.0, 3.0];
const OUT_DIR: &str = "dmft-out/default";
const SOURCE: &str = "built-in default config";

pub fn run(quiet: bool) -> Result<(), Failure> {
    let base =
        Config::parse(DEFAULT_CONFIG).map_err(|e| Failure::Input(format!("{SOURCE}: {e}")))?;
    let source = Source {
        name: SOURCE,
        base_dir: Path::new("."),
    };
    let root = Path::new(OUT_DIR);
    let dirs: Vec<_> = GAMMA0S
        .iter()
        .map(|g| root.join(format!("gamma0_{g}")))
        .collect();
    // Refuse up front rather than after computing the first runs.
    for dir in &dirs {
        results::check_destination(dir)?;
    }
    let data = experiment::load_data(&base, &source)?;
    let mut outcomes: Vec<(f64, Outcome)> = Vec::new();
    for (&gamma0, dir) in GAMMA0S.iter().zip(&dirs) {
        let mut config = base.clone();
        config.model.gamma0 = gamma0;
        let label = format!("γ₀ = {gamma0}");
        let outcome = experiment::run_and_write(&config, &data, &source, dir, &label, None, quiet)?;
        outcomes.push((gamma0, outcome));
    }
    let curves: Vec<(String, &dmft_runtime::Trajectory)> = outcomes
        .iter()
        .map(|(g, o)| (format!("γ₀ = {g}"), &o.trajectory))
        .collect();
    let svg = plots::loss_overlay(&curves).to_svg();
    write_replacing(&root.join("loss.svg"), &svg)?;

    let rows: Vec<(f64, &Metrics)> = outcomes.iter().map(|(g, o)| (*g, &o.metrics)).collect();
    println!(
        "two-layer relu network, μP, P = {}, Q = {}, D = {}, {} steps of η = {}",
        data.n_train(),
        data.n_test(),
        data.dim(),
        base.train.steps,
        base.train.eta
    );
    print!("{}", table(&rows));
    println!("results in {OUT_DIR}/ (one folder per γ₀, loss.svg compares them)");
    Ok(())
}

/// Writes a file through a temporary sibling and a rename, so readers never see half of it.
fn write_replacing(path: &Path, text: &str) -> Result<(), Failure> {
    let tmp = path.with_extension(format!("svg.partial-{}", std::process::id()));
    let result = fs::write(&tmp, text).and_then(|()| fs::rename(&tmp, path));
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Failure::Runtime(format!("cannot write {}: {e}", path.display()))
    })
}

/// The comparison table, columns right-aligned under their headers.
fn table(rows: &[(f64, &Metrics)]) -> String {
    let header = [
        "gamma0",
        "train loss(0)",
        "train loss(T)",
        "test loss(T)",
        "‖K(T)−K(0)‖_F/‖K(0)‖_F",
    ];
    let body: Vec<[String; 5]> = rows
        .iter()
        .map(|(g, m)| {
            [
                format!("{g}"),
                format!("{:.3e}", m.train_loss_initial),
                format!("{:.3e}", m.train_loss_final),
                m.test_loss_final.map_or("-".into(), |v| format!("{v:.3e}")),
                m.ntk_change.map_or("-".into(), |v| format!("{v:.4}")),
            ]
        })
        .collect();
    let width = |i: usize| {
        body.iter()
            .map(|r| r[i].chars().count())
            .chain([header[i].chars().count()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..header.len()).map(width).collect();
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{}{c}", " ".repeat(w - c.chars().count())))
            .collect();
        format!("{}\n", padded.join("  "))
    };
    let mut out = line(header.to_vec());
    for row in &body {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_columns_line_up() {
        let m = Metrics {
            t_final: 200.0,
            train_loss_initial: 0.5,
            train_loss_final: 1.25e-4,
            test_loss_final: None,
            ntk_change: Some(0.03125),
        };
        let text = table(&[(0.1, &m), (3.0, &m)]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        let widths: Vec<usize> = lines.iter().map(|l| l.chars().count()).collect();
        assert!(widths.iter().all(|w| *w == widths[0]), "{text}");
        assert!(
            lines[1].contains("5.000e-1")
                && lines[1].contains("1.250e-4")
                && lines[1].ends_with("0.0312")
        );
        assert!(lines[2].trim_start().starts_with('3'));
    }
}
