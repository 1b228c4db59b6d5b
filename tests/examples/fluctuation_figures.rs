//! Figures of the finite-width fluctuations (docs/dmft.md), theory lines with ensemble points
//! (N·Var over seeds ± SE):
//! `cargo run --release -p dmft-validation --example fluctuation_figures -- OUT_DIR`
//!
//! 1. lazy universal form: the NTK parameterization (centered), N·Var of test predictions vs t;
//! 2. feature learning reduces the variance: centered two-layer relu in μP at γ₀ = 0.1 .. 2,
//!    mean N·Var over test points vs t;
//! 3. edge of stability: λ_max η/2P of the infinite-width NTK vs t at η below and past the
//!    threshold, and mean N·Var over test points there, theory and ensembles;
//! 4. deep linear kernels across layers (L = 3, γ₀ = 0.25 .. 2, final step): the summed
//!    N·Var of Φ^ℓ on the train points, and its width-free signal-to-noise ratio
//!    ‖Φ^ℓ‖²_F / Σ N·Var Φ^ℓ_μν, theory (deep linear propagator) and ensembles.

#[path = "../common/mod.rs"]
mod common;

use dmft_report::{Figure, Grid};
use dmft_runtime::deep_linear_propagator::deep_linear_prediction_fluctuations;
use dmft_runtime::lazy_fluctuations::lazy_prediction_fluctuations;
use dmft_runtime::propagator::{PredictionFluctuations, two_layer_prediction_fluctuations};
use dmft_runtime::{Activation, Model, Parameterization, Readout, Schedule, SolverOptions};
use dmft_sim::{Architecture, Dataset, EnsembleConfig, run_ensemble};
use ndarray::{Array1, Axis, s};
use std::path::PathBuf;

const WIDTH: usize = 1024;
const SEEDS: usize = 1000;

fn task() -> Dataset {
    common::dataset(4, 3, 16, 5)
}

fn model(parameterization: Parameterization, gamma0: f64, centered: bool) -> Model {
    Model {
        depth: 1,
        activation: Activation::Relu,
        parameterization,
        gamma0,
        centered,
        residual: None,
        readout: Readout::Trained,
    }
}

const OPTIONS: SolverOptions = SolverOptions {
    sites: 200_000,
    quadrature: 0,
    seed: 8,
};

/// Mean over test points of N·Var, theory, and the ensemble's with its SE (test points are
/// averaged as independent estimates, a slight overstatement of the SE's independence).
fn test_mean(fl: &PredictionFluctuations) -> Array1<f64> {
    fl.var_f_test.mean_axis(Axis(1)).unwrap()
}

fn with_ensemble(
    fig: Figure,
    data: &Dataset,
    model: &Model,
    schedule: Schedule,
    fl: &PredictionFluctuations,
    label: &str,
    color: usize,
) -> Figure {
    let mut cfg = EnsembleConfig::new(Architecture::from_model(model, WIDTH), schedule, SEEDS);
    cfg.base_seed = 17;
    let sim = run_ensemble(data, &cfg).unwrap();
    let q = sim.f_test.var.ncols() as f64;
    let n = WIDTH as f64;
    let mean = sim.f_test.var.mean_axis(Axis(1)).unwrap() * n;
    let se = sim
        .f_test
        .se_var()
        .mapv(|e| e * e)
        .sum_axis(Axis(1))
        .mapv(|v| v.sqrt() / q * n);
    fig.line(format!("{label} theory"), &fl.t, &test_mean(fl))
        .color(color)
        .points_with_errors(format!("{label} N={WIDTH}"), &sim.t, &mean, &se)
        .color(color)
}

fn lazy_universal(data: &Dataset) -> Figure {
    let schedule = Schedule {
        eta: 0.5,
        steps: 40,
        record_every: 4,
    };
    let problem = data.to_problem().unwrap();
    let m = model(Parameterization::Ntk, 1.0, true);
    let fl = lazy_prediction_fluctuations(&problem, &m, &schedule, &OPTIONS).unwrap();
    let fig = Figure::new("NTK parameterization (lazy universal form), relu, centered")
        .x_label("t = kη")
        .y_label("mean N·Var[f] over test points");
    with_ensemble(fig, data, &m, schedule, &fl, "NTK param", 0)
}

fn feature_learning(data: &Dataset) -> Figure {
    let schedule = Schedule {
        eta: 0.5,
        steps: 40,
        record_every: 4,
    };
    let problem = data.to_problem().unwrap();
    let mut fig = Figure::new("μP relu, centered: feature learning reduces the variance")
        .x_label("t = kη")
        .y_label("mean N·Var[f] over test points");
    for (i, gamma0) in [0.1, 0.5, 1.0, 2.0].into_iter().enumerate() {
        let m = model(Parameterization::Mup, gamma0, true);
        let fl =
            two_layer_prediction_fluctuations(&problem, &m, &schedule, &OPTIONS, &|_| {}).unwrap();
        fig = with_ensemble(fig, data, &m, schedule, &fl, &format!("γ₀ = {gamma0}"), i);
    }
    fig
}

fn edge_of_stability(data: &Dataset) -> (Figure, Figure) {
    let problem = data.to_problem().unwrap();
    let p = data.n_train() as f64;
    let mut sharpness = Figure::new("μP relu, γ₀ = 1: top NTK eigenvalue against 2P/η")
        .x_label("t = kη")
        .y_label("λ_max η / 2P")
        .hline("edge of stability", 1.0);
    let mut variance = Figure::new("variance on both sides of the threshold")
        .x_label("t = kη")
        .y_label("mean N·Var[f] over test points");
    for (i, eta) in [0.5, 1.5, 2.5].into_iter().enumerate() {
        let schedule = Schedule {
            eta,
            steps: (20.0 / eta) as usize,
            record_every: 1,
        };
        let m = model(Parameterization::Mup, 1.0, true);
        let fl =
            two_layer_prediction_fluctuations(&problem, &m, &schedule, &OPTIONS, &|_| {}).unwrap();
        let label = format!("η = {eta}");
        sharpness = sharpness
            .line(label.clone(), &fl.t, &(&fl.ntk_top * (eta / (2.0 * p))))
            .color(i);
        let every_fourth = Schedule {
            record_every: 4,
            ..schedule
        };
        let recorded =
            two_layer_prediction_fluctuations(&problem, &m, &every_fourth, &OPTIONS, &|_| {})
                .unwrap();
        variance = with_ensemble(variance, data, &m, every_fourth, &recorded, &label, i);
    }
    (sharpness, variance)
}

/// Final-step Σ_μν N·Var Φ^ℓ_μν on the train block and the width-free SNR per layer, for a
/// plain deep linear chain (L = 3) at several γ₀: theory and 1000-seed ensembles at N = 1024.
fn deep_linear_layers() -> (Figure, Figure) {
    let data = common::dataset(3, 2, 16, 5);
    let problem = data.to_problem().unwrap();
    let (depth, p) = (3, data.n_train());
    let schedule = Schedule {
        eta: 0.5,
        steps: 8,
        record_every: 8,
    };
    let layers: Array1<f64> = (1..=depth).map(|l| l as f64).collect();
    let mut variance =
        Figure::new("deep linear, L = 3: kernel variance across layers (final step)")
            .x_label("layer ℓ")
            .y_label("Σ_μν N·Var Φ^ℓ_μν (train)");
    let mut snr = Figure::new("… and the kernel signal-to-noise ratio")
        .x_label("layer ℓ")
        .y_label("‖Φ^ℓ‖²_F / Σ N·Var Φ^ℓ_μν")
        .log_y(true);
    for (i, gamma0) in [0.25, 0.5, 1.0, 2.0].into_iter().enumerate() {
        let m = Model {
            depth,
            activation: Activation::Linear,
            parameterization: Parameterization::Mup,
            gamma0,
            centered: false,
            residual: None,
            readout: Readout::Trained,
        };
        let fl = deep_linear_prediction_fluctuations(&problem, &m, &schedule).unwrap();
        let last = fl.steps.len() - 1;
        let kv = &fl.kernels;
        let train = s![last, ..p, ..p];
        let theory_var: Array1<f64> = (1..=depth)
            .map(|l| kv.var_phi_kernel[l - 1].slice(train).sum())
            .collect();
        let theory_snr: Array1<f64> = (1..=depth).map(|l| kv.phi_snr(l, p)[last]).collect();
        let mut cfg = EnsembleConfig::new(Architecture::from_model(&m, WIDTH), schedule, SEEDS);
        cfg.base_seed = 29;
        let sim = run_ensemble(&data, &cfg).unwrap();
        let n = WIDTH as f64;
        let (mut sim_var, mut sim_se, mut sim_snr, mut sim_snr_se) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for l in 0..depth {
            let phi = &sim.phi_kernel[l];
            let total = phi.var.slice(train).sum() * n;
            // Entries summed as independent estimates (an overstatement of independence).
            let se = phi.se_var().slice(train).mapv(|e| e * e).sum().sqrt() * n;
            let signal = phi.mean.slice(train).mapv(|v| v * v).sum();
            sim_var.push(total);
            sim_se.push(se);
            sim_snr.push(signal / total);
            sim_snr_se.push(signal / total * se / total);
        }
        let label = format!("γ₀ = {gamma0}");
        variance = variance
            .line(format!("{label} theory"), &layers, &theory_var)
            .color(i)
            .points_with_errors(format!("{label} N={WIDTH}"), &layers, &sim_var, &sim_se)
            .color(i);
        snr = snr
            .line(format!("{label} theory"), &layers, &theory_snr)
            .color(i)
            .points_with_errors(format!("{label} N={WIDTH}"), &layers, &sim_snr, &sim_snr_se)
            .color(i);
        println!(
            "deep linear L = 3, γ₀ = {gamma0}: Σ N·Var Φ^ℓ (train) theory {theory_var:.3}, N = {WIDTH} {sim_var:.3?}; SNR theory {theory_snr:.3}, ensemble {sim_snr:.3?}"
        );
    }
    (variance, snr)
}

fn main() {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .expect("usage: fluctuation_figures OUT_DIR"),
    );
    std::fs::create_dir_all(&out).unwrap();
    let data = task();
    let save = |name: &str, svg: String| std::fs::write(out.join(name), svg).unwrap();
    save("lazy_universal.svg", lazy_universal(&data).to_svg());
    save("feature_learning.svg", feature_learning(&data).to_svg());
    let (sharpness, variance) = edge_of_stability(&data);
    save(
        "edge_of_stability.svg",
        Grid::new(2)
            .title("edge of stability")
            .figure(sharpness)
            .figure(variance)
            .to_svg(),
    );
    let (variance, snr) = deep_linear_layers();
    save(
        "deep_linear_layers.svg",
        Grid::new(2)
            .title("deep linear kernels across layers")
            .figure(variance)
            .figure(snr)
            .to_svg(),
    );
    println!("figures in {}", out.display());
}
