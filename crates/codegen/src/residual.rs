//! Residual deep linear networks (β/√L branches): the joint-stream closed form of
//! `dmft_runtime::deep_linear::residual`.
//!
//! The derivation of a residual spec has no per-layer closed forms: the skip makes one
//! neuron's layers a single site process. This lowering checks that every site equation,
//! kernel and response closure has the residual-stream form the runtime's block-row updates
//! implement (terms and factors compared up to order), then unrolls the layers into those
//! updates: forward up the stream, backward down, then the output from the top layer.

use crate::sexp::Sexp;
use crate::{CodegenError, Entry, Equations, Result, shape};
use dmft_expr::Spec;

/// Sums and products flattened and sorted, so two extractions of one expression compare
/// equal whatever order the e-graph chose.
fn canon(e: &Sexp) -> String {
    match e.call() {
        Some(("*", [_, _])) | Some(("+", [_, _])) => {
            let (op, parts) = if e.args("*", 2).is_some() {
                ("*", e.factors())
            } else {
                ("+", e.terms())
            };
            let mut items: Vec<String> = parts.into_iter().map(canon).collect();
            items.sort();
            format!("({op} {})", items.join(" "))
        }
        Some((op, args)) => {
            let inner: Vec<String> = args.iter().map(canon).collect();
            format!("({op} {})", inner.join(" "))
        }
        None => e.to_string(),
    }
}

/// The equation for `lhs` must equal `want` up to the order of terms and factors.
fn expect(eqs: &Equations, lhs: &str, want: &str) -> Result<String> {
    let got = eqs.need(lhs, "residual stream")?;
    let want = Sexp::parse(want).map_err(CodegenError::Malformed)?;
    if canon(got) != canon(&want) {
        return Err(shape(&format!("residual: {lhs} (expected {want})"), got));
    }
    Ok(got.to_string())
}

pub fn lower(spec: &Spec, act: &str, eqs: &Equations) -> Result<(String, Entry)> {
    let depth = spec.depth();
    let residual: Vec<bool> = spec.layers.iter().map(|l| l.residual).collect();
    if act != "linear" || spec.lazy || depth < 2 || residual[1..].iter().any(|r| !r) {
        return Err(CodegenError::Unsupported(format!(
            "residual: the joint-stream closed form needs linear layers 2..L all residual and the \
             rich limit (got activation {act}, lazy = {}, residual layers {residual:?})",
            spec.lazy
        )));
    }
    if !spec.readout_trainable {
        return Err(CodegenError::Unsupported(
            "residual: a frozen readout (the runtime's residual closed form trains it)".into(),
        ));
    }
    let l_top = depth;
    // The backward field of layer ℓ that enters its own sums: g^ℓ, or z^L at the top.
    let grad = |l: usize| {
        if l == l_top {
            format!("(z {l} j)")
        } else {
            format!("(g {l} j)")
        }
    };
    let branch = "(* (recip (sqrt L)) beta)";
    let mut forward = Vec::new();
    forward.push(expect(
        eqs,
        "(h 1 k)",
        "(+ (u 1 _) (* c (sum< j k (dot Kx (* (delta j) (g 1 j))))))",
    )?);
    for l in 2..=depth {
        let (b, x) = (l - 1, grad(l));
        forward.push(expect(
            eqs,
            &format!("(h {l} k)"),
            &format!(
                "(+ (h {b} k) (* {branch} (+ (sum< j k (dot (Rphi {b} k j) {x})) (+ (u {l} k) \
                 (* c (* {branch} (sum< j k (dot (Phi {b} k j) (* (delta j) {x})))))))))"
            ),
        )?);
    }
    let mut backward = Vec::new();
    let mut backward_skip = String::new();
    backward.push(expect(
        eqs,
        &format!("(z {l_top} k)"),
        &format!("(+ (r {l_top} _) (* c (sum< j k (sum-a (* (delta j) (h {l_top} j))))))"),
    )?);
    expect(eqs, &format!("(g {l_top} k)"), &format!("(z {l_top} k)"))?;
    for l in (1..depth).rev() {
        let a = l + 1;
        backward.push(expect(
            eqs,
            &format!("(z {l} k)"),
            &format!(
                "(+ (+ (r {l} k) (sum<= j k (dot (Rg {a} k j) (h {l} j)))) \
                 (* c (* {branch} (sum< j k (dot (G {a} k j) (* (delta j) (h {l} j)))))))"
            ),
        )?);
        let skip = if a == l_top {
            format!("(z {a} k)")
        } else {
            format!("(g {a} k)")
        };
        let skip_eq = expect(
            eqs,
            &format!("(g {l} k)"),
            &format!("(+ {skip} (* {branch} (z {l} k)))"),
        )?;
        if l == depth - 1 {
            backward_skip = skip_eq;
        }
    }
    for l in 1..=depth {
        let field = if l == l_top { "z" } else { "g" };
        expect(
            eqs,
            &format!("(Phi {l} k j)"),
            &format!("(avg (otimes (h {l} k) (h {l} j)))"),
        )?;
        expect(
            eqs,
            &format!("(G {l} k j)"),
            &format!("(avg (otimes ({field} {l} k) ({field} {l} j)))"),
        )?;
        if l < depth {
            expect(
                eqs,
                &format!("(Rphi {l} k s)"),
                &format!("(avg (d (h {l} k) (r {l} s)))"),
            )?;
        }
        if l > 1 {
            expect(
                eqs,
                &format!("(Rg {l} k s)"),
                &format!("(avg (d ({field} {l} k) (u {l} s)))"),
            )?;
            expect(eqs, &format!("(Rg {l} k k)"), "0")?;
        }
    }
    let output = expect(
        eqs,
        "(f k)",
        &format!("(* (recip gamma0) (avg (* (z {l_top} k) (h {l_top} k))))"),
    )?;
    let mut step = String::from("// Forward up the stream: h^ℓ(k), Φ^ℓ(k, ≤k).\n");
    for (l, eq) in forward.iter().enumerate() {
        step.push_str(&format!(
            "// h^{} = {eq}\nsetup.forward_row(k, &delta, &mut layers, {l});\n",
            l + 1
        ));
    }
    step.push_str("// Backward down the stream: g^ℓ(k), G^ℓ(k, ≤k).\n");
    for (i, eq) in backward.iter().enumerate() {
        let l = depth - 1 - i;
        step.push_str(&format!(
            "// z^{} = {eq}\nsetup.backward_row(k, &delta, &mut layers, {l});\n",
            l + 1
        ));
    }
    let layers = vec!["setup.layer()"; depth].join(", ");
    let stream_equations = [
        format!("// h^2 = {}", forward[1]),
        format!("// g^{} = {}", depth - 1, backward_skip),
    ]
    .join("\n");
    let source = format!(
        r#"
pub mod closed_form {{
use dmft_runtime::deep_linear::residual::{{ResidualSetup, method}};
use dmft_runtime::record::Recorder;
use dmft_runtime::{{Model, Problem, Progress, Result, Schedule, SolverKind, SolverOptions, Trajectory}};
use ndarray::{{Array2, s}};

/// The joint residual stream in closed form, one block row per step: O(L² P³ T³) time, no
/// sampling; (s, a) = (1, β/√L) from `model.residual`.
pub fn solve(problem: &Problem, model: &Model, schedule: &Schedule, _options: &SolverOptions, progress: Progress) -> Result<Trajectory> {{
    let setup = ResidualSetup::new(problem, model, schedule)?;
    let mut layers = [{layers}];
    let mut delta = Array2::<f64>::zeros((setup.base.nt, setup.base.p));
    let mut rec = Recorder::new(problem, schedule, false);
    for k in 0..setup.base.nt {{
        {step}
        // f(k) = {output}
        let f = setup.output_row(k, &layers, model.gamma0);
        let d = &problem.y - &f.slice(s![..setup.base.p]);
        delta.row_mut(k).assign(&d);
        rec.observe(k, f.view(), d.view(), || setup.equal_time_ntk(problem, &layers, k))?;
        if k > 0 {{
            progress(k);
        }}
    }}
    rec.finish(SolverKind::DeepLinear, method(&setup))
}}
}}

pub mod propagator {{
use dmft_runtime::deep_linear_propagator::{{DeepLinearFluctuations, deep_linear_prediction_fluctuations_with_stream}};
use dmft_runtime::{{DmftError, Model, Problem, Progress, Result, Schedule}};

/// Σ_f of the joint site (docs/fluctuations.md) with the stream of the derived equations:
/// every hidden layer adds a branch of weight a = β/√L to a unit skip (s = 1), L = {depth}.
/// The Hessian assembly is the runtime's, shared with the reference.
pub fn prediction_fluctuations(problem: &Problem, model: &Model, schedule: &Schedule, progress: Progress) -> Result<DeepLinearFluctuations> {{
    let beta = model.residual.ok_or_else(|| DmftError::Unsupported("this generated propagator serves residual networks (model.residual)".into()))?;
    {stream_equations}
    let stream = (1.0, beta / ({depth}.0f64).sqrt());
    deep_linear_prediction_fluctuations_with_stream(problem, model, schedule, stream, progress)
}}
}}
"#
    );
    let entry = Entry {
        solver: "DeepLinear",
        depth,
        activation: "Linear",
        readout: "Trained",
        residual: true,
        function: "closed_form::solve",
        propagator: None,
        deep_propagator: Some("propagator::prediction_fluctuations"),
    };
    Ok((source, entry))
}
