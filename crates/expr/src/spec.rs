//! Architecture descriptions: a Rust builder of composable layers and a strict TOML form.
//!
//! A spec is the network of theory.md section 1 written as a stack, in the spirit of
//! neural-tangents' stax: `Spec::input().dense(Activation::Relu).dense(..).readout()`.
//! Each hidden layer carries its activation and whether it is a residual branch
//! h^{ℓ+1} = h^ℓ + (β/√L) W^ℓ φ(h^ℓ)/√N. The same description drives the derivation.

use serde::Deserialize;
use std::fmt;
use std::str::FromStr;

/// Pointwise activations the derivation knows identities and Gaussian closed forms for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Activation {
    Linear,
    Relu,
    Tanh,
    Erf,
    Gelu,
    Softplus,
}

impl Activation {
    pub const ALL: [Activation; 6] = [
        Activation::Linear,
        Activation::Relu,
        Activation::Tanh,
        Activation::Erf,
        Activation::Gelu,
        Activation::Softplus,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Activation::Linear => "linear",
            Activation::Relu => "relu",
            Activation::Tanh => "tanh",
            Activation::Erf => "erf",
            Activation::Gelu => "gelu",
            Activation::Softplus => "softplus",
        }
    }
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Activation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Activation::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown activation `{s}` (expected linear, relu, tanh, erf, gelu or softplus)"
                )
            })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Parameterization {
    /// Mean-field / μP: f = w·φ(h)/(γ₀N), steps scaled by ηγ₀²N.
    Mup,
    /// Neural tangent: f = w·φ(h)/√N; its infinite-width limit is the lazy one.
    Ntk,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Training {
    /// Full-batch gradient descent on the P training points, reused every step.
    Gd,
    /// Online SGD: a fresh batch each step, so no Δ(j) of a past batch is seen again.
    OnlineSgd,
}

/// One hidden layer: h^{ℓ+1} = W^ℓ φ(h^ℓ)/√N, or with `residual` the branch form.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Layer {
    pub activation: Activation,
    pub residual: bool,
}

/// A network: input projection, hidden layers, readout, parameterization and training rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    pub name: String,
    pub layers: Vec<Layer>,
    pub parameterization: Parameterization,
    pub training: Training,
    pub readout_trainable: bool,
    /// Residual branch multiplier β (branches are scaled by β/√L).
    pub beta: f64,
    /// Derive the γ₀ → 0 limit instead of the rich equations.
    pub lazy: bool,
}

impl Spec {
    /// An input layer with no hidden layers yet: add them with [`Spec::dense`].
    pub fn input(name: &str) -> Self {
        Spec {
            name: name.to_string(),
            layers: Vec::new(),
            parameterization: Parameterization::Mup,
            training: Training::Gd,
            readout_trainable: true,
            beta: 1.0,
            lazy: false,
        }
    }

    /// Appends a hidden layer h^{ℓ} with activation φ.
    pub fn dense(mut self, activation: Activation) -> Self {
        self.layers.push(Layer {
            activation,
            residual: false,
        });
        self
    }

    /// Appends a residual hidden layer h^{ℓ+1} = h^ℓ + (β/√L) W^ℓ φ(h^ℓ)/√N.
    pub fn residual(mut self, activation: Activation) -> Self {
        self.layers.push(Layer {
            activation,
            residual: true,
        });
        self
    }

    pub fn frozen_readout(mut self) -> Self {
        self.readout_trainable = false;
        self
    }

    pub fn ntk(mut self) -> Self {
        self.parameterization = Parameterization::Ntk;
        self
    }

    pub fn online_sgd(mut self) -> Self {
        self.training = Training::OnlineSgd;
        self
    }

    pub fn beta(mut self, beta: f64) -> Self {
        self.beta = beta;
        self
    }

    /// The γ₀ → 0 limit of this network.
    pub fn lazy(mut self) -> Self {
        self.lazy = true;
        self.name.push_str("-lazy");
        self
    }

    /// `L` uniform layers of one activation (theory.md's deep networks).
    pub fn mlp(name: &str, depth: usize, activation: Activation) -> Self {
        (0..depth).fold(Spec::input(name), |s, _| s.dense(activation))
    }

    pub fn depth(&self) -> usize {
        self.layers.len()
    }

    /// Activation of hidden layer ℓ (1-based, as in theory.md).
    pub fn activation(&self, layer: usize) -> Activation {
        self.layers[layer - 1].activation
    }

    /// True when every layer is linear: the Gaussian closed form of theory.md 2b applies.
    pub fn is_linear(&self) -> bool {
        self.layers
            .iter()
            .all(|l| l.activation == Activation::Linear)
    }

    /// Checks the structural rules; errors name the offending key.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.layers.is_empty() {
            return Err(SpecError::key("depth", "must be ≥ 1"));
        }
        if self.layers[0].residual {
            return Err(SpecError::key(
                "layers[0].residual",
                "the first hidden layer has no previous layer of the same width to add to",
            ));
        }
        if !(self.beta.is_finite() && self.beta > 0.0) {
            return Err(SpecError::key("beta", "must be a positive number"));
        }
        Ok(())
    }

    /// Parses and validates the TOML form (see [`SpecFile`]).
    pub fn from_toml(text: &str) -> Result<Self, SpecError> {
        let file: SpecFile = toml::from_str(text).map_err(|e| {
            let msg = one_line(e.message());
            match e.span().and_then(|span| key_at(text, span.start)) {
                Some(key) => SpecError(format!("`{key}`: {msg}")),
                None => SpecError(msg),
            }
        })?;
        file.into_spec()
    }
}

/// The TOML form. Unknown keys are errors that name the key.
///
/// ```toml
/// name = "deep-relu"
/// depth = 2
/// activation = "relu"          # all layers, unless [[layers]] is given
/// parameterization = "mup"     # or "ntk"
/// training = "gd"              # or "online-sgd"
/// readout = "trainable"        # or "frozen"
/// beta = 1.0                   # residual branch multiplier (β/√L)
/// lazy = false                 # derive the γ₀ → 0 limit
/// [[layers]]                   # optional, one table per hidden layer
/// activation = "tanh"
/// residual = false
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecFile {
    name: String,
    depth: Option<usize>,
    activation: Option<Activation>,
    #[serde(default = "mup")]
    parameterization: Parameterization,
    #[serde(default = "gd")]
    training: Training,
    #[serde(default = "trainable")]
    readout: Readout,
    #[serde(default = "one")]
    beta: f64,
    #[serde(default)]
    lazy: bool,
    layers: Option<Vec<LayerFile>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LayerFile {
    activation: Activation,
    #[serde(default)]
    residual: bool,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
enum Readout {
    Trainable,
    Frozen,
}

fn mup() -> Parameterization {
    Parameterization::Mup
}
fn gd() -> Training {
    Training::Gd
}
fn trainable() -> Readout {
    Readout::Trainable
}
fn one() -> f64 {
    1.0
}

impl SpecFile {
    fn into_spec(self) -> Result<Spec, SpecError> {
        let layers: Vec<Layer> = match (self.layers, self.depth, self.activation) {
            (Some(_), _, Some(_)) => {
                return Err(SpecError::key(
                    "activation",
                    "give either a global activation or [[layers]], not both",
                ));
            }
            (Some(ls), depth, None) => {
                if let Some(d) = depth
                    && d != ls.len()
                {
                    return Err(SpecError::key(
                        "depth",
                        &format!("is {d} but {} [[layers]] tables are given", ls.len()),
                    ));
                }
                ls.into_iter()
                    .map(|l| Layer {
                        activation: l.activation,
                        residual: l.residual,
                    })
                    .collect()
            }
            (None, Some(d), Some(a)) => vec![
                Layer {
                    activation: a,
                    residual: false
                };
                d
            ],
            (None, None, _) => return Err(SpecError::key("depth", "is missing")),
            (None, Some(_), None) => return Err(SpecError::key("activation", "is missing")),
        };
        let spec = Spec {
            name: self.name,
            layers,
            parameterization: self.parameterization,
            training: self.training,
            readout_trainable: self.readout == Readout::Trainable,
            beta: self.beta,
            lazy: self.lazy,
        };
        spec.validate()?;
        Ok(spec)
    }
}

/// A one-line error that names the offending key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(pub String);

impl SpecError {
    fn key(key: &str, msg: &str) -> Self {
        SpecError(format!("`{key}` {msg}"))
    }
}

/// The key whose line holds byte `pos` of a TOML text (`layers.activation` inside a
/// `[[layers]]` table), so that a bad value's error names it.
fn key_at(text: &str, pos: usize) -> Option<String> {
    let before = text.get(..pos)?;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next()?;
    let key = line.split_once('=')?.0.trim();
    if key.is_empty() || key.starts_with('[') || key.starts_with('#') {
        return None;
    }
    let table = before[..start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    Some(match table {
        Some(t) => format!("{t}.{key}"),
        None => key.to_string(),
    })
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The catalogue of issue 5 (two-layer linear/relu/tanh, deep linear L = 2, 3, deep relu
/// L = 2, residual linear L = 3 with β/√L branches), each followed by its lazy limit: what
/// the snapshots, the rule soundness enumeration and the derivation benchmark run.
pub fn catalogue() -> Vec<Spec> {
    let rich = vec![
        Spec::mlp("two-layer-linear", 1, Activation::Linear),
        Spec::mlp("two-layer-relu", 1, Activation::Relu),
        Spec::mlp("two-layer-tanh", 1, Activation::Tanh),
        Spec::mlp("deep-linear-2", 2, Activation::Linear),
        Spec::mlp("deep-linear-3", 3, Activation::Linear),
        Spec::mlp("deep-relu-2", 2, Activation::Relu),
        Spec::input("residual-linear-3")
            .dense(Activation::Linear)
            .residual(Activation::Linear)
            .residual(Activation::Linear),
    ];
    let lazy: Vec<Spec> = rich.iter().map(|s| s.clone().lazy()).collect();
    rich.into_iter().chain(lazy).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RELU: &str = "name = \"n\"\ndepth = 1\nactivation = \"relu\"\n";

    #[test]
    fn readout_key_selects_a_frozen_readout() {
        let trained = Spec::from_toml(RELU).unwrap();
        assert!(trained.readout_trainable);
        let frozen = Spec::from_toml(&format!("{RELU}readout = \"frozen\"\n")).unwrap();
        assert_eq!(frozen, Spec::mlp("n", 1, Activation::Relu).frozen_readout());
    }

    #[test]
    fn bad_values_name_their_key() {
        for (extra, key, what) in [
            (
                "readout = \"froze\"\n",
                "`readout`:",
                "`trainable` or `frozen`",
            ),
            ("readout = 1\n", "`readout`:", "string"),
            ("lazy = \"yes\"\n", "`lazy`:", "bool"),
        ] {
            let err = Spec::from_toml(&format!("{RELU}{extra}")).unwrap_err().0;
            assert!(err.starts_with(key) && err.contains(what), "{extra}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
        let text = "name = \"n\"\n[[layers]]\nactivation = \"sigmoid\"\n";
        let err = Spec::from_toml(text).unwrap_err().0;
        assert!(err.starts_with("`layers.activation`:"), "{err}");
    }
}
