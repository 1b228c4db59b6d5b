//! End-to-end checks of rendered figures: well-formed XML, escaping, non-finite data, log
//! axes, empty figures and grids.

use dmft_report::{Figure, Grid};
use quick_xml::Reader;
use quick_xml::events::Event;

/// Parses the whole document, checking tags balance; returns the text content and the
/// number of elements per tag name.
fn parse(svg: &str) -> (String, std::collections::BTreeMap<String, usize>) {
    let mut reader = Reader::from_str(svg);
    let mut stack: Vec<String> = Vec::new();
    let mut text = String::new();
    let mut counts = std::collections::BTreeMap::new();
    loop {
        match reader.read_event().expect("well-formed XML") {
            Event::Start(e) => {
                let name = String::from_utf8(e.name().as_ref().to_vec()).unwrap();
                for a in e.attributes() {
                    a.expect("well-formed attribute")
                        .unescape_value()
                        .expect("valid escapes");
                }
                *counts.entry(name.clone()).or_insert(0) += 1;
                stack.push(name);
            }
            Event::Empty(e) => {
                let name = String::from_utf8(e.name().as_ref().to_vec()).unwrap();
                for a in e.attributes() {
                    a.expect("well-formed attribute")
                        .unescape_value()
                        .expect("valid escapes");
                }
                *counts.entry(name).or_insert(0) += 1;
            }
            Event::End(e) => {
                let name = String::from_utf8(e.name().as_ref().to_vec()).unwrap();
                assert_eq!(
                    stack.pop().as_deref(),
                    Some(name.as_str()),
                    "unbalanced tags"
                );
            }
            Event::Text(t) => text.push_str(&t.decode().expect("text decodes")),
            Event::GeneralRef(r) => {
                let name = String::from_utf8(r.to_vec()).unwrap();
                text.push_str(match name.as_str() {
                    "amp" => "&",
                    "lt" => "<",
                    "gt" => ">",
                    "quot" => "\"",
                    "apos" => "'",
                    other => panic!("unexpected entity &{other};"),
                });
            }
            Event::Eof => break,
            _ => {}
        }
    }
    assert!(stack.is_empty(), "unclosed tags: {stack:?}");
    assert_eq!(counts.get("svg"), Some(&1), "exactly one root <svg>");
    (text, counts)
}

fn path_data(svg: &str) -> Vec<String> {
    svg.split("<path d=\"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap().to_string())
        .collect()
}

#[test]
fn line_band_points_and_hline_render_as_valid_svg() {
    let x: Vec<f64> = (0..50).map(f64::from).collect();
    let y: Vec<f64> = x.iter().map(|t| (-t / 10.0).exp()).collect();
    let se: Vec<f64> = y.iter().map(|v| 0.1 * v).collect();
    let svg = Figure::new("loss")
        .x_label("t = kη")
        .y_label("ℒ")
        .log_y(true)
        .band("train", &x, &y, &se)
        .line("test", &x, &y.iter().map(|v| 2.0 * v).collect::<Vec<_>>())
        .points_with_errors("samples", &[5.0, 10.0], &[0.5, 0.3], &[0.05, 0.1])
        .hline("floor", 1e-2)
        .to_svg();
    let (text, counts) = parse(&svg);
    for label in ["loss", "t = kη", "ℒ", "train", "test", "samples", "floor"] {
        assert!(text.contains(label), "missing {label:?} in {text:?}");
    }
    assert!(counts["path"] >= 3);
    assert!(!svg.contains("NaN") && !svg.contains("inf"));
}

#[test]
fn labels_are_escaped() {
    let svg = Figure::new("a < b & \"c\"")
        .x_label("<x>")
        .line("f'(x) & g", &[0.0, 1.0], &[0.0, 1.0])
        .to_svg();
    let (text, _) = parse(&svg);
    assert!(text.contains("a < b & \"c\""));
    assert!(text.contains("<x>"));
    assert!(text.contains("f'(x) & g"));
    assert!(!svg.contains("<x>"));
}

#[test]
fn non_finite_points_break_the_line() {
    let x = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0];
    let y = [1.0, 2.0, f64::NAN, 3.0, f64::INFINITY, 4.0];
    let svg = Figure::new("gaps").line("y", &x, &y).to_svg();
    parse(&svg);
    assert!(!svg.contains("NaN") && !svg.contains("inf"));
    let lines: Vec<String> = path_data(&svg);
    assert_eq!(lines.len(), 1);
    // Two points before the NaN form one segment; the isolated points become dots.
    assert_eq!(lines[0].matches('M').count(), 1, "{}", lines[0]);
    assert_eq!(svg.matches("<circle").count(), 2);
}

#[test]
fn log_axis_drops_non_positive_values() {
    let x = [0.0, 1.0, 2.0, 3.0];
    let y = [1.0, 0.0, -1.0, 0.01];
    let svg = Figure::new("log").log_y(true).line("y", &x, &y).to_svg();
    let (text, _) = parse(&svg);
    assert!(!svg.contains("NaN") && !svg.contains("inf"));
    // Decade labels render as 10 with a superscript exponent: 10^-2 .. 10^0.
    assert!(text.contains("10−2") && text.contains("100"), "{text}");
    assert_eq!(svg.matches("<circle").count(), 2);
}

#[test]
fn log_x_axis_ignores_zero_time() {
    let svg = Figure::new("")
        .log_x(true)
        .line("", &[0.0, 1.0, 10.0, 100.0], &[1.0, 2.0, 3.0, 4.0])
        .to_svg();
    let (text, _) = parse(&svg);
    assert!(text.contains("102"), "{text}");
}

#[test]
fn empty_or_unplottable_figures_say_no_data() {
    for fig in [
        Figure::new("nothing"),
        Figure::new("all nan").line("y", &[f64::NAN], &[1.0]),
        Figure::new("log of negatives")
            .log_y(true)
            .line("y", &[1.0, 2.0], &[-1.0, 0.0]),
        Figure::new("only a reference").hline("target", 1.0),
    ] {
        let (text, _) = parse(&fig.to_svg());
        assert!(text.contains("no data"), "{text}");
    }
}

#[test]
fn unlabelled_series_stay_out_of_the_legend() {
    let svg = Figure::new("t").line("", &[0.0, 1.0], &[0.0, 1.0]).to_svg();
    let (text, _) = parse(&svg);
    assert!(text.trim_start().starts_with('t'), "{text}");
    // No legend box: the only rects are the background and the frame.
    assert_eq!(svg.matches("<rect").count(), 2);
}

#[test]
fn many_series_cycle_colors_and_dash_the_second_pass() {
    let mut fig = Figure::new("many");
    for i in 0..10 {
        fig = fig.line(format!("s{i}"), &[0.0, 1.0], &[0.0, f64::from(i)]);
    }
    let svg = fig.to_svg();
    parse(&svg);
    assert!(svg.contains("stroke-dasharray"));
}

#[test]
fn grid_places_figures_side_by_side() {
    let a = Figure::new("train").line("f", &[0.0, 1.0], &[0.0, 1.0]);
    let b = Figure::new("test").line("f", &[0.0, 1.0], &[1.0, 0.0]);
    let svg = Grid::new(2)
        .title("predictions")
        .figure(a)
        .figure(b)
        .to_svg();
    let (text, counts) = parse(&svg);
    assert!(text.contains("predictions") && text.contains("train") && text.contains("test"));
    assert!(counts["g"] >= 2);
    let (empty_text, _) = parse(&Grid::new(3).title("empty").to_svg());
    assert!(empty_text.contains("no data"));
}

#[test]
fn save_writes_the_file() {
    let path = std::env::temp_dir().join(format!("dmft-report-{}.svg", std::process::id()));
    Figure::new("saved")
        .line("y", &[0.0, 1.0], &[1.0, 2.0])
        .save(&path)
        .unwrap();
    let svg = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    parse(&svg);
}

#[test]
fn points_with_xy_errors_draw_both_bars_and_widen_both_ranges() {
    let svg = Figure::new("scatter")
        .points_with_xy_errors(
            "f_N vs f_∞",
            &[0.0, 1.0],
            &[0.0, 1.0],
            &[5.0, 0.1],
            &[0.1, 0.1],
        )
        .to_svg();
    let (text, counts) = parse(&svg);
    assert!(text.contains("f_N vs f_∞"));
    assert_eq!(counts["circle"], 3, "two markers and the legend swatch");
    // Each point has a vertical and a horizontal bar path.
    let bars = path_data(&svg)
        .into_iter()
        .filter(|d| d.matches('M').count() == 3)
        .count();
    assert_eq!(bars, 4, "{svg}");
    // The x axis reaches the left end of the first point's bar, 0 − 5, on a tick at −6.
    assert!(text.contains("−6"), "{text}");
}
