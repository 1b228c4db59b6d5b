//! Helpers shared by the end-to-end tests of the `dmft` binary: scratch folders, running
//! the binary, and checking one-line failures.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh folder under the system temp dir, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("dmft-cli-test-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.0.join(relative)
    }

    pub fn write(&self, relative: &str, text: &str) -> PathBuf {
        let path = self.path(relative);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs `dmft` in `cwd`. RUST_BACKTRACE is set so that a panic would show its backtrace
/// and fail the no-backtrace checks.
pub fn dmft(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dmft"))
        .args(args)
        .current_dir(cwd)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("the dmft binary runs")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Checks a failed run: the exit code, and exactly one stderr line starting "error: ".
pub fn failure(out: &Output, code: i32) -> String {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "exit code; stderr: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "panic: {err}"
    );
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    lines[0].to_string()
}

/// Runs a Python script with `dir` as its argument; returns its stdout, or None (with a
/// printed notice) when python3 cannot run or numpy is not importable. A failing script
/// fails the test.
pub fn numpy_check(script: &str, dir: &Path) -> Option<String> {
    let py = match Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(dir)
        .output()
    {
        Ok(py) => py,
        Err(e) => {
            println!("skipped: python3 is not runnable ({e})");
            return None;
        }
    };
    let err = String::from_utf8_lossy(&py.stderr);
    if !py.status.success() && err.contains("No module named 'numpy'") {
        println!("skipped: numpy is not importable");
        return None;
    }
    assert!(py.status.success(), "numpy check failed: {err}");
    Some(String::from_utf8_lossy(&py.stdout).into_owned())
}
