//! What the lowerings specialize, and what they refuse, read off the generated source.

use dmft_codegen::{CodegenError, derivation_hash, generate};
use dmft_expr::{Activation, Spec, derive};

fn source(spec: Spec) -> String {
    generate("specs/test.toml", &derive(&spec).unwrap())
        .unwrap()
        .source
}

#[test]
fn relu_sites_inline_the_activation_and_skip_dead_updates() {
    let s = source(Spec::mlp("two-layer-relu", 1, Activation::Relu));
    assert!(s.contains("phi_i[nu] = h_i[nu].max(0.0);"), "{s}");
    assert!(s.contains("g_i[mu] = if h_i[mu] > 0.0 { z_i } else { 0.0 };"));
    assert!(s.contains("if coef != 0.0"));
    assert!(
        !s.contains(".phi(") && !s.contains(".d1("),
        "no activation dispatch"
    );
    assert!(s.contains("derivation hash") && s.contains("specs/test.toml"));
}

#[test]
fn linear_sites_store_neither_phi_nor_g() {
    let s = source(Spec::mlp("two-layer-linear", 1, Activation::Linear));
    assert!(!s.contains("let mut phi ="), "φ(h) = h needs no array");
    assert!(!s.contains("let mut g ="), "g = z needs no array");
    assert!(s.contains("dz += cd[alpha] * h_i[alpha];"));
    // The Gaussian closed form is generated beside the site march.
    assert!(s.contains("pub mod closed_form"));
}

#[test]
fn tanh_derivative_reuses_the_stored_tanh() {
    let s = source(Spec::mlp("two-layer-tanh", 1, Activation::Tanh));
    assert!(s.contains("(1.0 - phi_i[mu] * phi_i[mu])"), "{s}");
    assert_eq!(
        s.matches(".tanh()").count(),
        1,
        "tanh evaluated once per sample"
    );
}

#[test]
fn lazy_linear_folds_constant_kernels_away() {
    let s = source(Spec::mlp("deep-linear-3", 3, Activation::Linear).lazy());
    assert!(s.contains("let ntk = &kx + &(&kx + &(&kx + &kx));"), "{s}");
    assert!(!s.contains("grad_"), "G = 1 multiplies away");
}

#[test]
fn unsupported_variants_are_refused_with_the_reason() {
    let rich_relu = derive(&Spec::mlp("deep-relu-2", 2, Activation::Relu)).unwrap();
    match generate("specs/deep-relu.toml", &rich_relu) {
        Err(CodegenError::Unsupported(why)) => {
            assert!(
                why.contains("deep-relu-2") && why.contains("sites"),
                "{why}"
            )
        }
        other => panic!("expected unsupported, got {:?}", other.map(|g| g.variant)),
    }
    let residual = Spec::input("res")
        .dense(Activation::Relu)
        .residual(Activation::Relu);
    let err = generate("specs/res.toml", &derive(&residual).unwrap()).unwrap_err();
    assert!(err.to_string().contains("residual"), "{err}");
    // The lazy limit of a frozen readout has no lowering (the lazy solver trains w¹).
    let frozen = Spec::mlp("frozen", 1, Activation::Relu)
        .frozen_readout()
        .lazy();
    let err = generate("specs/frozen.toml", &derive(&frozen).unwrap()).unwrap_err();
    assert!(err.to_string().contains("frozen readout"), "{err}");
}

/// z¹(k) = r¹: pass 2 never writes z, Φ¹ is not accumulated, and the NTK is G¹ ⊙ Kˣ.
#[test]
fn frozen_readout_sites_leave_z_alone() {
    for act in [Activation::Relu, Activation::Tanh, Activation::Linear] {
        let spec = Spec::mlp("frozen", 1, act).frozen_readout();
        let g = generate("specs/test.toml", &derive(&spec).unwrap()).unwrap();
        let s = &g.source;
        assert!(
            !s.contains("z_s +=") && !s.contains("let mut dz"),
            "{act}: {s}"
        );
        assert!(
            !s.contains("phi_kernel") && !s.contains("rank_one_update(pk"),
            "{act}"
        );
        assert!(s.contains("&gk * &problem.kx.slice(s![..p, ..p])"), "{act}");
        assert!(s.contains("let (z, weight)"), "{act}: z is never mutated");
        let entries: Vec<_> = g.entries.iter().map(|e| (e.solver, e.readout)).collect();
        assert_eq!(
            entries,
            [("TwoLayer", "Frozen")],
            "{act}: no closed form either"
        );
    }
}

#[test]
fn the_hash_follows_the_derivation() {
    let a = derive(&Spec::mlp("x", 1, Activation::Relu)).unwrap();
    let b = derive(&Spec::mlp("x", 1, Activation::Tanh)).unwrap();
    assert_eq!(derivation_hash(&a), derivation_hash(&a.clone()));
    assert_ne!(derivation_hash(&a), derivation_hash(&b));
}

/// A residual linear spec lowers to the joint-stream march, registered as residual; an
/// equation of another form (the skip dropped from g¹) is refused, quoting it.
#[test]
fn residual_linear_lowers_and_checks_the_stream_form() {
    let spec = Spec::input("residual-linear-2")
        .dense(Activation::Linear)
        .residual(Activation::Linear);
    let d = derive(&spec).unwrap();
    let g = generate("specs/residual-linear-2.toml", &d).unwrap();
    assert_eq!(g.entries.len(), 1);
    assert!(g.entries[0].residual && g.entries[0].solver == "DeepLinear");
    assert_eq!(g.entries[0].readout, "Trained");
    // The runtime's residual closed form trains the readout: a frozen one is refused.
    let frozen = derive(&spec.clone().frozen_readout()).unwrap();
    let err = generate("specs/residual-frozen.toml", &frozen).unwrap_err();
    assert!(
        matches!(&err, CodegenError::Unsupported(m) if m.contains("frozen readout")),
        "{err}"
    );
    assert!(
        g.source
            .contains("setup.forward_row(k, &delta, &mut layers, 1);")
    );
    let mut eqs = dmft_codegen::Equations::new(&d).unwrap();
    let g1 = eqs
        .all
        .iter_mut()
        .find(|e| e.lhs.to_string() == "(g 1 k)")
        .unwrap();
    g1.rhs = dmft_codegen::sexp::Sexp::parse("(z 1 k)").unwrap();
    let err = dmft_codegen::residual::lower(&spec, "linear", &eqs).unwrap_err();
    assert!(
        matches!(&err, CodegenError::Unsupported(m) if m.contains("(g 1 k)") && m.contains("unrecognized form")),
        "{err}"
    );
}
