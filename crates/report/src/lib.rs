//! Self-written SVG figures for experiment reports: lines, standard-error bands, points with
//! vertical (or vertical and horizontal) error bars and reference lines, on linear or log
//! axes, with a legend.
//!
//! The output depends on no font or system library: text is emitted as `<text>` elements
//! and laid out from estimated widths, so any SVG viewer renders it.
//!
//! ```
//! use dmft_report::Figure;
//! let t = [0.0, 1.0, 2.0];
//! let loss = [1.0, 0.3, 0.1];
//! let svg = Figure::new("loss").x_label("t").log_y(true).line("train", &t, &loss).to_svg();
//! assert!(svg.contains("<svg"));
//! ```

mod axis;
mod figure;
mod grid;
mod text;

pub use axis::{Axis, Tick, TickLabel};
pub use figure::{Figure, PALETTE};
pub use grid::Grid;
pub use text::{escape, text_width};
