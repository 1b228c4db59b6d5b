//! Code generation: a [`Derivation`] becomes the Rust source of a specialized solver that
//! calls `dmft-runtime` primitives (docs/codegen.md).
//!
//! Each lowering reads named equations of the derivation as s-expressions and fails with
//! [`CodegenError::Unsupported`] when an equation does not have a shape it knows:
//! - [`lazy`]: the frozen kernels and the NTK of the γ₀ → 0 limit, layer recurrences
//!   unrolled, closed-form kernel maps inlined, quadrature with φ inlined otherwise;
//! - [`sites`]: the two-layer single-site process, forward in time, with φ and φ' inlined,
//!   fields that are aliases of others (g = z, φ(h) = h) never stored;
//! - [`propagator`]: with each site march, the base march of one site that the runtime's
//!   prediction propagator records and propagates tangents from, after checking that the
//!   derived tangent fields have the form the runtime's tangent kernel implements;
//! - [`operators`]: the block-triangular closed form of linear networks, layers unrolled
//!   into calls of the runtime's per-layer block-row updates;
//! - [`residual`]: the joint-stream closed form of residual linear networks (β/√L
//!   branches), layers unrolled into the runtime's residual block-row updates.
//!
//! [`catalogue`] regenerates a folder of specs into a solvers crate with a registry.

pub mod activation;
pub mod catalogue;
pub mod format;
pub mod lazy;
pub mod operators;
pub mod propagator;
pub mod residual;
pub mod sexp;
pub mod sites;

use dmft_expr::print::{Style, derivation};
use dmft_expr::spec::Training;
use dmft_expr::{Derivation, Spec};
use sexp::Sexp;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CodegenError {
    /// The derivation has a form no lowering handles yet; the message says which.
    #[error("not generated: {0}")]
    Unsupported(String),
    #[error("{0}")]
    Malformed(String),
    #[error("{0}")]
    Io(String),
}

pub type Result<T> = std::result::Result<T, CodegenError>;

/// A lowering: the spec, its (uniform) activation and the equations to a module's source
/// (one `pub mod`) and the registry entry it serves.
pub type Lowering = fn(&Spec, &str, &Equations) -> Result<(String, Entry)>;

/// One registry entry: a solver function of a generated module and the runtime variant it
/// serves (solver kind, depth, activation).
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// `SolverKind` variant name, e.g. `TwoLayer`.
    pub solver: &'static str,
    pub depth: usize,
    /// `Activation` variant name, e.g. `Relu`.
    pub activation: &'static str,
    /// Serves models with residual branches (`Model::residual` set).
    pub residual: bool,
    /// `Readout` variant name: `Trained`, or `Frozen` when only the hidden weights learn.
    pub readout: &'static str,
    /// Function in the module, e.g. `solve_sites`.
    pub function: &'static str,
    /// The prediction propagator of the variant in the module, when generated, e.g.
    /// `propagator::prediction_fluctuations`.
    pub propagator: Option<&'static str>,
    /// The deep linear (joint-site) propagator of the variant in the module, when generated.
    pub deep_propagator: Option<&'static str>,
}

/// The generated source of one spec.
#[derive(Clone, Debug)]
pub struct GeneratedSolver {
    /// Spec name (the variant), e.g. `two-layer-relu`.
    pub variant: String,
    /// Rust module name, e.g. `two_layer_relu`.
    pub module: String,
    pub entries: Vec<Entry>,
    /// Formatted source, header included.
    pub source: String,
}

/// FNV-1a (64 bit) of the derivation as printed: any change of an equation changes it.
pub fn derivation_hash(d: &Derivation) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in derivation(d, Style::Unicode).bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Lowers a derivation to a solver module. `spec_path` is named in the header.
pub fn generate(spec_path: &str, d: &Derivation) -> Result<GeneratedSolver> {
    let spec = &d.spec;
    let activation = uniform_activation(spec)?;
    let eqs = Equations::new(d)?;
    let mut bodies = Vec::new();
    let mut entries = Vec::new();
    let mut reasons = Vec::new();
    let lowerings: &[Lowering] = if spec.layers.iter().any(|l| l.residual) {
        &[residual::lower]
    } else {
        &[lazy::lower, sites::lower, operators::lower]
    };
    for lower in lowerings {
        match lower(spec, activation, &eqs) {
            Ok((body, entry)) => {
                bodies.push(body);
                entries.push(entry);
            }
            Err(CodegenError::Unsupported(why)) => reasons.push(why),
            Err(e) => return Err(e),
        }
    }
    if entries.is_empty() {
        return Err(CodegenError::Unsupported(format!(
            "{}: {}",
            spec.name,
            reasons.join("; ")
        )));
    }
    let module = spec.name.replace('-', "_");
    let header = format!(
        "//! Generated solver for `{name}` from `{spec_path}`, derivation hash {hash}.\n\
         //! @generated by `cargo xtask gen` (crates/codegen): never edit by hand; fix the\n\
         //! generator or the derivation and regenerate.\n\n",
        name = spec.name,
        hash = derivation_hash(d),
    );
    let text = header + &bodies.join("\n");
    Ok(GeneratedSolver {
        variant: spec.name.clone(),
        module,
        entries,
        source: format::rustfmt(&text)?,
    })
}

/// The variants a generated solver can serve: one activation for every layer, gradient
/// descent (the lowerings check the readout and the residual branches).
fn uniform_activation(spec: &Spec) -> Result<&'static str> {
    let first = spec
        .layers
        .first()
        .ok_or_else(|| CodegenError::Malformed(format!("{}: no layers", spec.name)))?
        .activation;
    if spec.layers.iter().any(|l| l.activation != first) {
        return Err(CodegenError::Unsupported(format!(
            "{}: mixed activations (the runtime's Model has one)",
            spec.name
        )));
    }
    if spec.training != Training::Gd {
        return Err(CodegenError::Unsupported(format!(
            "{}: training other than gd",
            spec.name
        )));
    }
    Ok(first.name())
}

/// A derived equation with both sides as s-expressions.
#[derive(Clone, Debug)]
pub struct Eq {
    pub section: String,
    pub name: String,
    pub lhs: Sexp,
    pub rhs: Sexp,
}

/// All equations of a derivation, looked up by their left side.
pub struct Equations {
    pub all: Vec<Eq>,
}

impl Equations {
    pub fn new(d: &Derivation) -> Result<Self> {
        let mut all = Vec::new();
        for s in &d.sections {
            for e in &s.equations {
                let parse = |x: String| {
                    Sexp::parse(&x).map_err(|err| {
                        CodegenError::Malformed(format!(
                            "{}: equation {}: {err}",
                            d.spec.name, e.name
                        ))
                    })
                };
                all.push(Eq {
                    section: s.title.clone(),
                    name: e.name.clone(),
                    lhs: parse(e.lhs.to_string())?,
                    rhs: parse(e.rhs.to_string())?,
                });
            }
        }
        Ok(Equations { all })
    }

    /// The right side of the equation whose left side prints as `lhs`.
    pub fn rhs(&self, lhs: &str) -> Option<&Sexp> {
        self.all
            .iter()
            .find(|e| e.lhs.to_string() == lhs)
            .map(|e| &e.rhs)
    }

    /// Like [`Equations::rhs`], but missing is an unsupported form.
    pub fn need(&self, lhs: &str, what: &str) -> Result<&Sexp> {
        self.rhs(lhs)
            .ok_or_else(|| CodegenError::Unsupported(format!("no equation for {lhs} ({what})")))
    }

    pub fn has_section(&self, prefix: &str) -> bool {
        self.all.iter().any(|e| e.section.starts_with(prefix))
    }
}

/// An unsupported-form error quoting the equation.
pub(crate) fn shape(what: &str, e: &Sexp) -> CodegenError {
    CodegenError::Unsupported(format!("{what} has an unrecognized form: {e}"))
}
