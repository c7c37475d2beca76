//! `emulsion bench train`: the run `train` would build (data, network, EMA, AdamW, warm-up, the
//! objective and assignment of the config), stepped without checkpoints, samples or journal, and
//! timed. `scripts/torch_reference.py` prints the same keys for the same network in PyTorch.

use std::time::{Duration, Instant};

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::train::metric::ItemLazy;
use emulsion_assign::AssignBackend;
use serde::{Deserialize, Serialize};

use emulsion_train::config::Config;
use emulsion_train::data::{DataOrder, StepLoader};
use emulsion_train::run::{build_learner, load_images};
use emulsion_train::trainer::DiffusionOutput;
use emulsion_train::TrainError;
use emulsion_config::Invalid;

/// How many steps to run and which of them to time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainBenchOptions {
    /// Optimiser steps in all.
    pub steps: usize,
    /// Steps after the first that are not timed: shapes first seen late, allocator growth.
    pub warmup: usize,
    /// Steps per timed window; the steady state is the median over the windows.
    pub window: usize,
}

impl TrainBenchOptions {
    /// Full windows after the first step and the warm-up.
    pub fn windows(&self) -> usize {
        self.steps.saturating_sub(1 + self.warmup) / self.window.max(1)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.window == 0 {
            return Err("the window must hold at least one step".into());
        }
        if self.windows() == 0 {
            return Err(format!(
                "{} steps leave no timed window: they must cover the first step, {} warm-up steps and one window of {}",
                self.steps, self.warmup, self.window
            ));
        }
        Ok(())
    }
}

/// What `bench train --json` prints (and `scripts/torch_reference.py --json`, key for key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainBench {
    /// `emulsion`, `pytorch-eager` or `pytorch-compile`.
    pub implementation: String,
    /// The config file.
    pub config: String,
    /// Backend and device.
    pub device: String,
    pub parameters: usize,
    pub batch_size: usize,
    /// Images per forward/backward pass (0: the whole batch).
    pub micro_batch: usize,
    pub steps: usize,
    pub warmup_steps: usize,
    pub window_steps: usize,
    /// Seconds from process start until data and model were ready.
    pub setup_s: f64,
    /// Seconds from process start to the end of the first optimiser step: data, model, kernel
    /// compilation and autotuning included.
    pub first_step_s: f64,
    /// Median over the windows of the steady-state training images per second.
    pub images_per_s: f64,
    /// Median over the windows of the seconds per optimiser step.
    pub step_s: f64,
    /// Images per second of each window, in order.
    pub window_images_per_s: Vec<f64>,
    /// Peak resident memory of the process (Linux `VmHWM`), MiB.
    pub peak_host_mib: Option<f64>,
    /// Device memory reserved by the backend's allocator, MiB: the largest seen at the syncs
    /// after the first step and at each window's end (allocators seldom give memory back).
    pub peak_device_mib: Option<f64>,
    /// Loss of the last step, as the metrics read it back: finite, or the benchmark timed
    /// something broken.
    pub final_loss: f64,
}

/// Steps the run `config` describes and times it. `started` is when the process started;
/// `device_memory_mib` reads the backend's reserved device memory, where it has any.
pub fn bench_train<B>(
    config: &Config,
    device: &B::Device,
    options: &TrainBenchOptions,
    started: Instant,
    device_memory_mib: &dyn Fn() -> Option<f64>,
) -> Result<TrainBench, TrainError>
where
    B: AutodiffBackend + AssignBackend,
    B::InnerBackend: AssignBackend,
{
    options.validate().map_err(|message| Invalid::new("--steps", message))?;
    let (images, unet) = load_images(config)?;
    let (mut learner, parameters) = build_learner::<B>(config, &unet, device)?;
    learner.fork(device);
    let batch_size = config.train.batch_size;
    let order = DataOrder::new(images.len(), batch_size, config.run.seed, config.data.hflip);
    let lookahead = config.assignment.overlap && config.assignment.solves_on_host();
    let loader = StepLoader::<B>::new(std::sync::Arc::new(images), order, batch_size, 0..options.steps as u64, device.clone()).with_lookahead(lookahead);
    let mut batches = burn::data::dataloader::DataLoader::iter(&loader);
    let sync = || B::sync(device).map_err(|e| TrainError::Device(format!("{e:?}")));
    sync()?;
    let setup_s = started.elapsed().as_secs_f64();

    // As in `train`, every step's loss and assignment distance are read back on another thread
    // (Burn's metrics thread there), so the loop never waits for them but the device does the
    // same read-backs.
    let (items, received) = std::sync::mpsc::channel::<DiffusionOutput<B>>();
    let reader = std::thread::spawn(move || received.into_iter().map(|item| item.sync().loss.into_scalar().elem::<f64>()).last());
    let mut first_step_s = f64::NAN;
    let mut window_start = Instant::now();
    let mut windows: Vec<Duration> = Vec::new();
    let mut peak_device = None::<f64>;
    for step in 0..options.steps as u64 {
        let batch = batches.next().expect("the loader serves every step");
        learner.lr_step();
        let output = learner.train_step(batch);
        learner.optimizer_step(output.grads);
        let _ = items.send(output.item);
        let done = step as usize + 1;
        let timed = done.checked_sub(1 + options.warmup);
        let window_end = timed.is_some_and(|t| t > 0 && t % options.window == 0 && t / options.window <= options.windows());
        if done == 1 || timed == Some(0) || window_end {
            // Waits for the step's forward and backward passes, its optimiser step and EMA.
            sync()?;
            let now = Instant::now();
            if done == 1 {
                first_step_s = started.elapsed().as_secs_f64();
            }
            if window_end {
                windows.push(now - window_start);
            }
            peak_device = max_option(peak_device, device_memory_mib());
            tracing::info!("bench train: step {done}");
            window_start = Instant::now();
        }
    }
    drop(items);
    let final_loss = reader.join().map_err(|_| TrainError::Device("reading the losses back failed".into()))?.unwrap_or(f64::NAN);

    let images_per_window = (options.window * batch_size) as f64;
    let window_images_per_s: Vec<f64> = windows.iter().map(|w| images_per_window / w.as_secs_f64()).collect();
    let step_seconds: Vec<f64> = windows.iter().map(|w| w.as_secs_f64() / options.window as f64).collect();
    Ok(TrainBench {
        implementation: "emulsion".into(),
        config: String::new(),
        device: String::new(),
        parameters,
        batch_size,
        micro_batch: config.train.micro_batch,
        steps: options.steps,
        warmup_steps: options.warmup,
        window_steps: options.window,
        setup_s,
        first_step_s,
        images_per_s: median(&window_images_per_s),
        step_s: median(&step_seconds),
        window_images_per_s,
        peak_host_mib: peak_host_mib(),
        peak_device_mib: peak_device,
        final_loss,
    })
}

impl std::fmt::Display for TrainBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |v: Option<f64>| v.map_or("not reported by this backend".to_string(), |v| format!("{v:.0} MiB"));
        let (lo, hi) = self.window_images_per_s.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        writeln!(f, "{} on {}: {} parameters, batch {} (micro-batch {})", self.config, self.device, self.parameters, self.batch_size, self.micro_batch)?;
        writeln!(f, "  first step      {:.2} s from start (data and model ready at {:.2} s)", self.first_step_s, self.setup_s)?;
        writeln!(
            f,
            "  steady state    {:.1} images/s, {:.4} s/step (median of {} windows of {} steps: {lo:.1} to {hi:.1} images/s; {} warm-up steps untimed)",
            self.images_per_s,
            self.step_s,
            self.window_images_per_s.len(),
            self.window_steps,
            self.warmup_steps
        )?;
        writeln!(f, "  peak host       {}", mib(self.peak_host_mib))?;
        writeln!(f, "  device memory   {}", mib(self.peak_device_mib))?;
        writeln!(f, "  last loss       {:.5} (step {})", self.final_loss, self.steps)
    }
}

/// What `bench fid --json` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FidBench {
    pub device: String,
    /// Images pushed through the network, in batches of `batch`.
    pub images: usize,
    pub batch: usize,
    /// Side of the RGB input images (resized to 299 on the device, as for FID).
    pub image_size: usize,
    /// Seconds from process start to the end of the first batch: weights, kernel compilation
    /// and tuning.
    pub startup_s: f64,
    /// Images per second after the first batch: upload, resize, network, read-back and the f64
    /// statistics, as `emulsion fid` runs them.
    pub images_per_s: f64,
    pub peak_host_mib: Option<f64>,
    pub peak_device_mib: Option<f64>,
}

/// Pushes `images` random RGB images of side `image_size` through the FID pipeline.
pub fn bench_fid<B: Backend>(
    weights: &std::path::Path,
    images: usize,
    batch: usize,
    image_size: usize,
    device: &B::Device,
    started: Instant,
    device_memory_mib: &dyn Fn() -> Option<f64>,
) -> Result<FidBench, TrainError> {
    use rand::{Rng, SeedableRng};
    if batch == 0 || image_size == 0 || images <= batch {
        return Err(Invalid::new("--n", format!("{images} images leave nothing to time after the first batch of {batch}")).into());
    }
    let inception = emulsion_fid::FeatureNet::Inception(emulsion_fid::InceptionV3::<B>::load(weights, device)?);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut stats = emulsion_fid::StatsAccumulator::new(emulsion_fid::FEATURES);
    let mut after_first = None;
    for start in (0..images).step_by(batch) {
        let n = batch.min(images - start);
        let pixels: Vec<f32> = (0..n * 3 * image_size * image_size).map(|_| rng.random_range(0..=255u8) as f32).collect();
        let pixels = Tensor::<B, 4>::from_data(burn::tensor::TensorData::new(pixels, [n, 3, image_size, image_size]), device);
        emulsion_train::fid::add_features(&inception, pixels, &mut stats);
        after_first.get_or_insert_with(|| (Instant::now(), started.elapsed().as_secs_f64()));
    }
    let (timer, startup_s) = after_first.expect("at least one batch");
    let images_per_s = (images - batch) as f64 / timer.elapsed().as_secs_f64();
    stats.finish()?;
    Ok(FidBench {
        device: String::new(),
        images,
        batch,
        image_size,
        startup_s,
        images_per_s,
        peak_host_mib: peak_host_mib(),
        peak_device_mib: device_memory_mib(),
    })
}

impl std::fmt::Display for FidBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |v: Option<f64>| v.map_or("not reported by this backend".to_string(), |v| format!("{v:.0} MiB"));
        writeln!(f, "Inception FID pipeline on {}: {} random {}x{} RGB images in batches of {}", self.device, self.images, self.image_size, self.image_size, self.batch)?;
        writeln!(f, "  start-up        {:.2} s (to the end of the first batch)", self.startup_s)?;
        writeln!(f, "  throughput      {:.1} images/s after the first batch", self.images_per_s)?;
        writeln!(f, "  peak host       {}", mib(self.peak_host_mib))?;
        writeln!(f, "  device memory   {}", mib(self.peak_device_mib))
    }
}

/// The median of `values` (the mean of the middle two for an even count); NaN when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

fn max_option(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// The process's peak resident memory in MiB (`VmHWM` of `/proc/self/status`); `None` where
/// the system does not report it.
pub fn peak_host_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.trim_start_matches("VmHWM:").trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn windows_follow_the_first_step_and_the_warm_up() {
        let options = |steps, warmup, window| TrainBenchOptions { steps, warmup, window };
        assert_eq!(options(30, 5, 5).windows(), 4);
        assert_eq!(options(7, 1, 5).windows(), 1);
        assert!(options(6, 1, 5).validate().unwrap_err().contains("no timed window"));
        assert!(options(10, 0, 0).validate().is_err());
    }

    #[test]
    fn peak_host_memory_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            let mib = peak_host_mib().expect("VmHWM");
            assert!(mib > 1.0 && mib < 1e6, "{mib} MiB");
        }
    }
}
