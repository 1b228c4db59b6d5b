//! Symbolic derivation of DMFT field equations by e-graph rewriting.
//!
//! An architecture [`spec::Spec`] is turned into the network's forward, backward and update
//! equations written in the IR of [`lang`]; the named rule sets of [`rules`] rewrite them,
//! inside one e-graph per stage, into the single-site process, the closure (saddle-point)
//! equations and the Hessian blocks of theory.md; [`derive`] runs the stages under node,
//! iteration and time limits and extracts the cheapest form under a cost that counts
//! arithmetic and site-average work; [`print`] renders Unicode and LaTeX; [`interp`] is a
//! slow reference interpreter that evaluates derived equations on small problems.

pub mod derive;
pub mod interp;
pub mod lang;
pub mod print;
pub mod rules;
pub mod spec;

pub use derive::{Derivation, Equation, Section, derive};
pub use spec::{Activation, Spec, SpecError};
