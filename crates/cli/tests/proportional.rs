//! `dmft run` with `data.kind = "proportional"`: the results folder, and one-line errors for
//! keys and values that do not fit the regime.

mod common;

use common::{TempDir, dmft, failure, numpy_check, stderr};
use ndarray::Array1;
use ndarray_npy::read_npy;

const CONFIG: &str = "[data]\nkind = \"proportional\"\nalpha = 2.0\nnu = 0.5\n\n\
                      [model]\ndepth = 2\nactivation = \"linear\"\ngamma0 = 2.0\n\n\
                      [train]\neta = 0.05\nsteps = 20\nrecord_every = 5\n";

#[test]
fn run_writes_loss_curves_and_summary() {
    let dir = TempDir::new();
    dir.write("p.toml", CONFIG);
    let out = dmft(&dir.0, &["run", "p.toml", "--out", "out", "--quiet"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let t: Array1<f64> = read_npy(dir.path("out/theory/t.npy")).unwrap();
    let train: Array1<f64> = read_npy(dir.path("out/theory/loss.npy")).unwrap();
    let test: Array1<f64> = read_npy(dir.path("out/theory/test_loss.npy")).unwrap();
    assert_eq!(t.to_vec(), vec![0.0, 0.25, 0.5, 0.75, 1.0]);
    // ℒ(0) = ½(1 + 1/(γ²ν)) = 0.75 for γ = 2, ν = 0.5 (docs/proportional.md).
    assert!((test[0] - 0.75).abs() < 1e-12 && (train[0] - 0.75).abs() < 1e-12);
    assert!(train[4] < train[0] && test[4] < test[0]);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path("out/summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["solver"], "proportional");
    assert_eq!(summary["sizes"]["recorded_steps"], 5);
    let echoed = summary["final"]["test_loss"].as_f64().unwrap();
    assert!(
        (echoed - test[4]).abs() <= 1e-15 * test[4],
        "{echoed} vs {}",
        test[4]
    );
    assert!(dir.path("out/plots/loss.svg").exists());
    let script = "import sys, numpy as np; d = sys.argv[1] + '/out/theory/'; \
                  print(np.load(d + 'test_loss.npy').shape, np.load(d + 't.npy')[-1])";
    if let Some(printed) = numpy_check(script, &dir.0) {
        assert_eq!(printed.trim(), "(5,) 1.0");
    }
}

fn rejects(config: &str, expected: &str) {
    let dir = TempDir::new();
    dir.write("p.toml", config);
    let out = dmft(&dir.0, &["run", "p.toml", "--out", "out"]);
    let line = failure(&out, 2);
    assert!(line.contains(expected), "expected {expected:?} in: {line}");
    assert!(!dir.path("out").exists());
}

#[test]
fn bad_proportional_configs_are_one_line_errors() {
    rejects(
        &CONFIG.replace("alpha = 2.0", "alpah = 2.0"),
        "unknown key \"alpah\" in [data]",
    );
    rejects(
        &CONFIG.replace("nu = 0.5", "nu = 0"),
        "data.nu must be > 0, got 0",
    );
    rejects(
        &CONFIG.replace("\"linear\"", "\"relu\""),
        "needs model.activation = \"linear\"",
    );
    rejects(
        &CONFIG.replace("kind = \"proportional\"", "kind = \"gaussian\""),
        "data.alpha applies only to data.kind = \"proportional\"",
    );
    rejects(
        &CONFIG.replace("depth = 2", "depth = 2\nresidual_beta = -1"),
        "model.residual_beta must be > 0, got -1",
    );
    rejects(
        &CONFIG.replace("nu = 0.5", "nu = 0.5\nspectrum_exponent = -0.5"),
        "data.spectrum_exponent must be a finite number ≥ 0",
    );
}

#[test]
fn divergence_names_the_step() {
    let dir = TempDir::new();
    dir.write("p.toml", &CONFIG.replace("eta = 0.05", "eta = 5.0"));
    let out = dmft(&dir.0, &["run", "p.toml", "--out", "out"]);
    let line = failure(&out, 1);
    assert!(line.contains("diverged at step"), "{line}");
}
