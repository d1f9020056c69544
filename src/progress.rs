//! Progress on a terminal: an indicatif bar of hosts done, drawn under the log
//! lines. Off a TTY (CI logs) and with `--log-format json` there is no bar,
//! only the one-line-per-step log.

use std::io::Write;
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);
static ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Allows bars: stderr is a terminal and people read it.
pub fn enable(human: bool) {
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    ENABLED.store(human && tty, std::sync::atomic::Ordering::SeqCst);
}

/// A bar of `total` hosts for the duration of the guard.
pub fn hosts(total: usize, what: &str) -> Guard {
    if ENABLED.load(std::sync::atomic::Ordering::SeqCst) && total > 0 {
        let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} hosts {elapsed}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_message(what.to_string());
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        *BAR.lock().expect("bar lock") = Some(bar);
    }
    Guard
}

/// One host finished.
pub fn host_done() {
    if let Some(bar) = BAR.lock().expect("bar lock").as_ref() {
        bar.inc(1);
    }
}

pub struct Guard;

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(bar) = BAR.lock().expect("bar lock").take() {
            bar.finish_and_clear();
        }
    }
}

/// stderr for tracing: log lines are printed above the bar, not through it.
pub struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bar = BAR.lock().expect("bar lock").clone();
        match bar {
            Some(bar) => bar
                .suspend(|| std::io::stderr().write_all(buf))
                .map(|_| buf.len()),
            None => std::io::stderr().write_all(buf).map(|_| buf.len()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
