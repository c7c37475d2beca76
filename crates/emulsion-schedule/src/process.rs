//! Processes on top of a log-SNR: every one is `x_t = α x₀ + σ ε` with `α / σ = e^{λ/2}`; they
//! differ only in how `λ` is split into `α` and `σ`. The network always sees the EDM form
//! `x = x_t / α = x₀ + s ε` with `s = σ / α = e^{-λ/2}`, so one model and one set of samplers
//! serve them all.

use burn::tensor::{backend::Backend, Tensor};
use serde::{Deserialize, Serialize};

/// How a log-SNR becomes the coefficients of `x_t = α x₀ + σ ε`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Process {
    /// Variance preserving: `α² = sigmoid(λ)`, `σ² = sigmoid(-λ)`.
    #[default]
    Vp,
    /// Variance exploding (EDM): `α = 1`, `σ = s = e^{-λ/2}`.
    Ve,
    /// Rectified flow: `α = 1 - t`, `σ = t`, i.e. `α = sigmoid(λ/2)`, `σ = sigmoid(-λ/2)`.
    Flow,
}

impl Process {
    /// `(α, σ)` at log-SNR `λ`.
    pub fn alpha_sigma(self, lambda: f64) -> (f64, f64) {
        match self {
            Process::Vp => (sigmoid(lambda).sqrt(), sigmoid(-lambda).sqrt()),
            Process::Ve => (1.0, edm_sigma(lambda)),
            Process::Flow => (sigmoid(lambda / 2.0), sigmoid(-lambda / 2.0)),
        }
    }
}

/// The EDM noise level `s = e^{-λ/2}` of a log-SNR.
pub fn edm_sigma(lambda: f64) -> f64 {
    (-lambda / 2.0).exp()
}

/// [`edm_sigma`] element-wise on the device.
pub fn edm_sigma_tensor<B: Backend>(lambda: Tensor<B, 1>) -> Tensor<B, 1> {
    (lambda * -0.5).exp()
}

/// The log-SNR `λ = -2 ln s` of an EDM noise level.
pub fn lambda_of_edm_sigma(sigma: f64) -> f64 {
    -2.0 * sigma.ln()
}

/// `1 / (1 + e^{-x})`, without overflow for large `|x|`.
pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_process_has_the_log_snr_it_was_given() {
        for lambda in [-20.0, -3.0, -0.5, 0.0, 0.5, 3.0, 20.0] {
            for process in [Process::Vp, Process::Ve, Process::Flow] {
                let (a, s) = process.alpha_sigma(lambda);
                assert!(((a * a / (s * s)).ln() - lambda).abs() < 1e-9, "{process:?} at λ = {lambda}");
                assert!((s / a - edm_sigma(lambda)).abs() <= 1e-12 * edm_sigma(lambda));
            }
            let (a, s) = Process::Vp.alpha_sigma(lambda);
            assert!((a * a + s * s - 1.0).abs() < 1e-12, "VP preserves variance");
            let (a, s) = Process::Flow.alpha_sigma(lambda);
            assert!((a + s - 1.0).abs() < 1e-12, "flow interpolates");
            assert!((lambda_of_edm_sigma(edm_sigma(lambda)) - lambda).abs() < 1e-12);
        }
    }

    #[test]
    fn flow_coefficients_are_one_minus_t_and_t() {
        for t in [0.1f64, 0.25, 0.5, 0.9] {
            let lambda = 2.0 * ((1.0 - t) / t).ln();
            let (a, s) = Process::Flow.alpha_sigma(lambda);
            assert!((a - (1.0 - t)).abs() < 1e-15 && (s - t).abs() < 1e-15);
        }
    }
}
