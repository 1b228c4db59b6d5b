//! Residual deep linear networks: layer 1 from the input, then h^{ℓ+1} = s·h^ℓ + a·W^ℓh^ℓ/√N
//! for ℓ = 1..L−1 with (s, a) = (1, β/√L) (docs/dmft.md, "Residual deep linear networks").
//!
//! The skip ties the layers of one neuron together: the single site is a joint process over
//! all layers, linear in the 2L independent Gaussian sources u^m ~ GP(0, Φ^{m−1}) (forward,
//! m = 1..L) and r^m ~ GP(0, G^{m+1}) (backward). Every field is stored as its coefficients
//! on every source, so a layer carries L² blocks where the plain chain carries one per
//! source of its own layer. With (s, a) = (0, 1) the same march is the plain chain (the
//! cross-layer coefficients stay zero), which the tests use as an oracle.
//!
//! Site equations (0 ≤ j < k, train columns of the sums; c = ηγ₀/P):
//!   h¹(k) = u¹ + c Σ_j Kˣ Δ(j) g¹(j)
//!   h^ℓ(k) = s h^{ℓ−1}(k) + a (u^ℓ(k) + Σ_j C^ℓ(k,j) g^ℓ(j)),  C^ℓ = R_φ^{ℓ−1} + a c [Φ^{ℓ−1}Δ]_<
//!   z^L(k) = r^L + c Σ_j Σ_α Δ_α(j) h^L_α(j),  g^L = z^L
//!   z^ℓ(k) = r^ℓ(k) + Σ_j E^ℓ(k,j) h^ℓ(j),  E^ℓ = R_g^{ℓ+1} + a c [G^{ℓ+1}Δ]_<,
//!   g^ℓ = s g^{ℓ+1} + a z^ℓ
//! with R_φ^ℓ = ∂h^ℓ/∂r^ℓ and R_g^{ℓ+1} = ∂g^{ℓ+1}/∂u^{ℓ+1}, read off the coefficients.
//! Cost O(L² (P+Q)³ T³) time and O(L² ((P+Q) T)²) memory.

use super::{MEMORY_BUDGET_BYTES, Setup, scale_columns, write_symmetric_row};
use crate::record::Recorder;
use crate::{DmftError, Model, Problem, Progress, Result, Schedule, SolverKind, Trajectory};
use ndarray::{Array1, Array2, ArrayView2, s};

/// A field's coefficients on every source: rows over (time, point), time-major.
pub struct Coefficients {
    /// ∂field/∂u^m at index m−1, each rows × (NT·n).
    pub on_u: Vec<Array2<f64>>,
    /// ∂field/∂r^m at index m−1, each rows × (NT·p).
    pub on_r: Vec<Array2<f64>>,
}

/// One layer of the residual stream: its kernels and the coefficients of h^ℓ (all points)
/// and g^ℓ (train points) on the 2L sources. A propagator reads the operators from here:
/// C^ℓ and E^ℓ are built from [`StreamLayer::response_phi`], [`StreamLayer::response_grad`]
/// and the kernels exactly as in [`ResidualSetup::forward_row`] / `backward_row`.
pub struct StreamLayer {
    /// Φ^ℓ over all points (NT·n square).
    pub phi_kernel: Array2<f64>,
    /// G^ℓ = ⟨g^ℓ g^ℓᵀ⟩ over train points (NT·p square).
    pub grad_kernel: Array2<f64>,
    pub h: Coefficients,
    pub g: Coefficients,
}

impl StreamLayer {
    /// R_φ^ℓ = ∂h^ℓ/∂r^ℓ for this layer ℓ (1-based): (NT·n) × (NT·p).
    pub fn response_phi(&self, layer: usize) -> ArrayView2<'_, f64> {
        self.h.on_r[layer - 1].view()
    }

    /// R_g^ℓ = ∂g^ℓ/∂u^ℓ for this layer ℓ (1-based): (NT·p) × (NT·n), test columns zero.
    pub fn response_grad(&self, layer: usize) -> ArrayView2<'_, f64> {
        self.g.on_u[layer - 1].view()
    }
}

/// Full two-time solution of the residual stream.
pub struct ResidualSolution {
    pub trajectory: Trajectory,
    /// Layers 1..=L.
    pub layers: Vec<StreamLayer>,
    /// Δ(k) for k = 0..=steps.
    pub delta: Array2<f64>,
}

pub fn memory_bytes(problem: &Problem, model: &Model, schedule: &Schedule) -> f64 {
    let nt = (schedule.steps + 1) as f64;
    let (n, p) = (problem.n_all() as f64, problem.n_train() as f64);
    let l = model.depth as f64;
    let per_layer = l * (n + p) * (n + p) + n * n + p * p;
    8.0 * nt * nt * (l * per_layer + n * n + p * p)
}

pub fn solve(
    problem: &Problem,
    model: &Model,
    schedule: &Schedule,
    progress: Progress,
) -> Result<Trajectory> {
    Ok(solve_full(problem, model, schedule, progress)?.trajectory)
}

/// The march of theory.md 2b over the joint site with (s, a) from the model.
pub fn solve_full(
    problem: &Problem,
    model: &Model,
    schedule: &Schedule,
    progress: Progress,
) -> Result<ResidualSolution> {
    let setup = ResidualSetup::new(problem, model, schedule)?;
    march(problem, &setup, model.gamma0, schedule, progress)
}

/// Per step: forward up the layers, backward down, then f(k) and Δ(k).
pub fn march(
    problem: &Problem,
    setup: &ResidualSetup,
    gamma0: f64,
    schedule: &Schedule,
    progress: Progress,
) -> Result<ResidualSolution> {
    let depth = setup.depth;
    let mut layers: Vec<StreamLayer> = (0..depth).map(|_| setup.layer()).collect();
    let mut delta = Array2::<f64>::zeros((setup.base.nt, setup.base.p));
    let mut rec = Recorder::new(problem, schedule, false);
    for k in 0..setup.base.nt {
        for l in 0..depth {
            setup.forward_row(k, &delta, &mut layers, l);
        }
        for l in (0..depth).rev() {
            setup.backward_row(k, &delta, &mut layers, l);
        }
        let f = setup.output_row(k, &layers, gamma0);
        let d = &problem.y - &f.slice(s![..setup.base.p]);
        delta.row_mut(k).assign(&d);
        rec.observe(k, f.view(), d.view(), || {
            setup.equal_time_ntk(problem, &layers, k)
        })?;
        if k > 0 {
            progress(k);
        }
    }
    let trajectory = rec.finish(SolverKind::DeepLinear, method(setup))?;
    Ok(ResidualSolution {
        trajectory,
        layers,
        delta,
    })
}

/// The trajectory's method string (the reference and generated solvers share it).
pub fn method(setup: &ResidualSetup) -> String {
    format!(
        "closed form, joint residual stream (s = {}, a = {:.6})",
        setup.skip, setup.branch
    )
}

/// The plain march's fixed inputs plus the skip s and branch multiplier a.
pub struct ResidualSetup {
    pub base: Setup,
    pub depth: usize,
    pub skip: f64,
    pub branch: f64,
}

impl ResidualSetup {
    /// Checks the memory budget; (s, a) from [`Model::branch`].
    pub fn new(problem: &Problem, model: &Model, schedule: &Schedule) -> Result<Self> {
        let need = memory_bytes(problem, model, schedule);
        if need > MEMORY_BUDGET_BYTES {
            return Err(DmftError::Invalid(format!(
                "the residual deep-linear solver needs ≈{:.1} GiB for P+Q = {}, steps = {}, depth = {} (limit {:.0} GiB); \
                 reduce train.steps or the number of points",
                need / (1u64 << 30) as f64,
                problem.n_all(),
                schedule.steps,
                model.depth,
                MEMORY_BUDGET_BYTES / (1u64 << 30) as f64
            )));
        }
        let (skip, branch) = model.branch();
        Ok(Self::with_branch(problem, model, schedule, skip, branch))
    }

    /// Any (s, a), unchecked: (0, 1) is the plain chain, a = 0 freezes every layer at h¹.
    pub fn with_branch(
        problem: &Problem,
        model: &Model,
        schedule: &Schedule,
        skip: f64,
        branch: f64,
    ) -> Self {
        let (n, p) = (problem.n_all(), problem.n_train());
        let nt = schedule.steps + 1;
        ResidualSetup {
            base: Setup {
                n,
                p,
                nt,
                c: schedule.eta * model.gamma0 / p as f64,
                input_kernel: super::tile(problem.kx.view(), nt),
                readout_kernel: Array2::<f64>::ones((nt * p, nt * p)),
            },
            depth: model.depth,
            skip,
            branch,
        }
    }

    /// A layer with every row zero.
    pub fn layer(&self) -> StreamLayer {
        let (n, p, nt, l) = (self.base.n, self.base.p, self.base.nt, self.depth);
        let coefficients = |rows: usize| Coefficients {
            on_u: (0..l).map(|_| Array2::zeros((rows, nt * n))).collect(),
            on_r: (0..l).map(|_| Array2::zeros((rows, nt * p))).collect(),
        };
        StreamLayer {
            phi_kernel: Array2::zeros((nt * n, nt * n)),
            grad_kernel: Array2::zeros((nt * p, nt * p)),
            h: coefficients(nt * n),
            g: coefficients(nt * p),
        }
    }

    /// Covariance of u^{m+1}: Φ⁰ = Kˣ tiled, else Φ^m.
    fn cov_u<'a>(&'a self, layers: &'a [StreamLayer], m: usize) -> ArrayView2<'a, f64> {
        match m {
            0 => self.base.input_kernel.view(),
            _ => layers[m - 1].phi_kernel.view(),
        }
    }

    /// Covariance of r^{m+1}: G^{m+2}, the all-ones readout kernel for m + 1 = L.
    fn cov_r<'a>(&'a self, layers: &'a [StreamLayer], m: usize) -> ArrayView2<'a, f64> {
        match layers.get(m + 1) {
            Some(above) => above.grad_kernel.view(),
            None => self.base.readout_kernel.view(),
        }
    }

    /// Σ_m A_m Cov(source m) B_mᵀ over both source kinds, with the u columns cut at `wu`
    /// and the r columns at `wr` (coefficients beyond are zero by causality).
    #[allow(clippy::too_many_arguments)]
    fn covariance(
        &self,
        layers: &[StreamLayer],
        a: &Coefficients,
        a_rows: std::ops::Range<usize>,
        b: &Coefficients,
        b_rows: std::ops::Range<usize>,
        wu: usize,
        wr: usize,
    ) -> Array2<f64> {
        let mut out = Array2::<f64>::zeros((a_rows.len(), b_rows.len()));
        for m in 0..self.depth {
            let au = a.on_u[m].slice(s![a_rows.clone(), ..wu]);
            let bu = b.on_u[m].slice(s![b_rows.clone(), ..wu]);
            out += &au
                .dot(&self.cov_u(layers, m).slice(s![..wu, ..wu]).t())
                .dot(&bu.t());
            if wr > 0 {
                let ar = a.on_r[m].slice(s![a_rows.clone(), ..wr]);
                let br = b.on_r[m].slice(s![b_rows.clone(), ..wr]);
                out += &ar
                    .dot(&self.cov_r(layers, m).slice(s![..wr, ..wr]).t())
                    .dot(&br.t());
            }
        }
        out
    }

    /// Block row k of h^ℓ's coefficients (ℓ = l + 1) and of Φ^ℓ.
    pub fn forward_row(&self, k: usize, delta: &Array2<f64>, layers: &mut [StreamLayer], l: usize) {
        let (n, p, c) = (self.base.n, self.base.p, self.base.c);
        let rn = k * n..(k + 1) * n;
        let (skip, a) = if l == 0 {
            (0.0, 1.0)
        } else {
            (self.skip, self.branch)
        };
        let (below, rest) = layers.split_at_mut(l);
        let layer = &mut rest[0];
        let below = below.last();
        let prev_phi = below.map_or(self.base.input_kernel.view(), |b| b.phi_kernel.view());
        // C^ℓ(k, j) = R_φ^{ℓ−1}(k, j) + a c Φ^{ℓ−1}(k, j)[·, train] diag Δ(j), j < k.
        let mut c_row = Array2::<f64>::zeros((n, k * p));
        for j in 0..k {
            let mut blk = c_row.slice_mut(s![.., j * p..(j + 1) * p]);
            if let Some(b) = below {
                blk.assign(&b.h.on_r[l - 1].slice(s![rn.clone(), j * p..(j + 1) * p]));
            }
            let phi_kj = prev_phi.slice(s![rn.clone(), j * n..j * n + p]);
            blk += &scale_columns(phi_kj, delta.row(j).to_owned(), a * c);
        }
        let (wu, wr) = ((k + 1) * n, k * p);
        for m in 0..self.depth {
            let mut hu = c_row.dot(&layer.g.on_u[m].slice(s![..k * p, ..wu])) * a;
            let mut hr = c_row.dot(&layer.g.on_r[m].slice(s![..k * p, ..wr])) * a;
            if let Some(b) = below.filter(|_| skip != 0.0) {
                hu.scaled_add(skip, &b.h.on_u[m].slice(s![rn.clone(), ..wu]));
                hr.scaled_add(skip, &b.h.on_r[m].slice(s![rn.clone(), ..wr]));
            }
            if m == l {
                let mut eq = hu.slice_mut(s![.., k * n..wu]);
                eq.diag_mut().mapv_inplace(|v| v + a);
            }
            layer.h.on_u[m].slice_mut(s![rn.clone(), ..wu]).assign(&hu);
            layer.h.on_r[m].slice_mut(s![rn.clone(), ..wr]).assign(&hr);
        }
        let row = {
            let all: &[StreamLayer] = layers;
            self.covariance(all, &all[l].h, rn.clone(), &all[l].h, 0..wu, wu, wr)
        };
        write_symmetric_row(&mut layers[l].phi_kernel, k, n, row.view());
    }

    /// Block row k of g^ℓ's coefficients (ℓ = l + 1) and of G^ℓ, after the forward rows.
    pub fn backward_row(
        &self,
        k: usize,
        delta: &Array2<f64>,
        layers: &mut [StreamLayer],
        l: usize,
    ) {
        let (n, p, c) = (self.base.n, self.base.p, self.base.c);
        let rp = k * p..(k + 1) * p;
        let top = l + 1 == self.depth;
        let (skip, a) = if top {
            (0.0, 1.0)
        } else {
            (self.skip, self.branch)
        };
        let (lower, upper) = layers.split_at_mut(l + 1);
        let layer = &mut lower[l];
        let above = upper.first();
        let above_grad = above.map_or(self.base.readout_kernel.view(), |a| a.grad_kernel.view());
        // E^ℓ(k, j) = R_g^{ℓ+1}(k, j) + a c G^{ℓ+1}(k, j) diag Δ(j) on train columns, j < k.
        let mut e_row = Array2::<f64>::zeros((p, k * n));
        for j in 0..k {
            let mut blk = e_row.slice_mut(s![.., j * n..j * n + p]);
            if let Some(up) = above {
                blk.assign(&up.g.on_u[l + 1].slice(s![rp.clone(), j * n..j * n + p]));
            }
            let g_kj = above_grad.slice(s![rp.clone(), j * p..(j + 1) * p]);
            blk += &scale_columns(g_kj, delta.row(j).to_owned(), a * c);
        }
        let (wu, wr) = ((k + 1) * n, (k + 1) * p);
        for m in 0..self.depth {
            // z^ℓ(k) = r^ℓ(k) + E^ℓ(k, <k) h^ℓ(<k); g^ℓ(k) = s g^{ℓ+1}(k) + a z^ℓ(k).
            let mut gu = e_row.dot(&layer.h.on_u[m].slice(s![..k * n, ..wu])) * a;
            let mut gr = e_row.dot(&layer.h.on_r[m].slice(s![..k * n, ..wr])) * a;
            if let Some(up) = above.filter(|_| skip != 0.0) {
                gu.scaled_add(skip, &up.g.on_u[m].slice(s![rp.clone(), ..wu]));
                gr.scaled_add(skip, &up.g.on_r[m].slice(s![rp.clone(), ..wr]));
            }
            if m == l {
                let mut eq = gr.slice_mut(s![.., k * p..wr]);
                eq.diag_mut().mapv_inplace(|v| v + a);
            }
            layer.g.on_u[m].slice_mut(s![rp.clone(), ..wu]).assign(&gu);
            layer.g.on_r[m].slice_mut(s![rp.clone(), ..wr]).assign(&gr);
        }
        let row = {
            let all: &[StreamLayer] = layers;
            self.covariance(all, &all[l].g, rp.clone(), &all[l].g, 0..wr, wu, wr)
        };
        write_symmetric_row(&mut layers[l].grad_kernel, k, p, row.view());
    }

    /// f(k) = γ₀⁻¹ ⟨z^L(k) h^L(k)⟩ on all points, with the readout row of z^L = g^L
    /// (identical for every point).
    pub fn output_row(&self, k: usize, layers: &[StreamLayer], gamma0: f64) -> Array1<f64> {
        let (n, p) = (self.base.n, self.base.p);
        let top = &layers[self.depth - 1];
        let zrow = k * p..k * p + 1;
        let rn = k * n..(k + 1) * n;
        let zh = self.covariance(layers, &top.g, zrow, &top.h, rn, (k + 1) * n, (k + 1) * p);
        zh.row(0).mapv(|v| v / gamma0)
    }

    /// K(k) = G¹ ⊙ Kˣ + a² Σ_{ℓ=1}^{L−1} G^{ℓ+1} ⊙ Φ^ℓ + Φ^L at (k, k) on train points: the
    /// hidden weights' gradients carry the branch multiplier.
    pub fn equal_time_ntk(
        &self,
        problem: &Problem,
        layers: &[StreamLayer],
        k: usize,
    ) -> Array2<f64> {
        let (n, p) = (self.base.n, self.base.p);
        let rn = k * n..k * n + p;
        let rp = k * p..(k + 1) * p;
        let a2 = self.branch * self.branch;
        let mut ntk = &problem.kx.slice(s![..p, ..p])
            * &layers[0].grad_kernel.slice(s![rp.clone(), rp.clone()]);
        for (l, layer) in layers.iter().enumerate() {
            let phi = layer.phi_kernel.slice(s![rn.clone(), rn.clone()]);
            match layers.get(l + 1) {
                Some(above) => ntk.scaled_add(
                    a2,
                    &(&phi * &above.grad_kernel.slice(s![rp.clone(), rp.clone()])),
                ),
                None => ntk += &phi,
            }
        }
        ntk
    }
}
