//! Several figures side by side (wrapping into rows) in one SVG document.

use crate::figure::{Figure, document};
use crate::text::{escape, num, text_width};
use std::fmt::Write as _;
use std::io;
use std::path::Path;

const TITLE_SIZE: f64 = 16.0;
const PAD: f64 = 10.0;

/// Figures laid out on a grid of `columns` columns; every cell has the size of the largest
/// figure so panels line up.
#[derive(Clone, Debug)]
pub struct Grid {
    title: String,
    columns: usize,
    figures: Vec<Figure>,
}

impl Grid {
    /// A grid with at most `columns` figures per row (at least one).
    pub fn new(columns: usize) -> Grid {
        Grid {
            title: String::new(),
            columns: columns.max(1),
            figures: Vec::new(),
        }
    }

    pub fn title(mut self, title: impl Into<String>) -> Grid {
        self.title = title.into();
        self
    }

    pub fn figure(mut self, figure: Figure) -> Grid {
        self.figures.push(figure);
        self
    }

    pub fn to_svg(&self) -> String {
        let rendered: Vec<_> = self.figures.iter().map(Figure::render).collect();
        let cell_w = rendered.iter().map(|r| r.width).fold(0.0, f64::max);
        let cell_h = rendered.iter().map(|r| r.height).fold(0.0, f64::max);
        if rendered.is_empty() {
            // An empty grid is an empty figure, "no data" note included.
            return Figure::new(self.title.clone()).to_svg();
        }
        let cols = self.columns.min(rendered.len());
        let rows = rendered.len().div_ceil(cols);
        let top = if self.title.is_empty() {
            0.0
        } else {
            2.0 * PAD + TITLE_SIZE
        };
        let width = (cols as f64 * cell_w).max(text_width(&self.title, TITLE_SIZE) + 2.0 * PAD);
        let height = top + rows as f64 * cell_h;
        let mut body = format!(
            r#"<rect width="{}" height="{}" fill="white"/>"#,
            num(width),
            num(height)
        );
        if !self.title.is_empty() {
            let _ = write!(
                body,
                r#"<text x="{}" y="{}" font-size="{TITLE_SIZE}" text-anchor="middle">{}</text>"#,
                num(width / 2.0),
                num(PAD + TITLE_SIZE * 0.8),
                escape(&self.title)
            );
        }
        for (i, r) in rendered.iter().enumerate() {
            let (col, row) = (i % cols, i / cols);
            let _ = write!(
                body,
                r#"<g transform="translate({},{})">{}</g>"#,
                num(col as f64 * cell_w),
                num(top + row as f64 * cell_h),
                r.body
            );
        }
        document(width, height, &body)
    }

    pub fn save(&self, path: impl AsRef<Path>) -> io::Result<()> {
        std::fs::write(path, self.to_svg())
    }
}
