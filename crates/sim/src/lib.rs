//! Ground truth for the DMFT: exact full-batch gradient descent (and online SGD) of real
//! finite-width networks, repeated over many seeds and widths.
//!
//! Conventions (identical to the runtime crate's infinite-width solvers): width N, depth L,
//! inputs x ∈ R^D, all weights N(0,1) at initialization,
//!
//! * h¹ = W⁰x/√D, h^{ℓ+1} = W^ℓ φ(h^ℓ)/√N, f = w^L·φ(h^L)/(γ₀N) (μP) or /√N (NTK),
//! * ℒ = (1/2P) Σ_μ Δ_μ², Δ = y − f, and θ ← θ − ηγ₀²N∇ℒ (μP) or θ ← θ − η∇ℒ (NTK),
//! * kernels Φ^ℓ = φ(h^ℓ)·φ(h^ℓ)/N, G^ℓ = g^ℓ·g^ℓ/N with g^ℓ = φ'(h^ℓ) ⊙ z^ℓ, and the
//!   empirical NTK K = Σ_{ℓ=0}^{L} G^{ℓ+1} ⊙ Φ^ℓ (Φ⁰ = K^x, G^{L+1} = 1), for which
//!   f(k+1) − f(k) = (η/P) K(k) Δ(k) + O(η²).
//!
//! The NTK parameterization is run as μP with γ₀ = 1/√N, which reproduces both its
//! forward pass and its step size exactly.
//!
//! [`network`] trains one network, [`ensemble`] runs seeds in parallel and reduces them
//! into means and variances, [`stats`] holds the moment accumulators and standard errors,
//! [`data`] the dataset and online-SGD sampler types, [`digits`] the real-data task.

pub mod data;
pub mod digits;
pub mod ensemble;
pub mod error;
mod gemm;
pub mod network;
pub mod proportional;
pub mod rng;
pub mod stats;

pub use data::{DataSampler, Dataset, Training};
pub use dmft_runtime::{Activation, Parameterization, Readout, Schedule};
pub use ensemble::{
    Divergence, EnsembleAverage, EnsembleConfig, EnsembleStats, SeedOutcome, SeedRecord,
    SeedTrajectories, check_memory, memory_estimate, run_ensemble, run_seed, run_widths,
};
pub use error::{Result, SimError};
pub use network::{Architecture, Forward, Kernels, Network, Params};
pub use rng::{SimRng, seed_rng, seed_streams};
pub use stats::{MomentAccumulator, Moments, se_mean, se_var_from_m4, se_var_gaussian};
