//! The sweep's figures (docs/sweep.md, "Figures"). Every mean is drawn with its standard
//! error and every seed variance with the standard error of a variance (`compare`).
//!
//! Colours: widths take palette colours in increasing width in figures 1–3 and 5, ensemble
//! sizes in figure 4; the infinite-width theory is always black and dashed.

use super::compare::{self, Points, Probe};
use super::{Sweep, WidthRun};
use dmft_report::{Figure, Grid};
use ndarray::{Array1, Zip};

const T_LABEL: &str = "t = kη";
/// Palette index of the infinite-width curves (black).
const THEORY_COLOR: usize = 6;

/// A figure of the report: its file stem under figures/ and the SVG document.
pub struct Rendered {
    pub name: &'static str,
    pub svg: String,
}

fn width_label(width: usize) -> String {
    format!("N = {width}")
}

/// Figure 1: the seed-mean train and test loss of every width over t, with SE bands, over
/// the infinite-width loss (with its Monte Carlo SE band when sampled).
pub fn loss(sweep: &Sweep) -> Rendered {
    let mut grid = Grid::new(2).title("loss across widths (mean over seeds ± SE)");
    for points in [Points::Train, Points::Test] {
        let mut fig = Figure::new(format!("{} loss", points.name()))
            .x_label(T_LABEL)
            .y_label("loss")
            .log_y(true);
        let mut any = false;
        for (i, run) in sweep.widths.iter().enumerate() {
            let s = &run.stats;
            let moments = match points {
                Points::Train => Some(&s.loss),
                Points::Test => s.test_loss.as_ref(),
            };
            if let Some(m) = moments {
                fig = fig
                    .band(width_label(s.width), &s.t, &m.mean, &m.se_mean())
                    .color(i);
                any = true;
            }
        }
        if let Some(theory) = &sweep.theory {
            let traj = &theory.trajectory;
            let label = "N = ∞ (theory)";
            fig = match points {
                Points::Train => match &traj.loss_se {
                    Some(se) => fig.band(label, &traj.t, &traj.loss, se),
                    None => fig.line(label, &traj.t, &traj.loss),
                },
                // The solvers give no error for the test loss; its f_test errors are
                // figure 3's business.
                Points::Test => match &traj.test_loss {
                    Some(test) => fig.line(label, &traj.t, test),
                    None => fig,
                },
            }
            .color(THEORY_COLOR)
            .dashed(true);
        }
        if any {
            grid = grid.figure(fig);
        }
    }
    Rendered {
        name: "loss",
        svg: grid.to_svg(),
    }
}

fn probe_title(probe: &Probe) -> String {
    format!("{} point {}", probe.points.name(), probe.index + 1)
}

/// Figure 2: N·Var_seeds[f(x)] over t for a few points, with the SE of a variance. At
/// O(1/N) fluctuations the curves of all widths collapse, onto the propagator's Σ_f when
/// it was computed.
pub fn variance(sweep: &Sweep) -> Rendered {
    let title = if sweep.fluctuations.is_some() {
        "N · Var over seeds of f(x) (± SE), over the propagator Σ_f"
    } else {
        "N · Var over seeds of f(x) (± SE)"
    };
    let mut grid = Grid::new(2).title(title);
    for probe in compare::probes(sweep.data.n_train(), sweep.data.n_test()) {
        let mut fig = Figure::new(probe_title(&probe))
            .x_label(T_LABEL)
            .y_label("N · Var[f]");
        for (i, run) in sweep.widths.iter().enumerate() {
            let s = &run.stats;
            let n = s.width as f64;
            let m = compare::sim_f(s, probe.points);
            let var = m.var.column(probe.index).mapv(|v| n * v);
            let se = m.se_var().column(probe.index).mapv(|v| n * v);
            fig = fig.band(width_label(s.width), &s.t, &var, &se).color(i);
        }
        if let Some(fl) = &sweep.fluctuations {
            let sigma = compare::propagator_var(fl, probe.points).column(probe.index);
            fig = fig
                .line("Σ_f (theory)", fl.t(), sigma)
                .color(THEORY_COLOR)
                .dashed(true);
        }
        grid = grid.figure(fig);
    }
    Rendered {
        name: "variance",
        svg: grid.to_svg(),
    }
}

/// Figure 2b (needs the propagator): N·Var over seeds of the train loss and of the top NTK
/// eigenvalue (± SE) for every width, over the propagator's var_loss and var_ntk_top.
pub fn loss_ntk_variance(sweep: &Sweep) -> Option<Rendered> {
    let fl = sweep.fluctuations.as_ref()?;
    let mut loss = Figure::new("train loss")
        .x_label(T_LABEL)
        .y_label("N · Var[ℒ]");
    let mut top = Figure::new("top NTK eigenvalue")
        .x_label(T_LABEL)
        .y_label("N · Var[λ_max]");
    for (i, run) in sweep.widths.iter().enumerate() {
        let s = &run.stats;
        let n = s.width as f64;
        loss = loss
            .band(
                width_label(s.width),
                &s.t,
                &(&s.loss.var * n),
                &(s.loss.se_var() * n),
            )
            .color(i);
        top = top
            .band(
                width_label(s.width),
                &s.t,
                &(&s.ntk_top.var * n),
                &(s.ntk_top.se_var() * n),
            )
            .color(i);
    }
    let k = fl.ntk();
    loss = loss
        .line("propagator (theory)", fl.t(), fl.var_loss())
        .color(THEORY_COLOR)
        .dashed(true);
    top = top
        .line("propagator (theory)", fl.t(), k.var_ntk_top)
        .color(THEORY_COLOR)
        .dashed(true);
    Some(Rendered {
        name: "loss_ntk_variance",
        svg: Grid::new(2)
            .title("N · Var over seeds of the loss and of the top NTK eigenvalue (± SE), over the propagator")
            .figure(loss)
            .figure(top)
            .to_svg(),
    })
}

/// Figure 3 (needs the theory): N·(E f_N − f∞) over t for a few points, with SE bands
/// N·sqrt(SE_N² + SE_∞²).
pub fn mean_deviation(sweep: &Sweep) -> Option<Rendered> {
    let theory = &sweep.theory.as_ref()?.trajectory;
    let mut grid = Grid::new(2).title("N · (E f_N − f∞) (± SE)");
    for probe in compare::probes(sweep.data.n_train(), sweep.data.n_test()) {
        let mut fig = Figure::new(probe_title(&probe))
            .x_label(T_LABEL)
            .y_label("N · (E f_N − f∞)")
            .hline("", 0.0)
            .color(THEORY_COLOR);
        if let Some(m) = sweep
            .fluctuations
            .as_ref()
            .and_then(|f| f.mean_shift.as_ref())
        {
            let m = match probe.points {
                Points::Train => &m.shift_f_train,
                Points::Test => &m.shift_f_test,
            };
            fig = fig
                .line("m (theory)", &theory.t, m.column(probe.index))
                .color(THEORY_COLOR)
                .dashed(true);
        }
        for (i, run) in sweep.widths.iter().enumerate() {
            let s = &run.stats;
            let scaled = compare::scaled_deviation(s, theory, probe.points);
            fig = fig
                .band(
                    width_label(s.width),
                    &s.t,
                    scaled.value.column(probe.index),
                    scaled.se.column(probe.index),
                )
                .color(i);
        }
        grid = grid.figure(fig);
    }
    Some(Rendered {
        name: "mean_deviation",
        svg: grid.to_svg(),
    })
}

/// `a / b` and its standard error for independent estimates: the relative errors add in
/// quadrature. Entries with b = 0 are NaN, which figures skip.
fn ratio(a: &Array1<f64>, se_a: &Array1<f64>, b: &Array1<f64>, se_b: &Array1<f64>) -> Ratio {
    let value: Array1<f64> = a / b;
    let se = Zip::from(&value)
        .and(a)
        .and(se_a)
        .and(b)
        .and(se_b)
        .map_collect(|r, a, sa, b, sb| r.abs() * (sa / a).hypot(sb / b));
    Ratio { value, se }
}

struct Ratio {
    value: Array1<f64>,
    se: Array1<f64>,
}

/// A log axis only when ratios span more than a decade: near 1 it would show no ticks.
fn ratio_axis_is_log(ratios: &[&Ratio]) -> bool {
    let (lo, hi) = ratios
        .iter()
        .flat_map(|r| r.value.iter())
        .filter(|v| v.is_finite() && **v > 0.0)
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    hi / lo > 10.0
}

/// Figure 4 (needs ensemble sizes with at least two groups): the loss of the predictor
/// averaged over E seeds, divided by the mean loss of single networks of the widest width
/// (test loss when test targets exist, else train loss). The first panel shows the last
/// step against N, one curve per E; then one panel per width over t, with the theory's
/// ratio for reference. Ratios rather than losses, because the effect is a few per cent of
/// a loss that falls over decades.
pub fn ensembles(sweep: &Sweep) -> Option<Rendered> {
    let widest = &sweep.widest().stats;
    let use_test = widest.test_loss.is_some();
    let which = if use_test { "test" } else { "train" };
    let single = if use_test {
        widest.test_loss.as_ref()?
    } else {
        &widest.loss
    };
    let (base, base_se) = (&single.mean, single.se_mean());
    let y_label = format!("{which} loss ÷ one network at N = {}", widest.width);
    let sizes: Vec<usize> = {
        let mut all: Vec<usize> = sweep
            .widths
            .iter()
            .flat_map(|r| compare::ensemble_rows(&r.stats).into_iter().map(|e| e.size))
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    };
    if sizes.is_empty() {
        return None;
    }
    let color = |size: usize| sizes.iter().position(|&s| s == size).unwrap_or(0);
    // Ratio over t for every (width, E) with data.
    let mut curves: Vec<(usize, usize, &Array1<f64>, Ratio)> = Vec::new();
    for run in &sweep.widths {
        let s = &run.stats;
        for e in compare::ensemble_rows(s) {
            if s.width == widest.width && e.size == 1 {
                // The reference itself: its ratio is 1 by construction.
                continue;
            }
            let m = if use_test {
                e.test_loss.as_ref()
            } else {
                e.loss.as_ref()
            };
            if let Some(m) = m {
                curves.push((
                    s.width,
                    e.size,
                    &s.t,
                    ratio(&m.mean, &m.se_mean(), base, &base_se),
                ));
            }
        }
    }
    let theory = sweep.theory.as_ref().and_then(|th| {
        let traj = &th.trajectory;
        let (curve, se) = if use_test {
            (traj.test_loss.as_ref()?, Array1::zeros(traj.t.len()))
        } else {
            let se = traj
                .loss_se
                .clone()
                .unwrap_or_else(|| Array1::zeros(traj.t.len()));
            (&traj.loss, se)
        };
        Some((&traj.t, ratio(curve, &se, base, &base_se)))
    });
    let mut all: Vec<&Ratio> = curves.iter().map(|c| &c.3).collect();
    all.extend(theory.as_ref().map(|(_, r)| r));
    let log = ratio_axis_is_log(&all);

    let mut summary = Figure::new("last step, against width")
        .x_label("width N")
        .y_label(y_label.clone())
        .log_x(true)
        .log_y(log)
        .hline(format!("one network, N = {}", widest.width), 1.0)
        .color(THEORY_COLOR);
    for &size in &sizes {
        let picked: Vec<&(usize, usize, &Array1<f64>, Ratio)> =
            curves.iter().filter(|c| c.1 == size).collect();
        let n: Vec<f64> = picked.iter().map(|c| c.0 as f64).collect();
        let last = |a: &Array1<f64>| a[a.len() - 1];
        let y: Vec<f64> = picked.iter().map(|c| last(&c.3.value)).collect();
        let err: Vec<f64> = picked.iter().map(|c| last(&c.3.se)).collect();
        summary = summary
            .line("", &n, &y)
            .color(color(size))
            .points_with_errors(format!("E = {size}"), &n, &y, &err)
            .color(color(size));
    }
    let mut grid = Grid::new(2)
        .title(format!(
            "{which} loss of the E-seed average against one network of width {} (± SE)",
            widest.width
        ))
        .figure(summary);
    for run in &sweep.widths {
        let width = run.stats.width;
        let mut fig = Figure::new(width_label(width))
            .x_label(T_LABEL)
            .y_label(y_label.clone())
            .log_y(log)
            .hline(format!("one network, N = {}", widest.width), 1.0)
            .color(THEORY_COLOR);
        for (_, size, t, r) in curves.iter().filter(|c| c.0 == width) {
            fig = fig
                .band(format!("E = {size}"), *t, &r.value, &r.se)
                .color(color(*size));
        }
        if let Some((t, r)) = &theory {
            fig = fig
                .band("N = ∞ (theory)", *t, &r.value, &r.se)
                .color(THEORY_COLOR)
                .dashed(true);
        }
        grid = grid.figure(fig);
    }
    Some(Rendered {
        name: "ensembles",
        svg: grid.to_svg(),
    })
}

/// The reference of figure 5: the theory when it ran, else the widest width.
pub enum Reference<'a> {
    Theory(&'a dmft_runtime::Trajectory),
    Widest(&'a WidthRun),
}

pub fn reference<'a>(sweep: &'a Sweep) -> Reference<'a> {
    match &sweep.theory {
        Some(theory) => Reference::Theory(&theory.trajectory),
        None => Reference::Widest(sweep.widest()),
    }
}

/// The points figure 5 compares: the test points, or the training points without any.
pub fn pointwise_points(sweep: &Sweep) -> Points {
    if sweep.data.n_test() > 0 {
        Points::Test
    } else {
        Points::Train
    }
}

/// Figure 5: final-time E f_N(x) of each width against the reference's f(x) on every test
/// point, both with error bars, and the line y = x. None when the only width is its own
/// reference.
pub fn pointwise(sweep: &Sweep) -> Option<Rendered> {
    let points = pointwise_points(sweep);
    let (ref_label, ref_f, ref_se) = match reference(sweep) {
        Reference::Theory(traj) => {
            let (f, se) = compare::theory_f(traj, points);
            let last = f.nrows() - 1;
            (
                "f∞(x), theory".to_string(),
                f.row(last).to_owned(),
                se.row(last).to_owned(),
            )
        }
        Reference::Widest(run) => {
            let m = compare::sim_f(&run.stats, points);
            let last = m.mean.nrows() - 1;
            (
                format!("E f(x) at N = {}", run.stats.width),
                m.mean.row(last).to_owned(),
                m.se_mean().row(last).to_owned(),
            )
        }
    };
    let compared: Vec<(usize, &WidthRun)> = match reference(sweep) {
        Reference::Theory(_) => sweep.widths.iter().enumerate().collect(),
        Reference::Widest(_) => sweep
            .widths
            .iter()
            .enumerate()
            .rev()
            .skip(1)
            .rev()
            .collect(),
    };
    if compared.is_empty() {
        return None;
    }
    let finals = |run: &WidthRun| {
        let m = compare::sim_f(&run.stats, points);
        m.mean.row(m.mean.nrows() - 1).to_owned()
    };
    // The y = x line spans every plotted value, on either axis.
    let all = ref_f
        .iter()
        .cloned()
        .chain(compared.iter().flat_map(|(_, run)| finals(run)));
    let (lo, hi) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let mut grid = Grid::new(3).title(format!(
        "final-time predictions on the {} points (± SE)",
        points.name()
    ));
    for (i, run) in compared {
        let s = &run.stats;
        let m = compare::sim_f(s, points);
        let last = m.mean.nrows() - 1;
        let fig = Figure::new(width_label(s.width))
            .x_label(ref_label.clone())
            .y_label(format!("E f(x) at N = {}", s.width))
            .line("y = x", &[lo, hi], &[lo, hi])
            .color(THEORY_COLOR)
            .dashed(true)
            .points_with_xy_errors(
                "seed mean ± SE",
                &ref_f,
                &finals(run),
                &ref_se,
                m.se_mean().row(last),
            )
            .color(i);
        grid = grid.figure(fig);
    }
    Some(Rendered {
        name: "pointwise",
        svg: grid.to_svg(),
    })
}
