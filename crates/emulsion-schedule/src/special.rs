//! The standard normal distribution's CDF and quantile in `f64` (for the log-normal schedule and
//! iCT's level probabilities), and an `erfinv` on tensors for sampling it on the device.

use std::f64::consts::SQRT_2;

use burn::tensor::{backend::Backend, Tensor};

/// `Φ(x) = erfc(-x / √2) / 2`, accurate in both tails.
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * libm::erfc(-x / SQRT_2)
}

/// `Φ⁻¹(p)` for `p ∈ (0, 1)`, to a few ulps: Acklam's rational start, then Halley steps on
/// `Φ(x) - p`. Works on the lower half and mirrors, since `1 - p` is exact for `p ≥ 1/2`.
pub fn normal_quantile(p: f64) -> f64 {
    if p > 0.5 {
        return -normal_quantile(1.0 - p);
    }
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    let mut x = acklam(p);
    for _ in 0..3 {
        let density = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
        let err = normal_cdf(x) - p;
        let step = err / density;
        x -= step / (1.0 + 0.5 * x * step);
    }
    x
}

/// Acklam's approximation of `Φ⁻¹(p)` for `p ≤ 1/2` (relative error < 1.2e-9).
fn acklam(p: f64) -> f64 {
    const A: [f64; 6] = [-3.969683028665376e1, 2.209460984245205e2, -2.759285104469687e2, 1.383577518672690e2, -3.066479806614716e1, 2.506628277459239];
    const B: [f64; 5] = [-5.447609879822406e1, 1.615858368580409e2, -1.556989798598866e2, 6.680131188771972e1, -1.328068155288572e1];
    const C: [f64; 6] = [-7.784894002430293e-3, -3.223964580411365e-1, -2.400758277161838, -2.549732539343734, 4.374664141464968, 2.938163982698783];
    const D: [f64; 4] = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
    if p < 0.02425 {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// `erfinv(y)` element-wise for `y ∈ (-1, 1)`: Giles' single-precision approximation ("Approximating
/// the erfinv function", 2010), which is as accurate as the `f32` tensors it runs on.
pub fn erfinv_tensor<B: Backend>(y: Tensor<B, 1>) -> Tensor<B, 1> {
    let w = -((-y.clone() + 1.0) * (y.clone() + 1.0)).log();
    let central = {
        let w = w.clone() - 2.5;
        horner(w, &[2.81022636e-08, 3.43273939e-07, -3.5233877e-06, -4.39150654e-06, 0.00021858087, -0.00125372503, -0.00417768164, 0.246640727, 1.50140941])
    };
    let tail = {
        let w = w.clone().sqrt() - 3.0;
        horner(w, &[-0.000200214257, 0.000100950558, 0.00134934322, -0.00367342844, 0.00573950773, -0.0076224613, 0.00943887047, 1.00167406, 2.83297682])
    };
    let p = central.mask_where(w.greater_equal_elem(5.0), tail);
    p * y
}

/// `c[0] x^(n-1) + … + c[n-1]` by Horner's rule.
fn horner<B: Backend>(x: Tensor<B, 1>, coefficients: &[f64]) -> Tensor<B, 1> {
    let mut acc = x.zeros_like() + coefficients[0];
    for &c in &coefficients[1..] {
        acc = acc * x.clone() + c;
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;

    #[test]
    fn cdf_matches_reference_values() {
        // Φ at 0, ±1, ±1.96, -5 (Abramowitz & Stegun tables; scipy.stats.norm.cdf).
        let cases = [(0.0, 0.5), (1.0, 0.8413447460685429), (-1.0, 0.15865525393145707), (1.959963984540054, 0.975), (-5.0, 2.866515718791939e-7)];
        for (x, expected) in cases {
            assert!((normal_cdf(x) - expected).abs() < 1e-15_f64.max(expected * 1e-13), "Φ({x}) = {}", normal_cdf(x));
        }
    }

    #[test]
    fn quantile_inverts_the_cdf_in_both_tails() {
        for p in [1e-12, 1e-6, 0.001, 0.02425, 0.1, 0.3, 0.5, 0.7, 0.975, 0.999, 1.0 - 1e-9] {
            let x = normal_quantile(p);
            assert!((normal_cdf(x) - p).abs() <= 1e-14 * p.min(1.0 - p).max(1e-3), "Φ(Φ⁻¹({p})) = {}", normal_cdf(x));
        }
        assert!((normal_quantile(0.975) - 1.959963984540054).abs() < 1e-13);
    }

    #[test]
    fn tensor_erfinv_matches_the_f64_quantile() {
        let ys: [f32; 8] = [-0.999, -0.9, -0.5, 0.0, 0.3, 0.8, 0.99, 0.99999];
        let got: Vec<f32> = erfinv_tensor(Tensor::<TestBackend, 1>::from_floats(ys, &Default::default())).into_data().to_vec().unwrap();
        for (y, g) in ys.iter().zip(got) {
            // erfinv(y) = Φ⁻¹((1 + y) / 2) / √2.
            let expected = normal_quantile((1.0 + *y as f64) / 2.0) / SQRT_2;
            assert!((g as f64 - expected).abs() < 2e-5 * expected.abs().max(1.0), "erfinv({y}) = {g}, expected {expected}");
        }
    }
}
