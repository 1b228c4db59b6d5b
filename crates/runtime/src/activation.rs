//! Pointwise activations φ with their first three derivatives.
//!
//! relu'' is a Dirac delta at 0; `d2` returns 0 for relu and callers that need the
//! delta's contribution (response functions, propagator sensitivities) handle it explicitly.

use serde::{Deserialize, Serialize};
use std::f64::consts::{FRAC_1_SQRT_2, FRAC_2_SQRT_PI};
use std::fmt;
use std::str::FromStr;

const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Activation {
    Linear,
    Relu,
    Tanh,
    Erf,
    Gelu,
    Softplus,
}

impl Activation {
    pub const ALL: [Activation; 6] = [
        Activation::Linear,
        Activation::Relu,
        Activation::Tanh,
        Activation::Erf,
        Activation::Gelu,
        Activation::Softplus,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Activation::Linear => "linear",
            Activation::Relu => "relu",
            Activation::Tanh => "tanh",
            Activation::Erf => "erf",
            Activation::Gelu => "gelu",
            Activation::Softplus => "softplus",
        }
    }

    #[inline]
    pub fn phi(self, x: f64) -> f64 {
        match self {
            Activation::Linear => x,
            Activation::Relu => x.max(0.0),
            Activation::Tanh => x.tanh(),
            Activation::Erf => libm::erf(x),
            Activation::Gelu => x * normal_cdf(x),
            Activation::Softplus => softplus(x),
        }
    }

    /// φ'(x). For relu the value at exactly 0 is taken as 0 (a measure-zero choice).
    #[inline]
    pub fn d1(self, x: f64) -> f64 {
        match self {
            Activation::Linear => 1.0,
            Activation::Relu => {
                if x > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            Activation::Tanh => {
                let t = x.tanh();
                1.0 - t * t
            }
            Activation::Erf => FRAC_2_SQRT_PI * (-x * x).exp(),
            Activation::Gelu => normal_cdf(x) + x * normal_pdf(x),
            Activation::Softplus => sigmoid(x),
        }
    }

    /// φ''(x), with the relu delta left out (see module docs).
    #[inline]
    pub fn d2(self, x: f64) -> f64 {
        match self {
            Activation::Linear | Activation::Relu => 0.0,
            Activation::Tanh => {
                let t = x.tanh();
                -2.0 * t * (1.0 - t * t)
            }
            Activation::Erf => -2.0 * x * FRAC_2_SQRT_PI * (-x * x).exp(),
            Activation::Gelu => normal_pdf(x) * (2.0 - x * x),
            Activation::Softplus => {
                let s = sigmoid(x);
                s * (1.0 - s)
            }
        }
    }

    /// φ'''(x), with relu's distributional parts left out (see module docs).
    #[inline]
    pub fn d3(self, x: f64) -> f64 {
        match self {
            Activation::Linear | Activation::Relu => 0.0,
            Activation::Tanh => {
                let t = x.tanh();
                (6.0 * t * t - 2.0) * (1.0 - t * t)
            }
            Activation::Erf => (4.0 * x * x - 2.0) * FRAC_2_SQRT_PI * (-x * x).exp(),
            Activation::Gelu => normal_pdf(x) * (x * x * x - 4.0 * x),
            Activation::Softplus => {
                let s = sigmoid(x);
                s * (1.0 - s) * (1.0 - 2.0 * s)
            }
        }
    }

    /// Whether φ'' has a Dirac part (a kink), so pathwise second derivatives miss terms.
    pub fn has_kink(self) -> bool {
        matches!(self, Activation::Relu)
    }

    /// Whether the lazy-limit Gaussian integrals ⟨φφ⟩ and ⟨φ'φ'⟩ have closed forms.
    pub fn has_closed_form_kernel(self) -> bool {
        matches!(
            self,
            Activation::Linear | Activation::Relu | Activation::Erf
        )
    }
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Activation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Activation::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                format!("unknown activation {s:?}; expected one of linear, relu, tanh, erf, gelu, softplus")
            })
    }
}

#[inline]
pub fn normal_pdf(x: f64) -> f64 {
    FRAC_1_SQRT_2PI * (-0.5 * x * x).exp()
}

#[inline]
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * libm::erfc(-x * FRAC_1_SQRT_2)
}

#[inline]
fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

#[inline]
fn softplus(x: f64) -> f64 {
    // log(1 + e^x) without overflow for large |x|.
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Central differences have error O(h²)·|φ'''| ≈ 1e-10 at h = 1e-5, plus rounding
    /// ε/h ≈ 1e-11; 1e-7 leaves room for both on these smooth functions.
    #[test]
    fn derivatives_match_finite_differences() {
        let h = 1e-5;
        for act in Activation::ALL {
            for &x in &[-2.3, -0.7, -0.1, 0.2, 0.9, 1.7, 3.1] {
                let d1 = (act.phi(x + h) - act.phi(x - h)) / (2.0 * h);
                assert!(
                    (d1 - act.d1(x)).abs() < 1e-7,
                    "{act} d1 at {x}: {d1} vs {}",
                    act.d1(x)
                );
                let d2 = (act.d1(x + h) - act.d1(x - h)) / (2.0 * h);
                assert!(
                    (d2 - act.d2(x)).abs() < 1e-7,
                    "{act} d2 at {x}: {d2} vs {}",
                    act.d2(x)
                );
                let d3 = (act.d2(x + h) - act.d2(x - h)) / (2.0 * h);
                assert!(
                    (d3 - act.d3(x)).abs() < 1e-7,
                    "{act} d3 at {x}: {d3} vs {}",
                    act.d3(x)
                );
            }
        }
    }

    #[test]
    fn parse_round_trip_and_reject_unknown() {
        for act in Activation::ALL {
            assert_eq!(act.name().parse::<Activation>().unwrap(), act);
        }
        let err = "sigmoid".parse::<Activation>().unwrap_err();
        assert!(err.contains("sigmoid") && err.contains("relu"));
    }

    #[test]
    fn softplus_is_stable_at_large_arguments() {
        assert_eq!(Activation::Softplus.phi(800.0), 800.0);
        assert!(Activation::Softplus.phi(-800.0) >= 0.0);
        assert!((Activation::Softplus.phi(0.0) - 2f64.ln()).abs() < 1e-15);
    }
}
