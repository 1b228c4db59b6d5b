//! Finite-width prediction fluctuations of deep linear μP networks (φ = id, any depth L and
//! γ₀), plain or with residual β/√L branches, with no sampling, from the Hessian of the full
//! DMFT action (docs/fluctuations.md).
//!
//! The single site is one joint Gaussian process over all layers: neuron i of every layer
//! (tied by the skip in a residual network; in the plain chain, (s, a) = (0, 1), the layers
//! simply decouple). Its fields x = (h¹..h^L, g¹..g^L) solve x = S ξ + 𝓜 x, linear in the
//! sources ξ = (u¹..u^L, r¹..r^L) (deep_linear/residual.rs).
//!
//! Order parameters q = (q_c, q_r). Causal ones q_c: Φ^ℓ (ℓ < L), G^ℓ (ℓ > 1) and the outputs
//! f; the site reads them as source covariances and drives. Response ones q_r: for the
//! weights W^ℓ between layers ℓ and ℓ+1, A^ℓ(a, j) = ⟨h^ℓ_a ρ̂^ℓ_j⟩ and
//! B^{ℓ+1}(a, j) = ⟨μ̂^{ℓ+1}_a g^{ℓ+1}_j⟩ for every index pair, causal or not (ρ̂, μ̂: the
//! response fields of the sources r^ℓ, u^{ℓ+1}, which W^ℓ(0) produces unscaled by the branch
//! multiplier). Averaging W^ℓ(0) couples them as N Σ A^ℓ·B^{ℓ+1}, the matrix J below. With K
//! the site covariance of all averages (Isserlis over the joint site vector
//! v = (h, g, ρ̂', μ̂)) and M = I − D_c (D_c the open-loop sensitivity of all averages to the
//! q_c the site reads), the Gaussian integral over (q̂, q) gives
//! Σ_q = (MᵀK⁻¹M − J)⁻¹ = (M − K M⁻ᵀ J)⁻¹ K M⁻ᵀ.
//!
//! g does not depend on the sample in a linear network, so G^ℓ(k, j), B^ℓ(a, j) and the
//! backward sources r^ℓ are kept once per step j, and A^ℓ enters J only summed over the
//! train point of j: ρ̂'_j = Σ_α ρ̂_{jα}. D_c is exact: every causal q_c moves 𝓜 by a few
//! rank-one terms and the source covariance by one entry, and d(I − 𝓜)⁻¹ =
//! (I − 𝓜)⁻¹ d𝓜 (I − 𝓜)⁻¹. This is dense: O(L((T+1)(P+Q))²) order parameters, a tool for
//! small problems and the reference for a structured solver.

use crate::deep_linear::residual::{self, ResidualSolution};
use crate::kernel_variances::KernelVariances;
use crate::linalg::SerialBlas;
use crate::{DmftError, Model, Parameterization, Problem, Progress, Readout, Result, Schedule};
use ndarray::{Array1, Array2, Array3, Axis, s};
use ndarray_linalg::Inverse;
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Largest number of order parameters the dense solve accepts (memory ≈ 5 · 8 · n² bytes).
pub const MAX_ORDER_PARAMETERS: usize = 12_000;

/// The progress callback of [`deep_linear_prediction_fluctuations_with_progress`] counts up
/// to this: thousandths of the estimated work.
pub const PROGRESS_TOTAL: usize = 1000;

/// Number of order parameters q of the dense solve for a network of `depth` layers on
/// `points` = P + Q inputs over `steps` + 1 steps (the blocks of docs/fluctuations.md,
/// "Coordinates"): per hidden weight matrix the upper triangle of Φ^ℓ, A^ℓ, B^{ℓ+1} and the
/// upper triangle of G^{ℓ+1}, plus the outputs; the same for plain and residual networks. In
/// u128 so that any config can be sized before anything is allocated.
pub fn order_parameters(depth: usize, points: usize, steps: usize) -> u128 {
    let nt = steps as u128 + 1;
    let nh = nt * points as u128;
    let boundary = nh * (nh + 1) / 2 + 2 * nh * nt + nt * (nt + 1) / 2;
    (depth as u128).saturating_sub(1) * boundary + nh
}

/// N·Var of the predictions of a deep linear network to leading order in 1/N.
pub struct DeepLinearFluctuations {
    pub steps: Vec<usize>,
    pub t: Array1<f64>,
    /// N·Var[f] at the recorded steps (T_rec × P and T_rec × Q), of f − f(0) when centered.
    pub var_f_train: Array2<f64>,
    pub var_f_test: Array2<f64>,
    /// N·Var of the train loss, (1/P²) Δᵀ Σ_f(k,k) Δ.
    pub var_loss: Array1<f64>,
    /// Σ_f over all steps and points, time-major (index k·(P+Q) + ν).
    pub sigma: Array2<f64>,
    /// β of the residual branches (`Model::residual`); None for the plain chain.
    pub residual: Option<f64>,
    /// Infinite-width train NTK K_μα(k) at the recorded steps (T_rec × P × P) and N·Var of
    /// each entry; the NTK is linear in the layer kernels, so its variance is a quadratic
    /// form of their joint covariance.
    pub ntk: Array3<f64>,
    pub var_ntk: Array3<f64>,
    /// Top eigenvalue of the train NTK, N·Var of vᵀ δK v (v its eigenvector, first order in
    /// δK) and the gap to the second eigenvalue (∞ for one train point), as for two layers.
    pub ntk_top: Array1<f64>,
    pub var_ntk_top: Array1<f64>,
    pub ntk_gap: Array1<f64>,
    /// Φ^ℓ(k,k) and G^ℓ(k,k) of every hidden layer and N·Var of their entries.
    pub kernels: KernelVariances,
}

/// Which average an order parameter is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Phi,
    Grad,
    A,
    B,
    F,
    /// Equal-time kernels no layer reads (Φ^L, G¹), kept as observables only.
    Observed,
}

/// A block of q: the averages ⟨v_a v_b⟩ (scaled by 1/γ₀ for f) of one kind and layer.
struct Block {
    kind: Kind,
    layer: usize,
    offset: usize,
    pairs: Vec<(usize, usize)>,
}

impl Block {
    fn weight(&self, gamma0: f64) -> f64 {
        if self.kind == Kind::F {
            1.0 / gamma0
        } else {
            1.0
        }
    }
}

/// Offsets in the joint site vector v = (h¹..h^L, g¹..g^L, ρ̂'¹..ρ̂'^{L−1}, μ̂²..μ̂^L): h^ℓ over
/// (time, point), g^ℓ and ρ̂'^ℓ over time, μ̂^ℓ over (time, point). The sources ξ use the
/// offsets of the fields they drive: u^ℓ those of h^ℓ, r^ℓ those of g^ℓ.
#[derive(Clone, Copy)]
struct Layout {
    n: usize,
    p: usize,
    nt: usize,
    depth: usize,
}

impl Layout {
    fn h(&self, layer: usize) -> usize {
        (layer - 1) * self.nt * self.n
    }
    fn g(&self, layer: usize) -> usize {
        self.depth * self.nt * self.n + (layer - 1) * self.nt
    }
    /// Number of fields (= of sources).
    fn fields(&self) -> usize {
        self.depth * self.nt * (self.n + 1)
    }
    /// ρ̂'^ℓ, ℓ = 1..L−1.
    fn rho(&self, layer: usize) -> usize {
        self.fields() + (layer - 1) * self.nt
    }
    /// μ̂^ℓ, ℓ = 2..L.
    fn mu(&self, layer: usize) -> usize {
        self.fields() + (self.depth - 1) * self.nt + (layer - 2) * self.nt * self.n
    }
    fn dim(&self) -> usize {
        self.fields() + (self.depth - 1) * self.nt * (self.n + 1)
    }
}

/// What the joint site reads. Index m = 0..L−1 throughout. D_c perturbs `phi` (m ≥ 1),
/// `grad` (m < L−1) and `delta`; the J identity test perturbs the responses.
#[derive(Clone)]
struct SiteInputs {
    /// Φ^m (Φ⁰ = Kˣ tiled): the covariance of u^{m+1}, over (time, point).
    phi: Vec<Array2<f64>>,
    /// G^{m+2} per step (G^{L+1} = 1, the readout): the covariance of r^{m+1}.
    grad: Vec<Array2<f64>>,
    /// R_φ^m summed over train columns, (time, point) × time (R_φ⁰ = 0): read by C^{m+1}.
    response_phi: Vec<Array2<f64>>,
    /// R_g^{m+2} on one train row per step, time × (time, point) (R_g^{L+1} = 0): read by E^{m+1}.
    response_grad: Vec<Array2<f64>>,
    /// Δ(j, α) on train points.
    delta: Array2<f64>,
}

/// A sparse vector over the fields: (index, value).
type Sparse = Vec<(usize, f64)>;

/// A first-order change of the site's inputs: rank-one changes col ⊗ row of 𝓜 (sparse,
/// field indices) and unit entries (i, k) added symmetrically to the source covariance.
#[derive(Default)]
struct Change {
    operator: Vec<(Sparse, Sparse)>,
    covariance: Vec<(usize, usize)>,
}

/// The joint site solved at given inputs.
struct Site {
    /// (I − 𝓜)⁻¹.
    resolvent: Array2<f64>,
    /// ∂x/∂ξ = (I − 𝓜)⁻¹ S.
    fields: Array2<f64>,
    /// Second moments Ω of v.
    omega: Array2<f64>,
}

struct Context {
    layout: Layout,
    c: f64,
    gamma0: f64,
    skip: f64,
    branch: f64,
    centered: bool,
}

impl Context {
    /// (s, a) of the forward equation of layer ℓ: layer 1 reads the input, no skip.
    fn forward(&self, layer: usize) -> (f64, f64) {
        if layer == 1 {
            (0.0, 1.0)
        } else {
            (self.skip, self.branch)
        }
    }

    /// (s, a) of the backward equation of layer ℓ: g^L = z^L, no skip.
    fn backward(&self, layer: usize) -> (f64, f64) {
        if layer == self.layout.depth {
            (0.0, 1.0)
        } else {
            (self.skip, self.branch)
        }
    }

    /// 𝓜 of x = S ξ + 𝓜 x from the site equations (deep_linear/residual.rs), with any (not
    /// necessarily causal) response inputs:
    ///   h^ℓ = s h^{ℓ−1} + a (u^ℓ + C^ℓ g^ℓ),  C^ℓ = R_φ^{ℓ−1} + a c [Φ^{ℓ−1} Δ]_<
    ///   g^ℓ = s g^{ℓ+1} + a (r^ℓ + E^ℓ h^ℓ),  E^ℓ = R_g^{ℓ+1} + a c [G^{ℓ+1} Δ]_<
    fn operator(&self, inp: &SiteInputs) -> Array2<f64> {
        let l = self.layout;
        let Layout { n, p, nt, depth } = l;
        let mut op = Array2::<f64>::zeros((l.fields(), l.fields()));
        for layer in 1..=depth {
            let m = layer - 1;
            let (sf, af) = self.forward(layer);
            let (sb, ab) = self.backward(layer);
            let (h, g) = (l.h(layer), l.g(layer));
            for i in 0..nt * n {
                if layer > 1 {
                    op[[h + i, l.h(layer - 1) + i]] = sf;
                }
                for j in 0..nt {
                    let mut c = inp.response_phi[m][[i, j]];
                    if j < i / n {
                        let phi = &inp.phi[m];
                        c += af
                            * self.c
                            * (0..p)
                                .map(|al| phi[[i, j * n + al]] * inp.delta[[j, al]])
                                .sum::<f64>();
                    }
                    op[[h + i, g + j]] = af * c;
                }
            }
            for k in 0..nt {
                if layer < depth {
                    op[[g + k, l.g(layer + 1) + k]] = sb;
                }
                for i in 0..nt * n {
                    let (j, al) = (i / n, i % n);
                    let mut e = inp.response_grad[m][[k, i]];
                    if j < k && al < p {
                        e += ab * self.c * inp.grad[m][[k, j]] * inp.delta[[j, al]];
                    }
                    op[[g + k, h + i]] = ab * e;
                }
            }
        }
        op
    }

    /// The diagonal of S: the branch multiplier a on the sources of the hidden weights.
    fn source_scale(&self) -> Array1<f64> {
        let l = self.layout;
        let mut sc = Array1::<f64>::ones(l.fields());
        for layer in 1..=l.depth {
            let (h, g) = (l.h(layer), l.g(layer));
            sc.slice_mut(s![h..h + l.nt * l.n])
                .fill(self.forward(layer).1);
            sc.slice_mut(s![g..g + l.nt]).fill(self.backward(layer).1);
        }
        sc
    }

    /// Solves the joint site: x = (I − 𝓜)⁻¹ S ξ, ⟨xxᵀ⟩ = X Cov(ξ) Xᵀ, ⟨x ρ̂'ᵀ⟩ = ∂x/∂r,
    /// ⟨x μ̂ᵀ⟩ = ∂x/∂u and zero among response fields.
    fn site(&self, inp: &SiteInputs) -> Result<Site> {
        let l = self.layout;
        let (nf, nh) = (l.fields(), l.nt * l.n);
        let resolvent = (Array2::<f64>::eye(nf) - self.operator(inp))
            .inv()
            .map_err(|e| DmftError::Invalid(format!("joint site I − 𝓜: {e}")))?;
        let fields = &resolvent * &self.source_scale().insert_axis(Axis(0));
        let mut cov = Array2::<f64>::zeros((nf, nf));
        for layer in 1..=l.depth {
            let (h, g) = (l.h(layer), l.g(layer));
            cov.slice_mut(s![h..h + nh, h..h + nh])
                .assign(&inp.phi[layer - 1]);
            cov.slice_mut(s![g..g + l.nt, g..g + l.nt])
                .assign(&inp.grad[layer - 1]);
        }
        let mut omega = Array2::<f64>::zeros((l.dim(), l.dim()));
        omega
            .slice_mut(s![..nf, ..nf])
            .assign(&fields.dot(&cov).dot(&fields.t()));
        for layer in 1..l.depth {
            let (g, rho) = (l.g(layer), l.rho(layer));
            let dx = fields.slice(s![.., g..g + l.nt]);
            omega.slice_mut(s![..nf, rho..rho + l.nt]).assign(&dx);
            omega.slice_mut(s![rho..rho + l.nt, ..nf]).assign(&dx.t());
        }
        for layer in 2..=l.depth {
            let (h, mu) = (l.h(layer), l.mu(layer));
            let dx = fields.slice(s![.., h..h + nh]);
            omega.slice_mut(s![..nf, mu..mu + nh]).assign(&dx);
            omega.slice_mut(s![mu..mu + nh, ..nf]).assign(&dx.t());
        }
        Ok(Site {
            resolvent,
            fields,
            omega,
        })
    }

    /// The change of the inputs per unit change of the causal order parameter `pair` of `block`
    /// (Φ^ℓ and G^ℓ entries count both symmetric positions, as q keeps one of them).
    fn change(&self, inp: &SiteInputs, block: &Block, pair: (usize, usize)) -> Change {
        let l = self.layout;
        let Layout { n, p, nt, depth } = l;
        let mut out = Change::default();
        match block.kind {
            Kind::Phi => {
                // Read by layer ℓ+1 as Cov(u^{ℓ+1}) and inside C^{ℓ+1}.
                let reader = block.layer + 1;
                let (h, g) = (l.h(block.layer), l.g(reader));
                let (a, b) = (pair.0 - h, pair.1 - h);
                let (hr, af) = (l.h(reader), self.forward(reader).1);
                out.covariance.push((hr + a, hr + b));
                let positions: &[(usize, usize)] =
                    if a == b { &[(a, b)] } else { &[(a, b), (b, a)] };
                for &(x, y) in positions {
                    let (kx, ky, muy) = (x / n, y / n, y % n);
                    if muy < p && ky < kx {
                        let v = af * af * self.c * inp.delta[[ky, muy]];
                        out.operator.push((vec![(hr + x, v)], vec![(g + ky, 1.0)]));
                    }
                }
            }
            Kind::Grad => {
                // Read by layer ℓ−1 as Cov(r^{ℓ−1}) and inside E^{ℓ−1}.
                let reader = block.layer - 1;
                let g0 = l.g(block.layer);
                let (k, j) = (pair.0 - g0, pair.1 - g0);
                let (gr, hr, ab) = (l.g(reader), l.h(reader), self.backward(reader).1);
                out.covariance.push((gr + k, gr + j));
                for (x, y) in [(k, j), (j, k)] {
                    if y < x {
                        let row = (0..p)
                            .map(|al| (hr + y * n + al, inp.delta[[y, al]]))
                            .collect();
                        out.operator.push((vec![(gr + x, ab * ab * self.c)], row));
                    }
                }
            }
            Kind::F => {
                let k = pair.0 - l.g(depth);
                let mu = pair.1 - l.h(depth) - k * n;
                if mu >= p {
                    return out;
                }
                // ∂Δ(j, μ)/∂f(k, μ) = −[j = k] + [centered, k = 0]: f(0) = 0 drops out of Δ(0).
                let centering = if self.centered && k == 0 { 1.0 } else { 0.0 };
                for j in 0..nt {
                    let v = centering - if j == k { 1.0 } else { 0.0 };
                    if v == 0.0 {
                        continue;
                    }
                    for layer in 1..=depth {
                        let (h, g) = (l.h(layer), l.g(layer));
                        let af = self.forward(layer).1;
                        let phi = &inp.phi[layer - 1];
                        let col = ((j + 1) * n..nt * n)
                            .map(|i| (h + i, af * af * self.c * phi[[i, j * n + mu]]))
                            .collect();
                        out.operator.push((col, vec![(g + j, v)]));
                        let ab = self.backward(layer).1;
                        let grad = &inp.grad[layer - 1];
                        let col = (j + 1..nt)
                            .map(|kk| (g + kk, ab * ab * self.c * grad[[kk, j]]))
                            .collect();
                        out.operator.push((col, vec![(h + j * n + mu, v)]));
                    }
                }
            }
            Kind::A | Kind::B | Kind::Observed => {
                unreachable!("response averages and observables are not read as drives")
            }
        }
        out
    }

    /// d⟨v_a v_b⟩ for every (a, b, weight) under `change`, exact to first order:
    /// dΩ = w zᵀ + z wᵀ per rank-one term (w = (I − 𝓜)⁻¹ col on the fields, z = rowᵀ Ω), plus
    /// X dCov Xᵀ.
    fn sensitivity(&self, site: &Site, change: &Change, pairs: &[(usize, usize, f64)]) -> Vec<f64> {
        let (nf, dim) = (self.layout.fields(), self.layout.dim());
        let terms: Vec<(Array1<f64>, Array1<f64>)> = change
            .operator
            .iter()
            .map(|(col, row)| {
                let mut w = Array1::<f64>::zeros(dim);
                for &(i, v) in col {
                    w.slice_mut(s![..nf])
                        .scaled_add(v, &site.resolvent.column(i));
                }
                let mut z = Array1::<f64>::zeros(dim);
                for &(j, v) in row {
                    z.scaled_add(v, &site.omega.row(j));
                }
                (w, z)
            })
            .collect();
        let x = |a: usize, i: usize| if a < nf { site.fields[[a, i]] } else { 0.0 };
        pairs
            .iter()
            .map(|&(a, b, wt)| {
                let mut d = 0.0;
                for (w, z) in &terms {
                    d += w[a] * z[b] + w[b] * z[a];
                }
                for &(i, k) in &change.covariance {
                    d += x(a, i) * x(b, k);
                    if i != k {
                        d += x(a, k) * x(b, i);
                    }
                }
                wt * d
            })
            .collect()
    }
}

/// The averages of q, in the order of [`order_parameters`]: per layer ℓ its Φ^ℓ (ℓ < L),
/// G^ℓ (ℓ > 1), A^ℓ (ℓ < L), B^ℓ (ℓ > 1), and f after layer L.
fn blocks(layout: Layout) -> Vec<Block> {
    let Layout { n, nt, depth, .. } = layout;
    let (nh, mut offset) = (nt * n, 0);
    let mut out = Vec::new();
    for layer in 1..=depth {
        let mut add = |kind: Kind, pairs: Vec<(usize, usize)>| {
            let len = pairs.len();
            out.push(Block {
                kind,
                layer,
                offset,
                pairs,
            });
            offset += len;
        };
        let (h, g) = (layout.h(layer), layout.g(layer));
        if layer < depth {
            add(
                Kind::Phi,
                (0..nh)
                    .flat_map(|a| (a..nh).map(move |b| (h + a, h + b)))
                    .collect(),
            );
        }
        if layer > 1 {
            add(
                Kind::Grad,
                (0..nt)
                    .flat_map(|k| (k..nt).map(move |j| (g + k, g + j)))
                    .collect(),
            );
        }
        if layer < depth {
            let rho = layout.rho(layer);
            add(
                Kind::A,
                (0..nh)
                    .flat_map(|a| (0..nt).map(move |j| (h + a, rho + j)))
                    .collect(),
            );
        }
        if layer > 1 {
            let mu = layout.mu(layer);
            add(
                Kind::B,
                (0..nh)
                    .flat_map(|a| (0..nt).map(move |j| (mu + a, g + j)))
                    .collect(),
            );
        }
        if layer == depth {
            add(
                Kind::F,
                (0..nt)
                    .flat_map(|k| (0..n).map(move |mu| (g + k, h + k * n + mu)))
                    .collect(),
            );
        }
    }
    out
}

/// Φ^L(k,k) over all points and G¹(k,k) at the recorded steps, placed after q. No layer
/// reads them, so their rows of M = I − D_c are their open-loop sensitivities and their
/// columns the identity, and J ignores them: the Gaussian integral then leaves the marginal
/// of q as it was and adds their joint fluctuation (docs/fluctuations.md, "Kernel variances").
fn observed_blocks(layout: Layout, steps: &[usize], offset: usize) -> Vec<Block> {
    let Layout { n, depth, .. } = layout;
    let (h, g) = (layout.h(depth), layout.g(1));
    let phi: Vec<(usize, usize)> = steps
        .iter()
        .flat_map(|&k| {
            (0..n).flat_map(move |a| (a..n).map(move |b| (h + k * n + a, h + k * n + b)))
        })
        .collect();
    let grad: Vec<(usize, usize)> = steps.iter().map(|&k| (g + k, g + k)).collect();
    let len = phi.len();
    vec![
        Block {
            kind: Kind::Observed,
            layer: depth,
            offset,
            pairs: phi,
        },
        Block {
            kind: Kind::Observed,
            layer: 1,
            offset: offset + len,
            pairs: grad,
        },
    ]
}

fn find(blocks: &[Block], kind: Kind, layer: usize) -> &Block {
    blocks
        .iter()
        .find(|b| b.kind == kind && b.layer == layer)
        .expect("every consumed average is produced by some layer")
}

/// Every order parameter as (a, b, weight): q = weight · Ω_ab.
fn weighted_pairs(blocks: &[Block], gamma0: f64) -> Vec<(usize, usize, f64)> {
    blocks
        .iter()
        .flat_map(|b| {
            let w = b.weight(gamma0);
            b.pairs.iter().map(move |&(i, j)| (i, j, w))
        })
        .collect()
}

/// Cov_site of the averages by Isserlis: Cov(v_a v_b, v_c v_d) = Ω_ac Ω_bd + Ω_ad Ω_bc,
/// valid for the response fields too (⟨ρ̂ρ̂⟩ = ⟨μ̂μ̂⟩ = ⟨ρ̂μ̂⟩ = 0 sit in Ω). Dense over all
/// layers: the joint site correlates them.
fn site_covariance(om: &Array2<f64>, pairs: &[(usize, usize, f64)]) -> Array2<f64> {
    let mut out = Array2::<f64>::zeros((pairs.len(), pairs.len()));
    out.axis_iter_mut(Axis(0))
        .into_par_iter()
        .zip(pairs.par_iter())
        .for_each(|(mut row, &(a, b, wa))| {
            for (x, &(c, d, wc)) in row.iter_mut().zip(pairs) {
                *x = wa * wc * (om[[a, c]] * om[[b, d]] + om[[a, d]] * om[[b, c]]);
            }
        });
    out
}

/// Σ_f of a deep linear μP network, plain or residual (dense Hessian; small problems only).
pub fn deep_linear_prediction_fluctuations(
    problem: &Problem,
    model: &Model,
    schedule: &Schedule,
) -> Result<DeepLinearFluctuations> {
    deep_linear_prediction_fluctuations_with_progress(problem, model, schedule, &|_| {})
}

/// [`deep_linear_prediction_fluctuations`], reporting thousandths of the estimated work
/// done (up to [`PROGRESS_TOTAL`]) from any thread.
pub fn deep_linear_prediction_fluctuations_with_progress(
    problem: &Problem,
    model: &Model,
    schedule: &Schedule,
    progress: Progress,
) -> Result<DeepLinearFluctuations> {
    deep_linear_prediction_fluctuations_with_stream(
        problem,
        model,
        schedule,
        model.branch(),
        progress,
    )
}

/// [`deep_linear_prediction_fluctuations_with_progress`] with the stream (s, a) of the site
/// equations given by the caller: a generated propagator passes the pair it read off the
/// derived equations, and it must be the model's (a mismatch is an error, never a silent
/// run of another network).
pub fn deep_linear_prediction_fluctuations_with_stream(
    problem: &Problem,
    model: &Model,
    schedule: &Schedule,
    stream: (f64, f64),
    progress: Progress,
) -> Result<DeepLinearFluctuations> {
    if model.parameterization != Parameterization::Mup
        || model.activation != crate::Activation::Linear
    {
        return Err(DmftError::Invalid(
            "the deep linear propagator needs model.activation = \"linear\" and the μP parameterization".into(),
        ));
    }
    if model.readout == Readout::Frozen {
        return Err(DmftError::Invalid(
            "the deep linear propagator trains the readout (model.readout = frozen is two-layer only)".into(),
        ));
    }
    if stream != model.branch() {
        return Err(DmftError::Unsupported(format!(
            "the propagator's stream (s, a) = {stream:?} is not the model's {:?} (model.depth = {}, model.residual = {:?})",
            model.branch(),
            model.depth,
            model.residual
        )));
    }
    propagate(problem, model, schedule, stream, progress)
}

/// The propagator for any (s, a) (the plain chain is (0, 1), a residual network (1, β/√L)).
fn propagate(
    problem: &Problem,
    model: &Model,
    schedule: &Schedule,
    (skip, branch): (f64, f64),
    progress: Progress,
) -> Result<DeepLinearFluctuations> {
    let saddle = Saddle::new(problem, model, schedule, skip, branch)?;
    let Saddle {
        ctx,
        inputs,
        blocks: all,
        solution: sol,
    } = &saddle;
    let Layout { n, p, nt, depth } = ctx.layout;
    let pairs = weighted_pairs(all, ctx.gamma0);
    let total = pairs.len();
    let causal: Vec<(usize, &Block, (usize, usize))> = all
        .iter()
        .filter(|b| matches!(b.kind, Kind::Phi | Kind::Grad | Kind::F))
        .flat_map(|b| {
            b.pairs
                .iter()
                .enumerate()
                .map(move |(i, &pr)| (b.offset + i, b, pr))
        })
        .collect();
    let meter = Meter::new(progress, causal.len(), total);
    // LAPACK on one thread: small calls come from rayon workers, and OpenBLAS's threaded
    // LU keeps per-CPU job tables on the caller's stack, which overflows the 2 MiB stacks
    // of rayon and test threads (measured: SIGSEGV in a test thread).
    let _serial = SerialBlas::new();
    let site = ctx.site(inputs)?;
    let k_mat = site_covariance(&site.omega, &pairs);
    // M = I − D_c, one exact column per causal order parameter.
    let mut m = Array2::<f64>::eye(total);
    let columns: Vec<(usize, Vec<f64>)> = causal
        .par_iter()
        .map(|&(col, block, pair)| {
            let d = ctx.sensitivity(&site, &ctx.change(inputs, block, pair), &pairs);
            meter.column_done();
            (col, d)
        })
        .collect();
    for (col, d) in columns {
        m.column_mut(col)
            .zip_mut_with(&Array1::from(d), |x, v| *x -= v);
    }

    let fb = find(all, Kind::F, depth);
    let nf = fb.pairs.len();
    let traj = &sol.trajectory;
    let steps = traj.steps.clone();
    let kernel_entries = KernelEntries::new(ctx.layout, &steps, all);
    let wanted: Vec<usize> = (fb.offset..fb.offset + nf)
        .chain(kernel_entries.index.iter().copied())
        .collect();
    let sigma_q = solve_hessian(&k_mat, m, all, depth, &wanted, &meter)?;
    let mut sigma = sigma_q
        .slice(s![fb.offset..fb.offset + nf, ..nf])
        .to_owned();
    let kernel_cov = Array2::from_shape_fn(
        (kernel_entries.index.len(), kernel_entries.index.len()),
        |(i, j)| sigma_q[[kernel_entries.index[i], nf + j]],
    );
    if model.centered {
        // f(k) − f(0) for every step: T Σ Tᵀ.
        let mut t = Array2::<f64>::eye(nf);
        for k in 0..nt {
            for mu in 0..n {
                t[[k * n + mu, mu]] -= 1.0;
            }
        }
        sigma = t.dot(&sigma).dot(&t.t());
    }

    let q = n - p;
    let mut var_f_train = Array2::zeros((steps.len(), p));
    let mut var_f_test = Array2::zeros((steps.len(), q));
    let mut var_loss = Array1::zeros(steps.len());
    for (r, &k) in steps.iter().enumerate() {
        for nu in 0..n {
            let v = sigma[[k * n + nu, k * n + nu]];
            if nu < p {
                var_f_train[[r, nu]] = v;
            } else {
                var_f_test[[r, nu - p]] = v;
            }
        }
        let blk = sigma.slice(s![k * n..k * n + p, k * n..k * n + p]);
        let d = sol.delta.row(k);
        var_loss[r] = d.dot(&blk.dot(&d)) / (p * p) as f64;
    }
    let means = Array1::from_iter(kernel_entries.index.iter().map(|&i| {
        let (a, b, w) = pairs[i];
        w * site.omega[[a, b]]
    }));
    let ntk = kernel_entries.ntk(&means, &kernel_cov, problem, branch)?;
    progress(PROGRESS_TOTAL);
    Ok(DeepLinearFluctuations {
        steps,
        t: traj.t.clone(),
        var_f_train,
        var_f_test,
        var_loss,
        sigma,
        residual: model.residual,
        ntk: ntk.kernel,
        var_ntk: ntk.var,
        ntk_top: ntk.top,
        var_ntk_top: ntk.var_top,
        ntk_gap: ntk.gap,
        kernels: kernel_entries.variances(&means, &kernel_cov),
    })
}

/// The equal-time kernel entries of every layer at the recorded steps, as indices into q:
/// per step r, per layer ℓ, Φ^ℓ(k,k)_ab over all points (a ≤ b), then G^ℓ(k,k) (one number:
/// g does not depend on the sample in a linear network).
struct KernelEntries {
    n: usize,
    p: usize,
    depth: usize,
    recorded: usize,
    index: Vec<usize>,
}

/// The train NTK and its fluctuation at the recorded steps.
struct NtkFluctuations {
    kernel: Array3<f64>,
    var: Array3<f64>,
    top: Array1<f64>,
    var_top: Array1<f64>,
    gap: Array1<f64>,
}

impl KernelEntries {
    fn new(layout: Layout, steps: &[usize], all: &[Block]) -> Self {
        let Layout { n, p, depth, .. } = layout;
        let position: HashMap<(usize, usize), usize> = all
            .iter()
            .filter(|b| matches!(b.kind, Kind::Phi | Kind::Grad | Kind::Observed))
            .flat_map(|b| {
                b.pairs
                    .iter()
                    .enumerate()
                    .map(move |(i, &pair)| (pair, b.offset + i))
            })
            .collect();
        let mut index = Vec::new();
        for &k in steps {
            for layer in 1..=depth {
                let (h, g) = (layout.h(layer) + k * n, layout.g(layer) + k);
                let pairs = (0..n).flat_map(|a| (a..n).map(move |b| (h + a, h + b)));
                for pair in pairs.chain([(g, g)]) {
                    index.push(position[&pair]);
                }
            }
        }
        KernelEntries {
            n,
            p,
            depth,
            recorded: steps.len(),
            index,
        }
    }

    fn per_layer(&self) -> usize {
        self.n * (self.n + 1) / 2 + 1
    }

    /// Position of Φ^ℓ(k,k)_ab (any order of a, b) at recorded step r.
    fn phi(&self, r: usize, layer: usize, a: usize, b: usize) -> usize {
        let (a, b) = (a.min(b), a.max(b));
        let n = self.n;
        let triangle = a * (2 * n - a + 1) / 2 + (b - a);
        (r * self.depth + layer - 1) * self.per_layer() + triangle
    }

    /// Position of G^ℓ(k,k) at recorded step r.
    fn grad(&self, r: usize, layer: usize) -> usize {
        (r * self.depth + layer) * self.per_layer() - 1
    }

    fn variances(&self, means: &Array1<f64>, cov: &Array2<f64>) -> KernelVariances {
        let (n, p, t) = (self.n, self.p, self.recorded);
        let mut out = KernelVariances {
            phi_kernel: vec![Array3::zeros((t, n, n)); self.depth],
            var_phi_kernel: vec![Array3::zeros((t, n, n)); self.depth],
            grad_kernel: vec![Array3::zeros((t, p, p)); self.depth],
            var_grad_kernel: vec![Array3::zeros((t, p, p)); self.depth],
        };
        for r in 0..t {
            for layer in 1..=self.depth {
                for a in 0..n {
                    for b in 0..n {
                        let i = self.phi(r, layer, a, b);
                        out.phi_kernel[layer - 1][[r, a, b]] = means[i];
                        out.var_phi_kernel[layer - 1][[r, a, b]] = cov[[i, i]];
                    }
                }
                let i = self.grad(r, layer);
                out.grad_kernel[layer - 1]
                    .index_axis_mut(Axis(0), r)
                    .fill(means[i]);
                out.var_grad_kernel[layer - 1]
                    .index_axis_mut(Axis(0), r)
                    .fill(cov[[i, i]]);
            }
        }
        out
    }

    /// K = Φ^L + a² Σ_{ℓ<L} G^{ℓ+1} ⊙ Φ^ℓ + G¹ ⊙ Kˣ on the train points (the simulator's NTK),
    /// and its fluctuation to first order in the kernels' (δK is linear in δΦ^ℓ, δG^ℓ).
    fn ntk(
        &self,
        means: &Array1<f64>,
        cov: &Array2<f64>,
        problem: &Problem,
        branch: f64,
    ) -> Result<NtkFluctuations> {
        let (p, t, depth) = (self.p, self.recorded, self.depth);
        let a2 = branch * branch;
        let mut out = NtkFluctuations {
            kernel: Array3::zeros((t, p, p)),
            var: Array3::zeros((t, p, p)),
            top: Array1::zeros(t),
            var_top: Array1::zeros(t),
            gap: Array1::from_elem(t, f64::INFINITY),
        };
        let len = depth * self.per_layer();
        for r in 0..t {
            // K_μα and ∂K_μα/∂(kernel entries), dense over the entries of step r only (the
            // NTK of one step reads no other step's kernels).
            let start = r * len;
            let cov = cov.slice(s![start..start + len, start..start + len]);
            let mut kernel = Array2::<f64>::zeros((p, p));
            let mut grads = Vec::with_capacity(p * p);
            for mu in 0..p {
                for al in 0..p {
                    let mut c = Array1::<f64>::zeros(len);
                    let top = self.phi(r, depth, mu, al);
                    let first = self.grad(r, 1);
                    let mut k = means[top] + means[first] * problem.kx[[mu, al]];
                    c[top - start] += 1.0;
                    c[first - start] += problem.kx[[mu, al]];
                    for layer in 1..depth {
                        let (phi, grad) = (self.phi(r, layer, mu, al), self.grad(r, layer + 1));
                        k += a2 * means[grad] * means[phi];
                        c[grad - start] += a2 * means[phi];
                        c[phi - start] += a2 * means[grad];
                    }
                    kernel[[mu, al]] = k;
                    out.var[[r, mu, al]] = c.dot(&cov.dot(&c));
                    grads.push(c);
                }
            }
            let (values, vectors) = crate::linalg::eigh(kernel.view())?;
            let v = vectors.column(p - 1);
            let mut c_top = Array1::<f64>::zeros(len);
            for mu in 0..p {
                for al in 0..p {
                    c_top.scaled_add(v[mu] * v[al], &grads[mu * p + al]);
                }
            }
            out.top[r] = values[p - 1];
            out.var_top[r] = c_top.dot(&cov.dot(&c_top));
            if p > 1 {
                out.gap[r] = values[p - 1] - values[p - 2];
            }
            out.kernel.index_axis_mut(Axis(0), r).assign(&kernel);
        }
        Ok(out)
    }
}

/// The infinite-width solution (the joint residual march, which is the plain chain at
/// (s, a) = (0, 1)) and the inputs of the joint site there.
struct Saddle {
    ctx: Context,
    inputs: SiteInputs,
    blocks: Vec<Block>,
    solution: ResidualSolution,
}

impl Saddle {
    fn new(
        problem: &Problem,
        model: &Model,
        schedule: &Schedule,
        skip: f64,
        branch: f64,
    ) -> Result<Self> {
        let depth = model.depth;
        let layout = Layout {
            n: problem.n_all(),
            p: problem.n_train(),
            nt: schedule.steps + 1,
            depth,
        };
        let total = order_parameters(depth, layout.n, schedule.steps);
        if total > MAX_ORDER_PARAMETERS as u128 {
            return Err(DmftError::Invalid(format!(
                "the dense deep linear propagator has {total} order parameters for depth = {depth}, P + Q = {}, steps = {} (limit {MAX_ORDER_PARAMETERS}); reduce train.steps or the number of points",
                layout.n, schedule.steps
            )));
        }
        // The memory check of `new`, then the requested branch.
        residual::ResidualSetup::new(problem, model, schedule)?;
        let setup = residual::ResidualSetup::with_branch(problem, model, schedule, skip, branch);
        let solution = residual::march(problem, &setup, model.gamma0, schedule, &|_| {})?;
        let ctx = Context {
            layout,
            c: schedule.eta * model.gamma0 / layout.p as f64,
            gamma0: model.gamma0,
            skip,
            branch,
            centered: model.centered,
        };
        let inputs = site_inputs(&solution, layout, problem);
        let mut all = blocks(layout);
        let offset = all.iter().map(|b| b.pairs.len()).sum();
        all.extend(observed_blocks(layout, &solution.trajectory.steps, offset));
        Ok(Saddle {
            ctx,
            inputs,
            blocks: all,
            solution,
        })
    }
}

/// The joint site's inputs at the saddle, read off the march's kernels and coefficients.
fn site_inputs(sol: &ResidualSolution, layout: Layout, problem: &Problem) -> SiteInputs {
    let Layout { n, p, nt, depth } = layout;
    let layers = &sol.layers;
    let one_row: Vec<usize> = (0..nt).map(|k| k * p).collect();
    let mut phi = vec![Array2::<f64>::zeros((nt * n, nt * n))];
    for a in 0..nt {
        for b in 0..nt {
            phi[0]
                .slice_mut(s![a * n..(a + 1) * n, b * n..(b + 1) * n])
                .assign(&problem.kx);
        }
    }
    let mut response_phi = vec![Array2::<f64>::zeros((nt * n, nt))];
    for layer in &layers[..depth - 1] {
        phi.push(layer.phi_kernel.clone());
    }
    for (m, layer) in layers[..depth - 1].iter().enumerate() {
        let r = layer.response_phi(m + 1);
        let mut summed = Array2::<f64>::zeros((nt * n, nt));
        for j in 0..nt {
            summed
                .column_mut(j)
                .assign(&r.slice(s![.., j * p..(j + 1) * p]).sum_axis(Axis(1)));
        }
        response_phi.push(summed);
    }
    let mut grad = Vec::new();
    let mut response_grad = Vec::new();
    for m in 0..depth {
        match layers.get(m + 1) {
            Some(above) => {
                grad.push(
                    above
                        .grad_kernel
                        .select(Axis(0), &one_row)
                        .select(Axis(1), &one_row),
                );
                response_grad.push(above.response_grad(m + 2).select(Axis(0), &one_row));
            }
            None => {
                grad.push(Array2::ones((nt, nt)));
                response_grad.push(Array2::zeros((nt, nt * n)));
            }
        }
    }
    SiteInputs {
        phi,
        grad,
        response_phi,
        response_grad,
        delta: sol.delta.clone(),
    }
}

/// Reports the work done as thousandths of an estimate: one D_c column costs O(q) (a few
/// rank-one terms at every order parameter), the dense solve O(q³) (inverse 2q³, product
/// 2q³, LU ⅔q³).
struct Meter<'a> {
    progress: Progress<'a>,
    /// Thousandths per D_c column, and for the whole solve.
    per_column: f64,
    solve: f64,
    columns_done: AtomicUsize,
}

impl<'a> Meter<'a> {
    fn new(progress: Progress<'a>, columns: usize, total: usize) -> Self {
        let column_cost = 8.0 * total as f64;
        let solve_cost = 4.7 * (total as f64).powi(3);
        let all = columns as f64 * column_cost + solve_cost;
        Meter {
            progress,
            per_column: PROGRESS_TOTAL as f64 * column_cost / all,
            solve: PROGRESS_TOTAL as f64 * solve_cost / all,
            columns_done: AtomicUsize::new(0),
        }
    }

    fn column_done(&self) {
        let done = self.columns_done.fetch_add(1, Ordering::Relaxed) + 1;
        (self.progress)((done as f64 * self.per_column) as usize);
    }

    /// `fraction` of the dense solve is done.
    fn solve_done(&self, fraction: f64) {
        let columns = self.columns_done.load(Ordering::Relaxed) as f64 * self.per_column;
        (self.progress)((columns + fraction * self.solve) as usize);
    }
}

/// The `wanted` columns of Σ_q = (M − K M⁻ᵀ J)⁻¹ K M⁻ᵀ (all rows of q).
fn solve_hessian(
    k_mat: &Array2<f64>,
    m: Array2<f64>,
    all: &[Block],
    depth: usize,
    wanted: &[usize],
    meter: &Meter,
) -> Result<Array2<f64>> {
    let lin =
        |e: ndarray_linalg::error::LinalgError| DmftError::Invalid(format!("propagator: {e}"));
    let m_inv = m.inv().map_err(lin)?;
    meter.solve_done(0.43);
    // K M⁻ᵀ = (M⁻¹ K)ᵀ, K symmetric.
    let y = m_inv.dot(k_mat).reversed_axes();
    meter.solve_done(0.86);
    // Y J: J pairs A^ℓ(a, j) with B^{ℓ+1}(a, j), unit weight.
    let mut z = m;
    for layer in 1..depth {
        let a = find(all, Kind::A, layer);
        let b = find(all, Kind::B, layer + 1);
        let len = a.pairs.len();
        let ya = y.slice(s![.., a.offset..a.offset + len]);
        let yb = y.slice(s![.., b.offset..b.offset + len]);
        z.slice_mut(s![.., a.offset..a.offset + len])
            .zip_mut_with(&yb, |x, v| *x -= v);
        z.slice_mut(s![.., b.offset..b.offset + len])
            .zip_mut_with(&ya, |x, v| *x -= v);
    }
    let out = crate::linalg::solve_many(z, y.select(Axis(1), wanted).view())?;
    meter.solve_done(1.0);
    Ok(out)
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::propagator::two_layer_prediction_fluctuations;
    use crate::sampling::{normal_matrix, replica_rng};
    use crate::{Activation, SolverOptions};
    use ndarray::Array3;

    /// The validation data set of tests/common (P = 3, Q = 2, D = 16, seed 5).
    fn problem() -> Problem {
        let mut rng = replica_rng(5, 77);
        let x = normal_matrix(&mut rng, 5, 16);
        let beta = normal_matrix(&mut rng, 16, 1).column(0).to_owned();
        let y = x.slice(s![..3, ..]).dot(&beta) / 4.0;
        Problem::from_inputs(x.slice(s![..3, ..]), y, x.slice(s![3.., ..]), None).unwrap()
    }

    fn model(depth: usize, gamma0: f64) -> Model {
        Model {
            depth,
            activation: Activation::Linear,
            parameterization: Parameterization::Mup,
            gamma0,
            centered: gamma0 < 0.05,
            readout: Readout::Trained,
            residual: None,
        }
    }

    /// Plain and residual networks with a trained readout: a frozen one is refused, naming it.
    #[test]
    fn refuses_frozen_readout() {
        for residual in [None, Some(1.0)] {
            let m = Model {
                readout: Readout::Frozen,
                residual,
                ..model(2, 1.0)
            };
            let Err(e) = deep_linear_prediction_fluctuations(&problem(), &m, &schedule(2)) else {
                panic!("accepted {m:?}");
            };
            let e = e.to_string();
            assert!(
                e.contains("model.readout = frozen") && !e.contains('\n'),
                "{e}"
            );
        }
    }

    /// The closed-form size that guards the solve counts exactly the blocks it builds, and a
    /// problem above the limit is refused with the sizes named and nothing computed.
    #[test]
    fn order_parameters_count_the_blocks() {
        for (depth, n, steps) in [(1, 5, 8), (2, 4, 6), (3, 5, 8), (4, 2, 3)] {
            let layout = Layout {
                n,
                p: 1,
                nt: steps + 1,
                depth,
            };
            let built: usize = blocks(layout).iter().map(|b| b.pairs.len()).sum();
            assert_eq!(order_parameters(depth, n, steps), built as u128);
        }
        // The documented sizes: L = 2, P + Q = 5, T = 8 and 12.
        assert_eq!(order_parameters(2, 5, 8), 1935);
        assert_eq!(order_parameters(2, 5, 12), 3991);
        let progress = AtomicUsize::new(0);
        let Err(e) = deep_linear_prediction_fluctuations_with_progress(
            &problem(),
            &model(2, 1.0),
            &schedule(40),
            &|k| {
                progress.fetch_max(k, Ordering::Relaxed);
            },
        ) else {
            panic!("a problem above the limit was accepted");
        };
        let e = e.to_string();
        assert!(e.contains("limit 12000") && e.contains("steps = 40"), "{e}");
        assert_eq!(progress.into_inner(), 0);
    }

    /// The progress callback ends at its total, and never goes past it.
    #[test]
    fn progress_reaches_its_total() {
        let seen = std::sync::Mutex::new(Vec::new());
        deep_linear_prediction_fluctuations_with_progress(
            &problem(),
            &model(2, 1.0),
            &schedule(3),
            &|k| seen.lock().unwrap().push(k),
        )
        .unwrap();
        let seen = seen.into_inner().unwrap();
        assert_eq!(seen.last(), Some(&PROGRESS_TOTAL));
        assert!(seen.iter().all(|&k| k <= PROGRESS_TOTAL), "{seen:?}");
        assert!(seen.len() > 3, "{seen:?}");
    }

    fn schedule(steps: usize) -> Schedule {
        Schedule {
            eta: 0.5,
            steps,
            record_every: 1,
        }
    }

    /// An independent implementation (tests/oracles/deep_linear_full_coordinates.py, numpy)
    /// in full coordinates:
    /// every Φ entry, G, A and B per train point, no symmetry used, the same formula
    /// Σ = (M − K M⁻ᵀ J)⁻¹ K M⁻ᵀ solved densely. Rows: N·Var f at steps 3 and 1 (3 train,
    /// 2 test points). Agreement is limited by the oracle's finite-difference D_c (≈ 1e-9;
    /// observed 1.6e-9).
    #[test]
    fn matches_full_coordinate_implementation() {
        let cases: [(usize, f64, [f64; 5], [f64; 5]); 4] = [
            (
                2,
                1.5,
                [
                    0.016656404521179006,
                    0.12303239559154586,
                    0.05495340569498704,
                    0.4950589450880108,
                    0.4426103947934799,
                ],
                [
                    0.16565522631216556,
                    0.22436122307482054,
                    0.15233664319874524,
                    0.398342448285855,
                    0.3624772300712461,
                ],
            ),
            (
                3,
                0.5,
                [
                    0.017308941159391345,
                    0.2149872348888091,
                    0.1674749467651564,
                    3.433766379189968,
                    3.0758315279093984,
                ],
                [
                    0.42022021241390334,
                    0.9962246541921251,
                    0.8654606876051635,
                    3.324768636615342,
                    3.011421613535851,
                ],
            ),
            (
                2,
                0.01,
                [
                    0.01919860399357276,
                    0.09054407970506873,
                    0.025265897314966423,
                    0.096203180766679,
                    0.08500811688281829,
                ],
                [
                    0.07624333262720029,
                    0.08466011926429928,
                    0.029499619752641593,
                    0.03541105348995188,
                    0.029218723819212755,
                ],
            ),
            (
                1,
                1.5,
                [
                    0.04261961809479714,
                    0.114220271991566,
                    0.07920806307375987,
                    0.4022672092895871,
                    0.36237006821390455,
                ],
                [
                    0.20643494614552352,
                    0.19453767668044333,
                    0.17024833368591094,
                    0.3734872871253486,
                    0.34987249805722825,
                ],
            ),
        ];
        let problem = problem();
        for (depth, gamma0, at3, at1) in cases {
            let fl =
                deep_linear_prediction_fluctuations(&problem, &model(depth, gamma0), &schedule(3))
                    .unwrap();
            for (k, want) in [(3, at3), (1, at1)] {
                let got = fl
                    .var_f_train
                    .row(k)
                    .iter()
                    .chain(fl.var_f_test.row(k))
                    .copied()
                    .collect::<Vec<_>>();
                for (g, w) in got.iter().zip(want) {
                    assert!(
                        (g - w).abs() <= 1e-7 * w.abs().max(1e-2),
                        "L = {depth}, γ₀ = {gamma0}, step {k}: {g} vs {w}"
                    );
                }
            }
        }
    }

    /// √N f(0) ~ 𝒩(0, Φ^L(0,0)/γ₀²), and each branch adds an independent copy of the
    /// stream, Φ^L(0,0) = (1 + a²)^{L−1} Kˣ (plain chain: a = 0 in this formula). Any depth.
    #[test]
    fn initial_output_variance_is_the_input_kernel() {
        let problem = problem();
        for depth in 1..=3 {
            for beta in [None, Some(1.0), Some(2.5)] {
                let m = Model {
                    residual: beta,
                    ..model(depth, 0.7)
                };
                let fl = deep_linear_prediction_fluctuations(&problem, &m, &schedule(2)).unwrap();
                let n = problem.n_all();
                let a2 = beta.map_or(0.0, |b| b * b / depth as f64);
                let want = &problem.kx * (1.0 + a2).powi(depth as i32 - 1) / (0.7 * 0.7);
                let got = fl.sigma.slice(s![..n, ..n]);
                let err = (&got - &want)
                    .mapv(f64::abs)
                    .fold(0.0, |a: f64, &b| a.max(b));
                assert!(
                    err < 1e-8,
                    "L = {depth}, β = {beta:?}: Σ_f(0, 0) off by {err}"
                );
            }
        }
    }

    /// Depth 1 has no response order parameters, so Σ is the sandwich M⁻¹ K M⁻ᵀ; the two-layer
    /// propagator with φ = id on a 3-point Gauss–Hermite grid (exact for the quartic site
    /// averages of κ and the quadratic ones of D) computes it by a different route (forward
    /// tangents through the site march).
    #[test]
    fn depth_one_equals_the_two_layer_propagator() {
        let problem = problem();
        for gamma0 in [0.01, 1.5] {
            let m = model(1, gamma0);
            let sched = schedule(4);
            let ours = deep_linear_prediction_fluctuations(&problem, &m, &sched).unwrap();
            let opts = SolverOptions {
                sites: 0,
                quadrature: 3,
                seed: 0,
            };
            let theirs =
                two_layer_prediction_fluctuations(&problem, &m, &sched, &opts, &|_| {}).unwrap();
            let scale = theirs.sigma.iter().fold(0.0, |a: f64, &b| a.max(b.abs()));
            let err = (&ours.sigma - &theirs.sigma)
                .mapv(f64::abs)
                .fold(0.0, |a: f64, &b| a.max(b));
            assert!(
                err < 1e-7 * scale,
                "γ₀ = {gamma0}: Σ_f differs by {err} (scale {scale})"
            );
            // The NTK is Φ¹ + G¹Kˣ: its variance comes here from the observed kernels, there
            // from the site tangents of the NTK entries.
            let rel = |a: &Array3<f64>, b: &Array3<f64>| {
                let scale = b.iter().fold(0.0, |m: f64, &v| m.max(v.abs()));
                (a - b).iter().fold(0.0, |m: f64, &v| m.max(v.abs())) / scale
            };
            assert!(
                rel(&ours.var_ntk, &theirs.var_ntk) < 1e-7,
                "γ₀ = {gamma0}: var_ntk"
            );
            let top = (&ours.var_ntk_top - &theirs.var_ntk_top).mapv(f64::abs);
            assert!(
                top.iter().all(|&d| d < 1e-7 * theirs.var_ntk_top[0]),
                "γ₀ = {gamma0}: var_ntk_top {} vs {}",
                ours.var_ntk_top,
                theirs.var_ntk_top
            );
            assert!(
                (&ours.ntk_top - &theirs.ntk_top)
                    .iter()
                    .all(|d| d.abs() < 1e-9)
            );
        }
    }

    /// At initialization every kernel of a plain linear chain is a Wishart average: Φ^ℓ = Kˣ
    /// and G^ℓ = 1 with N·Var Φ^ℓ_ab = ℓ (Kˣ_aa Kˣ_bb + (Kˣ_ab)²) (each layer adds an
    /// independent Wishart fluctuation and passes the previous one on unchanged) and
    /// N·Var G^ℓ = 2 (L − ℓ + 1) (the readout's |w|²/N, then one more matrix per layer).
    #[test]
    fn kernel_variances_at_initialization_are_wishart() {
        let problem = problem();
        let kx = &problem.kx;
        let n = kx.nrows();
        for (depth, gamma0) in [(2, 1.5), (3, 0.5)] {
            let fl =
                deep_linear_prediction_fluctuations(&problem, &model(depth, gamma0), &schedule(2))
                    .unwrap();
            let kv = &fl.kernels;
            assert_eq!(kv.depth(), depth);
            for layer in 1..=depth {
                for a in 0..n {
                    for b in 0..n {
                        let want = layer as f64 * (kx[[a, a]] * kx[[b, b]] + kx[[a, b]].powi(2));
                        let got = kv.var_phi_kernel[layer - 1][[0, a, b]];
                        assert!(
                            (got - want).abs() < 1e-10 * want,
                            "L={depth} Φ^{layer}_{a}{b}: {got} vs {want}"
                        );
                        assert!((kv.phi_kernel[layer - 1][[0, a, b]] - kx[[a, b]]).abs() < 1e-12);
                    }
                }
                let want = 2.0 * (depth - layer + 1) as f64;
                let got = kv.var_grad_kernel[layer - 1][[0, 0, 0]];
                assert!(
                    (got - want).abs() < 1e-10 * want,
                    "L={depth} G^{layer}: {got} vs {want}"
                );
                assert!((kv.grad_kernel[layer - 1][[0, 1, 2]] - 1.0).abs() < 1e-12);
            }
            // The kernels move once training starts.
            assert!((kv.phi_kernel[depth - 1][[2, 0, 0]] - kx[[0, 0]]).abs() > 1e-3);
        }
    }

    /// Without branches a residual network is the two-layer network: at L = 1 (no hidden
    /// weights) and at a = 0 (every layer a copy of h¹, the hidden weights inert), so Σ_f must
    /// be the depth-1 propagator's, itself checked against the two-layer tangent route above.
    /// At a = 0 the response order parameters are exactly zero with zero covariance, which
    /// also checks that J does not disturb the rest.
    #[test]
    fn residual_without_branches_is_the_two_layer_propagator() {
        let problem = problem();
        let sched = schedule(4);
        for gamma0 in [0.01, 1.5] {
            let two_layer =
                deep_linear_prediction_fluctuations(&problem, &model(1, gamma0), &sched).unwrap();
            let scale = two_layer
                .sigma
                .iter()
                .fold(0.0, |a: f64, &b| a.max(b.abs()));
            let one = Model {
                residual: Some(0.7),
                ..model(1, gamma0)
            };
            let mut cases = vec![(
                "L = 1".to_string(),
                deep_linear_prediction_fluctuations(&problem, &one, &sched).unwrap(),
            )];
            for depth in [2, 3] {
                let m = Model {
                    residual: Some(1.0),
                    ..model(depth, gamma0)
                };
                let fl = propagate(&problem, &m, &sched, (1.0, 0.0), &|_| {}).unwrap();
                cases.push((format!("L = {depth}, a = 0"), fl));
            }
            for (label, fl) in cases {
                let err = (&fl.sigma - &two_layer.sigma)
                    .mapv(f64::abs)
                    .fold(0.0, |a: f64, &b| a.max(b));
                // The L = 2, 3 Hessians differ from the depth-1 one, so the two solves agree
                // to rounding amplified by their conditioning, which grows like 1/γ₀² towards
                // the lazy limit: observed 2e-16 of the scale at γ₀ = 1.5 and 1.4e-10, 2.3e-10
                // at γ₀ = 0.01 (OpenBLAS's AVX-512 kernels). A wrong J or coupling is O(1).
                let tolerance = 1e-13 * scale / gamma0.powi(2).min(1.0);
                assert!(
                    err < tolerance,
                    "γ₀ = {gamma0}, {label}: Σ_f differs by {err} (scale {scale})"
                );
            }
        }
    }

    fn residual_model(depth: usize, gamma0: f64, beta: f64) -> Model {
        Model {
            residual: Some(beta),
            ..model(depth, gamma0)
        }
    }

    /// Σ_m A_m Cov(source m) B_mᵀ over the march's coefficients: a second moment of two
    /// fields computed from residual.rs's own bookkeeping.
    fn march_covariance(
        sol: &ResidualSolution,
        inp: &SiteInputs,
        a: &residual::Coefficients,
        b: &residual::Coefficients,
        p: usize,
    ) -> Array2<f64> {
        let depth = sol.layers.len();
        let mut out = Array2::<f64>::zeros((a.on_u[0].nrows(), b.on_u[0].nrows()));
        for m in 0..depth {
            out += &a.on_u[m].dot(&inp.phi[m]).dot(&b.on_u[m].t());
            // The march keeps r per (time, train point) with a constant block covariance.
            let nt = inp.grad[m].nrows();
            let mut cov = Array2::<f64>::zeros((nt * p, nt * p));
            for k in 0..nt * p {
                for j in 0..nt * p {
                    cov[[k, j]] = inp.grad[m][[k / p, j / p]];
                }
            }
            out += &a.on_r[m].dot(&cov).dot(&b.on_r[m].t());
        }
        out
    }

    fn max_abs(x: &Array2<f64>) -> f64 {
        x.iter().fold(0.0, |a: f64, &b| a.max(b.abs()))
    }

    /// The joint site's moments Ω at the saddle reproduce the march of residual.rs, block by
    /// block for every pair of layers: ⟨h^ℓ h^m⟩, ⟨h^ℓ g^m⟩, ⟨g^ℓ g^m⟩ from the march's
    /// coefficients, ⟨x μ̂^m⟩ = ∂x/∂u^m and ⟨x ρ̂'^m⟩ = Σ_α ∂x/∂r^m_α, and f = y − Δ on train
    /// points. A residual and a plain network, to 1e-10.
    #[test]
    fn joint_moments_reproduce_the_march() {
        let problem = problem();
        for (m, branch) in [
            (residual_model(3, 1.5, 1.0), None),
            (model(3, 0.5), None),
            (residual_model(2, 1.0, 2.0), Some((1.0, 1.3))),
        ] {
            let (skip, a) = branch.unwrap_or(m.branch());
            let saddle = Saddle::new(&problem, &m, &schedule(4), skip, a).unwrap();
            let Layout { n, p, nt, depth } = saddle.ctx.layout;
            let l = saddle.ctx.layout;
            let om = saddle.ctx.site(&saddle.inputs).unwrap().omega;
            let sol = &saddle.solution;
            let rows: Vec<usize> = (0..nt).map(|k| k * p).collect();
            let field = |layer: usize, fwd: bool| {
                let x = &sol.layers[layer - 1];
                if fwd { &x.h } else { &x.g }
            };
            let span = |layer: usize, fwd: bool| {
                if fwd {
                    (l.h(layer), nt * n)
                } else {
                    (l.g(layer), nt)
                }
            };
            let mut worst: f64 = 0.0;
            for la in 1..=depth {
                for lb in 1..=depth {
                    for (fa, fb) in [(true, true), (true, false), (false, false)] {
                        let mut want =
                            march_covariance(sol, &saddle.inputs, field(la, fa), field(lb, fb), p);
                        if !fa {
                            want = want.select(Axis(0), &rows);
                        }
                        if !fb {
                            want = want.select(Axis(1), &rows);
                        }
                        let ((ra, na), (rb, nb)) = (span(la, fa), span(lb, fb));
                        let got = om.slice(s![ra..ra + na, rb..rb + nb]).to_owned();
                        let err = max_abs(&(&got - &want)) / max_abs(&want).max(1e-3);
                        assert!(err < 1e-10, "{la} {fa} / {lb} {fb}: {err:e}");
                        worst = worst.max(err);
                    }
                    for fa in [true, false] {
                        let (ra, na) = span(la, fa);
                        let c = field(la, fa);
                        let pick = |x: &Array2<f64>| {
                            if fa {
                                x.clone()
                            } else {
                                x.select(Axis(0), &rows)
                            }
                        };
                        if lb >= 2 {
                            let want = pick(&c.on_u[lb - 1]);
                            let mu = l.mu(lb);
                            let got = om.slice(s![ra..ra + na, mu..mu + nt * n]).to_owned();
                            let err = max_abs(&(&got - &want));
                            assert!(err < 1e-10, "⟨x μ̂^{lb}⟩: {err:e}");
                            worst = worst.max(err);
                        }
                        if lb < depth {
                            let r = &c.on_r[lb - 1];
                            let mut summed = Array2::<f64>::zeros((r.nrows(), nt));
                            for j in 0..nt {
                                summed
                                    .column_mut(j)
                                    .assign(&r.slice(s![.., j * p..(j + 1) * p]).sum_axis(Axis(1)));
                            }
                            let want = pick(&summed);
                            let rho = l.rho(lb);
                            let got = om.slice(s![ra..ra + na, rho..rho + nt]).to_owned();
                            let err = max_abs(&(&got - &want));
                            assert!(err < 1e-10, "⟨x ρ̂'^{lb}⟩: {err:e}");
                            worst = worst.max(err);
                        }
                    }
                }
            }
            // f = γ₀⁻¹⟨g^L(k) h^L(k)⟩ = y − Δ on train points.
            for k in 0..nt {
                for al in 0..p {
                    let f = om[[l.g(depth) + k, l.h(depth) + k * n + al]] / m.gamma0;
                    let want = problem.y[al] - sol.delta[[k, al]];
                    assert!((f - want).abs() < 1e-10, "f({k}, {al}): {f} vs {want}");
                }
            }
            // Not vacuous: the skip correlates the layers of a neuron.
            let cross = max_abs(
                &om.slice(s![l.h(1)..l.h(1) + nt * n, l.h(2)..l.h(2) + nt * n])
                    .to_owned(),
            );
            assert_eq!(cross > 0.1, skip != 0.0, "⟨h¹h²⟩ = {cross}");
            println!("{m:?}: worst {worst:.1e}");
        }
    }

    /// The inputs with one causal order parameter moved by `eps` where the site reads it, as an
    /// independent route to D_c: Φ^ℓ and G^ℓ entries in both symmetric positions, f through
    /// Δ = y − f_train (+ f(0) when centered).
    fn moved(
        inp: &SiteInputs,
        ctx: &Context,
        y: &Array1<f64>,
        block: &Block,
        pair: (usize, usize),
        eps: f64,
    ) -> SiteInputs {
        let l = ctx.layout;
        let mut x = inp.clone();
        match block.kind {
            Kind::Phi => {
                let h = l.h(block.layer);
                let (a, b) = (pair.0 - h, pair.1 - h);
                let phi = &mut x.phi[block.layer];
                phi[[a, b]] += eps;
                if a != b {
                    phi[[b, a]] += eps;
                }
            }
            Kind::Grad => {
                let g = l.g(block.layer);
                let (k, j) = (pair.0 - g, pair.1 - g);
                let grad = &mut x.grad[block.layer - 2];
                grad[[k, j]] += eps;
                if k != j {
                    grad[[j, k]] += eps;
                }
            }
            Kind::F => {
                let k = pair.0 - l.g(l.depth);
                let mu = pair.1 - l.h(l.depth) - k * l.n;
                // f on train points at the saddle, then Δ recomputed from the moved f.
                let mut f = &y.view().insert_axis(Axis(0)) - &inp.delta;
                if mu < l.p {
                    f[[k, mu]] += eps;
                }
                for j in 0..l.nt {
                    for al in 0..l.p {
                        let centering = if ctx.centered { f[[0, al]] } else { 0.0 };
                        x.delta[[j, al]] = y[al] - f[[j, al]] + centering;
                    }
                }
            }
            Kind::A | Kind::B | Kind::Observed => unreachable!(),
        }
        x
    }

    /// The exact D_c (rank-one changes of the resolvent) against central differences of the
    /// whole joint solve, for every causal kind, residual and centered lazy networks. Step 1e-5:
    /// Ω is rational in the inputs with O(1) coefficients, truncation ≈ 1e-10, round-off
    /// ≈ 1e-11; tolerance 1e-7 of the column's scale.
    #[test]
    fn exact_sensitivities_match_finite_differences() {
        let problem = problem();
        let eps = 1e-5;
        let mut checked = 0;
        for m in [
            residual_model(3, 1.5, 1.0),
            residual_model(2, 0.01, 1.5),
            model(3, 0.5),
        ] {
            let (skip, a) = m.branch();
            let m = Model {
                centered: m.gamma0 < 0.05,
                ..m
            };
            let saddle = Saddle::new(&problem, &m, &schedule(3), skip, a).unwrap();
            let ctx = &saddle.ctx;
            let pairs = weighted_pairs(&saddle.blocks, ctx.gamma0);
            let site = ctx.site(&saddle.inputs).unwrap();
            for block in saddle
                .blocks
                .iter()
                .filter(|b| matches!(b.kind, Kind::Phi | Kind::Grad | Kind::F))
            {
                // A spread of entries: first, last and some in between.
                let len = block.pairs.len();
                for i in [0, 1, len / 3, len / 2, len - 2, len - 1, 7 % len] {
                    let pair = block.pairs[i];
                    let exact = Array1::from(ctx.sensitivity(
                        &site,
                        &ctx.change(&saddle.inputs, block, pair),
                        &pairs,
                    ));
                    let at = |e: f64| {
                        means(
                            &ctx.site(&moved(&saddle.inputs, ctx, &problem.y, block, pair, e))
                                .unwrap()
                                .omega,
                            &pairs,
                        )
                    };
                    let fd = (at(eps) - at(-eps)) / (2.0 * eps);
                    let scale = fd.iter().fold(1e-3, |a: f64, &b| a.max(b.abs()));
                    let err = (&exact - &fd).iter().fold(0.0, |a: f64, &b| a.max(b.abs()));
                    assert!(
                        err < 1e-7 * scale,
                        "{:?}^{} pair {pair:?}: exact off central differences by {err} (scale {scale})",
                        block.kind,
                        block.layer
                    );
                    checked += usize::from(scale > 2e-3);
                }
            }
        }
        // Not vacuous: most columns move some average visibly (the lazy case barely does).
        assert!(
            checked > 40,
            "only {checked} columns with a visible sensitivity"
        );
    }

    /// The averages q at the site's moments.
    fn means(om: &Array2<f64>, pairs: &[(usize, usize, f64)]) -> Array1<f64> {
        pairs.iter().map(|&(a, b, w)| w * om[[a, b]]).collect()
    }

    /// J's sign and weight, through the joint site: the site covariance of all averages with
    /// A^ℓ(a, j) must be their open-loop response to a drift ε h^ℓ(a) added to z^ℓ(j) (the
    /// source r^ℓ that W^ℓ(0)ᵀ produces, before the branch multiplier), and with
    /// B^{ℓ+1}(a, j) their response to ε g^{ℓ+1}(j) added to u^{ℓ+1}(a), for causal and
    /// anti-causal pairs, in a residual network.
    #[test]
    fn response_coupling_is_the_open_loop_response() {
        let problem = problem();
        for m in [
            residual_model(3, 1.5, 1.0),
            residual_model(2, 0.5, 2.0),
            model(3, 1.5),
        ] {
            let (skip, a) = m.branch();
            let saddle = Saddle::new(&problem, &m, &schedule(3), skip, a).unwrap();
            let ctx = &saddle.ctx;
            let Layout { n, depth, .. } = ctx.layout;
            let pairs = weighted_pairs(&saddle.blocks, ctx.gamma0);
            let om = ctx.site(&saddle.inputs).unwrap().omega;
            let cov = site_covariance(&om, &pairs);
            let eps = 1e-6;
            for layer in 1..depth {
                for kind in [Kind::A, Kind::B] {
                    let owner = if kind == Kind::A { layer } else { layer + 1 };
                    let blk = find(&saddle.blocks, kind, owner);
                    // (time of a, point of a, time j): before, at and after j.
                    for (ka, mu, j) in [(2, 1, 1), (1, 4, 1), (0, 0, 2), (3, 2, 0)] {
                        let at = ka * n + mu;
                        let shifted = |e: f64| {
                            let mut x = saddle.inputs.clone();
                            match kind {
                                Kind::A => x.response_grad[layer - 1][[j, at]] += e,
                                _ => x.response_phi[layer][[at, j]] += e,
                            }
                            means(&ctx.site(&x).unwrap().omega, &pairs)
                        };
                        let response = (shifted(eps) - shifted(-eps)) / (2.0 * eps);
                        let col = cov.column(blk.offset + at * ctx.layout.nt + j);
                        let scale = col.iter().fold(1e-3, |m: f64, &v| m.max(v.abs()));
                        let err = (&response - &col)
                            .mapv(f64::abs)
                            .fold(0.0, |m: f64, &v| m.max(v));
                        assert!(
                            err < 1e-6 * scale,
                            "{m:?} {kind:?}^{owner} ({at}, {j}): open-loop response off the covariance by {err} (scale {scale})"
                        );
                    }
                }
            }
        }
    }
}
