//! Checkpoints: one folder per step, `checkpoints/step-00001000/`, holding the model record
//! (weights and EMA), the optimiser and learning-rate-scheduler records, the loop state and the
//! config. A checkpoint is written into a hidden staging folder, flushed to disk, then renamed
//! into place, and old ones are renamed away before they are deleted: a process killed at any
//! moment leaves every visible checkpoint complete.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use burn::record::{FileRecorder, FullPrecisionSettings, NamedMpkFileRecorder, Record, Recorder};
use burn::tensor::backend::Backend;
use burn::train::checkpoint::{Checkpointer, CheckpointerError, CheckpointingAction, CheckpointingStrategy};
use burn::train::metric::store::EventStoreClient;
use serde::{Deserialize, Serialize};

use crate::data::order::DataPosition;

/// The record files of a checkpoint (the recorder adds `.mpk`).
pub const MODEL: &str = "model";
pub const OPTIMIZER: &str = "optimizer";
pub const SCHEDULER: &str = "scheduler";
const STATE: &str = "state.json";
const STATE_FORMAT: u32 = 1;

/// Full precision: a resumed run continues bit for bit.
pub type CheckpointRecorder = NamedMpkFileRecorder<FullPrecisionSettings>;

/// The training loop's own state, beside Burn's records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    pub format: u32,
    /// Optimiser steps completed.
    pub step: u64,
    /// The run seed; with `step` it fixes all further randomness (noise, dropout, data order).
    pub seed: u64,
    /// Where the next batch starts in the data order.
    pub next_batch: DataPosition,
    pub images_seen: u64,
    /// Seconds spent training, summed over all sessions of the run.
    pub wall_time_s: f64,
}

impl TrainState {
    pub fn new(step: u64, seed: u64, next_batch: DataPosition, images_seen: u64, wall_time_s: f64) -> Self {
        Self { format: STATE_FORMAT, step, seed, next_batch, images_seen, wall_time_s }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("no checkpoint in {}", dir.display())]
    NoneFound { dir: PathBuf },
    #[error("{} is not a checkpoint: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("writing checkpoint {}: {reason}", path.display())]
    Write { path: PathBuf, reason: String },
    #[error("loading {}: {reason}", path.display())]
    Load { path: PathBuf, reason: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io { path: path.to_path_buf(), source }
}

/// The `checkpoints/` folder of a run: writes, lists and prunes checkpoints.
#[derive(Debug)]
pub struct CheckpointStore {
    root: PathBuf,
    keep: usize,
    parts: Mutex<HashMap<u64, Vec<Result<(), String>>>>,
    part_done: Condvar,
}

impl CheckpointStore {
    /// Opens (creating) `root`, and clears what an interrupted write or prune left behind.
    pub fn open(root: &Path, keep: usize) -> Result<Self, CheckpointError> {
        std::fs::create_dir_all(root).map_err(io_err(root))?;
        for entry in std::fs::read_dir(root).map_err(io_err(root))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".tmp-") || name.starts_with(".trash-") {
                std::fs::remove_dir_all(entry.path()).map_err(io_err(&entry.path()))?;
            }
        }
        Ok(Self { root: root.to_path_buf(), keep: keep.max(1), parts: Mutex::default(), part_done: Condvar::new() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn staging_dir(&self, step: u64) -> PathBuf {
        self.root.join(format!(".tmp-step-{step:08}"))
    }

    /// Prepares an empty staging folder for `step`.
    pub fn begin(&self, step: u64) -> Result<(), CheckpointError> {
        let dir = self.staging_dir(step);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
        }
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        self.parts.lock().expect("not poisoned").insert(step, Vec::new());
        Ok(())
    }

    fn part_finished(&self, step: u64, result: Result<(), String>) {
        self.parts.lock().expect("not poisoned").entry(step).or_default().push(result);
        self.part_done.notify_all();
    }

    /// Waits until `parts` records of `step` are written; fails if any failed.
    pub fn wait(&self, step: u64, parts: usize) -> Result<(), CheckpointError> {
        let mut guard = self.parts.lock().expect("not poisoned");
        while guard.get(&step).map_or(0, Vec::len) < parts {
            guard = self.part_done.wait(guard).expect("not poisoned");
        }
        let results = guard.remove(&step).unwrap_or_default();
        match results.into_iter().find_map(Result::err) {
            Some(reason) => Err(CheckpointError::Write { path: self.staging_dir(step), reason }),
            None => Ok(()),
        }
    }

    /// Adds the loop state and the small `files` (name, contents) to the staged records,
    /// flushes everything to disk, and renames the folder into place. Then drops the oldest
    /// checkpoints beyond `keep`.
    pub fn commit(&self, state: &TrainState, files: &[(String, String)]) -> Result<PathBuf, CheckpointError> {
        let staging = self.staging_dir(state.step);
        let state_json = serde_json::to_string_pretty(state).expect("state serialises");
        std::fs::write(staging.join(STATE), state_json).map_err(io_err(&staging))?;
        for (name, contents) in files {
            std::fs::write(staging.join(name), contents).map_err(io_err(&staging))?;
        }
        for entry in std::fs::read_dir(&staging).map_err(io_err(&staging))?.flatten() {
            File::open(entry.path()).and_then(|f| f.sync_all()).map_err(io_err(&entry.path()))?;
        }
        let target = checkpoint_dir(&self.root, state.step);
        if target.exists() {
            self.discard(&target)?;
        }
        std::fs::rename(&staging, &target).map_err(io_err(&target))?;
        sync_dir(&self.root)?;
        let complete = list(&self.root)?;
        for (_, old) in complete.iter().take(complete.len().saturating_sub(self.keep)) {
            self.discard(old)?;
        }
        Ok(target)
    }

    /// Renames a checkpoint out of sight, then deletes it.
    fn discard(&self, dir: &Path) -> Result<(), CheckpointError> {
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let trash = self.root.join(format!(".trash-{name}"));
        std::fs::rename(dir, &trash).map_err(io_err(dir))?;
        sync_dir(&self.root)?;
        std::fs::remove_dir_all(&trash).map_err(io_err(&trash))
    }
}

fn sync_dir(dir: &Path) -> Result<(), CheckpointError> {
    File::open(dir).and_then(|f| f.sync_all()).map_err(io_err(dir))
}

/// The folder of the checkpoint at `step`.
pub fn checkpoint_dir(root: &Path, step: u64) -> PathBuf {
    root.join(format!("step-{step:08}"))
}

/// The complete checkpoints under `root`, oldest first.
pub fn list(root: &Path) -> Result<Vec<(u64, PathBuf)>, CheckpointError> {
    if !root.exists() {
        return Ok(Vec::new());
    }
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(root)
        .map_err(io_err(root))?
        .flatten()
        .filter_map(|e| {
            let step = e.file_name().to_str()?.strip_prefix("step-")?.parse().ok()?;
            e.path().join(STATE).is_file().then(|| (step, e.path()))
        })
        .collect();
    found.sort();
    Ok(found)
}

/// The newest complete checkpoint under `root`.
pub fn latest(root: &Path) -> Result<PathBuf, CheckpointError> {
    list(root)?.pop().map(|(_, p)| p).ok_or_else(|| CheckpointError::NoneFound { dir: root.to_path_buf() })
}

/// A checkpoint opened for reading.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub dir: PathBuf,
    pub state: TrainState,
}

impl Checkpoint {
    /// Opens the checkpoint folder `dir` and reads its state.
    pub fn open(dir: &Path) -> Result<Self, CheckpointError> {
        let invalid = |reason: String| CheckpointError::Invalid { path: dir.to_path_buf(), reason };
        if !dir.is_dir() {
            return Err(invalid("no such folder".into()));
        }
        let state_path = dir.join(STATE);
        let text = std::fs::read_to_string(&state_path).map_err(|e| invalid(format!("cannot read {STATE}: {e}")))?;
        let state: TrainState = serde_json::from_str(&text).map_err(|e| invalid(format!("{STATE} is malformed: {e}")))?;
        if state.format != STATE_FORMAT {
            return Err(invalid(format!("{STATE} has format {} (this build reads {STATE_FORMAT})", state.format)));
        }
        for part in [MODEL, OPTIMIZER, SCHEDULER] {
            let file = record_path(dir, part);
            if !file.is_file() {
                return Err(invalid(format!("{} is missing", file.display())));
            }
        }
        Ok(Self { dir: dir.to_path_buf(), state })
    }

    /// A small file written with the checkpoint (see [`CheckpointStore::commit`]).
    pub fn read_file(&self, name: &str) -> Result<String, CheckpointError> {
        let path = self.dir.join(name);
        std::fs::read_to_string(&path).map_err(|source| CheckpointError::Io { path, source })
    }

    /// Loads the record `part` (one of [`MODEL`], [`OPTIMIZER`], [`SCHEDULER`]).
    pub fn load<R: Record<B>, B: Backend>(&self, part: &str, device: &B::Device) -> Result<R, CheckpointError> {
        load_part(&self.dir, part, device)
    }
}

fn load_part<R: Record<B>, B: Backend>(dir: &Path, part: &str, device: &B::Device) -> Result<R, CheckpointError> {
    CheckpointRecorder::new().load(dir.join(part), device).map_err(|e| CheckpointError::Load {
        path: record_path(dir, part),
        reason: format!("{e} (was it written for a different model configuration?)"),
    })
}

fn record_path(dir: &Path, part: &str) -> PathBuf {
    dir.join(format!("{part}.{}", <CheckpointRecorder as FileRecorder<burn::backend::Flex>>::file_extension()))
}

/// Burn's checkpointer interface over the store: writes one part of a step's checkpoint into the
/// step's staging folder and reports completion to the store (which also carries any error, so
/// the background thread Burn runs this on never panics).
pub struct StagedPart {
    store: Arc<CheckpointStore>,
    part: &'static str,
}

impl StagedPart {
    pub fn new(store: Arc<CheckpointStore>, part: &'static str) -> Self {
        Self { store, part }
    }
}

impl<R: Record<B>, B: Backend> Checkpointer<R, B> for StagedPart {
    fn save(&self, epoch: usize, record: R) -> Result<(), CheckpointerError> {
        let step = epoch as u64;
        let result = CheckpointRecorder::new()
            .record(record, self.store.staging_dir(step).join(self.part))
            .map_err(|e| format!("{}: {e}", self.part));
        self.store.part_finished(step, result);
        Ok(())
    }

    /// Retention belongs to [`CheckpointStore::commit`], after the new checkpoint is in place.
    fn delete(&self, _epoch: usize) -> Result<(), CheckpointerError> {
        Ok(())
    }

    fn restore(&self, epoch: usize, device: &B::Device) -> Result<R, CheckpointerError> {
        load_part(&checkpoint_dir(self.store.root(), epoch as u64), self.part, device)
            .map_err(|e| CheckpointerError::Unknown(e.to_string()))
    }
}

/// Saves at every call: the training loop decides when to checkpoint.
#[derive(Debug, Clone, Copy, Default)]
pub struct SaveWhenAsked;

impl CheckpointingStrategy for SaveWhenAsked {
    fn checkpointing(&mut self, _epoch: usize, _store: &EventStoreClient) -> Vec<CheckpointingAction> {
        vec![CheckpointingAction::Save]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("emulsion-ckpt-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn write(store: &Arc<CheckpointStore>, step: u64) -> PathBuf {
        store.begin(step).unwrap();
        for part in [MODEL, OPTIMIZER, SCHEDULER] {
            Checkpointer::<usize, TestBackend>::save(&StagedPart::new(store.clone(), part), step as usize, step as usize).unwrap();
        }
        store.wait(step, 3).unwrap();
        let state = TrainState::new(step, 1, DataPosition { epoch: 0, offset: 0 }, 0, 0.0);
        store.commit(&state, &[("config.toml".into(), "x = 1\n".into())]).unwrap()
    }

    #[test]
    fn commits_are_listed_and_pruned_to_keep() {
        let root = tempdir("prune");
        let store = Arc::new(CheckpointStore::open(&root, 2).unwrap());
        for step in [10, 20, 30] {
            write(&store, step);
        }
        let steps: Vec<u64> = list(&root).unwrap().into_iter().map(|(s, _)| s).collect();
        assert_eq!(steps, vec![20, 30]);
        let newest = Checkpoint::open(&latest(&root).unwrap()).unwrap();
        assert_eq!(newest.state.step, 30);
        let record: usize = newest.load::<usize, TestBackend>(SCHEDULER, &Default::default()).unwrap();
        assert_eq!(record, 30);
        assert_eq!(newest.read_file("config.toml").unwrap(), "x = 1\n");
    }

    #[test]
    fn leftovers_of_an_interrupted_write_are_invisible_and_cleared() {
        let root = tempdir("partial");
        let store = Arc::new(CheckpointStore::open(&root, 3).unwrap());
        write(&store, 5);
        // A write killed midway: staged, never committed.
        store.begin(9).unwrap();
        std::fs::write(store.staging_dir(9).join("model.mpk"), b"half").unwrap();
        assert_eq!(Checkpoint::open(&latest(&root).unwrap()).unwrap().state.step, 5);
        CheckpointStore::open(&root, 3).unwrap();
        assert!(!store.staging_dir(9).exists());
    }

    #[test]
    fn broken_checkpoints_are_reported_not_panicked_on() {
        let root = tempdir("broken");
        let store = Arc::new(CheckpointStore::open(&root, 3).unwrap());
        let dir = write(&store, 7);
        std::fs::write(record_path(&dir, OPTIMIZER), b"garbage").unwrap();
        let ckpt = Checkpoint::open(&dir).unwrap();
        let e = ckpt.load::<usize, TestBackend>(OPTIMIZER, &Default::default()).unwrap_err().to_string();
        assert!(e.contains("optimizer.mpk"), "{e}");
        std::fs::write(dir.join(STATE), "{").unwrap();
        let e = Checkpoint::open(&dir).unwrap_err().to_string();
        assert!(e.contains("state.json is malformed"), "{e}");
        std::fs::remove_file(record_path(&dir, MODEL)).unwrap();
        assert!(Checkpoint::open(&root.join("nope")).is_err());
        assert!(matches!(latest(&tempdir("empty")), Err(CheckpointError::NoneFound { .. })));
    }
}
