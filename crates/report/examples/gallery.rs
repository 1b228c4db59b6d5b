//! Writes a few sample figures to a folder, to look at the layout by eye.

use dmft_report::{Figure, Grid};

fn main() -> std::io::Result<()> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| ".".to_string());
    let t: Vec<f64> = (0..=100).map(|k| f64::from(k) * 0.5).collect();
    let loss: Vec<f64> = t.iter().map(|t| 0.5 * (-t / 8.0).exp() + 1e-4).collect();
    let se: Vec<f64> = loss.iter().map(|l| 0.3 * l).collect();
    let test: Vec<f64> = loss.iter().map(|l| 2.0 * l + 0.01).collect();
    Figure::new("loss, two-layer relu μP")
        .x_label("t = kη")
        .y_label("loss")
        .log_y(true)
        .band("train ± SE", &t, &loss, &se)
        .line("test", &t, &test)
        .save(format!("{dir}/loss.svg"))?;
    let mut train = Figure::new("train").x_label("t").y_label("f");
    let mut testf = Figure::new("test").x_label("t");
    for i in 0..4 {
        let y = f64::from(i) - 1.5;
        let f: Vec<f64> = t.iter().map(|t| y * (1.0 - (-t / 6.0).exp())).collect();
        train = train
            .line(format!("x{}", i + 1), &t, &f)
            .color(i as usize)
            .hline("", y)
            .color(i as usize);
        testf = testf.line(
            format!("x{}", i + 1),
            &t,
            &f.iter().map(|v| 0.8 * v).collect::<Vec<_>>(),
        );
    }
    Grid::new(2)
        .title("predictions")
        .figure(train)
        .figure(testf)
        .save(format!("{dir}/pred.svg"))?;
    Figure::new("points")
        .points_with_errors("mc", &[1.0, 2.0, 3.0], &[-0.2, 1e5, 3e5], &[0.1, 2e4, 5e4])
        .save(format!("{dir}/points.svg"))?;
    Figure::new("empty")
        .x_label("x")
        .y_label("y")
        .save(format!("{dir}/empty.svg"))
}
