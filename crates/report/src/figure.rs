//! A single figure: series, axes, legend, layout and its SVG rendering.
//!
//! Layout is computed from estimated text widths (see `text`), so margins hug the tick
//! labels and the legend instead of reserving fixed space. The legend sits outside the plot
//! area, to the right, so it never hides data.

use crate::axis::{Axis, TickLabel, accepts};
use crate::text::{escape, num, text_width};
use std::fmt::Write as _;
use std::io;
use std::path::Path;

/// Okabe–Ito colours, which stay distinct under the common colour-vision deficiencies.
/// Its yellow is left out: it is too pale on white. Series beyond the palette reuse it dashed.
pub const PALETTE: [&str; 7] = [
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000",
];

const TITLE_SIZE: f64 = 15.0;
const LABEL_SIZE: f64 = 13.0;
const TICK_SIZE: f64 = 11.0;
const LEGEND_SIZE: f64 = 12.0;
const PAD: f64 = 10.0;
const GAP: f64 = 6.0;
const TICK_LEN: f64 = 5.0;
const MINOR_TICK_LEN: f64 = 3.0;
const SWATCH: f64 = 22.0;
const LEGEND_ROW: f64 = 18.0;
const MIN_PLOT: f64 = 120.0;
const DASH: &str = "6 4";
const FONT: &str = "DejaVu Sans, Helvetica, Arial, sans-serif";

#[derive(Clone, Debug)]
enum Kind {
    Line {
        x: Vec<f64>,
        y: Vec<f64>,
    },
    Band {
        x: Vec<f64>,
        y: Vec<f64>,
        half: Vec<f64>,
    },
    Points {
        x: Vec<f64>,
        y: Vec<f64>,
        err: Vec<f64>,
        /// Horizontal error half-widths; empty for points with vertical bars only.
        x_err: Vec<f64>,
    },
    HLine {
        y: f64,
    },
}

#[derive(Clone, Debug)]
struct Series {
    label: String,
    kind: Kind,
    color: usize,
    dashed: bool,
}

impl Series {
    fn color(&self) -> &'static str {
        PALETTE[self.color % PALETTE.len()]
    }

    /// Explicitly dashed, or a colour reused from an earlier pass through the palette.
    fn dashed(&self) -> bool {
        self.dashed || (self.color / PALETTE.len()) % 2 == 1
    }
}

/// A figure built with chained calls and rendered to a standalone SVG document.
///
/// Series are drawn in the order added (bands first, so lines stay visible). A series with
/// an empty label is drawn but left out of the legend. Non-finite points are skipped and a
/// line breaks there; on a log axis non-positive values are skipped the same way. Where the
/// x and y slices differ in length, the extra entries are ignored.
#[derive(Clone, Debug)]
pub struct Figure {
    title: String,
    x_label: String,
    y_label: String,
    log_x: bool,
    log_y: bool,
    width: f64,
    height: f64,
    series: Vec<Series>,
}

/// A figure rendered to SVG elements without the enclosing `<svg>`, so grids can place it.
pub(crate) struct Rendered {
    pub width: f64,
    pub height: f64,
    pub body: String,
}

impl Figure {
    pub fn new(title: impl Into<String>) -> Figure {
        Figure {
            title: title.into(),
            x_label: String::new(),
            y_label: String::new(),
            log_x: false,
            log_y: false,
            width: 560.0,
            height: 360.0,
            series: Vec::new(),
        }
    }

    pub fn x_label(mut self, label: impl Into<String>) -> Figure {
        self.x_label = label.into();
        self
    }

    pub fn y_label(mut self, label: impl Into<String>) -> Figure {
        self.y_label = label.into();
        self
    }

    pub fn log_x(mut self, log: bool) -> Figure {
        self.log_x = log;
        self
    }

    pub fn log_y(mut self, log: bool) -> Figure {
        self.log_y = log;
        self
    }

    /// Minimum size in pixels; the figure grows if its labels or legend need more room.
    pub fn size(mut self, width: f64, height: f64) -> Figure {
        self.width = width;
        self.height = height;
        self
    }

    /// A polyline through (x, y).
    pub fn line<'a>(
        self,
        label: impl Into<String>,
        x: impl IntoIterator<Item = &'a f64>,
        y: impl IntoIterator<Item = &'a f64>,
    ) -> Figure {
        let kind = Kind::Line {
            x: collect(x),
            y: collect(y),
        };
        self.push(label.into(), kind, false)
    }

    /// A line with a shaded band y ± half_width around it (e.g. ± one standard error).
    /// On a log y axis the band's lower edge is clipped to the axis, and only the line and
    /// the upper edge set the range, so a large relative error cannot stretch the axis.
    pub fn band<'a>(
        self,
        label: impl Into<String>,
        x: impl IntoIterator<Item = &'a f64>,
        y: impl IntoIterator<Item = &'a f64>,
        half_width: impl IntoIterator<Item = &'a f64>,
    ) -> Figure {
        let kind = Kind::Band {
            x: collect(x),
            y: collect(y),
            half: collect(half_width),
        };
        self.push(label.into(), kind, false)
    }

    /// Markers at (x, y) with vertical error bars y ± err (same log-axis rule as `band`).
    pub fn points_with_errors<'a>(
        self,
        label: impl Into<String>,
        x: impl IntoIterator<Item = &'a f64>,
        y: impl IntoIterator<Item = &'a f64>,
        err: impl IntoIterator<Item = &'a f64>,
    ) -> Figure {
        let kind = Kind::Points {
            x: collect(x),
            y: collect(y),
            err: collect(err),
            x_err: Vec::new(),
        };
        self.push(label.into(), kind, false)
    }

    /// Markers at (x, y) with horizontal bars x ± x_err and vertical bars y ± y_err, for
    /// scatter plots where both coordinates are estimates (e.g. predictions of two runs).
    /// On log axes the bars are clipped like `band`; only the bars' outer edges that stay on
    /// the axis set the range.
    pub fn points_with_xy_errors<'a>(
        self,
        label: impl Into<String>,
        x: impl IntoIterator<Item = &'a f64>,
        y: impl IntoIterator<Item = &'a f64>,
        x_err: impl IntoIterator<Item = &'a f64>,
        y_err: impl IntoIterator<Item = &'a f64>,
    ) -> Figure {
        let kind = Kind::Points {
            x: collect(x),
            y: collect(y),
            err: collect(y_err),
            x_err: collect(x_err),
        };
        self.push(label.into(), kind, false)
    }

    /// A dashed horizontal reference line across the whole plot.
    pub fn hline(self, label: impl Into<String>, y: f64) -> Figure {
        self.push(label.into(), Kind::HLine { y }, true)
    }

    /// Sets the palette index of the most recently added series (to pair related series).
    pub fn color(mut self, palette_index: usize) -> Figure {
        if let Some(s) = self.series.last_mut() {
            s.color = palette_index;
        }
        self
    }

    /// Sets whether the most recently added series is drawn dashed.
    pub fn dashed(mut self, dashed: bool) -> Figure {
        if let Some(s) = self.series.last_mut() {
            s.dashed = dashed;
        }
        self
    }

    fn push(mut self, label: String, kind: Kind, dashed: bool) -> Figure {
        let color = self.series.len();
        self.series.push(Series {
            label,
            kind,
            color,
            dashed,
        });
        self
    }

    /// The figure as a standalone SVG document.
    pub fn to_svg(&self) -> String {
        let r = self.render();
        document(r.width, r.height, &r.body)
    }

    pub fn save(&self, path: impl AsRef<Path>) -> io::Result<()> {
        std::fs::write(path, self.to_svg())
    }

    pub(crate) fn render(&self) -> Rendered {
        let (xr, yr) = self.data_ranges();
        let (Some(xr), Some(yr)) = (xr, yr) else {
            return self.render_empty();
        };
        let x_axis = make_axis(self.log_x, xr);
        let y_axis = make_axis(self.log_y, yr);

        let legend: Vec<&Series> = self.series.iter().filter(|s| !s.label.is_empty()).collect();
        let legend_w = legend
            .iter()
            .map(|s| text_width(&s.label, LEGEND_SIZE))
            .fold(0.0, f64::max);
        let legend_box_w = if legend.is_empty() {
            0.0
        } else {
            3.0 * GAP + SWATCH + legend_w
        };
        let legend_box_h = legend.len() as f64 * LEGEND_ROW + GAP;

        let y_tick_w = y_axis
            .ticks
            .iter()
            .map(|t| t.label.width(TICK_SIZE))
            .fold(0.0, f64::max);
        let last_x_tick_w = x_axis
            .ticks
            .last()
            .map_or(0.0, |t| t.label.width(TICK_SIZE));
        let left =
            PAD + if self.y_label.is_empty() {
                0.0
            } else {
                LABEL_SIZE + GAP
            } + y_tick_w
                + GAP
                + TICK_LEN;
        let top =
            PAD + if self.title.is_empty() {
                0.0
            } else {
                TITLE_SIZE + GAP
            } + TICK_SIZE / 2.0;
        let bottom = TICK_LEN
            + GAP
            + TICK_SIZE
            + if self.x_label.is_empty() {
                0.0
            } else {
                GAP + LABEL_SIZE
            }
            + PAD;
        let right = if legend.is_empty() {
            PAD + last_x_tick_w / 2.0
        } else {
            2.0 * GAP + legend_box_w + PAD
        };
        let width = self
            .width
            .max(left + right + MIN_PLOT)
            .max(text_width(&self.title, TITLE_SIZE) + 2.0 * PAD);
        let height = self.height.max(top + bottom + MIN_PLOT.max(legend_box_h));
        let frame = Frame {
            x0: left,
            x1: width - right,
            y0: top,
            y1: height - bottom,
        };

        let mut body = String::new();
        self.draw_chrome(&mut body, width, height, &frame);
        draw_axes(&mut body, &frame, &x_axis, &y_axis);
        let map = Map {
            frame: &frame,
            x: &x_axis,
            y: &y_axis,
        };
        for pass in [Pass::Bands, Pass::HLines, Pass::Lines, Pass::Points] {
            for s in &self.series {
                draw_series(&mut body, &map, s, pass);
            }
        }
        if !legend.is_empty() {
            draw_legend(
                &mut body,
                frame.x1 + 2.0 * GAP,
                frame.y0,
                legend_box_w,
                &legend,
            );
        }
        Rendered {
            width,
            height,
            body,
        }
    }

    /// Ranges of everything drawable; hlines count only when there is other data, because a
    /// reference line alone says nothing about the x range.
    fn data_ranges(&self) -> (Span, Span) {
        let (lx, ly) = (self.log_x, self.log_y);
        let mut xr = Extent::default();
        let mut yr = Extent::default();
        for s in &self.series {
            let (x, y, spread, x_spread) = match &s.kind {
                Kind::Line { x, y } => (x, y, None, None),
                Kind::Band { x, y, half } => (x, y, Some(half), None),
                Kind::Points { x, y, err, x_err } => (x, y, Some(err), Some(x_err)),
                Kind::HLine { .. } => continue,
            };
            for (i, (&xi, &yi)) in x.iter().zip(y).enumerate() {
                if !(accepts(lx, xi) && accepts(ly, yi)) {
                    continue;
                }
                xr.add(xi);
                yr.add(yi);
                if let Some(&h) = spread.and_then(|h| h.get(i))
                    && h.is_finite()
                {
                    yr.add_if(ly, yi + h.abs());
                    if !ly {
                        yr.add(yi - h.abs());
                    }
                }
                if let Some(&h) = x_spread.and_then(|h| h.get(i))
                    && h.is_finite()
                {
                    xr.add_if(lx, xi + h.abs());
                    if !lx {
                        xr.add(xi - h.abs());
                    }
                }
            }
        }
        if xr.get().is_some() {
            for s in &self.series {
                if let Kind::HLine { y } = s.kind {
                    yr.add_if(ly, y);
                }
            }
        }
        (xr.get(), yr.get())
    }

    /// The frame, title and axis labels, with a "no data" note in place of the plot.
    fn render_empty(&self) -> Rendered {
        let width = self
            .width
            .max(text_width(&self.title, TITLE_SIZE) + 2.0 * PAD);
        let height = self.height;
        let top = PAD
            + if self.title.is_empty() {
                0.0
            } else {
                TITLE_SIZE + GAP
            };
        let left = PAD
            + if self.y_label.is_empty() {
                0.0
            } else {
                LABEL_SIZE + GAP
            };
        let bottom = PAD
            + if self.x_label.is_empty() {
                0.0
            } else {
                LABEL_SIZE + GAP
            };
        let frame = Frame {
            x0: left,
            x1: width - PAD,
            y0: top,
            y1: height - bottom,
        };
        let mut body = String::new();
        self.draw_chrome(&mut body, width, height, &frame);
        let _ = write!(
            body,
            r##"<rect x="{}" y="{}" width="{}" height="{}" fill="none" stroke="#333333"/><text x="{}" y="{}" font-size="14" fill="#666666" text-anchor="middle">no data</text>"##,
            num(frame.x0),
            num(frame.y0),
            num(frame.x1 - frame.x0),
            num(frame.y1 - frame.y0),
            num((frame.x0 + frame.x1) / 2.0),
            num((frame.y0 + frame.y1) / 2.0),
        );
        Rendered {
            width,
            height,
            body,
        }
    }

    /// White background, title and axis labels.
    fn draw_chrome(&self, out: &mut String, width: f64, height: f64, frame: &Frame) {
        let _ = write!(
            out,
            r#"<rect width="{}" height="{}" fill="white"/>"#,
            num(width),
            num(height)
        );
        if !self.title.is_empty() {
            let _ = write!(
                out,
                r#"<text x="{}" y="{}" font-size="{TITLE_SIZE}" text-anchor="middle">{}</text>"#,
                num(width / 2.0),
                num(PAD + TITLE_SIZE * 0.8),
                escape(&self.title)
            );
        }
        if !self.x_label.is_empty() {
            let _ = write!(
                out,
                r#"<text x="{}" y="{}" font-size="{LABEL_SIZE}" text-anchor="middle">{}</text>"#,
                num((frame.x0 + frame.x1) / 2.0),
                num(height - PAD - LABEL_SIZE * 0.2),
                escape(&self.x_label)
            );
        }
        if !self.y_label.is_empty() {
            let (x, y) = (PAD + LABEL_SIZE * 0.8, (frame.y0 + frame.y1) / 2.0);
            let _ = write!(
                out,
                r#"<text x="{0}" y="{1}" font-size="{LABEL_SIZE}" text-anchor="middle" transform="rotate(-90 {0} {1})">{2}</text>"#,
                num(x),
                num(y),
                escape(&self.y_label)
            );
        }
    }
}

fn collect<'a>(values: impl IntoIterator<Item = &'a f64>) -> Vec<f64> {
    values.into_iter().copied().collect()
}

/// Wraps rendered elements in a standalone SVG document.
pub(crate) fn document(width: f64, height: f64, body: &str) -> String {
    let (w, h) = (num(width.ceil()), num(height.ceil()));
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"{FONT}\">\n{body}\n</svg>\n"
    )
}

/// A data range (min, max), if any value was seen.
type Span = Option<(f64, f64)>;

/// Running min/max of accepted values.
#[derive(Default)]
struct Extent(Span);

impl Extent {
    fn add(&mut self, v: f64) {
        if !v.is_finite() {
            return;
        }
        self.0 = Some(match self.0 {
            None => (v, v),
            Some((lo, hi)) => (lo.min(v), hi.max(v)),
        });
    }

    fn add_if(&mut self, log: bool, v: f64) {
        if accepts(log, v) {
            self.add(v);
        }
    }

    fn get(&self) -> Span {
        self.0
    }
}

fn make_axis(log: bool, (lo, hi): (f64, f64)) -> Axis {
    if log {
        Axis::log(lo, hi)
    } else {
        Axis::linear(lo, hi)
    }
}

/// The plot area in pixels (y grows downwards).
struct Frame {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
}

/// Data-to-pixel mapping.
struct Map<'a> {
    frame: &'a Frame,
    x: &'a Axis,
    y: &'a Axis,
}

impl Map<'_> {
    fn px(&self, v: f64) -> f64 {
        self.frame.x0 + self.x.fraction(v) * (self.frame.x1 - self.frame.x0)
    }

    fn py(&self, v: f64) -> f64 {
        self.frame.y1 - self.y.fraction(v) * (self.frame.y1 - self.frame.y0)
    }

    /// Like `py`, but pinned to the plot area (band and error-bar edges that leave a log axis).
    fn py_clamped(&self, v: f64) -> f64 {
        let f = if self.y.accepts(v) {
            self.y.fraction(v).clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.frame.y1 - f * (self.frame.y1 - self.frame.y0)
    }

    /// Like `px`, but pinned to the plot area (error-bar edges that leave a log axis).
    fn px_clamped(&self, v: f64) -> f64 {
        let f = if self.x.accepts(v) {
            self.x.fraction(v).clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.frame.x0 + f * (self.frame.x1 - self.frame.x0)
    }

    fn ok(&self, x: f64, y: f64) -> bool {
        self.x.accepts(x) && self.y.accepts(y)
    }
}

fn draw_axes(out: &mut String, frame: &Frame, x: &Axis, y: &Axis) {
    let mut grid = String::new();
    let mut ticks = String::new();
    let mut labels = String::new();
    let x_map = |v: f64| frame.x0 + x.fraction(v) * (frame.x1 - frame.x0);
    let y_map = |v: f64| frame.y1 - y.fraction(v) * (frame.y1 - frame.y0);

    // Thin out x labels that would overlap: label every `stride`-th tick.
    let widest = x
        .ticks
        .iter()
        .map(|t| t.label.width(TICK_SIZE))
        .fold(0.0, f64::max);
    let spacing = (frame.x1 - frame.x0) / (x.ticks.len().max(2) - 1) as f64;
    let stride = ((widest + GAP) / spacing).ceil().max(1.0) as usize;
    for (i, t) in x.ticks.iter().enumerate() {
        let px = x_map(t.value);
        let _ = write!(
            grid,
            r#"<line x1="{0}" y1="{1}" x2="{0}" y2="{2}"/>"#,
            num(px),
            num(frame.y0),
            num(frame.y1)
        );
        let _ = write!(
            ticks,
            r#"<line x1="{0}" y1="{1}" x2="{0}" y2="{2}"/>"#,
            num(px),
            num(frame.y1),
            num(frame.y1 + TICK_LEN)
        );
        if i % stride == 0 {
            tick_label(
                &mut labels,
                &t.label,
                px,
                frame.y1 + TICK_LEN + GAP + TICK_SIZE * 0.8,
                "middle",
            );
        }
    }
    for &v in &x.minor {
        let px = x_map(v);
        let _ = write!(
            ticks,
            r#"<line x1="{0}" y1="{1}" x2="{0}" y2="{2}"/>"#,
            num(px),
            num(frame.y1),
            num(frame.y1 + MINOR_TICK_LEN)
        );
    }
    for t in &y.ticks {
        let py = y_map(t.value);
        let _ = write!(
            grid,
            r#"<line x1="{0}" y1="{1}" x2="{2}" y2="{1}"/>"#,
            num(frame.x0),
            num(py),
            num(frame.x1)
        );
        let _ = write!(
            ticks,
            r#"<line x1="{0}" y1="{1}" x2="{2}" y2="{1}"/>"#,
            num(frame.x0 - TICK_LEN),
            num(py),
            num(frame.x0)
        );
        tick_label(
            &mut labels,
            &t.label,
            frame.x0 - TICK_LEN - GAP,
            py + TICK_SIZE * 0.35,
            "end",
        );
    }
    for &v in &y.minor {
        let py = y_map(v);
        let _ = write!(
            ticks,
            r#"<line x1="{0}" y1="{1}" x2="{2}" y2="{1}"/>"#,
            num(frame.x0 - MINOR_TICK_LEN),
            num(py),
            num(frame.x0)
        );
    }
    let _ = write!(
        out,
        r##"<g stroke="#e6e6e6" stroke-width="1">{grid}</g><rect x="{}" y="{}" width="{}" height="{}" fill="none" stroke="#333333"/><g stroke="#333333" stroke-width="1">{ticks}</g><g font-size="{TICK_SIZE}" fill="#333333">{labels}</g>"##,
        num(frame.x0),
        num(frame.y0),
        num(frame.x1 - frame.x0),
        num(frame.y1 - frame.y0),
    );
}

fn tick_label(out: &mut String, label: &TickLabel, x: f64, y: f64, anchor: &str) {
    let _ = write!(
        out,
        r#"<text x="{}" y="{}" text-anchor="{anchor}">"#,
        num(x),
        num(y)
    );
    match label {
        TickLabel::Plain(s) => out.push_str(&escape(s)),
        TickLabel::Power(k) => {
            let _ = write!(
                out,
                r#"10<tspan dy="-0.45em" font-size="{}">{}</tspan>"#,
                num(TICK_SIZE * TickLabel::SUPERSCRIPT_SCALE),
                k.to_string().replace('-', "\u{2212}")
            );
        }
    }
    out.push_str("</text>");
}

/// Drawing passes, so fills never cover lines and markers sit on top.
#[derive(Clone, Copy, PartialEq)]
enum Pass {
    Bands,
    HLines,
    Lines,
    Points,
}

fn stroke_attrs(s: &Series) -> String {
    let dash = if s.dashed() {
        format!(r#" stroke-dasharray="{DASH}""#)
    } else {
        String::new()
    };
    format!(
        r#"stroke="{}" stroke-width="1.6" fill="none"{dash}"#,
        s.color()
    )
}

fn draw_series(out: &mut String, map: &Map, s: &Series, pass: Pass) {
    match (&s.kind, pass) {
        (Kind::Line { x, y }, Pass::Lines) | (Kind::Band { x, y, .. }, Pass::Lines) => {
            let runs = runs(x.len().min(y.len()), |i| map.ok(x[i], y[i]));
            polyline(out, map, s, x, y, &runs);
        }
        (Kind::Band { x, y, half }, Pass::Bands) => {
            let n = x.len().min(y.len()).min(half.len());
            let runs = runs(n, |i| map.ok(x[i], y[i]) && half[i].is_finite());
            for run in runs.iter().filter(|r| r.len() > 1) {
                let mut d = String::new();
                for (k, i) in run.clone().enumerate() {
                    let cmd = if k == 0 { 'M' } else { 'L' };
                    let _ = write!(
                        d,
                        "{cmd}{},{} ",
                        num(map.px(x[i])),
                        num(map.py_clamped(y[i] + half[i].abs()))
                    );
                }
                for i in run.clone().rev() {
                    let _ = write!(
                        d,
                        "L{},{} ",
                        num(map.px(x[i])),
                        num(map.py_clamped(y[i] - half[i].abs()))
                    );
                }
                let _ = write!(
                    out,
                    r#"<path d="{}Z" fill="{}" fill-opacity="0.22" stroke="none"/>"#,
                    d,
                    s.color()
                );
            }
        }
        (Kind::Points { x, y, err, x_err }, Pass::Points) => {
            for i in 0..x.len().min(y.len()) {
                if !map.ok(x[i], y[i]) {
                    continue;
                }
                let (px, py) = (map.px(x[i]), map.py(y[i]));
                if let Some(&e) = x_err.get(i)
                    && e.is_finite()
                {
                    let (left, right) = (
                        map.px_clamped(x[i] - e.abs()),
                        map.px_clamped(x[i] + e.abs()),
                    );
                    let _ = write!(
                        out,
                        r#"<path d="M{0},{2} L{1},{2} M{0},{3} L{0},{4} M{1},{3} L{1},{4}" stroke="{5}" stroke-width="1.2" fill="none"/>"#,
                        num(left),
                        num(right),
                        num(py),
                        num(py - 3.0),
                        num(py + 3.0),
                        s.color()
                    );
                }
                if let Some(&e) = err.get(i)
                    && e.is_finite()
                {
                    let (top, bot) = (
                        map.py_clamped(y[i] + e.abs()),
                        map.py_clamped(y[i] - e.abs()),
                    );
                    let _ = write!(
                        out,
                        r#"<path d="M{0},{1} L{0},{2} M{3},{1} L{4},{1} M{3},{2} L{4},{2}" stroke="{5}" stroke-width="1.2" fill="none"/>"#,
                        num(px),
                        num(top),
                        num(bot),
                        num(px - 3.0),
                        num(px + 3.0),
                        s.color()
                    );
                }
                let _ = write!(
                    out,
                    r#"<circle cx="{}" cy="{}" r="3" fill="{}"/>"#,
                    num(px),
                    num(py),
                    s.color()
                );
            }
        }
        (Kind::HLine { y }, Pass::HLines) if map.y.accepts(*y) => {
            let py = map.py(*y);
            let _ = write!(
                out,
                r#"<line x1="{}" y1="{2}" x2="{}" y2="{2}" {3}/>"#,
                num(map.frame.x0),
                num(map.frame.x1),
                num(py),
                stroke_attrs(s)
            );
        }
        _ => {}
    }
}

/// Maximal runs of consecutive indices in `0..n` where `ok` holds.
fn runs(n: usize, ok: impl Fn(usize) -> bool) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = None;
    for i in 0..n {
        match (ok(i), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                out.push(s..i);
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push(s..n);
    }
    out
}

/// One path per run; a run of a single point becomes a dot, or it would be invisible.
fn polyline(
    out: &mut String,
    map: &Map,
    s: &Series,
    x: &[f64],
    y: &[f64],
    runs: &[std::ops::Range<usize>],
) {
    let mut d = String::new();
    for run in runs {
        if run.len() == 1 {
            let i = run.start;
            let _ = write!(
                out,
                r#"<circle cx="{}" cy="{}" r="1.8" fill="{}"/>"#,
                num(map.px(x[i])),
                num(map.py(y[i])),
                s.color()
            );
            continue;
        }
        for (k, i) in run.clone().enumerate() {
            let cmd = if k == 0 { 'M' } else { 'L' };
            let _ = write!(d, "{cmd}{},{} ", num(map.px(x[i])), num(map.py(y[i])));
        }
    }
    if !d.is_empty() {
        let _ = write!(
            out,
            r#"<path d="{}" {} stroke-linejoin="round"/>"#,
            d.trim_end(),
            stroke_attrs(s)
        );
    }
}

fn draw_legend(out: &mut String, x: f64, y: f64, width: f64, entries: &[&Series]) {
    let height = entries.len() as f64 * LEGEND_ROW + GAP;
    let _ = write!(
        out,
        r##"<rect x="{}" y="{}" width="{}" height="{}" fill="white" stroke="#cccccc"/>"##,
        num(x),
        num(y),
        num(width),
        num(height)
    );
    for (row, s) in entries.iter().enumerate() {
        let cy = y + GAP / 2.0 + (row as f64 + 0.5) * LEGEND_ROW;
        let (sx0, sx1) = (x + GAP, x + GAP + SWATCH);
        match s.kind {
            Kind::Band { .. } => {
                let _ = write!(
                    out,
                    r#"<rect x="{}" y="{}" width="{SWATCH}" height="10" fill="{}" fill-opacity="0.22"/>"#,
                    num(sx0),
                    num(cy - 5.0),
                    s.color()
                );
            }
            Kind::Points { .. } => {
                let _ = write!(
                    out,
                    r#"<path d="M{0},{1} L{0},{2}" stroke="{3}" stroke-width="1.2"/><circle cx="{0}" cy="{4}" r="3" fill="{3}"/>"#,
                    num((sx0 + sx1) / 2.0),
                    num(cy - 6.0),
                    num(cy + 6.0),
                    s.color(),
                    num(cy)
                );
            }
            _ => {}
        }
        if !matches!(s.kind, Kind::Points { .. }) {
            let _ = write!(
                out,
                r#"<line x1="{}" y1="{2}" x2="{}" y2="{2}" {3}/>"#,
                num(sx0),
                num(sx1),
                num(cy),
                stroke_attrs(s)
            );
        }
        let _ = write!(
            out,
            r##"<text x="{}" y="{}" font-size="{LEGEND_SIZE}" fill="#222222">{}</text>"##,
            num(sx1 + GAP),
            num(cy + LEGEND_SIZE * 0.35),
            escape(&s.label)
        );
    }
}
