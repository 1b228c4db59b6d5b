//! The progress bar on stderr, hidden with `--quiet` or when stderr is not a terminal (so
//! logs and pipes get no control characters).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};

pub struct Bar {
    bar: ProgressBar,
    /// Highest count reported so far. Monte Carlo replicas report from several threads, so
    /// counts can arrive out of order; the bar only moves forward.
    done: AtomicU64,
}

impl Bar {
    /// A bar over `total` units of work (e.g. "steps"), prefixed with `label`.
    pub fn new(total: u64, unit: &str, label: &str, quiet: bool) -> Bar {
        let template = format!(
            "{{prefix}} [{{bar:32}}] {{pos}}/{{len}} {unit}, {{elapsed}} elapsed, eta {{eta}}"
        );
        Bar::with_template(total, &template, label, quiet)
    }

    /// A bar over work measured in arbitrary units (e.g. estimated cost), shown as a
    /// percentage. It redraws every second, so the elapsed time moves even while one long
    /// piece of work (a whole width of a sweep) reports nothing.
    pub fn percent(total: u64, label: &str, quiet: bool) -> Bar {
        let template = "{prefix} [{bar:32}] {percent}%, {elapsed} elapsed, eta {eta}";
        let bar = Bar::with_template(total, template, label, quiet);
        bar.bar
            .enable_steady_tick(std::time::Duration::from_secs(1));
        bar
    }

    fn with_template(total: u64, template: &str, label: &str, quiet: bool) -> Bar {
        let target = if quiet || !std::io::stderr().is_terminal() {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        let bar = ProgressBar::with_draw_target(Some(total), target);
        let style = ProgressStyle::with_template(template)
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_prefix(label.to_string());
        Bar {
            bar,
            done: AtomicU64::new(0),
        }
    }

    /// Records that `done` units are complete (e.g. the runtime's progress callback).
    pub fn advance(&self, done: u64) {
        if self.done.fetch_max(done, Ordering::Relaxed) < done {
            self.bar.set_position(done);
        }
    }

    /// Runs `print` with the bar cleared, so lines written meanwhile do not tear it.
    pub fn suspend<R>(&self, print: impl FnOnce() -> R) -> R {
        self.bar.suspend(print)
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
