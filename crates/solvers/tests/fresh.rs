//! The checked-in generated solvers are what the generator produces from specs/ today
//! (the in-memory twin of `cargo xtask gen --check`).

use dmft_codegen::catalogue::{generate_all, stale};
use std::path::Path;

#[test]
fn generated_solvers_are_fresh() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let catalogue = generate_all(&root).unwrap();
    let stale = stale(&root, &catalogue);
    assert!(
        stale.is_empty(),
        "generated solvers are stale; run `cargo xtask gen`:\n  {}",
        stale.join("\n  ")
    );
}
