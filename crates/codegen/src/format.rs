//! Formatting of generated source with the toolchain's rustfmt (the same formatter
//! `cargo fmt --check` applies to the checked-in files, so they stay fmt-clean).

use crate::{CodegenError, Result};
use std::io::Write;
use std::process::{Command, Stdio};

pub fn rustfmt(source: &str) -> Result<String> {
    let fail = |e: String| CodegenError::Io(format!("rustfmt on generated code: {e}"));
    let mut child = Command::new(std::env::var("RUSTFMT").unwrap_or_else(|_| "rustfmt".into()))
        .args(["--edition", "2024", "--emit", "stdout"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            fail(format!(
                "cannot start it ({e}); install it with `rustup component add rustfmt`"
            ))
        })?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(source.as_bytes())
        .map_err(|e| fail(e.to_string()))?;
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(format!(
            "it rejected the source (a generator bug): {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .next()
                .unwrap_or("")
        )));
    }
    String::from_utf8(out.stdout).map_err(|e| fail(e.to_string()))
}
