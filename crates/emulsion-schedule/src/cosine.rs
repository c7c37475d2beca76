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

    #[test]
    fn matches_the_closed_form() {
        for t in [0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99] {
            let expected = -2.0 * (std::f64::consts::FRAC_PI_2 * t).tan().ln();
            assert!((Cosine.lambda(t) - expected).abs() < 1e-12);
        }
        assert!(Cosine.lambda(0.5).abs() < 1e-12, "λ(1/2) = 0: α = σ at the midpoint");
        // p(0) = 1/(2π): dλ/dt = -2π / sin(π t) = -2π at t = 1/2.
        assert!((Cosine.density(0.0) - 1.0 / (2.0 * PI)).abs() < 1e-15);
    }
}
