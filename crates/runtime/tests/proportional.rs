//! Proportional-regime solver: closed-form checks, consistency between its two data paths,
//! and errors on bad input. Agreement with finite-D networks is in tests/proportional.rs.

use dmft_runtime::Parameterization;
use dmft_runtime::proportional::{DataUse, Setting, Spectrum, solve};
use dmft_runtime::{DmftError, no_progress};

fn setting() -> Setting {
    Setting {
        depth: 2,
        nu: 1.0,
        parameterization: Parameterization::Mup,
        gamma: 0.8,
        residual: None,
        data: DataUse::Repeated { alpha: 2.0 },
        spectrum: Spectrum::isotropic(),
        eta: 0.05,
        steps: 20,
    }
}

/// At k = 0, v = β* − β(0) with β(0) independent of the teacher and E|β(0)|²/D = 1/(γ²ν):
/// ℒ(0) = ℒ̂(0) = ½(⟨λb⟩ + ⟨λ⟩/(γ²ν)).
#[test]
fn initial_loss_is_teacher_plus_initial_function() {
    for (par, gamma, nu) in [
        (Parameterization::Mup, 0.8, 1.0),
        (Parameterization::Mup, 2.0, 0.5),
        (Parameterization::Ntk, 0.0, 4.0),
    ] {
        let mut s = setting();
        s.parameterization = par;
        s.gamma = gamma;
        s.nu = nu;
        s.spectrum = Spectrum::power_law(64, 0.7).unwrap();
        let curves = solve(&s, &no_progress).unwrap();
        let g = s.effective_gamma();
        let expected = 0.5 * (1.0 + 1.0 / (g * g * nu));
        for v in [curves.train[0], curves.test[0]] {
            assert!((v - expected).abs() < 1e-12, "{par}: {v} vs {expected}");
        }
    }
}

/// With α → ∞ the empirical covariance of the reused data is the population one, so full-batch
/// GD (data-site response R_Δ = (I − R_x)⁻¹) and one-pass SGD (R_Δ = I) must coincide: the
/// difference is O(1/α).
#[test]
fn repeated_and_one_pass_agree_at_infinite_data() {
    let alpha = 1e7;
    let mut gd = setting();
    gd.data = DataUse::Repeated { alpha };
    let mut sgd = setting();
    sgd.data = DataUse::OnePass { batch_ratio: alpha };
    let (a, b) = (
        solve(&gd, &no_progress).unwrap(),
        solve(&sgd, &no_progress).unwrap(),
    );
    for k in 0..=gd.steps {
        for (x, y) in [(a.train[k], b.train[k]), (a.test[k], b.test[k])] {
            assert!((x - y).abs() < 1e-5 * y, "step {k}: {x} vs {y}");
        }
    }
    // And with finite α the two paths differ: reuse lowers the train loss below the test loss.
    let mut few = setting();
    few.data = DataUse::Repeated { alpha: 0.5 };
    let c = solve(&few, &no_progress).unwrap();
    assert!(c.train[few.steps] < 0.5 * c.test[few.steps]);
}

/// t = kη and every value finite.
#[test]
fn time_axis_and_finiteness() {
    let s = setting();
    let c = solve(&s, &no_progress).unwrap();
    assert_eq!(c.t.len(), s.steps + 1);
    assert!((c.t[s.steps] - s.eta * s.steps as f64).abs() < 1e-12);
    assert!(c.train.iter().chain(&c.test).all(|v| v.is_finite()));
}

#[test]
fn divergence_is_an_error_naming_the_step() {
    let mut s = setting();
    s.eta = 5.0;
    match solve(&s, &no_progress) {
        Err(DmftError::Numerical(m)) => assert!(m.contains("diverged at step"), "{m}"),
        other => panic!("expected a divergence error, got {other:?}"),
    }
}

#[test]
fn bad_inputs_are_errors() {
    type Mutation = fn(&mut Setting);
    let cases: Vec<(Mutation, &str)> = vec![
        (|s| s.depth = 0, "model.depth"),
        (|s| s.nu = 0.0, "data.nu"),
        (|s| s.gamma = f64::NAN, "model.gamma0"),
        (|s| s.eta = -1.0, "train.eta"),
        (|s| s.residual = Some(0.0), "model.residual_beta"),
        (|s| s.data = DataUse::Repeated { alpha: 0.0 }, "data.alpha"),
        (
            |s| {
                s.data = DataUse::OnePass {
                    batch_ratio: f64::INFINITY,
                }
            },
            "data.batch_ratio",
        ),
        (|s| s.spectrum.teacher.push(1.0), "spectrum"),
        (|s| s.spectrum.lambda[0] = -1.0, "spectrum"),
    ];
    for (mutate, key) in cases {
        let mut s = setting();
        mutate(&mut s);
        match solve(&s, &no_progress) {
            Err(DmftError::Invalid(m)) => assert!(m.contains(key), "{key}: {m}"),
            other => panic!("{key}: expected an error, got {other:?}"),
        }
    }
    assert!(Spectrum::power_law(0, 1.0).is_err());
    assert!(Spectrum::power_law(8, -1.0).is_err());
}
