//! `emulsion fid`: feature statistics (Inception's, or the `fd_fmnist` classifier's) of what a
//! path holds (a folder of images, a training config's images, saved statistics, or a
//! network's samples), for the Fréchet distance between any two.

use std::path::Path;

use burn::prelude::*;
use emulsion_fid::{FeatureNet, FeatureStats, Metric, StatsAccumulator};
use emulsion_train::config::Config;
use emulsion_train::data::{self, DataError};
use emulsion_sample::{Generator, SamplerKind};
use emulsion_train::export::is_weights_file;
use emulsion_train::fid::{add_features, progress_lines, reference_stats, sample_stats, Progress, SampleSpec};
use emulsion_train::run::sampling_network;
use emulsion_train::TrainError;

/// Statistics of the PNG and JPEG files under `dir` (the first `limit` in sorted order, or all),
/// at their own sizes (grayscale files stay one channel and are repeated to RGB by the network).
pub fn folder_stats<B: Backend>(net: &FeatureNet<B>, dir: &Path, limit: Option<usize>, batch: usize, device: &B::Device, progress: Progress) -> Result<FeatureStats, TrainError> {
    let mut files = Vec::new();
    data::folder::collect(dir, &mut files)?;
    files.sort();
    files.truncate(limit.unwrap_or(usize::MAX));
    if files.is_empty() {
        return Err(DataError::Empty { path: dir.to_path_buf() }.into());
    }
    let mut stats = StatsAccumulator::new(net.dim());
    // Consecutive files of one shape go through the network together.
    let mut pending: Vec<f32> = Vec::new();
    let mut pending_shape = [0usize; 3];
    let mut flush = |pending: &mut Vec<f32>, [c, h, w]: [usize; 3], stats: &mut StatsAccumulator| {
        if !pending.is_empty() {
            let n = pending.len() / (c * h * w);
            add_features(net, Tensor::from_data(TensorData::new(std::mem::take(pending), [n, c, h, w]), device), stats);
            progress(stats.count(), files.len());
        }
    };
    for file in &files {
        let (chw, shape) = data::folder::decode_chw(file, None)?;
        net.check_shape(shape).map_err(|e| TrainError::RunDir(format!("{}: {e}", file.display())))?;
        if shape != pending_shape || pending.len() >= batch * chw.len() {
            flush(&mut pending, pending_shape, &mut stats);
            pending_shape = shape;
        }
        pending.extend(chw.iter().map(|&p| p as f32));
    }
    flush(&mut pending, pending_shape, &mut stats);
    Ok(stats.finish()?)
}

/// The feature network, its metric and the file it was loaded from (which keys the cached
/// statistics).
pub struct LoadedNet<'a, B: Backend> {
    pub metric: Metric,
    pub net: &'a FeatureNet<B>,
    pub weights: &'a Path,
}

/// Statistics of `path`: an `.npz` of statistics (`mu`, `sigma`), a `.toml` training config (its
/// training images, the first `limit` or `eval.fid_reference` of them, cached where its runs
/// cache them), or a folder of images (the first `limit`). `net` is needed for all but
/// statistics files.
///
/// A network's samples are drawn as its run's FID draws them, unless `sampler` (a sampler and
/// its number of levels) says otherwise: a run evaluated at low NFE during training can be
/// judged at high NFE afterwards.
pub fn stats_of_path<B: Backend>(path: &Path, net: Option<LoadedNet<B>>, limit: Option<usize>, batch: usize, sampler: (Option<SamplerKind>, Option<usize>), device: &B::Device) -> Result<FeatureStats, TrainError> {
    let extension = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    let loaded = || net.as_ref().ok_or_else(|| TrainError::RunDir("internal: the feature network was not loaded".into()));
    if is_network(path) {
        return network_stats(loaded()?.net, path, limit, sampler, device);
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
            config.eval.metric = loaded.metric;
            match loaded.metric {
                Metric::Fid => config.eval.inception = loaded.weights.to_path_buf(),
                Metric::FdFmnist => config.eval.fd_net = loaded.weights.to_path_buf(),
            }
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
pub fn is_network(path: &Path) -> bool {
    is_weights_file(path) || path.join("state.json").is_file() || path.join("checkpoints").is_dir()
}

/// Statistics of images the network `path` names draws: the first `limit` (default: its run's
/// `eval.fid_samples`), sampled as its run's FID does (`[sample]` with `eval.sampler`, `eval.steps`,
/// in batches of `eval.fid_batch`).
fn network_stats<B: Backend>(features: &FeatureNet<B>, path: &Path, limit: Option<usize>, (sampler, steps): (Option<SamplerKind>, Option<usize>), device: &B::Device) -> Result<FeatureStats, TrainError> {
    let (net, config, unet) = sampling_network::<B>(path, device)?;
    let objective = config.diffusion.build_objective(config.train.steps as u64)?;
    let generator = Generator { precond: objective.precond(), schedule: objective.schedule().clone(), shape: [unet.in_channels, unet.image_size] };
    let mut options = config.fid_sampling();
    options.sampler = sampler.unwrap_or(options.sampler);
    options.steps = steps.unwrap_or(options.steps);
    options.validate()?;
    let count = limit.unwrap_or(config.eval.fid_samples);
    // The run's own FID batches: each batch's noise is seeded by its index.
    let spec = SampleSpec { generator: &generator, options: &options, count, batch: config.eval.fid_batch };
    let label = format!("{} ({count} samples)", path.display());
    let stats = sample_stats(features, &net, &spec, device, &mut progress_lines(&label))?;
    Ok(stats)
}
