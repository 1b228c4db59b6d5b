//! Ensemble throughput: a two-layer relu μP network, N = 1024, D = 16, P = 16, full-batch GD
//! for T = 200 steps recorded every 10, over S = 1000 seeds (200 000 network-steps).
//!
//! Criterion reports the time per ensemble and, through `Throughput::Elements`, the
//! network-steps per second. Multiply by the FLOPs per step printed at start-up for GFLOP/s.
//!
//! FLOPs per step (two-layer, P training points, no test points; multiply-add = 2 FLOPs):
//!   forward  H¹ = X W⁰ᵀ/√D            2PDN
//!            φ(H¹)                     PN
//!            f = φ(H¹) w/(γ₀N)         2PN
//!   backward g¹ = φ'(h¹) ⊙ w           PN
//!   update   w  += c φ(H¹)ᵀ Δ           2PN
//!            W⁰ += (c/√D) g¹ᵀ (Δ ⊙ X)   2PDN + PD
//!   total    4PDN + 6PN + PD  (= 1 147 136 for P = D = 16, N = 1024)
//! plus, at each of the T/10 + 1 recorded steps, Φ¹ and G¹ (2P²N each) and the NTK (~4P²):
//!   4P²N + 4P² per record, i.e. (T/10 + 1)/T · (4P²N + 4P²) = 110 208 FLOPs per step
//!   amortized: 1 257 344 FLOPs per network-step in all.

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use dmft_sim::Readout;
use dmft_sim::rng::keyed_rng;
use dmft_sim::{
    Activation, Architecture, Dataset, EnsembleConfig, Parameterization, Schedule, run_ensemble,
};
use ndarray::Array2;
use rand::Rng;
use rand_distr::StandardNormal;
use std::hint::black_box;
use std::time::Duration;

const N: usize = 1024;
const D: usize = 16;
const P: usize = 16;
const STEPS: usize = 200;
const RECORD_EVERY: usize = 10;
const SEEDS: usize = 1000;

/// See the module docs for the derivation.
fn flops_per_step() -> f64 {
    let (n, d, p) = (N as f64, D as f64, P as f64);
    let step = 4.0 * p * d * n + 6.0 * p * n + p * d;
    let records = (STEPS / RECORD_EVERY + 1) as f64;
    let record = 4.0 * p * p * n + 4.0 * p * p;
    step + records * record / STEPS as f64
}

fn ensemble(c: &mut Criterion) {
    let mut rng = keyed_rng(&[2024]);
    let x = Array2::from_shape_simple_fn((P, D), || rng.sample::<f64, _>(StandardNormal));
    let y = x.column(0).mapv(f64::tanh);
    let data = Dataset::new(x, y, Array2::zeros((0, D)), None).expect("valid toy data");
    let arch = Architecture {
        depth: 1,
        width: N,
        activation: Activation::Relu,
        parameterization: Parameterization::Mup,
        gamma0: 1.0,
        centered: false,
        residual: None,
        readout: Readout::Trained,
    };
    let schedule = Schedule {
        eta: 1.0,
        steps: STEPS,
        record_every: RECORD_EVERY,
    };
    let config = EnsembleConfig::new(arch, schedule, SEEDS);
    let network_steps = (SEEDS * STEPS) as u64;
    eprintln!(
        "ensemble bench: {} threads, {network_steps} network-steps, {:.0} FLOPs per step ({:.1} GFLOP per ensemble)",
        rayon::current_num_threads(),
        flops_per_step(),
        flops_per_step() * network_steps as f64 / 1e9
    );
    let mut group = c.benchmark_group("ensemble");
    // One ensemble takes seconds: the minimum of 10 flat samples of one iteration each
    // keeps the whole bench to a few minutes.
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(30))
        .throughput(Throughput::Elements(network_steps));
    group.bench_function("two_layer_relu_mup_n1024_d16_p16_t200_s1000", |b| {
        b.iter(|| black_box(run_ensemble(&data, &config).expect("benchmark ensemble runs")))
    });
    group.finish();
}

criterion_group!(benches, ensemble);
criterion_main!(benches);
