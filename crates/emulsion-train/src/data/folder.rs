//! A folder of PNG/JPEG images, searched recursively in sorted order, each resized so its shorter
//! side is the image size and centre-cropped to a square.

use std::path::{Path, PathBuf};

use super::{resize_chw, DataError, ImageSet};

/// Loads every `.png`, `.jpg` and `.jpeg` file under `path` as `channels`-channel (1 or 3) images.
pub fn load(path: &Path, channels: usize, size: usize) -> Result<ImageSet, DataError> {
    if !path.is_dir() {
        return Err(DataError::NotFound {
            what: "image folder".into(),
            path: path.to_path_buf(),
            hint: "set data.path to a folder of PNG or JPEG images".into(),
        });
    }
    let mut files = Vec::new();
    collect(path, &mut files)?;
    files.sort();
    if files.is_empty() {
        return Err(DataError::Empty { path: path.to_path_buf() });
    }
    let mut pixels = Vec::with_capacity(files.len() * channels * size * size);
    for file in &files {
        let (chw, [_, h, w]) = decode_chw(file, Some(channels))?;
        pixels.extend(resize_chw(&chw, channels, h, w, size));
    }
    Ok(ImageSet { pixels, labels: None, num_classes: 0, channels, size })
}

/// Decodes `file` as planar `[C, H, W]` pixels with `channels` channels (1 or 3), or, for
/// `None`, 1 for a grayscale file and 3 otherwise; returns them with their shape.
pub fn decode_chw(file: &Path, channels: Option<usize>) -> Result<(Vec<u8>, [usize; 3]), DataError> {
    let img = image::open(file).map_err(|source| DataError::Image { path: file.to_path_buf(), source })?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let channels = channels.unwrap_or(if img.color().has_color() { 3 } else { 1 });
    // Interleaved HWC → planar CHW.
    let hwc = if channels == 1 { img.to_luma8().into_raw() } else { img.to_rgb8().into_raw() };
    let mut chw = vec![0u8; hwc.len()];
    for (i, p) in hwc.iter().enumerate() {
        chw[(i % channels) * h * w + i / channels] = *p;
    }
    Ok((chw, [channels, h, w]))
}

/// Every PNG and JPEG file under `dir`, recursively (unsorted).
pub fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), DataError> {
    let io = |source| DataError::Io { path: dir.to_path_buf(), source };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| ["png", "jpg", "jpeg"].contains(&e.to_ascii_lowercase().as_str()))
        {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_resizes_and_crops_in_sorted_order() {
        let dir = std::env::temp_dir().join(format!("emulsion-folder-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        // A 12x6 red-left/blue-right image: the centre crop of the 8x4 → 4x4 resize straddles both.
        let img = image::RgbImage::from_fn(12, 6, |x, _| if x < 6 { image::Rgb([255, 0, 0]) } else { image::Rgb([0, 0, 255]) });
        img.save(dir.join("sub/b.png")).unwrap();
        image::RgbImage::from_pixel(5, 5, image::Rgb([0, 200, 0])).save(dir.join("a.jpg")).unwrap();
        std::fs::write(dir.join("notes.txt"), "ignored").unwrap();
        let set = load(&dir, 3, 4).unwrap();
        assert_eq!((set.len(), set.size, set.channels), (2, 4, 3));
        // a.jpg first (sorted): uniform green, up to JPEG error.
        assert!(set.image(0)[16..32].iter().all(|&g| g > 180));
        // b.png: red on the left columns, blue on the right.
        let b = set.image(1);
        assert!(b[0] > 200 && b[3] < 50 && b[2 * 16] < 50 && b[2 * 16 + 3] > 200);
        let gray = load(&dir, 1, 4).unwrap();
        assert_eq!(gray.channels, 1);

        std::fs::write(dir.join("broken.png"), b"\x89PNG garbage").unwrap();
        let e = load(&dir, 3, 4).unwrap_err().to_string();
        assert!(e.contains("broken.png"), "{e}");
        let empty = dir.join("sub/empty");
        std::fs::create_dir_all(&empty).unwrap();
        assert!(load(&empty, 3, 4).unwrap_err().to_string().contains("no PNG or JPEG"));
    }
}
