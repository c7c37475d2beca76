//! CIFAR-10, binary version: records of 1 label byte and 3072 pixel bytes (the R, G and B planes,
//! each 32x32 row-major), 10000 records per file.

use std::path::{Path, PathBuf};

use super::{read_file, DataError, ImageSet};
use crate::config::Split;

const SIDE: usize = 32;
const RECORD: usize = 1 + 3 * SIDE * SIDE;
const DOWNLOAD_HINT: &str = "Download the binary version of CIFAR-10 (https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz, 162 MB) \
and extract it with `tar xzf cifar-10-binary.tar.gz -C datasets/`, which creates datasets/cifar-10-batches-bin; \
or set data.path to the folder holding data_batch_1.bin … data_batch_5.bin and test_batch.bin.";

/// The file names of a split.
pub fn split_files(split: Split) -> Vec<String> {
    match split {
        Split::Train => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
        Split::Test => vec!["test_batch.bin".into()],
    }
}

/// Loads a split from `path` (or from `path/cifar-10-batches-bin` when that folder exists).
pub fn load(path: &Path, split: Split) -> Result<ImageSet, DataError> {
    let dir = resolve_dir(path);
    let files: Vec<PathBuf> = split_files(split).iter().map(|f| dir.join(f)).collect();
    let missing: Vec<String> = files.iter().filter(|f| !f.is_file()).map(|f| file_name(f)).collect();
    if !missing.is_empty() {
        return Err(DataError::NotFound {
            what: format!("CIFAR-10 file(s) {}", missing.join(", ")),
            path: dir,
            hint: DOWNLOAD_HINT.into(),
        });
    }
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for file in &files {
        let bytes = read_file(file)?;
        if bytes.is_empty() || bytes.len() % RECORD != 0 {
            return Err(DataError::Malformed {
                path: file.clone(),
                format: "CIFAR-10 binary",
                reason: format!("{} bytes is not a whole number of {RECORD}-byte records (truncated?)", bytes.len()),
            });
        }
        for (i, record) in bytes.chunks_exact(RECORD).enumerate() {
            if record[0] >= 10 {
                return Err(DataError::Malformed {
                    path: file.clone(),
                    format: "CIFAR-10 binary",
                    reason: format!("record {i} has label {}, expected 0..=9", record[0]),
                });
            }
            labels.push(record[0] as u16);
            pixels.extend_from_slice(&record[1..]);
        }
    }
    Ok(ImageSet { pixels, labels: Some(labels), num_classes: 10, channels: 3, size: SIDE })
}

fn resolve_dir(path: &Path) -> PathBuf {
    let nested = path.join("cifar-10-batches-bin");
    if nested.is_dir() { nested } else { path.to_path_buf() }
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes a CIFAR-10 folder with `per_file` records per file; image `k` is filled with `k % 256`
    /// in its red plane, `2k` in green and `3k` in blue, and labelled `k % 10`.
    pub(crate) fn write_cifar(dir: &Path, per_file: usize) {
        std::fs::create_dir_all(dir).unwrap();
        let mut k = 0usize;
        for name in split_files(Split::Train).into_iter().chain(split_files(Split::Test)) {
            let mut bytes = Vec::new();
            for _ in 0..per_file {
                bytes.push((k % 10) as u8);
                for factor in 1..=3 {
                    bytes.extend(std::iter::repeat_n((k * factor % 256) as u8, SIDE * SIDE));
                }
                k += 1;
            }
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("emulsion-cifar-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn reads_planes_and_labels_in_file_order() {
        let dir = tempdir("ok");
        write_cifar(&dir.join("cifar-10-batches-bin"), 3);
        let train = load(&dir, Split::Train).unwrap();
        assert_eq!((train.len(), train.channels, train.size, train.num_classes), (15, 3, 32, 10));
        let img = train.image(7);
        assert!(img[..1024].iter().all(|&p| p == 7) && img[1024..2048].iter().all(|&p| p == 14));
        assert!(img[2048..].iter().all(|&p| p == 21));
        assert_eq!(train.labels.as_ref().unwrap()[..3], [0, 1, 2]);
        let test = load(&dir, Split::Test).unwrap();
        assert_eq!((test.len(), test.labels.unwrap()[0]), (3, 5));
    }

    #[test]
    fn missing_truncated_and_corrupt_files_are_named() {
        let dir = tempdir("bad");
        let e = load(&dir, Split::Train).unwrap_err().to_string();
        assert!(e.contains("data_batch_1.bin") && e.contains("cifar-10-binary.tar.gz"), "{e}");
        write_cifar(&dir, 2);
        std::fs::remove_file(dir.join("data_batch_4.bin")).unwrap();
        let e = load(&dir, Split::Train).unwrap_err().to_string();
        let first_line = e.lines().next().unwrap();
        assert!(first_line.contains("data_batch_4.bin") && !first_line.contains("data_batch_1.bin"), "{e}");
        write_cifar(&dir, 2);
        let path = dir.join("data_batch_3.bin");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
        let e = load(&dir, Split::Train).unwrap_err().to_string();
        assert!(e.contains("data_batch_3.bin") && e.contains("truncated"), "{e}");
        let mut bytes = bytes.clone();
        bytes[RECORD] = 42;
        std::fs::write(&path, &bytes).unwrap();
        let e = load(&dir, Split::Train).unwrap_err().to_string();
        assert!(e.contains("record 1 has label 42"), "{e}");
    }
}
