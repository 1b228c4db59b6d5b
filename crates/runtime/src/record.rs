//! Shared bookkeeping of a forward-in-time march: which steps to record, the loss, the
//! divergence test, and assembly of the final [`Trajectory`].

use crate::linalg::eigvalsh;
use crate::sampling::{ReplicaStats, mean3};
use crate::{DmftError, Problem, Result, Schedule, SolverKind, Trajectory};
use ndarray::{Array1, Array2, Array3, ArrayView1, ArrayView2, Axis, s};

/// A run is declared divergent when its loss exceeds this multiple of max(ℒ(0), 1).
/// Catapult transients raise the loss by a few orders of magnitude at most before it comes
/// back down; 1e8 separates those from the geometric blow-up of an unstable step size.
const DIVERGENCE_FACTOR: f64 = 1e8;

pub struct Recorder {
    steps: Vec<usize>,
    next: usize,
    eta: f64,
    y: Array1<f64>,
    y_test: Option<Array1<f64>>,
    loss0: Option<f64>,
    eta_max: f64,
    f_train: Array2<f64>,
    f_test: Array2<f64>,
    loss: Array1<f64>,
    test_loss: Option<Array1<f64>>,
    ntk: Array3<f64>,
    se: Option<(Array2<f64>, Array2<f64>, Array1<f64>)>,
}

/// Per-recorded-step Monte Carlo standard errors of f_train, f_test and the loss.
pub struct StepErrors<'a> {
    pub f_train: ArrayView1<'a, f64>,
    pub f_test: ArrayView1<'a, f64>,
    pub loss: f64,
}

pub fn half_mse(err: ArrayView1<f64>) -> f64 {
    0.5 * err.iter().map(|e| e * e).sum::<f64>() / err.len().max(1) as f64
}

impl Recorder {
    pub fn new(problem: &Problem, schedule: &Schedule, with_errors: bool) -> Self {
        let steps = schedule.recorded_steps();
        let (n, p, q) = (steps.len(), problem.n_train(), problem.n_test());
        Recorder {
            next: 0,
            eta: schedule.eta,
            y: problem.y.clone(),
            y_test: problem.y_test.clone(),
            loss0: None,
            eta_max: f64::INFINITY,
            f_train: Array2::zeros((n, p)),
            f_test: Array2::zeros((n, q)),
            loss: Array1::zeros(n),
            test_loss: problem.y_test.as_ref().map(|_| Array1::zeros(n)),
            ntk: Array3::zeros((n, p, p)),
            se: with_errors.then(|| {
                (
                    Array2::zeros((n, p)),
                    Array2::zeros((n, q)),
                    Array1::zeros(n),
                )
            }),
            steps,
        }
    }

    /// Whether step k is recorded (the caller then computes the NTK and calls `record`).
    pub fn wants(&self, k: usize) -> bool {
        self.steps.get(self.next) == Some(&k)
    }

    /// Whether step k needs the NTK: recorded steps, and step 0 for the stable step size.
    pub fn needs_ntk(&self, k: usize) -> bool {
        k == 0 || self.wants(k)
    }

    /// One step of a march: the divergence check, and the record of f (all points, train
    /// first) when the step is recorded. `ntk` is evaluated only when `needs_ntk(k)`.
    pub fn observe(
        &mut self,
        k: usize,
        f: ArrayView1<f64>,
        delta: ArrayView1<f64>,
        ntk: impl FnOnce() -> Array2<f64>,
    ) -> Result<()> {
        if !self.needs_ntk(k) {
            return self.check(k, delta).map(|_| ());
        }
        let ntk = ntk();
        if k == 0 {
            self.set_initial_ntk(ntk.view())?;
        }
        self.check(k, delta)?;
        if self.wants(k) {
            let p = delta.len();
            self.record(f.slice(s![..p]), f.slice(s![p..]), ntk.view(), None);
        }
        Ok(())
    }

    /// Checks the training error Δ(k) for divergence. Call at every step.
    pub fn check(&mut self, k: usize, delta: ArrayView1<f64>) -> Result<f64> {
        let loss = half_mse(delta);
        let loss0 = *self.loss0.get_or_insert(loss);
        if !loss.is_finite() || loss > DIVERGENCE_FACTOR * loss0.max(1.0) {
            return Err(DmftError::Diverged {
                step: k,
                loss,
                eta_max: self.eta_max,
            });
        }
        Ok(loss)
    }

    /// Sets the largest stable step size 2P/λ_max(K(0)) quoted in divergence errors.
    pub fn set_initial_ntk(&mut self, ntk: ArrayView2<f64>) -> Result<()> {
        let top = eigvalsh(ntk)?[ntk.nrows() - 1];
        self.eta_max = 2.0 * ntk.nrows() as f64 / top;
        Ok(())
    }

    pub fn record(
        &mut self,
        f_train: ArrayView1<f64>,
        f_test: ArrayView1<f64>,
        ntk: ArrayView2<f64>,
        errors: Option<StepErrors>,
    ) {
        let i = self.next;
        self.f_train.row_mut(i).assign(&f_train);
        self.f_test.row_mut(i).assign(&f_test);
        self.loss[i] = half_mse((&self.y - &f_train).view());
        if let (Some(tl), Some(yt)) = (self.test_loss.as_mut(), self.y_test.as_ref()) {
            tl[i] = half_mse((yt - &f_test).view());
        }
        self.ntk.index_axis_mut(ndarray::Axis(0), i).assign(&ntk);
        if let (Some((se_tr, se_te, se_loss)), Some(e)) = (self.se.as_mut(), errors) {
            se_tr.row_mut(i).assign(&e.f_train);
            se_te.row_mut(i).assign(&e.f_test);
            se_loss[i] = e.loss;
        }
        self.next += 1;
    }

    pub fn finish(self, solver: SolverKind, method: String) -> Result<Trajectory> {
        if self.next != self.steps.len() {
            return Err(DmftError::Numerical(format!(
                "internal: recorded {} of {} steps",
                self.next,
                self.steps.len()
            )));
        }
        let t = self.steps.iter().map(|&k| k as f64 * self.eta).collect();
        let (f_train_se, f_test_se, loss_se) = match self.se {
            Some((a, b, c)) => (Some(a), Some(b), Some(c)),
            None => (None, None, None),
        };
        let traj = Trajectory {
            steps: self.steps,
            t,
            f_train: self.f_train,
            f_test: self.f_test,
            loss: self.loss,
            test_loss: self.test_loss,
            ntk: self.ntk,
            f_train_se,
            f_test_se,
            loss_se,
            solver,
            method,
        };
        ensure_finite(&traj)?;
        Ok(traj)
    }
}

/// No solver returns NaN silently: any non-finite output is a numerical failure.
fn ensure_finite(traj: &Trajectory) -> Result<()> {
    fn check<'a>(name: &str, mut values: impl Iterator<Item = &'a f64>) -> Result<()> {
        if values.any(|v| !v.is_finite()) {
            Err(DmftError::Numerical(format!("non-finite values in {name}")))
        } else {
            Ok(())
        }
    }
    check("f_train", traj.f_train.iter())?;
    check("f_test", traj.f_test.iter())?;
    check("loss", traj.loss.iter())?;
    check("ntk", traj.ntk.iter())
}

/// Trajectory of one site population before statistics: f at recorded steps and the NTK.
pub struct RawRun {
    pub f_train: Array2<f64>,
    pub f_test: Array2<f64>,
    pub ntk: Array3<f64>,
}

impl From<Trajectory> for RawRun {
    fn from(t: Trajectory) -> Self {
        RawRun {
            f_train: t.f_train,
            f_test: t.f_test,
            ntk: t.ntk,
        }
    }
}

/// Combines independent replicas into one trajectory, with the standard error of the mean
/// when there is more than one replica. The loss is that of the combined prediction.
///
/// With `full`, an independent run on as many sites as all replicas together, the estimate
/// is the Richardson extrapolation (R·f_M − f̄_{M/R})/(R − 1): a population of m sites is
/// biased by b/m, so this cancels the O(1/M) bias that the replicas' mean alone would carry
/// at O(R/M). The two terms are independent, so the standard error scales by √(R²+1)/(R−1).
pub fn replica_trajectory(
    problem: &Problem,
    schedule: &Schedule,
    runs: Vec<RawRun>,
    full: Option<RawRun>,
    solver: SolverKind,
    method: String,
) -> Result<Trajectory> {
    let replicated = runs.len() > 1;
    let mut rec = Recorder::new(problem, schedule, replicated);
    let mut f_train = ReplicaStats::new(runs.iter().map(|r| r.f_train.view()));
    let mut f_test = ReplicaStats::new(runs.iter().map(|r| r.f_test.view()));
    let mut ntk = mean3(runs.iter().map(|r| &r.ntk));
    let mut se_scale = 1.0;
    if let Some(full) = &full {
        let r = runs.len() as f64;
        let extrapolate = |rep: &Array2<f64>, whole: &Array2<f64>| (whole * r - rep) / (r - 1.0);
        f_train.mean = extrapolate(&f_train.mean, &full.f_train);
        f_test.mean = extrapolate(&f_test.mean, &full.f_test);
        ntk = (&full.ntk * r - &ntk) / (r - 1.0);
        se_scale = (r * r + 1.0).sqrt() / (r - 1.0);
        f_train.se *= se_scale;
        f_test.se *= se_scale;
    }
    let losses: Vec<Array2<f64>> = runs
        .iter()
        .map(|r| {
            r.f_train
                .outer_iter()
                .map(|f| half_mse((&problem.y - &f).view()))
                .collect::<Array1<f64>>()
                .insert_axis(Axis(1))
        })
        .collect();
    let loss_stats = ReplicaStats::new(losses.iter().map(|l| l.view()));
    for i in 0..f_train.mean.nrows() {
        let errors = replicated.then(|| StepErrors {
            f_train: f_train.se.row(i),
            f_test: f_test.se.row(i),
            loss: loss_stats.se[[i, 0]] * se_scale,
        });
        rec.record(
            f_train.mean.row(i),
            f_test.mean.row(i),
            ntk.index_axis(Axis(0), i),
            errors,
        );
    }
    rec.finish(solver, method)
}
