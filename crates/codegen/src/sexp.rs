//! The derived equations as plain s-expression trees.
//!
//! Lowering pattern-matches on the shape of an equation's right side; reading the IR's
//! printed s-expression keeps that matching independent of the e-graph's node layout.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sexp {
    Atom(String),
    List(Vec<Sexp>),
}

impl Sexp {
    /// Parses one s-expression as the IR prints it (atoms separated by spaces, no strings).
    pub fn parse(text: &str) -> Result<Sexp, String> {
        let tokens: Vec<String> = text
            .replace('(', " ( ")
            .replace(')', " ) ")
            .split_whitespace()
            .map(str::to_string)
            .collect();
        let mut pos = 0;
        let e = read(&tokens, &mut pos)?;
        if pos != tokens.len() {
            return Err(format!("trailing tokens after {e} in {text:?}"));
        }
        Ok(e)
    }

    pub fn atom(&self) -> Option<&str> {
        match self {
            Sexp::Atom(a) => Some(a),
            Sexp::List(_) => None,
        }
    }

    /// `(op args..)`: the operator and its arguments.
    pub fn call(&self) -> Option<(&str, &[Sexp])> {
        match self {
            Sexp::List(items) => match items.split_first() {
                Some((Sexp::Atom(op), args)) => Some((op, args)),
                _ => None,
            },
            Sexp::Atom(_) => None,
        }
    }

    /// The arguments when this is `(op ..)` with exactly `n` arguments.
    pub fn args(&self, op: &str, n: usize) -> Option<&[Sexp]> {
        self.call()
            .filter(|(o, a)| *o == op && a.len() == n)
            .map(|(_, a)| a)
    }

    /// The layer of `(name layer ..)`, e.g. 2 for `(Phi 2 : :)`.
    pub fn layer_of(&self, name: &str) -> Option<usize> {
        let (op, args) = self.call()?;
        if op != name {
            return None;
        }
        args.first()?.atom()?.parse().ok()
    }

    /// Factors of a product tree `(* a (* b c))`, flattened.
    pub fn factors(&self) -> Vec<&Sexp> {
        match self.args("*", 2) {
            Some([a, b]) => {
                let mut out = a.factors();
                out.extend(b.factors());
                out
            }
            _ => vec![self],
        }
    }

    /// Terms of a sum tree `(+ a (+ b c))`, flattened.
    pub fn terms(&self) -> Vec<&Sexp> {
        match self.args("+", 2) {
            Some([a, b]) => {
                let mut out = a.terms();
                out.extend(b.terms());
                out
            }
            _ => vec![self],
        }
    }
}

fn read(tokens: &[String], pos: &mut usize) -> Result<Sexp, String> {
    let tok = tokens
        .get(*pos)
        .ok_or_else(|| "unexpected end of s-expression".to_string())?;
    *pos += 1;
    match tok.as_str() {
        "(" => {
            let mut items = Vec::new();
            loop {
                match tokens.get(*pos).map(String::as_str) {
                    Some(")") => {
                        *pos += 1;
                        return Ok(Sexp::List(items));
                    }
                    Some(_) => items.push(read(tokens, pos)?),
                    None => return Err("unclosed parenthesis".into()),
                }
            }
        }
        ")" => Err("unexpected `)`".into()),
        atom => Ok(Sexp::Atom(atom.to_string())),
    }
}

impl fmt::Display for Sexp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sexp::Atom(a) => f.write_str(a),
            Sexp::List(items) => {
                f.write_str("(")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" ")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str(")")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_back() {
        let text = "(+ (u 1 _) (* c (sum< j k (dot Kx (* (delta j) (g 1 j))))))";
        let e = Sexp::parse(text).unwrap();
        assert_eq!(e.to_string(), text);
        let (op, args) = e.call().unwrap();
        assert_eq!((op, args.len()), ("+", 2));
        assert_eq!(args[0].layer_of("u"), Some(1));
    }

    #[test]
    fn flattens_products_and_sums() {
        let e = Sexp::parse("(* a (* (b 1) c))").unwrap();
        assert_eq!(e.factors().len(), 3);
        let s = Sexp::parse("(+ (+ a b) c)").unwrap();
        assert_eq!(s.terms().len(), 3);
    }

    #[test]
    fn rejects_malformed_input() {
        assert!(Sexp::parse("(a (b)").is_err());
        assert!(Sexp::parse("a)").is_err());
    }
}
