//! The results folder written by `dmft run` (a contract other tools read; see
//! docs/config.md):
//!
//! ```text
//! DIR/summary.json
//! DIR/theory/{t,f_train,f_test,loss,ntk}.npy  (+ test_loss, f_train_se, f_test_se, loss_se)
//! DIR/theory/{var_f_train,var_f_test,var_loss}.npy  (theory.fluctuations: N·Var)
//! DIR/theory/{var_ntk,var_ntk_top,ntk_top}.npy  (N·Var of the NTK and of its top
//!   eigenvalue, and the top eigenvalue of the infinite-width train NTK)
//! DIR/theory/{mean_shift_f_train,mean_shift_f_test,mean_shift_loss}.npy  (theory.mean_shift:
//!   N(E f_N − f∞) and N(E ℒ_N − ℒ∞); + mean_shift_test_loss with test targets)
//! DIR/theory/{var,mean_shift}_*_N{width}.npy  (--width: the same at that width, divided by N)
//! DIR/plots/{loss,predictions,ntk_eigenvalues}.svg  (+ fluctuations.svg, mean_shift.svg)
//! ```
//!
//! A folder that looks complete must be complete: everything is written into a hidden
//! sibling folder that is renamed to DIR only at the end, and every array is checked finite
//! before anything is written. An existing DIR is replaced only if it is itself a result
//! folder (holds a summary.json), so a mistyped --out cannot wipe unrelated files.

use crate::config::Config;
use crate::failure::Failure;
use crate::fluctuations::Fluctuations;
use crate::plots;
use dmft_data::Dataset;
use dmft_runtime::Trajectory;
use ndarray::{ArrayBase, Axis, Data, Dimension};
use ndarray_npy::{WritableElement, write_npy};
use serde_json::json;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Version of the results layout, recorded in summary.json; bumped only if a field or file
/// changes meaning (additions keep it).
pub const FORMAT_VERSION: u32 = 1;

/// Everything a results folder is written from.
pub struct Record<'a> {
    pub config: &'a Config,
    /// The config file as given on the command line, or a description of a built-in one.
    pub source: &'a str,
    pub data: &'a Dataset,
    pub trajectory: &'a Trajectory,
    /// Which implementation solved it: "generated:<variant>" or "reference".
    pub solver_source: &'a str,
    /// Σ_f when theory.fluctuations = true.
    pub fluctuations: Option<&'a Fluctuations>,
    /// `--width N`: also write the variances at width N.
    pub width: Option<usize>,
    pub wall_time: f64,
}

/// Headline numbers of a trajectory, for summary.json and the console.
#[derive(Clone, Debug, PartialEq)]
pub struct Metrics {
    pub t_final: f64,
    pub train_loss_initial: f64,
    pub train_loss_final: f64,
    pub test_loss_final: Option<f64>,
    /// ‖K(T) − K(0)‖_F / ‖K(0)‖_F: how far the NTK moved (0 in the lazy limit). None when
    /// K(0) = 0, where the ratio is undefined.
    pub ntk_change: Option<f64>,
}

impl Metrics {
    /// Reads the metrics off a trajectory that passed `check_trajectory` (at least one step).
    pub fn of(traj: &Trajectory) -> Metrics {
        let last = traj.t.len() - 1;
        let k0 = traj.ntk.index_axis(Axis(0), 0);
        let kt = traj.ntk.index_axis(Axis(0), last);
        let norm0 = k0.iter().map(|v| v * v).sum::<f64>().sqrt();
        let change = kt
            .iter()
            .zip(&k0)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            .sqrt();
        Metrics {
            t_final: traj.t[last],
            train_loss_initial: traj.loss[0],
            train_loss_final: traj.loss[last],
            test_loss_final: traj.test_loss.as_ref().map(|l| l[last]),
            ntk_change: (norm0 > 0.0).then(|| change / norm0),
        }
    }
}

/// Checks that `dir` can be written: absent, or a previous result folder to be replaced.
pub fn check_destination(dir: &Path) -> Result<(), Failure> {
    folder_name(dir)?;
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Failure::Input(format!(
            "{}: cannot inspect the output folder: {e}",
            dir.display()
        ))),
        Ok(m) if m.is_dir() && dir.join("summary.json").is_file() => Ok(()),
        Ok(_) => Err(Failure::Input(format!(
            "{}: exists and is not a dmft result folder (no summary.json); refusing to replace it",
            dir.display()
        ))),
    }
}

fn folder_name(dir: &Path) -> Result<String, Failure> {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Failure::Input(format!("{}: the output must name a folder", dir.display())))
}

/// Writes the results folder `dir` for `record`; returns the headline metrics.
pub fn write(dir: &Path, record: &Record) -> Result<Metrics, Failure> {
    let traj = record.trajectory;
    check_trajectory(traj, record.data.n_train(), record.data.n_test())?;
    check_destination(dir)?;
    let metrics = Metrics::of(traj);
    let loss_svg = plots::loss(traj).to_svg();
    let predictions_svg = plots::predictions(traj, record.data).to_svg();
    let eigen_svg = plots::ntk_eigenvalues(traj)?.to_svg();
    let mut svgs = vec![
        ("loss", loss_svg),
        ("predictions", predictions_svg),
        ("ntk_eigenvalues", eigen_svg),
    ];
    if let Some(fl) = record.fluctuations {
        check_fluctuations(fl, traj)?;
        svgs.push(("fluctuations", plots::fluctuations(fl).to_svg()));
        if let Some(m) = &fl.mean_shift {
            svgs.push(("mean_shift", plots::mean_shift(fl.t(), m).to_svg()));
        }
    }
    write_atomically(dir, |tmp| {
        let plot_dir = tmp.join("plots");
        let mut files = write_theory(tmp, traj)?;
        if let Some(fl) = record.fluctuations {
            files.extend(write_fluctuations(tmp, fl, record.width)?);
        }
        create_dir(&plot_dir)?;
        for (name, svg) in &svgs {
            write_file(&plot_dir.join(format!("{name}.svg")), svg.as_bytes())?;
            files.push(format!("plots/{name}.svg"));
        }
        let summary = summary(record, &metrics, &files);
        let text = serde_json::to_string_pretty(&summary)
            .map_err(|e| Failure::Runtime(format!("cannot encode summary.json: {e}")))?;
        write_file(&tmp.join("summary.json"), format!("{text}\n").as_bytes())
    })?;
    Ok(metrics)
}

/// Writes N·Var of predictions and loss (and of the NTK, where the propagator has it) into
/// `root/theory/`, and with `width` the variances at that width; returns the files written,
/// relative to `root`.
pub fn write_fluctuations(
    root: &Path,
    fl: &Fluctuations,
    width: Option<usize>,
) -> Result<Vec<String>, Failure> {
    let theory = root.join("theory");
    create_dir(&theory)?;
    let mut files = Vec::new();
    let scales = std::iter::once((String::new(), 1.0)).chain(
        width
            .into_iter()
            .map(|n| (format!("_N{n}"), 1.0 / n as f64)),
    );
    for (suffix, scale) in scales {
        let mut arrays = vec![
            (
                "var_f_train",
                fl.var_f_train().mapv(|v| v * scale).into_dyn(),
            ),
            ("var_f_test", fl.var_f_test().mapv(|v| v * scale).into_dyn()),
            ("var_loss", fl.var_loss().mapv(|v| v * scale).into_dyn()),
        ];
        let k = fl.ntk();
        arrays.push(("var_ntk", k.var_ntk.mapv(|v| v * scale).into_dyn()));
        arrays.push(("var_ntk_top", k.var_ntk_top.mapv(|v| v * scale).into_dyn()));
        if let Some(m) = &fl.mean_shift {
            arrays.push((
                "mean_shift_f_train",
                m.shift_f_train.mapv(|v| v * scale).into_dyn(),
            ));
            arrays.push((
                "mean_shift_f_test",
                m.shift_f_test.mapv(|v| v * scale).into_dyn(),
            ));
            arrays.push((
                "mean_shift_loss",
                m.shift_loss.mapv(|v| v * scale).into_dyn(),
            ));
            if let Some(test) = &m.shift_test_loss {
                arrays.push(("mean_shift_test_loss", test.mapv(|v| v * scale).into_dyn()));
            }
        }
        for (name, a) in arrays {
            let name = format!("{name}{suffix}");
            save(&theory, &name, &a)?;
            files.push(format!("theory/{name}.npy"));
        }
    }
    save(&theory, "ntk_top", fl.ntk().ntk_top)?;
    files.push("theory/ntk_top.npy".into());
    Ok(files)
}

/// Checks Σ_f's recorded arrays against the trajectory's steps and for finite values.
pub fn check_fluctuations(fl: &Fluctuations, traj: &Trajectory) -> Result<(), Failure> {
    let (t, p, q) = (traj.t.len(), traj.f_train.ncols(), traj.f_test.ncols());
    let origin = "the propagator";
    check_array(origin, "var_f_train", fl.var_f_train(), &[t, p], &traj.t)?;
    check_array(origin, "var_f_test", fl.var_f_test(), &[t, q], &traj.t)?;
    check_array(origin, "var_loss", fl.var_loss(), &[t], &traj.t)?;
    let k = fl.ntk();
    check_array(origin, "var_ntk", k.var_ntk, &[t, p, p], &traj.t)?;
    check_array(origin, "ntk_top", k.ntk_top, &[t], &traj.t)?;
    check_array(origin, "var_ntk_top", k.var_ntk_top, &[t], &traj.t)?;
    if let Some(m) = &fl.mean_shift {
        let origin = "the mean shift";
        check_array(
            origin,
            "mean_shift_f_train",
            &m.shift_f_train,
            &[t, p],
            &traj.t,
        )?;
        check_array(
            origin,
            "mean_shift_f_test",
            &m.shift_f_test,
            &[t, q],
            &traj.t,
        )?;
        check_array(origin, "mean_shift_loss", &m.shift_loss, &[t], &traj.t)?;
        if let Some(test) = &m.shift_test_loss {
            check_array(origin, "mean_shift_test_loss", test, &[t], &traj.t)?;
        }
    }
    Ok(())
}

/// Writes the trajectory's arrays into `root/theory/` (the layout of module docs) and
/// returns the files written, relative to `root`. The trajectory must have passed
/// [`check_trajectory`].
pub fn write_theory(root: &Path, traj: &Trajectory) -> Result<Vec<String>, Failure> {
    let theory = root.join("theory");
    create_dir(&theory)?;
    let mut files = Vec::new();
    let mut npy = |name: &str, result: Result<(), Failure>| {
        files.push(format!("theory/{name}.npy"));
        result
    };
    npy("t", save(&theory, "t", &traj.t))?;
    npy("f_train", save(&theory, "f_train", &traj.f_train))?;
    npy("f_test", save(&theory, "f_test", &traj.f_test))?;
    npy("loss", save(&theory, "loss", &traj.loss))?;
    npy("ntk", save(&theory, "ntk", &traj.ntk))?;
    if let Some(a) = &traj.test_loss {
        npy("test_loss", save(&theory, "test_loss", a))?;
    }
    if let Some(a) = &traj.f_train_se {
        npy("f_train_se", save(&theory, "f_train_se", a))?;
    }
    if let Some(a) = &traj.f_test_se {
        npy("f_test_se", save(&theory, "f_test_se", a))?;
    }
    if let Some(a) = &traj.loss_se {
        npy("loss_se", save(&theory, "loss_se", a))?;
    }
    Ok(files)
}

fn summary(record: &Record, metrics: &Metrics, files: &[String]) -> serde_json::Value {
    let traj = record.trajectory;
    let last = traj.t.len() - 1;
    let max = |a: &ndarray::Array2<f64>| a.iter().cloned().fold(0.0f64, f64::max);
    let monte_carlo = match (&traj.loss_se, &traj.f_train_se, &traj.f_test_se) {
        (None, None, None) => serde_json::Value::Null,
        (loss_se, f_train_se, f_test_se) => json!({
            "final_train_loss_se": loss_se.as_ref().map(|s| s[last]),
            "max_f_train_se": f_train_se.as_ref().map(max),
            "max_f_test_se": f_test_se.as_ref().map(max),
        }),
    };
    json!({
        "format_version": FORMAT_VERSION,
        "config_file": record.source,
        "config": record.config,
        "solver": traj.solver.name(),
        "solver_requested": record.config.theory.solver.to_string(),
        "solver_source": record.solver_source,
        "method": traj.method,
        "sizes": {
            "p_train": record.data.n_train(),
            "p_test": record.data.n_test(),
            "dim": record.data.dim(),
            "steps": record.config.train.steps,
            "recorded_steps": traj.t.len(),
        },
        "initial": {
            "train_loss": metrics.train_loss_initial,
            "test_loss": traj.test_loss.as_ref().map(|l| l[0]),
        },
        "final": {
            "step": traj.steps.get(last),
            "t": metrics.t_final,
            "train_loss": metrics.train_loss_final,
            "test_loss": metrics.test_loss_final,
        },
        "ntk_relative_change": metrics.ntk_change,
        "monte_carlo": monte_carlo,
        "fluctuations": record.fluctuations.map(|fl| fluctuation_summary(fl, record.width)),
        "wall_time_seconds": record.wall_time,
        "versions": { "dmft": env!("CARGO_PKG_VERSION") },
        "files": files,
    })
}

/// The `fluctuations` entry of summary.json: which propagator ran, which observables it
/// wrote, and their final values.
fn fluctuation_summary(fl: &Fluctuations, width: Option<usize>) -> serde_json::Value {
    let last = fl.var_loss().len() - 1;
    let max = |a: &ndarray::Array2<f64>| a.row(last).iter().cloned().fold(0.0f64, f64::max);
    let mut observables = vec![
        "var_f_train",
        "var_f_test",
        "var_loss",
        "var_ntk",
        "var_ntk_top",
    ];
    let kernel = fl.ntk();
    if let Some(m) = &fl.mean_shift {
        observables.extend(["mean_shift_f_train", "mean_shift_f_test", "mean_shift_loss"]);
        if m.shift_test_loss.is_some() {
            observables.push("mean_shift_test_loss");
        }
    }
    json!({
        "propagator": fl.propagator(),
        "propagator_source": fl.source,
        "observables": observables,
        "not_computed": {},
        "scale": "N·Var and N(E·_N − ·∞), width-free; the *_N{width} files hold them divided by that width",
        "width": width,
        "final_max_var_f_train": max(fl.var_f_train()),
        "final_max_var_f_test": max(fl.var_f_test()),
        "final_var_loss": fl.var_loss()[last],
        "final_ntk_top": kernel.ntk_top[last],
        "final_var_ntk_top": kernel.var_ntk_top[last],
        "crossing_jump_ratio": kernel.crossing_jump_ratio,
        "final_mean_shift_loss": fl.mean_shift.as_ref().map(|m| m.shift_loss[last]),
    })
}

/// Checks the trajectory has the shapes the contract promises and only finite values, so
/// that no malformed or NaN-filled result is ever written.
pub fn check_trajectory(traj: &Trajectory, p: usize, q: usize) -> Result<(), Failure> {
    let t = traj.t.len();
    if t == 0 {
        return Err(Failure::Runtime("the solver recorded no steps".into()));
    }
    if traj.steps.len() != t {
        return Err(shape_error("steps", &[traj.steps.len()], &[t]));
    }
    check("t", &traj.t, &[t], &traj.t)?;
    check("f_train", &traj.f_train, &[t, p], &traj.t)?;
    check("f_test", &traj.f_test, &[t, q], &traj.t)?;
    check("loss", &traj.loss, &[t], &traj.t)?;
    check("ntk", &traj.ntk, &[t, p, p], &traj.t)?;
    if let Some(a) = &traj.test_loss {
        check("test_loss", a, &[t], &traj.t)?;
    }
    if let Some(a) = &traj.f_train_se {
        check("f_train_se", a, &[t, p], &traj.t)?;
    }
    if let Some(a) = &traj.f_test_se {
        check("f_test_se", a, &[t, q], &traj.t)?;
    }
    if let Some(a) = &traj.loss_se {
        check("loss_se", a, &[t], &traj.t)?;
    }
    Ok(())
}

fn check<S: Data<Elem = f64>, D: Dimension>(
    name: &str,
    a: &ArrayBase<S, D>,
    shape: &[usize],
    t: &ndarray::Array1<f64>,
) -> Result<(), Failure> {
    check_array("the solver", name, a, shape, t)
}

/// Checks that array `name`, computed by `origin` (e.g. "the solver"), has `shape` and only
/// finite values; a non-finite value is reported with its recorded step (the first axis)
/// and time.
pub fn check_array<S: Data<Elem = f64>, D: Dimension>(
    origin: &str,
    name: &str,
    a: &ArrayBase<S, D>,
    shape: &[usize],
    t: &ndarray::Array1<f64>,
) -> Result<(), Failure> {
    if a.shape() != shape {
        return Err(Failure::Runtime(format!(
            "{origin} returned {name} with shape {:?}, expected {shape:?}; no results were written",
            a.shape()
        )));
    }
    let per_step = a.len() / shape[0].max(1);
    if let Some((i, v)) = a.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        let k = i / per_step.max(1);
        let at = t
            .get(k)
            .filter(|t| t.is_finite())
            .map(|t| format!(", t = {t}"))
            .unwrap_or_default();
        return Err(Failure::Runtime(format!(
            "{origin} returned {v} in {name} at recorded step {k}{at}; no results were written"
        )));
    }
    Ok(())
}

fn shape_error(name: &str, got: &[usize], expected: &[usize]) -> Failure {
    Failure::Runtime(format!(
        "the solver returned {name} with shape {got:?}, expected {expected:?}; no results were written"
    ))
}

pub fn save<S: Data, D: Dimension>(
    dir: &Path,
    name: &str,
    a: &ArrayBase<S, D>,
) -> Result<(), Failure>
where
    S::Elem: WritableElement,
{
    let path = dir.join(format!("{name}.npy"));
    write_npy(&path, a)
        .map_err(|e| Failure::Runtime(format!("cannot write {}: {e}", path.display())))
}

pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), Failure> {
    fs::write(path, bytes)
        .map_err(|e| Failure::Runtime(format!("cannot write {}: {e}", path.display())))
}

pub fn create_dir(path: &Path) -> Result<(), Failure> {
    fs::create_dir_all(path)
        .map_err(|e| Failure::Runtime(format!("cannot create folder {}: {e}", path.display())))
}

/// Runs `fill` on a fresh hidden sibling of `dir`, then moves it into place. On failure the
/// partial folder is removed and `dir` is left as it was.
pub fn write_atomically(
    dir: &Path,
    fill: impl FnOnce(&Path) -> Result<(), Failure>,
) -> Result<(), Failure> {
    let name = folder_name(dir)?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    create_dir(&parent)?;
    let pid = std::process::id();
    remove_stale_partials(&parent, &name, pid);
    let partial = parent.join(format!(".{name}.partial-{pid}"));
    create_dir(&partial)?;
    let filled = fill(&partial).and_then(|()| {
        // Checked again: the folder may have appeared while the solver ran.
        check_destination(dir)?;
        replace(&partial, dir, &parent.join(format!(".{name}.old-{pid}")))
    });
    if filled.is_err() {
        let _ = fs::remove_dir_all(&partial);
    }
    filled
}

/// Removes `.{name}.partial-{pid}` folders of killed runs: ours (an earlier process with the
/// same id) and, where the process table is visible (/proc), those of dead processes. A
/// live run's folder is left alone. Failures are ignored: these are leftovers.
fn remove_stale_partials(parent: &Path, name: &str, own_pid: u32) {
    let prefix = format!(".{name}.partial-");
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    let proc_visible = Path::new("/proc/self").exists();
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let dead = pid == own_pid || (proc_visible && !Path::new(&format!("/proc/{pid}")).exists());
        if dead {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Renames `new` to `dir`. An existing `dir` is first moved aside to `old` (a directory
/// cannot be renamed over a non-empty one), then deleted.
fn replace(new: &Path, dir: &Path, old: &Path) -> Result<(), Failure> {
    let moved_aside = dir.exists();
    if moved_aside {
        fs::rename(dir, old).map_err(|e| {
            Failure::Runtime(format!(
                "cannot move the previous {} aside: {e}",
                dir.display()
            ))
        })?;
    }
    if let Err(e) = fs::rename(new, dir) {
        if moved_aside {
            let _ = fs::rename(old, dir);
        }
        return Err(Failure::Runtime(format!(
            "cannot move results into {}: {e}",
            dir.display()
        )));
    }
    if moved_aside {
        // The new results are in place; a leftover old copy is harmless, so ignore failure.
        let _ = fs::remove_dir_all(old);
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use dmft_data::{GaussianTask, Teacher};
    use dmft_runtime::SolverKind;
    use ndarray::{Array1, Array2, Array3};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh folder under the system temp dir, removed when dropped.
    pub struct TempDir(pub PathBuf);

    impl TempDir {
        pub fn new() -> TempDir {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir =
                std::env::temp_dir().join(format!("dmft-cli-unit-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    pub fn dataset() -> Dataset {
        GaussianTask {
            p_train: 3,
            p_test: 2,
            dim: 5,
            teacher: Teacher::Linear,
            seed: 1,
        }
        .generate()
    }

    /// A made-up trajectory with the contract's shapes: f relaxes towards the targets and the
    /// NTK grows a little, with Monte Carlo errors when `with_se`.
    pub fn trajectory(data: &Dataset, with_se: bool) -> Trajectory {
        let (p, q) = (data.n_train(), data.n_test());
        let steps: Vec<usize> = (0..=10).step_by(2).collect();
        let t = Array1::from_iter(steps.iter().map(|&k| 0.5 * k as f64));
        let n = t.len();
        let decay = t.mapv(|t| 1.0 - (-t).exp());
        let f_train = Array2::from_shape_fn((n, p), |(k, i)| decay[k] * data.y_train[i]);
        let f_test = Array2::from_shape_fn((n, q), |(k, i)| {
            0.5 * decay[k] * data.y_test.as_ref().unwrap()[i]
        });
        let loss = Array1::from_shape_fn(n, |k| {
            0.5 * (0..p)
                .map(|i| (data.y_train[i] - f_train[[k, i]]).powi(2))
                .sum::<f64>()
                / p as f64
        });
        let ntk = Array3::from_shape_fn((n, p, p), |(k, i, j)| {
            (1.0 + 0.1 * decay[k]) * if i == j { 1.0 } else { 0.2 }
        });
        Trajectory {
            steps,
            t,
            f_train: f_train.clone(),
            f_test: f_test.clone(),
            test_loss: Some(loss.mapv(|l| 1.5 * l)),
            loss: loss.clone(),
            ntk,
            f_train_se: with_se.then(|| f_train.mapv(|_| 0.01)),
            f_test_se: with_se.then(|| f_test.mapv(|_| 0.01)),
            loss_se: with_se.then(|| loss.mapv(|l| 0.1 * l)),
            solver: SolverKind::TwoLayer,
            method: "fake".into(),
        }
    }

    fn write_fake(dir: &Path, traj: &Trajectory) -> Result<Metrics, Failure> {
        let data = dataset();
        let config = Config::default();
        let record = Record {
            config: &config,
            source: "fake.toml",
            data: &data,
            trajectory: traj,
            solver_source: "reference",
            fluctuations: None,
            width: None,
            wall_time: 0.25,
        };
        write(dir, &record)
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn writes_every_file_of_the_contract() {
        let tmp = TempDir::new();
        let out = tmp.0.join("run");
        let metrics = write_fake(&out, &trajectory(&dataset(), true)).unwrap();
        assert_eq!(listing(&out), ["plots", "summary.json", "theory"]);
        assert_eq!(
            listing(&out.join("theory")),
            [
                "f_test.npy",
                "f_test_se.npy",
                "f_train.npy",
                "f_train_se.npy",
                "loss.npy",
                "loss_se.npy",
                "ntk.npy",
                "t.npy",
                "test_loss.npy"
            ]
        );
        assert_eq!(
            listing(&out.join("plots")),
            ["loss.svg", "ntk_eigenvalues.svg", "predictions.svg"]
        );
        // Nothing but the result is left in the parent.
        assert_eq!(listing(&tmp.0), ["run"]);
        let summary: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
        assert_eq!(summary["solver"], "two-layer");
        assert_eq!(summary["method"], "fake");
        assert_eq!(summary["solver_source"], "reference");
        assert_eq!(summary["sizes"]["p_train"], 3);
        assert_eq!(summary["sizes"]["recorded_steps"], 6);
        assert_eq!(summary["config"]["model"]["activation"], "relu");
        assert_eq!(summary["final"]["train_loss"], metrics.train_loss_final);
        assert!(summary["monte_carlo"]["final_train_loss_se"].is_f64());
        assert!((metrics.ntk_change.unwrap() - 0.1 * (1.0 - (-5.0f64).exp())).abs() < 1e-12);
    }

    #[test]
    fn deterministic_runs_have_no_error_files() {
        let tmp = TempDir::new();
        let out = tmp.0.join("run");
        write_fake(&out, &trajectory(&dataset(), false)).unwrap();
        assert!(!out.join("theory/loss_se.npy").exists());
        let summary: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
        assert!(summary["monte_carlo"].is_null());
    }

    #[test]
    fn partial_folders_of_dead_runs_are_removed() {
        let root = std::env::temp_dir().join(format!("dmft-stale-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        // pid_max on Linux is at most 2²², so this process cannot exist.
        let dead = root.join(".res.partial-4294967295");
        let ours = root.join(format!(".res.partial-{}", std::process::id()));
        let other = root.join(".other.partial-4294967295");
        for d in [&dead, &other] {
            fs::create_dir_all(d).unwrap();
        }
        write_atomically(&root.join("res"), |tmp| {
            assert!(!dead.exists() && other.exists());
            assert_eq!(tmp, ours.as_path());
            write_file(&tmp.join("x.txt"), b"x")
        })
        .unwrap();
        assert!(root.join("res/x.txt").is_file() && other.exists());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn replaces_a_previous_result_but_not_other_folders() {
        let tmp = TempDir::new();
        let out = tmp.0.join("run");
        write_fake(&out, &trajectory(&dataset(), true)).unwrap();
        fs::write(out.join("stale.txt"), "old").unwrap();
        write_fake(&out, &trajectory(&dataset(), false)).unwrap();
        assert!(
            !out.join("stale.txt").exists(),
            "old contents must be replaced"
        );
        assert!(!out.join("theory/loss_se.npy").exists());
        assert_eq!(listing(&tmp.0), ["run"]);

        let other = tmp.0.join("photos");
        fs::create_dir(&other).unwrap();
        fs::write(other.join("cat.jpg"), "meow").unwrap();
        let err = write_fake(&other, &trajectory(&dataset(), true)).unwrap_err();
        assert!(matches!(err, Failure::Input(_)));
        assert!(
            err.to_string().contains("not a dmft result folder"),
            "{err}"
        );
        assert_eq!(listing(&other), ["cat.jpg"]);
        assert_eq!(listing(&tmp.0), ["photos", "run"]);
    }

    #[test]
    fn non_finite_results_are_refused_and_nothing_is_written() {
        let tmp = TempDir::new();
        let out = tmp.0.join("run");
        let mut traj = trajectory(&dataset(), true);
        traj.f_test[[3, 1]] = f64::NAN;
        let err = write_fake(&out, &traj).unwrap_err();
        assert!(matches!(err, Failure::Runtime(_)));
        assert!(
            err.to_string()
                .contains("NaN in f_test at recorded step 3, t = 3"),
            "{err}"
        );
        assert!(listing(&tmp.0).is_empty());
    }

    #[test]
    fn malformed_shapes_are_refused() {
        let tmp = TempDir::new();
        let mut traj = trajectory(&dataset(), false);
        traj.ntk = Array3::zeros((6, 2, 2));
        let err = write_fake(&tmp.0.join("run"), &traj).unwrap_err();
        assert!(
            err.to_string()
                .contains("ntk with shape [6, 2, 2], expected [6, 3, 3]"),
            "{err}"
        );
    }

    /// Reads every written array back with NumPy and checks its shape and a value.
    /// Needs python3 with numpy; skipped with a notice when numpy is not importable.
    #[test]
    fn numpy_reads_the_written_arrays() {
        let tmp = TempDir::new();
        let out = tmp.0.join("run");
        let traj = trajectory(&dataset(), true);
        write_fake(&out, &traj).unwrap();
        let script = r#"
import sys, json, numpy as np
d = sys.argv[1]
s = json.load(open(d + "/summary.json"))
T, P, Q = s["sizes"]["recorded_steps"], s["sizes"]["p_train"], s["sizes"]["p_test"]
shapes = {"t": (T,), "loss": (T,), "test_loss": (T,), "loss_se": (T,), "f_train": (T, P),
          "f_train_se": (T, P), "f_test": (T, Q), "f_test_se": (T, Q), "ntk": (T, P, P)}
for name, shape in shapes.items():
    a = np.load(d + "/theory/" + name + ".npy")
    assert a.shape == shape, (name, a.shape, shape)
    assert a.dtype == np.float64 and np.all(np.isfinite(a)), name
assert abs(np.load(d + "/theory/loss.npy")[-1] - s["final"]["train_loss"]) < 1e-15
print("ok")
"#;
        match crate::tests::python(script, &out) {
            Some(stdout) => assert_eq!(stdout.trim(), "ok"),
            None => println!("skipped: numpy is not importable"),
        }
    }
}
