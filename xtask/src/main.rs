//! `cargo xtask gen` regenerates `crates/solvers/src/generated/` from `specs/*.toml`;
//! `cargo xtask gen --check` writes nothing and fails listing the stale files.

use dmft_codegen::catalogue::{generate_all, stale, write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

const USAGE: &str = "usage: cargo xtask gen [--check]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let check = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["gen"] => false,
        ["gen", "--check"] => true,
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root");
    let start = Instant::now();
    let catalogue = match generate_all(root) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    for (spec, why) in &catalogue.skipped {
        eprintln!("skipped {spec}: {why}");
    }
    if check {
        let stale = stale(root, &catalogue);
        if !stale.is_empty() {
            eprintln!("generated solvers are stale; run `cargo xtask gen`:");
            for s in stale {
                eprintln!("  {s}");
            }
            return ExitCode::FAILURE;
        }
        eprintln!(
            "{} generated files up to date ({:.1} s)",
            catalogue.files.len(),
            start.elapsed().as_secs_f64()
        );
        return ExitCode::SUCCESS;
    }
    match write(root, &catalogue) {
        Ok(changed) => {
            for c in &changed {
                eprintln!("{c}");
            }
            eprintln!(
                "{} generated files, {} changed ({:.1} s)",
                catalogue.files.len(),
                changed.len(),
                start.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
