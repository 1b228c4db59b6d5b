//! The finite-width propagator of a run: which one computed Σ_f, and which observables it
//! has. Every propagator gives N·Var of the predictions and of the loss; the two-layer μP
//! site propagator and the lazy universal form (any depth) also give the NTK's.

use dmft_runtime::deep_linear_propagator::DeepLinearFluctuations;
use dmft_runtime::mean_shift::MeanShift;
use dmft_runtime::propagator::PredictionFluctuations;
use ndarray::{Array1, Array2};

/// A computed propagator and which implementation computed it.
pub struct Fluctuations {
    pub sigma: Sigma,
    /// "generated:<variant>" (the variant's generated site recorder) or "reference".
    pub source: String,
    /// The next order, N(E f_N − f∞), when `theory.mean_shift = true`.
    pub mean_shift: Option<MeanShift>,
}

/// The propagator's observables, by the kind of network.
pub enum Sigma {
    /// Two-layer μP networks (model.depth = 1): predictions, loss and NTK.
    TwoLayer(Box<PredictionFluctuations>),
    /// The lazy universal form (lazy solver, any depth of a plain chain): predictions, loss
    /// and NTK.
    Lazy(Box<PredictionFluctuations>),
    /// Deep linear μP networks (model.depth ≥ 2), from the Hessian of the full action:
    /// predictions and loss.
    DeepLinear(Box<DeepLinearFluctuations>),
}

impl Fluctuations {
    /// Computed by a hand-written reference propagator.
    pub fn reference(sigma: Sigma) -> Self {
        Fluctuations {
            sigma,
            source: dmft_solvers::Source::Reference.to_string(),
            mean_shift: None,
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

    /// The propagator that also has the NTK variances (not the deep linear one).
    pub fn with_ntk(&self) -> Option<&PredictionFluctuations> {
        match &self.sigma {
            Sigma::TwoLayer(fl) | Sigma::Lazy(fl) => Some(fl.as_ref()),
            Sigma::DeepLinear(_) => None,
        }
    }
}
