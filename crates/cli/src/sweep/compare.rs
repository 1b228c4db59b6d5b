//! The statistics that compare widths with the theory and with each other, shared by the
//! figures, report.md and summary.json (docs/sweep.md, "Statistics").
//!
//! Over S converged seeds, the mean of f has standard error sqrt(Var/S), and the seed
//! variance's standard error comes from the 4th central moment (`Moments::se_var`). Theory
//! and simulation are independent, so the error of a difference is the root sum of squares
//! of their errors; the theory's is its Monte Carlo replica error, zero for deterministic
//! solvers.

use crate::fluctuations::Fluctuations;
use dmft_runtime::Trajectory;
use dmft_runtime::mean_shift::MeanShift;
use dmft_sim::{EnsembleAverage, EnsembleStats, Moments};
use ndarray::{Array2, ArrayView1, Ix2, Zip};

/// Training or test points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Points {
    Train,
    Test,
}

impl Points {
    pub fn name(self) -> &'static str {
        match self {
            Points::Train => "train",
            Points::Test => "test",
        }
    }
}

/// One input point: which set, and its index there.
#[derive(Clone, Copy, Debug)]
pub struct Probe {
    pub points: Points,
    pub index: usize,
}

/// How many points of each set the per-point figures follow over time.
const PROBES_PER_SET: usize = 2;

/// The points whose time courses figures 2 and 3 show: the first two training and the
/// first two test points (fewer when the sets are smaller).
pub fn probes(p: usize, q: usize) -> Vec<Probe> {
    let take =
        |points, n: usize| (0..n.min(PROBES_PER_SET)).map(move |index| Probe { points, index });
    take(Points::Train, p)
        .chain(take(Points::Test, q))
        .collect()
}

/// The seed moments of f on one set of points (T_rec × n).
pub fn sim_f(stats: &EnsembleStats, points: Points) -> &Moments<Ix2> {
    match points {
        Points::Train => &stats.f_train,
        Points::Test => &stats.f_test,
    }
}

/// The theory's f on one set of points and its standard error (zeros when deterministic).
pub fn theory_f(traj: &Trajectory, points: Points) -> (&Array2<f64>, Array2<f64>) {
    let (f, se) = match points {
        Points::Train => (&traj.f_train, traj.f_train_se.as_ref()),
        Points::Test => (&traj.f_test, traj.f_test_se.as_ref()),
    };
    (f, se.cloned().unwrap_or_else(|| Array2::zeros(f.raw_dim())))
}

/// N·(E f_N − f∞) and its standard error N·sqrt(SE_N² + SE_∞²), each T_rec × n.
pub struct Scaled {
    pub value: Array2<f64>,
    pub se: Array2<f64>,
}

pub fn scaled_deviation(stats: &EnsembleStats, traj: &Trajectory, points: Points) -> Scaled {
    let n = stats.width as f64;
    let sim = sim_f(stats, points);
    let sim_se = sim.se_mean();
    let (f_inf, theory_se) = theory_f(traj, points);
    Scaled {
        value: (&sim.mean - f_inf) * n,
        se: Zip::from(&sim_se)
            .and(&theory_se)
            .map_collect(|a, b| n * a.hypot(*b)),
    }
}

/// Figure 3 in numbers: the deviations N·(E f_N − f∞) over every recorded time and every
/// train and test point of one width.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviationSummary {
    pub width: usize,
    /// The largest |N·(E f_N − f∞)|, and its standard error.
    pub max_abs: f64,
    pub se_at_max: f64,
    /// The largest |E f_N − f∞| / SE over entries with a positive SE; None if there are
    /// none (both sides exact, as at t = 0 of a centered run).
    pub max_z: Option<f64>,
    /// Fraction of entries with |E f_N − f∞| ≤ 2 SE (entries with SE = 0 count when equal).
    pub within_2se: f64,
    /// With `theory.mean_shift`: the largest |N·(E f_N − f∞) − m| / (N·SE), the deviation
    /// left once the O(1/N) shift m is accounted for.
    pub max_z_shifted: Option<f64>,
}

pub fn deviation_summary(
    stats: &EnsembleStats,
    traj: &Trajectory,
    shift: Option<&MeanShift>,
) -> DeviationSummary {
    let mut summary = DeviationSummary {
        width: stats.width,
        max_abs: 0.0,
        se_at_max: 0.0,
        max_z: None,
        within_2se: 0.0,
        max_z_shifted: None,
    };
    let (mut within, mut total) = (0usize, 0usize);
    for points in [Points::Train, Points::Test] {
        let scaled = scaled_deviation(stats, traj, points);
        if let Some(m) = shift {
            let m = match points {
                Points::Train => &m.shift_f_train,
                Points::Test => &m.shift_f_test,
            };
            for ((&v, &se), &m) in scaled.value.iter().zip(&scaled.se).zip(m) {
                if se > 0.0 {
                    let z = (v - m).abs() / se;
                    summary.max_z_shifted = Some(summary.max_z_shifted.map_or(z, |w| w.max(z)));
                }
            }
        }
        for (&v, &se) in scaled.value.iter().zip(&scaled.se) {
            total += 1;
            if v.abs() > summary.max_abs {
                summary.max_abs = v.abs();
                summary.se_at_max = se;
            }
            if se > 0.0 {
                let z = v.abs() / se;
                summary.max_z = Some(summary.max_z.map_or(z, |m: f64| m.max(z)));
                within += usize::from(z <= 2.0);
            } else {
                within += usize::from(v == 0.0);
            }
        }
    }
    summary.within_2se = within as f64 / total.max(1) as f64;
    summary
}

/// The propagator's N·Var (width-free) on one set of points (T_rec × n).
pub fn propagator_var(fl: &Fluctuations, points: Points) -> &Array2<f64> {
    match points {
        Points::Train => fl.var_f_train(),
        Points::Test => fl.var_f_test(),
    }
}

/// Below this fraction of its own largest value over time, a point's Σ_f counts as
/// collapsed (a training point once it is fitted): there both sides are ≈ 0 and the
/// comparison measures only the Monte Carlo floor of Σ_f and round-off, so it is left out.
pub const COLLAPSED: f64 = 0.01;

/// Figure 2 in numbers: N·Var_seeds[f_N] against Σ_f over every recorded time and every
/// train and test point of one width, in standard errors of the seed variance, leaving out
/// collapsed entries (see [`COLLAPSED`]).
#[derive(Clone, Debug, PartialEq)]
pub struct VarianceDeviation {
    /// Median and largest |N·Var − Σ_f| / (N·SE) over compared entries with a positive SE.
    pub median_abs_z: Option<f64>,
    pub max_abs_z: Option<f64>,
    /// The largest |N·Var − Σ_f| / Σ_f over compared entries.
    pub max_relative: Option<f64>,
    pub compared: usize,
    pub collapsed: usize,
}

pub fn variance_deviation(stats: &EnsembleStats, fl: &Fluctuations) -> VarianceDeviation {
    let mut acc = DeviationAccumulator::new(stats.width);
    for points in [Points::Train, Points::Test] {
        let m = sim_f(stats, points);
        let se = m.se_var();
        let sigma = propagator_var(fl, points);
        for col in 0..sigma.ncols() {
            acc.series(m.var.column(col), se.column(col), sigma.column(col));
        }
    }
    acc.finish()
}

/// The same comparison for the train loss (N·Var ℒ against the propagator's var_loss).
pub fn loss_variance_deviation(stats: &EnsembleStats, fl: &Fluctuations) -> VarianceDeviation {
    let mut acc = DeviationAccumulator::new(stats.width);
    acc.series(
        stats.loss.var.view(),
        stats.loss.se_var().view(),
        fl.var_loss().view(),
    );
    acc.finish()
}

/// The same comparison for every train NTK entry and the NTK's top eigenvalue.
pub fn ntk_variance_deviation(stats: &EnsembleStats, fl: &Fluctuations) -> VarianceDeviation {
    let mut acc = DeviationAccumulator::new(stats.width);
    let k = fl.ntk();
    let se = stats.ntk.se_var();
    let p = k.var_ntk.shape()[1];
    for mu in 0..p {
        for al in mu..p {
            let at = |a: &ndarray::Array3<f64>| a.slice(ndarray::s![.., mu, al]).to_owned();
            acc.series(
                at(&stats.ntk.var).view(),
                at(&se).view(),
                at(k.var_ntk).view(),
            );
        }
    }
    acc.series(
        stats.ntk_top.var.view(),
        stats.ntk_top.se_var().view(),
        k.var_ntk_top.view(),
    );
    acc.finish()
}

/// Collects |N·Var − Σ| / (N·SE) over time series, each leaving out its collapsed entries.
struct DeviationAccumulator {
    n: f64,
    z: Vec<f64>,
    max_relative: Option<f64>,
    compared: usize,
    collapsed: usize,
}

impl DeviationAccumulator {
    fn new(width: usize) -> Self {
        DeviationAccumulator {
            n: width as f64,
            z: Vec::new(),
            max_relative: None,
            compared: 0,
            collapsed: 0,
        }
    }

    /// One entry over the recorded times: seed variance, its SE, and the theory's N·Var.
    fn series(&mut self, var: ArrayView1<f64>, se: ArrayView1<f64>, want: ArrayView1<f64>) {
        let peak = want.iter().cloned().fold(0.0f64, f64::max);
        for ((&v, &e), &want) in var.iter().zip(&se).zip(&want) {
            if want <= COLLAPSED * peak {
                self.collapsed += 1;
                continue;
            }
            self.compared += 1;
            let diff = (self.n * v - want).abs();
            if e > 0.0 {
                self.z.push(diff / (self.n * e));
            }
            let r = diff / want;
            self.max_relative = Some(self.max_relative.map_or(r, |m| m.max(r)));
        }
    }

    fn finish(mut self) -> VarianceDeviation {
        self.z.sort_by(f64::total_cmp);
        VarianceDeviation {
            median_abs_z: self.z.get(self.z.len() / 2).copied(),
            max_abs_z: self.z.last().copied(),
            max_relative: self.max_relative,
            compared: self.compared,
            collapsed: self.collapsed,
        }
    }
}

/// The ensemble sizes whose averaged predictor has a loss estimate (at least two groups of
/// E converged seeds), in config order: the rows of ensemble_loss.npy.
pub fn ensemble_rows(stats: &EnsembleStats) -> Vec<&EnsembleAverage> {
    stats
        .ensemble_average
        .iter()
        .filter(|e| e.loss.is_some())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_take_the_first_two_points_of_each_set() {
        let names = |p, q| -> Vec<(Points, usize)> {
            probes(p, q).iter().map(|x| (x.points, x.index)).collect()
        };
        assert_eq!(
            names(5, 3),
            [
                (Points::Train, 0),
                (Points::Train, 1),
                (Points::Test, 0),
                (Points::Test, 1)
            ]
        );
        assert_eq!(names(1, 0), [(Points::Train, 0)]);
    }
}
