//! Progress bars on a terminal (indicatif); nothing when not a TTY.

use custos::progress::{NoProgress, Progress};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

pub struct Bar {
    bar: Mutex<Option<ProgressBar>>,
}

impl Progress for Bar {
    fn phase(&self, name: &str, total: Option<u64>, unit: &'static str) {
        let b = match total {
            Some(t) => ProgressBar::new(t),
            None => ProgressBar::new_spinner(),
        };
        let tmpl = if unit == "bytes" {
            "{msg:24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
        } else if total.is_some() {
            "{msg:24} [{bar:30}] {human_pos}/{human_len} {per_sec} eta {eta}"
        } else {
            "{spinner} {msg}"
        };
        b.set_style(
            ProgressStyle::with_template(tmpl)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        b.set_message(name.to_string());
        if let Some(old) = self.bar.lock().unwrap().replace(b) {
            old.finish_and_clear();
        }
    }
    fn advance(&self, n: u64) {
        if let Some(b) = &*self.bar.lock().unwrap() {
            b.inc(n);
        }
    }
    fn finish_phase(&self) {
        if let Some(b) = self.bar.lock().unwrap().take() {
            b.finish_and_clear();
        }
    }
}

/// A bar on a terminal unless `quiet` (e.g. `--json`), else nothing.
pub fn for_terminal(quiet: bool) -> Arc<dyn Progress> {
    if !quiet && std::io::stderr().is_terminal() {
        Arc::new(Bar {
            bar: Mutex::new(None),
        })
    } else {
        Arc::new(NoProgress)
    }
}
