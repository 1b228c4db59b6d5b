//! Ensembles over seeds at one width: training, divergence handling, and reduction into
//! means and variances over seeds.
//!
//! Seed s at width N runs from its own streams `seed_streams(base_seed, N, s)` (see
//! [`crate::rng`]) on whichever rayon thread picks it up; the per-seed records are then
//! reduced strictly in seed order (chunk by chunk, each chunk computed in parallel), so every
//! statistic is bit-identical for any number of threads.
//!
//! At each recorded step k (0, every `record_every`, and the last) a seed contributes
//! f_train (P), f_test (Q), ℒ, the test loss (1/2Q) Σ (y_test − f_test)², the NTK K(k,k)
//! (P×P), Φ^ℓ(k,k) over all P+Q points and G^ℓ(k,k) over the P training points. With
//! `centered`, f means f − f₀ throughout. The ensemble-averaged predictor of size E averages
//! f over consecutive disjoint groups of E converged seeds; its loss is reported per group.
//!
//! A seed diverges when its loss (full-batch, online batch, or evaluation loss) is non-finite
//! or exceeds the threshold, or any recorded value is non-finite; it is stopped, reported as
//! (seed, step, loss), and left out of every statistic.

use crate::data::{Dataset, Training};
use crate::error::{Result, SimError, invalid};
use crate::network::{Architecture, Forward, Network, half_mean_square, residual};
use crate::rng::seed_streams;
use crate::stats::{MomentAccumulator, Moments};
use dmft_runtime::Schedule;
use dmft_runtime::linalg::eigvalsh;
use ndarray::{Array1, Array2, Array3, ArrayView1, Axis, Ix1, Ix2, Ix3, s, stack};
use rayon::prelude::*;

/// Default loss above which a seed counts as diverged.
pub const DEFAULT_DIVERGENCE_THRESHOLD: f64 = 1e12;

/// Everything that defines an ensemble run at one width.
#[derive(Clone, Debug)]
pub struct EnsembleConfig<'a> {
    pub arch: Architecture,
    pub schedule: Schedule,
    pub training: Training<'a>,
    /// Number of seeds S ≥ 2.
    pub seeds: usize,
    pub base_seed: u64,
    /// Sizes E of the ensemble-averaged predictors (each 1 ≤ E ≤ S/2).
    pub ensemble_sizes: Vec<usize>,
    /// A seed whose loss exceeds this (or is non-finite) is stopped and excluded.
    pub divergence_threshold: f64,
    /// Refuse to start when [`memory_estimate`] exceeds this many bytes.
    pub memory_budget: Option<u64>,
    /// Keep every converged seed's f_train, f_test and loss trajectories.
    pub keep_trajectories: bool,
}

impl<'a> EnsembleConfig<'a> {
    /// Full-batch GD over `seeds` seeds with base seed 0, no ensemble averages, the default
    /// divergence threshold, no memory budget and no kept trajectories.
    pub fn new(arch: Architecture, schedule: Schedule, seeds: usize) -> Self {
        EnsembleConfig {
            arch,
            schedule,
            training: Training::FullBatch,
            seeds,
            base_seed: 0,
            ensemble_sizes: Vec::new(),
            divergence_threshold: DEFAULT_DIVERGENCE_THRESHOLD,
            memory_budget: None,
            keep_trajectories: false,
        }
    }

    pub fn validate(&self) -> Result<()> {
        self.arch.validate()?;
        let eta = self.schedule.eta;
        if !(eta.is_finite() && eta >= 0.0) {
            return Err(invalid(format!(
                "train.eta must be finite and non-negative (got {eta})"
            )));
        }
        if self.schedule.record_every == 0 {
            return Err(invalid("train.record_every must be at least 1 (got 0)"));
        }
        if self.seeds < 2 {
            return Err(invalid(format!(
                "sim.seeds must be at least 2 to form a variance (got {})",
                self.seeds
            )));
        }
        for &e in &self.ensemble_sizes {
            if e == 0 {
                return Err(invalid("sim.ensemble_sizes contains 0"));
            }
            if 2 * e > self.seeds {
                return Err(invalid(format!(
                    "sim.ensemble_sizes contains {e}, more than sim.seeds/2 = {} (two groups are needed for a variance)",
                    self.seeds / 2
                )));
            }
        }
        if self.divergence_threshold.is_nan() || self.divergence_threshold <= 0.0 {
            return Err(invalid(format!(
                "sim.divergence_threshold must be positive (got {})",
                self.divergence_threshold
            )));
        }
        if let Training::Online { batch: 0, .. } = self.training {
            return Err(invalid("sim.batch must be at least 1 (got 0)"));
        }
        Ok(())
    }
}

/// A stopped seed: its index, the step k at which it was stopped, and ℒ(k) — non-finite or
/// above the threshold, unless a recorded kernel or prediction overflowed first.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Divergence {
    pub seed: usize,
    pub step: usize,
    pub loss: f64,
}

/// One seed's recorded trajectory; arrays are indexed by recorded step first.
#[derive(Clone, Debug, PartialEq)]
pub struct SeedRecord {
    pub f_train: Array2<f64>,
    pub f_test: Array2<f64>,
    pub loss: Array1<f64>,
    pub test_loss: Option<Array1<f64>>,
    pub ntk: Array3<f64>,
    /// Top eigenvalue of the train NTK, T_rec.
    pub ntk_top: Array1<f64>,
    /// Φ^ℓ(k,k) for ℓ = 1..L (index ℓ−1), T_rec × (P+Q) × (P+Q).
    pub phi_kernel: Vec<Array3<f64>>,
    /// G^ℓ(k,k) for ℓ = 1..L (index ℓ−1), T_rec × P × P.
    pub grad_kernel: Vec<Array3<f64>>,
}

impl SeedRecord {
    fn zeros(depth: usize, t: usize, p: usize, q: usize, has_test_targets: bool) -> Self {
        SeedRecord {
            f_train: Array2::zeros((t, p)),
            f_test: Array2::zeros((t, q)),
            loss: Array1::zeros(t),
            test_loss: has_test_targets.then(|| Array1::zeros(t)),
            ntk: Array3::zeros((t, p, p)),
            ntk_top: Array1::zeros(t),
            phi_kernel: (0..depth)
                .map(|_| Array3::zeros((t, p + q, p + q)))
                .collect(),
            grad_kernel: (0..depth).map(|_| Array3::zeros((t, p, p))).collect(),
        }
    }
}

/// How one seed ended.
#[derive(Clone, Debug, PartialEq)]
pub enum SeedOutcome {
    Completed(Box<SeedRecord>),
    Diverged(Divergence),
}

/// Loss statistics of the predictor averaged over groups of `size` seeds.
#[derive(Clone, Debug, PartialEq)]
pub struct EnsembleAverage {
    pub size: usize,
    /// Number of complete disjoint groups among the converged seeds.
    pub groups: usize,
    /// Mean/variance over groups of the averaged predictor's loss per recorded step; None
    /// when fewer than two groups survived divergence.
    pub loss: Option<Moments<Ix1>>,
    pub test_loss: Option<Moments<Ix1>>,
}

/// Per-seed trajectories of the converged seeds (seed order), when requested.
#[derive(Clone, Debug, PartialEq)]
pub struct SeedTrajectories {
    pub seed: Vec<usize>,
    /// S_conv × T_rec × P.
    pub f_train: Array3<f64>,
    /// S_conv × T_rec × Q.
    pub f_test: Array3<f64>,
    /// S_conv × T_rec.
    pub loss: Array2<f64>,
}

/// Statistics over the converged seeds of one width.
#[derive(Clone, Debug, PartialEq)]
pub struct EnsembleStats {
    pub width: usize,
    /// Seeds requested.
    pub seeds: usize,
    /// Seeds that entered the statistics.
    pub converged: usize,
    /// Stopped seeds, in seed order.
    pub diverged: Vec<Divergence>,
    pub steps: Vec<usize>,
    /// t = kη.
    pub t: Array1<f64>,
    pub f_train: Moments<Ix2>,
    pub f_test: Moments<Ix2>,
    pub loss: Moments<Ix1>,
    pub test_loss: Option<Moments<Ix1>>,
    pub ntk: Moments<Ix3>,
    pub ntk_top: Moments<Ix1>,
    pub phi_kernel: Vec<Moments<Ix3>>,
    pub grad_kernel: Vec<Moments<Ix3>>,
    pub ensemble_average: Vec<EnsembleAverage>,
    pub trajectories: Option<SeedTrajectories>,
}

/// Inputs shared by all seeds.
struct Prepared {
    x_all: Array2<f64>,
    kx_train: Array2<f64>,
    steps: Vec<usize>,
}

impl Prepared {
    fn new(data: &Dataset, schedule: &Schedule) -> Self {
        Prepared {
            x_all: data.x_all(),
            kx_train: data.kx_train(),
            steps: schedule.recorded_steps(),
        }
    }
}

fn is_divergent(loss: f64, threshold: f64) -> bool {
    !loss.is_finite() || loss > threshold
}

/// Trains one seed of `config` on `data` and returns its record or where it diverged.
pub fn run_seed(data: &Dataset, config: &EnsembleConfig, seed: usize) -> Result<SeedOutcome> {
    config.validate()?;
    train_seed(data, config, &Prepared::new(data, &config.schedule), seed)
}

/// Writes recorded step `i` from a pass over all P+Q points with backward fields on the
/// first P. Returns false if anything recorded is non-finite.
fn record_step(
    record: &mut SeedRecord,
    i: usize,
    fwd: &Forward,
    f0_all: Option<ArrayView1<f64>>,
    data: &Dataset,
    prepared: &Prepared,
    loss: f64,
) -> bool {
    let p = data.n_train();
    let mut f = fwd.f().to_owned();
    if let Some(f0) = f0_all {
        f -= &f0;
    }
    let (f_train, f_test) = f.view().split_at(Axis(0), p);
    record.f_train.row_mut(i).assign(&f_train);
    record.f_test.row_mut(i).assign(&f_test);
    record.loss[i] = loss;
    let mut finite = loss.is_finite() && f.iter().all(|v| v.is_finite());
    if let (Some(test_loss), Some(y_test)) = (&mut record.test_loss, data.y_test()) {
        test_loss[i] = half_mean_square((&y_test - &f_test).view());
        finite &= test_loss[i].is_finite();
    }
    let kernels = fwd.kernels(prepared.kx_train.view());
    finite &= kernels.ntk.iter().all(|v| v.is_finite());
    record.ntk.index_axis_mut(Axis(0), i).assign(&kernels.ntk);
    if finite {
        // Finite symmetric P × P: LAPACK cannot fail on it.
        let values = eigvalsh(kernels.ntk.view()).expect("eigenvalues of a finite NTK");
        record.ntk_top[i] = values[values.len() - 1];
    }
    for (dst, k) in record.phi_kernel.iter_mut().zip(&kernels.phi) {
        finite &= k.iter().all(|v| v.is_finite());
        dst.index_axis_mut(Axis(0), i).assign(k);
    }
    for (dst, k) in record.grad_kernel.iter_mut().zip(&kernels.grad) {
        finite &= k.iter().all(|v| v.is_finite());
        dst.index_axis_mut(Axis(0), i).assign(k);
    }
    finite
}

fn train_seed(
    data: &Dataset,
    config: &EnsembleConfig,
    prepared: &Prepared,
    seed: usize,
) -> Result<SeedOutcome> {
    let arch = &config.arch;
    let (p, q, d) = (data.n_train(), data.n_test(), data.input_dim());
    let steps = config.schedule.steps;
    let eta = config.schedule.eta;
    let threshold = config.divergence_threshold;
    let (mut init_rng, mut data_rng) = seed_streams(config.base_seed, arch.width, seed);
    let mut net = Network::new(arch, d, &mut init_rng)?;
    let batch = match config.training {
        Training::FullBatch => 0,
        Training::Online { batch, .. } => batch,
    };
    let mut fwd = Forward::new(arch, d, (p + q).max(batch));
    let x_all = prepared.x_all.view();
    let x_train = data.x_train();
    let y_train = data.y_train();
    // f₀ on the fixed points, and for online SGD a frozen copy of the initial network to
    // evaluate f₀ on each fresh batch.
    let f0_all = arch.centered.then(|| net.output(x_all));
    let f0_train = f0_all.as_ref().map(|f0| f0.slice(s![..p]));
    let mut reference = match config.training {
        Training::Online { .. } if arch.centered => {
            Some((net.clone(), Forward::new(arch, d, batch)))
        }
        _ => None,
    };
    let mut record = SeedRecord::zeros(
        arch.depth,
        prepared.steps.len(),
        p,
        q,
        data.y_test().is_some(),
    );
    let mut next_record = 0;
    let diverged = |step, loss| Ok(SeedOutcome::Diverged(Divergence { seed, step, loss }));
    for k in 0..=steps {
        let recording = prepared.steps.get(next_record) == Some(&k);
        match config.training {
            Training::FullBatch => {
                // Recorded steps run the forward pass over test points too; the gradient only
                // ever uses the P training rows.
                net.forward_into(if recording { x_all } else { x_train }, &mut fwd);
                let delta = residual(y_train, fwd.f().slice(s![..p]), f0_train);
                let loss = half_mean_square(delta.view());
                if is_divergent(loss, threshold) {
                    return diverged(k, loss);
                }
                if recording || k < steps {
                    net.backward(&mut fwd, p);
                }
                if recording {
                    let f0 = f0_all.as_ref().map(|f| f.view());
                    if !record_step(&mut record, next_record, &fwd, f0, data, prepared, loss) {
                        return diverged(k, loss);
                    }
                    next_record += 1;
                }
                if k < steps {
                    net.update(&mut fwd, x_train, delta.view(), eta);
                }
            }
            Training::Online { batch, sampler } => {
                if recording {
                    net.forward_into(x_all, &mut fwd);
                    net.backward(&mut fwd, p);
                    let loss = half_mean_square(
                        residual(y_train, fwd.f().slice(s![..p]), f0_train).view(),
                    );
                    let f0 = f0_all.as_ref().map(|f| f.view());
                    if is_divergent(loss, threshold)
                        || !record_step(&mut record, next_record, &fwd, f0, data, prepared, loss)
                    {
                        return diverged(k, loss);
                    }
                    next_record += 1;
                }
                if k < steps {
                    let (xb, yb) = sampler.sample(&mut data_rng, batch);
                    if xb.dim() != (batch, d) || yb.len() != batch {
                        return Err(invalid(format!(
                            "the online sampler returned a {}×{} batch with {} targets; expected {batch}×{d} with {batch} (sim.batch = {batch})",
                            xb.nrows(),
                            xb.ncols(),
                            yb.len()
                        )));
                    }
                    if xb.iter().chain(yb.iter()).any(|v| !v.is_finite()) {
                        return Err(invalid("the online sampler returned NaN or Inf"));
                    }
                    let f0_batch = reference.as_mut().map(|(net0, fwd0)| {
                        net0.forward_into(xb.view(), fwd0);
                        fwd0.f().to_owned()
                    });
                    net.forward_into(xb.view(), &mut fwd);
                    let delta = residual(yb.view(), fwd.f(), f0_batch.as_ref().map(|f| f.view()));
                    let loss = half_mean_square(delta.view());
                    if is_divergent(loss, threshold) {
                        return diverged(k, loss);
                    }
                    net.backward(&mut fwd, batch);
                    net.update(&mut fwd, xb.view(), delta.view(), eta);
                }
            }
        }
    }
    Ok(SeedOutcome::Completed(Box::new(record)))
}

/// Running sums of one ensemble size's current group and the moments of its losses.
struct GroupAccumulator {
    size: usize,
    filled: usize,
    sum_train: Array2<f64>,
    sum_test: Array2<f64>,
    loss: MomentAccumulator<Ix1>,
    test_loss: Option<MomentAccumulator<Ix1>>,
}

impl GroupAccumulator {
    fn push(&mut self, record: &SeedRecord, data: &Dataset) {
        self.sum_train += &record.f_train;
        self.sum_test += &record.f_test;
        self.filled += 1;
        if self.filled < self.size {
            return;
        }
        let scale = 1.0 / self.size as f64;
        let group_loss = |sum: &Array2<f64>, y: ArrayView1<f64>| -> Array1<f64> {
            sum.outer_iter()
                .map(|row| half_mean_square((&y - &(&row * scale)).view()))
                .collect()
        };
        self.loss
            .push(group_loss(&self.sum_train, data.y_train()).view());
        if let (Some(acc), Some(y_test)) = (&mut self.test_loss, data.y_test()) {
            acc.push(group_loss(&self.sum_test, y_test).view());
        }
        self.sum_train.fill(0.0);
        self.sum_test.fill(0.0);
        self.filled = 0;
    }
}

/// Seed-order reduction of per-seed records.
struct Aggregator {
    f_train: MomentAccumulator<Ix2>,
    f_test: MomentAccumulator<Ix2>,
    loss: MomentAccumulator<Ix1>,
    test_loss: Option<MomentAccumulator<Ix1>>,
    ntk: MomentAccumulator<Ix3>,
    ntk_top: MomentAccumulator<Ix1>,
    phi_kernel: Vec<MomentAccumulator<Ix3>>,
    grad_kernel: Vec<MomentAccumulator<Ix3>>,
    groups: Vec<GroupAccumulator>,
    kept: Option<Vec<(usize, SeedRecord)>>,
    diverged: Vec<Divergence>,
}

impl Aggregator {
    fn new(data: &Dataset, config: &EnsembleConfig, t: usize) -> Self {
        let (p, q) = (data.n_train(), data.n_test());
        let has_test = data.y_test().is_some();
        let depth = config.arch.depth;
        Aggregator {
            f_train: MomentAccumulator::new(Ix2(t, p)),
            f_test: MomentAccumulator::new(Ix2(t, q)),
            loss: MomentAccumulator::new(Ix1(t)),
            test_loss: has_test.then(|| MomentAccumulator::new(Ix1(t))),
            ntk: MomentAccumulator::new(Ix3(t, p, p)),
            ntk_top: MomentAccumulator::new(Ix1(t)),
            phi_kernel: (0..depth)
                .map(|_| MomentAccumulator::new(Ix3(t, p + q, p + q)))
                .collect(),
            grad_kernel: (0..depth)
                .map(|_| MomentAccumulator::new(Ix3(t, p, p)))
                .collect(),
            groups: config
                .ensemble_sizes
                .iter()
                .map(|&size| GroupAccumulator {
                    size,
                    filled: 0,
                    sum_train: Array2::zeros((t, p)),
                    sum_test: Array2::zeros((t, q)),
                    loss: MomentAccumulator::new(Ix1(t)),
                    test_loss: has_test.then(|| MomentAccumulator::new(Ix1(t))),
                })
                .collect(),
            kept: config.keep_trajectories.then(Vec::new),
            diverged: Vec::new(),
        }
    }

    fn push(&mut self, seed: usize, outcome: SeedOutcome, data: &Dataset) {
        let record = match outcome {
            SeedOutcome::Diverged(d) => {
                self.diverged.push(d);
                return;
            }
            SeedOutcome::Completed(record) => *record,
        };
        self.f_train.push(record.f_train.view());
        self.f_test.push(record.f_test.view());
        self.loss.push(record.loss.view());
        if let (Some(acc), Some(tl)) = (&mut self.test_loss, &record.test_loss) {
            acc.push(tl.view());
        }
        self.ntk.push(record.ntk.view());
        self.ntk_top.push(record.ntk_top.view());
        for (acc, k) in self.phi_kernel.iter_mut().zip(&record.phi_kernel) {
            acc.push(k.view());
        }
        for (acc, k) in self.grad_kernel.iter_mut().zip(&record.grad_kernel) {
            acc.push(k.view());
        }
        for group in &mut self.groups {
            group.push(&record, data);
        }
        if let Some(kept) = &mut self.kept {
            kept.push((seed, record));
        }
    }

    fn finish(self, config: &EnsembleConfig, prepared: Prepared) -> Result<EnsembleStats> {
        let converged = self.loss.count();
        if converged < 2 {
            let first = self.diverged.first().copied().unwrap_or(Divergence {
                seed: 0,
                step: 0,
                loss: f64::NAN,
            });
            return Err(SimError::TooFewConverged {
                width: config.arch.width,
                seeds: config.seeds,
                converged,
                seed: first.seed,
                step: first.step,
                loss: first.loss,
            });
        }
        // Every converged seed was pushed into every accumulator, so all have ≥ 2 samples.
        let enough = "at least two converged seeds";
        let f_train = self.f_train.finish().expect(enough);
        let f_test = self.f_test.finish().expect(enough);
        let loss = self.loss.finish().expect(enough);
        let ntk = self.ntk.finish().expect(enough);
        let ntk_top = self.ntk_top.finish().expect(enough);
        let all = |accs: Vec<MomentAccumulator<Ix3>>| -> Vec<_> {
            accs.into_iter()
                .map(|acc| acc.finish().expect(enough))
                .collect()
        };
        let phi_kernel = all(self.phi_kernel);
        let grad_kernel = all(self.grad_kernel);
        let test_loss = self.test_loss.and_then(MomentAccumulator::finish);
        let ensemble_average = self
            .groups
            .into_iter()
            .map(|g| EnsembleAverage {
                size: g.size,
                groups: g.loss.count(),
                loss: g.loss.finish(),
                test_loss: g.test_loss.and_then(MomentAccumulator::finish),
            })
            .collect();
        let trajectories = self.kept.map(|kept| {
            let views = |pick: fn(&SeedRecord) -> &Array2<f64>| -> Array3<f64> {
                let v: Vec<_> = kept.iter().map(|(_, r)| pick(r).view()).collect();
                stack(Axis(0), &v).expect("every record has the same shape")
            };
            let losses: Vec<_> = kept.iter().map(|(_, r)| r.loss.view()).collect();
            SeedTrajectories {
                seed: kept.iter().map(|(s, _)| *s).collect(),
                f_train: views(|r| &r.f_train),
                f_test: views(|r| &r.f_test),
                loss: stack(Axis(0), &losses).expect("every record has the same shape"),
            }
        });
        let t = prepared
            .steps
            .iter()
            .map(|&k| k as f64 * config.schedule.eta)
            .collect();
        Ok(EnsembleStats {
            width: config.arch.width,
            seeds: config.seeds,
            converged,
            diverged: self.diverged,
            steps: prepared.steps,
            t,
            f_train,
            f_test,
            loss,
            test_loss,
            ntk,
            ntk_top,
            phi_kernel,
            grad_kernel,
            ensemble_average,
            trajectories,
        })
    }
}

/// Seeds in flight per reduction round, per thread: large enough to keep every thread
/// busy between the sequential reductions, small enough to bound the buffered records.
const SEEDS_PER_THREAD_IN_FLIGHT: usize = 8;

/// Runs `config.seeds` seeds at width `config.arch.width` in parallel on the current rayon
/// pool and reduces them in seed order. Diverged seeds are reported and excluded; fewer than
/// two converged seeds is an error.
pub fn run_ensemble(data: &Dataset, config: &EnsembleConfig) -> Result<EnsembleStats> {
    config.validate()?;
    let threads = rayon::current_num_threads();
    check_memory(data, config, threads)?;
    let prepared = Prepared::new(data, &config.schedule);
    let mut aggregator = Aggregator::new(data, config, prepared.steps.len());
    let chunk = SEEDS_PER_THREAD_IN_FLIGHT * threads;
    for start in (0..config.seeds).step_by(chunk) {
        let end = (start + chunk).min(config.seeds);
        let outcomes: Vec<Result<SeedOutcome>> = (start..end)
            .into_par_iter()
            .map(|seed| train_seed(data, config, &prepared, seed))
            .collect();
        for (seed, outcome) in (start..end).zip(outcomes) {
            aggregator.push(seed, outcome?, data);
        }
    }
    aggregator.finish(config, prepared)
}

/// [`run_ensemble`] at each width in turn (`config.arch.width` is replaced).
pub fn run_widths(
    data: &Dataset,
    config: &EnsembleConfig,
    widths: &[usize],
) -> Result<Vec<EnsembleStats>> {
    if widths.is_empty() {
        return Err(invalid("sim.widths is empty"));
    }
    if widths.contains(&0) {
        return Err(invalid("sim.widths contains 0"));
    }
    widths
        .iter()
        .map(|&width| {
            let mut at_width = config.clone();
            at_width.arch.width = width;
            run_ensemble(data, &at_width)
        })
        .collect()
}

/// Bytes a run needs with `threads` workers: per thread a network (two for centered online
/// SGD), its forward/backward buffers and one step's temporaries; the per-seed records of
/// the seeds in flight; the moment accumulators (mean, M₂, M₃, M₄ of every recorded
/// quantity) and ensemble-average groups; kept trajectories; the shared inputs.
pub fn memory_estimate(data: &Dataset, config: &EnsembleConfig, threads: usize) -> u64 {
    let arch = &config.arch;
    let (n, l) = (arch.width as u64, arch.depth as u64);
    let (p, q, d) = (
        data.n_train() as u64,
        data.n_test() as u64,
        data.input_dim() as u64,
    );
    let t = config.schedule.recorded_steps().len() as u64;
    let has_test = u64::from(data.y_test().is_some());
    let (batch, online) = match config.training {
        Training::FullBatch => (0, false),
        Training::Online { batch, .. } => (batch as u64, true),
    };
    let copies = if online && arch.centered { 2 } else { 1 };
    let rows = (p + q).max(batch);
    let forward = 3 * l * rows * n + rows * n.max(d) + rows;
    let kernels_at_record = l * (p + q) * (p + q) + l * p * p + p * p;
    let temporaries = 2 * rows + batch * (d + 1) + kernels_at_record + (p + q);
    let per_thread =
        copies * (arch.parameter_count(data.input_dim()) as u64 + forward) + temporaries;
    let record = t * (p + q + 1 + has_test + p * p + l * (p + q) * (p + q) + l * p * p);
    let in_flight = (config.seeds as u64).min(SEEDS_PER_THREAD_IN_FLIGHT as u64 * threads as u64);
    let groups = config.ensemble_sizes.len() as u64 * (t * (p + q) + 4 * t * (1 + has_test));
    let kept = if config.keep_trajectories {
        config.seeds as u64 * t * (p + q + 1)
    } else {
        0
    };
    let shared = (p + q) * d + p * p + p + q;
    let words =
        threads as u64 * per_thread + in_flight * record + 4 * record + groups + kept + shared;
    8 * words
}

/// The estimate, or [`SimError::MemoryBudget`] when it exceeds `config.memory_budget`.
pub fn check_memory(data: &Dataset, config: &EnsembleConfig, threads: usize) -> Result<u64> {
    let estimate = memory_estimate(data, config, threads);
    match config.memory_budget {
        Some(budget) if estimate > budget => Err(SimError::MemoryBudget { estimate, budget }),
        _ => Ok(estimate),
    }
}
