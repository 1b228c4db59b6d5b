//! A slow, simple reference interpreter for derived equations, so that they are checked
//! numerically before any code is generated from them.
//!
//! Values are scalars, sample vectors or dense matrices. Conventions the IR leaves
//! implicit: points are ordered train first, so a matrix applied to a shorter vector uses
//! its first columns and an elementwise product of vectors of different lengths keeps the
//! common (training) prefix; a vector in a matrix slot is a diagonal matrix; `dot` of a
//! scalar scales. Three ways to run a derivation:
//! - [`march_sites`]: the single-site field equations marched in time over weighted sites
//!   (u¹, r^L) — the two-layer process of theory.md 2a;
//! - [`solve_operators`]: the (time, sample) closed forms of linear networks, iterated over
//!   whole trajectories until nothing changes (causality makes that finite);
//! - [`solve_lazy`]: frozen kernels (closed forms or 2-D Gauss–Hermite averages over the
//!   source's covariance) and the NTK output dynamics.

use crate::derive::{Derivation, Equation};
use crate::lang::{Dmft, Expr};
use egg::Id;
use std::collections::HashMap;

/// Dense row-major matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct Mat {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

impl Mat {
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Mat {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    pub fn identity(n: usize) -> Self {
        let mut m = Mat::zeros(n, n);
        for i in 0..n {
            m[(i, i)] = 1.0;
        }
        m
    }

    pub fn from_fn(rows: usize, cols: usize, f: impl Fn(usize, usize) -> f64) -> Self {
        let mut m = Mat::zeros(rows, cols);
        for i in 0..rows {
            for j in 0..cols {
                m[(i, j)] = f(i, j);
            }
        }
        m
    }

    fn transpose(&self) -> Mat {
        Mat::from_fn(self.cols, self.rows, |i, j| self[(j, i)])
    }

    fn matmul(&self, b: &Mat) -> Mat {
        let inner = self.cols.min(b.rows);
        Mat::from_fn(self.rows, b.cols, |i, j| {
            (0..inner).map(|t| self[(i, t)] * b[(t, j)]).sum()
        })
    }

    /// Gauss–Jordan inverse with partial pivoting.
    fn inverse(&self) -> Mat {
        let n = self.rows;
        let mut a = self.clone();
        let mut inv = Mat::identity(n);
        for col in 0..n {
            let pivot = (col..n)
                .max_by(|&i, &j| a[(i, col)].abs().total_cmp(&a[(j, col)].abs()))
                .expect("square");
            for t in 0..n {
                a.data.swap(col * n + t, pivot * n + t);
                inv.data.swap(col * n + t, pivot * n + t);
            }
            let d = a[(col, col)];
            assert!(d != 0.0, "singular operator in opinv");
            for t in 0..n {
                a[(col, t)] /= d;
                inv[(col, t)] /= d;
            }
            for i in (0..n).filter(|&i| i != col) {
                let f = a[(i, col)];
                if f != 0.0 {
                    for t in 0..n {
                        a[(i, t)] -= f * a[(col, t)];
                        inv[(i, t)] -= f * inv[(col, t)];
                    }
                }
            }
        }
        inv
    }
}

impl std::ops::Index<(usize, usize)> for Mat {
    type Output = f64;
    fn index(&self, (i, j): (usize, usize)) -> &f64 {
        &self.data[i * self.cols + j]
    }
}

impl std::ops::IndexMut<(usize, usize)> for Mat {
    fn index_mut(&mut self, (i, j): (usize, usize)) -> &mut f64 {
        &mut self.data[i * self.cols + j]
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    S(f64),
    V(Vec<f64>),
    M(Mat),
}

impl Value {
    fn zip(self, other: Value, f: impl Fn(f64, f64) -> f64) -> Value {
        use Value::*;
        match (self, other) {
            (S(a), S(b)) => S(f(a, b)),
            (S(a), V(v)) => V(v.into_iter().map(|b| f(a, b)).collect()),
            (V(v), S(b)) => V(v.into_iter().map(|a| f(a, b)).collect()),
            (V(a), V(b)) => V(a.iter().zip(&b).map(|(x, y)| f(*x, *y)).collect()),
            (S(a), M(mut m)) => {
                m.data.iter_mut().for_each(|x| *x = f(a, *x));
                M(m)
            }
            (M(mut m), S(b)) => {
                m.data.iter_mut().for_each(|x| *x = f(*x, b));
                M(m)
            }
            (M(a), M(b)) => {
                assert_eq!((a.rows, a.cols), (b.rows, b.cols), "shape mismatch");
                let data = a.data.iter().zip(&b.data).map(|(x, y)| f(*x, *y)).collect();
                M(Mat { data, ..a })
            }
            (V(v), M(m)) | (M(m), V(v)) => {
                // A vector beside a matrix is its diagonal.
                let d = Mat::from_fn(m.rows, m.cols, |i, j| if i == j { v[i] } else { 0.0 });
                M(d).zip(M(m), f)
            }
        }
    }

    fn map(self, f: impl Fn(f64) -> f64) -> Value {
        self.zip(Value::S(0.0), |a, _| f(a))
    }

    pub fn scalar(&self) -> f64 {
        match self {
            Value::S(x) => *x,
            other => panic!("expected a scalar, got {other:?}"),
        }
    }

    pub fn vector(&self) -> &[f64] {
        match self {
            Value::V(v) => v,
            other => panic!("expected a vector, got {other:?}"),
        }
    }

    pub fn matrix(&self) -> &Mat {
        match self {
            Value::M(m) => m,
            other => panic!("expected a matrix, got {other:?}"),
        }
    }
}

fn dot(a: Value, b: Value) -> Value {
    use Value::*;
    match (a, b) {
        (S(s), x) | (x, S(s)) => x.map(|v| s * v),
        (M(m), V(v)) => V((0..m.rows)
            .map(|i| (0..v.len().min(m.cols)).map(|t| m[(i, t)] * v[t]).sum())
            .collect()),
        (V(d), V(v)) => V(d.iter().zip(&v).map(|(a, b)| a * b).collect()),
        (M(a), M(b)) => M(a.matmul(&b)),
        (V(d), M(m)) => M(Mat::from_fn(m.rows, m.cols, |i, j| d[i] * m[(i, j)])),
    }
}

/// Pointwise activations and derivatives, written here independently of the runtime's.
pub fn activation(name: &str, order: usize, x: f64) -> f64 {
    use std::f64::consts::PI;
    let pdf = (-0.5 * x * x).exp() / (2.0 * PI).sqrt();
    let cdf = 0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2));
    match (name, order) {
        ("linear", 0) => x,
        ("linear", 1) => 1.0,
        ("linear", _) => 0.0,
        ("relu", 0) => x.max(0.0),
        ("relu", 1) => f64::from(u8::from(x > 0.0)),
        ("relu", _) => 0.0,
        ("tanh", 0) => x.tanh(),
        ("tanh", 1) => 1.0 - x.tanh().powi(2),
        ("tanh", _) => -2.0 * x.tanh() * (1.0 - x.tanh().powi(2)),
        ("erf", 0) => libm::erf(x),
        ("erf", 1) => 2.0 / PI.sqrt() * (-x * x).exp(),
        ("erf", _) => -4.0 * x / PI.sqrt() * (-x * x).exp(),
        ("gelu", 0) => x * cdf,
        ("gelu", 1) => cdf + x * pdf,
        ("gelu", _) => 2.0 * pdf - x * x * pdf,
        ("softplus", 0) => x.max(0.0) + (-x.abs()).exp().ln_1p(),
        ("softplus", 1) => 1.0 / (1.0 + (-x).exp()),
        ("softplus", _) => {
            let s = 1.0 / (1.0 + (-x).exp());
            s * (1.0 - s)
        }
        (other, _) => panic!("unknown activation {other}"),
    }
}

/// Closed-form Gaussian kernel maps of theory.md 2c, entrywise on a covariance.
pub fn kernel_map(name: &str, cov: &Mat) -> Mat {
    use std::f64::consts::PI;
    Mat::from_fn(cov.rows, cov.cols, |a, b| {
        let (qa, qb, c) = (cov[(a, a)], cov[(b, b)], cov[(a, b)]);
        let rho = (c / (qa * qb).sqrt()).clamp(-1.0, 1.0);
        let theta = rho.acos();
        match name {
            "arccos1" => (qa * qb).sqrt() * (theta.sin() + (PI - theta) * rho) / (2.0 * PI),
            "arccos0" => (PI - theta) / (2.0 * PI),
            "erfk" => 2.0 / PI * (2.0 * c / ((1.0 + 2.0 * qa) * (1.0 + 2.0 * qb)).sqrt()).asin(),
            "derfk" => 4.0 / PI / ((1.0 + 2.0 * qa) * (1.0 + 2.0 * qb) - 4.0 * c * c).sqrt(),
            other => panic!("unknown kernel map {other}"),
        }
    })
}

/// Probabilists' Gauss–Hermite nodes and weights (weights sum to 1), by Newton on the
/// Hermite recurrence.
pub fn gauss_hermite(n: usize) -> (Vec<f64>, Vec<f64>) {
    use std::f64::consts::PI;
    let mut x = vec![0.0; n];
    let mut w = vec![0.0; n];
    for i in 0..n.div_ceil(2) {
        // Physicists' roots, initial guesses from Numerical Recipes' gauher.
        let mut z: f64 = match i {
            0 => (2.0 * n as f64 + 1.0).sqrt() - 1.85575 * (2.0 * n as f64 + 1.0).powf(-1.0 / 6.0),
            1 => x[0] - 1.14 * (n as f64).powf(0.426) / x[0],
            2 => 1.86 * x[1] - 0.86 * x[0],
            3 => 1.91 * x[2] - 0.91 * x[1],
            _ => 2.0 * x[i - 1] - x[i - 2],
        };
        let mut dp = 0.0;
        for _ in 0..100 {
            let (mut p1, mut p2) = (PI.powf(-0.25), 0.0);
            for j in 0..n {
                let p3 = p2;
                p2 = p1;
                p1 = z * (2.0 / (j as f64 + 1.0)).sqrt() * p2
                    - (j as f64 / (j as f64 + 1.0)).sqrt() * p3;
            }
            dp = (2.0 * n as f64).sqrt() * p2;
            let dz = p1 / dp;
            z -= dz;
            if dz.abs() < 1e-15 {
                break;
            }
        }
        x[i] = z;
        x[n - 1 - i] = -z;
        w[i] = 2.0 / (dp * dp);
        w[n - 1 - i] = w[i];
    }
    // Physicists' (weight e^{-z²}) → probabilists' (N(0,1)): x√2, w/√π.
    let xs = x.iter().map(|z| z * std::f64::consts::SQRT_2).collect();
    let ws = w.iter().map(|w| w / PI.sqrt()).collect();
    (xs, ws)
}

/// The numbers a derivation is evaluated with.
#[derive(Clone, Debug)]
pub struct Setting {
    /// (P+Q)×(P+Q) input Gram matrix, train points first.
    pub kx: Mat,
    pub y: Vec<f64>,
    pub gamma0: f64,
    pub eta: f64,
    pub steps: usize,
    /// Residual branch multiplier β.
    pub beta: f64,
}

impl Setting {
    fn p(&self) -> usize {
        self.y.len()
    }

    fn constant(&self, name: &str, depth: usize) -> Option<f64> {
        Some(match name {
            "c" => self.eta * self.gamma0 / self.p() as f64,
            "gamma0" => self.gamma0,
            "eta" => self.eta,
            "P" => self.p() as f64,
            "beta" => self.beta,
            "L" => depth as f64,
            _ => return None,
        })
    }
}

/// Weighted single-site samples of the two-layer sources: u¹ (P+Q) and r^L (scalar).
pub struct Sites {
    pub u: Vec<Vec<f64>>,
    pub r: Vec<f64>,
    pub weight: Vec<f64>,
}

/// Evaluation context: time bindings, the site, and the stores it reads.
struct Ctx<'a> {
    setting: &'a Setting,
    depth: usize,
    times: HashMap<String, usize>,
    site: Option<usize>,
    sites: Option<&'a Sites>,
    /// Per site: (field letter, layer, time) → value.
    fields: &'a [HashMap<(char, i64, usize), Value>],
    /// Order parameters and globals by printed left side, e.g. "(Phi 1 : :)", "(delta 3)".
    globals: &'a HashMap<String, Value>,
    delta: &'a [Vec<f64>],
    /// Steps in a trajectory (operator mode).
    trajectory: usize,
}

impl Ctx<'_> {
    fn time(&self, e: &Expr, id: Id) -> usize {
        match &e[id] {
            Dmft::Num(n) => *n as usize,
            Dmft::Symbol(s) => *self
                .times
                .get(s.as_str())
                .unwrap_or_else(|| panic!("unbound time {s}")),
            other => panic!("not a time: {other}"),
        }
    }

    fn is_symbol(e: &Expr, id: Id, name: &str) -> bool {
        matches!(&e[id], Dmft::Symbol(s) if s.as_str() == name)
    }

    fn layer(e: &Expr, id: Id) -> i64 {
        match &e[id] {
            Dmft::Num(n) => *n,
            other => panic!("not a layer: {other}"),
        }
    }

    fn eval(&self, e: &Expr, id: Id) -> Value {
        use Value::*;
        let ev = |c: Id| self.eval(e, c);
        match &e[id] {
            Dmft::Num(n) => S(*n as f64),
            Dmft::Symbol(s) => {
                let s = s.as_str();
                if let Some(x) = self.setting.constant(s, self.depth) {
                    return S(x);
                }
                match s {
                    "Kx" => M(self.setting.kx.clone()),
                    "y" => V(self.setting.y.clone()),
                    "I" => M(Mat::identity(self.trajectory * self.setting.p())),
                    other => self.global(other),
                }
            }
            Dmft::Add([a, b]) => ev(*a).zip(ev(*b), |x, y| x + y),
            Dmft::Mul([a, b]) => ev(*a).zip(ev(*b), |x, y| x * y),
            Dmft::Neg(a) => ev(*a).map(|x| -x),
            Dmft::Recip(a) => ev(*a).map(|x| 1.0 / x),
            Dmft::Sqrt(a) => ev(*a).map(f64::sqrt),
            Dmft::Act([a, x]) | Dmft::Act1([a, x]) | Dmft::Act2([a, x]) => {
                let order = match &e[id] {
                    Dmft::Act(_) => 0,
                    Dmft::Act1(_) => 1,
                    _ => 2,
                };
                let name = e[*a].to_string();
                ev(*x).map(|v| activation(&name, order, v))
            }
            // Outside a marched site, a field or time-dependent source at a bound time is
            // a value of its own, read by its grounded key, e.g. "(h 1 2)".
            Dmft::Pre(_) | Dmft::Back(_) | Dmft::Grad(_) if self.site.is_none() => {
                self.global(&self.grounded(e, id))
            }
            Dmft::SourceU([_, t]) | Dmft::SourceR([_, t])
                if self.site.is_none() || !Self::is_symbol(e, *t, "_") =>
            {
                self.global(&self.grounded(e, id))
            }
            Dmft::Residual(_) if self.globals.contains_key(&self.grounded(e, id)) => {
                self.global(&self.grounded(e, id))
            }
            Dmft::Pre([l, t]) | Dmft::Back([l, t]) | Dmft::Grad([l, t]) => {
                let letter = e[id].to_string().chars().next().expect("name");
                let site = self.site.expect("a field outside a site average");
                let key = (letter, Self::layer(e, *l), self.time(e, *t));
                self.fields[site]
                    .get(&key)
                    .unwrap_or_else(|| panic!("field {key:?} not yet computed"))
                    .clone()
            }
            Dmft::SourceU([_, t]) | Dmft::SourceR([_, t]) => {
                debug_assert!(Self::is_symbol(e, *t, "_"));
                let site = self.site.expect("a source outside a site average");
                let sites = self.sites.expect("sites");
                match &e[id] {
                    Dmft::SourceU(_) => V(sites.u[site].clone()),
                    _ => S(sites.r[site]),
                }
            }
            Dmft::Residual(t) => V(self.delta[self.time(e, *t)].clone()),
            Dmft::SumBefore([i, k, body]) | Dmft::SumUpTo([i, k, body]) => {
                let end = self.time(e, *k) + usize::from(matches!(e[id], Dmft::SumUpTo(_)));
                let var = e[*i].to_string();
                let mut acc: Option<Value> = None;
                for step in 0..end {
                    let mut inner = self.rebind(&var, step);
                    inner.site = self.site;
                    let v = inner.eval(e, *body);
                    acc = Some(match acc {
                        None => v,
                        Some(a) => a.zip(v, |x, y| x + y),
                    });
                }
                acc.unwrap_or(S(0.0))
            }
            Dmft::SampleSum(a) => match ev(*a) {
                V(v) => S(v[..self.setting.p().min(v.len())].iter().sum()),
                other => panic!("Σ_α of {other:?}"),
            },
            Dmft::SiteAvg(a) => {
                let sites = self.sites.expect("site average needs sites");
                let mut acc: Option<Value> = None;
                for (s, w) in sites.weight.iter().enumerate() {
                    let ctx = Ctx {
                        site: Some(s),
                        times: self.times.clone(),
                        ..*self
                    };
                    let v = ctx.eval(e, *a).map(|x| w * x);
                    acc = Some(match acc {
                        None => v,
                        Some(t) => t.zip(v, |x, y| x + y),
                    });
                }
                acc.expect("at least one site")
            }
            Dmft::SiteCov([a, b]) => {
                // Cov_site(a, b) = ⟨a bᵀ⟩ − ⟨a⟩⟨b⟩ᵀ over the weighted sites.
                let sites = self.sites.expect("site covariance needs sites");
                let per_site: Vec<(Vec<f64>, Vec<f64>)> = (0..sites.weight.len())
                    .map(|s| {
                        let ctx = Ctx {
                            site: Some(s),
                            times: self.times.clone(),
                            ..*self
                        };
                        let flat = |v: Value| match v {
                            S(x) => vec![x],
                            V(v) => v,
                            M(_) => panic!("covariance of a matrix"),
                        };
                        (flat(ctx.eval(e, *a)), flat(ctx.eval(e, *b)))
                    })
                    .collect();
                let (na, nb) = (per_site[0].0.len(), per_site[0].1.len());
                let mut mean_a = vec![0.0; na];
                let mut mean_b = vec![0.0; nb];
                let mut second = Mat::zeros(na, nb);
                for ((x, y), w) in per_site.iter().zip(&sites.weight) {
                    for i in 0..na {
                        mean_a[i] += w * x[i];
                        for j in 0..nb {
                            second[(i, j)] += w * x[i] * y[j];
                        }
                    }
                    for j in 0..nb {
                        mean_b[j] += w * y[j];
                    }
                }
                M(Mat::from_fn(na, nb, |i, j| {
                    second[(i, j)] - mean_a[i] * mean_b[j]
                }))
            }
            Dmft::Dot([a, b]) => dot(ev(*a), ev(*b)),
            // At a site, the outer product over samples a bᵀ.
            Dmft::SampleOuter([a, b]) => match (ev(*a), ev(*b)) {
                (V(x), V(y)) => M(Mat::from_fn(x.len(), y.len(), |i, j| x[i] * y[j])),
                (x, y) => x.zip(y, |p, q| p * q),
            },
            Dmft::TimeDelta([a, b]) => S(f64::from(u8::from(self.time(e, *a) == self.time(e, *b)))),
            Dmft::Transpose(a) => M(ev(*a).matrix().transpose()),
            Dmft::OpInverse(a) => M(ev(*a).matrix().inverse()),
            // The diagonal of a matrix; a vector already stands for its diagonal matrix.
            Dmft::Diag(a) => match ev(*a) {
                M(m) => V((0..m.rows).map(|i| m[(i, i)]).collect()),
                V(v) => V(v),
                other => panic!("diag of {other:?}"),
            },
            // Block row t of a trajectory (time-major, P entries per step) or an operator.
            Dmft::Row([t, x]) => {
                let (t, p) = (self.time(e, *t), self.setting.p());
                match ev(*x) {
                    V(v) => V(v[t * p..(t + 1) * p].to_vec()),
                    M(m) => M(Mat::from_fn(p, m.cols, |i, j| m[(t * p + i, j)])),
                    S(s) => S(s),
                }
            }
            Dmft::CausalDelta(a) => M(self.causal(ev(*a).matrix())),
            // ∂e/∂s for a scalar symbol s: central finite difference (the soundness oracle).
            // The variable is a bound value (a scalar, or every entry of a vector at once:
            // a directional derivative, the partial one for a single sample) or Δ(t).
            Dmft::DSource([x, s]) | Dmft::DOrder([x, s]) => {
                let name = self.grounded(e, *s);
                let at = |shift: f64| {
                    let mut g = self.globals.clone();
                    let mut delta = self.delta.to_vec();
                    match (g.get(&name).cloned(), &e[*s]) {
                        (Some(base), _) => {
                            g.insert(name.clone(), base.map(|v| v + shift));
                        }
                        (None, Dmft::Residual(t)) => {
                            let t = self.time(e, *t);
                            delta[t].iter_mut().for_each(|v| *v += shift);
                        }
                        _ => panic!("∂ by an unbound variable {name}"),
                    }
                    Ctx {
                        globals: &g,
                        delta: &delta,
                        times: self.times.clone(),
                        ..*self
                    }
                    .eval(e, *x)
                };
                const H: f64 = 1e-5;
                at(H).zip(at(-H), |a, b| (a - b) / (2.0 * H))
            }
            Dmft::ArcCos0(a) | Dmft::ArcCos1(a) | Dmft::ErfKernel(a) | Dmft::ErfDerivKernel(a) => {
                let name = e[id].to_string();
                M(kernel_map(&name, ev(*a).matrix()))
            }
            // By grounded key ("(K 2 0)"), else as printed ("(f k)", "(Phi 1 : :)").
            _ => {
                let key = self.grounded(e, id);
                if self.globals.contains_key(&key) {
                    self.global(&key)
                } else {
                    self.global(&subtree(e, id).to_string())
                }
            }
        }
    }

    /// The printed sub-expression with bound time symbols replaced by their values.
    fn grounded(&self, e: &Expr, id: Id) -> String {
        use egg::Language;
        let node = &e[id];
        if let Dmft::Symbol(s) = node
            && let Some(t) = self.times.get(s.as_str())
        {
            return t.to_string();
        }
        if node.is_leaf() {
            return node.to_string();
        }
        let children: Vec<String> = node
            .children()
            .iter()
            .map(|c| self.grounded(e, *c))
            .collect();
        format!("({} {})", node, children.join(" "))
    }

    fn rebind(&self, var: &str, step: usize) -> Ctx<'_> {
        let mut times = self.times.clone();
        times.insert(var.to_string(), step);
        Ctx { times, ..*self }
    }

    fn global(&self, key: &str) -> Value {
        self.globals
            .get(key)
            .unwrap_or_else(|| panic!("no value for {key}"))
            .clone()
    }

    /// [X Δ]_<: block (k, j) of X times diag Δ(j), for j < k, over training columns.
    fn causal(&self, x: &Mat) -> Mat {
        let (nt, p) = (self.trajectory, self.setting.p());
        Mat::from_fn(nt * p, nt * p, |r, c| {
            let (k, j, a) = (r / p, c / p, c % p);
            if j < k {
                x[(r, c)] * self.delta[j][a]
            } else {
                0.0
            }
        })
    }
}

/// Evaluates an expression whose symbols are bound in `globals` (values) and whose time
/// symbols are bound in `times`: the oracle of the rules' soundness tests.
pub fn evaluate(
    e: &Expr,
    setting: &Setting,
    globals: &HashMap<String, Value>,
    times: &HashMap<String, usize>,
    delta: &[Vec<f64>],
) -> Value {
    // One time step: `I` is the identity over the training points.
    evaluate_over(e, setting, globals, times, delta, 1)
}

/// [`evaluate`] with operators over `trajectory` steps (`I`, `causal`).
pub fn evaluate_over(
    e: &Expr,
    setting: &Setting,
    globals: &HashMap<String, Value>,
    times: &HashMap<String, usize>,
    delta: &[Vec<f64>],
    trajectory: usize,
) -> Value {
    let ctx = Ctx {
        setting,
        depth: 1,
        times: times.clone(),
        site: None,
        sites: None,
        fields: &[],
        globals,
        delta,
        trajectory,
    };
    ctx.eval(e, root(e))
}

/// [`evaluate`] with site averages taken over the weighted `sites` (u¹ and r^L, constant
/// in time): on an empirical measure, the oracle of rules about averages.
pub fn evaluate_on_sites(
    e: &Expr,
    setting: &Setting,
    globals: &HashMap<String, Value>,
    times: &HashMap<String, usize>,
    delta: &[Vec<f64>],
    sites: &Sites,
) -> Value {
    let ctx = Ctx {
        setting,
        depth: 1,
        times: times.clone(),
        site: None,
        sites: Some(sites),
        fields: &vec![HashMap::new(); sites.weight.len()],
        globals,
        delta,
        trajectory: 1,
    };
    ctx.eval(e, root(e))
}

/// The sub-expression rooted at `id`.
fn subtree(e: &Expr, id: Id) -> Expr {
    use egg::Language;
    e[id].build_recexpr(|c| e[c].clone())
}

fn root(e: &Expr) -> Id {
    Id::from(e.as_ref().len() - 1)
}

fn equations<'a>(d: &'a Derivation, title: &str) -> Vec<&'a Equation> {
    d.sections
        .iter()
        .filter(|s| s.title.starts_with(title))
        .flat_map(|s| &s.equations)
        .collect()
}

/// Marches the single-site field equations (two-layer: constant sources u¹, r^L) over the
/// weighted sites; returns f(k) over all points for k = 0..=steps.
pub fn march_sites(d: &Derivation, setting: &Setting, sites: &Sites) -> Vec<Vec<f64>> {
    march(d, setting, sites, None).0
}

/// An intervention on the error path: march open loop along `path` (Δ(k) is read from it,
/// not from the error equation) with Δ_α(j) shifted by ε — the partial derivative
/// D_f = ∂f/∂Δ of theory.md §3.
pub struct OpenLoop<'a> {
    pub path: &'a [Vec<f64>],
    pub shift: (usize, usize, f64),
}

type FieldStore = Vec<HashMap<(char, i64, usize), Value>>;

fn march(
    d: &Derivation,
    setting: &Setting,
    sites: &Sites,
    open_loop: Option<&OpenLoop>,
) -> (Vec<Vec<f64>>, Vec<Vec<f64>>, FieldStore) {
    let fields = equations(d, "Single-site field equations");
    let output = d.equation("(f k)").expect("output equation");
    let error = d.equation("(delta k)").expect("error equation");
    let depth = d.spec.depth();
    let mut store: Vec<HashMap<(char, i64, usize), Value>> =
        vec![HashMap::new(); sites.weight.len()];
    let mut delta: Vec<Vec<f64>> = Vec::new();
    let mut f_hist = Vec::new();
    let globals = HashMap::new();
    for k in 0..=setting.steps {
        let times: HashMap<String, usize> = [("k".to_string(), k)].into();
        for s in 0..sites.weight.len() {
            for eq in &fields {
                let (letter, layer) = match eq.lhs.as_ref().last() {
                    Some(Dmft::Pre([l, _])) => ('h', Ctx::layer(&eq.lhs, *l)),
                    Some(Dmft::Back([l, _])) => ('z', Ctx::layer(&eq.lhs, *l)),
                    Some(Dmft::Grad([l, _])) => ('g', Ctx::layer(&eq.lhs, *l)),
                    _ => continue,
                };
                let ctx = Ctx {
                    setting,
                    depth,
                    times: times.clone(),
                    site: Some(s),
                    sites: Some(sites),
                    fields: &store,
                    globals: &globals,
                    delta: &delta,
                    trajectory: 0,
                };
                let v = ctx.eval(&eq.rhs, root(&eq.rhs));
                store[s].insert((letter, layer, k), v);
            }
        }
        let ctx = Ctx {
            setting,
            depth,
            times: times.clone(),
            site: None,
            sites: Some(sites),
            fields: &store,
            globals: &globals,
            delta: &delta,
            trajectory: 0,
        };
        let f = ctx.eval(&output.rhs, root(&output.rhs));
        let mut g = HashMap::new();
        g.insert("(f k)".to_string(), f.clone());
        let ctx = Ctx { globals: &g, ..ctx };
        let dk = match open_loop {
            None => error_value(&ctx, &error.rhs),
            Some(o) => {
                let mut dk = o.path[k].clone();
                if o.shift.0 == k {
                    dk[o.shift.1] += o.shift.2;
                }
                dk
            }
        };
        f_hist.push(f.vector().to_vec());
        delta.push(dk);
    }
    (f_hist, delta, store)
}

/// Σ_f of a two-layer derivation on the weighted sites, over (step, training point) with
/// no test points: κ_f from its derived site-cumulant form, D_f = ∂f/∂Δ by central
/// differences of the derived open-loop march (step `fd`), and Σ_f by the derived assembly.
pub fn prediction_propagator(d: &Derivation, setting: &Setting, sites: &Sites, fd: f64) -> Mat {
    let p = setting.p();
    assert_eq!(
        setting.kx.rows, p,
        "the propagator interpreter takes training points only"
    );
    let nt = setting.steps + 1;
    let (_, path, store) = march(d, setting, sites, None);
    let kappa_eq = d.equation("(cov (f k) (f s))").expect("κ_f equation");
    let mut kappa = Mat::zeros(nt * p, nt * p);
    let empty = HashMap::new();
    for k in 0..nt {
        for s in 0..nt {
            let ctx = Ctx {
                setting,
                depth: d.spec.depth(),
                times: [("k".to_string(), k), ("s".to_string(), s)].into(),
                site: None,
                sites: Some(sites),
                fields: &store,
                globals: &empty,
                delta: &path,
                trajectory: nt,
            };
            let block = ctx.eval(&kappa_eq.rhs, root(&kappa_eq.rhs));
            for a in 0..p {
                for b in 0..p {
                    kappa[(k * p + a, s * p + b)] = block.matrix()[(a, b)];
                }
            }
        }
    }
    let mut d_f = Mat::zeros(nt * p, nt * p);
    for j in 0..setting.steps {
        for alpha in 0..p {
            let shifted = |eps: f64| {
                let o = OpenLoop {
                    path: &path,
                    shift: (j, alpha, eps),
                };
                march(d, setting, sites, Some(&o)).0
            };
            let (plus, minus) = (shifted(fd), shifted(-fd));
            for k in j + 1..nt {
                for nu in 0..p {
                    d_f[(k * p + nu, j * p + alpha)] = (plus[k][nu] - minus[k][nu]) / (2.0 * fd);
                }
            }
        }
    }
    let assembly = d.equation("Sigma_f").expect("propagator assembly");
    let globals: HashMap<String, Value> = [
        ("kappa_f".to_string(), Value::M(kappa)),
        ("D_f".to_string(), Value::M(d_f)),
    ]
    .into();
    let ctx = Ctx {
        setting,
        depth: d.spec.depth(),
        times: HashMap::new(),
        site: None,
        sites: None,
        fields: &[],
        globals: &globals,
        delta: &path,
        trajectory: nt,
    };
    ctx.eval(&assembly.rhs, root(&assembly.rhs))
        .matrix()
        .clone()
}

/// Δ(k) = y − f(k) evaluated from its equation, on training points.
fn error_value(ctx: &Ctx, rhs: &Expr) -> Vec<f64> {
    let p = ctx.setting.p();
    let v = ctx.eval(rhs, root(rhs));
    v.vector()[..p].to_vec()
}

/// Frozen kernels, the NTK and the output dynamics of a lazy derivation; f(k) for
/// k = 0..=steps over all points. Gaussian averages without a closed form use a 2-D
/// Gauss–Hermite rule of `order` points per dimension over the source covariance.
pub fn solve_lazy(d: &Derivation, setting: &Setting, order: usize) -> Vec<Vec<f64>> {
    let depth = d.spec.depth();
    let n = setting.kx.rows;
    let mut globals: HashMap<String, Value> = HashMap::new();
    globals.insert("(Phi 0 _ _)".into(), Value::M(setting.kx.clone()));
    globals.insert(
        format!("(G {} _ _)", depth + 1),
        Value::M(Mat::from_fn(n, n, |_, _| 1.0)),
    );
    let closures = equations(d, "Closure");
    let ntk = d.equation("(K _ _)").expect("NTK equation");
    // G^ℓ needs G^{ℓ+1}: sweep until every kernel is known (depth + 1 sweeps suffice).
    for _ in 0..=depth {
        for eq in &closures {
            if let Some(v) = eval_gaussian(&eq.rhs, root(&eq.rhs), setting, depth, &globals, order)
            {
                globals.insert(eq.lhs.to_string(), v);
            }
        }
    }
    let k = eval_gaussian(&ntk.rhs, root(&ntk.rhs), setting, depth, &globals, order)
        .expect("NTK evaluates once the kernels do");
    globals.insert("(K _ _)".into(), k);
    let output = d.equation("(f k)").expect("output equation");
    let error = d.equation("(delta k)").expect("error equation");
    let mut delta: Vec<Vec<f64>> = Vec::new();
    let mut f_hist = Vec::new();
    for step in 0..=setting.steps {
        let ctx = Ctx {
            setting,
            depth,
            times: [("k".to_string(), step)].into(),
            site: None,
            sites: None,
            fields: &[],
            globals: &globals,
            delta: &delta,
            trajectory: 0,
        };
        let f = match ctx.eval(&output.rhs, root(&output.rhs)) {
            Value::S(x) => vec![x; n],
            Value::V(v) => v,
            other => panic!("f is {other:?}"),
        };
        let mut g = globals.clone();
        g.insert("(f k)".into(), Value::V(f.clone()));
        let ctx = Ctx { globals: &g, ..ctx };
        let dk = error_value(&ctx, &error.rhs);
        f_hist.push(f);
        delta.push(dk);
    }
    f_hist
}

/// Evaluates a frozen-kernel expression; site averages of functions of one Gaussian source
/// u^ℓ ~ N(0, Φ^{ℓ−1}) are computed pairwise by quadrature. None while an input is unknown.
fn eval_gaussian(
    e: &Expr,
    id: Id,
    setting: &Setting,
    depth: usize,
    globals: &HashMap<String, Value>,
    order: usize,
) -> Option<Value> {
    let rec = |c: Id| eval_gaussian(e, c, setting, depth, globals, order);
    Some(match &e[id] {
        Dmft::Add([a, b]) => rec(*a)?.zip(rec(*b)?, |x, y| x + y),
        Dmft::Mul([a, b]) => rec(*a)?.zip(rec(*b)?, |x, y| x * y),
        Dmft::ArcCos0(a) | Dmft::ArcCos1(a) | Dmft::ErfKernel(a) | Dmft::ErfDerivKernel(a) => {
            Value::M(kernel_map(&e[id].to_string(), rec(*a)?.matrix()))
        }
        Dmft::SiteAvg(a) => {
            let Dmft::SampleOuter([x, y]) = &e[*a] else {
                panic!("unsupported Gaussian average {}", subtree(e, id))
            };
            let (fx, lx) = single_source_function(e, *x);
            let (fy, ly) = single_source_function(e, *y);
            assert_eq!(lx, ly, "averages over two different sources");
            let cov = globals
                .get(&format!("(Phi {} _ _)", lx - 1))?
                .matrix()
                .clone();
            Value::M(pair_average(&cov, &fx, &fy, order))
        }
        Dmft::Num(n) => Value::S(*n as f64),
        Dmft::Symbol(s) if s.as_str() == "Kx" => Value::M(setting.kx.clone()),
        Dmft::Symbol(s) if setting.constant(s.as_str(), depth).is_some() => {
            Value::S(setting.constant(s.as_str(), depth)?)
        }
        _ => globals.get(&subtree(e, id).to_string())?.clone(),
    })
}

/// A pointwise function of one frozen source (u ℓ _): (activation, derivative order), layer.
fn single_source_function(e: &Expr, id: Id) -> ((String, usize), i64) {
    match &e[id] {
        Dmft::Act([a, x]) | Dmft::Act1([a, x]) | Dmft::Act2([a, x]) => {
            let order = match &e[id] {
                Dmft::Act(_) => 0,
                Dmft::Act1(_) => 1,
                _ => 2,
            };
            let Dmft::SourceU([l, _]) = &e[*x] else {
                panic!("activation of a non-source")
            };
            ((e[*a].to_string(), order), Ctx::layer(e, *l))
        }
        Dmft::SourceU([l, _]) => (("linear".into(), 0), Ctx::layer(e, *l)),
        other => panic!("not a function of one source: {other}"),
    }
}

/// ⟨F(u_a) H(u_b)⟩ for every pair (a, b) with (u_a, u_b) ~ N(0, cov restricted to a, b).
pub fn pair_average(cov: &Mat, f: &(String, usize), h: &(String, usize), order: usize) -> Mat {
    let (x, w) = gauss_hermite(order);
    Mat::from_fn(cov.rows, cov.cols, |a, b| {
        let (qa, qb, c) = (cov[(a, a)], cov[(b, b)], cov[(a, b)]);
        // u_a = √qa ξ₁, u_b = ρ√qb ξ₁ + √(1−ρ²)√qb ξ₂.
        let rho = if qa > 0.0 && qb > 0.0 {
            (c / (qa * qb).sqrt()).clamp(-1.0, 1.0)
        } else {
            0.0
        };
        let mut acc = 0.0;
        for (x1, w1) in x.iter().zip(&w) {
            let ua = qa.sqrt() * x1;
            let fa = activation(&f.0, f.1, ua);
            for (x2, w2) in x.iter().zip(&w) {
                let ub = qb.sqrt() * (rho * x1 + (1.0 - rho * rho).sqrt() * x2);
                acc += w1 * w2 * fa * activation(&h.0, h.1, ub);
            }
        }
        acc
    })
}

/// The closed forms of a linear network over whole trajectories (steps + 1 times, P
/// training points, no test points): all order parameters start at zero and Δ at y, and
/// every equation is re-evaluated until nothing changes. Each sweep fixes at least one
/// more (time, layer) block because every operator is causal, so this terminates.
/// Returns f(k) over the training points.
pub fn solve_operators(d: &Derivation, setting: &Setting) -> Vec<Vec<f64>> {
    let depth = d.spec.depth();
    let p = setting.p();
    assert_eq!(
        setting.kx.rows, p,
        "the operator interpreter takes training points only"
    );
    let nt = setting.steps + 1;
    let tiled = |m: &Mat| Mat::from_fn(nt * p, nt * p, |r, c| m[(r % p, c % p)]);
    let mut globals: HashMap<String, Value> = HashMap::new();
    globals.insert("(Phi 0 : :)".into(), Value::M(tiled(&setting.kx)));
    globals.insert(
        format!("(G {} : :)", depth + 1),
        Value::M(Mat::from_fn(nt * p, nt * p, |_, _| 1.0)),
    );
    globals.insert("(Rphi 0 : :)".into(), Value::M(Mat::zeros(nt * p, nt * p)));
    globals.insert(
        format!("(Rg {} : :)", depth + 1),
        Value::M(Mat::zeros(nt * p, nt * p)),
    );
    let ops: Vec<&Equation> = equations(d, "Causal operators")
        .into_iter()
        .filter(|e| matches!(e.lhs.as_ref().last(), Some(Dmft::OpC(_) | Dmft::OpE(_))))
        .collect();
    let closed: Vec<&Equation> = equations(d, "Closed forms")
        .into_iter()
        .filter(|e| e.lhs.to_string() != "(f :)")
        .collect();
    for eq in &closed {
        globals.insert(eq.lhs.to_string(), Value::M(Mat::zeros(nt * p, nt * p)));
    }
    let output = d.equation("(f :)").expect("output closed form");
    let mut delta = vec![setting.y.clone(); nt];
    let cap = 4 * nt * (depth + 1) + 8;
    for sweep in 0.. {
        assert!(sweep < cap, "closed forms did not settle in {cap} sweeps");
        let before = globals.clone();
        let old_delta = delta.clone();
        for eq in ops.iter().chain(&closed) {
            let ctx = Ctx {
                setting,
                depth,
                times: HashMap::new(),
                site: None,
                sites: None,
                fields: &[],
                globals: &globals,
                delta: &delta,
                trajectory: nt,
            };
            let v = ctx.eval(&eq.rhs, root(&eq.rhs));
            globals.insert(eq.lhs.to_string(), v);
        }
        let ctx = Ctx {
            setting,
            depth,
            times: HashMap::new(),
            site: None,
            sites: None,
            fields: &[],
            globals: &globals,
            delta: &delta,
            trajectory: nt,
        };
        let f = ctx.eval(&output.rhs, root(&output.rhs));
        let f = f.vector().to_vec();
        delta = (0..nt)
            .map(|k| (0..p).map(|a| setting.y[a] - f[k * p + a]).collect())
            .collect();
        if globals == before && delta == old_delta {
            return (0..nt).map(|k| f[k * p..(k + 1) * p].to_vec()).collect();
        }
    }
    unreachable!()
}
