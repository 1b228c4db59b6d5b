//! Experiment inputs: the training and test points a DMFT run is computed on.
//!
//! Two sources: a synthetic Gaussian task with a known teacher ([`GaussianTask`]) and arrays
//! stored in a NumPy `.npz` file ([`load_npz`]). Both produce a [`Dataset`], which reduces to
//! the solver's [`Problem`] (input Gram matrix and targets).

mod gaussian;
mod npz;

pub use gaussian::{GaussianTask, Teacher};
pub use npz::{NpzError, load_npz};

use dmft_runtime::Problem;
use ndarray::{Array1, Array2};

/// Raw inputs and targets. Rows of `x_train` and `x_test` are points in dimension D.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// P×D training inputs.
    pub x_train: Array2<f64>,
    /// P training targets.
    pub y_train: Array1<f64>,
    /// Q×D test inputs (Q may be 0).
    pub x_test: Array2<f64>,
    /// Q test targets, when known.
    pub y_test: Option<Array1<f64>>,
}

impl Dataset {
    pub fn n_train(&self) -> usize {
        self.x_train.nrows()
    }

    pub fn n_test(&self) -> usize {
        self.x_test.nrows()
    }

    pub fn dim(&self) -> usize {
        self.x_train.ncols()
    }

    /// The solver's view of the data: Gram matrix x·x'/D over train then test points.
    pub fn to_problem(&self) -> dmft_runtime::Result<Problem> {
        Problem::from_inputs(
            self.x_train.view(),
            self.y_train.clone(),
            self.x_test.view(),
            self.y_test.clone(),
        )
    }
}
