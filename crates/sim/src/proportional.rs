//! Finite-D ground truth for the proportional regime (docs/proportional.md): deep linear
//! networks of width N = νD trained on P = αD Gaussian points (or one-pass SGD on fresh
//! batches of B = α_B·D), inputs x ~ N(0, Λ), teacher y = β*·x/√D.
//!
//! The network is the one of the theory, in parameter space: all weights N(0,1),
//! h¹ = W⁰x/√D, h^{ℓ+1} = W^ℓh^ℓ/√N (or h^ℓ + (β/√L)W^ℓh^ℓ/√N), f = c·w·h^L with
//! c = √D/(γN) (μP, step ηγ²N) or c = 1/√N (NTK, step ηD). Because the network is linear,
//! f(x) = β_f·x/√D with β_f = c W⁰ᵀg¹ (g^L = w, g^ℓ = P_ℓᵀ g^{ℓ+1}), and every gradient is an
//! outer product of a backward vector g^{ℓ+1} with the forward image a^ℓ of
//! m = (1/P) Σ_μ Δ_μ x_μ: this is exact algebra (checked against finite differences of the
//! loss computed by the plain forward pass), and costs O(L N² + P D) per step instead of
//! O(P N (D + L N)).

use crate::error::{Result, SimError, invalid};
use crate::gemm::gemm;
use crate::rng::{SimRng, keyed_rng};
use dmft_runtime::Parameterization;
use dmft_runtime::proportional::{DataUse, Setting};
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis, Zip};
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;

/// One network of the proportional setting at input dimension D.
#[derive(Clone, Debug)]
pub struct ProportionalNet {
    /// W⁰ (N×D), hidden W^ℓ (N×N, ℓ = 1..L−1), readout w (N).
    pub w0: Array2<f64>,
    pub hidden: Vec<Array2<f64>>,
    pub readout: Array1<f64>,
    /// Output scale c and step size of every parameter.
    out_scale: f64,
    lr: f64,
    /// Residual branch factor β/√L, or None for the plain chain.
    branch: Option<f64>,
}

impl ProportionalNet {
    pub fn init(setting: &Setting, dim: usize, rng: &mut SimRng) -> Self {
        let n = width(setting, dim);
        let mut draw = |r: usize, c: usize| Array2::from_shape_simple_fn((r, c), || normal(rng));
        let w0 = draw(n, dim);
        let hidden = (1..setting.depth).map(|_| draw(n, n)).collect();
        let readout = draw(n, 1).remove_axis(Axis(1));
        let gamma = setting.effective_gamma();
        let (d, nf) = (dim as f64, n as f64);
        let (out_scale, lr) = match setting.parameterization {
            Parameterization::Mup => (d.sqrt() / (gamma * nf), setting.eta * gamma * gamma * nf),
            Parameterization::Ntk => (1.0 / nf.sqrt(), setting.eta * d),
        };
        ProportionalNet {
            w0,
            hidden,
            readout,
            out_scale,
            lr,
            branch: setting.residual.map(|b| b / (setting.depth as f64).sqrt()),
        }
    }

    fn width(&self) -> usize {
        self.w0.nrows()
    }

    /// P_ℓ v for hidden layer ℓ (index into `hidden`): W v/√N, or v + (β/√L) W v/√N.
    fn layer(&self, l: usize, v: ArrayView1<f64>, transpose: bool) -> Array1<f64> {
        let w = &self.hidden[l];
        let w = if transpose { w.t() } else { w.view() };
        let scale = 1.0 / (self.width() as f64).sqrt();
        match self.branch {
            None => matvec(scale, w, v),
            Some(b) => &v + &matvec(b * scale, w, v),
        }
    }

    /// Backward vectors g¹..g^L (g^L = w, g^ℓ = P_ℓᵀ g^{ℓ+1}).
    fn backward(&self) -> Vec<Array1<f64>> {
        let depth = self.hidden.len() + 1;
        let mut g = vec![self.readout.clone(); depth];
        for l in (0..depth - 1).rev() {
            g[l] = self.layer(l, g[l + 1].view(), true);
        }
        g
    }

    /// β_f with f(x) = β_f·x/√D.
    pub fn effective_weights(&self) -> Array1<f64> {
        let g = self.backward();
        matvec(self.out_scale, self.w0.t(), g[0].view())
    }

    /// f on the rows of x by the plain layer-by-layer forward pass (the definition).
    pub fn predict(&self, x: ArrayView2<f64>) -> Array1<f64> {
        let d = x.ncols() as f64;
        let mut h = Array2::<f64>::zeros((self.width(), x.nrows()));
        gemm(1.0 / d.sqrt(), self.w0.view(), x.t(), 0.0, h.view_mut());
        for l in 0..self.hidden.len() {
            let mut next = Array2::<f64>::zeros(h.dim());
            let scale = 1.0 / (self.width() as f64).sqrt();
            match self.branch {
                None => gemm(scale, self.hidden[l].view(), h.view(), 0.0, next.view_mut()),
                Some(b) => {
                    next.assign(&h);
                    gemm(
                        b * scale,
                        self.hidden[l].view(),
                        h.view(),
                        1.0,
                        next.view_mut(),
                    );
                }
            }
            h = next;
        }
        h.t().dot(&self.readout) * self.out_scale
    }

    /// The factors every gradient is built from: backward vectors g^ℓ, forward images a^ℓ of
    /// m = (1/P) Σ_μ Δ_μ x_μ (a¹ = W⁰m/√D, a^{ℓ+1} = P_ℓ a^ℓ), m itself and the errors Δ.
    fn factors(&self, x: ArrayView2<f64>, y: ArrayView1<f64>) -> Factors {
        let (p, d) = (x.nrows() as f64, x.ncols() as f64);
        let g = self.backward();
        let beta = matvec(self.out_scale, self.w0.t(), g[0].view());
        let delta = &y - &matvec(1.0 / d.sqrt(), x, beta.view());
        let m = matvec(1.0 / p, x.t(), delta.view());
        let mut a = vec![matvec(1.0 / d.sqrt(), self.w0.view(), m.view())];
        for l in 0..self.hidden.len() {
            let next = self.layer(l, a[l].view(), false);
            a.push(next);
        }
        Factors { g, a, m, delta }
    }

    /// Coefficients of the rank-one gradients: ∂ℒ/∂W⁰ = c₀ g¹mᵀ, ∂ℒ/∂W^ℓ = c_h g^{ℓ+1}a^ℓᵀ,
    /// ∂ℒ/∂w = c_w a^L.
    fn coefficients(&self, d: f64) -> (f64, f64, f64) {
        let c = self.out_scale;
        let nf = self.width() as f64;
        let branch = self.branch.unwrap_or(1.0);
        (-c / d.sqrt(), -c * branch / nf.sqrt(), -c)
    }

    /// Dense gradients of ℒ = (1/2P)|y − f|² (P = rows of x): (∂W⁰, ∂W^ℓ, ∂w).
    pub fn gradients(
        &self,
        x: ArrayView2<f64>,
        y: ArrayView1<f64>,
    ) -> (Array2<f64>, Vec<Array2<f64>>, Array1<f64>) {
        let f = self.factors(x, y);
        let (c0, ch, cw) = self.coefficients(x.ncols() as f64);
        let d_w0 = outer(c0, f.g[0].view(), f.m.view());
        let d_hidden = (0..self.hidden.len())
            .map(|l| outer(ch, f.g[l + 1].view(), f.a[l].view()))
            .collect();
        (d_w0, d_hidden, f.a[self.hidden.len()].mapv(|v| cw * v))
    }

    /// One gradient step on (x, y), as in-place rank-one updates; returns Δ before the step.
    pub fn step(&mut self, x: ArrayView2<f64>, y: ArrayView1<f64>) -> Array1<f64> {
        let f = self.factors(x, y);
        let (c0, ch, cw) = self.coefficients(x.ncols() as f64);
        let lr = self.lr;
        rank_one_update(&mut self.w0, -lr * c0, f.g[0].view(), f.m.view());
        for (l, w) in self.hidden.iter_mut().enumerate() {
            rank_one_update(w, -lr * ch, f.g[l + 1].view(), f.a[l].view());
        }
        self.readout.scaled_add(-lr * cw, &f.a[self.hidden.len()]);
        f.delta
    }
}

struct Factors {
    g: Vec<Array1<f64>>,
    a: Vec<Array1<f64>>,
    m: Array1<f64>,
    delta: Array1<f64>,
}

/// N = round(νD), at least 1.
pub fn width(setting: &Setting, dim: usize) -> usize {
    ((setting.nu * dim as f64).round() as usize).max(1)
}

/// Per-dimension eigenvalues and teacher variances at dimension D: a one-entry spectrum is
/// broadcast, otherwise it must list D entries.
fn spectrum_at(setting: &Setting, dim: usize) -> Result<(Array1<f64>, Array1<f64>)> {
    let sp = &setting.spectrum;
    match sp.lambda.len() {
        1 => Ok((
            Array1::from_elem(dim, sp.lambda[0]),
            Array1::from_elem(dim, sp.teacher[0]),
        )),
        n if n == dim => Ok((
            Array1::from_vec(sp.lambda.clone()),
            Array1::from_vec(sp.teacher.clone()),
        )),
        n => Err(invalid(format!(
            "the spectrum lists {n} eigenvalues but the simulation has D = {dim}"
        ))),
    }
}

/// Loss curves of one seed: train ℒ̂(k) and population ℒ(k), k = 0..=T.
#[derive(Clone, Debug)]
pub struct SeedCurves {
    pub train: Array1<f64>,
    pub test: Array1<f64>,
}

/// Trains one network (seed `seed` at dimension D) and records both losses at every step.
/// Streams: keyed by (base_seed, D, seed) for the initialization, teacher and data.
pub fn run_seed(setting: &Setting, dim: usize, base_seed: u64, seed: usize) -> Result<SeedCurves> {
    setting.validate().map_err(|e| invalid(e.to_string()))?;
    let (lambda, teacher) = spectrum_at(setting, dim)?;
    let mut rng = keyed_rng(&[base_seed, dim as u64, seed as u64, 0x5052_4f50]);
    let mut net = ProportionalNet::init(setting, dim, &mut rng);
    // Teacher direction uniform on the sphere: β*_k = √b_k z_k √D/|z|. Only the second
    // moments b_k enter the DMFT; fixing |z|² = D removes the O(D^{-1/2}) seed-to-seed
    // fluctuation of the teacher norm, which the theory averages away.
    let z = Array1::from_shape_simple_fn(dim, || normal(&mut rng));
    let z_norm = (z.dot(&z) / dim as f64).sqrt();
    let beta_star = &teacher.mapv(f64::sqrt) * &z / z_norm;
    let sqrt_lambda = lambda.mapv(f64::sqrt);
    let d = dim as f64;
    let sample = |rows: usize, rng: &mut SimRng| {
        let mut x = Array2::from_shape_simple_fn((rows, dim), || normal(rng));
        x *= &sqrt_lambda;
        let y = matvec(1.0 / d.sqrt(), x.view(), beta_star.view());
        (x, y)
    };
    let rows = |r: f64| ((r * d).round() as usize).max(1);
    let fixed = match setting.data {
        DataUse::Repeated { alpha } => Some(sample(rows(alpha), &mut rng)),
        DataUse::OnePass { .. } => None,
    };
    let t1 = setting.steps + 1;
    let (mut train, mut test) = (Array1::zeros(t1), Array1::zeros(t1));
    for k in 0..t1 {
        let v = &beta_star - &net.effective_weights();
        test[k] = 0.5 * (&v * &v * &lambda).sum() / d;
        let delta = match &fixed {
            Some((x, y)) => net.step(x.view(), y.view()),
            None => {
                let (x, y) = sample(rows(setting.step_ratio()), &mut rng);
                net.step(x.view(), y.view())
            }
        };
        train[k] = 0.5 * delta.dot(&delta) / delta.len() as f64;
        if !(train[k].is_finite() && test[k].is_finite()) {
            return Err(SimError::Diverged { step: k, dim, seed });
        }
    }
    Ok(SeedCurves { train, test })
}

/// Mean and standard error of the mean over seeds of both loss curves.
#[derive(Clone, Debug)]
pub struct CurveStats {
    pub seeds: usize,
    pub train: Array1<f64>,
    pub train_se: Array1<f64>,
    pub test: Array1<f64>,
    pub test_se: Array1<f64>,
}

/// Runs seeds 0..S in parallel and reduces them in seed order (thread-count independent).
pub fn run_ensemble(
    setting: &Setting,
    dim: usize,
    seeds: usize,
    base_seed: u64,
) -> Result<CurveStats> {
    if seeds < 2 {
        return Err(invalid(format!(
            "sim.seeds must be at least 2 to form a standard error (got {seeds})"
        )));
    }
    let runs: Vec<SeedCurves> = (0..seeds)
        .into_par_iter()
        .map(|s| run_seed(setting, dim, base_seed, s))
        .collect::<Result<_>>()?;
    let stats = |pick: fn(&SeedCurves) -> &Array1<f64>| {
        let stacked = ndarray::stack(
            Axis(0),
            &runs.iter().map(|r| pick(r).view()).collect::<Vec<_>>(),
        )
        .expect("seed curves share one length");
        let mean = stacked.mean_axis(Axis(0)).expect("at least two seeds");
        let var = stacked.var_axis(Axis(0), 1.0);
        let se = var.mapv(|v| (v / seeds as f64).sqrt());
        (mean, se)
    };
    let (train, train_se) = stats(|r| &r.train);
    let (test, test_se) = stats(|r| &r.test);
    Ok(CurveStats {
        seeds,
        train,
        train_se,
        test,
        test_se,
    })
}

fn normal(rng: &mut SimRng) -> f64 {
    StandardNormal.sample(rng)
}

/// s·A v, single-threaded.
fn matvec(s: f64, a: ArrayView2<f64>, v: ArrayView1<f64>) -> Array1<f64> {
    let mut out = Array2::<f64>::zeros((a.nrows(), 1));
    let v2 = v.insert_axis(Axis(1));
    gemm(s, a, v2, 0.0, out.view_mut());
    out.remove_axis(Axis(1))
}

/// W ← W + s·u vᵀ.
fn rank_one_update(w: &mut Array2<f64>, s: f64, u: ArrayView1<f64>, v: ArrayView1<f64>) {
    Zip::from(w.rows_mut()).and(&u).for_each(|mut row, &ui| {
        row.scaled_add(s * ui, &v);
    });
}

/// s·u vᵀ.
fn outer(s: f64, u: ArrayView1<f64>, v: ArrayView1<f64>) -> Array2<f64> {
    let mut out = Array2::<f64>::zeros((u.len(), v.len()));
    Zip::from(out.rows_mut()).and(&u).for_each(|mut row, &ui| {
        row.assign(&v);
        row *= s * ui;
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use dmft_runtime::proportional::Spectrum;

    fn small(depth: usize, parameterization: Parameterization, residual: Option<f64>) -> Setting {
        Setting {
            depth,
            nu: 1.5,
            parameterization,
            gamma: 0.7,
            residual,
            data: DataUse::Repeated { alpha: 1.5 },
            spectrum: Spectrum::isotropic(),
            eta: 0.1,
            steps: 3,
        }
    }

    /// ℒ = (1/2P)|y − f|² with f from the plain forward pass.
    fn loss(net: &ProportionalNet, x: ArrayView2<f64>, y: ArrayView1<f64>) -> f64 {
        let r = &y - &net.predict(x);
        0.5 * r.dot(&r) / y.len() as f64
    }

    /// The rank-one gradients against central differences of the loss of the plain forward
    /// pass, for every parameter; O(h²) truncation with h = 1e-5 leaves ~1e-9 relative error.
    #[test]
    fn gradients_match_finite_differences() {
        for (depth, par, res) in [
            (1, Parameterization::Mup, None),
            (3, Parameterization::Mup, None),
            (3, Parameterization::Ntk, None),
            (3, Parameterization::Mup, Some(0.8)),
        ] {
            let setting = small(depth, par, res);
            let dim = 6;
            let mut rng = keyed_rng(&[9, depth as u64]);
            let net = ProportionalNet::init(&setting, dim, &mut rng);
            let x = Array2::from_shape_simple_fn((7, dim), || normal(&mut rng));
            let y = Array1::from_shape_simple_fn(7, || normal(&mut rng));
            let (d_w0, d_hidden, d_w) = net.gradients(x.view(), y.view());
            let h = 1e-5;
            let check = |analytic: f64, perturb: &dyn Fn(&mut ProportionalNet, f64)| {
                let (mut up, mut down) = (net.clone(), net.clone());
                perturb(&mut up, h);
                perturb(&mut down, -h);
                let numeric =
                    (loss(&up, x.view(), y.view()) - loss(&down, x.view(), y.view())) / (2.0 * h);
                assert!(
                    (numeric - analytic).abs() < 1e-7 * (1.0 + analytic.abs()),
                    "depth {depth} {par} {res:?}: analytic {analytic} vs numeric {numeric}"
                );
            };
            for ((i, j), &g) in d_w0.indexed_iter() {
                check(g, &|n, e| n.w0[[i, j]] += e);
            }
            for (l, d) in d_hidden.iter().enumerate() {
                for ((i, j), &g) in d.indexed_iter() {
                    check(g, &|n, e| n.hidden[l][[i, j]] += e);
                }
            }
            for (i, &g) in d_w.indexed_iter() {
                check(g, &|n, e| n.readout[i] += e);
            }
        }
    }

    /// f(x) = β_f·x/√D: the effective weights reproduce the plain forward pass.
    #[test]
    fn effective_weights_reproduce_the_forward_pass() {
        let setting = small(3, Parameterization::Mup, Some(1.0));
        let mut rng = keyed_rng(&[3]);
        let net = ProportionalNet::init(&setting, 8, &mut rng);
        let x = Array2::from_shape_simple_fn((5, 8), || normal(&mut rng));
        let via_beta = x.dot(&net.effective_weights()) / 8f64.sqrt();
        let direct = net.predict(x.view());
        for (a, b) in via_beta.iter().zip(&direct) {
            assert!((a - b).abs() < 1e-12 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }

    /// Seeds are deterministic and independent of the thread count.
    #[test]
    fn ensemble_is_deterministic() {
        let setting = small(2, Parameterization::Mup, None);
        let a = run_ensemble(&setting, 16, 4, 5).unwrap();
        let b = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| run_ensemble(&setting, 16, 4, 5).unwrap());
        assert_eq!(a.train, b.train);
        assert_eq!(a.test, b.test);
    }
}
