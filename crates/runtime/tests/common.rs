//! Small deterministic problems and checks shared by the runtime's integration tests.

// Each test binary compiles this module and uses a different subset of it.
#![allow(dead_code)]

use dmft_runtime::Readout;
use dmft_runtime::sampling::{normal_matrix, replica_rng};
use dmft_runtime::{
    Activation, Model, Parameterization, Problem, Schedule, SolverKind, SolverOptions, Trajectory,
    no_progress, solve,
};
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
        residual: None,
        readout: Readout::Trained,
    }
}

pub fn schedule(eta: f64, steps: usize) -> Schedule {
    Schedule {
        eta,
        steps,
        record_every: 1,
    }
}

/// Runs a solver on a problem the test built to be valid.
pub fn run_solver(
    prob: &Problem,
    model: &Model,
    sch: &Schedule,
    solver: SolverKind,
    opts: SolverOptions,
) -> Trajectory {
    solve(prob, model, sch, solver, &opts, &no_progress).unwrap()
}

/// Every recorded prediction of a sampled trajectory (train and test) lies within `k`
/// replica standard errors plus `floor` of the reference.
pub fn assert_within_se(
    label: &str,
    sampled: &Trajectory,
    reference: &Trajectory,
    k: f64,
    floor: f64,
) {
    let pairs = [
        (
            &sampled.f_train,
            sampled.f_train_se.as_ref().unwrap(),
            &reference.f_train,
        ),
        (
            &sampled.f_test,
            sampled.f_test_se.as_ref().unwrap(),
            &reference.f_test,
        ),
    ];
    for (f, se, want) in pairs {
        for ((a, e), b) in f.iter().zip(se.iter()).zip(want.iter()) {
            assert!((a - b).abs() <= k * e + floor, "{label}: {a} vs {b} ± {e}");
        }
    }
}
