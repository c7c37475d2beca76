//! Training images: the formats we read, held in memory as `u8` pixels, and the deterministic
//! order in which they are served.
//!
//! Every format becomes an [`ImageSet`]: `N` square images of `C` channels in `[N, C, H, W]`
//! order, with class labels when the format has them. Batches are `f32` in `[-1, 1]`.

pub mod cifar;
pub mod folder;
pub mod idx;
pub mod loader;
pub mod order;

use std::path::{Path, PathBuf};

use crate::config::{Config, DatasetKind};

pub use loader::{DiffusionBatch, StepLoader};
pub use order::DataOrder;

/// A problem with a dataset's files. Each names the file or folder concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    #[error("{what} not found at {}\n{hint}", path.display())]
    NotFound { what: String, path: PathBuf, hint: String },
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{} is not a valid {format} file: {reason}", path.display())]
    Malformed { path: PathBuf, format: &'static str, reason: String },
    #[error("cannot decode image {}: {source}", path.display())]
    Image { path: PathBuf, source: image::ImageError },
    #[error("no PNG or JPEG images found under {}", path.display())]
    Empty { path: PathBuf },
}

/// Images held in memory: `pixels` is `[N, C, H, W]` row-major `u8`.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSet {
    pub pixels: Vec<u8>,
    /// One label per image, in `0..num_classes`, for labelled formats.
    pub labels: Option<Vec<u16>>,
    pub num_classes: usize,
    pub channels: usize,
    pub size: usize,
}

impl ImageSet {
    pub fn len(&self) -> usize {
        self.pixels.len() / self.image_len()
    }

    pub fn is_empty(&self) -> bool {
        self.pixels.is_empty()
    }

    fn image_len(&self) -> usize {
        self.channels * self.size * self.size
    }

    /// Image `i` as `[C, H, W]` bytes.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.pixels[i * n..(i + 1) * n]
    }

    /// Keeps the first `n` images.
    pub fn truncate(&mut self, n: usize) {
        let n = n.min(self.len());
        self.pixels.truncate(n * self.image_len());
        if let Some(labels) = &mut self.labels {
            labels.truncate(n);
        }
    }

    /// Every image resized so its shorter side is `size` and centre-cropped to `size` x `size`.
    pub fn resized(self, size: usize) -> Self {
        if size == self.size {
            return self;
        }
        let mut pixels = Vec::with_capacity(self.len() * self.channels * size * size);
        for i in 0..self.len() {
            pixels.extend(resize_chw(self.image(i), self.channels, self.size, self.size, size));
        }
        Self { pixels, size, ..self }
    }

    /// The images at `indices` as `f32` in `[-1, 1]`, `[B, C, H, W]`, mirrored where `flips` is true.
    pub fn batch(&self, indices: &[usize], flips: &[bool]) -> Vec<f32> {
        let (c, s) = (self.channels, self.size);
        let mut out = Vec::with_capacity(indices.len() * c * s * s);
        for (&i, &flip) in indices.iter().zip(flips) {
            let image = self.image(i);
            for row in image.chunks_exact(s) {
                let to_unit = |p: &u8| *p as f32 / 127.5 - 1.0;
                if flip {
                    out.extend(row.iter().rev().map(to_unit));
                } else {
                    out.extend(row.iter().map(to_unit));
                }
            }
        }
        out
    }
}

/// Loads the dataset a config describes, at the config's image size.
pub fn load(config: &Config) -> Result<ImageSet, DataError> {
    let path = config.data_path().expect("validated: every dataset kind has a path");
    let mut set = match config.data.dataset {
        DatasetKind::Cifar10 => cifar::load(&path, config.data.split)?,
        DatasetKind::Idx => idx::load(&path, config.data.split, config.data.num_classes)?,
        DatasetKind::Folder => {
            let size = config.image_size().expect("validated: folder datasets have a size");
            folder::load(&path, config.data.channels.unwrap_or(3), size)?
        }
    };
    if let Some(limit) = config.data.limit {
        set.truncate(limit);
    }
    let size = config.image_size().unwrap_or(set.size);
    Ok(set.resized(size))
}

/// Resizes a `[C, H, W]` image so its shorter side is `size`, then centre-crops to a square.
pub(crate) fn resize_chw(chw: &[u8], channels: usize, height: usize, width: usize, size: usize) -> Vec<u8> {
    use image::imageops::{self, FilterType};
    let (h, w) = (height as u32, width as u32);
    let scale = size as f64 / height.min(width) as f64;
    let (nh, nw) = (((h as f64 * scale).round() as u32).max(size as u32), ((w as f64 * scale).round() as u32).max(size as u32));
    let (top, left) = ((nh - size as u32) / 2, (nw - size as u32) / 2);
    let mut out = Vec::with_capacity(channels * size * size);
    for plane in chw.chunks_exact(height * width) {
        let img = image::GrayImage::from_raw(w, h, plane.to_vec()).expect("plane has H*W bytes");
        let resized = imageops::resize(&img, nw, nh, FilterType::CatmullRom);
        let cropped = imageops::crop_imm(&resized, left, top, size as u32, size as u32).to_image();
        out.extend_from_slice(cropped.as_raw());
    }
    out
}

/// Reads a whole file, naming it in the error.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_images() -> ImageSet {
        // Two 1x2x2 images: [0, 255 / 255, 0] rows.
        ImageSet { pixels: vec![0, 255, 255, 0, 10, 20, 30, 40], labels: Some(vec![1, 0]), num_classes: 2, channels: 1, size: 2 }
    }

    #[test]
    fn batches_are_in_minus_one_to_one_and_flips_mirror_rows() {
        let set = two_images();
        assert_eq!(set.batch(&[0], &[false]), vec![-1.0, 1.0, 1.0, -1.0]);
        assert_eq!(set.batch(&[0], &[true]), vec![1.0, -1.0, -1.0, 1.0]);
        let b = set.batch(&[1, 0], &[false, false]);
        assert_eq!(b.len(), 8);
        assert!((b[0] - (10.0 / 127.5 - 1.0)).abs() < 1e-7);
    }

    #[test]
    fn resizing_keeps_constant_images_constant_and_crops_to_square() {
        let set = ImageSet { pixels: vec![77; 3 * 8 * 8], labels: None, num_classes: 0, channels: 3, size: 8 };
        let r = set.resized(4);
        assert_eq!((r.size, r.len()), (4, 1));
        assert!(r.pixels.iter().all(|&p| p == 77));
        let wide = resize_chw(&[5u8; 4 * 8], 1, 4, 8, 2);
        assert_eq!(wide, vec![5; 4]);
    }

    #[test]
    fn truncate_keeps_labels_in_step() {
        let mut set = two_images();
        set.truncate(1);
        assert_eq!((set.len(), set.labels.as_deref()), (1, Some(&[1u16][..])));
    }
}
