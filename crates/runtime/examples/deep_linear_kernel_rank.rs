//! Numerical rank of the two-time kernels Φ^ℓ and G^ℓ of the infinite-width deep linear
//! solution, against the exact bounds n + ℓT (Φ^ℓ over n = P + Q points and T + 1 steps) and
//! T + 1 (G^ℓ: g does not depend on the input); docs/fluctuations.md, "Cost":
//!
//!   cargo run --release -p dmft-runtime --example deep_linear_kernel_rank -- [P] [Q] [T] [L] [ETA]
//!
//! (defaults P = 10, Q = 0, T = 100, L = 3, η = 0.5; μP, γ₀ = 1, the teacher task of the
//! benchmarks).

use dmft_runtime::Readout;
use dmft_runtime::*;

fn main() {
    let arg = |i: usize, name: &str, default: f64| -> f64 {
        std::env::args().nth(i).map_or(default, |a| {
            a.parse()
                .unwrap_or_else(|_| panic!("{name} must be a number, got {a}"))
        })
    };
    let (p, q) = (arg(1, "P", 10.0) as usize, arg(2, "Q", 0.0) as usize);
    let (steps, depth, eta) = (
        arg(3, "T", 100.0) as usize,
        arg(4, "L", 3.0) as usize,
        arg(5, "ETA", 0.5),
    );
    let dim = 16;
    let problem = teacher_problem(p, q, dim, 7);
    let model = Model {
        depth,
        activation: Activation::Linear,
        parameterization: Parameterization::Mup,
        gamma0: 1.0,
        centered: false,
        residual: None,
        readout: Readout::Trained,
    };
    let schedule = Schedule {
        eta,
        steps,
        record_every: 1,
    };
    let solution = deep_linear::solve_full(&problem, &model, &schedule, &|_| {}).unwrap();
    let loss = &solution.trajectory.loss;
    println!("train loss {:.3e} → {:.3e}", loss[0], loss[steps]);
    for (l, layer) in solution.layers.iter().enumerate() {
        let bounds = [p + q + (l + 1) * steps, steps + 1];
        let kernels = [("Φ", &layer.phi_kernel), ("G", &layer.grad_kernel)];
        for ((name, kernel), bound) in kernels.into_iter().zip(bounds) {
            let eigenvalues = linalg::eigvalsh(kernel.view()).unwrap();
            let top = eigenvalues.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let rank = |tol: f64| eigenvalues.iter().filter(|v| v.abs() > tol * top).count();
            println!(
                "layer {} {name}: size {}, rank at 1e-8 / 1e-11 of the top eigenvalue {} / {}, bound {bound}",
                l + 1,
                kernel.nrows(),
                rank(1e-8),
                rank(1e-11),
            );
        }
    }
}
