//! Fast Diffusion Model (Wu et al. 2023, arXiv 2306.06991; sail-sg/FDM): momentum diffusion as a
//! critically damped oscillator. As the authors implement it, noise is still added in EDM form
//! `x₀ + s ε`; what changes is the network's input scale, and a warm-up of the loss-weight clamp.

use burn::tensor::{backend::Backend, Tensor};
use serde::{Deserialize, Serialize};

/// The critically damped input scale `scale(s) = e^{-mB} (1 + mB)`,
/// `B = β_min τ + β_d τ² / 2`, `τ = (s - s_min) / (s_max - s_min)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FdmScale {
    pub beta_min: f64,
    pub beta_d: f64,
    /// `m`; VE-FDM uses 1 whatever is configured.
    pub multiplier: f64,
    pub sigma_min: f64,
    pub sigma_max: f64,
}

impl Default for FdmScale {
    /// The official CLI defaults with EDM's noise range.
    fn default() -> Self {
        Self { beta_min: 0.1, beta_d: 19.9, multiplier: 2.0, sigma_min: 0.002, sigma_max: 80.0 }
    }
}

impl FdmScale {
    /// `mB(s)`, with `τ = (s - s_min) / (s_max - s_min)` linear in `s`.
    fn damping(&self, sigma: f64) -> f64 {
        let tau = (sigma - self.sigma_min) / (self.sigma_max - self.sigma_min);
        self.multiplier * (self.beta_min * tau + 0.5 * self.beta_d * tau * tau)
    }

    /// `scale(s) = e^{-mB} (1 + mB)`.
    pub fn scale(&self, sigma: f64) -> f64 {
        let mb = self.damping(sigma);
        (-mb).exp() * (1.0 + mb)
    }

    /// `scale(s)` element-wise on the device.
    pub fn scale_tensor<B: Backend>(&self, sigma: Tensor<B, 1>) -> Tensor<B, 1> {
        let tau = (sigma - self.sigma_min) / (self.sigma_max - self.sigma_min);
        let mb = (tau.clone() * self.beta_min + tau.powi_scalar(2) * (0.5 * self.beta_d)) * self.multiplier;
        (-mb.clone()).exp() * (mb + 1.0)
    }
}

/// The loss-weight clamp warm-up: the weight is clamped at `5 · 100^{k / warmup}` at step `k`,
/// which reaches 500 after exactly `warmup` steps; from then on it is not clamped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LossClampWarmup {
    /// 200 iterations for EDM on CIFAR-10, 400 for VP/VE (the official defaults); 0 disables.
    pub warmup: usize,
}

impl LossClampWarmup {
    const START: f64 = 5.0;
    const GROWTH: f64 = 100.0;

    /// The clamp at optimiser step `step` (0-based), or `None` once it has reached 500.
    pub fn clamp_at(&self, step: usize) -> Option<f64> {
        (step < self.warmup).then(|| Self::START * Self::GROWTH.powf(step as f64 / self.warmup as f64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;

    #[test]
    fn scale_is_one_at_sigma_min_and_decreases() {
        let f = FdmScale::default();
        assert_eq!(f.scale(f.sigma_min), 1.0);
        let mut last = 1.0;
        for i in 1..=1000 {
            let s = f.sigma_min + (f.sigma_max - f.sigma_min) * i as f64 / 1000.0;
            let scale = f.scale(s);
            assert!(scale < last && scale > 0.0, "scale({s}) = {scale}");
            last = scale;
        }
        // At s_max: B = 0.1 + 9.95 = 10.05, mB = 20.1, scale = e^{-20.1} · 21.1.
        assert!((f.scale(f.sigma_max) - (-20.1f64).exp() * 21.1).abs() < 1e-20);
        // The official default multiplier 2 doubles B; VE-FDM's m = 1 is the same function of B.
        let ve = FdmScale { multiplier: 1.0, ..f };
        assert!((ve.scale(f.sigma_max) - (-10.05f64).exp() * 11.05).abs() < 1e-15);
    }

    #[test]
    fn device_scale_matches_the_scalar_one() {
        let f = FdmScale::default();
        let sigmas = [0.002f32, 0.1, 1.0, 5.0, 20.0];
        let got: Vec<f32> = f.scale_tensor(Tensor::<TestBackend, 1>::from_floats(sigmas, &Default::default())).into_data().to_vec().unwrap();
        for (s, g) in sigmas.iter().zip(got) {
            assert!((g as f64 - f.scale(*s as f64)).abs() < 1e-6, "scale({s})");
        }
    }

    #[test]
    fn clamp_grows_from_5_to_500_in_exactly_warmup_steps() {
        let w = LossClampWarmup { warmup: 200 };
        assert_eq!(w.clamp_at(0), Some(5.0));
        // The reference multiplies by 100^(1/warmup) each step; the closed form agrees.
        let mut iterated = 5.0;
        for k in 0..200 {
            let clamp = w.clamp_at(k).expect("clamped during warm-up");
            assert!((clamp - iterated).abs() < 1e-9 * iterated && clamp < 500.0);
            iterated *= 100f64.powf(1.0 / 200.0);
        }
        assert!((iterated - 500.0).abs() < 1e-9, "500 after exactly `warmup` steps");
        assert_eq!(w.clamp_at(200), None);
        assert_eq!(LossClampWarmup { warmup: 0 }.clamp_at(0), None);
    }
}
