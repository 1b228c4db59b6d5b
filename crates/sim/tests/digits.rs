//! The shipped digits file, the ±1 task built from it, and the loader's error messages.

use dmft_sim::Readout;
use dmft_sim::digits::{self, ClassSplit};
use dmft_sim::*;
use ndarray::{Array1, Array2, Axis};
use ndarray_npy::NpzWriter;
use std::fs::File;

#[test]
fn shipped_file_has_all_1797_images() {
    let d = digits::load(digits::shipped_path()).unwrap();
    assert_eq!(d.x.dim(), (1797, 64));
    assert_eq!(d.label.len(), 1797);
    let mut counts = [0usize; 10];
    for &l in &d.label {
        counts[usize::try_from(l).unwrap()] += 1;
    }
    assert!(
        counts.iter().all(|&c| (170..=185).contains(&c)),
        "{counts:?}"
    );
    assert!(d.x.iter().all(|&v| (0.0..=1.0).contains(&v)));
    assert_eq!(d.x.iter().fold(0.0f64, |m, &v| m.max(v)), 1.0);
}

/// The in-memory loader reads the same arrays, and names the given source in errors.
#[test]
fn from_bytes_matches_the_file_loader() {
    let bytes = std::fs::read(digits::shipped_path()).unwrap();
    let from_memory = digits::from_bytes(&bytes, "embedded digits.npz").unwrap();
    assert_eq!(from_memory, digits::load(digits::shipped_path()).unwrap());
    let err = digits::from_bytes(b"not a zip", "embedded digits.npz").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("embedded digits.npz: not a readable"),
        "{err}"
    );
}

/// Targets are ±1, training inputs are centred with mean x·x/D = 1 (to rounding), and the
/// choice of images depends only on the seed.
#[test]
fn binary_task_is_standardized_and_seeded() {
    let d = digits::load(digits::shipped_path()).unwrap();
    let task = digits::binary_task(&d, ClassSplit::Pair(3, 8), 120, 60, 5).unwrap();
    assert_eq!(
        (task.n_train(), task.n_test(), task.input_dim()),
        (120, 60, 64)
    );
    let y = task.y_train();
    assert!(y.iter().all(|&v| v == 1.0 || v == -1.0));
    assert!(y.iter().any(|&v| v == 1.0) && y.iter().any(|&v| v == -1.0));
    let x = task.x_train();
    let mean_norm = x.iter().map(|v| v * v).sum::<f64>() / (120.0 * 64.0);
    assert!((mean_norm - 1.0).abs() < 1e-12, "{mean_norm}");
    let column_means = x.mean_axis(Axis(0)).unwrap();
    assert!(column_means.iter().all(|m| m.abs() < 1e-12));
    let test_norm = task.x_test().iter().map(|v| v * v).sum::<f64>() / (60.0 * 64.0);
    assert!((0.5..2.0).contains(&test_norm), "{test_norm}");
    assert_eq!(
        task,
        digits::binary_task(&d, ClassSplit::Pair(3, 8), 120, 60, 5).unwrap()
    );
    assert_ne!(
        task,
        digits::binary_task(&d, ClassSplit::Pair(3, 8), 120, 60, 6).unwrap()
    );

    let rest = digits::binary_task(&d, ClassSplit::OneVsRest(0), 500, 0, 1).unwrap();
    let positives = rest.y_train().iter().filter(|&&v| v == 1.0).count();
    assert!(
        (25..=75).contains(&positives),
        "{positives} zeros among 500"
    );
    assert!(rest.y_test().is_none());
}

#[test]
fn task_errors_name_the_parameter() {
    let d = digits::load(digits::shipped_path()).unwrap();
    let err = digits::binary_task(&d, ClassSplit::Pair(3, 8), 300, 100, 0).unwrap_err();
    assert!(
        err.to_string()
            .contains("digits.n_train + digits.n_test = 400"),
        "{err}"
    );
    let err = digits::binary_task(&d, ClassSplit::Pair(4, 4), 10, 0, 0).unwrap_err();
    assert!(err.to_string().contains("digits.classes"), "{err}");
    let err = digits::binary_task(&d, ClassSplit::Pair(3, 11), 10, 0, 0).unwrap_err();
    assert!(err.to_string().contains("no image with target −1"), "{err}");
}

#[test]
fn loader_errors_name_the_file_and_the_array() {
    let missing = std::env::temp_dir().join("dmft-sim-no-such-digits.npz");
    let err = digits::load(&missing).unwrap_err();
    assert!(
        err.to_string().contains("dmft-sim-no-such-digits.npz"),
        "{err}"
    );

    let path = std::env::temp_dir().join(format!("dmft-sim-digits-{}.npz", std::process::id()));
    let mut npz = NpzWriter::new(File::create(&path).unwrap());
    npz.add_array("x", &Array2::<f64>::zeros((3, 2))).unwrap();
    npz.add_array("labels", &Array1::<i64>::zeros(3)).unwrap();
    npz.finish().unwrap();
    let err = digits::load(&path).unwrap_err().to_string();
    std::fs::remove_file(&path).unwrap();
    assert!(
        err.contains(&path.display().to_string()) && err.contains("array \"label\""),
        "{err}"
    );
}

/// End to end: a two-layer μP network learns 3-vs-8 from 64 images and generalizes.
#[test]
fn networks_learn_three_versus_eight() {
    let d = digits::load(digits::shipped_path()).unwrap();
    let task = digits::binary_task(&d, ClassSplit::Pair(3, 8), 64, 200, 0).unwrap();
    let arch = Architecture {
        depth: 1,
        width: 128,
        activation: Activation::Relu,
        parameterization: Parameterization::Mup,
        gamma0: 1.0,
        centered: true,
        residual: None,
        readout: Readout::Trained,
    };
    let schedule = Schedule {
        eta: 1.0,
        steps: 200,
        record_every: 200,
    };
    let stats = run_ensemble(&task, &EnsembleConfig::new(arch, schedule, 2)).unwrap();
    let test_loss = &stats.test_loss.unwrap().mean;
    assert!(
        stats.loss.mean[1] < 0.05 * stats.loss.mean[0],
        "train loss {}",
        stats.loss.mean
    );
    assert!(test_loss[1] < 0.5 * test_loss[0], "test loss {test_loss}");
}
