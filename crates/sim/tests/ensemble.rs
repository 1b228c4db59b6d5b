//! Ensemble runs: agreement with independent single-seed runs, determinism across thread
//! counts, divergence handling, centering, online SGD, memory budget and error messages.

use dmft_sim::Readout;
use dmft_sim::rng::keyed_rng;
use dmft_sim::*;
use ndarray::{Array1, Array2, ArrayView1, Axis, s};
use rand::Rng;
use rand_distr::StandardNormal;

fn gaussian(rows: usize, cols: usize, key: u64) -> Array2<f64> {
    let mut rng = keyed_rng(&[key]);
    Array2::from_shape_simple_fn((rows, cols), || rng.sample(StandardNormal))
}

/// A smooth single-index target y = tanh(x₀ + x₁/2) on Gaussian inputs.
fn target(x: &Array2<f64>) -> Array1<f64> {
    x.rows()
        .into_iter()
        .map(|r| (r[0] + 0.5 * r[1]).tanh())
        .collect()
}

fn toy_data(p: usize, q: usize, d: usize) -> Dataset {
    let x = gaussian(p, d, 100);
    let x_test = gaussian(q, d, 101);
    let (y, y_test) = (target(&x), target(&x_test));
    Dataset::new(x, y, x_test, Some(y_test)).unwrap()
}

fn arch(depth: usize, width: usize, act: Activation) -> Architecture {
    Architecture {
        depth,
        width,
        activation: act,
        parameterization: Parameterization::Mup,
        gamma0: 1.0,
        centered: false,
        residual: None,
        readout: Readout::Trained,
    }
}

fn schedule(eta: f64, steps: usize, record_every: usize) -> Schedule {
    Schedule {
        eta,
        steps,
        record_every,
    }
}

/// Online sampler: fresh Gaussian inputs labelled by the same target as `toy_data`.
fn teacher(rng: &mut SimRng, batch: usize) -> (Array2<f64>, Array1<f64>) {
    let x = Array2::from_shape_simple_fn((batch, 4), || rng.sample(StandardNormal));
    let y = target(&x);
    (x, y)
}

fn completed(outcome: SeedOutcome) -> SeedRecord {
    match outcome {
        SeedOutcome::Completed(record) => *record,
        SeedOutcome::Diverged(d) => panic!("seed {} diverged at step {}", d.seed, d.step),
    }
}

/// |a − b| ≤ tol·(1 + |b|) elementwise.
fn assert_close<'a>(
    a: impl IntoIterator<Item = &'a f64>,
    b: impl IntoIterator<Item = &'a f64>,
    tol: f64,
    what: &str,
) {
    let mut n = 0;
    for (x, y) in a.into_iter().zip(b) {
        assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{what}: {x} vs {y}");
        n += 1;
    }
    assert!(n > 0, "{what}: nothing compared");
}

/// Two-pass mean and unbiased variance over the first axis.
fn two_pass<D: ndarray::Dimension>(samples: &[ndarray::ArrayView<f64, D>]) -> (Vec<f64>, Vec<f64>) {
    let stacked = ndarray::stack(Axis(0), samples).unwrap();
    let mean = stacked.mean_axis(Axis(0)).unwrap();
    let var = stacked.var_axis(Axis(0), 1.0);
    (
        mean.iter().copied().collect(),
        var.iter().copied().collect(),
    )
}

/// The ensemble statistics equal those computed from independent `run_seed` calls; the
/// recorded step-0 kernels equal those of a network built from `seed_streams(base, N, s)`;
/// the ensemble-averaged predictor's losses match a direct computation. Tolerance 1e-10:
/// one-pass and two-pass moments differ only by rounding over 12 samples of O(1) values.
#[test]
fn statistics_match_independent_single_seed_runs() {
    let data = toy_data(6, 3, 4);
    let mut config = EnsembleConfig::new(arch(2, 16, Activation::Tanh), schedule(0.5, 12, 5), 12);
    config.base_seed = 9;
    config.ensemble_sizes = vec![1, 3];
    config.keep_trajectories = true;
    let stats = run_ensemble(&data, &config).unwrap();
    assert_eq!(stats.steps, vec![0, 5, 10, 12]);
    assert_eq!(stats.t.to_vec(), vec![0.0, 2.5, 5.0, 6.0]);
    assert_eq!(
        (stats.converged, stats.seeds, stats.diverged.len()),
        (12, 12, 0)
    );
    let records: Vec<SeedRecord> = (0..12)
        .map(|s| completed(run_seed(&data, &config, s).unwrap()))
        .collect();

    let traj = stats.trajectories.as_ref().unwrap();
    assert_eq!(traj.seed, (0..12).collect::<Vec<_>>());
    for (i, r) in records.iter().enumerate() {
        assert_eq!(traj.f_train.index_axis(Axis(0), i), r.f_train);
        assert_eq!(traj.f_test.index_axis(Axis(0), i), r.f_test);
        assert_eq!(traj.loss.row(i), r.loss);
    }

    let check2 = |m: &Moments<ndarray::Ix2>, pick: fn(&SeedRecord) -> &Array2<f64>, what: &str| {
        let views: Vec<_> = records.iter().map(|r| pick(r).view()).collect();
        let (mean, var) = two_pass(&views);
        assert_close(m.mean.iter(), mean.iter(), 1e-10, what);
        assert_close(m.var.iter(), var.iter(), 1e-10, what);
    };
    check2(&stats.f_train, |r| &r.f_train, "f_train");
    check2(&stats.f_test, |r| &r.f_test, "f_test");
    let losses: Vec<_> = records.iter().map(|r| r.loss.view()).collect();
    let (mean, var) = two_pass(&losses);
    assert_close(stats.loss.mean.iter(), mean.iter(), 1e-10, "loss");
    assert_close(stats.loss.var.iter(), var.iter(), 1e-10, "loss var");
    let test_losses: Vec<_> = records
        .iter()
        .map(|r| r.test_loss.as_ref().unwrap().view())
        .collect();
    let (mean, _) = two_pass(&test_losses);
    assert_close(
        stats.test_loss.as_ref().unwrap().mean.iter(),
        mean.iter(),
        1e-10,
        "test loss",
    );
    let ntks: Vec<_> = records.iter().map(|r| r.ntk.view()).collect();
    let (mean, var) = two_pass(&ntks);
    assert_close(stats.ntk.mean.iter(), mean.iter(), 1e-10, "ntk");
    assert_close(stats.ntk.var.iter(), var.iter(), 1e-10, "ntk var");
    for l in 0..2 {
        let phis: Vec<_> = records.iter().map(|r| r.phi_kernel[l].view()).collect();
        assert_close(
            stats.phi_kernel[l].mean.iter(),
            two_pass(&phis).0.iter(),
            1e-10,
            "phi",
        );
        let grads: Vec<_> = records.iter().map(|r| r.grad_kernel[l].view()).collect();
        assert_close(
            stats.grad_kernel[l].mean.iter(),
            two_pass(&grads).0.iter(),
            1e-10,
            "grad",
        );
        assert_eq!(stats.phi_kernel[l].mean.dim(), (4, 9, 9));
        assert_eq!(stats.grad_kernel[l].mean.dim(), (4, 6, 6));
    }

    // Step 0 of seed 3 is the network drawn from its own stream.
    let (mut init, _) = seed_streams(9, 16, 3);
    let net = Network::new(&config.arch, 4, &mut init).unwrap();
    let mut fwd = net.forward(data.x_all().view());
    net.backward(&mut fwd, 6);
    let kernels = fwd.kernels(data.kx_train().view());
    assert_eq!(records[3].ntk.index_axis(Axis(0), 0), kernels.ntk);
    assert_eq!(
        records[3].phi_kernel[1].index_axis(Axis(0), 0),
        kernels.phi[1]
    );
    assert_eq!(records[3].f_train.row(0), fwd.f().slice(s![..6]));

    // E = 1 is the single-network loss; E = 3 averages f over seeds {0,1,2}, {3,4,5}, ...
    let e1 = &stats.ensemble_average[0];
    assert_eq!((e1.size, e1.groups), (1, 12));
    assert_close(
        e1.loss.as_ref().unwrap().mean.iter(),
        stats.loss.mean.iter(),
        1e-12,
        "E=1",
    );
    let e3 = &stats.ensemble_average[1];
    assert_eq!((e3.size, e3.groups), (3, 4));
    let group_loss = |g: usize, y: ArrayView1<f64>, pick: fn(&SeedRecord) -> &Array2<f64>| {
        let mean =
            (pick(&records[3 * g]) + pick(&records[3 * g + 1]) + pick(&records[3 * g + 2])) / 3.0;
        mean.outer_iter()
            .map(|f| 0.5 * (&y - &f).mapv(|v| v * v).mean().unwrap())
            .collect::<Array1<f64>>()
    };
    let train: Vec<_> = (0..4)
        .map(|g| group_loss(g, data.y_train(), |r| &r.f_train))
        .collect();
    let views: Vec<_> = train.iter().map(|a| a.view()).collect();
    let (mean, var) = two_pass(&views);
    assert_close(
        e3.loss.as_ref().unwrap().mean.iter(),
        mean.iter(),
        1e-10,
        "E=3 loss",
    );
    assert_close(
        e3.loss.as_ref().unwrap().var.iter(),
        var.iter(),
        1e-10,
        "E=3 loss var",
    );
    let test: Vec<_> = (0..4)
        .map(|g| group_loss(g, data.y_test().unwrap(), |r| &r.f_test))
        .collect();
    let views: Vec<_> = test.iter().map(|a| a.view()).collect();
    assert_close(
        e3.test_loss.as_ref().unwrap().mean.iter(),
        two_pass(&views).0.iter(),
        1e-10,
        "E=3 test",
    );
}

fn all_bits(stats: &EnsembleStats) -> Vec<u64> {
    let mut bits = Vec::new();
    let mut add = |values: &mut dyn Iterator<Item = &f64>| bits.extend(values.map(|v| v.to_bits()));
    for m in [&stats.f_train, &stats.f_test] {
        add(&mut m.mean.iter().chain(&m.var).chain(&m.m4));
    }
    for m in [&stats.loss].into_iter().chain(&stats.test_loss) {
        add(&mut m.mean.iter().chain(&m.var).chain(&m.m4));
    }
    for m in [&stats.ntk]
        .into_iter()
        .chain(&stats.phi_kernel)
        .chain(&stats.grad_kernel)
    {
        add(&mut m.mean.iter().chain(&m.var).chain(&m.m4));
    }
    for e in &stats.ensemble_average {
        for m in e.loss.iter().chain(&e.test_loss) {
            add(&mut m.mean.iter().chain(&m.var));
        }
    }
    bits
}

/// Seeds are reduced in seed order whatever the pool size, so 1 and 2 threads (different
/// chunkings of the 20 seeds) give bit-identical statistics, for full-batch GD and for
/// online SGD with centering.
#[test]
fn results_are_bit_identical_for_one_and_two_threads() {
    let data = toy_data(5, 3, 4);
    let sampler = teacher;
    let mut online = arch(1, 24, Activation::Relu);
    online.centered = true;
    let configs = [
        EnsembleConfig {
            ensemble_sizes: vec![2, 5],
            ..EnsembleConfig::new(arch(2, 24, Activation::Gelu), schedule(0.4, 15, 4), 20)
        },
        EnsembleConfig {
            training: Training::Online {
                batch: 3,
                sampler: &sampler,
            },
            ensemble_sizes: vec![4],
            ..EnsembleConfig::new(online, schedule(0.3, 15, 4), 20)
        },
    ];
    for config in &configs {
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| run_ensemble(&data, config).unwrap())
        };
        let (one, two) = (run(1), run(2));
        let bits = all_bits(&one);
        assert!(bits.len() > 1000);
        assert_eq!(bits, all_bits(&two), "{:?}", config.training);
        assert_eq!(one, two);
    }
}

fn assert_all_finite(stats: &EnsembleStats) {
    let bits = all_bits(stats);
    assert!(
        bits.iter().all(|&b| f64::from_bits(b).is_finite()),
        "non-finite statistic"
    );
}

/// At a large step size some narrow networks blow up and others do not. The blown-up seeds
/// are listed with the step at which they crossed the threshold, agree with single-seed
/// runs, and are absent from the statistics, which contain no NaN or Inf.
#[test]
fn diverged_seeds_are_reported_and_excluded() {
    let (p, d) = (6, 5);
    let x = gaussian(p, d, 7);
    let y = x.column(0).mapv(f64::tanh);
    let data = Dataset::new(x, y, Array2::zeros((0, d)), None).unwrap();
    let mut narrow = arch(1, 4, Activation::Relu);
    narrow.parameterization = Parameterization::Ntk;
    let mut config = EnsembleConfig::new(narrow, schedule(6.0, 50, 10), 16);
    config.ensemble_sizes = vec![2];
    config.keep_trajectories = true;
    let stats = run_ensemble(&data, &config).unwrap();
    let diverged: Vec<usize> = stats.diverged.iter().map(|d| d.seed).collect();
    assert!(
        !diverged.is_empty() && diverged.len() < 16,
        "need a mix, got {diverged:?}"
    );
    assert_eq!(stats.converged + diverged.len(), 16);
    let mut kept = Vec::new();
    for seed in 0..16 {
        match run_seed(&data, &config, seed).unwrap() {
            SeedOutcome::Diverged(d) => {
                assert!(stats.diverged.contains(&d));
                assert!(!d.loss.is_finite() || d.loss > 1e12);
            }
            SeedOutcome::Completed(r) => kept.push((seed, *r)),
        }
    }
    assert_eq!(
        stats.trajectories.as_ref().unwrap().seed,
        kept.iter().map(|(s, _)| *s).collect::<Vec<_>>()
    );
    let losses: Vec<_> = kept.iter().map(|(_, r)| r.loss.view()).collect();
    assert_close(
        stats.loss.mean.iter(),
        two_pass(&losses).0.iter(),
        1e-10,
        "loss over kept seeds",
    );
    assert_eq!(stats.ensemble_average[0].groups, kept.len() / 2);
    assert_all_finite(&stats);

    // A lower caller-set threshold stops more seeds, earlier.
    config.divergence_threshold = 1.0;
    let strict = run_ensemble(&data, &config).unwrap();
    assert!(strict.diverged.len() > stats.diverged.len());
    assert_all_finite(&strict);
}

#[test]
fn all_seeds_diverging_is_an_error_naming_eta() {
    let data = toy_data(4, 0, 3);
    let config = EnsembleConfig::new(arch(1, 8, Activation::Tanh), schedule(1e4, 30, 10), 4);
    let err = run_ensemble(&data, &config).unwrap_err();
    assert!(
        matches!(
            err,
            SimError::TooFewConverged {
                converged: 0,
                seeds: 4,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("train.eta"), "{err}");
}

/// With `centered`, the reported predictions are f − f₀, exactly 0 at step 0 for every seed,
/// and the step-0 loss is ℒ = (1/2P) Σ y²; the dynamics still move f away from f₀.
#[test]
fn centered_predictions_start_at_exactly_zero() {
    let data = toy_data(5, 2, 4);
    let mut centered = arch(2, 16, Activation::Erf);
    centered.centered = true;
    let sampler = teacher;
    for training in [
        Training::FullBatch,
        Training::Online {
            batch: 4,
            sampler: &sampler,
        },
    ] {
        let mut config = EnsembleConfig::new(centered.clone(), schedule(0.5, 10, 5), 6);
        config.training = training;
        config.keep_trajectories = true;
        let stats = run_ensemble(&data, &config).unwrap();
        let traj = stats.trajectories.unwrap();
        assert!(traj.f_train.slice(s![.., 0, ..]).iter().all(|&v| v == 0.0));
        assert!(traj.f_test.slice(s![.., 0, ..]).iter().all(|&v| v == 0.0));
        assert!(
            stats
                .f_train
                .mean
                .row(0)
                .iter()
                .chain(stats.f_train.var.row(0))
                .all(|&v| v == 0.0)
        );
        let y = data.y_train();
        assert_eq!(stats.loss.mean[0], 0.5 * y.dot(&y) / 5.0);
        assert!(
            traj.f_train.slice(s![.., 2, ..]).iter().any(|&v| v != 0.0),
            "{training:?}"
        );
    }
}

/// Online SGD whose "fresh" batch is always the whole training set is full-batch GD: same
/// 1/(2B) = 1/(2P) loss, same gradient. Differences come only from matrix-product blocking
/// on differently sized passes, so they stay at rounding level (1e-12).
#[test]
fn online_sgd_on_the_full_training_set_is_full_batch_gd() {
    let data = toy_data(6, 2, 4);
    let (x, y) = (data.x_train().to_owned(), data.y_train().to_owned());
    let whole_set = move |_: &mut SimRng, _: usize| (x.clone(), y.clone());
    let mut config =
        EnsembleConfig::new(arch(2, 12, Activation::Softplus), schedule(0.7, 20, 5), 4);
    let full = run_ensemble(&data, &config).unwrap();
    config.training = Training::Online {
        batch: 6,
        sampler: &whole_set,
    };
    let online = run_ensemble(&data, &config).unwrap();
    assert_close(
        online.f_train.mean.iter(),
        full.f_train.mean.iter(),
        1e-12,
        "f_train",
    );
    assert_close(
        online.f_test.mean.iter(),
        full.f_test.mean.iter(),
        1e-12,
        "f_test",
    );
    assert_close(online.ntk.mean.iter(), full.ntk.mean.iter(), 1e-12, "ntk");
    assert_close(
        online.loss.var.iter(),
        full.loss.var.iter(),
        1e-12,
        "loss var",
    );
}

/// Online SGD on fresh teacher batches lowers the population loss measured on the fixed
/// evaluation set, and different seeds see different batches.
#[test]
fn online_sgd_learns_the_teacher() {
    let eval = toy_data(40, 0, 4);
    let sampler = teacher;
    let mut config = EnsembleConfig::new(arch(1, 64, Activation::Tanh), schedule(0.5, 300, 100), 4);
    config.training = Training::Online {
        batch: 8,
        sampler: &sampler,
    };
    let stats = run_ensemble(&eval, &config).unwrap();
    let loss = &stats.loss.mean;
    assert!(loss[3] < 0.3 * loss[0], "population loss {loss}");
    assert!(stats.loss.var[3] > 0.0);
}

#[test]
fn sampler_with_the_wrong_batch_shape_is_rejected() {
    let data = toy_data(4, 0, 4);
    let short = |rng: &mut SimRng, batch: usize| teacher(rng, batch - 1);
    let mut config = EnsembleConfig::new(arch(1, 8, Activation::Tanh), schedule(0.1, 3, 1), 2);
    config.training = Training::Online {
        batch: 5,
        sampler: &short,
    };
    let err = run_ensemble(&data, &config).unwrap_err();
    assert!(err.to_string().contains("sim.batch = 5"), "{err}");
}

/// The estimate grows with threads, kept trajectories and width, and a budget below it
/// refuses the run with the estimate in the message.
#[test]
fn memory_budget_refuses_with_the_estimate() {
    let data = toy_data(8, 4, 4);
    let mut config = EnsembleConfig::new(arch(2, 32, Activation::Relu), schedule(0.1, 20, 2), 100);
    let base = memory_estimate(&data, &config, 1);
    let params_bytes = 8 * config.arch.parameter_count(4) as u64;
    assert!(base > params_bytes);
    assert!(memory_estimate(&data, &config, 2) > base);
    config.keep_trajectories = true;
    assert!(memory_estimate(&data, &config, 1) > base);
    let threads = rayon::current_num_threads();
    let estimate = memory_estimate(&data, &config, threads);
    config.memory_budget = Some(estimate - 1);
    let err = run_ensemble(&data, &config).unwrap_err();
    assert!(matches!(err, SimError::MemoryBudget { .. }));
    assert!(err.to_string().contains(&estimate.to_string()), "{err}");
    config.memory_budget = Some(estimate);
    assert_eq!(check_memory(&data, &config, threads).unwrap(), estimate);
}

#[test]
fn invalid_configurations_name_the_parameter() {
    let data = toy_data(4, 0, 3);
    let good = EnsembleConfig::new(arch(1, 8, Activation::Tanh), schedule(0.1, 5, 1), 4);
    let message = |edit: &dyn Fn(&mut EnsembleConfig)| {
        let mut config = good.clone();
        edit(&mut config);
        run_ensemble(&data, &config).unwrap_err().to_string()
    };
    assert!(message(&|c| c.arch.depth = 0).contains("model.depth"));
    assert!(message(&|c| c.arch.width = 0).contains("sim.width"));
    assert!(message(&|c| c.arch.gamma0 = 0.0).contains("model.gamma0"));
    assert!(message(&|c| c.schedule.eta = f64::NAN).contains("train.eta"));
    assert!(message(&|c| c.schedule.record_every = 0).contains("train.record_every"));
    assert!(message(&|c| c.seeds = 1).contains("sim.seeds"));
    assert!(message(&|c| c.ensemble_sizes = vec![3]).contains("sim.ensemble_sizes contains 3"));
    assert!(message(&|c| c.divergence_threshold = 0.0).contains("sim.divergence_threshold"));
    let err = run_widths(&data, &good, &[8, 0]).unwrap_err();
    assert_eq!(err.to_string(), "sim.widths contains 0");
    let widths = run_widths(&data, &good, &[3, 5]).unwrap();
    assert_eq!(
        widths.iter().map(|s| s.width).collect::<Vec<_>>(),
        vec![3, 5]
    );
}
