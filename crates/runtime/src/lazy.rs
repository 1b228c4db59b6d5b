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

    /// Partial derivatives of both maps, (∂/∂q_a, ∂/∂q_b, ∂/∂c) of ⟨φφ⟩ and of ⟨φ'φ'⟩, at an
    /// off-diagonal entry; closed forms for linear, relu and erf, else Price's theorem
    /// (∂_c E F = E ∂_a∂_b F, ∂_{q_a} E F = ½ E ∂_a² F) on the Gauss–Hermite rule.
    pub fn slopes(&self, qa: f64, qb: f64, c: f64) -> ([f64; 3], [f64; 3]) {
        match self.act {
            Activation::Linear => ([0.0, 0.0, 1.0], [0.0; 3]),
            Activation::Relu => relu_slopes(qa, qb, c),
            Activation::Erf => erf_slopes(qa, qb, c),
            _ => self.quadrature_slopes(qa, qb, c),
        }
    }

    /// d/dq of both maps on the diagonal (q_a = q_b = c = q), where an entry moves with
    /// its one variance.
    pub fn diagonal_slopes(&self, q: f64) -> (f64, f64) {
        match self.act {
            // ⟨relu(u)²⟩ = q/2 and ⟨relu'(u)²⟩ = 1/2: the off-diagonal forms are singular at ρ = 1.
            Activation::Relu => (0.5, 0.0),
            _ => {
                let (p, d) = self.slopes(q, q, q);
                (p.iter().sum(), d.iter().sum())
            }
        }
    }

    /// Price's theorem on the rule of [`Self::quadrature_pair`]; φ'' and φ''' are smooth
    /// for every activation that reaches this (relu and linear have closed forms).
    pub fn quadrature_slopes(&self, qa: f64, qb: f64, c: f64) -> ([f64; 3], [f64; 3]) {
        let act = self.act;
        let sa = qa.max(0.0).sqrt();
        let (m, s_perp) = if sa > 0.0 {
            let m = c / sa;
            (m, (qb - m * m).max(0.0).sqrt())
        } else {
            (0.0, qb.max(0.0).sqrt())
        };
        // E[φ''_a φ_b], E[φ_a φ''_b], E[φ'_a φ'_b], E[φ'''_a φ'_b], E[φ'_a φ'''_b], E[φ''_a φ''_b].
        let mut e = [0.0; 6];
        for (x1, w1) in self.nodes.iter().zip(&self.weights) {
            let ua = sa * x1;
            let (f0, f1, f2, f3) = (act.phi(ua), act.d1(ua), act.d2(ua), act.d3(ua));
            let mut inner = [0.0; 4];
            for (x2, w2) in self.nodes.iter().zip(&self.weights) {
                let ub = m * x1 + s_perp * x2;
                inner[0] += w2 * act.phi(ub);
                inner[1] += w2 * act.d1(ub);
                inner[2] += w2 * act.d2(ub);
                inner[3] += w2 * act.d3(ub);
            }
            e[0] += w1 * f2 * inner[0];
            e[1] += w1 * f0 * inner[2];
            e[2] += w1 * f1 * inner[1];
            e[3] += w1 * f3 * inner[1];
            e[4] += w1 * f1 * inner[3];
            e[5] += w1 * f2 * inner[2];
        }
        (
            [0.5 * e[0], 0.5 * e[1], e[2]],
            [0.5 * e[3], 0.5 * e[4], e[5]],
        )
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

/// Derivatives of the arc-cosine pair in (q_a, q_b, c). At ρ → 1 (coincident points) the
/// three variables move together and only their sum, d⟨relu²⟩/dq = 1/2 and 0, is defined; at
/// ρ → −1 both maps are flat along every perturbation that keeps the points antipodal.
fn relu_slopes(qa: f64, qb: f64, c: f64) -> ([f64; 3], [f64; 3]) {
    let norm = (qa * qb).sqrt();
    if norm <= 0.0 {
        return ([0.0; 3], [0.0; 3]);
    }
    let rho = (c / norm).clamp(-1.0, 1.0);
    let sin = (1.0 - rho * rho).sqrt();
    if sin < 1e-6 {
        return if rho > 0.0 {
            ([0.0, 0.0, 0.5], [0.0; 3])
        } else {
            ([0.0; 3], [0.0; 3])
        };
    }
    let theta = rho.acos();
    (
        [
            (qb / qa).sqrt() * sin / (4.0 * PI),
            (qa / qb).sqrt() * sin / (4.0 * PI),
            (PI - theta) / (2.0 * PI),
        ],
        [
            -rho / (4.0 * PI * qa * sin),
            -rho / (4.0 * PI * qb * sin),
            1.0 / (2.0 * PI * norm * sin),
        ],
    )
}

/// Derivatives of the erf pair: with A = 1 + 2q_a, B = 1 + 2q_b, D = AB − 4c²,
/// ⟨φφ⟩ = (2/π) asin(2c/√(AB)) and ⟨φ'φ'⟩ = (4/π) D^{−1/2}.
fn erf_slopes(qa: f64, qb: f64, c: f64) -> ([f64; 3], [f64; 3]) {
    let (a, b) = (1.0 + 2.0 * qa, 1.0 + 2.0 * qb);
    let d = a * b - 4.0 * c * c;
    let root = d.sqrt();
    let d32 = d * root;
    (
        [
            -4.0 * c / (PI * a * root),
            -4.0 * c / (PI * b * root),
            4.0 / (PI * root),
        ],
        [
            -4.0 * b / (PI * d32),
            -4.0 * a / (PI * d32),
            16.0 * c / (PI * d32),
        ],
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The slopes against central differences of the pair maps themselves (step 10⁻⁵ on
    /// O(1) arguments: truncation ≈ 10⁻¹⁰ times the third derivative, round-off ≈ 10⁻¹¹;
    /// 10⁻⁶ relative to the largest slope allowed). For relu and erf this checks the closed
    /// forms, for the others Price's theorem on the quadrature against the quadrature map,
    /// at order 200: at the default 96 the two quadratures of tanh differ by 3·10⁻⁵ relative
    /// at (2, 0.5, 0.95) (φ''' of tanh converges slowly), at 200 by 5·10⁻⁹.
    #[test]
    fn slopes_match_central_differences_of_the_pair_maps() {
        let points = [(1.3, 0.7, 0.4), (0.9, 1.6, -0.6), (2.0, 0.5, 0.95)];
        let step = 1e-5;
        for act in Activation::ALL {
            let integrator = PairIntegrator::new(act, 200).unwrap();
            let pair = |x: [f64; 3]| integrator.pair(x[0], x[1], x[2]);
            for &(qa, qb, c) in &points {
                let (dp, dd) = integrator.slopes(qa, qb, c);
                let scale = dp.iter().chain(&dd).fold(0.0f64, |m, v| m.max(v.abs()));
                for k in 0..3 {
                    let (mut up, mut down) = ([qa, qb, c], [qa, qb, c]);
                    up[k] += step;
                    down[k] -= step;
                    let ((pu, du), (pd, dn)) = (pair(up), pair(down));
                    let (fd_p, fd_d) = ((pu - pd) / (2.0 * step), (du - dn) / (2.0 * step));
                    for (got, want, what) in [(dp[k], fd_p, "⟨φφ⟩"), (dd[k], fd_d, "⟨φ'φ'⟩")]
                    {
                        assert!(
                            (got - want).abs() <= 1e-6 * scale,
                            "{act} {what} at ({qa}, {qb}, {c}), variable {k}: {got} vs {want}"
                        );
                    }
                }
            }
            for q in [0.4, 1.0, 2.5] {
                let (sp, sd) = integrator.diagonal_slopes(q);
                let (pu, du) = pair([q + step; 3]);
                let (pd, dn) = pair([q - step; 3]);
                let (fd_p, fd_d) = ((pu - pd) / (2.0 * step), (du - dn) / (2.0 * step));
                let scale = sp.abs().max(sd.abs()).max(1.0);
                assert!(
                    (sp - fd_p).abs() <= 1e-6 * scale,
                    "{act} diagonal ⟨φφ⟩ at {q}: {sp} vs {fd_p}"
                );
                assert!(
                    (sd - fd_d).abs() <= 1e-6 * scale,
                    "{act} diagonal ⟨φ'φ'⟩ at {q}: {sd} vs {fd_d}"
                );
            }
        }
    }

    /// The erf closed forms against Price's theorem on the 96-point rule (a second method:
    /// expectations of φ'', φ''' rather than derivatives of the arcsine), to 10⁻¹⁰.
    #[test]
    fn erf_slopes_match_price_quadrature() {
        let integrator = PairIntegrator::new(Activation::Erf, 0).unwrap();
        for (qa, qb, c) in [(1.3, 0.7, 0.4), (0.9, 1.6, -0.6), (0.5, 0.5, 0.5)] {
            let (cp, cd) = integrator.slopes(qa, qb, c);
            let (qp, qd) = integrator.quadrature_slopes(qa, qb, c);
            for k in 0..3 {
                assert!(
                    (cp[k] - qp[k]).abs() <= 1e-10,
                    "⟨φφ⟩ {k}: {} vs {}",
                    cp[k],
                    qp[k]
                );
                assert!(
                    (cd[k] - qd[k]).abs() <= 1e-10,
                    "⟨φ'φ'⟩ {k}: {} vs {}",
                    cd[k],
                    qd[k]
                );
            }
        }
    }
}
