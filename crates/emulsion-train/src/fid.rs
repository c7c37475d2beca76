//! FID in and out of training: Inception statistics of a dataset, an image folder or generated
//! samples; the reference statistics of a run, computed once and cached; FID lines in
//! `metrics.jsonl` and the FID curve.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::prelude::*;
use emulsion_fid::{FeatureStats, InceptionV3, ReferenceStats, StatsAccumulator, FEATURES};
use emulsion_models::{Network, Precond};
use emulsion_schedule::Schedule;
use serde::{Deserialize, Serialize};

use crate::config::{Config, SampleConfig};
use crate::data::{self, DataError, ImageSet};
use crate::seeds::{self, Stream};
use crate::{sampling, TrainError};

/// Told `(images done, images in all)` after every batch.
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize);

/// A progress line on stderr: `label: done/total images, rate, ETA`, redrawn in place.
pub fn progress_bar(label: &str) -> impl FnMut(usize, usize) + '_ {
    let started = Instant::now();
    move |done, total| {
        let seconds = started.elapsed().as_secs_f64().max(1e-9);
        let rate = done as f64 / seconds;
        let eta = if rate > 0.0 { (total - done) as f64 / rate } else { f64::NAN };
        let bar: String = (0..30).map(|i| if i * total < 30 * done { '#' } else { '.' }).collect();
        eprint!("\r{label}: [{bar}] {done}/{total} images, {rate:.1}/s, ETA {}   ", crate::monitor::format_duration(eta));
        if done == total {
            eprintln!();
        }
    }
}

/// Adds the Inception features of `pixels` (`[N, C, H, W]`, values 0–255) to `stats`.
fn add_features<B: Backend>(inception: &InceptionV3<B>, pixels: Tensor<B, 4>, stats: &mut StatsAccumulator) {
    let features: Vec<f32> = inception.features(pixels).into_data().convert::<f32>().to_vec().expect("float features");
    stats.add(&features);
}

/// Statistics of the first `count` images of `set`.
pub fn dataset_stats<B: Backend>(inception: &InceptionV3<B>, set: &ImageSet, count: usize, batch: usize, device: &B::Device, progress: Progress) -> Result<FeatureStats, TrainError> {
    let mut stats = StatsAccumulator::new(FEATURES);
    let shape = [set.channels, set.size, set.size];
    for start in (0..count).step_by(batch) {
        let end = (start + batch).min(count);
        let pixels: Vec<f32> = (start..end).flat_map(|i| set.image(i).iter().map(|&p| p as f32)).collect();
        let pixels = Tensor::from_data(TensorData::new(pixels, [end - start, shape[0], shape[1], shape[2]]), device);
        add_features(inception, pixels, &mut stats);
        progress(end, count);
    }
    Ok(stats.finish()?)
}

/// Statistics of the PNG and JPEG files under `dir` (the first `limit` in sorted order, or all),
/// at their own sizes (grayscale files stay one channel and are repeated to RGB by the network).
pub fn folder_stats<B: Backend>(inception: &InceptionV3<B>, dir: &Path, limit: Option<usize>, batch: usize, device: &B::Device, progress: Progress) -> Result<FeatureStats, TrainError> {
    let mut files = Vec::new();
    data::folder::collect(dir, &mut files)?;
    files.sort();
    files.truncate(limit.unwrap_or(usize::MAX));
    if files.is_empty() {
        return Err(DataError::Empty { path: dir.to_path_buf() }.into());
    }
    let mut stats = StatsAccumulator::new(FEATURES);
    // Consecutive files of one shape go through the network together.
    let mut pending: Vec<f32> = Vec::new();
    let mut pending_shape = [0usize; 3];
    let mut flush = |pending: &mut Vec<f32>, [c, h, w]: [usize; 3], stats: &mut StatsAccumulator| {
        if !pending.is_empty() {
            let n = pending.len() / (c * h * w);
            add_features(inception, Tensor::from_data(TensorData::new(std::mem::take(pending), [n, c, h, w]), device), stats);
            progress(stats.count(), files.len());
        }
    };
    for file in &files {
        let image = image::open(file).map_err(|source| DataError::Image { path: file.clone(), source })?;
        let (w, h) = (image.width() as usize, image.height() as usize);
        let channels = if image.color().has_color() { 3 } else { 1 };
        let hwc = if channels == 1 { image.to_luma8().into_raw() } else { image.to_rgb8().into_raw() };
        let shape = [channels, h, w];
        if shape != pending_shape || pending.len() >= batch * channels * h * w {
            flush(&mut pending, pending_shape, &mut stats);
            pending_shape = shape;
        }
        // Interleaved HWC → planar CHW.
        pending.extend((0..channels).flat_map(|c| hwc.iter().skip(c).step_by(channels).map(|&p| p as f32)));
    }
    flush(&mut pending, pending_shape, &mut stats);
    Ok(stats.finish()?)
}

/// Images in `[-1, 1]` quantised to the 0–255 values a PNG of them would hold.
pub fn to_pixels<B: Backend>(images: Tensor<B, 4>) -> Tensor<B, 4> {
    ((images.clamp(-1.0, 1.0) + 1.0) * 127.5).round()
}

/// What a network's FID images are: how they are sampled, how many, and their shape.
pub struct SampleSpec<'a> {
    pub precond: Precond,
    pub schedule: &'a Schedule,
    pub options: &'a SampleConfig,
    pub count: usize,
    pub batch: usize,
    /// `[channels, size]`.
    pub shape: [usize; 2],
}

/// Statistics of `spec.count` images generated by `net`, batch `b` from noise seeded by
/// `(options.seed, b)`.
pub fn sample_stats<B: Backend, N: Network<B>>(inception: &InceptionV3<B>, net: &N, spec: &SampleSpec, device: &B::Device, progress: Progress) -> Result<FeatureStats, TrainError> {
    let mut stats = StatsAccumulator::new(FEATURES);
    for (b, start) in (0..spec.count).step_by(spec.batch).enumerate() {
        let n = spec.batch.min(spec.count - start);
        let options = SampleConfig { seed: seeds::derive(spec.options.seed, Stream::Fid, b as u64), ..spec.options.clone() };
        let images = sampling::generate(net, spec.precond, spec.schedule, &options, start..start + n, spec.shape, device);
        add_features(inception, to_pixels(images), &mut stats);
        progress(start + n, spec.count);
    }
    Ok(stats.finish()?)
}

/// The reference statistics of `config`'s training images `set` (the first `eval.fid_reference`,
/// or all), read from `cache_dir` when an earlier run computed them for the same images.
pub fn reference_stats<B: Backend>(config: &Config, set: &ImageSet, inception: &InceptionV3<B>, cache_dir: &Path, device: &B::Device) -> Result<FeatureStats, TrainError> {
    let count = match config.eval.fid_reference {
        0 => set.len(),
        n => n.min(set.len()),
    };
    // Everything that decides which pixels the statistics summarise, and the network.
    let key = format!(
        "{}|{}|{:?}|{}x{}x{}|{:?}|{count}|{:016x}",
        crate::config::enum_name(&config.data.dataset),
        config.data_path().map(|p| std::fs::canonicalize(&p).unwrap_or(p)).unwrap_or_default().display(),
        config.data.split,
        set.channels,
        set.size,
        set.size,
        config.data.limit,
        weights_fingerprint(&config.eval.inception),
    );
    let cache = cache_dir.join(format!("fid-reference-{:016x}.npz", fnv1a(key.as_bytes())));
    if cache.is_file() {
        match FeatureStats::load_npz(&cache) {
            Ok(stats) => {
                eprintln!("FID reference statistics: {}", cache.display());
                return Ok(stats);
            }
            Err(e) => tracing::warn!("{e}; computing the reference statistics again"),
        }
    }
    let label = format!("FID reference ({count} training images)");
    let stats = dataset_stats(inception, set, count, config.eval.fid_batch, device, &mut progress_bar(&label))?;
    std::fs::create_dir_all(cache_dir).map_err(|source| TrainError::Io { path: cache_dir.to_path_buf(), source })?;
    stats.save_npz(&cache)?;
    eprintln!("FID reference statistics saved to {}", cache.display());
    Ok(stats)
}

/// The Inception network and the file it was loaded from (which keys the cached statistics).
pub struct LoadedInception<'a, B: Backend> {
    pub net: &'a InceptionV3<B>,
    pub weights: &'a Path,
}

/// Statistics of `path`: an `.npz` of statistics (`mu`, `sigma`), a `.toml` training config (its
/// training images, the first `limit` or `eval.fid_reference` of them, cached where its runs
/// cache them), or a folder of images (the first `limit`). `inception` is needed for all but
/// statistics files.
pub fn stats_of_path<B: Backend>(path: &Path, inception: Option<LoadedInception<B>>, limit: Option<usize>, batch: usize, device: &B::Device) -> Result<FeatureStats, TrainError> {
    let extension = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    let loaded = || inception.as_ref().ok_or_else(|| TrainError::RunDir("internal: the Inception network was not loaded".into()));
    if path.is_dir() {
        let label = format!("{}", path.display());
        return folder_stats(loaded()?.net, path, limit, batch, device, &mut progress_bar(&label));
    }
    if !path.is_file() {
        return Err(TrainError::RunDir(format!("{}: no such file or folder", path.display())));
    }
    match extension.as_deref() {
        Some("npz") => Ok(FeatureStats::load_npz(path)?),
        Some("toml") => {
            let mut config = Config::load(path, &[])?;
            let loaded = loaded()?;
            config.eval.fid_batch = batch;
            config.eval.inception = loaded.weights.to_path_buf();
            if let Some(limit) = limit {
                config.eval.fid_reference = limit;
            }
            let cache = config.eval.fid_cache.clone().unwrap_or_else(|| config.run_dir());
            reference_stats(&config, &data::load(&config)?, loaded.net, &cache, device)
        }
        _ => Err(TrainError::RunDir(format!(
            "{}: expected a folder of images, a .toml training config or an .npz of statistics",
            path.display()
        ))),
    }
}

/// Whether `path` names saved statistics, which need no network.
pub fn is_stats_file(path: &Path) -> bool {
    path.is_file() && path.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("npz"))
}

/// A fingerprint of a weights file: its length and its first MiB (the header, with the
/// converter's source checksum, and the first tensors).
fn weights_fingerprint(path: &Path) -> u64 {
    use std::io::Read;
    let mut head = Vec::new();
    let len = std::fs::File::open(path).and_then(|f| {
        let len = f.metadata()?.len();
        f.take(1 << 20).read_to_end(&mut head)?;
        Ok(len)
    });
    fnv1a(&head) ^ len.unwrap_or(0)
}

/// FNV-1a, 64 bits: a stable name for a cache key.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// One FID evaluation, as a line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FidLine {
    pub step: u64,
    pub fid: f64,
    pub fid_samples: usize,
    /// Seconds the evaluation took (sampling, Inception and the distance).
    pub fid_seconds: f64,
}

/// Appends `line` to the journal in one write, so it never interleaves with the monitor's.
pub fn append_fid_line(journal: &Path, line: &FidLine) -> std::io::Result<()> {
    let text = serde_json::to_string(line).map_err(std::io::Error::other)? + "\n";
    std::fs::OpenOptions::new().create(true).append(true).open(journal)?.write_all(text.as_bytes())
}

/// The FID lines of a journal, in step order.
pub fn read_fid_lines(journal: &Path) -> std::io::Result<Vec<FidLine>> {
    let text = match std::fs::read_to_string(journal) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut lines: Vec<FidLine> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    lines.sort_by_key(|l| l.step);
    Ok(lines)
}

/// Whether step `step` of a `total`-step run evaluates FID: every `every` steps (0: never) and
/// at the last.
pub fn fid_due(every: u64, step: u64, total: u64) -> bool {
    every > 0 && (step % every == 0 || step == total)
}

/// FID during training: the network, the reference, and where results go.
pub struct FidPlan<B: Backend> {
    pub inception: InceptionV3<B>,
    pub reference: ReferenceStats,
    pub every: u64,
    pub samples: usize,
    pub batch: usize,
    pub options: SampleConfig,
    pub journal: PathBuf,
    pub curve: PathBuf,
}

impl<B: Backend> FidPlan<B> {
    /// Loads the network and the (cached) reference statistics of `config`'s run, whose
    /// training images are `set`.
    pub fn prepare(config: &Config, set: &ImageSet, journal: PathBuf, curve: PathBuf, cache_dir: &Path, device: &B::Device) -> Result<Self, TrainError> {
        let inception = InceptionV3::load(&config.eval.inception, device)?;
        let reference = ReferenceStats::new(reference_stats(config, set, &inception, cache_dir, device)?);
        Ok(Self {
            inception,
            reference,
            every: config.eval.fid_every as u64,
            samples: config.eval.fid_samples,
            batch: config.eval.fid_batch,
            options: config.fid_sampling(),
            journal,
            curve,
        })
    }

    /// FID of `net`'s samples at `step`, logged to the journal and drawn on the FID curve.
    pub fn evaluate<N: Network<B>>(&self, net: &N, precond: Precond, schedule: &Schedule, shape: [usize; 2], step: u64, device: &B::Device) -> Result<f64, TrainError> {
        let started = Instant::now();
        let spec = SampleSpec { precond, schedule, options: &self.options, count: self.samples, batch: self.batch, shape };
        let label = format!("FID at step {step}");
        let stats = sample_stats(&self.inception, net, &spec, device, &mut progress_bar(&label))?;
        let fid = self.reference.distance(&stats)?;
        let line = FidLine { step, fid, fid_samples: self.samples, fid_seconds: started.elapsed().as_secs_f64() };
        eprintln!("step {step}: FID {fid:.3} ({} samples, {:.1} s)", self.samples, line.fid_seconds);
        append_fid_line(&self.journal, &line).map_err(|source| TrainError::Io { path: self.journal.clone(), source })?;
        let points: Vec<(f64, f64)> = read_fid_lines(&self.journal).unwrap_or_default().iter().map(|l| (l.step as f64, l.fid)).collect();
        if let Err(e) = crate::monitor::plot_curves(&[("FID".to_string(), points)], "FID", "FID", false, &self.curve) {
            tracing::warn!("cannot draw {}: {e}", self.curve.display());
        }
        Ok(fid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fid_lines_and_training_lines_share_the_journal() {
        let dir = std::env::temp_dir().join(format!("emulsion-fid-journal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let journal = dir.join("metrics.jsonl");
        std::fs::write(&journal, "{\"step\":10,\"loss\":0.5,\"lr\":0.001,\"images_per_s\":3.0,\"wall_time_s\":1.0}\n").unwrap();
        let line = |step, fid| FidLine { step, fid, fid_samples: 100, fid_seconds: 2.0 };
        append_fid_line(&journal, &line(20, 40.0)).unwrap();
        append_fid_line(&journal, &line(10, 50.0)).unwrap();
        assert_eq!(read_fid_lines(&journal).unwrap(), vec![line(10, 50.0), line(20, 40.0)]);
        // The training lines still read as before, FID lines skipped.
        assert_eq!(crate::monitor::read_journal(&journal).unwrap().len(), 1);
        // Resuming at step 10 drops the FID of step 20 with the training lines after 10.
        crate::monitor::truncate_journal(&journal, 10).unwrap();
        assert_eq!(read_fid_lines(&journal).unwrap(), vec![line(10, 50.0)]);
        assert_eq!(crate::monitor::read_journal(&journal).unwrap().len(), 1);
    }

    #[test]
    fn fid_batches_continue_the_class_cycle() {
        let device = Default::default();
        let labels = |range| -> Vec<i64> { crate::sampling::grid_labels::<crate::TestBackend>(range, 10, &device).unwrap().into_data().convert::<i64>().to_vec().unwrap() };
        // Batches of 4 of 10 classes: the second batch starts at class 4, the third at 8.
        assert_eq!(labels(0..4), vec![0, 1, 2, 3]);
        assert_eq!(labels(8..13), vec![8, 9, 0, 1, 2]);
        assert!(fid_due(5, 10, 12) && fid_due(5, 12, 12) && !fid_due(5, 11, 12) && !fid_due(0, 12, 12));
    }

    #[test]
    fn samples_quantise_like_a_png() {
        let device = Default::default();
        let x = Tensor::<crate::TestBackend, 4>::from_floats([[[[-1.5, -1.0, 0.0, 0.999, 1.0]]]], &device);
        let p: Vec<f32> = to_pixels(x).into_data().to_vec().unwrap();
        assert_eq!(p, vec![0.0, 0.0, 128.0, 255.0, 255.0]);
    }
}
