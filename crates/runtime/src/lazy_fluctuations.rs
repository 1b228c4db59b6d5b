//! Finite-width fluctuations in the lazy limit, by the universal form of Bordelon & Pehlevan
//! (*Dynamics of finite width kernel and prediction fluctuations in mean field neural
//! networks*): the kernel stays at its initial value, so at width N it is K∞ + δK/√N with δK
//! Gaussian of covariance κ_K (the NTK covariance at initialization), and the predictions
//! follow the linear dynamics exactly:
//!
//!   δf(k+1) = δf(k) − (η/P) K∞_{·,train} δf_train(k) + (η/P) δK Δ∞(k),
//!
//! with δf(0) the initial output (√N f(0) ~ 𝒩(0, Φ/γ₀²) in μP, absent when centered).
//! δf(0) is odd in the readout and δK even, so they are independent, and
//! Σ_f(k) = F_k C₀ F_kᵀ + J_k κ_K J_kᵀ with F, J the responses of δf(k) to δf(0) and δK.
//! Cost: O(T·n²·nP) for J over n points and P train points, O(T_rec·n·(nP)²) for the
//! variances; κ_K over the nP entries K_{aμ} (every point a, train μ).
//!
//! κ_K of a two-layer network is the site covariance of φ(h_a)φ(h_μ) + z²φ'(h_a)φ'(h_μ)K^x_aμ,
//! averaged over the same sites as the other two-layer solvers (Gauss–Hermite or Monte Carlo).

use crate::problem::Parameterization;
use crate::propagator::PredictionFluctuations;
use crate::two_layer::SiteSet;
use crate::{DmftError, Model, Problem, Readout, Result, Schedule, SolverOptions};
use ndarray::linalg::general_mat_mul;
use ndarray::{Array1, Array2, Array3, ArrayView1, Axis, s};

/// The infinite-width NTK and its fluctuation at initialization over (all points × train).
#[derive(Clone, Debug)]
pub struct KernelNoise {
    /// K∞_{aμ}, n × P.
    pub kernel: Array2<f64>,
    /// Cov(δK_{aμ}, δK_{bν}) with entries ordered a·P + μ, nP × nP.
    pub covariance: Array2<f64>,
    /// Covariance of √N f(0) over all points, n × n (zero for the centered model).
    pub initial: Array2<f64>,
}

/// κ_K, K∞ and the initial-output covariance of a two-layer network from `options`' sites.
pub fn two_layer_kernel_noise(
    problem: &Problem,
    model: &Model,
    options: &SolverOptions,
) -> Result<KernelNoise> {
    let sites = SiteSet::from_options(problem.kx.view(), options)?;
    let (p, n) = (problem.n_train(), problem.n_all());
    let act = model.activation;
    let scale = match model.parameterization {
        Parameterization::Mup => 1.0 / model.gamma0,
        Parameterization::Ntk => 1.0,
    };
    let mut mean = Array1::<f64>::zeros(n * p);
    let mut second = Array2::<f64>::zeros((n * p, n * p));
    let mut initial = Array2::<f64>::zeros((n, n));
    const CHUNK: usize = 2048;
    let mut entries = Array2::<f64>::zeros((CHUNK, n * p));
    let mut outputs = Array2::<f64>::zeros((CHUNK, n));
    let m = sites.r.len();
    for start in (0..m).step_by(CHUNK) {
        let len = CHUNK.min(m - start);
        for i in 0..len {
            let site = start + i;
            let (h, z, w) = (sites.u.row(site), sites.r[site], sites.weight[site]);
            let phi: Vec<f64> = h.iter().map(|&x| act.phi(x)).collect();
            let slope: Vec<f64> = h.iter().map(|&x| act.d1(x)).collect();
            let root_w = w.sqrt();
            for a in 0..n {
                outputs[[i, a]] = root_w * scale * z * phi[a];
                for mu in 0..p {
                    let e = phi[a] * phi[mu] + z * z * slope[a] * slope[mu] * problem.kx[[a, mu]];
                    entries[[i, a * p + mu]] = root_w * e;
                    mean[a * p + mu] += w * e;
                }
            }
        }
        let rows = entries.slice(s![..len, ..]);
        general_mat_mul(1.0, &rows.t(), &rows, 1.0, &mut second);
        let out = outputs.slice(s![..len, ..]);
        general_mat_mul(1.0, &out.t(), &out, 1.0, &mut initial);
    }
    let column = mean.view().insert_axis(Axis(1));
    let covariance = second - column.dot(&column.t());
    if model.centered {
        initial.fill(0.0);
    }
    let kernel = mean.into_shape_with_order((n, p)).expect("n·P entries");
    Ok(KernelNoise {
        kernel,
        covariance,
        initial,
    })
}

/// N·Var of predictions, loss, train NTK entries and top NTK eigenvalue at the recorded
/// steps, from the lazy universal form with the kernel noise `noise`.
pub fn universal_prediction_fluctuations(
    noise: &KernelNoise,
    y: ArrayView1<f64>,
    schedule: &Schedule,
) -> Result<PredictionFluctuations> {
    let (n, p) = noise.kernel.dim();
    let nt = schedule.steps + 1;
    let rate = schedule.eta / p as f64;
    let k_train = noise.kernel.slice(s![..p, ..]);
    // Δ∞(k) along the infinite-width path (f∞(0) = 0) and the responses F_k, J_k.
    let mut delta = y.to_owned();
    let mut to_initial = Array2::<f64>::eye(n);
    let mut to_kernel = Array2::<f64>::zeros((n, n * p));
    let mut sigma = Array2::<f64>::zeros((nt * n, nt * n));
    let mut rows_f = Array2::<f64>::zeros((nt * n, n));
    let mut rows_j = Array2::<f64>::zeros((nt * n, n * p));
    let mut deltas = Array2::<f64>::zeros((nt, p));
    for k in 0..nt {
        rows_f
            .slice_mut(s![k * n..(k + 1) * n, ..])
            .assign(&to_initial);
        rows_j
            .slice_mut(s![k * n..(k + 1) * n, ..])
            .assign(&to_kernel);
        deltas.row_mut(k).assign(&delta);
        if k == schedule.steps {
            break;
        }
        // δf ← δf − (η/P) K∞_{·,train} δf_train + (η/P) δK Δ∞(k).
        let feedback_f = noise.kernel.dot(&to_initial.slice(s![..p, ..])) * rate;
        let feedback_j = noise.kernel.dot(&to_kernel.slice(s![..p, ..])) * rate;
        to_initial -= &feedback_f;
        to_kernel -= &feedback_j;
        for a in 0..n {
            for mu in 0..p {
                to_kernel[[a, a * p + mu]] += rate * delta[mu];
            }
        }
        delta = &delta - &(k_train.dot(&delta) * rate);
        if delta.iter().any(|v| !v.is_finite()) {
            return Err(DmftError::Numerical(format!(
                "the lazy dynamics diverge at step {}: η = {} exceeds 2P/λ_max of the NTK",
                k + 1,
                schedule.eta
            )));
        }
    }
    let through_kernel = rows_j.dot(&noise.covariance);
    general_mat_mul(1.0, &through_kernel, &rows_j.t(), 0.0, &mut sigma);
    let through_initial = rows_f.dot(&noise.initial);
    general_mat_mul(1.0, &through_initial, &rows_f.t(), 1.0, &mut sigma);
    if sigma.iter().any(|v| !v.is_finite()) {
        return Err(DmftError::Numerical(
            "lazy propagator Σ_f is not finite".into(),
        ));
    }

    let recorded = schedule.recorded_steps();
    let r = recorded.len();
    let mut var_f_train = Array2::zeros((r, p));
    let mut var_f_test = Array2::zeros((r, n - p));
    let mut var_loss = Array1::zeros(r);
    // The kernel does not move: its entries' variance is κ_K's diagonal at every step.
    let mut var_ntk = Array3::zeros((r, p, p));
    let train_kernel = k_train.to_owned();
    let (values, vectors) = crate::linalg::eigh(train_kernel.view())?;
    let top = vectors.column(p - 1);
    // δλ = vᵀδK v over the train × train entries (the first P² of the ordering a·P + μ).
    let c: Array1<f64> = (0..p * p).map(|e| top[e / p] * top[e % p]).collect();
    let var_top = c.dot(&noise.covariance.slice(s![..p * p, ..p * p]).dot(&c));
    for (i, &k) in recorded.iter().enumerate() {
        let block = sigma.slice(s![k * n..(k + 1) * n, k * n..(k + 1) * n]);
        let diag = block.diag();
        var_f_train.row_mut(i).assign(&diag.slice(s![..p]));
        var_f_test.row_mut(i).assign(&diag.slice(s![p..]));
        let d = deltas.row(k);
        var_loss[i] = d.dot(&block.slice(s![..p, ..p]).dot(&d)) / (p * p) as f64;
        for mu in 0..p {
            for alpha in 0..p {
                var_ntk[[i, mu, alpha]] = noise.covariance[[mu * p + alpha, mu * p + alpha]];
            }
        }
    }
    Ok(PredictionFluctuations {
        kernels: None,
        t: recorded.iter().map(|&k| k as f64 * schedule.eta).collect(),
        steps: recorded,
        var_f_train,
        var_f_test,
        var_loss,
        var_ntk,
        ntk_top: Array1::from_elem(r, values[p - 1]),
        var_ntk_top: Array1::from_elem(r, var_top),
        ntk_gap: Array1::from_elem(
            r,
            if p > 1 {
                values[p - 1] - values[p - 2]
            } else {
                f64::INFINITY
            },
        ),
        sigma,
        // The lazy form has no tangents, hence no crossing kernel.
        crossing_jump_ratio: 0.0,
    })
}

/// Peak memory of [`two_layer_lazy_fluctuations`] in bytes for P train points, Q test points
/// and T steps: Σ_f and the responses over (step, point), and κ_K.
pub fn memory_bytes(p: usize, q: usize, steps: usize) -> u128 {
    let (n, p) = ((p + q) as u128, p as u128);
    let rows = n * (steps as u128 + 1);
    8 * (rows * rows + 2 * rows * (n * p + n) + 2 * (n * p) * (n * p))
}

/// The lazy-limit fluctuations of a two-layer network (μP at γ₀ → 0, or the NTK
/// parameterization with the centered model, whose O(1) initial output is not a
/// finite-width effect).
pub fn two_layer_lazy_fluctuations(
    problem: &Problem,
    model: &Model,
    schedule: &Schedule,
    options: &SolverOptions,
) -> Result<PredictionFluctuations> {
    if model.depth != 1 {
        return Err(DmftError::Unsupported(format!(
            "the lazy universal form needs the NTK covariance at initialization, implemented for two-layer networks (model.depth = 1), got depth {}",
            model.depth
        )));
    }
    if model.readout == Readout::Frozen {
        return Err(DmftError::Unsupported(
            "the lazy universal form is implemented for a trained readout (model.readout = frozen is μP only)".into(),
        ));
    }
    if model.parameterization == Parameterization::Ntk && !model.centered {
        return Err(DmftError::Unsupported(
            "in the NTK parameterization f(0) is an O(1) Gaussian process, not a finite-width effect: set model.centered = true".into(),
        ));
    }
    let noise = two_layer_kernel_noise(problem, model, options)?;
    universal_prediction_fluctuations(&noise, problem.y.view(), schedule)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Activation;
    use crate::propagator::two_layer_prediction_fluctuations;
    use crate::sampling::{normal_matrix, replica_rng};

    /// Gradient flow in the eigenbasis of K∞ (theory.md section 3): with δΔ(0) = 0,
    /// δΔ_a(t) = −Σ_b δK̃_ab ỹ_b (e^{−λ_b t/P} − e^{−λ_a t/P})/(λ_a − λ_b), the limit
    /// (t/P) e^{−λ_a t/P} at λ_a = λ_b. The discrete march at η = 10⁻³ must agree to O(η λ/P).
    #[test]
    fn small_steps_follow_the_gradient_flow_closed_form() {
        let p = 4;
        let mut rng = replica_rng(11, 0);
        let a = normal_matrix(&mut rng, p, p);
        let kernel = a.dot(&a.t()) / p as f64 + Array2::<f64>::eye(p) * 0.5;
        let b = normal_matrix(&mut rng, p * p, p * p);
        let covariance = b.dot(&b.t()) / (p * p) as f64;
        let y = normal_matrix(&mut rng, p, 1).column(0).to_owned();
        let noise = KernelNoise {
            kernel: kernel.clone(),
            covariance: covariance.clone(),
            initial: Array2::zeros((p, p)),
        };
        let (eta, steps) = (1e-3, 2000);
        let schedule = Schedule {
            eta,
            steps,
            record_every: 500,
        };
        let marched = universal_prediction_fluctuations(&noise, y.view(), &schedule).unwrap();
        let (lambda, v) = crate::linalg::eigh(kernel.view()).unwrap();
        let y_tilde = v.t().dot(&y);
        for (i, &k) in marched.steps.iter().enumerate() {
            let t = k as f64 * eta;
            let g = |a: usize, b: usize| {
                let (la, lb) = (lambda[a] / p as f64, lambda[b] / p as f64);
                if a == b {
                    t / p as f64 * (-la * t).exp()
                } else {
                    ((-lb * t).exp() - (-la * t).exp()) / (la - lb) / p as f64
                }
            };
            // Coefficient of δK_cd in δf_i = −δΔ_i.
            let mut coef = Array2::<f64>::zeros((p, p * p));
            for row in 0..p {
                for c in 0..p {
                    for d in 0..p {
                        let mut sum = 0.0;
                        for ea in 0..p {
                            for eb in 0..p {
                                sum += v[[row, ea]]
                                    * v[[c, ea]]
                                    * v[[d, eb]]
                                    * y_tilde[eb]
                                    * g(ea, eb);
                            }
                        }
                        coef[[row, c * p + d]] = sum;
                    }
                }
            }
            let exact = coef.dot(&covariance).dot(&coef.t());
            for row in 0..p {
                let (want, got) = (exact[[row, row]], marched.var_f_train[[i, row]]);
                assert!(
                    (got - want).abs() <= 5e-3 * want.abs().max(1e-3),
                    "t = {t}, point {row}: march {got} vs gradient flow {want}"
                );
            }
        }
    }

    /// The tangent propagator at γ₀ = 0.01 is the same physics by another route (forward-mode
    /// D_f through the site equations, κ_f from site covariances): on common sites the
    /// predictions agree up to the feature-learning corrections (measured ≤ 10⁻⁴ of the
    /// largest variance; 10⁻³ allowed), the NTK entries to O(γ₀), the kernel's own motion
    /// (measured ≤ 1.1·10⁻³ relative; γ₀/2 allowed). Step 0 is the same number both ways.
    #[test]
    fn matches_the_tangent_propagator_at_small_gamma() {
        let (p, q, dim) = (4, 2, 8);
        let mut rng = replica_rng(5, 0);
        let x = normal_matrix(&mut rng, p + q, dim);
        let beta = normal_matrix(&mut rng, dim, 1).column(0).to_owned();
        let y = x.slice(s![..p, ..]).dot(&beta) / (dim as f64).sqrt();
        let problem =
            Problem::from_inputs(x.slice(s![..p, ..]), y, x.slice(s![p.., ..]), None).unwrap();
        let schedule = Schedule {
            eta: 0.5,
            steps: 10,
            record_every: 2,
        };
        let options = SolverOptions {
            sites: 20_000,
            quadrature: 0,
            seed: 3,
        };
        for centered in [false, true] {
            let model = Model {
                depth: 1,
                activation: Activation::Tanh,
                parameterization: Parameterization::Mup,
                gamma0: 0.01,
                centered,
                residual: None,
                readout: Readout::Trained,
            };
            let lazy = two_layer_lazy_fluctuations(&problem, &model, &schedule, &options).unwrap();
            let tangent =
                two_layer_prediction_fluctuations(&problem, &model, &schedule, &options, &|_| {})
                    .unwrap();
            for (got, want) in [
                (&lazy.var_f_train, &tangent.var_f_train),
                (&lazy.var_f_test, &tangent.var_f_test),
            ] {
                let scale = want.iter().cloned().fold(0.0f64, f64::max);
                for (g, w) in got.iter().zip(want) {
                    assert!(
                        (g - w).abs() <= 1e-3 * scale,
                        "centered = {centered}: lazy {g} vs tangent {w} (scale {scale})"
                    );
                }
            }
            for (g, w) in lazy.var_ntk_top.iter().zip(&tangent.var_ntk_top) {
                assert!(
                    (g - w).abs() <= 5e-3 * w.abs(),
                    "centered = {centered}, top NTK eigenvalue: lazy {g} vs tangent {w}"
                );
            }
            for (g, w) in lazy.var_ntk.iter().zip(&tangent.var_ntk) {
                assert!(
                    (g - w).abs() <= 5e-3 * w.abs(),
                    "centered = {centered}, NTK: lazy {g} vs tangent {w}"
                );
            }
        }
    }
}
