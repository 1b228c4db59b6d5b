//! Unicode and LaTeX rendering in theory.md's notation: superscript layers, (k, j) times,
//! ⟨·⟩ site averages, Σ_{j<k} causal sums, juxtaposition for matrix products over samples,
//! ⊙ for Hadamard products of two fields, `Xᵀ` transposes and `[XΔ]_<` causal operators.

use crate::derive::Derivation;
use crate::lang::{Dmft, Expr};
use egg::{Id, Language};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    Unicode,
    Latex,
}

/// Binding strength: sums bind weakest, products next, atoms (calls, averages) tightest.
const SUM: u8 = 1;
const PRODUCT: u8 = 2;
const ATOM: u8 = 3;

struct Printer<'a> {
    expr: &'a Expr,
    style: Style,
}

fn superscript(n: &str) -> String {
    n.chars()
        .map(|c| match c {
            '0' => '⁰',
            '1' => '¹',
            '2' => '²',
            '3' => '³',
            '4' => '⁴',
            '5' => '⁵',
            '6' => '⁶',
            '7' => '⁷',
            '8' => '⁸',
            '9' => '⁹',
            other => other,
        })
        .collect()
}

impl Printer<'_> {
    fn node(&self, id: Id) -> &Dmft {
        &self.expr[id]
    }

    fn latex(&self) -> bool {
        self.style == Style::Latex
    }

    fn leaf(&self, id: Id) -> String {
        match self.node(id) {
            Dmft::Num(n) => n.to_string(),
            Dmft::Symbol(s) => s.as_str().to_string(),
            _ => self.show(id, ATOM),
        }
    }

    fn symbol(&self, s: &str) -> String {
        let (u, l) = match s {
            "gamma0" => ("γ₀", r"\gamma_0"),
            "eta" => ("η", r"\eta"),
            "beta" => ("β", r"\beta"),
            "Kx" => ("Kˣ", "K^{x}"),
            "kappa_f" => ("κ_f", r"\kappa_f"),
            "Sigma_f" => ("Σ_f", r"\Sigma_f"),
            "D_f" => ("D_f", "D_f"),
            other => (other, other),
        };
        if self.latex() { l } else { u }.to_string()
    }

    /// `name^layer` or `name^layer(times)`; `:` and `_` times are omitted.
    fn indexed(&self, name: (&str, &str), layer: Option<Id>, times: &[Id]) -> String {
        let layer = layer.map(|l| self.leaf(l));
        let times: Vec<String> = times
            .iter()
            .map(|t| self.leaf(*t))
            .filter(|t| t != ":" && t != "_")
            .collect();
        let mut s = match (self.style, &layer) {
            (Style::Unicode, Some(l)) => format!("{}{}", name.0, superscript(l)),
            (Style::Latex, Some(l)) => format!("{}^{{{l}}}", name.1),
            (Style::Unicode, None) => name.0.to_string(),
            (Style::Latex, None) => name.1.to_string(),
        };
        if !times.is_empty() {
            s.push_str(&format!("({})", times.join(",")));
        }
        s
    }

    fn activation(&self, a: Id, primes: usize, x: Id) -> String {
        let name = self.leaf(a);
        let p = "'".repeat(primes);
        if self.latex() {
            format!(r"\mathrm{{{name}}}{p}({})", self.show(x, SUM))
        } else {
            format!("{name}{p}({})", self.show(x, SUM))
        }
    }

    fn is_scalar(&self, id: Id) -> bool {
        match self.node(id) {
            Dmft::Num(_) => true,
            Dmft::Symbol(s) => crate::lang::SCALARS.contains(&s.as_str()),
            Dmft::Recip(a) | Dmft::Sqrt(a) | Dmft::Neg(a) => self.is_scalar(*a),
            Dmft::Mul([a, b]) | Dmft::Add([a, b]) => self.is_scalar(*a) && self.is_scalar(*b),
            _ => false,
        }
    }

    fn paren(&self, s: String, level: u8, need: u8) -> String {
        if level < need {
            if self.latex() {
                format!(r"\left({s}\right)")
            } else {
                format!("({s})")
            }
        } else {
            s
        }
    }

    /// Renders `id` for a context that needs binding strength at least `need`.
    fn show(&self, id: Id, need: u8) -> String {
        let l = self.latex();
        let (s, level) = match self.node(id) {
            Dmft::Num(n) => (n.to_string(), if *n < 0 { PRODUCT } else { ATOM }),
            Dmft::Symbol(s) => (self.symbol(s.as_str()), ATOM),
            Dmft::Add([a, b]) => {
                let rhs = match self.node(*b) {
                    Dmft::Neg(x) => format!(" − {}", self.show(*x, PRODUCT)),
                    _ => format!(" + {}", self.show(*b, SUM)),
                };
                let rhs = if l { rhs.replace('−', "-") } else { rhs };
                (format!("{}{rhs}", self.show(*a, SUM)), SUM)
            }
            Dmft::Neg(a) => (
                format!("{}{}", if l { "-" } else { "−" }, self.show(*a, ATOM)),
                PRODUCT,
            ),
            Dmft::Mul([a, b]) => {
                let sep = if self.is_scalar(*a) || self.is_scalar(*b) {
                    " "
                } else if l {
                    r" \odot "
                } else {
                    " ⊙ "
                };
                // A sum over time as a left factor would swallow what follows it.
                let left_need = if matches!(self.node(*a), Dmft::SumBefore(_) | Dmft::SumUpTo(_)) {
                    ATOM
                } else {
                    PRODUCT
                };
                (
                    format!(
                        "{}{sep}{}",
                        self.show(*a, left_need),
                        self.show(*b, PRODUCT)
                    ),
                    PRODUCT,
                )
            }
            Dmft::Dot([a, b]) => {
                let left_need = if matches!(self.node(*a), Dmft::SumBefore(_) | Dmft::SumUpTo(_)) {
                    ATOM
                } else {
                    PRODUCT
                };
                (
                    format!("{} {}", self.show(*a, left_need), self.show(*b, ATOM)),
                    PRODUCT,
                )
            }
            Dmft::Recip(a) => (
                if l {
                    format!("{}^{{-1}}", self.show(*a, ATOM))
                } else {
                    format!("{}⁻¹", self.show(*a, ATOM))
                },
                ATOM,
            ),
            Dmft::Sqrt(a) => (
                if l {
                    format!(r"\sqrt{{{}}}", self.show(*a, SUM))
                } else {
                    format!("√{}", self.show(*a, ATOM))
                },
                ATOM,
            ),
            Dmft::Act([a, x]) => (self.activation(*a, 0, *x), ATOM),
            Dmft::Act1([a, x]) => (self.activation(*a, 1, *x), ATOM),
            Dmft::Act2([a, x]) => (self.activation(*a, 2, *x), ATOM),
            Dmft::Pre([ly, t]) => (self.indexed(("h", "h"), Some(*ly), &[*t]), ATOM),
            Dmft::Back([ly, t]) => (self.indexed(("z", "z"), Some(*ly), &[*t]), ATOM),
            Dmft::Grad([ly, t]) => (self.indexed(("g", "g"), Some(*ly), &[*t]), ATOM),
            Dmft::SourceU([ly, t]) => (self.indexed(("u", "u"), Some(*ly), &[*t]), ATOM),
            Dmft::SourceR([ly, t]) => (self.indexed(("r", "r"), Some(*ly), &[*t]), ATOM),
            Dmft::Residual(t) => (self.indexed(("Δ", r"\Delta"), None, &[*t]), ATOM),
            Dmft::Output(t) => (self.indexed(("f", "f"), None, &[*t]), ATOM),
            Dmft::PhiKernel([ly, a, b]) => {
                (self.indexed(("Φ", r"\Phi"), Some(*ly), &[*a, *b]), ATOM)
            }
            Dmft::GradKernel([ly, a, b]) => (self.indexed(("G", "G"), Some(*ly), &[*a, *b]), ATOM),
            Dmft::ResponsePhi([ly, a, b]) => (
                self.indexed(("R_φ", r"R_{\varphi}"), Some(*ly), &[*a, *b]),
                ATOM,
            ),
            Dmft::ResponseGrad([ly, a, b]) => {
                (self.indexed(("R_g", "R_{g}"), Some(*ly), &[*a, *b]), ATOM)
            }
            Dmft::Ntk([a, b]) => (self.indexed(("K", "K"), None, &[*a, *b]), ATOM),
            Dmft::OpC(ly) => (self.indexed(("C", "C"), Some(*ly), &[]), ATOM),
            Dmft::OpE(ly) => (self.indexed(("E", "E"), Some(*ly), &[]), ATOM),
            Dmft::SiteAvg(e) => (
                if l {
                    format!(r"\left\langle {} \right\rangle", self.show(*e, SUM))
                } else {
                    format!("⟨{}⟩", self.show(*e, SUM))
                },
                ATOM,
            ),
            Dmft::SiteCov([a, b]) => {
                if let (Dmft::Output(s), Dmft::Output(t)) = (self.node(*a), self.node(*b)) {
                    let (s, t) = (self.leaf(*s), self.leaf(*t));
                    let name = if l { r"\kappa_f" } else { "κ_f" };
                    (format!("{name}({s},{t})"), ATOM)
                } else {
                    let name = if l { r"\mathrm{Cov}" } else { "Cov" };
                    (
                        format!("{name}({}, {})", self.show(*a, SUM), self.show(*b, SUM)),
                        ATOM,
                    )
                }
            }
            Dmft::SampleSum(e) => (
                if l {
                    format!(r"\sum_{{\alpha}} {}", self.show(*e, ATOM))
                } else {
                    format!("Σ_α {}", self.show(*e, ATOM))
                },
                SUM,
            ),
            Dmft::SumBefore([i, k, e]) | Dmft::SumUpTo([i, k, e]) => {
                let strict = matches!(self.node(id), Dmft::SumBefore(_));
                let (i, k) = (self.leaf(*i), self.leaf(*k));
                let rel = match (strict, l) {
                    (true, _) => "<",
                    (false, true) => r"\le ",
                    (false, false) => "≤",
                };
                let body = self.show(*e, PRODUCT);
                (
                    if l {
                        format!(r"\sum_{{{i}{rel}{k}}} {body}")
                    } else {
                        format!("Σ_{{{i}{rel}{k}}} {body}")
                    },
                    SUM,
                )
            }
            Dmft::TimeDelta([a, b]) => {
                let (a, b) = (self.leaf(*a), self.leaf(*b));
                (
                    if l {
                        format!(r"\delta_{{{a}{b}}}")
                    } else {
                        format!("δ_{{{a}{b}}}")
                    },
                    ATOM,
                )
            }
            Dmft::SampleOuter([a, b]) => (
                format!(
                    "{} {}{}",
                    self.show(*a, ATOM),
                    self.show(*b, ATOM),
                    if l { "^{\\top}" } else { "ᵀ" }
                ),
                PRODUCT,
            ),
            Dmft::Transpose(a) => (
                format!(
                    "{}{}",
                    self.show(*a, ATOM),
                    if l { "^{\\top}" } else { "ᵀ" }
                ),
                ATOM,
            ),
            Dmft::OpInverse(a) => (
                if l {
                    format!(r"\left({}\right)^{{-1}}", self.show(*a, SUM))
                } else {
                    format!("({})⁻¹", self.show(*a, SUM))
                },
                ATOM,
            ),
            Dmft::CausalDelta(a) => (
                if l {
                    format!(r"[{} \Delta]_<", self.show(*a, PRODUCT))
                } else {
                    format!("[{} Δ]_<", self.show(*a, PRODUCT))
                },
                ATOM,
            ),
            Dmft::Diag(a) => (format!("diag({})", self.show(*a, SUM)), ATOM),
            Dmft::Row([k, x]) => (format!("[{}]({})", self.show(*x, SUM), self.leaf(*k)), ATOM),
            Dmft::ArcCos1(a) | Dmft::ArcCos0(a) | Dmft::ErfKernel(a) | Dmft::ErfDerivKernel(a) => {
                let name = match self.node(id) {
                    Dmft::ArcCos1(_) => ("arccos₁", r"\mathrm{arccos}_1"),
                    Dmft::ArcCos0(_) => ("arccos₀", r"\mathrm{arccos}_0"),
                    Dmft::ErfKernel(_) => ("erfk", r"\mathrm{erfk}"),
                    _ => ("erfk'", r"\mathrm{erfk}'"),
                };
                (
                    format!(
                        "{}({})",
                        if l { name.1 } else { name.0 },
                        self.show(*a, SUM)
                    ),
                    ATOM,
                )
            }
            Dmft::DSource([x, s]) | Dmft::DOrder([x, s]) => (
                if l {
                    format!(
                        r"\frac{{\partial {}}}{{\partial {}}}",
                        self.show(*x, ATOM),
                        self.show(*s, ATOM)
                    )
                } else {
                    format!("∂{}/∂{}", self.show(*x, ATOM), self.show(*s, ATOM))
                },
                ATOM,
            ),
            // Network-level nodes never survive extraction; print them plainly.
            other => {
                let args: Vec<String> = other
                    .children()
                    .iter()
                    .map(|c| self.show(*c, SUM))
                    .collect();
                (format!("{other}({})", args.join(", ")), ATOM)
            }
        };
        self.paren(s, level, need)
    }
}

/// One expression in the given style.
pub fn expr(e: &Expr, style: Style) -> String {
    let p = Printer { expr: e, style };
    p.show(Id::from(e.as_ref().len() - 1), SUM)
}

/// The whole derivation: sections, then `name:  lhs = rhs` per equation.
pub fn derivation(d: &Derivation, style: Style) -> String {
    let mut out = String::new();
    let header = match style {
        Style::Unicode => format!("# {}\n", d.spec.name),
        Style::Latex => format!("% {}\n", d.spec.name),
    };
    out.push_str(&header);
    for s in &d.sections {
        match style {
            Style::Unicode => out.push_str(&format!("\n## {}\n", s.title)),
            Style::Latex => out.push_str(&format!("\n% {}\n", s.title)),
        }
        for eq in &s.equations {
            let (l, r) = (expr(&eq.lhs, style), expr(&eq.rhs, style));
            match style {
                Style::Unicode => out.push_str(&format!("{}:\n    {l} = {r}\n", eq.name)),
                Style::Latex => out.push_str(&format!(
                    "\\begin{{equation}} % {}\n  {l} = {r}\n\\end{{equation}}\n",
                    eq.name
                )),
            }
        }
    }
    out
}
