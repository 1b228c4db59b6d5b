//! The 8×8 handwritten digits (scikit-learn's copy of the UCI set, 1797 images) as a
//! regression task with ±1 targets.
//!
//! `data/digits.npz` (written by `scripts/export_digits.py`) holds `x`, 1797×64 pixel
//! intensities in [0, 1], and `label`, the digits 0..9. A task picks two classes (or one
//! class against the rest), draws n_train + n_test distinct images with a seeded shuffle,
//! centres them on the training mean image and rescales by one scalar so the training
//! inputs have mean x·x/D = 1, the O(1) input-kernel scale the theory assumes.

use crate::data::Dataset;
use crate::error::{Result, SimError, invalid};
use crate::rng::keyed_rng;
use ndarray::{Array1, Array2, Axis};
use ndarray_npy::NpzReader;
use rand::seq::SliceRandom;
use std::fmt;
use std::fs::File;
use std::io::{Cursor, Read, Seek};
use std::path::{Path, PathBuf};

/// Inputs (rows) and integer labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Digits {
    pub x: Array2<f64>,
    pub label: Array1<i64>,
}

/// `data/digits.npz` at the workspace root, as shipped.
pub fn shipped_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/digits.npz")
}

/// Reads arrays `x` (2-D float64) and `label` (1-D int64, one per row of x) from an
/// uncompressed npz archive.
pub fn load(path: impl AsRef<Path>) -> Result<Digits> {
    let path = path.as_ref();
    let shown = path.display().to_string();
    let file = File::open(path).map_err(|e| SimError::Data {
        path: shown.clone(),
        reason: format!("cannot open: {e}"),
    })?;
    parse(file, &shown)
}

/// [`load`] for an archive already in memory, e.g. the shipped file embedded in a binary
/// with `include_bytes!`, so that it works from any working directory. `name` stands for
/// the file in error messages.
pub fn from_bytes(bytes: &[u8], name: &str) -> Result<Digits> {
    parse(Cursor::new(bytes), name)
}

fn parse(reader: impl Read + Seek, name: &str) -> Result<Digits> {
    let error = |reason: String| SimError::Data {
        path: name.to_string(),
        reason,
    };
    let mut npz = NpzReader::new(reader)
        .map_err(|e| error(format!("not a readable (uncompressed) npz archive: {e}")))?;
    let x: Array2<f64> = npz
        .by_name("x")
        .map_err(|e| error(format!("array \"x\" (expected 2-D float64): {e}")))?;
    let label: Array1<i64> = npz
        .by_name("label")
        .map_err(|e| error(format!("array \"label\" (expected 1-D int64): {e}")))?;
    if x.nrows() == 0 || x.ncols() == 0 {
        return Err(error(format!(
            "array \"x\" is empty ({}×{})",
            x.nrows(),
            x.ncols()
        )));
    }
    if label.len() != x.nrows() {
        return Err(error(format!(
            "array \"label\" has {} entries but array \"x\" has {} rows",
            label.len(),
            x.nrows()
        )));
    }
    if x.iter().any(|v| !v.is_finite()) {
        return Err(error("array \"x\" contains NaN or Inf".into()));
    }
    Ok(Digits { x, label })
}

/// Which images become +1 and which −1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClassSplit {
    /// Class `.0` is +1, class `.1` is −1, others are unused.
    Pair(i64, i64),
    /// The class is +1, every other class −1.
    OneVsRest(i64),
}

impl ClassSplit {
    fn target(self, label: i64) -> Option<f64> {
        match self {
            ClassSplit::Pair(pos, _) | ClassSplit::OneVsRest(pos) if label == pos => Some(1.0),
            ClassSplit::Pair(_, neg) if label == neg => Some(-1.0),
            ClassSplit::Pair(..) => None,
            ClassSplit::OneVsRest(_) => Some(-1.0),
        }
    }
}

impl fmt::Display for ClassSplit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClassSplit::Pair(a, b) => write!(f, "classes {a} vs {b}"),
            ClassSplit::OneVsRest(a) => write!(f, "class {a} vs rest"),
        }
    }
}

/// Tag separating the task's shuffle stream from the seed streams of training.
const TASK_STREAM: u64 = 0x6469_6769_7473; // "digits"

/// A ±1 regression task from `split`: n_train training and n_test test images chosen by a
/// shuffle seeded with `seed`, centred and scaled as in the module docs.
pub fn binary_task(
    digits: &Digits,
    split: ClassSplit,
    n_train: usize,
    n_test: usize,
    seed: u64,
) -> Result<Dataset> {
    if let ClassSplit::Pair(a, b) = split
        && a == b
    {
        return Err(invalid(format!(
            "digits.classes are both {a}; pick two different digits"
        )));
    }
    if n_train == 0 {
        return Err(invalid("digits.n_train must be at least 1 (got 0)"));
    }
    let mut eligible: Vec<usize> = (0..digits.label.len())
        .filter(|&i| split.target(digits.label[i]).is_some())
        .collect();
    for (sign, name) in [(1.0, "+1"), (-1.0, "−1")] {
        if !eligible
            .iter()
            .any(|&i| split.target(digits.label[i]) == Some(sign))
        {
            return Err(invalid(format!(
                "digits.classes: {split} has no image with target {name}"
            )));
        }
    }
    if n_train + n_test > eligible.len() {
        return Err(invalid(format!(
            "digits.n_train + digits.n_test = {} exceeds the {} images of {split}",
            n_train + n_test,
            eligible.len()
        )));
    }
    eligible.shuffle(&mut keyed_rng(&[seed, TASK_STREAM]));
    let (train, test) = eligible[..n_train + n_test].split_at(n_train);
    let targets = |idx: &[usize]| {
        idx.iter()
            .map(|&i| {
                split
                    .target(digits.label[i])
                    .expect("eligible images have a target")
            })
            .collect()
    };
    let mut x_train = digits.x.select(Axis(0), train);
    let mut x_test = digits.x.select(Axis(0), test);
    let mean = x_train.mean_axis(Axis(0)).expect("n_train ≥ 1");
    x_train -= &mean;
    x_test -= &mean;
    let d = x_train.ncols() as f64;
    let mean_norm = x_train.iter().map(|v| v * v).sum::<f64>() / (n_train as f64 * d);
    if mean_norm <= 0.0 {
        return Err(invalid(format!(
            "digits.n_train = {n_train} images are all identical; no input scale can be set"
        )));
    }
    let scale = mean_norm.sqrt();
    x_train /= scale;
    x_test /= scale;
    Dataset::new(x_train, targets(train), x_test, Some(targets(test)))
}
