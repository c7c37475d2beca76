//! The image-noise cost matrix `C[i][j] = ‖x_i − e_j‖` as one GEMM:
//! `‖x_i‖² + ‖e_j‖² − 2 x_i·e_j`, clamped at 0 (rounding can make it slightly negative), then
//! the square root for the L2 metric and the optional fp16 rounding. The GEMM is the backend's
//! matmul; the rest is [`AssignBackend::cost_epilogue`], one CubeCL kernel on WGPU and CUDA.

use burn::tensor::{Tensor, TensorPrimitive};

use crate::backend::AssignBackend;
use serde::{Deserialize, Serialize};

/// The assignment cost between an image and a noise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// `‖x − e‖`, the paper's cost.
    #[default]
    L2,
    /// `‖x − e‖²`: the same problem as maximising `Σ x_i·e_π(i)`.
    L2sq,
}

/// Rounding of the costs before solving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Quantize {
    /// Round each cost to the nearest `f16`, as the official code's fp16 costs do (it also
    /// scales by 0.1 first, which only avoids fp16 overflow in its fp16 GEMM); costs beyond
    /// fp16's range saturate at 65504.
    Fp16,
    /// Full `f32` costs.
    #[default]
    None,
}

/// `C[i][j]` for images `x` `[B, D]` and noises `e` `[B', D]`, `[B, B']`, rounded as `quantize_to` says.
pub fn cost_matrix<B: AssignBackend>(x: Tensor<B, 2>, e: Tensor<B, 2>, metric: Metric, quantize_to: Quantize) -> Tensor<B, 2> {
    let x_sq = x.clone().powi_scalar(2).sum_dim(1); // [B, 1]
    let e_sq = e.clone().powi_scalar(2).sum_dim(1).transpose(); // [1, B']
    let gram = x.matmul(e.transpose());
    let [x_sq, e_sq, gram] = [x_sq, e_sq, gram].map(|t| t.into_primitive().tensor());
    Tensor::from_primitive(TensorPrimitive::Float(B::cost_epilogue(x_sq, e_sq, gram, metric, quantize_to)))
}

/// `c` rounded as `quantize` says.
pub fn quantize(c: f32, quantize: Quantize) -> f32 {
    match quantize {
        Quantize::Fp16 => half::f16::from_f32(c).to_f32().min(half::f16::MAX.to_f32()),
        Quantize::None => c,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;
    use rand::{Rng, SeedableRng};

    fn reference(x: &[Vec<f64>], e: &[Vec<f64>], metric: Metric) -> Vec<f64> {
        x.iter()
            .flat_map(|xi| {
                e.iter().map(move |ej| {
                    let sq: f64 = xi.iter().zip(ej).map(|(a, b)| (a - b) * (a - b)).sum();
                    if metric == Metric::L2 { sq.sqrt() } else { sq }
                })
            })
            .collect()
    }

    #[test]
    fn agrees_with_an_f64_reference_on_odd_shapes() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let device = Default::default();
        // Sizes that are not multiples of any tile, and images in [-1, 1] against N(0, 1)-like noise.
        for (b, d) in [(1, 3), (7, 33), (37, 3072)] {
            let x: Vec<Vec<f64>> = (0..b).map(|_| (0..d).map(|_| rng.random_range(-1.0..1.0)).collect()).collect();
            let e: Vec<Vec<f64>> = (0..b).map(|_| (0..d).map(|_| rng.random_range(-2.5..2.5)).collect()).collect();
            let tensor = |v: &[Vec<f64>]| {
                let flat: Vec<f32> = v.iter().flatten().map(|&a| a as f32).collect();
                Tensor::<TestBackend, 2>::from_data(burn::tensor::TensorData::new(flat, [b, d]), &device)
            };
            for metric in [Metric::L2, Metric::L2sq] {
                let got: Vec<f32> = cost_matrix(tensor(&x), tensor(&e), metric, Quantize::None).into_data().to_vec().unwrap();
                let want = reference(&x, &e, metric);
                for (g, w) in got.iter().zip(&want) {
                    // f32 accumulation of d terms: relative error ~ √d · 2⁻²⁴ of ‖x‖² + ‖e‖².
                    let scale = if metric == Metric::L2 { w.max(1.0) } else { w.max(1.0) * 2.0 };
                    assert!((*g as f64 - w).abs() < 1e-4 * scale, "{metric:?} b={b} d={d}: {g} vs {w}");
                    // fp16 keeps 11 significant bits: relative error at most 2⁻¹¹.
                    let q = quantize(*g, Quantize::Fp16) as f64;
                    assert!((q - w).abs() <= w * 2f64.powi(-11) + 1e-4 * scale);
                }
            }
        }
    }

    #[test]
    fn identical_points_cost_zero_not_nan() {
        let x = Tensor::<TestBackend, 2>::from_floats([[0.3, -0.7, 1.1], [2.0, 2.0, 2.0]], &Default::default());
        let c: Vec<f32> = cost_matrix(x.clone(), x, Metric::L2, Quantize::None).into_data().to_vec().unwrap();
        assert!(c[0] == 0.0 && c[3] == 0.0, "{c:?}");
        assert!(c.iter().all(|v| v.is_finite()));
    }
}
