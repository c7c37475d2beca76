//! IDX files (MNIST, Fashion-MNIST): big-endian `u32` magic (2051 images, 2049 labels), counts,
//! then `u8` data; read gzipped or raw.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::{read_file, DataError, ImageSet};
use crate::config::Split;

const IMAGES_MAGIC: u32 = 2051;
const LABELS_MAGIC: u32 = 2049;

/// Loads the images (and labels, when the matching labels file exists) of a split. `path` is a
/// folder holding `{train,t10k}-images-idx3-ubyte[.gz]`, or an images file itself.
/// Classes of an IDX dataset unless `data.num_classes` says otherwise: MNIST, Fashion-MNIST and
/// Kuzushiji-MNIST have ten.
pub const DEFAULT_CLASSES: usize = 10;

/// Every label must be below `num_classes`.
pub fn load(path: &Path, split: Split, num_classes: Option<usize>) -> Result<ImageSet, DataError> {
    let images_path = if path.is_dir() {
        let prefix = match split {
            Split::Train => "train",
            Split::Test => "t10k",
        };
        let stem = format!("{prefix}-images-idx3-ubyte");
        find_gz_or_raw(path, &stem).ok_or_else(|| DataError::NotFound {
            what: format!("IDX images `{stem}[.gz]`"),
            path: path.to_path_buf(),
            hint: "Fashion-MNIST: `apt-get install dataset-fashion-mnist` (installs to /usr/share/datasets/fashion-mnist), \
                   or use the test split shipped in datasets/fashion-mnist."
                .into(),
        })?
    } else if path.is_file() {
        path.to_path_buf()
    } else {
        return Err(DataError::NotFound {
            what: "IDX dataset".into(),
            path: path.to_path_buf(),
            hint: "set data.path to a folder of IDX files or to an images file".into(),
        });
    };
    let (count, rows, cols, pixels) = read_images(&images_path)?;
    if rows != cols {
        return Err(malformed(&images_path, format!("images are {rows}x{cols}; only square images are supported")));
    }
    let chosen = num_classes;
    let num_classes = num_classes.unwrap_or(DEFAULT_CLASSES);
    let labels = match labels_path(&images_path) {
        Some(labels_path) => {
            let labels = read_labels(&labels_path)?;
            if labels.len() != count {
                return Err(malformed(&labels_path, format!("{} labels for {count} images", labels.len())));
            }
            if let Some((record, label)) = labels.iter().enumerate().find(|(_, &l)| l as usize >= num_classes) {
                return Err(malformed(
                    &labels_path,
                    format!("record {record} has label {label}, but the dataset has {num_classes} classes (labels below {num_classes}; set data.num_classes if it has more)"),
                ));
            }
            Some(labels)
        }
        None if chosen.is_some() => {
            return Err(malformed(&images_path, "data.num_classes is set, but no labels file (`…-labels-idx1-ubyte[.gz]`) is beside these images".into()));
        }
        None => None,
    };
    let num_classes = if labels.is_some() { num_classes } else { 0 };
    Ok(ImageSet { pixels, labels, num_classes, channels: 1, size: rows })
}

/// `(count, rows, cols, pixels)` of an IDX images file.
pub fn read_images(path: &Path) -> Result<(usize, usize, usize, Vec<u8>), DataError> {
    let bytes = decompressed(path)?;
    let header = header(path, &bytes, IMAGES_MAGIC, 4)?;
    let (count, rows, cols) = (header[0], header[1], header[2]);
    let body = &bytes[16..];
    let expected = count.checked_mul(rows).and_then(|n| n.checked_mul(cols));
    if expected != Some(body.len()) {
        return Err(malformed(path, format!(
            "header says {count} images of {rows}x{cols} ({} bytes) but {} bytes follow (truncated or corrupt)",
            expected.map_or("too many".to_string(), |n| n.to_string()),
            body.len()
        )));
    }
    if count == 0 || rows == 0 {
        return Err(malformed(path, "the file holds no images".into()));
    }
    Ok((count, rows, cols, body.to_vec()))
}

/// The labels of an IDX labels file.
pub fn read_labels(path: &Path) -> Result<Vec<u16>, DataError> {
    let bytes = decompressed(path)?;
    let count = header(path, &bytes, LABELS_MAGIC, 2)?[0];
    let body = &bytes[8..];
    if body.len() != count {
        return Err(malformed(path, format!("header says {count} labels but {} bytes follow", body.len())));
    }
    Ok(body.iter().map(|&b| b as u16).collect())
}

/// Checks the magic number and returns the `u32` fields after it (`fields` counts the magic).
fn header(path: &Path, bytes: &[u8], magic: u32, fields: usize) -> Result<Vec<usize>, DataError> {
    if bytes.len() < 4 * fields {
        return Err(malformed(path, format!("{} bytes is shorter than the IDX header", bytes.len())));
    }
    let word = |i: usize| u32::from_be_bytes(bytes[4 * i..4 * i + 4].try_into().expect("4 bytes"));
    if word(0) != magic {
        return Err(malformed(path, format!("magic number {} (expected {magic})", word(0))));
    }
    Ok((1..fields).map(|i| word(i) as usize).collect())
}

/// The file's bytes, gunzipped when they start with the gzip magic.
fn decompressed(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = read_file(path)?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| malformed(path, format!("gzip stream is corrupt or truncated: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn find_gz_or_raw(dir: &Path, stem: &str) -> Option<PathBuf> {
    [format!("{stem}.gz"), stem.to_string()].into_iter().map(|n| dir.join(n)).find(|p| p.is_file())
}

/// `…-images-idx3-ubyte[.gz]` → the existing `…-labels-idx1-ubyte[.gz]` beside it.
fn labels_path(images: &Path) -> Option<PathBuf> {
    let name = images.file_name()?.to_str()?;
    let stem = name.trim_end_matches(".gz").replace("images-idx3", "labels-idx1");
    if stem == name.trim_end_matches(".gz") {
        return None;
    }
    find_gz_or_raw(images.parent()?, &stem)
}

fn malformed(path: &Path, reason: String) -> DataError {
    DataError::Malformed { path: path.to_path_buf(), format: "IDX", reason }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// Writes an IDX images file (gzipped if `gz`) and a raw labels file beside it.
    pub(crate) fn write_idx(dir: &Path, prefix: &str, images: &[Vec<u8>], size: usize, gz: bool) {
        let mut bytes = Vec::new();
        for v in [IMAGES_MAGIC, images.len() as u32, size as u32, size as u32] {
            bytes.extend(v.to_be_bytes());
        }
        for img in images {
            bytes.extend(img);
        }
        let name = format!("{prefix}-images-idx3-ubyte");
        if gz {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(&bytes).unwrap();
            std::fs::write(dir.join(format!("{name}.gz")), enc.finish().unwrap()).unwrap();
        } else {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        let mut labels = Vec::new();
        for v in [LABELS_MAGIC, images.len() as u32] {
            labels.extend(v.to_be_bytes());
        }
        labels.extend((0..images.len()).map(|i| (i % 10) as u8));
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), labels).unwrap();
    }

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("emulsion-idx-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn reads_gzipped_and_raw_files_with_labels() {
        let dir = tempdir("ok");
        let images: Vec<Vec<u8>> = (0..3).map(|i| vec![i as u8 * 10; 16]).collect();
        write_idx(&dir, "train", &images, 4, true);
        write_idx(&dir, "t10k", &images[..2], 4, false);
        let train = load(&dir, Split::Train, None).unwrap();
        assert_eq!((train.len(), train.size, train.channels), (3, 4, 1));
        assert_eq!(train.image(2), &[20u8; 16][..]);
        assert_eq!(train.labels, Some(vec![0, 1, 2]));
        assert_eq!(train.num_classes, 10, "the class count is the dataset's, not the largest label + 1");
        let test = load(&dir.join("t10k-images-idx3-ubyte"), Split::Train, None).unwrap();
        assert_eq!(test.len(), 2);
    }

    #[test]
    fn a_label_beyond_the_class_count_names_the_file_and_record() {
        let dir = tempdir("labels");
        write_idx(&dir, "train", &[vec![1; 16], vec![2; 16], vec![3; 16]], 4, false);
        let labels = dir.join("train-labels-idx1-ubyte");
        let mut bytes = std::fs::read(&labels).unwrap();
        bytes[8 + 2] = 200;
        std::fs::write(&labels, bytes).unwrap();
        let e = load(&dir, Split::Train, None).unwrap_err().to_string();
        assert!(e.contains("train-labels-idx1-ubyte") && e.contains("record 2 has label 200") && e.contains("data.num_classes"), "{e}");
        assert_eq!(load(&dir, Split::Train, Some(201)).unwrap().num_classes, 201);
        // Without labels, a class count has nothing to apply to.
        std::fs::remove_file(&labels).unwrap();
        assert_eq!(load(&dir, Split::Train, None).unwrap().num_classes, 0);
        let e = load(&dir, Split::Train, Some(12)).unwrap_err().to_string();
        assert!(e.contains("data.num_classes is set") && e.contains("no labels file"), "{e}");
    }

    #[test]
    fn truncated_or_wrong_files_name_the_file() {
        let dir = tempdir("bad");
        write_idx(&dir, "train", &[vec![1; 16], vec![2; 16]], 4, false);
        let path = dir.join("train-images-idx3-ubyte");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
        let e = load(&dir, Split::Train, None).unwrap_err().to_string();
        assert!(e.contains("train-images-idx3-ubyte") && e.contains("truncated"), "{e}");
        std::fs::write(&path, b"not an idx file at all").unwrap();
        let e = load(&dir, Split::Train, None).unwrap_err().to_string();
        assert!(e.contains("magic number"), "{e}");
        std::fs::write(&path, [0x1f, 0x8b, 1, 2, 3]).unwrap();
        let e = load(&dir, Split::Train, None).unwrap_err().to_string();
        assert!(e.contains("gzip"), "{e}");
        let e = load(&dir, Split::Test, None).unwrap_err().to_string();
        assert!(e.contains("t10k-images-idx3-ubyte") && e.contains("not found"), "{e}");
    }
}
