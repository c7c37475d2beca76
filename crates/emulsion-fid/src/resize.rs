//! TF1 bilinear resize (`tf.image.resize_bilinear`, `align_corners=False`, no half-pixel
//! centres), the resize of TF/NVIDIA FID: output pixel `i` samples input coordinate
//! `i · in/out`, interpolating between its floor and the next pixel (clamped at the edge).

use burn::prelude::*;

/// `x` (`[N, C, H, W]`) resized to `[N, C, size[0], size[1]]` on its device.
pub fn resize_bilinear_tf1<B: Backend>(x: Tensor<B, 4>, [height, width]: [usize; 2]) -> Tensor<B, 4> {
    let [_, _, h, w] = x.dims();
    let rows = lerp_axis(x, 2, h, height);
    lerp_axis(rows, 3, w, width)
}

/// Source pixels and weights of TF1's rule along one axis: `(floor, next, fraction)` per output.
pub fn tf1_taps(input: usize, output: usize) -> Vec<(usize, usize, f64)> {
    let scale = input as f64 / output as f64;
    (0..output)
        .map(|i| {
            let source = i as f64 * scale;
            let lower = (source.floor() as usize).min(input - 1);
            ((lower), (lower + 1).min(input - 1), source - lower as f64)
        })
        .collect()
}

/// `x` resampled along `dim` from `input` to `output` samples.
fn lerp_axis<B: Backend>(x: Tensor<B, 4>, dim: usize, input: usize, output: usize) -> Tensor<B, 4> {
    if input == output {
        return x;
    }
    let device = x.device();
    let taps = tf1_taps(input, output);
    let index = |pick: fn(&(usize, usize, f64)) -> usize| {
        let values: Vec<i64> = taps.iter().map(|t| pick(t) as i64).collect();
        Tensor::<B, 1, Int>::from_data(TensorData::new(values, [output]), &device)
    };
    let mut shape = [1usize; 4];
    shape[dim] = output;
    let fraction: Vec<f32> = taps.iter().map(|t| t.2 as f32).collect();
    let fraction = Tensor::<B, 1>::from_data(TensorData::new(fraction, [output]), &device).reshape(shape);
    let lower = x.clone().select(dim, index(|t| t.0));
    let upper = x.select(dim, index(|t| t.1));
    lower.clone() + (upper - lower) * fraction
}

#[cfg(test)]
mod tests {
    use super::*;

    type B = burn::backend::NdArray<f32>;

    #[test]
    fn taps_follow_the_tf1_rule() {
        // 2 → 4: sources 0, 0.5, 1, 1.5 (the last clamps to pixel 1).
        assert_eq!(tf1_taps(2, 4), vec![(0, 1, 0.0), (0, 1, 0.5), (1, 1, 0.0), (1, 1, 0.5)]);
        // 28 → 299: source of pixel 298 is 298·28/299 = 27.906…, between 27 and (clamped) 27.
        let last = tf1_taps(28, 299)[298];
        assert_eq!((last.0, last.1), (27, 27));
        assert!((last.2 - (298.0 * 28.0 / 299.0 - 27.0)).abs() < 1e-12);
    }

    #[test]
    fn a_2x2_image_resizes_to_the_hand_computed_4x4() {
        let device = Default::default();
        let x = Tensor::<B, 4>::from_data(TensorData::new(vec![0.0f32, 10.0, 20.0, 30.0], [1, 1, 2, 2]), &device);
        let y: Vec<f32> = resize_bilinear_tf1(x, [4, 4]).into_data().to_vec().unwrap();
        // Rows sample 0, 0.5, 1, 1 (clamped) of [0, 10] / [20, 30]; columns likewise.
        let row = |a: f32, b: f32| [a, (a + b) / 2.0, b, b];
        let top = row(0.0, 10.0);
        let bottom = row(20.0, 30.0);
        let mid: Vec<f32> = top.iter().zip(&bottom).map(|(t, b)| (t + b) / 2.0).collect();
        let expected: Vec<f32> = [top.to_vec(), mid, bottom.to_vec(), bottom.to_vec()].concat();
        assert_eq!(y, expected);
    }
}
