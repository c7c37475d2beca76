//! Watching a run: a Burn [`MetricsRenderer`] that prints progress (step, loss, learning rate,
//! images/s, ETA), appends one JSON line per `log_every` steps to `metrics.jsonl`, and redraws
//! the loss curve. It runs on Burn's metrics thread, so the training loop never waits on it.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::train::metric::{MetricDefinition, MetricId};
use burn::train::renderer::{
    EvaluationName, EvaluationProgress, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining, ProgressType, TrainingProgress,
};
use serde::{Deserialize, Serialize};

use crate::journal::{self, JournalLine, TrainLine};
use crate::metrics::{AssignDistance, AssignMilliseconds, Scalar, SkippedSteps};

/// A mean over the steps since the last journal line; non-finite values (skipped steps) are
/// left out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Running {
    pub sum: f64,
    pub count: u64,
}

impl Running {
    pub fn add(&mut self, value: f64) {
        if value.is_finite() {
            self.sum += value;
            self.count += 1;
        }
    }

    fn take(&mut self) -> Option<f64> {
        let mean = (self.count > 0).then(|| self.sum / self.count as f64);
        *self = Self::default();
        mean
    }
}

/// Whether a journal line is written at `step` (every `log_every` steps and at the last); its
/// window starts afresh after it.
pub fn journal_line_due(step: u64, log_every: u64, total_steps: u64) -> bool {
    step % log_every == 0 || step == total_steps
}

/// The part of a journal line's window that a run has done: what a checkpoint carries so that
/// a resumed run logs the same means as an uninterrupted one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct JournalWindow {
    pub loss: Running,
    pub distance: Running,
}

/// Where and how often the monitor reports.
#[derive(Debug, Clone)]
pub struct MonitorConfig {
    pub journal: PathBuf,
    pub loss_curve: PathBuf,
    pub batch_size: usize,
    pub start_step: u64,
    pub total_steps: u64,
    pub log_every: u64,
    /// Training time of earlier sessions of the run.
    pub wall_time_offset: f64,
    /// The window of the first line, as far as earlier sessions got.
    pub window: JournalWindow,
}

pub struct TrainingMonitor {
    config: MonitorConfig,
    /// Whether lines are still written (a write error stops them, with a warning).
    journaling: bool,
    names: HashMap<MetricId, String>,
    started: Instant,
    interval: (Instant, u64),
    loss: Running,
    assign_distance: Running,
    assign_ms: Running,
    skipped_steps: u64,
    lr: f64,
    last_print: Option<Instant>,
    lines_since_plot: usize,
}

impl TrainingMonitor {
    pub fn new(config: MonitorConfig) -> std::io::Result<Self> {
        // Fails now, not at the first line, where the journal cannot be written.
        OpenOptions::new().create(true).append(true).open(&config.journal)?;
        let now = Instant::now();
        let window = config.window;
        Ok(Self {
            interval: (now, config.start_step),
            config,
            journaling: true,
            names: HashMap::new(),
            started: now,
            loss: window.loss,
            assign_distance: window.distance,
            assign_ms: Running::default(),
            skipped_steps: 0,
            lr: 0.0,
            last_print: None,
            lines_since_plot: 0,
        })
    }

    fn wall_time(&self) -> f64 {
        self.config.wall_time_offset + self.started.elapsed().as_secs_f64()
    }

    fn log(&mut self, step: u64) {
        let now = Instant::now();
        let (since, from_step) = self.interval;
        let seconds = now.duration_since(since).as_secs_f64().max(1e-9);
        let images_per_s = (step - from_step) as f64 * self.config.batch_size as f64 / seconds;
        let line = TrainLine {
            step,
            loss: self.loss.take().unwrap_or(f64::NAN),
            lr: self.lr,
            images_per_s,
            wall_time_s: self.wall_time(),
            assign_distance: self.assign_distance.take(),
            assign_ms: self.assign_ms.take(),
            skipped_steps: (self.skipped_steps > 0).then_some(self.skipped_steps),
        };
        if self.journaling {
            if let Err(e) = journal::append(&self.config.journal, &JournalLine::Train(line.clone())) {
                tracing::warn!("cannot write {}: {e}; metrics are no longer recorded", self.config.journal.display());
                self.journaling = false;
            }
        }
        let remaining = self.config.total_steps.saturating_sub(step);
        let steps_per_s = (step - from_step) as f64 / seconds;
        let eta = if steps_per_s > 0.0 { remaining as f64 / steps_per_s } else { f64::NAN };
        let total = self.config.total_steps;
        let width = total.to_string().len();
        tracing::info!(
            "step {step:>width$}/{total} ({:5.1}%)  loss {:.4}  lr {:.2e}  {images_per_s:7.1} img/s  elapsed {}  ETA {}",
            100.0 * step as f64 / total as f64,
            line.loss,
            self.lr,
            format_duration(self.wall_time()),
            format_duration(eta),
        );
        self.interval = (now, step);
        self.last_print = Some(now);
        self.lines_since_plot += 1;
        if self.lines_since_plot >= 20 {
            self.plot();
        }
    }

    fn plot(&mut self) {
        self.lines_since_plot = 0;
        if let Err(e) = plot_loss_curve(&self.config.journal, &self.config.loss_curve) {
            tracing::warn!("cannot draw {}: {e}", self.config.loss_curve.display());
        }
    }
}

impl MetricsRendererTraining for TrainingMonitor {
    fn update_train(&mut self, state: MetricState) {
        if let MetricState::Numeric(entry, value) = state {
            match self.names.get(&entry.metric_id).map(String::as_str) {
                Some("Loss") => self.loss.add(value.current()),
                Some(AssignDistance::NAME) => self.assign_distance.add(value.current()),
                Some(AssignMilliseconds::NAME) => self.assign_ms.add(value.current()),
                Some(SkippedSteps::NAME) => self.skipped_steps = value.current() as u64,
                Some("Learning Rate") => self.lr = value.current(),
                _ => {}
            }
        }
    }

    fn update_valid(&mut self, _state: MetricState) {}

    fn render_train(&mut self, item: TrainingProgress, _indicators: Vec<ProgressType>) {
        let Some(step) = item.iteration.map(|s| s as u64) else { return };
        if journal_line_due(step, self.config.log_every, self.config.total_steps) {
            self.log(step);
        }
    }

    fn render_valid(&mut self, _item: TrainingProgress, _indicators: Vec<ProgressType>) {}

    fn on_train_end(&mut self, _summary: Option<burn::train::LearnerSummary>) -> Result<(), Box<dyn std::error::Error>> {
        self.plot();
        Ok(())
    }
}

impl MetricsRendererEvaluation for TrainingMonitor {
    fn update_test(&mut self, _name: EvaluationName, _state: MetricState) {}
    fn render_test(&mut self, _item: EvaluationProgress, _indicators: Vec<ProgressType>) {}
}

impl MetricsRenderer for TrainingMonitor {
    fn manual_close(&mut self) {}

    fn register_metric(&mut self, definition: MetricDefinition) {
        self.names.insert(definition.metric_id.clone(), definition.name.clone());
    }
}

/// The renderer of the peers that do not write the run directory: it shows and writes nothing.
pub struct SilentMonitor;

impl MetricsRendererTraining for SilentMonitor {
    fn update_train(&mut self, _state: MetricState) {}
    fn update_valid(&mut self, _state: MetricState) {}
    fn render_train(&mut self, _item: TrainingProgress, _indicators: Vec<ProgressType>) {}
    fn render_valid(&mut self, _item: TrainingProgress, _indicators: Vec<ProgressType>) {}
}

impl MetricsRendererEvaluation for SilentMonitor {
    fn update_test(&mut self, _name: EvaluationName, _state: MetricState) {}
    fn render_test(&mut self, _item: EvaluationProgress, _indicators: Vec<ProgressType>) {}
}

impl MetricsRenderer for SilentMonitor {
    fn manual_close(&mut self) {}
    fn register_metric(&mut self, _definition: MetricDefinition) {}
}

/// `1h02m`, `3m07s`, `12s`.
pub fn format_duration(seconds: f64) -> String {
    if !seconds.is_finite() {
        return "--".into();
    }
    let s = seconds.round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// Draws the loss of each journal line against its step, on a log scale.
pub fn plot_loss_curve(path: &Path, out: &Path) -> Result<(), String> {
    let points: Vec<(f64, f64)> = journal::train_lines(path)
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|l| l.loss.is_finite() && l.loss > 0.0)
        .map(|l| (l.step as f64, l.loss))
        .collect();
    plot_curves(&[("loss".to_string(), points)], "training loss", "loss", true, out)
}

/// Draws named `(step, value)` series on one chart (a legend when there are several), atomically.
pub fn plot_curves(series: &[(String, Vec<(f64, f64)>)], caption: &str, y_desc: &str, log_y: bool, out: &Path) -> Result<(), String> {
    register_font();
    let all = || series.iter().flat_map(|(_, points)| points.iter()).filter(|p| p.1.is_finite() && (!log_y || p.1 > 0.0));
    if all().next().is_none() {
        return Ok(());
    }
    let (y_min, y_max) = all().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| (lo.min(p.1), hi.max(p.1)));
    let (y_lo, y_hi) = if log_y { (y_min * 0.9, y_max * 1.1) } else { (y_min.min(0.0), y_max * 1.05 + 1e-9) };
    // plotters picks the image format from the extension, so the temporary name ends in .png.
    let tmp = out.with_extension("tmp.png");
    let drawn = draw_curves(series, caption, y_desc, log_y, &tmp, all().map(|p| p.0).fold(1.0, f64::max), (y_lo, y_hi)).and_then(|()| std::fs::rename(&tmp, out).map_err(|e| e.to_string()));
    if drawn.is_err() {
        // No half-written temporary file outlives a failed plot (a full disk, say).
        let _ = std::fs::remove_file(&tmp);
    }
    drawn
}

fn draw_curves(series: &[(String, Vec<(f64, f64)>)], caption: &str, y_desc: &str, log_y: bool, tmp: &Path, x_max: f64, (y_lo, y_hi): (f64, f64)) -> Result<(), String> {
    use plotters::prelude::*;
    {
        let root = BitMapBackend::new(tmp, (800, 500)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut builder = ChartBuilder::on(&root);
        builder.caption(caption, ("sans-serif", 22)).margin(12).x_label_area_size(40).y_label_area_size(70);
        macro_rules! draw {
            ($chart:expr) => {{
                let mut chart = $chart.map_err(|e| e.to_string())?;
                chart.configure_mesh().x_desc("step").y_desc(y_desc).y_label_formatter(&|v| format!("{v:.3}")).draw().map_err(|e| e.to_string())?;
                for (i, (name, points)) in series.iter().enumerate() {
                    let color = Palette99::pick(i).to_rgba();
                    let points: Vec<(f64, f64)> = points.iter().copied().filter(|p| p.1.is_finite() && (!log_y || p.1 > 0.0)).collect();
                    chart
                        .draw_series(LineSeries::new(points, color.stroke_width(2)))
                        .map_err(|e| e.to_string())?
                        .label(name.as_str())
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
                }
                if series.len() > 1 {
                    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(|e| e.to_string())?;
                }
            }};
        }
        if log_y {
            draw!(builder.build_cartesian_2d(0f64..x_max, (y_lo..y_hi).log_scale()));
        } else {
            draw!(builder.build_cartesian_2d(0f64..x_max, y_lo..y_hi));
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Registers the bundled DejaVu Sans as plotters' `sans-serif`, once.
pub fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let font: &'static [u8] = include_bytes!("../assets/DejaVuSans.ttf");
        if plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, font).is_err() {
            tracing::warn!("the bundled font could not be registered; plots will have no text");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loss_curve_is_drawn_from_the_train_lines() {
        let dir = std::env::temp_dir().join(format!("emulsion-monitor-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("metrics.jsonl");
        for step in 1..=5 {
            let line = TrainLine { step: step * 10, loss: 1.0 / step as f64, lr: 1e-4, images_per_s: 10.0, wall_time_s: 1.0, assign_distance: None, assign_ms: None, skipped_steps: None };
            journal::append(&path, &JournalLine::Train(line)).unwrap();
        }
        let png = dir.join("loss.png");
        plot_loss_curve(&path, &png).unwrap();
        assert_eq!(image::open(&png).unwrap().width(), 800);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(format_duration(5.2), "5s");
        assert_eq!(format_duration(187.0), "3m07s");
        assert_eq!(format_duration(3720.0), "1h02m");
        assert_eq!(format_duration(f64::NAN), "--");
    }
}
