//! Small deterministic problems shared by the runtime's integration tests.

use dmft_runtime::sampling::{normal_matrix, replica_rng};
use dmft_runtime::{Activation, Model, Parameterization, Problem, Schedule};
use ndarray::Array1;

/// P train and Q test Gaussian inputs in `dim` dimensions with a linear teacher.
pub fn gaussian_problem(p: usize, q: usize, dim: usize, seed: u64) -> Problem {
    let mut rng = replica_rng(seed, 999);
    let x = normal_matrix(&mut rng, p + q, dim);
    let beta = normal_matrix(&mut rng, dim, 1).column(0).to_owned();
    let y: Array1<f64> = x.dot(&beta) / (dim as f64).sqrt();
    Problem::from_inputs(
        x.slice(ndarray::s![..p, ..]),
        y.slice(ndarray::s![..p]).to_owned(),
        x.slice(ndarray::s![p.., ..]),
        Some(y.slice(ndarray::s![p..]).to_owned()),
    )
    .unwrap()
}

pub fn mup(depth: usize, activation: Activation, gamma0: f64) -> Model {
    Model {
        depth,
        activation,
        parameterization: Parameterization::Mup,
        gamma0,
        centered: false,
    }
}

pub fn schedule(eta: f64, steps: usize) -> Schedule {
    Schedule {
        eta,
        steps,
        record_every: 1,
    }
}
