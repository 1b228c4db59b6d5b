//! Two-layer network (L = 1) at any γ₀: the single-site process of theory.md 2a.
//!
//!   h_μ(k) = u_μ + c Σ_{j<k} Σ_α K^x_{μα} Δ_α(j) g_α(j),   u ~ N(0, K^x)
//!   z(k)   = r + c Σ_{j<k} Σ_α Δ_α(j) φ(h_α(j)),            r ~ N(0, 1)
//!   g = φ'(h) z,   f_μ(k) = γ₀⁻¹ ⟨z(k) φ(h_μ(k))⟩
//!
//! With a frozen readout (`Readout::Frozen`) w¹ never moves, so z(k) = r and the NTK is
//! G ⊙ K^x alone (no Φ term from the readout gradient).
//!
//! Sites interact only through Δ, so the march keeps running sums instead of histories:
//! O(M P (P+Q)) work per step. Averages are weighted sums over a [`SiteSet`]: a
//! Gauss–Hermite tensor grid over (u, r) (deterministic) or Monte Carlo draws.

use crate::SolverKind;
use crate::linalg::psd_factor;
use crate::quadrature::tensor_grid;
use crate::record::{RawRun, Recorder, replica_trajectory};
use crate::sampling::{normal_matrix, replica_rng};
use crate::{
    DmftError, Model, Problem, Progress, Readout, Result, Schedule, SolverOptions, Trajectory,
};
use ndarray::{Array1, Array2, ArrayView2, Axis, s};
use rayon::prelude::*;

/// Largest tensor grid accepted; each point stores P+Q+1 doubles plus work arrays.
pub const MAX_QUADRATURE_POINTS: usize = 4_000_000;

/// Sites processed together by one task; large enough to amortize scheduling,
/// small enough to balance two cores.
pub const CHUNK: usize = 2048;

/// Weighted single-site samples: u (M × (P+Q)), r (M), weights summing to 1.
pub struct SiteSet {
    pub u: Array2<f64>,
    pub r: Array1<f64>,
    pub weight: Array1<f64>,
}

impl SiteSet {
    /// Tensor Gauss–Hermite grid over the range of K^x (rank d) and r: order^(d+1) points.
    pub fn quadrature(kx: ArrayView2<f64>, order: usize) -> Result<Self> {
        let factor = psd_factor(kx)?;
        let dim = factor.ncols() + 1;
        let count = (order as f64).powi(dim as i32);
        if count > MAX_QUADRATURE_POINTS as f64 {
            return Err(DmftError::Invalid(format!(
                "theory.quadrature = {order} needs {order}^{dim} = {count:.3e} points for {} \
                 input directions plus the readout (limit {MAX_QUADRATURE_POINTS}); use quadrature = 0 \
                 (Monte Carlo) or a smaller order",
                dim - 1
            )));
        }
        let (nodes, weight) = tensor_grid(order, dim)?;
        let u = nodes.slice(s![.., ..dim - 1]).dot(&factor.t());
        let r = nodes.column(dim - 1).to_owned();
        Ok(SiteSet { u, r, weight })
    }

    /// M independent draws u ~ N(0, K^x), r ~ N(0, 1), equal weights.
    /// One population as `options` ask: the Gauss–Hermite grid when `quadrature > 0`, else
    /// `sites` Monte Carlo sites (replica 0), as the propagators use them.
    pub fn from_options(kx: ArrayView2<f64>, options: &SolverOptions) -> Result<Self> {
        if options.quadrature > 0 {
            Self::quadrature(kx, options.quadrature)
        } else {
            Self::monte_carlo(kx, options.sites, options.seed, 0)
        }
    }

    pub fn monte_carlo(kx: ArrayView2<f64>, sites: usize, seed: u64, replica: u64) -> Result<Self> {
        let factor = psd_factor(kx)?;
        let mut rng = replica_rng(seed, replica);
        let xi = normal_matrix(&mut rng, sites, factor.ncols() + 1);
        let u = xi.slice(s![.., ..factor.ncols()]).dot(&factor.t());
        let r = xi.column(factor.ncols()).to_owned();
        Ok(SiteSet {
            u,
            r,
            weight: Array1::from_elem(sites, 1.0 / sites as f64),
        })
    }
}

/// Site averages of one step: f (all points, before the 1/γ₀), and when recording Φ, G.
struct StepSums {
    zphi: Array1<f64>,
    phi: Option<Array2<f64>>,
    grad: Option<Array2<f64>>,
}

/// Interventions on a march: the finite-difference oracle of the propagator tests uses them.
#[derive(Default)]
pub(crate) struct Probe {
    /// Drive the sites with this Δ(k) (rows k = 0..=T) instead of y − f(k): open loop,
    /// so a shift's effect is the partial derivative with every other Δ(j) held fixed.
    pub open_loop: Option<Array2<f64>>,
    /// Add `ε` to Δ_α(j) before step j's update: (j, α, ε).
    pub shift: Option<(usize, usize, f64)>,
}

/// A march's trajectory and f at every step (all points).
pub(crate) struct Marched {
    pub run: RawRun,
    pub f_all: Array2<f64>,
}

pub(crate) fn march(
    problem: &Problem,
    model: &Model,
    schedule: &Schedule,
    sites: &SiteSet,
    probe: &Probe,
    progress: Progress,
) -> Result<Marched> {
    let act = model.activation;
    let (p, n) = (problem.n_train(), problem.n_all());
    let m = sites.r.len();
    let c = schedule.eta * model.gamma0 / p as f64;
    let readout_trained = model.readout == Readout::Trained;
    let kx_train_rows = problem.kx.slice(s![..p, ..]).to_owned();
    let (mut h, mut z, weight) = (sites.u.clone(), sites.r.clone(), &sites.weight);
    let mut f_all = Array2::<f64>::zeros((schedule.steps + 1, n));
    let mut phi = Array2::<f64>::zeros((m, n));
    let mut g = Array2::<f64>::zeros((m, p));
    let mut rec = Recorder::new(problem, schedule, false);
    let mut f0: Option<Array1<f64>> = None;
    for k in 0..=schedule.steps {
        let recording = rec.needs_ntk(k);
        // Pass 1: φ(h), g = φ'(h) z, and the site averages of this step.
        let partial: Vec<StepSums> = phi
            .axis_chunks_iter_mut(Axis(0), CHUNK)
            .into_par_iter()
            .zip(g.axis_chunks_iter_mut(Axis(0), CHUNK))
            .enumerate()
            .map(|(ci, (mut phi_c, mut g_c))| {
                let lo = ci * CHUNK;
                let mut sums = StepSums {
                    zphi: Array1::zeros(n),
                    phi: recording.then(|| Array2::zeros((n, n))),
                    grad: recording.then(|| Array2::zeros((p, p))),
                };
                for (i, (mut phi_i, mut g_i)) in
                    phi_c.outer_iter_mut().zip(g_c.outer_iter_mut()).enumerate()
                {
                    let site = lo + i;
                    let (h_i, z_i, w_i) = (h.row(site), z[site], weight[site]);
                    for nu in 0..n {
                        phi_i[nu] = act.phi(h_i[nu]);
                        sums.zphi[nu] += w_i * z_i * phi_i[nu];
                    }
                    for mu in 0..p {
                        g_i[mu] = act.d1(h_i[mu]) * z_i;
                    }
                    if let (Some(pk), Some(gk)) = (sums.phi.as_mut(), sums.grad.as_mut()) {
                        rank_one_update(pk, w_i, phi_i.as_slice().unwrap());
                        rank_one_update(gk, w_i, g_i.as_slice().unwrap());
                    }
                }
                sums
            })
            .collect();
        let mut zphi = Array1::<f64>::zeros(n);
        let mut phi_kernel = recording.then(|| Array2::<f64>::zeros((n, n)));
        let mut grad_kernel = recording.then(|| Array2::<f64>::zeros((p, p)));
        for part in partial {
            zphi += &part.zphi;
            if let (Some(a), Some(b)) = (phi_kernel.as_mut(), part.phi) {
                *a += &b;
            }
            if let (Some(a), Some(b)) = (grad_kernel.as_mut(), part.grad) {
                *a += &b;
            }
        }
        let mut f = zphi / model.gamma0;
        if model.centered {
            let f_init = f0.get_or_insert_with(|| f.clone());
            f -= &*f_init;
        }
        f_all.row_mut(k).assign(&f);
        let mut delta = match &probe.open_loop {
            Some(path) => path.row(k).to_owned(),
            None => &problem.y - &f.slice(s![..p]),
        };
        rec.observe(k, f.view(), delta.view(), || {
            let mut pk = phi_kernel
                .take()
                .expect("accumulated when the NTK is needed");
            let mut gk = grad_kernel
                .take()
                .expect("accumulated when the NTK is needed");
            mirror_lower(&mut gk);
            let mut ntk = &gk * &problem.kx.slice(s![..p, ..p]);
            if readout_trained {
                mirror_lower(&mut pk);
                ntk += &pk.slice(s![..p, ..p]);
            }
            ntk
        })?;
        if k == schedule.steps {
            break;
        }
        if let Some((j, alpha, eps)) = probe.shift
            && j == k
        {
            delta[alpha] += eps;
        }
        // Pass 2: h += c K^x[·, train] (Δ ⊙ g), z += c Σ_α Δ_α φ_α (z stays r when frozen).
        let cd: Array1<f64> = &delta * c;
        h.axis_chunks_iter_mut(Axis(0), CHUNK)
            .into_par_iter()
            .zip(z.axis_chunks_iter_mut(Axis(0), CHUNK))
            .enumerate()
            .for_each(|(ci, (mut h_c, mut z_c))| {
                let lo = ci * CHUNK;
                for (i, (mut h_i, z_i)) in h_c.outer_iter_mut().zip(z_c.iter_mut()).enumerate() {
                    let site = lo + i;
                    let (g_i, phi_i) = (g.row(site), phi.row(site));
                    let mut dz = 0.0;
                    for alpha in 0..p {
                        let coef = cd[alpha] * g_i[alpha];
                        dz += cd[alpha] * phi_i[alpha];
                        if coef != 0.0 {
                            h_i.scaled_add(coef, &kx_train_rows.row(alpha));
                        }
                    }
                    if readout_trained {
                        *z_i += dz;
                    }
                }
            });
        progress(k + 1);
    }
    let run = RawRun::from(rec.finish(SolverKind::TwoLayer, String::new())?);
    Ok(Marched { run, f_all })
}

/// Lower triangle of A += w x xᵀ (mirrored once at the end of the step).
pub fn rank_one_update(a: &mut Array2<f64>, w: f64, x: &[f64]) {
    for (i, &xi) in x.iter().enumerate() {
        let wxi = w * xi;
        let mut row = a.row_mut(i);
        for (j, &xj) in x[..=i].iter().enumerate() {
            row[j] += wxi * xj;
        }
    }
}

pub fn mirror_lower(a: &mut Array2<f64>) {
    for i in 0..a.nrows() {
        for j in 0..i {
            a[[j, i]] = a[[i, j]];
        }
    }
}

/// Deterministic Gauss–Hermite quadrature of order `order` per dimension.
pub fn solve_quadrature(
    problem: &Problem,
    model: &Model,
    schedule: &Schedule,
    order: usize,
    progress: Progress,
) -> Result<Trajectory> {
    let sites = SiteSet::quadrature(problem.kx.view(), order)?;
    let count = sites.r.len();
    let run = march(
        problem,
        model,
        schedule,
        &sites,
        &Probe::default(),
        progress,
    )?
    .run;
    replica_trajectory(
        problem,
        schedule,
        vec![run],
        None,
        SolverKind::TwoLayer,
        format!("gauss-hermite order {order}, {count} points"),
    )
}

/// Monte Carlo over `options.sites` sites split into independent replicas; the spread of
/// the replicas gives the standard error (it includes the propagation of sampling noise
/// through Δ, which a per-step site variance would miss).
pub fn solve_monte_carlo(
    problem: &Problem,
    model: &Model,
    schedule: &Schedule,
    options: &SolverOptions,
    progress: Progress,
) -> Result<Trajectory> {
    let replicas = crate::sampling::replica_sizes(options.sites)?;
    let r = replicas.len();
    // Replicas fill the first half of the progress count, the full population the second.
    let run = |m: usize, stream: usize, report: &(dyn Fn(usize) + Sync)| {
        let sites = SiteSet::monte_carlo(problem.kx.view(), m, options.seed, stream as u64)?;
        march(problem, model, schedule, &sites, &Probe::default(), report)
            .map(|marched| marched.run)
    };
    let runs = replicas
        .iter()
        .enumerate()
        .map(|(i, &m)| run(m, i, &|k| progress((i * schedule.steps + k) / (2 * r))))
        .collect::<Result<Vec<_>>>()?;
    let full = run(options.sites, r, &|k| progress((schedule.steps + k) / 2))?;
    replica_trajectory(
        problem,
        schedule,
        runs,
        Some(full),
        SolverKind::TwoLayer,
        format!(
            "monte-carlo, {} sites, extrapolated against {r} replicas of {} (which give the SE)",
            options.sites, replicas[0]
        ),
    )
}
