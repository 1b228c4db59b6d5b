//! The catalogue of derivations, snapshot-tested (review with `cargo insta review`), and the
//! bound on saturation: every stage of every catalogue derivation stops by saturation or by
//! a documented limit, and a whole derivation stays under the time budget.

use dmft_expr::derive;
use dmft_expr::print::{Style, derivation};
use dmft_expr::spec::catalogue;

#[test]
fn catalogue_snapshots() {
    for spec in catalogue() {
        let d = derive(&spec).unwrap();
        insta::assert_snapshot!(spec.name.clone(), derivation(&d, Style::Unicode));
    }
}

#[test]
fn catalogue_latex_snapshots() {
    for name in ["two-layer-relu", "deep-linear-2"] {
        let spec = catalogue().into_iter().find(|s| s.name == name).unwrap();
        let d = derive(&spec).unwrap();
        insta::assert_snapshot!(format!("{name}-latex"), derivation(&d, Style::Latex));
    }
}

/// Every stage saturates, except the documented ones that stop at the node limit after the
/// closed forms are in the e-graph (the snapshots and tests/interpreter.rs check what is
/// extracted from them). Time and memory are measured by benches/derive.rs, not here.
#[test]
fn saturation_is_bounded() {
    let node_limited = [
        ("two-layer-linear", "operators"),
        ("deep-linear-2", "operators"),
        ("deep-linear-3", "site-process"),
        ("deep-linear-3", "operators"),
        ("residual-linear-3", "site-process"),
    ];
    for spec in catalogue() {
        let d = derive(&spec).unwrap();
        for s in &d.stages {
            println!(
                "{:<24} {:<12} {:>3} iterations {:>7} nodes  {}",
                spec.name, s.stage, s.iterations, s.nodes, s.stop
            );
            let expected = if node_limited.contains(&(spec.name.as_str(), s.stage)) {
                s.stop.starts_with("node limit")
            } else {
                s.saturated()
            };
            assert!(expected, "{} {}: {}", spec.name, s.stage, s.stop);
        }
    }
}

/// A frozen readout w¹ is never updated, so the backward field stays at its source,
/// z¹(k) = r¹, and nothing drives it; the preactivation still moves through g¹ = r¹ φ'(h¹).
#[test]
fn frozen_readout_snapshots() {
    use dmft_expr::Spec;
    use dmft_expr::spec::Activation;
    for act in [Activation::Relu, Activation::Tanh] {
        let name = format!("two-layer-{act}-frozen-readout");
        let spec = Spec::mlp(&name, 1, act).frozen_readout();
        let d = derive(&spec).unwrap();
        let rhs = |lhs: &str| {
            d.sections
                .iter()
                .flat_map(|s| &s.equations)
                .find(|e| e.lhs.to_string() == lhs)
                .unwrap_or_else(|| panic!("{name}: no equation for {lhs}"))
                .rhs
                .to_string()
        };
        assert_eq!(rhs("(z 1 k)"), "(r 1 _)", "{name}: the readout moves");
        assert_eq!(
            rhs("(g 1 k)"),
            format!("(* (r 1 _) (dact {act} (h 1 k)))"),
            "{name}: gradient field"
        );
        assert_eq!(rhs("(dq (z 1 k) (delta s))"), "0", "{name}: z tangent");
        insta::assert_snapshot!(name, derivation(&d, Style::Unicode));
    }
}
