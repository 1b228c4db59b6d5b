//! Figures of the proportional regime (docs/proportional.md), theory lines with finite-D
//! simulation points (D = 256, seed means ± SE):
//! `cargo run --release -p dmft-validation --example proportional_figures -- OUT_DIR`
//!
//! 1. wider is better (μP): test loss vs t for ν = 0.5 .. 4;
//! 2. learning-rate transfer: test loss after T steps vs η for ν = 0.5 .. 8, μP vs NTK,
//!    with the optimal η of each width printed (theory, and simulation for ν ≤ 4);
//! 3. depth: residual networks with and without the 1/√L branch scale, L = 2 .. 16 (theory);
//! 4. repeated data (α = 1, full batch) vs one-pass SGD (α_B = 1): same data per step.

use dmft_report::{Figure, Grid};
use dmft_runtime::Parameterization;
use dmft_runtime::proportional::{DataUse, Setting, Spectrum, solve};
use dmft_sim::proportional::run_ensemble;
use std::path::PathBuf;

const DIM: usize = 256;
const SEEDS: usize = 16;

fn base() -> Setting {
    Setting {
        depth: 2,
        nu: 1.0,
        parameterization: Parameterization::Mup,
        gamma: 1.0,
        residual: None,
        data: DataUse::Repeated { alpha: 2.0 },
        spectrum: Spectrum::isotropic(),
        eta: 0.02,
        steps: 150,
    }
}

/// Theory line and simulation points (every `every` steps) of the test loss.
fn curves(fig: Figure, s: &Setting, label: &str, color: usize, every: usize) -> Figure {
    let th = solve(s, &|_| {}).unwrap();
    let sim = run_ensemble(s, DIM, SEEDS, 3).unwrap();
    let ks: Vec<usize> = (0..=s.steps).step_by(every).collect();
    let pick = |a: &ndarray::Array1<f64>| ks.iter().map(|&k| a[k]).collect::<Vec<f64>>();
    let t: Vec<f64> = ks.iter().map(|&k| k as f64 * s.eta).collect();
    fig.line(format!("{label} theory"), &th.t, &th.test)
        .color(color)
        .points_with_errors(
            format!("{label} sim D={DIM}"),
            &t,
            &pick(&sim.test),
            &pick(&sim.test_se),
        )
        .color(color)
}

fn wider_is_better() -> Figure {
    let mut fig = Figure::new("μP, L = 2, α = 2, γ = 1: wider is better")
        .x_label("t = kη")
        .y_label("test loss")
        .log_y(true);
    for (i, nu) in [0.5, 1.0, 2.0, 4.0].into_iter().enumerate() {
        let s = Setting { nu, ..base() };
        fig = curves(fig, &s, &format!("ν = {nu}"), i, 10);
    }
    fig
}

/// Final test loss vs η; returns the figure and prints the optimum per width.
fn transfer(par: Parameterization) -> Figure {
    let etas: Vec<f64> = (0..14).map(|i| 0.01 * 1.35f64.powi(i)).collect();
    let mut fig = Figure::new(format!(
        "{par}: test loss after 40 steps vs η (L = 2, α = 2)"
    ))
    .x_label("η")
    .y_label("test loss")
    .log_x(true)
    .log_y(true);
    for (c, nu) in [0.5, 1.0, 2.0, 4.0, 8.0].into_iter().enumerate() {
        let run = |eta: f64| Setting {
            nu,
            eta,
            steps: 40,
            parameterization: par,
            ..base()
        };
        let (mut xs, mut th) = (Vec::new(), Vec::new());
        for &eta in &etas {
            if let Ok(c) = solve(&run(eta), &|_| {}) {
                xs.push(eta);
                th.push(c.test[40]);
            }
        }
        let best = |x: &[f64], y: &[f64]| {
            x[y.iter()
                .enumerate()
                .min_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0]
        };
        let mut line = format!("{par} ν = {nu}: theory optimum η = {:.4}", best(&xs, &th));
        fig = fig.line(format!("ν = {nu} theory"), &xs, &th).color(c);
        if nu <= 4.0 {
            let (mut sx, mut sy, mut se) = (Vec::new(), Vec::new(), Vec::new());
            for &eta in &xs {
                if let Ok(sim) = run_ensemble(&run(eta), DIM, 8, 5) {
                    sx.push(eta);
                    sy.push(sim.test[40]);
                    se.push(sim.test_se[40]);
                }
            }
            line += &format!(
                ", simulation (D = {DIM}, 8 seeds) optimum η = {:.4}",
                best(&sx, &sy)
            );
            fig = fig
                .points_with_errors(format!("ν = {nu} sim"), &sx, &sy, &se)
                .color(c);
        }
        println!("{line}");
    }
    fig
}

fn depth() -> Figure {
    let mut fig =
        Figure::new("residual networks, μP, ν = 1, α = 2 (theory): β/√L vs β = 1 per branch")
            .x_label("t = kη")
            .y_label("test loss")
            .log_y(true);
    for (c, depth) in [2usize, 4, 8, 16].into_iter().enumerate() {
        let scaled = Setting {
            depth,
            residual: Some(1.0),
            steps: 100,
            ..base()
        };
        // Unscaled branches: β = √L cancels the 1/√L.
        let unscaled = Setting {
            residual: Some((depth as f64).sqrt()),
            ..scaled.clone()
        };
        for (s, name, dashed) in [(scaled, "1/√L", false), (unscaled, "no 1/√L", true)] {
            match solve(&s, &|_| {}) {
                Ok(th) => {
                    println!(
                        "depth L = {depth}, {name}: final test loss {:.4e}",
                        th.test[s.steps]
                    );
                    fig = fig
                        .line(format!("L = {depth}, {name}"), &th.t, &th.test)
                        .color(c)
                        .dashed(dashed);
                }
                Err(e) => println!("depth L = {depth}, {name}: {e}"),
            }
        }
    }
    fig
}

fn repeated_vs_one_pass() -> Figure {
    let fig = Figure::new("μP, L = 2, ν = 1: reused data (α = 1) vs one pass (α_B = 1)")
        .x_label("t = kη")
        .y_label("loss")
        .log_y(true);
    let gd = Setting {
        data: DataUse::Repeated { alpha: 1.0 },
        ..base()
    };
    let sgd = Setting {
        data: DataUse::OnePass { batch_ratio: 1.0 },
        ..base()
    };
    let th = solve(&gd, &|_| {}).unwrap();
    let fig = fig
        .line("reused: train (theory)", &th.t, &th.train)
        .color(0)
        .dashed(true);
    let fig = curves(fig, &gd, "reused: test", 0, 10);
    curves(fig, &sgd, "one pass: test", 1, 10)
}

fn main() {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "proportional-figures".into()),
    );
    std::fs::create_dir_all(&out).unwrap();
    let save = |name: &str, svg: String| std::fs::write(out.join(name), svg).unwrap();
    save("wider_is_better.svg", wider_is_better().to_svg());
    save(
        "lr_transfer.svg",
        Grid::new(2)
            .title("optimal learning rate across widths")
            .figure(transfer(Parameterization::Mup))
            .figure(transfer(Parameterization::Ntk))
            .to_svg(),
    );
    save("depth.svg", depth().to_svg());
    save("repeated_vs_one_pass.svg", repeated_vs_one_pass().to_svg());
    println!("figures in {}", out.display());
}
