//! Finite-width fluctuations of two-layer predictions (Bordelon & Pehlevan, *Dynamics of
//! finite width kernel and prediction fluctuations in mean field neural networks*).
//!
//! At width N, √N (f_N − f∞) → 𝒩(0, Σ_f). Averaging ψ = z φ(h)/γ₀ over N neurons instead of
//! the site distribution adds a noise ε with covariance κ_f/N, κ_f = Cov_site(ψ(k), ψ(j));
//! the noise feeds back through Δ = y − f: δf = ε − D_f δf with D_f((k,ν),(j,α)) =
//! ∂f_ν(k)/∂Δ_α(j) (j < k, α a training point). Hence Σ_f = (I + D_f)⁻¹ κ_f (I + D_f)⁻ᵀ
//! over (step, point), train and test points together (test points never feed back).
//! With a frozen readout z = r at every step, so every z tangent vanishes and the NTK has
//! no Φ term; the same march serves both.
//!
//! D_f is the derivative of the site *average*. It is computed in one pass over the sites:
//! each site is marched open loop along the infinite-width Δ path, carrying forward-mode
//! tangents for all P·T directions Δ_α(j) at once, and the tangents of ψ are averaged. For
//! relu the derivative of the average has a kink-crossing term that a pathwise tangent with
//! relu'' = 0 misses; it is kept by a narrow triangle kernel in place of δ(h).
//! Cost: O(M·P·T²·(3(P+Q) + P)) multiply-adds for relu and linear (a φ'' term adds
//! O(P·(P+Q)) per direction and step for smooth activations), O(M·((P+Q)T)²) for κ, and
//! memory O((P+Q)T·(P+Q+P)T) per site block; never a (PT)²×(PT)² object.
//! Two tangent kernels do this pass: the portable row kernel below, and on CPUs with
//! AVX-512 (P + Q ≤ 24) or AVX2 (P + Q ≤ 12) the register kernel of [`tiles`], which holds a
//! tile of directions' state in registers and skips relu's directions born zero. They agree
//! to round-off.
//!
//! The base march of one site, which records z, φ, φ', v and the curvature per step for the
//! tangents, is the variant-specific part: the [`SiteRecorder`] trait, with
//! [`ReferenceSites`] as the hand-written reference and one generated recorder per catalogue
//! variant (dmft-solvers). The tangent propagation and the assembly of Σ_f are shared.

use crate::kernel_variances::KernelVariances;
use crate::problem::Parameterization;
use crate::two_layer::{Probe, SiteSet, march};
use crate::{
    Activation, DmftError, Model, Problem, Progress, Readout, Result, Schedule, SolverOptions,
};
use ndarray::linalg::general_mat_mul;
use ndarray::{Array1, Array2, Array3, ArrayView1, ArrayView2, ArrayViewMut1, Axis, s};
use ndarray_linalg::{Diag, SolveTriangular, UPLO};
use rayon::prelude::*;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use tiles::{Isa, StepLayout};

mod tiles;

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
    /// N·Var of every train NTK entry K_μα(k) at the recorded steps (T_rec × P × P).
    pub var_ntk: Array3<f64>,
    /// Top eigenvalue of the infinite-width train NTK at the recorded steps (from the same
    /// sites), and N·Var of the top eigenvalue of K_N to first order, vᵀ δK v with v the top
    /// eigenvector (valid while the gap to the second eigenvalue exceeds the O(1/√N) spread).
    pub ntk_top: Array1<f64>,
    pub var_ntk_top: Array1<f64>,
    /// Gap between the top two eigenvalues of the infinite-width train NTK: the first-order
    /// variance holds while √(var_ntk_top / N) is well below it.
    pub ntk_gap: Array1<f64>,
    /// Σ_f over all steps 0..=T and all points, time-major (index k·(P+Q) + ν).
    pub sigma: Array2<f64>,
    /// relu only (0 otherwise): the largest one-step move of a unit's preactivation on a
    /// train point, 3 c K^x_ββ |Δ_β(k)| (|z| ≤ 3 for 99.7 % of readout weights at
    /// initialization), over twice the crossing kernel's half-width. The kernel linearizes
    /// that move, so it is only trusted well below 1; with a frozen readout it is known to
    /// miss above [`CROSSING_JUMP_LIMIT`] (docs/dmft.md, "Where the kernel fails").
    pub crossing_jump_ratio: f64,
    /// N·Var of the hidden layer's Φ(t,t) and G(t,t) entries, when
    /// [`PropagatorOptions::kernel_variances`] asks for them (None otherwise).
    pub kernels: Option<KernelVariances>,
}

/// What the two-layer propagator computes beyond Σ_f and the NTK variances.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PropagatorOptions {
    /// Also N·Var of the equal-time feature kernel Φ(t,t) (all points) and gradient kernel
    /// G(t,t) (train points) at the recorded steps ([`PredictionFluctuations::kernels`]):
    /// one more tangent row per entry and a (P·T) × (entries · T_rec) site covariance.
    pub kernel_variances: bool,
}

/// Above this [`PredictionFluctuations::crossing_jump_ratio`] a frozen-readout relu Σ_f is
/// flagged: the known failure (γ₀ = 2 on the validation data, Σ_f 30 % low) sits above it
/// and every frozen relu case that matches its ensembles (γ₀ = 0.5) below it.
pub const CROSSING_JUMP_LIMIT: f64 = 0.5;

/// The infinite-width run on `sites`, f at every step on all points, and its Δ = y − f on the
/// train points, (T + 1) × P: the path every site is marched along open loop.
pub(crate) fn open_loop_path(
    problem: &Problem,
    model: &Model,
    schedule: &Schedule,
    sites: &SiteSet,
) -> Result<(Array2<f64>, Array2<f64>)> {
    let every_step = Schedule {
        record_every: 1,
        ..*schedule
    };
    let base = march(
        problem,
        model,
        &every_step,
        sites,
        &Probe::default(),
        &|_| {},
    )?;
    let p = problem.n_train();
    let delta = &problem.y.view().insert_axis(Axis(0)) - &base.f_all.slice(s![.., ..p]);
    Ok((base.f_all, delta))
}

/// See [`PredictionFluctuations::crossing_jump_ratio`].
fn crossing_jump_ratio(
    problem: &Problem,
    model: &Model,
    schedule: &Schedule,
    delta_path: ArrayView2<f64>,
) -> f64 {
    if !model.activation.has_kink() {
        return 0.0;
    }
    let p = problem.n_train();
    let c = schedule.eta * model.gamma0 / p as f64;
    (0..p)
        .map(|b| {
            let k = problem.kx[[b, b]];
            let largest = delta_path
                .column(b)
                .iter()
                .fold(0.0f64, |m, d| m.max(d.abs()));
            3.0 * c * k * largest / (2.0 * CROSSING_WIDTH * k.sqrt())
        })
        .fold(0.0, f64::max)
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
    let sites = ReferenceSites {
        activation: model.activation,
        readout: model.readout,
    };
    two_layer_prediction_fluctuations_with(problem, model, schedule, options, &sites, progress)
}

/// [`two_layer_prediction_fluctuations`] with the base march of each site done by
/// `recorder` (a generated, specialized one, or [`ReferenceSites`]); the tangent
/// propagation and the assembly of Σ_f are the same for every recorder.
pub fn two_layer_prediction_fluctuations_with<R: SiteRecorder>(
    problem: &Problem,
    model: &Model,
    schedule: &Schedule,
    options: &SolverOptions,
    recorder: &R,
    progress: Progress,
) -> Result<PredictionFluctuations> {
    let observe = PropagatorOptions::default();
    Ok(propagate_observing(
        problem, model, schedule, options, &observe, recorder, progress,
    )?
    .fluctuations)
}

/// [`two_layer_prediction_fluctuations_with`] computing what `observe` asks for beyond Σ_f
/// and the NTK variances.
pub fn two_layer_prediction_fluctuations_observing<R: SiteRecorder>(
    problem: &Problem,
    model: &Model,
    schedule: &Schedule,
    options: &SolverOptions,
    observe: &PropagatorOptions,
    recorder: &R,
    progress: Progress,
) -> Result<PredictionFluctuations> {
    Ok(propagate_observing(
        problem, model, schedule, options, observe, recorder, progress,
    )?
    .fluctuations)
}

/// What the next order in 1/N ([`crate::mean_shift`]) reuses of a propagator run.
pub(crate) struct Propagation {
    pub fluctuations: PredictionFluctuations,
    /// I + D_f over (step, point), time-major: D_f enters the columns of the train points.
    pub response: Array2<f64>,
    /// The infinite-width f at every step (all points) and Δ = y − f on the train points.
    pub f_all: Array2<f64>,
    pub delta_path: Array2<f64>,
    pub sites: SiteSet,
}

pub(crate) fn propagate<R: SiteRecorder>(
    problem: &Problem,
    model: &Model,
    schedule: &Schedule,
    options: &SolverOptions,
    recorder: &R,
    progress: Progress,
) -> Result<Propagation> {
    let observe = PropagatorOptions::default();
    propagate_observing(
        problem, model, schedule, options, &observe, recorder, progress,
    )
}

fn propagate_observing<R: SiteRecorder>(
    problem: &Problem,
    model: &Model,
    schedule: &Schedule,
    options: &SolverOptions,
    observe: &PropagatorOptions,
    recorder: &R,
    progress: Progress,
) -> Result<Propagation> {
    if model.depth != 1 || model.parameterization != Parameterization::Mup {
        return Err(DmftError::Unsupported(
            "prediction fluctuations are implemented for two-layer μP networks (model.depth = 1, parameterization = mup)".into(),
        ));
    }
    if recorder.activation() != model.activation || recorder.readout() != model.readout {
        return Err(DmftError::Unsupported(format!(
            "the propagator's site recorder serves {} with a {} readout, not model.activation = {} with model.readout = {}",
            recorder.activation(),
            recorder.readout(),
            model.activation,
            model.readout
        )));
    }
    let sites = SiteSet::from_options(problem.kx.view(), options)?;
    let (p, n, nt) = (problem.n_train(), problem.n_all(), schedule.steps + 1);
    let (f_all, delta_path) = open_loop_path(problem, model, schedule, &sites)?;
    let sums = site_sums(
        problem,
        model,
        schedule,
        &sites,
        delta_path.view(),
        (
            recorder,
            TangentKernel::fastest(n),
            CROSSING_WIDTH,
            observe.kernel_variances,
        ),
        progress,
    );

    // I + D_f, unit lower triangular in the time-major index (D couples step k to j < k).
    let mut response = Array2::<f64>::eye(nt * n);
    let sensitivity = sums.sensitivity_matrix(p);
    for j in 0..schedule.steps {
        let mut cols = response.slice_mut(s![.., j * n..j * n + p]);
        cols += &sensitivity.slice(s![.., j * p..(j + 1) * p]);
    }
    let kappa = sums.covariance();
    let solve = |b: &Array2<f64>| {
        response
            .solve_triangular(UPLO::Lower, Diag::Unit, b)
            .map_err(|e| DmftError::Numerical(format!("propagator solve failed: {e}")))
    };
    let half = solve(&kappa)?;
    let sigma = solve(&half.t().to_owned())?;
    if sigma.iter().any(|v| !v.is_finite()) {
        return Err(DmftError::Numerical(
            "propagator Σ_f is not finite (the infinite-width run is unstable at this η)".into(),
        ));
    }

    // NTK entries: δK = ε_K − D_K δf with δf = (I + D_f)⁻¹ ε_f, so
    // N·Var K_e = κ_KK,ee − 2 [D_K (I + D_f)⁻¹ κ_fK]_ee + [D_K Σ_f D_Kᵀ]_ee.
    let ntk_rows = sums.ntk_first.len();
    let ntk_sensitivity = sums.ntk_sensitivity_matrix(p);
    let mut d_ntk = Array2::<f64>::zeros((ntk_rows, nt * n));
    for j in 0..schedule.steps {
        d_ntk
            .slice_mut(s![.., j * n..j * n + p])
            .assign(&ntk_sensitivity.slice(s![.., j * p..(j + 1) * p]));
    }
    // κ_fK over the causal rows only, as Σψκᵀ: D_K reads `driven` only before each entry's
    // step, and the unit lower triangular solve fills those rows from those rows.
    let mut kappa_fk = &sums.cross
        - &sums
            .first
            .view()
            .insert_axis(Axis(1))
            .dot(&sums.ntk_first.view().insert_axis(Axis(0)));
    let entries = ntk_pairs(p).len();
    for (r, &before) in sums.causal_rows.iter().enumerate() {
        kappa_fk
            .slice_mut(s![before.., r * entries..(r + 1) * entries])
            .fill(0.0);
    }
    let second_diagonal: Array1<f64> = sums
        .ntk_second
        .outer_iter()
        .flat_map(|block| block.diag().to_vec())
        .collect();
    let kappa_kk = second_diagonal - sums.ntk_first.mapv(|m| m * m);
    let driven = solve(&kappa_fk)?;
    let cross_term = (&d_ntk * &driven.t()).sum_axis(Axis(1));
    let response_term = (&d_ntk.dot(&sigma) * &d_ntk).sum_axis(Axis(1));
    let var_ntk_entries = kappa_kk - 2.0 * cross_term + response_term;

    // Top eigenvalue: δλ = cᵀ δK with c_e = v_μ v_α (twice for μ ≠ α), so N·Var λ =
    // cᵀ κ_KK c − 2 (D_Kᵀ c)ᵀ (I + D_f)⁻¹ κ_fK c + (D_Kᵀ c)ᵀ Σ_f (D_Kᵀ c), within one step.
    let pairs = ntk_pairs(p);
    let entries = pairs.len();
    let recorded_count = sums.ntk_second.shape()[0];
    let mut ntk_top = Array1::zeros(recorded_count);
    let mut var_ntk_top = Array1::zeros(recorded_count);
    let mut ntk_gap = Array1::from_elem(recorded_count, f64::INFINITY);
    for r in 0..recorded_count {
        let rows = r * entries..(r + 1) * entries;
        let mean = sums.ntk_first.slice(s![rows.clone()]);
        let mut kernel = Array2::<f64>::zeros((p, p));
        for (e, &(mu, alpha)) in pairs.iter().enumerate() {
            kernel[[mu, alpha]] = mean[e];
            kernel[[alpha, mu]] = mean[e];
        }
        let (values, vectors) = crate::linalg::eigh(kernel.view())?;
        let top = vectors.column(p - 1);
        ntk_top[r] = values[p - 1];
        if p > 1 {
            ntk_gap[r] = values[p - 1] - values[p - 2];
        }
        let c: Array1<f64> = pairs
            .iter()
            .map(|&(mu, alpha)| top[mu] * top[alpha] * if mu == alpha { 1.0 } else { 2.0 })
            .collect();
        let kappa_block = &sums.ntk_second.index_axis(Axis(0), r)
            - &mean
                .view()
                .insert_axis(Axis(1))
                .dot(&mean.view().insert_axis(Axis(0)));
        let a = d_ntk.slice(s![rows.clone(), ..]).t().dot(&c);
        var_ntk_top[r] = c.dot(&kappa_block.dot(&c))
            - 2.0 * a.dot(&driven.slice(s![.., rows.clone()]).dot(&c))
            + a.dot(&sigma.dot(&a));
    }

    let recorded = schedule.recorded_steps();
    let mut var_f_train = Array2::zeros((recorded.len(), p));
    let mut var_f_test = Array2::zeros((recorded.len(), n - p));
    let mut var_loss = Array1::zeros(recorded.len());
    let mut var_ntk = Array3::zeros((recorded.len(), p, p));
    for (i, &k) in recorded.iter().enumerate() {
        for (e, &(mu, alpha)) in pairs.iter().enumerate() {
            let v = var_ntk_entries[i * pairs.len() + e];
            var_ntk[[i, mu, alpha]] = v;
            var_ntk[[i, alpha, mu]] = v;
        }
        let block = sigma.slice(s![k * n..(k + 1) * n, k * n..(k + 1) * n]);
        let diag = block.diag();
        var_f_train.row_mut(i).assign(&diag.slice(s![..p]));
        var_f_test.row_mut(i).assign(&diag.slice(s![p..]));
        let delta = delta_path.row(k);
        var_loss[i] = delta.dot(&block.slice(s![..p, ..p]).dot(&delta)) / (p * p) as f64;
    }
    let kernels = match &sums.kernels {
        Some(kernel_sums) => Some(kernel_variances(
            &sums,
            kernel_sums,
            (&response, &sigma),
            (p, n, schedule.steps),
            recorded.len(),
        )?),
        None => None,
    };
    let fluctuations = PredictionFluctuations {
        kernels,
        t: recorded.iter().map(|&k| k as f64 * schedule.eta).collect(),
        steps: recorded,
        var_f_train,
        var_f_test,
        var_loss,
        var_ntk,
        ntk_top,
        var_ntk_top,
        ntk_gap,
        sigma,
        crossing_jump_ratio: crossing_jump_ratio(problem, model, schedule, delta_path.view()),
    };
    Ok(Propagation {
        fluctuations,
        response,
        f_all,
        delta_path,
        sites,
    })
}

/// N·Var of the Φ and G entries, as for the NTK: δκ = ε_κ − D_κ δf, where only the train
/// f of steps 0..T − 1 feeds back and that block of I + D_f closes on itself (test points
/// never feed back), so with F those (step, point) pairs
/// N·Var κ_e = κ_κκ,ee − 2 [D_κ (I + D_f)_FF⁻¹ κ_Fκ]_ee + [D_κ Σ_FF D_κᵀ]_ee.
fn kernel_variances(
    sums: &SiteSums,
    kernels: &KernelSums,
    (response, sigma): (&Array2<f64>, &Array2<f64>),
    (p, n, steps): (usize, usize, usize),
    recorded_count: usize,
) -> Result<KernelVariances> {
    let feedback = feedback_columns(p, n, steps);
    let mut var = &kernels.square - &kernels.first.mapv(|m| m * m);
    if !feedback.is_empty() {
        let block = |a: &Array2<f64>| a.select(Axis(0), &feedback).select(Axis(1), &feedback);
        let psi_mean = sums.first.select(Axis(0), &feedback);
        let kappa_cross = &kernels.cross
            - &psi_mean
                .view()
                .insert_axis(Axis(1))
                .dot(&kernels.first.view().insert_axis(Axis(0)));
        let driven = block(response)
            .solve_triangular(UPLO::Lower, Diag::Unit, &kappa_cross)
            .map_err(|e| DmftError::Numerical(format!("propagator solve failed: {e}")))?;
        let d = sums.kernel_sensitivity_matrix(kernels, p);
        var -= &(2.0 * (&d * &driven.t()).sum_axis(Axis(1)));
        var += &(&d.dot(&block(sigma)) * &d).sum_axis(Axis(1));
    }
    if var.iter().any(|v| !v.is_finite()) {
        return Err(DmftError::Numerical(
            "propagator kernel variances are not finite".into(),
        ));
    }
    let (phi_pairs, grad_pairs) = kernel_pairs(p, n);
    let entries = phi_pairs.len() + grad_pairs.len();
    let mut out = KernelVariances {
        phi_kernel: vec![Array3::zeros((recorded_count, n, n))],
        var_phi_kernel: vec![Array3::zeros((recorded_count, n, n))],
        grad_kernel: vec![Array3::zeros((recorded_count, p, p))],
        var_grad_kernel: vec![Array3::zeros((recorded_count, p, p))],
    };
    for r in 0..recorded_count {
        let pairs = phi_pairs.iter().map(|&ab| (ab, false));
        let pairs = pairs.chain(grad_pairs.iter().map(|&ab| (ab, true)));
        for (e, ((a, b), grad)) in pairs.enumerate() {
            let i = r * entries + e;
            let (mean, variance) = if grad {
                (&mut out.grad_kernel[0], &mut out.var_grad_kernel[0])
            } else {
                (&mut out.phi_kernel[0], &mut out.var_phi_kernel[0])
            };
            for (x, y) in [(a, b), (b, a)] {
                mean[[r, x, y]] = kernels.first[i];
                variance[[r, x, y]] = var[i];
            }
        }
    }
    Ok(out)
}

/// The train NTK entries (μ, α) with μ ≤ α, in row-major order.
fn ntk_pairs(p: usize) -> Vec<(usize, usize)> {
    (0..p)
        .flat_map(|mu| (mu..p).map(move |a| (mu, a)))
        .collect()
}

/// Peak memory of [`two_layer_prediction_fluctuations`] in bytes for P train points, Q test
/// points, T steps and T_rec recorded steps: κ, D_f and the NTK blocks per site block and
/// their total, the batches of ψ and κ rows, then I + D_f, κ, the half solve, Σ_f and the NTK
/// products, all dense over (step, point).
pub fn memory_bytes(p: usize, q: usize, steps: usize, recorded: usize) -> u128 {
    let rows = ((p + q) * (steps + 1)) as u128;
    let dirs = (p * steps) as u128;
    let ntk = (recorded * p * (p + 1) / 2) as u128;
    let entries = (p * (p + 1) / 2) as u128;
    let per_block = rows * rows + rows * dirs + ntk * (dirs + rows + entries);
    let batches = SITE_BLOCKS as u128 * KAPPA_BATCH as u128 * (rows + ntk);
    8 * ((SITE_BLOCKS as u128 + 1) * per_block
        + batches
        + 4 * rows * rows
        + rows * dirs
        + 3 * ntk * rows)
}

/// Extra peak memory in bytes of [`PropagatorOptions::kernel_variances`] (arguments as
/// [`memory_bytes`]): D_Φ,G and Σψκᵀ per site block and their total, the batches of κ rows
/// and the feedback ψ, then the assembly's products over the P·T feedback pairs.
pub fn kernel_memory_bytes(p: usize, q: usize, steps: usize, recorded: usize) -> u128 {
    let n = p + q;
    let rows = (recorded * (n * (n + 1) / 2 + p * (p + 1) / 2)) as u128;
    let feedback = (p * steps) as u128;
    let per_block = 2 * rows * feedback + 2 * rows;
    let batches = SITE_BLOCKS as u128 * KAPPA_BATCH as u128 * (rows + feedback);
    8 * ((SITE_BLOCKS as u128 + 1) * per_block
        + batches
        + 4 * rows * feedback
        + 3 * feedback * feedback)
}

/// Fixed number of site blocks summed in order, so results do not depend on the thread count.
const SITE_BLOCKS: usize = 4;

/// Budget for one direction block's D_f accumulator, which every site of a block updates at
/// every step. Wider blocks amortize the per-row overhead of the fused pass over more
/// directions; past ≈ 1.5 MB the accumulator's traffic from L3 wins (measured: 384 KB, 1.5 MB
/// and 3 MB took 10.8, 8.9 and 10.1 s of CPU at M = 10⁴, means of 2–4 runs at load 6–8).
const TANGENT_BLOCK_BYTES: usize = 1536 * 1024;

/// Half-width of the triangle kernel standing in for relu'' = δ(h), relative to the scale
/// √K^x_ββ of h_β. Its bias is O(width²) on the kink-crossing term and its Monte Carlo
/// noise grows like 1/√(M·width); it must also exceed the distance h moves in one step
/// (≈ c|Δ z| K^x), or a site lingering at the kink compounds 1/width factors over steps
/// (measured: width 0.02 gave a crossing term as large as D_f itself, 0.1–0.2 matched
/// central differences). It fails where units park at the kink with a per-step jump beyond
/// the width: relu with a frozen readout at γ₀ = 2 (docs/dmft.md, "Where the kernel fails").
pub const CROSSING_WIDTH: f64 = 0.2;

/// relu's crossing kernel: the triangle of half-width `half_width` standing in for δ(h) in
/// the curvature slot (0 when the half-width is 0: the pathwise tangent). One function, so
/// the reference and the generated recorders evaluate the same numbers.
#[inline]
pub fn crossing_kernel(h: f64, half_width: f64) -> f64 {
    if half_width > 0.0 {
        (1.0 - h.abs() / half_width).max(0.0) / half_width
    } else {
        0.0
    }
}

/// Slots of one step of a site's trajectory record, [`record_len`] values: z, φ(h) (n),
/// φ'(h) (n), v = K^x(cΔ ⊙ φ') (n) and the curvature coefficient of each training point
/// (P): φ''(h_β), relu's [`crossing_kernel`], or 0.
pub struct StepRecord<'r> {
    pub z: &'r mut f64,
    pub phi: &'r mut [f64],
    pub d1: &'r mut [f64],
    pub v: &'r mut [f64],
    pub curvature: &'r mut [f64],
}

/// Length of one step's record for n points, P of them training points.
pub fn record_len(n: usize, p: usize) -> usize {
    1 + 3 * n + p
}

/// What the base march of one site reads: the open-loop Δ path and the constants of the
/// problem, borrowed from the pass over the sites.
pub struct SiteContext<'a> {
    /// Training points P and all points n = P + Q.
    pub p: usize,
    pub n: usize,
    pub steps: usize,
    /// c = η γ₀ / P.
    pub c: f64,
    pub gamma0: f64,
    pub centered: bool,
    /// K^x row-major, n × n.
    pub kx: &'a [f64],
    /// Δ(k) on the training points along the infinite-width run, (T + 1) × P.
    pub delta_path: ArrayView2<'a, f64>,
    /// Recorded-step index of each step (None: the NTK is not recorded there).
    pub recorded: &'a [Option<usize>],
    /// The train NTK entries (μ ≤ α), row-major.
    pub pairs: &'a [(usize, usize)],
    /// Crossing-kernel half-width per training point (relu).
    pub crossing: &'a [f64],
}

impl SiteContext<'_> {
    /// The record of step k within a site's trajectory (k-major, [`record_len`] per step).
    #[inline]
    pub fn step<'r>(&self, trajectory: &'r mut [f64], k: usize) -> StepRecord<'r> {
        let len = record_len(self.n, self.p);
        let (z, rest) = trajectory[k * len..(k + 1) * len]
            .split_first_mut()
            .expect("a record has a z slot");
        let (phi, rest) = rest.split_at_mut(self.n);
        let (d1, rest) = rest.split_at_mut(self.n);
        let (v, curvature) = rest.split_at_mut(self.n);
        StepRecord {
            z,
            phi,
            d1,
            v,
            curvature,
        }
    }
}

/// What the base march of one site writes.
pub struct SiteOutputs<'s> {
    /// The site's trajectory record, (T + 1) steps of [`record_len`] values, which the
    /// tangent propagation reads back.
    pub trajectory: &'s mut [f64],
    /// √w ψ_ν(k) at index k·n + ν, ψ = zφ(h)/γ₀ (minus ψ(0) for a centered model).
    pub psi: &'s mut [f64],
    /// √w κ_e(k), κ_e = φ_μφ_α (trained readout only) + g_μg_α K^x_μα, at index r·E + e
    /// for the recorded steps r and the entries e of [`SiteContext::pairs`].
    pub ntk: &'s mut [f64],
    /// Running Σ w ψ and Σ w κ over the sites, same indices.
    pub psi_sum: &'s mut [f64],
    pub ntk_sum: &'s mut [f64],
}

/// The variant-specific half of the propagator's pass over the sites: the open-loop base
/// march of one site along the infinite-width Δ path, h += c K^x(Δ ⊙ g), z += c Δ·φ (a
/// trained readout), recording each step for the tangents and writing the ψ and NTK rows.
/// The tangent propagation and the assembly of Σ_f are the runtime's, common to all.
pub trait SiteRecorder: Sync {
    /// Whether a curvature slot can be non-zero (φ'' of a smooth activation, or relu's
    /// crossing kernel). False promises zeros, so the tangents may skip every φ'' term.
    const CURVATURE: bool;

    /// The variant served; the propagator refuses a model of another.
    fn activation(&self) -> Activation;
    fn readout(&self) -> Readout;

    /// Marches the site with source u (n values) and r, of weight w.
    fn record(&self, cx: &SiteContext, site: (ArrayView1<f64>, f64, f64), out: SiteOutputs);
}

/// The hand-written recorder of any activation and readout, dispatching on the activation
/// at each evaluation: the reference the generated recorders are checked against.
pub struct ReferenceSites {
    pub activation: Activation,
    pub readout: Readout,
}

impl SiteRecorder for ReferenceSites {
    const CURVATURE: bool = true;

    fn activation(&self) -> Activation {
        self.activation
    }

    fn readout(&self) -> Readout {
        self.readout
    }

    fn record(
        &self,
        cx: &SiteContext,
        (u, r, weight): (ArrayView1<f64>, f64, f64),
        out: SiteOutputs,
    ) {
        let (p, n) = (cx.p, cx.n);
        let entries = cx.pairs.len();
        let act = self.activation;
        let readout_trained = self.readout == Readout::Trained;
        let (gamma0, c, root_w) = (cx.gamma0, cx.c, weight.sqrt());
        let mut h: Vec<f64> = u.to_vec();
        let mut z = r;
        let mut psi0 = vec![0.0; n];
        for k in 0..=cx.steps {
            let StepRecord {
                z: z_slot,
                phi,
                d1,
                v,
                curvature,
            } = cx.step(out.trajectory, k);
            *z_slot = z;
            for nu in 0..n {
                phi[nu] = act.phi(h[nu]);
                d1[nu] = act.d1(h[nu]);
                let mut psi = z * phi[nu] / gamma0;
                if cx.centered {
                    if k == 0 {
                        psi0[nu] = psi;
                    }
                    psi -= psi0[nu];
                }
                out.psi[k * n + nu] = root_w * psi;
                out.psi_sum[k * n + nu] += weight * psi;
            }
            if let Some(rec_index) = cx.recorded[k] {
                for (e, &(mu, alpha)) in cx.pairs.iter().enumerate() {
                    let g = d1[mu] * d1[alpha] * z * z;
                    let mut kappa = g * cx.kx[mu * n + alpha];
                    if readout_trained {
                        kappa += phi[mu] * phi[alpha];
                    }
                    let row = rec_index * entries + e;
                    out.ntk[row] = root_w * kappa;
                    out.ntk_sum[row] += weight * kappa;
                }
            }
            for (beta, curv) in curvature.iter_mut().enumerate() {
                *curv = if act.has_kink() {
                    crossing_kernel(h[beta], cx.crossing[beta])
                } else {
                    act.d2(h[beta])
                };
            }
            if k == cx.steps {
                break;
            }
            // Open loop: h += c K(Δ(k) ⊙ g), z += c Δ(k)·φ; v = K(cΔ ⊙ φ') for the tangents.
            let delta = cx.delta_path.row(k);
            v.fill(0.0);
            let mut dz = 0.0;
            for beta in 0..p {
                let cd = c * delta[beta];
                let slope = cd * d1[beta];
                dz += cd * phi[beta];
                for nu in 0..n {
                    let k_nb = cx.kx[nu * n + beta];
                    v[nu] += k_nb * slope;
                    h[nu] += k_nb * slope * z;
                }
            }
            if readout_trained {
                z += dz;
            }
        }
    }
}

/// Site sums of one pass: D_f by blocks of source steps j (each [k][ν][d], d = (j − j₀)·P + α,
/// or α·L + j − j₀ for blocks of L steps under the register kernel), Σψ and Σψψᵀ; for the
/// train NTK entries κ_e = φ_μφ_α + g_μg_α K^x_μα at the recorded steps (index r·E + e), D_K
/// by the same blocks, Σκ, Σκκᵀ within each step and Σψκᵀ.
struct SiteSums {
    blocks: Vec<Range<usize>>,
    alpha_major: bool,
    sensitivity: Vec<Vec<f64>>,
    first: Array1<f64>,
    /// Σψψᵀ, lower triangle only (syrk).
    second: Array2<f64>,
    ntk_sensitivity: Vec<Vec<f64>>,
    ntk_first: Array1<f64>,
    /// Σκκᵀ within each recorded step, T_rec × E × E.
    ntk_second: Array3<f64>,
    /// Σψκᵀ, only over the ψ rows before each recorded step (`causal_rows`, k_r·n): every
    /// product that reads it goes through D_K and (I + D_f)⁻¹, both causal. Zero elsewhere.
    cross: Array2<f64>,
    causal_rows: Vec<usize>,
    /// The hidden layer's Φ and G entries, when asked for.
    kernels: Option<KernelSums>,
}

/// Site sums of the equal-time kernel entries κ_e of [`kernel_pairs`] at the recorded steps
/// (index r·E + e): D_Φ,G by the blocks of [`SiteSums`], Σκ, Σκ² and Σψκᵀ over the train ψ
/// that feed back (steps 0..T − 1, index j·P + μ, as the directions).
struct KernelSums {
    sensitivity: Vec<Vec<f64>>,
    first: Array1<f64>,
    square: Array1<f64>,
    cross: Array2<f64>,
}

/// Entries (a, b), a ≤ b, of a symmetric kernel.
type Pairs = Vec<(usize, usize)>;

/// The hidden layer's equal-time kernel entries of one recorded step: Φ_ab over all n points
/// (a ≤ b), then G_μν over the P train points (μ ≤ ν).
fn kernel_pairs(p: usize, n: usize) -> (Pairs, Pairs) {
    (ntk_pairs(n), ntk_pairs(p))
}

/// The columns of the train points at the steps that feed back, k·n + μ for k < T, μ < P.
fn feedback_columns(p: usize, n: usize, steps: usize) -> Vec<usize> {
    (0..steps)
        .flat_map(|k| (0..p).map(move |mu| k * n + mu))
        .collect()
}

impl SiteSums {
    /// Zero sums; `kernel_rows` (T_rec · entries) adds the Φ and G sums with their
    /// covariance against the `feedback` ψ columns.
    fn zeros(
        (rows, causal_rows): (usize, &[usize]),
        p: usize,
        (blocks, kernel): (&[Range<usize>], TangentKernel),
        kernel_rows: Option<(usize, usize)>,
    ) -> Self {
        let entries = ntk_pairs(p).len();
        let ntk_rows = causal_rows.len() * entries;
        let per_block = |rows: usize| {
            blocks
                .iter()
                .map(|b| vec![0.0; rows * b.len() * p])
                .collect()
        };
        SiteSums {
            kernels: kernel_rows.map(|(rows, feedback)| KernelSums {
                sensitivity: per_block(rows),
                first: Array1::zeros(rows),
                square: Array1::zeros(rows),
                cross: Array2::zeros((feedback, rows)),
            }),
            blocks: blocks.to_vec(),
            alpha_major: kernel != TangentKernel::Rows,
            sensitivity: per_block(rows),
            first: Array1::zeros(rows),
            second: Array2::zeros((rows, rows)),
            ntk_sensitivity: per_block(ntk_rows),
            ntk_first: Array1::zeros(ntk_rows),
            ntk_second: Array3::zeros((ntk_rows / entries, entries, entries)),
            cross: Array2::zeros((rows, ntk_rows)),
            causal_rows: causal_rows.to_vec(),
        }
    }

    fn add(&mut self, other: &SiteSums) {
        for (mine, theirs) in self
            .sensitivity
            .iter_mut()
            .zip(&other.sensitivity)
            .chain(self.ntk_sensitivity.iter_mut().zip(&other.ntk_sensitivity))
        {
            for (a, b) in mine.iter_mut().zip(theirs) {
                *a += b;
            }
        }
        self.first += &other.first;
        self.second += &other.second;
        self.ntk_first += &other.ntk_first;
        self.ntk_second += &other.ntk_second;
        self.cross += &other.cross;
        if let (Some(mine), Some(theirs)) = (&mut self.kernels, &other.kernels) {
            for (a, b) in mine.sensitivity.iter_mut().zip(&theirs.sensitivity) {
                for (a, b) in a.iter_mut().zip(b) {
                    *a += b;
                }
            }
            mine.first += &theirs.first;
            mine.square += &theirs.square;
            mine.cross += &theirs.cross;
        }
    }

    /// Adds Σψψᵀ, Σψκᵀ and Σκκᵀ (within each recorded step) of a batch of √w-scaled rows,
    /// and with `kernels` (their rows and the feedback ψ columns) Σκ² and Σψκᵀ of Φ and G.
    fn add_second_moments(
        &mut self,
        psi: ArrayView2<f64>,
        ntk: ArrayView2<f64>,
        kernels: Option<(ArrayView2<f64>, &[usize])>,
    ) {
        crate::linalg::add_gram_lower(psi, &mut self.second);
        let entries = self.ntk_second.shape()[1];
        for (r, &before) in self.causal_rows.iter().enumerate() {
            let cols = r * entries..(r + 1) * entries;
            general_mat_mul(
                1.0,
                &psi.slice(s![.., ..before]).t(),
                &ntk.slice(s![.., cols.clone()]),
                1.0,
                &mut self.cross.slice_mut(s![..before, cols]),
            );
        }
        for (r, mut block) in self.ntk_second.outer_iter_mut().enumerate() {
            let at_step = ntk.slice(s![.., r * entries..(r + 1) * entries]);
            general_mat_mul(1.0, &at_step.t(), &at_step, 1.0, &mut block);
        }
        if let (Some(sums), Some((rows, feedback))) = (&mut self.kernels, kernels) {
            let psi_feedback = psi.select(Axis(1), feedback);
            general_mat_mul(1.0, &psi_feedback.t(), &rows, 1.0, &mut sums.cross);
            sums.square += &rows.map(|x| x * x).sum_axis(Axis(0));
        }
    }

    /// D_f as a dense ((T+1)·n) × (T·P) matrix, columns d = j·P + α.
    fn sensitivity_matrix(&self, p: usize) -> Array2<f64> {
        self.assemble(&self.sensitivity, self.first.len(), p)
    }

    /// D_K as a dense (T_rec·E) × (T·P) matrix, columns d = j·P + α.
    fn ntk_sensitivity_matrix(&self, p: usize) -> Array2<f64> {
        self.assemble(&self.ntk_sensitivity, self.ntk_first.len(), p)
    }

    /// D_Φ,G as a dense (T_rec·E) × (T·P) matrix, columns d = j·P + α.
    fn kernel_sensitivity_matrix(&self, kernels: &KernelSums, p: usize) -> Array2<f64> {
        self.assemble(&kernels.sensitivity, kernels.first.len(), p)
    }

    fn assemble(&self, blocks: &[Vec<f64>], rows: usize, p: usize) -> Array2<f64> {
        let dirs = self.blocks.last().map_or(0, |b| b.end) * p;
        let mut out = Array2::zeros((rows, dirs));
        for (block, values) in self.blocks.iter().zip(blocks) {
            let width = block.len() * p;
            let cols = block.start * p..block.end * p;
            let values = ArrayView2::from_shape((rows, width), values).expect("block layout");
            if self.alpha_major {
                for (d, column) in values.columns().into_iter().enumerate() {
                    let (j, alpha) = (block.start + d % block.len(), d / block.len());
                    out.column_mut(j * p + alpha).assign(&column);
                }
            } else {
                out.slice_mut(s![.., cols]).assign(&values);
            }
        }
        out
    }

    /// κ_f = ⟨ψψᵀ⟩ − ⟨ψ⟩⟨ψ⟩ᵀ (weights sum to 1).
    fn covariance(&self) -> Array2<f64> {
        let mean = self.first.view().insert_axis(Axis(1));
        let mut second = self.second.clone();
        crate::linalg::mirror_lower(&mut second);
        second - mean.dot(&mean.t())
    }
}

/// Which tangent kernel the pass runs: the row kernel (any CPU, any n) or the register
/// kernel of [`tiles`] for an instruction set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TangentKernel {
    Rows,
    Registers(Isa),
}

impl TangentKernel {
    fn fastest(n: usize) -> Self {
        tiles::register_isas(n)
            .first()
            .map_or(TangentKernel::Rows, |&isa| TangentKernel::Registers(isa))
    }
}

/// Budget for one direction block's D_f accumulator under the register kernel, whose tiles
/// need blocks of whole multiples of 8 (or 4) steps (see [`direction_blocks`]); every site of
/// a chunk sweeps the whole block.
const REGISTER_BLOCK_BYTES: usize = 1024 * 1024;

/// Source steps 0..T in blocks whose accumulators fit the kernel's budget. Under the
/// register kernel the directions of a block are α-major and a block spans a multiple of the
/// tile's lanes in steps, so that each tile holds one training point's consecutive steps.
fn direction_blocks(p: usize, n: usize, steps: usize, kernel: TangentKernel) -> Vec<Range<usize>> {
    let per_step = 8 * (steps + 1) * n * p;
    let (budget, unit) = match kernel {
        TangentKernel::Rows => (TANGENT_BLOCK_BYTES, 1),
        TangentKernel::Registers(isa) => (REGISTER_BLOCK_BYTES, isa.lanes()),
    };
    let len = (budget / per_step / unit).max(1) * unit;
    (0..steps)
        .step_by(len)
        .map(|j| j..(j + len).min(steps))
        .collect()
}

/// Sites whose ψ and κ rows are folded into the second moments by one GEMM.
const KAPPA_BATCH: usize = 256;

/// Sites marched together: their base trajectories are cached while every block of
/// directions is swept over them, so each accumulator block is loaded once per chunk.
const SITE_CHUNK: usize = 32;

/// One pass over the sites, each marched open loop along the infinite-width Δ path with
/// forward-mode tangents for the directions Δ_α(j): D_f((k,ν),(j,α)) = ⟨∂ψ_ν(k)/∂Δ_α(j)⟩.
/// For relu the kink-crossing term of the derivative of the site average is kept: relu''
/// = δ(h) is replaced by a narrow triangle kernel (see [`CROSSING_WIDTH`]).
fn site_sums<R: SiteRecorder>(
    problem: &Problem,
    model: &Model,
    schedule: &Schedule,
    sites: &SiteSet,
    delta_path: ArrayView2<f64>,
    (recorder, kernel, crossing_width, with_kernels): (&R, TangentKernel, f64, bool),
    progress: Progress,
) -> SiteSums {
    let (p, n, nt) = (problem.n_train(), problem.n_all(), schedule.steps + 1);
    let causal_rows: Vec<usize> = schedule.recorded_steps().iter().map(|k| k * n).collect();
    let ntk_rows = causal_rows.len() * ntk_pairs(p).len();
    let kernel_rows = with_kernels.then(|| {
        let (phi, grad) = kernel_pairs(p, n);
        schedule.recorded_steps().len() * (phi.len() + grad.len())
    });
    let feedback = feedback_columns(p, n, schedule.steps);
    let kernel_sizes = kernel_rows.map(|rows| (rows, feedback.len()));
    let m = sites.r.len();
    let blocks = direction_blocks(p, n, schedule.steps, kernel);
    let site_block = m.div_ceil(SITE_BLOCKS);
    let done = AtomicUsize::new(0);
    let _serial = crate::linalg::SerialBlas::new();
    let partial: Vec<SiteSums> = (0..SITE_BLOCKS)
        .into_par_iter()
        .map(|b| {
            let range = (b * site_block).min(m)..((b + 1) * site_block).min(m);
            let mut sums =
                SiteSums::zeros((nt * n, &causal_rows), p, (&blocks, kernel), kernel_sizes);
            let mut march = SiteMarch::new(
                problem,
                model,
                schedule,
                delta_path,
                (crossing_width, with_kernels),
                kernel,
            );
            // ψ and κ rows of up to KAPPA_BATCH sites, folded into the second moments by one
            // GEMM per batch: with one GEMM per 32-site chunk the pass re-streamed the
            // (T+1)n-square sum from memory for every chunk.
            let mut psi = Array2::<f64>::zeros((KAPPA_BATCH, nt * n));
            let mut ntk = Array2::<f64>::zeros((KAPPA_BATCH, ntk_rows));
            let mut kernels = Array2::<f64>::zeros((KAPPA_BATCH, kernel_rows.unwrap_or(0)));
            let mut filled = 0;
            for chunk in range.clone().step_by(SITE_CHUNK) {
                let chunk = chunk..(chunk + SITE_CHUNK).min(range.end);
                for (i, site) in chunk.clone().enumerate() {
                    march.base(
                        recorder,
                        i,
                        (sites.u.row(site), sites.r[site], sites.weight[site]),
                        (psi.row_mut(filled + i), ntk.row_mut(filled + i)),
                        &mut sums,
                    );
                    if let Some(kernel_sums) = &mut sums.kernels {
                        march.kernel_row(
                            i,
                            sites.weight[site],
                            kernels.row_mut(filled + i),
                            kernel_sums,
                        );
                    }
                    march.tabulate(i, sites.weight[site]);
                }
                filled += chunk.len();
                if filled + SITE_CHUNK > KAPPA_BATCH || chunk.end == range.end {
                    sums.add_second_moments(
                        psi.slice(s![..filled, ..]),
                        ntk.slice(s![..filled, ..]),
                        with_kernels.then(|| (kernels.slice(s![..filled, ..]), &feedback[..])),
                    );
                    filled = 0;
                }
                for (b, block) in blocks.iter().enumerate() {
                    let acc = &mut sums.sensitivity[b];
                    let ntk_acc = &mut sums.ntk_sensitivity[b];
                    let mut kernel_acc = sums
                        .kernels
                        .as_mut()
                        .map(|k| k.sensitivity[b].as_mut_slice());
                    for (i, site) in chunk.clone().enumerate() {
                        march.tangents(
                            i,
                            sites.weight[site],
                            block.clone(),
                            (acc, ntk_acc, kernel_acc.as_deref_mut()),
                        );
                    }
                }
                progress(done.fetch_add(chunk.len(), Ordering::Relaxed) + chunk.len());
            }
            sums
        })
        .collect();
    let mut total = SiteSums::zeros((nt * n, &causal_rows), p, (&blocks, kernel), kernel_sizes);
    for part in &partial {
        total.add(part);
    }
    total
}

/// A chunk of sites marched open loop, with their trajectories cached, and the tangent
/// work arrays reused across sites.
struct SiteMarch<'a> {
    problem: &'a Problem,
    model: &'a Model,
    delta_path: ArrayView2<'a, f64>,
    c: f64,
    steps: usize,
    /// K^x row-major, n × n.
    kx: Vec<f64>,
    /// False for a frozen readout: z and its tangents stay put, the NTK loses Φ.
    readout_trained: bool,
    /// Kernel half-width per training point (relu only; 0 drops the crossing term).
    crossing: Vec<f64>,
    /// Per site and step: z, φ(h) (n), φ'(h) (n), v = K(cΔ ⊙ φ') (n), φ''(h_β) or its
    /// kernel stand-in (P).
    trajectory: Vec<f64>,
    record: usize,
    /// ∂h_ν/∂Δ_d, layout [ν][d], d = (j − j₀)·P + α over one block of directions.
    dh: Vec<f64>,
    dz: Vec<f64>,
    dz_next: Vec<f64>,
    /// Old rows dh[β] of the training points whose φ'' term is non-zero this step, and
    /// (β, c Δ_β φ''(h_β) z) for each of them.
    curvature_rows: Vec<f64>,
    curved: Vec<(usize, f64)>,
    /// Recorded-step index of each step, and the NTK entries (μ ≤ α).
    recorded: Vec<Option<usize>>,
    pairs: Vec<(usize, usize)>,
    /// The Φ (all points) and G (train points) entries of [`kernel_pairs`].
    phi_pairs: Vec<(usize, usize)>,
    grad_pairs: Vec<(usize, usize)>,
    /// The register kernel's tables, when it runs.
    tables: Option<RegisterTables>,
}

/// What the register kernel ([`tiles`]) reads of the sites of a chunk, tabulated once per
/// site: per step the coefficients of [`StepLayout`], and per recorded step three
/// coefficients per NTK entry and per Φ, G entry.
struct RegisterTables {
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    isa: Isa,
    layout: StepLayout,
    steps: Vec<f64>,
    ntk: Vec<f64>,
    kernels: Option<Vec<f64>>,
    /// The Φ entries then the G entries, as rows of the state.
    kernel_rows: Vec<(usize, usize)>,
    /// K^x_νβ at β·n + ν.
    kx_columns: Vec<f64>,
    /// Three coefficients per entry of one recorded step, before [`tiles::compact_entries`].
    scratch: Vec<f64>,
}

impl RegisterTables {
    fn new(
        problem: &Problem,
        (steps, recorded): (usize, usize),
        isa: Isa,
        with_kernels: bool,
    ) -> Self {
        let (p, n) = (problem.n_train(), problem.n_all());
        let layout = StepLayout { rows: n, p };
        let (phi_pairs, grad_pairs) = kernel_pairs(p, n);
        let kernel_rows: Vec<_> = phi_pairs.into_iter().chain(grad_pairs).collect();
        let mut kx_columns = vec![0.0; n * n];
        for beta in 0..n {
            for nu in 0..n {
                kx_columns[beta * n + nu] = problem.kx[[nu, beta]];
            }
        }
        RegisterTables {
            isa,
            layout,
            steps: vec![0.0; SITE_CHUNK * (steps + 1) * layout.len()],
            ntk: vec![0.0; SITE_CHUNK * recorded * tiles::entries_len(ntk_pairs(p).len())],
            kernels: with_kernels
                .then(|| vec![0.0; SITE_CHUNK * recorded * tiles::entries_len(kernel_rows.len())]),
            scratch: vec![0.0; 3 * ntk_pairs(p).len().max(kernel_rows.len())],
            kernel_rows,
            kx_columns,
        }
    }
}

impl<'a> SiteMarch<'a> {
    fn new(
        problem: &'a Problem,
        model: &'a Model,
        schedule: &Schedule,
        delta_path: ArrayView2<'a, f64>,
        (crossing_width, with_kernels): (f64, bool),
        kernel: TangentKernel,
    ) -> Self {
        let (p, n) = (problem.n_train(), problem.n_all());
        let width = match kernel {
            TangentKernel::Rows => direction_blocks(p, n, schedule.steps, kernel)
                .iter()
                .map(|b| b.len() * p)
                .max()
                .unwrap_or(0),
            TangentKernel::Registers(_) => 0,
        };
        let record = record_len(n, p);
        let recorded = schedule.recorded_steps().len();
        SiteMarch {
            tables: match kernel {
                TangentKernel::Rows => None,
                TangentKernel::Registers(isa) => Some(RegisterTables::new(
                    problem,
                    (schedule.steps, recorded),
                    isa,
                    with_kernels,
                )),
            },
            problem,
            model,
            delta_path,
            c: schedule.eta * model.gamma0 / p as f64,
            readout_trained: model.readout == Readout::Trained,
            steps: schedule.steps,
            kx: problem.kx.iter().copied().collect(),
            crossing: (0..p)
                .map(|b| crossing_width * problem.kx[[b, b]].sqrt())
                .collect(),
            trajectory: vec![0.0; SITE_CHUNK * (schedule.steps + 1) * record],
            record,
            dh: vec![0.0; n * width],
            dz: vec![0.0; width],
            dz_next: vec![0.0; width],
            curvature_rows: vec![0.0; p.max(2) * width],
            curved: Vec::with_capacity(p),
            recorded: {
                let mut index = vec![None; schedule.steps + 1];
                for (r, k) in schedule.recorded_steps().into_iter().enumerate() {
                    index[k] = Some(r);
                }
                index
            },
            pairs: ntk_pairs(p),
            phi_pairs: kernel_pairs(p, n).0,
            grad_pairs: kernel_pairs(p, n).1,
        }
    }

    /// Writes √w κ_e of the Φ and G entries of the cached site `slot` at the recorded steps
    /// into `row` (index r·E + e) and adds w κ_e to `sums`: Φ_ab = φ_a φ_b and G_μν = g_μ g_ν
    /// with g = z φ', the simulator's φφᵀ/N and ggᵀ/N.
    fn kernel_row(
        &self,
        slot: usize,
        weight: f64,
        mut row: ArrayViewMut1<f64>,
        sums: &mut KernelSums,
    ) {
        let n = self.problem.n_all();
        let entries = self.phi_pairs.len() + self.grad_pairs.len();
        let root_w = weight.sqrt();
        for k in 0..=self.steps {
            let Some(r) = self.recorded[k] else {
                continue;
            };
            let (z, phi, d1, ..) =
                cached_step(&self.trajectory, (self.record, n, self.steps), (slot, k));
            let phi_entries = self.phi_pairs.iter().map(|&(a, b)| phi[a] * phi[b]);
            let grad_entries = self
                .grad_pairs
                .iter()
                .map(|&(mu, nu)| z * z * d1[mu] * d1[nu]);
            for (e, kappa) in phi_entries.chain(grad_entries).enumerate() {
                let i = r * entries + e;
                row[i] = root_w * kappa;
                sums.first[i] += weight * kappa;
            }
        }
    }

    /// Adds w ∂κ_e/∂Δ_d of the Φ and G entries at recorded step `rec_index` to `acc` (rows
    /// r·E + e of `width` directions, the first `active` of them born), from the tangent
    /// state at that step: δΦ_ab = φ'_a φ_b δh_a + φ_a φ'_b δh_b and δ(g_μ g_ν) with δg_β =
    /// φ''_β z δh_β + φ'_β δz (relu's crossing kernel in the φ'' slot, as for the NTK).
    fn kernel_tangents(
        &self,
        rec_index: usize,
        weight: f64,
        (z, phi, d1, curvature): (f64, &[f64], &[f64], &[f64]),
        (active, width): (usize, usize),
        acc: &mut [f64],
    ) {
        let entries = self.phi_pairs.len() + self.grad_pairs.len();
        let rows = |e: usize| (rec_index * entries + e) * width;
        for (e, &(a, b)) in self.phi_pairs.iter().enumerate() {
            let (c_a, c_b) = (weight * d1[a] * phi[b], weight * phi[a] * d1[b]);
            if c_a == 0.0 && c_b == 0.0 {
                continue;
            }
            let out = &mut acc[rows(e)..][..active];
            let dh_a = &self.dh[a * width..][..active];
            let dh_b = &self.dh[b * width..][..active];
            for ((out, &x), &y) in out.iter_mut().zip(dh_a).zip(dh_b) {
                *out += c_a * x + c_b * y;
            }
        }
        let dz = &self.dz[..active];
        let offset = self.phi_pairs.len();
        for (e, &(mu, nu)) in self.grad_pairs.iter().enumerate() {
            let w_zz = weight * z * z;
            let c_mu = w_zz * d1[nu] * curvature[mu];
            let c_nu = w_zz * d1[mu] * curvature[nu];
            let c_z = 2.0 * weight * z * d1[mu] * d1[nu];
            let out = &mut acc[rows(offset + e)..][..active];
            let dh_mu = &self.dh[mu * width..][..active];
            let dh_nu = &self.dh[nu * width..][..active];
            for (((out, &x), &y), &u) in out.iter_mut().zip(dh_mu).zip(dh_nu).zip(dz) {
                *out += c_mu * x + c_nu * y + c_z * u;
            }
        }
    }

    /// Marches site `slot` of the chunk with `recorder`, caching its trajectory; writes √w
    /// ψ(k) for all k (minus ψ(0) for the centered model) and √w κ_e(k) at the recorded
    /// steps into the two rows, and adds w ψ and w κ to `sums`.
    fn base<R: SiteRecorder>(
        &mut self,
        recorder: &R,
        slot: usize,
        site: (ArrayView1<f64>, f64, f64),
        (mut psi_row, mut ntk_row): (ArrayViewMut1<f64>, ArrayViewMut1<f64>),
        sums: &mut SiteSums,
    ) {
        let cx = SiteContext {
            p: self.problem.n_train(),
            n: self.problem.n_all(),
            steps: self.steps,
            c: self.c,
            gamma0: self.model.gamma0,
            centered: self.model.centered,
            kx: &self.kx,
            delta_path: self.delta_path,
            recorded: &self.recorded,
            pairs: &self.pairs,
            crossing: &self.crossing,
        };
        let len = (self.steps + 1) * self.record;
        let trajectory = &mut self.trajectory[slot * len..(slot + 1) * len];
        recorder.record(
            &cx,
            site,
            SiteOutputs {
                trajectory: &mut *trajectory,
                psi: psi_row.as_slice_mut().expect("psi rows are contiguous"),
                ntk: ntk_row.as_slice_mut().expect("NTK rows are contiguous"),
                psi_sum: sums
                    .first
                    .as_slice_mut()
                    .expect("fresh sums are contiguous"),
                ntk_sum: sums
                    .ntk_first
                    .as_slice_mut()
                    .expect("fresh sums are contiguous"),
            },
        );
        debug_assert!(
            R::CURVATURE
                || (0..=self.steps).all(|k| cx
                    .step(trajectory, k)
                    .curvature
                    .iter()
                    .all(|&x| x == 0.0)),
            "a recorder without curvature wrote a curvature slot"
        );
    }

    /// Fills the register kernel's tables of the cached site `slot` (nothing under the row
    /// kernel): the coefficients of the fused pass, of the births, of the curvature terms and
    /// of the NTK, Φ and G entries, the same products the row kernel forms on the fly.
    fn tabulate(&mut self, slot: usize, weight: f64) {
        let Some(tables) = &mut self.tables else {
            return;
        };
        let (p, n) = (self.problem.n_train(), self.problem.n_all());
        let layout = tables.layout;
        let (len, c, gamma0) = (layout.len(), self.c, self.model.gamma0);
        let weight_over_gamma = weight / gamma0;
        let entries = self.pairs.len();
        let kernel_entries = tables.kernel_rows.len();
        let recorded_count = self.recorded.iter().flatten().count();
        for k in 0..=self.steps {
            let (z, phi, d1, v, curvature) =
                cached_step(&self.trajectory, (self.record, n, self.steps), (slot, k));
            let last = k == self.steps;
            let delta = self.delta_path.row(k);
            let row = &mut tables.steps[(slot * (self.steps + 1) + k) * len..][..len];
            row.fill(0.0);
            for nu in 0..n {
                row[layout.a() + nu] = weight_over_gamma * z * d1[nu];
                row[layout.b() + nu] = weight_over_gamma * phi[nu];
                if !last {
                    row[layout.v() + nu] = v[nu];
                    if nu < p && self.readout_trained {
                        row[layout.slope() + nu] = c * delta[nu] * d1[nu];
                    }
                }
            }
            if !last {
                let mut curved = 0;
                for beta in 0..p {
                    row[layout.birth_h() + beta] = c * d1[beta] * z;
                    if self.readout_trained {
                        row[layout.birth_z() + beta] = c * phi[beta];
                    }
                    let coef = c * delta[beta] * curvature[beta] * z;
                    if coef != 0.0 {
                        row[layout.curved() + 2 * curved] = beta as f64;
                        row[layout.curved() + 2 * curved + 1] = coef;
                        curved += 1;
                    }
                }
                row[layout.curved_count()] = curved as f64;
            }
            let Some(r) = self.recorded[k] else {
                continue;
            };
            let ntk = &mut tables.scratch[..3 * entries];
            for (&(mu, alpha), out) in self.pairs.iter().zip(ntk.chunks_exact_mut(3)) {
                let k_ma = weight * self.kx[mu * n + alpha] * z;
                let (phi_mu, phi_alpha) = if self.readout_trained {
                    (weight * phi[mu], weight * phi[alpha])
                } else {
                    (0.0, 0.0)
                };
                out[0] = phi_alpha * d1[mu] + k_ma * d1[alpha] * curvature[mu] * z;
                out[1] = phi_mu * d1[alpha] + k_ma * d1[mu] * curvature[alpha] * z;
                out[2] = 2.0 * k_ma * d1[mu] * d1[alpha];
            }
            let len = tiles::entries_len(entries);
            let at = (slot * recorded_count + r) * len;
            tiles::compact_entries(ntk, &mut tables.ntk[at..at + len]);
            if let Some(kernels) = &mut tables.kernels {
                let out = &mut tables.scratch[..3 * kernel_entries];
                let (phi_part, grad_part) = out.split_at_mut(3 * self.phi_pairs.len());
                for (&(a, b), out) in self.phi_pairs.iter().zip(phi_part.chunks_exact_mut(3)) {
                    out[0] = weight * d1[a] * phi[b];
                    out[1] = weight * phi[a] * d1[b];
                    out[2] = 0.0;
                }
                let w_zz = weight * z * z;
                for (&(mu, nu), out) in self.grad_pairs.iter().zip(grad_part.chunks_exact_mut(3)) {
                    out[0] = w_zz * d1[nu] * curvature[mu];
                    out[1] = w_zz * d1[mu] * curvature[nu];
                    out[2] = 2.0 * weight * z * d1[mu] * d1[nu];
                }
                let len = tiles::entries_len(kernel_entries);
                let at = (slot * recorded_count + r) * len;
                tiles::compact_entries(out, &mut kernels[at..at + len]);
            }
        }
    }

    /// Adds w ∂ψ_ν(k)/∂Δ_α(j) for j in `block` to `acc` ([k][ν][(j − j₀)·P + α]), for the
    /// cached site `slot`.
    fn tangents(
        &mut self,
        slot: usize,
        weight: f64,
        block: Range<usize>,
        accumulators: Accumulators,
    ) {
        #[cfg(target_arch = "x86_64")]
        if let Some(tables) = &self.tables {
            let (acc, ntk_acc, kernel_acc) = accumulators;
            let per_site = (self.steps + 1) * tables.layout.len();
            let recorded_count = self.recorded.iter().flatten().count();
            fn entry_table(table: &[f64], slot: usize, per_site: usize) -> &[f64] {
                &table[slot * per_site..][..per_site]
            }
            let site = tiles::TileSite {
                n: self.problem.n_all(),
                steps: self.steps,
                block,
                layout: tables.layout,
                table: &tables.steps[slot * per_site..][..per_site],
                kx_columns: &tables.kx_columns,
                recorded: &self.recorded,
                ntk: tiles::Entries {
                    rows: &self.pairs,
                    coefficients: entry_table(
                        &tables.ntk,
                        slot,
                        recorded_count * tiles::entries_len(self.pairs.len()),
                    ),
                },
                kernels: tables.kernels.as_ref().map(|k| tiles::Entries {
                    rows: &tables.kernel_rows,
                    coefficients: entry_table(
                        k,
                        slot,
                        recorded_count * tiles::entries_len(tables.kernel_rows.len()),
                    ),
                }),
            };
            // SAFETY: the tables exist only for TangentKernel::Registers, whose instruction
            // set comes from tiles::register_isas on this CPU.
            return unsafe { tiles::march_block(tables.isa, &site, acc, ntk_acc, kernel_acc) };
        }
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has the features this copy is compiled for.
            return unsafe { self.tangents_avx2(slot, weight, block, accumulators) };
        }
        self.tangents_portable(slot, weight, block, accumulators)
    }

    /// [`Self::tangents`] compiled for AVX2 + FMA: the loops over directions are bound by
    /// L1 traffic, and 4-wide loads cut it against the SSE2 baseline.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tangents_avx2(
        &mut self,
        slot: usize,
        weight: f64,
        block: Range<usize>,
        accumulators: Accumulators,
    ) {
        self.tangents_portable(slot, weight, block, accumulators)
    }

    #[inline(always)]
    fn tangents_portable(
        &mut self,
        slot: usize,
        weight: f64,
        block: Range<usize>,
        (acc, ntk_acc, mut kernel_acc): Accumulators,
    ) {
        let (p, n) = (self.problem.n_train(), self.problem.n_all());
        let width = block.len() * p;
        let entries = self.pairs.len();
        let (gamma0, c) = (self.model.gamma0, self.c);
        for k in block.start..=self.steps {
            let (z, phi, d1, v, curvature) =
                cached_step(&self.trajectory, (self.record, n, self.steps), (slot, k));
            // Directions already born (block.start ≤ j < k).
            let active = (k.min(block.end) - block.start) * p;
            let last = k == self.steps;
            if let (Some(rec_index), true) = (self.recorded[k], active > 0) {
                // ∂κ_e/∂Δ_d = w(δφ_μ φ_α + φ_μ δφ_α + K^x_μα (δg_μ g_α + g_μ δg_α)) with
                // δφ_β = φ'_β δh_β and δg_β = φ''_β z δh_β + φ'_β δz (the relu kernel again),
                // collected on the three state rows it reads: δh_μ, δh_α and δz.
                let dz = &self.dz[..active];
                for (e, &(mu, alpha)) in self.pairs.iter().enumerate() {
                    let k_ma = weight * self.kx[mu * n + alpha] * z;
                    let (phi_mu, phi_alpha) = if self.readout_trained {
                        (weight * phi[mu], weight * phi[alpha])
                    } else {
                        (0.0, 0.0)
                    };
                    let c_mu = phi_alpha * d1[mu] + k_ma * d1[alpha] * curvature[mu] * z;
                    let c_alpha = phi_mu * d1[alpha] + k_ma * d1[mu] * curvature[alpha] * z;
                    let c_z = 2.0 * k_ma * d1[mu] * d1[alpha];
                    let out = &mut ntk_acc[(rec_index * entries + e) * width..][..active];
                    let dh_mu = &self.dh[mu * width..][..active];
                    let dh_alpha = &self.dh[alpha * width..][..active];
                    for (((out, &x), &y), &u) in out.iter_mut().zip(dh_mu).zip(dh_alpha).zip(dz) {
                        *out += c_mu * x + c_alpha * y + c_z * u;
                    }
                }
                if let Some(kernel_acc) = kernel_acc.as_deref_mut() {
                    self.kernel_tangents(
                        rec_index,
                        weight,
                        (z, phi, d1, curvature),
                        (active, width),
                        kernel_acc,
                    );
                }
            }
            if active > 0 {
                let delta = self.delta_path.row(k);
                // One fused pass per point ν over the directions:
                //   D(k,ν) += w(z φ'_ν δh_ν + φ_ν δz)/γ₀           (the sensitivity of ψ_ν(k))
                //   δz' = δz + Σ_β cΔ_β φ'_β δh_β                     (train β)
                //   δh_ν' = δh_ν + v_ν δz + Σ_β K_νβ cΔ_β φ''_β z δh_β
                // with δg_β = φ''(h_β) z δh_β + φ'(h_β) δz. The φ'' rows are copied first,
                // since every ν reads them before the pass updates them; the first two are
                // fused into the pass (relu's kernel rarely leaves more than two).
                self.curved.clear();
                if !last {
                    for beta in 0..p {
                        let coef = c * delta[beta] * curvature[beta] * z;
                        if coef != 0.0 {
                            let slot = self.curved.len();
                            self.curvature_rows[slot * width..][..active]
                                .copy_from_slice(&self.dh[beta * width..][..active]);
                            self.curved.push((beta, coef));
                        }
                    }
                    self.dz_next[..active].copy_from_slice(&self.dz[..active]);
                }
                let (fused_rows, extra_rows) = self.curvature_rows.split_at(2 * width);
                let (first, second) = fused_rows.split_at(width);
                let (first, second) = (&first[..active], &second[..active]);
                let dz = &self.dz[..active];
                let next = &mut self.dz_next[..active];
                let weight_over_gamma = weight / gamma0;
                for nu in 0..n {
                    let a = weight_over_gamma * z * d1[nu];
                    let b = weight_over_gamma * phi[nu];
                    let out = &mut acc[(k * n + nu) * width..][..active];
                    let dh = &mut self.dh[nu * width..][..active];
                    if last {
                        for ((out, &x), &y) in out.iter_mut().zip(dh.iter()).zip(dz) {
                            *out += a * x + b * y;
                        }
                        continue;
                    }
                    let slope = if nu < p && self.readout_trained {
                        c * delta[nu] * d1[nu]
                    } else {
                        0.0
                    };
                    let scale = |j: usize| {
                        self.curved
                            .get(j)
                            .map_or(0.0, |&(beta, coef)| self.kx[nu * n + beta] * coef)
                    };
                    let coefs = RowCoefficients {
                        a,
                        b,
                        slope,
                        vn: v[nu],
                        curved: [scale(0), scale(1)],
                    };
                    let rows = (out, &mut *dh, dz, &mut *next, first, second);
                    // φ'_ν = 0 (an inactive relu unit): δh_ν feeds nothing this step; test
                    // points and a frozen readout do not feed δz.
                    match (
                        a != 0.0 || slope != 0.0,
                        slope != 0.0,
                        !self.curved.is_empty(),
                    ) {
                        (false, _, false) => tangent_row::<false, false, false>(rows, &coefs),
                        (false, _, true) => tangent_row::<false, false, true>(rows, &coefs),
                        (true, false, false) => tangent_row::<true, false, false>(rows, &coefs),
                        (true, false, true) => tangent_row::<true, false, true>(rows, &coefs),
                        (true, true, false) => tangent_row::<true, true, false>(rows, &coefs),
                        (true, true, true) => tangent_row::<true, true, true>(rows, &coefs),
                    }
                    for (j, &(beta, coef)) in self.curved.iter().enumerate().skip(2) {
                        let scale = self.kx[nu * n + beta] * coef;
                        let old = &extra_rows[(j - 2) * width..][..active];
                        for (x, &o) in dh.iter_mut().zip(old) {
                            *x += scale * o;
                        }
                    }
                }
                if !last {
                    std::mem::swap(&mut self.dz, &mut self.dz_next);
                }
            }
            if last {
                break;
            }
            // Directions born at step k: a unit shift of Δ_α(k) moves h(k+1) by c K_{·α} g_α
            // and z(k+1) by c φ_α.
            if block.contains(&k) {
                for alpha in 0..p {
                    let d = active + alpha;
                    let g = d1[alpha] * z;
                    for nu in 0..n {
                        self.dh[nu * width + d] = c * self.kx[nu * n + alpha] * g;
                    }
                    self.dz[d] = if self.readout_trained {
                        c * phi[alpha]
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}

/// One step's record read back: z, φ (n), φ' (n), v (n) and the curvature slots (P).
type StepView<'t> = (f64, &'t [f64], &'t [f64], &'t [f64], &'t [f64]);

/// The record of site `slot` at step k in a chunk's cached trajectories (records of `len`
/// values for n points over T + 1 steps per site), a free function so that the tangent pass
/// can read it while it updates its own state.
fn cached_step(
    trajectory: &[f64],
    (len, n, steps): (usize, usize, usize),
    (slot, k): (usize, usize),
) -> StepView<'_> {
    let at = (slot * (steps + 1) + k) * len;
    let rec = &trajectory[at..at + len];
    let (phi, rest) = rec[1..].split_at(n);
    let (d1, rest) = rest.split_at(n);
    let (v, curvature) = rest.split_at(n);
    (rec[0], phi, d1, v, curvature)
}

/// The tangent accumulators of one block of directions: D_f, D_K and, when asked for, D_Φ,G.
type Accumulators<'a> = (&'a mut [f64], &'a mut [f64], Option<&'a mut [f64]>);

/// Scalars of one point's row in the fused tangent pass.
struct RowCoefficients {
    /// w z φ'_ν / γ₀ and w φ_ν / γ₀: the sensitivity of ψ_ν to δh_ν and δz.
    a: f64,
    b: f64,
    /// c Δ_ν φ'_ν: how δh_ν feeds δz (train points of a trained readout).
    slope: f64,
    /// v_ν: how δz feeds δh_ν.
    vn: f64,
    /// K_νβ c Δ_β φ''_β z of the first two curved training points (0 if absent).
    curved: [f64; 2],
}

/// One row's streams over the active directions: its accumulator row, δh_ν, δz, δz', and
/// the first two curvature rows.
type RowStreams<'s> = (
    &'s mut [f64],
    &'s mut [f64],
    &'s [f64],
    &'s mut [f64],
    &'s [f64],
    &'s [f64],
);

/// One point ν of the fused tangent pass over the directions (see `tangents_portable`),
/// compiled per case so that the common rows skip the terms that vanish: `FEEDS_H` (δh_ν
/// reaches ψ or δz), `FEEDS_Z` (slope ≠ 0), `CURVED` (some φ'' term is non-zero).
#[inline(always)]
fn tangent_row<const FEEDS_H: bool, const FEEDS_Z: bool, const CURVED: bool>(
    (out, dh, dz, next, first, second): RowStreams,
    c: &RowCoefficients,
) {
    let [s0, s1] = c.curved;
    for (((((out, x), &y), zn), &o0), &o1) in out
        .iter_mut()
        .zip(dh.iter_mut())
        .zip(dz)
        .zip(next.iter_mut())
        .zip(first)
        .zip(second)
    {
        let old = *x;
        let mut new = old + c.vn * y;
        if CURVED {
            new += s0 * o0 + s1 * o1;
        }
        if FEEDS_H {
            *out += c.a * old + c.b * y;
        } else {
            *out += c.b * y;
        }
        if FEEDS_Z {
            *zn += c.slope * old;
        }
        *x = new;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::problem::{teacher_problem, two_layer_model};

    /// D_f by central differences of the whole march on common sites, open loop along Δ:
    /// an independent route to the same derivative of the site average.
    fn finite_difference_response(
        problem: &Problem,
        model: &Model,
        schedule: &Schedule,
        sites: &SiteSet,
        delta_path: &Array2<f64>,
        step: f64,
    ) -> Array2<f64> {
        let (p, n, nt) = (problem.n_train(), problem.n_all(), schedule.steps + 1);
        let mut response = Array2::zeros((nt * n, p * schedule.steps));
        for j in 0..schedule.steps {
            for alpha in 0..p {
                let shifted = |eps: f64| {
                    let probe = Probe {
                        open_loop: Some(delta_path.clone()),
                        shift: Some((j, alpha, eps)),
                    };
                    march(problem, model, schedule, sites, &probe, &|_| {})
                        .unwrap()
                        .f_all
                };
                let derivative = (shifted(step) - shifted(-step)) / (2.0 * step);
                for k in 0..nt {
                    for nu in 0..n {
                        response[[k * n + nu, j * p + alpha]] = derivative[[k, nu]];
                    }
                }
            }
        }
        response
    }

    fn tangent_and_fd(
        act: Activation,
        readout: Readout,
        sites_of: impl Fn(&Problem) -> SiteSet,
        width: f64,
        step: f64,
    ) -> (Array2<f64>, Array2<f64>) {
        let problem = teacher_problem(3, 1, 8, 3);
        let model = Model {
            depth: 1,
            activation: act,
            parameterization: Parameterization::Mup,
            gamma0: 1.5,
            centered: false,
            residual: None,
            readout,
        };
        let schedule = Schedule {
            eta: 0.5,
            steps: 6,
            record_every: 1,
        };
        let sites = sites_of(&problem);
        let (_, delta) = open_loop_path(&problem, &model, &schedule, &sites).unwrap();
        let sums = site_sums(
            &problem,
            &model,
            &schedule,
            &sites,
            delta.view(),
            (
                &ReferenceSites {
                    activation: act,
                    readout,
                },
                TangentKernel::fastest(problem.n_all()),
                width,
                false,
            ),
            &|_| {},
        );
        let tangent = sums.sensitivity_matrix(problem.n_train());
        let fd = finite_difference_response(&problem, &model, &schedule, &sites, &delta, step);
        (tangent, fd)
    }

    #[test]
    fn initial_output_variance_is_the_readout_kernel() {
        // At k = 0, √N f(0) ~ 𝒩(0, Φ(0,0)/γ₀²) with Φ_νν = ⟨relu(u_ν)²⟩ = K^x_νν / 2. The
        // Monte Carlo κ has relative standard error √(Var(z²φ²)/M)/⟨z²φ²⟩ = √(17/M) for
        // relu (E z⁴ φ⁴ = 3 · 3K²/2), 0.65 % at M = 4·10⁵; tolerance 4 of those.
        let problem = teacher_problem(3, 2, 8, 3);
        let model = Model {
            depth: 1,
            activation: Activation::Relu,
            parameterization: Parameterization::Mup,
            gamma0: 0.7,
            centered: false,
            residual: None,
            readout: Readout::Trained,
        };
        let schedule = Schedule {
            eta: 0.5,
            steps: 3,
            record_every: 1,
        };
        let sites = 400_000;
        let opts = SolverOptions {
            sites,
            quadrature: 0,
            seed: 2,
        };
        let fl =
            two_layer_prediction_fluctuations(&problem, &model, &schedule, &opts, &|_| {}).unwrap();
        let rel_se = (17.0 / sites as f64).sqrt();
        let p = problem.n_train();
        for nu in 0..problem.n_all() {
            let want = problem.kx[[nu, nu]] / 2.0 / (model.gamma0 * model.gamma0);
            let got = if nu < p {
                fl.var_f_train[[0, nu]]
            } else {
                fl.var_f_test[[0, nu - p]]
            };
            assert!(
                (got / want - 1.0).abs() < 4.0 * rel_se,
                "point {nu}: N·Var f(0) = {got}, Φ/γ₀² = {want}"
            );
        }
    }

    #[test]
    fn smooth_tangents_match_finite_differences() {
        // Deterministic sites: the two routes differ only by the O(step²) truncation of the
        // central difference (≈ 1e-8 relative at step 1e-4) and round-off. The frozen readout
        // drops the z tangents: the march's fixed z checks that they vanish.
        let cases = [Activation::Tanh, Activation::Erf, Activation::Linear]
            .into_iter()
            .flat_map(|a| [(a, Readout::Trained), (a, Readout::Frozen)]);
        for (act, readout) in cases {
            let (tangent, fd) = tangent_and_fd(
                act,
                readout,
                |problem| SiteSet::quadrature(problem.kx.view(), 8).unwrap(),
                CROSSING_WIDTH,
                1e-4,
            );
            let scale = fd.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let err = (&tangent - &fd).iter().fold(0.0f64, |m, v| m.max(v.abs()));
            assert!(scale > 1e-3, "{act} {readout}: D_f vanished");
            assert!(
                err <= 1e-6 * scale,
                "{act} {readout}: |tangent − FD| = {err:e}, |D| = {scale:e}"
            );
        }
    }

    #[test]
    fn relu_tangents_keep_the_kink_crossing_term() {
        // Same 10⁶ Monte Carlo sites for both routes. The pathwise tangent (relu'' = 0) misses
        // the sites whose preactivation crosses 0 (here ≈ 2.5 % of |D_f|); the central
        // difference at step 0.05 sees them, as does the triangle kernel. Measured: the
        // kernel leaves 0.23 of the pathwise miss, the rest being the noise of both estimates
        // (≈ 1/√(M·width) each) and their O(width²), O(step²) biases.
        let sites =
            |problem: &Problem| SiteSet::monte_carlo(problem.kx.view(), 1_000_000, 5, 0).unwrap();
        let (kernel, fd) = tangent_and_fd(
            Activation::Relu,
            Readout::Trained,
            sites,
            CROSSING_WIDTH,
            5e-2,
        );
        let (pathwise, _) = tangent_and_fd(Activation::Relu, Readout::Trained, sites, 0.0, 5e-2);
        let norm = |a: &Array2<f64>| a.iter().map(|v| v * v).sum::<f64>().sqrt();
        let missed = norm(&(&pathwise - &fd));
        let left = norm(&(&kernel - &fd));
        println!(
            "|D| {:.4e}, pathwise miss {missed:.3e}, kernel miss {left:.3e}",
            norm(&fd)
        );
        assert!(missed > 1e-2 * norm(&fd), "crossing term too small to test");
        assert!(
            left < 0.35 * missed,
            "kernel leaves {left:e} of the pathwise miss {missed:e}"
        );
    }

    /// Φ(k) and G(k) (row-major n × n and P × P) at every step of an open-loop march of
    /// `sites` along `delta` with Δ_α(j) shifted by ε: written out here, apart from the
    /// propagator's recorders, as the oracle of its kernel means and tangents.
    fn kernel_march(
        problem: &Problem,
        model: &Model,
        schedule: &Schedule,
        sites: &SiteSet,
        delta: &Array2<f64>,
        (j, alpha, eps): (usize, usize, f64),
    ) -> Vec<(Array2<f64>, Array2<f64>)> {
        let (p, n) = (problem.n_train(), problem.n_all());
        let act = model.activation;
        let c = schedule.eta * model.gamma0 / p as f64;
        let mut h = sites.u.clone();
        let mut z = sites.r.clone();
        let mut out = Vec::new();
        for k in 0..=schedule.steps {
            let mut phi_k = Array2::<f64>::zeros((n, n));
            let mut grad_k = Array2::<f64>::zeros((p, p));
            for i in 0..z.len() {
                let w = sites.weight[i];
                let phi: Vec<f64> = h.row(i).iter().map(|&x| act.phi(x)).collect();
                let g: Vec<f64> = (0..p).map(|mu| act.d1(h[[i, mu]]) * z[i]).collect();
                for a in 0..n {
                    for b in 0..n {
                        phi_k[[a, b]] += w * phi[a] * phi[b];
                    }
                }
                for a in 0..p {
                    for b in 0..p {
                        grad_k[[a, b]] += w * g[a] * g[b];
                    }
                }
                if k < schedule.steps {
                    let mut d = delta.row(k).to_owned();
                    if k == j {
                        d[alpha] += eps;
                    }
                    for beta in 0..p {
                        for nu in 0..n {
                            h[[i, nu]] += c * d[beta] * problem.kx[[nu, beta]] * g[beta];
                        }
                        if model.readout == Readout::Trained {
                            z[i] += c * d[beta] * phi[beta];
                        }
                    }
                }
            }
            out.push((phi_k, grad_k));
        }
        out
    }

    #[test]
    fn register_kernel_matches_the_row_kernel() {
        // The two tangent kernels on the same sites: the same sums in another order, with
        // fused multiply-adds in the register kernel, so they agree to round-off (1e-12 of
        // the largest entry; measured 4e-16 to 1.7e-15). 13 steps make a block of 8 steps and
        // one of 5, whose tiles straddle two training points; relu's dead tiles are skipped.
        // Then the edges: one point (a single partial tile per block) and P + Q = 24, the
        // most the registers hold.
        let cases = [
            ((5, 2, 13, 4), Activation::Relu, Readout::Trained, 1.0),
            ((5, 2, 13, 4), Activation::Relu, Readout::Frozen, 0.5),
            ((5, 2, 13, 4), Activation::Tanh, Readout::Trained, 2.0),
            ((1, 0, 5, 1), Activation::Relu, Readout::Trained, 1.0),
            ((20, 4, 9, 3), Activation::Relu, Readout::Trained, 1.0),
        ];
        for ((p, q, steps, record_every), act, readout, gamma0) in cases {
            let isas = tiles::register_isas(p + q);
            if isas.is_empty() {
                eprintln!("no AVX2 on this CPU: the register kernel never runs here");
                return;
            }
            let problem = teacher_problem(p, q, 8, 3);
            let schedule = Schedule {
                eta: 0.5,
                steps,
                record_every,
            };
            let model = two_layer_model(act, gamma0, false, readout);
            let sites = SiteSet::monte_carlo(problem.kx.view(), 3000, 5, 0).unwrap();
            let (_, delta) = open_loop_path(&problem, &model, &schedule, &sites).unwrap();
            let recorder = ReferenceSites {
                activation: act,
                readout,
            };
            let sums_of = |kernel| {
                site_sums(
                    &problem,
                    &model,
                    &schedule,
                    &sites,
                    delta.view(),
                    (&recorder, kernel, CROSSING_WIDTH, true),
                    &|_| {},
                )
            };
            let matrices = |sums: &SiteSums| {
                let kernels = sums.kernels.as_ref().unwrap();
                [
                    sums.sensitivity_matrix(p),
                    sums.ntk_sensitivity_matrix(p),
                    sums.kernel_sensitivity_matrix(kernels, p),
                ]
            };
            let by_rows = matrices(&sums_of(TangentKernel::Rows));
            for isa in isas {
                let by_registers = matrices(&sums_of(TangentKernel::Registers(isa)));
                for (name, (want, got)) in ["D_f", "D_K", "D_Φ,G"]
                    .into_iter()
                    .zip(by_rows.iter().zip(&by_registers))
                {
                    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                    let err = (want - got).iter().fold(0.0f64, |m, v| m.max(v.abs()));
                    let case = format!("{act} {readout} n = {} {isa:?}: {name}", p + q);
                    assert!(scale > 1e-3, "{case} vanished");
                    assert!(
                        err <= 1e-12 * scale,
                        "{case} differs by {err:e} (scale {scale:e})"
                    );
                }
            }
        }
    }

    #[test]
    fn kernel_means_and_tangents_match_an_independent_march() {
        // Same quadrature sites for both routes: the means agree to round-off (1e-12), the
        // tangents to the O(step²) truncation of the central difference (≈ 1e-8 relative at
        // step 1e-4), as in `smooth_tangents_match_finite_differences`. Recording every
        // other step checks the recorded-row layout.
        let problem = teacher_problem(3, 1, 8, 3);
        let schedule = Schedule {
            eta: 0.5,
            steps: 6,
            record_every: 2,
        };
        let (p, n) = (problem.n_train(), problem.n_all());
        let sites = SiteSet::quadrature(problem.kx.view(), 6).unwrap();
        let (phi_pairs, grad_pairs) = kernel_pairs(p, n);
        let entries = phi_pairs.len() + grad_pairs.len();
        let pick = |kernels: &(Array2<f64>, Array2<f64>)| -> Vec<f64> {
            let phi = phi_pairs.iter().map(|&(a, b)| kernels.0[[a, b]]);
            phi.chain(grad_pairs.iter().map(|&(a, b)| kernels.1[[a, b]]))
                .collect()
        };
        for (act, readout) in [
            (Activation::Tanh, Readout::Trained),
            (Activation::Tanh, Readout::Frozen),
            (Activation::Linear, Readout::Trained),
        ] {
            let model = two_layer_model(act, 1.5, false, readout);
            let (_, delta) = open_loop_path(&problem, &model, &schedule, &sites).unwrap();
            let recorder = ReferenceSites {
                activation: act,
                readout,
            };
            let sums = site_sums(
                &problem,
                &model,
                &schedule,
                &sites,
                delta.view(),
                (
                    &recorder,
                    TangentKernel::fastest(problem.n_all()),
                    CROSSING_WIDTH,
                    true,
                ),
                &|_| {},
            );
            let kernels = sums.kernels.as_ref().unwrap();
            let tangent = sums.kernel_sensitivity_matrix(kernels, p);
            let plain = kernel_march(&problem, &model, &schedule, &sites, &delta, (0, 0, 0.0));
            let recorded = schedule.recorded_steps();
            let (mut mean_err, mut scale, mut err) = (0.0f64, 0.0f64, 0.0f64);
            for (r, &k) in recorded.iter().enumerate() {
                for (e, want) in pick(&plain[k]).into_iter().enumerate() {
                    mean_err = mean_err.max((kernels.first[r * entries + e] - want).abs());
                }
            }
            for j in 0..schedule.steps {
                for alpha in 0..p {
                    let at = |eps| {
                        kernel_march(&problem, &model, &schedule, &sites, &delta, (j, alpha, eps))
                    };
                    let (up, down) = (at(1e-4), at(-1e-4));
                    for (r, &k) in recorded.iter().enumerate() {
                        let (up, down) = (pick(&up[k]), pick(&down[k]));
                        for e in 0..entries {
                            let fd = (up[e] - down[e]) / 2e-4;
                            scale = scale.max(fd.abs());
                            err = err.max((tangent[[r * entries + e, j * p + alpha]] - fd).abs());
                        }
                    }
                }
            }
            assert!(
                mean_err < 1e-12,
                "{act} {readout}: |Φ, G means − march| = {mean_err:e}"
            );
            assert!(scale > 1e-3, "{act} {readout}: D_Φ,G vanished");
            assert!(
                err <= 1e-6 * scale,
                "{act} {readout}: |tangent − FD| = {err:e}, |D| = {scale:e}"
            );
        }
    }

    /// The propagator's Φ and G variances with quadrature sites.
    fn kernel_variances_of(
        model: &Model,
        schedule: &Schedule,
        problem: &Problem,
        order: usize,
    ) -> KernelVariances {
        let options = SolverOptions {
            sites: 0,
            quadrature: order,
            seed: 0,
        };
        let observe = PropagatorOptions {
            kernel_variances: true,
        };
        let recorder = ReferenceSites {
            activation: model.activation,
            readout: model.readout,
        };
        two_layer_prediction_fluctuations_observing(
            problem,
            model,
            schedule,
            &options,
            &observe,
            &recorder,
            &|_| {},
        )
        .unwrap()
        .kernels
        .unwrap()
    }

    #[test]
    fn linear_kernel_variances_at_initialization_are_isserlis() {
        // At k = 0 nothing has fed back: N·Var Φ_ab = Var(u_a u_b) = K_aa K_bb + K_ab² and
        // N·Var G_μν = Var(z²) = 2 for φ(u) = u. Gauss–Hermite of order 4 integrates these
        // degree-4 moments exactly, so only round-off separates them (1e-10).
        let problem = teacher_problem(3, 1, 8, 3);
        let schedule = Schedule {
            eta: 0.5,
            steps: 4,
            record_every: 2,
        };
        let model = two_layer_model(Activation::Linear, 1.0, false, Readout::Trained);
        let kv = kernel_variances_of(&model, &schedule, &problem, 4);
        let (p, n) = (problem.n_train(), problem.n_all());
        let kx = &problem.kx;
        for a in 0..n {
            for b in 0..n {
                let want = kx[[a, a]] * kx[[b, b]] + kx[[a, b]] * kx[[a, b]];
                let got = kv.var_phi_kernel[0][[0, a, b]];
                assert!((got - want).abs() < 1e-10, "Φ_{a}{b}: {got} vs {want}");
                assert!((kv.phi_kernel[0][[0, a, b]] - kx[[a, b]]).abs() < 1e-12);
            }
        }
        for mu in 0..p {
            for nu in 0..p {
                assert!((kv.var_grad_kernel[0][[0, mu, nu]] - 2.0).abs() < 1e-10);
                assert!((kv.grad_kernel[0][[0, mu, nu]] - 1.0).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn lazy_kernel_variances_stay_at_initialization() {
        // At γ₀ → 0 (centered, so f(0) = 0 and δf stays O(1)) the features barely move: Φ's
        // variance stays the site variance of φ(u_a)φ(u_b) at initialization. For φ(u) = u
        // that is K_aa K_bb + K_ab² (Isserlis, exact under Gauss–Hermite of order 4); for
        // tanh its own step-0 value (κ only there, nothing fed back yet). The features move
        // by O(γ₀), but odd in the readout r (h by ∝ z, z by ∝ φ) while Φ is even, so the
        // first order cancels in the site averages, D_Φ and κ_fΦ: the departure is O(γ₀²).
        // It must quarter when γ₀ halves (within 10 %) and stay under 10⁻³ at γ₀ = 0.01.
        let problem = teacher_problem(3, 1, 8, 3);
        let schedule = Schedule {
            eta: 0.5,
            steps: 12,
            record_every: 2,
        };
        let n = problem.n_all();
        let kx = &problem.kx;
        for act in [Activation::Linear, Activation::Tanh] {
            let departure = |gamma0: f64| {
                let model = two_layer_model(act, gamma0, true, Readout::Trained);
                let var =
                    kernel_variances_of(&model, &schedule, &problem, 5).var_phi_kernel[0].clone();
                let mut worst = 0.0f64;
                for a in 0..n {
                    for b in 0..n {
                        let init = if act == Activation::Linear {
                            kx[[a, a]] * kx[[b, b]] + kx[[a, b]] * kx[[a, b]]
                        } else {
                            var[[0, a, b]]
                        };
                        for r in 0..var.shape()[0] {
                            worst = worst.max((var[[r, a, b]] / init - 1.0).abs());
                        }
                    }
                }
                worst
            };
            let (small, smaller) = (departure(0.01), departure(0.005));
            println!(
                "{act}: largest relative departure {small:.2e} at γ₀ = 0.01, {smaller:.2e} at 0.005"
            );
            assert!(
                small < 1e-3,
                "{act}: Φ variance departs by {small} at γ₀ = 0.01"
            );
            assert!(
                (small / smaller - 4.0).abs() < 0.4,
                "{act}: departure {small} at γ₀ = 0.01 and {smaller} at 0.005 is not O(γ₀²)"
            );
        }
    }
}
