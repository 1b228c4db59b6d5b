//! report.md: the set-up, the per-width outcome (including diverged seeds), each figure
//! with what it shows and how its error bars are computed, and the config echo.

use super::Sweep;
use super::compare::{self, DeviationSummary};
use super::figures::{self, Reference};
use crate::config::{DataKind, TrainingChoice};
use std::fmt::Write as _;

/// Builds report.md. `figures` are the stems of the SVGs written under figures/; a figure
/// that was not drawn is explained instead of linked.
pub fn markdown(sweep: &Sweep, figures: &[&str], deviations: &[DeviationSummary]) -> String {
    let mut md = String::new();
    let c = sweep.config;
    let widest = &sweep.widest().stats;
    let t_rec = widest.t.len();
    let widths = sweep
        .widths
        .iter()
        .map(|r| r.stats.width.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(
        md,
        "# Finite-width networks against the infinite-width theory\n\n\
         `dmft sweep {}` (dmft {}): widths N = {widths}, {} seeds each, on {} threads in {:.1} s.\n",
        sweep.source,
        env!("CARGO_PKG_VERSION"),
        c.sim.seeds,
        sweep.threads,
        sweep.wall_time
    );

    md.push_str("## Set-up\n\n| | |\n| --- | --- |\n");
    let _ = writeln!(md, "| data | {} |", data_description(sweep));
    let _ = writeln!(
        md,
        "| sizes | P = {} training points, Q = {} test points, D = {} |",
        sweep.data.n_train(),
        sweep.data.n_test(),
        sweep.data.dim()
    );
    let m = &c.model;
    let _ = writeln!(
        md,
        "| network | depth L = {}, {} activation, {} parameterization, γ₀ = {}{} |",
        m.depth,
        m.activation,
        m.parameterization,
        m.gamma0,
        if m.centered {
            ", centered (f − f₀)"
        } else {
            ""
        }
    );
    let training = match c.sim.training {
        TrainingChoice::Gd => "full-batch gradient descent".to_string(),
        TrainingChoice::OnlineSgd => format!(
            "online SGD, a fresh batch of {} teacher-labelled points per step (losses and predictions are measured on the P fixed points)",
            c.sim.batch
        ),
    };
    let _ = writeln!(
        md,
        "| training | {training}, η = {}, {} steps, recorded every {} (T_rec = {t_rec}) |",
        c.train.eta, c.train.steps, c.train.record_every
    );
    let _ = writeln!(
        md,
        "| seeds | S = {} per width, base seed {}, ensemble sizes E = {:?}, divergence threshold {:e} |",
        c.sim.seeds, c.sim.base_seed, c.sim.ensemble_sizes, c.sim.divergence_threshold
    );
    match &sweep.theory {
        Some(th) => {
            let _ = writeln!(
                md,
                "| theory | {} solver, {} ({:.1} s) |",
                th.trajectory.solver, th.trajectory.method, th.wall_time
            );
        }
        None => md.push_str("| theory | not run (sim.theory = false) |\n"),
    }

    md.push_str(
        "\n## Widths\n\nLosses at the last step are means over the converged seeds ± their standard error.\n\n\
         | N | seeds converged | train loss | test loss | wall time |\n| ---: | ---: | ---: | ---: | ---: |\n",
    );
    for run in &sweep.widths {
        let s = &run.stats;
        let last = s.t.len() - 1;
        let test = s.test_loss.as_ref().map_or("–".to_string(), |m| {
            format!("{:.4e} ± {:.1e}", m.mean[last], m.se_mean()[last])
        });
        let _ = writeln!(
            md,
            "| {} | {}/{} | {:.4e} ± {:.1e} | {test} | {:.1} s |",
            s.width,
            s.converged,
            s.seeds,
            s.loss.mean[last],
            s.loss.se_mean()[last],
            run.wall_time
        );
    }
    if let Some(th) = &sweep.theory {
        let traj = &th.trajectory;
        let last = traj.t.len() - 1;
        let se = traj
            .loss_se
            .as_ref()
            .map_or(String::new(), |s| format!(" ± {:.1e}", s[last]));
        let test = traj
            .test_loss
            .as_ref()
            .map_or("–".to_string(), |l| format!("{:.4e}", l[last]));
        let _ = writeln!(
            md,
            "| ∞ (theory) | – | {:.4e}{se} | {test} | {:.1} s |",
            traj.loss[last], th.wall_time
        );
    }
    md.push('\n');
    let diverged: Vec<String> = sweep
        .widths
        .iter()
        .filter(|r| !r.stats.diverged.is_empty())
        .map(|r| {
            let list = r
                .stats
                .diverged
                .iter()
                .map(|d| format!("seed {} at step {} (loss {:.3e})", d.seed, d.step, d.loss))
                .collect::<Vec<_>>()
                .join(", ");
            format!("- N = {}: {list}", r.stats.width)
        })
        .collect();
    if diverged.is_empty() {
        md.push_str("Diverged seeds: none.\n\n");
    } else {
        let _ = writeln!(
            md,
            "Diverged seeds (stopped when the loss exceeded sim.divergence_threshold or a value overflowed, and left out of every statistic):\n\n{}\n",
            diverged.join("\n")
        );
    }

    md.push_str("## Statistics\n\n");
    md.push_str(
        "Every curve of a finite width is a mean over its S converged seeds: the band or bar is one standard error, \
         sqrt(Var/S) for a mean and, for a seed variance, the error from the fourth central moment m₄, \
         sqrt((m₄ − s⁴(S−3)/(S−1))/S). Differences of independent estimates (network and theory) carry \
         the root sum of squares of their errors. ",
    );
    md.push_str(match &sweep.theory {
        Some(th) if th.trajectory.loss_se.is_some() => {
            "The theory was sampled by Monte Carlo: its error is the spread of 16 independent replicas (docs/dmft.md); \
             the solvers give none for the test loss, whose curve is drawn without a band.\n\n"
        }
        Some(_) => "The theory's method is deterministic, so its curves carry no error.\n\n",
        None => "\n\n",
    });

    section(
        &mut md,
        figures,
        "loss",
        "1. Loss across widths",
        "The train and test loss of single networks, averaged over seeds, for every width, over the infinite-width \
         curve. In μP the curves approach the theory as N grows; the remaining gap at a finite width is the \
         O(1/N) bias of the loss (the seed variance of f adds (1/2P)Σ Var f to the expected loss).",
        None,
    );
    let variance_text = match &sweep.fluctuations {
        Some(_) => {
            "The variance over seeds of the prediction on a few points, times N. If fluctuations are O(1/N), \
             as the theory of finite-width corrections predicts, the curves of all widths collapse onto one: the \
             propagator Σ_f(t, t) of Bordelon & Pehlevan (2023), drawn black and dashed (`theory/var_f_*.npy`). \
             Where the variance collapses (late times on training points) the O(1/N) correction to N·Var is \
             largest relative to the curve itself, so narrow widths sit above it there. Over the recorded \
             times and points, in standard errors of the seed variance:"
        }
        None => {
            "The variance over seeds of the prediction on a few points, times N. If fluctuations are O(1/N), as \
             the theory of finite-width corrections predicts, the curves of all widths collapse onto one. The \
             theory's limit curve (the propagator Σ_f) is drawn when `theory.fluctuations = true` (two-layer \
             networks, and deep linear μP ones)."
        }
    };
    let variance_lines = sweep.fluctuations.as_ref().map(|fl| {
        sweep
            .widths
            .iter()
            .map(|run| {
                let v = compare::variance_deviation(&run.stats, fl);
                let fmt = |x: Option<f64>| x.map_or("–".to_string(), |x| format!("{x:.2}"));
                let others = [
                    ("train loss", compare::loss_variance_deviation(&run.stats, fl)),
                    ("NTK entries and top eigenvalue", compare::ntk_variance_deviation(&run.stats, fl)),
                ]
                .iter()
                .map(|(what, d)| {
                    format!(
                        "{what}: median {}, largest {} ({} compared)",
                        fmt(d.median_abs_z),
                        fmt(d.max_abs_z),
                        d.compared
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
                format!(
                    "- N = {}: median |N·Var − Σ_f| / SE = {}, largest {}; largest relative deviation {} \
                     ({} (t, x) compared, {} left out where Σ_f < {} of its peak). In SE likewise, {}",
                    run.stats.width,
                    fmt(v.median_abs_z),
                    fmt(v.max_abs_z),
                    fmt(v.max_relative),
                    v.compared,
                    v.collapsed,
                    compare::COLLAPSED,
                    others
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    section(
        &mut md,
        figures,
        "variance",
        "2. Fluctuations: N · Var[f(x)]",
        variance_text,
        variance_lines.as_deref(),
    );
    section(
        &mut md,
        figures,
        "loss_ntk_variance",
        "2b. Fluctuations of the loss and of the top NTK eigenvalue",
        "The same collapse for the train loss and the top eigenvalue of the train NTK: N·Var over seeds for \
         every width, over the propagator's `theory/var_loss.npy` and `theory/var_ntk_top.npy` (the eigenvalue's \
         to first order, valid while its gap to the second eigenvalue exceeds its spread). The comparisons in \
         standard errors, with every train NTK entry, are listed under figure 2.",
        None,
    );
    let deviation_text = if deviations.is_empty() {
        None
    } else {
        Some(
            deviations
                .iter()
                .map(|d| format!("- {}", deviation_sentence(d)))
                .collect::<Vec<_>>()
                .join("\n"),
        )
    };
    section(
        &mut md,
        figures,
        "mean_deviation",
        "3. Mean correction: N · (E f_N − f∞)",
        "The deviation of the seed-mean prediction from the infinite-width prediction, times N, on the same points. \
         An O(1/N) bias makes these curves agree across widths; a deviation that grows with N would be an error of \
         the theory (or of its sampling, whose error bars grow as N·SE∞). With `theory.mean_shift = true` the \
         theory's shift m = N(E f_N − f∞) is drawn dashed and the deviations are also compared with it. Over \
         every recorded step and every train and test point:",
        deviation_text.as_deref(),
    );
    let widest_width = widest.width;
    let ensemble_text = format!(
        "The loss of the predictor averaged over E independently initialized networks of one width, \
         for each ensemble size, against single networks of the widest width (N = {widest_width}) and the theory. \
         Averaging removes the seed variance but not the mean's O(1/N) bias, so an ensemble of narrow networks \
         levels off above the wide network when that bias matters (the \"bias of narrower width\"). Each curve's \
         error is the standard error over the disjoint groups of E seeds; ensemble_loss.npy holds the numbers."
    );
    section(
        &mut md,
        figures,
        "ensembles",
        "4. Ensembles of narrow networks against one wide network",
        &ensemble_text,
        None,
    );
    let points = figures::pointwise_points(sweep).name();
    let reference = match figures::reference(sweep) {
        Reference::Theory(_) => "the infinite-width theory".to_string(),
        Reference::Widest(run) => format!("the widest width, N = {}", run.stats.width),
    };
    section(
        &mut md,
        figures,
        "pointwise",
        "5. Pointwise agreement across widths",
        &format!(
            "The seed-mean prediction at the last step on every {points} point, for each width, against \
             {reference}, with error bars on both axes. Points on the dashed line y = x agree; consistent \
             feature-learning networks stay on it as the width changes."
        ),
        None,
    );

    let config = toml::to_string(c).unwrap_or_else(|e| format!("# cannot echo the config: {e}\n"));
    let _ = write!(
        md,
        "## Config (every key with its effective value)\n\n```toml\n{config}```\n"
    );
    md
}

/// A numbered report section: the figure when it was drawn, else why not.
fn section(
    md: &mut String,
    drawn: &[&str],
    name: &str,
    title: &str,
    text: &str,
    after: Option<&str>,
) {
    let _ = writeln!(md, "## {title}\n");
    if drawn.contains(&name) {
        let _ = writeln!(md, "![{title}](figures/{name}.svg)\n\n{text}\n");
        if let Some(after) = after {
            let _ = writeln!(md, "{after}\n");
        }
    } else {
        let why = match name {
            "mean_deviation" => "it needs the infinite-width theory (sim.theory = true)",
            "loss_ntk_variance" => "it needs the propagator (theory.fluctuations = true)",
            "ensembles" => {
                "no ensemble size has two complete groups of converged seeds (sim.ensemble_sizes)"
            }
            "pointwise" => "a single width without the theory has nothing to be compared with",
            _ => "there is nothing to draw",
        };
        let _ = writeln!(md, "Not drawn: {why}.\n");
    }
}

/// "N = 256: max |N·(E f_N − f∞)| = 0.41 (SE 0.12); max |E f_N − f∞|/SE = 3.4; 93 % of
/// (t, x) within 2 SE".
pub fn deviation_sentence(d: &DeviationSummary) -> String {
    let z = d.max_z.map_or("–".to_string(), |z| format!("{z:.2}"));
    let shifted = d.max_z_shifted.map_or(String::new(), |z| {
        format!("; against f∞ + m/N (the theory's O(1/N) mean shift): max z = {z:.2}")
    });
    format!(
        "N = {}: max |N·(E f_N − f∞)| = {:.3} (SE {:.3}); max |E f_N − f∞|/SE = {z}; {:.0} % of (t, x) within 2 SE{shifted}",
        d.width,
        d.max_abs,
        d.se_at_max,
        100.0 * d.within_2se
    )
}

/// The console's one-line version of figure 3's summary, when the theory ran.
pub fn deviation_line(sweep: &Sweep) -> Option<String> {
    let theory = &sweep.theory.as_ref()?.trajectory;
    let parts: Vec<String> = sweep
        .widths
        .iter()
        .map(|run| {
            let shift = sweep
                .fluctuations
                .as_ref()
                .and_then(|f| f.mean_shift.as_ref());
            let d = compare::deviation_summary(&run.stats, theory, shift);
            let z = d.max_z.map_or("–".to_string(), |z| format!("{z:.1}"));
            format!(
                "N = {}: max {:.3} ± {:.3} (max z {z})",
                d.width, d.max_abs, d.se_at_max
            )
        })
        .collect();
    Some(format!("N·(E f_N − f∞): {}", parts.join("; ")))
}

fn data_description(sweep: &Sweep) -> String {
    let d = &sweep.config.data;
    match d.kind {
        DataKind::Gaussian => format!(
            "gaussian inputs x ~ N(0, I_D) with a {} teacher (seed {})",
            d.teacher, d.seed
        ),
        DataKind::Npz => format!("arrays from {}", d.path.as_deref().unwrap_or("?")),
        DataKind::Digits => format!(
            "8×8 handwritten digits, {} (+1 / −1), images chosen with seed {}, centred and scaled to mean x·x/D = 1",
            d.class_split(),
            d.seed
        ),
        DataKind::Proportional => format!(
            "proportional regime, α = {}, ν = {}, spectrum exponent {}",
            d.alpha, d.nu, d.spectrum_exponent
        ),
    }
}
