//! Training data: a fixed dataset (train points, optional test points) and, for online SGD,
//! a sampler of fresh batches.
//!
//! Full-batch GD minimizes ℒ = (1/2P) Σ_μ (y_μ − f_μ)² over the P training points. Online SGD
//! draws a fresh batch of B points each step and follows the gradient of (1/2B) Σ_{batch} Δ²;
//! the dataset's "training" points then serve as the fixed evaluation set on which the
//! reported (population) loss, predictions and kernels are measured.

use crate::error::{Result, invalid};
use crate::rng::SimRng;
use dmft_runtime::Problem;
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis, concatenate};
use std::fmt;

/// Inputs are rows. Train points come first wherever train and test are stacked.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    x_train: Array2<f64>,
    y_train: Array1<f64>,
    x_test: Array2<f64>,
    y_test: Option<Array1<f64>>,
}

impl Dataset {
    /// Checks shapes (P ≥ 1, D ≥ 1, matching rows and columns) and finiteness.
    /// `x_test` may have zero rows (then it must still have D columns, or zero columns);
    /// empty test targets are then dropped, since there is no test loss to report.
    pub fn new(
        x_train: Array2<f64>,
        y_train: Array1<f64>,
        x_test: Array2<f64>,
        y_test: Option<Array1<f64>>,
    ) -> Result<Self> {
        let (p, d) = x_train.dim();
        if p == 0 || d == 0 {
            return Err(invalid(format!(
                "data.x_train must be at least 1×1, got {p}×{d}"
            )));
        }
        if y_train.len() != p {
            return Err(invalid(format!(
                "data.y_train has {} entries but data.x_train has {p} rows",
                y_train.len()
            )));
        }
        let x_test = if x_test.nrows() == 0 {
            Array2::zeros((0, d))
        } else {
            x_test
        };
        // Test targets for zero test points would make the test loss 0/0.
        let y_test = y_test.filter(|yt| !yt.is_empty() || !x_test.is_empty());
        if x_test.ncols() != d {
            return Err(invalid(format!(
                "data.x_test has {} columns but data.x_train has {d}",
                x_test.ncols()
            )));
        }
        if let Some(yt) = &y_test
            && yt.len() != x_test.nrows()
        {
            return Err(invalid(format!(
                "data.y_test has {} entries but data.x_test has {} rows",
                yt.len(),
                x_test.nrows()
            )));
        }
        check_finite("data.x_train", x_train.iter())?;
        check_finite("data.y_train", y_train.iter())?;
        check_finite("data.x_test", x_test.iter())?;
        if let Some(yt) = &y_test {
            check_finite("data.y_test", yt.iter())?;
        }
        Ok(Dataset {
            x_train,
            y_train,
            x_test,
            y_test,
        })
    }

    /// P, the number of training (or, for online SGD, evaluation) points.
    pub fn n_train(&self) -> usize {
        self.x_train.nrows()
    }

    /// Q, the number of test points.
    pub fn n_test(&self) -> usize {
        self.x_test.nrows()
    }

    /// D, the input dimension.
    pub fn input_dim(&self) -> usize {
        self.x_train.ncols()
    }

    pub fn x_train(&self) -> ArrayView2<'_, f64> {
        self.x_train.view()
    }

    pub fn y_train(&self) -> ArrayView1<'_, f64> {
        self.y_train.view()
    }

    pub fn x_test(&self) -> ArrayView2<'_, f64> {
        self.x_test.view()
    }

    pub fn y_test(&self) -> Option<ArrayView1<'_, f64>> {
        self.y_test.as_ref().map(|y| y.view())
    }

    /// All P+Q inputs, train rows first.
    pub fn x_all(&self) -> Array2<f64> {
        concatenate(Axis(0), &[self.x_train.view(), self.x_test.view()])
            .expect("train and test inputs have the same number of columns")
    }

    /// Train-train input kernel K^x = x_μ·x_α/D (P×P), the ℓ = 0 term of the NTK.
    pub fn kx_train(&self) -> Array2<f64> {
        self.x_train.dot(&self.x_train.t()) / self.input_dim() as f64
    }

    /// The same data reduced to what the infinite-width solvers need.
    pub fn to_problem(&self) -> Result<Problem> {
        Problem::from_inputs(
            self.x_train.view(),
            self.y_train.clone(),
            self.x_test.view(),
            self.y_test.clone(),
        )
        .map_err(|e| invalid(e.to_string()))
    }
}

fn check_finite<'a>(name: &str, mut values: impl Iterator<Item = &'a f64>) -> Result<()> {
    if values.any(|v| !v.is_finite()) {
        Err(invalid(format!("{name} contains NaN or Inf")))
    } else {
        Ok(())
    }
}

/// A data distribution for online SGD: returns a fresh batch (X: batch×D, y: batch) drawn
/// with the given generator. Implemented for any `Fn(&mut SimRng, usize) -> (X, y)`.
pub trait DataSampler: Sync {
    fn sample(&self, rng: &mut SimRng, batch: usize) -> (Array2<f64>, Array1<f64>);
}

impl<F> DataSampler for F
where
    F: Fn(&mut SimRng, usize) -> (Array2<f64>, Array1<f64>) + Sync,
{
    fn sample(&self, rng: &mut SimRng, batch: usize) -> (Array2<f64>, Array1<f64>) {
        self(rng, batch)
    }
}

/// How each step's gradient is formed.
#[derive(Clone, Copy)]
pub enum Training<'a> {
    /// Exact gradient of the loss over the dataset's P training points.
    FullBatch,
    /// A fresh batch of `batch` points from `sampler` every step (per-seed data stream);
    /// the dataset's training points are the fixed evaluation set.
    Online {
        batch: usize,
        sampler: &'a dyn DataSampler,
    },
}

impl fmt::Debug for Training<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Training::FullBatch => f.write_str("FullBatch"),
            Training::Online { batch, .. } => write!(f, "Online {{ batch: {batch} }}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn rejects_mismatched_shapes_and_non_finite_values_by_name() {
        let x = array![[1.0, 2.0], [3.0, 4.0]];
        let err = Dataset::new(x.clone(), array![1.0], Array2::zeros((0, 2)), None).unwrap_err();
        assert!(err.to_string().contains("data.y_train"), "{err}");
        let err = Dataset::new(x.clone(), array![1.0, 2.0], array![[1.0]], None).unwrap_err();
        assert!(err.to_string().contains("data.x_test"), "{err}");
        let err = Dataset::new(
            x.clone(),
            array![1.0, f64::NAN],
            Array2::zeros((0, 0)),
            None,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("data.y_train contains NaN"),
            "{err}"
        );
        let ok = Dataset::new(x, array![1.0, 2.0], Array2::zeros((0, 0)), None).unwrap();
        assert_eq!((ok.n_train(), ok.n_test(), ok.input_dim()), (2, 0, 2));
        assert_eq!(ok.kx_train(), array![[2.5, 5.5], [5.5, 12.5]]);
        assert_eq!(ok.to_problem().unwrap().kx, ok.kx_train());
    }
}
