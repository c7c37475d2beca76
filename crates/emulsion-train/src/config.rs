//! The training configuration: TOML through serde, unknown keys rejected, command-line
//! overrides (`--set train.steps=2000`) applied on top, and errors that name the file, the key
//! and the line.

use std::fmt;
use std::path::{Path, PathBuf};

use emulsion_assign::AssignConfig;
use emulsion_config::Invalid;
use emulsion_models::embedding::NoiseEmbedding;
use emulsion_sample::{SampleConfig, SamplerKind};
use emulsion_schedule::{Curve, Schedule};
use serde::{Deserialize, Serialize};

use crate::distributed::DistributedConfig;
use crate::objective::{LevelChoice, Objective, ObjectiveConfig};

/// A whole run's configuration. Each section documents its keys in `configs/*.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub run: RunConfig,
    pub data: DataConfig,
    #[serde(default)]
    pub model: ModelConfig,
    #[serde(default)]
    pub diffusion: DiffusionConfig,
    #[serde(default)]
    pub assignment: AssignConfig,
    #[serde(default)]
    pub train: TrainConfig,
    #[serde(default)]
    pub sample: SampleConfig,
    #[serde(default)]
    pub eval: EvalConfig,
    #[serde(default)]
    pub distributed: DistributedConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// The run directory is `<out_dir>/<name>`.
    pub name: String,
    pub out_dir: PathBuf,
    /// Seeds weights, data order, noise and dropout.
    pub seed: u64,
    pub device: DeviceChoice,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self { name: "default".into(), out_dir: "runs".into(), seed: 0, device: DeviceChoice::Auto }
    }
}

/// Where tensors live. The backend must have been compiled into the binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum), value(rename_all = "lowercase"))]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA if compiled in and present, else a WGPU GPU if one exists, else the CPU.
    #[default]
    Auto,
    /// The CPU, on Burn's Flex backend (the faster CPU backend for this UNet).
    Cpu,
    /// The CPU, on Burn's ndarray backend (the reference for bitwise-reproducibility tests).
    Ndarray,
    /// WGPU: Vulkan, Metal or DX12; lavapipe when there is no GPU.
    Wgpu,
    /// CUDA through cubecl (NVRTC at run time).
    Cuda,
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(enum_name(self).as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    pub dataset: DatasetKind,
    /// Where the files are; each dataset kind has a default (see [`DatasetKind`]).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// `train` or `test` split, for datasets that have both.
    #[serde(default)]
    pub split: Split,
    /// Side of the square training images; defaults to the dataset's native size.
    #[serde(default)]
    pub image_size: Option<usize>,
    /// Channels of a `folder` dataset (1 or 3); fixed by the other formats.
    #[serde(default)]
    pub channels: Option<usize>,
    /// Random horizontal flips.
    #[serde(default)]
    pub hflip: bool,
    /// Use only the first `limit` images (for quick experiments and tests).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Classes of an `idx` dataset (default 10); a label at or above it is an error.
    #[serde(default)]
    pub num_classes: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetKind {
    /// CIFAR-10 binary version: `data_batch_{1..5}.bin`, `test_batch.bin`.
    Cifar10,
    /// IDX files (MNIST, Fashion-MNIST), gzipped or raw.
    Idx,
    /// A folder of PNG/JPEG images, searched recursively.
    Folder,
}

impl DatasetKind {
    /// Where the files are expected when `data.path` is not given.
    pub fn default_path(self) -> Option<&'static str> {
        match self {
            DatasetKind::Cifar10 => Some("datasets/cifar-10-batches-bin"),
            DatasetKind::Idx => Some("/usr/share/datasets/fashion-mnist"),
            DatasetKind::Folder => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    #[default]
    Train,
    Test,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Base channel count (EDM's `model_channels`).
    pub channels: usize,
    pub channel_mult: Vec<usize>,
    pub channel_mult_emb: usize,
    /// Residual blocks per resolution level.
    pub num_blocks: usize,
    /// Image sides at which blocks carry self-attention; unset: the second level's side
    /// (16 for 32x32 images, as in EDM; 14 for 28x28).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attn_resolutions: Option<Vec<usize>>,
    pub dropout: f64,
    pub num_heads: usize,
    pub embedding: NoiseEmbedding,
    /// Condition on the dataset's class labels.
    pub class_conditional: bool,
    /// Probability of replacing a label with the null label in training (for guidance).
    pub label_dropout: f64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            channels: 128,
            channel_mult: vec![2, 2, 2],
            channel_mult_emb: 4,
            num_blocks: 4,
            attn_resolutions: None,
            dropout: 0.1,
            num_heads: 1,
            embedding: NoiseEmbedding::Positional,
            class_conditional: false,
            label_dropout: 0.1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiffusionConfig {
    /// What the network learns: an objective's name (`"edm"`, its defaults) or a
    /// `[diffusion.objective]` table with `type` and that objective's keys; default `vp`.
    pub objective: ObjectiveConfig,
    /// Resolution shift: `λ(t) - 2 ln(shift)`; above 1 moves every level towards noise.
    pub shift: f64,
    /// The log-SNR range the schedule is truncated to (its infinite ends are cut off).
    pub lambda_min: f64,
    pub lambda_max: f64,
    /// The log-SNR curve training levels are drawn from: its name (`"laplace"`, default
    /// parameters) or a `[diffusion.schedule]` table with `type` and the curve's parameters;
    /// default `cosine`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Curve>,
}

impl Default for DiffusionConfig {
    fn default() -> Self {
        Self { objective: ObjectiveConfig::default(), shift: 1.0, lambda_min: -15.0, lambda_max: 15.0, schedule: None }
    }
}

impl DiffusionConfig {
    /// The configured schedule: the curve shifted and truncated. The error names the key, within
    /// `[diffusion]`.
    pub fn schedule(&self) -> Result<Schedule, Invalid> {
        let curve = self.curve();
        curve.validate().map_err(|e| e.within("schedule"))?;
        Schedule::new(curve, self.lambda_min, self.lambda_max, self.shift)
    }

    /// `diffusion.schedule`'s curve, or the cosine.
    pub fn curve(&self) -> Curve {
        self.schedule.clone().unwrap_or_default()
    }

    /// The objective on the configured schedule, for a run of `total_steps` steps; the error
    /// names the full key.
    pub fn build_objective(&self, total_steps: u64) -> Result<Objective, Invalid> {
        let schedule = self.schedule().map_err(|e| e.within("diffusion"))?;
        Ok(self.objective.init(schedule, total_steps))
    }

    /// Checks the schedule and the objective; a key that does not apply to the chosen
    /// objective or schedule is an error whatever its value. The error names the full key.
    pub fn validate(&self) -> Result<(), Invalid> {
        self.schedule().map_err(|e| e.within("diffusion"))?;
        self.objective.validate().map_err(|e| e.within("diffusion.objective"))?;
        if let ObjectiveConfig::Ct(ct) = &self.objective {
            if matches!(ct.levels, LevelChoice::Polynomial(_)) && self.schedule.is_some() {
                return Err(Invalid::new(
                    "diffusion.schedule",
                    "`levels = \"polynomial\"` places the levels itself; leave `diffusion.schedule` out (only its lambda range is used)",
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub batch_size: usize,
    /// Images per forward/backward pass: a batch is split into micro-batches of this size and
    /// their gradients summed, to bound memory (EDM's `batch_gpu`). 0: the whole batch at once.
    pub micro_batch: usize,
    /// Threads computing the micro-batches of a step: they take turns to draw noise levels and
    /// label drops (Burn's CPU backends have one random generator per process), and forward
    /// passes too when the network has dropout; the rest runs side by side.
    /// On Burn's CPU backends, whose operations mostly keep one core busy, this is what uses a
    /// second core; each thread holds one micro-batch's activations. The result is the same,
    /// bit for bit, whatever the number. 0: two on a CPU with two cores or more, one on a GPU.
    pub micro_batch_threads: usize,
    /// Optimiser steps in the whole run.
    pub steps: usize,
    /// Peak learning rate of AdamW.
    pub lr: f64,
    /// Steps of linear learning-rate warm-up from 0.
    pub warmup_steps: usize,
    pub weight_decay: f64,
    pub betas: [f64; 2],
    pub adam_eps: f64,
    /// EMA of weights: `ema <- decay * ema + (1 - decay) * weights` after every step.
    pub ema_decay: f64,
    /// Clip gradients to this global L2 norm; 0 disables clipping.
    pub grad_clip: f64,
    pub checkpoint_every: usize,
    /// Checkpoints kept on disk (the newest ones).
    pub keep_checkpoints: usize,
    /// Write a sample grid every this many steps (and at the end); 0 writes only at the end.
    pub sample_every: usize,
    /// Log a line to `metrics.jsonl` every this many steps.
    pub log_every: usize,
    /// What a non-finite loss or gradient norm does: stop the run with an error, or skip that
    /// step's update.
    pub on_nonfinite: OnNonFinite,
    /// With `on_nonfinite = "skip"`: the run stops after this many skipped steps in a row
    /// (default 10).
    pub max_skipped_steps: Option<usize>,
}

/// What a training step with a non-finite loss or gradient norm does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnNonFinite {
    /// Stop the run with an error naming the step (no checkpoint of it is written).
    #[default]
    Stop,
    /// Drop the step's update (weights, optimiser state and EMA stay as they were) and go on.
    Skip,
}

/// Skipped steps in a row after which a `skip` run stops.
pub const DEFAULT_MAX_SKIPPED_STEPS: usize = 10;

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            batch_size: 128,
            micro_batch: 0,
            micro_batch_threads: 0,
            steps: 200_000,
            lr: 2e-4,
            warmup_steps: 5_000,
            weight_decay: 0.0,
            betas: [0.9, 0.999],
            adam_eps: 1e-8,
            ema_decay: 0.9999,
            grad_clip: 1.0,
            checkpoint_every: 5_000,
            keep_checkpoints: 3,
            sample_every: 5_000,
            log_every: 50,
            on_nonfinite: OnNonFinite::Stop,
            max_skipped_steps: None,
        }
    }
}

/// FID during training: every `fid_every` steps (and at the last), `fid_samples` images from
/// the EMA weights against the statistics of the training images, on the features `metric`
/// names (Inception's, or the `fd_fmnist` classifier's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Steps between FID evaluations; 0 turns FID off.
    pub fid_every: usize,
    /// Steps to evaluate at as well (log-spaced ones, say); FID is on when this or `fid_every`
    /// asks for it, and then also at the last step.
    pub fid_at: Vec<u64>,
    /// Generated images per FID (50,000 is the number papers report).
    pub fid_samples: usize,
    /// Sampler of the FID images; default: `sample.sampler`.
    pub sampler: Option<SamplerKind>,
    /// Noise levels of the FID sampler; default: `sample.steps`.
    pub steps: Option<usize>,
    /// Training images in the reference statistics; 0: all of them.
    pub fid_reference: usize,
    /// Images per sampling and Inception batch.
    pub fid_batch: usize,
    /// The converted Inception weights (`scripts/fetch_inception.sh`).
    pub inception: PathBuf,
    /// Whose features the distance compares: `fid` (Inception) or `fd_fmnist`.
    pub metric: emulsion_fid::Metric,
    /// The `fd_fmnist` classifier (`emulsion fd-net train`).
    pub fd_net: PathBuf,
    /// Folder of the cached reference statistics; default: the run directory. Runs that share
    /// it (a sweep's) compute them once.
    pub fid_cache: Option<PathBuf>,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            fid_every: 0,
            fid_at: Vec::new(),
            fid_samples: 10_000,
            sampler: None,
            steps: None,
            fid_reference: 0,
            fid_batch: 250,
            inception: emulsion_fid::DEFAULT_WEIGHTS.into(),
            metric: emulsion_fid::Metric::Fid,
            fd_net: emulsion_fid::fd_fmnist::DEFAULT_WEIGHTS.into(),
            fid_cache: None,
        }
    }
}

impl EvalConfig {
    /// Whether the run evaluates FID (or `metric`) at all.
    pub fn fid_on(&self) -> bool {
        self.fid_every > 0 || !self.fid_at.is_empty()
    }

    /// Whether step `step` of a `total`-step run evaluates FID: every `fid_every` steps, at the
    /// steps of `fid_at`, and at the last when either is set.
    pub fn fid_due(&self, step: u64, total: u64) -> bool {
        self.fid_on() && ((self.fid_every > 0 && step % self.fid_every as u64 == 0) || self.fid_at.contains(&step) || step == total)
    }

    /// The weights of `metric`'s network.
    pub fn metric_weights(&self) -> &Path {
        match self.metric {
            emulsion_fid::Metric::Fid => &self.inception,
            emulsion_fid::Metric::FdFmnist => &self.fd_net,
        }
    }
}

impl Config {
    /// The sampling options of the FID images: `[sample]` with `eval.sampler` and `eval.steps`.
    pub fn fid_sampling(&self) -> SampleConfig {
        SampleConfig {
            sampler: self.eval.sampler.unwrap_or(self.sample.sampler),
            steps: self.eval.steps.unwrap_or(self.sample.steps),
            ..self.sample.clone()
        }
    }
}

/// A configuration error, located as precisely as possible.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: {message}", path.display())]
    Syntax { path: PathBuf, message: String },
    #[error("{location}: `{key}`: {message}")]
    Key { location: String, key: String, message: String },
    #[error("--set {arg}: {message}")]
    Override { arg: String, message: String },
}

impl Config {
    /// Reads `path`, applies `overrides` (`section.key=value`), and validates the result.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::from_toml(&text, path, overrides)
    }

    /// Parses TOML `text` (reported as coming from `path`), applies `overrides`, validates.
    pub fn from_toml(text: &str, path: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let mut overridden = Vec::new();
        for arg in overrides {
            let key = apply_override(&mut table, arg, "")?;
            overridden.push((key, arg.clone()));
        }
        let locate = |key: &str| -> String {
            let related = |k: &String| key == k || key.starts_with(&format!("{k}.")) || k.starts_with(&format!("{key}."));
            if let Some((_, arg)) = overridden.iter().rev().find(|(k, _)| related(k)) {
                return format!("--set {arg}");
            }
            match key_line(text, key) {
                Some(line) => format!("{}:{line}", path.display()),
                None => path.display().to_string(),
            }
        };
        let tags = table.clone();
        let config: Config = deserialize_with_string_retry(table, &overridden).map_err(|e| {
            let (key, message) = located_key(&e, &tags, "");
            let message = match where_it_goes(&key) {
                Some(hint) if message.starts_with("unknown field") => format!("{message}: {hint}"),
                _ => message,
            };
            ConfigError::Key { location: locate(&key), key, message }
        })?;
        config.validate().map_err(|Invalid { key, message }| ConfigError::Key { location: locate(&key), key, message })?;
        Ok(config)
    }

    /// Reads `path` as [`Config::from_recorded_toml`] does: today's layout, or a run
    /// directory's record of an older one.
    pub fn load_recorded(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::from_recorded_toml(&text, path)
    }

    /// Reads a config recorded in a run directory or checkpoint (`config.toml`), including one
    /// of an older layout, read as what it meant:
    /// - before the schedule became one section, `diffusion.schedule` named the curve, every
    ///   curve's parameters had a table of their own, and the `fdm` and `ct` tables were written
    ///   out whatever the objective: the chosen curve keeps its table's parameters, the
    ///   objective its own table;
    /// - before the objective became one section, `objective` named it and `target`,
    ///   `sigma_data`, `[diffusion.fdm]` and `[diffusion.ct]` held its options: they move into
    ///   `[diffusion.objective]`.
    pub fn from_recorded_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let first = match Self::from_toml(text, path, &[]) {
            Ok(config) => return Ok(config),
            Err(e) => e,
        };
        let Ok(mut table) = text.parse::<toml::Table>() else { return Err(first) };
        let schedule_upgraded = upgrade_untagged_schedule(&mut table);
        if !(upgrade_objective_keys(&mut table) || schedule_upgraded) {
            return Err(first);
        }
        let upgraded = toml::to_string(&table).map_err(|_| ConfigError::Syntax { path: path.to_path_buf(), message: first.to_string() })?;
        // What is wrong with the record in today's terms, not that its layout is old.
        Self::from_toml(&upgraded, path, &[])
    }

    /// The image side: `data.image_size`, or the dataset's native size where the format fixes
    /// it (CIFAR-10); `None` until the files are read otherwise.
    pub fn image_size(&self) -> Option<usize> {
        self.data.image_size.or(match self.data.dataset {
            DatasetKind::Cifar10 => Some(32),
            DatasetKind::Idx | DatasetKind::Folder => None,
        })
    }

    /// The dataset's location: `data.path` or the dataset kind's default.
    pub fn data_path(&self) -> Option<PathBuf> {
        self.data.path.clone().or_else(|| self.data.dataset.default_path().map(PathBuf::from))
    }

    /// The run directory, `<run.out_dir>/<run.name>`.
    pub fn run_dir(&self) -> PathBuf {
        self.run.out_dir.join(&self.run.name)
    }

    /// The configuration as TOML, as saved in the run directory.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a Config always serialises")
    }

    /// Checks values that types alone cannot; the error names the offending key.
    pub fn validate(&self) -> Result<(), Invalid> {
        let positive = |key: &str, count: usize| emulsion_config::at_least(key, count, 1);
        fn unit(key: &'static str, v: f64, closed_top: bool) -> Result<(), Invalid> {
            let ok = v >= 0.0 && if closed_top { v <= 1.0 } else { v < 1.0 };
            if ok { Ok(()) } else { Err(Invalid::new(key, format!("must be in [0, 1{}, got {v}", if closed_top { "]" } else { ")" }))) }
        }
        if self.run.name.is_empty() || self.run.name.contains(['/', '\\']) || self.run.name == "." || self.run.name == ".." {
            return Err(Invalid::new("run.name", format!("must be a plain directory name, got {:?}", self.run.name)));
        }
        if self.data.dataset == DatasetKind::Folder && self.data.path.is_none() {
            return Err(Invalid::new("data.path", "a `folder` dataset needs the folder's path"));
        }
        if self.data.dataset == DatasetKind::Folder && self.data.image_size.is_none() {
            return Err(Invalid::new("data.image_size", "a `folder` dataset needs the image size to resize to"));
        }
        if let Some(c) = self.data.channels {
            if self.data.dataset != DatasetKind::Folder {
                return Err(Invalid::new("data.channels", "only `folder` datasets choose their channels"));
            }
            if c != 1 && c != 3 {
                return Err(Invalid::new("data.channels", format!("must be 1 or 3, got {c}")));
            }
        }
        if let Some(classes) = self.data.num_classes {
            if self.data.dataset != DatasetKind::Idx {
                return Err(Invalid::new("data.num_classes", "only `idx` datasets choose their class count (CIFAR-10 has 10; folders have no labels)"));
            }
            if !(1..=65_536).contains(&classes) {
                return Err(Invalid::new("data.num_classes", format!("must be between 1 and 65536, got {classes}")));
            }
        }
        if let Some(limit) = self.data.limit {
            positive("data.limit", limit)?;
        }
        positive("model.channels", self.model.channels)?;
        positive("model.num_heads", self.model.num_heads)?;
        unit("model.dropout", self.model.dropout, false)?;
        unit("model.label_dropout", self.model.label_dropout, false)?;
        if let Some(size) = self.image_size() {
            positive("data.image_size", size)?;
            self.unet_config(size, 1, 0).validate().map_err(|m| Invalid::new("model", m))?;
        }
        self.diffusion.validate()?;
        let consistency_model = matches!(self.diffusion.objective, ObjectiveConfig::Ct(_));
        let fid_sampler = self.eval.sampler.map(|s| ("eval.sampler", s));
        for (key, sampler) in std::iter::once(("sample.sampler", self.sample.sampler)).chain(fid_sampler) {
            if consistency_model != (sampler == SamplerKind::Consistency) {
                let why = if consistency_model {
                    "a consistency model (`diffusion.objective = \"ct\"`) samples with `consistency`: it maps any noise level straight to data, so it is no denoiser for an ODE or SDE solver"
                } else {
                    "`consistency` needs a consistency model (`diffusion.objective = \"ct\"`); this objective trains a denoiser"
                };
                return Err(Invalid::new(key, why));
            }
        }
        let e = &self.eval;
        if e.fid_on() && e.metric == emulsion_fid::Metric::FdFmnist {
            // The images' shape is known only once they are read (checked again then); what
            // the config fixes is checked here, before a run or a sweep starts.
            let channels = match self.data.dataset {
                DatasetKind::Cifar10 => Some(3),
                DatasetKind::Idx => Some(1),
                DatasetKind::Folder => self.data.channels,
            };
            if channels.is_some_and(|c| c != 1) || self.data.image_size.is_some_and(|s| s != emulsion_fid::fd_fmnist::IMAGE_SIZE) {
                return Err(Invalid::new("eval.metric", "`fd_fmnist` takes 1×28×28 images (Fashion-MNIST); these images are not: use `fid`"));
            }
        }
        if let Some(&step) = e.fid_at.iter().find(|&&s| s == 0 || s > self.train.steps as u64) {
            return Err(Invalid::new("eval.fid_at", format!("step {step} is not a step of the run (1 to train.steps = {})", self.train.steps)));
        }
        if e.fid_on() {
            if e.fid_samples < 2 {
                return Err(Invalid::new("eval.fid_samples", format!("a covariance needs at least 2 images, got {}", e.fid_samples)));
            }
            if e.fid_reference == 1 {
                return Err(Invalid::new("eval.fid_reference", "a covariance needs at least 2 images (0 takes them all)"));
            }
            positive("eval.fid_batch", e.fid_batch)?;
        }
        if e.steps == Some(0) {
            return Err(Invalid::new("eval.steps", "must be at least 1"));
        }
        self.assignment.validate().map_err(|e| e.within("assignment"))?;
        let t = &self.train;
        positive("train.batch_size", t.batch_size)?;
        positive("train.steps", t.steps)?;
        positive("train.checkpoint_every", t.checkpoint_every)?;
        positive("train.keep_checkpoints", t.keep_checkpoints)?;
        positive("train.log_every", t.log_every)?;
        emulsion_config::positive("train.lr", t.lr)?;
        unit("train.ema_decay", t.ema_decay, false)?;
        unit("train.betas", t.betas[0], false)?;
        unit("train.betas", t.betas[1], false)?;
        if !(t.adam_eps > 0.0) {
            return Err(Invalid::new("train.adam_eps", format!("must be positive, got {}", t.adam_eps)));
        }
        if !(t.weight_decay >= 0.0) {
            return Err(Invalid::new("train.weight_decay", format!("must be non-negative, got {}", t.weight_decay)));
        }
        if !(t.grad_clip >= 0.0) {
            return Err(Invalid::new("train.grad_clip", format!("must be non-negative (0 disables), got {}", t.grad_clip)));
        }
        match (t.on_nonfinite, t.max_skipped_steps) {
            (OnNonFinite::Stop, Some(_)) => {
                return Err(Invalid::new("train.max_skipped_steps", "applies only with train.on_nonfinite = \"skip\""));
            }
            (OnNonFinite::Skip, Some(0)) => return Err(Invalid::new("train.max_skipped_steps", "must be at least 1")),
            _ => {}
        }
        self.distributed.validate().map_err(|e| e.within("distributed"))?;
        let peers = self.distributed.peer_count();
        if t.batch_size % peers != 0 {
            return Err(Invalid::new(
                "train.batch_size",
                format!("the global batch of {} does not split evenly over {peers} peers (distributed.devices × distributed.nodes)", t.batch_size),
            ));
        }
        let shard = t.batch_size / peers;
        if peers > 1 && t.micro_batch > 0 && shard % t.micro_batch != 0 {
            return Err(Invalid::new(
                "train.micro_batch",
                format!("each of the {peers} peers trains {shard} images, which {} does not divide: each peer's micro-batches must be whole micro-batches of the single-process run", t.micro_batch),
            ));
        }
        self.sample.validate().map_err(|e| e.within("sample"))
    }

    /// `model.attn_resolutions`, or the side of the second resolution level when unset.
    pub fn attn_resolutions(&self, image_size: usize) -> Vec<usize> {
        match &self.model.attn_resolutions {
            Some(sides) => sides.clone(),
            None if self.model.channel_mult.len() > 1 => vec![image_size / 2],
            None => vec![],
        }
    }

    /// The UNet this config describes, for images of `image_size` with `channels` channels.
    pub fn unet_config(&self, image_size: usize, channels: usize, num_classes: usize) -> emulsion_models::UNetConfig {
        let m = &self.model;
        emulsion_models::UNetConfig::new(image_size, channels)
            .with_model_channels(m.channels)
            .with_channel_mult(m.channel_mult.clone())
            .with_channel_mult_emb(m.channel_mult_emb)
            .with_num_blocks(m.num_blocks)
            .with_attn_resolutions(self.attn_resolutions(image_size))
            .with_dropout(m.dropout)
            .with_num_heads(m.num_heads)
            .with_num_classes(if m.class_conditional { num_classes } else { 0 })
            .with_embedding(m.embedding)
    }
}

/// Deserialises `table`; where an unquoted `--set` value read as another TOML type (`nan`,
/// `inf`, `1`, `true`) lands on a string field, retries with the text itself, so that
/// `--set run.name=nan` names a run "nan" as a user means.
fn deserialize_with_string_retry(
    mut table: toml::Table,
    overridden: &[(String, String)],
) -> Result<Config, serde_path_to_error::Error<toml::de::Error>> {
    loop {
        let error = match serde_path_to_error::deserialize(toml::Value::Table(table.clone())) {
            Ok(config) => return Ok(config),
            Err(error) => error,
        };
        let key = error.path().to_string();
        let message = error.inner().message();
        let wants_string = message.starts_with("invalid type") && message.split(", expected").nth(1).is_some_and(|e| e.contains("string"));
        let retry = overridden.iter().rev().find(|(k, _)| *k == key).and_then(|(_, arg)| {
            let raw = arg.split_once('=')?.1.trim();
            let mut node = &mut table;
            let parts: Vec<&str> = key.split('.').collect();
            for part in &parts[..parts.len() - 1] {
                node = node.get_mut(*part)?.as_table_mut()?;
            }
            let value = node.get_mut(parts[parts.len() - 1])?;
            (wants_string && !value.is_str()).then(|| *value = toml::Value::String(raw.to_string()))
        });
        if retry.is_none() {
            return Err(error);
        }
    }
}

/// The sections written either as a name or as a table with `type` ([`emulsion_config::tagged_section`]).
const TAGGED_SECTIONS: [&str; 5] =
    ["diffusion.schedule", "diffusion.objective", "diffusion.objective.base", "diffusion.objective.curriculum", "diffusion.objective.levels"];

/// Applies `section.key=value` to `table`, whose keys sit under `root` (`""` for a whole
/// config); returns the dotted key. The value is read as TOML (`2000`, `1e-4`, `[1, 2]`, `true`,
/// `"text"`), falling back to a bare string (`cosine`). A key inside a section given by name
/// (`diffusion.schedule.b` where `schedule = "laplace"`) turns the name into its table,
/// `{ type = "laplace" }`, first.
pub fn apply_override(table: &mut toml::Table, arg: &str, root: &str) -> Result<String, ConfigError> {
    let err = |message: &str| ConfigError::Override { arg: arg.to_string(), message: message.to_string() };
    let (key, raw) = arg.split_once('=').ok_or_else(|| err("expected KEY=VALUE, e.g. train.steps=2000"))?;
    let key = key.trim();
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(err("the key must be dotted names, e.g. train.steps"));
    }
    let raw = raw.trim();
    let value = match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").expect("the key we wrote"),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let mut node = table;
    let mut path = root.to_string();
    for part in &parts[..parts.len() - 1] {
        path = if path.is_empty() { part.to_string() } else { format!("{path}.{part}") };
        let entry = node.entry(part.to_string()).or_insert_with(|| toml::Value::Table(Default::default()));
        // A tagged section written as a name is the table that holds only its `type`.
        if let Some(name) = entry.as_str().filter(|_| TAGGED_SECTIONS.contains(&path.as_str())).map(str::to_string) {
            *entry = toml::Value::Table(named_table(&name));
        }
        node = entry
            .as_table_mut()
            .ok_or_else(|| err(&format!("`{part}` is a value, not a section")))?;
    }
    node.insert(parts[parts.len() - 1].to_string(), value);
    Ok(key.to_string())
}

/// Reads `table` as the section `prefix` (`diffusion`, or empty for a whole config); an error
/// comes as the dotted key it concerns and the message.
pub fn read_section<T: serde::de::DeserializeOwned>(table: &toml::Table, prefix: &str) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(toml::Value::Table(table.clone())).map_err(|e| located_key(&e, table, prefix))
}

/// The dotted key and message of a deserialisation error over `table` (whose keys sit under
/// `prefix`): serde reports an unknown or missing key against its parent, so the key itself is
/// named, and a key unknown to the chosen `type` of a tagged section says so.
pub(crate) fn located_key(error: &serde_path_to_error::Error<toml::de::Error>, table: &toml::Table, prefix: &str) -> (String, String) {
    let path = error.path().to_string();
    let message = error.inner().message().to_string();
    let names_a_field = message.starts_with("unknown field") || message.starts_with("missing field");
    let key = match backticked(&message) {
        Some(field) if names_a_field && path == "." => field,
        Some(field) if names_a_field && path.rsplit('.').next() != Some(field.as_str()) => {
            // serde checks a section's own `type` before the sections nested in it, and the
            // keys of those before reporting the outer section's unknown ones.
            let missing = message.starts_with("missing field");
            let holds = |t: &toml::Table| t.contains_key(&field) != missing;
            let outer_holds = section_at(table, &path).is_some_and(holds);
            let section = if missing && outer_holds { None } else { nested_section(table, &path, holds) };
            format!("{}.{field}", section.unwrap_or(path))
        }
        Some(value) if ["unknown variant", "invalid type", "invalid value"].iter().any(|m| message.starts_with(m)) && path != "." => {
            key_holding(table, &path, &value).unwrap_or(path)
        }
        _ if path == "." => String::new(),
        _ => path,
    };
    let message = match key.rsplit_once('.').and_then(|(parent, _)| chosen_type(table, parent)) {
        Some(chosen) if message.starts_with("unknown field") => format!("{message}: it does not apply to `type = \"{chosen}\"`"),
        _ if message.starts_with("missing field `type`") => {
            format!("{message}: name the choice in `type`, or write the section as its name (a table without `type` is not the default choice)")
        }
        _ => message,
    };
    let key = match (prefix, key.as_str()) {
        ("", _) => key,
        (prefix, "") => prefix.to_string(),
        (prefix, key) => format!("{prefix}.{key}"),
    };
    (key, message)
}

/// The table at dotted `path` of `table`, if it is one.
fn section_at<'t>(table: &'t toml::Table, path: &str) -> Option<&'t toml::Table> {
    let mut node = table;
    for part in path.split('.') {
        node = node.get(part)?.as_table()?;
    }
    Some(node)
}

/// The dotted key under the section at `path` whose value is written `text` in a serde message
/// (`w` of an unknown variant, `2.5` of a wrong type), if exactly one is: serde buffers a tagged
/// section whole and reports a bad value inside it against the section.
fn key_holding(table: &toml::Table, path: &str, text: &str) -> Option<String> {
    fn search(node: &toml::Table, prefix: &str, text: &str, found: &mut Vec<String>) {
        for (name, value) in node {
            let key = format!("{prefix}.{name}");
            match value {
                toml::Value::Table(t) => search(t, &key, text, found),
                toml::Value::String(s) if s == text => found.push(key),
                toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_) if value.to_string() == text => found.push(key),
                _ => {}
            }
        }
    }
    let mut found = Vec::new();
    search(section_at(table, path)?, path, text, &mut found);
    match found.as_slice() {
        [only] => Some(only.clone()),
        _ => None,
    }
}

/// The tagged section inside the one at dotted `path` of `table` that `holds` what a serde
/// error is about: serde buffers a tagged section whole, so an error in a section nested in it
/// (`levels` in `objective`) is reported against the outer one.
fn nested_section(table: &toml::Table, path: &str, holds: impl Fn(&toml::Table) -> bool) -> Option<String> {
    let node = section_at(table, path)?;
    node.iter()
        .filter(|(name, _)| TAGGED_SECTIONS.contains(&format!("{path}.{name}").as_str()))
        .find_map(|(name, value)| {
            let nested = match value {
                toml::Value::Table(t) => t.clone(),
                toml::Value::String(chosen) => named_table(chosen),
                _ => return None,
            };
            holds(&nested).then(|| format!("{path}.{name}"))
        })
}

/// Rewrites a `[diffusion]` recorded before the schedule was one section (see
/// [`Config::from_recorded_toml`]); `false` when `table` is not such a record.
fn upgrade_untagged_schedule(table: &mut toml::Table) -> bool {
    const CURVE_TABLES: [&str; 5] = ["cosine_discrete", "linear", "laplace", "cauchy", "lognormal"];
    let Some(diffusion) = table.get_mut("diffusion").and_then(toml::Value::as_table_mut) else { return false };
    if !CURVE_TABLES.iter().any(|name| diffusion.get(*name).is_some_and(toml::Value::is_table)) {
        return false;
    }
    let name = diffusion.get("schedule").and_then(toml::Value::as_str).unwrap_or("cosine").to_string();
    let mut curve = named_table(&name);
    for table_name in CURVE_TABLES {
        if let Some(toml::Value::Table(parameters)) = diffusion.remove(table_name) {
            if table_name == name {
                curve.extend(parameters);
            }
        }
    }
    let objective = diffusion.get("objective").and_then(toml::Value::as_str).unwrap_or("vp").to_string();
    if objective != "fdm" {
        diffusion.remove("fdm");
    }
    let polynomial = match diffusion.get_mut("ct").and_then(toml::Value::as_table_mut) {
        Some(_) if objective != "ct" => {
            diffusion.remove("ct");
            false
        }
        Some(ct) if ct.get("levels").and_then(toml::Value::as_str) != Some("polynomial") => {
            ct.remove("curve");
            ct.remove("jitter");
            false
        }
        Some(_) => true,
        None => false,
    };
    // Polynomial levels took only the range of the (default) cosine.
    if !(polynomial && name == "cosine") {
        diffusion.insert("schedule".into(), toml::Value::Table(curve));
    } else {
        diffusion.remove("schedule");
    }
    true
}

/// Rewrites a `[diffusion]` recorded before the objective was one section (see
/// [`Config::from_recorded_toml`]); `false` when `table` is not such a record.
fn upgrade_objective_keys(table: &mut toml::Table) -> bool {
    use toml::Value;
    let Some(diffusion) = table.get_mut("diffusion").and_then(Value::as_table_mut) else { return false };
    let moved = ["target", "sigma_data", "fdm", "ct"].iter().any(|key| diffusion.contains_key(*key));
    if !moved || diffusion.get("objective").is_some_and(Value::is_table) {
        return false;
    }
    let name = diffusion.get("objective").and_then(Value::as_str).unwrap_or("vp").to_string();
    let (target, sigma_data) = (diffusion.remove("target"), diffusion.remove("sigma_data"));
    let mut section = |key: &str| match diffusion.remove(key) {
        Some(Value::Table(t)) => t,
        _ => toml::Table::new(),
    };
    let (mut fdm, mut ct) = (section("fdm"), section("ct"));
    let mut objective = named_table(&name);
    match name.as_str() {
        "vp" => objective.extend(target.map(|t| ("target".to_string(), t))),
        "edm" => objective.extend(sigma_data.map(|s| ("sigma_data".to_string(), s))),
        "fdm" => {
            let base_name = fdm.remove("base").and_then(|b| b.as_str().map(str::to_string)).unwrap_or_else(|| "edm".into());
            let mut base = named_table(&base_name);
            if base_name == "edm" {
                base.extend(sigma_data.map(|s| ("sigma_data".to_string(), s)));
            }
            objective.insert("base".into(), Value::Table(base));
            objective.extend(fdm);
        }
        "ct" => {
            objective.extend(sigma_data.map(|s| ("sigma_data".to_string(), s)));
            let curriculum_name = ct.remove("curriculum").and_then(|c| c.as_str().map(str::to_string)).unwrap_or_else(|| "ict".into());
            let (first, last) = if curriculum_name == "sinusoidal" { ("n_init", "n_final") } else { ("s0", "s1") };
            let mut curriculum = named_table(&curriculum_name);
            curriculum.extend(ct.remove("s0").map(|v| (first.to_string(), v)));
            curriculum.extend(ct.remove("s1").map(|v| (last.to_string(), v)));
            objective.insert("curriculum".into(), Value::Table(curriculum));
            let levels_name = ct.remove("levels").and_then(|l| l.as_str().map(str::to_string)).unwrap_or_else(|| "schedule".into());
            let mut levels = named_table(&levels_name);
            for key in ["curve", "jitter"] {
                levels.extend(ct.remove(key).filter(|_| levels_name == "polynomial").map(|v| (key.to_string(), v)));
            }
            objective.insert("levels".into(), Value::Table(levels));
            objective.extend(ct);
        }
        _ => {}
    }
    diffusion.insert("objective".into(), Value::Table(objective));
    true
}

/// Where a key refused as unknown belongs: a `[diffusion]` key of the layout before
/// `[diffusion.objective]`, or an objective's key written one level too high.
fn where_it_goes(key: &str) -> Option<&'static str> {
    if let Some(own) = key.strip_prefix("diffusion.objective.") {
        return Some(match own {
            "s0" | "s1" | "n_init" | "n_final" => "the curriculum's level counts are keys of `curriculum` (`[diffusion.objective.curriculum]` with its `type`)",
            "curve" | "jitter" => "the polynomial placement's keys belong to `levels` (`[diffusion.objective.levels]` with `type = \"polynomial\"`)",
            "sigma_data" => "`edm` and `ct` take `sigma_data`; `fdm` keeps it in its base, `base.sigma_data` (`[diffusion.objective.base]` with `type = \"edm\"`)",
            _ => return None,
        });
    }
    let moved = key.strip_prefix("diffusion.")?.split('.').next()?;
    Some(match moved {
        "fdm" => "FDM's options are keys of `[diffusion.objective]` with `type = \"fdm\"` (see the README's configuration reference)",
        "ct" => "consistency training's options are keys of `[diffusion.objective]` with `type = \"ct\"` (see the README's configuration reference)",
        "target" => "`target` is a key of `[diffusion.objective]` with `type = \"vp\"`",
        "sigma_data" => "`sigma_data` is a key of the objective that uses it: `[diffusion.objective]` for `edm` and `ct`, `[diffusion.objective.base]` for `fdm` on the `edm` base",
        _ => return None,
    })
}

/// The `type` of the tagged section at dotted `key` of `table`, if it is one.
fn chosen_type(table: &toml::Table, key: &str) -> Option<String> {
    section_at(table, key)?.get(emulsion_config::TAG)?.as_str().map(str::to_string)
}

/// A tagged section written as the name `name`, as the table it stands for: `{ type = name }`.
fn named_table(name: &str) -> toml::Table {
    toml::Table::from_iter([(emulsion_config::TAG.to_string(), toml::Value::String(name.to_string()))])
}

/// The 1-based line where the dotted `key` is written in `text`, if it is.
fn key_line(text: &str, key: &str) -> Option<usize> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut item = doc.as_item();
    let mut span = None;
    for part in key.split('.') {
        let table = item.as_table_like()?;
        let (k, next) = table.get_key_value(part)?;
        span = k.span().or(span);
        item = next;
    }
    let offset = span?.start;
    Some(text[..offset].matches('\n').count() + 1)
}

/// The first `backticked` word of a serde message.
fn backticked(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let end = start + message[start..].find('`')?;
    Some(message[start..end].to_string())
}

/// The serde name of a unit enum variant.
pub fn enum_name<T: Serialize>(value: &T) -> String {
    match toml::Value::try_from(value) {
        Ok(toml::Value::String(s)) => s,
        _ => format!("{:?}", serde_json::to_string(value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[data]\ndataset = \"idx\"\n";

    fn load(text: &str, overrides: &[&str]) -> Result<Config, ConfigError> {
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        Config::from_toml(text, Path::new("test.toml"), &overrides)
    }

    #[test]
    fn defaults_fill_in_and_overrides_apply_on_top() {
        let c = load(MINIMAL, &["train.steps=2000", "diffusion.schedule=cosine", "model.channel_mult=[1, 2]"]).unwrap();
        assert_eq!(c.train.steps, 2000);
        assert_eq!(c.diffusion.curve(), Curve::Cosine {});
        assert_eq!(c.model.channel_mult, vec![1, 2]);
        assert_eq!(c.image_size(), None, "IDX files say their size");
        assert_eq!(c.attn_resolutions(28), vec![14], "attention defaults to the second level");
        assert_eq!(c.attn_resolutions(32), vec![16]);
        assert_eq!(c.data_path().unwrap(), PathBuf::from("/usr/share/datasets/fashion-mnist"));
    }

    #[test]
    fn unquoted_override_words_that_toml_reads_as_numbers_stay_text_for_string_keys() {
        for name in ["nan", "inf", "1", "true", "1979-05-27"] {
            let c = load(MINIMAL, &[&format!("run.name={name}"), &format!("run.out_dir={name}")]).unwrap();
            assert_eq!((c.run.name.as_str(), c.run.out_dir.as_path()), (name, Path::new(name)));
        }
        let e = load(MINIMAL, &["train.steps=nan"]).unwrap_err().to_string();
        assert!(e.contains("--set train.steps=nan") && e.contains("invalid type"), "{e}");
    }

    #[test]
    fn the_resolved_config_round_trips_through_toml() {
        let c = load(MINIMAL, &["train.lr=1e-3", "run.name=x"]).unwrap();
        assert_eq!(load(&c.to_toml(), &[]).unwrap(), c);
    }

    #[test]
    fn unknown_keys_name_the_key_and_the_line() {
        let text = "[data]\ndataset = \"idx\"\n\n[train]\nbatch_size = 8\nstepz = 3\n";
        let e = load(text, &[]).unwrap_err().to_string();
        assert!(e.contains("test.toml:6") && e.contains("`train.stepz`") && e.contains("unknown field"), "{e}");
        let e = load(MINIMAL, &["train.stepz=3"]).unwrap_err().to_string();
        assert!(e.contains("--set train.stepz=3") && e.contains("`train.stepz`"), "{e}");
        let e = load("[data]\ndataset = \"idx\"\n[trian]\n", &[]).unwrap_err().to_string();
        assert!(e.contains("test.toml:3") && e.contains("`trian`"), "{e}");
    }

    #[test]
    fn wrong_types_name_the_key_and_the_line() {
        let e = load("[data]\ndataset = \"idx\"\n[train]\nsteps = \"many\"\n", &[]).unwrap_err().to_string();
        assert!(e.contains("test.toml:4") && e.contains("`train.steps`") && e.contains("invalid type"), "{e}");
    }

    #[test]
    fn bad_enum_values_list_the_valid_ones() {
        let e = load(MINIMAL, &["diffusion.schedule=laplacian"]).unwrap_err().to_string();
        assert!(e.contains("`diffusion.schedule`") && e.contains("cosine"), "{e}");
        let e = load("[data]\ndataset = \"imagenet\"\n", &[]).unwrap_err().to_string();
        assert!(e.contains("test.toml:2") && e.contains("`cifar10`, `idx`, `folder`"), "{e}");
    }

    #[test]
    fn missing_sections_and_invalid_values_are_reported() {
        let e = load("[train]\nsteps = 3\n", &[]).unwrap_err().to_string();
        assert!(e.contains("`data`") && e.contains("missing"), "{e}");
        let e = load(MINIMAL, &["train.batch_size=0"]).unwrap_err().to_string();
        assert!(e.contains("`train.batch_size`") && e.contains("at least 1"), "{e}");
        let e = load(MINIMAL, &["data.image_size=28", "model.attn_resolutions=[5]"]).unwrap_err().to_string();
        assert!(e.contains("`model`") && e.contains("attention resolution 5"), "{e}");
        let e = load("[data]\ndataset = \"idx\"\n[diffusion]\nlambda_min = 3.0\nlambda_max = 1.0\n", &[]).unwrap_err().to_string();
        assert!(e.contains("test.toml:4") && e.contains("`diffusion.lambda_min`"), "{e}");
        // Evaluation steps beyond the run, and a metric for other images than it takes.
        let e = load(MINIMAL, &["train.steps=100", "eval.fid_at=[50, 101]"]).unwrap_err().to_string();
        assert!(e.contains("`eval.fid_at`") && e.contains("step 101"), "{e}");
        let e = load(MINIMAL, &["eval.fid_at=[1]", "eval.metric=fd_fmnist", "data.image_size=32"]).unwrap_err().to_string();
        assert!(e.contains("`eval.metric`") && e.contains("1×28×28"), "{e}");
        let e = load("[data]\ndataset = \"cifar10\"\n[eval]\nfid_every = 5\nmetric = \"fd_fmnist\"\n", &[]).unwrap_err().to_string();
        assert!(e.contains("`eval.metric`"), "{e}");
        assert!(load(MINIMAL, &["eval.fid_at=[1]", "eval.metric=fd_fmnist"]).is_ok());
        // Without an evaluation, the metric is not used, so not checked.
        assert!(load(MINIMAL, &["eval.metric=fd_fmnist", "data.image_size=32"]).is_ok());
    }

    #[test]
    fn the_schedule_is_a_name_or_a_table_of_its_own_parameters() {
        let c = load(MINIMAL, &["diffusion.schedule=laplace"]).unwrap();
        assert_eq!(c.diffusion.curve(), Curve::named("laplace").unwrap());
        let text = "[data]\ndataset = \"idx\"\n[diffusion.schedule]\ntype = \"laplace\"\nmu = 1.0\nb = 2.0\n";
        let c = load(text, &[]).unwrap();
        assert_eq!(c.diffusion.curve(), Curve::Laplace(emulsion_schedule::Laplace { mu: 1.0, b: 2.0 }));
        // A key inside a schedule given by name turns the name into its table.
        let c = load(MINIMAL, &["diffusion.schedule=cauchy", "diffusion.schedule.gamma=3"]).unwrap();
        assert_eq!(c.diffusion.curve(), Curve::Cauchy(emulsion_schedule::Cauchy { mu: 0.0, gamma: 3.0 }));
        assert_eq!(load(&c.to_toml(), &[]).unwrap(), c);
        let e = load(text, &["diffusion.schedule.b=0"]).unwrap_err().to_string();
        assert!(e.contains("--set diffusion.schedule.b=0") && e.contains("`diffusion.schedule.b`") && e.contains("positive"), "{e}");
        let e = load("[data]\ndataset = \"idx\"\n[diffusion.schedule]\ntype = \"laplace\"\nb = 0.0\n", &[]).unwrap_err().to_string();
        assert!(e.contains("test.toml:5") && e.contains("`diffusion.schedule.b`"), "{e}");
    }

    #[test]
    fn the_objective_is_a_name_or_a_table_of_its_own_keys() {
        use crate::objective::{CtConfig, Curriculum, FdmConfig, VpTarget};
        use emulsion_models::FdmBase;
        use emulsion_schedule::polynomial::{PolynomialLevels, SinusoidalCurriculum};
        assert_eq!(load(MINIMAL, &[]).unwrap().diffusion.objective, ObjectiveConfig::Vp { target: VpTarget::Eps });
        assert_eq!(load(MINIMAL, &["diffusion.objective=edm"]).unwrap().diffusion.objective, ObjectiveConfig::Edm { sigma_data: 0.5 });
        let c = load(MINIMAL, &["diffusion.objective=vp", "diffusion.objective.target=v"]).unwrap();
        assert_eq!(c.diffusion.objective, ObjectiveConfig::Vp { target: VpTarget::V });
        let text = "[data]\ndataset = \"idx\"\n[diffusion.objective]\ntype = \"fdm\"\nbase = \"vp\"\nwarmup = 0\n";
        let c = load(text, &[]).unwrap();
        assert_eq!(c.diffusion.objective, ObjectiveConfig::Fdm(FdmConfig { base: FdmBase::Vp {}, warmup: Some(0), ..FdmConfig::default() }));
        let c = load(text, &["diffusion.objective.base=edm", "diffusion.objective.base.sigma_data=0.25"]).unwrap();
        assert!(matches!(&c.diffusion.objective, ObjectiveConfig::Fdm(f) if f.base == FdmBase::Edm { sigma_data: 0.25 }), "{:?}", c.diffusion.objective);
        let ct = ["diffusion.objective=ct", "sample.sampler=consistency", "diffusion.objective.curriculum=sinusoidal", "diffusion.objective.curriculum.n_final=640", "diffusion.objective.levels=polynomial", "diffusion.objective.levels.curve=2.5"];
        let c = load(MINIMAL, &ct).unwrap();
        let want = CtConfig {
            curriculum: Curriculum::Sinusoidal(SinusoidalCurriculum { n_final: 640, ..SinusoidalCurriculum::default() }),
            levels: LevelChoice::Polynomial(PolynomialLevels { curve: 2.5, ..PolynomialLevels::default() }),
            ..CtConfig::default()
        };
        assert_eq!(c.diffusion.objective, ObjectiveConfig::Ct(want));
        assert_eq!(load(&c.to_toml(), &[]).unwrap(), c);
        let e = load(MINIMAL, &["diffusion.objective=ddpm"]).unwrap_err().to_string();
        assert!(e.contains("`diffusion.objective`") && e.contains("`vp`, `edm`, `flow`, `fdm`, `ct`"), "{e}");
        let e = load(text, &["diffusion.objective.beta_d=-1"]).unwrap_err().to_string();
        assert!(e.contains("--set diffusion.objective.beta_d=-1") && e.contains("`diffusion.objective.beta_d`"), "{e}");
        let e = load(MINIMAL, &["diffusion.objective=ct", "sample.sampler=consistency", "diffusion.objective.curriculum.s0=1"]).unwrap_err().to_string();
        assert!(e.contains("`diffusion.objective.curriculum.type`") && e.contains("name the choice"), "a curriculum key needs the curriculum named: {e}");
        let e = load(MINIMAL, &["diffusion.objective=ct", "sample.sampler=consistency", "diffusion.objective.curriculum=ict", "diffusion.objective.curriculum.s0=1"]).unwrap_err().to_string();
        assert!(e.contains("`diffusion.objective.curriculum.s0`") && e.contains("at least 2"), "{e}");
        let e = load("[data]\ndataset = \"idx\"\n[diffusion.objective]\ntype = \"edm\"\n\nsigma_data = -1.0\n", &[]).unwrap_err().to_string();
        assert!(e.contains("test.toml:6") && e.contains("`diffusion.objective.sigma_data`") && e.contains("positive"), "{e}");
    }

    #[test]
    fn keys_that_do_not_apply_are_errors_whatever_their_value() {
        // Each is set to its own default, which the objective or schedule would not use.
        let ct: &[&str] = &["diffusion.objective=ct", "sample.sampler=consistency"];
        let refused: [(Vec<&str>, &str, &str); 8] = [
            (vec!["diffusion.objective=edm", "diffusion.objective.target=eps"], "diffusion.objective.target", "does not apply to `type = \"edm\"`"),
            (vec!["diffusion.objective=vp", "diffusion.objective.sigma_data=0.5"], "diffusion.objective.sigma_data", "does not apply to `type = \"vp\"`"),
            (vec!["diffusion.objective=fdm", "diffusion.objective.base=vp", "diffusion.objective.base.sigma_data=0.5"], "diffusion.objective.base.sigma_data", "does not apply to `type = \"vp\"`"),
            ([ct, &["diffusion.objective.levels=schedule", "diffusion.objective.levels.curve=4"]].concat(), "diffusion.objective.levels.curve", "does not apply to `type = \"schedule\"`"),
            ([ct, &["diffusion.objective.curriculum=ict", "diffusion.objective.curriculum.n_init=10"]].concat(), "diffusion.objective.curriculum.n_init", "does not apply to `type = \"ict\"`"),
            ([ct, &["diffusion.objective.levels=polynomial", "diffusion.schedule=cosine"]].concat(), "diffusion.schedule", "places the levels itself"),
            (vec!["diffusion.schedule=laplace", "diffusion.schedule.gamma=1"], "diffusion.schedule.gamma", "does not apply to `type = \"laplace\"`"),
            (vec!["diffusion.schedule=flow", "diffusion.schedule.mu=0"], "diffusion.schedule.mu", "does not apply to `type = \"flow\"`"),
        ];
        for (sets, key, why) in refused {
            let e = load(MINIMAL, &sets).unwrap_err().to_string();
            assert!(e.contains(&format!("`{key}`")) && e.contains(why), "{sets:?}: {e}");
        }
        let e = load("[data]\ndataset = \"idx\"\n[diffusion.schedule]\ntype = \"cosine\"\n\nb = 0.5\n", &[]).unwrap_err().to_string();
        assert!(e.contains("test.toml:6") && e.contains("`diffusion.schedule.b`") && e.contains("`type = \"cosine\"`"), "{e}");
        let e = load("[data]\ndataset = \"idx\"\n[diffusion.objective]\ntype = \"flow\"\nrho = 7.0\n", &[]).unwrap_err().to_string();
        assert!(e.contains("test.toml:5") && e.contains("`diffusion.objective.rho`") && e.contains("`type = \"flow\"`"), "{e}");
    }

    #[test]
    fn errors_inside_nested_sections_name_the_key_and_where_it_was_set() {
        let ct = ["diffusion.objective=ct", "sample.sampler=consistency"].map(String::from);
        let with = |more: &[&str]| -> String {
            let sets: Vec<String> = ct.iter().cloned().chain(more.iter().map(|s| s.to_string())).collect();
            Config::from_toml(MINIMAL, Path::new("test.toml"), &sets).unwrap_err().to_string()
        };
        // serde reports these against `diffusion.objective`, which it reads whole.
        let e = load(MINIMAL, &["diffusion.objective=vp", "diffusion.objective.target=w"]).unwrap_err().to_string();
        assert!(e.contains("--set diffusion.objective.target=w") && e.contains("`diffusion.objective.target`") && e.contains("`eps`"), "{e}");
        let e = with(&["diffusion.objective.curriculum=ict", "diffusion.objective.curriculum.s0=2.5"]);
        assert!(e.contains("`diffusion.objective.curriculum.s0`") && e.contains("invalid type"), "{e}");
        let e = load(MINIMAL, &["diffusion.objective=fdm", "diffusion.objective.warmup=-1"]).unwrap_err().to_string();
        assert!(e.contains("`diffusion.objective.warmup`"), "{e}");
        // A key that the outer section has and the nested one does not.
        let e = with(&["diffusion.objective.rho=7", "diffusion.objective.curriculum=sinusoidal", "diffusion.objective.curriculum.rho=5"]);
        assert!(e.contains("`diffusion.objective.curriculum.rho`") && e.contains("`type = \"sinusoidal\"`"), "{e}");
        let e = with(&["diffusion.objective.levels=polynomial", "diffusion.objective.levels.type=poly"]);
        assert!(e.contains("`diffusion.objective.levels.type`") && e.contains("`polynomial`"), "{e}");
        // Keys written one level too high say where they belong.
        for (set, belongs) in [("diffusion.objective.s0=10", "`curriculum`"), ("diffusion.objective.curve=4", "`levels`")] {
            let e = with(&[set]);
            assert!(e.contains("does not apply to `type = \"ct\"`") && e.contains(belongs), "{set}: {e}");
        }
        let e = load(MINIMAL, &["diffusion.objective=fdm", "diffusion.objective.sigma_data=0.5"]).unwrap_err().to_string();
        assert!(e.contains("`diffusion.objective.sigma_data`") && e.contains("base.sigma_data"), "{e}");
    }

    #[test]
    fn keys_of_the_layout_before_the_objective_section_say_where_they_went() {
        for (set, key, hint) in [
            ("diffusion.fdm.base=edm", "diffusion.fdm", "type = \"fdm\""),
            ("diffusion.ct.s0=10", "diffusion.ct", "type = \"ct\""),
            ("diffusion.target=v", "diffusion.target", "type = \"vp\""),
            ("diffusion.sigma_data=0.5", "diffusion.sigma_data", "[diffusion.objective.base]"),
        ] {
            let e = load(MINIMAL, &[set]).unwrap_err().to_string();
            assert!(e.contains(&format!("`{key}`")) && e.contains("unknown field") && e.contains(hint), "{set}: {e}");
        }
    }

    #[test]
    fn configs_recorded_before_the_schedule_section_still_load() {
        use crate::objective::{Curriculum, FdmConfig};
        use emulsion_schedule::ict::IctCurriculum;
        use emulsion_schedule::polynomial::PolynomialLevels;
        // As `to_toml` wrote them: every curve's table, and the `fdm` and `ct` tables always.
        let tables = "[diffusion.cosine_discrete]\ns = 0.008\nmax_beta = 0.999\ntimesteps = 1000\n[diffusion.linear]\nbeta_start = 0.0001\nbeta_end = 0.02\ntimesteps = 1000\n[diffusion.laplace]\nmu = 1.5\nb = 2.0\n[diffusion.cauchy]\nmu = 0.0\ngamma = 1.0\n[diffusion.lognormal]\np_mean = -1.2\np_std = 1.2\n[diffusion.fdm]\nbase = \"edm\"\nbeta_min = 0.1\nbeta_d = 19.9\n[diffusion.ct]\ncurriculum = \"ict\"\ns0 = 10\ns1 = 1280\nrho = 7.0\nlevels = \"schedule\"\ncurve = 2.5\njitter = 0.5\n";
        let old = format!("[data]\ndataset = \"idx\"\n[diffusion]\nobjective = \"vp\"\nschedule = \"laplace\"\nshift = 2.0\nlambda_min = -15.0\nlambda_max = 15.0\n{tables}");
        assert!(Config::from_toml(&old, Path::new("config.toml"), &[]).is_err(), "the old layout is not today's");
        let c = Config::from_recorded_toml(&old, Path::new("config.toml")).unwrap();
        assert_eq!(c.diffusion.curve(), Curve::Laplace(emulsion_schedule::Laplace { mu: 1.5, b: 2.0 }));
        assert_eq!((c.diffusion.shift, &c.diffusion.objective), (2.0, &ObjectiveConfig::default()));
        let ct = old.replace("objective = \"vp\"", "objective = \"ct\"").replace("schedule = \"laplace\"", "schedule = \"lognormal\"") + "[sample]\nsampler = \"consistency\"\n";
        let c = Config::from_recorded_toml(&ct, Path::new("config.toml")).unwrap();
        assert_eq!(c.diffusion.curve(), Curve::LogNormal(emulsion_schedule::LogNormal { p_mean: -1.2, p_std: 1.2 }));
        let ObjectiveConfig::Ct(read) = &c.diffusion.objective else { panic!("{:?}", c.diffusion.objective) };
        assert_eq!((read.curriculum, read.levels), (Curriculum::Ict(IctCurriculum { s0: 10, s1: 1280 }), LevelChoice::Schedule {}));
        // FDM kept its table and lost the always-written `ct`; polynomial levels on the default
        // cosine lost the schedule (it only gave the range) and kept `curve` and `jitter`.
        let fdm = old.replace("objective = \"vp\"", "objective = \"fdm\"");
        let c = Config::from_recorded_toml(&fdm, Path::new("config.toml")).unwrap();
        assert_eq!(c.diffusion.objective, ObjectiveConfig::Fdm(FdmConfig::default()));
        let polynomial = old
            .replace("objective = \"vp\"", "objective = \"ct\"")
            .replace("schedule = \"laplace\"", "schedule = \"cosine\"")
            .replace("levels = \"schedule\"", "levels = \"polynomial\"")
            + "[sample]\nsampler = \"consistency\"\n";
        let c = Config::from_recorded_toml(&polynomial, Path::new("config.toml")).unwrap();
        assert!(c.diffusion.schedule.is_none(), "{:?}", c.diffusion.schedule);
        let ObjectiveConfig::Ct(read) = &c.diffusion.objective else { panic!("{:?}", c.diffusion.objective) };
        assert_eq!(read.levels, LevelChoice::Polynomial(PolynomialLevels { curve: 2.5, jitter: 0.5, ..PolynomialLevels::default() }));
        // Today's layout and real errors pass through unchanged.
        assert_eq!(Config::from_recorded_toml(&c.to_toml(), Path::new("config.toml")).unwrap(), c);
        let e = Config::from_recorded_toml("[data]\ndataset = \"idx\"\n[train]\nstepz = 1\n", Path::new("config.toml")).unwrap_err();
        assert!(e.to_string().contains("`train.stepz`"), "{e}");
    }

    #[test]
    fn configs_recorded_before_the_objective_section_still_load() {
        use crate::objective::{CtConfig, Curriculum, FdmConfig, VpTarget};
        use emulsion_models::FdmBase;
        use emulsion_schedule::polynomial::{PolynomialLevels, SinusoidalCurriculum};
        let record = |diffusion: &str| format!("[data]\ndataset = \"idx\"\n[diffusion]\nshift = 1.0\n{diffusion}");
        let read = |diffusion: &str| {
            let text = record(diffusion);
            assert!(Config::from_toml(&text, Path::new("config.toml"), &[]).is_err(), "the old layout is not today's: {text}");
            Config::from_recorded_toml(&text, Path::new("config.toml")).unwrap_or_else(|e| panic!("{e}")).diffusion.objective
        };
        assert_eq!(read("target = \"v\"\n"), ObjectiveConfig::Vp { target: VpTarget::V });
        assert_eq!(read("objective = \"edm\"\nsigma_data = 0.25\nschedule = \"lognormal\"\n"), ObjectiveConfig::Edm { sigma_data: 0.25 });
        let fdm = read("objective = \"fdm\"\nsigma_data = 0.4\n[diffusion.fdm]\nbase = \"edm\"\nbeta_min = 0.1\nbeta_d = 19.9\nwarmup = 10\n");
        assert_eq!(fdm, ObjectiveConfig::Fdm(FdmConfig { base: FdmBase::Edm { sigma_data: 0.4 }, warmup: Some(10), ..FdmConfig::default() }));
        let fdm = read("objective = \"fdm\"\n[diffusion.fdm]\nbase = \"ve\"\nbeta_min = 0.1\nbeta_d = 19.9\n");
        assert_eq!(fdm, ObjectiveConfig::Fdm(FdmConfig { base: FdmBase::Ve {}, ..FdmConfig::default() }));
        let ct = read("objective = \"ct\"\nsigma_data = 0.5\n[diffusion.ct]\ncurriculum = \"sinusoidal\"\ns0 = 5\ns1 = 100\nrho = 7.0\nlevels = \"polynomial\"\ncurve = 3.0\nsteps = 40\n[sample]\nsampler = \"consistency\"\n");
        let want = CtConfig {
            curriculum: Curriculum::Sinusoidal(SinusoidalCurriculum { n_init: 5, n_final: 100, ..SinusoidalCurriculum::default() }),
            levels: LevelChoice::Polynomial(PolynomialLevels { curve: 3.0, ..PolynomialLevels::default() }),
            steps: Some(40),
            ..CtConfig::default()
        };
        assert_eq!(ct, ObjectiveConfig::Ct(want));
        // Today's objective table beside an old key is no old record: the old key is refused.
        let e = Config::from_recorded_toml(&record("target = \"v\"\n[diffusion.objective]\ntype = \"edm\"\n"), Path::new("config.toml")).unwrap_err().to_string();
        assert!(e.contains("`diffusion.target`") && e.contains("unknown field"), "{e}");
        // A record that is wrong in today's terms says so in today's terms.
        let e = Config::from_recorded_toml(&record("objective = \"edm\"\nsigma_data = -1.0\n"), Path::new("config.toml")).unwrap_err().to_string();
        assert!(e.contains("`diffusion.objective.sigma_data`") && e.contains("positive"), "{e}");
    }

    #[test]
    fn syntax_errors_and_bad_overrides_are_reported() {
        let e = load("[data\n", &[]).unwrap_err().to_string();
        assert!(e.starts_with("test.toml") && e.contains("line 1"), "{e}");
        let e = load(MINIMAL, &["train.steps"]).unwrap_err().to_string();
        assert!(e.contains("KEY=VALUE"), "{e}");
        let e = load(MINIMAL, &["data.dataset.x=1"]).unwrap_err().to_string();
        assert!(e.contains("not a section"), "{e}");
    }
}
