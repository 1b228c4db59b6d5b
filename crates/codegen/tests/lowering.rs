//! What the lowerings specialize, and what they refuse, read off the generated source.

use dmft_codegen::sexp::Sexp;
use dmft_codegen::{CodegenError, Equations, derivation_hash, generate, propagator};
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
    // The site march (the propagator's recorder has its own, checked below).
    let march = &s[..s.find("pub mod propagator").unwrap()];
    assert_eq!(
        march.matches(".tanh()").count(),
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

/// Every two-layer variant gets the propagator's site recorder beside its site march, with
/// the variant folded in and no activation dispatch.
#[test]
fn propagator_recorders_fold_the_variant() {
    let cases = [Activation::Relu, Activation::Tanh, Activation::Linear]
        .into_iter()
        .flat_map(|a| [(a, false), (a, true)]);
    for (act, frozen) in cases {
        let spec = Spec::mlp("two-layer", 1, act);
        let spec = if frozen { spec.frozen_readout() } else { spec };
        let g = generate("specs/test.toml", &derive(&spec).unwrap()).unwrap();
        let sites = g.entries.iter().find(|e| e.solver == "TwoLayer").unwrap();
        assert_eq!(
            sites.propagator,
            Some("propagator::prediction_fluctuations"),
            "{act} frozen={frozen}"
        );
        let s = &g.source[g.source.find("pub mod propagator").unwrap()..];
        let label = format!("{act} frozen={frozen}: {s}");
        assert!(
            !s.contains(".phi(") && !s.contains(".d1(") && !s.contains(".d2("),
            "{label}"
        );
        match act {
            Activation::Relu => {
                assert!(s.contains("const CURVATURE: bool = true;"), "{label}");
                assert!(
                    s.contains("curvature[beta] = crossing_kernel(h[beta], cx.crossing[beta]);"),
                    "{label}"
                );
                assert!(s.contains("if slope != 0.0"), "{label}");
            }
            Activation::Tanh => {
                assert_eq!(s.matches(".tanh()").count(), 1, "{label}");
                assert!(s.contains("d1[nu] = 1.0 - phi[nu] * phi[nu];"), "{label}");
                assert!(
                    s.contains(
                        "curvature[beta] = -2.0 * phi[beta] * (1.0 - phi[beta] * phi[beta]);"
                    ),
                    "{label}"
                );
            }
            _ => {
                assert!(s.contains("const CURVATURE: bool = false;"), "{label}");
                assert!(!s.contains("curvature[beta]"), "{label}");
                assert!(s.contains("let g = z * z;") && s.contains("let slope = cd;"));
            }
        }
        if frozen {
            assert!(s.contains("let z = r;") && !s.contains("dz"), "{label}");
            assert!(
                s.contains("let kappa = g * cx.kx[mu * n + alpha];"),
                "{label}"
            );
        } else {
            assert!(s.contains("z += dz;"), "{label}");
            assert!(s.contains("+ phi[mu] * phi[alpha];"), "{label}");
        }
    }
}

/// Hessian blocks of another form than the runtime's tangent kernel implements are refused,
/// quoting the equation: a dropped birth term, a dropped φ'' term, Δ at the wrong time, the
/// derivative of the site average for a smooth activation, and a pathwise D_f for relu
/// (which would drop the kink-crossing term).
#[test]
fn propagator_refuses_forms_the_kernel_does_not_implement() {
    let cases = [
        (
            Activation::Tanh,
            "(dq (h 1 k) (delta s))",
            "(* c (sum< j k (dot Kx (* (delta j) (dq (g 1 j) (delta s))))))",
        ),
        (
            Activation::Tanh,
            "(dq (g 1 k) (delta s))",
            "(* (dact tanh (h 1 k)) (dq (z 1 k) (delta s)))",
        ),
        (
            Activation::Tanh,
            "(dq (z 1 k) (delta s))",
            "(* c (sum< j k (sum-a (+ (* (kron j s) (act tanh (h 1 j))) (* (dq (h 1 j) (delta s)) (* (delta k) (dact tanh (h 1 j))))))))",
        ),
        (
            Activation::Tanh,
            "(dq (f k) (delta s))",
            "(* (recip gamma0) (dq (avg (* (z 1 k) (act tanh (h 1 k)))) (delta s)))",
        ),
        (
            Activation::Relu,
            "(dq (f k) (delta s))",
            "(* (recip gamma0) (avg (+ (* (act relu (h 1 k)) (dq (z 1 k) (delta s))) (* (dact relu (h 1 k)) (* (z 1 k) (dq (h 1 k) (delta s)))))))",
        ),
    ];
    for (act, lhs, wrong) in cases {
        let spec = Spec::mlp("two-layer", 1, act);
        let d = derive(&spec).unwrap();
        let mut eqs = Equations::new(&d).unwrap();
        assert!(propagator::lower(&spec, act.name(), &eqs).is_ok(), "{act}");
        eqs.all
            .iter_mut()
            .find(|e| e.lhs.to_string() == lhs)
            .unwrap()
            .rhs = Sexp::parse(wrong).unwrap();
        let err = propagator::lower(&spec, act.name(), &eqs).unwrap_err();
        let quoted = if wrong.contains("(delta k)") {
            "(* (delta k) (dact tanh (h 1 j)))"
        } else {
            wrong
        };
        assert!(
            matches!(&err, CodegenError::Unsupported(m) if m.contains("unrecognized form") && m.contains(quoted)),
            "{act} {lhs}: {err}"
        );
    }
}
