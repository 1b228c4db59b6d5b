//! Residual deep linear networks (β/√L branches): the joint-stream closed form against the
//! plain chain, the β → 0 and L = 1 limits, the kernels at initialization and the lazy limit.

mod common;

use common::*;
use dmft_runtime::deep_linear::residual::{ResidualSetup, march, solve_full};
use dmft_runtime::{
    Activation, DmftError, Model, Readout, SolverKind, SolverOptions, Trajectory, no_progress,
    solve,
};
use ndarray::{Array1, Array2, s};

fn residual(depth: usize, gamma0: f64, beta: f64) -> Model {
    Model {
        residual: Some(beta),
        ..mup(depth, Activation::Linear, gamma0)
    }
}

/// Largest |a − b| over predictions (train, test) and the NTK, relative to the largest |b|.
fn rel_diff(a: &Trajectory, b: &Trajectory) -> f64 {
    let pairs = [
        (a.f_train.view().into_dyn(), b.f_train.view().into_dyn()),
        (a.f_test.view().into_dyn(), b.f_test.view().into_dyn()),
        (a.ntk.view().into_dyn(), b.ntk.view().into_dyn()),
    ];
    pairs
        .iter()
        .map(|(x, y)| {
            let scale = y.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let d = x
                .iter()
                .zip(y.iter())
                .fold(0.0f64, |m, (p, q)| m.max((p - q).abs()));
            d / scale
        })
        .fold(0.0, f64::max)
}

/// With (s, a) = (0, 1) the joint march is the plain chain: the per-layer closed form of
/// deep_linear.rs, a different bookkeeping, agrees to round-off (1e-12 relative: both are
/// O(T) products of well-scaled matrices, observed ≈ 1e-15).
#[test]
fn plain_branch_reproduces_plain_closed_form() {
    let prob = gaussian_problem(3, 2, 8, 31);
    for (depth, gamma0) in [(2, 1.0), (3, 1.5)] {
        let model = mup(depth, Activation::Linear, gamma0);
        let sch = schedule(0.5, 8);
        let plain = dmft_runtime::deep_linear::solve(&prob, &model, &sch, &no_progress).unwrap();
        let setup = ResidualSetup::with_branch(&prob, &model, &sch, 0.0, 1.0);
        let joint = march(&prob, &setup, gamma0, &sch, &no_progress).unwrap();
        let d = rel_diff(&joint.trajectory, &plain);
        println!("plain L={depth}: {d:.2e}");
        assert!(d < 1e-12, "L={depth}: {d:e}");
        // Not vacuous: the network learns.
        assert!(plain.loss[8] < 0.5 * plain.loss[0]);
    }
}

/// L = 1 has no branch, so a residual model is the two-layer network exactly; a = 0
/// freezes every layer at h¹ and leaves the readout on h¹: the two-layer network again.
#[test]
fn no_branch_limits_are_the_two_layer_network() {
    let prob = gaussian_problem(3, 2, 8, 32);
    let sch = schedule(0.5, 8);
    let two_layer = dmft_runtime::deep_linear::solve(
        &prob,
        &mup(1, Activation::Linear, 1.0),
        &sch,
        &no_progress,
    )
    .unwrap();
    let one = solve_full(&prob, &residual(1, 1.0, 0.7), &sch, &no_progress).unwrap();
    let d1 = rel_diff(&one.trajectory, &two_layer);
    let frozen_model = residual(3, 1.0, 1.0);
    let setup = ResidualSetup::with_branch(&prob, &frozen_model, &sch, 1.0, 0.0);
    let frozen = march(&prob, &setup, 1.0, &sch, &no_progress).unwrap();
    // The NTK differs: each of the L − 1 frozen branches drops its a² G ⊙ Φ term, but the
    // readout and input terms are those of the two-layer net; compare predictions only.
    let d0 = (&frozen.trajectory.f_train - &two_layer.f_train)
        .iter()
        .chain((&frozen.trajectory.f_test - &two_layer.f_test).iter())
        .fold(0.0f64, |m, v| m.max(v.abs()));
    println!("L = 1: {d1:.2e}, a = 0: {d0:.2e}");
    assert!(d1 < 1e-12 && d0 < 1e-12, "{d1:e} {d0:e}");
    for l in 1..3 {
        let (phi, phi1) = (&frozen.layers[l].phi_kernel, &frozen.layers[0].phi_kernel);
        assert!(
            (phi - phi1).iter().all(|v| v.abs() < 1e-12),
            "Φ^{} ≠ Φ¹",
            l + 1
        );
    }
}

/// β → 0: the branches are O(β) perturbations of the copied stream, so the predictions
/// approach the two-layer network's as β² (the first-order term averages out: u^ℓ has mean
/// zero). Checked: the gap at β = 0.01 is ≤ 1e-3 and shrinks ≥ 50× per decade of β
/// (quadratic would be 100×).
#[test]
fn small_beta_approaches_the_two_layer_network() {
    let prob = gaussian_problem(3, 2, 8, 33);
    let sch = schedule(0.5, 8);
    let two_layer = dmft_runtime::deep_linear::solve(
        &prob,
        &mup(1, Activation::Linear, 1.0),
        &sch,
        &no_progress,
    )
    .unwrap();
    let gap = |beta: f64| {
        let t = solve_full(&prob, &residual(3, 1.0, beta), &sch, &no_progress)
            .unwrap()
            .trajectory;
        (&t.f_train - &two_layer.f_train)
            .iter()
            .chain((&t.f_test - &two_layer.f_test).iter())
            .fold(0.0f64, |m, v| m.max(v.abs()))
    };
    let (g2, g3) = (gap(1e-2), gap(1e-3));
    let g1 = gap(1e-1);
    println!("β gaps: 0.1 → {g1:.3e}, 0.01 → {g2:.3e}, 0.001 → {g3:.3e}");
    assert!(g1 > 1e-4, "β = 0.1 must move the predictions: {g1:e}");
    assert!(g2 < 1e-3 && g2 > 50.0 * g3, "{g2:e} {g3:e}");
}

/// At step 0 the branches add independent copies: Φ^ℓ = (1+a²)^{ℓ−1} Kˣ, G^ℓ = (1+a²)^{L−ℓ},
/// K = Kˣ (1+a²)^{L−2} (2(1+a²) + (L−1) a²) with a = β/√L. Exact up to round-off.
#[test]
fn kernels_at_initialization_match_closed_form() {
    let prob = gaussian_problem(3, 2, 8, 34);
    let (p, n) = (3, 5);
    for (depth, beta) in [(2, 1.0), (3, 1.0), (3, 2.5), (4, 0.5)] {
        let sol = solve_full(
            &prob,
            &residual(depth, 1.0, beta),
            &schedule(0.02, 2),
            &no_progress,
        )
        .unwrap();
        let a2 = beta * beta / depth as f64;
        let lf = depth as f64;
        for (l, layer) in sol.layers.iter().enumerate() {
            let want_phi = &prob.kx * (1.0 + a2).powi(l as i32);
            let phi = layer.phi_kernel.slice(s![..n, ..n]);
            let want_g = (1.0 + a2).powi((depth - 1 - l) as i32);
            let g = layer.grad_kernel.slice(s![..p, ..p]);
            assert!((&phi - &want_phi).iter().all(|v| v.abs() < 1e-12));
            assert!(g.iter().all(|v| (v - want_g).abs() < 1e-12));
        }
        let kappa = (1.0 + a2).powf(lf - 2.0) * (2.0 * (1.0 + a2) + (lf - 1.0) * a2);
        let want = &prob.kx.slice(s![..p, ..p]) * kappa;
        let got = sol.trajectory.ntk.slice(s![0, .., ..]);
        let d = (&got - &want).iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(d < 1e-12, "L={depth} β={beta}: {d:e}");
    }
}

/// γ₀ → 0 at fixed η: Δ(k) = (I − ηK/P)^k y with the initial NTK above, and the test
/// predictions f_test(k) = (η/P) Σ_{j<k} K_{test,train} Δ(j). The gap is O(γ₀²) (feature
/// motion enters f at second order; observed 100× per decade): checked ≤ 1e-5 at γ₀ = 1e-3
/// and shrinking ≥ 50× from γ₀ = 1e-2.
#[test]
fn lazy_limit_matches_initial_ntk_dynamics() {
    let prob = gaussian_problem(3, 2, 8, 35);
    let (p, depth, beta, eta, steps) = (3, 3, 1.5, 0.1, 10);
    let a2 = beta * beta / depth as f64;
    let kappa = (1.0 + a2) * (2.0 * (1.0 + a2) + 2.0 * a2);
    let k_all = &prob.kx * kappa;
    let k_train = k_all.slice(s![..p, ..p]).to_owned();
    let k_test = k_all.slice(s![p.., ..p]).to_owned();
    let mut delta: Array1<f64> = prob.y.clone();
    let mut f_test = Array1::<f64>::zeros(2);
    let mut want_train = Array2::<f64>::zeros((steps + 1, p));
    let mut want_test = Array2::<f64>::zeros((steps + 1, 2));
    for k in 0..=steps {
        want_train.row_mut(k).assign(&(&prob.y - &delta));
        want_test.row_mut(k).assign(&f_test);
        f_test += &(k_test.dot(&delta) * (eta / p as f64));
        delta = &delta - &(k_train.dot(&delta) * (eta / p as f64));
    }
    let gap = |gamma0: f64| {
        let t = solve_full(
            &prob,
            &residual(depth, gamma0, beta),
            &schedule(eta, steps),
            &no_progress,
        )
        .unwrap()
        .trajectory;
        (&t.f_train - &want_train)
            .iter()
            .chain((&t.f_test - &want_test).iter())
            .fold(0.0f64, |m, v| m.max(v.abs()))
    };
    let (g2, g3) = (gap(1e-2), gap(1e-3));
    println!("lazy gaps: γ₀ = 0.01 → {g2:.3e}, 0.001 → {g3:.3e}");
    assert!(g3 < 1e-5 && g2 > 50.0 * g3, "{g2:e} {g3:e}");
}

/// `solve` routes a residual model to the joint stream; other solvers and bad β refuse it
/// with a message naming the key.
#[test]
fn residual_models_route_and_refuse() {
    let prob = gaussian_problem(3, 1, 8, 36);
    let sch = schedule(0.5, 3);
    let model = residual(2, 1.0, 1.0);
    let t = solve(
        &prob,
        &model,
        &sch,
        SolverKind::DeepLinear,
        &SolverOptions::default(),
        &no_progress,
    )
    .unwrap();
    assert!(t.method.contains("residual"), "{}", t.method);
    let plain = solve(
        &prob,
        &mup(2, Activation::Linear, 1.0),
        &sch,
        SolverKind::DeepLinear,
        &SolverOptions::default(),
        &no_progress,
    )
    .unwrap();
    assert!((&t.f_train - &plain.f_train).iter().any(|v| v.abs() > 1e-3));
    for (m, solver, key) in [
        (
            residual(2, 1.0, -1.0),
            SolverKind::DeepLinear,
            "model.residual_beta",
        ),
        (
            residual(2, 1.0, f64::NAN),
            SolverKind::DeepLinear,
            "model.residual_beta",
        ),
        (residual(2, 1.0, 1.0), SolverKind::Lazy, "model.residual"),
        (
            Model {
                activation: Activation::Relu,
                ..residual(2, 1.0, 1.0)
            },
            SolverKind::DeepNonlinear,
            "model.residual",
        ),
        // A frozen readout is two-layer only and the residual stream trains the readout:
        // each solver refuses the pair by the feature it lacks.
        (
            Model {
                readout: Readout::Frozen,
                ..residual(2, 1.0, 1.0)
            },
            SolverKind::DeepLinear,
            "model.readout",
        ),
        (
            Model {
                readout: Readout::Frozen,
                ..residual(1, 1.0, 1.0)
            },
            SolverKind::TwoLayer,
            "model.residual",
        ),
    ] {
        match solve(
            &prob,
            &m,
            &sch,
            solver,
            &SolverOptions::default(),
            &no_progress,
        ) {
            Err(DmftError::Invalid(msg)) => {
                assert!(msg.contains(key) && !msg.contains('\n'), "{msg}")
            }
            other => panic!(
                "{key}: expected a refusal, got {:?}",
                other.map(|t| t.method)
            ),
        }
    }
}
