//! `dmft derive`: prints the derivation of a spec; bad specs fail with one line naming
//! the file and the key, exit code 2.

mod common;

use common::*;

#[test]
fn derive_prints_named_equations_and_latex() {
    let dir = TempDir::new();
    let spec = dir.write(
        "two.toml",
        "name = \"two-layer-relu\"\ndepth = 1\nactivation = \"relu\"\n",
    );
    let out = dmft(dir.path("").as_path(), &["derive", spec.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("h¹(k) = u¹ + c (Σ_{j<k} Kˣ (Δ(j) ⊙ g¹(j)))"), "{text}");
    assert!(text.contains("f(k) = γ₀⁻¹ ⟨z¹(k) ⊙ relu(h¹(k))⟩"), "{text}");
    let file = dir.path("two.tex");
    let out = dmft(
        dir.path("").as_path(),
        &["derive", spec.to_str().unwrap(), "--latex", "--out", file.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let tex = std::fs::read_to_string(file).unwrap();
    assert!(tex.contains(r"\begin{equation} % preactivation"), "{tex}");
    assert!(tex.contains(r"\gamma_0^{-1}"), "{tex}");
}

#[test]
fn derive_rejects_bad_specs_naming_the_key() {
    let dir = TempDir::new();
    let cases = [
        ("name = \"x\"\ndepth = 2\nactivation = \"relu\"\nwidth = 3\n", "width"),
        ("name = \"x\"\ndepth = 2\nactivation = \"sigmoid\"\n", "sigmoid"),
        ("name = \"x\"\nactivation = \"relu\"\n", "depth"),
        ("name = \"x\"\ndepth = 1\nactivation = \"relu\"\ntraining = \"online-sgd\"\n", "online-sgd"),
    ];
    for (text, key) in cases {
        let spec = dir.write("bad.toml", text);
        let out = dmft(dir.path("").as_path(), &["derive", spec.to_str().unwrap()]);
        let err = failure(&out, 2);
        assert!(err.contains("bad.toml") && err.contains(key), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}
