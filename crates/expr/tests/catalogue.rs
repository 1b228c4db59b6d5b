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
