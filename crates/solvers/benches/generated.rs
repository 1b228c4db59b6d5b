//! Each generated solver against its hand-written reference on the same problem.
//! Run with `cargo bench -p dmft-solvers --bench generated`; ratios in docs/performance.md.
//! Frozen-readout variants run the same problems with w¹ frozen.
//!
//! Problems: two-layer Monte Carlo M = 20 000 sites, P = 10, T = 50 (NTK recorded every
//! 10 steps); lazy P = 100 train + 20 test points (Gauss–Hermite order 96 for tanh: P = 20),
//! T = 200; deep-linear closed forms (plain and residual, β = 1) P = 8, T = 40.

use criterion::{Criterion, criterion_group, criterion_main};
use dmft_runtime::sampling::{normal_matrix, replica_rng};
use dmft_runtime::*;
use dmft_solvers::generated::REGISTRY;
use ndarray::{Array1, s};
use std::time::Duration;

fn problem(p: usize, q: usize, dim: usize) -> Problem {
    let mut rng = replica_rng(7, 0);
    let x = normal_matrix(&mut rng, p + q, dim);
    let beta = normal_matrix(&mut rng, dim, 1).column(0).to_owned();
    let y: Array1<f64> = x.slice(s![..p, ..]).dot(&beta) / (dim as f64).sqrt();
    Problem::from_inputs(x.slice(s![..p, ..]), y, x.slice(s![p.., ..]), None).unwrap()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("generated");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for g in REGISTRY {
        let (prob, schedule, options) = match (g.solver, g.activation) {
            (SolverKind::TwoLayer, _) => (
                problem(10, 0, 16),
                Schedule {
                    eta: 0.5,
                    steps: 50,
                    record_every: 10,
                },
                SolverOptions {
                    sites: 20_000,
                    quadrature: 0,
                    seed: 0,
                },
            ),
            (SolverKind::Lazy, Activation::Tanh) => (
                problem(20, 4, 16),
                Schedule {
                    eta: 0.5,
                    steps: 200,
                    record_every: 10,
                },
                SolverOptions::default(),
            ),
            (SolverKind::Lazy, _) => (
                problem(100, 20, 16),
                Schedule {
                    eta: 0.5,
                    steps: 200,
                    record_every: 10,
                },
                SolverOptions::default(),
            ),
            _ => (
                problem(8, 2, 16),
                Schedule {
                    eta: 0.5,
                    steps: 40,
                    record_every: 5,
                },
                SolverOptions::default(),
            ),
        };
        let model = Model {
            depth: g.depth,
            activation: g.activation,
            parameterization: Parameterization::Mup,
            gamma0: 1.0,
            centered: false,
            // Residual variants serve only residual models (β = 1).
            residual: g.residual.then_some(1.0),
            readout: g.readout,
        };
        // A spec can serve two solver kinds (two-layer-linear: sites and closed form).
        let id = format!("{}-{}", g.variant, g.solver);
        group.bench_function(format!("{id}/generated"), |b| {
            b.iter(|| (g.solve)(&prob, &model, &schedule, &options, &no_progress).unwrap())
        });
        group.bench_function(format!("{id}/reference"), |b| {
            b.iter(|| solve(&prob, &model, &schedule, g.solver, &options, &no_progress).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
