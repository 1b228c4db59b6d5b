//! The sweep's results folder (a contract other tools read; docs/sweep.md):
//!
//! ```text
//! DIR/summary.json
//! DIR/report.md, DIR/figures/*.svg
//! DIR/theory/*.npy                         (with sim.theory, exactly as `dmft run`)
//! DIR/sim/N{width}/t.npy, f_{train,test}_{mean,var}.npy, loss_{mean,var}.npy,
//!                 ntk_{mean,var}.npy, test_loss_{mean,var}.npy, ensemble_loss.npy,
//!                 ensemble_test_loss.npy
//! ```
//!
//! As for `dmft run`: every array is checked for shape and finiteness before anything is
//! written, and the folder is filled under a hidden name and renamed into place at the end.

use super::compare::{self, DeviationSummary};
use super::{Sweep, WidthRun, figures, report};
use crate::failure::Failure;
use crate::results::{self, FORMAT_VERSION};
use dmft_sim::EnsembleAverage;
use dmft_sim::Moments;
use ndarray::{Array3, CowArray, Ix1, IxDyn};
use serde_json::json;
use std::path::Path;

/// One array of a width's folder: file stem, values, and the shape the contract promises.
struct Entry<'a> {
    name: &'static str,
    values: CowArray<'a, f64, IxDyn>,
    shape: Vec<usize>,
}

/// The folder name of a width's arrays, relative to DIR.
pub fn width_dir(width: usize) -> String {
    format!("sim/N{width}")
}

/// Mean and standard error of an ensemble-averaged predictor's loss, E × T_rec × 2.
fn ensemble_array(
    rows: &[&EnsembleAverage],
    t_rec: usize,
    pick: fn(&EnsembleAverage) -> Option<&Moments<Ix1>>,
) -> Array3<f64> {
    let mut a = Array3::zeros((rows.len(), t_rec, 2));
    for (i, row) in rows.iter().enumerate() {
        if let Some(m) = pick(row) {
            let se = m.se_mean();
            for k in 0..t_rec {
                a[[i, k, 0]] = m.mean[k];
                a[[i, k, 1]] = se[k];
            }
        }
    }
    a
}

fn entry<'a>(name: &'static str, values: CowArray<'a, f64, IxDyn>, shape: &[usize]) -> Entry<'a> {
    Entry {
        name,
        values,
        shape: shape.to_vec(),
    }
}

fn entries(run: &WidthRun, p: usize, q: usize) -> Vec<Entry<'_>> {
    let s = &run.stats;
    let t = s.t.len();
    let mut list = vec![
        entry("t", s.t.view().into_dyn().into(), &[t]),
        entry(
            "f_train_mean",
            s.f_train.mean.view().into_dyn().into(),
            &[t, p],
        ),
        entry(
            "f_train_var",
            s.f_train.var.view().into_dyn().into(),
            &[t, p],
        ),
        entry(
            "f_test_mean",
            s.f_test.mean.view().into_dyn().into(),
            &[t, q],
        ),
        entry("f_test_var", s.f_test.var.view().into_dyn().into(), &[t, q]),
        entry("loss_mean", s.loss.mean.view().into_dyn().into(), &[t]),
        entry("loss_var", s.loss.var.view().into_dyn().into(), &[t]),
        entry("ntk_mean", s.ntk.mean.view().into_dyn().into(), &[t, p, p]),
        entry("ntk_var", s.ntk.var.view().into_dyn().into(), &[t, p, p]),
        entry(
            "ntk_top_mean",
            s.ntk_top.mean.view().into_dyn().into(),
            &[t],
        ),
        entry("ntk_top_var", s.ntk_top.var.view().into_dyn().into(), &[t]),
    ];
    if let Some(m) = &s.test_loss {
        list.push(entry(
            "test_loss_mean",
            m.mean.view().into_dyn().into(),
            &[t],
        ));
        list.push(entry("test_loss_var", m.var.view().into_dyn().into(), &[t]));
    }
    let rows = compare::ensemble_rows(s);
    let e = rows.len();
    let train = ensemble_array(&rows, t, |r| r.loss.as_ref());
    list.push(entry("ensemble_loss", train.into_dyn().into(), &[e, t, 2]));
    if s.test_loss.is_some() {
        let test = ensemble_array(&rows, t, |r| r.test_loss.as_ref());
        list.push(entry(
            "ensemble_test_loss",
            test.into_dyn().into(),
            &[e, t, 2],
        ));
    }
    list
}

/// Checks, renders and writes the whole results folder `out`.
pub fn write(out: &Path, sweep: &Sweep) -> Result<(), Failure> {
    let (p, q) = (sweep.data.n_train(), sweep.data.n_test());
    if let Some(theory) = &sweep.theory {
        results::check_trajectory(&theory.trajectory, p, q)?;
        if let Some(fl) = &sweep.fluctuations {
            results::check_fluctuations(fl, &theory.trajectory)?;
        }
    }
    let per_width: Vec<(&WidthRun, Vec<Entry>)> = sweep
        .widths
        .iter()
        .map(|run| (run, entries(run, p, q)))
        .collect();
    for (run, list) in &per_width {
        let origin = format!("the width-{} simulation", run.stats.width);
        for e in list {
            results::check_array(&origin, e.name, &e.values, &e.shape, &run.stats.t)?;
        }
    }
    let rendered: Vec<figures::Rendered> = [
        Some(figures::loss(sweep)),
        Some(figures::variance(sweep)),
        figures::loss_ntk_variance(sweep),
        figures::mean_deviation(sweep),
        figures::ensembles(sweep),
        figures::pointwise(sweep),
    ]
    .into_iter()
    .flatten()
    .collect();
    let deviations: Vec<DeviationSummary> = match &sweep.theory {
        Some(theory) => sweep
            .widths
            .iter()
            .map(|run| {
                let shift = sweep
                    .fluctuations
                    .as_ref()
                    .and_then(|f| f.mean_shift.as_ref());
                compare::deviation_summary(&run.stats, &theory.trajectory, shift)
            })
            .collect(),
        None => Vec::new(),
    };
    let figure_names: Vec<&str> = rendered.iter().map(|r| r.name).collect();
    let report_md = report::markdown(sweep, &figure_names, &deviations);

    results::write_atomically(out, |tmp| {
        let mut files = match &sweep.theory {
            Some(theory) => results::write_theory(tmp, &theory.trajectory)?,
            None => Vec::new(),
        };
        if let Some(fl) = &sweep.fluctuations {
            files.extend(results::write_fluctuations(tmp, fl, None)?);
        }
        for (run, list) in &per_width {
            let relative = width_dir(run.stats.width);
            let dir = tmp.join(&relative);
            results::create_dir(&dir)?;
            for e in list {
                results::save(&dir, e.name, &e.values)?;
                files.push(format!("{relative}/{}.npy", e.name));
            }
        }
        let figure_dir = tmp.join("figures");
        results::create_dir(&figure_dir)?;
        for r in &rendered {
            results::write_file(
                &figure_dir.join(format!("{}.svg", r.name)),
                r.svg.as_bytes(),
            )?;
            files.push(format!("figures/{}.svg", r.name));
        }
        results::write_file(&tmp.join("report.md"), report_md.as_bytes())?;
        files.push("report.md".into());
        let summary = summary(sweep, &deviations, &files);
        let text = serde_json::to_string_pretty(&summary)
            .map_err(|e| Failure::Runtime(format!("cannot encode summary.json: {e}")))?;
        results::write_file(&tmp.join("summary.json"), format!("{text}\n").as_bytes())
    })
}

fn summary(sweep: &Sweep, deviations: &[DeviationSummary], files: &[String]) -> serde_json::Value {
    let config = sweep.config;
    let t_rec = sweep.widest().stats.t.len();
    let last = t_rec - 1;
    let theory = sweep.theory.as_ref().map(|th| {
        let traj = &th.trajectory;
        let last = traj.t.len() - 1;
        json!({
            "solver": traj.solver.name(),
            "solver_requested": config.theory.solver.to_string(),
            "solver_source": th.solver_source,
            "propagator_source": sweep.fluctuations.as_ref().map(|fl| &fl.source),
            "method": traj.method,
            "wall_time_seconds": th.wall_time,
            "final": {
                "train_loss": traj.loss[last],
                "train_loss_se": traj.loss_se.as_ref().map(|s| s[last]),
                "test_loss": traj.test_loss.as_ref().map(|l| l[last]),
            },
        })
    });
    let widths: Vec<serde_json::Value> = sweep
        .widths
        .iter()
        .map(|run| {
            let s = &run.stats;
            let rows = compare::ensemble_rows(s);
            let deviation = deviations.iter().find(|d| d.width == s.width).map(|d| {
                json!({
                    "max_abs_scaled_deviation": d.max_abs,
                    "se_at_max": d.se_at_max,
                    "max_z": d.max_z,
                    "fraction_within_2_se": d.within_2se,
                    "max_z_against_mean_shift": d.max_z_shifted,
                })
            });
            json!({
                "width": s.width,
                "folder": width_dir(s.width),
                "seeds": s.seeds,
                "converged": s.converged,
                "diverged": s.diverged.iter().map(|d| json!({
                    "seed": d.seed,
                    "step": d.step,
                    "loss": d.loss,
                })).collect::<Vec<_>>(),
                "wall_time_seconds": run.wall_time,
                "memory_estimate_bytes": run.memory_estimate,
                "final": {
                    "train_loss_mean": s.loss.mean[last],
                    "train_loss_se": s.loss.se_mean()[last],
                    "test_loss_mean": s.test_loss.as_ref().map(|m| m.mean[last]),
                    "test_loss_se": s.test_loss.as_ref().map(|m| m.se_mean()[last]),
                },
                "ensemble_sizes": rows.iter().map(|r| r.size).collect::<Vec<_>>(),
                "ensemble_groups": rows.iter().map(|r| r.groups).collect::<Vec<_>>(),
                "deviation_from_theory": deviation,
                "variance_vs_propagator": sweep.fluctuations.as_ref().map(|fl| {
                    deviation_json(&compare::variance_deviation(s, fl))
                }),
                "loss_variance_vs_propagator": sweep.fluctuations.as_ref().map(|fl| {
                    deviation_json(&compare::loss_variance_deviation(s, fl))
                }),
                "ntk_variance_vs_propagator": sweep.fluctuations.as_ref().map(|fl| {
                    deviation_json(&compare::ntk_variance_deviation(s, fl))
                }),
            })
        })
        .collect();
    json!({
        "format_version": FORMAT_VERSION,
        "command": "sweep",
        "config_file": sweep.source,
        "config": config,
        "sizes": {
            "p_train": sweep.data.n_train(),
            "p_test": sweep.data.n_test(),
            "dim": sweep.data.dim(),
            "steps": config.train.steps,
            "recorded_steps": t_rec,
        },
        "threads": sweep.threads,
        "theory": theory,
        "widths": widths,
        "wall_time_seconds": sweep.wall_time,
        "versions": { "dmft": env!("CARGO_PKG_VERSION") },
        "files": files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::results::tests::{TempDir, dataset};
    use dmft_sim::{Divergence, EnsembleStats};
    use ndarray::{Array, Array1, Dimension, IntoDimension};

    fn moments<D: Dimension>(shape: impl IntoDimension<Dim = D>, mean: f64) -> Moments<D> {
        let shape = shape.into_dimension();
        Moments {
            count: 6,
            mean: Array::from_elem(shape.clone(), mean),
            var: Array::from_elem(shape.clone(), 0.04),
            m4: Array::from_elem(shape, 0.005),
        }
    }

    /// Made-up statistics of 6 converged seeds (2 diverged) with the contract's shapes; the
    /// second ensemble size lost its groups to divergence.
    fn stats(width: usize, p: usize, q: usize) -> EnsembleStats {
        let t = 4;
        let average = |size, loss| EnsembleAverage {
            size,
            groups: 6 / size,
            loss,
            test_loss: None,
        };
        EnsembleStats {
            width,
            seeds: 8,
            converged: 6,
            diverged: vec![Divergence {
                seed: 3,
                step: 2,
                loss: f64::INFINITY,
            }],
            steps: vec![0, 1, 2, 3],
            t: Array1::from(vec![0.0, 0.5, 1.0, 1.5]),
            f_train: moments((t, p), 0.3),
            f_test: moments((t, q), 0.2),
            loss: moments(t, 0.1),
            test_loss: Some(moments(t, 0.2)),
            ntk: moments((t, p, p), 1.0),
            ntk_top: moments(t, 2.0),
            phi_kernel: Vec::new(),
            grad_kernel: Vec::new(),
            ensemble_average: vec![average(2, Some(moments(t, 0.05))), average(6, None)],
            trajectories: None,
        }
    }

    fn sweep_of<'a>(
        config: &'a Config,
        data: &'a dmft_data::Dataset,
        runs: Vec<EnsembleStats>,
    ) -> Sweep<'a> {
        Sweep {
            config,
            source: "fake.toml",
            data,
            theory: None,
            fluctuations: None,
            widths: runs
                .into_iter()
                .map(|stats| WidthRun {
                    stats,
                    wall_time: 0.5,
                    memory_estimate: 1000,
                })
                .collect(),
            threads: 2,
            wall_time: 1.0,
        }
    }

    #[test]
    fn writes_rows_only_for_ensembles_with_groups() {
        let (config, data) = (Config::default(), dataset());
        let (p, q) = (data.n_train(), data.n_test());
        let sweep = sweep_of(&config, &data, vec![stats(8, p, q), stats(32, p, q)]);
        let tmp = TempDir::new();
        let out = tmp.0.join("sweep");
        write(&out, &sweep).unwrap();
        let rows: Array3<f64> =
            ndarray_npy::read_npy(out.join("sim/N32/ensemble_loss.npy")).unwrap();
        assert_eq!(rows.dim(), (1, 4, 2));
        // Mean 0.05; standard error sqrt(0.04/6).
        assert_eq!(rows[[0, 2, 0]], 0.05);
        assert!((rows[[0, 2, 1]] - (0.04f64 / 6.0).sqrt()).abs() < 1e-15);
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap())
                .unwrap();
        let w = &summary["widths"][1];
        assert_eq!(w["ensemble_sizes"], serde_json::json!([2]));
        assert_eq!(w["diverged"][0]["seed"], 3);
        assert!(
            w["diverged"][0]["loss"].is_null(),
            "a non-finite loss is null in JSON"
        );
        assert!(summary["theory"].is_null());
        let report = std::fs::read_to_string(out.join("report.md")).unwrap();
        assert!(
            report.contains("- N = 8: seed 3 at step 2 (loss inf)"),
            "{report}"
        );
        assert!(report.contains("Not drawn: it needs the infinite-width theory"));
    }

    #[test]
    fn non_finite_statistics_are_refused_and_nothing_is_written() {
        let (config, data) = (Config::default(), dataset());
        let (p, q) = (data.n_train(), data.n_test());
        let mut broken = stats(32, p, q);
        broken.f_test.var[[1, 0]] = f64::NAN;
        let sweep = sweep_of(&config, &data, vec![stats(8, p, q), broken]);
        let tmp = TempDir::new();
        let err = write(&tmp.0.join("sweep"), &sweep).unwrap_err();
        assert!(matches!(err, Failure::Runtime(_)));
        assert!(
            err.to_string().contains(
                "the width-32 simulation returned NaN in f_test_var at recorded step 1, t = 0.5"
            ),
            "{err}"
        );
        assert_eq!(std::fs::read_dir(&tmp.0).unwrap().count(), 0);
    }
}

fn deviation_json(v: &compare::VarianceDeviation) -> serde_json::Value {
    json!({
        "median_abs_z": v.median_abs_z,
        "max_abs_z": v.max_abs_z,
        "max_relative": v.max_relative,
        "compared": v.compared,
        "left_out_collapsed": v.collapsed,
    })
}
