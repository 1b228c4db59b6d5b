//! `dmft sweep` end to end: the results contract, agreement of wide networks with the
//! theory, one-line refusals of bad input, divergence, the digits data kind and online SGD.
//! Widths and seeds are tiny so the whole file runs in seconds.

mod common;

use common::{TempDir, dmft, failure, numpy_check, stderr};
use ndarray::{Array1, Array2, Array3};
use ndarray_npy::read_npy;
use quick_xml::Reader;
use quick_xml::events::Event;
use serde_json::Value;
use std::fs;
use std::path::Path;

fn summary(dir: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

/// Runs `dmft sweep config.toml --out out --quiet` in a fresh folder and expects success.
fn sweep_ok(config: &str) -> (TempDir, String, String) {
    let dir = TempDir::new();
    dir.write("config.toml", config);
    let out = dmft(&dir.0, &["sweep", "config.toml", "--out", "out", "--quiet"]);
    let err = stderr(&out);
    assert!(out.status.success(), "stderr: {err}");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (dir, stdout, err)
}

/// Expects `dmft sweep` to refuse `config` with exit code 2 and a one-line message
/// containing `expected`, writing nothing.
fn sweep_rejects(config: &str, expected: &str) -> String {
    let dir = TempDir::new();
    dir.write("config.toml", config);
    let line = failure(&dmft(&dir.0, &["sweep", "config.toml", "--out", "out"]), 2);
    assert!(line.contains(expected), "expected {expected:?} in: {line}");
    assert!(
        !dir.path("out").exists(),
        "bad input must not create the output"
    );
    line
}

/// Parses an SVG document completely, failing on malformed XML.
fn assert_svg_parses(path: &Path) {
    let text = fs::read_to_string(path).unwrap();
    let mut reader = Reader::from_str(&text);
    let mut roots = 0;
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) if e.name().as_ref() == b"svg" => roots += 1,
            Ok(Event::Eof) => break,
            Ok(_) => {}
            Err(e) => panic!("{}: malformed XML: {e}", path.display()),
        }
    }
    assert_eq!(roots, 1, "{}: one <svg> root", path.display());
}

const TINY: &str = r#"
[data]
p_train = 4
p_test = 3
dim = 8
[train]
eta = 0.5
steps = 10
record_every = 2
[theory]
sites = 4000
[sim]
widths = [32, 8]
seeds = 8
ensemble_sizes = [1, 2, 4]
"#;

/// With `theory.fluctuations = true` the sweep writes the propagator's N·Var beside the
/// theory, overlays it on figure 2 and compares every width with it in report.md and
/// summary.json.
#[test]
fn sweep_overlays_the_propagator() {
    let config = TINY.replace("sites = 4000", "sites = 4000\nfluctuations = true");
    let (dir, _, _) = sweep_ok(&config);
    let out = dir.path("out");
    for (name, cols) in [("var_f_train", 4), ("var_f_test", 3)] {
        let a: Array2<f64> = read_npy(out.join(format!("theory/{name}.npy"))).unwrap();
        assert_eq!(a.dim(), (6, cols), "{name}");
        assert!(a.iter().all(|v| v.is_finite() && *v > 0.0), "{name}: {a}");
    }
    let figure = fs::read_to_string(out.join("figures/variance.svg")).unwrap();
    assert!(figure.contains("Σ_f (theory)"));
    let report = fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("- N = 8: median |N·Var − Σ_f| / SE = "),
        "{report}"
    );
    let figure = fs::read_to_string(out.join("figures/loss_ntk_variance.svg")).unwrap();
    assert!(figure.contains("propagator (theory)") && figure.contains("top NTK eigenvalue"));
    assert!(
        report.contains("NTK entries and top eigenvalue: median "),
        "{report}"
    );
    let s = summary(&out);
    for w in s["widths"].as_array().unwrap() {
        assert!(w["variance_vs_propagator"]["max_abs_z"].is_f64(), "{w}");
        let loss = &w["loss_variance_vs_propagator"];
        assert_eq!(
            loss["compared"].as_u64().unwrap() + loss["left_out_collapsed"].as_u64().unwrap(),
            6,
            "{w}"
        );
        // 10 upper-triangle entries of the 4 × 4 train NTK and the top eigenvalue, 6 steps.
        assert_eq!(
            w["ntk_variance_vs_propagator"]["compared"]
                .as_u64()
                .unwrap()
                + w["ntk_variance_vs_propagator"]["left_out_collapsed"]
                    .as_u64()
                    .unwrap(),
            66,
            "{w}"
        );
    }
    // solver = "auto" (the default): the variant's generated site recorder ran.
    assert_eq!(
        s["theory"]["propagator_source"], "generated:two-layer-relu",
        "{}",
        s["theory"]
    );
}

/// With `theory.mean_shift = true` the sweep also writes the theory's m, draws it on figure
/// 3 and compares every width against f∞ + m/N (plumbing; the agreement itself is measured
/// in tests/mean_shift.rs and by examples/mean-shift-tanh.toml).
#[test]
fn sweep_compares_the_means_with_the_mean_shift() {
    let config = TINY
        .replace(
            "sites = 4000",
            "sites = 4000\nfluctuations = true\nmean_shift = true",
        )
        .replace("[train]", "[model]\nactivation = \"tanh\"\n[train]");
    let (dir, _, _) = sweep_ok(&config);
    let out = dir.path("out");
    let m: Array2<f64> = read_npy(out.join("theory/mean_shift_f_train.npy")).unwrap();
    assert_eq!(m.dim(), (6, 4));
    assert!(
        m.iter().all(|v| v.is_finite()) && m.iter().any(|v| *v != 0.0),
        "{m}"
    );
    let figure = fs::read_to_string(out.join("figures/mean_deviation.svg")).unwrap();
    assert!(figure.contains("m (theory)"));
    let report = fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("against f∞ + m/N"), "{report}");
    for w in summary(&out)["widths"].as_array().unwrap() {
        assert!(
            w["deviation_from_theory"]["max_z_against_mean_shift"].is_f64(),
            "{w}"
        );
    }
}

/// A deep linear μP network, L = 2, γ₀ = 1.5 (P = 3, Q = 1, T = 6, every step recorded),
/// 1000 networks of width 512.
const DEEP_LINEAR: &str = r#"
[data]
p_train = 3
p_test = 1
dim = 8
teacher = "linear"
seed = 4
[model]
depth = 2
activation = "linear"
gamma0 = 1.5
[train]
eta = 0.5
steps = 6
record_every = 1
[theory]
fluctuations = true
[sim]
widths = [512]
seeds = 1000
"#;

/// The independent check of the deep linear propagator through the CLI: N·Var over 1000
/// real networks of width 512 (dmft-sim) against the Σ_f that `dmft sweep` computes, at
/// every step and point (the sweep leaves out entries below 1 % of their point's peak, where
/// both are ≈ 0). With 1000 seeds the SE of a variance is ≈ √(2/999) = 4.5 % of it, so a Σ_f
/// off by 20 % anywhere fails the bound of 4 SE; 4 SE over 27 entries leaves room for the
/// largest of 27 draws and the O(1/N) late excess of fitted train points (≈ 1–2 SE here,
/// docs/fluctuations.md). Measured: largest 1.38 SE, median 0.34, largest relative 9.8 %;
/// ≈ 20 s. The 2000-seed runtime tests (tests/fluctuations.rs) cover γ₀ = 0.5 and 0.01.
#[test]
fn deep_linear_propagator_matches_the_ensemble() {
    let (dir, _, _) = sweep_ok(DEEP_LINEAR);
    let out = dir.path("out");
    for (name, cols) in [("var_f_train", 3), ("var_f_test", 1), ("var_loss", 0)] {
        let a: ndarray::ArrayD<f64> = read_npy(out.join(format!("theory/{name}.npy"))).unwrap();
        let shape: Vec<usize> = if cols > 0 { vec![7, cols] } else { vec![7] };
        assert_eq!(a.shape(), shape, "{name}");
    }
    let var_ntk: ndarray::ArrayD<f64> = read_npy(out.join("theory/var_ntk.npy")).unwrap();
    assert_eq!(var_ntk.shape(), [7, 3, 3]);
    let s = summary(&out);
    let v = &s["widths"][0]["variance_vs_propagator"];
    let compared = v["compared"].as_u64().unwrap();
    let (largest, median) = (
        v["max_abs_z"].as_f64().unwrap(),
        v["median_abs_z"].as_f64().unwrap(),
    );
    println!(
        "N = 512, 1000 seeds: |N·Var − Σ_f| / SE largest {largest:.2}, median {median:.2} over {compared} entries"
    );
    assert!(compared >= 25, "{v}");
    assert!(largest <= 4.0 && median <= 1.5, "{v}");
    let report = fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("- N = 512: median |N·Var − Σ_f| / SE = "));
    // The loss and the NTK of the same seeds against the deep linear propagator's.
    for key in ["loss_variance_vs_propagator", "ntk_variance_vs_propagator"] {
        let v = &s["widths"][0][key];
        let largest = v["max_abs_z"].as_f64().unwrap();
        println!(
            "N = 512, 1000 seeds, {key}: largest |z| {largest:.2}, median {:.2} over {} entries",
            v["median_abs_z"].as_f64().unwrap(),
            v["compared"]
        );
        assert!(largest <= 4.0, "{key}: {v}");
    }
}

/// The size guard of the deep linear propagator holds for the sweep too, before any
/// network is trained.
#[test]
fn sweep_refuses_a_deep_linear_propagator_above_its_limit() {
    sweep_rejects(
        &DEEP_LINEAR.replace("steps = 6", "steps = 40"),
        "theory.fluctuations at model.depth = 2 uses the dense deep linear propagator",
    );
}

#[test]
fn sweep_writes_the_whole_contract() {
    let (dir, stdout, err) = sweep_ok(TINY);
    assert!(
        err.is_empty(),
        "nothing on stderr without a terminal: {err}"
    );
    assert!(stdout.contains("N = 8: 8/8 seeds"), "{stdout}");
    assert!(stdout.contains("report in out/report.md"), "{stdout}");
    let out = dir.path("out");
    let (t, p, q, e) = (6, 4, 3, 3);
    for width in [8, 32] {
        let w = out.join(format!("sim/N{width}"));
        let vectors = [
            "t",
            "loss_mean",
            "loss_var",
            "test_loss_mean",
            "test_loss_var",
            "ntk_top_mean",
            "ntk_top_var",
        ];
        for name in vectors {
            let a: Array1<f64> = read_npy(w.join(format!("{name}.npy"))).unwrap();
            assert_eq!(a.len(), t, "{name}");
        }
        for (name, cols) in [
            ("f_train_mean", p),
            ("f_train_var", p),
            ("f_test_mean", q),
            ("f_test_var", q),
        ] {
            let a: Array2<f64> = read_npy(w.join(format!("{name}.npy"))).unwrap();
            assert_eq!(a.dim(), (t, cols), "{name}");
        }
        for (name, dim) in [
            ("ntk_mean", (t, p, p)),
            ("ntk_var", (t, p, p)),
            ("ensemble_loss", (e, t, 2)),
            ("ensemble_test_loss", (e, t, 2)),
        ] {
            let a: Array3<f64> = read_npy(w.join(format!("{name}.npy"))).unwrap();
            assert_eq!(a.dim(), dim, "{name}");
        }
        // E = 1 averages nothing: its loss is the single networks' mean loss.
        let ens: Array3<f64> = read_npy(w.join("ensemble_loss.npy")).unwrap();
        let loss: Array1<f64> = read_npy(w.join("loss_mean.npy")).unwrap();
        for k in 0..t {
            assert!((ens[[0, k, 0]] - loss[k]).abs() <= 1e-12 * loss[k].abs().max(1.0));
        }
    }
    for name in [
        "t",
        "f_train",
        "f_test",
        "loss",
        "ntk",
        "test_loss",
        "loss_se",
    ] {
        assert!(
            out.join(format!("theory/{name}.npy")).is_file(),
            "theory/{name}"
        );
    }

    let s = summary(&out);
    assert_eq!(s["command"], "sweep");
    assert_eq!(s["config"]["sim"]["seeds"], 8);
    assert_eq!(s["sizes"]["recorded_steps"], t);
    assert_eq!(s["theory"]["solver"], "two-layer");
    // `auto` with a catalogued variant runs its generated solver, and says so.
    let source = s["theory"]["solver_source"].as_str().unwrap();
    assert!(source.starts_with("generated:two-layer"), "{source}");
    let widths = s["widths"].as_array().unwrap();
    assert_eq!(widths.len(), 2);
    assert_eq!(
        widths[0]["width"], 8,
        "widths are reported in increasing order"
    );
    for w in widths {
        assert_eq!(w["converged"], 8);
        assert_eq!(w["diverged"].as_array().unwrap().len(), 0);
        assert!(w["wall_time_seconds"].is_f64());
        assert_eq!(w["ensemble_sizes"], serde_json::json!([1, 2, 4]));
        assert!(w["deviation_from_theory"]["max_z"].is_f64());
    }
    for file in s["files"].as_array().unwrap() {
        let file = file.as_str().unwrap();
        assert!(out.join(file).is_file(), "listed but missing: {file}");
    }

    // report.md links only figures that exist, and every figure is well-formed SVG.
    let report = fs::read_to_string(out.join("report.md")).unwrap();
    let links: Vec<&str> = report
        .split("](")
        .skip(1)
        .map(|rest| rest.split(')').next().unwrap())
        .collect();
    assert_eq!(links.len(), 5, "{links:?}");
    for link in &links {
        assert!(out.join(link).is_file(), "report.md links missing {link}");
    }
    let mut svgs = 0;
    for entry in fs::read_dir(out.join("figures")).unwrap() {
        assert_svg_parses(&entry.unwrap().path());
        svgs += 1;
    }
    assert_eq!(svgs, 5);
    for text in [
        "propagator Σ_f) is drawn when `theory.fluctuations = true`",
        "Diverged seeds: none",
        "max |N·(E f_N − f∞)|",
    ] {
        assert!(report.contains(text), "report.md lacks {text:?}");
    }

    let script = r#"
import sys, os, json
import numpy as np
d = sys.argv[1]
s = json.load(open(os.path.join(d, "summary.json")))
T, P, Q = s["sizes"]["recorded_steps"], s["sizes"]["p_train"], s["sizes"]["p_test"]
E = len(s["config"]["sim"]["ensemble_sizes"])
shapes = {"t": (T,), "f_train_mean": (T, P), "f_train_var": (T, P), "f_test_mean": (T, Q),
          "f_test_var": (T, Q), "loss_mean": (T,), "loss_var": (T,), "ntk_mean": (T, P, P),
          "ntk_var": (T, P, P), "ntk_top_mean": (T,), "ntk_top_var": (T,),
          "test_loss_mean": (T,), "test_loss_var": (T,),
          "ensemble_loss": (E, T, 2), "ensemble_test_loss": (E, T, 2)}
for w in s["widths"]:
    folder = os.path.join(d, w["folder"])
    assert sorted(f[:-4] for f in os.listdir(folder)) == sorted(shapes), os.listdir(folder)
    for name, shape in shapes.items():
        a = np.load(os.path.join(folder, name + ".npy"))
        assert a.shape == shape and a.dtype == np.float64 and np.isfinite(a).all(), name
    assert (np.load(os.path.join(folder, "f_train_var.npy")) >= 0).all()
print("ok")
"#;
    if let Some(stdout) = numpy_check(script, &out) {
        assert_eq!(stdout.trim(), "ok");
    }
}

const CONSISTENCY: &str = r#"
[data]
p_train = 4
p_test = 2
dim = 8
seed = 3
[model]
gamma0 = 1.0
centered = true
[train]
eta = 1.0
steps = 20
record_every = 4
[theory]
solver = "two-layer"
sites = 200000
seed = 5
[sim]
widths = [64, 1024]
seeds = 256
ensemble_sizes = []
"#;

/// Worst |E f_N − f| / (5·combined SE + 4/N) over every recorded step and point of the
/// width-N folder against a theory folder; ≤ 1 means agreement within the tolerance.
fn worst_ratio(width_dir: &Path, theory_dir: &Path, width: f64, seeds: f64) -> f64 {
    let mut worst: f64 = 0.0;
    for set in ["train", "test"] {
        let mean: Array2<f64> = read_npy(width_dir.join(format!("f_{set}_mean.npy"))).unwrap();
        let var: Array2<f64> = read_npy(width_dir.join(format!("f_{set}_var.npy"))).unwrap();
        let f: Array2<f64> = read_npy(theory_dir.join(format!("f_{set}.npy"))).unwrap();
        let se: Array2<f64> = read_npy(theory_dir.join(format!("f_{set}_se.npy"))).unwrap();
        for (((m, v), f), s) in mean.iter().zip(&var).zip(&f).zip(&se) {
            let tol = 5.0 * (v / seeds + s * s).sqrt() + 4.0 / width;
            worst = worst.max((m - f).abs() / tol);
        }
    }
    worst
}

/// The seed-mean of 256 networks of width 1024 agrees with the infinite-width solution
/// within 5 combined standard errors plus the O(1/N) allowance 4/N (measured: 0.6 of the
/// tolerance at worst); the same check against the theory at a feature strength γ₀ 10 %
/// lower fails by a factor of 4, so the tolerance is tight enough to see feature learning.
#[test]
fn widest_width_matches_the_theory() {
    let (dir, _, _) = sweep_ok(CONSISTENCY);
    let out = dir.path("out");
    let widest = worst_ratio(&out.join("sim/N1024"), &out.join("theory"), 1024.0, 256.0);
    println!("width 1024: worst |sim − theory| / tolerance = {widest:.2}");
    assert!(
        widest <= 1.0,
        "width 1024 misses the theory: ratio {widest}"
    );

    dir.write(
        "weaker.toml",
        &CONSISTENCY.replace("gamma0 = 1.0", "gamma0 = 0.9"),
    );
    let run = dmft(
        &dir.0,
        &["run", "weaker.toml", "--out", "weaker", "--quiet"],
    );
    assert!(run.status.success(), "{}", stderr(&run));
    let wrong = worst_ratio(
        &out.join("sim/N1024"),
        &dir.path("weaker/theory"),
        1024.0,
        256.0,
    );
    println!("against γ₀ = 0.9: worst ratio {wrong:.2}");
    assert!(
        wrong > 2.0,
        "the check cannot tell γ₀ = 1 from 0.9: ratio {wrong}"
    );
}

#[test]
fn bad_sim_values_are_refused_by_name() {
    sweep_rejects(
        "[sim]\nwidths = [64, 0]\n",
        "sim.widths[1] must be ≥ 1, got 0",
    );
    sweep_rejects(
        "[sim]\nwidths = []\n",
        "sim.widths must be a non-empty list",
    );
    sweep_rejects(
        "[sim]\nwidths = 64\n",
        "sim.widths must be a list of integers",
    );
    sweep_rejects("[sim]\nseeds = 1\n", "sim.seeds must be ≥ 2, got 1");
    sweep_rejects(
        "[sim]\nseeds = 10\nensemble_sizes = [1, 6]\n",
        "sim.ensemble_sizes contains 6, more than sim.seeds/2 = 5",
    );
    sweep_rejects(
        "[sim]\nwidht = [64]\n",
        "unknown key \"widht\" in [sim] (did you mean \"widths\"?)",
    );
    sweep_rejects(
        "[sim]\ntraining = \"adam\"\n",
        "unknown sim.training \"adam\"; expected one of \"gd\", \"online-sgd\"",
    );
    sweep_rejects(
        "[sim]\nbatch = 8\n",
        "sim.batch applies only to sim.training = \"online-sgd\"",
    );
    sweep_rejects(
        "[data]\nkind = \"npz\"\npath = \"d.npz\"\n[sim]\ntraining = \"online-sgd\"\ntheory = false\n",
        "sim.training = \"online-sgd\" needs data.kind = \"gaussian\"",
    );
    sweep_rejects(
        "[sim]\ntraining = \"online-sgd\"\n",
        "needs sim.theory = false",
    );
    sweep_rejects(
        "[sim]\nmemory_gib = 0\n",
        "sim.memory_gib must be > 0, got 0",
    );
}

/// The estimate is computed before anything runs, and the refusal quotes it.
#[test]
fn memory_budget_is_checked_with_the_estimate() {
    let line = sweep_rejects(
        "[model]\ndepth = 2\n[sim]\nwidths = [100000]\nmemory_gib = 0.5\n",
        "the sweep needs an estimated",
    );
    assert!(
        line.contains("GiB") && line.contains("bytes") && line.contains("sim.memory_gib = 0.5"),
        "{line}"
    );
    let gib: f64 = line
        .split("an estimated ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no estimate in: {line}"));
    assert!(gib > 0.5, "{line}");
}

#[test]
fn missing_data_file_is_bad_input() {
    let line = sweep_rejects(
        "[data]\nkind = \"npz\"\npath = \"absent.npz\"\n",
        "absent.npz: cannot open",
    );
    // The path is resolved against the config's folder, and shown resolved.
    assert!(
        line.starts_with("error: ./absent.npz: cannot open"),
        "{line}"
    );
}

/// Every seed diverging is a failed run (exit 1) that names the width and a diverged seed.
#[test]
fn all_seeds_diverging_fails_the_run() {
    let dir = TempDir::new();
    dir.write(
        "config.toml",
        "[train]\neta = 1000.0\nsteps = 20\n[sim]\nwidths = [16]\nseeds = 4\nensemble_sizes = [1]\ntheory = false\n",
    );
    let line = failure(&dmft(&dir.0, &["sweep", "config.toml", "--out", "out"]), 1);
    assert!(
        line.contains("only 0 of 4 seeds converged at width 16") && line.contains("at step"),
        "{line}"
    );
    assert!(!dir.path("out").exists());
}

/// Near the edge of stability narrow networks diverge for some seeds only: those are
/// reported (stderr and summary.json) and left out, and the sweep still succeeds.
#[test]
fn diverged_seeds_are_reported_and_the_rest_kept() {
    let (dir, _, err) = sweep_ok(
        "[data]\np_train = 4\np_test = 2\ndim = 8\n[train]\neta = 3.0\nsteps = 40\nrecord_every = 10\n\
         [sim]\nwidths = [4]\nseeds = 16\nensemble_sizes = [1, 4]\ntheory = false\n",
    );
    let s = summary(&dir.path("out"));
    let w = &s["widths"][0];
    let diverged = w["diverged"].as_array().unwrap();
    assert!(!diverged.is_empty() && diverged.len() < 16, "{w}");
    assert_eq!(
        w["converged"].as_u64().unwrap() as usize,
        16 - diverged.len()
    );
    assert!(err.starts_with("warning: N = 4:"), "{err}");
    for d in diverged {
        let text = format!("seed {} at step {}", d["seed"], d["step"]);
        assert!(err.contains(&text), "stderr lacks {text}: {err}");
    }
    let report = fs::read_to_string(dir.path("out/report.md")).unwrap();
    assert!(report.contains("Diverged seeds (stopped"), "{report}");
}

/// The shipped digits work from any working directory (the test runs in a scratch folder):
/// with a centered network f = 0 at t = 0, so the initial losses are ½·mean(y²), which is
/// exactly ½ for ±1 targets.
#[test]
fn digits_give_a_plus_minus_one_task_of_the_requested_size() {
    let (dir, _, _) = sweep_ok(
        "[data]\nkind = \"digits\"\nclasses = [1, 7]\nn_train = 12\nn_test = 5\nseed = 2\n\
         [model]\ncentered = true\n[train]\nsteps = 2\n\
         [sim]\nwidths = [16]\nseeds = 2\nensemble_sizes = [1]\ntheory = false\n",
    );
    let out = dir.path("out");
    let s = summary(&out);
    assert_eq!(
        (
            &s["sizes"]["p_train"],
            &s["sizes"]["p_test"],
            &s["sizes"]["dim"]
        ),
        (
            &serde_json::json!(12),
            &serde_json::json!(5),
            &serde_json::json!(64)
        )
    );
    assert_eq!(s["config"]["data"]["classes"], serde_json::json!([1, 7]));
    for name in ["loss_mean", "test_loss_mean"] {
        let loss: Array1<f64> = read_npy(out.join(format!("sim/N16/{name}.npy"))).unwrap();
        assert_eq!(loss[0], 0.5, "{name}");
    }

    // `dmft run` takes the same data (theory only), here one digit against the rest.
    dir.write(
        "run.toml",
        "[data]\nkind = \"digits\"\none_vs_rest = 0\nn_train = 30\nn_test = 10\n\
         [model]\ncentered = true\n[train]\nsteps = 2\n[theory]\nsites = 1000\n",
    );
    let run = dmft(&dir.0, &["run", "run.toml", "--out", "run", "--quiet"]);
    assert!(run.status.success(), "{}", stderr(&run));
    let s = summary(&dir.path("run"));
    assert_eq!(s["initial"]["train_loss"], 0.5);
    assert_eq!(s["initial"]["test_loss"], 0.5);
    assert_eq!(
        (
            s["sizes"]["p_train"].as_u64(),
            s["sizes"]["p_test"].as_u64()
        ),
        (Some(30), Some(10))
    );
    assert_eq!(s["config"]["data"]["one_vs_rest"], 0);
    assert!(
        s["config"]["data"]["classes"].is_null(),
        "no default pair is echoed"
    );
}

#[test]
fn bad_digits_values_are_refused_by_name() {
    sweep_rejects(
        "[data]\nkind = \"digits\"\nclasses = [3, 3]\n",
        "data.classes must be two different digits 0–9 such as [3, 8], got [3, 3]",
    );
    sweep_rejects(
        "[data]\nkind = \"digits\"\none_vs_rest = 10\n",
        "data.one_vs_rest must be a digit 0–9, got 10",
    );
    sweep_rejects(
        "[data]\nkind = \"digits\"\nclasses = [1, 2]\none_vs_rest = 3\n",
        "data.classes and data.one_vs_rest exclude each other",
    );
    sweep_rejects(
        "[data]\nkind = \"digits\"\nn_train = 300\nn_test = 100\n",
        "data.n_train + data.n_test = 400 exceeds the 357 images of digits 3 and 8",
    );
    sweep_rejects(
        "[data]\nkind = \"digits\"\np_train = 10\n",
        "data.p_train applies only to data.kind = \"gaussian\"; with \"digits\" use data.n_train",
    );
}

/// Online SGD on the Gaussian teacher: fresh batches each step, statistics on the fixed
/// points, no theory.
#[test]
fn online_sgd_sweep_writes_the_sim_results() {
    let (dir, _, _) = sweep_ok(
        "[data]\np_train = 6\np_test = 2\ndim = 8\n[train]\neta = 0.5\nsteps = 30\nrecord_every = 10\n\
         [sim]\nwidths = [32]\nseeds = 4\nensemble_sizes = [2]\ntheory = false\n\
         training = \"online-sgd\"\nbatch = 4\n",
    );
    let out = dir.path("out");
    let loss: Array1<f64> = read_npy(out.join("sim/N32/loss_mean.npy")).unwrap();
    assert_eq!(loss.len(), 4);
    assert!(
        loss[3] < 0.5 * loss[0],
        "online SGD learns the teacher: {loss}"
    );
    assert!(!out.join("theory").exists());
    let report = fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("online SGD")
            && report.contains("Not drawn: it needs the infinite-width theory")
    );
}
