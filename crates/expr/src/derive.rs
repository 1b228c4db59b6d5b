//! The derivation pipeline: seed an e-graph with the network's equations for a spec, run
//! the rule sets under limits, and extract each named equation at the least cost.
//!
//! Stages (each its own e-graph, so limits and stop reasons are reported per stage):
//! - `site-process`: network → single-site fields, closures, responses, tangent fields and
//!   (two-layer) Hessian blocks; specialization by the activation identities.
//! - `lazy-output` and `lazy` (γ₀ → 0): frozen fields and kernels, NTK dynamics.
//! - `operators` (linear networks): step-k equations lifted to (time, sample) operators and
//!   solved in closed form (theory.md 2b).

use crate::lang::{Dmft, EGraph, Expr, Rewrite, SiteAnalysis, parse};
use crate::rules;
use crate::spec::{Activation, Parameterization, Spec, Training};
use egg::{CostFunction, Extractor, Id, Language, Runner, StopReason};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Limits of every stage. The node and iteration limits bound the work and are
/// deterministic (checked between iterations), so the extracted result does not depend on
/// the machine's load; the time limit is only a backstop against a runaway rule and is far
/// above any catalogue stage (docs/performance.md has the measured times and stop reasons).
pub const NODE_LIMIT: usize = 50_000;
pub const ITER_LIMIT: usize = 40;
pub const TIME_LIMIT: Duration = Duration::from_secs(30);

/// `lhs = rhs`, with a name from the papers' vocabulary.
#[derive(Clone, Debug)]
pub struct Equation {
    pub name: String,
    pub lhs: Expr,
    pub rhs: Expr,
}

#[derive(Clone, Debug)]
pub struct Section {
    pub title: String,
    pub equations: Vec<Equation>,
}

/// How one stage's saturation ended.
#[derive(Clone, Debug)]
pub struct StageReport {
    pub stage: &'static str,
    pub iterations: usize,
    pub nodes: usize,
    pub classes: usize,
    pub stop: String,
    pub seconds: f64,
}

impl StageReport {
    /// True when the stage stopped because no rule had anything left to add.
    pub fn saturated(&self) -> bool {
        self.stop == "saturated"
    }
}

#[derive(Clone, Debug)]
pub struct Derivation {
    pub spec: Spec,
    pub sections: Vec<Section>,
    pub stages: Vec<StageReport>,
}

impl Derivation {
    /// The equation whose left side prints as `lhs` (an s-expression of the IR).
    pub fn equation(&self, lhs: &str) -> Option<&Equation> {
        let target = parse(lhs).to_string();
        self.sections
            .iter()
            .flat_map(|s| &s.equations)
            .find(|e| e.lhs.to_string() == target)
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DeriveError {
    #[error("{0}")]
    Unsupported(String),
}

/// Derives the field equations, closures and Hessian blocks of a spec.
pub fn derive(spec: &Spec) -> Result<Derivation, DeriveError> {
    if spec.training == Training::OnlineSgd {
        return Err(DeriveError::Unsupported(
            "training = online-sgd is described but not derived yet (fresh batches need the \
             population-loss site process); use training = gd"
                .into(),
        ));
    }
    let lazy = spec.lazy || spec.parameterization == Parameterization::Ntk;
    let mut d = Derivation {
        spec: spec.clone(),
        sections: Vec::new(),
        stages: Vec::new(),
    };
    if lazy {
        derive_lazy(spec, &mut d);
    } else {
        derive_rich(spec, &mut d);
        if spec.is_linear() && !spec.layers.iter().any(|l| l.residual) {
            derive_operators(spec, &mut d);
        }
    }
    Ok(d)
}

/// A seed: an equation's left side, the definition it is unioned with, and its name.
struct Seed {
    name: String,
    lhs: String,
    def: String,
    /// Other nodes the right side may not be (g = φ'(h) z is read from z, not z from g).
    forbid: Vec<String>,
}

fn seed(name: impl Into<String>, lhs: impl Into<String>, def: impl Into<String>) -> Seed {
    Seed {
        name: name.into(),
        lhs: lhs.into(),
        def: def.into(),
        forbid: Vec::new(),
    }
}

fn act(spec: &Spec, l: usize) -> Activation {
    spec.activation(l)
}

/// The network of theory.md section 1 at step k: forward, backward and output.
fn network_fields(spec: &Spec) -> Vec<Seed> {
    let depth = spec.depth();
    let branch = "(* beta (recip (sqrt L)))";
    let mut seeds = vec![seed("preactivation", "(h 1 k)", "(mv (W 0 k) x)")];
    for l in 2..=depth {
        let (p, a) = (l - 1, act(spec, l - 1));
        let product = format!("(mv (W {p} k) (act {a} (h {p} k)))");
        let def = if spec.layers[l - 1].residual {
            format!("(+ (h {p} k) (* {branch} {product}))")
        } else {
            product
        };
        seeds.push(seed("preactivation", format!("(h {l} k)"), def));
    }
    for l in (1..=depth).rev() {
        let def = if l == depth {
            "(w k)".to_string()
        } else {
            format!("(mtv (W {l} k) (g {} k))", l + 1)
        };
        let mut z = seed("backward field", format!("(z {l} k)"), def);
        z.forbid.push(format!("(g {l} k)"));
        seeds.push(z);
        seeds.push(seed(
            "gradient field",
            format!("(g {l} k)"),
            format!("(g {l} k)"),
        ));
    }
    seeds
}

/// The gradient-descent updates (μP, c = ηγ₀/P), unioned as facts.
fn updates(spec: &Spec) -> Vec<(String, String)> {
    let depth = spec.depth();
    let branch = "(* beta (recip (sqrt L)))";
    let mut facts = vec![(
        "(dW 0 j)".to_string(),
        "(* c (outer (* (delta j) (g 1 j)) x))".to_string(),
    )];
    for l in 1..depth {
        let a = act(spec, l);
        let step = format!(
            "(* c (outer (* (delta j) (g {} j)) (act {a} (h {l} j))))",
            l + 1
        );
        let step = if spec.layers[l].residual {
            format!("(* {branch} {step})")
        } else {
            step
        };
        facts.push((format!("(dW {l} j)"), step));
    }
    let readout = if spec.readout_trainable {
        format!(
            "(* c (sum-a (* (delta j) (act {} (h {depth} j)))))",
            act(spec, depth)
        )
    } else {
        "0".to_string()
    };
    facts.push(("(dw j)".to_string(), readout));
    facts
}

fn output_def(spec: &Spec) -> String {
    let depth = spec.depth();
    format!(
        "(* (recip gamma0) (navg (* (w k) (act {} (h {depth} k)))))",
        act(spec, depth)
    )
}

/// Closure (saddle-point) equations: kernels as neuron averages, responses as averages of
/// source derivatives, at two generic times k, j.
/// With `frozen` (lazy limit) the kernels are time independent: Φ^ℓ(_,_) at equal times.
fn closures(spec: &Spec, frozen: bool) -> Vec<Seed> {
    let depth = spec.depth();
    let (j, lhs_times) = if frozen { ("k", "_ _") } else { ("j", "k j") };
    let mut seeds = Vec::new();
    for l in 1..=depth {
        let a = act(spec, l);
        let mut phi = seed(
            "phi_kernel",
            format!("(Phi {l} {lhs_times})"),
            format!("(navg (otimes (act {a} (h {l} k)) (act {a} (h {l} {j}))))"),
        );
        let mut grad = seed(
            "grad_kernel",
            format!("(G {l} {lhs_times})"),
            format!("(navg (otimes (g {l} k) (g {l} {j})))"),
        );
        if frozen {
            phi.forbid.push(format!("(Phi {l} k k)"));
            grad.forbid.push(format!("(G {l} k k)"));
        }
        seeds.push(phi);
        seeds.push(grad);
    }
    seeds
}

fn responses(spec: &Spec) -> Vec<Seed> {
    let depth = spec.depth();
    let mut seeds = Vec::new();
    for l in 1..depth {
        let a = act(spec, l);
        seeds.push(seed(
            "response_phi",
            format!("(Rphi {l} k s)"),
            format!("(avg (d (act {a} (h {l} k)) (r {l} s)))"),
        ));
        for f in ["h", "z", "g"] {
            let lhs = format!("(d ({f} {l} k) (r {l} s))");
            seeds.push(seed("tangent field (∂/∂r)", lhs.clone(), lhs));
        }
    }
    for l in 2..=depth {
        seeds.push(seed(
            "response_grad",
            format!("(Rg {l} k s)"),
            format!("(avg (d (g {l} k) (u {l} s)))"),
        ));
        seeds.push(seed(
            "response_grad (equal time)",
            format!("(Rg {l} k k)"),
            format!("(avg (d (g {l} k) (u {l} k)))"),
        ));
        for f in ["h", "z", "g"] {
            let lhs = format!("(d ({f} {l} k) (u {l} s))");
            seeds.push(seed("tangent field (∂/∂u)", lhs.clone(), lhs));
        }
    }
    seeds
}

/// Two-layer Hessian blocks of the action, reduced to the predictions (theory.md 3):
/// κ_f as a site cumulant, D_f as the sensitivity of the site average to Δ, expanded by the
/// chain rule into tangent fields.
fn hessian_two_layer(spec: &Spec) -> Vec<Seed> {
    let a = act(spec, 1);
    let psi = |t: &str| format!("(* (z 1 {t}) (act {a} (h 1 {t})))");
    let mut seeds = vec![seed(
        "kappa_f (site cumulant)",
        "(cov (f k) (f s))",
        format!(
            "(* (recip (* gamma0 gamma0)) (cov {} {}))",
            psi("k"),
            psi("s")
        ),
    )];
    seeds.push(seed(
        "D_f (sensitivity)",
        "(dq (f k) (delta s))",
        "(dq (f k) (delta s))",
    ));
    for f in ["h", "z", "g"] {
        let lhs = format!("(dq ({f} 1 k) (delta s))");
        seeds.push(seed("tangent field (∂/∂Δ)", lhs.clone(), lhs));
    }
    seeds
}

fn run(stage: &'static str, egraph: EGraph, rules: &[Rewrite]) -> (EGraph, StageReport) {
    let start = Instant::now();
    let runner = Runner::<Dmft, SiteAnalysis>::default()
        .with_egraph(egraph)
        .with_scheduler(egg::SimpleScheduler)
        .with_node_limit(NODE_LIMIT)
        .with_iter_limit(ITER_LIMIT)
        .with_time_limit(TIME_LIMIT)
        .run(rules);
    let stop = match &runner.stop_reason {
        Some(StopReason::Saturated) => "saturated".to_string(),
        Some(StopReason::IterationLimit(n)) => format!("iteration limit ({n})"),
        Some(StopReason::NodeLimit(n)) => format!("node limit ({n})"),
        Some(StopReason::TimeLimit(t)) => format!("time limit ({t:.1} s)"),
        Some(StopReason::Other(s)) => s.clone(),
        None => "not run".to_string(),
    };
    let report = StageReport {
        stage,
        iterations: runner.iterations.len(),
        nodes: runner.egraph.total_size(),
        classes: runner.egraph.number_of_classes(),
        stop,
        seconds: start.elapsed().as_secs_f64(),
    };
    (runner.egraph, report)
}

/// Adds `lhs` and `def` and unions them; returns the class.
fn add_seed(egraph: &mut EGraph, s: &Seed) -> Id {
    let a = egraph.add_expr(&parse(&s.lhs));
    let b = egraph.add_expr(&parse(&s.def));
    egraph.union(a, b);
    a
}

fn add_fact(egraph: &mut EGraph, lhs: &str, def: &str) {
    let a = egraph.add_expr(&parse(lhs));
    let b = egraph.add_expr(&parse(def));
    egraph.union(a, b);
}

/// The cost model: arithmetic is cheap, a matrix product or time sum costs more, a site
/// average costs most of what can remain; network-level objects must be gone (a large
/// cost), an equation may not be its own right side (infinite), and a derivative is cheap
/// only as a tangent field (∂ of a field), never of a composite expression.
pub struct DmftCost<'a> {
    egraph: &'a EGraph,
    forbid: Vec<Dmft>,
    trajectories_unknown: bool,
    /// Lazy limit: every field is a function of the frozen sources, so a form that still
    /// averages over fields is not finished.
    fields_unknown: bool,
}

impl DmftCost<'_> {
    fn class_has(&self, id: Id, pred: impl Fn(&Dmft) -> bool) -> bool {
        self.egraph[id].nodes.iter().any(pred)
    }
}

impl CostFunction<Dmft> for DmftCost<'_> {
    type Cost = f64;

    fn cost<C: FnMut(Id) -> f64>(&mut self, enode: &Dmft, mut costs: C) -> f64 {
        if self.forbid.contains(enode) {
            return f64::INFINITY;
        }
        if let Dmft::Symbol(s) = enode
            && s.as_str() == "_"
        {
            // Frozen (time-independent) forms are preferred when they exist.
            return 0.5;
        }
        let is_field = |n: &Dmft| matches!(n, Dmft::Pre(_) | Dmft::Back(_) | Dmft::Grad(_));
        let own = match enode {
            Dmft::Weight(_)
            | Dmft::Update(_)
            | Dmft::Readout(_)
            | Dmft::ReadoutUpdate(_)
            | Dmft::Outer(_)
            | Dmft::Forward(_)
            | Dmft::Backward(_)
            | Dmft::NeuronMean(_)
            | Dmft::Row(_) => 1e4,
            Dmft::DSource([x, src]) | Dmft::DOrder([x, src]) => {
                // A tangent field is an unknown of its own equations, except at equal
                // times, where causality gives its value (e.g. R_g(k,k) = ⟨φ''(h) z⟩).
                let time_of = |id: Id| {
                    self.egraph[id].nodes.iter().find_map(|n| match n {
                        Dmft::Pre([_, t])
                        | Dmft::Back([_, t])
                        | Dmft::Grad([_, t])
                        | Dmft::SourceU([_, t])
                        | Dmft::SourceR([_, t]) => Some(self.egraph.find(*t)),
                        Dmft::Residual(t) => Some(self.egraph.find(*t)),
                        _ => None,
                    })
                };
                let equal_time = time_of(*x).is_some() && time_of(*x) == time_of(*src);
                if self.class_has(*x, is_field) && !equal_time {
                    2.0
                } else {
                    200.0
                }
            }
            Dmft::Pre(_) | Dmft::Back(_) | Dmft::Grad(_) if self.fields_unknown => 1e6,
            Dmft::Pre([_, t])
            | Dmft::Back([_, t])
            | Dmft::Grad([_, t])
            | Dmft::SourceU([_, t])
            | Dmft::SourceR([_, t])
                if self.trajectories_unknown
                    && self
                        .class_has(*t, |n| matches!(n, Dmft::Symbol(s) if s.as_str() == ":")) =>
            {
                1e6
            }
            // Naming an order parameter is cheaper than inlining its value.
            Dmft::PhiKernel(_)
            | Dmft::GradKernel(_)
            | Dmft::ResponsePhi(_)
            | Dmft::ResponseGrad(_)
            | Dmft::Ntk(_) => 0.5,
            Dmft::SiteAvg(_) | Dmft::SiteCov(_) => 20.0,
            // ⟨s sᵀ⟩ of a bare source is its covariance, an order parameter by name.
            Dmft::SampleOuter([a, b])
                if [a, b].iter().all(|c| {
                    self.class_has(**c, |n| matches!(n, Dmft::SourceU(_) | Dmft::SourceR(_)))
                }) =>
            {
                1e3
            }
            Dmft::OpInverse(_) => 8.0,
            Dmft::Dot(_) => 4.0,
            Dmft::SumBefore(_) | Dmft::SumUpTo(_) => 3.0,
            Dmft::SampleSum(_)
            | Dmft::ArcCos0(_)
            | Dmft::ArcCos1(_)
            | Dmft::ErfKernel(_)
            | Dmft::ErfDerivKernel(_) => 2.0,
            _ => 1.0,
        };
        // Ties are broken toward the cheaper operand first (c Σ…, Δ(j) g(j), u + …), so
        // extraction is deterministic and reads like the papers.
        let order = match enode {
            Dmft::Add([a, b]) | Dmft::Mul([a, b]) if costs(*a) > costs(*b) => 1e-3,
            _ => 0.0,
        };
        enode.fold(own + order, |sum, id| sum + costs(id))
    }
}

/// The canonical e-node of `expr`'s root in `egraph` (every subterm must be present).
fn canonical_root(egraph: &EGraph, expr: &Expr) -> Option<Dmft> {
    let mut ids: Vec<Id> = Vec::with_capacity(expr.len());
    for node in expr.as_ref() {
        let n = node.clone().map_children(|c| ids[usize::from(c)]);
        ids.push(egraph.lookup(n)?);
    }
    let last = expr.as_ref().last()?.clone();
    Some(last.map_children(|c| egraph.find(ids[usize::from(c)])))
}

fn extract(
    egraph: &EGraph,
    seeds: &[Seed],
    trajectories_unknown: bool,
    fields_unknown: bool,
) -> Vec<Equation> {
    // One extractor per set of extra forbidden nodes (extraction is the costly part).
    let mut cache: HashMap<Vec<String>, Extractor<DmftCost, Dmft, SiteAnalysis>> = HashMap::new();
    let mut node_cost = DmftCost {
        egraph,
        forbid: Vec::new(),
        trajectories_unknown,
        fields_unknown,
    };
    seeds
        .iter()
        .map(|s| {
            let lhs = parse(&s.lhs);
            let root = egraph.find(
                egraph
                    .lookup_expr(&lhs)
                    .unwrap_or_else(|| panic!("seed {} was not added", s.lhs)),
            );
            let ex = cache.entry(s.forbid.clone()).or_insert_with(|| {
                let forbid = s
                    .forbid
                    .iter()
                    .filter_map(|f| canonical_root(egraph, &parse(f)))
                    .collect();
                let cost = DmftCost {
                    egraph,
                    forbid,
                    trajectories_unknown,
                    fields_unknown,
                };
                Extractor::new(egraph, cost)
            });
            // The right side may not be the left side, an alias of the same order
            // parameter at other times (frozen kernels), or lead back to its own class.
            let top = canonical_root(egraph, &lhs).expect("seeded");
            let alias = |n: &Dmft| {
                matches!(top, Dmft::PhiKernel(_) | Dmft::GradKernel(_) | Dmft::Ntk(_))
                    && n.to_string() == top.to_string()
                    && (matches!(n, Dmft::Ntk(_)) || n.children()[0] == top.children()[0])
            };
            let extra: Vec<Dmft> = s
                .forbid
                .iter()
                .filter_map(|f| canonical_root(egraph, &parse(f)))
                .collect();
            let best = egraph[root]
                .nodes
                .iter()
                .filter(|n| **n != top && !alias(n) && !extra.contains(n))
                .filter(|n| n.children().iter().all(|c| egraph.find(*c) != root))
                .map(|n| (node_cost.cost(n, |c| ex.find_best_cost(c)), n))
                .min_by(|a, b| a.0.total_cmp(&b.0))
                .unwrap_or_else(|| panic!("no right side for {}", s.lhs))
                .1
                .clone();
            let mut rhs = Expr::default();
            let children: Vec<Id> = best
                .children()
                .iter()
                .map(|c| append(&mut rhs, &ex.find_best(*c).1))
                .collect();
            let mut it = children.into_iter();
            rhs.add(best.map_children(|_| it.next().expect("arity")));
            Equation {
                name: s.name.clone(),
                lhs,
                rhs,
            }
        })
        .collect()
}

/// Appends `sub` to `expr` and returns the id of its root.
fn append(expr: &mut Expr, sub: &Expr) -> Id {
    let mut ids: Vec<Id> = Vec::with_capacity(sub.len());
    for n in sub.as_ref() {
        ids.push(expr.add(n.clone().map_children(|c| ids[usize::from(c)])));
    }
    *ids.last().expect("non-empty")
}

fn rich_rules(spec: &Spec) -> Vec<Rewrite> {
    let mut rs = rules::algebra();
    rs.extend(rules::single_site(spec));
    rs.extend(rules::source_calculus());
    rs.extend(rules::activations());
    rs.extend(rules::gaussian(spec));
    if spec.depth() == 1 {
        rs.extend(rules::hessian(spec));
    }
    rs
}

fn derive_rich(spec: &Spec, d: &mut Derivation) {
    let depth = spec.depth();
    let mut egraph = EGraph::default();
    let fields = network_fields(spec);
    let out = vec![
        seed("output", "(f k)", output_def(spec)),
        seed("error", "(delta k)", "(+ y (neg (f k)))"),
    ];
    let closure = closures(spec, false);
    let response = responses(spec);
    let hessian = if depth == 1 {
        hessian_two_layer(spec)
    } else {
        Vec::new()
    };
    for s in fields
        .iter()
        .chain(&out)
        .chain(&closure)
        .chain(&response)
        .chain(&hessian)
    {
        add_seed(&mut egraph, s);
    }
    for (lhs, def) in updates(spec) {
        add_fact(&mut egraph, &lhs, &def);
    }
    add_fact(&mut egraph, &format!("(z {depth} k)"), "(w k)");
    let (egraph, report) = run("site-process", egraph, &rich_rules(spec));
    d.stages.push(report);
    let groups = [
        ("Single-site field equations", &fields),
        ("Output", &out),
        ("Closure: kernels", &closure),
        (
            "Closure: response functions and their tangent fields",
            &response,
        ),
        ("Hessian blocks (predictions)", &hessian),
    ];
    let sections: Vec<Section> = groups
        .iter()
        .filter(|(_, seeds)| !seeds.is_empty())
        .map(|(title, seeds)| Section {
            title: title.to_string(),
            equations: extract(&egraph, seeds, false, false),
        })
        .collect();
    simplify_into(sections, d);
    if depth == 1 {
        d.sections.push(Section {
            title: "Propagator assembly".to_string(),
            equations: vec![Equation {
                name: "Sigma_f".to_string(),
                lhs: parse("Sigma_f"),
                rhs: parse("(dot (dot (opinv (+ I D_f)) kappa_f) (T (opinv (+ I D_f))))"),
            }],
        });
    }
}

fn derive_lazy(spec: &Spec, d: &mut Derivation) {
    let depth = spec.depth();
    // Stage 1: the output to first order in γ₀, alone in its e-graph.
    let mut egraph = EGraph::default();
    let f_seed = seed("output (NTK dynamics)", "(f k)", output_def(spec));
    add_seed(&mut egraph, &f_seed);
    add_fact(&mut egraph, &format!("(z {depth} k)"), "(w k)");
    let mut rs = rules::lazy_output(spec);
    rs.extend(
        rules::single_site(spec)
            .into_iter()
            .filter(|r| r.name.as_str() == "neuron-to-site"),
    );
    let (egraph, report) = run("lazy-output", egraph, &rs);
    d.stages.push(report);
    let lazy_f = extract_without_average(&egraph, "(f k)");

    // Stage 2: frozen fields, kernels and the NTK.
    let mut egraph = EGraph::default();
    let fields = network_fields(spec);
    let out = vec![
        seed("output (NTK dynamics)", "(f k)", lazy_f.to_string()),
        seed("error", "(delta k)", "(+ y (neg (f k)))"),
    ];
    // W^ℓ feeds layer ℓ+1; a residual branch scales its contribution by β²/L.
    let ntk_def = (0..=depth)
        .map(|l| {
            let term = format!("(* (G {} k k) (Phi {l} k k))", l + 1);
            if spec.layers.get(l).is_some_and(|next| next.residual) {
                format!("(* (* (* beta beta) (recip L)) {term})")
            } else {
                term
            }
        })
        .reduce(|a, b| format!("(+ {a} {b})"))
        .expect("depth ≥ 1");
    let mut ntk = seed("neural tangent kernel", "(K _ _)", ntk_def);
    ntk.forbid.push("(K k k)".to_string());
    let ntk = vec![ntk];
    let closure = closures(spec, true);
    for s in fields.iter().chain(&out).chain(&ntk).chain(&closure) {
        add_seed(&mut egraph, s);
    }
    for (lhs, def) in updates(spec) {
        add_fact(&mut egraph, &lhs, &def);
    }
    add_fact(&mut egraph, &format!("(z {depth} k)"), "(w k)");
    add_fact(&mut egraph, "(Phi 0 k k)", "Kx");
    add_fact(&mut egraph, &format!("(G {} k k)", depth + 1), "1");
    let mut rs = rich_rules(spec);
    rs.extend(rules::lazy());
    let (egraph, report) = run("lazy", egraph, &rs);
    d.stages.push(report);
    let sections: Vec<Section> = [
        ("Single-site field equations (γ₀ → 0)", &fields),
        ("Output", &out),
        ("Neural tangent kernel", &ntk),
        ("Closure: frozen kernels", &closure),
    ]
    .iter()
    .map(|(title, seeds)| Section {
        title: title.to_string(),
        equations: extract(&egraph, seeds, false, true),
    })
    .collect();
    simplify_into(sections, d);
}

/// The `simplify` stage: all right sides in one e-graph with reordering (commutativity,
/// associativity) and the activation identities, which need factors side by side.
fn simplify_into(sections: Vec<Section>, d: &mut Derivation) {
    let mut egraph = EGraph::default();
    let roots: Vec<Vec<Id>> = sections
        .iter()
        .map(|s| {
            s.equations
                .iter()
                .map(|e| egraph.add_expr(&e.rhs))
                .collect()
        })
        .collect();
    let mut rs = rules::algebra();
    rs.extend(rules::commutative());
    rs.extend(rules::activations());
    let (egraph, report) = run("simplify", egraph, &rs);
    d.stages.push(report);
    let cost = DmftCost {
        egraph: &egraph,
        forbid: Vec::new(),
        trajectories_unknown: false,
        fields_unknown: false,
    };
    let ex = Extractor::new(&egraph, cost);
    for (mut s, ids) in sections.into_iter().zip(roots) {
        for (eq, id) in s.equations.iter_mut().zip(ids) {
            eq.rhs = ex.find_best(id).1;
        }
        d.sections.push(s);
    }
}

/// The cheapest site-average-free form of `lhs` (the lazy output must be the NTK sum, not
/// the O(1/γ₀) average it equals).
fn extract_without_average(egraph: &EGraph, lhs: &str) -> Expr {
    let root = egraph.lookup_expr(&parse(lhs)).expect("seeded");
    let forbid = egraph[root]
        .nodes
        .iter()
        .filter(|n| matches!(n, Dmft::Output(_) | Dmft::Mul(_)))
        .filter(|n| {
            // Keep only the products that do not lead to a site average.
            let e = n.build_recexpr(|id| egraph[id].nodes[0].clone());
            e.as_ref()
                .iter()
                .any(|m| matches!(m, Dmft::SiteAvg(_) | Dmft::NeuronMean(_)))
                || matches!(n, Dmft::Output(_))
        })
        .cloned()
        .collect();
    let cost = DmftCost {
        egraph,
        forbid,
        trajectories_unknown: false,
        fields_unknown: false,
    };
    Extractor::new(egraph, cost).find_best(root).1
}

fn derive_operators(spec: &Spec, d: &mut Derivation) {
    let depth = spec.depth();
    let readout = depth + 1;
    // Step-k field equations from the site-process stage, lifted to block row k.
    let site = d.sections[0].equations.clone();
    let mut egraph = EGraph::default();
    let mut rows = Vec::new();
    for eq in &site {
        let (field, layer) = match eq.lhs.as_ref().last() {
            Some(Dmft::Pre([l, _])) => ("h", &eq.lhs[*l]),
            Some(Dmft::Back([l, _])) => ("z", &eq.lhs[*l]),
            _ => continue,
        };
        let rhs = egraph.add_expr(&eq.rhs);
        rows.push((parse(&format!("({field} {layer} :)")), rhs));
    }
    egraph.add_expr(&parse("k"));
    let mut rs = rules::algebra();
    rs.extend(rules::activations());
    rs.extend(rules::lifting(spec));
    rs.extend(
        rules::single_site(spec)
            .into_iter()
            .filter(|r| r.name.as_str().starts_with("backprop")),
    );
    let (lifted, report) = run("lift", egraph, &rs);
    d.stages.push(report);
    // Block row k for a symbolic k is the whole trajectory: x(k) = X(k) ∀k ⇒ x = X.
    let mut defs = Vec::new();
    for l in 1..=depth {
        defs.push(seed(
            "C (causal forward operator)",
            format!("(C {l})"),
            format!(
                "(+ (Rphi {} : :) (* c (causal (Phi {} : :))))",
                l - 1,
                l - 1
            ),
        ));
        defs.push(seed(
            "E (causal backward operator)",
            format!("(E {l})"),
            format!("(+ (Rg {} : :) (* c (causal (G {} : :))))", l + 1, l + 1),
        ));
    }
    // Stage `factor`: collect each trajectory equation into x = a + M y with M named.
    let mut factor = EGraph::default();
    let mut lifted_eqs = Vec::new();
    for (lhs, rhs) in rows {
        let inner = row_k_inner(&lifted, rhs);
        let id = factor.add_expr(&inner);
        lifted_eqs.push((lhs, id));
    }
    for s in &defs {
        add_seed(&mut factor, s);
    }
    add_fact(&mut factor, "(Rphi 0 : :)", "0");
    add_fact(&mut factor, &format!("(Rg {readout} : :)"), "0");
    let mut rs = rules::algebra();
    rs.extend(rules::commutative());
    rs.extend(rules::factoring());
    let (factor, report) = run("factor", factor, &rs);
    d.stages.push(report);
    let cost = DmftCost {
        egraph: &factor,
        forbid: Vec::new(),
        trajectories_unknown: false,
        fields_unknown: false,
    };
    let ex = Extractor::new(&factor, cost);
    let mut trajectory_eqs = Vec::new();
    let mut ops = EGraph::default();
    for (lhs, id) in lifted_eqs {
        let rhs = ex.find_best(id).1;
        let a = ops.add_expr(&lhs);
        let b = ops.add_expr(&rhs);
        ops.union(a, b);
        trajectory_eqs.push(Equation {
            name: "trajectory field equation".to_string(),
            lhs,
            rhs,
        });
    }
    let defs_extracted = extract(&factor, &defs, false, false);
    let mut closed = Vec::new();
    for l in 1..=depth {
        // A closed form of layer ℓ is in terms of C^ℓ, E^ℓ and the neighbours' kernels only.
        let own: Vec<String> = ["Phi", "G", "Rphi", "Rg"]
            .iter()
            .map(|q| format!("({q} {l} : :)"))
            .collect();
        let mut add = |name: &str, lhs: String, def: String| {
            let mut s = seed(name, lhs, def);
            s.forbid = own.clone();
            closed.push(s);
        };
        add(
            "phi_kernel",
            format!("(Phi {l} : :)"),
            format!("(avg (otimes (h {l} :) (h {l} :)))"),
        );
        add(
            "grad_kernel",
            format!("(G {l} : :)"),
            format!("(avg (otimes (z {l} :) (z {l} :)))"),
        );
        add(
            "response_phi",
            format!("(Rphi {l} : :)"),
            format!("(avg (d (h {l} :) (r {l} :)))"),
        );
        add(
            "response_grad",
            format!("(Rg {l} : :)"),
            format!("(avg (d (z {l} :) (u {l} :)))"),
        );
    }
    let out = vec![seed(
        "output",
        "(f :)",
        format!("(* (recip gamma0) (diag (avg (otimes (z {depth} :) (h {depth} :)))))"),
    )];
    for s in closed.iter().chain(&out) {
        add_seed(&mut ops, s);
    }
    let mut rs = rules::algebra();
    rs.extend(rules::source_calculus());
    rs.extend(rules::gaussian(spec));
    rs.extend(rules::operators());
    let (ops, report) = run("operators", ops, &rs);
    d.stages.push(report);
    d.sections.push(Section {
        title: "Causal operators on (time, sample) space".to_string(),
        equations: defs_extracted.into_iter().chain(trajectory_eqs).collect(),
    });
    d.sections.push(Section {
        title: "Closed forms (Gaussian fields)".to_string(),
        equations: extract(&ops, &closed, true, false)
            .into_iter()
            .chain(extract(&ops, &out, true, false))
            .collect(),
    });
}

/// The cheapest X such that the class holds (row k X): the trajectory form of a step-k
/// equation's right side.
fn row_k_inner(egraph: &EGraph, class: Id) -> Expr {
    let k_id = egraph.lookup_expr(&parse("k")).expect("k is present");
    let cost = DmftCost {
        egraph,
        forbid: Vec::new(),
        trajectories_unknown: false,
        fields_unknown: false,
    };
    let ex = Extractor::new(egraph, cost);
    egraph[class]
        .nodes
        .iter()
        .filter_map(|n| match n {
            Dmft::Row([t, x]) if egraph.find(*t) == egraph.find(k_id) => Some(ex.find_best(*x)),
            _ => None,
        })
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, e)| e)
        .unwrap_or_else(|| panic!("no block-row form was derived for class {class}"))
}
