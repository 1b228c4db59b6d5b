//! Finite-width fluctuations of two-layer predictions (Bordelon & Pehlevan, *Dynamics of
//! finite width kernel and prediction fluctuations in mean field neural networks*).
//!
//! At width N, √N (f_N − f∞) → 𝒩(0, Σ_f). Averaging ψ = z φ(h)/γ₀ over N neurons instead of
//! the site distribution adds a noise ε with covariance κ_f/N, κ_f = Cov_site(ψ(k), ψ(j));
//! the noise feeds back through Δ = y − f: δf = ε − D_f δf with D_f((k,ν),(j,α)) =
//! ∂f_ν(k)/∂Δ_α(j) (j < k, α a training point). Hence Σ_f = (I + D_f)⁻¹ κ_f (I + D_f)⁻ᵀ
//! over (step, point), train and test points together (test points never feed back).
//!
//! D_f is the derivative of the site *average*, taken by central differences of the march
//! on common sites, so for relu it contains the kink-crossing term that a pathwise tangent
//! with relu'' = 0 misses. This direct method costs 2·P·T marches: it is meant for the
//! moderate P·T of validation studies, not for the large-P regime.

use crate::problem::Parameterization;
use crate::two_layer::{Probe, SiteSet, march};
use crate::{DmftError, Model, Problem, Progress, Result, Schedule, SolverOptions};
use ndarray::{Array1, Array2, Axis, s};
use ndarray_linalg::{Diag, SolveTriangular, UPLO};

/// Central-difference step for ∂f/∂Δ. Truncation error is O(ε²) ≈ 1e-6 relative; the kink
/// crossings it must resolve involve ≈ M·ε sites, enough for M ≥ 10⁴.
pub const FD_STEP: f64 = 1e-2;

/// Width-free prediction fluctuations: every variance is N·Var at width N.
#[derive(Clone, Debug)]
pub struct PredictionFluctuations {
    pub steps: Vec<usize>,
    pub t: Array1<f64>,
    /// N·Var[f] at the recorded steps (T_rec × P and T_rec × Q).
    pub var_f_train: Array2<f64>,
    pub var_f_test: Array2<f64>,
    /// N·Var of the train loss, to leading order: (1/P²) Δᵀ Σ_f(k,k) Δ.
    pub var_loss: Array1<f64>,
    /// Σ_f over all steps 0..=T and all points, time-major (index k·(P+Q) + ν).
    pub sigma: Array2<f64>,
}

/// Σ_f of a two-layer μP network, with averages over the sites of `options`
/// (Gauss–Hermite grid when `quadrature > 0`, else one Monte Carlo population).
pub fn two_layer_prediction_fluctuations(
    problem: &Problem,
    model: &Model,
    schedule: &Schedule,
    options: &SolverOptions,
    progress: Progress,
) -> Result<PredictionFluctuations> {
    if model.depth != 1 || model.parameterization != Parameterization::Mup {
        return Err(DmftError::Unsupported(
            "prediction fluctuations are implemented for two-layer μP networks (model.depth = 1, parameterization = mup)".into(),
        ));
    }
    let sites = if options.quadrature > 0 {
        SiteSet::quadrature(problem.kx.view(), options.quadrature)?
    } else {
        SiteSet::monte_carlo(problem.kx.view(), options.sites, options.seed, 0)?
    };
    let every_step = Schedule {
        record_every: 1,
        ..*schedule
    };
    let (p, n, nt) = (problem.n_train(), problem.n_all(), schedule.steps + 1);
    let keep = Probe {
        keep_psi: true,
        ..Probe::default()
    };
    let base = march(problem, model, &every_step, &sites, &keep, &|_| {})?;
    let kappa = site_covariance(&base.psi.expect("kept"), &sites.weight, model.centered);

    // I + D_f, unit lower triangular in the time-major index (D couples step k to j < k).
    // Perturbed marches run open loop along the base Δ path: D_f is a partial derivative.
    let delta_path = &problem.y.view().insert_axis(Axis(0)) - &base.f_all.slice(s![.., ..p]);
    let mut response = Array2::<f64>::eye(nt * n);
    for j in 0..schedule.steps {
        for alpha in 0..p {
            let shifted = |eps: f64| {
                let probe = Probe {
                    open_loop: Some(delta_path.clone()),
                    shift: Some((j, alpha, eps)),
                    keep_psi: false,
                };
                march(problem, model, &every_step, &sites, &probe, &|_| {}).map(|m| m.f_all)
            };
            let derivative = (shifted(FD_STEP)? - shifted(-FD_STEP)?) / (2.0 * FD_STEP);
            for k in j + 1..nt {
                for nu in 0..n {
                    response[[k * n + nu, j * n + alpha]] = derivative[[k, nu]];
                }
            }
            progress(j * p + alpha + 1);
        }
    }
    let solve = |b: &Array2<f64>| {
        response
            .solve_triangular(UPLO::Lower, Diag::Unit, b)
            .map_err(|e| DmftError::Numerical(format!("propagator solve failed: {e}")))
    };
    let half = solve(&kappa)?;
    let sigma = solve(&half.t().to_owned())?;

    let recorded = schedule.recorded_steps();
    let mut var_f_train = Array2::zeros((recorded.len(), p));
    let mut var_f_test = Array2::zeros((recorded.len(), n - p));
    let mut var_loss = Array1::zeros(recorded.len());
    for (i, &k) in recorded.iter().enumerate() {
        let block = sigma.slice(s![k * n..(k + 1) * n, k * n..(k + 1) * n]);
        let diag = block.diag();
        var_f_train.row_mut(i).assign(&diag.slice(s![..p]));
        var_f_test.row_mut(i).assign(&diag.slice(s![p..]));
        let delta = &problem.y - &base.f_all.slice(s![k, ..p]);
        var_loss[i] = delta.dot(&block.slice(s![..p, ..p]).dot(&delta)) / (p * p) as f64;
    }
    Ok(PredictionFluctuations {
        t: recorded.iter().map(|&k| k as f64 * schedule.eta).collect(),
        steps: recorded,
        var_f_train,
        var_f_test,
        var_loss,
        sigma,
    })
}

/// κ_f = Cov_site(ψ(k,ν), ψ(j,μ)) over (step, point); for the centered model the noise of
/// f − f₀ is that of ψ(k) − ψ(0).
fn site_covariance(
    psi: &ndarray::Array3<f64>,
    weight: &Array1<f64>,
    centered: bool,
) -> Array2<f64> {
    let (m, nt, n) = psi.dim();
    let mut flat = psi
        .to_shape((m, nt * n))
        .expect("standard layout")
        .to_owned();
    if centered {
        let initial = psi.index_axis(Axis(1), 0).to_owned();
        for k in 0..nt {
            let mut block = flat.slice_mut(s![.., k * n..(k + 1) * n]);
            block -= &initial;
        }
    }
    let mean = weight.dot(&flat);
    flat -= &mean;
    let root_w = weight.mapv(f64::sqrt);
    flat *= &root_w.insert_axis(Axis(1));
    flat.t().dot(&flat)
}
