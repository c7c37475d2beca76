//! `emulsion fd-net train`: trains the classifier of the `fd_fmnist` metric
//! ([`emulsion_fid::fd_fmnist`]) once, deterministically on a deterministic backend (Flex; not
//! Burn's threaded ndarray): its initial weights (drawn on the host), the order of every epoch
//! and so every update are pure functions of the seed. It records what it was trained on, its
//! test accuracy and the metric's floor beside its weights.
//!
//! Data: Fashion-MNIST's training split (60,000 images; the Debian package
//! `dataset-fashion-mnist`) when the folder holds it, tested on the test split; otherwise the
//! shipped 10,000-image test split, trained on all but the last `holdout` images and tested on
//! those.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use emulsion_fid::fd_fmnist::{FdNetConfig, IMAGE_SIZE};
use emulsion_fid::{frechet_distance, FdNet, FeatureNet};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::config::Split;
use crate::data::{idx, DataError, ImageSet};
use emulsion_config::Invalid;
use crate::seeds::{self, Stream};
use crate::TrainError;

/// Where the Debian package `dataset-fashion-mnist` installs both splits.
pub const SYSTEM_DATA: &str = "/usr/share/datasets/fashion-mnist";

/// How the classifier is trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FdNetTraining {
    /// Folder of Fashion-MNIST's IDX files.
    pub data: PathBuf,
    pub epochs: usize,
    pub batch: usize,
    /// Adam's learning rate, constant.
    pub lr: f64,
    pub seed: u64,
    /// Test images held out of the test split when the folder has no training split.
    pub holdout: usize,
    /// Train on at most this many images (quick checks).
    pub limit: Option<usize>,
    /// Output channels of the three convolutions (the last is the feature length).
    pub channels: [usize; 3],
}

impl Default for FdNetTraining {
    fn default() -> Self {
        let system = Path::new(SYSTEM_DATA);
        let has_train = idx::load(system, Split::Train, None).is_ok();
        Self {
            data: if has_train { system.into() } else { "datasets/fashion-mnist".into() },
            epochs: 8,
            batch: 128,
            lr: 1e-3,
            seed: 0,
            holdout: 2_000,
            limit: None,
            channels: FdNetConfig::new().channels,
        }
    }
}

/// What training gave: recorded in the weights file (metadata key `emulsion_fd_net`) and in the
/// JSON file beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FdNetRecord {
    pub training: FdNetTraining,
    /// Which images it learnt from, e.g. `train split, images 0..60000`.
    pub train_images: String,
    pub test_images: String,
    /// Fraction of the test images classified right.
    pub test_accuracy: f64,
    /// The metric's floor: `fd_fmnist` between the first `floor_images` training images and as
    /// many test images. A generator cannot be told from the data below it.
    pub floor: f64,
    pub floor_images: usize,
    /// Mean cross-entropy of the last epoch.
    pub final_loss: f64,
    /// Wall time of the training; in the JSON beside the weights only, so identical trainings
    /// write identical weights files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
}

/// The training and test images `options` describe, and their descriptions.
fn split_data(options: &FdNetTraining) -> Result<(ImageSet, String, ImageSet, String), TrainError> {
    let load = |split| idx::load(&options.data, split, None);
    let (mut train, train_name, test, test_name) = match load(Split::Train) {
        Ok(train) => {
            let test = load(Split::Test)?;
            let test_name = format!("test split, images 0..{}", test.len());
            (train, "train split", test, test_name)
        }
        // No training split: hold out part of the test split. (A damaged one is an error.)
        Err(DataError::NotFound { .. }) => {
            let all = load(Split::Test)?;
            if options.holdout == 0 || options.holdout >= all.len() {
                return Err(Invalid::new("--holdout", format!("{} must be between 1 and the {} images of the test split in {}, exclusive", options.holdout, all.len(), options.data.display())).into());
            }
            let cut = all.len() - options.holdout;
            let part = |range: std::ops::Range<usize>| ImageSet {
                pixels: all.pixels[range.start * all.image(0).len()..range.end * all.image(0).len()].to_vec(),
                labels: all.labels.as_ref().map(|l| l[range].to_vec()),
                ..all.clone()
            };
            (part(0..cut), "test split", part(cut..all.len()), format!("test split, images {cut}..{}", all.len()))
        }
        Err(other) => return Err(other.into()),
    };
    if let Some(limit) = options.limit {
        train.truncate(limit);
    }
    for (set, name) in [(&train, train_name), (&test, test_name.as_str())] {
        if set.labels.is_none() {
            return Err(DataError::NotFound { what: format!("the labels of the {name} (`…-labels-idx1-ubyte[.gz]`)"), path: options.data.clone(), hint: "the classifier learns from labelled images".into() }.into());
        }
        if set.channels != 1 || set.size != IMAGE_SIZE {
            return Err(Invalid::new("--data", format!("{}: the classifier takes 1×28×28 images, the {name} holds {}×{}×{}", options.data.display(), set.channels, set.size, set.size)).into());
        }
    }
    let train_name = format!("{train_name}, images 0..{}", train.len());
    Ok((train, train_name, test, test_name))
}

/// The network `FdNetConfig::init` builds, its weights drawn on the host from `(seed, Init)`:
/// the backend's generator is global and shared, so a draw elsewhere in the process could
/// change it, and it differs between backends.
fn seeded_init<B: Backend>(channels: [usize; 3], seed: u64, device: &B::Device) -> FdNet<B> {
    use rand::Rng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seeds::derive(seed, Stream::Init, 0));
    FdNetConfig::new().with_channels(channels).init_with(device, |shape, bound| {
        let bound = bound as f32;
        TensorData::new((0..shape.iter().product::<usize>()).map(|_| rng.random_range(-bound..=bound)).collect(), shape.to_vec())
    })
}

/// Images `indices` of `set` as a `[n, 1, 28, 28]` tensor of pixel values, and their labels.
fn batch<B: Backend>(set: &ImageSet, indices: &[usize], device: &B::Device) -> (Tensor<B, 4>, Tensor<B, 1, Int>) {
    let pixels: Vec<f32> = indices.iter().flat_map(|&i| set.image(i).iter().map(|&p| p as f32)).collect();
    let labels: Vec<i64> = indices.iter().map(|&i| set.labels.as_ref().expect("checked")[i] as i64).collect();
    let n = indices.len();
    (Tensor::from_data(TensorData::new(pixels, [n, 1, IMAGE_SIZE, IMAGE_SIZE]), device), Tensor::from_data(TensorData::new(labels, [n]), device))
}

/// Trains the classifier as `options` say; `progress` is told `(epoch, epochs, mean loss)`.
pub fn train<B: AutodiffBackend>(options: &FdNetTraining, device: &B::Device, progress: &mut dyn FnMut(usize, usize, f64)) -> Result<(FdNet<B::InnerBackend>, FdNetRecord), TrainError> {
    for (key, ok) in [("--epochs", options.epochs > 0), ("--batch", options.batch > 0), ("--lr", options.lr > 0.0 && options.lr.is_finite()), ("--channels", !options.channels.contains(&0))] {
        if !ok {
            return Err(Invalid::new(key, "must be positive").into());
        }
    }
    if options.limit.is_some_and(|n| n < 2) {
        return Err(Invalid::new("--limit", "must be at least 2 (the floor's covariances need two images)").into());
    }
    let started = Instant::now();
    let (train_set, train_images, test_set, test_images) = split_data(options)?;
    let mut net = seeded_init::<B>(options.channels, options.seed, device);
    let mut optimizer = AdamConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let mut final_loss = f64::NAN;
    for epoch in 0..options.epochs {
        let mut order: Vec<usize> = (0..train_set.len()).collect();
        order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seeds::derive(options.seed, Stream::DataOrder, epoch as u64)));
        let (mut sum, mut count) = (0.0, 0);
        for indices in order.chunks(options.batch) {
            let (pixels, labels) = batch::<B>(&train_set, indices, device);
            let loss = loss_fn.forward(net.logits(pixels), labels);
            sum += loss.clone().into_scalar().elem::<f64>() * indices.len() as f64;
            count += indices.len();
            let grads = GradientsParams::from_grads(loss.backward(), &net);
            net = optimizer.step(options.lr, net, grads);
        }
        final_loss = sum / count as f64;
        if !final_loss.is_finite() {
            return Err(Invalid::new("--lr", format!("the loss diverged in epoch {} at lr {}: lower it", epoch + 1, options.lr)).into());
        }
        progress(epoch + 1, options.epochs, final_loss);
    }
    let net = net.valid();
    let test_accuracy = accuracy(&net, &test_set, options.batch, device);
    let floor_images = train_set.len().min(test_set.len());
    let features = FeatureNet::FdFmnist(net);
    let stats = |set: &ImageSet| crate::fid::dataset_stats(&features, set, 0..floor_images, options.batch, device, &mut |_, _| {});
    let floor = frechet_distance(&stats(&train_set)?, &stats(&test_set)?)?;
    let FeatureNet::FdFmnist(net) = features else { unreachable!("built above") };
    let record = FdNetRecord { training: options.clone(), train_images, test_images, test_accuracy, floor, floor_images, final_loss, seconds: Some(started.elapsed().as_secs_f64()) };
    Ok((net, record))
}

/// Fraction of `set` whose largest logit is its label.
pub fn accuracy<B: Backend>(net: &FdNet<B>, set: &ImageSet, batch_size: usize, device: &B::Device) -> f64 {
    let indices: Vec<usize> = (0..set.len()).collect();
    let mut right = 0;
    for chunk in indices.chunks(batch_size) {
        let (pixels, labels) = batch::<B>(set, chunk, device);
        let guess = net.logits(pixels).argmax(1).reshape([chunk.len()]);
        right += guess.equal(labels).int().sum().into_scalar().elem::<i64>();
    }
    right as f64 / set.len().max(1) as f64
}

/// Writes `net` with `record` (less its wall time) to `out`, and the record as JSON beside it
/// (`out` with `.json`).
pub fn save<B: Backend>(net: &FdNet<B>, record: &FdNetRecord, out: &Path) -> Result<PathBuf, TrainError> {
    if out.extension().is_some_and(|e| e.eq_ignore_ascii_case("json")) {
        return Err(Invalid::new("--out", format!("{}: the weights file cannot be a .json (the record goes beside it as one)", out.display())).into());
    }
    let json = serde_json::to_string_pretty(record).expect("the record serialises");
    let metadata = serde_json::to_string(&FdNetRecord { seconds: None, ..record.clone() }).expect("the record serialises");
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TrainError::Io { path, source }
    };
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    write_whole(out, &net.encode(&metadata)).map_err(io(out))?;
    let beside = out.with_extension("json");
    write_whole(&beside, format!("{json}\n").as_bytes()).map_err(io(&beside))?;
    Ok(beside)
}

/// Writes `bytes` beside `path` and renames them into place: a reader never sees half a file.
fn write_whole(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{TestAutodiffBackend, TestBackend};

    fn tiny(limit: usize) -> FdNetTraining {
        FdNetTraining {
            data: concat!(env!("CARGO_MANIFEST_DIR"), "/../../datasets/fashion-mnist").into(),
            epochs: 3,
            batch: 32,
            lr: 1e-2,
            seed: 5,
            holdout: 200,
            limit: Some(limit),
            channels: [8, 16, 32],
        }
    }

    /// `emulsion fd-net train --device cpu`'s backend. Burn's ndarray, built with its threads and
    /// SIMD (as the workspace builds it), trains this network to other bits each time; Flex does not.
    type Cpu = burn::backend::Autodiff<burn::backend::Flex>;

    #[test]
    fn the_classifier_trains_deterministically_and_learns() {
        let device = Default::default();
        let options = tiny(1024);
        let (a, record) = train::<Cpu>(&options, &device, &mut |_, _, _| {}).unwrap();
        let (b, again) = train::<Cpu>(&options, &device, &mut |_, _, _| {}).unwrap();
        assert_eq!(a.encode(""), b.encode(""), "same seed, same weights, bit for bit");
        assert_eq!((record.test_accuracy, record.floor, record.final_loss), (again.test_accuracy, again.floor, again.final_loss));
        assert_eq!(record.train_images, "test split, images 0..1024");
        assert_eq!(record.test_images, "test split, images 9800..10000");
        assert_eq!(record.floor_images, 200);
        // Ten classes: chance is 0.1; three epochs of 1,024 images do far better (0.605 seen).
        assert!(record.test_accuracy > 0.3, "{record:?}");
        let (c, _) = train::<Cpu>(&FdNetTraining { seed: 6, ..options }, &device, &mut |_, _, _| {}).unwrap();
        assert_ne!(a.encode(""), c.encode(""), "another seed, other weights");
    }

    #[test]
    fn fd_of_a_set_with_itself_is_zero_and_train_against_test_is_small_and_stable() {
        let device = Default::default();
        let (net, record) = train::<Cpu>(&tiny(1024), &device, &mut |_, _, _| {}).unwrap();
        let (train_set, _, test_set, _) = split_data(&tiny(1024)).unwrap();
        let features = FeatureNet::FdFmnist(net);
        // In batches of `train`'s, so the floor's sums are the same.
        let stats = |set: &ImageSet, range| crate::fid::dataset_stats(&features, set, range, 32, &device, &mut |_, _| {}).unwrap();
        assert!(frechet_distance(&stats(&test_set, 0..200), &stats(&test_set, 0..200)).unwrap().abs() < 1e-9);
        // Two disjoint samples of one distribution are close; the floor is what `train` recorded.
        let floor = frechet_distance(&stats(&train_set, 0..200), &stats(&test_set, 0..200)).unwrap();
        assert_eq!(floor, record.floor);
        let other_half = frechet_distance(&stats(&train_set, 200..400), &stats(&test_set, 0..200)).unwrap();
        // Far from images of another distribution: the same images, inverted.
        let inverted = ImageSet { pixels: test_set.pixels.iter().map(|p| 255 - p).collect(), ..test_set.clone() };
        let far = frechet_distance(&stats(&train_set, 0..200), &stats(&inverted, 0..200)).unwrap();
        assert!(floor > 0.0 && far > 10.0 * floor.max(other_half), "floor {floor}, other half {other_half}, inverted {far}");
        assert!((floor - other_half).abs() < 0.5 * floor.max(other_half), "stable across samples: {floor} vs {other_half}");
    }

    #[test]
    fn bad_options_and_data_are_named() {
        let _rng = crate::lock_backend_rng();
        let device = Default::default();
        let error = |options: FdNetTraining| train::<TestAutodiffBackend>(&options, &device, &mut |_, _, _| {}).unwrap_err().to_string();
        assert_eq!(error(FdNetTraining { epochs: 0, ..tiny(64) }), "`--epochs`: must be positive");
        assert!(error(FdNetTraining { holdout: 10_000, ..tiny(64) }).starts_with("`--holdout`: 10000 must be"));
        let e = error(FdNetTraining { data: "/nonexistent/fmnist".into(), ..tiny(64) });
        assert!(e.contains("/nonexistent/fmnist"), "{e}");
        assert!(error(FdNetTraining { limit: Some(1), ..tiny(64) }).starts_with("`--limit`"));
        // A damaged training split is an error, not a reason to fall back to the test split.
        let dir = std::env::temp_dir().join(format!("emulsion-fd-damaged-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(tiny(64).data.join("t10k-images-idx3-ubyte.gz"), dir.join("t10k-images-idx3-ubyte.gz")).unwrap();
        std::fs::copy(tiny(64).data.join("t10k-labels-idx1-ubyte.gz"), dir.join("t10k-labels-idx1-ubyte.gz")).unwrap();
        std::fs::write(dir.join("train-images-idx3-ubyte"), b"not idx").unwrap();
        let e = error(FdNetTraining { data: dir.clone(), ..tiny(64) });
        assert!(e.contains("train-images-idx3-ubyte"), "{e}");
        let net = FdNetConfig::new().with_channels([2, 2, 2]).init::<TestBackend>(&device);
        let record = FdNetRecord { training: tiny(64), train_images: String::new(), test_images: String::new(), test_accuracy: 0.0, floor: 0.0, floor_images: 0, final_loss: 0.0, seconds: Some(1.0) };
        assert!(save(&net, &record, &dir.join("w.json")).unwrap_err().to_string().starts_with("`--out`"));
        // The wall time stays out of the weights file, so identical trainings write identical bytes.
        save(&net, &record, &dir.join("w.safetensors")).unwrap();
        let first = std::fs::read(dir.join("w.safetensors")).unwrap();
        save(&net, &FdNetRecord { seconds: Some(2.0), ..record }, &dir.join("w.safetensors")).unwrap();
        assert_eq!(first, std::fs::read(dir.join("w.safetensors")).unwrap());
        assert!(std::fs::read_to_string(dir.join("w.json")).unwrap().contains("\"seconds\": 2.0"));
    }
}
