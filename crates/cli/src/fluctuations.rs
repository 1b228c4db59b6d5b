//! The finite-width propagator of a run: which one computed Σ_f, and which observables it
//! has. Every propagator gives N·Var of the predictions, of the loss and of the NTK.

use dmft_runtime::deep_linear_propagator::DeepLinearFluctuations;
use dmft_runtime::kernel_variances::KernelVariances;
use dmft_runtime::mean_shift::MeanShift;
use dmft_runtime::propagator::PredictionFluctuations;
use ndarray::{Array1, Array2, Array3};

/// A computed propagator and which implementation computed it.
pub struct Fluctuations {
    pub sigma: Sigma,
    /// "generated:<variant>" (the variant's generated site recorder) or "reference".
    pub source: String,
    /// The next order, N(E f_N − f∞), when `theory.mean_shift = true`.
    pub mean_shift: Option<MeanShift>,
    /// `theory.kernel_variances = true`: write the hidden kernels' variances (the deep linear
    /// propagator computes them in any case; the two-layer one only when asked).
    pub kernel_variances: bool,
}

/// The propagator's observables, by the kind of network.
pub enum Sigma {
    /// Two-layer μP networks (model.depth = 1): predictions, loss and NTK.
    TwoLayer(Box<PredictionFluctuations>),
    /// The lazy universal form (lazy solver, any depth of a plain chain): predictions, loss
    /// and NTK.
    Lazy(Box<PredictionFluctuations>),
    /// Deep linear μP networks (model.depth ≥ 2), from the Hessian of the full action:
    /// predictions, loss, NTK and the kernels of every layer.
    DeepLinear(Box<DeepLinearFluctuations>),
}

impl Fluctuations {
    /// Computed by a hand-written reference propagator.
    pub fn reference(sigma: Sigma) -> Self {
        Fluctuations {
            sigma,
            source: dmft_solvers::Source::Reference.to_string(),
            mean_shift: None,
            kernel_variances: false,
        }
    }

    /// The name recorded in summary.json.
    pub fn propagator(&self) -> &'static str {
        match &self.sigma {
            Sigma::TwoLayer(_) => "two-layer",
            Sigma::Lazy(_) => "lazy",
            Sigma::DeepLinear(fl) if fl.residual.is_some() => "residual-deep-linear",
            Sigma::DeepLinear(_) => "deep-linear",
        }
    }

    pub fn t(&self) -> &Array1<f64> {
        match &self.sigma {
            Sigma::TwoLayer(fl) | Sigma::Lazy(fl) => &fl.t,
            Sigma::DeepLinear(fl) => &fl.t,
        }
    }

    /// N·Var[f] on the train points, T_rec × P.
    pub fn var_f_train(&self) -> &Array2<f64> {
        match &self.sigma {
            Sigma::TwoLayer(fl) | Sigma::Lazy(fl) => &fl.var_f_train,
            Sigma::DeepLinear(fl) => &fl.var_f_train,
        }
    }

    /// N·Var[f] on the test points, T_rec × Q.
    pub fn var_f_test(&self) -> &Array2<f64> {
        match &self.sigma {
            Sigma::TwoLayer(fl) | Sigma::Lazy(fl) => &fl.var_f_test,
            Sigma::DeepLinear(fl) => &fl.var_f_test,
        }
    }

    /// N·Var of the train loss, T_rec.
    pub fn var_loss(&self) -> &Array1<f64> {
        match &self.sigma {
            Sigma::TwoLayer(fl) | Sigma::Lazy(fl) => &fl.var_loss,
            Sigma::DeepLinear(fl) => &fl.var_loss,
        }
    }

    /// N·Var of the hidden kernels of every layer, when `theory.kernel_variances = true`.
    pub fn kernels(&self) -> Option<&KernelVariances> {
        match &self.sigma {
            Sigma::TwoLayer(fl) | Sigma::Lazy(fl) => fl.kernels.as_ref(),
            Sigma::DeepLinear(fl) => self.kernel_variances.then_some(&fl.kernels),
        }
    }

    /// The NTK observables: every propagator has them (the two-layer ones from the NTK
    /// entries' site tangents, the deep linear one from the layer kernels).
    pub fn ntk(&self) -> NtkVariances<'_> {
        match &self.sigma {
            Sigma::TwoLayer(fl) | Sigma::Lazy(fl) => NtkVariances {
                var_ntk: &fl.var_ntk,
                ntk_top: &fl.ntk_top,
                var_ntk_top: &fl.var_ntk_top,
                crossing_jump_ratio: Some(fl.crossing_jump_ratio),
            },
            Sigma::DeepLinear(fl) => NtkVariances {
                var_ntk: &fl.var_ntk,
                ntk_top: &fl.ntk_top,
                var_ntk_top: &fl.var_ntk_top,
                crossing_jump_ratio: None,
            },
        }
    }
}

/// N·Var of the train NTK entries and of its top eigenvalue, with the infinite-width top
/// eigenvalue, at the recorded steps.
pub struct NtkVariances<'a> {
    pub var_ntk: &'a Array3<f64>,
    pub ntk_top: &'a Array1<f64>,
    pub var_ntk_top: &'a Array1<f64>,
    /// The relu crossing-kernel diagnostic of the two-layer site propagator.
    pub crossing_jump_ratio: Option<f64>,
}
