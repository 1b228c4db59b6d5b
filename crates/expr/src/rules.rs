//! The rule sets. Each is small, named after the piece of DMFT mathematics it carries, and
//! documented in docs/derivation.md; every rule has a numeric soundness test in
//! tests/soundness.rs. Rules that depend on the architecture (layer indices, activations,
//! depth) are generated from the [`Spec`].

use crate::lang::{Dmft, EGraph, Rewrite};
use crate::spec::{Activation, Spec};
use egg::{ConditionalApplier, Id, Language, Pattern, Subst, Var};
use std::collections::HashMap;

fn pat(s: &str) -> Pattern<Dmft> {
    s.parse()
        .unwrap_or_else(|e| panic!("bad pattern {s:?}: {e}"))
}

/// An unconditional rule `lhs => rhs`.
pub fn rule(name: &str, lhs: &str, rhs: &str) -> Rewrite {
    Rewrite::new(name, pat(lhs), pat(rhs)).unwrap_or_else(|e| panic!("rule {name}: {e}"))
}

pub(crate) type Cond = fn(&mut EGraph, Id, &Subst, &[Var]) -> bool;

/// A rule guarded by a predicate on the classes bound to `vars`.
pub(crate) fn guarded(name: &str, lhs: &str, rhs: &str, cond: Cond, vars: &[&str]) -> Rewrite {
    let vars: Vec<Var> = vars.iter().map(|v| v.parse().unwrap()).collect();
    let condition = move |eg: &mut EGraph, id: Id, s: &Subst| cond(eg, id, s, &vars);
    let applier = ConditionalApplier {
        condition,
        applier: pat(rhs),
    };
    Rewrite::new(name, pat(lhs), applier).unwrap_or_else(|e| panic!("rule {name}: {e}"))
}

/// A nonzero scalar. Zero is excluded because the class of 0 absorbs every `(* 0 a)`, and
/// moving "0" through products would enumerate all of them.
fn scalar(eg: &mut EGraph, _: Id, s: &Subst, v: &[Var]) -> bool {
    v.iter()
        .all(|v| eg[s[*v]].data.scalar && !has_num(eg, s[*v], 0))
}

fn deterministic(eg: &mut EGraph, _: Id, s: &Subst, v: &[Var]) -> bool {
    v.iter().all(|v| !eg[s[*v]].data.random)
}

fn free_of_r(eg: &mut EGraph, _: Id, s: &Subst, v: &[Var]) -> bool {
    v.iter().all(|v| eg[s[*v]].data.r == 0)
}

fn has_symbol(eg: &EGraph, id: Id, name: &str) -> bool {
    eg[id]
        .nodes
        .iter()
        .any(|n| matches!(n, Dmft::Symbol(s) if s.as_str() == name))
}

fn has_num(eg: &EGraph, id: Id, value: i64) -> bool {
    eg[id]
        .nodes
        .iter()
        .any(|n| matches!(n, Dmft::Num(x) if *x == value))
}

/// A step time (a symbol such as k or j), not 0, not the trajectory `:` or the constant `_`.
fn step_time(eg: &mut EGraph, _: Id, s: &Subst, v: &[Var]) -> bool {
    v.iter().all(|v| {
        let id = s[*v];
        !has_num(eg, id, 0) && !has_symbol(eg, id, ":") && !has_symbol(eg, id, "_")
    })
}

pub(crate) fn nonlinear(eg: &mut EGraph, _: Id, s: &Subst, v: &[Var]) -> bool {
    v.iter().all(|v| !has_symbol(eg, s[*v], "linear"))
}

/// Causality of a sum's body: the class `v[0]` has a form whose random parts are fields or
/// sources at times other than `v[1]` (deterministic classes, e.g. kernels at time k,
/// qualify). Then the body cannot depend on a source at time `v[1]`.
fn blind_to_time(eg: &mut EGraph, _: Id, s: &Subst, v: &[Var]) -> bool {
    fn free(eg: &EGraph, class: Id, time: Id, seen: &mut HashMap<Id, bool>) -> bool {
        let class = eg.find(class);
        if !eg[class].data.random {
            return true;
        }
        if let Some(known) = seen.get(&class) {
            return *known;
        }
        // A cycle back to a class being decided gives no form: assume not free.
        seen.insert(class, false);
        let result = eg[class].nodes.iter().any(|n| match n {
            Dmft::Pre([_, t])
            | Dmft::Back([_, t])
            | Dmft::Grad([_, t])
            | Dmft::SourceU([_, t])
            | Dmft::SourceR([_, t]) => eg.find(*t) != time,
            _ => n.children().iter().all(|c| free(eg, *c, time, seen)),
        });
        seen.insert(class, result);
        result
    }
    let time = eg.find(s[v[1]]);
    free(eg, s[v[0]], time, &mut HashMap::new())
}

/// The bound variable is the matched class itself: x = a + M x.
fn is_self(eg: &mut EGraph, id: Id, s: &Subst, v: &[Var]) -> bool {
    eg.find(s[v[0]]) == eg.find(id)
}

/// Commutativity and associativity of `+` and `*` (`*` commutes: scalars and Hadamard
/// products). Kept apart from [`algebra`]: under the product rule of differentiation they
/// multiply the e-graph, so derivation stages run without them and a simplification stage
/// runs them on the extracted equations.
#[rustfmt::skip]
pub fn commutative() -> Vec<Rewrite> {
    vec![
        rule("comm-add",     "(+ ?a ?b)",          "(+ ?b ?a)"),
        rule("assoc-add",    "(+ ?a (+ ?b ?c))",   "(+ (+ ?a ?b) ?c)"),
        rule("comm-mul",     "(* ?a ?b)",          "(* ?b ?a)"),
        rule("assoc-mul",    "(* ?a (* ?b ?c))",   "(* (* ?a ?b) ?c)"),
    ]
}

/// Ring and linear-algebra identities without reordering: the glue every other rule set
/// needs. `dot` does not commute, so only scalars move through it.
#[rustfmt::skip]
pub fn algebra() -> Vec<Rewrite> {
    vec![
        rule("add-0",        "(+ ?a 0)",           "?a"),
        rule("add-0-l",      "(+ 0 ?a)",           "?a"),
        rule("mul-0-l",      "(* 0 ?a)",           "0"),
        rule("mul-1-l",      "(* 1 ?a)",           "?a"),
        rule("mul-0",        "(* ?a 0)",           "0"),
        rule("mul-1",        "(* ?a 1)",           "?a"),
        rule("neg-0",        "(neg 0)",            "0"),

        rule("dot-0r",       "(dot ?A 0)",         "0"),
        rule("dot-0l",       "(dot 0 ?x)",         "0"),
        rule("dot-id-l",     "(dot I ?x)",         "?x"),
        rule("dot-id-r",     "(dot ?A I)",         "?A"),
        guarded("dot-scale-l",  "(dot (* ?s ?A) ?x)", "(* ?s (dot ?A ?x))", scalar, &["?s"]),
        guarded("dot-scale-r",  "(dot ?A (* ?s ?x))", "(* ?s (dot ?A ?x))", scalar, &["?s"]),
        rule("dot-neg",      "(dot (neg ?A) ?x)",  "(neg (dot ?A ?x))"),

        rule("sum<-0",       "(sum< ?i ?k 0)",     "0"),
        rule("sum<=-0",      "(sum<= ?i ?k 0)",    "0"),
        rule("sum<-add",     "(sum< ?i ?k (+ ?a ?b))", "(+ (sum< ?i ?k ?a) (sum< ?i ?k ?b))"),
        rule("sum<=-add",    "(sum<= ?i ?k (+ ?a ?b))", "(+ (sum<= ?i ?k ?a) (sum<= ?i ?k ?b))"),
        guarded("sum<-scale",  "(sum< ?i ?k (* ?s ?e))",  "(* ?s (sum< ?i ?k ?e))",  scalar, &["?s"]),
        guarded("sum<=-scale", "(sum<= ?i ?k (* ?s ?e))", "(* ?s (sum<= ?i ?k ?e))", scalar, &["?s"]),

        rule("avg-0",        "(avg 0)",            "0"),
        rule("avg-add",      "(avg (+ ?a ?b))",    "(+ (avg ?a) (avg ?b))"),
        guarded("avg-const", "(avg ?e)",           "?e",                      deterministic, &["?e"]),
        guarded("avg-scale", "(avg (* ?s ?e))",    "(* ?s (avg ?e))",         deterministic, &["?s"]),
        rule("avg-sum<",     "(avg (sum< ?i ?k ?e))", "(sum< ?i ?k (avg ?e))"),

        rule("T-T",          "(T (T ?A))",         "?A"),
        rule("T-dot",        "(T (dot ?A ?B))",    "(dot (T ?B) (T ?A))"),
        rule("T-I",          "(T I)",              "I"),
    ]
}

/// Network → single-site process (the Tensor-Programs / DMFT decomposition), generated
/// for the spec's layers. Unroll W(k) = W(0) + Σ_{j<k} ΔW(j); a rank-one update applied
/// to a neuron vector becomes a neuron average, i.e. a kernel; W(0)·v/√N becomes a
/// Gaussian source plus the response (Onsager) term; neuron averages become site averages.
pub fn single_site(spec: &Spec) -> Vec<Rewrite> {
    let depth = spec.depth();
    let mut rules = vec![
        guarded(
            "unroll-weight",
            "(W ?l ?k)",
            "(+ (W ?l 0) (sum< j ?k (dW ?l j)))",
            step_time,
            &["?k"],
        ),
        guarded(
            "unroll-readout",
            "(w ?k)",
            "(+ (w 0) (sum< j ?k (dw j)))",
            step_time,
            &["?k"],
        ),
        rule(
            "forward-add",
            "(mv (+ ?A ?B) ?v)",
            "(+ (mv ?A ?v) (mv ?B ?v))",
        ),
        rule(
            "forward-sum",
            "(mv (sum< ?i ?k ?A) ?v)",
            "(sum< ?i ?k (mv ?A ?v))",
        ),
        guarded(
            "forward-scale",
            "(mv (* ?s ?A) ?v)",
            "(* ?s (mv ?A ?v))",
            scalar,
            &["?s"],
        ),
        rule(
            "backward-add",
            "(mtv (+ ?A ?B) ?v)",
            "(+ (mtv ?A ?v) (mtv ?B ?v))",
        ),
        rule(
            "backward-sum",
            "(mtv (sum< ?i ?k ?A) ?v)",
            "(sum< ?i ?k (mtv ?A ?v))",
        ),
        guarded(
            "backward-scale",
            "(mtv (* ?s ?A) ?v)",
            "(* ?s (mtv ?A ?v))",
            scalar,
            &["?s"],
        ),
        rule(
            "update-forward",
            "(mv (outer ?a ?b) ?v)",
            "(dot (navg (otimes ?v ?b)) ?a)",
        ),
        rule(
            "update-backward",
            "(mtv (outer ?a ?b) ?v)",
            "(dot (navg (otimes ?v ?a)) ?b)",
        ),
        rule(
            "error-weight",
            "(dot (navg (otimes ?v (* (delta ?j) ?a))) ?b)",
            "(dot (navg (otimes ?v ?a)) (* (delta ?j) ?b))",
        ),
        rule("kernel-input", "(navg (otimes x x))", "Kx"),
        rule(
            "kernel-phi",
            "(navg (otimes (act ?a (h ?l ?k)) (act ?a (h ?l ?j))))",
            "(Phi ?l ?k ?j)",
        ),
        rule(
            "kernel-grad",
            "(navg (otimes (g ?l ?k) (g ?l ?j)))",
            "(G ?l ?k ?j)",
        ),
        rule("neuron-to-site", "(navg ?e)", "(avg ?e)"),
        rule("decompose-input", "(mv (W 0 0) x)", "(u 1 _)"),
        rule("readout-init", "(w 0)", &format!("(r {depth} _)")),
    ];
    for l in 1..depth {
        let a = spec.activation(l);
        rules.push(rule(
            &format!("decompose-forward-{l}"),
            &format!("(mv (W {l} 0) (act {a} (h {l} ?k)))"),
            &format!(
                "(+ (u {n} ?k) (sum< j ?k (dot (Rphi {l} ?k j) (g {n} j))))",
                n = l + 1
            ),
        ));
        rules.push(rule(
            &format!("decompose-backward-{l}"),
            &format!("(mtv (W {l} 0) (g {n} ?k))", n = l + 1),
            &format!(
                "(+ (r {l} ?k) (sum<= j ?k (dot (Rg {n} ?k j) (act {a} (h {l} j)))))",
                n = l + 1
            ),
        ));
    }
    for l in 1..=depth {
        let a = spec.activation(l);
        // Backpropagation g = φ'(h) ⊙ z holds at every step, so it may be used at any time.
        let rhs = if spec.layers.get(l).is_some_and(|next| next.residual) {
            format!(
                "(+ (g {n} ?t) (* (* beta (recip (sqrt L))) (* (dact {a} (h {l} ?t)) (z {l} ?t))))",
                n = l + 1
            )
        } else {
            format!("(* (dact {a} (h {l} ?t)) (z {l} ?t))")
        };
        rules.push(rule(&format!("backprop-{l}"), &format!("(g {l} ?t)"), &rhs));
    }
    rules
}

/// Chain and product rules for ∂/∂source of single-site quantities, with the source
/// calculus (∂u(k)/∂u(j) = δ_kj, independent sources) and causality zeros.
#[rustfmt::skip]
pub fn source_calculus() -> Vec<Rewrite> {
    vec![
        rule("d-add",   "(d (+ ?a ?b) ?s)",     "(+ (d ?a ?s) (d ?b ?s))"),
        rule("d-mul",   "(d (* ?a ?b) ?s)",     "(+ (* (d ?a ?s) ?b) (* ?a (d ?b ?s)))"),
        rule("d-neg",   "(d (neg ?a) ?s)",      "(neg (d ?a ?s))"),
        guarded("d-const", "(d ?e ?s)",         "0", deterministic, &["?e"]),
        guarded("d-dot",   "(d (dot ?M ?v) ?s)", "(dot ?M (d ?v ?s))", deterministic, &["?M"]),
        rule("d-sum<",  "(d (sum< ?i ?k ?e) ?s)",  "(sum< ?i ?k (d ?e ?s))"),
        rule("d-sum<=", "(d (sum<= ?i ?k ?e) ?s)", "(sum<= ?i ?k (d ?e ?s))"),
        rule("d-sum-a", "(d (sum-a ?e) ?s)",    "(sum-a (d ?e ?s))"),
        // Not for `linear`: its φ' is the constant 1, whose class would offer every
        // (dact linear x) ever built to the chain rule.
        guarded("d-act",   "(d (act ?a ?x) ?s)",   "(* (dact ?a ?x) (d ?x ?s))", nonlinear, &["?a"]),
        guarded("d-dact",  "(d (dact ?a ?x) ?s)",  "(* (ddact ?a ?x) (d ?x ?s))", nonlinear, &["?a"]),

        rule("d-self-u",  "(d (u ?l ?k) (u ?l ?j))", "(kron ?k ?j)"),
        rule("d-self-r",  "(d (r ?l ?k) (r ?l ?j))", "(kron ?k ?j)"),
        rule("d-indep-ur", "(d (u ?l ?k) (r ?m ?j))", "0"),
        rule("d-indep-ru", "(d (r ?l ?k) (u ?m ?j))", "0"),
        guarded("kron-same", "(kron ?k ?k)",   "1", step_time, &["?k"]),

        // A strictly causal sum whose body sees only fields and sources at other times (its
        // bound time, or kernels at time k) is blind to a source at time k.
        guarded("causal-u", "(d (sum< ?i ?k ?e) (u ?l ?k))", "0", blind_to_time, &["?e", "?k"]),
        guarded("causal-r", "(d (sum< ?i ?k ?e) (r ?l ?k))", "0", blind_to_time, &["?e", "?k"]),
        // Of Σ_{j≤k} R_g(k,j) v(j) only the j = k term sees a source at time k.
        rule("equal-time-act",
             "(d (sum<= ?i ?k (dot (Rg ?m ?k ?i) (act ?a (h ?l ?i)))) (u ?l ?k))",
             "(dot (Rg ?m ?k ?k) (d (act ?a (h ?l ?k)) (u ?l ?k)))"),
    ]
}

/// Activation identities (pointwise, exact). relu'' is a Dirac delta, so no rule sets it
/// to zero: R_g(k,k) = ⟨relu''(h) z⟩ keeps its value.
#[rustfmt::skip]
pub fn activations() -> Vec<Rewrite> {
    vec![
        rule("linear-act", "(act linear ?x)",   "?x"),
        rule("linear-d1",  "(dact linear ?x)",  "1"),
        rule("linear-d2",  "(ddact linear ?x)", "0"),
        rule("relu-d1-square", "(* (dact relu ?x) (dact relu ?x))", "(dact relu ?x)"),
        rule("relu-homogeneous", "(* ?x (dact relu ?x))", "(act relu ?x)"),
        rule("relu-act-d1", "(* (act relu ?x) (dact relu ?x))", "(act relu ?x)"),
        rule("tanh-d1", "(dact tanh ?x)",  "(+ 1 (neg (* (act tanh ?x) (act tanh ?x))))"),
        rule("erf-d2",  "(ddact erf ?x)",  "(* -2 (* ?x (dact erf ?x)))"),
    ]
}

/// γ₀ → 0 at fixed η: c = ηγ₀/P → 0, so the response functions (which are O(c)) vanish
/// and every source is frozen at its initial value, and so are the kernels.
#[rustfmt::skip]
pub fn lazy() -> Vec<Rewrite> {
    vec![
        rule("lazy-c",        "c",                 "0"),
        rule("lazy-rphi",     "(Rphi ?l ?k ?j)",   "0"),
        rule("lazy-rg",       "(Rg ?l ?k ?j)",     "0"),
        rule("lazy-frozen-u", "(u ?l ?k)",         "(u ?l _)"),
        rule("lazy-frozen-r", "(r ?l ?k)",         "(r ?l _)"),
        rule("lazy-frozen-phi", "(Phi ?l ?k ?j)",  "(Phi ?l _ _)"),
        rule("lazy-frozen-g", "(G ?l ?k ?j)",      "(G ?l _ _)"),
        rule("lazy-frozen-ntk", "(K ?k ?j)",       "(K _ _)"),
    ]
}

/// The lazy output: f = γ₀⁻¹⟨z φ(h)⟩ to first order in γ₀ is linear dynamics driven by the
/// frozen NTK, f(k) = (η/P) Σ_{j<k} K Δ(j). Run on the output equation alone, before `lazy`
/// (the O(1/γ₀) form and the c → 0 limit must not meet in one e-graph).
pub fn lazy_output(spec: &Spec) -> Vec<Rewrite> {
    let depth = spec.depth();
    vec![rule(
        "lazy-output",
        &format!("(* (recip gamma0) (avg (* (z {depth} ?k) (act ?a (h {depth} ?k)))))"),
        "(* eta (* (recip P) (sum< j ?k (dot (K j j) (delta j)))))",
    )]
}

/// Gaussian moments of the sources: covariances (Wick at second order), independence of
/// u and r, Stein's lemma, and the closed-form kernel maps of theory.md 2c.
pub fn gaussian(spec: &Spec) -> Vec<Rewrite> {
    let depth = spec.depth();
    let mut rules = vec![
        guarded(
            "independent-sources",
            "(avg (otimes (* ?a (r ?l ?k)) (* ?b (r ?l ?j))))",
            "(* (avg (otimes ?a ?b)) (avg (otimes (r ?l ?k) (r ?l ?j))))",
            free_of_r,
            &["?a", "?b"],
        ),
        rule("zero-mean-ur", "(avg (otimes (u ?l ?k) (r ?m ?j)))", "0"),
        rule("zero-mean-ru", "(avg (otimes (r ?l ?k) (u ?m ?j)))", "0"),
        rule(
            "stein",
            "(avg (otimes (act ?a (u ?l ?k)) (u ?l ?j)))",
            "(dot (diag (avg (dact ?a (u ?l ?k)))) (avg (otimes (u ?l ?k) (u ?l ?j))))",
        ),
        rule(
            "stein-reverse",
            "(dot (diag (avg (dact ?a (u ?l ?k)))) (avg (otimes (u ?l ?k) (u ?l ?j))))",
            "(avg (otimes (act ?a (u ?l ?k)) (u ?l ?j)))",
        ),
    ];
    let closed: [(&str, &str, &str); 4] = [
        ("relu-kernel", "act relu", "arccos1"),
        ("relu-d1-kernel", "dact relu", "arccos0"),
        ("erf-kernel", "act erf", "erfk"),
        ("erf-d1-kernel", "dact erf", "derfk"),
    ];
    for (name, f, map) in closed {
        rules.push(rule(
            name,
            &format!("(avg (otimes ({f} (u ?l ?k)) ({f} (u ?l ?j))))"),
            &format!("({map} (avg (otimes (u ?l ?k) (u ?l ?j))))"),
        ));
    }
    for l in 1..=depth {
        rules.push(rule(
            &format!("source-cov-u-{l}"),
            &format!("(avg (otimes (u {l} ?k) (u {l} ?j)))"),
            &format!("(Phi {} ?k ?j)", l - 1),
        ));
        rules.push(rule(
            &format!("source-cov-r-{l}"),
            &format!("(avg (otimes (r {l} ?k) (r {l} ?j)))"),
            &format!("(G {} ?k ?j)", l + 1),
        ));
    }
    rules
}

/// Lifting step-k equations to (time, sample) operators: a causal sum over j < k of a
/// kernel times a field is one block row of an operator applied to the field's trajectory.
pub fn lifting(spec: &Spec) -> Vec<Rewrite> {
    let readout = spec.depth() + 1;
    let rules = vec![
        guarded(
            "lift-field-h",
            "(h ?l ?t)",
            "(row ?t (h ?l :))",
            step_time,
            &["?t"],
        ),
        guarded(
            "lift-field-z",
            "(z ?l ?t)",
            "(row ?t (z ?l :))",
            step_time,
            &["?t"],
        ),
        guarded(
            "lift-field-g",
            "(g ?l ?t)",
            "(row ?t (g ?l :))",
            step_time,
            &["?t"],
        ),
        guarded(
            "lift-source-u",
            "(u ?l ?t)",
            "(row ?t (u ?l :))",
            step_time,
            &["?t"],
        ),
        guarded(
            "lift-source-r",
            "(r ?l ?t)",
            "(row ?t (r ?l :))",
            step_time,
            &["?t"],
        ),
        rule("lift-const-u", "(u ?l _)", "(row k (u ?l :))"),
        rule("lift-const-r", "(r ?l _)", "(row k (r ?l :))"),
        rule(
            "lift-response-phi",
            "(sum< ?i ?k (dot (Rphi ?l ?k ?i) (row ?i ?X)))",
            "(row ?k (dot (Rphi ?l : :) ?X))",
        ),
        rule(
            "lift-response-grad",
            "(sum<= ?i ?k (dot (Rg ?l ?k ?i) (row ?i ?X)))",
            "(row ?k (dot (Rg ?l : :) ?X))",
        ),
        rule(
            "lift-phi",
            "(sum< ?i ?k (dot (Phi ?l ?k ?i) (* (delta ?i) (row ?i ?X))))",
            "(row ?k (dot (causal (Phi ?l : :)) ?X))",
        ),
        rule(
            "lift-grad",
            "(sum< ?i ?k (dot (G ?l ?k ?i) (* (delta ?i) (row ?i ?X))))",
            "(row ?k (dot (causal (G ?l : :)) ?X))",
        ),
        rule(
            "lift-input",
            "(sum< ?i ?k (dot Kx (* (delta ?i) (row ?i ?X))))",
            "(row ?k (dot (causal (Phi 0 : :)) ?X))",
        ),
        rule(
            "lift-readout",
            "(sum< ?i ?k (sum-a (* (delta ?i) (row ?i ?X))))",
            &format!("(row ?k (dot (causal (G {readout} : :)) ?X))"),
        ),
        rule(
            "row-add",
            "(+ (row ?k ?a) (row ?k ?b))",
            "(row ?k (+ ?a ?b))",
        ),
        guarded(
            "row-scale",
            "(* ?s (row ?k ?a))",
            "(row ?k (* ?s ?a))",
            scalar,
            &["?s"],
        ),
    ];
    rules
}

/// Collecting a lifted equation into x = a + M y: scalars into operators, and terms that
/// act on the same trajectory into one operator.
#[rustfmt::skip]
pub fn factoring() -> Vec<Rewrite> {
    vec![
        guarded("dot-scale-in", "(* ?s (dot ?A ?x))", "(dot (* ?s ?A) ?x)", scalar, &["?s"]),
        rule("dot-factor-r", "(+ (dot ?A ?x) (dot ?B ?x))", "(dot (+ ?A ?B) ?x)"),
    ]
}

/// Operator algebra on (time, sample) space for Gaussian (linear) fields: solving
/// x = a + M x, moving site averages through linear maps, and the source Jacobian.
#[rustfmt::skip]
pub fn operators() -> Vec<Rewrite> {
    vec![
        guarded("solve-linear", "(+ ?a (dot ?M ?x))", "(dot (opinv (+ I (neg ?M))) ?a)", is_self, &["?x"]),
        guarded("avg-linear-l", "(avg (otimes (dot ?A ?a) ?b))", "(dot ?A (avg (otimes ?a ?b)))", deterministic, &["?A"]),
        guarded("avg-linear-r", "(avg (otimes ?a (dot ?B ?b)))", "(dot (avg (otimes ?a ?b)) (T ?B))", deterministic, &["?B"]),
        rule("avg-outer-add-l", "(avg (otimes (+ ?a ?b) ?c))", "(+ (avg (otimes ?a ?c)) (avg (otimes ?b ?c)))"),
        rule("avg-outer-add-r", "(avg (otimes ?a (+ ?b ?c)))", "(+ (avg (otimes ?a ?b)) (avg (otimes ?a ?c)))"),
        rule("jacobian-self", "(kron : :)", "I"),
rule("dot-distrib-r", "(dot ?A (+ ?x ?y))", "(+ (dot ?A ?x) (dot ?A ?y))"),
        rule("dot-assoc",    "(dot ?A (dot ?B ?x))", "(dot (dot ?A ?B) ?x)"),
        rule("assoc-add",    "(+ ?a (+ ?b ?c))",   "(+ (+ ?a ?b) ?c)"),
    ]
}

/// Rules for ∂/∂(order parameter) at fixed other order parameters, and the cumulant.
/// Differentiating inside the site average is exact for smooth activations only; for a
/// kink (relu) D_f stays d⟨ψ⟩/dΔ, to be computed on the site average (theory.md 3).
pub fn hessian(spec: &Spec) -> Vec<Rewrite> {
    let mut rs = vec![
        rule("dq-add", "(dq (+ ?a ?b) ?q)", "(+ (dq ?a ?q) (dq ?b ?q))"),
        rule(
            "dq-mul",
            "(dq (* ?a ?b) ?q)",
            "(+ (* (dq ?a ?q) ?b) (* ?a (dq ?b ?q)))",
        ),
        rule(
            "dq-dot",
            "(dq (dot ?A ?b) ?q)",
            "(+ (dot (dq ?A ?q) ?b) (dot ?A (dq ?b ?q)))",
        ),
        rule("dq-neg", "(dq (neg ?a) ?q)", "(neg (dq ?a ?q))"),
        rule(
            "dq-sum<",
            "(dq (sum< ?i ?k ?e) ?q)",
            "(sum< ?i ?k (dq ?e ?q))",
        ),
        rule("dq-sum-a", "(dq (sum-a ?e) ?q)", "(sum-a (dq ?e ?q))"),
        guarded(
            "dq-act",
            "(dq (act ?a ?x) ?q)",
            "(* (dact ?a ?x) (dq ?x ?q))",
            nonlinear,
            &["?a"],
        ),
        guarded(
            "dq-dact",
            "(dq (dact ?a ?x) ?q)",
            "(* (ddact ?a ?x) (dq ?x ?q))",
            nonlinear,
            &["?a"],
        ),
        rule("dq-self", "(dq (delta ?i) (delta ?j))", "(kron ?i ?j)"),
        rule("dq-kx", "(dq Kx ?q)", "0"),
        rule("dq-source-u", "(dq (u ?l ?k) ?q)", "0"),
        rule("dq-source-r", "(dq (r ?l ?k) ?q)", "0"),
        rule("dq-c", "(dq c ?q)", "0"),
        rule("dq-gamma", "(dq (recip gamma0) ?q)", "0"),
    ];
    if spec.layers.iter().all(|l| l.activation != Activation::Relu) {
        rs.push(rule(
            "dq-avg-smooth",
            "(dq (avg ?e) ?q)",
            "(avg (dq ?e ?q))",
        ));
    }
    rs
}

/// Every rule set the derivation of `spec` can use, by name: what tests/soundness.rs
/// enumerates so that no rule goes without a numeric soundness case.
pub fn all_sets(spec: &Spec) -> Vec<(&'static str, Vec<Rewrite>)> {
    vec![
        ("algebra", algebra()),
        ("commutative", commutative()),
        ("single_site", single_site(spec)),
        ("source_calculus", source_calculus()),
        ("activations", activations()),
        ("gaussian", gaussian(spec)),
        ("lazy", lazy()),
        ("lazy_output", lazy_output(spec)),
        ("lifting", lifting(spec)),
        ("factoring", factoring()),
        ("operators", operators()),
        ("hessian", hessian(spec)),
    ]
}
