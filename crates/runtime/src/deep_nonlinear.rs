//! Deep nonlinear networks (L ≥ 2): Monte Carlo over single sites with response functions.
//!
//! Each layer ℓ has its own population of sites driven by Gaussian sources
//! u^ℓ ~ GP(0, Φ^{ℓ−1}) over (time, all points) and r^ℓ ~ GP(0, G^{ℓ+1}) over (time, train):
//!
//!   h^ℓ(k) = u^ℓ(k) + Σ_{j<k} [R_φ^{ℓ−1}(k,j) + c Φ^{ℓ−1}(k,j) diag Δ(j)] g^ℓ(j)
//!   z^ℓ(k) = r^ℓ(k) + Σ_{j≤k} R_g^{ℓ+1}(k,j) φ(h^ℓ(j)) + Σ_{j<k} c G^{ℓ+1}(k,j) diag Δ(j) φ(h^ℓ(j))
//!
//! Sources are drawn incrementally in time from a growing factor F of their covariance
//! (x = F ξ, ξ standard normal), built block by block in the eigenbasis of each Schur
//! complement so singular covariances are handled exactly. Response functions are never
//! formed: by Stein's lemma ⟨φ(h(k)) ξᵀ⟩ = ⟨∂φ(h(k))/∂r⟩ F, and a layer-ℓ site's history
//! g^ℓ(<k) lies in the range of G^ℓ = Cov(r^{ℓ−1}), so g = F ζ and
//! R_φ^{ℓ−1}(k,·) g = ⟨φ(h^{ℓ−1}(k)) ξᵀ⟩ ζ. Cost per step O(M (P+Q) P k) per layer.

use crate::linalg::{RANK_TOL, eigh, psd_factor, symmetrize};
use crate::record::{RawRun, Recorder, replica_trajectory};
use crate::sampling::{normal_matrix, replica_rng, replica_sizes};
use crate::{
    DmftError, Model, Problem, Progress, Result, Schedule, SolverKind, SolverOptions, Trajectory,
};
use ndarray::{Array1, Array2, ArrayView2, Axis, concatenate, s};
use rand_xoshiro::Xoshiro256PlusPlus;

/// A lower block-trapezoidal factor F of a growing covariance: block row k (b rows) spans
/// the columns introduced at times ≤ k, and F(≤k) F(≤k)ᵀ = Cov(≤k, ≤k) on its range.
struct GrowingFactor {
    block: usize,
    rows: Vec<Array2<f64>>,
    /// First column introduced by each block row, and how many it introduced.
    starts: Vec<usize>,
    ranks: Vec<usize>,
    /// (D_kᵀ)⁺ = V Λ^{-1/2} for the new diagonal block D_k = V Λ^{1/2}: b × r_k.
    pinv_t: Vec<Array2<f64>>,
    cols: usize,
}

impl GrowingFactor {
    fn new(block: usize) -> Self {
        GrowingFactor {
            block,
            rows: vec![],
            starts: vec![],
            ranks: vec![],
            pinv_t: vec![],
            cols: 0,
        }
    }

    /// Adds block row k from Cov(k, ≤k) (b × (k+1)b) and returns the number of new columns.
    fn extend(&mut self, cov_row: ArrayView2<f64>) -> Result<usize> {
        let (b, k) = (self.block, self.rows.len());
        let mut x = Array2::<f64>::zeros((b, self.cols));
        for j in 0..k {
            let (start, r) = (self.starts[j], self.ranks[j]);
            let mut rhs = cov_row.slice(s![.., j * b..(j + 1) * b]).to_owned();
            if start > 0 {
                rhs -= &x
                    .slice(s![.., ..start])
                    .dot(&self.rows[j].slice(s![.., ..start]).t());
            }
            x.slice_mut(s![.., start..start + r])
                .assign(&rhs.dot(&self.pinv_t[j]));
        }
        let mut schur = cov_row.slice(s![.., k * b..(k + 1) * b]).to_owned() - x.dot(&x.t());
        symmetrize(&mut schur);
        let scale = (0..b)
            .map(|i| cov_row[[i, k * b + i]])
            .fold(0.0_f64, f64::max);
        let (vals, vecs) = eigh(schur.view())?;
        let keep: Vec<usize> = (0..b)
            .filter(|&i| vals[i] > 1e2 * RANK_TOL * scale)
            .collect();
        let r = keep.len();
        let mut diag = Array2::zeros((b, r));
        let mut pinv_t = Array2::zeros((b, r));
        for (col, &i) in keep.iter().enumerate() {
            let sq = vals[i].sqrt();
            diag.column_mut(col).assign(&(&vecs.column(i) * sq));
            pinv_t.column_mut(col).assign(&(&vecs.column(i) / sq));
        }
        self.rows.push(concatenate![Axis(1), x, diag]);
        self.starts.push(self.cols);
        self.ranks.push(r);
        self.pinv_t.push(pinv_t);
        self.cols += r;
        Ok(r)
    }

    /// Draws block k for every site from its standard normals ξ (m × cols).
    fn sample(&self, k: usize, xi: ArrayView2<f64>) -> Array2<f64> {
        let row = &self.rows[k];
        xi.slice(s![.., ..row.ncols()]).dot(&row.t())
    }

    /// Coordinates ζ_k of each site's block-k values x_k (m × b): x(≤k) = F(≤k) ζ(≤k).
    fn coords(&self, k: usize, x_k: ArrayView2<f64>, zeta: ArrayView2<f64>) -> Array2<f64> {
        let start = self.starts[k];
        let mut resid = x_k.to_owned();
        if start > 0 {
            resid -= &zeta
                .slice(s![.., ..start])
                .dot(&self.rows[k].slice(s![.., ..start]).t());
        }
        resid.dot(&self.pinv_t[k])
    }
}

/// One layer's site population and its two-time kernels.
struct Layer {
    /// Φ^ℓ over all points and G^ℓ over train points, time-major.
    phi_kernel: Array2<f64>,
    grad_kernel: Array2<f64>,
    /// Standard normals of the u^ℓ and r^ℓ factors (columns filled as the factors grow).
    xi_u: Array2<f64>,
    xi_r: Array2<f64>,
    /// Histories φ(h(j)) (m × NT·n) and g(j) (m × NT·p).
    phi_hist: Array2<f64>,
    g_hist: Array2<f64>,
    /// Coordinates of φ-history in the factor of u^{ℓ+1} and of g-history in that of r^{ℓ−1}.
    zeta_phi: Array2<f64>,
    zeta_g: Array2<f64>,
    h: Array2<f64>,
}

struct Population<'a> {
    problem: &'a Problem,
    model: &'a Model,
    m: usize,
    n: usize,
    p: usize,
    c: f64,
    layers: Vec<Layer>,
    /// u_factor[ℓ] samples u^{ℓ+1} from Φ^ℓ (ℓ = 1..L−1, index ℓ−1);
    /// r_factor[ℓ] samples r^ℓ from G^{ℓ+1} (ℓ = 1..L−1, index ℓ−1).
    u_factor: Vec<GrowingFactor>,
    r_factor: Vec<GrowingFactor>,
    /// Layer-1 source u¹ = F_x ξ (constant in time) and the scalar readout source r^L.
    u_first: Array2<f64>,
    r_last: Array1<f64>,
    delta: Array2<f64>,
    rng: Xoshiro256PlusPlus,
}

impl<'a> Population<'a> {
    fn new(
        problem: &'a Problem,
        model: &'a Model,
        schedule: &Schedule,
        m: usize,
        seed: u64,
        replica: u64,
    ) -> Result<Self> {
        let (n, p, depth) = (problem.n_all(), problem.n_train(), model.depth);
        let nt = schedule.steps + 1;
        let mut rng = replica_rng(seed, replica);
        let fx = psd_factor(problem.kx.view())?;
        let u_first = normal_matrix(&mut rng, m, fx.ncols()).dot(&fx.t());
        let r_last = normal_matrix(&mut rng, m, 1).column(0).to_owned();
        let layers = (0..depth)
            .map(|_| Layer {
                phi_kernel: Array2::zeros((nt * n, nt * n)),
                grad_kernel: Array2::zeros((nt * p, nt * p)),
                xi_u: Array2::zeros((m, nt * n)),
                xi_r: Array2::zeros((m, nt * p)),
                phi_hist: Array2::zeros((m, nt * n)),
                g_hist: Array2::zeros((m, nt * p)),
                zeta_phi: Array2::zeros((m, nt * n)),
                zeta_g: Array2::zeros((m, nt * p)),
                h: Array2::zeros((m, n)),
            })
            .collect();
        Ok(Population {
            problem,
            model,
            m,
            n,
            p,
            c: schedule.eta * model.gamma0 / p as f64,
            layers,
            u_factor: (1..depth).map(|_| GrowingFactor::new(n)).collect(),
            r_factor: (1..depth).map(|_| GrowingFactor::new(p)).collect(),
            u_first,
            r_last,
            delta: Array2::zeros((nt, p)),
            rng,
        })
    }

    /// Fresh standard normals for `count` new factor columns, written at column `at`.
    fn draw(rng: &mut Xoshiro256PlusPlus, xi: &mut Array2<f64>, at: usize, count: usize) {
        if count > 0 {
            let m = xi.nrows();
            xi.slice_mut(s![.., at..at + count])
                .assign(&normal_matrix(rng, m, count));
        }
    }

    /// ⟨x ξᵀ⟩ with x centered over sites: the Stein estimate of ⟨∂x/∂ξ⟩.
    fn stein(&self, x: ArrayView2<f64>, xi: ArrayView2<f64>) -> Array2<f64> {
        let mean = x.mean_axis(Axis(0)).unwrap();
        (&x - &mean).t().dot(&xi) / self.m as f64
    }

    /// Forward pass of layer index l (ℓ = l+1) at step k: h, φ(h), Φ^ℓ(k, ≤k).
    fn forward(&mut self, l: usize, k: usize) -> Result<()> {
        let (n, p, c, m) = (self.n, self.p, self.c, self.m);
        let act = self.model.activation;
        let mut h = if l == 0 {
            self.u_first.clone()
        } else {
            // u^ℓ(k) from Φ^{ℓ−1}(k, ≤k), then R_φ^{ℓ−1}(k,·) g^ℓ(<k) by Stein.
            let cov_row = self.layers[l - 1]
                .phi_kernel
                .slice(s![k * n..(k + 1) * n, ..(k + 1) * n])
                .to_owned();
            let at = self.u_factor[l - 1].cols;
            let added = self.u_factor[l - 1].extend(cov_row.view())?;
            Self::draw(&mut self.rng, &mut self.layers[l].xi_u, at, added);
            let mut h = self.u_factor[l - 1].sample(k, self.layers[l].xi_u.view());
            let rf = &self.r_factor[l - 1];
            if k > 0 && rf.cols > 0 {
                let below = &self.layers[l - 1];
                let stein = self.stein(below.phi_at(k, n), below.xi_r.slice(s![.., ..rf.cols]));
                h += &self.layers[l]
                    .zeta_g
                    .slice(s![.., ..rf.cols])
                    .dot(&stein.t());
            }
            h
        };
        if k > 0 {
            // c Σ_{j<k} Φ^{ℓ−1}(k,j)[·, train] (Δ(j) ⊙ g(j)).
            let mut drive = Array2::<f64>::zeros((k * p, n));
            for j in 0..k {
                for a in 0..p {
                    let w = c * self.delta[[j, a]];
                    let col = if l == 0 {
                        self.problem.kx.column(a).to_owned()
                    } else {
                        self.layers[l - 1]
                            .phi_kernel
                            .slice(s![k * n..(k + 1) * n, j * n + a])
                            .to_owned()
                    };
                    drive.row_mut(j * p + a).assign(&(col * w));
                }
            }
            h += &self.layers[l].g_hist.slice(s![.., ..k * p]).dot(&drive);
        }
        let layer = &mut self.layers[l];
        layer
            .phi_hist
            .slice_mut(s![.., k * n..(k + 1) * n])
            .assign(&h.mapv(|v| act.phi(v)));
        layer.h = h;
        let phi_k = layer.phi_hist.slice(s![.., k * n..(k + 1) * n]);
        let row = phi_k.t().dot(&layer.phi_hist.slice(s![.., ..(k + 1) * n])) / m as f64;
        write_symmetric_row(&mut layer.phi_kernel, k, n, row.view());
        Ok(())
    }

    /// Backward pass of layer index l at step k: z, g, G^ℓ(k, ≤k), and the coordinates
    /// of this layer's new g block in the factor of r^{ℓ−1} (extended here).
    fn backward(&mut self, l: usize, k: usize) -> Result<()> {
        let (n, p, c, m) = (self.n, self.p, self.c, self.m);
        let depth = self.layers.len();
        let act = self.model.activation;
        let mut z = if l + 1 == depth {
            // r^L is one scalar per site, shared by all samples and times.
            let mut z = Array2::<f64>::zeros((m, p));
            for mut col in z.columns_mut() {
                col.assign(&self.r_last);
            }
            z
        } else {
            let cov_row = self.layers[l + 1]
                .grad_kernel
                .slice(s![k * p..(k + 1) * p, ..(k + 1) * p])
                .to_owned();
            let at = self.r_factor[l].cols;
            let added = self.r_factor[l].extend(cov_row.view())?;
            Self::draw(&mut self.rng, &mut self.layers[l].xi_r, at, added);
            // The new r^ℓ factor block fixes the coordinates of layer ℓ+1's g(k).
            let above = &self.layers[l + 1];
            let zeta = self.r_factor[l].coords(
                k,
                above.g_hist.slice(s![.., k * p..(k + 1) * p]),
                above.zeta_g.view(),
            );
            self.layers[l + 1]
                .zeta_g
                .slice_mut(s![.., at..at + added])
                .assign(&zeta);
            let mut z = self.r_factor[l].sample(k, self.layers[l].xi_r.view());
            // R_g^{ℓ+1}(k, ≤k) φ(h^ℓ(≤k)) by Stein over layer ℓ+1's u-sources (equal time included).
            let uf = &self.u_factor[l];
            let above = &self.layers[l + 1];
            let stein = self.stein(
                above.g_hist.slice(s![.., k * p..(k + 1) * p]),
                above.xi_u.slice(s![.., ..uf.cols]),
            );
            z += &self.layers[l]
                .zeta_phi
                .slice(s![.., ..uf.cols])
                .dot(&stein.t());
            z
        };
        if k > 0 {
            // c Σ_{j<k} G^{ℓ+1}(k,j) (Δ(j) ⊙ φ(h(j))[train]); test rows of the drive stay zero.
            let mut drive = Array2::<f64>::zeros((k * n, p));
            for j in 0..k {
                for a in 0..p {
                    let w = c * self.delta[[j, a]];
                    if l + 1 == depth {
                        drive.row_mut(j * n + a).fill(w);
                    } else {
                        let g = &self.layers[l + 1].grad_kernel;
                        drive
                            .row_mut(j * n + a)
                            .assign(&(g.slice(s![k * p..(k + 1) * p, j * p + a]).to_owned() * w));
                    }
                }
            }
            z += &self.layers[l].phi_hist.slice(s![.., ..k * n]).dot(&drive);
        }
        let layer = &mut self.layers[l];
        let mut g = z;
        ndarray::Zip::from(&mut g)
            .and(layer.h.slice(s![.., ..p]))
            .for_each(|g, &h| *g *= act.d1(h));
        layer
            .g_hist
            .slice_mut(s![.., k * p..(k + 1) * p])
            .assign(&g);
        let row = g.t().dot(&layer.g_hist.slice(s![.., ..(k + 1) * p])) / m as f64;
        write_symmetric_row(&mut layer.grad_kernel, k, p, row.view());
        Ok(())
    }

    /// f(k) = γ₀⁻¹ ⟨z^L(k) φ(h^L(k))⟩ over all points.
    fn output(&self, k: usize) -> Array1<f64> {
        let (n, p) = (self.n, self.p);
        let top = self.layers.last().unwrap();
        let phi_k = top.phi_hist.slice(s![.., k * n..(k + 1) * n]);
        // z^L(k) = r^L + c Σ_{j<k} Σ_α Δ_α(j) φ_α(j): identical for all samples.
        let mut z = self.r_last.clone();
        for j in 0..k {
            for a in 0..p {
                z.scaled_add(self.c * self.delta[[j, a]], &top.phi_hist.column(j * n + a));
            }
        }
        phi_k.t().dot(&z) / (self.m as f64 * self.model.gamma0)
    }

    fn ntk(&self, k: usize) -> Array2<f64> {
        let (n, p) = (self.n, self.p);
        let (rn, rp) = (k * n..k * n + p, k * p..(k + 1) * p);
        let mut ntk = &self.problem.kx.slice(s![..p, ..p])
            * &self.layers[0].grad_kernel.slice(s![rp.clone(), rp.clone()]);
        for (l, layer) in self.layers.iter().enumerate() {
            let phi = layer.phi_kernel.slice(s![rn.clone(), rn.clone()]);
            match self.layers.get(l + 1) {
                Some(above) => {
                    ntk += &(&phi * &above.grad_kernel.slice(s![rp.clone(), rp.clone()]))
                }
                None => ntk += &phi,
            }
        }
        ntk
    }
}

impl Layer {
    fn phi_at(&self, k: usize, n: usize) -> ArrayView2<'_, f64> {
        self.phi_hist.slice(s![.., k * n..(k + 1) * n])
    }
}

fn write_symmetric_row(mat: &mut Array2<f64>, k: usize, b: usize, row: ArrayView2<f64>) {
    let w = (k + 1) * b;
    mat.slice_mut(s![k * b..w, ..w]).assign(&row);
    mat.slice_mut(s![..w, k * b..w]).assign(&row.t());
}

fn march(
    problem: &Problem,
    model: &Model,
    schedule: &Schedule,
    m: usize,
    seed: u64,
    replica: u64,
    progress: Progress,
) -> Result<RawRun> {
    let mut pop = Population::new(problem, model, schedule, m, seed, replica)?;
    let (p, depth) = (problem.n_train(), model.depth);
    let mut rec = Recorder::new(problem, schedule, false);
    let mut f0: Option<Array1<f64>> = None;
    for k in 0..=schedule.steps {
        for l in 0..depth {
            pop.forward(l, k)?;
        }
        // φ-history coordinates in the factor of the layer above's u-source (row k now exists).
        for l in 0..depth - 1 {
            let at = pop.u_factor[l].starts[k];
            let layer = &pop.layers[l];
            let zeta = pop.u_factor[l].coords(k, layer.phi_at(k, pop.n), layer.zeta_phi.view());
            let r = zeta.ncols();
            pop.layers[l]
                .zeta_phi
                .slice_mut(s![.., at..at + r])
                .assign(&zeta);
        }
        for l in (0..depth).rev() {
            pop.backward(l, k)?;
        }
        let mut f = pop.output(k);
        if model.centered {
            f -= &*f0.get_or_insert_with(|| f.clone());
        }
        let delta = &problem.y - &f.slice(s![..p]);
        pop.delta.row_mut(k).assign(&delta);
        rec.observe(k, f.view(), delta.view(), || pop.ntk(k))?;
        if k > 0 {
            progress(k);
        }
    }
    Ok(RawRun::from(
        rec.finish(SolverKind::DeepNonlinear, String::new())?,
    ))
}

pub fn solve(
    problem: &Problem,
    model: &Model,
    schedule: &Schedule,
    options: &SolverOptions,
    progress: Progress,
) -> Result<Trajectory> {
    if options.quadrature > 0 {
        return Err(DmftError::Invalid(
            "theory.quadrature must be 0 for deep-nonlinear (only Monte Carlo sampling is available)".into(),
        ));
    }
    let sizes = replica_sizes(options.sites)?;
    let r = sizes.len();
    // Replicas fill the first half of the progress count, the full population the second.
    let runs = sizes
        .iter()
        .enumerate()
        .map(|(i, &m)| {
            march(problem, model, schedule, m, options.seed, i as u64, &|k| {
                progress((i * schedule.steps + k) / (2 * r))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let full = march(
        problem,
        model,
        schedule,
        options.sites,
        options.seed,
        r as u64,
        &|k| progress((schedule.steps + k) / 2),
    )?;
    replica_trajectory(
        problem,
        schedule,
        runs,
        Some(full),
        SolverKind::DeepNonlinear,
        format!(
            "monte-carlo with Stein responses, {} sites per layer, extrapolated against {r} replicas of {} (which give the SE)",
            options.sites, sizes[0]
        ),
    )
}
