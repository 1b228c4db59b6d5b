//! Power-law data in the proportional regime: lazy against rich loss exponents, for the D → ∞
//! theory and for finite-D networks (docs/proportional.md, "Power-law data"). Shared by the
//! `power_law_exponents` example and the slow test in tests/proportional.rs.

use dmft_runtime::Parameterization;
use dmft_runtime::proportional::{DataUse, LossCurves, Setting, Spectrum, solve};
use dmft_sim::proportional::run_seed;
use rayon::prelude::*;

/// Input dimension: theory and simulation share this finite spectrum.
pub const DIM: usize = 256;
/// λ_k ∝ k^{−a} with an isotropic teacher: the kernel (lazy) exponent of the test loss is
/// (a − 1)/a = 1/2; the hard-task theory of "How Feature Learning Can Improve Neural Scaling
/// Laws" gives 2χ/(1 + χ) = 2/3 for the rich regime.
pub const EXPONENT: f64 = 2.0;
pub const STEPS: usize = 400;
pub const ETA: f64 = 0.003;
/// Fit window in steps: late enough that the top modes are learned, early enough that the
/// learned modes stay far from the D-th (the finite-D cutoff steepens every curve).
pub const WINDOW: (usize, usize) = (100, 400);
/// γ = 0.5 is on the lazy side (its exponent equals that of γ = 0.25 to 0.004) with an
/// initial-function variance 1/(γ²ν) = 1 no larger than the teacher's; γ = 8 is the richest
/// strength stable at this η (γ = 16 diverges at step 128).
pub const REGIMES: [(&str, f64); 2] = [("lazy", 0.5), ("rich", 8.0)];

pub fn setting(gamma: f64) -> Setting {
    Setting {
        depth: 1,
        nu: 4.0,
        parameterization: Parameterization::Mup,
        gamma,
        residual: None,
        data: DataUse::Repeated { alpha: 2.0 },
        spectrum: Spectrum::power_law(DIM, EXPONENT).expect("valid spectrum"),
        eta: ETA,
        steps: STEPS,
    }
}

/// χ of ℒ ∝ k^{−χ}: minus the least-squares slope of log ℒ against log k over steps a..=b.
pub fn exponent(loss: &[f64], (a, b): (usize, usize)) -> f64 {
    let xs: Vec<f64> = (a..=b).map(|k| (k as f64).ln()).collect();
    let ys: Vec<f64> = (a..=b).map(|k| loss[k].ln()).collect();
    let n = xs.len() as f64;
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let sxy: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let sxx: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    -sxy / sxx
}

/// The theory curve has no noise; the error of one exponent is the curvature of the log-log
/// curve, shown by the exponents of the two halves (split at the geometric middle).
pub struct TheoryFit {
    pub curves: LossCurves,
    pub whole: f64,
    pub halves: (f64, f64),
}

impl TheoryFit {
    pub fn spread(&self) -> f64 {
        (self.halves.1 - self.halves.0).abs()
    }
}

pub fn theory(gamma: f64) -> TheoryFit {
    let curves = solve(&setting(gamma), &|_| {}).expect("proportional theory");
    let loss = curves.test.as_slice().expect("contiguous");
    let (a, b) = WINDOW;
    let mid = ((a * b) as f64).sqrt().round() as usize;
    TheoryFit {
        whole: exponent(loss, WINDOW),
        halves: (exponent(loss, (a, mid)), exponent(loss, (mid, b))),
        curves,
    }
}

/// Test-loss curves of seeds 0..S at dimension DIM (seed s has the same initialization,
/// teacher and data in every regime, so regimes can be compared seed by seed).
pub fn simulate(gamma: f64, seeds: usize) -> Vec<Vec<f64>> {
    let s = setting(gamma);
    (0..seeds)
        .into_par_iter()
        .map(|seed| {
            run_seed(&s, DIM, 0, seed)
                .expect("proportional simulation")
                .test
                .to_vec()
        })
        .collect()
}

/// Seed mean of each step and the standard error of that mean.
pub fn mean_and_se(curves: &[Vec<f64>]) -> (Vec<f64>, Vec<f64>) {
    let s = curves.len() as f64;
    let mean: Vec<f64> = (0..curves[0].len())
        .map(|k| curves.iter().map(|c| c[k]).sum::<f64>() / s)
        .collect();
    let se = (0..mean.len())
        .map(|k| {
            let var = curves.iter().map(|c| (c[k] - mean[k]).powi(2)).sum::<f64>() / (s - 1.0);
            (var / s).sqrt()
        })
        .collect();
    (mean, se)
}

/// A statistic of the seed-mean curves (one per regime, paired by seed) with its jackknife
/// standard error over seeds: leave seed i out of every regime, recompute, spread.
pub fn jackknife(regimes: &[&[Vec<f64>]], statistic: impl Fn(&[Vec<f64>]) -> f64) -> (f64, f64) {
    let seeds = regimes[0].len();
    let means = |skip: Option<usize>| -> Vec<Vec<f64>> {
        regimes
            .iter()
            .map(|curves| {
                let kept: Vec<&Vec<f64>> = (0..seeds)
                    .filter(|&i| Some(i) != skip)
                    .map(|i| &curves[i])
                    .collect();
                (0..curves[0].len())
                    .map(|k| kept.iter().map(|c| c[k]).sum::<f64>() / kept.len() as f64)
                    .collect()
            })
            .collect()
    };
    let full = statistic(&means(None));
    let loo: Vec<f64> = (0..seeds).map(|i| statistic(&means(Some(i)))).collect();
    let n = seeds as f64;
    let loo_mean = loo.iter().sum::<f64>() / n;
    let var = (n - 1.0) / n * loo.iter().map(|x| (x - loo_mean).powi(2)).sum::<f64>();
    (full, var.sqrt())
}
