//! Deep linear networks (φ = id, g = z) at any depth and γ₀: the closed form of theory.md 2b.
//!
//! Per layer the single-site fields are linear in the layer's Gaussian sources,
//! h = H_u u + H_r r and z = Z_u u + Z_r r, with H_u = (I−CE)⁻¹, H_r = (I−CE)⁻¹C = R_φ,
//! Z_u = (I−EC)⁻¹E = R_g, Z_r = (I−EC)⁻¹. C and E are causal, so block row k of these
//! inverses follows from rows < k by forward substitution; the kernels are
//! Φ^ℓ = H_u Φ^{ℓ−1} H_uᵀ + H_r G^{ℓ+1} H_rᵀ and G^ℓ = Z_u Φ^{ℓ−1} Z_uᵀ + Z_r G^{ℓ+1} Z_rᵀ.
//! One step k: forward over layers (C needs R_φ^{ℓ−1}(k,·), Φ^{ℓ−1}(k,·)), backward over
//! layers (E needs R_g^{ℓ+1}(k,·), G^{ℓ+1}(k,·)), then f(k) = γ₀⁻¹⟨z^L(k) h^L(k)⟩.
//! Cost O(L P³ T³) time and O(L (P T)²) memory; no sampling.

use crate::record::Recorder;
use crate::{DmftError, Model, Problem, Progress, Result, Schedule, SolverKind, Trajectory};
use ndarray::{Array1, Array2, ArrayView2, s};

pub mod residual;

/// Memory the solver may allocate before refusing a problem.
pub const MEMORY_BUDGET_BYTES: f64 = 16.0 * (1u64 << 30) as f64;

/// Two-time order parameters and response functions of one layer over (time, sample),
/// time-major: index k·n + μ. Rows are filled as the march reaches step k.
pub struct LayerFields {
    /// Φ^ℓ over all points (NT·n square).
    pub phi_kernel: Array2<f64>,
    /// G^ℓ over train points (NT·p square).
    pub grad_kernel: Array2<f64>,
    /// ∂h/∂u: (NT·n) × (NT·n).
    pub h_u: Array2<f64>,
    /// ∂h/∂r = R_φ^ℓ: (NT·n) × (NT·p).
    pub response_phi: Array2<f64>,
    /// ∂z/∂u = R_g^ℓ (test columns are zero): (NT·p) × (NT·n).
    pub response_grad: Array2<f64>,
    /// ∂z/∂r: (NT·p) × (NT·p).
    pub z_r: Array2<f64>,
}

/// Full two-time solution, kept for the propagator and for tests.
pub struct DeepLinearSolution {
    pub trajectory: Trajectory,
    /// Layers 1..=L.
    pub layers: Vec<LayerFields>,
    /// Δ(k) for k = 0..=steps.
    pub delta: Array2<f64>,
}

pub fn memory_bytes(problem: &Problem, model: &Model, schedule: &Schedule) -> f64 {
    let nt = (schedule.steps + 1) as f64;
    let (n, p) = (problem.n_all() as f64, problem.n_train() as f64);
    let per_layer = 2.0 * n * n + 2.0 * n * p + 2.0 * p * p;
    8.0 * nt * nt * (model.depth as f64 * per_layer + n * n + p * p)
}

pub fn solve(
    problem: &Problem,
    model: &Model,
    schedule: &Schedule,
    progress: Progress,
) -> Result<Trajectory> {
    Ok(solve_full(problem, model, schedule, progress)?.trajectory)
}

pub fn solve_full(
    problem: &Problem,
    model: &Model,
    schedule: &Schedule,
    progress: Progress,
) -> Result<DeepLinearSolution> {
    let setup = Setup::new(problem, model, schedule)?;
    let depth = model.depth;
    let mut layers: Vec<LayerFields> = (0..depth).map(|_| setup.layer()).collect();
    let mut delta = Array2::<f64>::zeros((setup.nt, setup.p));
    let mut rec = Recorder::new(problem, schedule, false);

    for k in 0..setup.nt {
        // Forward over layers: h^ℓ(k) and Φ^ℓ(k, ≤k).
        for l in 0..depth {
            let (below, rest) = layers.split_at_mut(l);
            let (layer, above) = rest.split_first_mut().unwrap();
            setup.forward_row(k, &delta, below.last(), layer, above.first());
        }
        // Backward over layers: z^ℓ(k) and G^ℓ(k, ≤k).
        for l in (0..depth).rev() {
            let (below, rest) = layers.split_at_mut(l);
            let (layer, above) = rest.split_first_mut().unwrap();
            setup.backward_row(k, &delta, below.last(), layer, above.first());
        }
        let below_top = depth.checked_sub(2).map(|l| &layers[l]);
        let f = setup.output_row(k, below_top, &layers[depth - 1], model.gamma0);
        let d = &problem.y - &f.slice(s![..setup.p]);
        delta.row_mut(k).assign(&d);
        let refs: Vec<&LayerFields> = layers.iter().collect();
        rec.observe(k, f.view(), d.view(), || equal_time_ntk(problem, &refs, k))?;
        if k > 0 {
            progress(k);
        }
    }
    let trajectory = rec.finish(
        SolverKind::DeepLinear,
        "closed form (block-triangular solves)".into(),
    )?;
    Ok(DeepLinearSolution {
        trajectory,
        layers,
        delta,
    })
}

/// The fixed inputs of a march over (time, sample) blocks: sizes, c = ηγ₀/P, the input
/// kernel Φ⁰ tiled over time pairs and the all-ones readout kernel G^{L+1}. Its methods are
/// the per-step block-row updates that a solver (hand-written, or generated with the layers
/// unrolled) calls layer by layer.
pub struct Setup {
    pub n: usize,
    pub p: usize,
    pub nt: usize,
    pub c: f64,
    pub input_kernel: Array2<f64>,
    pub readout_kernel: Array2<f64>,
}

impl Setup {
    /// Checks the memory budget and builds the fixed kernels.
    pub fn new(problem: &Problem, model: &Model, schedule: &Schedule) -> Result<Self> {
        let need = memory_bytes(problem, model, schedule);
        if need > MEMORY_BUDGET_BYTES {
            return Err(DmftError::Invalid(format!(
                "the deep-linear solver needs ≈{:.1} GiB for P+Q = {}, steps = {}, depth = {} (limit {:.0} GiB); \
                 reduce train.steps or the number of points",
                need / (1u64 << 30) as f64,
                problem.n_all(),
                schedule.steps,
                model.depth,
                MEMORY_BUDGET_BYTES / (1u64 << 30) as f64
            )));
        }
        let (n, p) = (problem.n_all(), problem.n_train());
        let nt = schedule.steps + 1;
        Ok(Setup {
            n,
            p,
            nt,
            c: schedule.eta * model.gamma0 / p as f64,
            input_kernel: tile(problem.kx.view(), nt),
            readout_kernel: Array2::<f64>::ones((nt * p, nt * p)),
        })
    }

    /// A layer's fields, all zero (rows are filled step by step).
    pub fn layer(&self) -> LayerFields {
        let (n, p, nt) = (self.n, self.p, self.nt);
        LayerFields {
            phi_kernel: Array2::zeros((nt * n, nt * n)),
            grad_kernel: Array2::zeros((nt * p, nt * p)),
            h_u: Array2::zeros((nt * n, nt * n)),
            response_phi: Array2::zeros((nt * n, nt * p)),
            response_grad: Array2::zeros((nt * p, nt * n)),
            z_r: Array2::zeros((nt * p, nt * p)),
        }
    }

    /// Block row k of h^ℓ's responses and of Φ^ℓ, from C^ℓ = R_φ^{ℓ−1} + c[Φ^{ℓ−1}Δ]_<.
    /// `below` is layer ℓ−1 (None: the input, Φ⁰ = K^x, no response term); `above` is
    /// layer ℓ+1 (None: the readout, G^{L+1} = 1).
    pub fn forward_row(
        &self,
        k: usize,
        delta: &Array2<f64>,
        below: Option<&LayerFields>,
        layer: &mut LayerFields,
        above: Option<&LayerFields>,
    ) {
        let (n, p, c) = (self.n, self.p, self.c);
        let rn = k * n..(k + 1) * n;
        let prev_phi = below.map_or(self.input_kernel.view(), |b| b.phi_kernel.view());
        let above_grad = above.map_or(self.readout_kernel.view(), |a| a.grad_kernel.view());
        // C(k, j) = R_φ^{ℓ−1}(k, j) + c Φ^{ℓ−1}(k, j)[·, train] diag Δ(j), j < k.
        let mut c_row = Array2::<f64>::zeros((n, k * p));
        for j in 0..k {
            let mut blk = c_row.slice_mut(s![.., j * p..(j + 1) * p]);
            if let Some(b) = below {
                blk.assign(&b.response_phi.slice(s![rn.clone(), j * p..(j + 1) * p]));
            }
            let phi_kj = prev_phi.slice(s![rn.clone(), j * n..j * n + p]);
            blk.zip_mut_with(
                &scale_columns(phi_kj, delta.row(j).to_owned(), c),
                |a, b| *a += b,
            );
        }
        if k > 0 {
            let hu_new = c_row.dot(&layer.response_grad.slice(s![..k * p, ..k * n]));
            layer.h_u.slice_mut(s![rn.clone(), ..k * n]).assign(&hu_new);
            let hr_new = c_row.dot(&layer.z_r.slice(s![..k * p, ..k * p]));
            layer
                .response_phi
                .slice_mut(s![rn.clone(), ..k * p])
                .assign(&hr_new);
        }
        layer
            .h_u
            .slice_mut(s![rn.clone(), rn.clone()])
            .assign(&Array2::eye(n));
        let w = (k + 1) * n;
        let a = layer.h_u.slice(s![rn.clone(), ..w]);
        // Φ^{ℓ−1} and G^{ℓ+1} are symmetric; multiplying by their transpose takes
        // the faster BLAS path (no repacking of the large operand).
        let mut row = a
            .dot(&prev_phi.slice(s![..w, ..w]).t())
            .dot(&layer.h_u.slice(s![..w, ..w]).t());
        if k > 0 {
            let b = layer.response_phi.slice(s![rn.clone(), ..k * p]);
            row += &b
                .dot(&above_grad.slice(s![..k * p, ..k * p]).t())
                .dot(&layer.response_phi.slice(s![..w, ..k * p]).t());
        }
        write_symmetric_row(&mut layer.phi_kernel, k, n, row.view());
    }

    /// Block row k of z^ℓ's responses and of G^ℓ, from E^ℓ = R_g^{ℓ+1} + c[G^{ℓ+1}Δ]_<
    /// (`above` None: the readout, no response term).
    pub fn backward_row(
        &self,
        k: usize,
        delta: &Array2<f64>,
        below: Option<&LayerFields>,
        layer: &mut LayerFields,
        above: Option<&LayerFields>,
    ) {
        let (n, p, c) = (self.n, self.p, self.c);
        let rp = k * p..(k + 1) * p;
        let prev_phi = below.map_or(self.input_kernel.view(), |b| b.phi_kernel.view());
        let above_grad = above.map_or(self.readout_kernel.view(), |a| a.grad_kernel.view());
        // E(k, j) = R_g^{ℓ+1}(k, j) + c G^{ℓ+1}(k, j) diag Δ(j) on train columns, j < k.
        let mut e_row = Array2::<f64>::zeros((p, k * n));
        for j in 0..k {
            let mut blk = e_row.slice_mut(s![.., j * n..j * n + p]);
            if let Some(a) = above {
                blk.assign(&a.response_grad.slice(s![rp.clone(), j * n..j * n + p]));
            }
            let g_kj = above_grad.slice(s![rp.clone(), j * p..(j + 1) * p]);
            blk.zip_mut_with(&scale_columns(g_kj, delta.row(j).to_owned(), c), |a, b| {
                *a += b
            });
        }
        if k > 0 {
            let zu_new = e_row.dot(&layer.h_u.slice(s![..k * n, ..k * n]));
            layer
                .response_grad
                .slice_mut(s![rp.clone(), ..k * n])
                .assign(&zu_new);
            let zr_new = e_row.dot(&layer.response_phi.slice(s![..k * n, ..k * p]));
            layer.z_r.slice_mut(s![rp.clone(), ..k * p]).assign(&zr_new);
        }
        layer
            .z_r
            .slice_mut(s![rp.clone(), rp.clone()])
            .assign(&Array2::eye(p));
        let w = (k + 1) * p;
        let b = layer.z_r.slice(s![rp.clone(), ..w]);
        let mut row = b
            .dot(&above_grad.slice(s![..w, ..w]).t())
            .dot(&layer.z_r.slice(s![..w, ..w]).t());
        if k > 0 {
            let a = layer.response_grad.slice(s![rp.clone(), ..k * n]);
            row += &a
                .dot(&prev_phi.slice(s![..k * n, ..k * n]).t())
                .dot(&layer.response_grad.slice(s![..w, ..k * n]).t());
        }
        write_symmetric_row(&mut layer.grad_kernel, k, p, row.view());
    }

    /// f(k) = γ₀⁻¹ ⟨z^L(k) h^L(k)⟩ (all points) with the readout row of z (identical for
    /// every μ); `below` is layer L−1 (None when L = 1).
    pub fn output_row(
        &self,
        k: usize,
        below: Option<&LayerFields>,
        top: &LayerFields,
        gamma0: f64,
    ) -> Array1<f64> {
        let (n, p) = (self.n, self.p);
        let rn = k * n..(k + 1) * n;
        let prev_phi = below.map_or(self.input_kernel.view(), |b| b.phi_kernel.view());
        let zrow = k * p;
        let mut zh = top
            .response_grad
            .slice(s![zrow..zrow + 1, ..k * n])
            .dot(&prev_phi.slice(s![..k * n, ..(k + 1) * n]))
            .dot(&top.h_u.slice(s![rn.clone(), ..(k + 1) * n]).t());
        if k > 0 {
            zh += &top
                .z_r
                .slice(s![zrow..zrow + 1, ..(k + 1) * p])
                .dot(&self.readout_kernel.slice(s![..(k + 1) * p, ..k * p]))
                .dot(&top.response_phi.slice(s![rn.clone(), ..k * p]).t());
        }
        zh.row(0).mapv(|v| v / gamma0)
    }
}

/// K(k) = Σ_{ℓ=0}^{L} G^{ℓ+1}(k,k) ⊙ Φ^ℓ(k,k) on train points.
pub fn equal_time_ntk(problem: &Problem, layers: &[&LayerFields], k: usize) -> Array2<f64> {
    let p = problem.n_train();
    let n = problem.n_all();
    let rn = k * n..k * n + p;
    let rp = k * p..(k + 1) * p;
    let mut ntk =
        &problem.kx.slice(s![..p, ..p]) * &layers[0].grad_kernel.slice(s![rp.clone(), rp.clone()]);
    for (l, layer) in layers.iter().enumerate() {
        let phi = layer.phi_kernel.slice(s![rn.clone(), rn.clone()]);
        match layers.get(l + 1) {
            Some(above) => ntk += &(&phi * &above.grad_kernel.slice(s![rp.clone(), rp.clone()])),
            None => ntk += &phi,
        }
    }
    ntk
}

/// Columns of a block scaled: c · X diag(d).
fn scale_columns(x: ArrayView2<f64>, d: Array1<f64>, c: f64) -> Array2<f64> {
    let mut out = x.to_owned();
    for (mut col, dj) in out.columns_mut().into_iter().zip(d.iter()) {
        col *= c * dj;
    }
    out
}

/// Stores block row k (width (k+1)·b) of a symmetric two-time matrix and its transpose.
fn write_symmetric_row(m: &mut Array2<f64>, k: usize, b: usize, row: ArrayView2<f64>) {
    let w = (k + 1) * b;
    m.slice_mut(s![k * b..w, ..w]).assign(&row);
    m.slice_mut(s![..w, k * b..w]).assign(&row.t());
    // The diagonal block must be exactly symmetric; average the two round-off versions.
    let diag = row.slice(s![.., k * b..w]);
    let sym = (&diag + &diag.t()) * 0.5;
    m.slice_mut(s![k * b..w, k * b..w]).assign(&sym);
}

/// Φ⁰(k, j) = K^x for all time pairs.
fn tile(kx: ArrayView2<f64>, nt: usize) -> Array2<f64> {
    let n = kx.nrows();
    let mut out = Array2::zeros((nt * n, nt * n));
    for a in 0..nt {
        for b in 0..nt {
            out.slice_mut(s![a * n..(a + 1) * n, b * n..(b + 1) * n])
                .assign(&kx);
        }
    }
    out
}
