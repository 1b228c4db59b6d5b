//! Proportional-regime DMFT (docs/proportional.md) against finite-D networks trained exactly.
//!
//! Criterion (issue 7): at D = 512 the DMFT train and test losses match the seed mean of
//! S = 96 simulations within 5 % at every step. The seed mean carries a standard error (SE);
//! each case prints its worst relative error and the SE at that step, and asserts 2 SE < 2.5 %
//! there, so that seed noise alone cannot produce (or hide) a 5 % discrepancy.
//! Step sizes sit at a fixed fraction of the stability edge estimated from the bulk of the
//! initial kernel, η = 0.5 / ((L+1)(1+α^{-1/2})²(1+ν^{-1/2})): near the edge the outlier
//! dynamics converge much more slowly in D (docs/proportional.md, "Validation").
//!
//! The full grid of the issue (μP and NTK, L ∈ {1,2,4}, ν ∈ {0.5,1,4}, α ∈ {0.5,2},
//! residual or not) runs with
//! `cargo test -p dmft-validation --release --test proportional -- --ignored --nocapture`,
//! which also runs the power-law exponent comparison (lazy against rich).

use dmft_runtime::Parameterization;
use dmft_runtime::proportional::{DataUse, LossCurves, Setting, Spectrum, solve};
use dmft_sim::proportional::{CurveStats, run_ensemble};

// Shared with the power_law_exponents example, which also uses its plotting helpers.
#[allow(dead_code)]
#[path = "common/power_law.rs"]
mod power_law;

const DIM: usize = 512;
const SEEDS: usize = 96;
const STEPS: usize = 30;
const TOLERANCE: f64 = 0.05;

fn setting(mup: bool, depth: usize, nu: f64, alpha: f64, residual: bool) -> Setting {
    let eta =
        0.5 / ((depth as f64 + 1.0) * (1.0 + alpha.powf(-0.5)).powi(2) * (1.0 + nu.powf(-0.5)));
    Setting {
        depth,
        nu,
        parameterization: if mup {
            Parameterization::Mup
        } else {
            Parameterization::Ntk
        },
        gamma: 1.0,
        residual: residual.then_some(1.0),
        data: DataUse::Repeated { alpha },
        spectrum: Spectrum::isotropic(),
        eta,
        steps: STEPS,
    }
}

/// Worst relative error over steps and both losses: (error, SE/mean there, step, which).
fn worst(th: &LossCurves, sim: &CurveStats) -> (f64, f64, usize, &'static str) {
    let mut out = (0.0, 0.0, 0, "");
    for (name, t, m, se) in [
        ("train", &th.train, &sim.train, &sim.train_se),
        ("test", &th.test, &sim.test, &sim.test_se),
    ] {
        for k in 0..t.len() {
            let rel = ((t[k] - m[k]) / m[k]).abs();
            if rel > out.0 {
                out = (rel, se[k] / m[k], k, name);
            }
        }
    }
    out
}

fn label(s: &Setting) -> String {
    format!(
        "{} L={} ν={} {:?} res={} η={:.4}",
        s.parameterization,
        s.depth,
        s.nu,
        s.data,
        s.residual.is_some(),
        s.eta
    )
}

/// Runs one case at D and returns (worst relative error, its relative SE).
fn compare(s: &Setting, dim: usize, seeds: usize) -> (f64, f64) {
    let th = solve(s, &|_| {}).unwrap();
    let sim = run_ensemble(s, dim, seeds, 7).unwrap();
    let (rel, se, k, which) = worst(&th, &sim);
    println!(
        "{:<60} D={dim:4} S={seeds}: worst {which} rel err {:5.2}% at step {k} (seed SE {:4.2}%)",
        label(s),
        100.0 * rel,
        100.0 * se
    );
    (rel, se)
}

fn assert_matches(s: &Setting) {
    let (rel, se) = compare(s, DIM, SEEDS);
    assert!(
        2.0 * se < TOLERANCE / 2.0,
        "{}: seed noise too large to decide (SE {se:.4})",
        label(s)
    );
    assert!(
        rel < TOLERANCE,
        "{}: worst relative error {rel:.4} ≥ {TOLERANCE}",
        label(s)
    );
}

#[test]
fn mup_two_layer_matches_simulation() {
    assert_matches(&setting(true, 1, 1.0, 2.0, false));
}

#[test]
fn ntk_deep_narrow_matches_simulation() {
    assert_matches(&setting(false, 2, 0.5, 2.0, false));
}

#[test]
fn mup_deep_residual_matches_simulation() {
    assert_matches(&setting(true, 4, 0.5, 2.0, true));
}

#[test]
fn ntk_residual_few_data_matches_simulation() {
    assert_matches(&setting(false, 2, 1.0, 0.5, true));
}

#[test]
fn one_pass_sgd_matches_simulation() {
    let mut s = setting(true, 2, 1.0, 1.0, false);
    s.data = DataUse::OnePass { batch_ratio: 1.0 };
    assert_matches(&s);
}

#[test]
fn power_law_spectrum_matches_simulation() {
    let mut s = setting(true, 1, 1.0, 2.0, false);
    // λ_1 = (1−a)·D^a ≈ 11 at a = 0.5: the step shrinks with the top eigenvalue.
    s.spectrum = Spectrum::power_law(DIM, 0.5).unwrap();
    s.eta = 0.02;
    s.steps = 40;
    assert_matches(&s);
}

/// The finite-D error shrinks with D. The case (γ = 1.5, α = ν = 0.5, η = 0.1) has a finite-D
/// correction to the late train loss (interpolation, P < D) far above seed noise, so the
/// mean over steps of |th − sim|/sim must fall strictly from D = 128 to 256 to 512.
#[test]
fn agreement_improves_with_dimension() {
    let mut s = setting(true, 1, 0.5, 0.5, false);
    s.gamma = 1.5;
    s.eta = 0.1;
    s.steps = 40;
    let th = solve(&s, &|_| {}).unwrap();
    let mut errors = Vec::new();
    for dim in [128, 256, 512] {
        let sim = run_ensemble(&s, dim, SEEDS, 11).unwrap();
        let err = |t: &ndarray::Array1<f64>, m: &ndarray::Array1<f64>| {
            t.iter()
                .zip(m)
                .map(|(a, b)| ((a - b) / b).abs())
                .sum::<f64>()
                / t.len() as f64
        };
        let last = s.steps;
        println!(
            "D={dim:4} S={SEEDS}: final train loss th {:.5} sim {:.5} ± {:.5}; mean |rel err| train {:.2}% test {:.2}%",
            th.train[last],
            sim.train[last],
            sim.train_se[last],
            100.0 * err(&th.train, &sim.train),
            100.0 * err(&th.test, &sim.test),
        );
        errors.push(0.5 * (err(&th.train, &sim.train) + err(&th.test, &sim.test)));
    }
    assert!(
        errors[0] > errors[1] && errors[1] > errors[2],
        "mean errors at D = 128, 256, 512 not decreasing: {errors:?}"
    );
}

#[test]
#[ignore = "full grid of issue 7 at D = 512 (about 90 minutes on 2 cores); run with --ignored --nocapture"]
fn full_grid_matches_simulation() {
    let mut failures = Vec::new();
    for mup in [true, false] {
        for depth in [1, 2, 4] {
            for nu in [0.5, 1.0, 4.0] {
                for alpha in [0.5, 2.0] {
                    for residual in [false, true] {
                        if residual && depth == 1 {
                            continue; // no hidden-to-hidden layer to make residual
                        }
                        let s = setting(mup, depth, nu, alpha, residual);
                        let (mut rel, mut se) = compare(&s, DIM, SEEDS);
                        if 2.0 * se >= TOLERANCE / 2.0 {
                            // Too noisy to decide at 96 seeds (10 of the 60 cases were):
                            // decide it with twice the seeds.
                            (rel, se) = compare(&s, DIM, 2 * SEEDS);
                        }
                        if rel >= TOLERANCE || 2.0 * se >= TOLERANCE / 2.0 {
                            failures.push(format!(
                                "{}: {:.2}% (SE {:.2}%)",
                                label(&s),
                                100.0 * rel,
                                100.0 * se
                            ));
                        }
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "cases outside 5 %:\n{}",
        failures.join("\n")
    );
}

/// Power-law data (issue 7): the late-time exponent χ of the test loss ℒ ∝ t^{−χ} is larger in
/// the rich regime than in the lazy one, in the theory and in 64 simulated networks per regime
/// (D = 256, steps 100..400; docs/proportional.md, "Power-law data"). About 6 minutes.
#[test]
#[ignore]
fn rich_regime_accelerates_the_power_law() {
    use power_law::{REGIMES, WINDOW, exponent, jackknife, simulate, theory};
    let [(_, lazy_gamma), (_, rich_gamma)] = REGIMES;
    let (lazy, rich) = (theory(lazy_gamma), theory(rich_gamma));
    println!(
        "theory χ: lazy {:.4} (halves {:.4}, {:.4}), rich {:.4} (halves {:.4}, {:.4})",
        lazy.whole, lazy.halves.0, lazy.halves.1, rich.whole, rich.halves.0, rich.halves.1
    );
    // The kernel exponent (a − 1)/a = 1/2, up to the finite-D cutoff: the unlearned tail
    // Σ_{k*<k≤D} k^{−2} misses ≈ k*/D ≲ 10 % of itself by the end of the window, which
    // steepens the fitted slope by a few hundredths.
    assert!(
        (lazy.whole - 0.5).abs() < 0.05,
        "lazy theory exponent {:.4} is not the kernel value 1/2",
        lazy.whole
    );
    // A single exponent is only meaningful up to the curvature of each log-log curve.
    let gain = rich.whole - lazy.whole;
    assert!(
        gain > lazy.spread() + rich.spread(),
        "theory: rich − lazy exponent {gain:.4} does not exceed the curvature {:.4} + {:.4}",
        lazy.spread(),
        rich.spread()
    );
    let seeds = 64;
    let sims = [simulate(lazy_gamma, seeds), simulate(rich_gamma, seeds)];
    for (curves, th, name) in [(&sims[0], &lazy, "lazy"), (&sims[1], &rich, "rich")] {
        let (chi, se) = jackknife(&[curves], |m| exponent(&m[0], WINDOW));
        println!(
            "simulation χ {name}: {chi:.4} ± {se:.4} (theory {:.4})",
            th.whole
        );
        assert!(
            (chi - th.whole).abs() < 3.0 * se,
            "{name}: simulated exponent {chi:.4} ± {se:.4} vs theory {:.4}",
            th.whole
        );
    }
    let (sim_gain, se) = jackknife(&[&sims[0], &sims[1]], |m| {
        exponent(&m[1], WINDOW) - exponent(&m[0], WINDOW)
    });
    println!("simulation: rich − lazy = {sim_gain:.4} ± {se:.4} (theory {gain:.4})");
    assert!(
        sim_gain > 3.0 * se,
        "simulation: rich − lazy exponent {sim_gain:.4} ± {se:.4} is not 3 SE above zero"
    );
}
