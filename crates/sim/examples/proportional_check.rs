//! Theory vs simulation for one proportional setting:
//! `cargo run --release -p dmft-sim --example proportional_check -- D SEEDS L NU ALPHA ETA STEPS GAMMA [ntk] [res] [sgd] [pow=a]`
use dmft_runtime::Parameterization;
use dmft_runtime::proportional::{DataUse, Setting, Spectrum, solve};
use dmft_sim::proportional::run_ensemble;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize| args[i].parse::<f64>().unwrap();
    let dim = num(0) as usize;
    let seeds = num(1) as usize;
    let has = |s: &str| args.iter().any(|a| a == s);
    let pow = args
        .iter()
        .find_map(|a| a.strip_prefix("pow="))
        .map(|a| a.parse::<f64>().unwrap());
    let mut setting = Setting {
        depth: num(2) as usize,
        nu: num(3),
        parameterization: if has("ntk") {
            Parameterization::Ntk
        } else {
            Parameterization::Mup
        },
        gamma: num(7),
        residual: has("res").then_some(1.0),
        data: if has("sgd") {
            DataUse::OnePass {
                batch_ratio: num(4),
            }
        } else {
            DataUse::Repeated { alpha: num(4) }
        },
        spectrum: Spectrum::isotropic(),
        eta: num(5),
        steps: num(6) as usize,
    };
    if let Some(a) = pow {
        setting.spectrum = Spectrum::power_law(dim, a).unwrap();
    }
    let t0 = std::time::Instant::now();
    let th = solve(&setting, &|_| {}).unwrap();
    let t_th = t0.elapsed();
    let sim = run_ensemble(&setting, dim, seeds, 1).unwrap();
    println!("theory {:?}, sim {:?}", t_th, t0.elapsed() - t_th);
    let (mut wtr, mut wte) = (0.0f64, 0.0f64);
    for k in 0..=setting.steps {
        let rtr = (th.train[k] - sim.train[k]) / sim.train[k];
        let rte = (th.test[k] - sim.test[k]) / sim.test[k];
        wtr = wtr.max(rtr.abs());
        wte = wte.max(rte.abs());
        if k % (setting.steps / 10).max(1) == 0 || k == setting.steps {
            println!(
                "k={k:4} train th {:.5} sim {:.5}±{:.5} ({:+.2}%) | test th {:.5} sim {:.5}±{:.5} ({:+.2}%)",
                th.train[k],
                sim.train[k],
                sim.train_se[k],
                100.0 * rtr,
                th.test[k],
                sim.test[k],
                sim.test_se[k],
                100.0 * rte
            );
        }
    }
    println!(
        "worst rel err: train {:.2}% test {:.2}%",
        100.0 * wtr,
        100.0 * wte
    );
}
