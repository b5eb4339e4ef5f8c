//! Progress for pipeline events: bars on a terminal, occasional plain lines otherwise.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use gptq_pipeline::{Event, Progress};
use indicatif::{HumanDuration, ProgressBar, ProgressState, ProgressStyle};

/// How often a log (standard error not a terminal) gets a progress line while a stage runs.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Shows each stage as a progress bar on standard error when it is a terminal; when it is not
/// (a log file, CI), prints a line every [`LOG_EVERY`] and when a stage that took a second or
/// more ends, so that long runs still show they are alive. Warnings are printed either way and
/// kept for the report.
pub struct Bars {
    view: View,
    pub warnings: Vec<String>,
}

enum View {
    Terminal(Option<ProgressBar>),
    Log(Option<LogStage>),
}

struct LogStage {
    name: String,
    total: u64,
    position: u64,
    started: Instant,
    printed: Instant,
}

impl LogStage {
    fn print(&mut self) {
        let elapsed = self.started.elapsed();
        eprintln!(
            "{}: {}/{} ({:.0} s{})",
            self.name,
            self.position,
            self.total,
            elapsed.as_secs_f64(),
            time_left(elapsed, self.position, self.total)
                .map_or(String::new(), |left| format!(", {left}"))
        );
        self.printed = Instant::now();
    }
}

/// "about 3m 20s left", from the mean time of the `done` steps so far; `None` before the first
/// step ends and after the last.
fn time_left(elapsed: Duration, done: u64, total: u64) -> Option<String> {
    if done == 0 || done >= total {
        return None;
    }
    let left = elapsed.mul_f64((total - done) as f64 / done as f64);
    Some(format!("about {} left", HumanDuration(left)))
}

impl Bars {
    pub fn new() -> Self {
        let view = if std::io::stderr().is_terminal() {
            View::Terminal(None)
        } else {
            View::Log(None)
        };
        Bars {
            view,
            warnings: Vec::new(),
        }
    }

    /// Starts a stage of `total` steps, for callers outside the pipeline.
    pub fn start(&mut self, name: &str, total: u64) {
        self.event(Event::Stage {
            name: name.into(),
            total,
        });
    }

    /// Moves the current stage to step `position`.
    pub fn set_position(&mut self, position: u64) {
        let done = match &self.view {
            View::Terminal(Some(bar)) => bar.position(),
            View::Log(Some(stage)) => stage.position,
            _ => return,
        };
        if position > done {
            self.event(Event::Advance(position - done));
        }
    }

    pub fn finish(&mut self) {
        self.event(Event::StageDone);
    }

    fn start_bar(name: String, total: u64) -> ProgressBar {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>26} [{bar:30}] {pos}/{len} {elapsed_precise}{left} {msg}",
            )
            .expect("valid template")
            .with_key(
                "left",
                |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let total = state.len().unwrap_or(0);
                    if let Some(left) = time_left(state.elapsed(), state.pos(), total) {
                        let _ = write!(w, " ({left})");
                    }
                },
            )
            .progress_chars("=> "),
        );
        bar.set_prefix(name);
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    }
}

impl Progress for Bars {
    fn event(&mut self, event: Event) {
        match (&mut self.view, event) {
            (_, Event::Warning(warning)) => {
                match &self.view {
                    View::Terminal(Some(bar)) => bar.suspend(|| eprintln!("warning: {warning}")),
                    _ => eprintln!("warning: {warning}"),
                }
                self.warnings.push(warning);
            }
            (_, Event::Stage { name, total }) => {
                self.finish();
                match &mut self.view {
                    View::Terminal(bar) => *bar = Some(Self::start_bar(name, total)),
                    View::Log(stage) => {
                        let now = Instant::now();
                        *stage = Some(LogStage {
                            name,
                            total,
                            position: 0,
                            started: now,
                            printed: now,
                        });
                    }
                }
            }
            (View::Terminal(Some(bar)), Event::Advance(n)) => bar.inc(n),
            (View::Log(Some(stage)), Event::Advance(n)) => {
                stage.position = (stage.position + n).min(stage.total);
                if stage.printed.elapsed() >= LOG_EVERY && stage.position < stage.total {
                    stage.print();
                }
            }
            (View::Terminal(Some(bar)), Event::Message(message)) => bar.set_message(message),
            (View::Terminal(bar), Event::StageDone) => {
                if let Some(bar) = bar.take() {
                    bar.finish_and_clear();
                }
            }
            (View::Log(stage), Event::StageDone) => {
                if let Some(mut stage) = stage.take()
                    && stage.started.elapsed() >= Duration::from_secs(1)
                {
                    stage.print();
                }
            }
            // Advances and messages with no stage running; messages repeat the position in logs.
            (_, Event::Advance(_) | Event::Message(_)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_left_is_the_mean_step_times_the_steps_left() {
        let elapsed = Duration::from_secs(60);
        assert_eq!(time_left(elapsed, 0, 16), None);
        assert_eq!(time_left(elapsed, 16, 16), None);
        assert_eq!(
            time_left(elapsed, 1, 16).as_deref(),
            Some("about 15 minutes left")
        );
        assert_eq!(
            time_left(elapsed, 3, 4).as_deref(),
            Some("about 20 seconds left")
        );
    }
}
