//! Loading a dataset from a NumPy `.npz` archive, with one-line errors that name the file,
//! the array and what was expected.
//!
//! Expected arrays: `x_train` (P×D), `y_train` (P), `x_test` (Q×D) and optionally `y_test`
//! (Q). float64 is read as is; float32 is widened to float64 (exactly). Anything else —
//! integers, other shapes, NaN or Inf — is refused rather than guessed at.

use crate::Dataset;
use ndarray::{Array1, Array2, ArrayD, Dimension, Ix1, Ix2, IxDyn, OwnedRepr};
use ndarray_npy::{NpzReader, ReadNpyError, ReadNpzError};
use std::fs::File;
use std::io;
use std::path::Path;

/// Why an `.npz` file could not be used. Every message starts with the file name.
#[derive(Debug, thiserror::Error)]
pub enum NpzError {
    #[error("{path}: cannot open: {source}")]
    Open { path: String, source: io::Error },
    #[error("{path}: not a NumPy .npz archive ({detail})")]
    NotNpz { path: String, detail: String },
    #[error("{path}: missing array \"{name}\" ({expected}); the file holds {found}")]
    Missing {
        path: String,
        name: &'static str,
        expected: &'static str,
        found: String,
    },
    #[error("{path}: array \"{name}\" has dtype {dtype}; expected float64 or float32")]
    DType {
        path: String,
        name: &'static str,
        dtype: String,
    },
    #[error("{path}: array \"{name}\" must be {expected}, got shape {shape:?}")]
    Shape {
        path: String,
        name: &'static str,
        expected: String,
        shape: Vec<usize>,
    },
    #[error("{path}: cannot read array \"{name}\": {detail}")]
    Read {
        path: String,
        name: &'static str,
        detail: String,
    },
    #[error("{path}: array \"{name}\" contains {value} at index {index:?}")]
    NonFinite {
        path: String,
        name: &'static str,
        value: f64,
        index: Vec<usize>,
    },
}

/// Reads and checks `x_train`, `y_train`, `x_test` and the optional `y_test` from `path`.
pub fn load_npz(path: &Path) -> Result<Dataset, NpzError> {
    let shown = path.display().to_string();
    let file = File::open(path).map_err(|source| NpzError::Open {
        path: shown.clone(),
        source,
    })?;
    let mut npz = NpzReader::new(file).map_err(|e| NpzError::NotNpz {
        path: shown.clone(),
        detail: e.to_string(),
    })?;
    let names = npz.names().map_err(|e| NpzError::NotNpz {
        path: shown.clone(),
        detail: e.to_string(),
    })?;
    let mut reader = Reader {
        npz,
        names,
        path: shown,
    };

    let x_train = reader.required("x_train", "P×D training inputs")?;
    let x_train = reader.matrix("x_train", x_train, "2-dimensional (P×D)")?;
    let (p, d) = x_train.dim();
    if p == 0 || d == 0 {
        return Err(reader.shape_error("x_train", "non-empty (P ≥ 1, D ≥ 1)", x_train.shape()));
    }
    let y_train = reader.required("y_train", "P training targets")?;
    let y_train = reader.vector("y_train", y_train, p, "x_train")?;
    let x_test = reader.required("x_test", "Q×D test inputs")?;
    let x_test = reader.matrix(
        "x_test",
        x_test,
        &format!("2-dimensional (Q×{d}, matching x_train)"),
    )?;
    if x_test.ncols() != d {
        let expected = format!("Q×{d} (x_train has D = {d} columns)");
        return Err(reader.shape_error("x_test", &expected, x_test.shape()));
    }
    let q = x_test.nrows();
    let y_test = match reader.optional("y_test")? {
        Some(a) => Some(reader.vector("y_test", a, q, "x_test")?),
        None => None,
    };
    Ok(Dataset {
        x_train,
        y_train,
        x_test,
        y_test,
    })
}

struct Reader {
    npz: NpzReader<File>,
    names: Vec<String>,
    path: String,
}

impl Reader {
    fn required(
        &mut self,
        name: &'static str,
        expected: &'static str,
    ) -> Result<ArrayD<f64>, NpzError> {
        self.optional(name)?.ok_or_else(|| {
            let found = if self.names.is_empty() {
                "no arrays".to_string()
            } else {
                self.names
                    .iter()
                    .map(|n| format!("\"{n}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            NpzError::Missing {
                path: self.path.clone(),
                name,
                expected,
                found,
            }
        })
    }

    /// Reads `name` as float64 (widening float32), checking every value is finite.
    fn optional(&mut self, name: &'static str) -> Result<Option<ArrayD<f64>>, NpzError> {
        if !self.names.iter().any(|n| n == name) {
            return Ok(None);
        }
        let array = match self.npz.by_name::<OwnedRepr<f64>, IxDyn>(name) {
            Ok(a) => a,
            Err(ReadNpzError::Npy(ReadNpyError::WrongDescriptor(_))) => {
                match self.npz.by_name::<OwnedRepr<f32>, IxDyn>(name) {
                    Ok(a) => a.mapv(f64::from),
                    Err(ReadNpzError::Npy(ReadNpyError::WrongDescriptor(dtype))) => {
                        return Err(NpzError::DType {
                            path: self.path.clone(),
                            name,
                            dtype: dtype.to_string(),
                        });
                    }
                    Err(e) => return Err(self.read_error(name, e)),
                }
            }
            Err(e) => return Err(self.read_error(name, e)),
        };
        if let Some((index, &value)) = array.indexed_iter().find(|(_, v)| !v.is_finite()) {
            let index = index.slice().to_vec();
            return Err(NpzError::NonFinite {
                path: self.path.clone(),
                name,
                value,
                index,
            });
        }
        Ok(Some(array))
    }

    fn matrix(
        &self,
        name: &'static str,
        a: ArrayD<f64>,
        expected: &str,
    ) -> Result<Array2<f64>, NpzError> {
        let shape = a.shape().to_vec();
        a.into_dimensionality::<Ix2>()
            .map_err(|_| self.shape_error(name, expected, &shape))
    }

    /// A 1-D array whose length must equal `len` (the row count named by `rows_of`).
    fn vector(
        &self,
        name: &'static str,
        a: ArrayD<f64>,
        len: usize,
        rows_of: &str,
    ) -> Result<Array1<f64>, NpzError> {
        let shape = a.shape().to_vec();
        let expected = format!("1-dimensional with {len} entries (one per {rows_of} row)");
        let v = a
            .into_dimensionality::<Ix1>()
            .map_err(|_| self.shape_error(name, &expected, &shape))?;
        if v.len() != len {
            return Err(self.shape_error(name, &expected, &shape));
        }
        Ok(v)
    }

    fn shape_error(&self, name: &'static str, expected: &str, shape: &[usize]) -> NpzError {
        NpzError::Shape {
            path: self.path.clone(),
            name,
            expected: expected.to_string(),
            shape: shape.to_vec(),
        }
    }

    fn read_error(&self, name: &'static str, e: ReadNpzError) -> NpzError {
        // The library's messages can embed the header text; keep the report on one line.
        let detail = e.to_string().replace(['\n', '\r'], " ");
        NpzError::Read {
            path: self.path.clone(),
            name,
            detail,
        }
    }
}
