//! Activation formulas written into generated code: φ and φ' of each activation the
//! runtime knows, as source text with the argument substituted. The formulas are the
//! runtime's own (`dmft_runtime::Activation`), so generated and reference solvers evaluate
//! bit-identical values; what the generated code saves is the dispatch on the activation.

use crate::CodegenError;

/// The runtime's name of an activation as a Rust path (`Activation::Relu`).
pub fn runtime_variant(name: &str) -> Result<&'static str, CodegenError> {
    Ok(match name {
        "linear" => "Linear",
        "relu" => "Relu",
        "tanh" => "Tanh",
        "erf" => "Erf",
        "gelu" => "Gelu",
        "softplus" => "Softplus",
        _ => return Err(CodegenError::Unsupported(format!("activation `{name}`"))),
    })
}

/// φ(arg) as an expression.
pub fn phi(name: &str, arg: &str) -> Result<String, CodegenError> {
    Ok(match name {
        "linear" => arg.to_string(),
        "relu" => format!("{arg}.max(0.0)"),
        "tanh" => format!("{arg}.tanh()"),
        "erf" => format!("libm::erf({arg})"),
        "gelu" => format!("{arg} * dmft_runtime::activation::normal_cdf({arg})"),
        "softplus" => format!("{arg}.max(0.0) + (-{arg}.abs()).exp().ln_1p()"),
        _ => return Err(CodegenError::Unsupported(format!("activation `{name}`"))),
    })
}

/// φ'(arg) as an expression; `phi_value`, when given, is an expression already holding
/// φ(arg), which tanh's derivative reuses instead of recomputing tanh.
pub fn d1(name: &str, arg: &str, phi_value: Option<&str>) -> Result<String, CodegenError> {
    Ok(match (name, phi_value) {
        ("linear", _) => "1.0".to_string(),
        ("relu", _) => format!("if {arg} > 0.0 {{ 1.0 }} else {{ 0.0 }}"),
        ("tanh", Some(t)) => format!("(1.0 - {t} * {t})"),
        ("tanh", None) => format!("{{ let t = {arg}.tanh(); 1.0 - t * t }}"),
        ("erf", _) => format!("std::f64::consts::FRAC_2_SQRT_PI * (-{arg} * {arg}).exp()"),
        ("gelu", _) => format!(
            "dmft_runtime::activation::normal_cdf({arg}) + {arg} * dmft_runtime::activation::normal_pdf({arg})"
        ),
        ("softplus", _) => format!(
            "if {arg} >= 0.0 {{ 1.0 / (1.0 + (-{arg}).exp()) }} else {{ let e = {arg}.exp(); e / (1.0 + e) }}"
        ),
        _ => return Err(CodegenError::Unsupported(format!("activation `{name}`"))),
    })
}

/// φ''(arg) of a smooth activation as an expression, in the runtime's order of operations;
/// `phi_value` as in [`d1`] (tanh'' = −2t(1 − t²) reuses the stored t). relu's φ'' is a
/// Dirac delta, which no pointwise expression represents: the propagator lowering uses the
/// runtime's crossing kernel for it instead.
pub fn d2(name: &str, arg: &str, phi_value: Option<&str>) -> Result<String, CodegenError> {
    Ok(match (name, phi_value) {
        ("linear", _) => "0.0".to_string(),
        ("tanh", Some(t)) => format!("-2.0 * {t} * (1.0 - {t} * {t})"),
        ("tanh", None) => format!("{{ let t = {arg}.tanh(); -2.0 * t * (1.0 - t * t) }}"),
        ("erf", _) => {
            format!("-2.0 * {arg} * std::f64::consts::FRAC_2_SQRT_PI * (-{arg} * {arg}).exp()")
        }
        ("gelu", _) => {
            format!("dmft_runtime::activation::normal_pdf({arg}) * (2.0 - {arg} * {arg})")
        }
        _ => {
            return Err(CodegenError::Unsupported(format!(
                "the second derivative of activation `{name}`"
            )));
        }
    })
}
