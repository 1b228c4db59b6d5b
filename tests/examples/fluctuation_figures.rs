//! Figures of the finite-width fluctuations (docs/dmft.md), theory lines with ensemble points
//! (N·Var over seeds ± SE):
//! `cargo run --release -p dmft-validation --example fluctuation_figures -- OUT_DIR`
//!
//! 1. lazy universal form: the NTK parameterization (centered), N·Var of test predictions vs t;
//! 2. feature learning reduces the variance: centered two-layer relu in μP at γ₀ = 0.1 .. 2,
//!    mean N·Var over test points vs t;
//! 3. edge of stability: λ_max η/2P of the infinite-width NTK vs t at η below and past the
//!    threshold, and mean N·Var over test points there, theory and ensembles.

#[path = "../common/mod.rs"]
mod common;

use dmft_report::{Figure, Grid};
use dmft_runtime::lazy_fluctuations::lazy_prediction_fluctuations;
use dmft_runtime::propagator::{PredictionFluctuations, two_layer_prediction_fluctuations};
use dmft_runtime::{Activation, Model, Parameterization, Readout, Schedule, SolverOptions};
use dmft_sim::{Architecture, Dataset, EnsembleConfig, run_ensemble};
use ndarray::{Array1, Axis};
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
    println!("figures in {}", out.display());
}
