//! The infinite-width solvers against real networks: the seed-mean of f over S networks of
//! width N must match the theory within 5 combined standard errors plus the O(1/N) bias
//! (allowance BIAS/N; theory.md reports N(E f_N − f∞) flat in N and of order one).
//!
//! Widths here keep `cargo test` under a minute; `slow_` tests at N = 4096 run with
//! `cargo test -p dmft-validation --release -- --ignored` (README, "Validation").
//! The frozen-readout variant has no hand-written model of its own beyond the reference
//! march: it is solved the way `dmft run` solves it, by the generated solver of
//! specs/two-layer-*-frozen-readout.toml (`dmft_solvers::solve`).

mod common;

use common::dataset;
use dmft_runtime::Readout;
use dmft_runtime::linalg::eigvalsh;
use dmft_runtime::{
    Activation, Model, Parameterization, Schedule, SolverKind, SolverOptions, Trajectory,
    no_progress, solve,
};
use dmft_sim::{Architecture, Dataset, EnsembleConfig, EnsembleStats, run_ensemble};

/// Allowance for the O(1/N) mean shift, in units of 1/N.
const BIAS: f64 = 4.0;

fn model(depth: usize, activation: Activation, gamma0: f64) -> Model {
    Model {
        depth,
        activation,
        parameterization: Parameterization::Mup,
        gamma0,
        centered: false,
        readout: Readout::Trained,
        residual: None,
    }
}

/// Residual deep linear network with β/√L branches.
fn residual_linear(depth: usize, gamma0: f64, beta: f64) -> Model {
    Model {
        residual: Some(beta),
        ..model(depth, Activation::Linear, gamma0)
    }
}

fn check(
    label: &str,
    data: &Dataset,
    model: &Model,
    schedule: Schedule,
    theory: &Trajectory,
    width: usize,
    seeds: usize,
) -> EnsembleStats {
    let mut cfg = EnsembleConfig::new(Architecture::from_model(model, width), schedule, seeds);
    cfg.base_seed = 1234;
    let sim = run_ensemble(data, &cfg).unwrap();
    assert!(
        sim.diverged.is_empty(),
        "{label}: diverged seeds {:?}",
        sim.diverged
    );
    let zero = theory.f_train.mapv(|_| 0.0);
    let zero_test = theory.f_test.mapv(|_| 0.0);
    let pairs = [
        (
            &sim.f_train,
            &theory.f_train,
            theory.f_train_se.as_ref().unwrap_or(&zero),
        ),
        (
            &sim.f_test,
            &theory.f_test,
            theory.f_test_se.as_ref().unwrap_or(&zero_test),
        ),
    ];
    let mut worst: f64 = 0.0;
    for (moments, f_theory, se_theory) in pairs {
        let se_sim = moments.se_mean();
        for (((m, se), f), se_t) in moments
            .mean
            .iter()
            .zip(se_sim.iter())
            .zip(f_theory.iter())
            .zip(se_theory.iter())
        {
            let tol = 5.0 * (se * se + se_t * se_t).sqrt() + BIAS / width as f64;
            worst = worst.max((m - f).abs() / tol);
            assert!(
                (m - f).abs() <= tol,
                "{label}: sim {m} ± {se} vs theory {f} ± {se_t} (tol {tol})"
            );
        }
    }
    println!("{label}: worst |sim − theory| / tolerance = {worst:.2}");
    sim
}

fn theory(
    data: &Dataset,
    model: &Model,
    schedule: &Schedule,
    solver: SolverKind,
    sites: usize,
) -> Trajectory {
    let opts = SolverOptions {
        sites,
        quadrature: 0,
        seed: 3,
    };
    solve(
        &data.to_problem().unwrap(),
        model,
        schedule,
        solver,
        &opts,
        &no_progress,
    )
    .unwrap()
}

#[test]
fn two_layer_networks_match_site_process() {
    let data = dataset(4, 2, 16, 1);
    let schedule = Schedule {
        eta: 0.5,
        steps: 40,
        record_every: 4,
    };
    for act in [Activation::Relu, Activation::Tanh] {
        for gamma0 in [0.1, 1.0] {
            let m = model(1, act, gamma0);
            let th = theory(&data, &m, &schedule, SolverKind::TwoLayer, 400_000);
            check(
                &format!("two-layer {act} γ₀={gamma0}"),
                &data,
                &m,
                schedule,
                &th,
                2048,
                256,
            );
        }
    }
}

#[test]
fn deep_linear_networks_match_closed_form() {
    let data = dataset(4, 2, 16, 2);
    let schedule = Schedule {
        eta: 0.5,
        steps: 20,
        record_every: 2,
    };
    let m = model(2, Activation::Linear, 1.0);
    let th = theory(&data, &m, &schedule, SolverKind::DeepLinear, 0);
    check("deep linear L=2", &data, &m, schedule, &th, 512, 64);
}

/// The sampled deep solver with Stein responses against real depth-2 networks. Dropping
/// the equal-time R_g term makes this fail by hundreds of standard errors (theory.md).
#[test]
fn deep_nonlinear_networks_match_sampled_dmft() {
    let data = dataset(4, 2, 16, 3);
    let schedule = Schedule {
        eta: 0.5,
        steps: 16,
        record_every: 2,
    };
    for act in [Activation::Tanh, Activation::Relu] {
        let m = model(2, act, 2.0);
        let th = theory(&data, &m, &schedule, SolverKind::DeepNonlinear, 256_000);
        check(
            &format!("deep {act} L=2"),
            &data,
            &m,
            schedule,
            &th,
            1024,
            256,
        );
    }
}

/// max over recorded steps of η λ_max(K(k)) / P from the theory's NTK. Below 2 the
/// discrete dynamics is stable around the trajectory.
fn edge_of_stability(theory: &Trajectory, eta: f64) -> f64 {
    let p = theory.ntk.shape()[1];
    theory
        .ntk
        .outer_iter()
        .map(|k| {
            let top = *eigvalsh(k)
                .expect("eigenvalues of a finite NTK")
                .last()
                .unwrap();
            top * eta / p as f64
        })
        .fold(0.0, f64::max)
}

/// Residual linear L = 3 (β = 1, rich γ₀ = 1) against the joint-stream closed form. The
/// same networks compared with the plain chain's theory miss by far more than the
/// tolerance, so the skip is seen (asserted below). The step keeps η λ_max/P ≤ 1.71 < 2
/// (asserted): past the edge of stability finite-width deviations of the mean are amplified
/// and the O(1/N) allowance does not hold (measured on the slow test's data at η = 0.5,
/// where η λ_max/P reaches 3.07: the worst seed-mean gap was 0.033, 0.024, 0.015 at
/// N = 1024, 2048, 4096, shrinking like 1/√N toward the theory, 6–12 SE).
#[test]
fn residual_linear_networks_match_closed_form() {
    let data = dataset(4, 2, 16, 5);
    let schedule = Schedule {
        eta: 0.5,
        steps: 20,
        record_every: 2,
    };
    let m = residual_linear(3, 1.0, 1.0);
    let th = theory(&data, &m, &schedule, SolverKind::DeepLinear, 0);
    let plain = theory(
        &data,
        &model(3, Activation::Linear, 1.0),
        &schedule,
        SolverKind::DeepLinear,
        0,
    );
    let gap = (&th.f_train - &plain.f_train)
        .iter()
        .fold(0.0f64, |g, v| g.max(v.abs()));
    assert!(
        gap > 0.05,
        "residual and plain theories differ by only {gap}"
    );
    let eos = edge_of_stability(&th, schedule.eta);
    assert!(eos < 1.8, "η λ_max / P = {eos}");
    check("residual linear L=3", &data, &m, schedule, &th, 512, 64);
}

/// The bar for the residual variant: N = 4096, 100 seeds, L = 3, γ₀ = 1, with a step
/// that keeps η λ_max/P ≤ 1.31 (asserted; the fast test says what happens past 2).
#[test]
#[ignore = "slow validation at N = 4096; run with --ignored (README, Validation)"]
fn slow_residual_width_4096_matches_theory() {
    let data = dataset(4, 2, 16, 6);
    let schedule = Schedule {
        eta: 0.25,
        steps: 20,
        record_every: 2,
    };
    let m = residual_linear(3, 1.0, 1.0);
    let th = theory(&data, &m, &schedule, SolverKind::DeepLinear, 0);
    let eos = edge_of_stability(&th, schedule.eta);
    assert!(eos < 1.5, "η λ_max / P = {eos}");
    check(
        "N=4096 residual linear L=3",
        &data,
        &m,
        schedule,
        &th,
        4096,
        100,
    );
}

#[test]
#[ignore = "slow validation at N = 4096; run with --ignored (README, Validation)"]
fn slow_width_4096_matches_theory() {
    let data = dataset(4, 2, 16, 4);
    let schedule = Schedule {
        eta: 0.5,
        steps: 40,
        record_every: 4,
    };
    for act in [Activation::Relu, Activation::Tanh] {
        for gamma0 in [0.1, 1.0] {
            let m = model(1, act, gamma0);
            let th = theory(&data, &m, &schedule, SolverKind::TwoLayer, 1_000_000);
            check(
                &format!("N=4096 two-layer {act} γ₀={gamma0}"),
                &data,
                &m,
                schedule,
                &th,
                4096,
                512,
            );
        }
    }
    let m = model(2, Activation::Linear, 1.0);
    let th = theory(&data, &m, &schedule, SolverKind::DeepLinear, 0);
    check("N=4096 deep linear L=2", &data, &m, schedule, &th, 4096, 64);
    let m = model(2, Activation::Tanh, 1.0);
    let th = theory(&data, &m, &schedule, SolverKind::DeepNonlinear, 100_000);
    check("N=4096 deep tanh L=2", &data, &m, schedule, &th, 4096, 48);
}

/// The generated frozen-readout solver (`auto`'s choice) for relu and tanh at γ₀ = 1 and 2,
/// 4·10⁵ Monte Carlo sites, against `seeds` networks of width `width` with w¹ frozen.
fn frozen_readout_check(width: usize, seeds: usize) {
    let data = dataset(4, 2, 16, 6);
    let problem = data.to_problem().unwrap();
    let schedule = Schedule {
        eta: 0.5,
        steps: 40,
        record_every: 4,
    };
    let opts = SolverOptions {
        sites: 400_000,
        quadrature: 0,
        seed: 3,
    };
    for act in [Activation::Relu, Activation::Tanh] {
        for gamma0 in [1.0, 2.0] {
            let m = Model {
                readout: Readout::Frozen,
                ..model(1, act, gamma0)
            };
            let kind = SolverKind::auto(&m);
            let (th, source) =
                dmft_solvers::solve(&problem, &m, &schedule, kind, &opts, &no_progress).unwrap();
            assert_eq!(
                source.to_string(),
                format!("generated:two-layer-{act}-frozen-readout")
            );
            let sim = check(
                &format!("N={width} two-layer {act} frozen readout γ₀={gamma0}"),
                &data,
                &m,
                schedule,
                &th,
                width,
                seeds,
            );
            // The comparison can tell the readouts apart: the trained-readout theory misses
            // these networks' train predictions by many tolerances.
            let trained = Model {
                readout: Readout::Trained,
                ..m.clone()
            };
            let (other, _) =
                dmft_solvers::solve(&problem, &trained, &schedule, kind, &opts, &no_progress)
                    .unwrap();
            let se = sim.f_train.se_mean();
            let se_other = other.f_train_se.as_ref().unwrap();
            let miss = (0..se.len())
                .map(|i| {
                    let (r, c) = (i / se.ncols(), i % se.ncols());
                    let tol = 5.0 * se[[r, c]].hypot(se_other[[r, c]]) + BIAS / width as f64;
                    (sim.f_train.mean[[r, c]] - other.f_train[[r, c]]).abs() / tol
                })
                .fold(0.0, f64::max);
            println!("    trained-readout theory misses by {miss:.1} tolerances");
            assert!(
                miss > 3.0,
                "{act} γ₀={gamma0}: readouts indistinguishable ({miss})"
            );
        }
    }
}

#[test]
fn frozen_readout_networks_match_the_generated_solver() {
    frozen_readout_check(2048, 128);
}

#[test]
#[ignore = "slow validation at N = 4096; run with --ignored (README, Validation)"]
fn slow_frozen_readout_width_4096_matches_the_generated_solver() {
    frozen_readout_check(4096, 400);
}
