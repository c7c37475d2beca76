//! EDM's training noise (Karras et al. 2022): `ln s ~ N(P_mean, P_std²)`, so with `λ = -2 ln s`
//! the log-SNR is normal, `λ ~ N(-2 P_mean, (2 P_std)²)`.

use std::f64::consts::{PI, SQRT_2};

use burn::tensor::{backend::Backend, Tensor};
use serde::{Deserialize, Serialize};

use crate::special::{erfinv_tensor, normal_cdf, normal_quantile};
use crate::LogSnr;

/// `ln s ~ N(p_mean, p_std²)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogNormal {
    pub p_mean: f64,
    pub p_std: f64,
}

impl Default for LogNormal {
    /// EDM's CIFAR-10 values.
    fn default() -> Self {
        Self { p_mean: -1.2, p_std: 1.2 }
    }
}

impl LogSnr for LogNormal {
    /// `λ(t) = -2 (P_mean + P_std Φ⁻¹(t))`: `t` is the quantile of `ln s`.
    fn lambda(&self, t: f64) -> f64 {
        -2.0 * (self.p_mean + self.p_std * normal_quantile(t))
    }

    /// `t = Φ((-λ/2 - P_mean) / P_std)`.
    fn t_of_lambda(&self, lambda: f64) -> f64 {
        normal_cdf((-lambda / 2.0 - self.p_mean) / self.p_std)
    }

    /// The `N(-2 P_mean, (2 P_std)²)` density.
    fn density(&self, lambda: f64) -> f64 {
        let std = 2.0 * self.p_std;
        let z = (lambda + 2.0 * self.p_mean) / std;
        (-0.5 * z * z).exp() / (std * (2.0 * PI).sqrt())
    }

    fn lambda_tensor<B: Backend>(&self, t: Tensor<B, 1>) -> Tensor<B, 1> {
        let z = erfinv_tensor(t * 2.0 - 1.0) * SQRT_2;
        (z * self.p_std + self.p_mean) * -2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_quartiles_are_edms() {
        let l = LogNormal::default();
        // The median noise level is e^{P_mean}; the quartiles are e^{P_mean ± 0.6745 P_std}.
        assert!((l.lambda(0.5) - 2.4).abs() < 1e-14);
        let q = 0.6744897501960817;
        assert!((l.lambda(0.75) + 2.0 * (-1.2 + q * 1.2)).abs() < 1e-12);
        assert!((l.density(2.4) - 1.0 / (2.4 * (2.0 * PI).sqrt())).abs() < 1e-15);
    }
}
