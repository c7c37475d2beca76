//! Rectified flow's time (Liu et al. 2022; Lipman et al. 2022): `x_t = (1 - t) x₀ + t ε` with
//! `t ~ U(0, 1)`, so `λ(t) = 2 ln((1 - t) / t)`.

use burn::tensor::{backend::Backend, Tensor};

use crate::process::sigmoid;
use crate::LogSnr;

/// Uniform flow time: `λ(t) = 2 ln((1 - t) / t)`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FlowTime;

impl LogSnr for FlowTime {
    /// `λ(t) = 2 ln((1 - t) / t)`.
    fn lambda(&self, t: f64) -> f64 {
        2.0 * ((1.0 - t) / t).ln()
    }

    /// `t = sigmoid(-λ / 2)`.
    fn t_of_lambda(&self, lambda: f64) -> f64 {
        sigmoid(-lambda / 2.0)
    }

    /// `p(λ) = sigmoid(λ/2) sigmoid(-λ/2) / 2`.
    fn density(&self, lambda: f64) -> f64 {
        0.5 * sigmoid(lambda / 2.0) * sigmoid(-lambda / 2.0)
    }

    fn lambda_tensor<B: Backend>(&self, t: Tensor<B, 1>) -> Tensor<B, 1> {
        ((-t.clone() + 1.0) / t).log() * 2.0
    }
}
