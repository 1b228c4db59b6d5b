//! The `dmft` binary end to end: one-line errors and exit codes for bad input, and the
//! results contract of good runs (these need the runtime's solvers).

mod common;

use common::{TempDir, dmft, failure, numpy_check, stderr};
use ndarray::{Array1, Array2};
use ndarray_npy::NpzWriter;
use std::fs;

/// Runs `dmft run config.toml --out out` on `config` and expects a bad-input failure whose
/// message contains `expected`. Nothing may be written.
fn rejects(config: &str, expected: &str) -> String {
    let dir = TempDir::new();
    dir.write("config.toml", config);
    let out = dmft(&dir.0, &["run", "config.toml", "--out", "out"]);
    let line = failure(&out, 2);
    assert!(line.contains(expected), "expected {expected:?} in: {line}");
    assert!(
        !dir.path("out").exists(),
        "bad input must not create the output"
    );
    line
}

#[test]
fn error_names_the_file_and_key() {
    let line = rejects("[model]\ndepth = 0\n", "model.depth");
    assert_eq!(line, "error: config.toml: model.depth must be ≥ 1, got 0");
}

#[test]
fn unknown_key_is_named_with_its_table() {
    rejects("[model]\ndepht = 2\n", "unknown key \"depht\" in [model]");
    rejects("[modle]\ndepth = 2\n", "unknown table [modle]");
    rejects("seed = 3\n", "unknown key \"seed\" at the top level");
}

#[test]
fn unknown_activation() {
    rejects(
        "[model]\nactivation = \"sigmoid\"\n",
        "unknown model.activation \"sigmoid\"; expected one of",
    );
}

#[test]
fn non_positive_sizes() {
    for (config, message) in [
        ("[data]\np_train = 0", "data.p_train must be ≥ 1, got 0"),
        ("[data]\ndim = 0", "data.dim must be ≥ 1, got 0"),
        ("[data]\np_test = -1", "data.p_test must be ≥ 0, got -1"),
        ("[train]\nsteps = 0", "train.steps must be ≥ 1, got 0"),
        (
            "[train]\nrecord_every = 0",
            "train.record_every must be ≥ 1, got 0",
        ),
        ("[theory]\nsites = 0", "theory.sites must be ≥ 1, got 0"),
        ("[theory]\nseed = -5", "theory.seed must be ≥ 0, got -5"),
    ] {
        rejects(config, message);
    }
}

#[test]
fn bad_learning_rate_and_gamma0() {
    for (config, message) in [
        ("[train]\neta = 0", "train.eta must be > 0, got 0"),
        (
            "[train]\neta = -0.5",
            "train.eta must be a finite number > 0, got -0.5",
        ),
        (
            "[train]\neta = inf",
            "train.eta must be a finite number > 0, got inf",
        ),
        (
            "[train]\neta = nan",
            "train.eta must be a finite number > 0, got NaN",
        ),
        (
            "[train]\neta = \"fast\"",
            "train.eta must be a number > 0, got \"fast\"",
        ),
        (
            "[model]\ngamma0 = 0.0",
            "model.gamma0 must be a finite number > 0, got 0",
        ),
        ("[model]\ngamma0 = -1", "model.gamma0 must be > 0, got -1"),
    ] {
        rejects(config, message);
    }
}

#[test]
fn solver_model_mismatches() {
    rejects(
        "[model]\ndepth = 2\n[theory]\nsolver = \"two-layer\"\n",
        "theory.solver = \"two-layer\" needs model.depth = 1, got 2",
    );
    rejects(
        "[model]\nactivation = \"tanh\"\n[theory]\nsolver = \"deep-linear\"\n",
        "theory.solver = \"deep-linear\" needs model.activation = \"linear\", got \"tanh\"",
    );
    rejects(
        "[theory]\nsolver = \"fastest\"\n",
        "unknown theory.solver \"fastest\"",
    );
}

#[test]
fn wrong_types_and_syntax() {
    rejects(
        "[model]\ndepth = \"two\"\n",
        "model.depth must be an integer ≥ 1, got \"two\"",
    );
    rejects(
        "[model]\ncentered = 1\n",
        "model.centered must be true or false, got 1",
    );
    rejects("[model]\ndepth = 1\ndepth = 2\n", "invalid TOML at line 3");
    rejects("[train\n", "invalid TOML at line 1");
    rejects("model = 1\n", "[model] must be a table");
}

#[test]
fn oversized_task_is_refused_before_allocating() {
    rejects(
        "[data]\np_train = 100000000\ndim = 100000\n",
        "the limit is",
    );
}

#[test]
fn npz_problems_name_the_file() {
    rejects(
        "[data]\nkind = \"npz\"\n",
        "data.path is required when data.kind = \"npz\"",
    );
    rejects(
        "[data]\nkind = \"npz\"\npath = \"d.npz\"\np_train = 3\n",
        "data.p_train applies only",
    );
    rejects(
        "[data]\npath = \"d.npz\"\n",
        "data.path applies only to data.kind = \"npz\"",
    );

    // The path is relative to the config's folder, and the message shows the resolved path.
    let dir = TempDir::new();
    dir.write(
        "cfg/config.toml",
        "[data]\nkind = \"npz\"\npath = \"missing.npz\"\n",
    );
    let line = failure(
        &dmft(&dir.0, &["run", "cfg/config.toml", "--out", "out"]),
        2,
    );
    assert!(
        line.starts_with("error: cfg/missing.npz: cannot open"),
        "{line}"
    );

    dir.write("cfg/text.npz", "not a zip archive\n");
    dir.write(
        "cfg/bad.toml",
        "[data]\nkind = \"npz\"\npath = \"text.npz\"\n",
    );
    let line = failure(&dmft(&dir.0, &["run", "cfg/bad.toml", "--out", "out"]), 2);
    assert!(
        line.starts_with("error: cfg/text.npz: not a NumPy .npz archive"),
        "{line}"
    );

    let mut npz = NpzWriter::new(fs::File::create(dir.path("cfg/partial.npz")).unwrap());
    npz.add_array("x_train", &Array2::<f64>::ones((3, 2)))
        .unwrap();
    npz.add_array("y_train", &Array1::<f64>::ones(4)).unwrap();
    npz.add_array("x_test", &Array2::<f64>::ones((1, 2)))
        .unwrap();
    npz.finish().unwrap();
    dir.write(
        "cfg/partial.toml",
        "[data]\nkind = \"npz\"\npath = \"partial.npz\"\n",
    );
    let line = failure(
        &dmft(&dir.0, &["run", "cfg/partial.toml", "--out", "out"]),
        2,
    );
    assert!(
        line.contains("cfg/partial.npz: array \"y_train\" must be 1-dimensional with 3 entries"),
        "{line}"
    );
    assert!(!dir.path("out").exists());
}

#[test]
fn missing_config_file() {
    let dir = TempDir::new();
    let line = failure(&dmft(&dir.0, &["run", "absent.toml", "--out", "out"]), 2);
    assert!(
        line.starts_with("error: absent.toml: cannot read the config"),
        "{line}"
    );
}

#[test]
fn refuses_to_replace_a_folder_that_is_not_a_result() {
    let dir = TempDir::new();
    dir.write("config.toml", "");
    dir.write("out/notes.txt", "keep me");
    let line = failure(&dmft(&dir.0, &["run", "config.toml", "--out", "out"]), 2);
    assert!(
        line.contains("out: exists and is not a dmft result folder"),
        "{line}"
    );
    assert_eq!(
        fs::read_to_string(dir.path("out/notes.txt")).unwrap(),
        "keep me"
    );
}

/// A small two-layer Monte Carlo config: fast, and it exercises the standard-error files.
const SMALL: &str = r#"
[data]
p_train = 4
p_test = 3
dim = 8
[train]
eta = 0.5
steps = 20
record_every = 5
[theory]
solver = "two-layer"
sites = 4000
"#;

/// Needs the runtime's two-layer solver.
#[test]
fn run_writes_results_contract() {
    let dir = TempDir::new();
    dir.write("config.toml", SMALL);
    let out = dmft(&dir.0, &["run", "config.toml", "--out", "res", "--quiet"]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert!(
        stderr(&out).is_empty(),
        "nothing on stderr without a terminal: {}",
        stderr(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("results in res"), "{stdout}");

    let res = dir.path("res");
    for file in [
        "summary.json",
        "theory/t.npy",
        "theory/f_train.npy",
        "theory/f_test.npy",
        "theory/loss.npy",
        "theory/ntk.npy",
        "theory/test_loss.npy",
        "theory/f_train_se.npy",
        "theory/f_test_se.npy",
        "theory/loss_se.npy",
        "plots/loss.svg",
        "plots/predictions.svg",
        "plots/ntk_eigenvalues.svg",
    ] {
        assert!(res.join(file).is_file(), "missing {file}");
    }
    for svg in ["loss", "predictions", "ntk_eigenvalues"] {
        let text = fs::read_to_string(res.join(format!("plots/{svg}.svg"))).unwrap();
        assert!(
            text.starts_with("<?xml") && text.trim_end().ends_with("</svg>"),
            "{svg}.svg"
        );
    }
    let summary: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(res.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["solver"], "two-layer");
    assert_eq!(summary["solver_source"], "reference");
    assert!(summary["method"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(summary["sizes"]["p_train"], 4);
    assert_eq!(summary["sizes"]["p_test"], 3);
    assert_eq!(summary["sizes"]["recorded_steps"], 5);
    assert_eq!(summary["config"]["train"]["steps"], 20);
    assert_eq!(summary["config_file"], "config.toml");
    assert!(summary["final"]["train_loss"].is_f64());
    assert!(summary["final"]["test_loss"].is_f64());
    assert!(summary["wall_time_seconds"].is_f64());
    assert!(summary["monte_carlo"].is_object());

    // A second run replaces the first result, leaving nothing else behind.
    let again = dmft(&dir.0, &["--quiet", "run", "config.toml", "--out", "res"]);
    assert!(again.status.success(), "stderr: {}", stderr(&again));
    let mut names: Vec<String> = fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["config.toml", "res"]);
}

/// `solver = "auto"` runs the generated solver and propagator of the variant and says so;
/// for the same seed its predictions and variances are the reference's to the last bit
/// (the .npy files are equal).
#[test]
fn auto_uses_the_generated_solver_and_records_it() {
    let dir = TempDir::new();
    let small = format!("{SMALL}fluctuations = true\n");
    dir.write("reference.toml", &small);
    dir.write(
        "auto.toml",
        &small.replace(r#"solver = "two-layer""#, r#"solver = "auto""#),
    );
    for name in ["reference", "auto"] {
        let out = dmft(
            &dir.0,
            &["run", &format!("{name}.toml"), "--out", name, "--quiet"],
        );
        assert!(out.status.success(), "stderr: {}", stderr(&out));
    }
    let summary = |name: &str| -> serde_json::Value {
        serde_json::from_str(&fs::read_to_string(dir.path(name).join("summary.json")).unwrap())
            .unwrap()
    };
    assert_eq!(summary("auto")["solver_source"], "generated:two-layer-relu");
    assert_eq!(summary("auto")["solver"], "two-layer");
    assert_eq!(summary("reference")["solver_source"], "reference");
    assert_eq!(
        summary("auto")["fluctuations"]["propagator_source"],
        "generated:two-layer-relu"
    );
    assert_eq!(
        summary("reference")["fluctuations"]["propagator_source"],
        "reference"
    );
    for file in [
        "f_train",
        "f_test",
        "ntk",
        "f_train_se",
        "var_f_train",
        "var_f_test",
        "var_ntk",
        "var_loss",
    ] {
        let read =
            |name: &str| fs::read(dir.path(name).join(format!("theory/{file}.npy"))).unwrap();
        assert!(read("auto") == read("reference"), "{file}.npy differs");
    }
}

/// `[model] readout = "frozen"`: `auto` runs the generated frozen-readout solver, equal to the
/// reference bit for bit for the same seed, and the propagator runs on it; summary.json
/// records the readout and the source.
#[test]
fn frozen_readout_runs_the_generated_solver() {
    let dir = TempDir::new();
    let frozen = SMALL.replace("[theory]", "[model]\nreadout = \"frozen\"\n[theory]");
    dir.write("reference.toml", &frozen);
    dir.write(
        "auto.toml",
        &frozen.replace(
            r#"solver = "two-layer""#,
            "solver = \"auto\"\nfluctuations = true",
        ),
    );
    for name in ["reference", "auto"] {
        let out = dmft(
            &dir.0,
            &["run", &format!("{name}.toml"), "--out", name, "--quiet"],
        );
        assert!(out.status.success(), "stderr: {}", stderr(&out));
    }
    let summary = |name: &str| -> serde_json::Value {
        serde_json::from_str(&fs::read_to_string(dir.path(name).join("summary.json")).unwrap())
            .unwrap()
    };
    assert_eq!(
        summary("auto")["solver_source"],
        "generated:two-layer-relu-frozen-readout"
    );
    assert_eq!(summary("auto")["config"]["model"]["readout"], "frozen");
    assert_eq!(summary("reference")["solver_source"], "reference");
    for file in ["f_train", "f_test", "ntk", "f_train_se"] {
        let read =
            |name: &str| fs::read(dir.path(name).join(format!("theory/{file}.npy"))).unwrap();
        assert!(read("auto") == read("reference"), "{file}.npy differs");
    }
    assert!(dir.path("auto").join("theory/var_f_train.npy").is_file());
    assert_eq!(
        summary("auto")["fluctuations"]["propagator_source"],
        "generated:two-layer-relu-frozen-readout"
    );
    // The frozen readout is two-layer μP only; other models are refused naming the key.
    dir.write(
        "deep.toml",
        &frozen.replace("[model]", "[model]\ndepth = 2\nactivation = \"linear\""),
    );
    let out = dmft(&dir.0, &["run", "deep.toml", "--out", "deep", "--quiet"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("model.readout = \"frozen\""),
        "{}",
        stderr(&out)
    );
}

/// A frozen-readout relu propagator is flagged on stderr exactly when summary.json's
/// `crossing_jump_ratio` exceeds the limit (0.5) past which its crossing kernel is known to
/// miss; the ratio grows with γ₀, so γ₀ = 0.25 is quiet and γ₀ = 4 warns.
#[test]
fn frozen_relu_propagator_warns_where_the_kink_kernel_fails() {
    let dir = TempDir::new();
    for (name, gamma0) in [("quiet", 0.25), ("loud", 4.0)] {
        let config = SMALL.replace(
            "[theory]",
            &format!(
                "[model]\nreadout = \"frozen\"\ngamma0 = {gamma0}\n[theory]\nfluctuations = true"
            ),
        );
        dir.write(&format!("{name}.toml"), &config);
        let out = dmft(
            &dir.0,
            &["run", &format!("{name}.toml"), "--out", name, "--quiet"],
        );
        assert!(out.status.success(), "stderr: {}", stderr(&out));
        let summary: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(dir.path(name).join("summary.json")).unwrap())
                .unwrap();
        let ratio = summary["fluctuations"]["crossing_jump_ratio"]
            .as_f64()
            .unwrap();
        let warned = stderr(&out).contains("relu with a frozen readout");
        assert_eq!(
            warned,
            ratio > 0.5,
            "{name}: ratio {ratio}, stderr: {}",
            stderr(&out)
        );
        assert_eq!(warned, name == "loud", "{name}: ratio {ratio}");
    }
}

/// Needs the runtime's propagator and python3 with numpy (skipped with a notice when numpy
/// is not importable): `[theory] fluctuations = true` with `--width` writes N·Var and the
/// variances at that width, consistently, with the shapes of the contract.
#[test]
fn fluctuations_are_written_with_their_width_conversion() {
    let dir = TempDir::new();
    dir.write(
        "config.toml",
        &format!("{SMALL}fluctuations = true\n[model]\ncentered = true\n"),
    );
    let out = dmft(
        &dir.0,
        &[
            "run",
            "config.toml",
            "--out",
            "res",
            "--width",
            "512",
            "--quiet",
        ],
    );
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("finite width (N·Var"), "{stdout}");
    let res = dir.path("res");
    assert!(res.join("plots/fluctuations.svg").is_file());
    let summary: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(res.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["fluctuations"]["width"], 512);
    assert_eq!(summary["fluctuations"]["propagator"], "two-layer");
    assert_eq!(
        summary["fluctuations"]["observables"],
        serde_json::json!([
            "var_f_train",
            "var_f_test",
            "var_loss",
            "var_ntk",
            "var_ntk_top"
        ])
    );
    assert_eq!(
        summary["fluctuations"]["not_computed"],
        serde_json::json!({})
    );
    let script = r#"
import sys, os
import numpy as np
d = os.path.join(sys.argv[1], "theory")
shapes = {"var_f_train": (5, 4), "var_f_test": (5, 3), "var_loss": (5,), "var_ntk": (5, 4, 4),
          "var_ntk_top": (5,)}
for name, shape in shapes.items():
    a = np.load(os.path.join(d, name + ".npy"))
    b = np.load(os.path.join(d, name + "_N512.npy"))
    assert a.shape == shape and b.shape == shape, (name, a.shape, b.shape)
    assert np.isfinite(a).all() and (a >= 0).all(), name
    assert np.allclose(a / 512, b, rtol=1e-14, atol=0), name
    if name == "var_ntk":
        # The NTK is not centered: it fluctuates from the start.
        assert a.min() > 0 and np.allclose(a, a.transpose(0, 2, 1)), name
        continue
    if name == "var_ntk_top":
        top = np.load(os.path.join(d, "ntk_top.npy"))
        ntk = np.load(os.path.join(d, "ntk.npy"))
        # Different site sets (4000 sites each: ≈ 2 % Monte Carlo error), so 10 % is ≥ 5 SE.
        assert a.min() > 0 and np.allclose(top, np.linalg.eigvalsh(ntk)[:, -1], rtol=0.1), name
        continue
    # Centered model: f − f0 starts at 0 on every width, so its variance does too.
    assert a[0].max() == 0, (name, a[0])
    assert a[1:].min() > 0, (name, a)
print("ok")
"#;
    if let Some(stdout) = numpy_check(script, &res) {
        assert_eq!(stdout.trim(), "ok");
    }
}

/// A deep linear μP network of depth L = 2 (P = 3, Q = 1, T = 6, steps 0, 2, 4, 6 recorded).
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
record_every = 2
[theory]
fluctuations = true
"#;

/// Plumbing check, not a check of the propagator (that is the runtime's tests and the
/// ensemble sweep below): `dmft run` on a deep linear config writes exactly what a direct
/// call of `deep_linear_prediction_fluctuations` on the same problem returns (≤ 1e-12 of the
/// largest entry: the same code on the same inputs), the `--width` files at 1/N of them, no
/// NTK variance files, and a summary.json that says which observables were written.
#[test]
fn deep_linear_fluctuations_are_the_runtime_propagator() {
    deep_linear_plumbing(None);
}

/// The same plumbing for a residual network (model.residual_beta = 0.8, β/√L branches): the
/// joint-site propagator, recorded as "residual-deep-linear", from the generated module of
/// specs/residual-linear-2.toml.
#[test]
fn residual_fluctuations_are_the_runtime_propagator() {
    deep_linear_plumbing(Some(0.8));
}

fn deep_linear_plumbing(residual: Option<f64>) {
    use dmft_runtime::deep_linear_propagator::deep_linear_prediction_fluctuations;
    use dmft_runtime::{Activation, Model, Parameterization, Readout, Schedule};
    use ndarray_npy::read_npy;

    let dir = TempDir::new();
    let config = match residual {
        Some(beta) => {
            DEEP_LINEAR.replace("[model]\n", &format!("[model]\nresidual_beta = {beta}\n"))
        }
        None => DEEP_LINEAR.to_string(),
    };
    let name = if residual.is_some() {
        "residual-deep-linear"
    } else {
        "deep-linear"
    };
    dir.write("config.toml", &config);
    let args = ["run", "config.toml", "--out", "res", "--width", "256"];
    let out = dmft(&dir.0, &[&args[..], &["--quiet"]].concat());
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "finite width (N·Var, width-free, {name} propagator)"
        )),
        "{stdout}"
    );

    let data = dmft_data::GaussianTask {
        p_train: 3,
        p_test: 1,
        dim: 8,
        teacher: dmft_data::Teacher::Linear,
        seed: 4,
    }
    .generate();
    let model = Model {
        depth: 2,
        activation: Activation::Linear,
        parameterization: Parameterization::Mup,
        gamma0: 1.5,
        centered: false,
        residual,
        readout: Readout::Trained,
    };
    let schedule = Schedule {
        eta: 0.5,
        steps: 6,
        record_every: 2,
    };
    let direct =
        deep_linear_prediction_fluctuations(&data.to_problem().unwrap(), &model, &schedule)
            .unwrap();
    let theory = dir.path("res/theory");
    let close = |name: &str, got: ndarray::ArrayViewD<f64>, want: ndarray::ArrayViewD<f64>| {
        assert_eq!(got.shape(), want.shape(), "{name}");
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(scale > 0.0, "{name}: all zero");
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-12 * scale, "{name}: {got} vs {want}");
        }
    };
    for (name, want) in [
        ("var_f_train", direct.var_f_train.view().into_dyn()),
        ("var_f_test", direct.var_f_test.view().into_dyn()),
        ("var_loss", direct.var_loss.view().into_dyn()),
        ("var_ntk", direct.var_ntk.view().into_dyn()),
        ("var_ntk_top", direct.var_ntk_top.view().into_dyn()),
    ] {
        let got: ndarray::ArrayD<f64> = read_npy(theory.join(format!("{name}.npy"))).unwrap();
        close(name, got.view(), want.clone());
        let at_width: ndarray::ArrayD<f64> =
            read_npy(theory.join(format!("{name}_N256.npy"))).unwrap();
        close(name, at_width.view(), (&want / 256.0).view());
    }
    let top: ndarray::ArrayD<f64> = read_npy(theory.join("ntk_top.npy")).unwrap();
    close("ntk_top", top.view(), direct.ntk_top.view().into_dyn());
    assert_eq!(direct.var_f_train.dim(), (4, 3));
    assert_eq!(direct.var_f_test.dim(), (4, 1));
    assert_eq!(direct.var_ntk.dim(), (4, 3, 3));
    let svg = fs::read_to_string(dir.path("res/plots/fluctuations.svg")).unwrap();
    assert!(svg.contains("train 3") && svg.contains("test 1"));

    let summary: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.path("res/summary.json")).unwrap()).unwrap();
    let fl = &summary["fluctuations"];
    assert_eq!(fl["propagator"], name);
    // Under `auto` the residual spec's generated propagator runs (same numbers as the
    // reference: crates/solvers/tests/agreement.rs); the plain chain has none.
    let source = if residual.is_some() {
        "generated:residual-linear-2"
    } else {
        "reference"
    };
    assert_eq!(fl["propagator_source"], source);
    assert_eq!(
        fl["observables"],
        serde_json::json!([
            "var_f_train",
            "var_f_test",
            "var_loss",
            "var_ntk",
            "var_ntk_top"
        ])
    );
    assert_eq!(fl["not_computed"], serde_json::json!({}));
    assert_eq!(fl["width"], 256);
    assert!(
        (fl["final_ntk_top"].as_f64().unwrap() - direct.ntk_top[3]).abs()
            < 1e-12 * direct.ntk_top[3]
    );
    assert!(fl["crossing_jump_ratio"].is_null());
    // Same code, but the test process's other threads can change OpenBLAS's thread count
    // under the direct call (measured: a last-bit difference once in a loaded run), so the
    // summary value is held to the files' 1e-12 rather than to bit equality.
    let summary_var_loss = fl["final_var_loss"].as_f64().unwrap();
    assert!((summary_var_loss - direct.var_loss[3]).abs() <= 1e-12 * direct.var_loss[3].abs());
    let files: Vec<&str> = summary["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(files.contains(&"theory/var_f_test_N256.npy"), "{files:?}");
    assert!(files.contains(&"theory/ntk_top.npy"), "{files:?}");
}

/// The edge-of-stability warning of a deep linear run reads the propagator's top eigenvalue
/// of the infinite-width NTK (the layer kernels' means), checked here against the written
/// trajectory NTK. At η = 2 this task crosses 2P/η = 3 during training (at η = 0.5 it does not: the test above asserts an empty stderr).
#[test]
fn deep_linear_fluctuations_warn_past_the_edge_of_stability() {
    use ndarray_npy::read_npy;
    let dir = TempDir::new();
    dir.write(
        "config.toml",
        &DEEP_LINEAR.replace("eta = 0.5", "eta = 2.0"),
    );
    let out = dmft(&dir.0, &["run", "config.toml", "--out", "res", "--quiet"]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let ntk: ndarray::Array3<f64> = read_npy(dir.path("res/theory/ntk.npy")).unwrap();
    let t: ndarray::Array1<f64> = read_npy(dir.path("res/theory/t.npy")).unwrap();
    let top: Vec<f64> = ntk
        .outer_iter()
        .map(|k| *dmft_runtime::linalg::eigvalsh(k).unwrap().last().unwrap())
        .collect();
    let own: ndarray::Array1<f64> = read_npy(dir.path("res/theory/ntk_top.npy")).unwrap();
    for (a, b) in own.iter().zip(&top) {
        assert!((a - b).abs() < 1e-10 * b.abs(), "{own} vs {top:?}");
    }
    let first = top.iter().position(|&l| l > 3.0).expect("crosses 2P/η");
    let expected = format!(
        "warning: the top NTK eigenvalue {:.3e} exceeds 2P/η = 3.000e0 at t = {}:",
        top[first], t[first]
    );
    assert!(stderr(&out).contains(&expected), "{}", stderr(&out));
}

/// Every network the deep linear propagator does not cover is refused before any work, by
/// a one-line error naming the key; so is a problem above its size limit.
#[test]
fn deep_fluctuations_are_refused_outside_the_deep_linear_propagator() {
    let linear = DEEP_LINEAR.replace("activation = \"linear\"\n", "");
    for (config, key) in [
        (
            linear.replace("[model]\n", "[model]\nactivation = \"relu\"\n"),
            "theory.fluctuations = true at model.depth = 2 needs model.activation = \"linear\"",
        ),
        // Under the NTK parameterization `auto` is the lazy solver, whose form needs centering.
        (
            DEEP_LINEAR.replace("[model]\n", "[model]\nparameterization = \"ntk\"\n"),
            "needs model.centered = true",
        ),
        (
            DEEP_LINEAR
                .replace("[model]\n", "[model]\nresidual_beta = 1.0\n")
                .replace("[theory]\n", "[theory]\nsolver = \"lazy\"\n"),
            "the lazy solver at model.depth = 2 is implemented for plain chains; model.residual_beta",
        ),
        (
            DEEP_LINEAR.replace("[theory]\n", "[theory]\nsolver = \"deep-nonlinear\"\n"),
            "theory.solver must be \"auto\" or \"deep-linear\"",
        ),
        (
            DEEP_LINEAR.replace("[model]\n", "[model]\nreadout = \"frozen\"\n"),
            "model.readout = \"frozen\"",
        ),
    ] {
        rejects(&config, key);
    }
    // 41 steps of P + Q = 5 points: 21 115 + 2 · 205 · 41 + 861 + 205 = 38 991 order
    // parameters, refused before the infinite-width solve.
    let line = rejects(
        &DEEP_LINEAR
            .replace("p_test = 1", "p_test = 2")
            .replace("steps = 6", "steps = 40"),
        "theory.fluctuations at model.depth = 2 uses the dense deep linear propagator",
    );
    for part in [
        "at most 12000",
        "P + Q = 5",
        "T + 1 = 41",
        "give 38991",
        "reduce train.steps",
    ] {
        assert!(line.contains(part), "{part}: {line}");
    }
}

/// Plumbing check of the lazy universal form at depth ≥ 2 (its physics is checked against
/// networks in tests/fluctuations.rs): `dmft run` with the lazy solver on a depth-2 relu chain
/// writes what a direct call of `lazy_prediction_fluctuations` returns (≤ 1e-12 of the
/// largest entry), the same files as the two-layer case, NTK variances included, and a
/// summary naming the "lazy" propagator.
#[test]
fn lazy_deep_fluctuations_are_the_runtime_form() {
    use dmft_runtime::lazy_fluctuations::lazy_prediction_fluctuations;
    use dmft_runtime::{Activation, Model, Parameterization, Readout, Schedule, SolverOptions};
    use ndarray_npy::read_npy;

    let dir = TempDir::new();
    let config = DEEP_LINEAR
        .replace("activation = \"linear\"", "activation = \"relu\"")
        .replace("gamma0 = 1.5", "gamma0 = 0.01\ncentered = true")
        .replace(
            "[theory]\n",
            "[theory]\nsolver = \"lazy\"\nsites = 3000\nseed = 5\n",
        );
    dir.write("config.toml", &config);
    let args = [
        "run",
        "config.toml",
        "--out",
        "res",
        "--width",
        "256",
        "--quiet",
    ];
    let out = dmft(&dir.0, &args);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let data = dmft_data::GaussianTask {
        p_train: 3,
        p_test: 1,
        dim: 8,
        teacher: dmft_data::Teacher::Linear,
        seed: 4,
    }
    .generate();
    let model = Model {
        depth: 2,
        activation: Activation::Relu,
        parameterization: Parameterization::Mup,
        gamma0: 0.01,
        centered: true,
        residual: None,
        readout: Readout::Trained,
    };
    let schedule = Schedule {
        eta: 0.5,
        steps: 6,
        record_every: 2,
    };
    let options = SolverOptions {
        sites: 3000,
        quadrature: 0,
        seed: 5,
    };
    let direct =
        lazy_prediction_fluctuations(&data.to_problem().unwrap(), &model, &schedule, &options)
            .unwrap();
    let theory = dir.path("res/theory");
    for (name, want) in [
        ("var_f_train", direct.var_f_train.view().into_dyn()),
        ("var_f_test", direct.var_f_test.view().into_dyn()),
        ("var_loss", direct.var_loss.view().into_dyn()),
        ("var_ntk", direct.var_ntk.view().into_dyn()),
        ("var_ntk_top", direct.var_ntk_top.view().into_dyn()),
    ] {
        for (file, divisor) in [(name.to_string(), 1.0), (format!("{name}_N256"), 256.0)] {
            let got: ndarray::ArrayD<f64> = read_npy(theory.join(format!("{file}.npy"))).unwrap();
            assert_eq!(got.shape(), want.shape(), "{file}");
            let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            assert!(scale > 0.0, "{file}: all zero");
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w / divisor).abs() <= 1e-12 * scale,
                    "{file}: {g} vs {w}"
                );
            }
        }
    }
    let summary: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.path("res/summary.json")).unwrap()).unwrap();
    let fl = &summary["fluctuations"];
    assert_eq!(fl["propagator"], "lazy");
    assert_eq!(
        fl["observables"],
        serde_json::json!([
            "var_f_train",
            "var_f_test",
            "var_loss",
            "var_ntk",
            "var_ntk_top"
        ])
    );
    assert!(dir.path("res/plots/fluctuations.svg").is_file());
}

#[test]
fn fluctuations_need_centering_in_ntk_and_width_needs_them() {
    rejects(
        "[model]\nparameterization = \"ntk\"\n[theory]\nfluctuations = true\n",
        "needs model.centered = true",
    );
    let dir = TempDir::new();
    dir.write("config.toml", SMALL);
    let line = failure(
        &dmft(
            &dir.0,
            &["run", "config.toml", "--out", "out", "--width", "64"],
        ),
        2,
    );
    assert!(
        line.contains("--width") && line.contains("fluctuations = true"),
        "{line}"
    );
    assert!(!dir.path("out").exists());
}

/// Needs the runtime's lazy solver. An absurd step size must end in a one-line divergence
/// report with exit code 1, and no results folder.
#[test]
fn divergence_is_a_runtime_failure() {
    let dir = TempDir::new();
    dir.write(
        "config.toml",
        "[train]\neta = 1000.0\nsteps = 50\n[theory]\nsolver = \"lazy\"\n",
    );
    let line = failure(&dmft(&dir.0, &["run", "config.toml", "--out", "out"]), 1);
    assert!(line.contains("diverged"), "{line}");
    assert!(!dir.path("out").exists());
}

/// Needs the runtime's two-layer solver, and python3 with numpy (skipped with a notice when
/// numpy is not importable). Loads every written .npy with NumPy and checks its shape.
#[test]
fn written_npy_files_load_in_numpy() {
    let dir = TempDir::new();
    dir.write("config.toml", SMALL);
    let out = dmft(&dir.0, &["run", "config.toml", "--out", "res", "--quiet"]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let script = r#"
import sys, os, json
import numpy as np
d = sys.argv[1]
s = json.load(open(os.path.join(d, "summary.json")))
T, P, Q = s["sizes"]["recorded_steps"], s["sizes"]["p_train"], s["sizes"]["p_test"]
expected = {"t": (T,), "loss": (T,), "test_loss": (T,), "loss_se": (T,), "f_train": (T, P),
            "f_train_se": (T, P), "f_test": (T, Q), "f_test_se": (T, Q), "ntk": (T, P, P)}
written = sorted(f[:-4] for f in os.listdir(os.path.join(d, "theory")))
assert written == sorted(expected), written
for name, shape in expected.items():
    a = np.load(os.path.join(d, "theory", name + ".npy"))
    assert a.shape == shape, (name, a.shape, shape)
    assert a.dtype == np.float64 and np.isfinite(a).all(), name
t = np.load(os.path.join(d, "theory", "t.npy"))
assert np.allclose(t, 0.5 * np.array([0, 5, 10, 15, 20])), t
ntk = np.load(os.path.join(d, "theory", "ntk.npy"))
assert np.allclose(ntk, ntk.transpose(0, 2, 1)), "NTK is symmetric"
print("ok")
"#;
    if let Some(stdout) = numpy_check(script, &dir.path("res")) {
        assert_eq!(stdout.trim(), "ok");
    }
}

/// Needs the runtime's two-layer solver; takes some seconds (three runs of 200 steps with
/// 100000 sites).
#[test]
fn default_experiment_writes_three_runs_and_a_table() {
    let dir = TempDir::new();
    let out = dmft(&dir.0, &["--quiet"]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("gamma0") && stdout.contains("train loss(T)"),
        "{stdout}"
    );
    assert!(stdout.contains("dmft-out/default"), "{stdout}");
    let root = dir.path("dmft-out/default");
    for g in ["0.1", "1", "3"] {
        let run = root.join(format!("gamma0_{g}"));
        assert!(
            run.join("summary.json").is_file(),
            "missing run for gamma0 = {g}"
        );
        assert!(run.join("theory/ntk.npy").is_file());
        let summary: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
        assert_eq!(
            summary["config"]["model"]["gamma0"]
                .as_f64()
                .unwrap()
                .to_string(),
            g
        );
        assert_eq!(summary["sizes"]["p_train"], 8);
    }
    assert!(root.join("loss.svg").is_file());
}

// `dmft derive`: prints the derivation of a spec; bad specs fail with one line naming
// the file and the key, exit code 2.

#[test]
fn derive_prints_named_equations_and_latex() {
    let dir = TempDir::new();
    let spec = dir.write(
        "two.toml",
        "name = \"two-layer-relu\"\ndepth = 1\nactivation = \"relu\"\n",
    );
    let out = dmft(dir.path("").as_path(), &["derive", spec.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("h¹(k) = u¹ + c (Σ_{j<k} Kˣ (Δ(j) ⊙ g¹(j)))"),
        "{text}"
    );
    assert!(text.contains("f(k) = γ₀⁻¹ ⟨z¹(k) ⊙ relu(h¹(k))⟩"), "{text}");
    let file = dir.path("two.tex");
    let out = dmft(
        dir.path("").as_path(),
        &[
            "derive",
            spec.to_str().unwrap(),
            "--latex",
            "--out",
            file.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let tex = std::fs::read_to_string(file).unwrap();
    assert!(tex.contains(r"\begin{equation} % preactivation"), "{tex}");
    assert!(tex.contains(r"\gamma_0^{-1}"), "{tex}");
}

#[test]
fn derive_rejects_bad_specs_naming_the_key() {
    let dir = TempDir::new();
    let cases = [
        (
            "name = \"x\"\ndepth = 2\nactivation = \"relu\"\nwidth = 3\n",
            "width",
        ),
        (
            "name = \"x\"\ndepth = 2\nactivation = \"sigmoid\"\n",
            "sigmoid",
        ),
        ("name = \"x\"\nactivation = \"relu\"\n", "depth"),
        (
            "name = \"x\"\ndepth = 1\nactivation = \"relu\"\ntraining = \"online-sgd\"\n",
            "online-sgd",
        ),
    ];
    for (text, key) in cases {
        let spec = dir.write("bad.toml", text);
        let out = dmft(dir.path("").as_path(), &["derive", spec.to_str().unwrap()]);
        let err = failure(&out, 2);
        assert!(err.contains("bad.toml") && err.contains(key), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}

/// Needs the runtime's propagator. At η = 2.5 on this task the infinite-width two-layer run
/// sharpens its NTK past 2P/η (measured λ_max η/2P up to 1.7): the run completes, and a
/// warning says the O(1/√N) expansion no longer holds there.
#[test]
fn fluctuations_warn_past_the_edge_of_stability() {
    let dir = TempDir::new();
    let config = SMALL.replace("eta = 0.5", "eta = 2.5").replace(
        "record_every = 5",
        "record_every = 5\n[model]\ngamma0 = 1.0",
    );
    dir.write("config.toml", &format!("{config}fluctuations = true\n"));
    let out = dmft(&dir.0, &["run", "config.toml", "--out", "res", "--quiet"]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert!(
        stderr(&out).contains("edge of stability"),
        "{}",
        stderr(&out)
    );
    let calm = TempDir::new();
    calm.write("config.toml", &format!("{SMALL}fluctuations = true\n"));
    let out = dmft(&calm.0, &["run", "config.toml", "--out", "res", "--quiet"]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert!(
        !stderr(&out).contains("edge of stability"),
        "{}",
        stderr(&out)
    );
}

/// A residual linear network (model.residual_beta, β/√L branches) runs with `auto` through
/// the solver generated from specs/residual-linear-3.toml, which summary.json names; its
/// predictions equal the hand-written reference's to the last bit, and differ from the
/// plain chain's.
#[test]
fn residual_network_runs_through_its_generated_solver() {
    let dir = TempDir::new();
    let base = r#"
[data]
p_train = 3
p_test = 2
dim = 8
[model]
depth = 3
activation = "linear"
residual_beta = 1.0
[train]
eta = 0.5
steps = 10
record_every = 5
[theory]
solver = "auto"
"#;
    dir.write("auto.toml", base);
    dir.write(
        "reference.toml",
        &base.replace(r#"solver = "auto""#, r#"solver = "deep-linear""#),
    );
    dir.write("plain.toml", &base.replace("residual_beta = 1.0\n", ""));
    for name in ["auto", "reference", "plain"] {
        let out = dmft(
            &dir.0,
            &["run", &format!("{name}.toml"), "--out", name, "--quiet"],
        );
        assert!(out.status.success(), "{name} stderr: {}", stderr(&out));
    }
    let summary = |name: &str| -> serde_json::Value {
        serde_json::from_str(&fs::read_to_string(dir.path(name).join("summary.json")).unwrap())
            .unwrap()
    };
    assert_eq!(
        summary("auto")["solver_source"],
        "generated:residual-linear-3"
    );
    assert_eq!(summary("auto")["solver"], "deep-linear");
    assert_eq!(summary("reference")["solver_source"], "reference");
    assert_eq!(summary("plain")["solver_source"], "generated:deep-linear-3");
    let read = |name: &str, file: &str| {
        fs::read(dir.path(name).join(format!("theory/{file}.npy"))).unwrap()
    };
    for file in ["f_train", "f_test", "ntk"] {
        assert!(
            read("auto", file) == read("reference", file),
            "{file}.npy differs"
        );
        assert!(
            read("auto", file) != read("plain", file),
            "{file}.npy: the skip has no effect"
        );
    }
    // β must be positive: one line naming the key.
    dir.write(
        "bad.toml",
        &base.replace("residual_beta = 1.0", "residual_beta = 0"),
    );
    let out = dmft(&dir.0, &["run", "bad.toml", "--out", "bad", "--quiet"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("model.residual_beta") && err.trim().lines().count() == 1,
        "{err}"
    );
}

const MEAN_SHIFT: &str = r#"
[data]
p_train = 3
p_test = 1
dim = 8
teacher = "linear"
seed = 4
[model]
activation = "tanh"
gamma0 = 1.5
[train]
eta = 0.5
steps = 6
record_every = 2
[theory]
sites = 20000
seed = 5
fluctuations = true
mean_shift = true
"#;

/// Plumbing check (the shift itself is checked in the runtime's tests and against ensembles in
/// tests/mean_shift.rs): `dmft run` with `theory.mean_shift = true` writes exactly what a
/// direct call of `two_layer_mean_shift` on the same problem and sites returns (≤ 1e-12 of
/// the largest entry), the `--width` files at 1/N of them, the figure, and lists them in
/// summary.json; relu and a missing `theory.fluctuations` are refused naming the key.
#[test]
fn mean_shift_is_the_runtime_expansion() {
    use dmft_runtime::mean_shift::two_layer_mean_shift;
    use dmft_runtime::{Activation, Model, Parameterization, Readout, Schedule, SolverOptions};
    use ndarray_npy::read_npy;

    let dir = TempDir::new();
    dir.write("config.toml", MEAN_SHIFT);
    let args = [
        "run",
        "config.toml",
        "--out",
        "res",
        "--width",
        "256",
        "--quiet",
    ];
    let out = dmft(&dir.0, &args);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("mean shift N(E ℒ_N − ℒ∞) of the train loss at t = 3"),
        "{stdout}"
    );

    let data = dmft_data::GaussianTask {
        p_train: 3,
        p_test: 1,
        dim: 8,
        teacher: dmft_data::Teacher::Linear,
        seed: 4,
    }
    .generate();
    let model = Model {
        depth: 1,
        activation: Activation::Tanh,
        parameterization: Parameterization::Mup,
        gamma0: 1.5,
        centered: false,
        residual: None,
        readout: Readout::Trained,
    };
    let schedule = Schedule {
        eta: 0.5,
        steps: 6,
        record_every: 2,
    };
    let options = SolverOptions {
        sites: 20_000,
        quadrature: 0,
        seed: 5,
    };
    let (fl, direct) = two_layer_mean_shift(
        &data.to_problem().unwrap(),
        &model,
        &schedule,
        &options,
        &|_| {},
    )
    .unwrap();
    let theory = dir.path("res/theory");
    for (name, want) in [
        ("mean_shift_f_train", direct.shift_f_train.view().into_dyn()),
        ("mean_shift_f_test", direct.shift_f_test.view().into_dyn()),
        ("mean_shift_loss", direct.shift_loss.view().into_dyn()),
        (
            "mean_shift_test_loss",
            direct.shift_test_loss.as_ref().unwrap().view().into_dyn(),
        ),
        ("var_f_train", fl.var_f_train.view().into_dyn()),
    ] {
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(scale > 0.0, "{name}: all zero");
        for (suffix, factor) in [("", 1.0), ("_N256", 1.0 / 256.0)] {
            let got: ndarray::ArrayD<f64> =
                read_npy(theory.join(format!("{name}{suffix}.npy"))).unwrap();
            assert_eq!(got.shape(), want.shape(), "{name}{suffix}");
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - factor * w).abs() <= 1e-12 * scale,
                    "{name}{suffix}: {got} vs {want}"
                );
            }
        }
    }
    assert!(dir.path("res/plots/mean_shift.svg").is_file());
    let summary: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.path("res/summary.json")).unwrap()).unwrap();
    let entry = &summary["fluctuations"];
    assert_eq!(entry["propagator_source"], "reference");
    let summary_shift = entry["final_mean_shift_loss"].as_f64().unwrap();
    assert!((summary_shift - direct.shift_loss[3]).abs() <= 1e-12 * direct.shift_loss[3].abs());
    let observables = entry["observables"].as_array().unwrap();
    assert!(
        observables.contains(&serde_json::json!("mean_shift_loss")),
        "{entry}"
    );

    rejects(
        &MEAN_SHIFT.replace("\"tanh\"", "\"relu\""),
        "theory.mean_shift = true needs a smooth model.activation",
    );
    rejects(
        &MEAN_SHIFT.replace("fluctuations = true\n", ""),
        "theory.mean_shift = true needs theory.fluctuations = true",
    );
}

const KERNEL_VARIANCES: &str = r#"
[data]
p_train = 3
p_test = 1
dim = 8
teacher = "linear"
seed = 4
[model]
activation = "relu"
gamma0 = 1.5
[train]
eta = 0.5
steps = 6
record_every = 2
[theory]
sites = 20000
seed = 5
fluctuations = true
kernel_variances = true
"#;

/// Plumbing check (the variances themselves are checked against ensembles in
/// tests/fluctuations.rs): `dmft run` with `theory.kernel_variances = true` writes exactly
/// the kernels and N·Var of a direct propagator call on the same problem and sites (≤ 1e-12
/// of the largest entry), the `--width` variances at 1/N of them, and the final SNR per layer
/// in summary.json; the key without `theory.fluctuations`, in the NTK parameterization, or
/// with the mean shift is refused naming it.
#[test]
fn kernel_variances_are_the_runtime_propagator() {
    use dmft_runtime::propagator::{
        PropagatorOptions, ReferenceSites, two_layer_prediction_fluctuations_observing,
    };
    use dmft_runtime::{Activation, Model, Parameterization, Readout, Schedule, SolverOptions};
    use ndarray_npy::read_npy;

    let dir = TempDir::new();
    dir.write("config.toml", KERNEL_VARIANCES);
    let args = [
        "run",
        "config.toml",
        "--out",
        "res",
        "--width",
        "256",
        "--quiet",
    ];
    let out = dmft(&dir.0, &args);
    assert!(out.status.success(), "stderr: {}", stderr(&out));

    let data = dmft_data::GaussianTask {
        p_train: 3,
        p_test: 1,
        dim: 8,
        teacher: dmft_data::Teacher::Linear,
        seed: 4,
    }
    .generate();
    let model = Model {
        depth: 1,
        activation: Activation::Relu,
        parameterization: Parameterization::Mup,
        gamma0: 1.5,
        centered: false,
        residual: None,
        readout: Readout::Trained,
    };
    let schedule = Schedule {
        eta: 0.5,
        steps: 6,
        record_every: 2,
    };
    let options = SolverOptions {
        sites: 20_000,
        quadrature: 0,
        seed: 5,
    };
    let direct = two_layer_prediction_fluctuations_observing(
        &data.to_problem().unwrap(),
        &model,
        &schedule,
        &options,
        &PropagatorOptions {
            kernel_variances: true,
        },
        &ReferenceSites {
            activation: model.activation,
            readout: model.readout,
        },
        &|_| {},
    )
    .unwrap()
    .kernels
    .unwrap();
    let theory = dir.path("res/theory");
    let compare = |name: &str, want: &ndarray::Array3<f64>, factor: f64| {
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(scale > 0.0, "{name}: all zero");
        let got: ndarray::Array3<f64> = read_npy(theory.join(format!("{name}.npy"))).unwrap();
        assert_eq!(got.shape(), want.shape(), "{name}");
        for (g, w) in got.iter().zip(want) {
            assert!(
                (g - factor * w).abs() <= 1e-12 * scale,
                "{name}: {got} vs {want}"
            );
        }
    };
    assert_eq!(direct.phi_kernel[0].shape(), [4, 4, 4]);
    assert_eq!(direct.grad_kernel[0].shape(), [4, 3, 3]);
    compare("phi_kernel_1", &direct.phi_kernel[0], 1.0);
    compare("grad_kernel_1", &direct.grad_kernel[0], 1.0);
    for name in ["var_phi_kernel", "var_grad_kernel"] {
        let want = if name == "var_phi_kernel" {
            &direct.var_phi_kernel[0]
        } else {
            &direct.var_grad_kernel[0]
        };
        compare(&format!("{name}_1"), want, 1.0);
        compare(&format!("{name}_1_N256"), want, 1.0 / 256.0);
    }
    let summary: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.path("res/summary.json")).unwrap()).unwrap();
    let entry = &summary["fluctuations"];
    assert_eq!(entry["propagator_source"], "reference");
    for (key, want) in [
        ("phi_snr", direct.phi_snr(1, 3)[3]),
        ("grad_snr", direct.grad_snr(1, 3)[3]),
    ] {
        let got = entry[key].as_array().unwrap();
        assert_eq!(got.len(), 1, "{entry}");
        let got = got[0].as_f64().unwrap();
        assert!((got - want).abs() <= 1e-12 * want, "{key}: {got} vs {want}");
    }
    let observables = entry["observables"].as_array().unwrap();
    assert!(
        observables.contains(&serde_json::json!("var_phi_kernel")),
        "{entry}"
    );

    rejects(
        &KERNEL_VARIANCES.replace("fluctuations = true\n", ""),
        "theory.kernel_variances = true needs theory.fluctuations = true",
    );
    rejects(
        &KERNEL_VARIANCES.replace(
            "[model]\n",
            "[model]\nparameterization = \"ntk\"\ncentered = true\n",
        ),
        "theory.kernel_variances = true is implemented for μP networks",
    );
    rejects(
        &KERNEL_VARIANCES.replace("\"relu\"", "\"tanh\"").replace(
            "kernel_variances = true",
            "kernel_variances = true\nmean_shift = true",
        ),
        "theory.kernel_variances = true cannot be combined with theory.mean_shift = true",
    );
}

/// `theory.kernel_variances = true` on a deep linear network writes every layer's kernels and
/// N·Var as the deep linear propagator returns them (≤ 1e-12 of the largest entry), and the
/// final SNR of both layers in summary.json; without the key no kernel file is written.
#[test]
fn deep_linear_kernel_variances_are_the_runtime_propagator() {
    use dmft_runtime::deep_linear_propagator::deep_linear_prediction_fluctuations;
    use dmft_runtime::{Activation, Model, Parameterization, Readout, Schedule};
    use ndarray_npy::read_npy;

    let dir = TempDir::new();
    dir.write(
        "config.toml",
        &DEEP_LINEAR.replace(
            "fluctuations = true",
            "fluctuations = true\nkernel_variances = true",
        ),
    );
    let out = dmft(&dir.0, &["run", "config.toml", "--out", "res", "--quiet"]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let data = dmft_data::GaussianTask {
        p_train: 3,
        p_test: 1,
        dim: 8,
        teacher: dmft_data::Teacher::Linear,
        seed: 4,
    }
    .generate();
    let model = Model {
        depth: 2,
        activation: Activation::Linear,
        parameterization: Parameterization::Mup,
        gamma0: 1.5,
        centered: false,
        residual: None,
        readout: Readout::Trained,
    };
    let schedule = Schedule {
        eta: 0.5,
        steps: 6,
        record_every: 2,
    };
    let direct =
        deep_linear_prediction_fluctuations(&data.to_problem().unwrap(), &model, &schedule)
            .unwrap();
    let kv = &direct.kernels;
    let theory = dir.path("res/theory");
    for layer in 1..=2 {
        for (name, want) in [
            ("phi_kernel", &kv.phi_kernel[layer - 1]),
            ("var_phi_kernel", &kv.var_phi_kernel[layer - 1]),
            ("grad_kernel", &kv.grad_kernel[layer - 1]),
            ("var_grad_kernel", &kv.var_grad_kernel[layer - 1]),
        ] {
            let got: ndarray::Array3<f64> =
                read_npy(theory.join(format!("{name}_{layer}.npy"))).unwrap();
            let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            assert_eq!(got.dim(), want.dim(), "{name}_{layer}");
            assert!(
                got.iter()
                    .zip(want)
                    .all(|(g, w)| (g - w).abs() <= 1e-12 * scale),
                "{name}_{layer}"
            );
        }
    }
    let summary: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.path("res/summary.json")).unwrap()).unwrap();
    let snr = summary["fluctuations"]["phi_snr"].as_array().unwrap();
    assert_eq!(snr.len(), 2);
    for (layer, got) in (1..=2).zip(snr) {
        let want = *kv.phi_snr(layer, 3).last().unwrap();
        assert!(
            (got.as_f64().unwrap() - want).abs() <= 1e-12 * want,
            "layer {layer}"
        );
    }

    let plain = TempDir::new();
    plain.write("config.toml", DEEP_LINEAR);
    let out = dmft(&plain.0, &["run", "config.toml", "--out", "res", "--quiet"]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert!(!plain.path("res/theory/phi_kernel_1.npy").exists());
}
