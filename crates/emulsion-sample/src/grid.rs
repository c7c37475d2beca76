//! Image grids written as PNG.

use std::path::Path;

use burn::prelude::*;

/// Writes `images` (`[N, C, H, W]`, values in `[-1, 1]`, C = 1 or 3) as a grid with `cols`
/// columns and a 2-pixel border, atomically (temporary file, then rename).
pub fn save_grid<B: Backend>(images: Tensor<B, 4>, cols: usize, path: &Path) -> std::io::Result<()> {
    let [n, c, h, w] = images.dims();
    let pixels: Vec<f32> = images.into_data().convert::<f32>().to_vec().expect("float data");
    let cols = cols.clamp(1, n.max(1));
    let rows = n.div_ceil(cols);
    let pad = 2;
    let (gw, gh) = (cols * (w + pad) + pad, rows * (h + pad) + pad);
    let mut canvas = vec![0u8; gw * gh * 3];
    for i in 0..n {
        let (top, left) = (pad + (i / cols) * (h + pad), pad + (i % cols) * (w + pad));
        for y in 0..h {
            for x in 0..w {
                for ch in 0..3 {
                    let v = pixels[((i * c + ch.min(c - 1)) * h + y) * w + x];
                    canvas[((top + y) * gw + left + x) * 3 + ch] = ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8;
                }
            }
        }
    }
    let tmp = path.with_extension("png.tmp");
    image::RgbImage::from_raw(gw as u32, gh as u32, canvas)
        .expect("canvas has the grid's size")
        .save_with_format(&tmp, image::ImageFormat::Png)
        .map_err(std::io::Error::other)?;
    std::fs::rename(tmp, path)
}

/// Columns of a sample grid: one per class for conditional models, else about square.
pub fn grid_columns(n: usize, num_classes: usize) -> usize {
    if num_classes > 0 && num_classes <= n { num_classes } else { (n as f64).sqrt().ceil() as usize }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;

    #[test]
    fn writes_tiles_in_row_major_order() {
        let device = Default::default();
        // Three 1x2x2 images: black, white, mid-grey.
        let images = Tensor::<TestBackend, 1>::from_floats([-1.0, -1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0], &device).reshape([3, 1, 2, 2]);
        let path = std::env::temp_dir().join(format!("emulsion-grid-{}.png", std::process::id()));
        save_grid(images, 2, &path).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (2 * 4 + 2, 2 * 4 + 2));
        assert_eq!(img.get_pixel(2, 2).0, [0, 0, 0]);
        assert_eq!(img.get_pixel(6, 2).0, [255, 255, 255]);
        assert_eq!(img.get_pixel(2, 6).0, [128, 128, 128]);
        assert_eq!(grid_columns(64, 10), 10);
        assert_eq!(grid_columns(64, 0), 8);
    }
}
