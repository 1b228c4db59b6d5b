//! The TOML experiment config: its schema, defaults and validation.
//!
//! Key names are a contract with users' config files and with tools reading the config echo
//! in `summary.json`: keys may be added, never renamed. Every key has a default.
//!
//! Parsing is two-pass. The raw TOML table is first checked against [`SCHEMA`], which gives
//! one-line errors naming the exact key (serde's own messages name neither the table nor the
//! key for a type error). The checked table is then deserialized into [`Config`] with
//! `deny_unknown_fields`, and cross-key rules are checked last.

use dmft_data::Teacher;
use dmft_runtime::proportional::{DataUse, Setting, Spectrum};
use dmft_runtime::{
    Activation, Model, Parameterization, Readout, Schedule, SolverKind, SolverOptions,
};
use dmft_sim::digits::ClassSplit;
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub data: DataConfig,
    pub model: ModelConfig,
    pub train: TrainConfig,
    pub theory: TheoryConfig,
    /// Finite-width networks for `dmft sweep`; `dmft run` accepts and ignores it, so one
    /// file serves both commands.
    pub sim: SimConfig,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataKind {
    Gaussian,
    Npz,
    /// The 8×8 handwritten digits shipped with the project, as a ±1 task.
    Digits,
    /// Deep linear networks on P = αD Gaussian points at width N = νD, D → ∞
    /// (docs/proportional.md): no finite point set, the theory is solved directly.
    Proportional,
}

impl fmt::Display for DataKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DataKind::Gaussian => "gaussian",
            DataKind::Npz => "npz",
            DataKind::Digits => "digits",
            DataKind::Proportional => "proportional",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    pub kind: DataKind,
    pub p_train: usize,
    pub p_test: usize,
    pub dim: usize,
    pub teacher: Teacher,
    pub seed: u64,
    /// The `.npz` file for `kind = "npz"`, relative to the config file's folder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// digits: the class that is +1 and the class that is −1. None when `one_vs_rest` is
    /// given (the two exclude each other).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classes: Option<[u8; 2]>,
    /// digits: this class is +1, every other class −1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub one_vs_rest: Option<u8>,
    /// digits: training images.
    pub n_train: usize,
    /// digits: test images. The default 150 leaves room for the default 200 training
    /// images in every pair of classes (the rarest pair, 2 and 8, has 351 images).
    pub n_test: usize,
    /// proportional: training points per input dimension, α = P/D.
    pub alpha: f64,
    /// proportional: width per input dimension, ν = N/D.
    pub nu: f64,
    /// proportional: input spectrum λ_k ∝ k^{−a} over data.dim directions (0: isotropic).
    pub spectrum_exponent: f64,
    /// proportional: one-pass SGD with fresh batches of α_B·D points instead of reused data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_ratio: Option<f64>,
}

/// The digits task's default pair: 3 (+1) against 8 (−1), two similar-looking digits.
const DEFAULT_CLASSES: [u8; 2] = [3, 8];

impl DataConfig {
    /// Which digits are +1 and which −1 for `kind = "digits"`.
    pub fn class_split(&self) -> ClassSplit {
        match self.one_vs_rest {
            Some(c) => ClassSplit::OneVsRest(i64::from(c)),
            None => {
                let [a, b] = self.classes.unwrap_or(DEFAULT_CLASSES);
                ClassSplit::Pair(i64::from(a), i64::from(b))
            }
        }
    }
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            kind: DataKind::Gaussian,
            p_train: 4,
            p_test: 2,
            dim: 16,
            teacher: Teacher::Linear,
            seed: 0,
            path: None,
            classes: Some(DEFAULT_CLASSES),
            one_vs_rest: None,
            n_train: 200,
            n_test: 150,
            alpha: 2.0,
            nu: 1.0,
            spectrum_exponent: 0.0,
            batch_ratio: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    pub depth: usize,
    pub activation: Activation,
    pub parameterization: Parameterization,
    pub gamma0: f64,
    pub centered: bool,
    /// Whether gradient descent updates the readout w¹ (`frozen`: only W⁰ learns).
    pub readout: Readout,
    /// Residual branches h^{ℓ+1} = h^ℓ + (β/√L)W^ℓφ(h^ℓ)/√N (ℓ ≥ 1) with this β.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub residual_beta: Option<f64>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            depth: 1,
            activation: Activation::Relu,
            parameterization: Parameterization::Mup,
            gamma0: 1.0,
            centered: false,
            readout: Readout::Trained,
            residual_beta: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub eta: f64,
    pub steps: usize,
    pub record_every: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            eta: 0.5,
            steps: 100,
            record_every: 1,
        }
    }
}

/// The solver named in the config: one of the runtime's, or `auto` to let the model decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SolverChoice {
    Auto,
    Lazy,
    TwoLayer,
    DeepLinear,
    DeepNonlinear,
}

impl SolverChoice {
    pub fn resolve(self, model: &Model) -> SolverKind {
        match self {
            SolverChoice::Auto => SolverKind::auto(model),
            SolverChoice::Lazy => SolverKind::Lazy,
            SolverChoice::TwoLayer => SolverKind::TwoLayer,
            SolverChoice::DeepLinear => SolverKind::DeepLinear,
            SolverChoice::DeepNonlinear => SolverKind::DeepNonlinear,
        }
    }
}

impl fmt::Display for SolverChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SolverChoice::Auto => f.write_str("auto"),
            SolverChoice::Lazy => f.write_str("lazy"),
            SolverChoice::TwoLayer => f.write_str("two-layer"),
            SolverChoice::DeepLinear => f.write_str("deep-linear"),
            SolverChoice::DeepNonlinear => f.write_str("deep-nonlinear"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TheoryConfig {
    pub solver: SolverChoice,
    pub sites: usize,
    pub quadrature: usize,
    pub seed: u64,
    /// Also compute the finite-width propagator Σ_f (N·Var of predictions and loss).
    pub fluctuations: bool,
    /// Also compute the O(1/N) mean shift N(E f_N − f∞) (two-layer μP, smooth φ).
    pub mean_shift: bool,
    /// Also compute N·Var of the hidden kernels Φ(t,t) and G(t,t) and their SNR.
    pub kernel_variances: bool,
}

impl Default for TheoryConfig {
    fn default() -> Self {
        TheoryConfig {
            solver: SolverChoice::Auto,
            sites: 100_000,
            quadrature: 0,
            seed: 0,
            fluctuations: false,
            mean_shift: false,
            kernel_variances: false,
        }
    }
}

/// How the finite-width networks are trained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrainingChoice {
    /// Full-batch gradient descent on the P training points, as the theory assumes.
    Gd,
    /// A fresh batch from the Gaussian task's teacher every step.
    OnlineSgd,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Hidden widths N of the simulated networks.
    pub widths: Vec<usize>,
    /// Seeds S per width.
    pub seeds: usize,
    /// Sizes E of the seed-averaged predictors whose loss is reported.
    pub ensemble_sizes: Vec<usize>,
    pub base_seed: u64,
    /// Also solve the infinite-width theory of [theory] and [model].
    pub theory: bool,
    /// Refuse to start when the estimated peak memory exceeds this many GiB.
    pub memory_gib: f64,
    pub training: TrainingChoice,
    /// Online-SGD batch size B.
    pub batch: usize,
    /// A seed whose loss exceeds this (or is not finite) is stopped and left out.
    pub divergence_threshold: f64,
    /// proportional: the learning rates η of the transfer grid (required by `dmft sweep`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etas: Option<Vec<f64>>,
    /// proportional: the width ratios ν of the grid; default [data.nu].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nus: Option<Vec<f64>>,
    /// proportional: the depths L of the grid; default [model.depth].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub depths: Option<Vec<usize>>,
    /// proportional: the input dimension D of the simulated networks; default data.dim.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dim: Option<usize>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            widths: vec![256, 1024, 4096],
            seeds: 64,
            ensemble_sizes: vec![1, 4, 16],
            base_seed: 0,
            theory: true,
            memory_gib: 16.0,
            training: TrainingChoice::Gd,
            batch: 32,
            divergence_threshold: dmft_sim::ensemble::DEFAULT_DIVERGENCE_THRESHOLD,
            etas: None,
            nus: None,
            depths: None,
            dim: None,
        }
    }
}

/// The value type a key accepts, with its range; the range check lives here so that the
/// message can name the key.
#[derive(Clone, Copy, Debug)]
enum Type {
    /// A TOML integer ≥ `min`.
    Int {
        min: i64,
    },
    /// A finite number > 0 (TOML integers are accepted too: `eta = 1`).
    Positive,
    /// A finite number ≥ 0.
    NonNegative,
    Bool,
    Text,
    /// One of the listed strings.
    Choice(&'static [&'static str]),
    /// A list of integers, each ≥ `min`; empty only if `empty_ok`.
    Ints {
        min: i64,
        empty_ok: bool,
    },
    /// A non-empty list of finite numbers > 0.
    Positives,
    /// An integer 0–9 naming a digit class.
    Digit,
    /// Two different digits 0–9.
    DigitPair,
}

type Section = (&'static str, &'static [(&'static str, Type)]);

/// Every table and key the config accepts. A unit test checks this against the serde types.
const SCHEMA: &[Section] = &[
    (
        "data",
        &[
            (
                "kind",
                Type::Choice(&["gaussian", "npz", "digits", "proportional"]),
            ),
            ("p_train", Type::Int { min: 1 }),
            ("p_test", Type::Int { min: 0 }),
            ("dim", Type::Int { min: 1 }),
            ("teacher", Type::Choice(&["linear", "relu-neuron"])),
            ("seed", Type::Int { min: 0 }),
            ("path", Type::Text),
            ("classes", Type::DigitPair),
            ("one_vs_rest", Type::Digit),
            ("n_train", Type::Int { min: 1 }),
            ("n_test", Type::Int { min: 0 }),
            ("alpha", Type::Positive),
            ("nu", Type::Positive),
            ("spectrum_exponent", Type::NonNegative),
            ("batch_ratio", Type::Positive),
        ],
    ),
    (
        "model",
        &[
            ("depth", Type::Int { min: 1 }),
            (
                "activation",
                Type::Choice(&["linear", "relu", "tanh", "erf", "gelu", "softplus"]),
            ),
            ("parameterization", Type::Choice(&["mup", "ntk"])),
            ("gamma0", Type::Positive),
            ("centered", Type::Bool),
            ("readout", Type::Choice(&["trained", "frozen"])),
            ("residual_beta", Type::Positive),
        ],
    ),
    (
        "train",
        &[
            ("eta", Type::Positive),
            ("steps", Type::Int { min: 1 }),
            ("record_every", Type::Int { min: 1 }),
        ],
    ),
    (
        "theory",
        &[
            (
                "solver",
                Type::Choice(&["auto", "lazy", "two-layer", "deep-linear", "deep-nonlinear"]),
            ),
            ("sites", Type::Int { min: 1 }),
            ("quadrature", Type::Int { min: 0 }),
            ("seed", Type::Int { min: 0 }),
            ("fluctuations", Type::Bool),
            ("mean_shift", Type::Bool),
            ("kernel_variances", Type::Bool),
        ],
    ),
    (
        "sim",
        &[
            (
                "widths",
                Type::Ints {
                    min: 1,
                    empty_ok: false,
                },
            ),
            // ≥ 2 except for the proportional kind, where 0 means theory only (check_sim).
            ("seeds", Type::Int { min: 0 }),
            (
                "ensemble_sizes",
                Type::Ints {
                    min: 1,
                    empty_ok: true,
                },
            ),
            ("base_seed", Type::Int { min: 0 }),
            ("theory", Type::Bool),
            ("memory_gib", Type::Positive),
            ("training", Type::Choice(&["gd", "online-sgd"])),
            ("batch", Type::Int { min: 1 }),
            ("divergence_threshold", Type::Positive),
            ("etas", Type::Positives),
            ("nus", Type::Positives),
            (
                "depths",
                Type::Ints {
                    min: 1,
                    empty_ok: false,
                },
            ),
            ("dim", Type::Int { min: 1 }),
        ],
    ),
];

/// [sim] keys that apply to one side only: the finite-width networks of the point-set kinds,
/// or the transfer grid of the proportional kind. `seeds`, `base_seed` and `memory_gib`
/// apply to both.
const SIM_POINT_SET_KEYS: &[&str] = &[
    "widths",
    "ensemble_sizes",
    "theory",
    "training",
    "batch",
    "divergence_threshold",
];
const SIM_PROPORTIONAL_KEYS: &[&str] = &["etas", "nus", "depths", "dim"];

/// The data kinds each [data] key applies to. Giving a key that the chosen kind ignores is
/// almost certainly a mistake, so it is refused rather than silently ignored.
const DATA_KEY_KINDS: &[(&str, &[&str])] = &[
    ("p_train", &["gaussian"]),
    ("p_test", &["gaussian"]),
    ("dim", &["gaussian", "proportional"]),
    ("teacher", &["gaussian", "proportional"]),
    ("seed", &["gaussian", "digits"]),
    ("path", &["npz"]),
    ("classes", &["digits"]),
    ("one_vs_rest", &["digits"]),
    ("n_train", &["digits"]),
    ("n_test", &["digits"]),
    ("alpha", &["proportional"]),
    ("nu", &["proportional"]),
    ("spectrum_exponent", &["proportional"]),
    ("batch_ratio", &["proportional"]),
];

impl Config {
    /// Parses and validates config text. Errors are one line, without the file name.
    pub fn parse(text: &str) -> Result<Config, String> {
        let table: toml::Table = toml::from_str(text).map_err(|e| syntax_error(text, &e))?;
        check_schema(&table)?;
        check_data_keys(&table)?;
        check_sim_keys(&table)?;
        let seeds_given = table.get("sim").and_then(|s| s.get("seeds")).is_some();
        let mut config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| one_line(e.message()))?;
        if config.data.one_vs_rest.is_some() {
            // The default pair does not apply; echoing it would misstate the task.
            config.data.classes = None;
        }
        if config.data.kind == DataKind::Proportional && !seeds_given {
            // A transfer grid is theory only unless simulations are asked for.
            config.sim.seeds = 0;
        }
        config.check_combinations()?;
        config.check_sim()?;
        Ok(config)
    }

    /// Rules of the [sim] table that involve more than one key or a whole list.
    fn check_sim(&self) -> Result<(), String> {
        let sim = &self.sim;
        if self.data.kind == DataKind::Proportional {
            return self.check_proportional_sim();
        }
        if sim.seeds < 2 {
            return Err(format!("sim.seeds must be ≥ 2, got {}", sim.seeds));
        }
        if let Some(w) = repeated(&sim.widths) {
            return Err(format!("sim.widths lists {w} more than once"));
        }
        if let Some(e) = repeated(&sim.ensemble_sizes) {
            return Err(format!("sim.ensemble_sizes lists {e} more than once"));
        }
        if let Some(&e) = sim.ensemble_sizes.iter().find(|&&e| 2 * e > sim.seeds) {
            return Err(format!(
                "sim.ensemble_sizes contains {e}, more than sim.seeds/2 = {}; the loss of an average over E seeds needs at least two disjoint groups of E",
                sim.seeds / 2
            ));
        }
        if sim.training == TrainingChoice::OnlineSgd {
            if self.data.kind != DataKind::Gaussian {
                return Err(format!(
                    "sim.training = \"online-sgd\" needs data.kind = \"gaussian\", whose teacher labels the fresh points; got data.kind = \"{}\"",
                    self.data.kind
                ));
            }
            if sim.theory {
                return Err(
                    "sim.training = \"online-sgd\" needs sim.theory = false: the infinite-width solvers describe full-batch gradient descent on the training points".into(),
                );
            }
        }
        Ok(())
    }

    /// Rules that involve more than one key.
    fn check_combinations(&self) -> Result<(), String> {
        if self.data.kind == DataKind::Npz && self.data.path.is_none() {
            return Err("data.path is required when data.kind = \"npz\"".into());
        }

        let m = &self.model;
        let solver = self.theory.solver;
        if self.theory.fluctuations && m.depth > 1 {
            self.check_deep_fluctuations()?;
        }
        if self.theory.mean_shift {
            self.check_mean_shift()?;
        }
        if self.theory.kernel_variances {
            self.check_kernel_variances()?;
        }
        if self.theory.fluctuations && m.parameterization == Parameterization::Ntk && !m.centered {
            return Err("theory.fluctuations = true with model.parameterization = \"ntk\" needs model.centered = true: there f(0) is an O(1) Gaussian process, not a finite-width effect".into());
        }
        if m.readout == Readout::Frozen {
            if m.depth != 1 || m.parameterization != Parameterization::Mup {
                return Err(format!(
                    "model.readout = \"frozen\" needs a two-layer μP network (model.depth = 1, parameterization = \"mup\"), got depth {} and \"{}\"",
                    m.depth, m.parameterization
                ));
            }
            if m.residual_beta.is_some() {
                return Err("model.readout = \"frozen\" does not apply to residual networks (model.residual_beta): no solver has both".into());
            }
            if self.data.kind == DataKind::Proportional {
                return Err(
                    "model.readout = \"frozen\" does not apply to data.kind = \"proportional\""
                        .into(),
                );
            }
            if !matches!(solver, SolverChoice::Auto | SolverChoice::TwoLayer) {
                return Err(format!(
                    "model.readout = \"frozen\" is solved by the two-layer solver only; theory.solver must be \"auto\" or \"two-layer\", got \"{solver}\""
                ));
            }
        }
        if self.data.kind == DataKind::Proportional {
            if self.theory.fluctuations {
                return Err("theory.fluctuations = true does not apply to data.kind = \"proportional\", where width enters at leading order".into());
            }
            return self.check_proportional();
        }
        if m.residual_beta.is_some()
            && (m.activation != Activation::Linear
                || !matches!(solver, SolverChoice::Auto | SolverChoice::DeepLinear))
        {
            return Err(format!(
                "model.residual_beta is solved for linear networks only (model.activation = \"linear\", theory.solver = \"auto\" or \"deep-linear\"), got activation \"{}\" and solver \"{solver}\"",
                m.activation
            ));
        }
        if solver != SolverChoice::Lazy
            && solver != SolverChoice::Auto
            && m.parameterization == Parameterization::Ntk
        {
            return Err(format!(
                "theory.solver = \"{solver}\" needs model.parameterization = \"mup\"; the NTK parameterization's infinite-width limit is lazy (use \"lazy\" or \"auto\")"
            ));
        }
        match solver {
            SolverChoice::TwoLayer if m.depth != 1 => Err(format!(
                "theory.solver = \"two-layer\" needs model.depth = 1, got {}",
                m.depth
            )),
            SolverChoice::DeepLinear if m.activation != Activation::Linear => Err(format!(
                "theory.solver = \"deep-linear\" needs model.activation = \"linear\", got \"{}\"",
                m.activation
            )),
            SolverChoice::DeepNonlinear if m.depth < 2 => Err(format!(
                "theory.solver = \"deep-nonlinear\" needs model.depth ≥ 2, got {} (use \"two-layer\" for depth 1)",
                m.depth
            )),
            _ => Ok(()),
        }
    }

    /// `theory.mean_shift`: the next order of the two-layer μP propagator, which needs φ'''.
    fn check_mean_shift(&self) -> Result<(), String> {
        let m = &self.model;
        if !self.theory.fluctuations {
            return Err("theory.mean_shift = true needs theory.fluctuations = true: the shift is the next order of the same propagator".into());
        }
        if m.depth != 1 || m.parameterization != Parameterization::Mup {
            return Err(format!(
                "theory.mean_shift = true is implemented for two-layer μP networks (model.depth = 1, model.parameterization = \"mup\"), got depth {} and \"{}\"",
                m.depth, m.parameterization
            ));
        }
        if m.activation.has_kink() {
            return Err(format!(
                "theory.mean_shift = true needs a smooth model.activation (φ''' enters the shift), got \"{}\"; use tanh, erf, gelu, softplus or linear",
                m.activation
            ));
        }
        Ok(())
    }

    /// `theory.kernel_variances`: computed by the two-layer μP site propagator and by the
    /// deep linear one (whose other conditions `check_deep_fluctuations` enforces).
    fn check_kernel_variances(&self) -> Result<(), String> {
        let m = &self.model;
        if !self.theory.fluctuations {
            return Err("theory.kernel_variances = true needs theory.fluctuations = true: the kernel variances come from the same propagator".into());
        }
        if m.parameterization != Parameterization::Mup {
            return Err(format!(
                "theory.kernel_variances = true is implemented for μP networks (two-layer, or deep linear at model.depth ≥ 2), got model.parameterization = \"{}\"",
                m.parameterization
            ));
        }
        if m.depth > 1 && self.solver() == SolverKind::Lazy {
            return Err("theory.kernel_variances = true is not available from the lazy universal form at model.depth ≥ 2 (it gives the NTK's covariance only); use the deep linear propagator (theory.solver = \"auto\" with model.activation = \"linear\")".into());
        }
        if self.theory.mean_shift {
            return Err("theory.kernel_variances = true cannot be combined with theory.mean_shift = true yet (the mean shift's propagator pass does not record the kernels); run them separately".into());
        }
        Ok(())
    }

    /// `theory.fluctuations` at depth ≥ 2: the lazy universal form of a plain chain (any
    /// activation, the lazy solver), or the deep linear μP propagator (plain or with residual
    /// branches). A frozen readout is refused with its own key below.
    fn check_deep_fluctuations(&self) -> Result<(), String> {
        let m = &self.model;
        if self.solver() == SolverKind::Lazy {
            if m.residual_beta.is_some() {
                return Err(format!(
                    "theory.fluctuations = true with the lazy solver at model.depth = {} is implemented for plain chains; model.residual_beta is not supported",
                    m.depth
                ));
            }
            return Ok(());
        }
        if m.activation != Activation::Linear {
            return Err(format!(
                "theory.fluctuations = true at model.depth = {} needs model.activation = \"linear\" (the deep linear propagator) or theory.solver = \"lazy\" (the lazy universal form), got \"{}\"; the deep nonlinear propagator is not implemented yet",
                m.depth, m.activation
            ));
        }
        let solver = self.theory.solver;
        if !matches!(solver, SolverChoice::Auto | SolverChoice::DeepLinear) {
            return Err(format!(
                "theory.fluctuations = true at model.depth = {} is computed around the deep linear solver's trajectory; theory.solver must be \"auto\" or \"deep-linear\", got \"{solver}\"",
                m.depth
            ));
        }
        Ok(())
    }

    /// The proportional regime: a deep linear network with a linear teacher, solved by its
    /// own solver.
    fn check_proportional(&self) -> Result<(), String> {
        let m = &self.model;
        if m.activation != Activation::Linear {
            return Err(format!(
                "data.kind = \"proportional\" needs model.activation = \"linear\", got \"{}\"",
                m.activation
            ));
        }
        if self.data.teacher != Teacher::Linear {
            return Err("data.kind = \"proportional\" needs data.teacher = \"linear\"".into());
        }
        if m.centered {
            return Err("model.centered does not apply to data.kind = \"proportional\"".into());
        }
        if self.theory.solver != SolverChoice::Auto {
            return Err(format!(
                "data.kind = \"proportional\" has its own solver; theory.solver must be \"auto\", got \"{}\"",
                self.theory.solver
            ));
        }
        Ok(())
    }

    /// The transfer grid's [sim] rules (docs/sweep.md, proportional regime).
    fn check_proportional_sim(&self) -> Result<(), String> {
        let sim = &self.sim;
        if sim.seeds == 1 {
            return Err("sim.seeds must be 0 (theory only) or ≥ 2 (a standard error needs two seeds), got 1".into());
        }
        let twice = |values: &[f64]| {
            values
                .iter()
                .enumerate()
                .find(|(i, v)| values[..*i].contains(v))
                .map(|(_, v)| *v)
        };
        if let Some(eta) = sim.etas.as_deref().and_then(twice) {
            return Err(format!("sim.etas lists {eta} more than once"));
        }
        if let Some(nu) = sim.nus.as_deref().and_then(twice) {
            return Err(format!("sim.nus lists {nu} more than once"));
        }
        if let Some(l) = sim.depths.as_deref().and_then(repeated) {
            return Err(format!("sim.depths lists {l} more than once"));
        }
        if let Some(dim) = sim.dim
            && self.data.spectrum_exponent > 0.0
            && dim != self.data.dim
        {
            return Err(format!(
                "sim.dim = {dim} differs from data.dim = {}, which fixes the power-law spectrum (data.spectrum_exponent > 0); set sim.dim = data.dim or leave it out",
                self.data.dim
            ));
        }
        Ok(())
    }

    /// The proportional-regime setting of a `kind = "proportional"` config.
    pub fn proportional(&self) -> Result<Setting, String> {
        let d = &self.data;
        let spectrum = if d.spectrum_exponent == 0.0 {
            Spectrum::isotropic()
        } else {
            Spectrum::power_law(d.dim, d.spectrum_exponent).map_err(|e| e.to_string())?
        };
        Ok(Setting {
            depth: self.model.depth,
            nu: d.nu,
            parameterization: self.model.parameterization,
            gamma: self.model.gamma0,
            residual: self.model.residual_beta,
            data: match d.batch_ratio {
                Some(batch_ratio) => DataUse::OnePass { batch_ratio },
                None => DataUse::Repeated { alpha: d.alpha },
            },
            spectrum,
            eta: self.train.eta,
            steps: self.train.steps,
        })
    }

    pub fn model(&self) -> Model {
        Model {
            depth: self.model.depth,
            activation: self.model.activation,
            parameterization: self.model.parameterization,
            gamma0: self.model.gamma0,
            centered: self.model.centered,
            residual: self.model.residual_beta,
            readout: self.model.readout,
        }
    }

    pub fn schedule(&self) -> Schedule {
        Schedule {
            eta: self.train.eta,
            steps: self.train.steps,
            record_every: self.train.record_every,
        }
    }

    pub fn solver_options(&self) -> SolverOptions {
        SolverOptions {
            sites: self.theory.sites,
            quadrature: self.theory.quadrature,
            seed: self.theory.seed,
        }
    }

    pub fn solver(&self) -> SolverKind {
        self.theory.solver.resolve(&self.model())
    }
}

fn check_schema(table: &toml::Table) -> Result<(), String> {
    let section_names: Vec<&str> = SCHEMA.iter().map(|(name, _)| *name).collect();
    for (name, value) in table {
        let Some((section, keys)) = SCHEMA.iter().find(|(s, _)| s == name) else {
            let hint = suggestion(name, &section_names);
            return Err(if value.is_table() {
                format!(
                    "unknown table [{name}]{hint}; expected [data], [model], [train], [theory] or [sim]"
                )
            } else {
                format!(
                    "unknown key {name:?} at the top level{hint}; keys belong in [data], [model], [train], [theory] or [sim]"
                )
            });
        };
        let toml::Value::Table(entries) = value else {
            return Err(format!(
                "[{section}] must be a table, got {}",
                describe(value)
            ));
        };
        let key_names: Vec<&str> = keys.iter().map(|(k, _)| *k).collect();
        for (key, value) in entries {
            let Some((_, ty)) = keys.iter().find(|(k, _)| k == key) else {
                let hint = suggestion(key, &key_names);
                return Err(format!("unknown key {key:?} in [{section}]{hint}"));
            };
            check_type(&format!("{section}.{key}"), *ty, value)?;
        }
    }
    Ok(())
}

fn check_type(path: &str, ty: Type, value: &toml::Value) -> Result<(), String> {
    use toml::Value as V;
    match (ty, value) {
        (Type::Int { min }, V::Integer(i)) if *i < min => {
            Err(format!("{path} must be ≥ {min}, got {i}"))
        }
        (Type::Int { .. }, V::Integer(_)) => Ok(()),
        (Type::Int { min }, v) => Err(format!(
            "{path} must be an integer ≥ {min}, got {}",
            describe(v)
        )),
        (Type::Positive, V::Integer(i)) if *i <= 0 => Err(format!("{path} must be > 0, got {i}")),
        (Type::Positive, V::Integer(_)) => Ok(()),
        (Type::Positive, V::Float(x)) if !(x.is_finite() && *x > 0.0) => {
            Err(format!("{path} must be a finite number > 0, got {x}"))
        }
        (Type::Positive, V::Float(_)) => Ok(()),
        (Type::Positive, v) => Err(format!("{path} must be a number > 0, got {}", describe(v))),
        (Type::NonNegative, V::Integer(i)) if *i < 0 => Err(format!("{path} must be ≥ 0, got {i}")),
        (Type::NonNegative, V::Integer(_)) => Ok(()),
        (Type::NonNegative, V::Float(x)) if !(x.is_finite() && *x >= 0.0) => {
            Err(format!("{path} must be a finite number ≥ 0, got {x}"))
        }
        (Type::NonNegative, V::Float(_)) => Ok(()),
        (Type::NonNegative, v) => Err(format!("{path} must be a number ≥ 0, got {}", describe(v))),
        (Type::Bool, V::Boolean(_)) => Ok(()),
        (Type::Bool, v) => Err(format!("{path} must be true or false, got {}", describe(v))),
        (Type::Text, V::String(_)) => Ok(()),
        (Type::Text, v) => Err(format!("{path} must be a string, got {}", describe(v))),
        (Type::Choice(options), V::String(s)) if options.contains(&s.as_str()) => Ok(()),
        (Type::Ints { min, empty_ok }, V::Array(items)) => {
            if items.is_empty() && !empty_ok {
                return Err(format!(
                    "{path} must be a non-empty list of integers ≥ {min}, got []"
                ));
            }
            for (i, item) in items.iter().enumerate() {
                match item {
                    V::Integer(v) if *v < min => {
                        return Err(format!("{path}[{i}] must be ≥ {min}, got {v}"));
                    }
                    V::Integer(_) => {}
                    v => {
                        return Err(format!(
                            "{path}[{i}] must be an integer ≥ {min}, got {}",
                            describe(v)
                        ));
                    }
                }
            }
            Ok(())
        }
        (Type::Ints { min, .. }, v) => Err(format!(
            "{path} must be a list of integers ≥ {min} such as [256, 1024], got {}",
            describe(v)
        )),
        (Type::Positives, V::Array(items)) => {
            if items.is_empty() {
                return Err(format!(
                    "{path} must be a non-empty list of numbers > 0, got []"
                ));
            }
            for (i, item) in items.iter().enumerate() {
                let x = match item {
                    V::Integer(v) => *v as f64,
                    V::Float(x) => *x,
                    v => {
                        return Err(format!(
                            "{path}[{i}] must be a number > 0, got {}",
                            describe(v)
                        ));
                    }
                };
                if !(x.is_finite() && x > 0.0) {
                    return Err(format!("{path}[{i}] must be a finite number > 0, got {x}"));
                }
            }
            Ok(())
        }
        (Type::Positives, v) => Err(format!(
            "{path} must be a list of numbers > 0 such as [0.1, 0.3, 1], got {}",
            describe(v)
        )),
        (Type::Digit, V::Integer(d)) if (0..=9).contains(d) => Ok(()),
        (Type::Digit, v) => Err(format!("{path} must be a digit 0–9, got {}", describe(v))),
        (Type::DigitPair, V::Array(items))
            if matches!(
                items.as_slice(),
                [V::Integer(a), V::Integer(b)] if a != b && (0..=9).contains(a) && (0..=9).contains(b)
            ) =>
        {
            Ok(())
        }
        (Type::DigitPair, v) => Err(format!(
            "{path} must be two different digits 0–9 such as [3, 8], got {}",
            match v {
                V::Array(_) => v.to_string(),
                v => describe(v),
            }
        )),
        (Type::Choice(options), v) => {
            let list = options
                .iter()
                .map(|o| format!("{o:?}"))
                .collect::<Vec<_>>()
                .join(", ");
            let what = match v {
                V::String(s) => format!("unknown {path} {s:?}"),
                v => format!("{path} must be a string, got {}", describe(v)),
            };
            Err(format!("{what}; expected one of {list}"))
        }
    }
}

/// Refuses keys that do not apply to the chosen data kind.
fn check_data_keys(table: &toml::Table) -> Result<(), String> {
    let Some(toml::Value::Table(data)) = table.get("data") else {
        return Ok(());
    };
    let kind = data
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or("gaussian");
    for (key, kinds) in DATA_KEY_KINDS {
        if !data.contains_key(*key) || kinds.contains(&kind) {
            continue;
        }
        let allowed = kinds
            .iter()
            .map(|k| format!("{k:?}"))
            .collect::<Vec<_>>()
            .join(" or ");
        let hint = match (kind, *key) {
            ("npz", _) => "; with \"npz\" the sizes come from the file",
            ("digits", "p_train" | "p_test") => {
                "; with \"digits\" use data.n_train and data.n_test"
            }
            ("gaussian", "n_train" | "n_test") => {
                "; with \"gaussian\" use data.p_train and data.p_test"
            }
            _ => "",
        };
        return Err(format!(
            "data.{key} applies only to data.kind = {allowed}{hint}"
        ));
    }
    if data.contains_key("classes") && data.contains_key("one_vs_rest") {
        return Err(
            "data.classes and data.one_vs_rest exclude each other: give two digits (+1 vs −1) or one digit against the rest".into(),
        );
    }
    Ok(())
}

/// Refuses [sim] keys that do not apply to the chosen training.
fn check_sim_keys(table: &toml::Table) -> Result<(), String> {
    let Some(toml::Value::Table(sim)) = table.get("sim") else {
        return Ok(());
    };
    let proportional = table
        .get("data")
        .and_then(|d| d.get("kind"))
        .and_then(|k| k.as_str())
        == Some("proportional");
    let (refused, reason) = if proportional {
        (
            SIM_POINT_SET_KEYS,
            "does not apply to data.kind = \"proportional\", whose sweep is the grid of sim.etas × sim.nus × sim.depths",
        )
    } else {
        (
            SIM_PROPORTIONAL_KEYS,
            "applies only to data.kind = \"proportional\"",
        )
    };
    if let Some(key) = refused.iter().find(|k| sim.contains_key(**k)) {
        return Err(format!("sim.{key} {reason}"));
    }
    let online = sim.get("training").and_then(|t| t.as_str()) == Some("online-sgd");
    if sim.contains_key("batch") && !online {
        return Err("sim.batch applies only to sim.training = \"online-sgd\"".into());
    }
    Ok(())
}

/// A value listed more than once, if any.
fn repeated(values: &[usize]) -> Option<usize> {
    values
        .iter()
        .enumerate()
        .find(|(i, v)| values[..*i].contains(v))
        .map(|(_, v)| *v)
}

/// A short description of a TOML value for error messages.
fn describe(value: &toml::Value) -> String {
    use toml::Value as V;
    match value {
        V::String(s) => format!("{s:?}"),
        V::Integer(i) => i.to_string(),
        V::Float(x) => x.to_string(),
        V::Boolean(b) => b.to_string(),
        V::Datetime(d) => format!("the date {d}"),
        V::Array(_) => "an array".into(),
        V::Table(_) => "a table".into(),
    }
}

/// ` (did you mean "x"?)` for the closest known name within two edits, else nothing.
fn suggestion(name: &str, known: &[&str]) -> String {
    known
        .iter()
        .map(|k| (edit_distance(name, k), k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| format!(" (did you mean {k:?}?)"))
        .unwrap_or_default()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// A TOML syntax error as "invalid TOML at line L, column C: message".
fn syntax_error(text: &str, e: &toml::de::Error) -> String {
    let message = one_line(e.message());
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("invalid TOML at line {line}, column {column}: {message}")
        }
        None => format!("invalid TOML: {message}"),
    }
}

fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// model.residual_beta reaches the runtime model and is refused where no solver has it.
    #[test]
    fn residual_beta_reaches_the_model_or_is_refused() {
        let base = "[model]\ndepth = 3\nactivation = \"linear\"\nresidual_beta = 1.5\n";
        let c = Config::parse(base).unwrap();
        assert_eq!(c.model().residual, Some(1.5));
        assert_eq!(Config::parse("").unwrap().model().residual, None);
        for (extra, want) in [
            ("", "model.residual_beta is solved for linear networks only"),
            (
                "[theory]\nsolver = \"deep-nonlinear\"\n",
                "solver \"deep-nonlinear\"",
            ),
        ] {
            let text = if extra.is_empty() {
                base.replace("linear", "relu")
            } else {
                format!("{base}{extra}")
            };
            let e = Config::parse(&text).unwrap_err();
            assert!(e.contains(want) && !e.contains('\n'), "{e}");
        }
        let e = Config::parse(&base.replace("1.5", "-1")).unwrap_err();
        assert!(e.contains("model.residual_beta"), "{e}");
    }

    /// The schema that produces the error messages and the serde types that hold the values
    /// must list the same keys with matching types.
    #[test]
    fn schema_matches_the_serde_types() {
        let mut full = Config::default();
        full.data.path = Some("x.npz".into());
        full.data.one_vs_rest = Some(0);
        full.data.batch_ratio = Some(1.0);
        full.model.residual_beta = Some(1.0);
        full.sim.etas = Some(vec![0.1]);
        full.sim.nus = Some(vec![1.0]);
        full.sim.depths = Some(vec![1]);
        full.sim.dim = Some(64);
        let toml::Value::Table(table) = toml::Value::try_from(&full).unwrap() else {
            panic!("config serializes to a table");
        };
        assert_eq!(table.len(), SCHEMA.len());
        for (section, keys) in SCHEMA {
            let entries = table[*section].as_table().unwrap();
            let mut names: Vec<&str> = entries.keys().map(String::as_str).collect();
            let mut expected: Vec<&str> = keys.iter().map(|(k, _)| *k).collect();
            names.sort_unstable();
            expected.sort_unstable();
            assert_eq!(names, expected, "[{section}]");
            for (key, ty) in *keys {
                let value = &entries[*key];
                check_type(&format!("{section}.{key}"), *ty, value)
                    .unwrap_or_else(|e| panic!("default fails its own schema: {e}"));
                if let Type::Choice(options) = ty {
                    for option in *options {
                        let text = format!("[{section}]\n{key} = {option:?}\n");
                        let parsed = toml::from_str::<Config>(&text);
                        assert!(
                            parsed.is_ok(),
                            "{section}.{key} = {option:?} does not deserialize"
                        );
                    }
                }
            }
        }
        assert_eq!(
            Activation::ALL.len(),
            6,
            "update the activation choices in SCHEMA"
        );
    }

    #[test]
    fn empty_config_is_all_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.data.p_train, 4);
        assert_eq!(c.train.eta, 0.5);
        assert_eq!(c.theory.sites, 100_000);
        assert_eq!(c.solver(), SolverKind::TwoLayer);
    }

    /// The configs under examples/ are documentation a user runs: each must pass validation.
    #[test]
    fn shipped_examples_parse() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).unwrap();
                if let Err(e) = Config::parse(&text) {
                    panic!("{}: {e}", path.display());
                }
                checked += 1;
            }
        }
        assert!(
            checked >= 5,
            "found {checked} examples in {}",
            dir.display()
        );
    }

    #[test]
    fn built_in_default_parses() {
        let c = Config::parse(crate::DEFAULT_CONFIG).unwrap();
        assert_eq!((c.data.p_train, c.data.p_test, c.data.dim), (8, 4, 16));
        assert_eq!(
            (c.train.eta, c.train.steps, c.train.record_every),
            (1.0, 200, 2)
        );
        assert_eq!(c.solver(), SolverKind::TwoLayer);
        // The annotated [sim] table shows the defaults.
        assert_eq!(c.sim, SimConfig::default());
    }

    #[test]
    fn integers_are_accepted_for_numbers() {
        let c = Config::parse("[train]\neta = 1\n[model]\ngamma0 = 2").unwrap();
        assert_eq!((c.train.eta, c.model.gamma0), (1.0, 2.0));
    }

    fn err(text: &str) -> String {
        let e = Config::parse(text).unwrap_err();
        assert!(!e.contains('\n'), "multi-line: {e}");
        e
    }

    #[test]
    fn messages_name_the_key() {
        assert_eq!(err("[model]\ndepth = 0"), "model.depth must be ≥ 1, got 0");
        assert_eq!(
            err("[model]\ndepht = 2"),
            "unknown key \"depht\" in [model] (did you mean \"depth\"?)"
        );
        assert!(
            err("[modle]\ndepth = 2")
                .starts_with("unknown table [modle] (did you mean \"model\"?)")
        );
        assert!(err("depth = 2").contains("unknown key \"depth\" at the top level"));
        assert_eq!(err("[train]\neta = -1"), "train.eta must be > 0, got -1");
        assert_eq!(
            err("[train]\neta = nan"),
            "train.eta must be a finite number > 0, got NaN"
        );
        assert_eq!(
            err("[model]\ndepth = \"two\""),
            "model.depth must be an integer ≥ 1, got \"two\""
        );
        assert!(
            err("[model]\nactivation = \"sigmoid\"")
                .starts_with("unknown model.activation \"sigmoid\"; expected one of")
        );
        assert!(err("model = 3").starts_with("[model] must be a table"));
        assert!(err("[model\ndepth = 1").starts_with("invalid TOML at line 1, column"));
    }

    #[test]
    fn cross_key_rules() {
        assert_eq!(
            err("[model]\ndepth = 2\n[theory]\nsolver = \"two-layer\""),
            "theory.solver = \"two-layer\" needs model.depth = 1, got 2"
        );
        assert!(
            err("[theory]\nsolver = \"deep-linear\"")
                .contains("needs model.activation = \"linear\", got \"relu\"")
        );
        assert!(err("[data]\nkind = \"npz\"").contains("data.path is required"));
        assert!(
            err("[data]\nkind = \"npz\"\npath = \"a.npz\"\ndim = 3")
                .contains("data.dim applies only")
        );
        assert!(err("[data]\npath = \"a.npz\"").contains("data.path applies only"));
        assert!(
            err("[model]\nparameterization = \"ntk\"\n[theory]\nsolver = \"two-layer\"")
                .contains("lazy")
        );
    }

    #[test]
    fn frozen_readout_is_two_layer_mup_only() {
        let c = Config::parse("[model]\nreadout = \"frozen\"").unwrap();
        assert_eq!(c.model().readout, Readout::Frozen);
        assert_eq!(c.solver(), SolverKind::TwoLayer);
        assert_eq!(Config::parse("").unwrap().model().readout, Readout::Trained);
        assert!(
            err("[model]\nreadout = \"fixed\"")
                .starts_with("unknown model.readout \"fixed\"; expected one of")
        );
        for (extra, says) in [
            ("depth = 2", "got depth 2"),
            ("parameterization = \"ntk\"", "\"ntk\""),
        ] {
            let e = err(&format!("[model]\nreadout = \"frozen\"\n{extra}"));
            assert!(
                e.starts_with("model.readout = \"frozen\" needs a two-layer μP network"),
                "{e}"
            );
            assert!(e.contains(says), "{e}");
        }
        assert!(
            err("[model]\nreadout = \"frozen\"\nactivation = \"linear\"\n[theory]\nsolver = \"deep-linear\"")
                .contains("theory.solver must be \"auto\" or \"two-layer\"")
        );
        // Depth 1, linear, auto would pass each check alone; together no solver serves it.
        assert!(
            err("[model]\nreadout = \"frozen\"\nactivation = \"linear\"\nresidual_beta = 1.0")
                .starts_with("model.readout = \"frozen\" does not apply to residual networks")
        );
    }

    #[test]
    fn sim_defaults_and_values() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.sim.widths, [256, 1024, 4096]);
        assert_eq!((c.sim.seeds, c.sim.base_seed), (64, 0));
        assert_eq!(c.sim.ensemble_sizes, [1, 4, 16]);
        assert!(c.sim.theory);
        assert_eq!(c.sim.memory_gib, 16.0);
        assert_eq!(c.sim.training, TrainingChoice::Gd);
        let c = Config::parse(
            "[sim]\nwidths = [8]\nseeds = 4\nensemble_sizes = []\ntheory = false\n\
             training = \"online-sgd\"\nbatch = 3\nmemory_gib = 0.5\n",
        )
        .unwrap();
        assert_eq!((c.sim.widths.as_slice(), c.sim.batch), (&[8][..], 3));
        assert!(c.sim.ensemble_sizes.is_empty());
    }

    #[test]
    fn sim_messages_name_the_key() {
        assert_eq!(
            err("[sim]\nwidths = [4, 0]"),
            "sim.widths[1] must be ≥ 1, got 0"
        );
        assert_eq!(
            err("[sim]\nwidths = [4, \"x\"]"),
            "sim.widths[1] must be an integer ≥ 1, got \"x\""
        );
        assert_eq!(err("[sim]\nseeds = 1"), "sim.seeds must be ≥ 2, got 1");
        assert_eq!(
            err("[sim]\nwidths = [64, 64]"),
            "sim.widths lists 64 more than once"
        );
        assert!(
            err("[sim]\nseeds = 8\nensemble_sizes = [5]")
                .starts_with("sim.ensemble_sizes contains 5, more than sim.seeds/2 = 4")
        );
        assert!(err("[sim]\nsedes = 8").contains("(did you mean \"seeds\"?)"));
        assert!(
            err("[data]\nkind = \"digits\"\n[sim]\ntraining = \"online-sgd\"\ntheory = false")
                .contains("got data.kind = \"digits\"")
        );
    }

    #[test]
    fn proportional_sim_keys() {
        let base = "[data]\nkind = \"proportional\"\n[model]\nactivation = \"linear\"\n[sim]\n";
        let c = Config::parse(&format!("{base}etas = [0.1, 1]\nnus = [2]")).unwrap();
        // Theory only unless seeds are asked for; integers are numbers.
        assert_eq!(c.sim.seeds, 0);
        assert_eq!(c.sim.etas, Some(vec![0.1, 1.0]));
        assert_eq!(c.sim.nus, Some(vec![2.0]));
        assert_eq!((c.sim.depths.clone(), c.sim.dim), (None, None));
        let c = Config::parse(&format!("{base}seeds = 4\ndim = 64\ndepths = [1, 3]")).unwrap();
        assert_eq!((c.sim.seeds, c.sim.dim), (4, Some(64)));
        assert_eq!(c.sim.depths, Some(vec![1, 3]));
        assert_eq!(
            err(&format!("{base}depths = [2, 2]")),
            "sim.depths lists 2 more than once"
        );
        assert_eq!(
            err(&format!("{base}nus = [1, 1.0]")),
            "sim.nus lists 1 more than once"
        );
        assert!(
            err(&format!("{base}ensemble_sizes = [1]"))
                .starts_with("sim.ensemble_sizes does not apply to data.kind = \"proportional\"")
        );
        // Elsewhere seeds = 0 stays refused, and the grid keys do not apply.
        assert_eq!(err("[sim]\nseeds = 0"), "sim.seeds must be ≥ 2, got 0");
        assert_eq!(
            err("[sim]\nnus = [1]"),
            "sim.nus applies only to data.kind = \"proportional\""
        );
    }

    #[test]
    fn digits_keys() {
        let c = Config::parse("[data]\nkind = \"digits\"").unwrap();
        assert_eq!((c.data.n_train, c.data.n_test), (200, 150));
        assert_eq!(c.data.class_split(), ClassSplit::Pair(3, 8));
        let c = Config::parse("[data]\nkind = \"digits\"\none_vs_rest = 4\nseed = 9").unwrap();
        assert_eq!(c.data.class_split(), ClassSplit::OneVsRest(4));
        assert_eq!((c.data.classes, c.data.seed), (None, 9));
        assert_eq!(
            err("[data]\nkind = \"digits\"\nclasses = [1]"),
            "data.classes must be two different digits 0–9 such as [3, 8], got [1]"
        );
        assert_eq!(
            err("[data]\nkind = \"digits\"\ndim = 3"),
            "data.dim applies only to data.kind = \"gaussian\" or \"proportional\""
        );
        assert_eq!(
            err("[data]\nn_train = 3"),
            "data.n_train applies only to data.kind = \"digits\"; with \"gaussian\" use data.p_train and data.p_test"
        );
        assert!(
            err("[data]\nkind = \"npz\"\npath = \"a.npz\"\nseed = 1")
                .starts_with("data.seed applies only to data.kind = \"gaussian\" or \"digits\"")
        );
    }

    #[test]
    fn suggestions_need_a_close_match() {
        assert_eq!(
            suggestion("depht", &["depth", "activation"]),
            " (did you mean \"depth\"?)"
        );
        assert_eq!(suggestion("colour", &["depth", "activation"]), "");
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
