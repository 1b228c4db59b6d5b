//! Every generated solver against the runtime's hand-written reference on the same
//! problem: the infinite-width outputs (f on train and test points, the loss, the NTK at
//! every recorded step), trained and frozen readouts alike, and the prediction propagator
//! (Σ_f and the NTK variances; Σ_f of the joint site for residual streams) of every variant
//! that has a generated one.
//!
//! Tolerances. Deterministic paths (lazy kernels, the deep-linear closed form, two-layer
//! Gauss–Hermite quadrature) must agree to 1e-10 relative to the largest magnitude of each
//! output: the generated code evaluates the same mathematics with sums associated in the
//! derivation's order (the NTK) or through BLAS gemv instead of gemv-then-scale (lazy
//! dynamics), differences of a few ulps per step that stay below 1e-13 over these runs.
//! Sampled paths (Monte Carlo sites, same seed) must agree to 1e-12: the generated march
//! keeps the reference's chunking and order of products, so the numbers are identical in
//! practice; the test also reports whether they are bit-identical. The propagator is held
//! to 1e-12 on both kinds of sites: the generated recorder does the reference's arithmetic
//! in the reference's order (only products by constant 1 and additions of relu's zero
//! updates are folded, which change no value), and the tangents and Σ_f assembly are the
//! runtime's own, so it too is bit-identical in practice.

use dmft_runtime::Readout;
use dmft_runtime::propagator::{PredictionFluctuations, two_layer_prediction_fluctuations};
use dmft_runtime::{
    Activation, Model, Parameterization, Problem, Schedule, SolverKind, SolverOptions, Trajectory,
    no_progress,
};
use dmft_solvers::generated::REGISTRY;
use dmft_solvers::{Source, find, prediction_fluctuations, solve};
use ndarray::{Array1, Array2, ArrayView, Dimension};

/// Four train and two test inputs in 3 dimensions, targets from a fixed linear teacher.
fn problem() -> Problem {
    let x = [
        [0.9, -0.4, 0.3],
        [-0.2, 1.1, 0.5],
        [0.4, 0.3, -1.2],
        [1.0, 0.8, 0.1],
        [-0.7, 0.2, 0.9],
        [0.3, -1.0, -0.4],
    ];
    let (p, q) = (4, 2);
    let x_train = Array2::from_shape_fn((p, 3), |(i, j)| x[i][j]);
    let x_test = Array2::from_shape_fn((q, 3), |(i, j)| x[p + i][j]);
    let teach = |r: &[f64; 3]| 0.7 * r[0] - 0.5 * r[1] + 0.2 * r[2];
    let y = Array1::from_iter((0..p).map(|i| teach(&x[i])));
    let y_test = Array1::from_iter((p..p + q).map(|i| teach(&x[i])));
    Problem::from_inputs(x_train.view(), y, x_test.view(), Some(y_test)).unwrap()
}

fn model(
    depth: usize,
    activation: Activation,
    readout: Readout,
    gamma0: f64,
    centered: bool,
) -> Model {
    Model {
        depth,
        activation,
        parameterization: Parameterization::Mup,
        gamma0,
        centered,
        residual: None,
        readout,
    }
}

/// max |a − b| / max |b| over one output.
fn rel<D: Dimension>(a: ArrayView<f64, D>, b: ArrayView<f64, D>) -> f64 {
    assert_eq!(a.shape(), b.shape());
    let scale = b.iter().fold(0.0_f64, |m, v| m.max(v.abs())).max(1e-300);
    a.iter()
        .zip(b.iter())
        .fold(0.0_f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// Worst relative difference over f_train, f_test, loss, test loss and NTK.
fn worst(generated: &Trajectory, reference: &Trajectory) -> f64 {
    assert_eq!(generated.steps, reference.steps);
    assert_eq!(generated.solver, reference.solver);
    let mut w = rel(generated.f_train.view(), reference.f_train.view())
        .max(rel(generated.f_test.view(), reference.f_test.view()))
        .max(rel(generated.loss.view(), reference.loss.view()))
        .max(rel(generated.ntk.view(), reference.ntk.view()));
    if let (Some(a), Some(b)) = (&generated.test_loss, &reference.test_loss) {
        w = w.max(rel(a.view(), b.view()));
    }
    w
}

fn identical(generated: &Trajectory, reference: &Trajectory) -> bool {
    generated.f_train == reference.f_train
        && generated.f_test == reference.f_test
        && generated.ntk == reference.ntk
}

/// Runs the generated solver for (kind, model) and the reference; returns both.
fn both(
    kind: SolverKind,
    m: &Model,
    schedule: &Schedule,
    options: &SolverOptions,
) -> (Trajectory, Trajectory) {
    let prob = problem();
    let g = find(kind, m).unwrap_or_else(|| panic!("no generated {kind} for {m:?}"));
    let generated = (g.solve)(&prob, m, schedule, options, &no_progress).unwrap();
    let reference = dmft_runtime::solve(&prob, m, schedule, kind, options, &no_progress).unwrap();
    (generated, reference)
}

fn schedule(eta: f64, steps: usize, record_every: usize) -> Schedule {
    Schedule {
        eta,
        steps,
        record_every,
    }
}

#[test]
fn lazy_solvers_match_the_reference() {
    let options = SolverOptions::default();
    let mut covered = 0;
    for g in REGISTRY.iter().filter(|g| g.solver == SolverKind::Lazy) {
        let m = model(g.depth, g.activation, g.readout, 1.0, false);
        let (generated, reference) = both(SolverKind::Lazy, &m, &schedule(0.8, 60, 3), &options);
        let w = worst(&generated, &reference);
        println!(
            "{:<24} lazy            worst relative difference {w:.2e}",
            g.variant
        );
        assert!(w <= 1e-10, "{}: {w:e} > 1e-10", g.variant);
        assert_eq!(generated.method, reference.method);
        covered += 1;
    }
    assert!(covered >= 5, "only {covered} lazy variants generated");
}

#[test]
fn deep_linear_closed_forms_match_the_reference() {
    let mut covered = 0;
    for g in REGISTRY
        .iter()
        .filter(|g| g.solver == SolverKind::DeepLinear && !g.residual)
    {
        for gamma0 in [0.5, 2.0] {
            let m = model(g.depth, Activation::Linear, g.readout, gamma0, false);
            let (generated, reference) = both(
                SolverKind::DeepLinear,
                &m,
                &schedule(0.4, 12, 2),
                &SolverOptions::default(),
            );
            let w = worst(&generated, &reference);
            println!(
                "{:<24} closed form γ₀={gamma0} worst relative difference {w:.2e}",
                g.variant
            );
            assert!(w <= 1e-10, "{} γ₀={gamma0}: {w:e} > 1e-10", g.variant);
        }
        covered += 1;
    }
    assert!(covered >= 3, "only {covered} closed forms generated");
}

/// The residual variants (β/√L branches, added through specs alone) against the runtime's
/// joint-stream closed form, at two β and two γ₀; and `find` never hands a residual model
/// to a plain solver or the reverse.
#[test]
fn residual_closed_forms_match_the_reference() {
    let mut covered = 0;
    for g in REGISTRY.iter().filter(|g| g.residual) {
        for (beta, gamma0) in [(1.0, 0.5), (0.6, 2.0)] {
            let m = Model {
                residual: Some(beta),
                ..model(g.depth, Activation::Linear, g.readout, gamma0, false)
            };
            assert_eq!(find(SolverKind::DeepLinear, &m).unwrap().variant, g.variant);
            let frozen = Model {
                readout: Readout::Frozen,
                ..m.clone()
            };
            assert!(find(SolverKind::DeepLinear, &frozen).is_none());
            let plain = model(g.depth, Activation::Linear, g.readout, gamma0, false);
            assert!(find(SolverKind::DeepLinear, &plain).is_none_or(|p| !p.residual));
            let (generated, reference) = both(
                SolverKind::DeepLinear,
                &m,
                &schedule(0.4, 12, 2),
                &SolverOptions::default(),
            );
            let w = worst(&generated, &reference);
            println!(
                "{:<24} residual β={beta} γ₀={gamma0} worst relative difference {w:.2e} (bit-identical: {})",
                g.variant,
                identical(&generated, &reference)
            );
            assert!(
                w <= 1e-10,
                "{} β={beta} γ₀={gamma0}: {w:e} > 1e-10",
                g.variant
            );
            assert_eq!(generated.method, reference.method);
        }
        covered += 1;
    }
    assert!(
        covered >= 2,
        "residual L = 2 and 3 generated, got {covered}"
    );
}

/// The residual variants' generated propagators (the stream read off the derived
/// equations, the runtime's joint-site assembly) against the reference propagator, Σ_f over
/// every step and point to 1e-12 of its largest entry (the same arithmetic: identical in
/// practice), at two β; the dispatch names the generated one; a plain model is refused by it.
#[test]
fn residual_propagators_match_the_reference() {
    use dmft_runtime::deep_linear_propagator::deep_linear_prediction_fluctuations;
    let mut covered = 0;
    for g in REGISTRY.iter().filter(|g| g.residual) {
        let run = g
            .deep_propagator
            .expect("every residual variant has a generated propagator");
        for beta in [1.0, 2.5] {
            let m = Model {
                residual: Some(beta),
                ..model(g.depth, Activation::Linear, g.readout, 1.2, false)
            };
            let schedule = schedule(0.4, 3, 1);
            let (generated, source) = dmft_solvers::deep_linear_prediction_fluctuations(
                &problem(),
                &m,
                &schedule,
                &|_| {},
            )
            .unwrap();
            assert_eq!(source, Source::Generated(g.variant));
            let reference = deep_linear_prediction_fluctuations(&problem(), &m, &schedule).unwrap();
            let w = rel(generated.sigma.view(), reference.sigma.view());
            println!(
                "{:<24} residual propagator β={beta}: worst relative difference {w:.2e} (bit-identical: {})",
                g.variant,
                generated.sigma == reference.sigma
            );
            assert!(w <= 1e-12, "{} β={beta}: {w:e}", g.variant);
        }
        let plain = model(g.depth, Activation::Linear, g.readout, 1.2, false);
        assert!(run(&problem(), &plain, &schedule(0.4, 3, 1), &|_| {}).is_err());
        covered += 1;
    }
    assert!(
        covered >= 2,
        "residual L = 2 and 3 generated, got {covered}"
    );
}

#[test]
fn two_layer_quadrature_matches_the_reference() {
    let options = SolverOptions {
        quadrature: 6,
        ..SolverOptions::default()
    };
    let mut covered = 0;
    for g in REGISTRY.iter().filter(|g| g.solver == SolverKind::TwoLayer) {
        for gamma0 in [0.1, 1.0] {
            let m = model(1, g.activation, g.readout, gamma0, false);
            let (generated, reference) =
                both(SolverKind::TwoLayer, &m, &schedule(0.5, 30, 5), &options);
            let w = worst(&generated, &reference);
            println!(
                "{:<24} quadrature γ₀={gamma0} worst relative difference {w:.2e} (bit-identical: {})",
                g.variant,
                identical(&generated, &reference)
            );
            assert!(w <= 1e-10, "{} γ₀={gamma0}: {w:e} > 1e-10", g.variant);
        }
        covered += 1;
    }
    assert_eq!(
        covered, 5,
        "two-layer linear, relu and tanh, relu and tanh with a frozen readout"
    );
}

#[test]
fn two_layer_monte_carlo_matches_the_reference_for_the_same_seed() {
    for g in REGISTRY.iter().filter(|g| g.solver == SolverKind::TwoLayer) {
        for centered in [false, true] {
            let m = model(1, g.activation, g.readout, 1.0, centered);
            let options = SolverOptions {
                sites: 5000,
                quadrature: 0,
                seed: 11,
            };
            let (generated, reference) =
                both(SolverKind::TwoLayer, &m, &schedule(0.5, 25, 5), &options);
            let w = worst(&generated, &reference);
            let se = |t: &Trajectory| t.f_train_se.clone().unwrap();
            let w_se = rel(se(&generated).view(), se(&reference).view());
            println!(
                "{:<24} monte carlo centered={centered} worst relative difference {w:.2e}, SE {w_se:.2e} (bit-identical: {})",
                g.variant,
                identical(&generated, &reference)
            );
            assert!(
                w <= 1e-12 && w_se <= 1e-12,
                "{}: {w:e}, SE {w_se:e}",
                g.variant
            );
        }
    }
}

#[test]
fn dispatch_names_its_source_and_falls_back_to_the_reference() {
    let prob = problem();
    let s = schedule(0.5, 5, 1);
    let options = SolverOptions {
        quadrature: 4,
        ..SolverOptions::default()
    };
    let relu = model(1, Activation::Relu, Readout::Trained, 1.0, false);
    let (_, source) = solve(
        &prob,
        &relu,
        &s,
        SolverKind::TwoLayer,
        &options,
        &no_progress,
    )
    .unwrap();
    assert_eq!(source.to_string(), "generated:two-layer-relu");
    let frozen = Model {
        readout: Readout::Frozen,
        ..relu.clone()
    };
    let (_, source) = solve(
        &prob,
        &frozen,
        &s,
        SolverKind::TwoLayer,
        &options,
        &no_progress,
    )
    .unwrap();
    assert_eq!(
        source.to_string(),
        "generated:two-layer-relu-frozen-readout"
    );
    // erf has no generated two-layer solver in the catalogue.
    let erf = model(1, Activation::Erf, Readout::Frozen, 1.0, false);
    let (t, source) = solve(
        &prob,
        &erf,
        &s,
        SolverKind::TwoLayer,
        &options,
        &no_progress,
    )
    .unwrap();
    assert_eq!(source, Source::Reference);
    assert_eq!(t.solver, SolverKind::TwoLayer);
    // Bad input is refused before any solver runs, with the reference's message.
    let bad = model(2, Activation::Relu, Readout::Trained, 1.0, false);
    let err = solve(
        &prob,
        &bad,
        &s,
        SolverKind::TwoLayer,
        &options,
        &no_progress,
    )
    .unwrap_err();
    assert!(err.to_string().contains("model.depth = 1"), "{err}");
    let err = solve(
        &prob,
        &Model {
            readout: Readout::Frozen,
            ..bad
        },
        &s,
        SolverKind::DeepNonlinear,
        &options,
        &no_progress,
    )
    .unwrap_err();
    assert!(err.to_string().contains("model.readout = frozen"), "{err}");
}

/// Worst relative difference over every output of the propagator.
fn worst_propagator(g: &PredictionFluctuations, r: &PredictionFluctuations) -> f64 {
    assert_eq!(g.steps, r.steps);
    [
        rel(g.sigma.view(), r.sigma.view()),
        rel(g.var_f_train.view(), r.var_f_train.view()),
        rel(g.var_f_test.view(), r.var_f_test.view()),
        rel(g.var_loss.view(), r.var_loss.view()),
        rel(g.var_ntk.view(), r.var_ntk.view()),
        rel(g.ntk_top.view(), r.ntk_top.view()),
        rel(g.var_ntk_top.view(), r.var_ntk_top.view()),
    ]
    .into_iter()
    .fold(0.0, f64::max)
}

/// Every generated propagator against the runtime's, on the same sites: a Gauss–Hermite
/// grid and a Monte Carlo population of the same seed, plain and centered, at a weak and
/// a strong coupling γ₀.
#[test]
fn propagators_match_the_reference_on_the_same_sites() {
    let prob = problem();
    let mut covered = 0;
    for g in REGISTRY.iter().filter(|g| g.solver == SolverKind::TwoLayer) {
        let run = g
            .propagator
            .unwrap_or_else(|| panic!("{}: no generated propagator", g.variant));
        let sites = [
            (
                "quadrature",
                SolverOptions {
                    quadrature: 6,
                    ..SolverOptions::default()
                },
            ),
            (
                "monte carlo",
                SolverOptions {
                    sites: 3000,
                    quadrature: 0,
                    seed: 11,
                },
            ),
        ];
        for (label, options) in &sites {
            for (gamma0, centered) in [(0.3, false), (1.5, false), (1.5, true)] {
                let m = model(1, g.activation, g.readout, gamma0, centered);
                let s = schedule(0.5, 12, 3);
                let generated = run(&prob, &m, &s, options, &no_progress).unwrap();
                let reference =
                    two_layer_prediction_fluctuations(&prob, &m, &s, options, &no_progress)
                        .unwrap();
                let w = worst_propagator(&generated, &reference);
                let identical =
                    generated.sigma == reference.sigma && generated.var_ntk == reference.var_ntk;
                println!(
                    "{:<30} propagator {label:<11} γ₀={gamma0} centered={centered:<5} worst relative difference {w:.2e} (bit-identical Σ_f and var_ntk: {identical})",
                    g.variant
                );
                assert!(
                    w <= 1e-12,
                    "{} {label} γ₀={gamma0} centered={centered}: {w:e}",
                    g.variant
                );
                assert!(
                    reference.sigma.iter().any(|&v| v.abs() > 1e-6),
                    "{}: Σ_f vanished, nothing compared",
                    g.variant
                );
            }
        }
        covered += 1;
    }
    assert_eq!(
        covered, 5,
        "two-layer linear, relu and tanh, relu and tanh with a frozen readout"
    );
}

/// The dispatch runs the generated propagator of the variant and names it; a variant
/// without one (erf) gets the reference; a generated propagator refuses another variant's
/// model instead of computing the wrong Σ_f.
#[test]
fn propagator_dispatch_names_its_source() {
    let prob = problem();
    let s = schedule(0.5, 4, 1);
    let options = SolverOptions {
        quadrature: 4,
        ..SolverOptions::default()
    };
    let relu = model(1, Activation::Relu, Readout::Trained, 1.0, false);
    let (_, source) = prediction_fluctuations(&prob, &relu, &s, &options, &no_progress).unwrap();
    assert_eq!(source.to_string(), "generated:two-layer-relu");
    let tanh_frozen = model(1, Activation::Tanh, Readout::Frozen, 1.0, false);
    let (_, source) =
        prediction_fluctuations(&prob, &tanh_frozen, &s, &options, &no_progress).unwrap();
    assert_eq!(
        source.to_string(),
        "generated:two-layer-tanh-frozen-readout"
    );
    let erf = model(1, Activation::Erf, Readout::Trained, 1.0, false);
    let (_, source) = prediction_fluctuations(&prob, &erf, &s, &options, &no_progress).unwrap();
    assert_eq!(source, Source::Reference);
    let relu_propagator = find(SolverKind::TwoLayer, &relu)
        .and_then(|g| g.propagator)
        .unwrap();
    let err = relu_propagator(&prob, &tanh_frozen, &s, &options, &no_progress).unwrap_err();
    assert!(err.to_string().contains("model.activation = tanh"), "{err}");
    let deep = model(2, Activation::Relu, Readout::Trained, 1.0, false);
    let err = prediction_fluctuations(&prob, &deep, &s, &options, &no_progress).unwrap_err();
    assert!(err.to_string().contains("model.depth = 1"), "{err}");
}
