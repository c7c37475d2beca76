//! The improved noise schedule (Hang & Gu 2024, arXiv 2407.03297): importance-sample the
//! log-SNR from a density concentrated around `λ = μ`, where training matters most.

use std::f64::consts::PI;

use burn::tensor::{backend::Backend, Tensor};
use serde::{Deserialize, Serialize};

use crate::LogSnr;

/// `p(λ) = exp(-|λ - μ| / b) / (2b)`, the paper's proposal.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Laplace {
    pub mu: f64,
    pub b: f64,
}

impl Default for Laplace {
    fn default() -> Self {
        Self { mu: 0.0, b: 0.5 }
    }
}

impl LogSnr for Laplace {
    /// `λ(t) = μ - b sgn(1/2 - t) ln(1 - 2|t - 1/2|)`.
    fn lambda(&self, t: f64) -> f64 {
        // 1 - 2|t - 1/2| is 2t below the median and 2(1 - t) above; written so, it is exact.
        if t <= 0.5 { self.mu - self.b * (2.0 * t).ln() } else { self.mu + self.b * (2.0 * (1.0 - t)).ln() }
    }

    /// `t = e^{-(λ-μ)/b} / 2` above `μ`, `1 - e^{(λ-μ)/b} / 2` below.
    fn t_of_lambda(&self, lambda: f64) -> f64 {
        let z = (lambda - self.mu) / self.b;
        if z >= 0.0 { 0.5 * (-z).exp() } else { 1.0 - 0.5 * z.exp() }
    }

    /// `p(λ) = exp(-|λ - μ| / b) / (2b)`.
    fn density(&self, lambda: f64) -> f64 {
        (-(lambda - self.mu).abs() / self.b).exp() / (2.0 * self.b)
    }

    fn lambda_tensor<B: Backend>(&self, t: Tensor<B, 1>) -> Tensor<B, 1> {
        let centred = t - 0.5;
        let sign_of_half_minus_t = -centred.clone().sign();
        (sign_of_half_minus_t * (-centred.abs() * 2.0 + 1.0).log()) * -self.b + self.mu
    }
}

/// `p(λ) = γ / (π ((λ - μ)² + γ²))`, the paper's heavy-tailed alternative.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cauchy {
    pub mu: f64,
    pub gamma: f64,
}

impl Default for Cauchy {
    /// The paper's values could not be verified; `μ = 0, γ = 1` is a documented default.
    fn default() -> Self {
        Self { mu: 0.0, gamma: 1.0 }
    }
}

impl LogSnr for Cauchy {
    /// `λ(t) = μ + γ tan(π/2 (1 - 2t))`.
    fn lambda(&self, t: f64) -> f64 {
        self.mu + self.gamma * (PI / 2.0 * (1.0 - 2.0 * t)).tan()
    }

    /// `t = 1/2 - atan((λ - μ) / γ) / π`.
    fn t_of_lambda(&self, lambda: f64) -> f64 {
        0.5 - ((lambda - self.mu) / self.gamma).atan() / PI
    }

    /// `p(λ) = γ / (π ((λ - μ)² + γ²))`.
    fn density(&self, lambda: f64) -> f64 {
        self.gamma / (PI * ((lambda - self.mu).powi(2) + self.gamma * self.gamma))
    }

    fn lambda_tensor<B: Backend>(&self, t: Tensor<B, 1>) -> Tensor<B, 1> {
        ((-t * 2.0 + 1.0) * (PI / 2.0)).tan() * self.gamma + self.mu
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn laplace_matches_its_closed_form() {
        let l = Laplace { mu: 0.3, b: 0.5 };
        // t = 0.1: λ = μ - b ln(0.2) (below the median t the sign is +); t = 0.9: λ = μ + b ln(0.2).
        assert!((l.lambda(0.1) - (0.3 - 0.5 * 0.2f64.ln())).abs() < 1e-14);
        assert!((l.lambda(0.9) - (0.3 + 0.5 * 0.2f64.ln())).abs() < 1e-14);
        assert!((l.lambda(0.5) - 0.3).abs() < 1e-15);
        assert!((l.density(0.3) - 1.0).abs() < 1e-15, "peak 1/(2b)");
        assert!((l.density(1.3) - (-2.0f64).exp()).abs() < 1e-15);
    }

    #[test]
    fn cauchy_matches_its_closed_form() {
        let c = Cauchy { mu: -1.0, gamma: 2.0 };
        // t = 1/4: tan(π/4) = 1, so λ = μ + γ.
        assert!((c.lambda(0.25) - 1.0).abs() < 1e-14);
        assert!((c.lambda(0.5) + 1.0).abs() < 1e-15);
        assert!((c.density(-1.0) - 1.0 / (2.0 * PI)).abs() < 1e-15);
        assert!((c.density(1.0) - 2.0 / (PI * 8.0)).abs() < 1e-15);
    }
}
