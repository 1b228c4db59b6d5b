//! Linear networks in closed form (theory.md 2b): h^ℓ = u^ℓ + C^ℓ z^ℓ, z^ℓ = r^ℓ + E^ℓ h^ℓ
//! with causal C^ℓ = R_φ^{ℓ−1} + c[Φ^{ℓ−1}Δ]_< and E^ℓ = R_g^{ℓ+1} + c[G^{ℓ+1}Δ]_<.
//!
//! The derived operators say, per layer, which kernel and which response function feed
//! C^ℓ and E^ℓ; the generated march unrolls the layers into calls of the runtime's
//! block-row updates (`deep_linear::Setup`) wired accordingly: forward up the layers, back
//! down, then the output from the top layer.

use crate::sexp::Sexp;
use crate::{CodegenError, Entry, Equations, Result, shape};
use dmft_expr::Spec;

/// The layer a causal operator reads, or None for the input / readout.
fn neighbour(
    rhs: &Sexp,
    kernel: &str,
    response: &str,
    layer: usize,
    edge: usize,
) -> Result<Option<usize>> {
    let terms = rhs.terms();
    let causal = format!("(* c (causal ({kernel} {layer} : :)))");
    let resp = format!("({response} {layer} : :)");
    let has = |s: &str| terms.iter().any(|t| t.to_string() == s);
    let expected = if layer == edge { 1 } else { 2 };
    if !has(&causal) || terms.len() != expected || (layer != edge && !has(&resp)) {
        return Err(shape("operators: a causal operator", rhs));
    }
    Ok((layer != edge).then_some(layer))
}

/// f = γ₀⁻¹ diag(X) where X reads only the top layer's fields and operators and its
/// neighbours' kernels (⟨z^L h^L⟩ in some extracted form): the runtime's output row.
fn check_output(output: &Sexp, depth: usize) -> Result<()> {
    let diag = output
        .args("*", 2)
        .filter(|a| a[0].to_string() == "(recip gamma0)")
        .and_then(|a| a[1].args("diag", 1))
        .ok_or_else(|| shape("operators: the output", output))?;
    let mut layers = Vec::new();
    collect_layers(&diag[0], &mut layers);
    let near = |l: &usize| *l + 1 >= depth && *l <= depth + 1;
    if !layers.contains(&depth) || !layers.iter().all(near) {
        return Err(shape(
            "operators: the output (not read from the top layer)",
            output,
        ));
    }
    Ok(())
}

/// Layers of every `(Phi ℓ ..)`, `(G ℓ ..)`, `(Rphi ℓ ..)`, `(Rg ℓ ..)`, `(C ℓ)`, `(E ℓ)`.
fn collect_layers(e: &Sexp, out: &mut Vec<usize>) {
    for name in ["Phi", "G", "Rphi", "Rg", "C", "E"] {
        if let Some(l) = e.layer_of(name) {
            out.push(l);
            return;
        }
    }
    if let Some((_, args)) = e.call() {
        for a in args {
            collect_layers(a, out);
        }
    }
}

fn arg(layer: Option<usize>, mutable: bool) -> String {
    match (layer, mutable) {
        (Some(l), false) => format!("Some(&layer_{l})"),
        (Some(l), true) => format!("&mut layer_{l}"),
        (None, _) => "None".into(),
    }
}

pub fn lower(spec: &Spec, act: &str, eqs: &Equations) -> Result<(String, Entry)> {
    if !eqs.has_section("Causal operators") || act != "linear" {
        return Err(CodegenError::Unsupported(
            "operators: no closed form (causal operators) in the derivation".into(),
        ));
    }
    if !spec.readout_trainable {
        return Err(CodegenError::Unsupported(
            "operators: a frozen readout (the runtime's closed form trains it)".into(),
        ));
    }
    let depth = spec.depth();
    let mut wiring = Vec::new();
    for l in 1..=depth {
        let c = eqs.need(&format!("(C {l})"), "causal forward operator")?;
        let e = eqs.need(&format!("(E {l})"), "causal backward operator")?;
        let below = neighbour(c, "Phi", "Rphi", l - 1, 0)?;
        let above = neighbour(e, "G", "Rg", l + 1, depth + 1)?;
        for (field, op, src) in [("h", "C", "u"), ("z", "E", "r")] {
            let lhs = format!("({field} {l} :)");
            let other = if field == "h" { "z" } else { "h" };
            let want = format!("(+ ({src} {l} :) (dot ({op} {l}) ({other} {l} :)))");
            let got = eqs.need(&lhs, "trajectory field equation")?;
            if got.to_string() != want {
                return Err(shape("operators: a trajectory field equation", got));
            }
        }
        wiring.push((l, below, above, c.to_string(), e.to_string()));
    }
    let output = eqs.need("(f :)", "output")?;
    check_output(output, depth)?;
    let output = output.to_string();
    let mut body = String::new();
    for (l, ..) in &wiring {
        body.push_str(&format!("let mut layer_{l} = setup.layer();\n"));
    }
    let mut step = String::from("// Forward up the layers: h^ℓ(k), Φ^ℓ(k, ≤k).\n");
    for (l, below, above, c, _) in &wiring {
        step.push_str(&format!(
            "// C^{l} = {c}\nsetup.forward_row(k, &delta, {}, {}, {});\n",
            arg(*below, false),
            arg(Some(*l), true),
            arg(*above, false)
        ));
    }
    step.push_str("// Backward down the layers: z^ℓ(k), G^ℓ(k, ≤k).\n");
    for (l, below, above, _, e) in wiring.iter().rev() {
        step.push_str(&format!(
            "// E^{l} = {e}\nsetup.backward_row(k, &delta, {}, {}, {});\n",
            arg(*below, false),
            arg(Some(*l), true),
            arg(*above, false)
        ));
    }
    let below_top = arg((depth > 1).then_some(depth - 1), false);
    let all: Vec<String> = (1..=depth).map(|l| format!("&layer_{l}")).collect();
    let source = format!(
        r#"
pub mod closed_form {{
use dmft_runtime::deep_linear::{{Setup, equal_time_ntk}};
use dmft_runtime::record::Recorder;
use dmft_runtime::{{Model, Problem, Progress, Result, Schedule, SolverKind, SolverOptions, Trajectory}};
use ndarray::{{Array2, s}};

/// The block-triangular closed form, one block row per step: O(L P³ T³) time, no sampling.
pub fn solve(problem: &Problem, model: &Model, schedule: &Schedule, _options: &SolverOptions, progress: Progress) -> Result<Trajectory> {{
    let setup = Setup::new(problem, model, schedule)?;
    {body}
    let mut delta = Array2::<f64>::zeros((setup.nt, setup.p));
    let mut rec = Recorder::new(problem, schedule, false);
    for k in 0..setup.nt {{
        {step}
        // f(k) = γ₀⁻¹ ⟨z^{depth}(k) h^{depth}(k)⟩: {output}
        let f = setup.output_row(k, {below_top}, &layer_{depth}, model.gamma0);
        let d = &problem.y - &f.slice(s![..setup.p]);
        delta.row_mut(k).assign(&d);
        rec.observe(k, f.view(), d.view(), || equal_time_ntk(problem, &[{all}], k))?;
        if k > 0 {{
            progress(k);
        }}
    }}
    rec.finish(SolverKind::DeepLinear, "closed form (block-triangular solves)".into())
}}
}}
"#,
        all = all.join(", ")
    );
    let entry = Entry {
        solver: "DeepLinear",
        depth,
        activation: "Linear",
        residual: false,
        readout: "Trained",
        function: "closed_form::solve",
        propagator: None,
        deep_propagator: None,
    };
    Ok((source, entry))
}
