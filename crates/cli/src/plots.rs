//! The figures of a results folder, built from a trajectory with `dmft-report`.

use crate::failure::Failure;
use crate::fluctuations::Fluctuations;
use dmft_data::Dataset;
use dmft_report::{Figure, Grid};
use dmft_runtime::Trajectory;
use dmft_runtime::mean_shift::MeanShift;
use ndarray::{Array1, Array2, Axis};

/// At most this many per-point curves per panel: beyond that the plot is unreadable anyway.
const MAX_CURVES: usize = 12;
/// Targets are drawn as reference lines only for this many points or fewer.
const MAX_TARGETS: usize = 8;
/// At most this many NTK eigenvalues (the largest) are drawn.
const MAX_EIGENVALUES: usize = 8;

const T_LABEL: &str = "t = kη";

/// Train (with its Monte Carlo error band when present) and test loss against t, log y.
pub fn loss(traj: &Trajectory) -> Figure {
    let t = &traj.t;
    let fig = Figure::new(format!("loss ({}, {})", traj.solver, traj.method))
        .x_label(T_LABEL)
        .y_label("loss")
        .log_y(true);
    let fig = match &traj.loss_se {
        Some(se) => fig.band("train ± SE", t, &traj.loss, se),
        None => fig.line("train", t, &traj.loss),
    };
    match &traj.test_loss {
        Some(test) => fig.line("test", t, test),
        None => fig,
    }
}

/// Train and test predictions against t side by side, with targets as dashed lines when
/// there are few points.
pub fn predictions(traj: &Trajectory, data: &Dataset) -> Grid {
    let train = panel(
        "train",
        &traj.t,
        &traj.f_train,
        traj.f_train_se.as_ref(),
        Some(&data.y_train),
    );
    let grid = Grid::new(2)
        .title("predictions f(x) during training")
        .figure(train);
    if data.n_test() == 0 {
        return grid;
    }
    grid.figure(panel(
        "test",
        &traj.t,
        &traj.f_test,
        traj.f_test_se.as_ref(),
        data.y_test.as_ref(),
    ))
}

fn panel(
    which: &str,
    t: &Array1<f64>,
    f: &Array2<f64>,
    se: Option<&Array2<f64>>,
    targets: Option<&Array1<f64>>,
) -> Figure {
    let n = f.ncols();
    let shown = n.min(MAX_CURVES);
    let with_targets = targets.filter(|_| n <= MAX_TARGETS);
    let mut title = if shown < n {
        format!("{which} (first {shown} of {n} points)")
    } else {
        which.to_string()
    };
    if with_targets.is_some() {
        title.push_str(", dashed: targets");
    }
    let mut fig = Figure::new(title).x_label(T_LABEL).y_label("f");
    for i in 0..shown {
        let fi = f.column(i);
        let label = format!("{which} {}", i + 1);
        fig = match se {
            Some(se) => fig.band(label, t, fi, se.column(i)),
            None => fig.line(label, t, fi),
        }
        .color(i);
        if let Some(y) = with_targets {
            fig = fig.hline("", y[i]).color(i);
        }
    }
    fig
}

/// The largest eigenvalues of the train NTK K(t) against t.
pub fn ntk_eigenvalues(traj: &Trajectory) -> Result<Figure, Failure> {
    let p = traj.ntk.shape()[1];
    let shown = p.min(MAX_EIGENVALUES);
    // Row k: eigenvalues of K(t_k), largest first.
    let mut eig = Array2::zeros((traj.t.len(), shown));
    for (k, kernel) in traj.ntk.axis_iter(Axis(0)).enumerate() {
        let values = dmft_runtime::linalg::eigvalsh(kernel)
            .map_err(|e| Failure::Runtime(format!("NTK eigenvalues at recorded step {k}: {e}")))?;
        for (j, v) in values.iter().rev().take(shown).enumerate() {
            eig[[k, j]] = *v;
        }
    }
    // A log axis only helps when the spectrum spans decades, and it would hide
    // non-positive eigenvalues, so use it only when all are clearly positive.
    let min = eig.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = eig.iter().cloned().fold(0.0f64, f64::max);
    let log = min > 0.0 && max / min > 30.0;
    let title = if shown < p {
        format!("NTK eigenvalues (largest {shown} of {p})")
    } else {
        "NTK eigenvalues".to_string()
    };
    let mut fig = Figure::new(title)
        .x_label(T_LABEL)
        .y_label("eigenvalue of K(t)")
        .log_y(log);
    for j in 0..shown {
        fig = fig.line(format!("λ{}", j + 1), &traj.t, eig.column(j));
    }
    // Gradient descent on the train loss is stable while η λ_max / P < 2; drawn once the
    // top eigenvalue comes within a factor 2 of the threshold (the edge of stability).
    let eta = traj
        .t
        .get(1)
        .zip(traj.steps.get(1))
        .map(|(t, &k)| t / k as f64);
    if let Some(eta) = eta.filter(|e| e.is_finite() && *e > 0.0) {
        let threshold = 2.0 * p as f64 / eta;
        if max >= 0.5 * threshold {
            fig = fig.hline("2P/η (edge of stability)", threshold);
        }
    }
    Ok(fig)
}

/// N·Var of train (solid) and test (dashed) predictions against t: the width-free
/// finite-width variance Σ_f(k,k) of the propagator.
pub fn fluctuations(fl: &Fluctuations) -> Figure {
    let all = fl.var_f_train().iter().chain(fl.var_f_test().iter());
    let positive = all.clone().all(|&v| v > 0.0);
    let mut fig = Figure::new("finite-width variance N·Var[f] (solid: train, dashed: test)")
        .x_label(T_LABEL)
        .y_label("N·Var[f]")
        .log_y(positive);
    for (which, var, dashed) in [
        ("train", fl.var_f_train(), false),
        ("test", fl.var_f_test(), true),
    ] {
        for i in 0..var.ncols().min(MAX_CURVES) {
            fig = fig
                .line(format!("{which} {}", i + 1), fl.t(), var.column(i))
                .color(i)
                .dashed(dashed);
        }
    }
    fig
}

/// The O(1/N) mean shift: N(E ℒ_N − ℒ∞) of the train loss (first colour) and
/// N(E f_N − f∞) per point.
pub fn mean_shift(t: &Array1<f64>, shift: &MeanShift) -> Figure {
    let mut fig = Figure::new(
        "O(1/N) mean shift (first colour: train loss ℒ; solid: train f, dashed: test f)",
    )
    .x_label(T_LABEL)
    .y_label("N(E ℒ_N − ℒ∞), N(E f_N − f∞)")
    .line("train loss", t, &shift.shift_loss)
    .color(0);
    for (which, m, dashed) in [
        ("train", &shift.shift_f_train, false),
        ("test", &shift.shift_f_test, true),
    ] {
        for i in 0..m.ncols().min(MAX_CURVES) {
            fig = fig
                .line(format!("{which} {}", i + 1), t, m.column(i))
                .color(i + 1)
                .dashed(dashed);
        }
    }
    fig
}

/// Loss curves of several runs in one figure: train solid, test dashed in the same colour.
pub fn loss_overlay(runs: &[(String, &Trajectory)]) -> Figure {
    let mut fig = Figure::new("loss (solid: train, dashed: test)")
        .x_label(T_LABEL)
        .y_label("loss")
        .log_y(true);
    for (i, (label, traj)) in runs.iter().enumerate() {
        fig = fig.line(label.as_str(), &traj.t, &traj.loss).color(i);
        if let Some(test) = &traj.test_loss {
            fig = fig.line("", &traj.t, test).color(i).dashed(true);
        }
    }
    fig
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::tests::{dataset, trajectory};

    #[test]
    fn figures_render() {
        let data = dataset();
        for with_se in [false, true] {
            let traj = trajectory(&data, with_se);
            let loss = loss(&traj).to_svg();
            assert!(loss.contains("train") && loss.contains("test"));
            assert_eq!(loss.contains("± SE"), with_se);
            let pred = predictions(&traj, &data).to_svg();
            assert!(pred.contains("dashed: targets"));
            let eig = ntk_eigenvalues(&traj).unwrap().to_svg();
            assert!(eig.contains("λ3") && !eig.contains("λ4"));
            let overlay = loss_overlay(&[("γ₀ = 1".into(), &traj)]).to_svg();
            assert!(overlay.contains("γ₀ = 1"));
        }
    }

    #[test]
    fn edge_of_stability_is_drawn_only_near_the_threshold() {
        let data = dataset();
        let mut traj = trajectory(&data, false);
        let (p, eta) = (traj.ntk.shape()[1] as f64, 0.5);
        let top = |traj: &Trajectory| {
            traj.ntk
                .axis_iter(Axis(0))
                .map(|k| *dmft_runtime::linalg::eigvalsh(k).unwrap().last().unwrap())
                .fold(0.0f64, f64::max)
        };
        let far = 2.0 * p / eta / top(&traj) / 4.0;
        traj.ntk.mapv_inplace(|v| v * far);
        assert!(
            !ntk_eigenvalues(&traj)
                .unwrap()
                .to_svg()
                .contains("edge of stability")
        );
        traj.ntk.mapv_inplace(|v| v * 3.0);
        assert!(
            ntk_eigenvalues(&traj)
                .unwrap()
                .to_svg()
                .contains("edge of stability")
        );
    }
}
