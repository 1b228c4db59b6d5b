//! The residual spec files load into the network they describe, and bad values are refused
//! with one line naming the key.

use dmft_expr::Spec;
use dmft_expr::spec::Activation;

fn load(name: &str) -> Spec {
    let path = format!("{}/../../specs/{name}.toml", env!("CARGO_MANIFEST_DIR"));
    Spec::from_toml(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn residual_specs_describe_branches_after_the_first_layer() {
    for depth in [2, 3] {
        let spec = load(&format!("residual-linear-{depth}"));
        assert_eq!(spec.depth(), depth);
        assert_eq!(spec.beta, 1.0);
        let want = Spec::input(&format!("residual-linear-{depth}")).dense(Activation::Linear);
        let want = (1..depth).fold(want, |s, _| s.residual(Activation::Linear));
        assert_eq!(spec, want);
    }
}

#[test]
fn bad_residual_values_name_the_key() {
    let base = "name = \"r\"\n[[layers]]\nactivation = \"linear\"\n[[layers]]\nactivation = \"linear\"\nresidual = true\n";
    for (text, key) in [
        (format!("beta = -1.0\n{base}"), "`beta`"),
        (format!("beta = 0.0\n{base}"), "`beta`"),
        (format!("beta = nan\n{base}"), "`beta`"),
        (format!("beta = \"one\"\n{base}"), "beta"),
        (
            base.replacen(
                "activation = \"linear\"\n",
                "activation = \"linear\"\nresidual = true\n",
                1,
            ),
            "`layers[0].residual`",
        ),
        (base.replace("residual = true", "residual = 1"), "residual"),
    ] {
        let err = Spec::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains(key) && !err.contains('\n'), "{text}: {err}");
    }
}
