//! The run lock: one writer per run directory. `train` holds an exclusive advisory lock on
//! `<run>/run.lock` for its whole life and writes its pid, host and start time into it, so a second
//! writer is refused at once with a message naming the holder. The operating system drops the lock
//! when its holder exits or is killed, so a lock left by a dead process is simply taken over.
//! Readers (`sample`, `fid`) take no lock. Advisory locks are not reliable on every network file
//! system; a local disk is assumed.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The lock file's name inside a run directory.
pub const LOCK_FILE: &str = "run.lock";

/// Why a run directory could not be locked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    #[error("{} is in use by another `emulsion train` ({holder}); wait for it to finish, stop it, or choose another run.name", dir.display())]
    Held { dir: PathBuf, holder: String },
    #[error("cannot lock {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

/// An exclusive hold on a run directory, released when dropped (or when the process ends).
#[derive(Debug)]
pub struct RunLock {
    file: File,
    path: PathBuf,
}

impl RunLock {
    /// Locks `dir` (creating it), or says who holds it.
    pub fn acquire(dir: &Path) -> Result<Self, LockError> {
        let path = dir.join(LOCK_FILE);
        let io = |source| LockError::Io { path: path.clone(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim() {
                    "" => "a process that has not written its name yet".to_string(),
                    text => text.to_string(),
                };
                return Err(LockError::Held { dir: dir.to_path_buf(), holder });
            }
            Err(TryLockError::Error(source)) => return Err(io(source)),
        }
        let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let text = format!("pid {} on host {}, started at unix time {started}\n", std::process::id(), host_name());
        file.set_len(0).and_then(|()| file.seek(SeekFrom::Start(0))).and_then(|_| file.write_all(text.as_bytes())).and_then(|()| file.sync_all()).map_err(io)?;
        Ok(Self { file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

/// The machine's name, for the lock's message (Linux; "unknown host" elsewhere).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown host".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_name_and_a_released_lock_is_taken_over() {
        let dir = std::env::temp_dir().join(format!("emulsion-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = RunLock::acquire(&dir).unwrap();
        let refused = RunLock::acquire(&dir).unwrap_err().to_string();
        assert!(refused.contains(&format!("pid {}", std::process::id())) && refused.contains("run.name"), "{refused}");
        drop(first);
        let again = RunLock::acquire(&dir).unwrap();
        assert!(std::fs::read_to_string(again.path()).unwrap().starts_with(&format!("pid {}", std::process::id())));
    }
}
