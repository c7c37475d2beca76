//! Emulsion's trainer: configuration, datasets, objectives, checkpoints, and the wiring of it
//! all into Burn's `Learner` (the samplers are `emulsion-sample`'s).
//!
//! - [`config`]: the TOML configuration and its validation.
//! - [`data`]: CIFAR-10, IDX and image-folder datasets; the step-indexed loader.
//! - [`objective`]: training objectives behind one interface.
//! - [`trainer`]: the module Burn trains (network + EMA) and its `TrainStep`.
//! - [`strategy`]: the step-based learning strategy.
//! - [`checkpoint`]: atomic, resumable checkpoints.
//! - [`export`]: weights as EDM SongUNet's state dict in safetensors (export, snapshots, import).
//! - [`fid`]: FID during training: the training images' cached statistics and those of samples.
//! - [`distributed`]: data-parallel training on Burn's collective.
//! - [`run`]: a run end to end.

pub mod checkpoint;
pub mod config;
#[cfg(test)]
mod config_docs;
pub mod data;
pub mod distributed;
pub mod export;
pub mod fd_net;
pub mod fid;
pub mod journal;
pub mod lock;
pub mod metrics;
pub mod monitor;
pub mod objective;
pub mod optim;
pub mod record_check;
pub mod run;
pub mod seeds;
pub mod strategy;
pub mod trainer;

use std::path::PathBuf;

pub use config::Config;
pub use run::{sample, train, Resume, SampleRequest, TrainOptions, TrainReport};

/// Why a run could not start or finish.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Data(#[from] data::DataError),
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error(transparent)]
    Fid(#[from] emulsion_fid::FidError),
    #[error(transparent)]
    Invalid(#[from] emulsion_config::Invalid),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    RunDir(String),
    /// A weights file (`emulsion export`, a sampling snapshot, `--init-from`) that cannot be used.
    #[error("{}: {reason}", path.display())]
    Weights { path: PathBuf, reason: String },
    #[error("the device failed: {0}")]
    Device(String),
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    /// A non-finite loss, gradient norm or weight at `step`.
    #[error("step {step}: {message}")]
    NonFinite { step: u64, message: String },
    #[error(transparent)]
    Peer(#[from] distributed::PeerError),
}

#[cfg(test)]
pub(crate) type TestBackend = burn::backend::NdArray<f32>;
#[cfg(test)]
pub(crate) type TestAutodiffBackend = burn::backend::Autodiff<TestBackend>;

/// Serialises the tests that draw from the backend's generator: it is one global per backend,
/// and tests run on parallel threads, so a seeded test must not share it with another.
#[cfg(test)]
pub(crate) fn lock_backend_rng() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
