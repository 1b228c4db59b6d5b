//! Finite-width prediction fluctuations of deep linear μP networks (φ = id, any depth L and
//! γ₀), with no sampling, from the Hessian of the full DMFT action (docs/fluctuations.md).
//!
//! Order parameters q = (q_c, q_r). Causal ones q_c: Φ^ℓ, G^ℓ and the outputs f; each layer's
//! site process takes them as source covariances and drives. Response ones q_r: for the
//! weights W^ℓ between layers ℓ and ℓ+1, A^ℓ(a, j) = ⟨h^ℓ_a ρ̂^ℓ_j⟩ and
//! B^{ℓ+1}(a, j) = ⟨μ̂^{ℓ+1}_a z^{ℓ+1}_j⟩ for every index pair, causal or not (ρ̂, μ̂: the
//! response fields of the sources r, u). Averaging W^ℓ(0) couples them as N Σ A^ℓ·B^{ℓ+1},
//! the matrix J below. With K the site covariance of all averages (block diagonal by layer,
//! Isserlis over the Gaussian site vector v = (h, z, ρ̂, μ̂)) and M = I − D_c (D_c the
//! open-loop sensitivity of each layer's averages to the q_c it reads), the Gaussian integral
//! over (q̂, q) gives Σ_q = (MᵀK⁻¹M − J)⁻¹ = (M − K M⁻ᵀ J)⁻¹ K M⁻ᵀ.
//!
//! z does not depend on the sample in a linear network, so G^ℓ(k, j), B^ℓ(a, j) are kept
//! once per step j, and A^ℓ enters J only summed over the train point of j: ρ̂'_j = Σ_α ρ̂_{jα}.
//! This is dense: O(((T+1)(P+Q))²) order parameters, a tool for small problems and the
//! reference for a structured solver.

use crate::deep_linear::{self, LayerFields};
use crate::linalg::SerialBlas;
use crate::{DmftError, Model, Parameterization, Problem, Progress, Readout, Result, Schedule};
use ndarray::{Array1, Array2, ArrayView2, Axis, s};
use ndarray_linalg::{FactorizeInto, Inverse, Solve};
use rayon::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Step of the central differences for D_c. The site averages are rational functions of
/// their inputs with O(1) coefficients: truncation ≈ 1e-12, round-off ≈ 1e-10 relative.
const STEP: f64 = 1e-6;

/// Largest number of order parameters the dense solve accepts (memory ≈ 5 · 8 · n² bytes).
pub const MAX_ORDER_PARAMETERS: usize = 12_000;

/// The progress callback of [`deep_linear_prediction_fluctuations_with_progress`] counts up
/// to this: thousandths of the estimated work.
pub const PROGRESS_TOTAL: usize = 1000;

/// Number of order parameters q of the dense solve for a network of `depth` layers on
/// `points` = P + Q inputs over `steps` + 1 steps (the blocks of docs/fluctuations.md,
/// "Coordinates"): per hidden-layer boundary the upper triangle of Φ^ℓ, A^ℓ, B^{ℓ+1} and the
/// upper triangle of G^{ℓ+1}, plus the outputs. In u128 so that any config can be sized
/// before anything is allocated.
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
}

/// Which average an order parameter is, within one layer's block of q.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Phi,
    Grad,
    A,
    B,
    F,
}

/// One layer's averages as products v_a v_b of its site vector (scaled by 1/γ₀ for f).
struct Block {
    kind: Kind,
    layer: usize,
    offset: usize,
    pairs: Vec<(usize, usize)>,
}

/// Sizes and the offsets of h (T·n), z (T), ρ̂' (T), μ̂ (T·n) in v.
#[derive(Clone, Copy)]
struct Layout {
    n: usize,
    p: usize,
    nt: usize,
}

impl Layout {
    fn z(&self) -> usize {
        self.nt * self.n
    }
    fn rho(&self) -> usize {
        self.z() + self.nt
    }
    fn mu(&self) -> usize {
        self.rho() + self.nt
    }
    fn dim(&self) -> usize {
        self.mu() + self.nt * self.n
    }
}

/// Inputs of one layer's site process. The response drifts stay at their saddle values;
/// Φ^{ℓ−1}, G^{ℓ+1} (full (time, train) blocks) and f are what D_c perturbs.
#[derive(Clone)]
struct SiteInputs {
    phi_prev: Array2<f64>,
    grad_next: Array2<f64>,
    f: Array2<f64>,
    response_phi_prev: Array2<f64>,
    response_grad_next: Array2<f64>,
}

struct Context<'a> {
    layout: Layout,
    c: f64,
    gamma0: f64,
    y: ArrayView2<'a, f64>,
    centered: bool,
}

impl Context<'_> {
    fn delta(&self, f: &Array2<f64>) -> Array2<f64> {
        let p = self.layout.p;
        let mut d = &self.y - &f.slice(s![.., ..p]);
        if self.centered {
            d += &f.slice(s![0..1, ..p]);
        }
        d
    }

    /// Second moments Ω of v = (h, z, ρ̂', μ̂) for one layer, from the closed form
    /// h = u + C z, z = r + E h (theory.md 2b) with any (not necessarily causal) C and E.
    fn moments(&self, inp: &SiteInputs) -> Result<Array2<f64>> {
        let Layout { n, p, nt } = self.layout;
        let delta = self.delta(&inp.f);
        let mut c_op = inp.response_phi_prev.clone();
        let mut e_op = inp.response_grad_next.clone();
        for k in 0..nt {
            for j in 0..k {
                for a in 0..n {
                    for al in 0..p {
                        c_op[[k * n + a, j * p + al]] +=
                            self.c * inp.phi_prev[[k * n + a, j * n + al]] * delta[[j, al]];
                    }
                }
                for a in 0..p {
                    for al in 0..p {
                        e_op[[k * p + a, j * n + al]] +=
                            self.c * inp.grad_next[[k * p + a, j * p + al]] * delta[[j, al]];
                    }
                }
            }
        }
        let ec = Array2::<f64>::eye(nt * p) - e_op.dot(&c_op);
        let z_r = ec
            .inv()
            .map_err(|e| DmftError::Invalid(format!("I − EC: {e}")))?;
        let z_u = z_r.dot(&e_op);
        let h_r = c_op.dot(&z_r);
        let h_u = Array2::<f64>::eye(nt * n) + c_op.dot(&z_u);
        // z is the same for every train point: keep row α = 0 of each step.
        let rows: Vec<usize> = (0..nt).map(|k| k * p).collect();
        let z_u0 = z_u.select(Axis(0), &rows);
        let z_r0 = z_r.select(Axis(0), &rows);
        let hh = h_u.dot(&inp.phi_prev).dot(&h_u.t()) + h_r.dot(&inp.grad_next).dot(&h_r.t());
        let zz = z_u0.dot(&inp.phi_prev).dot(&z_u0.t()) + z_r0.dot(&inp.grad_next).dot(&z_r0.t());
        let hz = h_u.dot(&inp.phi_prev).dot(&z_u0.t()) + h_r.dot(&inp.grad_next).dot(&z_r0.t());
        let sum_train = |m: &Array2<f64>| {
            let mut out = Array2::<f64>::zeros((m.nrows(), nt));
            for j in 0..nt {
                out.column_mut(j)
                    .assign(&m.slice(s![.., j * p..(j + 1) * p]).sum_axis(Axis(1)));
            }
            out
        };
        let h_rho = sum_train(&h_r);
        let z_rho = sum_train(&z_r0);
        let l = self.layout;
        let mut om = Array2::<f64>::zeros((l.dim(), l.dim()));
        let (ih, iz, ir, im) = (0, l.z(), l.rho(), l.mu());
        let mut put = |r0: usize, c0: usize, b: &Array2<f64>| {
            om.slice_mut(s![r0..r0 + b.nrows(), c0..c0 + b.ncols()])
                .assign(b);
            om.slice_mut(s![c0..c0 + b.ncols(), r0..r0 + b.nrows()])
                .assign(&b.t());
        };
        put(ih, ih, &hh);
        put(iz, iz, &zz);
        put(ih, iz, &hz);
        put(ih, ir, &h_rho);
        put(ih, im, &h_u);
        put(iz, ir, &z_rho);
        put(iz, im, &z_u0);
        Ok(om)
    }
}

/// The averages each layer produces, in the order of q.
fn blocks(layout: Layout, depth: usize) -> Vec<Block> {
    let Layout { n, nt, .. } = layout;
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
        if layer < depth {
            let upper = (0..nh).flat_map(|a| (a..nh).map(move |b| (a, b))).collect();
            add(Kind::Phi, upper);
        }
        if layer > 1 {
            let upper = (0..nt)
                .flat_map(|k| (k..nt).map(move |j| (layout.z() + k, layout.z() + j)))
                .collect();
            add(Kind::Grad, upper);
        }
        if layer < depth {
            let all = (0..nh)
                .flat_map(|a| (0..nt).map(move |j| (a, layout.rho() + j)))
                .collect();
            add(Kind::A, all);
        }
        if layer > 1 {
            let all = (0..nh)
                .flat_map(|a| (0..nt).map(move |j| (layout.mu() + a, layout.z() + j)))
                .collect();
            add(Kind::B, all);
        }
        if layer == depth {
            let all = (0..nt)
                .flat_map(|k| (0..n).map(move |mu| (layout.z() + k, k * n + mu)))
                .collect();
            add(Kind::F, all);
        }
    }
    out
}

fn find(blocks: &[Block], kind: Kind, layer: usize) -> &Block {
    blocks
        .iter()
        .find(|b| b.kind == kind && b.layer == layer)
        .expect("every consumed average is produced by some layer")
}

/// The averages of one layer (the rows of q it owns), from its moments.
fn layer_means(om: &Array2<f64>, own: &[&Block], gamma0: f64) -> Vec<f64> {
    own.iter()
        .flat_map(|b| {
            let scale = if b.kind == Kind::F { 1.0 / gamma0 } else { 1.0 };
            b.pairs.iter().map(move |&(i, j)| scale * om[[i, j]])
        })
        .collect()
}

/// Cov_site of a layer's averages by Isserlis: Cov(v_a v_b, v_c v_d) = Ω_ac Ω_bd + Ω_ad Ω_bc,
/// valid for the response fields too (⟨ρ̂ρ̂⟩ = ⟨μ̂μ̂⟩ = ⟨ρ̂μ̂⟩ = 0 sit in Ω).
fn site_covariance(om: &Array2<f64>, own: &[&Block], gamma0: f64) -> Array2<f64> {
    let pairs: Vec<(usize, usize, f64)> = own
        .iter()
        .flat_map(|b| {
            let w = if b.kind == Kind::F { 1.0 / gamma0 } else { 1.0 };
            b.pairs.iter().map(move |&(i, j)| (i, j, w))
        })
        .collect();
    let mut out = Array2::<f64>::zeros((pairs.len(), pairs.len()));
    out.axis_iter_mut(Axis(0))
        .into_par_iter()
        .zip(pairs.par_iter())
        .for_each(|(mut row, &(a, b, wa))| {
            for (x, &(c, d, wc)) in row.iter_mut().zip(&pairs) {
                *x = wa * wc * (om[[a, c]] * om[[b, d]] + om[[a, d]] * om[[b, c]]);
            }
        });
    out
}

/// Adds `eps` to the inputs of a layer where they read one causal order parameter.
fn perturb(inp: &mut SiteInputs, layout: Layout, kind: Kind, pair: (usize, usize), eps: f64) {
    let Layout { n, p, .. } = layout;
    match kind {
        Kind::Phi => {
            let (a, b) = pair;
            inp.phi_prev[[a, b]] += eps;
            if a != b {
                inp.phi_prev[[b, a]] += eps;
            }
        }
        Kind::Grad => {
            let (k, j) = (pair.0 - layout.z(), pair.1 - layout.z());
            let mut blk = inp
                .grad_next
                .slice_mut(s![k * p..(k + 1) * p, j * p..(j + 1) * p]);
            blk += eps;
            if k != j {
                let mut blk = inp
                    .grad_next
                    .slice_mut(s![j * p..(j + 1) * p, k * p..(k + 1) * p]);
                blk += eps;
            }
        }
        Kind::F => {
            let (k, idx) = (pair.0 - layout.z(), pair.1);
            inp.f[[k, idx - k * n]] += eps;
        }
        Kind::A | Kind::B => unreachable!("response averages are not read as drives"),
    }
}

/// Σ_f of a deep linear μP network (dense Hessian; small problems only).
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
    if model.residual.is_some() {
        return Err(DmftError::Invalid(
            "the deep linear propagator is written for the plain chain; model.residual (β/√L branches) has no propagator yet".into(),
        ));
    }
    let saddle = Saddle::new(problem, model, schedule)?;
    let Saddle {
        ctx,
        inputs,
        blocks: all,
        solution: sol,
    } = &saddle;
    let (depth, layout) = (model.depth, ctx.layout);
    let Layout { n, p, nt } = layout;
    let total: usize = all.iter().map(|b| b.pairs.len()).sum();
    let meter = Meter::new(progress, layout, depth, total);
    let mut k_mat = Array2::<f64>::zeros((total, total));
    // LAPACK on one thread: small calls come from rayon workers, and OpenBLAS's threaded
    // LU keeps per-CPU job tables on the caller's stack, which overflows the 2 MiB stacks
    // of rayon and test threads (measured: SIGSEGV in a test thread).
    let _serial = SerialBlas::new();
    let mut d_c = Array2::<f64>::zeros((total, total));
    for layer in 1..=depth {
        let inp = &inputs[layer - 1];
        let own: Vec<&Block> = all.iter().filter(|b| b.layer == layer).collect();
        let r0 = own[0].offset;
        let rows: usize = own.iter().map(|b| b.pairs.len()).sum();
        let om = ctx.moments(inp)?;
        k_mat
            .slice_mut(s![r0..r0 + rows, r0..r0 + rows])
            .assign(&site_covariance(&om, &own, ctx.gamma0));
        // Open-loop D_c: the causal averages this layer reads.
        let mut read = vec![find(all, Kind::F, depth)];
        if layer > 1 {
            read.push(find(all, Kind::Phi, layer - 1));
        }
        if layer < depth {
            read.push(find(all, Kind::Grad, layer + 1));
        }
        let columns: Vec<(usize, Kind, (usize, usize))> = read
            .iter()
            .flat_map(|b| {
                b.pairs
                    .iter()
                    .enumerate()
                    .map(move |(i, &pr)| (b.offset + i, b.kind, pr))
            })
            .collect();
        let derivs: Vec<Result<(usize, Vec<f64>)>> = columns
            .par_iter()
            .map(|&(col, kind, pair)| {
                let mut plus = inp.clone();
                perturb(&mut plus, layout, kind, pair, STEP);
                let mut minus = inp.clone();
                perturb(&mut minus, layout, kind, pair, -STEP);
                let hi = layer_means(&ctx.moments(&plus)?, &own, ctx.gamma0);
                let lo = layer_means(&ctx.moments(&minus)?, &own, ctx.gamma0);
                meter.column_done();
                Ok((
                    col,
                    hi.iter()
                        .zip(&lo)
                        .map(|(a, b)| (a - b) / (2.0 * STEP))
                        .collect(),
                ))
            })
            .collect();
        for d in derivs {
            let (col, v) = d?;
            d_c.slice_mut(s![r0..r0 + rows, col])
                .assign(&Array1::from(v));
        }
    }

    let sigma_q_f = solve_hessian(&k_mat, &d_c, all, depth, &meter)?;
    let fb = find(all, Kind::F, depth);
    let nf = fb.pairs.len();
    let mut sigma = sigma_q_f
        .slice(s![fb.offset..fb.offset + nf, ..])
        .to_owned();
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

    let traj = &sol.trajectory;
    let steps = traj.steps.clone();
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
    progress(PROGRESS_TOTAL);
    Ok(DeepLinearFluctuations {
        steps,
        t: traj.t.clone(),
        var_f_train,
        var_f_test,
        var_loss,
        sigma,
    })
}

/// The infinite-width solution and, per layer, the inputs of its site process there.
struct Saddle<'a> {
    ctx: Context<'a>,
    inputs: Vec<SiteInputs>,
    blocks: Vec<Block>,
    solution: deep_linear::DeepLinearSolution,
}

impl<'a> Saddle<'a> {
    fn new(problem: &'a Problem, model: &Model, schedule: &Schedule) -> Result<Self> {
        let depth = model.depth;
        let layout = Layout {
            n: problem.n_all(),
            p: problem.n_train(),
            nt: schedule.steps + 1,
        };
        let total = order_parameters(depth, layout.n, schedule.steps);
        if total > MAX_ORDER_PARAMETERS as u128 {
            return Err(DmftError::Invalid(format!(
                "the dense deep linear propagator has {total} order parameters for depth = {depth}, P + Q = {}, steps = {} (limit {MAX_ORDER_PARAMETERS}); reduce train.steps or the number of points",
                layout.n, schedule.steps
            )));
        }
        let blocks = blocks(layout, depth);
        let solution = deep_linear::solve_full(problem, model, schedule, &|_| {})?;
        let ctx = Context {
            layout,
            c: schedule.eta * model.gamma0 / layout.p as f64,
            gamma0: model.gamma0,
            y: problem.y.view().insert_axis(Axis(0)),
            centered: model.centered,
        };
        let f = output_all_steps(&solution.layers, &solution.delta, problem, &ctx, depth)?;
        let inputs = (0..depth)
            .map(|l| site_inputs(&solution.layers, l, depth, layout, problem, &f))
            .collect();
        Ok(Saddle {
            ctx,
            inputs,
            blocks,
            solution,
        })
    }
}

/// Reports the work done as thousandths of an estimate. One D_c column (two site solves,
/// O(((T+1)n)³) each) against the final dense solve (O(q³)): measured at L = 2, n = 5,
/// T = 12 (q = 3991), one column took as long as 15 ((T+1)n)³ of the solve's q³, and the
/// solve 87 % of the whole.
struct Meter<'a> {
    progress: Progress<'a>,
    /// Thousandths per D_c column, and for the whole solve.
    per_column: f64,
    solve: f64,
    columns_done: AtomicUsize,
}

impl<'a> Meter<'a> {
    fn new(progress: Progress<'a>, layout: Layout, depth: usize, total: usize) -> Self {
        let (nt, nh) = (layout.nt as f64, (layout.nt * layout.n) as f64);
        // Every layer reads f; layer ℓ > 1 reads Φ^{ℓ−1}, layer ℓ < L reads G^{ℓ+1}.
        let columns = depth as f64 * nh
            + (depth - 1) as f64 * (nh * (nh + 1.0) / 2.0 + nt * (nt + 1.0) / 2.0);
        let column_cost = 15.0 * nh.powi(3);
        let solve_cost = (total as f64).powi(3);
        let all = columns * column_cost + solve_cost;
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

    /// `fraction` of the dense solve is done (its flops: inverse 2q³, product 2q³, LU ⅔q³).
    fn solve_done(&self, fraction: f64) {
        let columns = self.columns_done.load(Ordering::Relaxed) as f64 * self.per_column;
        (self.progress)((columns + fraction * self.solve) as usize);
    }
}

/// Columns of Σ_q = (M − K M⁻ᵀ J)⁻¹ K M⁻ᵀ for the outputs f (all rows of q), M = I − D_c.
fn solve_hessian(
    k_mat: &Array2<f64>,
    d_c: &Array2<f64>,
    all: &[Block],
    depth: usize,
    meter: &Meter,
) -> Result<Array2<f64>> {
    let total = k_mat.nrows();
    let lin =
        |e: ndarray_linalg::error::LinalgError| DmftError::Invalid(format!("propagator: {e}"));
    let m = Array2::<f64>::eye(total) - d_c;
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
    let fb = find(all, Kind::F, depth);
    let lu = z.factorize_into().map_err(lin)?;
    meter.solve_done(1.0);
    let mut out = Array2::<f64>::zeros((total, fb.pairs.len()));
    for (i, mut col) in out.columns_mut().into_iter().enumerate() {
        col.assign(&lu.solve(&y.column(fb.offset + i)).map_err(lin)?);
    }
    Ok(out)
}

/// The saddle-point inputs of layer l (0-based): Φ^{ℓ−1}, G^{ℓ+1}, f, R_φ^{ℓ−1}, R_g^{ℓ+1}.
fn site_inputs(
    layers: &[LayerFields],
    l: usize,
    depth: usize,
    layout: Layout,
    problem: &Problem,
    f: &Array2<f64>,
) -> SiteInputs {
    let Layout { n, p, nt } = layout;
    let phi_prev = match l.checked_sub(1) {
        Some(b) => layers[b].phi_kernel.clone(),
        None => {
            let mut t = Array2::zeros((nt * n, nt * n));
            for a in 0..nt {
                for b in 0..nt {
                    t.slice_mut(s![a * n..(a + 1) * n, b * n..(b + 1) * n])
                        .assign(&problem.kx);
                }
            }
            t
        }
    };
    let grad_next = if l + 1 < depth {
        layers[l + 1].grad_kernel.clone()
    } else {
        Array2::ones((nt * p, nt * p))
    };
    let response_phi_prev = match l.checked_sub(1) {
        Some(b) => layers[b].response_phi.clone(),
        None => Array2::zeros((nt * n, nt * p)),
    };
    let response_grad_next = if l + 1 < depth {
        layers[l + 1].response_grad.clone()
    } else {
        Array2::zeros((nt * p, nt * n))
    };
    SiteInputs {
        phi_prev,
        grad_next,
        f: f.clone(),
        response_phi_prev,
        response_grad_next,
    }
}

/// f(k) on every point at every step, from the top layer's closed form; train columns
/// agree with y − Δ of the march (checked by the tests).
fn output_all_steps(
    layers: &[LayerFields],
    delta: &Array2<f64>,
    problem: &Problem,
    ctx: &Context,
    depth: usize,
) -> Result<Array2<f64>> {
    let Layout { n, p, nt } = ctx.layout;
    // Δ does not depend on f's test columns: any f with the right train part gives the
    // saddle fields; read f on all points from the resulting moments.
    let mut f = Array2::<f64>::zeros((nt, n));
    // f(0) = 0 at infinite width, so f = y − Δ also for the centered model.
    let train = &problem.y.view().insert_axis(Axis(0)) - delta;
    f.slice_mut(s![.., ..p]).assign(&train);
    let inp = site_inputs(layers, depth - 1, depth, ctx.layout, problem, &f);
    let om = ctx.moments(&inp)?;
    for k in 0..nt {
        for mu in 0..n {
            f[[k, mu]] = om[[ctx.layout.z() + k, k * n + mu]] / ctx.gamma0;
        }
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::propagator::two_layer_prediction_fluctuations;
    use crate::sampling::{normal_matrix, replica_rng};
    use crate::{Activation, SolverOptions};

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

    /// It computes the plain chain with a trained readout: anything else is refused, naming it.
    #[test]
    fn refuses_residual_and_frozen_readout() {
        let refused = |m: Model, says: &str| {
            let Err(e) = deep_linear_prediction_fluctuations(&problem(), &m, &schedule(2)) else {
                panic!("accepted {m:?}");
            };
            let e = e.to_string();
            assert!(e.contains(says) && !e.contains('\n'), "{e}");
        };
        let residual = Model {
            residual: Some(1.0),
            ..model(2, 1.0)
        };
        refused(residual.clone(), "model.residual");
        refused(
            Model {
                readout: Readout::Frozen,
                ..model(2, 1.0)
            },
            "model.readout = frozen",
        );
        refused(
            Model {
                readout: Readout::Frozen,
                ..residual
            },
            "model.readout = frozen",
        );
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
            };
            let built: usize = blocks(layout, depth).iter().map(|b| b.pairs.len()).sum();
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
    /// 2 test points). Agreement is limited by the two finite-difference D_c (≈ 1e-9).
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

    /// √N f(0) ~ 𝒩(0, Φ^L(0,0)/γ₀²) and linear layers keep Φ^ℓ(0,0) = K^x: any depth.
    #[test]
    fn initial_output_variance_is_the_input_kernel() {
        let problem = problem();
        for depth in 1..=3 {
            let fl =
                deep_linear_prediction_fluctuations(&problem, &model(depth, 0.7), &schedule(2))
                    .unwrap();
            let n = problem.n_all();
            let want = &problem.kx / (0.7 * 0.7);
            let got = fl.sigma.slice(s![..n, ..n]);
            let err = (&got - &want)
                .mapv(f64::abs)
                .fold(0.0, |a: f64, &b| a.max(b));
            assert!(err < 1e-8, "depth {depth}: Σ_f(0, 0) off K^x/γ₀² by {err}");
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
        }
    }

    /// The site map reproduces the march's fields at the saddle (wiring of Ω and of the inputs).
    #[test]
    fn site_moments_reproduce_the_march() {
        let problem = problem();
        let saddle = Saddle::new(&problem, &model(3, 1.5), &schedule(4)).unwrap();
        let Layout { n, p, nt } = saddle.ctx.layout;
        let l = saddle.ctx.layout;
        for (inp, layer) in saddle.inputs.iter().zip(&saddle.solution.layers) {
            let om = saddle.ctx.moments(inp).unwrap();
            let rows: Vec<usize> = (0..nt).map(|k| k * p).collect();
            let checks = [
                (
                    om.slice(s![..l.z(), ..l.z()]).to_owned(),
                    layer.phi_kernel.clone(),
                ),
                (
                    om.slice(s![l.z()..l.rho(), l.z()..l.rho()]).to_owned(),
                    layer
                        .grad_kernel
                        .select(Axis(0), &rows)
                        .select(Axis(1), &rows),
                ),
                (
                    om.slice(s![..l.z(), l.mu()..]).to_owned(),
                    layer.h_u.clone(),
                ),
                (
                    om.slice(s![l.z()..l.rho(), l.mu()..]).to_owned(),
                    layer.response_grad.select(Axis(0), &rows),
                ),
            ];
            for (i, (got, want)) in checks.iter().enumerate() {
                let err = (got - want).mapv(f64::abs).fold(0.0, |a: f64, &b| a.max(b));
                assert!(err < 1e-10, "block {i}: {err}");
            }
            let summed = om.slice(s![..nt * n, l.rho()..l.mu()]);
            for j in 0..nt {
                let want = layer
                    .response_phi
                    .slice(s![.., j * p..(j + 1) * p])
                    .sum_axis(Axis(1));
                let err = (&summed.column(j) - &want)
                    .mapv(f64::abs)
                    .fold(0.0, |a: f64, &b| a.max(b));
                assert!(err < 1e-10, "R_φ summed over train column {j}: {err}");
            }
        }
    }

    /// J's sign and weight: the site covariance of layer ℓ's averages with A^ℓ(a, j) must be
    /// their open-loop response to a response drift R_g^{ℓ+1}(j, a) read by layer ℓ, and with
    /// B^{ℓ+1}(a, j) layer ℓ+1's response to R_φ^ℓ(a, j), for causal and anti-causal pairs.
    #[test]
    fn response_coupling_is_the_open_loop_response() {
        let problem = problem();
        let saddle = Saddle::new(&problem, &model(3, 1.5), &schedule(3)).unwrap();
        let ctx = &saddle.ctx;
        let Layout { n, p, nt } = ctx.layout;
        let eps = 1e-6;
        for layer in 1..3 {
            for (kind, owner) in [(Kind::A, layer), (Kind::B, layer + 1)] {
                let own: Vec<&Block> = saddle.blocks.iter().filter(|b| b.layer == owner).collect();
                let inp = &saddle.inputs[owner - 1];
                let om = ctx.moments(inp).unwrap();
                let cov = site_covariance(&om, &own, ctx.gamma0);
                let blk = find(&saddle.blocks, kind, owner);
                let base = blk.offset - own[0].offset;
                // (time of a, point of a, time j): before, at and after j.
                for (ka, mu, j) in [(2, 1, 1), (1, 4, 1), (0, 0, 2), (3, 2, 0)] {
                    let a = ka * n + mu;
                    let shifted = |e: f64| {
                        let mut x = inp.clone();
                        match kind {
                            Kind::A => {
                                for al in 0..p {
                                    x.response_grad_next[[j * p + al, a]] += e;
                                }
                            }
                            _ => x.response_phi_prev[[a, j * p]] += e,
                        }
                        Array1::from(layer_means(&ctx.moments(&x).unwrap(), &own, ctx.gamma0))
                    };
                    let response = (shifted(eps) - shifted(-eps)) / (2.0 * eps);
                    let col = cov.column(base + a * nt + j);
                    let scale = col.iter().fold(1e-3, |m: f64, &v| m.max(v.abs()));
                    let err = (&response - &col)
                        .mapv(f64::abs)
                        .fold(0.0, |m: f64, &v| m.max(v));
                    assert!(
                        err < 1e-6 * scale,
                        "{kind:?}^{owner} ({a}, {j}): open-loop response off the covariance by {err} (scale {scale})"
                    );
                }
            }
        }
    }
}
