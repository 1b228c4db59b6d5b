//! Criterion benchmarks for the issue targets on a 2-core machine:
//! deep linear L = 3, P = 10, T = 100 (< 2 s); two-layer Monte Carlo M = 10⁵, P = 10,
//! T = 100 (< 5 s); deep nonlinear relu L = 2, P = 5, T = 50, M = 10⁴ (< 60 s); two-layer
//! relu propagator M = 10⁵, P = 10, T = 100 (< 20 s); proportional-regime deep linear L = 4,
//! T = 200, isotropic, full-batch GD (< 10 s); the dense deep linear propagator, plain and
//! residual, on a small problem (no target).
//! Run with `cargo bench -p dmft-runtime --bench solvers`; results in docs/performance.md.

use criterion::{Criterion, criterion_group, criterion_main};
use dmft_runtime::Readout;
use dmft_runtime::propagator::two_layer_prediction_fluctuations;
use dmft_runtime::*;
use std::time::Duration;

fn problem(p: usize, dim: usize) -> Problem {
    problem_with_test(p, 0, dim)
}

fn problem_with_test(p: usize, q: usize, dim: usize) -> Problem {
    teacher_problem(p, q, dim, 7)
}

fn model(depth: usize, activation: Activation) -> Model {
    Model {
        depth,
        activation,
        parameterization: Parameterization::Mup,
        gamma0: 1.0,
        centered: false,
        residual: None,
        readout: Readout::Trained,
    }
}

fn bench(c: &mut Criterion) {
    let schedule = Schedule {
        eta: 0.5,
        steps: 100,
        record_every: 1,
    };
    let mut group = c.benchmark_group("solvers");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    let p10 = problem(10, 16);
    group.bench_function("deep_linear_L3_P10_T100", |b| {
        b.iter(|| {
            solve(
                &p10,
                &model(3, Activation::Linear),
                &schedule,
                SolverKind::DeepLinear,
                &SolverOptions::default(),
                &no_progress,
            )
            .unwrap()
        })
    });
    let mc = SolverOptions {
        sites: 100_000,
        quadrature: 0,
        seed: 0,
    };
    group.bench_function("two_layer_relu_mc_M1e5_P10_T100", |b| {
        b.iter(|| {
            solve(
                &p10,
                &model(1, Activation::Relu),
                &schedule,
                SolverKind::TwoLayer,
                &mc,
                &no_progress,
            )
            .unwrap()
        })
    });
    let p5 = problem(5, 16);
    let deep = SolverOptions {
        sites: 10_000,
        quadrature: 0,
        seed: 0,
    };
    let schedule50 = Schedule {
        eta: 0.5,
        steps: 50,
        record_every: 1,
    };
    group.bench_function("deep_nonlinear_relu_L2_P5_T50_M1e4", |b| {
        b.iter(|| {
            solve(
                &p5,
                &model(2, Activation::Relu),
                &schedule50,
                SolverKind::DeepNonlinear,
                &deep,
                &no_progress,
            )
            .unwrap()
        })
    });
    let p10q2 = problem_with_test(10, 2, 16);
    // Σ_f covers every step whatever the recording; the NTK-entry variances are taken at the
    // recorded steps and cost M·T_rec·P²·PT more, so they are recorded every 10 steps here.
    let every_tenth = Schedule {
        record_every: 10,
        ..schedule
    };
    group.bench_function("two_layer_relu_propagator_M1e5_P10_Q2_T100", |b| {
        b.iter(|| {
            two_layer_prediction_fluctuations(
                &p10q2,
                &model(1, Activation::Relu),
                &every_tenth,
                &mc,
                &no_progress,
            )
            .unwrap()
        })
    });
    // The dense deep linear propagator (plain chain and residual β/√L branches) on a small
    // problem: L = 2, P + Q = 5, T = 6, q = 1183 order parameters.
    let p3q2 = problem_with_test(3, 2, 16);
    let short = Schedule {
        steps: 6,
        ..schedule
    };
    for (name, residual) in [("deep_linear", None), ("residual", Some(1.0))] {
        let m = Model {
            residual,
            ..model(2, Activation::Linear)
        };
        group.bench_function(format!("{name}_propagator_L2_PQ5_T6"), |b| {
            b.iter(|| {
                deep_linear_propagator::deep_linear_prediction_fluctuations(&p3q2, &m, &short)
                    .unwrap()
            })
        });
    }
    let proportional = proportional::Setting {
        depth: 4,
        nu: 1.0,
        parameterization: Parameterization::Mup,
        gamma: 1.0,
        residual: None,
        data: proportional::DataUse::Repeated { alpha: 2.0 },
        spectrum: proportional::Spectrum::isotropic(),
        eta: 0.02,
        steps: 200,
    };
    group.bench_function("proportional_L4_T200", |b| {
        b.iter(|| proportional::solve(&proportional, &no_progress).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
