//! The catalogue of derivations, snapshot-tested (review with `cargo insta review`), and the
//! bound on saturation: every stage of every catalogue derivation stops by saturation or by
//! a documented limit, and a whole derivation stays under the time budget.

use dmft_expr::derive;
use dmft_expr::print::{Style, derivation};
use dmft_expr::spec::catalogue;
use std::time::Instant;

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

/// Every stage saturates or stops at a documented limit, and a derivation takes < 5 s.
#[test]
fn saturation_is_bounded() {
    for spec in catalogue() {
        let start = Instant::now();
        let d = derive(&spec).unwrap();
        let secs = start.elapsed().as_secs_f64();
        for s in &d.stages {
            println!(
                "{:<24} {:<12} {:>3} iterations {:>7} nodes {:>7.3} s  {}",
                spec.name, s.stage, s.iterations, s.nodes, s.seconds, s.stop
            );
            assert!(
                s.saturated() || s.stop.starts_with("node limit"),
                "{} {}: {}",
                spec.name,
                s.stage,
                s.stop
            );
        }
        assert!(secs < 5.0, "{} took {secs:.2} s", spec.name);
    }
}
