//! The solver-facing description of an experiment and the trajectory a solver returns.

use crate::Activation;
use ndarray::{Array1, Array2, Array3, ArrayView2, s};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Errors a solver reports. Messages are one line and name the offending quantity.
#[derive(Debug, thiserror::Error)]
pub enum DmftError {
    #[error("invalid input: {0}")]
    Invalid(String),
    #[error(
        "training diverged at step {step} (loss {loss:.3e}); reduce train.eta (largest stable eta ≈ {eta_max:.3e} for the initial NTK)"
    )]
    Diverged {
        step: usize,
        loss: f64,
        eta_max: f64,
    },
    #[error("{0}")]
    Unsupported(String),
    #[error("numerical failure: {0}")]
    Numerical(String),
}

pub type Result<T> = std::result::Result<T, DmftError>;

/// Training and test inputs reduced to what the infinite-width theory needs:
/// the input Gram matrix K^x = x·x'/D over all points (train first, then test) and the targets.
#[derive(Clone, Debug)]
pub struct Problem {
    /// (P+Q)×(P+Q) input Gram matrix, train points first.
    pub kx: Array2<f64>,
    /// P training targets.
    pub y: Array1<f64>,
    /// Optional Q test targets (only used to report a test loss).
    pub y_test: Option<Array1<f64>>,
}

impl Problem {
    /// Builds the problem from raw inputs (rows are points). Checks shapes and finiteness.
    pub fn from_inputs(
        x_train: ArrayView2<f64>,
        y_train: Array1<f64>,
        x_test: ArrayView2<f64>,
        y_test: Option<Array1<f64>>,
    ) -> Result<Self> {
        let (p, d) = x_train.dim();
        if p == 0 || d == 0 {
            return Err(DmftError::Invalid(format!(
                "x_train must have at least one row and one column, got {p}×{d}"
            )));
        }
        if y_train.len() != p {
            return Err(DmftError::Invalid(format!(
                "y_train has {} entries but x_train has {p} rows",
                y_train.len()
            )));
        }
        if x_test.ncols() != d && x_test.nrows() > 0 {
            return Err(DmftError::Invalid(format!(
                "x_test has {} columns but x_train has {d}",
                x_test.ncols()
            )));
        }
        if let Some(yt) = &y_test
            && yt.len() != x_test.nrows()
        {
            return Err(DmftError::Invalid(format!(
                "y_test has {} entries but x_test has {} rows",
                yt.len(),
                x_test.nrows()
            )));
        }
        check_finite("x_train", x_train.iter())?;
        check_finite("y_train", y_train.iter())?;
        check_finite("x_test", x_test.iter())?;
        if let Some(yt) = &y_test {
            check_finite("y_test", yt.iter())?;
        }
        let q = x_test.nrows();
        let mut x = Array2::zeros((p + q, d));
        x.slice_mut(s![..p, ..]).assign(&x_train);
        if q > 0 {
            x.slice_mut(s![p.., ..]).assign(&x_test);
        }
        let kx = x.dot(&x.t()) / d as f64;
        Ok(Problem {
            kx,
            y: y_train,
            y_test,
        })
    }

    pub fn n_train(&self) -> usize {
        self.y.len()
    }

    pub fn n_test(&self) -> usize {
        self.kx.nrows() - self.y.len()
    }

    pub fn n_all(&self) -> usize {
        self.kx.nrows()
    }
}

fn check_finite<'a>(name: &str, mut values: impl Iterator<Item = &'a f64>) -> Result<()> {
    if values.any(|v| !v.is_finite()) {
        Err(DmftError::Invalid(format!("{name} contains NaN or Inf")))
    } else {
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Parameterization {
    /// Mean-field / μP: f = w·φ(h)/(γ₀N), step θ ← θ − ηγ₀²N∇ℒ.
    Mup,
    /// Neural tangent: f = w·φ(h)/√N, step θ ← θ − η∇ℒ. Its infinite-width limit is lazy.
    Ntk,
}

impl fmt::Display for Parameterization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Parameterization::Mup => "mup",
            Parameterization::Ntk => "ntk",
        })
    }
}

/// Whether gradient descent updates the readout w¹ or leaves it at its initial value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Readout {
    /// Every layer learns (theory.md section 1).
    #[default]
    Trained,
    /// Only the hidden weights learn: the backward field stays z = r, and the NTK loses its
    /// readout term Φ^L.
    Frozen,
}

impl fmt::Display for Readout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Readout::Trained => "trained",
            Readout::Frozen => "frozen",
        })
    }
}

/// The architecture the theory describes (theory.md section 1).
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    /// Number of hidden layers L (1 = two-layer network).
    pub depth: usize,
    pub activation: Activation,
    pub parameterization: Parameterization,
    /// Feature-learning strength γ₀ > 0 (ignored by the NTK parameterization).
    pub gamma0: f64,
    /// Train f − f₀ instead of f. At infinite width f₀ = 0, so only finite-M sampling sees it.
    pub centered: bool,
    /// Whether gradient descent trains the readout w¹ (Frozen: only the hidden weights learn).
    pub readout: Readout,
    /// Residual branch multiplier β: layers 2..L are h^{ℓ+1} = h^ℓ + (β/√L) W^ℓ φ(h^ℓ)/√N
    /// (the first layer, from the input, is not residual). None: the plain chain.
    pub residual: Option<f64>,
}

impl Model {
    /// (s, a): h^{ℓ+1} = s·h^ℓ + a·W^ℓ φ(h^ℓ)/√N and g^ℓ = s·g^{ℓ+1} + a·W^ℓᵀ g^{ℓ+1}/√N
    /// for the hidden weights ℓ = 1..L−1; a also scales their updates. Plain chain: (0, 1);
    /// residual: (1, β/√L).
    pub fn branch(&self) -> (f64, f64) {
        match self.residual {
            Some(beta) => (1.0, beta / (self.depth as f64).sqrt()),
            None => (0.0, 1.0),
        }
    }
}

/// Discrete-time gradient descent: `steps` updates of size `eta`, fields recorded every
/// `record_every` steps (step 0 and the last step are always recorded).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    pub eta: f64,
    pub steps: usize,
    pub record_every: usize,
}

impl Schedule {
    pub fn recorded_steps(&self) -> Vec<usize> {
        let mut ks: Vec<usize> = (0..=self.steps).step_by(self.record_every.max(1)).collect();
        if ks.last() != Some(&self.steps) {
            ks.push(self.steps);
        }
        ks
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SolverKind {
    Lazy,
    TwoLayer,
    DeepLinear,
    DeepNonlinear,
}

impl SolverKind {
    pub fn name(self) -> &'static str {
        match self {
            SolverKind::Lazy => "lazy",
            SolverKind::TwoLayer => "two-layer",
            SolverKind::DeepLinear => "deep-linear",
            SolverKind::DeepNonlinear => "deep-nonlinear",
        }
    }

    /// The solver `auto` picks: lazy for NTK parameterization, the closed form for linear
    /// networks, the two-layer site process for L = 1 (the only one with a frozen readout),
    /// sampling with responses otherwise.
    pub fn auto(model: &Model) -> SolverKind {
        if model.parameterization == Parameterization::Ntk {
            SolverKind::Lazy
        } else if model.readout == Readout::Frozen {
            SolverKind::TwoLayer
        } else if model.activation == Activation::Linear {
            SolverKind::DeepLinear
        } else if model.depth == 1 {
            SolverKind::TwoLayer
        } else {
            SolverKind::DeepNonlinear
        }
    }
}

impl fmt::Display for SolverKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Options of the averaging methods: Monte Carlo sites, Gauss–Hermite order, seed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SolverOptions {
    /// Number of single-site samples M for Monte Carlo averages.
    pub sites: usize,
    /// Gauss–Hermite points per dimension; 0 selects Monte Carlo where a choice exists.
    pub quadrature: usize,
    pub seed: u64,
}

impl Default for SolverOptions {
    fn default() -> Self {
        SolverOptions {
            sites: 100_000,
            quadrature: 0,
            seed: 0,
        }
    }
}

/// Recorded infinite-width trajectory. Arrays are indexed by recorded step first.
#[derive(Clone, Debug)]
pub struct Trajectory {
    pub steps: Vec<usize>,
    /// t = kη at each recorded step.
    pub t: Array1<f64>,
    pub f_train: Array2<f64>,
    pub f_test: Array2<f64>,
    /// ℒ = (1/2P) Σ_μ Δ_μ².
    pub loss: Array1<f64>,
    /// Test loss (1/2Q) Σ (y_test − f_test)², when test targets are known.
    pub test_loss: Option<Array1<f64>>,
    /// Train-train NTK K(k) = Σ_ℓ G^{ℓ+1}(k,k) ⊙ Φ^ℓ(k,k), shape T_rec × P × P.
    pub ntk: Array3<f64>,
    /// Monte Carlo standard errors of f (None for deterministic methods).
    pub f_train_se: Option<Array2<f64>>,
    pub f_test_se: Option<Array2<f64>>,
    pub loss_se: Option<Array1<f64>>,
    pub solver: SolverKind,
    /// How averages were computed, e.g. "closed form", "gauss-hermite 20^3", "monte-carlo M=100000".
    pub method: String,
}

/// Called once per completed training step, so a caller can drive a progress bar.
pub type Progress<'a> = &'a (dyn Fn(usize) + Sync);

pub fn no_progress(_: usize) {}

/// The teacher task of the unit tests, benchmarks and examples: P train and Q test points
/// x ~ 𝒩(0, I_dim) from `seed`, with targets y = β·x/√dim of a Gaussian teacher β, on the
/// test points too.
pub fn teacher_problem(p: usize, q: usize, dim: usize, seed: u64) -> Problem {
    use crate::sampling::{normal_matrix, replica_rng};
    let mut rng = replica_rng(seed, 0);
    let x = normal_matrix(&mut rng, p + q, dim);
    let beta = normal_matrix(&mut rng, dim, 1).column(0).to_owned();
    let y = x.dot(&beta) / (dim as f64).sqrt();
    let (x_train, x_test) = (x.slice(s![..p, ..]), x.slice(s![p.., ..]));
    Problem::from_inputs(
        x_train,
        y.slice(s![..p]).to_owned(),
        x_test,
        Some(y.slice(s![p..]).to_owned()),
    )
    .expect("a well-formed test problem")
}

/// The unit tests' two-layer μP network.
#[cfg(test)]
pub(crate) fn two_layer_model(
    activation: crate::Activation,
    gamma0: f64,
    centered: bool,
    readout: Readout,
) -> Model {
    Model {
        depth: 1,
        activation,
        parameterization: Parameterization::Mup,
        gamma0,
        centered,
        residual: None,
        readout,
    }
}
