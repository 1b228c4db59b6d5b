//! Power-law data: the rich regime accelerates the loss power law (docs/proportional.md,
//! "Power-law data"). Deep linear μP networks (L = 1, ν = 4) on x ~ N(0, Λ), λ_k ∝ k^{−2},
//! isotropic teacher, P = 2D reused points, D = 256; the test loss is fitted by ℒ ∝ t^{−χ}
//! on steps 100..400, lazy (γ = 0.5) against rich (γ = 8), theory and finite-D networks.
//!
//! `cargo run --release -p dmft-validation --example power_law_exponents -- OUT_DIR [SEEDS]`
//!
//! Writes OUT_DIR/power_law.svg (log-log test loss: theory lines, simulation points) and
//! OUT_DIR/power_law.json (each exponent with its window and error), and prints them.

#[path = "../common/power_law.rs"]
mod power_law;

use dmft_report::Figure;
use power_law::{
    DIM, ETA, EXPONENT, REGIMES, STEPS, WINDOW, exponent, jackknife, mean_and_se, simulate, theory,
};
use std::path::PathBuf;

fn main() {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(args.next().unwrap_or_else(|| "power-law".into()));
    let seeds: usize = match args.next().map(|s| s.parse()) {
        None => 64,
        Some(Ok(s)) if s >= 3 => s,
        Some(_) => {
            eprintln!("error: SEEDS must be an integer ≥ 3 (a jackknife needs them)");
            std::process::exit(2);
        }
    };
    std::fs::create_dir_all(&out).unwrap();

    let mut fig = Figure::new(format!(
        "μP, L = 1, ν = 4, α = 2, λ_k ∝ k^-{EXPONENT}, D = {DIM}: lazy vs rich"
    ))
    .x_label("t = kη")
    .y_label("test loss")
    .log_x(true)
    .log_y(true);
    let mut sims = Vec::new();
    let mut rows = Vec::new();
    for (color, (regime, gamma)) in REGIMES.into_iter().enumerate() {
        let th = theory(gamma);
        let curves = simulate(gamma, seeds);
        let (mean, se) = mean_and_se(&curves);
        let (chi, chi_se) = jackknife(&[&curves], |m| exponent(&m[0], WINDOW));
        // Reference power laws over the window, drawn at half the theory's value at its start
        // so that they stay visible: the kernel exponent 1/2 and the rich asymptote 2/3.
        let (k0, k1) = WINDOW;
        let t_ref = [k0 as f64 * ETA, k1 as f64 * ETA];
        let chi_ref = if regime == "lazy" { 0.5 } else { 2.0 / 3.0 };
        let anchor = 0.5 * th.curves.test[k0];
        let reference = t_ref.map(|t| anchor * (t / t_ref[0]).powf(-chi_ref));
        fig = fig
            .line(format!("∝ t^-{chi_ref:.3}"), &t_ref, &reference)
            .color(color)
            .dashed(true);
        let shown: Vec<usize> = (20..=STEPS).step_by(20).collect();
        let t: Vec<f64> = shown.iter().map(|&k| k as f64 * ETA).collect();
        let pick = |v: &[f64]| shown.iter().map(|&k| v[k]).collect::<Vec<f64>>();
        fig = fig
            .line(
                format!("{regime} (γ = {gamma}) theory"),
                &th.curves.t.as_slice().unwrap()[1..],
                &th.curves.test.as_slice().unwrap()[1..],
            )
            .color(color)
            .points_with_errors(
                format!("{regime} sim, {seeds} seeds"),
                &t,
                &pick(&mean),
                &pick(&se),
            )
            .color(color);
        println!(
            "{regime} γ = {gamma}: theory χ = {:.4} (halves {:.4}, {:.4}: curvature {:.4}); simulation χ = {chi:.4} ± {chi_se:.4} (jackknife, {seeds} seeds)",
            th.whole,
            th.halves.0,
            th.halves.1,
            th.spread()
        );
        rows.push(format!(
            "{{\"regime\": \"{regime}\", \"gamma\": {gamma}, \"theory_exponent\": {}, \"theory_exponent_halves\": [{}, {}], \"sim_exponent\": {chi}, \"sim_exponent_se\": {chi_se}}}",
            th.whole, th.halves.0, th.halves.1
        ));
        sims.push(curves);
    }
    let (gain, gain_se) = jackknife(&[&sims[0], &sims[1]], |m| {
        exponent(&m[1], WINDOW) - exponent(&m[0], WINDOW)
    });
    println!(
        "simulation: rich − lazy exponent = {gain:.4} ± {gain_se:.4} (paired jackknife over seeds)"
    );
    fig.save(out.join("power_law.svg")).unwrap();
    let json = format!(
        "{{\"dim\": {DIM}, \"spectrum_exponent\": {EXPONENT}, \"eta\": {ETA}, \"steps\": {STEPS}, \"fit_window_steps\": [{}, {}], \"seeds\": {seeds}, \"fits\": [{}], \"sim_exponent_gain\": {gain}, \"sim_exponent_gain_se\": {gain_se}}}\n",
        WINDOW.0,
        WINDOW.1,
        rows.join(", ")
    );
    std::fs::write(out.join("power_law.json"), json).unwrap();
    println!("results in {}", out.display());
}
