//! The two-layer single-site process (theory.md 2a), marched forward in time.
//!
//! The derivation gives h¹(k) = u¹ + c Σ_{j<k} Kˣ (Δ(j) ⊙ X(j)), z¹(k) = r¹ + c Σ_{j<k}
//! Σ_α Δ_α(j) Y_α(j), g¹ = G(h, z) and f = γ₀⁻¹⟨Z⟩. Sites interact only through Δ, so the
//! sums become running updates. X, Y, G, Z and the kernels' operands are lowered to scalar
//! code per site and sample with φ and φ' inlined; φ(h) and g are stored only when they are
//! not aliases of h or z (linear networks store neither), tanh' reuses the stored tanh, and
//! relu's zero-gradient updates are skipped.
//!
//! A frozen readout derives z¹(k) = r¹: the source r¹ then stands for z, pass 2 never
//! touches z, and the NTK is G¹ ⊙ Kˣ, so Φ¹ is not accumulated at all.

use crate::activation;
use crate::sexp::Sexp;
use crate::{CodegenError, Entry, Equations, Result, shape};
use dmft_expr::Spec;

/// What a site quantity is, per sample.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Field {
    /// z¹: one value per site.
    Z,
    /// h¹_μ.
    H,
    /// φ(h¹_μ) (stored, for a non-linear φ).
    Phi,
    /// g¹_μ (stored).
    G,
    /// φ'(h¹_μ), a factor.
    D1,
}

struct Site<'a> {
    act: &'a str,
    /// z¹(k) = r¹ (frozen readout): the source r¹ is the field z.
    z_is_source: bool,
    /// g¹'s definition when it is a single field (g = z for linear networks).
    g_alias: Option<Field>,
    /// g¹'s definition as factors when stored.
    g_def: Vec<Field>,
}

impl Site<'_> {
    fn field(&self, e: &Sexp) -> Result<Field> {
        if e.layer_of("z") == Some(1) || (self.z_is_source && e.to_string() == "(r 1 _)") {
            return Ok(Field::Z);
        }
        if e.layer_of("h") == Some(1) {
            return Ok(Field::H);
        }
        if e.layer_of("g") == Some(1) {
            return Ok(self.g_alias.unwrap_or(Field::G));
        }
        for (op, field) in [("act", Field::Phi), ("dact", Field::D1)] {
            if let Some([name, arg]) = e.args(op, 2) {
                if name.atom() != Some(self.act) || arg.layer_of("h") != Some(1) {
                    return Err(shape("an activation", e));
                }
                return Ok(match (field, self.act) {
                    (Field::Phi, "linear") => Field::H,
                    _ => field,
                });
            }
        }
        Err(shape("a site field", e))
    }

    fn factors(&self, e: &Sexp) -> Result<Vec<Field>> {
        e.factors().into_iter().map(|f| self.field(f)).collect()
    }

    fn phi_stored(&self, uses: &[&[Field]]) -> bool {
        uses.iter().any(|fs| fs.contains(&Field::Phi)) || self.g_def.contains(&Field::Phi)
    }

    /// Scalar code of a product of fields at sample index `idx`, z first (the reference's
    /// order of multiplication, so sampled runs agree to the last bit).
    fn product(&self, fields: &[Field], idx: &str, phi_stored: bool) -> Result<String> {
        let mut values = Vec::new();
        for want in [Field::Z, Field::H, Field::G, Field::Phi] {
            for f in fields.iter().filter(|f| **f == want) {
                values.push(match f {
                    Field::Z => "z_i".to_string(),
                    Field::H => format!("h_i[{idx}]"),
                    Field::G => format!("g_i[{idx}]"),
                    _ => format!("phi_i[{idx}]"),
                });
            }
        }
        let h = format!("h_i[{idx}]");
        let mut code = if values.is_empty() {
            "1.0".to_string()
        } else {
            values.join(" * ")
        };
        for _ in fields.iter().filter(|f| **f == Field::D1) {
            code = match self.act {
                "linear" => code,
                "relu" => format!("if {h} > 0.0 {{ {code} }} else {{ 0.0 }}"),
                _ => {
                    let stored = format!("phi_i[{idx}]");
                    let d1 = activation::d1(self.act, &h, phi_stored.then_some(stored.as_str()))?;
                    format!("{code} * {d1}")
                }
            };
        }
        Ok(code)
    }
}

/// `(+ SOURCE (* c (sum< j k INNER)))` in either order: INNER.
fn drive<'a>(rhs: &'a Sexp, source: &str) -> Option<&'a Sexp> {
    let [a, b] = rhs.args("+", 2)? else {
        return None;
    };
    let (src, upd) = if a.to_string() == source {
        (a, b)
    } else {
        (b, a)
    };
    if src.to_string() != source {
        return None;
    }
    let [c, sum] = upd.args("*", 2)? else {
        return None;
    };
    if c.atom() != Some("c") {
        return None;
    }
    let [j, k, inner] = sum.args("sum<", 3)? else {
        return None;
    };
    (j.atom() == Some("j") && k.atom() == Some("k")).then_some(inner)
}

/// The factors of a product other than Δ(j) (which must occur once).
fn without_delta(e: &Sexp) -> Option<Sexp> {
    let fs = e.factors();
    let is_delta = |f: &Sexp| f.to_string() == "(delta j)";
    if fs.iter().filter(|f| is_delta(f)).count() != 1 {
        return None;
    }
    let rest: Vec<&Sexp> = fs.into_iter().filter(|f| !is_delta(f)).collect();
    rest.into_iter()
        .cloned()
        .reduce(|a, b| Sexp::List(vec![Sexp::Atom("*".into()), a, b]))
}

/// `(avg (otimes A B))` with A and B the same field at two times: A's fields.
fn kernel_operand(site: &Site, rhs: &Sexp) -> Result<Vec<Field>> {
    let inner = rhs
        .args("avg", 1)
        .and_then(|a| a[0].args("otimes", 2))
        .ok_or_else(|| shape("a kernel", rhs))?;
    let (a, b) = (site.factors(&inner[0])?, site.factors(&inner[1])?);
    if a != b || a.len() != 1 {
        return Err(shape("a kernel", rhs));
    }
    Ok(a)
}

pub fn lower(spec: &Spec, act: &str, eqs: &Equations) -> Result<(String, Entry)> {
    if spec.depth() != 1 || !eqs.has_section("Single-site field equations") || spec.lazy {
        return Err(CodegenError::Unsupported(
            "sites: only the two-layer rich process is lowered to a site march".into(),
        ));
    }
    let h_rhs = eqs.need("(h 1 k)", "preactivation")?;
    let z_rhs = eqs.need("(z 1 k)", "backward field")?;
    let g_rhs = eqs.need("(g 1 k)", "gradient field")?;
    let f_rhs = eqs.need("(f k)", "output")?;
    let x = drive(h_rhs, "(u 1 _)")
        .and_then(|i| i.args("dot", 2))
        .filter(|a| a[0].atom() == Some("Kx"))
        .and_then(|a| without_delta(&a[1]))
        .ok_or_else(|| shape("sites: the preactivation", h_rhs))?;
    // A trained readout drives z¹; a frozen one leaves z¹(k) = r¹, and the spec must agree.
    let frozen = z_rhs.to_string() == "(r 1 _)";
    if frozen == spec.readout_trainable {
        return Err(CodegenError::Malformed(format!(
            "{}: the spec's readout is {} but the backward field is {z_rhs}",
            spec.name,
            if spec.readout_trainable {
                "trainable"
            } else {
                "frozen"
            }
        )));
    }
    let y = if frozen {
        None
    } else {
        Some(
            drive(z_rhs, "(r 1 _)")
                .and_then(|i| i.args("sum-a", 1))
                .and_then(|a| without_delta(&a[0]))
                .ok_or_else(|| shape("sites: the backward field", z_rhs))?,
        )
    };
    let z_avg = f_rhs
        .args("*", 2)
        .filter(|a| a[0].to_string() == "(recip gamma0)")
        .and_then(|a| a[1].args("avg", 1))
        .ok_or_else(|| shape("sites: the output", f_rhs))?;
    let mut site = Site {
        act,
        z_is_source: frozen,
        g_alias: None,
        g_def: Vec::new(),
    };
    let g_def = site.factors(g_rhs)?;
    if g_def.contains(&Field::G) {
        return Err(shape("sites: the gradient field", g_rhs));
    }
    match g_def.as_slice() {
        [single] if *single != Field::D1 => site.g_alias = Some(*single),
        _ => site.g_def = g_def,
    }
    let x = site.factors(&x)?;
    let y = match &y {
        Some(y) => site.factors(y)?,
        None => Vec::new(),
    };
    let z = site.factors(&z_avg[0])?;
    let phi_k = kernel_operand(&site, eqs.need("(Phi 1 k j)", "kernel")?)?;
    let grad_k = kernel_operand(&site, eqs.need("(G 1 k j)", "kernel")?)?;
    if phi_k[0] == Field::Z || !matches!(grad_k[0], Field::Z | Field::G) {
        return Err(CodegenError::Unsupported(
            "sites: kernels of unexpected fields".into(),
        ));
    }
    // The frozen readout's NTK has no Φ¹ term, so Φ¹ is neither accumulated nor stored for it.
    let phi_uses: &[&[Field]] = if frozen {
        &[&x, &z]
    } else {
        &[&x, &y, &z, &phi_k]
    };
    let phi_stored = site.phi_stored(phi_uses);
    let g_stored = site.g_alias.is_none();
    let x_code = site.product(&x, "alpha", phi_stored)?;
    let y_code = site.product(&y, "alpha", phi_stored)?;
    let z_code = site.product(&z, "nu", phi_stored)?;
    let phi_vector = match phi_k[0] {
        Field::Phi => "phi_i",
        _ => "h_i",
    };

    // Pass 1: per-chunk iteration over whichever per-site arrays are stored.
    let (chunks, chunk_args) = match (phi_stored, g_stored) {
        (true, true) => (
            "phi.par_chunks_mut(CHUNK * n).zip(g.par_chunks_mut(CHUNK * p)).enumerate()",
            "(ci, (phi_s, g_s))",
        ),
        (true, false) => ("phi.par_chunks_mut(CHUNK * n).enumerate()", "(ci, phi_s)"),
        (false, true) => ("g.par_chunks_mut(CHUNK * p).enumerate()", "(ci, g_s)"),
        (false, false) => ("(0..m.div_ceil(CHUNK)).into_par_iter()", "ci"),
    };
    let mut site_body = String::from(
        "let site = lo + i;\nlet (h_i, z_i, w_i) = (&h_all[site * n..(site + 1) * n], z[site], weight[site]);\n",
    );
    if phi_stored {
        site_body.push_str("let phi_i = &mut phi_s[i * n..(i + 1) * n];\n");
    }
    if g_stored {
        site_body.push_str("let g_i = &mut g_s[i * p..(i + 1) * p];\n");
    }
    let phi_value = activation::phi(act, "h_i[nu]")?;
    site_body.push_str("for nu in 0..n {\n");
    if phi_stored {
        site_body.push_str(&format!("phi_i[nu] = {phi_value};\n"));
    }
    site_body.push_str(&format!("zphi_s[nu] += w_i * {z_code};\n}}\n"));
    if g_stored {
        let g_code = site.product(&site.g_def, "mu", phi_stored)?;
        site_body.push_str(&format!("for mu in 0..p {{\ng_i[mu] = {g_code};\n}}\n"));
    }
    let grad_acc = match grad_k[0] {
        Field::G => "rank_one_update(gk, w_i, g_i);",
        _ => "*gk += w_i * z_i * z_i;",
    };
    site_body.push_str(&if frozen {
        format!("if let Some(gk) = sums.grad.as_mut() {{\n{grad_acc}\n}}\n")
    } else {
        format!(
            "if let (Some(pk), Some(gk)) = (sums.phi.as_mut(), sums.grad.as_mut()) {{\n\
             rank_one_update(pk, w_i, {phi_vector});\n{grad_acc}\n}}\n"
        )
    });
    let (grad_type, grad_zero, grad_final) = match grad_k[0] {
        Field::G => (
            "Array2<f64>",
            "recording.then(|| Array2::zeros((p, p)))",
            "let mut gk = grad_kernel.take().expect(\"accumulated when the NTK is needed\");\nmirror_lower(&mut gk);",
        ),
        _ => (
            "f64",
            "recording.then_some(0.0)",
            "let gk = Array2::from_elem((p, p), grad_kernel.take().expect(\"accumulated when the NTK is needed\"));",
        ),
    };
    let grad_add = match grad_k[0] {
        Field::G => "*a += &b;",
        _ => "*a += b;",
    };

    // Pass 2.
    let mut update = String::from("let site = lo + i;\n");
    if x_code.contains("z_i") || y_code.contains("z_i") {
        update.push_str("let z_i = *z_s;\n");
    }
    let reads = |code: &str, v: &str| code.contains(&format!("{v}_i["));
    if reads(&x_code, "g") || reads(&y_code, "g") {
        update.push_str("let g_i = &g_all[site * p..(site + 1) * p];\n");
    }
    if reads(&x_code, "phi") || reads(&y_code, "phi") {
        update.push_str("let phi_i = &phi_all[site * n..(site + 1) * n];\n");
    }
    if !frozen {
        update.push_str(&format!(
            "let mut dz = 0.0;\nfor alpha in 0..p {{\ndz += cd[alpha] * {y_code};\n}}\n"
        ));
    }
    let apply = "for (hv, kv) in h_i.iter_mut().zip(kx_rows[alpha]) {\n*hv += coef * kv;\n}";
    let apply = if act == "relu" {
        format!("if coef != 0.0 {{\n{apply}\n}}")
    } else {
        apply.to_string()
    };
    update.push_str(&format!(
        "for alpha in 0..p {{\nlet coef = cd[alpha] * {x_code};\n{apply}\n}}\n"
    ));
    if !frozen {
        update.push_str("*z_s += dz;\n");
    }
    let uses_site = update.contains("_all[site");
    if !uses_site {
        update = update.replace("let site = lo + i;\n", "");
    }

    let alloc_phi = if phi_stored {
        "let mut phi = vec![0.0; m * n];\n"
    } else {
        ""
    };
    let alloc_g = if g_stored {
        "let mut g = vec![0.0; m * p];\n"
    } else {
        ""
    };
    // Pass 2 walks h's chunks, and z's alongside when it reads or moves z (a frozen z is
    // only read: shared chunks, no `mut` binding).
    let (z_chunks, z_iter, z_binding) = if frozen {
        ("par_chunks", "iter", "z")
    } else {
        ("par_chunks_mut", "iter_mut", "mut z")
    };
    let (chunk_zip, chunk_pat, row_zip, row_pat) = if update.contains("z_s") {
        (
            format!(".zip(z.{z_chunks}(CHUNK))"),
            "(h_c, z_c)",
            format!(".zip(z_c.{z_iter}())"),
            "(h_i, z_s)",
        )
    } else {
        (String::new(), "h_c", String::new(), "h_i")
    };
    let (pass2_head, pass2_args, pass2_iter) = if uses_site {
        (
            "let lo = ci * CHUNK;",
            format!("(ci, {chunk_pat})"),
            format!("(i, {row_pat}) in h_c.chunks_mut(n){row_zip}.enumerate()"),
        )
    } else {
        (
            "",
            chunk_pat.to_string(),
            format!("{row_pat} in h_c.chunks_mut(n){row_zip}"),
        )
    };
    // Φ¹ enters the NTK only through the readout's gradient.
    let (phi_decl, phi_init, phi_sum_init, phi_add, phi_take, ntk_value) = if frozen {
        ("", "", "", "", "", "&gk * &problem.kx.slice(s![..p, ..p])")
    } else {
        (
            "\nphi: Option<Array2<f64>>,",
            "\nphi: recording.then(|| Array2::zeros((n, n))),",
            "\nlet mut phi_kernel = recording.then(|| Array2::<f64>::zeros((n, n)));",
            "\nif let (Some(a), Some(b)) = (phi_kernel.as_mut(), part.phi) {\n*a += &b;\n}",
            "let mut pk = phi_kernel.take().expect(\"accumulated when the NTK is needed\");\n\
             mirror_lower(&mut pk);\n",
            "&pk.slice(s![..p, ..p]) + &(&gk * &problem.kx.slice(s![..p, ..p]))",
        )
    };
    let pass2_enumerate = if uses_site { ".enumerate()" } else { "" };
    let mut pass2_shared = String::new();
    if update.contains("g_all") {
        pass2_shared.push_str("let g_all: &[f64] = &g;\n");
    }
    if update.contains("phi_all") {
        pass2_shared.push_str("let phi_all: &[f64] = &phi;\n");
    }
    let source = format!(
        r#"
pub mod sites {{
use dmft_runtime::record::{{RawRun, Recorder, replica_trajectory}};
use dmft_runtime::sampling::replica_sizes;
use dmft_runtime::two_layer::{{CHUNK, SiteSet, mirror_lower, rank_one_update}};
use dmft_runtime::{{Model, Problem, Progress, Result, Schedule, SolverKind, SolverOptions, Trajectory}};
use ndarray::{{Array1, Array2, s}};
use rayon::prelude::*;

/// Site averages of one step: f before the 1/γ₀, and when recording the NTK's kernels.
struct StepSums {{
    zphi: Array1<f64>,{phi_decl}
    grad: Option<{grad_type}>,
}}

/// One march over a weighted site population; returns f and the NTK at recorded steps.
pub fn march(problem: &Problem, model: &Model, schedule: &Schedule, sites: &SiteSet, progress: Progress) -> Result<RawRun> {{
    let (p, n) = (problem.n_train(), problem.n_all());
    let m = sites.r.len();
    let c = schedule.eta * model.gamma0 / p as f64;
    let kx_train_rows = problem.kx.slice(s![..p, ..]).to_owned();
    let kx_rows: Vec<&[f64]> = kx_train_rows.rows().into_iter().map(|r| r.to_slice().expect("owned rows are contiguous")).collect();
    // Plain slices, row-major (sites × points): the per-site loops index them directly.
    let mut h: Vec<f64> = sites.u.as_standard_layout().iter().copied().collect();
    let ({z_binding}, weight) = (sites.r.to_vec(), &sites.weight);
    {alloc_phi}{alloc_g}
    let mut rec = Recorder::new(problem, schedule, false);
    let mut f0: Option<Array1<f64>> = None;
    for k in 0..=schedule.steps {{
        let recording = rec.needs_ntk(k);
        let h_all: &[f64] = &h;
        let partial: Vec<StepSums> = {chunks}
            .map(|{chunk_args}| {{
                let lo = ci * CHUNK;
                let mut sums = StepSums {{
                    zphi: Array1::zeros(n),{phi_init}
                    grad: {grad_zero},
                }};
                let zphi_s = sums.zphi.as_slice_mut().expect("fresh arrays are contiguous");
                for i in 0..CHUNK.min(m - lo) {{
                    {site_body}
                }}
                sums
            }})
            .collect();
        let mut zphi = Array1::<f64>::zeros(n);{phi_sum_init}
        let mut grad_kernel = {grad_zero};
        for part in partial {{
            zphi += &part.zphi;{phi_add}
            if let (Some(a), Some(b)) = (grad_kernel.as_mut(), part.grad) {{
                {grad_add}
            }}
        }}
        let mut f = zphi / model.gamma0;
        if model.centered {{
            let f_init = f0.get_or_insert_with(|| f.clone());
            f -= &*f_init;
        }}
        let delta = &problem.y - &f.slice(s![..p]);
        rec.observe(k, f.view(), delta.view(), || {{
            {phi_take}{grad_final}
            {ntk_value}
        }})?;
        if k == schedule.steps {{
            break;
        }}
        let cd: Vec<f64> = delta.iter().map(|d| d * c).collect();
        {pass2_shared}h.par_chunks_mut(CHUNK * n)
            {chunk_zip}
            {pass2_enumerate}
            .for_each(|{pass2_args}| {{
                {pass2_head}
                for {pass2_iter} {{
                    {update}
                }}
            }});
        progress(k + 1);
    }}
    Ok(RawRun::from(rec.finish(SolverKind::TwoLayer, String::new())?))
}}

/// Gauss–Hermite quadrature (deterministic) when `options.quadrature > 0`, else Monte
/// Carlo over replicas with Richardson extrapolation, as the reference solver does.
pub fn solve(problem: &Problem, model: &Model, schedule: &Schedule, options: &SolverOptions, progress: Progress) -> Result<Trajectory> {{
    if options.quadrature > 0 {{
        let sites = SiteSet::quadrature(problem.kx.view(), options.quadrature)?;
        let count = sites.r.len();
        let run = march(problem, model, schedule, &sites, progress)?;
        return replica_trajectory(problem, schedule, vec![run], None, SolverKind::TwoLayer,
            format!("gauss-hermite order {{}}, {{count}} points", options.quadrature));
    }}
    let replicas = replica_sizes(options.sites)?;
    let r = replicas.len();
    let run = |m: usize, stream: usize, report: &(dyn Fn(usize) + Sync)| {{
        let sites = SiteSet::monte_carlo(problem.kx.view(), m, options.seed, stream as u64)?;
        march(problem, model, schedule, &sites, report)
    }};
    let runs = replicas
        .iter()
        .enumerate()
        .map(|(i, &m)| run(m, i, &|k| progress((i * schedule.steps + k) / (2 * r))))
        .collect::<Result<Vec<_>>>()?;
    let full = run(options.sites, r, &|k| progress((schedule.steps + k) / 2))?;
    replica_trajectory(problem, schedule, runs, Some(full), SolverKind::TwoLayer,
        format!("monte-carlo, {{}} sites, extrapolated against {{r}} replicas of {{}} (which give the SE)", options.sites, replicas[0]))
}}
}}
"#
    );
    // The propagator's site recorder rides along; a form it does not know leaves the
    // variant's propagator to the runtime's reference.
    let (source, propagator) = match crate::propagator::lower(spec, act, eqs) {
        Ok(recorder) => (
            source + &recorder,
            Some("propagator::prediction_fluctuations"),
        ),
        Err(CodegenError::Unsupported(_)) => (source, None),
        Err(e) => return Err(e),
    };
    let entry = Entry {
        solver: "TwoLayer",
        readout: if frozen { "Frozen" } else { "Trained" },
        depth: 1,
        activation: activation::runtime_variant(act)?,
        residual: false,
        function: "sites::solve",
        propagator,
        deep_propagator: None,
    };
    Ok((source, entry))
}
