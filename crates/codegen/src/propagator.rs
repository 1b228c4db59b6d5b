//! The two-layer prediction propagator (theory.md 3): the site recorder of a variant.
//!
//! The derivation's section "Hessian blocks (predictions)" gives κ_f = γ₀⁻² Cov(ψ(k), ψ(s))
//! with ψ = z φ(h), D_f = ∂f(k)/∂Δ(s), and the tangent fields
//!   ∂h(k)/∂Δ(s) = c Σ_{j<k} Kˣ (g(j) δ_{js} + Δ(j) ∂g(j)/∂Δ(s)),
//!   ∂z(k)/∂Δ(s) = c Σ_{j<k} Σ_α (δ_{js} φ(h(j)) + Δ(j) φ'(h(j)) ∂h(j)/∂Δ(s))   (0 if frozen),
//!   ∂g(k)/∂Δ(s) = φ'(h) ∂z/∂Δ(s) + φ''(h) z ∂h/∂Δ(s).
//! The runtime's tangent kernel (`dmft_runtime::propagator`) implements exactly this
//! recurrence, reading per site and step a record of z, φ(h), φ'(h), v = Kˣ(cΔ ⊙ φ') and a
//! curvature coefficient. So the lowering checks every equation against that form (terms
//! and factors up to order, and the time of each factor) and refuses any other, quoting
//! it; what it generates is the variant's base march that writes the record, with the
//! activation inlined, the frozen readout folded (z = r, no readout drive, no φφᵀ NTK term)
//! and the curvature slot specialized: φ'' inlined for a smooth activation, the runtime's
//! crossing kernel for relu (whose D_f the derivation leaves as the derivative of the site
//! average), nothing for a linear network (no φ'' term in ∂g).

use crate::activation;
use crate::sexp::Sexp;
use crate::{CodegenError, Equations, Result, shape};
use dmft_expr::Spec;

/// A factor of a Hessian-block equation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum F {
    /// z¹, or the source r¹ when the readout is frozen.
    Z,
    H,
    Phi,
    D1,
    D2,
    G,
    /// δ_{js}: the direction is born at step j.
    Born,
    /// Δ(j).
    Delta,
    /// The tangent fields ∂h/∂Δ(s), ∂z/∂Δ(s), ∂g/∂Δ(s).
    Dh,
    Dz,
    Dg,
}

/// The variant the equations describe.
struct Variant<'a> {
    act: &'a str,
    frozen: bool,
}

impl Variant<'_> {
    /// A factor and its time (None for a time-independent source).
    fn factor<'e>(&self, e: &'e Sexp) -> Result<(F, Option<&'e str>)> {
        let time = |x: &'e Sexp| x.call().and_then(|(_, a)| a.last()).and_then(Sexp::atom);
        if let Some([i, j]) = e.args("kron", 2)
            && j.atom() == Some("s")
        {
            return Ok((F::Born, i.atom()));
        }
        if let Some([t]) = e.args("delta", 1) {
            return Ok((F::Delta, t.atom()));
        }
        if let Some([x, q]) = e.args("dq", 2) {
            if q.to_string() == "(delta s)" {
                for (name, f) in [("h", F::Dh), ("z", F::Dz), ("g", F::Dg)] {
                    if x.layer_of(name) == Some(1) {
                        return Ok((f, time(x)));
                    }
                }
            }
            return Err(shape("propagator: a tangent field", e));
        }
        if e.layer_of("z") == Some(1) {
            return Ok((F::Z, time(e)));
        }
        if self.frozen && e.to_string() == "(r 1 _)" {
            return Ok((F::Z, None));
        }
        for (name, f) in [("h", F::H), ("g", F::G)] {
            if e.layer_of(name) == Some(1) {
                return Ok((f, time(e)));
            }
        }
        for (op, f) in [("act", F::Phi), ("dact", F::D1), ("ddact", F::D2)] {
            if let Some([name, arg]) = e.args(op, 2) {
                if name.atom() != Some(self.act) || arg.layer_of("h") != Some(1) {
                    return Err(shape("propagator: an activation", e));
                }
                let f = if (f, self.act) == (F::Phi, "linear") {
                    F::H
                } else {
                    f
                };
                return Ok((f, time(arg)));
            }
        }
        Err(shape("propagator: a site field", e))
    }

    /// The factors of a product, sorted, all at time `at` (sources excepted).
    fn product(&self, e: &Sexp, at: &str) -> Result<Vec<F>> {
        let mut out = Vec::new();
        for f in e.factors() {
            let (factor, time) = self.factor(f)?;
            if time.is_some_and(|t| t != at) {
                return Err(shape(&format!("propagator: a product at time {at}"), e));
            }
            out.push(factor);
        }
        out.sort();
        Ok(out)
    }

    /// The terms of a sum of products, each sorted, in sorted order.
    fn terms(&self, e: &Sexp, at: &str) -> Result<Vec<Vec<F>>> {
        let mut out = e
            .terms()
            .into_iter()
            .map(|t| self.product(t, at))
            .collect::<Result<Vec<_>>>()?;
        out.sort();
        Ok(out)
    }
}

/// `(* HEAD X)` in either order: X.
fn scaled<'a>(e: &'a Sexp, head: &str) -> Option<&'a Sexp> {
    let [a, b] = e.args("*", 2)? else {
        return None;
    };
    if a.to_string() == head {
        Some(b)
    } else if b.to_string() == head {
        Some(a)
    } else {
        None
    }
}

/// `(* c (sum< j k INNER))`: INNER.
fn causal_sum(e: &Sexp) -> Option<&Sexp> {
    let [j, k, inner] = scaled(e, "c")?.args("sum<", 3)? else {
        return None;
    };
    (j.atom() == Some("j") && k.atom() == Some("k")).then_some(inner)
}

fn sorted(mut terms: Vec<Vec<F>>) -> Vec<Vec<F>> {
    for t in &mut terms {
        t.sort();
    }
    terms.sort();
    terms
}

/// What the curvature slot of the record holds.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Curvature {
    /// ∂g has no φ'' term (linear networks): the slots stay 0.
    None,
    /// φ''(h) of a smooth activation.
    Smooth,
    /// relu: φ'' = δ(h), through the runtime's crossing kernel.
    Crossing,
}

/// The generated `pub mod propagator` of a two-layer spec, after checking that the
/// derivation's Hessian blocks have the form the runtime's tangent kernel implements.
pub fn lower(spec: &Spec, act: &str, eqs: &Equations) -> Result<String> {
    if !eqs.has_section("Hessian blocks (predictions)") {
        return Err(CodegenError::Unsupported(
            "propagator: the derivation has no Hessian blocks".into(),
        ));
    }
    let frozen = !spec.readout_trainable;
    let v = Variant { act, frozen };
    let linear = act == "linear";
    let phi = if linear { F::H } else { F::Phi };
    let psi = sorted(vec![vec![F::Z, phi]]).remove(0);

    // g = z φ'(h), or its alias z when φ' = 1.
    let g_rhs = eqs.need("(g 1 k)", "gradient field")?;
    let g_def = v.product(g_rhs, "k")?;
    let g_alias = g_def == [F::Z];
    if !g_alias && g_def != sorted(vec![vec![F::Z, F::D1]])[0] {
        return Err(shape("propagator: the gradient field", g_rhs));
    }

    // κ_f = γ₀⁻² Cov(ψ(k), ψ(s)).
    let kappa = eqs.need("(cov (f k) (f s))", "kappa_f")?;
    let cov = scaled(kappa, "(recip (* gamma0 gamma0))")
        .and_then(|x| x.args("cov", 2))
        .ok_or_else(|| shape("propagator: κ_f", kappa))?;
    if v.product(&cov[0], "k")? != psi || v.product(&cov[1], "s")? != psi {
        return Err(shape("propagator: κ_f", kappa));
    }

    // ∂h/∂Δ(s) = c Σ_{j<k} Kˣ (g δ_{js} + Δ ∂g/∂Δ(s)) (g may appear as its definition).
    let dh = eqs.need("(dq (h 1 k) (delta s))", "tangent field")?;
    let dh_terms = causal_sum(dh)
        .and_then(|x| x.args("dot", 2))
        .filter(|a| a[0].atom() == Some("Kx"))
        .map(|a| v.terms(&a[1], "j"))
        .transpose()?
        .ok_or_else(|| shape("propagator: ∂h/∂Δ", dh))?;
    let births = [vec![F::Born, F::G], [vec![F::Born], g_def.clone()].concat()];
    let drives = if g_alias {
        vec![vec![F::Delta, F::Dg], vec![F::Delta, F::Dz]]
    } else {
        vec![vec![F::Delta, F::Dg]]
    };
    let dh_ok = births.iter().any(|b| {
        drives
            .iter()
            .any(|d| sorted(vec![b.clone(), d.clone()]) == dh_terms)
    });
    if !dh_ok {
        return Err(shape("propagator: ∂h/∂Δ", dh));
    }

    // ∂z/∂Δ(s) = c Σ_{j<k} Σ_α (δ_{js} φ + Δ φ' ∂h/∂Δ(s)), or 0 for a frozen readout.
    let dz = eqs.need("(dq (z 1 k) (delta s))", "tangent field")?;
    if frozen {
        if dz.to_string() != "0" {
            return Err(shape("propagator: ∂z/∂Δ of a frozen readout", dz));
        }
    } else {
        let slope = if linear {
            vec![F::Delta, F::Dh]
        } else {
            vec![F::Delta, F::Dh, F::D1]
        };
        let want = sorted(vec![vec![F::Born, phi], slope]);
        let got = causal_sum(dz)
            .and_then(|x| x.args("sum-a", 1))
            .map(|a| v.terms(&a[0], "j"))
            .transpose()?;
        if got != Some(want) {
            return Err(shape("propagator: ∂z/∂Δ", dz));
        }
    }

    // ∂g/∂Δ(s) = φ' ∂z/∂Δ(s) + φ'' z ∂h/∂Δ(s): the φ'' term decides the curvature slot.
    let dg = eqs.need("(dq (g 1 k) (delta s))", "tangent field")?;
    let curvature = if g_alias {
        if dg != dz && dg.to_string() != "(dq (z 1 k) (delta s))" {
            return Err(shape("propagator: ∂g/∂Δ of g = z", dg));
        }
        Curvature::None
    } else {
        let got = v.terms(dg, "k")?;
        let curved = vec![F::Z, F::D2, F::Dh];
        let want = |terms: Vec<Vec<F>>| sorted(terms) == got;
        if want(vec![curved.clone()]) && frozen || want(vec![curved, vec![F::D1, F::Dz]]) && !frozen
        {
            if act == "relu" {
                Curvature::Crossing
            } else {
                Curvature::Smooth
            }
        } else {
            return Err(shape("propagator: ∂g/∂Δ", dg));
        }
    };

    // D_f: the average of the product rule for ψ when the activation is smooth; for a
    // kink the derivation keeps the derivative of the site average, which the runtime's
    // crossing kernel computes.
    let df = eqs.need("(dq (f k) (delta s))", "D_f")?;
    let inner = scaled(df, "(recip gamma0)").ok_or_else(|| shape("propagator: D_f", df))?;
    let df_ok = if curvature == Curvature::Crossing {
        inner
            .args("dq", 2)
            .filter(|a| a[1].to_string() == "(delta s)")
            .and_then(|a| a[0].args("avg", 1))
            .map(|a| v.product(&a[0], "k"))
            .transpose()?
            == Some(psi.clone())
    } else {
        let through_h = if linear {
            vec![F::Z, F::Dh]
        } else {
            vec![F::Z, F::D1, F::Dh]
        };
        let want = if frozen {
            sorted(vec![through_h])
        } else {
            sorted(vec![through_h, vec![phi, F::Dz]])
        };
        inner
            .args("avg", 1)
            .map(|a| v.terms(&a[0], "k"))
            .transpose()?
            == Some(want)
    };
    if !df_ok {
        return Err(shape("propagator: D_f", df));
    }

    let sigma = eqs.need("Sigma_f", "propagator assembly")?;
    if sigma.to_string() != "(dot (dot (opinv (+ I D_f)) kappa_f) (T (opinv (+ I D_f))))" {
        return Err(shape("propagator: Σ_f", sigma));
    }
    source(act, frozen, curvature)
}

/// `code` without parentheses around the whole of it (an assigned value needs none).
fn unwrapped(code: &str) -> &str {
    let mut depth = 0;
    for (i, ch) in code.char_indices() {
        match ch {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return if i == code.len() - 1 && code.starts_with('(') {
                        &code[1..i]
                    } else {
                        code
                    };
                }
            }
            _ => {}
        }
    }
    code
}

/// The recorder module: the runtime's reference base march with the variant folded in.
fn source(act: &str, frozen: bool, curvature: Curvature) -> Result<String> {
    let linear = act == "linear";
    let phi_code = activation::phi(act, "h[nu]")?;
    let d1_code = activation::d1(act, "h[nu]", Some("phi[nu]"))?;
    let d1_code = unwrapped(&d1_code);
    // φ'(h_μ) φ'(h_α) z² with φ' = 1 folded for a linear network.
    let g_code = if linear {
        "z * z"
    } else {
        "d1[mu] * d1[alpha] * z * z"
    };
    let kappa_code = if frozen {
        "g * cx.kx[mu * n + alpha]"
    } else {
        "g * cx.kx[mu * n + alpha] + phi[mu] * phi[alpha]"
    };
    let (curvature_slot, curvature_code, uses) = match curvature {
        Curvature::None => ("curvature: _", String::new(), ""),
        Curvature::Smooth => (
            "curvature",
            format!(
                "for beta in 0..p {{\ncurvature[beta] = {};\n}}\n",
                activation::d2(act, "h[beta]", Some("phi[beta]"))?
            ),
            "",
        ),
        Curvature::Crossing => (
            "curvature",
            "for beta in 0..p {\ncurvature[beta] = crossing_kernel(h[beta], cx.crossing[beta]);\n}\n"
                .to_string(),
            "crossing_kernel, ",
        ),
    };
    let slope_code = if linear { "cd" } else { "cd * d1[beta]" };
    let drive = "for nu in 0..n {\nlet k_nb = cx.kx[nu * n + beta];\nv[nu] += k_nb * slope;\n\
                 h[nu] += k_nb * slope * z;\n}";
    // relu's inactive units move nothing (slope = 0).
    let drive = if act == "relu" {
        format!("if slope != 0.0 {{\n{drive}\n}}")
    } else {
        drive.to_string()
    };
    let (z_binding, dz_init, dz_add, dz_apply) = if frozen {
        ("z", "", "", "")
    } else {
        (
            "mut z",
            "let mut dz = 0.0;\n",
            "dz += cd * phi[beta];\n",
            "z += dz;\n",
        )
    };
    let variant = activation::runtime_variant(act)?;
    let readout = if frozen { "Frozen" } else { "Trained" };
    let has_curvature = curvature != Curvature::None;
    Ok(format!(
        r#"
pub mod propagator {{
use dmft_runtime::propagator::{{{uses}PredictionFluctuations, SiteContext, SiteOutputs, SiteRecorder, StepRecord, two_layer_prediction_fluctuations_with}};
use dmft_runtime::{{Activation, Model, Problem, Progress, Readout, Result, Schedule, SolverOptions}};
use ndarray::ArrayView1;

/// The open-loop base march of one site, specialized to the variant; the runtime
/// propagates the tangents from its record and assembles Σ_f.
pub struct Sites;

impl SiteRecorder for Sites {{
    const CURVATURE: bool = {has_curvature};

    fn activation(&self) -> Activation {{
        Activation::{variant}
    }}

    fn readout(&self) -> Readout {{
        Readout::{readout}
    }}

    fn record(&self, cx: &SiteContext, (u, r, weight): (ArrayView1<f64>, f64, f64), out: SiteOutputs) {{
        let (p, n) = (cx.p, cx.n);
        let entries = cx.pairs.len();
        let (gamma0, c, root_w) = (cx.gamma0, cx.c, weight.sqrt());
        let mut h: Vec<f64> = u.to_vec();
        let {z_binding} = r;
        let mut psi0 = vec![0.0; n];
        for k in 0..=cx.steps {{
            let StepRecord {{ z: z_slot, phi, d1, v, {curvature_slot} }} = cx.step(out.trajectory, k);
            *z_slot = z;
            for nu in 0..n {{
                phi[nu] = {phi_code};
                d1[nu] = {d1_code};
                let mut psi = z * phi[nu] / gamma0;
                if cx.centered {{
                    if k == 0 {{
                        psi0[nu] = psi;
                    }}
                    psi -= psi0[nu];
                }}
                out.psi[k * n + nu] = root_w * psi;
                out.psi_sum[k * n + nu] += weight * psi;
            }}
            if let Some(rec_index) = cx.recorded[k] {{
                for (e, &(mu, alpha)) in cx.pairs.iter().enumerate() {{
                    let g = {g_code};
                    let kappa = {kappa_code};
                    let row = rec_index * entries + e;
                    out.ntk[row] = root_w * kappa;
                    out.ntk_sum[row] += weight * kappa;
                }}
            }}
            {curvature_code}if k == cx.steps {{
                break;
            }}
            // Open loop: h += c K(Δ(k) ⊙ g), v = K(cΔ ⊙ φ') for the tangents.
            let delta = cx.delta_path.row(k);
            v.fill(0.0);
            {dz_init}for beta in 0..p {{
                let cd = c * delta[beta];
                let slope = {slope_code};
                {dz_add}{drive}
            }}
            {dz_apply}}}
    }}
}}

/// Σ_f of the variant: `dmft_runtime::propagator` with this module's site recorder.
pub fn prediction_fluctuations(problem: &Problem, model: &Model, schedule: &Schedule, options: &SolverOptions, progress: Progress) -> Result<PredictionFluctuations> {{
    two_layer_prediction_fluctuations_with(problem, model, schedule, options, &Sites, progress)
}}
}}
"#
    ))
}
