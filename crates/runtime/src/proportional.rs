//! Deep linear networks in the proportional regime (Bordelon & Pehlevan 2025): input dimension
//! D, P = αD training points and width N = νD all large at fixed α, ν. The derivation and the
//! equations solved here are in `docs/proportional.md`; symbols below follow it.
//!
//! Three kinds of sites carry single-site processes, all linear and Gaussian:
//! * the joint hidden-neuron site (one neuron index across layers 1..L): forward fields a^ℓ(k)
//!   (the gradient signal e propagated up) and backward fields g^ℓ(k) (g^L = readout w);
//! * the input-dimension site (one direction of R^D with eigenvalue λ and teacher variance b):
//!   the error v = β* − β, and the gradient signal e;
//! * the data site (one training point): the train error Δ.
//!
//! Every field is stored as its coefficient row on its site's Gaussian sources, so the
//! correlation functions are quadratic forms in those rows and the response functions are
//! the rows' coefficients on the sources (a perturbation of a field enters exactly where its
//! source does). One step k of the march computes backward fields (layers L..1), then the
//! input and data sites, then forward fields (layers 1..L), all from rows < k and the current
//! step: no iteration. Cost O((L² + n_λ) T³) time and O((L² + n_λ) T²) memory, for T steps
//! and n_λ distinct eigenvalue/teacher site types.

use crate::{DmftError, Parameterization, Progress, Result};
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis, s};
use rayon::prelude::*;

/// A run is declared divergent when its loss exceeds this multiple of max(ℒ(0), 1), as in
/// the other solvers.
const DIVERGENCE_FACTOR: f64 = 1e8;

/// Memory the solver may allocate before refusing a problem.
pub const MEMORY_BUDGET_BYTES: f64 = 8.0 * (1u64 << 30) as f64;

/// How the data are used.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DataUse {
    /// Full-batch gradient descent on the same P = αD points at every step.
    Repeated { alpha: f64 },
    /// One-pass SGD: a fresh batch of B = α_B·D points at every step.
    OnePass { batch_ratio: f64 },
}

/// The input-dimension site types: eigenvalues λ_k of Λ and teacher variances b_k = E β*_k²,
/// each type carrying equal weight (one per input direction, or one per group of directions).
#[derive(Clone, Debug, PartialEq)]
pub struct Spectrum {
    pub lambda: Vec<f64>,
    pub teacher: Vec<f64>,
}

impl Spectrum {
    /// Λ = I and β* ~ N(0, I).
    pub fn isotropic() -> Self {
        Spectrum {
            lambda: vec![1.0],
            teacher: vec![1.0],
        }
    }

    /// λ_k ∝ k^{−a}, k = 1..D, normalized to tr Λ / D = 1, with β* ~ N(0, I).
    pub fn power_law(dim: usize, exponent: f64) -> Result<Self> {
        if dim == 0 || !(exponent.is_finite() && exponent >= 0.0) {
            return Err(DmftError::Invalid(format!(
                "power-law spectrum needs dimension ≥ 1 and exponent ≥ 0, got D = {dim}, a = {exponent}"
            )));
        }
        let raw: Vec<f64> = (1..=dim).map(|k| (k as f64).powf(-exponent)).collect();
        let mean = raw.iter().sum::<f64>() / dim as f64;
        Ok(Spectrum {
            lambda: raw.iter().map(|l| l / mean).collect(),
            teacher: vec![1.0; dim],
        })
    }
}

/// The proportional-regime experiment.
#[derive(Clone, Debug, PartialEq)]
pub struct Setting {
    /// Hidden layers L ≥ 1.
    pub depth: usize,
    /// Width ratio ν = N/D.
    pub nu: f64,
    /// μP: f = √D w·h^L/(γN), step ηγ²N; NTK: f = w·h^L/√N, step ηD (≡ μP with γ = 1/√ν).
    pub parameterization: Parameterization,
    /// Feature-learning strength γ of μP (ignored by NTK).
    pub gamma: f64,
    /// Residual branch multiplier β: h^{ℓ+1} = h^ℓ + (β/√L) W^ℓ h^ℓ/√N. None: plain chain.
    pub residual: Option<f64>,
    pub data: DataUse,
    pub spectrum: Spectrum,
    pub eta: f64,
    pub steps: usize,
}

impl Setting {
    /// The γ that enters the dynamics: γ for μP, 1/√ν for NTK.
    pub fn effective_gamma(&self) -> f64 {
        match self.parameterization {
            Parameterization::Mup => self.gamma,
            Parameterization::Ntk => 1.0 / self.nu.sqrt(),
        }
    }

    /// (s, ρ): a^{ℓ+1} = s·a^ℓ + ρ·u^{ℓ+1} and g^ℓ = s·g^{ℓ+1} + ρ·y^ℓ; ρ also scales the
    /// hidden-weight updates.
    pub fn branch(&self) -> (f64, f64) {
        match self.residual {
            Some(beta) => (1.0, beta / (self.depth as f64).sqrt()),
            None => (0.0, 1.0),
        }
    }

    /// The data-to-dimension ratio of one gradient step: α (repeated) or α_B (one pass).
    pub fn step_ratio(&self) -> f64 {
        match self.data {
            DataUse::Repeated { alpha } => alpha,
            DataUse::OnePass { batch_ratio } => batch_ratio,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(DmftError::Invalid(m));
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if self.depth == 0 {
            return bad("model.depth must be ≥ 1, got 0".into());
        }
        if !positive(self.nu) {
            return bad(format!(
                "data.nu must be a positive number, got {}",
                self.nu
            ));
        }
        if self.parameterization == Parameterization::Mup && !positive(self.gamma) {
            return bad(format!(
                "model.gamma0 must be a positive number, got {}",
                self.gamma
            ));
        }
        if let Some(beta) = self.residual
            && !positive(beta)
        {
            return bad(format!(
                "model.residual_beta must be a positive number, got {beta}"
            ));
        }
        if !positive(self.step_ratio()) {
            let key = match self.data {
                DataUse::Repeated { .. } => "data.alpha",
                DataUse::OnePass { .. } => "data.batch_ratio",
            };
            return bad(format!(
                "{key} must be a positive number, got {}",
                self.step_ratio()
            ));
        }
        if !positive(self.eta) {
            return bad(format!(
                "train.eta must be a positive number, got {}",
                self.eta
            ));
        }
        let sp = &self.spectrum;
        if sp.lambda.is_empty() || sp.lambda.len() != sp.teacher.len() {
            return bad(format!(
                "spectrum needs as many teacher variances as eigenvalues (≥ 1), got {} and {}",
                sp.lambda.len(),
                sp.teacher.len()
            ));
        }
        if sp
            .lambda
            .iter()
            .chain(&sp.teacher)
            .any(|x| !(x.is_finite() && *x >= 0.0))
        {
            return bad("spectrum eigenvalues and teacher variances must be finite and ≥ 0".into());
        }
        Ok(())
    }

    pub fn memory_bytes(&self) -> f64 {
        let t1 = (self.steps + 1) as f64;
        let l = self.depth as f64;
        let hidden = 2.0 * l * t1 * (1.0 + (2.0 * l - 1.0) * t1);
        let input = 2.0 * self.spectrum.lambda.len() as f64 * t1 * (1.0 + 2.0 * t1);
        8.0 * (hidden + input + (4.0 * l + 8.0) * t1 * t1)
    }
}

/// Train and test loss at every step k = 0..=T.
#[derive(Clone, Debug, PartialEq)]
pub struct LossCurves {
    /// t = kη.
    pub t: Array1<f64>,
    /// ℒ̂(k) = (1/2P) Σ_μ Δ_μ(k)² (for one-pass SGD: the expected loss on the fresh batch).
    pub train: Array1<f64>,
    /// Population loss ℒ(k) = (1/2D) vᵀΛv, v = β* − β.
    pub test: Array1<f64>,
}

/// Coefficient rows of one kind of site: `rows[k]` is a field at step k on the sources.
struct Fields {
    rows: Array2<f64>,
}

impl Fields {
    fn new(t1: usize, sources: usize) -> Self {
        Fields {
            rows: Array2::zeros((t1, sources)),
        }
    }
}

/// The hidden-neuron site's source layout: w(0), then ξ^ℓ(0..T) for ℓ = 1..L (forward
/// sources, covariance C_a^{ℓ−1}, with C_a^0 = C_e), then χ^ℓ(0..T) for ℓ = 1..L−1 (backward
/// sources, covariance C_g^{ℓ+1}).
struct HiddenLayout {
    t1: usize,
    depth: usize,
}

impl HiddenLayout {
    fn len(&self) -> usize {
        1 + (2 * self.depth - 1) * self.t1
    }
    /// Start of ξ^ℓ, ℓ = 1..=L.
    fn xi(&self, l: usize) -> usize {
        1 + (l - 1) * self.t1
    }
    /// Start of χ^ℓ, ℓ = 1..L−1.
    fn chi(&self, l: usize) -> usize {
        1 + (self.depth + l - 1) * self.t1
    }
}

/// Input-site source layout: β*, then χ⁰(0..T) (covariance ν C_g¹), then χ^B(0..T)
/// (covariance α C_Δ).
fn input_len(t1: usize) -> usize {
    1 + 2 * t1
}

/// Solves the proportional-regime DMFT forward in time and returns the loss curves.
pub fn solve(setting: &Setting, progress: Progress) -> Result<LossCurves> {
    setting.validate()?;
    let need = setting.memory_bytes();
    if need > MEMORY_BUDGET_BYTES {
        return Err(DmftError::Invalid(format!(
            "the proportional solver needs ≈{:.1} GiB for steps = {}, depth = {}, {} spectrum sites \
             (limit {:.0} GiB); reduce train.steps or group the spectrum",
            need / (1u64 << 30) as f64,
            setting.steps,
            setting.depth,
            setting.spectrum.lambda.len(),
            MEMORY_BUDGET_BYTES / (1u64 << 30) as f64
        )));
    }
    March::new(setting).run(progress)
}

struct March<'a> {
    set: &'a Setting,
    t1: usize,
    gamma: f64,
    ratio: f64,
    s: f64,
    rho: f64,
    lay: HiddenLayout,
    /// a^ℓ and g^ℓ rows, ℓ = 1..L stored at index ℓ−1.
    a: Vec<Fields>,
    g: Vec<Fields>,
    /// C_a^ℓ, C_g^ℓ (index ℓ−1), C_e, C_x, C_Δ: two-time correlation functions.
    ca: Vec<Array2<f64>>,
    cg: Vec<Array2<f64>>,
    ce: Array2<f64>,
    cx: Array2<f64>,
    cd: Array2<f64>,
    /// R_e(k, j) = ⟨∂e(k)/∂y⁰(j)⟩ and R_Δ = ⟨∂Δ(k)/∂u(j)⟩ (data-site response).
    re: Array2<f64>,
    rd: Array2<f64>,
    /// Per input-site type: v and e rows.
    v: Vec<Fields>,
    e: Vec<Fields>,
}

impl<'a> March<'a> {
    fn new(set: &'a Setting) -> Self {
        let t1 = set.steps + 1;
        let lay = HiddenLayout {
            t1,
            depth: set.depth,
        };
        let sq = || Array2::<f64>::zeros((t1, t1));
        let (s, rho) = set.branch();
        let n_sites = set.spectrum.lambda.len();
        March {
            set,
            t1,
            gamma: set.effective_gamma(),
            ratio: set.step_ratio(),
            s,
            rho,
            a: (0..set.depth).map(|_| Fields::new(t1, lay.len())).collect(),
            g: (0..set.depth).map(|_| Fields::new(t1, lay.len())).collect(),
            ca: (0..set.depth).map(|_| sq()).collect(),
            cg: (0..set.depth).map(|_| sq()).collect(),
            ce: sq(),
            cx: sq(),
            cd: sq(),
            re: sq(),
            rd: sq(),
            v: (0..n_sites)
                .map(|_| Fields::new(t1, input_len(t1)))
                .collect(),
            e: (0..n_sites)
                .map(|_| Fields::new(t1, input_len(t1)))
                .collect(),
            lay,
        }
    }

    fn run(mut self, progress: Progress) -> Result<LossCurves> {
        let mut train = Array1::zeros(self.t1);
        let mut test = Array1::zeros(self.t1);
        let mut loss0 = None;
        for k in 0..self.t1 {
            self.backward(k);
            self.input_and_data(k);
            train[k] = 0.5 * self.cd[[k, k]];
            test[k] = 0.5 * self.cx[[k, k]];
            let reference: f64 = *loss0.get_or_insert(train[k].max(test[k]).max(1.0));
            for (name, loss) in [("train", train[k]), ("test", test[k])] {
                if !loss.is_finite() || loss > DIVERGENCE_FACTOR * reference {
                    return Err(DmftError::Numerical(format!(
                        "proportional DMFT diverged at step {k} ({name} loss {loss:.3e}); reduce train.eta"
                    )));
                }
            }
            self.forward(k);
            if k > 0 {
                progress(k);
            }
        }
        let t = (0..self.t1).map(|k| k as f64 * self.set.eta).collect();
        Ok(LossCurves { t, train, test })
    }

    /// Quadratic form Σ_blocks row_k · C_blk · rows_jᵀ over the hidden site's sources, for
    /// j = 0..=k of `rows`. All source covariances it touches are known at step k.
    fn hidden_cov(&self, row: ArrayView1<f64>, rows: ArrayView2<f64>) -> Array1<f64> {
        let lay = &self.lay;
        // Rows 0..=k: sources after step k carry no coefficient and no covariance yet.
        let k = rows.nrows() - 1;
        let mut z = Array1::<f64>::zeros(lay.len());
        z[0] = row[0];
        for l in 1..=self.set.depth {
            let c = if l == 1 { &self.ce } else { &self.ca[l - 2] };
            let o = lay.xi(l);
            z.slice_mut(s![o..=o + k])
                .assign(&mat_vec(c.slice(s![..=k, ..=k]), row.slice(s![o..=o + k])));
        }
        for l in 1..self.set.depth {
            let o = lay.chi(l);
            z.slice_mut(s![o..=o + k]).assign(&mat_vec(
                self.cg[l].slice(s![..=k, ..=k]),
                row.slice(s![o..=o + k]),
            ));
        }
        mat_vec(rows, z.view())
    }

    /// Backward fields at step k, layers L..1: g^L = w, g^ℓ = s g^{ℓ+1} + ρ y^ℓ with
    /// y^ℓ(k) = χ^ℓ(k) + Σ_{j<k} [R_g^{ℓ+1}(k,j) + ηγρ C_g^{ℓ+1}(k,j)] a^ℓ(j).
    fn backward(&mut self, k: usize) {
        let (eta, gamma, rho, s) = (self.set.eta, self.gamma, self.rho, self.s);
        let depth = self.set.depth;
        // w(k) = w(0) + ηγ Σ_{j<k} a^L(j).
        let mut w = Array1::<f64>::zeros(self.lay.len());
        w[0] = 1.0;
        if k > 0 {
            w += &(self.a[depth - 1].rows.slice(s![..k, ..]).sum_axis(Axis(0)) * (eta * gamma));
        }
        self.g[depth - 1].rows.row_mut(k).assign(&w);
        self.close_g(depth, k);
        for l in (1..depth).rev() {
            let xi_up = self.lay.xi(l + 1);
            let mut y = Array1::<f64>::zeros(self.lay.len());
            y[self.lay.chi(l) + k] = 1.0;
            if k > 0 {
                let up = self.g[l].rows.row(k);
                let kernel: Array1<f64> = (0..k)
                    .map(|j| up[xi_up + j] + eta * gamma * rho * self.cg[l][[k, j]])
                    .collect();
                y += &vec_mat(kernel.view(), self.a[l - 1].rows.slice(s![..k, ..]));
            }
            let g = &self.g[l].rows.row(k) * s + &(y * rho);
            self.g[l - 1].rows.row_mut(k).assign(&g);
            self.close_g(l, k);
        }
    }

    /// C_g^ℓ(k, j ≤ k) from the rows just written.
    fn close_g(&mut self, l: usize, k: usize) {
        let f = &self.g[l - 1].rows;
        let c = self.hidden_cov(f.row(k), f.slice(s![..=k, ..]));
        write_sym(&mut self.cg[l - 1], k, c.view());
    }

    /// Forward fields at step k, layers 1..L: a¹ = u¹, a^ℓ = s a^{ℓ−1} + ρ u^ℓ with
    /// u^ℓ(k) = ξ^ℓ(k) + Σ_{j≤k} R_a^{ℓ−1}(k,j) g^ℓ(j) + ηγρ Σ_{j<k} C_a^{ℓ−1}(k,j) g^ℓ(j);
    /// for ℓ = 1 the response is R_e, the correlation C_e, and the update scale ρ is 1.
    fn forward(&mut self, k: usize) {
        let (eta, gamma, rho, s) = (self.set.eta, self.gamma, self.rho, self.s);
        for l in 1..=self.set.depth {
            let mut u = Array1::<f64>::zeros(self.lay.len());
            u[self.lay.xi(l) + k] = 1.0;
            let kernel: Array1<f64> = if l == 1 {
                (0..=k)
                    .map(|j| {
                        self.re[[k, j]]
                            + if j < k {
                                eta * gamma * self.ce[[k, j]]
                            } else {
                                0.0
                            }
                    })
                    .collect()
            } else {
                let below = self.a[l - 2].rows.row(k);
                let chi = self.lay.chi(l - 1);
                (0..=k)
                    .map(|j| {
                        below[chi + j]
                            + if j < k {
                                eta * gamma * rho * self.ca[l - 2][[k, j]]
                            } else {
                                0.0
                            }
                    })
                    .collect()
            };
            u += &vec_mat(kernel.view(), self.g[l - 1].rows.slice(s![..=k, ..]));
            let a = if l == 1 {
                u
            } else {
                &self.a[l - 2].rows.row(k) * s + &(u * rho)
            };
            self.a[l - 1].rows.row_mut(k).assign(&a);
            let f = &self.a[l - 1].rows;
            let c = self.hidden_cov(f.row(k), f.slice(s![..=k, ..]));
            write_sym(&mut self.ca[l - 1], k, c.view());
        }
    }

    /// Input sites (v = β* − β, e) and data sites (Δ) at step k:
    /// β(k) = χ⁰(k)/(γν) + Σ_{j<k} K(k,j) e(j), K = R_g¹/γ + η C_g¹ (strictly causal);
    /// e(k) = λ Σ_{j≤k} R_Δ(k,j) v(j) + (√λ/α) χ^B(k).
    fn input_and_data(&mut self, k: usize) {
        let t1 = self.t1;
        let (eta, gamma, nu, ratio) = (self.set.eta, self.gamma, self.set.nu, self.ratio);
        let g1 = self.g[0].rows.row(k);
        let xi1 = self.lay.xi(1);
        let kern: Array1<f64> = (0..k)
            .map(|j| g1[xi1 + j] / gamma + eta * self.cg[0][[k, j]])
            .collect();
        let (chi0, chib) = (1, 1 + t1);
        let sp = &self.set.spectrum;
        let n_sites = sp.lambda.len() as f64;
        // v(k) for every site type.
        let rows = per_site(self.e.len(), |i| {
            let mut row = Array1::<f64>::zeros(input_len(t1));
            row[0] = 1.0;
            row[chi0 + k] = -1.0 / (gamma * nu);
            if k > 0 {
                row -= &vec_mat(kern.view(), self.e[i].rows.slice(s![..k, ..]));
            }
            row
        });
        for (v, row) in self.v.iter_mut().zip(rows) {
            v.rows.row_mut(k).assign(&row);
        }
        // R_x(k, j) = ⟨√λ ∂v(k)/∂χ^B(j)⟩, then the data-site response R_Δ = (I − R_x)⁻¹.
        match self.set.data {
            DataUse::Repeated { .. } => {
                let mut rx = Array1::<f64>::zeros(k);
                for (v, lam) in self.v.iter().zip(&sp.lambda) {
                    rx.scaled_add(lam.sqrt() / n_sites, &v.rows.slice(s![k, chib..chib + k]));
                }
                let mut row = vec_mat(rx.view(), self.rd.slice(s![..k, ..]));
                row[k] = 1.0;
                self.rd.row_mut(k).assign(&row);
            }
            DataUse::OnePass { .. } => self.rd[[k, k]] = 1.0,
        }
        // C_x(k, j ≤ k) = ⟨λ v(k) v(j)⟩: v rows carry no χ^B(k), so C_Δ(k, ·) is not needed yet.
        let cx_row = self.input_average(k, Field::V);
        write_sym(&mut self.cx, k, cx_row.view());
        match self.set.data {
            DataUse::Repeated { .. } => {
                let r = self.rd.slice(s![k, ..=k]);
                let z = vec_mat(r, self.cx.slice(s![..=k, ..=k]));
                let row = mat_vec(self.rd.slice(s![..=k, ..=k]), z.view());
                write_sym(&mut self.cd, k, row.view());
            }
            DataUse::OnePass { .. } => self.cd[[k, k]] = self.cx[[k, k]],
        }
        // e(k), then R_e(k, ·) and C_e(k, ·).
        let rd_row = self.rd.slice(s![k, ..=k]).to_owned();
        let rows = per_site(self.v.len(), |i| {
            let lam = sp.lambda[i];
            let mut row = vec_mat(rd_row.view(), self.v[i].rows.slice(s![..=k, ..])) * lam;
            row[chib + k] += lam.sqrt() / ratio;
            row
        });
        for (e, row) in self.e.iter_mut().zip(rows) {
            e.rows.row_mut(k).assign(&row);
        }
        let mut re = Array1::<f64>::zeros(k + 1);
        for e in &self.e {
            re.scaled_add(1.0 / n_sites, &e.rows.slice(s![k, chi0..chi0 + k + 1]));
        }
        self.re.slice_mut(s![k, ..=k]).assign(&re);
        let ce_row = self.input_average(k, Field::E);
        write_sym(&mut self.ce, k, ce_row.view());
    }

    /// C_x(k, j ≤ k) = ⟨λ v(k)v(j)⟩ or C_e(k, j ≤ k) = ⟨e(k)e(j)⟩ over the input sites.
    fn input_average(&self, k: usize, field: Field) -> Array1<f64> {
        let t1 = self.t1;
        let (nu, ratio) = (self.set.nu, self.ratio);
        let sp = &self.set.spectrum;
        let cov_chi0 = &self.cg[0] * nu;
        let cov_chib = &self.cd * ratio;
        let terms = per_site(sp.lambda.len(), |i| {
            let (f, weight) = match field {
                Field::V => (&self.v[i], sp.lambda[i]),
                Field::E => (&self.e[i], 1.0),
            };
            let row = f.rows.row(k);
            let mut z = Array1::<f64>::zeros(input_len(t1));
            z[0] = sp.teacher[i] * row[0];
            z.slice_mut(s![1..=1 + k]).assign(&mat_vec(
                cov_chi0.slice(s![..=k, ..=k]),
                row.slice(s![1..=1 + k]),
            ));
            z.slice_mut(s![1 + t1..=1 + t1 + k]).assign(&mat_vec(
                cov_chib.slice(s![..=k, ..=k]),
                row.slice(s![1 + t1..=1 + t1 + k]),
            ));
            mat_vec(f.rows.slice(s![..=k, ..]), z.view()) * weight
        });
        // Summed in site order: the result does not depend on the thread count.
        let total = terms
            .into_iter()
            .fold(Array1::zeros(k + 1), |acc, t| acc + t);
        total / sp.lambda.len() as f64
    }
}

/// A v, single-threaded: the products here are small, and a multithreaded BLAS spends
/// more time synchronizing than computing on them (10× slower on a loaded machine).
fn mat_vec(a: ArrayView2<f64>, v: ArrayView1<f64>) -> Array1<f64> {
    let v = v.as_standard_layout();
    a.rows()
        .into_iter()
        .map(|r| match (r.as_slice(), v.as_slice()) {
            (Some(x), Some(y)) => dot(x, y),
            _ => r.iter().zip(v.iter()).map(|(x, y)| x * y).sum(),
        })
        .collect()
}

/// x·y with eight independent partial sums, so the compiler can vectorize it.
fn dot(x: &[f64], y: &[f64]) -> f64 {
    debug_assert_eq!(x.len(), y.len());
    let mut acc = [0.0; 8];
    let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
    let tail: f64 = xc
        .remainder()
        .iter()
        .zip(yc.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (a, b) in xc.zip(yc) {
        for i in 0..8 {
            acc[i] += a[i] * b[i];
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// vᵀA, single-threaded, accumulated row by row (rows are contiguous).
fn vec_mat(v: ArrayView1<f64>, a: ArrayView2<f64>) -> Array1<f64> {
    let mut out = Array1::<f64>::zeros(a.ncols());
    for (vi, row) in v.iter().zip(a.rows()) {
        out.scaled_add(*vi, &row);
    }
    out
}

/// Below this many input-site types the per-site work is too small to hand to rayon.
const PARALLEL_SITES: usize = 64;

/// f(0..n) in order, in parallel for many sites.
fn per_site<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync + Send) -> Vec<T> {
    if n >= PARALLEL_SITES {
        (0..n).into_par_iter().map(f).collect()
    } else {
        (0..n).map(f).collect()
    }
}

#[derive(Clone, Copy)]
enum Field {
    V,
    E,
}

/// Stores C(k, j) and C(j, k) for j ≤ k.
fn write_sym(c: &mut Array2<f64>, k: usize, row: ArrayView1<f64>) {
    c.slice_mut(s![k, ..=k]).assign(&row);
    c.slice_mut(s![..=k, k]).assign(&row);
}
