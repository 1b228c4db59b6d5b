//! The O(1/N) shift of the mean predictions of a two-layer μP network, N(E f_N − f∞): the
//! next order of the expansion behind [`crate::propagator`] (docs/dmft.md, "Mean shift").
//!
//! A two-layer network of width N is exactly N independent sites driven by one shared error
//! signal: f_N = F̄_N(Δ_N), where F̄_N(Δ) averages ψ = zφ(h)/γ₀ over the N sites marched
//! open loop along Δ, and Δ_N = y − f_N on the train points. Write F̄_N = F + ε/√N (F the site
//! average, ε the sampling noise, of mean zero) and a = √N(f_N − f∞); then Δ_N − Δ∞ = −Pa/√N
//! with P the train components at steps < T. To second order, with J = ∂F/∂Δ, H = ∂²F/∂Δ²,
//!
//!   (I + JP) a = ε + [½ H[Pa, Pa] − (∂ε/∂Δ)[Pa]] / √N + O(1/N).
//!
//! The leading order is the propagator, a₀ = (I + JP)⁻¹ε with covariance Σ_f. The mean of the
//! next order is
//!
//!   m = N(E f_N − f∞) = (I + JP)⁻¹ (½ ⟨∂²ψ[Σ_Δ]⟩ − ⟨∂ψ_s[v_s]⟩),
//!
//! with ∂²ψ[Σ_Δ] = Σ_c ∂²ψ[l_c, l_c] over the columns of a factor L Lᵀ = Σ_Δ = PΣ_fPᵀ (the
//! curvature of the site average, felt through the spread of Δ), and v_s = P(I + JP)⁻¹(ψ_s − F)
//! the error that site s itself creates (only the diagonal terms of E[(∂ε/∂Δ)[Pa₀]] survive:
//! a site is correlated with its own contribution to Δ). Both are forward-mode tangents of each
//! site's march, second order along each l_c and first order along v_s, so φ''' enters and relu
//! (whose kink adds distributional terms) is refused. The train loss ℒ = |Δ|²/(2P) follows:
//! N(E ℒ_N − ℒ∞) = −Δ∞·m_train/P + tr Σ_f,train/(2P) at each step.
//!
//! Cost beyond the propagator: O(M·(r + 1)·T·(P+Q)·P) for rank r ≤ PT of Σ_Δ, plus one
//! triangular solve per site, done in batches.

use crate::propagator::{self, PredictionFluctuations, ReferenceSites};
use crate::two_layer::SiteSet;
use crate::{DmftError, Model, Problem, Progress, Readout, Result, Schedule, SolverOptions};
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis, s};
use ndarray_linalg::{Diag, SolveTriangular, UPLO};
use rayon::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};

/// N(E f_N − f∞) and N(E ℒ_N − ℒ∞) to leading order: width-free, divide by N for a width.
#[derive(Clone, Debug)]
pub struct MeanShift {
    pub steps: Vec<usize>,
    pub t: Array1<f64>,
    /// At the recorded steps, T_rec × P and T_rec × Q.
    pub shift_f_train: Array2<f64>,
    pub shift_f_test: Array2<f64>,
    /// Of the train loss ℒ = |Δ|²/(2P), T_rec: the variance term tr Σ_f/(2P) and the shift of
    /// the mean −Δ·m/P together.
    pub shift_loss: Array1<f64>,
    /// The same for the test loss |y_test − f_test|²/(2Q), when the test targets are known.
    pub shift_test_loss: Option<Array1<f64>>,
    /// Over all steps and points, time-major (index k·(P+Q) + ν).
    pub shift: Array1<f64>,
}

/// Σ_f (as [`propagator::two_layer_prediction_fluctuations`]) and the O(1/N) mean shift of a
/// two-layer μP network with a smooth activation, both from the sites of `options`.
/// `progress` counts the M sites twice: the propagator's pass, then the shift's.
pub fn two_layer_mean_shift(
    problem: &Problem,
    model: &Model,
    schedule: &Schedule,
    options: &SolverOptions,
    progress: Progress,
) -> Result<(PredictionFluctuations, MeanShift)> {
    if model.activation.has_kink() {
        return Err(DmftError::Unsupported(format!(
            "the O(1/N) mean shift needs φ''' and is not implemented for model.activation = {} (its kink adds distributional terms); use a smooth activation",
            model.activation
        )));
    }
    let recorder = ReferenceSites {
        activation: model.activation,
        readout: model.readout,
    };
    let prop = propagator::propagate(problem, model, schedule, options, &recorder, progress)?;
    let (p, n, steps) = (problem.n_train(), problem.n_all(), schedule.steps);
    let sigma = &prop.fluctuations.sigma;
    let directions = spread_factor(sigma.view(), p, n, steps)?;
    let march = Marcher {
        problem,
        model,
        c: schedule.eta * model.gamma0 / p as f64,
        steps,
        delta_path: prop.delta_path.view(),
        kx: problem.kx.iter().copied().collect(),
    };
    let done = prop.sites.r.len();
    let second_pass = |sites: usize| progress(done + sites);
    let (curvature, self_response) = site_terms(
        &march,
        &prop.sites,
        (&prop.response, &prop.f_all, &directions),
        &second_pass,
    )?;
    let source = 0.5 * curvature - self_response;
    let shift = prop
        .response
        .solve_triangular(UPLO::Lower, Diag::Unit, &source.insert_axis(Axis(1)))
        .map_err(|e| DmftError::Numerical(format!("mean-shift solve failed: {e}")))?
        .column(0)
        .to_owned();
    if shift.iter().any(|v| !v.is_finite()) {
        return Err(DmftError::Numerical(
            "the O(1/N) mean shift is not finite (the infinite-width run is unstable at this η)"
                .into(),
        ));
    }
    let recorded = schedule.recorded_steps();
    let mut shift_f_train = Array2::zeros((recorded.len(), p));
    let mut shift_f_test = Array2::zeros((recorded.len(), n - p));
    let mut shift_loss = Array1::zeros(recorded.len());
    let mut shift_test_loss = problem
        .y_test
        .as_ref()
        .filter(|_| n > p)
        .map(|_| Array1::zeros(recorded.len()));
    // −Δ·m/P' + tr Σ/(2P') over a set of P' points with errors Δ.
    let loss_shift = |k: usize, points: std::ops::Range<usize>, delta: ArrayView1<f64>| {
        let m = shift.slice(s![k * n + points.start..k * n + points.end]);
        let spread: f64 = points.clone().map(|a| sigma[[k * n + a, k * n + a]]).sum();
        (-delta.dot(&m) + 0.5 * spread) / points.len() as f64
    };
    for (i, &k) in recorded.iter().enumerate() {
        let m = shift.slice(s![k * n..(k + 1) * n]);
        shift_f_train.row_mut(i).assign(&m.slice(s![..p]));
        shift_f_test.row_mut(i).assign(&m.slice(s![p..]));
        shift_loss[i] = loss_shift(k, 0..p, prop.delta_path.row(k));
        if let (Some(out), Some(y_test)) = (shift_test_loss.as_mut(), problem.y_test.as_ref()) {
            let delta = y_test - &prop.f_all.slice(s![k, p..]);
            out[i] = loss_shift(k, p..n, delta.view());
        }
    }
    let result = MeanShift {
        t: recorded.iter().map(|&k| k as f64 * schedule.eta).collect(),
        steps: recorded,
        shift_f_train,
        shift_f_test,
        shift_loss,
        shift_test_loss,
        shift,
    };
    Ok((prop.fluctuations, result))
}

/// Columns l_c of L with L Lᵀ = Σ_Δ, the covariance of √N(Δ_N − Δ∞) over the directions
/// (j, α), j < T (index j·P + α), from its eigenvectors; modes below 1e-13 of the largest
/// carry nothing at double precision and are dropped.
fn spread_factor(sigma: ArrayView2<f64>, p: usize, n: usize, steps: usize) -> Result<Array2<f64>> {
    let dirs = p * steps;
    let index = |d: usize| (d / p) * n + d % p;
    let spread = Array2::from_shape_fn((dirs, dirs), |(a, b)| sigma[[index(a), index(b)]]);
    let (values, vectors) = crate::linalg::eigh(spread.view())?;
    let largest = values.iter().fold(0.0f64, |m, &v| m.max(v));
    let kept: Vec<usize> = (0..dirs).filter(|&c| values[c] > 1e-13 * largest).collect();
    let mut factor = Array2::zeros((dirs, kept.len()));
    for (i, &c) in kept.iter().enumerate() {
        let scale = values[c].sqrt();
        factor
            .column_mut(i)
            .assign(&vectors.column(c).mapv(|v| v * scale));
    }
    Ok(factor)
}

/// Sites per batch of the triangular solve for v_s.
const BATCH: usize = 256;

/// Fixed number of site blocks summed in order, so results do not depend on the thread count.
const SITE_BLOCKS: usize = 4;

/// ⟨∂²ψ[Σ_Δ]⟩ and ⟨∂ψ_s[v_s]⟩ over the sites, both over (step, point).
fn site_terms(
    march: &Marcher,
    sites: &SiteSet,
    (response, f_all, directions): (&Array2<f64>, &Array2<f64>, &Array2<f64>),
    progress: Progress,
) -> Result<(Array1<f64>, Array1<f64>)> {
    let done = AtomicUsize::new(0);
    let (p, n, steps) = (march.problem.n_train(), march.problem.n_all(), march.steps);
    let rows = (steps + 1) * n;
    let mean: Vec<f64> = f_all.iter().copied().collect();
    let m = sites.r.len();
    let block = m.div_ceil(SITE_BLOCKS);
    let partial: Vec<Result<(Array1<f64>, Array1<f64>)>> = (0..SITE_BLOCKS)
        .into_par_iter()
        .map(|b| {
            let _serial = crate::linalg::SerialBlas::new();
            let range = (b * block).min(m)..((b + 1) * block).min(m);
            let mut curvature = Array1::<f64>::zeros(rows);
            let mut self_response = Array1::<f64>::zeros(rows);
            let mut scratch = Scratch::new(n, p, steps);
            let mut traces: Vec<Trace> = Vec::with_capacity(BATCH);
            for start in range.clone().step_by(BATCH) {
                let batch = start..(start + BATCH).min(range.end);
                let batch_len = batch.len();
                traces.clear();
                let mut noise = Array2::<f64>::zeros((rows, batch.len()));
                for (i, site) in batch.clone().enumerate() {
                    let trace = march.base(&sites.u.row(site).to_vec(), sites.r[site]);
                    for (row, (&psi, &f)) in trace.psi.iter().zip(&mean).enumerate() {
                        noise[[row, i]] = psi - f;
                    }
                    traces.push(trace);
                }
                let pushed = response
                    .solve_triangular(UPLO::Lower, Diag::Unit, &noise)
                    .map_err(|e| DmftError::Numerical(format!("mean-shift solve failed: {e}")))?;
                for (i, site) in batch.enumerate() {
                    let weight = sites.weight[site];
                    let trace = &traces[i];
                    let own: Vec<f64> = (0..p * steps)
                        .map(|d| pushed[[(d / p) * n + d % p, i]])
                        .collect();
                    march.first_order(trace, &own, &mut scratch.sources, &mut scratch.psi1);
                    for (acc, &x) in self_response.iter_mut().zip(&scratch.psi1) {
                        *acc += weight * x;
                    }
                    scratch.sources.clear();
                    march.sources_along(
                        trace,
                        directions.view(),
                        &mut scratch.columns,
                        &mut scratch.sources,
                    );
                    march.tangent(trace, &scratch.sources, &mut scratch.psi2);
                    for (acc, &x) in curvature.iter_mut().zip(&scratch.psi2) {
                        *acc += weight * x;
                    }
                }
                progress(done.fetch_add(batch_len, Ordering::Relaxed) + batch_len);
            }
            Ok((curvature, self_response))
        })
        .collect();
    let mut curvature = Array1::<f64>::zeros(rows);
    let mut self_response = Array1::<f64>::zeros(rows);
    for part in partial {
        let (c, r) = part?;
        curvature += &c;
        self_response += &r;
    }
    Ok((curvature, self_response))
}

/// One site's base march: per step z and φ, φ', φ'', φ''' at every point; ψ over all steps.
struct Trace {
    /// [k][4n + 1]: z, then φ, φ', φ'', φ''' (n each).
    record: Vec<f64>,
    /// ψ(k, ν) at index k·n + ν (minus ψ(0) for a centered model).
    psi: Vec<f64>,
}

/// Quadratic sources of the second-order tangent, summed over the directions l_c.
struct Sources {
    /// Of h: Σ_c (2 d_β g1_β + Δ_β (φ'''_β h1_β² z + 2 φ''_β h1_β z1)), index k·P + β.
    h: Vec<f64>,
    /// Of z: Σ_c Σ_β (2 d_β φ'_β h1_β + Δ_β φ''_β h1_β²), per step.
    z: Vec<f64>,
    /// Of γ₀ψ: Σ_c (2 z1 φ'_ν h1_ν + z φ''_ν h1_ν²), index k·n + ν.
    psi: Vec<f64>,
}

impl Sources {
    fn clear(&mut self) {
        self.h.fill(0.0);
        self.z.fill(0.0);
        self.psi.fill(0.0);
    }
}

/// The first-order tangents of r directions side by side: h1 [ν][c], z1, the drive of h
/// [β][c] and of z.
#[derive(Default)]
struct Columns {
    h1: Vec<f64>,
    z1: Vec<f64>,
    coef: Vec<f64>,
    dz1: Vec<f64>,
}

struct Scratch {
    psi1: Vec<f64>,
    psi2: Vec<f64>,
    sources: Sources,
    columns: Columns,
}

impl Scratch {
    fn new(n: usize, p: usize, steps: usize) -> Self {
        let rows = (steps + 1) * n;
        Scratch {
            psi1: vec![0.0; rows],
            psi2: vec![0.0; rows],
            sources: Sources {
                h: vec![0.0; steps * p],
                z: vec![0.0; steps],
                psi: vec![0.0; rows],
            },
            columns: Columns::default(),
        }
    }
}

/// The open-loop march of one site along the infinite-width Δ path, with its tangents.
struct Marcher<'a> {
    problem: &'a Problem,
    model: &'a Model,
    /// c = η γ₀ / P.
    c: f64,
    steps: usize,
    delta_path: ArrayView2<'a, f64>,
    /// K^x row-major, n × n.
    kx: Vec<f64>,
}

impl Marcher<'_> {
    fn trained(&self) -> bool {
        self.model.readout == Readout::Trained
    }

    /// h += c K^x(Δ ⊙ φ'(h) z), z += c Δ·φ(h) (trained readout), recording every step.
    fn base(&self, u: &[f64], r: f64) -> Trace {
        let (p, n) = (self.problem.n_train(), self.problem.n_all());
        let act = self.model.activation;
        let width = 4 * n + 1;
        let mut record = vec![0.0; (self.steps + 1) * width];
        let mut psi = vec![0.0; (self.steps + 1) * n];
        let (mut h, mut z) = (u.to_vec(), r);
        let mut psi0 = vec![0.0; n];
        for k in 0..=self.steps {
            let rec = &mut record[k * width..(k + 1) * width];
            rec[0] = z;
            for nu in 0..n {
                rec[1 + nu] = act.phi(h[nu]);
                rec[1 + n + nu] = act.d1(h[nu]);
                rec[1 + 2 * n + nu] = act.d2(h[nu]);
                rec[1 + 3 * n + nu] = act.d3(h[nu]);
                psi[k * n + nu] = z * rec[1 + nu] / self.model.gamma0;
                if self.model.centered {
                    if k == 0 {
                        psi0[nu] = psi[nu];
                    }
                    psi[k * n + nu] -= psi0[nu];
                }
            }
            if k == self.steps {
                break;
            }
            let delta = self.delta_path.row(k);
            let mut dz = 0.0;
            for beta in 0..p {
                let drive = self.c * delta[beta] * rec[1 + n + beta] * z;
                dz += self.c * delta[beta] * rec[1 + beta];
                for (nu, h_nu) in h.iter_mut().enumerate() {
                    *h_nu += self.kx[nu * n + beta] * drive;
                }
            }
            if self.trained() {
                z += dz;
            }
        }
        Trace { record, psi }
    }

    /// First-order tangent along the Δ direction `d` (index j·P + α, j < T) into `psi1`: the
    /// tangent recurrence driven by d ⊙ g into h and d·φ into z, with `sources` as workspace.
    fn first_order(&self, trace: &Trace, d: &[f64], sources: &mut Sources, psi1: &mut [f64]) {
        let (p, n) = (self.problem.n_train(), self.problem.n_all());
        let width = 4 * n + 1;
        sources.clear();
        for k in 0..self.steps {
            let rec = &trace.record[k * width..(k + 1) * width];
            let z = rec[0];
            let (phi, d1) = (&rec[1..1 + n], &rec[1 + n..1 + 2 * n]);
            for beta in 0..p {
                let d = d[k * p + beta];
                sources.h[k * p + beta] = d * d1[beta] * z;
                sources.z[k] += d * phi[beta];
            }
        }
        self.tangent(trace, sources, psi1);
    }

    /// The quadratic sources of the second-order tangent, summed over the columns of
    /// `directions` ((T·P) × r, rows j·P + α): their first-order tangents (h1, z1) are
    /// marched side by side, so the loops over the r columns vectorize.
    fn sources_along(
        &self,
        trace: &Trace,
        directions: ArrayView2<f64>,
        work: &mut Columns,
        sources: &mut Sources,
    ) {
        let (p, n) = (self.problem.n_train(), self.problem.n_all());
        let width = 4 * n + 1;
        let r = directions.ncols();
        let Columns { h1, z1, coef, dz1 } = work;
        h1.clear();
        h1.resize(n * r, 0.0);
        z1.clear();
        z1.resize(r, 0.0);
        coef.resize(p * r, 0.0);
        dz1.resize(r, 0.0);
        for k in 0..=self.steps {
            let rec = &trace.record[k * width..(k + 1) * width];
            let z = rec[0];
            let (phi, rest) = rec[1..].split_at(n);
            let (d1, rest) = rest.split_at(n);
            let (d2, d3) = rest.split_at(n);
            for nu in 0..n {
                let (a, b) = (2.0 * d1[nu], z * d2[nu]);
                let h = &h1[nu * r..(nu + 1) * r];
                sources.psi[k * n + nu] += h
                    .iter()
                    .zip(z1.iter())
                    .map(|(&h, &z1)| (a * z1 + b * h) * h)
                    .sum::<f64>();
            }
            if k == self.steps {
                break;
            }
            let delta = self.delta_path.row(k);
            dz1.fill(0.0);
            for beta in 0..p {
                let d = directions.row(k * p + beta);
                let d = d.as_slice().expect("directions are row-major");
                let h = &h1[beta * r..(beta + 1) * r];
                let out = &mut coef[beta * r..(beta + 1) * r];
                let (g, slope, dl) = (d1[beta] * z, d2[beta] * z, delta[beta]);
                let (phi_b, d1_b, d2_b, d3_b) = (phi[beta], d1[beta], d2[beta], d3[beta]);
                let (mut source_h, mut source_z) = (0.0, 0.0);
                for c in 0..r {
                    let g1 = slope * h[c] + d1_b * z1[c];
                    out[c] = d[c] * g + dl * g1;
                    dz1[c] += d[c] * phi_b + dl * d1_b * h[c];
                    source_h +=
                        2.0 * d[c] * g1 + dl * (d3_b * z * h[c] + 2.0 * d2_b * z1[c]) * h[c];
                    source_z += (2.0 * d[c] * d1_b + dl * d2_b * h[c]) * h[c];
                }
                sources.h[k * p + beta] += source_h;
                sources.z[k] += source_z;
            }
            for nu in 0..n {
                let h = &mut h1[nu * r..(nu + 1) * r];
                for beta in 0..p {
                    let scale = self.c * self.kx[nu * n + beta];
                    for (x, &y) in h.iter_mut().zip(&coef[beta * r..(beta + 1) * r]) {
                        *x += scale * y;
                    }
                }
            }
            if self.trained() {
                for (x, &y) in z1.iter_mut().zip(dz1.iter()) {
                    *x += self.c * y;
                }
            }
        }
    }

    /// The tangent recurrence shared by both orders, driven by `sources`: h' = h + cK(S_h +
    /// Δ ⊙ (φ''h z + φ'z_t)), z' = z + c(S_z + Δ·φ'h) (trained readout), γ₀ψ = z_tφ + zφ'h + S_ψ.
    /// The first order has S_ψ = 0; the second order's sources are quadratic in the first.
    fn tangent(&self, trace: &Trace, sources: &Sources, psi_t: &mut [f64]) {
        let (p, n) = (self.problem.n_train(), self.problem.n_all());
        let width = 4 * n + 1;
        let trained = self.trained();
        let mut h_t = vec![0.0; n];
        let mut coef = vec![0.0; p];
        let mut z_t = 0.0;
        for k in 0..=self.steps {
            let rec = &trace.record[k * width..(k + 1) * width];
            let z = rec[0];
            let (phi, rest) = rec[1..].split_at(n);
            let (d1, rest) = rest.split_at(n);
            let d2 = &rest[..n];
            for nu in 0..n {
                psi_t[k * n + nu] =
                    (z_t * phi[nu] + z * d1[nu] * h_t[nu] + sources.psi[k * n + nu])
                        / self.model.gamma0;
            }
            if k == self.steps {
                break;
            }
            let delta = self.delta_path.row(k);
            let mut dz_t = sources.z[k];
            for beta in 0..p {
                coef[beta] = sources.h[k * p + beta]
                    + delta[beta] * (d2[beta] * h_t[beta] * z + d1[beta] * z_t);
                dz_t += delta[beta] * d1[beta] * h_t[beta];
            }
            for (nu, h) in h_t.iter_mut().enumerate() {
                let row = &self.kx[nu * n..nu * n + p];
                *h += self.c * row.iter().zip(&coef).map(|(k, c)| k * c).sum::<f64>();
            }
            if trained {
                z_t += self.c * dz_t;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Activation;
    use crate::problem::{teacher_problem, two_layer_model};
    use crate::sampling::{normal_matrix, replica_rng};
    use crate::two_layer::{Probe, march};
    use ndarray::ArrayView1;

    /// The site tangents against differences of the runtime's own march (`two_layer::march`,
    /// open loop along a shifted Δ path) on the same deterministic sites: the first order
    /// against central differences, the second against second differences, along random
    /// directions. Truncation O(ε²) ≈ 1e-6 relative at ε = 1e-3 and round-off ≈ 1e-10: the
    /// tolerance 1e-5 of the largest entry holds both.
    #[test]
    fn site_tangents_match_differences_of_the_march() {
        let problem = teacher_problem(3, 2, 6, 11);
        let schedule = Schedule {
            eta: 0.5,
            steps: 6,
            record_every: 1,
        };
        let (p, n, steps) = (problem.n_train(), problem.n_all(), schedule.steps);
        let sites = SiteSet::quadrature(problem.kx.view(), 3).unwrap();
        for (act, readout) in [
            (Activation::Tanh, Readout::Trained),
            (Activation::Tanh, Readout::Frozen),
            (Activation::Erf, Readout::Trained),
            (Activation::Softplus, Readout::Trained),
        ] {
            let model = two_layer_model(act, 1.3, false, readout);
            let (_, delta_path) =
                crate::propagator::open_loop_path(&problem, &model, &schedule, &sites).unwrap();
            let mut rng = replica_rng(5, 1);
            let direction = normal_matrix(&mut rng, steps * p, 1);
            let shifted = |eps: f64| {
                let mut path = delta_path.clone();
                for d in 0..steps * p {
                    path[[d / p, d % p]] += eps * direction[[d, 0]];
                }
                let probe = Probe {
                    open_loop: Some(path),
                    shift: None,
                };
                march(&problem, &model, &schedule, &sites, &probe, &|_| {})
                    .unwrap()
                    .f_all
                    .iter()
                    .copied()
                    .collect::<Array1<f64>>()
            };
            let eps = 1e-3;
            let (plus, minus, centre) = (shifted(eps), shifted(-eps), shifted(0.0));
            let first_fd = (&plus - &minus) / (2.0 * eps);
            let second_fd = (&plus - 2.0 * &centre + &minus) / (eps * eps);

            let marcher = Marcher {
                problem: &problem,
                model: &model,
                c: schedule.eta * model.gamma0 / p as f64,
                steps,
                delta_path: delta_path.view(),
                kx: problem.kx.iter().copied().collect(),
            };
            let rows = (steps + 1) * n;
            let mut first = Array1::<f64>::zeros(rows);
            let mut second = Array1::<f64>::zeros(rows);
            let mut scratch = Scratch::new(n, p, steps);
            let d = direction.column(0).to_vec();
            for site in 0..sites.r.len() {
                let trace = marcher.base(&sites.u.row(site).to_vec(), sites.r[site]);
                marcher.first_order(&trace, &d, &mut scratch.sources, &mut scratch.psi1);
                scratch.sources.clear();
                marcher.sources_along(
                    &trace,
                    direction.view(),
                    &mut scratch.columns,
                    &mut scratch.sources,
                );
                marcher.tangent(&trace, &scratch.sources, &mut scratch.psi2);
                first.scaled_add(sites.weight[site], &ArrayView1::from(&scratch.psi1));
                second.scaled_add(sites.weight[site], &ArrayView1::from(&scratch.psi2));
            }
            for (name, got, want) in [
                ("first", &first, &first_fd),
                ("second", &second, &second_fd),
            ] {
                let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                let err = (got - want).iter().fold(0.0f64, |m, v| m.max(v.abs()));
                assert!(scale > 1e-3, "{act} {readout}: {name} derivative vanished");
                assert!(
                    err < 1e-5 * scale,
                    "{act} {readout}: {name} order off by {err:e} of {scale:e}"
                );
            }
        }
    }

    /// An independent route for linear networks: at width N the two-layer linear network is
    /// exactly a map of the initial empirical moments θ = (A = ⟨uuᵀ⟩_N, b = ⟨ur⟩_N, s = ⟨r²⟩_N)
    /// (the moments march in closed form), and θ has mean (K^x, 0, 1) and covariance C/N with
    /// C the Wishart moments: Cov(A_ab, A_cd) = K_acK_bd + K_adK_bc, Cov(b_a, b_c) = K_ac,
    /// Var s = 2, the rest zero. So N(E f_N − f∞) = ½ Σ_e λ_e ∂²f[q_e, q_e] over the
    /// eigenpairs of C, by second differences, with no sites, no response and no tangents.
    /// Gauss–Hermite of order 4 is exact for the propagator's site averages here (polynomials
    /// of degree ≤ 4 in the sources); the five-point differences leave ≈ 1e-9 relative.
    #[test]
    fn linear_network_matches_the_moment_expansion() {
        let problem = teacher_problem(3, 2, 2, 11);
        let schedule = Schedule {
            eta: 0.4,
            steps: 8,
            record_every: 2,
        };
        let options = SolverOptions {
            sites: 0,
            quadrature: 4,
            seed: 0,
        };
        for (readout, gamma0, centered) in [
            (Readout::Trained, 1.5, false),
            (Readout::Trained, 0.7, true),
            (Readout::Frozen, 1.2, false),
        ] {
            let model = two_layer_model(Activation::Linear, gamma0, centered, readout);
            let (fl, shift) =
                two_layer_mean_shift(&problem, &model, &schedule, &options, &|_| {}).unwrap();
            let (want_f, want_loss, want_test_loss) = moment_expansion(&problem, &model, &schedule);
            let scale = want_f.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let err = (&shift.shift - &want_f)
                .iter()
                .fold(0.0f64, |m, v| m.max(v.abs()));
            println!("{readout} γ₀ = {gamma0}: |m| {scale:.4e}, error {err:.2e}");
            assert!(scale > 1e-2, "the mean shift vanished");
            assert!(
                err < 1e-7 * scale.max(1.0),
                "mean shift off by {err:e} (|m| = {scale:e})"
            );
            let test_loss = shift
                .shift_test_loss
                .as_ref()
                .expect("test targets are known");
            for (i, &k) in shift.steps.iter().enumerate() {
                for (name, got, want) in [
                    ("train", shift.shift_loss[i], want_loss[k]),
                    ("test", test_loss[i], want_test_loss[k]),
                ] {
                    assert!(
                        (got - want).abs() < 1e-7 * want.abs().max(1.0),
                        "{name} loss shift at step {k}: {got} vs {want}"
                    );
                }
            }
            assert_eq!(fl.sigma.nrows(), (schedule.steps + 1) * problem.n_all());
        }
    }

    /// The progress callback counts every site twice (the propagator's pass, then the
    /// shift's) and ends exactly there, as the CLI's bar expects.
    #[test]
    fn progress_counts_both_passes() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let problem = teacher_problem(3, 2, 2, 11);
        let schedule = Schedule {
            eta: 0.4,
            steps: 3,
            record_every: 1,
        };
        let options = SolverOptions {
            sites: 1000,
            quadrature: 0,
            seed: 0,
        };
        let model = two_layer_model(Activation::Tanh, 1.0, false, Readout::Trained);
        let largest = AtomicUsize::new(0);
        two_layer_mean_shift(&problem, &model, &schedule, &options, &|done| {
            largest.fetch_max(done, Ordering::Relaxed);
        })
        .unwrap();
        assert_eq!(largest.load(Ordering::Relaxed), 2 * options.sites);
    }

    /// f (all steps, time-major) and the train loss of the width-N linear network as a map of
    /// its initial empirical moments; see `linear_network_matches_the_moment_expansion`.
    fn moment_march(
        problem: &Problem,
        model: &Model,
        schedule: &Schedule,
        (a0, b0, s0): (&Array2<f64>, &Array1<f64>, f64),
    ) -> (Array1<f64>, Array1<f64>, Array1<f64>) {
        let (p, n) = (problem.n_train(), problem.n_all());
        let c = schedule.eta * model.gamma0 / p as f64;
        let (mut a, mut b, mut s) = (a0.clone(), b0.clone(), s0);
        let mut f_all = Array1::zeros((schedule.steps + 1) * n);
        let mut loss = Array1::zeros(schedule.steps + 1);
        let mut test_loss = Array1::zeros(schedule.steps + 1);
        let y_test = problem
            .y_test
            .as_ref()
            .expect("the oracle's problem has test targets");
        let f0 = &b / model.gamma0;
        for k in 0..=schedule.steps {
            let mut f = &b / model.gamma0;
            if model.centered {
                f -= &f0;
            }
            f_all.slice_mut(s![k * n..(k + 1) * n]).assign(&f);
            let delta = &problem.y - &f.slice(s![..p]);
            loss[k] = delta.dot(&delta) / (2.0 * p as f64);
            let test_error = y_test - &f.slice(s![p..]);
            test_loss[k] = test_error.dot(&test_error) / (2.0 * (n - p) as f64);
            // h ← h + v z, z ← z + w·h with v = cK^x_{·,train}Δ, w = cΔ on the train points.
            let v = c * problem.kx.slice(s![.., ..p]).dot(&delta);
            let mut w = Array1::<f64>::zeros(n);
            if model.readout == Readout::Trained {
                w.slice_mut(s![..p]).assign(&(c * &delta));
            }
            let vb = v
                .view()
                .insert_axis(Axis(1))
                .dot(&b.view().insert_axis(Axis(0)));
            let vv = v
                .view()
                .insert_axis(Axis(1))
                .dot(&v.view().insert_axis(Axis(0)));
            let a_next = &a + &vb + vb.t() + s * &vv;
            let b_next = &b + s * &v + a.dot(&w) + w.dot(&b) * &v;
            let s_next = s + 2.0 * w.dot(&b) + w.dot(&a.dot(&w));
            a = a_next;
            b = b_next;
            s = s_next;
        }
        (f_all, loss, test_loss)
    }

    fn moment_expansion(
        problem: &Problem,
        model: &Model,
        schedule: &Schedule,
    ) -> (Array1<f64>, Array1<f64>, Array1<f64>) {
        let n = problem.n_all();
        let k = &problem.kx;
        // Coordinates: A_ab (a ≤ b, moved symmetrically), b_a, s.
        let pairs: Vec<(usize, usize)> = (0..n).flat_map(|a| (a..n).map(move |b| (a, b))).collect();
        let dim = pairs.len() + n + 1;
        let mut cov = Array2::<f64>::zeros((dim, dim));
        for (i, &(a, b)) in pairs.iter().enumerate() {
            for (j, &(c, d)) in pairs.iter().enumerate() {
                cov[[i, j]] = k[[a, c]] * k[[b, d]] + k[[a, d]] * k[[b, c]];
            }
        }
        for a in 0..n {
            for c in 0..n {
                cov[[pairs.len() + a, pairs.len() + c]] = k[[a, c]];
            }
        }
        cov[[dim - 1, dim - 1]] = 2.0;
        let (values, vectors) = crate::linalg::eigh(cov.view()).unwrap();
        let run = |shift: &Array1<f64>| {
            let mut a = k.clone();
            for (i, &(x, y)) in pairs.iter().enumerate() {
                a[[x, y]] += shift[i];
                if x != y {
                    a[[y, x]] += shift[i];
                }
            }
            let b = shift.slice(s![pairs.len()..pairs.len() + n]).to_owned();
            let s = 1.0 + shift[dim - 1];
            moment_march(problem, model, schedule, (&a, &b, s))
        };
        let (f_mid, loss_mid, test_mid) = run(&Array1::zeros(dim));
        let mut f_shift = Array1::<f64>::zeros(f_mid.len());
        let mut loss_shift = Array1::<f64>::zeros(loss_mid.len());
        let mut test_shift = Array1::<f64>::zeros(test_mid.len());
        // Five-point second differences: truncation O(ε⁴), round-off ≈ 1e-16/ε².
        let eps = 1e-3;
        for e in 0..dim {
            if values[e] <= 0.0 {
                continue;
            }
            let q = vectors.column(e).to_owned();
            let at = |x: f64| run(&(x * eps * &q));
            let ((f1, l1, t1), (f2, l2, t2)) = (at(1.0), at(2.0));
            let ((fm1, lm1, tm1), (fm2, lm2, tm2)) = (at(-1.0), at(-2.0));
            let weight = 0.5 * values[e] / (12.0 * eps * eps);
            f_shift.scaled_add(weight, &(16.0 * (&f1 + &fm1) - 30.0 * &f_mid - &f2 - &fm2));
            loss_shift.scaled_add(
                weight,
                &(16.0 * (&l1 + &lm1) - 30.0 * &loss_mid - &l2 - &lm2),
            );
            test_shift.scaled_add(
                weight,
                &(16.0 * (&t1 + &tm1) - 30.0 * &test_mid - &t2 - &tm2),
            );
        }
        (f_shift, loss_shift, test_shift)
    }
}
