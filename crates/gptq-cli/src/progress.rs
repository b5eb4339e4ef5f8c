//! Progress bars for pipeline events.

use std::time::Duration;

use gptq_pipeline::{Event, Progress};
use indicatif::{ProgressBar, ProgressStyle};

/// Draws each pipeline stage as a progress bar on standard error (hidden when it is not a
/// terminal); warnings are printed above the bars and kept for the report.
pub struct Bars {
    bar: Option<ProgressBar>,
    pub warnings: Vec<String>,
}

impl Bars {
    pub fn new() -> Self {
        Bars {
            bar: None,
            warnings: Vec::new(),
        }
    }

    /// A bar of `total` steps, for callers outside the pipeline.
    pub fn start(&mut self, name: &str, total: u64) -> ProgressBar {
        self.event(Event::Stage {
            name: name.into(),
            total,
        });
        self.bar.clone().expect("just started")
    }

    pub fn finish(&mut self) {
        self.event(Event::StageDone);
    }
}

impl Progress for Bars {
    fn event(&mut self, event: Event) {
        match event {
            Event::Stage { name, total } => {
                self.finish();
                let bar = ProgressBar::new(total);
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix:>26} [{bar:30}] {pos}/{len} {elapsed_precise} {msg}",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
                bar.set_prefix(name);
                bar.enable_steady_tick(Duration::from_millis(200));
                self.bar = Some(bar);
            }
            Event::Advance(n) => {
                if let Some(bar) = &self.bar {
                    bar.inc(n);
                }
            }
            Event::Message(message) => {
                if let Some(bar) = &self.bar {
                    bar.set_message(message);
                }
            }
            Event::Warning(warning) => {
                match &self.bar {
                    Some(bar) => bar.suspend(|| eprintln!("warning: {warning}")),
                    None => eprintln!("warning: {warning}"),
                }
                self.warnings.push(warning);
            }
            Event::StageDone => {
                if let Some(bar) = self.bar.take() {
                    bar.finish_and_clear();
                }
            }
        }
    }
}
