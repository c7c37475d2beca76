//! The continuous cosine schedule (Nichol & Dhariwal 2021): `α(t) = cos(π t / 2)`, so
//! `λ(t) = -2 ln tan(π t / 2)`.

use std::f64::consts::PI;

use burn::tensor::{backend::Backend, Tensor};

use crate::LogSnr;

/// `λ(t) = -2 ln tan(π t / 2)`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Cosine;

impl LogSnr for Cosine {
    /// `λ(t) = -2 ln tan(π t / 2)`.
    fn lambda(&self, t: f64) -> f64 {
        -2.0 * (PI * t / 2.0).tan().ln()
    }

    /// `t(λ) = (2 / π) atan(exp(-λ / 2))`.
    fn t_of_lambda(&self, lambda: f64) -> f64 {
        2.0 / PI * (-lambda / 2.0).exp().atan()
    }

    /// `p(λ) = 1 / (2π cosh(λ / 2))`.
    fn density(&self, lambda: f64) -> f64 {
        1.0 / (2.0 * PI * (lambda / 2.0).cosh())
    }

    fn lambda_tensor<B: Backend>(&self, t: Tensor<B, 1>) -> Tensor<B, 1> {
        (t * (PI / 2.0)).tan().log() * -2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;

    #[test]
    fn matches_the_closed_form() {
        for t in [0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99] {
            let expected = -2.0 * (std::f64::consts::FRAC_PI_2 * t).tan().ln();
            assert!((Cosine.lambda(t) - expected).abs() < 1e-12);
        }
        assert!(Cosine.lambda(0.5).abs() < 1e-12, "λ(1/2) = 0: α = σ at the midpoint");
    }

    #[test]
    fn inverse_round_trips_and_lambda_decreases() {
        let mut last = f64::INFINITY;
        for i in 1..1000 {
            let t = i as f64 / 1000.0;
            let lambda = Cosine.lambda(t);
            assert!(lambda < last, "λ must be strictly decreasing");
            last = lambda;
            assert!((Cosine.t_of_lambda(lambda) - t).abs() < 1e-12);
        }
    }

    #[test]
    fn density_integrates_to_one() {
        // Trapezoid rule on [-60, 60]; the tails beyond hold < 1e-12 of the mass.
        let (a, b, n) = (-60.0, 60.0, 240_000);
        let h = (b - a) / n as f64;
        let total: f64 = (0..=n)
            .map(|i| {
                let w = if i == 0 || i == n { 0.5 } else { 1.0 };
                w * Cosine.density(a + i as f64 * h)
            })
            .sum::<f64>()
            * h;
        assert!((total - 1.0).abs() < 1e-9, "∫p = {total}");
    }

    #[test]
    fn device_map_matches_the_scalar_map() {
        let ts = [0.05f32, 0.3, 0.5, 0.8, 0.95];
        let t = Tensor::<TestBackend, 1>::from_floats(ts, &Default::default());
        let got: Vec<f32> = Cosine.lambda_tensor(t).into_data().to_vec().unwrap();
        for (t, g) in ts.iter().zip(got) {
            assert!((g as f64 - Cosine.lambda(*t as f64)).abs() < 1e-4);
        }
    }
}
