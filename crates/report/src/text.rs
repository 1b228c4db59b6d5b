//! Text helpers: XML escaping and a width estimate for laying out labels.
//!
//! The SVG is rendered by whatever viewer opens it, with whatever sans-serif font it has, so
//! exact metrics are unknowable here. The estimate uses Helvetica-like advance widths per
//! character class; it errs slightly wide so labels do not collide with neighbours.

/// Escapes text for use in XML character data and attribute values. Characters that XML 1.0
/// forbids (control characters other than tab, newline and carriage return) are dropped,
/// because a single one makes the whole document unreadable.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || matches!(c, '\u{FFFE}' | '\u{FFFF}') => {}
            c => out.push(c),
        }
    }
    out
}

/// Estimated advance width of `text` at `font_size` pixels.
pub fn text_width(text: &str, font_size: f64) -> f64 {
    text.chars().map(char_em).sum::<f64>() * font_size
}

/// Advance width of one character in em, by class (Helvetica-like proportions).
fn char_em(c: char) -> f64 {
    match c {
        'i' | 'j' | 'l' | '.' | ',' | ':' | ';' | '\'' | '|' | '!' | 'I' => 0.28,
        ' ' | 'f' | 't' | 'r' | '(' | ')' | '[' | ']' | '/' | '-' => 0.36,
        'm' | 'w' | 'M' | 'W' => 0.86,
        '0'..='9' => 0.56,
        'A'..='Z' => 0.68,
        'a'..='z' => 0.54,
        // Greek letters, math symbols and the like: about as wide as an uppercase letter.
        _ if !c.is_ascii() => 0.68,
        _ => 0.58,
    }
}

/// Formats an SVG coordinate: two decimals keep files small and are far below a pixel.
pub fn num(v: f64) -> String {
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_drops_forbidden_controls() {
        assert_eq!(
            escape("a<b & \"c\" > 'd'\u{1}"),
            "a&lt;b &amp; &quot;c&quot; &gt; &apos;d&apos;"
        );
        assert_eq!(escape("γ₀ = 1"), "γ₀ = 1");
    }

    #[test]
    fn wider_text_is_estimated_wider() {
        assert!(text_width("mmmm", 12.0) > text_width("iiii", 12.0));
        assert_eq!(text_width("", 12.0), 0.0);
        assert!((text_width("10", 10.0) - 11.2).abs() < 1e-9);
    }

    #[test]
    fn coordinates_are_compact() {
        assert_eq!(num(1.0), "1");
        assert_eq!(num(2.5), "2.5");
        assert_eq!(num(-0.001), "0");
        assert_eq!(num(1.23456), "1.23");
    }
}
