//! Numeric soundness of the rewrite rules: for each rule, an instance is rewritten by that
//! rule alone (so the test is about the rule, not about the identity), and both sides are
//! evaluated by the reference interpreter on random inputs (random matrices and vectors;
//! finite differences for ∂; Gauss–Hermite quadrature for Gaussian averages).
//!
//! Rules checked elsewhere: the network → single-site rules (`single_site`), the source
//! calculus of Gaussian sources, lifting, and the lazy limit are exercised end to end by
//! tests/interpreter.rs, whose derived equations reproduce the runtime's independent
//! solvers to 1e-9.

use dmft_expr::interp::{Mat, Setting, Value, evaluate, gauss_hermite, kernel_map, pair_average};
use dmft_expr::lang::{EGraph, Rewrite, parse};
use dmft_expr::rules;
use dmft_expr::{Activation, Spec};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use std::collections::HashMap;

const N: usize = 3;

fn setting() -> Setting {
    Setting {
        kx: Mat::identity(N),
        y: vec![0.0; N],
        gamma0: 1.3,
        eta: 0.4,
        steps: 3,
        beta: 0.8,
    }
}

/// Random values: capitals are N×N matrices, a b e v w are vectors, s t q x are scalars
/// (`c`, the constant the scaling rules know as a scalar, comes from the setting).
fn random_globals(rng: &mut Xoshiro256PlusPlus) -> HashMap<String, Value> {
    let mut g = HashMap::new();
    for m in ["A", "B", "M", "Q"] {
        let data = (0..N * N).map(|_| rng.random_range(-1.0..1.0)).collect();
        g.insert(
            m.to_string(),
            Value::M(Mat {
                rows: N,
                cols: N,
                data,
            }),
        );
    }
    for v in ["a", "b", "e", "v", "w"] {
        g.insert(
            v.to_string(),
            Value::V((0..N).map(|_| rng.random_range(-1.5..1.5)).collect()),
        );
    }
    for s in ["s", "t", "q", "x"] {
        g.insert(s.to_string(), Value::S(rng.random_range(-1.5..1.5)));
    }
    g
}

fn close(a: &Value, b: &Value, tol: f64) -> bool {
    let flat = |v: &Value| match v {
        Value::S(x) => vec![*x],
        Value::V(v) => v.clone(),
        Value::M(m) => m.data.clone(),
    };
    let (mut x, mut y) = (flat(a), flat(b));
    // A scalar beside a vector or matrix is broadcast (0 stands for the zero of any shape).
    if x.len() == 1 {
        x = vec![x[0]; y.len()];
    }
    if y.len() == 1 {
        y = vec![y[0]; x.len()];
    }
    x.len() == y.len()
        && x.iter()
            .zip(&y)
            .all(|(p, q)| (p - q).abs() <= tol * (1.0 + q.abs()))
}

/// The rule rewrites `lhs` so that `rhs` is in its class, after one iteration.
fn fires(rule: &Rewrite, lhs: &str, rhs: &str) -> bool {
    let mut eg = EGraph::default();
    let l = eg.add_expr(&parse(lhs));
    let runner = egg::Runner::default()
        .with_egraph(eg)
        .with_iter_limit(1)
        .run(std::slice::from_ref(rule));
    runner
        .egraph
        .lookup_expr(&parse(rhs))
        .map(|r| runner.egraph.find(r))
        == Some(runner.egraph.find(l))
}

fn all_rules() -> Vec<Rewrite> {
    let spec = Spec::mlp("any", 2, Activation::Tanh);
    let mut rs = rules::algebra();
    rs.extend(rules::commutative());
    rs.extend(rules::factoring());
    rs.extend(rules::operators());
    rs.extend(rules::activations());
    rs.extend(rules::source_calculus());
    rs.extend(rules::gaussian(&spec));
    rs
}

/// (rule, instance lhs, instance rhs, tolerance)
#[rustfmt::skip]
const CASES: &[(&str, &str, &str, f64)] = &[
    ("comm-add", "(+ a b)", "(+ b a)", 1e-12),
    ("assoc-add", "(+ a (+ b e))", "(+ (+ a b) e)", 1e-12),
    ("comm-mul", "(* a b)", "(* b a)", 1e-12),
    ("assoc-mul", "(* a (* b e))", "(* (* a b) e)", 1e-12),
    ("add-0", "(+ a 0)", "a", 1e-12),
    ("add-0-l", "(+ 0 a)", "a", 1e-12),
    ("mul-0", "(* a 0)", "0", 1e-12),
    ("mul-0-l", "(* 0 a)", "0", 1e-12),
    ("mul-1", "(* a 1)", "a", 1e-12),
    ("mul-1-l", "(* 1 a)", "a", 1e-12),
    ("neg-0", "(neg 0)", "0", 1e-12),
    ("dot-0r", "(dot A 0)", "0", 1e-12),
    ("dot-0l", "(dot 0 v)", "0", 1e-12),
    ("dot-scale-l", "(dot (* c A) v)", "(* c (dot A v))", 1e-12),
    ("dot-scale-r", "(dot A (* c v))", "(* c (dot A v))", 1e-12),
    ("dot-neg", "(dot (neg A) v)", "(neg (dot A v))", 1e-12),
    ("sum<-0", "(sum< i n 0)", "0", 1e-12),
    ("sum<=-0", "(sum<= i n 0)", "0", 1e-12),
    ("sum<-add", "(sum< i n (+ a (* s b)))", "(+ (sum< i n a) (sum< i n (* s b)))", 1e-12),
    ("sum<=-add", "(sum<= i n (+ a b))", "(+ (sum<= i n a) (sum<= i n b))", 1e-12),
    ("sum<-scale", "(sum< i n (* c a))", "(* c (sum< i n a))", 1e-12),
    ("sum<=-scale", "(sum<= i n (* c a))", "(* c (sum<= i n a))", 1e-12),
    ("T-T", "(T (T A))", "A", 1e-12),
    ("T-dot", "(T (dot A B))", "(dot (T B) (T A))", 1e-12),
    ("dot-distrib-r", "(dot A (+ a b))", "(+ (dot A a) (dot A b))", 1e-12),
    ("dot-factor-r", "(+ (dot A v) (dot B v))", "(dot (+ A B) v)", 1e-12),
    ("dot-assoc", "(dot A (dot B v))", "(dot (dot A B) v)", 1e-12),
    ("dot-scale-in", "(* c (dot A v))", "(dot (* c A) v)", 1e-12),
    ("linear-act", "(act linear a)", "a", 1e-12),
    ("linear-d1", "(dact linear a)", "1", 1e-12),
    ("linear-d2", "(ddact linear a)", "0", 1e-12),
    ("relu-d1-square", "(* (dact relu a) (dact relu a))", "(dact relu a)", 1e-12),
    ("relu-homogeneous", "(* a (dact relu a))", "(act relu a)", 1e-12),
    ("relu-act-d1", "(* (act relu a) (dact relu a))", "(act relu a)", 1e-12),
    ("tanh-d1", "(dact tanh a)", "(+ 1 (neg (* (act tanh a) (act tanh a))))", 1e-12),
    ("erf-d2", "(ddact erf a)", "(* -2 (* a (dact erf a)))", 1e-12),
    ("d-add", "(d (+ (act tanh x) (* x x)) x)", "(+ (d (act tanh x) x) (d (* x x) x))", 1e-7),
    ("d-mul", "(d (* (act erf x) (* x x)) x)",
     "(+ (* (d (act erf x) x) (* x x)) (* (act erf x) (d (* x x) x)))", 1e-7),
    ("d-neg", "(d (neg (act tanh x)) x)", "(neg (d (act tanh x) x))", 1e-7),
    ("d-act", "(d (act tanh (* s x)) x)", "(* (dact tanh (* s x)) (d (* s x) x))", 1e-7),
    ("d-act", "(d (act gelu (* s x)) x)", "(* (dact gelu (* s x)) (d (* s x) x))", 1e-7),
    ("d-act", "(d (act softplus (* s x)) x)", "(* (dact softplus (* s x)) (d (* s x) x))", 1e-7),
    ("d-dact", "(d (dact erf (* s x)) x)", "(* (ddact erf (* s x)) (d (* s x) x))", 1e-7),
    ("d-dact", "(d (dact tanh (* s x)) x)", "(* (ddact tanh (* s x)) (d (* s x) x))", 1e-7),
    ("d-sum<", "(d (sum< i n (* x (act tanh (* x v)))) x)",
     "(sum< i n (d (* x (act tanh (* x v))) x))", 1e-7),
    ("d-sum<=", "(d (sum<= i n (* x x)) x)", "(sum<= i n (d (* x x) x))", 1e-7),
    ("d-sum-a", "(d (sum-a (* x v)) x)", "(sum-a (d (* x v) x))", 1e-7),
];

#[test]
fn deterministic_rules_fire_and_agree_numerically() {
    let rules = all_rules();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(5);
    let times: HashMap<String, usize> = [("n".to_string(), 3)].into();
    for (name, lhs, rhs, tol) in CASES {
        let rule = rules
            .iter()
            .find(|r| r.name.as_str() == *name)
            .unwrap_or_else(|| panic!("no rule {name}"));
        assert!(
            fires(rule, lhs, rhs),
            "{name} does not rewrite {lhs} to {rhs}"
        );
        for _ in 0..5 {
            let g = random_globals(&mut rng);
            let l = evaluate(&parse(lhs), &setting(), &g, &times, &[]);
            let r = evaluate(&parse(rhs), &setting(), &g, &times, &[]);
            assert!(close(&l, &r, *tol), "{name}: {l:?} vs {r:?}");
        }
    }
}

/// Checks the dot/constant rules a pattern cannot state as one instance: solving
/// x = a + M x, and the constant derivative.
#[test]
fn solve_linear_and_derivative_of_constants() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(6);
    for _ in 0..5 {
        let mut g = random_globals(&mut rng);
        // Strictly lower-triangular M, as every causal operator is.
        let mut m = g["M"].matrix().clone();
        for i in 0..N {
            for j in i..N {
                m[(i, j)] = 0.0;
            }
        }
        g.insert("M".into(), Value::M(m));
        let x = evaluate(
            &parse("(dot (opinv (+ I (neg M))) a)"),
            &setting(),
            &g,
            &HashMap::new(),
            &[],
        );
        g.insert("xsol".into(), x.clone());
        let fixed = evaluate(
            &parse("(+ a (dot M xsol))"),
            &setting(),
            &g,
            &HashMap::new(),
            &[],
        );
        assert!(close(&fixed, &x, 1e-12), "solve-linear: {fixed:?} vs {x:?}");
        let d = evaluate(
            &parse("(d (* s (act tanh t)) x)"),
            &setting(),
            &g,
            &HashMap::new(),
            &[],
        );
        assert!(close(&d, &Value::S(0.0), 1e-9), "d-const: {d:?}");
    }
}

/// The Gaussian rules: closed-form kernels against 2-D quadrature, Stein's lemma, and the
/// factorization of independent sources, on random covariances.
#[test]
fn gaussian_rules_against_quadrature() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
    for _ in 0..5 {
        let data = (0..N * N).map(|_| rng.random_range(-1.0..1.0)).collect();
        let b = Mat {
            rows: N,
            cols: N,
            data,
        };
        let mut cov = Mat::from_fn(N, N, |i, j| (0..N).map(|t| b[(i, t)] * b[(j, t)]).sum());
        for i in 0..N {
            cov[(i, i)] += 0.2;
        }
        let f = |name: &str, order: usize| (name.to_string(), order);
        for (rule, act, order, map) in [
            ("erf-kernel", "erf", 0, "erfk"),
            ("erf-d1-kernel", "erf", 1, "derfk"),
        ] {
            let quad = pair_average(&cov, &f(act, order), &f(act, order), 96);
            let closed = kernel_map(map, &cov);
            let err = quad
                .data
                .iter()
                .zip(&closed.data)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            println!("{rule}: max |quadrature − closed form| = {err:.2e}");
            assert!(err < 1e-6, "{rule}: max error {err:e}");
        }
        // relu has a kink, where tensor quadrature converges slowly: Monte Carlo instead,
        // within 5 standard errors.
        relu_maps_by_monte_carlo(&cov, &mut rng);
        // Stein: ⟨φ(u_a) u_b⟩ = ⟨φ'(u_a)⟩ Φ_ab.
        let (x, w) = gauss_hermite(96);
        for act in ["tanh", "erf", "gelu", "softplus"] {
            let lhs = pair_average(&cov, &f(act, 0), &f("linear", 0), 96);
            for a in 0..N {
                let mean_d1: f64 = x
                    .iter()
                    .zip(&w)
                    .map(|(z, w)| w * dmft_expr::interp::activation(act, 1, cov[(a, a)].sqrt() * z))
                    .sum();
                for bb in 0..N {
                    let rhs = mean_d1 * cov[(a, bb)];
                    assert!(
                        (lhs[(a, bb)] - rhs).abs() < 1e-6,
                        "stein {act}: {} vs {rhs}",
                        lhs[(a, bb)]
                    );
                }
            }
        }
    }
}

fn relu_maps_by_monte_carlo(cov: &Mat, rng: &mut Xoshiro256PlusPlus) {
    use rand_distr::{Distribution, StandardNormal};
    // Cholesky factor of the 3×3 covariance.
    let mut l = Mat::zeros(N, N);
    for i in 0..N {
        for j in 0..=i {
            let sum: f64 = (0..j).map(|t| l[(i, t)] * l[(j, t)]).sum();
            l[(i, j)] = if i == j {
                (cov[(i, i)] - sum).sqrt()
            } else {
                (cov[(i, j)] - sum) / l[(j, j)]
            };
        }
    }
    let samples = 400_000;
    for (rule, order, map) in [
        ("relu-kernel", 0, "arccos1"),
        ("relu-d1-kernel", 1, "arccos0"),
    ] {
        let closed = kernel_map(map, cov);
        let (mut sum, mut sum2) = (Mat::zeros(N, N), Mat::zeros(N, N));
        for _ in 0..samples {
            let xi: Vec<f64> = (0..N).map(|_| StandardNormal.sample(&mut *rng)).collect();
            let u: Vec<f64> = (0..N)
                .map(|i| (0..=i).map(|t| l[(i, t)] * xi[t]).sum())
                .collect();
            for a in 0..N {
                for b in 0..N {
                    let v = dmft_expr::interp::activation("relu", order, u[a])
                        * dmft_expr::interp::activation("relu", order, u[b]);
                    sum[(a, b)] += v;
                    sum2[(a, b)] += v * v;
                }
            }
        }
        for a in 0..N {
            for b in 0..N {
                let mean = sum[(a, b)] / samples as f64;
                let se = ((sum2[(a, b)] / samples as f64 - mean * mean) / samples as f64).sqrt();
                let gap = (mean - closed[(a, b)]).abs();
                assert!(
                    gap < 5.0 * se + 1e-12,
                    "{rule}: {mean} vs {} (SE {se:e})",
                    closed[(a, b)]
                );
            }
        }
    }
}

/// independent-sources and zero-mean: with r independent of u and ⟨r⟩ = 0,
/// ⟨(a(u) r)(b(u) r)ᵀ⟩ = ⟨a bᵀ⟩ ⟨r rᵀ⟩ and ⟨u rᵀ⟩ = 0, by 3-D quadrature (u_a, u_b, r).
#[test]
fn independence_of_sources_by_quadrature() {
    let (x, w) = gauss_hermite(40);
    let (qa, qb, c, g): (f64, f64, f64, f64) = (1.2, 0.7, 0.5, 1.7);
    let rho = c / f64::sqrt(qa * qb);
    let (mut lhs, mut ab, mut ur) = (0.0, 0.0, 0.0);
    for (x1, w1) in x.iter().zip(&w) {
        let ua = qa.sqrt() * x1;
        for (x2, w2) in x.iter().zip(&w) {
            let ub = qb.sqrt() * (rho * x1 + (1.0 - rho * rho).sqrt() * x2);
            let (fa, fb) = (ua.tanh(), (ub * 0.5).sin());
            ab += w1 * w2 * fa * fb;
            for (x3, w3) in x.iter().zip(&w) {
                let r = g.sqrt() * x3;
                lhs += w1 * w2 * w3 * (fa * r) * (fb * r);
                ur += w1 * w2 * w3 * ua * r;
            }
        }
    }
    assert!(
        (lhs - ab * g).abs() < 1e-12,
        "independent-sources: {lhs} vs {}",
        ab * g
    );
    assert!(ur.abs() < 1e-12, "zero-mean-ur: {ur}");
}
