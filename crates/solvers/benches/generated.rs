//! Each generated solver against its hand-written reference on the same problem.
//! Run with `cargo bench -p dmft-solvers --bench generated`; ratios in docs/performance.md.
//! Frozen-readout variants run the same problems with w¹ frozen.
//!
//! Problems: two-layer Monte Carlo M = 20 000 sites, P = 10, T = 50 (NTK recorded every
//! 10 steps); lazy P = 100 train + 20 test points (Gauss–Hermite order 96 for tanh: P = 20),
//! T = 200; deep-linear closed forms (plain and residual, β = 1) P = 8, T = 40; the
//! two-layer propagators M = 5000 sites, P = 10, Q = 2, T = 50 (NTK recorded every 10); the
//! residual (joint-site) propagators P = 3, Q = 1, T = 4.
//! The group `recorder` times the propagator's base march alone (the part the generator
//! specializes) on the same sites, along a fixed Δ path.

use criterion::{Criterion, criterion_group, criterion_main};
use dmft_runtime::deep_linear_propagator;
use dmft_runtime::propagator::{self, ReferenceSites, SiteContext, SiteOutputs, SiteRecorder};
use dmft_runtime::sampling::{normal_matrix, replica_rng};
use dmft_runtime::two_layer::SiteSet;
use dmft_runtime::*;
use dmft_solvers::generated::{self, REGISTRY};
use ndarray::{Array1, Array2, s};
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
        if let Some(generated) = g.propagator {
            let prob = problem(10, 2, 16);
            let options = SolverOptions {
                sites: 5000,
                ..options
            };
            let id = format!("{}-propagator", g.variant);
            group.bench_function(format!("{id}/generated"), |b| {
                b.iter(|| generated(&prob, &model, &schedule, &options, &no_progress).unwrap())
            });
            group.bench_function(format!("{id}/reference"), |b| {
                b.iter(|| {
                    propagator::two_layer_prediction_fluctuations(
                        &prob,
                        &model,
                        &schedule,
                        &options,
                        &no_progress,
                    )
                    .unwrap()
                })
            });
        }
        if let Some(generated) = g.deep_propagator {
            // The dense joint-site propagator: P + Q = 4, T = 4 (q ≈ 10³ per boundary).
            let prob = problem(3, 1, 16);
            let schedule = Schedule {
                eta: 0.5,
                steps: 4,
                record_every: 1,
            };
            let id = format!("{}-deep-propagator", g.variant);
            group.bench_function(format!("{id}/generated"), |b| {
                b.iter(|| generated(&prob, &model, &schedule, &no_progress).unwrap())
            });
            group.bench_function(format!("{id}/reference"), |b| {
                b.iter(|| {
                    deep_linear_propagator::deep_linear_prediction_fluctuations(
                        &prob, &model, &schedule,
                    )
                    .unwrap()
                })
            });
        }
    }
    group.finish();
}

/// Marches every site of `sites` with `recorder` along a geometric Δ path.
fn record_all<R: SiteRecorder>(recorder: &R, prob: &Problem, sites: &SiteSet, steps: usize) {
    let (p, n) = (prob.n_train(), prob.n_all());
    let kx: Vec<f64> = prob.kx.iter().copied().collect();
    let delta_path =
        Array2::from_shape_fn((steps + 1, p), |(k, b)| prob.y[b] * 0.95f64.powi(k as i32));
    let recorded: Vec<Option<usize>> = (0..=steps)
        .map(|k| (k % 10 == 0).then_some(k / 10))
        .collect();
    let pairs: Vec<(usize, usize)> = (0..p).flat_map(|m| (m..p).map(move |a| (m, a))).collect();
    let crossing: Vec<f64> = (0..p).map(|b| 0.2 * prob.kx[[b, b]].sqrt()).collect();
    let cx = SiteContext {
        p,
        n,
        steps,
        c: 0.5 / p as f64,
        gamma0: 1.0,
        centered: false,
        kx: &kx,
        delta_path: delta_path.view(),
        recorded: &recorded,
        pairs: &pairs,
        crossing: &crossing,
    };
    let ntk_rows = recorded.iter().flatten().count() * pairs.len();
    let mut trajectory = vec![0.0; (steps + 1) * propagator::record_len(n, p)];
    let (mut psi, mut psi_sum) = (vec![0.0; (steps + 1) * n], vec![0.0; (steps + 1) * n]);
    let (mut ntk, mut ntk_sum) = (vec![0.0; ntk_rows], vec![0.0; ntk_rows]);
    for site in 0..sites.r.len() {
        recorder.record(
            &cx,
            (sites.u.row(site), sites.r[site], sites.weight[site]),
            SiteOutputs {
                trajectory: &mut trajectory,
                psi: &mut psi,
                ntk: &mut ntk,
                psi_sum: &mut psi_sum,
                ntk_sum: &mut ntk_sum,
            },
        );
    }
    std::hint::black_box((psi_sum, ntk_sum, trajectory));
}

fn bench_recorders(c: &mut Criterion) {
    let mut group = c.benchmark_group("recorder");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let prob = problem(10, 2, 16);
    let sites = SiteSet::monte_carlo(prob.kx.view(), 5000, 0, 0).unwrap();
    let steps = 50;
    macro_rules! variant {
        ($name:literal, $module:ident) => {{
            let g = generated::$module::propagator::Sites;
            let reference = ReferenceSites {
                activation: g.activation(),
                readout: g.readout(),
            };
            group.bench_function(concat!($name, "/generated"), |b| {
                b.iter(|| record_all(&g, &prob, &sites, steps))
            });
            group.bench_function(concat!($name, "/reference"), |b| {
                b.iter(|| record_all(&reference, &prob, &sites, steps))
            });
        }};
    }
    variant!("two-layer-linear", two_layer_linear);
    variant!("two-layer-relu", two_layer_relu);
    variant!("two-layer-tanh", two_layer_tanh);
    variant!(
        "two-layer-relu-frozen-readout",
        two_layer_relu_frozen_readout
    );
    variant!(
        "two-layer-tanh-frozen-readout",
        two_layer_tanh_frozen_readout
    );
    group.finish();
}

criterion_group!(benches, bench, bench_recorders);
criterion_main!(benches);
