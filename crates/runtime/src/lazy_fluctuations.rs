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
//! κ_K of a plain deep chain is built layer by layer ([`chain_kernel_noise`];
//! docs/fluctuations.md, "The lazy limit at any depth").

use crate::lazy::{PairIntegrator, lazy_kernels};
use crate::linalg::psd_factor;
use crate::problem::Parameterization;
use crate::propagator::PredictionFluctuations;
use crate::quadrature::tensor_grid;
use crate::sampling::{normal_matrix, replica_rng};
use crate::two_layer::{MAX_QUADRATURE_POINTS, SiteSet};
use crate::{Activation, DmftError, Model, Problem, Readout, Result, Schedule, SolverOptions};
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

/// The kernel entries (a, b), b ≤ a, that the NTK fluctuation over (all points × train)
/// reads: every (a, μ) with μ a train point, and the diagonals, which the pair maps of the
/// next layer read. Test × test off-diagonal entries never enter.
struct PairIndex {
    pairs: Vec<(usize, usize)>,
    /// Position of (a, b) and (b, a) in `pairs`, `usize::MAX` where absent.
    index: Array2<usize>,
}

impl PairIndex {
    fn new(n: usize, p: usize) -> Self {
        let mut pairs = Vec::new();
        let mut index = Array2::from_elem((n, n), usize::MAX);
        for a in 0..n {
            for b in 0..=a {
                if b < p || a == b {
                    index[[a, b]] = pairs.len();
                    index[[b, a]] = pairs.len();
                    pairs.push((a, b));
                }
            }
        }
        PairIndex { pairs, index }
    }

    fn len(&self) -> usize {
        self.pairs.len()
    }

    fn of(&self, a: usize, b: usize) -> usize {
        self.index[[a, b]]
    }
}

/// Linear response of one layer's pair maps to its input kernel Φ^{ℓ−1} over the pairs:
/// for each pair, the (source pair, ∂⟨φφ⟩, ∂⟨φ'φ'⟩) terms and the value ⟨φ'φ'⟩ = Ġ^ℓ.
struct LayerResponse {
    terms: Vec<Vec<(usize, f64, f64)>>,
    gdot: Vec<f64>,
}

impl LayerResponse {
    fn new(integrator: &PairIntegrator, cov: &Array2<f64>, pairs: &PairIndex) -> Self {
        let mut terms = Vec::with_capacity(pairs.len());
        let mut gdot = Vec::with_capacity(pairs.len());
        for &(a, b) in &pairs.pairs {
            let (qa, qb, c) = (cov[[a, a]], cov[[b, b]], cov[[a, b]]);
            gdot.push(integrator.pair(qa, qb, c).1);
            if a == b {
                let (dp, dd) = integrator.diagonal_slopes(qa);
                terms.push(vec![(pairs.of(a, a), dp, dd)]);
            } else {
                let (dp, dd) = integrator.slopes(qa, qb, c);
                let sources = [pairs.of(a, a), pairs.of(b, b), pairs.of(a, b)];
                terms.push((0..3).map(|k| (sources[k], dp[k], dd[k])).collect());
            }
        }
        LayerResponse { terms, gdot }
    }
}

/// Single-site covariance of layer ℓ's pair averages: √N times the fluctuation of
/// (Φ^ℓ_e, G^ℓ_e) over the pairs e, Φ first, from h ~ 𝒩(0, Φ^{ℓ−1}) and z ~ 𝒩(0, G^{ℓ+1})
/// independent. z enters by Isserlis, ⟨z_a z_b z_c z_d⟩ = G_ab G_cd + G_ac G_bd + G_ad G_bc;
/// the h-averages are closed forms for linear φ, else sums over `options`' sites (Monte Carlo
/// with replica ℓ, or the Gauss–Hermite grid over the range of Φ^{ℓ−1}).
fn site_covariance(
    act: Activation,
    layer: usize,
    phi_prev: &Array2<f64>,
    g_next: &Array2<f64>,
    pairs: &PairIndex,
    options: &SolverOptions,
) -> Result<Array2<f64>> {
    let s = pairs.len();
    let isserlis = |m: &Array2<f64>, e: usize, f: usize| {
        let ((a, b), (c, d)) = (pairs.pairs[e], pairs.pairs[f]);
        (
            m[[a, b]] * m[[c, d]],
            m[[a, c]] * m[[b, d]] + m[[a, d]] * m[[b, c]],
        )
    };
    let mut cov = Array2::<f64>::zeros((2 * s, 2 * s));
    if act == Activation::Linear {
        for e in 0..s {
            for f in 0..s {
                cov[[e, f]] = isserlis(phi_prev, e, f).1;
                cov[[s + e, s + f]] = isserlis(g_next, e, f).1;
            }
        }
        return Ok(cov);
    }
    let factor = psd_factor(phi_prev.view())?;
    let (u, weight) = if options.quadrature > 0 {
        let (order, dim) = (options.quadrature, factor.ncols());
        let count = (order as f64).powi(dim as i32);
        if count > MAX_QUADRATURE_POINTS as f64 {
            return Err(DmftError::Invalid(format!(
                "theory.quadrature = {order} needs {order}^{dim} = {count:.3e} points for the {dim} directions of layer {layer}'s input kernel (limit {MAX_QUADRATURE_POINTS}); use quadrature = 0 (Monte Carlo) or a smaller order"
            )));
        }
        let (nodes, weight) = tensor_grid(order, dim)?;
        (nodes.dot(&factor.t()), weight)
    } else {
        let mut rng = replica_rng(options.seed, layer as u64);
        let xi = normal_matrix(&mut rng, options.sites, factor.ncols());
        (
            xi.dot(&factor.t()),
            Array1::from_elem(options.sites, 1.0 / options.sites as f64),
        )
    };
    // Weighted second moments of (φ_aφ_b, φ'_aφ'_b) over the pairs.
    let mut mean = Array1::<f64>::zeros(2 * s);
    let mut second = Array2::<f64>::zeros((2 * s, 2 * s));
    const CHUNK: usize = 2048;
    let mut rows = Array2::<f64>::zeros((CHUNK, 2 * s));
    let m = weight.len();
    for start in (0..m).step_by(CHUNK) {
        let len = CHUNK.min(m - start);
        for i in 0..len {
            let (h, w) = (u.row(start + i), weight[start + i]);
            let phi: Vec<f64> = h.iter().map(|&x| act.phi(x)).collect();
            let slope: Vec<f64> = h.iter().map(|&x| act.d1(x)).collect();
            let root_w = w.sqrt();
            for (e, &(a, b)) in pairs.pairs.iter().enumerate() {
                let (x, y) = (phi[a] * phi[b], slope[a] * slope[b]);
                rows[[i, e]] = root_w * x;
                rows[[i, s + e]] = root_w * y;
                mean[e] += w * x;
                mean[s + e] += w * y;
            }
        }
        let block = rows.slice(s![..len, ..]);
        general_mat_mul(1.0, &block.t(), &block, 1.0, &mut second);
    }
    for e in 0..s {
        for f in 0..s {
            let (pair_mean, pair_second) = isserlis(g_next, e, f);
            let (c, d) = pairs.pairs[f];
            cov[[e, f]] = second[[e, f]] - mean[e] * mean[f];
            let cross = g_next[[c, d]] * (second[[e, s + f]] - mean[e] * mean[s + f]);
            cov[[e, s + f]] = cross;
            cov[[s + f, e]] = cross;
            cov[[s + e, s + f]] = second[[s + e, s + f]] * (pair_mean + pair_second)
                - mean[s + e] * mean[s + f] * pair_mean;
        }
    }
    Ok(cov)
}

/// κ_K, K∞ and the initial-output covariance of a plain depth-L chain (no residual
/// branches, trained readout), to leading order in 1/√N (docs/fluctuations.md, "The lazy
/// limit at any depth"). Layer ℓ's kernels fluctuate by their own sites' noise ξ^ℓ (h^ℓ given
/// Φ^{ℓ−1}, z^ℓ given G^{ℓ+1}; independent across layers) plus the response of the pair maps
/// to the layers they read:
///
///   δΦ^ℓ = ξ_Φ^ℓ + (∂Φ^ℓ/∂Φ^{ℓ−1}) δΦ^{ℓ−1},
///   δG^ℓ = ξ_G^ℓ + G^{ℓ+1} ⊙ (∂Ġ^ℓ/∂Φ^{ℓ−1}) δΦ^{ℓ−1} + Ġ^ℓ ⊙ δG^{ℓ+1},
///
/// with δΦ⁰ = δG^{L+1} = 0, and δK = δΦ^L + Σ_{ℓ<L} G^{ℓ+1} ⊙ δΦ^ℓ + Σ_{ℓ≤L} Φ^{ℓ−1} ⊙ δG^ℓ.
/// Each δ is kept as its coefficients on all layers' noise, so κ_K = Σ_ℓ C_ℓ Cov(ξ^ℓ) C_ℓᵀ.
pub fn chain_kernel_noise(
    problem: &Problem,
    model: &Model,
    options: &SolverOptions,
) -> Result<KernelNoise> {
    let (p, n, depth) = (problem.n_train(), problem.n_all(), model.depth);
    let kernels = lazy_kernels(problem, model, options.quadrature)?;
    let integrator = PairIntegrator::new(model.activation, options.quadrature)?;
    let pairs = PairIndex::new(n, p);
    let s = pairs.len();
    let width = 2 * s * depth;
    // Noise columns of layer ℓ: Φ at (ℓ−1)·2s, G at (ℓ−1)·2s + s.
    let phi_column = |l: usize| (l - 1) * 2 * s;
    let entry = |m: &Array2<f64>, e: usize| {
        let (a, b) = pairs.pairs[e];
        m[[a, b]]
    };
    let responses: Vec<Option<LayerResponse>> = (1..=depth)
        .map(|l| {
            (l >= 2).then(|| LayerResponse::new(&integrator, &kernels.phi_kernel[l - 1], &pairs))
        })
        .collect();
    // δK over the pairs; the (all × train) entries are picked out at the end.
    let mut coef_k = Array2::<f64>::zeros((s, width));
    // Forward: C_Φ^ℓ for ℓ = 1..L (index ℓ−1).
    let mut coef_phi: Vec<Array2<f64>> = Vec::with_capacity(depth);
    for l in 1..=depth {
        let mut c = Array2::<f64>::zeros((s, width));
        for e in 0..s {
            c[[e, phi_column(l) + e]] = 1.0;
        }
        if let Some(resp) = &responses[l - 1] {
            let prev = &coef_phi[l - 2];
            for (e, terms) in resp.terms.iter().enumerate() {
                let mut row = c.row_mut(e);
                for &(source, d_phi, _) in terms {
                    row.scaled_add(d_phi, &prev.row(source));
                }
            }
        }
        // Φ^L enters K alone (the readout); hidden Φ^ℓ with G^{ℓ+1}.
        for e in 0..s {
            let weight = if l == depth {
                1.0
            } else {
                entry(&kernels.grad_kernel[l], e)
            };
            coef_k.row_mut(e).scaled_add(weight, &c.row(e));
        }
        coef_phi.push(c);
    }
    // Backward: C_G^ℓ from ℓ = L down to 1, each entering K with Φ^{ℓ−1}.
    let mut coef_grad_next = Array2::<f64>::zeros((s, width));
    for l in (1..=depth).rev() {
        let g_next = &kernels.grad_kernel[l];
        let mut c = Array2::<f64>::zeros((s, width));
        for e in 0..s {
            c[[e, phi_column(l) + s + e]] = 1.0;
        }
        let gdot: Vec<f64> = match &responses[l - 1] {
            Some(resp) => {
                let prev = &coef_phi[l - 2];
                for (e, terms) in resp.terms.iter().enumerate() {
                    let g = entry(g_next, e);
                    let mut row = c.row_mut(e);
                    for &(source, _, d_gdot) in terms {
                        row.scaled_add(g * d_gdot, &prev.row(source));
                    }
                }
                resp.gdot.clone()
            }
            // Layer 1 reads the fixed K^x: no response, only Ġ¹.
            None => {
                let kx = &problem.kx;
                pairs
                    .pairs
                    .iter()
                    .map(|&(a, b)| integrator.pair(kx[[a, a]], kx[[b, b]], kx[[a, b]]).1)
                    .collect()
            }
        };
        for (e, &slope) in gdot.iter().enumerate() {
            let mut row = c.row_mut(e);
            row.scaled_add(slope, &coef_grad_next.row(e));
            coef_k
                .row_mut(e)
                .scaled_add(entry(&kernels.phi_kernel[l - 1], e), &row);
        }
        coef_grad_next = c;
    }
    // κ over the pairs, then the (a, μ) entries in the order a·P + μ.
    let mut kappa = Array2::<f64>::zeros((s, s));
    for l in 1..=depth {
        let block = s![.., phi_column(l)..phi_column(l) + 2 * s];
        let noise = site_covariance(
            model.activation,
            l,
            &kernels.phi_kernel[l - 1],
            &kernels.grad_kernel[l],
            &pairs,
            options,
        )?;
        let c = coef_k.slice(block);
        general_mat_mul(1.0, &c.dot(&noise), &c.t(), 1.0, &mut kappa);
    }
    let order: Vec<usize> = (0..n * p).map(|i| pairs.of(i / p, i % p)).collect();
    let covariance = Array2::from_shape_fn((n * p, n * p), |(i, j)| kappa[[order[i], order[j]]]);
    let initial = if model.centered {
        Array2::zeros((n, n))
    } else {
        let scale = match model.parameterization {
            Parameterization::Mup => 1.0 / model.gamma0,
            Parameterization::Ntk => 1.0,
        };
        &kernels.phi_kernel[depth] * (scale * scale)
    };
    if covariance.iter().any(|v| !v.is_finite()) {
        return Err(DmftError::Numerical(
            "the NTK covariance at initialization is not finite".into(),
        ));
    }
    Ok(KernelNoise {
        kernel: kernels.ntk.slice(s![.., ..p]).to_owned(),
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

/// Peak memory of [`lazy_prediction_fluctuations`] in bytes for P train points, Q test
/// points, T steps and depth L: Σ_f and the responses over (step, point), κ_K, and at
/// L ≥ 2 the chain's noise coefficients (L + 3 matrices of s × 2sL over the s ≤ (P+Q)P
/// kernel pairs it tracks).
pub fn memory_bytes(p: usize, q: usize, steps: usize, depth: usize) -> u128 {
    let (n, p, depth) = ((p + q) as u128, p as u128, depth as u128);
    let rows = n * (steps as u128 + 1);
    let propagation = 8 * (rows * rows + 2 * rows * (n * p + n) + 2 * (n * p) * (n * p));
    let chain = if depth > 1 {
        let s = n * p + n;
        8 * (depth + 3) * s * 2 * s * depth
    } else {
        0
    };
    propagation + chain
}

/// The lazy-limit fluctuations of a plain chain of any depth (μP at γ₀ → 0, or the NTK
/// parameterization with the centered model, whose O(1) initial output is not a finite-width
/// effect): κ_K from the two-layer sites at depth 1, from [`chain_kernel_noise`] above.
pub fn lazy_prediction_fluctuations(
    problem: &Problem,
    model: &Model,
    schedule: &Schedule,
    options: &SolverOptions,
) -> Result<PredictionFluctuations> {
    if model.residual.is_some() {
        return Err(DmftError::Unsupported(
            "the lazy universal form is implemented for plain chains; model.residual_beta (residual branches) is not supported".into(),
        ));
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
    let noise = if model.depth == 1 {
        two_layer_kernel_noise(problem, model, options)?
    } else {
        chain_kernel_noise(problem, model, options)?
    };
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
            let lazy = lazy_prediction_fluctuations(&problem, &model, &schedule, &options).unwrap();
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

    /// At depth 1 the chain is the two-layer network: on one Gauss–Hermite grid over the
    /// range of K^x its κ_K equals the two-layer sites' (which also integrate over the readout
    /// r, exactly for the r⁴ that enters) to round-off, 10⁻¹⁰ of the largest entry. Its K∞ and
    /// initial covariance are lazy.rs's 96-point rule for tanh, which the order-40 grid's
    /// averages must reach to 10⁻⁶; for relu they are the arc-cosine closed forms, which the
    /// grid misses by 1 % (its kink), so only κ_K is compared there.
    #[test]
    fn chain_at_depth_one_is_the_two_layer_noise() {
        let mut rng = replica_rng(21, 0);
        let x = normal_matrix(&mut rng, 4, 2);
        let problem = Problem::from_inputs(
            x.slice(s![..3, ..]),
            Array1::zeros(3),
            x.slice(s![3.., ..]),
            None,
        )
        .unwrap();
        let options = SolverOptions {
            sites: 0,
            quadrature: 40,
            seed: 0,
        };
        for act in [Activation::Tanh, Activation::Relu] {
            let model = Model {
                depth: 1,
                activation: act,
                parameterization: Parameterization::Mup,
                gamma0: 0.5,
                centered: false,
                residual: None,
                readout: Readout::Trained,
            };
            let chain = chain_kernel_noise(&problem, &model, &options).unwrap();
            let sites = two_layer_kernel_noise(&problem, &model, &options).unwrap();
            let close = |got: &Array2<f64>, want: &Array2<f64>, tol: f64, what: &str| {
                let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                for (g, w) in got.iter().zip(want) {
                    assert!((g - w).abs() <= tol * scale, "{act} {what}: {g} vs {w}");
                }
            };
            close(&chain.covariance, &sites.covariance, 1e-10, "κ_K");
            if act == Activation::Tanh {
                close(&chain.kernel, &sites.kernel, 1e-6, "K∞");
                close(&chain.initial, &sites.initial, 1e-6, "initial");
            }
        }
    }

    /// Deep linear networks by another route: the full-action Hessian propagator of
    /// deep_linear_propagator at γ₀ = 0.01 (centered) holds the kernels' fluctuations and their
    /// motion together; the lazy form must match it up to the O(γ₀) feature learning (10⁻³
    /// of the largest variance allowed), at depth 2 and 3, every recorded step.
    #[test]
    fn linear_chain_matches_the_deep_linear_propagator() {
        use crate::deep_linear_propagator::deep_linear_prediction_fluctuations;
        let mut rng = replica_rng(5, 0);
        let x = normal_matrix(&mut rng, 4, 8);
        let beta = normal_matrix(&mut rng, 8, 1).column(0).to_owned();
        let y = x.slice(s![..3, ..]).dot(&beta) / 8f64.sqrt();
        let problem =
            Problem::from_inputs(x.slice(s![..3, ..]), y, x.slice(s![3.., ..]), None).unwrap();
        let schedule = Schedule {
            eta: 0.5,
            steps: 6,
            record_every: 2,
        };
        let options = SolverOptions {
            sites: 1000,
            quadrature: 0,
            seed: 1,
        };
        for depth in [2, 3] {
            let model = Model {
                depth,
                activation: Activation::Linear,
                parameterization: Parameterization::Mup,
                gamma0: 0.01,
                centered: true,
                residual: None,
                readout: Readout::Trained,
            };
            let lazy = lazy_prediction_fluctuations(&problem, &model, &schedule, &options).unwrap();
            let full = deep_linear_prediction_fluctuations(&problem, &model, &schedule).unwrap();
            for (got, want) in [
                (&lazy.var_f_train, &full.var_f_train),
                (&lazy.var_f_test, &full.var_f_test),
            ] {
                let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                for (g, w) in got.iter().zip(want) {
                    assert!(
                        (g - w).abs() <= 1e-3 * scale,
                        "L = {depth}: lazy {g} vs deep linear {w} (scale {scale})"
                    );
                }
            }
        }
    }

    /// Residual branches are refused naming their key.
    #[test]
    fn residual_chains_are_refused() {
        let problem = Problem::from_inputs(
            Array2::eye(2).view(),
            Array1::zeros(2),
            Array2::<f64>::zeros((0, 2)).view(),
            None,
        )
        .unwrap();
        let model = Model {
            depth: 2,
            activation: Activation::Relu,
            parameterization: Parameterization::Mup,
            gamma0: 0.01,
            centered: true,
            residual: Some(1.0),
            readout: Readout::Trained,
        };
        let schedule = Schedule {
            eta: 0.5,
            steps: 2,
            record_every: 1,
        };
        let options = SolverOptions {
            sites: 100,
            quadrature: 0,
            seed: 1,
        };
        let err = lazy_prediction_fluctuations(&problem, &model, &schedule, &options).unwrap_err();
        assert!(err.to_string().contains("model.residual_beta"), "{err}");
    }
}
