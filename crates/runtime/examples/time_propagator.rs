//! One timed run of the benchmark's propagator case (relu, P = 10, Q = 2, T = 100), for a
//! machine too loaded for criterion's ten samples:
//!
//!   cargo run --release -p dmft-runtime --example time_propagator -- [SITES] [RECORD_EVERY] [KERNELS]
//!
//! (defaults 10⁵ sites, NTK entry variances recorded every 10 steps; KERNELS = 1 adds the
//! Φ and G variances, `PropagatorOptions::kernel_variances`).

use dmft_runtime::Readout;
use dmft_runtime::propagator::{
    PropagatorOptions, ReferenceSites, two_layer_prediction_fluctuations_observing,
};
use dmft_runtime::*;

fn main() {
    let (p, q, dim) = (10, 2, 16);
    let problem = teacher_problem(p, q, dim, 7);
    let model = Model {
        depth: 1,
        activation: Activation::Relu,
        parameterization: Parameterization::Mup,
        gamma0: 1.0,
        centered: false,
        residual: None,
        readout: Readout::Trained,
    };
    let arg = |i: usize, name: &str, default: usize| -> usize {
        std::env::args().nth(i).map_or(default, |a| {
            a.parse()
                .unwrap_or_else(|_| panic!("{name} must be a positive integer, got {a}"))
        })
    };
    let m = arg(1, "SITES", 100_000);
    let schedule = Schedule {
        eta: 0.5,
        steps: 100,
        record_every: arg(2, "RECORD_EVERY", 10),
    };
    let opts = SolverOptions {
        sites: m,
        quadrature: 0,
        seed: 0,
    };
    let observe = PropagatorOptions {
        kernel_variances: arg(3, "KERNELS", 0) == 1,
    };
    let recorder = ReferenceSites {
        activation: model.activation,
        readout: model.readout,
    };
    let t0 = std::time::Instant::now();
    let fl = two_layer_prediction_fluctuations_observing(
        &problem,
        &model,
        &schedule,
        &opts,
        &observe,
        &recorder,
        &|_| {},
    )
    .unwrap();
    println!(
        "{:?} var_f_train[last] {:?}",
        t0.elapsed(),
        fl.var_f_train.row(fl.var_f_train.nrows() - 1)
    );
}
