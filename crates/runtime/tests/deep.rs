//! Deep networks: the sampled nonlinear solver against the deep-linear closed form and the
//! lazy limit, and the solvers' refusals of bad input.

mod common;

use common::*;
use dmft_runtime::Readout;
use dmft_runtime::{
    Activation, DmftError, Model, Parameterization, SolverKind, SolverOptions, no_progress, solve,
};

/// The Monte Carlo solver with Stein responses, run on a linear network, reproduces the
/// closed form (which has exact responses) within 4 replica standard errors at every step,
/// train and test. A floor of 1e-9 covers late steps where replicas agree to round-off.
#[test]
fn sampled_responses_reproduce_deep_linear_closed_form() {
    let prob = gaussian_problem(3, 1, 8, 21);
    let mc = SolverOptions {
        sites: 32_000,
        seed: 4,
        ..Default::default()
    };
    for (depth, gamma0) in [(2, 1.0), (3, 1.0), (2, 2.5)] {
        let model = mup(depth, Activation::Linear, gamma0);
        let sch = schedule(0.5, 15);
        let exact = run_solver(
            &prob,
            &model,
            &sch,
            SolverKind::DeepLinear,
            SolverOptions::default(),
        );
        let sampled = run_solver(&prob, &model, &sch, SolverKind::DeepNonlinear, mc);
        assert_within_se(
            &format!("L={depth} γ₀={gamma0}"),
            &sampled,
            &exact,
            4.0,
            1e-9,
        );
    }
}

/// Deep nonlinear at small γ₀ (centered) lies within 4 SE of the lazy solution plus a
/// γ₀² allowance (the exact linear case's γ₀² coefficient is ≈ 0.5; 2γ₀² is generous).
#[test]
fn deep_nonlinear_converges_to_lazy_limit() {
    let prob = gaussian_problem(3, 1, 16, 22);
    let gamma0 = 0.02;
    let mc = SolverOptions {
        sites: 32_000,
        seed: 6,
        ..Default::default()
    };
    for act in [Activation::Relu, Activation::Tanh] {
        let model = Model {
            centered: true,
            readout: Readout::Trained,
            ..mup(2, act, gamma0)
        };
        let sch = schedule(0.5, 12);
        let rich = run_solver(&prob, &model, &sch, SolverKind::DeepNonlinear, mc);
        let lazy = run_solver(
            &prob,
            &model,
            &sch,
            SolverKind::Lazy,
            SolverOptions::default(),
        );
        assert_within_se(&format!("{act}"), &rich, &lazy, 4.0, 2.0 * gamma0 * gamma0);
    }
}

#[test]
fn divergence_is_reported_with_step_and_stable_step_size() {
    let prob = gaussian_problem(4, 0, 8, 23);
    let model = mup(2, Activation::Linear, 1.0);
    for solver in [SolverKind::Lazy, SolverKind::DeepLinear] {
        let err = solve(
            &prob,
            &model,
            &schedule(40.0, 60),
            solver,
            &SolverOptions::default(),
            &no_progress,
        )
        .unwrap_err();
        match err {
            DmftError::Diverged { step, eta_max, .. } => {
                assert!(
                    step > 0 && step <= 60 && eta_max < 40.0,
                    "{solver}: step {step}, eta_max {eta_max}"
                )
            }
            other => panic!("{solver}: expected divergence, got {other}"),
        }
    }
}

#[test]
fn invalid_combinations_name_the_key() {
    let prob = gaussian_problem(3, 0, 8, 24);
    let sch = schedule(0.5, 5);
    let cases = [
        (
            mup(2, Activation::Relu, 1.0),
            SolverKind::TwoLayer,
            SolverOptions::default(),
            "model.depth",
        ),
        (
            mup(1, Activation::Relu, 1.0),
            SolverKind::DeepLinear,
            SolverOptions::default(),
            "model.activation",
        ),
        (
            mup(1, Activation::Relu, 1.0),
            SolverKind::DeepNonlinear,
            SolverOptions::default(),
            "model.depth",
        ),
        (
            mup(1, Activation::Relu, -1.0),
            SolverKind::Lazy,
            SolverOptions::default(),
            "model.gamma0",
        ),
        (
            mup(1, Activation::Relu, 1.0),
            SolverKind::TwoLayer,
            SolverOptions {
                quadrature: 60,
                ..Default::default()
            },
            "theory.quadrature",
        ),
        (
            mup(1, Activation::Relu, 1.0),
            SolverKind::TwoLayer,
            SolverOptions {
                sites: 5,
                ..Default::default()
            },
            "theory.sites",
        ),
        (
            dmft_runtime::Model {
                parameterization: Parameterization::Ntk,
                ..mup(1, Activation::Relu, 1.0)
            },
            SolverKind::TwoLayer,
            SolverOptions::default(),
            "model.parameterization",
        ),
    ];
    for (model, solver, opts, key) in cases {
        let msg = solve(&prob, &model, &sch, solver, &opts, &no_progress)
            .unwrap_err()
            .to_string();
        assert!(msg.contains(key) && !msg.contains('\n'), "{solver}: {msg}");
    }
}

/// The full deep-linear solution: at t = 0 every Φ^ℓ is K^x and every G^ℓ is 1 (a linear
/// network's kernels at initialization), responses vanish at equal time, and the two-time
/// kernels over the whole run are symmetric positive semi-definite (they are covariances).
#[test]
fn deep_linear_two_time_kernels_are_covariances() {
    let prob = gaussian_problem(3, 2, 8, 25);
    let (n, p) = (5, 3);
    let sol = dmft_runtime::deep_linear::solve_full(
        &prob,
        &mup(3, Activation::Linear, 1.5),
        &schedule(0.4, 12),
        &no_progress,
    )
    .unwrap();
    for layer in &sol.layers {
        let phi0 = layer.phi_kernel.slice(ndarray::s![..n, ..n]);
        assert!((&phi0 - &prob.kx).iter().all(|v| v.abs() < 1e-13));
        assert!(
            layer
                .grad_kernel
                .slice(ndarray::s![..p, ..p])
                .iter()
                .all(|v| (v - 1.0).abs() < 1e-13)
        );
        assert!(
            layer
                .response_phi
                .slice(ndarray::s![..n, ..])
                .iter()
                .all(|&v| v == 0.0)
        );
        for kernel in [&layer.phi_kernel, &layer.grad_kernel] {
            let asym = (kernel - &kernel.t())
                .iter()
                .fold(0.0_f64, |m, v| m.max(v.abs()));
            let vals = dmft_runtime::linalg::eigvalsh(kernel.view()).unwrap();
            let top = vals[vals.len() - 1];
            assert!(
                asym < 1e-12 * top && vals[0] > -1e-10 * top,
                "asym {asym:e}, min eig {:e}",
                vals[0]
            );
        }
    }
    assert_eq!(sol.delta.nrows(), 13);
}
