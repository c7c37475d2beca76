//! Weights for the rest of the world: a network as EDM `SongUNet`'s state dict in a safetensors
//! file (`emulsion export`, and every checkpoint's sampling snapshot), with what it takes to
//! use it (the SongUNet hyperparameters, the run's config) in the file's metadata and beside it.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use emulsion_models::songunet::{self, SongUNetKwargs};
use emulsion_models::{UNet, UNetConfig};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{Checkpoint, MODEL};
use crate::config::Config;
use crate::run::{checkpoint_in, CONFIG_FILE, UNET_FILE};
use crate::trainer::{Recipe, Trainer};
use crate::TrainError;

/// The sampling snapshot of a checkpoint: its EMA weights, apart from the resume state.
pub const SNAPSHOT_FILE: &str = "ema.safetensors";

/// What an exported file says about its weights (its safetensors metadata, key `emulsion`, and
/// the JSON file beside it).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportInfo {
    /// `SongUNet(**songunet)` builds the network these weights load into, `strict=True`.
    pub songunet: SongUNetKwargs,
    /// `ema` or `raw`.
    pub weights: String,
    /// The training step the weights are of.
    pub step: u64,
    /// The network as Emulsion builds it (`unet.json`).
    pub unet: UNetConfig,
    /// The run's resolved config (TOML): its objective says how to sample the network.
    pub config: String,
}

/// The safetensors metadata key of [`ExportInfo`]: one key, because safetensors writes its
/// metadata map in hash order, and identical runs must write identical bytes.
const INFO_KEY: &str = "emulsion";

/// A network read from an exported file.
pub struct Exported<B: Backend> {
    pub net: UNet<B>,
    pub info: ExportInfo,
    pub config: Config,
}

fn invalid(path: &Path, reason: impl std::fmt::Display) -> TrainError {
    TrainError::Weights { path: path.to_path_buf(), reason: reason.to_string() }
}

/// The bytes of `net`'s weights as an exported file.
pub fn encode<B: Backend>(net: &UNet<B>, info: &ExportInfo) -> Vec<u8> {
    let json = serde_json::to_string(info).expect("ExportInfo serialises");
    songunet::encode(&net.to_state_dict(&info.unet), &[(INFO_KEY, json.as_str())])
}

/// Reads the exported file `path` onto `device`: the network with its weights, and its config.
pub fn load<B: Backend>(path: &Path, device: &B::Device) -> Result<Exported<B>, TrainError> {
    let bytes = std::fs::read(path).map_err(|source| TrainError::Io { path: path.to_path_buf(), source })?;
    let (state, metadata) = songunet::decode(&bytes).map_err(|e| invalid(path, e))?;
    let text = metadata.get(INFO_KEY).ok_or_else(|| {
        invalid(path, format!("no `{INFO_KEY}` metadata: not written by `emulsion export` (to start a run from these weights, use `train --init-from`)"))
    })?;
    let info: ExportInfo = serde_json::from_str(text).map_err(|e| invalid(path, format!("its `{INFO_KEY}` metadata: {e}")))?;
    info.unet.validate().map_err(|e| invalid(path, format!("its network: {e}")))?;
    songunet::check_sizes(&info.unet, &state).map_err(|e| invalid(path, format!("its metadata's network does not hold these weights: {e}")))?;
    let config = Config::from_recorded_toml(&info.config, path)?;
    let net = info.unet.init::<B>(device).load_state_dict(&info.unet, &state).map_err(|e| invalid(path, e))?;
    Ok(Exported { net, info, config })
}

/// `net` (built from `unet`) with the weights of the safetensors file `path`: EDM `SongUNet`'s
/// names and layouts, as `emulsion export` writes them or a conversion of EDM's own snapshots.
pub fn load_weights<B: Backend>(net: UNet<B>, unet: &UNetConfig, path: &Path) -> Result<UNet<B>, TrainError> {
    let bytes = std::fs::read(path).map_err(|source| TrainError::Io { path: path.to_path_buf(), source })?;
    let (state, _) = songunet::decode(&bytes).map_err(|e| invalid(path, e))?;
    net.load_state_dict(unet, &state).map_err(|e| invalid(path, format!("{e} (the weights must be of the network this config builds: {})", serde_json::to_string(&songunet::SongUNetKwargs::of(unet)).expect("serialises"))))
}

/// Whether `path` names an exported weights file rather than a run or a checkpoint.
pub fn is_weights_file(path: &Path) -> bool {
    path.is_file() && path.extension().is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
}

/// `emulsion export`: writes the EMA weights (or with `raw` the trained ones) of the checkpoint
/// `path` names to `out`, and their [`ExportInfo`] as JSON beside it (`out` with `.json`).
pub fn export<B: Backend>(path: &Path, raw: bool, out: &Path, device: &B::Device) -> Result<PathBuf, TrainError> {
    if !out.extension().is_some_and(|e| e.eq_ignore_ascii_case("safetensors")) {
        return Err(invalid(out, "the weights file must end in .safetensors (its description is written beside it as .json)"));
    }
    let dir = checkpoint_in(path)?;
    let ckpt = Checkpoint::open(&dir)?;
    let snapshot = dir.join(SNAPSHOT_FILE);
    if !raw && snapshot.is_file() {
        // The snapshot is the export of the EMA: copied as it is, once it reads back whole.
        let info = load::<B>(&snapshot, device)?.info;
        write(out, &std::fs::read(&snapshot).map_err(|source| TrainError::Io { path: snapshot.clone(), source })?)?;
        return describe(out, &info);
    }
    let config_text = ckpt.read_file(CONFIG_FILE)?;
    let config = Config::from_recorded_toml(&config_text, &dir.join(CONFIG_FILE))?;
    let unet: UNetConfig = serde_json::from_str(&ckpt.read_file(UNET_FILE)?).map_err(|e| invalid(&dir.join(UNET_FILE), e))?;
    let trainer: Trainer<B> = Recipe::from_config(&config)?.init::<B>(&unet, device);
    let record = ckpt.load_for(MODEL, &trainer, device)?;
    let trainer = trainer.load_record(record);
    let net = if raw { trainer.net } else { trainer.ema };
    let info = ExportInfo {
        songunet: SongUNetKwargs::of(&unet),
        weights: if raw { "raw" } else { "ema" }.into(),
        step: ckpt.state.step,
        unet,
        config: config_text,
    };
    write(out, &encode(&net, &info))?;
    describe(out, &info)
}

/// Writes `info` as JSON beside the weights file `out`; warns where EDM's own `SongUNet` would
/// compute another function with these weights.
fn describe(out: &Path, info: &ExportInfo) -> Result<PathBuf, TrainError> {
    if info.unet.num_heads != 1 {
        tracing::warn!(
            "the network has {} attention heads; EDM's SongUNet has one, so `SongUNet(**songunet)` loads these weights (strict=True) but computes another function",
            info.unet.num_heads
        );
    }
    write(&out.with_extension("json"), (serde_json::to_string_pretty(info).expect("serialises") + "\n").as_bytes())?;
    Ok(out.to_path_buf())
}

/// Writes `bytes` to `path` through a temporary file, so that `path` is whole or absent.
fn write(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|source| TrainError::Io { path: path.to_path_buf(), source })
}

/// The sampling snapshot of a checkpoint at `step`.
pub fn snapshot<B: Backend>(ema: &UNet<B>, unet: &UNetConfig, config_toml: &str, step: u64) -> Vec<u8> {
    let info = ExportInfo { songunet: SongUNetKwargs::of(unet), weights: "ema".into(), step, unet: unet.clone(), config: config_toml.to_string() };
    encode(ema, &info)
}
