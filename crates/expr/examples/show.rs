//! Prints the derivation of a catalogue spec: `cargo run -p dmft-expr --example show -- NAME`.
use dmft_expr::print::{Style, derivation};
use dmft_expr::{Activation, Spec, derive};

fn main() {
    let name = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "two-layer-relu".into());
    let spec = match name.as_str() {
        "two-layer-linear" => Spec::mlp(&name, 1, Activation::Linear),
        "two-layer-relu" => Spec::mlp(&name, 1, Activation::Relu),
        "two-layer-tanh" => Spec::mlp(&name, 1, Activation::Tanh),
        "deep-linear-2" => Spec::mlp(&name, 2, Activation::Linear),
        "deep-linear-3" => Spec::mlp(&name, 3, Activation::Linear),
        "deep-relu-2" => Spec::mlp(&name, 2, Activation::Relu),
        "deep-tanh-2" => Spec::mlp(&name, 2, Activation::Tanh),
        _ => panic!("unknown {name}"),
    };
    let spec = if std::env::args().any(|a| a == "lazy") {
        spec.lazy()
    } else {
        spec
    };
    let d = derive(&spec).unwrap();
    for s in &d.stages {
        eprintln!("{s:?}");
    }
    print!("{}", derivation(&d, Style::Unicode));
}
