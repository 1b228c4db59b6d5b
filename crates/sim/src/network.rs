//! One finite-width network: initialization, forward and backward passes, kernels, and the
//! exact gradient-descent update.
//!
//! Points are rows. For a batch X (rows x_μ) the forward pass computes
//!   H¹ = X W⁰ᵀ/√D,  H^{ℓ+1} = φ(H^ℓ) W^ℓᵀ/√N,  f = φ(H^L) w^L/(γ₀N),
//! and the backward pass the fields g^ℓ = φ'(h^ℓ) ⊙ z^ℓ with z^L = w^L and
//! z^ℓ = W^ℓᵀ g^{ℓ+1}/√N, so that ∂f_μ/∂h^ℓ_μ = g^ℓ_μ/(γ₀N).
//!
//! Gradient descent θ ← θ − ηγ₀²N∇ℒ on ℒ = (1/2P) Σ_μ Δ_μ² is, with c = ηγ₀/P,
//!   w^L += c Σ_α Δ_α φ(h^L_α),
//!   W^ℓ += (c/√N) Σ_α Δ_α g^{ℓ+1}_α φ(h^ℓ_α)ᵀ   (1 ≤ ℓ < L),
//!   W⁰  += (c/√D) Σ_α Δ_α g¹_α x_αᵀ,
//! all from the fields at θ(k) (a simultaneous update). Both the step and ∇ℒ are built by one
//! routine, `accumulate`, that adds α Σ_μ a_μ γ₀N ∂f_μ/∂θ, so the gradient checks also
//! check the step. The NTK parameterization is μP with γ₀ = 1/√N. A frozen readout
//! (`Readout::Frozen`) keeps w^L at its initial value: its gradient is zero (it is not a
//! parameter) and the NTK loses the Φ^L term.
//!
//! Kernels: Φ^ℓ = φ(H^ℓ)φ(H^ℓ)ᵀ/N, G^ℓ = g^ℓ g^ℓᵀ/N, and the NTK
//! K = Σ_{ℓ=0}^{L} G^{ℓ+1} ⊙ Φ^ℓ with Φ⁰ = K^x and G^{L+1} = 1 (G^{L+1} = 0 when frozen).
//!
//! Residual networks (β/√L branches): H^{ℓ+1} = H^ℓ + a φ(H^ℓ) W^ℓᵀ/√N for 1 ≤ ℓ < L with
//! a = β/√L, so g^ℓ = g^{ℓ+1} + a φ'(h^ℓ) ⊙ W^ℓᵀ g^{ℓ+1}/√N, the W^ℓ gradient and step carry
//! a factor a, and the NTK's hidden terms a². The first layer, from the input, has no skip.

use crate::error::{Result, invalid};
use crate::gemm::gemm;
use crate::rng::SimRng;
use dmft_runtime::{Activation, Model, Parameterization, Readout};
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut2, Axis, Zip, s};
use rand::Rng;
use rand_distr::StandardNormal;

/// Depth, width, activation, parameterization, γ₀ and whether f − f₀ is trained.
#[derive(Clone, Debug, PartialEq)]
pub struct Architecture {
    /// Number of hidden layers L ≥ 1 (1 = two-layer network).
    pub depth: usize,
    /// Hidden width N ≥ 1.
    pub width: usize,
    pub activation: Activation,
    pub parameterization: Parameterization,
    /// Feature-learning strength γ₀ > 0 (ignored by the NTK parameterization).
    pub gamma0: f64,
    /// Train f − f₀, with f₀ the function at initialization, instead of f.
    pub centered: bool,
    /// Whether gradient descent moves the readout w^L.
    pub readout: Readout,
    /// Residual branch multiplier β (None: the plain chain); see the module docs.
    pub residual: Option<f64>,
}

impl Architecture {
    /// The finite-width network the infinite-width `model` describes.
    pub fn from_model(model: &Model, width: usize) -> Self {
        Architecture {
            depth: model.depth,
            width,
            activation: model.activation,
            parameterization: model.parameterization,
            gamma0: model.gamma0,
            centered: model.centered,
            readout: model.readout,
            residual: model.residual,
        }
    }

    /// The width-independent part, as the runtime's solvers take it.
    pub fn model(&self) -> Model {
        Model {
            depth: self.depth,
            activation: self.activation,
            parameterization: self.parameterization,
            gamma0: self.gamma0,
            centered: self.centered,
            readout: self.readout,
            residual: self.residual,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.depth == 0 {
            return Err(invalid("model.depth must be at least 1 (got 0)"));
        }
        if self.width == 0 {
            return Err(invalid("sim.width must be at least 1 (got 0)"));
        }
        if self.parameterization == Parameterization::Mup
            && !(self.gamma0.is_finite() && self.gamma0 > 0.0)
        {
            return Err(invalid(format!(
                "model.gamma0 must be finite and positive (got {})",
                self.gamma0
            )));
        }
        if let Some(beta) = self.residual
            && !(beta.is_finite() && beta > 0.0)
        {
            return Err(invalid(format!(
                "model.residual_beta must be finite and positive (got {beta})"
            )));
        }
        Ok(())
    }

    /// (s, a) of the hidden layers: the runtime's [`Model::branch`].
    pub fn branch(&self) -> (f64, f64) {
        self.model().branch()
    }

    /// The γ₀ in the μP formulas: γ₀ itself, or 1/√N for the NTK parameterization, where
    /// f = w·φ/(γ₀N) = w·φ/√N and the μP step ηγ₀²N equals the NTK step η.
    pub fn effective_gamma0(&self) -> f64 {
        match self.parameterization {
            Parameterization::Mup => self.gamma0,
            Parameterization::Ntk => 1.0 / (self.width as f64).sqrt(),
        }
    }

    /// Number of weights, a frozen readout included: N·D + (L−1)N² + N.
    pub fn parameter_count(&self, input_dim: usize) -> usize {
        let n = self.width;
        n * input_dim + (self.depth - 1) * n * n + n
    }
}

/// The weights of a network (or a gradient with the same shapes).
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    /// W⁰, N×D.
    pub input: Array2<f64>,
    /// W^ℓ for ℓ = 1..L−1 (stored at index ℓ−1), N×N.
    pub hidden: Vec<Array2<f64>>,
    /// w^L, length N.
    pub readout: Array1<f64>,
}

impl Params {
    pub fn zeros(arch: &Architecture, input_dim: usize) -> Self {
        let n = arch.width;
        Params {
            input: Array2::zeros((n, input_dim)),
            hidden: (1..arch.depth).map(|_| Array2::zeros((n, n))).collect(),
            readout: Array1::zeros(n),
        }
    }

    /// Every weight, in the order W⁰, W¹, …, W^{L−1}, w^L (row-major within a matrix).
    pub fn iter(&self) -> impl Iterator<Item = &f64> {
        self.input
            .iter()
            .chain(self.hidden.iter().flatten())
            .chain(self.readout.iter())
    }

    /// Mutable [`Params::iter`].
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut f64> {
        self.input
            .iter_mut()
            .chain(self.hidden.iter_mut().flatten())
            .chain(self.readout.iter_mut())
    }
}

/// Activations of one forward pass (and optionally backward fields), kept so kernels and
/// the update can be formed without recomputation. Buffers are reused across steps.
#[derive(Clone, Debug)]
pub struct Forward {
    /// Points in the last forward pass.
    rows: usize,
    /// Leading points that have backward fields g^ℓ (0 until [`Network::backward`]).
    grad_rows: usize,
    /// h^ℓ at index ℓ−1, capacity × N.
    h: Vec<Array2<f64>>,
    /// φ(h^ℓ) at index ℓ−1.
    phi: Vec<Array2<f64>>,
    /// g^ℓ at index ℓ−1.
    g: Vec<Array2<f64>>,
    f: Array1<f64>,
    readout: Readout,
    /// capacity × max(N, D) scratch for the Δ-weighted right factors of the update.
    weighted: Array2<f64>,
    /// a² of the hidden branches, for the NTK.
    branch_sq: f64,
}

impl Forward {
    /// Buffers for up to `capacity` points (they grow if a larger batch arrives).
    pub fn new(arch: &Architecture, input_dim: usize, capacity: usize) -> Self {
        let n = arch.width;
        let layers = || {
            (0..arch.depth)
                .map(|_| Array2::zeros((capacity, n)))
                .collect()
        };
        Forward {
            rows: 0,
            grad_rows: 0,
            h: layers(),
            phi: layers(),
            g: layers(),
            f: Array1::zeros(capacity),
            readout: arch.readout,
            weighted: Array2::zeros((capacity, n.max(input_dim))),
            branch_sq: arch.branch().1.powi(2),
        }
    }

    fn ensure_capacity(&mut self, rows: usize) {
        if rows > self.f.len() {
            let n = self.h[0].ncols();
            let cols = self.weighted.ncols();
            for buffer in self.h.iter_mut().chain(&mut self.phi).chain(&mut self.g) {
                *buffer = Array2::zeros((rows, n));
            }
            self.f = Array1::zeros(rows);
            self.weighted = Array2::zeros((rows, cols));
        }
    }

    /// Number of points in the last forward pass.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of leading points with backward fields.
    pub fn grad_rows(&self) -> usize {
        self.grad_rows
    }

    /// Preactivations h^ℓ, ℓ = 1..L (rows × N).
    pub fn h(&self, layer: usize) -> ArrayView2<'_, f64> {
        self.h[layer - 1].slice(s![..self.rows, ..])
    }

    /// φ(h^ℓ), ℓ = 1..L (rows × N).
    pub fn phi(&self, layer: usize) -> ArrayView2<'_, f64> {
        self.phi[layer - 1].slice(s![..self.rows, ..])
    }

    /// g^ℓ, ℓ = 1..L (grad_rows × N).
    pub fn g(&self, layer: usize) -> ArrayView2<'_, f64> {
        self.g[layer - 1].slice(s![..self.grad_rows, ..])
    }

    /// Network outputs f (rows), uncentered.
    pub fn f(&self) -> ArrayView1<'_, f64> {
        self.f.slice(s![..self.rows])
    }

    /// Φ^ℓ = φ(h^ℓ)·φ(h^ℓ)/N over all points of the pass.
    pub fn phi_kernel(&self, layer: usize) -> Array2<f64> {
        gram(self.phi(layer))
    }

    /// G^ℓ = g^ℓ·g^ℓ/N over the points with backward fields.
    pub fn grad_kernel(&self, layer: usize) -> Array2<f64> {
        gram(self.g(layer))
    }

    /// All equal-time kernels and the NTK. `kx_train` is K^x over the grad_rows leading points.
    pub fn kernels(&self, kx_train: ArrayView2<f64>) -> Kernels {
        let depth = self.h.len();
        let phi: Vec<_> = (1..=depth).map(|l| self.phi_kernel(l)).collect();
        let grad: Vec<_> = (1..=depth).map(|l| self.grad_kernel(l)).collect();
        let ntk = ntk(kx_train, &phi, &grad, self.readout, self.branch_sq);
        Kernels { phi, grad, ntk }
    }
}

/// Equal-time kernels of one forward/backward pass.
#[derive(Clone, Debug, PartialEq)]
pub struct Kernels {
    /// Φ^ℓ for ℓ = 1..L (index ℓ−1), over all points of the pass.
    pub phi: Vec<Array2<f64>>,
    /// G^ℓ for ℓ = 1..L (index ℓ−1), over the points with backward fields.
    pub grad: Vec<Array2<f64>>,
    /// K = Σ_{ℓ=0}^{L} G^{ℓ+1} ⊙ Φ^ℓ over the points with backward fields.
    pub ntk: Array2<f64>,
}

/// A·Aᵀ/N for rows of length N.
fn gram(a: ArrayView2<f64>) -> Array2<f64> {
    let rows = a.nrows();
    let mut k = Array2::zeros((rows, rows));
    gemm(1.0 / a.ncols() as f64, a, a.t(), 0.0, k.view_mut());
    k
}

/// K = Φ^L + a² Σ_{ℓ=1}^{L−1} G^{ℓ+1} ⊙ Φ^ℓ + G¹ ⊙ K^x on the P×P block of the P points with
/// backward fields (`phi` may cover more points, train first); no Φ^L with a frozen readout;
/// `branch_sq` is a² (1 plain).
pub fn ntk(
    kx_train: ArrayView2<f64>,
    phi: &[Array2<f64>],
    grad: &[Array2<f64>],
    readout: Readout,
    branch_sq: f64,
) -> Array2<f64> {
    let p = kx_train.nrows();
    let depth = phi.len();
    let train = s![..p, ..p];
    let mut k = match readout {
        Readout::Trained => phi[depth - 1].slice(train).to_owned(),
        Readout::Frozen => Array2::zeros((p, p)),
    };
    for l in 1..depth {
        Zip::from(&mut k)
            .and(&grad[l])
            .and(phi[l - 1].slice(train))
            .for_each(|k, &g, &f| *k += branch_sq * g * f);
    }
    Zip::from(&mut k)
        .and(&grad[0])
        .and(kx_train)
        .for_each(|k, &g, &x| *k += g * x);
    k
}

/// Δ = y − (f − f₀) (f₀ = 0 when not centered).
pub fn residual(
    y: ArrayView1<f64>,
    f: ArrayView1<f64>,
    f0: Option<ArrayView1<f64>>,
) -> Array1<f64> {
    let mut delta = &y - &f;
    if let Some(f0) = f0 {
        delta += &f0;
    }
    delta
}

/// ℒ = (1/2P) Σ_μ Δ_μ².
pub fn half_mean_square(delta: ArrayView1<f64>) -> f64 {
    0.5 * delta.dot(&delta) / delta.len() as f64
}

/// out ← φ(h), with the hot activations dispatched outside the loop.
fn apply_phi(act: Activation, h: ArrayView2<f64>, mut out: ArrayViewMut2<f64>) {
    match act {
        Activation::Linear => out.assign(&h),
        Activation::Relu => Zip::from(&mut out)
            .and(&h)
            .for_each(|o, &x| *o = x.max(0.0)),
        _ => Zip::from(&mut out)
            .and(&h)
            .for_each(|o, &x| *o = act.phi(x)),
    }
}

const ROW: &str = "rows of a standard-layout buffer are contiguous";

/// g^L = φ'(h^L) ⊙ w^L for one point, on slices so the loop vectorizes (the broadcasting
/// Zip did not, and this runs on every step).
fn readout_field(act: Activation, h: &[f64], g: &mut [f64], w: &[f64]) {
    let lanes = g.iter_mut().zip(h).zip(w);
    match act {
        Activation::Linear => g.copy_from_slice(w),
        Activation::Relu => lanes.for_each(|((g, &h), &w)| *g = if h > 0.0 { w } else { 0.0 }),
        _ => lanes.for_each(|((g, &h), &w)| *g = act.d1(h) * w),
    }
}

/// z ← φ'(h) ⊙ z.
fn scale_by_d1(act: Activation, h: ArrayView2<f64>, mut z: ArrayViewMut2<f64>) {
    match act {
        Activation::Linear => {}
        Activation::Relu => Zip::from(&mut z).and(&h).for_each(|z, &x| {
            if x <= 0.0 {
                *z = 0.0;
            }
        }),
        _ => Zip::from(&mut z).and(&h).for_each(|z, &x| *z *= act.d1(x)),
    }
}

/// out += α Σ_μ a_μ γ₀N ∂f_μ/∂θ over the first a.len() points of a forward + backward pass
/// on inputs `x` (same rows, train first). γ₀N∂f/∂θ is φ(h^L) for w^L, g^{ℓ+1}φ(h^ℓ)ᵀ/√N for
/// W^ℓ and g¹xᵀ/√D for W⁰; the weights a_μ scale the right factor's rows (for W⁰ that is
/// the P×D input rather than the P×N field).
fn accumulate(
    arch: &Architecture,
    fwd: &mut Forward,
    x: ArrayView2<f64>,
    a: ArrayView1<f64>,
    alpha: f64,
    out: &mut Params,
) {
    let r = a.len();
    assert!(
        r <= fwd.grad_rows,
        "accumulate: {r} weights but {} backward rows",
        fwd.grad_rows
    );
    let (n, d, depth) = (arch.width, x.ncols(), arch.depth);
    if arch.readout == Readout::Trained {
        let a_col = a.insert_axis(Axis(1));
        let phi_last = fwd.phi[depth - 1].slice(s![..r, ..]);
        gemm(
            alpha,
            phi_last.t(),
            a_col,
            1.0,
            out.readout.view_mut().insert_axis(Axis(1)),
        );
    }
    for l in 1..depth {
        let mut weighted = fwd.weighted.slice_mut(s![..r, ..n]);
        Zip::from(weighted.rows_mut())
            .and(fwd.phi[l - 1].slice(s![..r, ..]).rows())
            .and(&a)
            .for_each(|mut w, p, &ai| w.zip_mut_with(&p, |w, &p| *w = ai * p));
        let g_next = fwd.g[l].slice(s![..r, ..]);
        let scale = alpha * arch.branch().1 / (n as f64).sqrt();
        gemm(
            scale,
            g_next.t(),
            weighted.view(),
            1.0,
            out.hidden[l - 1].view_mut(),
        );
    }
    let mut weighted = fwd.weighted.slice_mut(s![..r, ..d]);
    Zip::from(weighted.rows_mut())
        .and(x.slice(s![..r, ..]).rows())
        .and(&a)
        .for_each(|mut w, xr, &ai| w.zip_mut_with(&xr, |w, &x| *w = ai * x));
    let g1 = fwd.g[0].slice(s![..r, ..]);
    gemm(
        alpha / (d as f64).sqrt(),
        g1.t(),
        weighted.view(),
        1.0,
        out.input.view_mut(),
    );
}

/// A network of width N with its weights.
#[derive(Clone, Debug)]
pub struct Network {
    arch: Architecture,
    params: Params,
}

impl Network {
    /// All weights i.i.d. N(0,1), drawn in the order W⁰, W¹, …, W^{L−1}, w^L (row-major).
    pub fn new(arch: &Architecture, input_dim: usize, rng: &mut SimRng) -> Result<Self> {
        arch.validate()?;
        if input_dim == 0 {
            return Err(invalid("data input dimension D must be at least 1 (got 0)"));
        }
        let mut params = Params::zeros(arch, input_dim);
        for w in params.iter_mut() {
            *w = rng.sample(StandardNormal);
        }
        Ok(Network {
            arch: arch.clone(),
            params,
        })
    }

    pub fn architecture(&self) -> &Architecture {
        &self.arch
    }

    pub fn input_dim(&self) -> usize {
        self.params.input.ncols()
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    pub fn params_mut(&mut self) -> &mut Params {
        &mut self.params
    }

    /// Forward pass on the rows of `x` (points × D), into reusable buffers.
    pub fn forward_into(&self, x: ArrayView2<f64>, fwd: &mut Forward) {
        assert_eq!(
            x.ncols(),
            self.input_dim(),
            "forward: inputs have the wrong dimension"
        );
        let r = x.nrows();
        fwd.ensure_capacity(r);
        fwd.rows = r;
        fwd.grad_rows = 0;
        let n = self.arch.width as f64;
        let act = self.arch.activation;
        let d_scale = 1.0 / (self.input_dim() as f64).sqrt();
        gemm(
            d_scale,
            x,
            self.params.input.t(),
            0.0,
            fwd.h[0].slice_mut(s![..r, ..]),
        );
        apply_phi(
            act,
            fwd.h[0].slice(s![..r, ..]),
            fwd.phi[0].slice_mut(s![..r, ..]),
        );
        let (skip, branch) = self.arch.branch();
        for l in 1..self.arch.depth {
            let w = self.params.hidden[l - 1].t();
            let (below, above) = fwd.h.split_at_mut(l);
            let mut next = above[0].slice_mut(s![..r, ..]);
            if skip != 0.0 {
                next.assign(&below[l - 1].slice(s![..r, ..]));
            }
            let prev = fwd.phi[l - 1].slice(s![..r, ..]);
            gemm(branch / n.sqrt(), prev, w, skip, next);
            apply_phi(
                act,
                fwd.h[l].slice(s![..r, ..]),
                fwd.phi[l].slice_mut(s![..r, ..]),
            );
        }
        let readout = self.params.readout.view().insert_axis(Axis(1));
        let phi_last = fwd.phi[self.arch.depth - 1].slice(s![..r, ..]);
        let f_scale = 1.0 / (self.arch.effective_gamma0() * n);
        gemm(
            f_scale,
            phi_last,
            readout,
            0.0,
            fwd.f.slice_mut(s![..r]).insert_axis(Axis(1)),
        );
    }

    /// Allocating [`Network::forward_into`].
    pub fn forward(&self, x: ArrayView2<f64>) -> Forward {
        let mut fwd = Forward::new(&self.arch, self.input_dim(), x.nrows());
        self.forward_into(x, &mut fwd);
        fwd
    }

    /// f on the rows of `x` (uncentered).
    pub fn output(&self, x: ArrayView2<f64>) -> Array1<f64> {
        self.forward(x).f().to_owned()
    }

    /// Backward fields g^ℓ for the first `rows` points of the last forward pass.
    pub fn backward(&self, fwd: &mut Forward, rows: usize) {
        assert!(
            rows <= fwd.rows,
            "backward: {rows} rows requested, forward had {}",
            fwd.rows
        );
        let depth = self.arch.depth;
        let act = self.arch.activation;
        let inv_sqrt_n = 1.0 / (self.arch.width as f64).sqrt();
        let readout = self
            .params
            .readout
            .as_slice()
            .expect("owned 1-D array is contiguous");
        let mut g_top = fwd.g[depth - 1].slice_mut(s![..rows, ..]);
        for (mut g, h) in g_top.rows_mut().into_iter().zip(fwd.h[depth - 1].rows()) {
            readout_field(
                act,
                h.as_slice().expect(ROW),
                g.as_slice_mut().expect(ROW),
                readout,
            );
        }
        let (skip, branch) = self.arch.branch();
        for l in (1..depth).rev() {
            // a z^ℓ = a W^ℓᵀ g^{ℓ+1}/√N (as rows: g^{ℓ+1} W^ℓ), written into g^ℓ's buffer.
            let (lower, upper) = fwd.g.split_at_mut(l);
            let g_next = upper[0].slice(s![..rows, ..]);
            let z = lower[l - 1].slice_mut(s![..rows, ..]);
            gemm(
                branch * inv_sqrt_n,
                g_next,
                self.params.hidden[l - 1].view(),
                0.0,
                z,
            );
            let h = fwd.h[l - 1].slice(s![..rows, ..]);
            scale_by_d1(act, h, lower[l - 1].slice_mut(s![..rows, ..]));
            if skip != 0.0 {
                lower[l - 1]
                    .slice_mut(s![..rows, ..])
                    .scaled_add(skip, &upper[0].slice(s![..rows, ..]));
            }
        }
        fwd.grad_rows = rows;
    }

    /// ℒ = (1/2P) Σ_μ (y_μ − f_μ + f₀_μ)² on the rows of `x`.
    pub fn loss(&self, x: ArrayView2<f64>, y: ArrayView1<f64>, f0: Option<ArrayView1<f64>>) -> f64 {
        half_mean_square(residual(y, self.forward(x).f(), f0).view())
    }

    /// (ℒ, ∇_θℒ) by backpropagation: ∇ℒ = −(1/P) Σ_μ Δ_μ ∂f_μ/∂θ.
    pub fn loss_gradient(
        &self,
        x: ArrayView2<f64>,
        y: ArrayView1<f64>,
        f0: Option<ArrayView1<f64>>,
    ) -> (f64, Params) {
        let p = x.nrows();
        let mut fwd = self.forward(x);
        let delta = residual(y, fwd.f(), f0);
        self.backward(&mut fwd, p);
        let mut grad = Params::zeros(&self.arch, self.input_dim());
        let alpha = -1.0 / (p as f64 * self.arch.effective_gamma0() * self.arch.width as f64);
        accumulate(&self.arch, &mut fwd, x, delta.view(), alpha, &mut grad);
        (half_mean_square(delta.view()), grad)
    }

    /// One gradient step θ ← θ − ηγ₀²N∇ℒ with ℒ = (1/2B) Σ Δ² over the B = delta.len()
    /// leading points of a pass on `x` whose backward fields are already computed.
    pub fn update(
        &mut self,
        fwd: &mut Forward,
        x: ArrayView2<f64>,
        delta: ArrayView1<f64>,
        eta: f64,
    ) {
        let c = eta * self.arch.effective_gamma0() / delta.len() as f64;
        accumulate(&self.arch, fwd, x, delta, c, &mut self.params);
    }

    /// Full-batch GD step on (x, y): forward, backward, update. Returns ℒ at θ(k), before
    /// the update.
    pub fn gd_step(
        &mut self,
        x: ArrayView2<f64>,
        y: ArrayView1<f64>,
        f0: Option<ArrayView1<f64>>,
        eta: f64,
        fwd: &mut Forward,
    ) -> f64 {
        self.forward_into(x, fwd);
        let delta = residual(y, fwd.f(), f0);
        self.backward(fwd, x.nrows());
        self.update(fwd, x, delta.view(), eta);
        half_mean_square(delta.view())
    }
}
