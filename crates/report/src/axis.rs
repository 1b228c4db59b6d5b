//! Axis ranges and tick placement: 1-2-5 steps on linear axes, whole decades on log axes.
//!
//! Ranges are widened to the outermost ticks, so every axis starts and ends on a labelled
//! value and a reader never has to interpolate an edge.

use crate::text::text_width;

/// A tick label: plain text, or a power of ten drawn as "10" with a superscript exponent.
#[derive(Clone, Debug, PartialEq)]
pub enum TickLabel {
    Plain(String),
    Power(i32),
}

impl TickLabel {
    /// Relative size of the superscript exponent of a power label.
    pub const SUPERSCRIPT_SCALE: f64 = 0.75;

    /// Estimated rendered width at `font_size`.
    pub fn width(&self, font_size: f64) -> f64 {
        match self {
            TickLabel::Plain(s) => text_width(s, font_size),
            TickLabel::Power(k) => {
                text_width("10", font_size)
                    + text_width(&minus(&k.to_string()), font_size * Self::SUPERSCRIPT_SCALE)
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Tick {
    pub value: f64,
    pub label: TickLabel,
}

/// One axis: its range in data units, labelled ticks and unlabelled minor ticks.
#[derive(Clone, Debug, PartialEq)]
pub struct Axis {
    pub log: bool,
    pub lo: f64,
    pub hi: f64,
    pub ticks: Vec<Tick>,
    pub minor: Vec<f64>,
}

/// About this many intervals between labelled ticks; 1-2-5 rounding lands on 3 to 7.
const TARGET_INTERVALS: f64 = 5.0;
/// Decades between labelled ticks on long log axes: the first that leaves at most
/// `MAX_DECADE_TICKS` intervals. 3 is allowed (unlike on linear axes) because 10³ steps read
/// naturally as thousands.
const DECADE_STEPS: [i32; 8] = [1, 2, 3, 5, 10, 20, 50, 100];
const MAX_DECADE_TICKS: i32 = 7;
/// Decimal exponents of `f64` that survive a round trip through `10^k` (normal numbers).
const MIN_DECADE: i32 = -307;
const MAX_DECADE: i32 = 308;

impl Axis {
    /// A linear axis covering `[lo, hi]` (finite), widened to multiples of a 1-2-5 step.
    pub fn linear(lo: f64, hi: f64) -> Axis {
        let (mut lo, mut hi) = (lo.min(hi), lo.max(hi));
        let scale = lo.abs().max(hi.abs());
        // A range that floating point cannot split into distinct labels is treated as a
        // single value and opened up around it.
        if hi - lo <= 1e-9 * scale || hi == lo {
            let pad = if scale == 0.0 { 1.0 } else { 0.1 * scale };
            lo -= pad;
            hi += pad;
        }
        let span = hi - lo;
        if !span.is_finite() {
            // Only reachable with values near ±f64::MAX: label the two ends and stop.
            let ticks = [lo, hi]
                .into_iter()
                .map(|v| Tick {
                    value: v,
                    label: TickLabel::Plain(scientific(v, 308)),
                })
                .collect();
            return Axis {
                log: false,
                lo,
                hi,
                ticks,
                minor: Vec::new(),
            };
        }
        let step = nice_step(span / TARGET_INTERVALS);
        let first = (lo / step + 1e-9).floor();
        let last = (hi / step - 1e-9).ceil();
        let values: Vec<f64> = (0..=(last - first) as i64)
            .map(|i| (first + i as f64) * step)
            .collect();
        let labels = linear_labels(&values, step);
        Axis {
            log: false,
            lo: first * step,
            hi: last * step,
            ticks: values
                .into_iter()
                .zip(labels)
                .map(|(value, label)| Tick {
                    value,
                    label: TickLabel::Plain(label),
                })
                .collect(),
            minor: Vec::new(),
        }
    }

    /// A log axis covering `[lo, hi]` (both > 0), widened to whole decades. Ticks sit on
    /// decades (every few decades on long ranges); short ranges also get minor ticks at 2..9.
    /// The full f64 range spans 615 decades, so a step of 100 always fits.
    pub fn log(lo: f64, hi: f64) -> Axis {
        let (lo, hi) = (lo.min(hi), lo.max(hi));
        let mut a = ((lo.log10() + 1e-9).floor() as i32).clamp(MIN_DECADE, MAX_DECADE);
        let mut b = ((hi.log10() - 1e-9).ceil() as i32).clamp(MIN_DECADE, MAX_DECADE);
        if b <= a {
            // All data on one power of ten: centre it in two decades.
            a = (a - 1).max(MIN_DECADE);
            b = (a + 2).min(MAX_DECADE);
        }
        let step = DECADE_STEPS
            .into_iter()
            .find(|s| (b - a) <= MAX_DECADE_TICKS * s)
            .unwrap_or(100);
        let a = a.div_euclid(step) * step;
        let b = -((-b).div_euclid(step) * step);
        let ticks = (a..=b)
            .step_by(step as usize)
            .map(|k| Tick {
                value: pow10(k),
                label: TickLabel::Power(k),
            })
            .collect();
        let minor = if step == 1 && b - a <= 6 {
            (a..b)
                .flat_map(|k| (2..=9).map(move |m| f64::from(m) * pow10(k)))
                .collect()
        } else {
            Vec::new()
        };
        Axis {
            log: true,
            lo: pow10(a),
            hi: pow10(b),
            ticks,
            minor,
        }
    }

    /// Position of `v` along the axis: 0 at `lo`, 1 at `hi`. Non-positive values on a log
    /// axis map to -∞; callers filter or clamp.
    pub fn fraction(&self, v: f64) -> f64 {
        if self.log {
            (v.log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        }
    }

    /// Whether a value can be drawn on this axis at all.
    pub fn accepts(&self, v: f64) -> bool {
        accepts(self.log, v)
    }
}

/// Finite, and positive on a log axis.
pub fn accepts(log: bool, v: f64) -> bool {
    v.is_finite() && (!log || v > 0.0)
}

fn pow10(k: i32) -> f64 {
    10f64.powi(k)
}

/// The smallest of 1, 2, 5 (times a power of ten) that is at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let magnitude = pow10(raw.log10().floor() as i32);
    let normalized = raw / magnitude;
    let m = if normalized <= 1.0 + 1e-9 {
        1.0
    } else if normalized <= 2.0 + 1e-9 {
        2.0
    } else if normalized <= 5.0 + 1e-9 {
        5.0
    } else {
        10.0
    };
    m * magnitude
}

/// Labels for the multiples of `step` in `values`: fixed-point with just enough decimals to
/// tell neighbours apart, or scientific notation for very large or very small magnitudes.
fn linear_labels(values: &[f64], step: f64) -> Vec<String> {
    let step_exp = (step.log10() + 1e-9).floor() as i32;
    let max_abs = values.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    values
        .iter()
        .map(|&v| {
            // Multiples of the step that should be zero come out as ±1e-17 in floating point.
            let v = if v.abs() < 1e-9 * step { 0.0 } else { v };
            if (1e-3..1e5).contains(&max_abs) {
                let decimals = (-step_exp).max(0) as usize;
                minus(&format!("{v:.decimals$}"))
            } else {
                scientific(v, step_exp)
            }
        })
        .collect()
}

/// `v` as mantissa·10^e written "1.5e6", with enough mantissa digits to resolve 10^step_exp.
fn scientific(v: f64, step_exp: i32) -> String {
    if v == 0.0 {
        return "0".to_string();
    }
    let e = (v.abs().log10() + 1e-9).floor() as i32;
    let decimals = (e - step_exp).clamp(0, 3) as usize;
    let mantissa = v / 10f64.powi(e);
    minus(&format!("{mantissa:.decimals$}e{e}"))
}

/// Typographic minus sign instead of a hyphen.
fn minus(s: &str) -> String {
    s.replace('-', "\u{2212}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(axis: &Axis) -> Vec<String> {
        axis.ticks
            .iter()
            .map(|t| match &t.label {
                TickLabel::Plain(s) => s.clone(),
                TickLabel::Power(k) => format!("10^{k}"),
            })
            .collect()
    }

    #[test]
    fn unit_range_gets_steps_of_two_tenths() {
        let a = Axis::linear(0.0, 1.0);
        assert_eq!(
            labels(&a),
            ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"].map(String::from)
        );
        assert_eq!((a.lo, a.hi), (0.0, 1.0));
    }

    #[test]
    fn range_is_widened_to_whole_steps() {
        let a = Axis::linear(0.13, 0.87);
        assert_eq!(
            labels(&a),
            ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"].map(String::from)
        );
        let b = Axis::linear(3.0, 197.0);
        assert_eq!(
            labels(&b),
            ["0", "50", "100", "150", "200"].map(String::from)
        );
        let c = Axis::linear(-7.0, 3.0);
        assert_eq!(
            labels(&c),
            ["−8", "−6", "−4", "−2", "0", "2", "4"].map(String::from)
        );
    }

    #[test]
    fn steps_are_one_two_or_five_times_a_power_of_ten() {
        for (lo, hi) in [
            (0.0, 1.0),
            (0.0, 3.7),
            (-1e-6, 2e-6),
            (12.0, 13.0),
            (0.0, 123456.0),
        ] {
            let a = Axis::linear(lo, hi);
            let step = a.ticks[1].value - a.ticks[0].value;
            let m = step / 10f64.powf(step.log10().floor());
            assert!(
                [1.0, 2.0, 5.0].iter().any(|n| (m - n).abs() < 1e-6),
                "step {step} for [{lo}, {hi}]"
            );
            assert!(a.lo <= lo && a.hi >= hi);
            assert!((3..=8).contains(&a.ticks.len()), "{} ticks", a.ticks.len());
        }
    }

    #[test]
    fn extreme_magnitudes_use_scientific_labels() {
        let a = Axis::linear(0.0, 2e6);
        assert_eq!(
            labels(&a),
            ["0", "5e5", "1.0e6", "1.5e6", "2.0e6"].map(String::from)
        );
        let b = Axis::linear(1e-5, 3e-5);
        assert_eq!(labels(&b)[0], "1.0e−5");
    }

    #[test]
    fn degenerate_and_huge_ranges_still_give_ticks() {
        let a = Axis::linear(2.0, 2.0);
        assert!(a.lo < 2.0 && a.hi > 2.0 && a.ticks.len() >= 2);
        let z = Axis::linear(0.0, 0.0);
        assert!(z.lo < 0.0 && z.hi > 0.0);
        let h = Axis::linear(-f64::MAX, f64::MAX);
        assert_eq!(h.ticks.len(), 2);
    }

    #[test]
    fn log_axis_has_decade_ticks_and_minor_ticks() {
        let a = Axis::log(0.003, 0.5);
        assert_eq!(
            labels(&a),
            ["10^-3", "10^-2", "10^-1", "10^0"].map(String::from)
        );
        assert_eq!((a.lo, a.hi), (1e-3, 1.0));
        assert_eq!(a.minor.len(), 3 * 8);
        assert!((a.fraction(0.1) - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn long_log_ranges_skip_decades() {
        let a = Axis::log(1e-12, 1e3);
        let ks: Vec<i32> = a
            .ticks
            .iter()
            .map(|t| match t.label {
                TickLabel::Power(k) => k,
                TickLabel::Plain(_) => panic!("plain label on a log axis"),
            })
            .collect();
        assert!(ks.windows(2).all(|w| w[1] - w[0] == 3), "{ks:?}");
        assert_eq!(ks.len(), 6);
        assert!(a.lo <= 1e-12 && a.hi >= 1e3);
        assert!(a.minor.is_empty());
    }

    #[test]
    fn log_axis_on_a_single_power_of_ten_spans_two_decades() {
        let a = Axis::log(1.0, 1.0);
        assert_eq!((a.lo, a.hi), (0.1, 10.0));
    }
}
