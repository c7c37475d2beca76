//! Checkpoints: one folder per step, `checkpoints/step-00001000/`, holding the model record
//! (weights and EMA), the optimiser and learning-rate-scheduler records, the loop state and the
//! config. A checkpoint is written into a hidden staging folder, flushed to disk, then renamed
//! into place, and old ones are renamed away before they are deleted: a process killed at any
//! moment leaves every visible checkpoint complete.

use std::fs::File;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::record::{FileRecorder, FullPrecisionSettings, NamedMpkBytesRecorder, NamedMpkFileRecorder, Record, Recorder};
use burn::tensor::backend::Backend;
use burn::train::checkpoint::{AsyncCheckpointer, Checkpointer, CheckpointerError, CheckpointingAction, CheckpointingStrategy};
use burn::train::metric::store::EventStoreClient;
use burn::train::{Interrupter, Learner, LearningCheckpointer, LearningComponentsTypes};
use serde::{Deserialize, Serialize};

use crate::data::order::DataPosition;
pub use crate::monitor::JournalWindow;

/// The record files of a checkpoint (the recorder adds `.mpk`).
pub const MODEL: &str = "model";
pub const OPTIMIZER: &str = "optimizer";
pub const SCHEDULER: &str = "scheduler";
const STATE: &str = "state.json";
const STATE_FORMAT: u32 = 1;

/// Full precision: a resumed run continues bit for bit. Records go through memory, so that
/// writing them is our own file I/O (with the operating system's errors), and reading them is
/// checked first ([`crate::record_check`]).
pub type CheckpointRecorder = NamedMpkBytesRecorder<FullPrecisionSettings>;

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
    /// The part of the current journal line's window done by `step`.
    #[serde(default)]
    pub journal_window: JournalWindow,
    /// Updates dropped for a non-finite loss or gradient (`train.on_nonfinite = "skip"`).
    #[serde(default)]
    pub skipped: SkipCount,
}

/// Updates dropped so far in a run, and how many of the newest steps in a row were.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkipCount {
    pub total: u64,
    pub in_a_row: u64,
}

impl TrainState {
    pub fn new(step: u64, seed: u64, next_batch: DataPosition, images_seen: u64, wall_time_s: f64) -> Self {
        Self { format: STATE_FORMAT, step, seed, next_batch, images_seen, wall_time_s, journal_window: JournalWindow::default(), skipped: SkipCount::default() }
    }

    /// Checks what a `state.json` claims against itself and the folder it is in
    /// (`step-00000040/` holds step 40).
    fn validate(&self, dir: &Path) -> Result<(), String> {
        let named = dir.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix("step-")).and_then(|n| n.parse::<u64>().ok());
        if let Some(named) = named {
            if named != self.step {
                return Err(format!("{STATE} says step {} but the folder is step {named}", self.step));
            }
        }
        if self.step == 0 {
            return Err(format!("{STATE} says step 0: checkpoints are written after a step"));
        }
        if self.images_seen < self.step {
            return Err(format!("{STATE} says {} images in {} steps", self.images_seen, self.step));
        }
        if !(self.wall_time_s.is_finite() && self.wall_time_s >= 0.0) {
            return Err(format!("{STATE} has wall time {}", self.wall_time_s));
        }
        if self.skipped.in_a_row > self.skipped.total || self.skipped.total > self.step {
            return Err(format!("{STATE} says {} skipped steps ({} in a row) in {} steps", self.skipped.total, self.skipped.in_a_row, self.step));
        }
        let w = &self.journal_window;
        if !(w.loss.sum.is_finite() && w.distance.sum.is_finite()) {
            return Err(format!("{STATE} has a non-finite journal window"));
        }
        Ok(())
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
    #[error("{}: {mismatch}", path.display())]
    Mismatch { path: PathBuf, mismatch: crate::record_check::Mismatch },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io { path: path.to_path_buf(), source }
}

/// The `checkpoints/` folder of a run: writes, lists and prunes checkpoints.
#[derive(Debug)]
pub struct CheckpointStore {
    root: PathBuf,
    keep: usize,
    /// Writes one file; `std::fs::write` but where a test injects a failure.
    write: fn(&Path, &[u8]) -> std::io::Result<()>,
}

impl CheckpointStore {
    /// Opens (creating) `root`, and clears what an interrupted write or prune left behind.
    pub fn open(root: &Path, keep: usize) -> Result<Self, CheckpointError> {
        std::fs::create_dir_all(root).map_err(io_err(root))?;
        for entry in std::fs::read_dir(root).map_err(io_err(root))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // A checkpoint moved aside by a commit that did not finish is put back.
            let restored = name.strip_prefix(".trash-").map(|step| root.join(step)).filter(|original| !original.exists());
            if let Some(original) = restored {
                std::fs::rename(entry.path(), &original).map_err(io_err(&original))?;
            } else if name.starts_with(".tmp-") || name.starts_with(".trash-") {
                std::fs::remove_dir_all(entry.path()).map_err(io_err(&entry.path()))?;
            }
        }
        Ok(Self { root: root.to_path_buf(), keep: keep.max(1), write: |path, bytes| std::fs::write(path, bytes) })
    }

    /// The same store with another file writer: fault injection for tests.
    #[doc(hidden)]
    pub fn with_writer(self, write: fn(&Path, &[u8]) -> std::io::Result<()>) -> Self {
        Self { write, ..self }
    }

    /// Writes `bytes` to `path` (a file of the staging folder); on failure removes the partial
    /// file and returns the operating system's error.
    fn write_file(&self, path: &Path, bytes: &[u8]) -> Result<(), std::io::Error> {
        write_or_remove(self.write, path, bytes)
    }

    /// Writes the checkpoint of `state.step`: `learner`'s records (the network with its EMA,
    /// the optimiser, the learning-rate scheduler), the loop `state` and the `files` (name,
    /// contents: the config and the sampling snapshot);
    /// returns its folder once all of it is on disk, renamed into place (see the module doc).
    pub fn save<LC: LearningComponentsTypes>(&self, learner: &Learner<LC>, state: &TrainState, files: &[(&str, &[u8])], events: &EventStoreClient) -> Result<PathBuf, CheckpointError> {
        self.stage(state, files, |dir, failed| {
            let mut checkpointer = LearningCheckpointer::<LC>::new(
                StagedPart::spawn(dir, MODEL, self.write, failed),
                StagedPart::spawn(dir, OPTIMIZER, self.write, failed),
                StagedPart::spawn(dir, SCHEDULER, self.write, failed),
                Box::new(SaveWhenAsked),
            );
            checkpointer.checkpoint(learner, state.step as usize, events);
        })
    }

    /// Stages the checkpoint of `state.step`, with the records that `records` writes into the
    /// staging folder, and commits it.
    ///
    /// Burn hands a learner's records out only to its checkpointers, each of which writes on a
    /// thread of its own and reports a failure through an interrupter. `records` drops them
    /// before it returns, which joins their threads: every part is then written, or has failed.
    fn stage(&self, state: &TrainState, files: &[(&str, &[u8])], records: impl FnOnce(&Path, &Interrupter)) -> Result<PathBuf, CheckpointError> {
        let step = state.step;
        self.begin(step)?;
        let failed = Interrupter::new();
        records(&self.staging_dir(step), &failed);
        if failed.should_stop() {
            return Err(self.abandon(step, failed.get_message().unwrap_or_else(|| "a record was not written".into())));
        }
        self.commit(state, files)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn staging_dir(&self, step: u64) -> PathBuf {
        self.root.join(format!(".tmp-step-{step:08}"))
    }

    /// Prepares an empty staging folder for `step`.
    fn begin(&self, step: u64) -> Result<(), CheckpointError> {
        let dir = self.staging_dir(step);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
        }
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))
    }

    /// Removes the staging folder of a failed write; the error to report.
    fn abandon(&self, step: u64, reason: String) -> CheckpointError {
        let staging = self.staging_dir(step);
        let _ = std::fs::remove_dir_all(&staging);
        CheckpointError::Write { path: checkpoint_dir(&self.root, step), reason }
    }

    /// Adds the loop state and the `files` (name, contents) to the staged records,
    /// flushes everything to disk, and renames the folder into place. Then drops the oldest
    /// checkpoints beyond `keep`.
    fn commit(&self, state: &TrainState, files: &[(&str, &[u8])]) -> Result<PathBuf, CheckpointError> {
        let staging = self.staging_dir(state.step);
        let state_json = serde_json::to_string_pretty(state).expect("state serialises");
        let staged = std::iter::once((STATE, state_json.as_bytes())).chain(files.iter().copied());
        for (name, contents) in staged {
            self.write_file(&staging.join(name), contents).map_err(|e| self.abandon(state.step, format!("{name}: {e}")))?;
        }
        let synced: std::io::Result<()> = std::fs::read_dir(&staging)
            .and_then(|entries| entries.flatten().try_for_each(|entry| File::open(entry.path()).and_then(|f| f.sync_all())));
        synced.map_err(|e| self.abandon(state.step, format!("flushing to disk: {e}")))?;
        let target = checkpoint_dir(&self.root, state.step);
        // A checkpoint of the same step (from before a resume) is moved aside, and deleted only
        // once the new one is in place; `open` puts it back if the process dies in between.
        let replaced = self.root.join(format!(".trash-step-{:08}", state.step));
        if target.exists() {
            std::fs::rename(&target, &replaced).map_err(|e| self.abandon(state.step, format!("moving the previous {} aside: {e}", target.display())))?;
        }
        if let Err(e) = std::fs::rename(&staging, &target) {
            let _ = std::fs::rename(&replaced, &target);
            return Err(self.abandon(state.step, format!("renaming it into place: {e}")));
        }
        sync_dir(&self.root)?;
        if replaced.exists() {
            std::fs::remove_dir_all(&replaced).map_err(io_err(&replaced))?;
        }
        // The checkpoint just written is never pruned, whatever older or newer ones remain.
        let others: Vec<(u64, PathBuf)> = list(&self.root)?.into_iter().filter(|(step, _)| *step != state.step).collect();
        for (_, old) in others.iter().take((others.len() + 1).saturating_sub(self.keep)) {
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

/// The `step-*` folders under `root` without a `state.json`, by step: never committed by a
/// finished write (commits rename complete folders into place), so never used.
pub fn incomplete(root: &Path) -> Vec<(u64, PathBuf)> {
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let step = e.file_name().to_str()?.strip_prefix("step-")?.parse().ok()?;
            (!e.path().join(STATE).is_file()).then(|| (step, e.path()))
        })
        .collect();
    found.sort();
    found
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
        state.validate(dir).map_err(invalid)?;
        for part in [MODEL, OPTIMIZER, SCHEDULER] {
            let file = record_path(dir, part);
            if !file.is_file() {
                return Err(invalid(format!("{} is missing", file.display())));
            }
        }
        Ok(Self { dir: dir.to_path_buf(), state })
    }

    /// A small file written with the checkpoint (see [`CheckpointStore::save`]).
    pub fn read_file(&self, name: &str) -> Result<String, CheckpointError> {
        let path = self.dir.join(name);
        std::fs::read_to_string(&path).map_err(|source| CheckpointError::Io { path, source })
    }

    /// Loads the record `part` (one of [`MODEL`], [`OPTIMIZER`], [`SCHEDULER`]), after checking
    /// that the file is a whole record.
    pub fn load<R: Record<B>, B: Backend>(&self, part: &str, device: &B::Device) -> Result<R, CheckpointError> {
        load_part(&self.dir, part, |_| Ok(()), device)
    }

    /// Loads the record of `module`'s type from `part`, after checking that it holds exactly
    /// `module`'s parameters with their shapes: a mismatch names the first parameter and both
    /// shapes instead of Burn's panic (or silent partial load).
    pub fn load_for<M: Module<B>, B: Backend>(&self, part: &str, module: &M, device: &B::Device) -> Result<M::Record, CheckpointError> {
        let expected = crate::record_check::module_shapes(module);
        load_part(&self.dir, part, |found| crate::record_check::compare(found, &expected), device)
    }

    /// Loads optimizer state (`part`) for `module`'s parameters, after checking that every
    /// state tensor belongs to one of them (by parameter id) and has its shape: Burn would
    /// drop foreign state silently and panic at the first update on a wrong shape.
    pub fn load_state_for<R: Record<B>, M: Module<B>, B: Backend>(&self, part: &str, module: &M, device: &B::Device) -> Result<R, CheckpointError> {
        let parameters = crate::record_check::module_parameters(module);
        load_part(&self.dir, part, |found| crate::record_check::compare_state(found, &parameters), device)
    }
}

fn load_part<R: Record<B>, B: Backend>(
    dir: &Path,
    part: &str,
    check: impl FnOnce(&crate::record_check::Shapes) -> Result<(), crate::record_check::Mismatch>,
    device: &B::Device,
) -> Result<R, CheckpointError> {
    use crate::record_check::{read, Mismatch};
    let path = record_path(dir, part);
    let bytes = std::fs::read(&path).map_err(io_err(&path))?;
    let mismatch = |mismatch| CheckpointError::Mismatch { path: path.clone(), mismatch };
    let found = read(&bytes).map_err(|reason| mismatch(Mismatch::Corrupt(reason)))?;
    check(&found.shapes).map_err(mismatch)?;
    CheckpointRecorder::new().load(bytes, device).map_err(|e| CheckpointError::Load { path: path.clone(), reason: e.to_string() })
}

fn record_path(dir: &Path, part: &str) -> PathBuf {
    dir.join(format!("{part}.{}", <NamedMpkFileRecorder<FullPrecisionSettings> as FileRecorder<burn::backend::Flex>>::file_extension()))
}

/// Writes `bytes` to `path` with `write`; on failure removes the partial file.
fn write_or_remove(write: fn(&Path, &[u8]) -> std::io::Result<()>, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write(path, bytes).inspect_err(|_| {
        let _ = std::fs::remove_file(path);
    })
}

/// Burn's checkpointer interface over a staging folder: writes one record of a checkpoint, and
/// reports a failure (`model.mpk: No space left on device`) to the checkpoint's interrupter.
struct StagedPart {
    dir: PathBuf,
    part: &'static str,
    write: fn(&Path, &[u8]) -> std::io::Result<()>,
    failed: Interrupter,
}

impl StagedPart {
    /// Burn's thread writing `part` into `dir`, reporting a failure to `failed`.
    fn spawn<R: Record<B> + 'static, B: Backend>(dir: &Path, part: &'static str, write: fn(&Path, &[u8]) -> std::io::Result<()>, failed: &Interrupter) -> AsyncCheckpointer<R, B> {
        AsyncCheckpointer::new(Self { dir: dir.to_path_buf(), part, write, failed: failed.clone() })
    }
}

impl<R: Record<B>, B: Backend> Checkpointer<R, B> for StagedPart {
    fn save(&self, _step: usize, record: R) -> Result<(), CheckpointerError> {
        let path = record_path(&self.dir, self.part);
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let written = CheckpointRecorder::new()
            .record(record, ())
            .map_err(|e| e.to_string())
            .and_then(|bytes| write_or_remove(self.write, &path, &bytes).map_err(|e| e.to_string()));
        if let Err(e) = written {
            self.failed.stop(Some(&format!("{name}: {e}")));
        }
        Ok(())
    }

    /// Retention belongs to the store's commit, after the new checkpoint is in place.
    fn delete(&self, _step: usize) -> Result<(), CheckpointerError> {
        Ok(())
    }

    /// Checkpoints are read through [`Checkpoint`], checked first.
    fn restore(&self, _step: usize, _device: &B::Device) -> Result<R, CheckpointerError> {
        Err(CheckpointerError::Unknown("a staged checkpoint is not read back".into()))
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

    /// Stages `step` with `usize` records, through Burn's checkpointer threads as `save` does.
    fn stage(store: &CheckpointStore, step: u64) -> Result<PathBuf, CheckpointError> {
        let state = TrainState::new(step, 1, DataPosition { epoch: 0, offset: 0 }, 2 * step, 0.0);
        store.stage(&state, &[("config.toml", b"x = 1\n")], |dir, failed| {
            for part in [MODEL, OPTIMIZER, SCHEDULER] {
                let checkpointer: AsyncCheckpointer<usize, TestBackend> = StagedPart::spawn(dir, part, store.write, failed);
                checkpointer.save(step as usize, step as usize).unwrap();
            }
        })
    }

    fn write(store: &CheckpointStore, step: u64) -> PathBuf {
        stage(store, step).unwrap()
    }

    #[test]
    fn commits_are_listed_and_pruned_to_keep() {
        let root = tempdir("prune");
        let store = CheckpointStore::open(&root, 2).unwrap();
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
    fn a_rewritten_step_replaces_the_old_one_and_is_never_pruned() {
        let root = tempdir("rewrite");
        let store = CheckpointStore::open(&root, 2).unwrap();
        for step in [10, 20, 30] {
            write(&store, step);
        }
        // Resumed from step 10: step 20 is written again, beside the newer step 30.
        let old_20 = std::fs::metadata(checkpoint_dir(&root, 20).join(STATE)).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        write(&store, 20);
        let steps: Vec<u64> = list(&root).unwrap().into_iter().map(|(s, _)| s).collect();
        assert_eq!(steps, vec![20, 30]);
        assert!(std::fs::metadata(checkpoint_dir(&root, 20).join(STATE)).unwrap().modified().unwrap() > old_20, "step 20 was replaced");
        // With keep = 1 the step just written is the one kept, even though it is not the newest.
        let one = CheckpointStore::open(&root, 1).unwrap();
        write(&one, 20);
        assert_eq!(list(&root).unwrap().into_iter().map(|(s, _)| s).collect::<Vec<_>>(), vec![20]);
        // A commit that died after moving the old step aside: opening the store puts it back.
        std::fs::rename(checkpoint_dir(&root, 20), root.join(".trash-step-00000020")).unwrap();
        CheckpointStore::open(&root, 1).unwrap();
        assert_eq!(Checkpoint::open(&latest(&root).unwrap()).unwrap().state.step, 20);
    }

    #[test]
    fn leftovers_of_an_interrupted_write_are_invisible_and_cleared() {
        let root = tempdir("partial");
        let store = CheckpointStore::open(&root, 3).unwrap();
        write(&store, 5);
        // A write killed midway: staged, never committed.
        store.begin(9).unwrap();
        std::fs::write(store.staging_dir(9).join("model.mpk"), b"half").unwrap();
        assert_eq!(Checkpoint::open(&latest(&root).unwrap()).unwrap().state.step, 5);
        CheckpointStore::open(&root, 3).unwrap();
        assert!(!store.staging_dir(9).exists());
    }

    #[test]
    fn a_failed_write_reports_the_os_error_leaves_no_staging_and_keeps_the_previous_checkpoint() {
        let root = tempdir("full");
        let store = CheckpointStore::open(&root, 1).unwrap();
        write(&store, 3);
        // The disk fills up: every further write fails as a full disk does.
        let full = CheckpointStore::open(&root, 1).unwrap().with_writer(|_, _| Err(std::io::Error::from_raw_os_error(28)));
        let e = stage(&full, 6).unwrap_err().to_string();
        assert!(e.contains("No space left on device") && e.contains(".mpk") && e.contains("step-00000006"), "{e}");
        assert!(!full.staging_dir(6).exists(), "no staging folder survives");
        // A failure while committing the state files, too.
        let state_only = CheckpointStore::open(&root, 1).unwrap().with_writer(|path, bytes| {
            if path.ends_with(STATE) { Err(std::io::Error::from_raw_os_error(28)) } else { std::fs::write(path, bytes) }
        });
        let e = stage(&state_only, 7).unwrap_err().to_string();
        assert!(e.contains("state.json: No space left on device"), "{e}");
        assert!(!state_only.staging_dir(7).exists());
        let steps: Vec<u64> = list(&root).unwrap().into_iter().map(|(s, _)| s).collect();
        assert_eq!(steps, vec![3], "the previous checkpoint is kept");
    }

    #[test]
    fn impossible_states_are_rejected() {
        let root = tempdir("states");
        let store = CheckpointStore::open(&root, 3).unwrap();
        let dir = write(&store, 40);
        let state = std::fs::read_to_string(dir.join(STATE)).unwrap();
        for (from, to, expected) in [
            ("\"step\": 40", "\"step\": 999", "says step 999 but the folder is step 40"),
            ("\"images_seen\": 80", "\"images_seen\": 3", "3 images in 40 steps"),
        ] {
            std::fs::write(dir.join(STATE), state.replace(from, to)).unwrap();
            let e = Checkpoint::open(&dir).unwrap_err().to_string();
            assert!(e.contains(expected), "{e}");
        }
    }

    #[test]
    fn broken_checkpoints_are_reported_not_panicked_on() {
        let root = tempdir("broken");
        let store = CheckpointStore::open(&root, 3).unwrap();
        let dir = write(&store, 7);
        std::fs::write(record_path(&dir, OPTIMIZER), b"garbage").unwrap();
        let ckpt = Checkpoint::open(&dir).unwrap();
        let e = ckpt.load::<usize, TestBackend>(OPTIMIZER, &Default::default()).unwrap_err().to_string();
        assert!(e.contains("optimizer.mpk") && e.contains("corrupt"), "{e}");
        std::fs::write(dir.join(STATE), "{").unwrap();
        let e = Checkpoint::open(&dir).unwrap_err().to_string();
        assert!(e.contains("state.json is malformed"), "{e}");
        std::fs::remove_file(record_path(&dir, MODEL)).unwrap();
        assert!(Checkpoint::open(&root.join("nope")).is_err());
        assert!(matches!(latest(&tempdir("empty")), Err(CheckpointError::NoneFound { .. })));
    }
}
