//! Progress bars (`indicatif`) for the libraries' progress events (`emulsion_sample::progress`),
//! drawn only when stderr is a terminal. Log lines, and the lines of a sweep's runs, print above
//! the bars. Elsewhere nothing is drawn, and the periodic info lines are the progress.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Mutex, OnceLock};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tracing::field::{Field, Visit};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer};

/// The bars of this process, once [`install`] has drawn any.
static BARS: OnceLock<MultiProgress> = OnceLock::new();

/// The bars to draw on stderr, for the process's lifetime.
pub fn install() -> MultiProgress {
    BARS.get_or_init(MultiProgress::new).clone()
}

/// Prints `line` on stderr above the bars.
pub fn eprintln(line: &str) {
    let print = || {
        let _ = writeln!(std::io::stderr(), "{line}");
    };
    match BARS.get() {
        Some(bars) => bars.suspend(print),
        None => print(),
    }
}

/// Removes the bars from the terminal (before an error is printed).
pub fn clear() {
    if let Some(bars) = BARS.get() {
        let _ = bars.clear();
    }
}

/// A `tracing` layer that keeps one bar per task that reports progress, removed when it is done.
pub struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl Bars {
    pub fn new(multi: MultiProgress) -> Self {
        Self { multi, bars: Mutex::default() }
    }

    fn update(&self, task: &str, done: u64, total: u64) {
        let mut bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
        if done >= total {
            if let Some(bar) = bars.remove(task) {
                bar.finish_and_clear();
            }
            return;
        }
        let bar = bars.entry(task.to_string()).or_insert_with(|| {
            // Starting at `done` (a resumed run), so the rate and ETA count only this session.
            let bar = self.multi.add(ProgressBar::new(total).with_position(done).with_style(style()).with_prefix(task.to_string()));
            bar.reset_eta();
            bar
        });
        bar.set_length(total);
        bar.set_position(done);
    }

    #[cfg(test)]
    fn shown(&self, task: &str) -> Option<(u64, Option<u64>)> {
        self.bars.lock().unwrap().get(task).map(|b| (b.position(), b.length()))
    }
}

fn style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} ({per_sec}, ETA {eta})").expect("a valid template").progress_chars("=> ")
}

/// The fields of a progress event.
#[derive(Default)]
struct Progress {
    task: Option<String>,
    done: Option<u64>,
    total: Option<u64>,
}

impl Visit for Progress {
    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "done" => self.done = Some(value),
            "total" => self.total = Some(value),
            _ => {}
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if let Ok(value) = u64::try_from(value) {
            self.record_u64(field, value);
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "task" {
            self.task = Some(value.to_string());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "task" {
            self.task = Some(format!("{value:?}"));
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for Bars {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() != emulsion_sample::progress::TARGET {
            return;
        }
        let mut fields = Progress::default();
        event.record(&mut fields);
        if let (Some(task), Some(done), Some(total)) = (fields.task, fields.done, fields.total) {
            self.update(&task, done, total);
        }
    }
}

/// The log's writer: each event's text printed above the bars.
#[derive(Clone)]
pub struct AboveBars(pub MultiProgress);

/// One event's text, printed when it is complete.
pub struct Line {
    multi: MultiProgress,
    text: Vec<u8>,
}

impl Write for Line {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.text.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        let text = std::mem::take(&mut self.text);
        self.multi.suspend(|| {
            let _ = std::io::stderr().write_all(&text);
        });
    }
}

impl<'a> MakeWriter<'a> for AboveBars {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line { multi: self.0.clone(), text: Vec::new() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use indicatif::ProgressDrawTarget;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn progress_events_move_a_bar_per_task_and_a_finished_task_loses_its_bar() {
        let bars = std::sync::Arc::new(Bars::new(MultiProgress::with_draw_target(ProgressDrawTarget::hidden())));
        struct Shared(std::sync::Arc<Bars>);
        impl<S: tracing::Subscriber> Layer<S> for Shared {
            fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
                self.0.on_event(event, ctx);
            }
        }
        let subscriber = tracing_subscriber::registry().with(Shared(bars.clone()));
        tracing::subscriber::with_default(subscriber, || {
            emulsion_sample::progress::report("train", 3, 10);
            emulsion_sample::progress::report("FID samples", 0, 500);
            emulsion_sample::progress::report("train", 4, 10);
            // Other events, and events without the fields, draw nothing.
            tracing::info!(task = "other", done = 1u64, total = 2u64, "not progress");
            tracing::trace!(target: emulsion_sample::progress::TARGET, task = "partial", done = 1u64);
        });
        assert_eq!(bars.shown("train"), Some((4, Some(10))));
        assert_eq!(bars.shown("FID samples"), Some((0, Some(500))));
        assert_eq!((bars.shown("other"), bars.shown("partial")), (None, None));
        tracing::subscriber::with_default(tracing_subscriber::registry().with(Shared(bars.clone())), || {
            emulsion_sample::progress::report("train", 10, 10);
        });
        assert_eq!(bars.shown("train"), None, "a finished task's bar is removed");
        assert!(bars.shown("FID samples").is_some());
    }
}
