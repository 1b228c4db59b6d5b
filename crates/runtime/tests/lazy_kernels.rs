//! Lazy-limit kernels against independent oracles: the closed forms of theory.md 2c
//! checked by a 1-D integral that conditions on one coordinate (a different method from
//! both the arc-cosine formula and the 2-D Gauss–Hermite rule).

mod common;

use common::*;
use dmft_runtime::lazy::{PairIntegrator, lazy_kernels};
use dmft_runtime::{Activation, SolverKind, SolverOptions, no_progress, solve};
use libm::erf;
use std::f64::consts::PI;

fn normal_pdf(x: f64) -> f64 {
    (-0.5 * x * x).exp() / (2.0 * PI).sqrt()
}

fn normal_cdf(x: f64) -> f64 {
    0.5 * libm::erfc(-x / 2f64.sqrt())
}

/// Composite Simpson on [a, b] with n (even) intervals.
fn simpson(f: &impl Fn(f64) -> f64, a: f64, b: f64, n: usize) -> f64 {
    let h = (b - a) / n as f64;
    let mut s = f(a) + f(b);
    for i in 1..n {
        s += f(a + i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
    }
    s * h / 3.0
}

/// E over x ~ N(0,1) of F(x), split at 0 where relu-type integrands have a kink;
/// Simpson with 20000 intervals per half on [−14, 14] has error ≪ 1e-12 for these smooth pieces.
fn gauss_expect(f: impl Fn(f64) -> f64) -> f64 {
    let g = |x: f64| f(x) * normal_pdf(x);
    // The halves end just off 0 so each sees its own one-sided limit of a relu step.
    simpson(&g, -14.0, -1e-300, 20000) + simpson(&g, 1e-300, 14.0, 20000)
}

/// (⟨φφ⟩, ⟨φ'φ'⟩) by conditioning: u_a = √q_a x, u_b = m x + s ξ, with the inner
/// expectation over ξ in closed form.
fn conditioned(act: Activation, qa: f64, qb: f64, c: f64) -> (f64, f64) {
    let sa = qa.sqrt();
    let m = c / sa;
    let s = (qb - m * m).max(0.0).sqrt();
    type Inner = Box<dyn Fn(f64) -> f64>;
    let (inner_phi, inner_d): (Inner, Inner) = match act {
        Activation::Relu => (
            Box::new(move |a: f64| a * normal_cdf(a / s) + s * normal_pdf(a / s)),
            Box::new(move |a: f64| normal_cdf(a / s)),
        ),
        Activation::Erf => (
            Box::new(move |a: f64| erf(a / (1.0 + 2.0 * s * s).sqrt())),
            Box::new(move |a: f64| {
                let v = 1.0 + 2.0 * s * s;
                2.0 / PI.sqrt() * (-a * a / v).exp() / v.sqrt()
            }),
        ),
        _ => unreachable!(),
    };
    (
        gauss_expect(|x| act.phi(sa * x) * inner_phi(m * x)),
        gauss_expect(|x| act.d1(sa * x) * inner_d(m * x)),
    )
}

const PAIRS: [(f64, f64, f64); 5] = [
    (1.0, 1.0, 0.3),
    (0.7, 1.9, -0.8),
    (2.5, 0.4, 0.95),
    (1.3, 1.3, 1.29),
    (0.9, 1.6, 0.0),
];

/// theory.md 2c closed forms vs the conditioned 1-D integral: agreement to 1e-10
/// (the oracle's own error is below 1e-12).
#[test]
fn closed_forms_match_conditioned_integrals() {
    for act in [Activation::Relu, Activation::Erf] {
        let integrator = PairIntegrator::new(act, 0).unwrap();
        for (qa, qb, c) in PAIRS {
            let (pp, dd) = integrator.pair(qa, qb, c);
            let (pp_ref, dd_ref) = conditioned(act, qa, qb, c);
            assert!(
                (pp - pp_ref).abs() < 1e-10,
                "{act} ⟨φφ⟩ at {qa},{qb},{c}: {pp} vs {pp_ref}"
            );
            assert!(
                (dd - dd_ref).abs() < 1e-10,
                "{act} ⟨φ'φ'⟩ at {qa},{qb},{c}: {dd} vs {dd_ref}"
            );
        }
    }
}

/// The Gauss–Hermite path used for tanh, gelu, softplus, checked on erf where the closed form
/// is known: a 96-point rule integrates this entire function to round-off.
#[test]
fn gauss_hermite_path_matches_erf_closed_form() {
    let integrator = PairIntegrator::new(Activation::Erf, 0).unwrap();
    for (qa, qb, c) in PAIRS {
        let (pp, dd) = integrator.pair(qa, qb, c);
        let (pq, dq) = integrator.quadrature_pair(qa, qb, c);
        assert!(
            (pp - pq).abs() < 1e-10 && (dd - dq).abs() < 1e-10,
            "{qa},{qb},{c}: {pp} {pq} {dd} {dq}"
        );
    }
}

/// Two-layer NTK is Φ¹ + Ġ¹ ⊙ K^x; linear depth-L NTK is (L+1) K^x.
#[test]
fn ntk_recursion_matches_hand_formulas() {
    let prob = gaussian_problem(4, 2, 6, 3);
    let relu = lazy_kernels(&prob, &mup(1, Activation::Relu, 1.0), 0).unwrap();
    let integrator = PairIntegrator::new(Activation::Relu, 0).unwrap();
    let (phi, dphi) = integrator.maps(prob.kx.view());
    let want = &phi + &(&dphi * &prob.kx);
    assert!((&relu.ntk - &want).iter().all(|v| v.abs() < 1e-14));
    let lin = lazy_kernels(&prob, &mup(3, Activation::Linear, 1.0), 0).unwrap();
    assert!(
        (&lin.ntk - &(&prob.kx * 4.0))
            .iter()
            .all(|v| v.abs() < 1e-13)
    );
}

/// Lazy predictions follow Δ(k) = (I − ηK/P)^k y exactly, checked against an
/// eigendecomposition of K (a different computation from the step-by-step march).
#[test]
fn lazy_dynamics_match_spectral_solution() {
    let prob = gaussian_problem(5, 2, 7, 4);
    let model = mup(2, Activation::Tanh, 1.0);
    let sch = schedule(0.7, 30);
    let traj = solve(
        &prob,
        &model,
        &sch,
        SolverKind::Lazy,
        &SolverOptions::default(),
        &no_progress,
    )
    .unwrap();
    let k = lazy_kernels(&prob, &model, 0)
        .unwrap()
        .ntk
        .slice(ndarray::s![..5, ..5])
        .to_owned();
    let (vals, vecs) = dmft_runtime::linalg::eigh(k.view()).unwrap();
    let y_modes = vecs.t().dot(&prob.y);
    for step in [0, 7, 30] {
        let decay = vals.mapv(|l| (1.0 - 0.7 * l / 5.0).powi(step as i32));
        let delta = vecs.dot(&(&y_modes * &decay));
        let f = &prob.y - &delta;
        let err = (&f - &traj.f_train.row(step))
            .iter()
            .fold(0.0_f64, |a, v| a.max(v.abs()));
        assert!(err < 1e-12, "step {step}: {err}");
    }
}
