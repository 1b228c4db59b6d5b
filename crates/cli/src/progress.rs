//! The progress bar on stderr, hidden with `--quiet` or when stderr is not a terminal (so
//! logs and pipes get no control characters).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};

pub struct Bar {
    bar: ProgressBar,
    /// Highest step count reported so far. Monte Carlo replicas report from several threads,
    /// so counts can arrive out of order; the bar only moves forward.
    done: AtomicU64,
}

impl Bar {
    pub fn new(steps: usize, label: &str, quiet: bool) -> Bar {
        let target = if quiet || !std::io::stderr().is_terminal() {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        let bar = ProgressBar::with_draw_target(Some(steps as u64), target);
        let style = ProgressStyle::with_template(
            "{prefix} [{bar:32}] {pos}/{len} steps, {elapsed} elapsed, eta {eta}",
        )
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_prefix(label.to_string());
        Bar {
            bar,
            done: AtomicU64::new(0),
        }
    }

    /// Records that `steps` training steps are complete (the runtime's progress callback).
    pub fn advance(&self, steps: usize) {
        let steps = steps as u64;
        if self.done.fetch_max(steps, Ordering::Relaxed) < steps {
            self.bar.set_position(steps);
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
