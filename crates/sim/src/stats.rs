//! Moments over seeds and their standard errors.
//!
//! For samples x_1..x_n (one per seed) the accumulator keeps the running mean and the
//! central sums M_p = Σ_i (x_i − x̄)^p, p = 2, 3, 4, updated one sample at a time with the
//! one-pass formulas of Pébay (2008) / Terriberry, which stay accurate when the mean is
//! large compared with the spread (a plain Σx² would cancel catastrophically). Samples are
//! pushed in seed order, so the result is a deterministic function of the seeds.
//!
//! Reported: mean x̄, unbiased variance s² = M₂/(n−1), and the 4th central moment
//! m₄ = M₄/n. Standard errors:
//! * of the mean, sqrt(s²/n);
//! * of the variance for Gaussian samples, s²·sqrt(2/(n−1));
//! * of the variance for any distribution, from Var(s²) = μ₄/n − σ⁴(n−3)/(n(n−1)) with the
//!   plug-in estimates μ₄ ≈ m₄, σ² ≈ s².

use ndarray::{Array, ArrayView, Dimension, Zip};

/// Standard error of a mean of `n` samples with variance `var`.
pub fn se_mean(var: f64, n: usize) -> f64 {
    (var / n as f64).sqrt()
}

/// Standard error of the unbiased variance of `n ≥ 2` Gaussian samples: s²·sqrt(2/(n−1)).
pub fn se_var_gaussian(var: f64, n: usize) -> f64 {
    var * (2.0 / (n as f64 - 1.0)).sqrt()
}

/// Standard error of the unbiased variance of `n ≥ 2` samples from their 4th central moment
/// `m4`: sqrt((m₄ − s⁴(n−3)/(n−1))/n). Equals [`se_var_gaussian`] when m₄ = 3s⁴, since
/// (3 − (n−3)/(n−1))/n = 2/(n−1). Negative plug-in estimates (possible for tiny n) are clipped to 0.
pub fn se_var_from_m4(var: f64, m4: f64, n: usize) -> f64 {
    let n = n as f64;
    ((m4 - var * var * (n - 3.0) / (n - 1.0)) / n)
        .max(0.0)
        .sqrt()
}

/// Sample moments of an array-valued quantity over `count ≥ 2` samples.
#[derive(Clone, Debug, PartialEq)]
pub struct Moments<D: Dimension> {
    pub count: usize,
    pub mean: Array<f64, D>,
    /// Unbiased variance M₂/(n−1).
    pub var: Array<f64, D>,
    /// Fourth central moment M₄/n.
    pub m4: Array<f64, D>,
}

impl<D: Dimension> Moments<D> {
    /// Elementwise [`se_mean`].
    pub fn se_mean(&self) -> Array<f64, D> {
        self.var.mapv(|v| se_mean(v, self.count))
    }

    /// Elementwise [`se_var_from_m4`].
    pub fn se_var(&self) -> Array<f64, D> {
        Zip::from(&self.var)
            .and(&self.m4)
            .map_collect(|&v, &m4| se_var_from_m4(v, m4, self.count))
    }

    /// Elementwise [`se_var_gaussian`].
    pub fn se_var_gaussian(&self) -> Array<f64, D> {
        self.var.mapv(|v| se_var_gaussian(v, self.count))
    }
}

/// One-pass accumulator of mean and central sums M₂, M₃, M₄ (see module docs).
#[derive(Clone, Debug)]
pub struct MomentAccumulator<D: Dimension> {
    count: usize,
    mean: Array<f64, D>,
    m2: Array<f64, D>,
    m3: Array<f64, D>,
    m4: Array<f64, D>,
}

impl<D: Dimension> MomentAccumulator<D> {
    pub fn new(shape: D) -> Self {
        MomentAccumulator {
            count: 0,
            mean: Array::zeros(shape.clone()),
            m2: Array::zeros(shape.clone()),
            m3: Array::zeros(shape.clone()),
            m4: Array::zeros(shape),
        }
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// Adds one sample. Panics if its shape differs from the accumulator's.
    pub fn push(&mut self, x: ArrayView<f64, D>) {
        let n1 = self.count as f64;
        self.count += 1;
        let n = self.count as f64;
        Zip::from(&mut self.mean)
            .and(&mut self.m2)
            .and(&mut self.m3)
            .and(&mut self.m4)
            .and(&x)
            .for_each(|mean, m2, m3, m4, &x| {
                let delta = x - *mean;
                let delta_n = delta / n;
                let delta_n2 = delta_n * delta_n;
                let term1 = delta * delta_n * n1;
                *mean += delta_n;
                // M₄ and M₃ use the old M₂ and M₃, so update in the order M₄, M₃, M₂.
                *m4 += term1 * delta_n2 * (n * n - 3.0 * n + 3.0) + 6.0 * delta_n2 * *m2
                    - 4.0 * delta_n * *m3;
                *m3 += term1 * delta_n * (n - 2.0) - 3.0 * delta_n * *m2;
                *m2 += term1;
            });
    }

    /// The moments, or None with fewer than two samples (no unbiased variance exists).
    pub fn finish(self) -> Option<Moments<D>> {
        if self.count < 2 {
            return None;
        }
        let n = self.count as f64;
        Some(Moments {
            count: self.count,
            mean: self.mean,
            var: self.m2 / (n - 1.0),
            m4: self.m4 / n,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array1, arr0};

    /// Two-pass reference moments of a sample.
    fn two_pass(xs: &[f64]) -> (f64, f64, f64) {
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
        let m4 = xs.iter().map(|x| (x - mean).powi(4)).sum::<f64>() / n;
        (mean, var, m4)
    }

    /// The one-pass update is algebraically exact, so it agrees with the two-pass formulas
    /// to rounding: values here are O(1e3) with spread O(1), and relative 1e-9 allows the
    /// ~1e3·ε cancellation in the two-pass reference itself.
    #[test]
    fn one_pass_moments_match_two_pass() {
        let xs: Vec<f64> = (0..37)
            .map(|i| 1000.0 + ((i * 7919) % 101) as f64 / 17.0)
            .collect();
        let mut acc = MomentAccumulator::new(ndarray::Ix0());
        for &x in &xs {
            acc.push(arr0(x).view());
        }
        let m = acc.finish().unwrap();
        let (mean, var, m4) = two_pass(&xs);
        let rel = |a: f64, b: f64| (a - b).abs() / b.abs();
        assert!(rel(m.mean[()], mean) < 1e-12);
        assert!(rel(m.var[()], var) < 1e-9, "{} vs {var}", m.var[()]);
        assert!(rel(m.m4[()], m4) < 1e-9, "{} vs {m4}", m.m4[()]);
    }

    #[test]
    fn fewer_than_two_samples_give_no_moments() {
        let mut acc = MomentAccumulator::new(ndarray::Ix1(3));
        assert!(acc.clone().finish().is_none());
        acc.push(Array1::ones(3).view());
        assert!(acc.finish().is_none());
    }

    #[test]
    fn variance_standard_errors_agree_for_gaussian_fourth_moment() {
        let (var, n) = (2.0, 1001);
        let gaussian = se_var_gaussian(var, n);
        let from_m4 = se_var_from_m4(var, 3.0 * var * var, n);
        // (3 − (n−3)/(n−1))/n = 2/(n−1), so the two coincide up to rounding.
        assert!((gaussian - from_m4).abs() < 1e-12 * gaussian);
        assert_eq!(se_mean(4.0, 16), 0.5);
    }
}
