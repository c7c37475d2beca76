//! `emulsion fid`: Inception statistics of what a path holds (a folder of images, a training
//! config's images, saved statistics, or a network's samples), for the Fréchet distance
//! between any two.

use std::path::Path;

use burn::prelude::*;
use emulsion_fid::{FeatureStats, InceptionV3, StatsAccumulator, FEATURES};
use emulsion_train::config::Config;
use emulsion_train::data::{self, DataError};
use emulsion_sample::Generator;
use emulsion_train::export::is_weights_file;
use emulsion_train::fid::{add_features, progress_lines, reference_stats, sample_stats, Progress, SampleSpec};
use emulsion_train::run::sampling_network;
use emulsion_train::TrainError;

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
        let (chw, shape) = data::folder::decode_chw(file, None)?;
        if shape != pending_shape || pending.len() >= batch * chw.len() {
            flush(&mut pending, pending_shape, &mut stats);
            pending_shape = shape;
        }
        pending.extend(chw.iter().map(|&p| p as f32));
    }
    flush(&mut pending, pending_shape, &mut stats);
    Ok(stats.finish()?)
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
    if is_network(path) {
        return network_stats(loaded()?.net, path, limit, device);
    }
    if path.is_dir() {
        let label = format!("{}", path.display());
        return folder_stats(loaded()?.net, path, limit, batch, device, &mut progress_lines(&label));
    }
    if !path.is_file() {
        return Err(TrainError::RunDir(format!("{}: no such file or folder", path.display())));
    }
    match extension.as_deref() {
        Some("npz") => Ok(FeatureStats::load_npz(path)?),
        Some("toml") => {
            // A user's config, or a run directory's recorded one (older layouts included).
            let mut config = Config::load_recorded(path)?;
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
            "{}: expected a folder of images, a .toml training config, an .npz of statistics, a run directory or checkpoint, or a .safetensors file of `emulsion export`",
            path.display()
        ))),
    }
}

/// Whether `path` names saved statistics, which need no network.
pub fn is_stats_file(path: &Path) -> bool {
    path.is_file() && path.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("npz"))
}

/// Whether `path` names a network to draw images from: an exported weights file, a checkpoint
/// folder or a run directory.
fn is_network(path: &Path) -> bool {
    is_weights_file(path) || path.join("state.json").is_file() || path.join("checkpoints").is_dir()
}

/// Statistics of images the network `path` names draws: the first `limit` (default: its run's
/// `eval.fid_samples`), sampled as its run's FID does (`[sample]` with `eval.sampler`, `eval.steps`,
/// in batches of `eval.fid_batch`).
fn network_stats<B: Backend>(inception: &InceptionV3<B>, path: &Path, limit: Option<usize>, device: &B::Device) -> Result<FeatureStats, TrainError> {
    let (net, config, unet) = sampling_network::<B>(path, device)?;
    let objective = config.diffusion.build_objective(config.train.steps as u64)?;
    let generator = Generator { precond: objective.precond(), schedule: objective.schedule().clone(), shape: [unet.in_channels, unet.image_size] };
    let options = config.fid_sampling();
    let count = limit.unwrap_or(config.eval.fid_samples);
    // The run's own FID batches: each batch's noise is seeded by its index.
    let spec = SampleSpec { generator: &generator, options: &options, count, batch: config.eval.fid_batch };
    let label = format!("{} ({count} samples)", path.display());
    let stats = sample_stats(inception, &net, &spec, device, &mut progress_lines(&label))?;
    Ok(stats)
}
