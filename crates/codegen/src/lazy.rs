//! The lazy limit: frozen kernels Φ^ℓ, G^ℓ and the NTK K, then linear prediction dynamics.
//!
//! Each kernel equation is lowered to an ndarray expression, in dependency order (Φ up the
//! layers, G down). A kernel equal to the constant 1 (G^ℓ of a linear network) is folded
//! away, a kernel equal to another (Φ^ℓ = Kˣ) becomes an alias, and only bindings the NTK
//! reaches are emitted. Closed-form Gaussian maps (arc-cosine kernels) are written into the
//! module; averages without one use a 2-D Gauss–Hermite rule with φ and φ' inlined,
//! both averages over one covariance in a single sweep.

use crate::activation;
use crate::sexp::Sexp;
use crate::{CodegenError, Entry, Equations, Result, shape};
use dmft_expr::Spec;
use std::collections::BTreeSet;

const OUTPUT: &str = "(* eta (* (recip P) (sum< j k (dot (K _ _) (delta j)))))";

#[derive(Clone, Debug)]
enum Value {
    /// The all-ones kernel: a factor that multiplies away.
    Ones,
    /// An owned `Array2<f64>` binding.
    Var(String),
    /// An expression of type `Array2<f64>`.
    Code(String),
}

impl Value {
    fn operand(&self) -> Result<String> {
        match self {
            Value::Var(v) => Ok(format!("&{v}")),
            Value::Code(c) => Ok(format!("&({c})")),
            Value::Ones => Err(CodegenError::Unsupported(
                "the constant kernel 1 outside a product".into(),
            )),
        }
    }

    fn view(&self) -> Result<String> {
        match self {
            Value::Var(v) => Ok(format!("{v}.view()")),
            Value::Code(c) => Ok(format!("({c}).view()")),
            Value::Ones => Err(CodegenError::Unsupported(
                "a Gaussian map of the constant kernel 1".into(),
            )),
        }
    }
}

struct Lowering<'a> {
    act: &'a str,
    /// Kernel name (`phi_1`, `grad_2`) → value, once lowered.
    env: Vec<(String, Value)>,
    /// Helpers the module needs: `arccos0`, `arccos1`, `pair_averages`.
    helpers: BTreeSet<&'static str>,
    /// `let` bindings in evaluation order: (names bound, code).
    bindings: Vec<(Vec<String>, String)>,
}

impl Lowering<'_> {
    fn lookup(&self, name: &str) -> Option<Value> {
        self.env
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }

    /// Lowers a kernel expression; `Ok(None)` when it needs a kernel not lowered yet.
    fn lower(&mut self, e: &Sexp) -> Result<Option<Value>> {
        if let Some(a) = e.atom() {
            return match a {
                "Kx" => Ok(Some(Value::Var("kx".into()))),
                "1" => Ok(Some(Value::Ones)),
                _ => Err(shape("a kernel", e)),
            };
        }
        if let Some(l) = e.layer_of("Phi") {
            return Ok(self.lookup(&format!("phi_{l}")));
        }
        if let Some(l) = e.layer_of("G") {
            return Ok(self.lookup(&format!("grad_{l}")));
        }
        if let Some([a, b]) = e.args("+", 2) {
            let (Some(a), Some(b)) = (self.lower(a)?, self.lower(b)?) else {
                return Ok(None);
            };
            return Ok(Some(Value::Code(format!(
                "{} + {}",
                a.operand()?,
                b.operand()?
            ))));
        }
        if let Some([a, b]) = e.args("*", 2) {
            let (Some(a), Some(b)) = (self.lower(a)?, self.lower(b)?) else {
                return Ok(None);
            };
            return Ok(Some(match (a, b) {
                (Value::Ones, x) | (x, Value::Ones) => x,
                (a, b) => Value::Code(format!("{} * {}", a.operand()?, b.operand()?)),
            }));
        }
        for map in ["arccos1", "arccos0"] {
            if let Some([cov]) = e.args(map, 1) {
                let Some(cov) = self.lower(cov)? else {
                    return Ok(None);
                };
                self.helpers.insert(if map == "arccos1" {
                    "arccos1"
                } else {
                    "arccos0"
                });
                return Ok(Some(Value::Code(format!("{map}({})", cov.view()?))));
            }
        }
        if let Some([inner]) = e.args("avg", 1) {
            return self.lower_average(inner);
        }
        Err(shape("a frozen kernel", e))
    }

    /// ⟨ψ(u^ℓ) ψ(u^ℓ)ᵀ⟩ with ψ = φ or φ' and u^ℓ ~ N(0, Φ^{ℓ−1}) by Gauss–Hermite.
    fn lower_average(&mut self, e: &Sexp) -> Result<Option<Value>> {
        let Some([a, b]) = e.args("otimes", 2) else {
            return Err(shape("a site average", e));
        };
        if a != b {
            return Err(shape("a site average of two different fields", e));
        }
        let (op, args) = a.call().ok_or_else(|| shape("an averaged field", a))?;
        let [name, source] = args else {
            return Err(shape("an averaged field", a));
        };
        let layer = source
            .layer_of("u")
            .ok_or_else(|| shape("an averaged field's argument", source))?;
        if name.atom() != Some(self.act) {
            return Err(shape("an averaged field's activation", a));
        }
        let name = match op {
            "act" => format!("avg_phi_{layer}"),
            "dact" => format!("avg_dphi_{layer}"),
            _ => return Err(shape("an averaged field", a)),
        };
        // ⟨φφᵀ⟩ and ⟨φ'φ'ᵀ⟩ over the same u^ℓ share one sweep of the rule: φ is evaluated
        // once per node and φ' reuses it where it can (tanh' = 1 − tanh²).
        let pair = vec![format!("avg_phi_{layer}"), format!("avg_dphi_{layer}")];
        if !self.bindings.iter().any(|(names, _)| *names == pair) {
            let cov = if layer == 1 {
                Some(Value::Var("kx".into()))
            } else {
                self.lookup(&format!("phi_{}", layer - 1))
            };
            let Some(cov) = cov else { return Ok(None) };
            let phi = activation::phi(self.act, "x")?;
            let d1 = activation::d1(self.act, "x", Some("t"))?;
            self.helpers.insert("pair_averages");
            self.bindings.push((
                pair,
                format!(
                    "pair_averages({}, &rule, |x: f64| {{ let t = {phi}; (t, {d1}) }})",
                    cov.view()?
                ),
            ));
        }
        Ok(Some(Value::Var(name)))
    }
}

/// Whether `name` occurs in `code` as a whole identifier.
fn mentions(code: &str, name: &str) -> bool {
    code.match_indices(name).any(|(i, _)| {
        let before = code[..i].chars().next_back();
        let after = code[i + name.len()..].chars().next();
        let ident = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
        !ident(before) && !ident(after)
    })
}

pub fn lower(spec: &Spec, act: &str, eqs: &Equations) -> Result<(String, Entry)> {
    if !eqs.has_section("Closure: frozen kernels") {
        return Err(CodegenError::Unsupported("lazy: no frozen kernels".into()));
    }
    if !spec.readout_trainable {
        return Err(CodegenError::Unsupported(
            "lazy: a frozen readout (the runtime's lazy solver trains it)".into(),
        ));
    }
    let output = eqs.need("(f k)", "output")?;
    if output.to_string() != OUTPUT {
        return Err(shape("lazy: the output", output));
    }
    let depth = spec.depth();
    let mut todo: Vec<(String, &Sexp)> = Vec::new();
    for l in 1..=depth {
        todo.push((
            format!("phi_{l}"),
            eqs.need(&format!("(Phi {l} _ _)"), "kernel")?,
        ));
        todo.push((
            format!("grad_{l}"),
            eqs.need(&format!("(G {l} _ _)"), "kernel")?,
        ));
    }
    let mut low = Lowering {
        act,
        env: vec![(format!("grad_{}", depth + 1), Value::Ones)],
        helpers: BTreeSet::new(),
        bindings: Vec::new(),
    };
    // Dependency order: each pass lowers every kernel whose inputs are known.
    while !todo.is_empty() {
        let before = todo.len();
        let mut rest = Vec::new();
        for (name, rhs) in todo {
            match low.lower(rhs)? {
                Some(Value::Code(code)) => {
                    low.bindings.push((vec![name.clone()], code));
                    low.env.push((name.clone(), Value::Var(name)));
                }
                Some(v) => low.env.push((name, v)),
                None => rest.push((name, rhs)),
            }
        }
        if rest.len() == before {
            return Err(CodegenError::Malformed(format!(
                "{}: circular kernel equations",
                spec.name
            )));
        }
        todo = rest;
    }
    let ntk = match low.lower(eqs.need("(K _ _)", "neural tangent kernel")?)? {
        Some(Value::Code(c)) => c,
        Some(Value::Var(v)) => format!("{v}.clone()"),
        _ => return Err(CodegenError::Malformed("lazy: NTK is constant".into())),
    };
    // Only the bindings the NTK reaches.
    let mut live: Vec<(String, &String)> = Vec::new();
    let mut need = ntk.clone();
    for (names, code) in low.bindings.iter().rev() {
        if names.iter().any(|n| mentions(&need, n)) {
            let bound: Vec<&str> = names
                .iter()
                .map(|n| if mentions(&need, n) { n.as_str() } else { "_" })
                .collect();
            let pattern = match bound.as_slice() {
                [one] => one.to_string(),
                many => format!("({})", many.join(", ")),
            };
            need.push_str(code);
            live.push((pattern, code));
        }
    }
    live.reverse();
    let mut body = String::new();
    if mentions(&need, "kx") {
        body.push_str("let kx = problem.kx.clone();\n");
    }
    let quadrature = low.helpers.contains("pair_averages");
    if quadrature {
        body.push_str(
            "let order = if options.quadrature == 0 { DEFAULT_LAZY_ORDER } else { options.quadrature };\n\
             let rule = gauss_hermite(order)?;\n",
        );
    }
    for (name, code) in live {
        body.push_str(&format!("let {name} = {code};\n"));
    }
    body.push_str(&format!("let ntk = {ntk};\n"));
    let method = if quadrature {
        "format!(\"gauss-hermite kernels, order {order}\")"
    } else {
        "\"closed-form kernels\".to_string()"
    };
    let options_arg = if quadrature { "options" } else { "_options" };
    let mut helpers = String::new();
    for h in &low.helpers {
        helpers.push_str(match *h {
            "arccos1" => ARCCOS1,
            "arccos0" => ARCCOS0,
            _ => PAIR_AVERAGE,
        });
    }
    let imports = if quadrature {
        "use dmft_runtime::lazy::DEFAULT_LAZY_ORDER;\nuse dmft_runtime::quadrature::gauss_hermite;\n"
    } else {
        ""
    };
    let needs_view =
        low.helpers.contains("arccos0") || low.helpers.contains("arccos1") || quadrature;
    let source = format!(
        r#"
pub mod lazy {{
use dmft_runtime::record::Recorder;
use dmft_runtime::{{Model, Problem, Progress, Result, Schedule, SolverKind, SolverOptions, Trajectory}};
use ndarray::linalg::general_mat_vec_mul;
use ndarray::{{Array1, {view}s}};
{imports}
/// Lazy limit (γ₀ → 0): the frozen NTK of the derivation, then Δ(k+1) = (I − ηK/P) Δ(k)
/// with test predictions driven by K_{{test,train}}; f(0) = 0.
pub fn solve(problem: &Problem, _model: &Model, schedule: &Schedule, {options_arg}: &SolverOptions, progress: Progress) -> Result<Trajectory> {{
{body}
let method = {method};
let p = problem.n_train();
let k_tt = ntk.slice(s![..p, ..p]).to_owned();
let k_st = ntk.slice(s![p.., ..p]).to_owned();
let mut rec = Recorder::new(problem, schedule, false);
rec.set_initial_ntk(k_tt.view())?;
let step = schedule.eta / p as f64;
let mut f_train = Array1::<f64>::zeros(p);
let mut f_test = Array1::<f64>::zeros(problem.n_test());
let mut delta = Array1::<f64>::zeros(p);
for k in 0..=schedule.steps {{
    delta.assign(&problem.y);
    delta -= &f_train;
    rec.check(k, delta.view())?;
    if rec.wants(k) {{
        rec.record(f_train.view(), f_test.view(), k_tt.view(), None);
    }}
    if k == schedule.steps {{
        break;
    }}
    general_mat_vec_mul(step, &k_tt, &delta, 1.0, &mut f_train);
    general_mat_vec_mul(step, &k_st, &delta, 1.0, &mut f_test);
    progress(k + 1);
}}
rec.finish(SolverKind::Lazy, method)
}}
{helpers}
}}
"#,
        view = if needs_view {
            "Array2, ArrayView2, "
        } else {
            ""
        },
    );
    let entry = Entry {
        solver: "Lazy",
        depth,
        activation: activation::runtime_variant(act)?,
        residual: false,
        readout: "Trained",
        function: "lazy::solve",
        propagator: None,
        deep_propagator: None,
    };
    Ok((source, entry))
}

const ARCCOS1: &str = r#"
/// ⟨relu(u_a) relu(u_b)⟩ for u ~ N(0, cov): the degree-1 arc-cosine kernel (theory.md 2c).
fn arccos1(cov: ArrayView2<f64>) -> Array2<f64> {
    let n = cov.nrows();
    let mut out = Array2::zeros((n, n));
    for a in 0..n {
        for b in 0..=a {
            let norm = (cov[[a, a]] * cov[[b, b]]).sqrt();
            let v = if norm <= 0.0 {
                0.0
            } else {
                let rho = (cov[[a, b]] / norm).clamp(-1.0, 1.0);
                let theta = rho.acos();
                norm * (theta.sin() + (std::f64::consts::PI - theta) * rho) / (2.0 * std::f64::consts::PI)
            };
            out[[a, b]] = v;
            out[[b, a]] = v;
        }
    }
    out
}
"#;

const ARCCOS0: &str = r#"
/// ⟨relu'(u_a) relu'(u_b)⟩ for u ~ N(0, cov): the degree-0 arc-cosine kernel.
fn arccos0(cov: ArrayView2<f64>) -> Array2<f64> {
    let n = cov.nrows();
    let mut out = Array2::zeros((n, n));
    for a in 0..n {
        for b in 0..=a {
            let norm = (cov[[a, a]] * cov[[b, b]]).sqrt();
            let v = if norm <= 0.0 {
                0.0
            } else {
                let theta = (cov[[a, b]] / norm).clamp(-1.0, 1.0).acos();
                (std::f64::consts::PI - theta) / (2.0 * std::f64::consts::PI)
            };
            out[[a, b]] = v;
            out[[b, a]] = v;
        }
    }
    out
}
"#;

const PAIR_AVERAGE: &str = r#"
/// ⟨φ(u_a) φ(u_b)⟩ and ⟨φ'(u_a) φ'(u_b)⟩ for u ~ N(0, cov) on a 2-D Gauss–Hermite rule, with
/// u_a = √q_a ξ₁ and u_b = (c/√q_a) ξ₁ + √(q_b − c²/q_a) ξ₂; `psi` returns (φ, φ') at a
/// node and is inlined per call site.
fn pair_averages(
    cov: ArrayView2<f64>,
    rule: &(Array1<f64>, Array1<f64>),
    psi: impl Fn(f64) -> (f64, f64),
) -> (Array2<f64>, Array2<f64>) {
    let (nodes, weights) = rule;
    let n = cov.nrows();
    let mut phi = Array2::zeros((n, n));
    let mut dphi = Array2::zeros((n, n));
    for a in 0..n {
        for b in 0..=a {
            let (qa, qb, c) = (cov[[a, a]], cov[[b, b]], cov[[a, b]]);
            let sa = qa.max(0.0).sqrt();
            let (m, s_perp) = if sa > 0.0 {
                let m = c / sa;
                (m, (qb - m * m).max(0.0).sqrt())
            } else {
                (0.0, qb.max(0.0).sqrt())
            };
            let (mut pp, mut dd) = (0.0, 0.0);
            for (x1, w1) in nodes.iter().zip(weights) {
                let (fa, da) = psi(sa * x1);
                let (mut ip, mut id) = (0.0, 0.0);
                for (x2, w2) in nodes.iter().zip(weights) {
                    let (fb, db) = psi(m * x1 + s_perp * x2);
                    ip += w2 * fb;
                    id += w2 * db;
                }
                pp += w1 * fa * ip;
                dd += w1 * da * id;
            }
            phi[[a, b]] = pp;
            phi[[b, a]] = pp;
            dphi[[a, b]] = dd;
            dphi[[b, a]] = dd;
        }
    }
    (phi, dphi)
}
"#;
