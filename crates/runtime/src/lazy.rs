//! Lazy limit (γ₀ → 0 at fixed η, or NTK parameterization): kernels freeze at initialization.
//!
//! Φ^ℓ = ⟨φ(u)φ(u)ᵀ⟩ and Ġ^ℓ = ⟨φ'(u)φ'(u)ᵀ⟩ with u ~ N(0, Φ^{ℓ−1}), Φ⁰ = K^x;
//! G^{L+1} = 1, G^ℓ = G^{ℓ+1} ⊙ Ġ^ℓ; the NTK is K = Σ_{ℓ=0}^{L} G^{ℓ+1} ⊙ Φ^ℓ, and the
//! error follows Δ(k+1) = (I − ηK/P) Δ(k) with test predictions driven by K_{test,train}.

use crate::quadrature::gauss_hermite;
use crate::record::Recorder;
use crate::{Activation, Model, Problem, Progress, Result, Schedule, SolverKind, Trajectory};
use ndarray::{Array1, Array2, ArrayView2, s};
use std::f64::consts::PI;

/// Gauss–Hermite order per dimension for activations without a closed form when the
/// caller asks for the default (0). The integrands are smooth; 96 points reach round-off.
pub const DEFAULT_LAZY_ORDER: usize = 96;

/// Frozen kernels of the lazy limit over all points (train first, then test).
#[derive(Clone, Debug)]
pub struct LazyKernels {
    /// Φ^ℓ for ℓ = 0..=L (Φ⁰ = K^x).
    pub phi_kernel: Vec<Array2<f64>>,
    /// G^ℓ for ℓ = 1..=L+1 (index ℓ−1; the last entry is the all-ones readout kernel).
    pub grad_kernel: Vec<Array2<f64>>,
    /// K = Σ_ℓ G^{ℓ+1} ⊙ Φ^ℓ.
    pub ntk: Array2<f64>,
}

/// ⟨φ(u_a)φ(u_b)⟩ and ⟨φ'(u_a)φ'(u_b)⟩ for (u_a, u_b) ~ N(0, [[q_a, c], [c, q_b]]),
/// in closed form where theory.md 2c gives one, else by a 2-D Gauss–Hermite rule.
pub struct PairIntegrator {
    act: Activation,
    nodes: Array1<f64>,
    weights: Array1<f64>,
}

impl PairIntegrator {
    pub fn new(act: Activation, order: usize) -> Result<Self> {
        let order = if order == 0 {
            DEFAULT_LAZY_ORDER
        } else {
            order
        };
        let (nodes, weights) = gauss_hermite(order)?;
        Ok(PairIntegrator {
            act,
            nodes,
            weights,
        })
    }

    pub fn pair(&self, qa: f64, qb: f64, c: f64) -> (f64, f64) {
        match self.act {
            Activation::Linear => (c, 1.0),
            Activation::Relu => relu_pair(qa, qb, c),
            Activation::Erf => erf_pair(qa, qb, c),
            _ => self.quadrature_pair(qa, qb, c),
        }
    }

    /// Gauss–Hermite on u_a = √q_a ξ₁, u_b = (c/√q_a) ξ₁ + √(q_b − c²/q_a) ξ₂.
    pub fn quadrature_pair(&self, qa: f64, qb: f64, c: f64) -> (f64, f64) {
        let sa = qa.max(0.0).sqrt();
        let (m, s_perp) = if sa > 0.0 {
            let m = c / sa;
            (m, (qb - m * m).max(0.0).sqrt())
        } else {
            (0.0, qb.max(0.0).sqrt())
        };
        let (mut pp, mut dd) = (0.0, 0.0);
        for (x1, w1) in self.nodes.iter().zip(&self.weights) {
            let ua = sa * x1;
            let (fa, da) = (self.act.phi(ua), self.act.d1(ua));
            let (mut ip, mut id) = (0.0, 0.0);
            for (x2, w2) in self.nodes.iter().zip(&self.weights) {
                let ub = m * x1 + s_perp * x2;
                ip += w2 * self.act.phi(ub);
                id += w2 * self.act.d1(ub);
            }
            pp += w1 * fa * ip;
            dd += w1 * da * id;
        }
        (pp, dd)
    }

    /// Both maps applied to every pair of a covariance matrix.
    pub fn maps(&self, cov: ArrayView2<f64>) -> (Array2<f64>, Array2<f64>) {
        let n = cov.nrows();
        let mut phi = Array2::zeros((n, n));
        let mut dphi = Array2::zeros((n, n));
        for a in 0..n {
            for b in 0..=a {
                let (p, d) = self.pair(cov[[a, a]], cov[[b, b]], cov[[a, b]]);
                phi[[a, b]] = p;
                phi[[b, a]] = p;
                dphi[[a, b]] = d;
                dphi[[b, a]] = d;
            }
        }
        (phi, dphi)
    }
}

/// Arc-cosine kernel of degree 1 and 0 (Cho & Saul), theory.md 2c.
fn relu_pair(qa: f64, qb: f64, c: f64) -> (f64, f64) {
    let norm = (qa * qb).sqrt();
    if norm <= 0.0 {
        return (0.0, 0.0);
    }
    let rho = (c / norm).clamp(-1.0, 1.0);
    let theta = rho.acos();
    (
        norm * (theta.sin() + (PI - theta) * rho) / (2.0 * PI),
        (PI - theta) / (2.0 * PI),
    )
}

fn erf_pair(qa: f64, qb: f64, c: f64) -> (f64, f64) {
    let prod = (1.0 + 2.0 * qa) * (1.0 + 2.0 * qb);
    let arg = (2.0 * c / prod.sqrt()).clamp(-1.0, 1.0);
    (
        2.0 / PI * arg.asin(),
        4.0 / PI / (prod - 4.0 * c * c).sqrt(),
    )
}

/// The frozen kernels of a depth-L network on the problem's points.
pub fn lazy_kernels(problem: &Problem, model: &Model, order: usize) -> Result<LazyKernels> {
    let integrator = PairIntegrator::new(model.activation, order)?;
    let n = problem.n_all();
    let mut phi_kernel = vec![problem.kx.clone()];
    let mut dphi = Vec::with_capacity(model.depth);
    for _ in 0..model.depth {
        let (phi, d) = integrator.maps(phi_kernel.last().unwrap().view());
        phi_kernel.push(phi);
        dphi.push(d);
    }
    let mut grad_kernel = vec![Array2::ones((n, n)); model.depth + 1];
    for l in (0..model.depth).rev() {
        grad_kernel[l] = &grad_kernel[l + 1] * &dphi[l];
    }
    let mut ntk = Array2::zeros((n, n));
    for l in 0..=model.depth {
        ntk += &(&grad_kernel[l] * &phi_kernel[l]);
    }
    Ok(LazyKernels {
        phi_kernel,
        grad_kernel,
        ntk,
    })
}

/// Linear prediction dynamics with the frozen NTK, f(0) = 0.
pub fn solve(
    problem: &Problem,
    model: &Model,
    schedule: &Schedule,
    order: usize,
    progress: Progress,
) -> Result<Trajectory> {
    let kernels = lazy_kernels(problem, model, order)?;
    let p = problem.n_train();
    let k_tt = kernels.ntk.slice(s![..p, ..p]).to_owned();
    let k_st = kernels.ntk.slice(s![p.., ..p]).to_owned();
    let mut rec = Recorder::new(problem, schedule, false);
    rec.set_initial_ntk(k_tt.view())?;
    let step = schedule.eta / p as f64;
    let mut f_train = Array1::<f64>::zeros(p);
    let mut f_test = Array1::<f64>::zeros(problem.n_test());
    for k in 0..=schedule.steps {
        let delta = &problem.y - &f_train;
        rec.check(k, delta.view())?;
        if rec.wants(k) {
            rec.record(f_train.view(), f_test.view(), k_tt.view(), None);
        }
        if k == schedule.steps {
            break;
        }
        f_train += &(k_tt.dot(&delta) * step);
        f_test += &(k_st.dot(&delta) * step);
        progress(k + 1);
    }
    let method = if model.activation.has_closed_form_kernel() {
        "closed-form kernels".to_string()
    } else {
        format!(
            "gauss-hermite kernels, order {}",
            if order == 0 {
                DEFAULT_LAZY_ORDER
            } else {
                order
            }
        )
    };
    rec.finish(SolverKind::Lazy, method)
}
