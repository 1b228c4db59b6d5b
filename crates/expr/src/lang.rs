//! The expression IR: one `define_language!` table for network-level objects, single-site
//! fields, order parameters, causal time sums, (time, sample) operators and derivatives.
//!
//! Conventions. Layer and time are ordinary children: `(h 2 k)` is h²(k). The time symbol
//! `:` means "the whole trajectory", so `(h 2 :)` is the (time, sample) vector h² and
//! `(Phi 1 : :)` the operator Φ¹; `_` marks a source that is constant in time (u¹, r^L).
//! `*` is commutative (scalars, and Hadamard products over samples); `dot` is the
//! non-commutative matrix product over the sample index (and over time for operators).

use egg::{Analysis, DidMerge, EGraph as EG, Id, Language, Symbol, define_language};

define_language! {
    pub enum Dmft {
        // arithmetic: scalars, and elementwise over samples
        "+" = Add([Id; 2]),
        "*" = Mul([Id; 2]),
        "neg" = Neg(Id),
        "recip" = Recip(Id),
        "sqrt" = Sqrt(Id),

        // activations of a named nonlinearity: φ, φ', φ''
        "act" = Act([Id; 2]),
        "dact" = Act1([Id; 2]),
        "ddact" = Act2([Id; 2]),

        // network level (N neurons): weights, their updates, products with neuron vectors
        "W" = Weight([Id; 2]),
        "dW" = Update([Id; 2]),
        "w" = Readout(Id),
        "dw" = ReadoutUpdate(Id),
        "outer" = Outer([Id; 2]),
        "mv" = Forward([Id; 2]),
        "mtv" = Backward([Id; 2]),
        "otimes" = SampleOuter([Id; 2]),
        "navg" = NeuronMean(Id),

        // single-site fields and Gaussian sources: (h layer time)
        "h" = Pre([Id; 2]),
        "z" = Back([Id; 2]),
        "g" = Grad([Id; 2]),
        "u" = SourceU([Id; 2]),
        "r" = SourceR([Id; 2]),
        "delta" = Residual(Id),
        "f" = Output(Id),

        // order parameters: (Phi layer time time)
        "Phi" = PhiKernel([Id; 3]),
        "G" = GradKernel([Id; 3]),
        "Rphi" = ResponsePhi([Id; 3]),
        "Rg" = ResponseGrad([Id; 3]),
        "K" = Ntk([Id; 2]),

        // site averages, sample sums, causal time sums (bound variable, upper time, body)
        "avg" = SiteAvg(Id),
        "cov" = SiteCov([Id; 2]),
        "sum-a" = SampleSum(Id),
        "sum<" = SumBefore([Id; 3]),
        "sum<=" = SumUpTo([Id; 3]),
        "kron" = TimeDelta([Id; 2]),

        // linear algebra over samples and (time, sample) operators
        "dot" = Dot([Id; 2]),
        "T" = Transpose(Id),
        "opinv" = OpInverse(Id),
        "causal" = CausalDelta(Id),
        "diag" = Diag(Id),
        "row" = Row([Id; 2]),
        "C" = OpC(Id),
        "E" = OpE(Id),

        // Gaussian closed forms of ⟨φ(u)φ(u)ᵀ⟩, ⟨φ'(u)φ'(u)ᵀ⟩ as maps of the covariance
        "arccos1" = ArcCos1(Id),
        "arccos0" = ArcCos0(Id),
        "erfk" = ErfKernel(Id),
        "derfk" = ErfDerivKernel(Id),

        // derivatives: d/d(source) of a single-site quantity, d/d(order parameter)
        "d" = DSource([Id; 2]),
        "dq" = DOrder([Id; 2]),

        Num(i64),
        Symbol(Symbol),
    }
}

/// What the rules must know about an e-class: whether it is random at a single site
/// (depends on the sources) and which sources it may depend on. Merged by intersection:
/// if any equal form is free of a source, the class is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Deps {
    /// Depends on the single-site randomness at all.
    pub random: bool,
    /// Bit ℓ: may depend on u^ℓ.
    pub u: u64,
    /// Bit ℓ: may depend on r^ℓ.
    pub r: u64,
    /// A plain scalar (number or a constant such as c, γ₀, η): commutes with everything.
    pub scalar: bool,
}

/// Symbols that name scalar constants.
pub const SCALARS: [&str; 6] = ["c", "gamma0", "eta", "P", "beta", "L"];

#[derive(Default, Clone)]
pub struct SiteAnalysis;

pub type EGraph = EG<Dmft, SiteAnalysis>;
pub type Rewrite = egg::Rewrite<Dmft, SiteAnalysis>;
pub type Expr = egg::RecExpr<Dmft>;

/// All layers: fields of layer ℓ depend on every source of every layer (through the site
/// process of its own layer only, but order parameters are deterministic, so in practice
/// the conservative mask is fine).
const ALL: u64 = u64::MAX;

impl Analysis<Dmft> for SiteAnalysis {
    type Data = Deps;

    fn make(egraph: &mut EGraph, enode: &Dmft, _: Id) -> Deps {
        let child = |i: &Id| egraph[*i].data;
        let union = || {
            let init = Deps {
                scalar: true,
                ..Deps::default()
            };
            enode.children().iter().fold(init, |acc, c| {
                let d = child(c);
                Deps {
                    random: acc.random || d.random,
                    u: acc.u | d.u,
                    r: acc.r | d.r,
                    scalar: acc.scalar && d.scalar,
                }
            })
        };
        let arithmetic = matches!(
            enode,
            Dmft::Add(_) | Dmft::Mul(_) | Dmft::Neg(_) | Dmft::Recip(_) | Dmft::Sqrt(_)
        );
        let layer = |i: &Id| {
            egraph[*i]
                .nodes
                .iter()
                .find_map(|n| match n {
                    Dmft::Num(l) => Some(1u64 << (*l as u64).min(63)),
                    _ => None,
                })
                .unwrap_or(ALL)
        };
        match enode {
            Dmft::SourceU([l, _]) => Deps {
                random: true,
                u: layer(l),
                ..Deps::default()
            },
            Dmft::SourceR([l, _]) => Deps {
                random: true,
                r: layer(l),
                ..Deps::default()
            },
            // Fields, and network-level objects (one neuron's weights), are random.
            Dmft::Pre(_)
            | Dmft::Back(_)
            | Dmft::Grad(_)
            | Dmft::Weight(_)
            | Dmft::Update(_)
            | Dmft::Readout(_)
            | Dmft::ReadoutUpdate(_)
            | Dmft::Outer(_)
            | Dmft::Forward(_)
            | Dmft::Backward(_) => Deps {
                random: true,
                u: ALL,
                r: ALL,
                scalar: false,
            },
            Dmft::Num(_) => Deps {
                scalar: true,
                ..Deps::default()
            },
            Dmft::Symbol(s) => Deps {
                scalar: SCALARS.contains(&s.as_str()),
                ..Deps::default()
            },
            // Averages, order parameters, and the network level (not a single site) are
            // deterministic at the site level.
            Dmft::SiteAvg(_)
            | Dmft::SiteCov(_)
            | Dmft::PhiKernel(_)
            | Dmft::GradKernel(_)
            | Dmft::ResponsePhi(_)
            | Dmft::ResponseGrad(_)
            | Dmft::Ntk(_)
            | Dmft::Residual(_)
            | Dmft::Output(_) => Deps::default(),
            _ => Deps {
                scalar: arithmetic && union().scalar,
                ..union()
            },
        }
    }

    fn merge(&mut self, a: &mut Deps, b: Deps) -> DidMerge {
        let merged = Deps {
            random: a.random && b.random,
            u: a.u & b.u,
            r: a.r & b.r,
            scalar: a.scalar || b.scalar,
        };
        let changed_a = merged != *a;
        let changed_b = merged != b;
        *a = merged;
        DidMerge(changed_a, changed_b)
    }
}

/// Parses an s-expression of the IR; the derivation builds its seeds this way.
pub fn parse(s: &str) -> Expr {
    s.parse()
        .unwrap_or_else(|e| panic!("bad IR s-expression {s:?}: {e}"))
}
