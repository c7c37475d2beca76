//! Noise schedules for diffusion training, expressed as one map: `t ∈ (0, 1) ↦ λ(t)`, the
//! log signal-to-noise ratio `λ = ln(α² / σ²)`.
//!
//! Every schedule is a strictly decreasing `λ(t)` with an inverse `t(λ)` and the density `p(λ)`
//! that `t ~ U(0, 1)` induces. Processes ([`vp`]) turn `λ` into the coefficients of `x_t`, so one
//! code path serves VP, EDM (VE) and flow parameterisations. The maths is plain `f64`; a thin
//! Burn layer ([`Schedule::sample_lambda`]) draws a batch of noise levels on the device.

pub mod cosine;
pub mod vp;

use burn::tensor::{backend::Backend, Distribution, Tensor};
use serde::{Deserialize, Serialize};

pub use cosine::Cosine;

/// A log-SNR schedule `λ(t)`, strictly decreasing on `(0, 1)`.
pub trait LogSnr {
    /// `λ(t)`.
    fn lambda(&self, t: f64) -> f64;
    /// The inverse map `t(λ)`.
    fn t_of_lambda(&self, lambda: f64) -> f64;
    /// `p(λ) = |dt/dλ|`, the density of `λ(t)` under `t ~ U(0, 1)`.
    fn density(&self, lambda: f64) -> f64;
    /// `λ(t)` element-wise on the device.
    fn lambda_tensor<B: Backend>(&self, t: Tensor<B, 1>) -> Tensor<B, 1>;
}

/// The schedules the trainer can use, by name.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// `λ(t) = -2 ln tan(π t / 2)` (Nichol & Dhariwal 2021, continuous form).
    #[default]
    Cosine,
}

/// A schedule truncated to `λ ∈ [lambda_min, lambda_max]`, where its infinite ends are cut off.
///
/// Truncation is done in `t`: `t` is drawn uniformly from `[t(lambda_max), t(lambda_min)]`, which
/// is exactly the schedule's density restricted to the interval and renormalised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub lambda_min: f64,
    pub lambda_max: f64,
}

impl Schedule {
    /// # Panics
    /// If `lambda_min >= lambda_max` or either is not finite: callers validate configs first.
    pub fn new(kind: ScheduleKind, lambda_min: f64, lambda_max: f64) -> Self {
        assert!(
            lambda_min.is_finite() && lambda_max.is_finite() && lambda_min < lambda_max,
            "the log-SNR range must be finite and increasing, got [{lambda_min}, {lambda_max}]"
        );
        Self { kind, lambda_min, lambda_max }
    }

    /// The `t` interval `[t(lambda_max), t(lambda_min)]` that maps onto the truncated range.
    pub fn t_range(&self) -> (f64, f64) {
        (self.t_of_lambda(self.lambda_max), self.t_of_lambda(self.lambda_min))
    }

    /// `λ(t)` clamped to the truncated range.
    pub fn lambda_clamped(&self, t: f64) -> f64 {
        self.lambda(t).clamp(self.lambda_min, self.lambda_max)
    }

    /// Draws `n` log-SNRs on the device: `t ~ U(t_range)`, then `λ(t)`.
    pub fn sample_lambda<B: Backend>(&self, n: usize, device: &B::Device) -> Tensor<B, 1> {
        let (t_lo, t_hi) = self.t_range();
        let t = Tensor::<B, 1>::random([n], Distribution::Uniform(t_lo, t_hi), device);
        self.lambda_tensor(t).clamp(self.lambda_min, self.lambda_max)
    }

    /// `n` log-SNRs evenly spaced in `t` from the noisiest end to the cleanest, for samplers.
    pub fn lambda_grid(&self, n: usize) -> Vec<f64> {
        let (t_lo, t_hi) = self.t_range();
        match n {
            0 => vec![],
            1 => vec![self.lambda_clamped(t_hi)],
            _ => (0..n)
                .map(|i| {
                    let t = t_hi + (t_lo - t_hi) * i as f64 / (n - 1) as f64;
                    self.lambda_clamped(t)
                })
                .collect(),
        }
    }
}

impl LogSnr for Schedule {
    fn lambda(&self, t: f64) -> f64 {
        match self.kind {
            ScheduleKind::Cosine => Cosine.lambda(t),
        }
    }

    fn t_of_lambda(&self, lambda: f64) -> f64 {
        match self.kind {
            ScheduleKind::Cosine => Cosine.t_of_lambda(lambda),
        }
    }

    fn density(&self, lambda: f64) -> f64 {
        match self.kind {
            ScheduleKind::Cosine => Cosine.density(lambda),
        }
    }

    fn lambda_tensor<B: Backend>(&self, t: Tensor<B, 1>) -> Tensor<B, 1> {
        match self.kind {
            ScheduleKind::Cosine => Cosine.lambda_tensor(t),
        }
    }
}

#[cfg(test)]
pub(crate) type TestBackend = burn::backend::NdArray<f32>;

#[cfg(test)]
mod tests {
    use super::*;

    fn cosine() -> Schedule {
        Schedule::new(ScheduleKind::Cosine, -15.0, 15.0)
    }

    #[test]
    fn t_range_maps_onto_the_truncated_lambda_range() {
        let s = cosine();
        let (t_lo, t_hi) = s.t_range();
        assert!((s.lambda(t_lo) - 15.0).abs() < 1e-9);
        assert!((s.lambda(t_hi) + 15.0).abs() < 1e-9);
        assert!(0.0 < t_lo && t_lo < t_hi && t_hi < 1.0);
    }

    #[test]
    fn lambda_grid_runs_from_noisiest_to_cleanest() {
        let grid = cosine().lambda_grid(11);
        assert_eq!(grid.len(), 11);
        assert!((grid[0] + 15.0).abs() < 1e-9 && (grid[10] - 15.0).abs() < 1e-9);
        assert!(grid.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn device_samples_stay_in_range_and_follow_the_density() {
        let device = Default::default();
        <TestBackend as burn::tensor::backend::Backend>::seed(&device, 7);
        let s = cosine();
        let lambdas: Vec<f32> = s.sample_lambda::<TestBackend>(20_000, &device).into_data().to_vec().unwrap();
        assert!(lambdas.iter().all(|&l| (-15.0..=15.0).contains(&(l as f64))));
        // The fraction below 0 is P(λ < 0) = 1 - t(0) mass over the truncated t range = 1/2 by symmetry.
        let below = lambdas.iter().filter(|&&l| l < 0.0).count() as f64 / lambdas.len() as f64;
        assert!((below - 0.5).abs() < 0.02, "P(λ < 0) = {below}");
        // P(|λ| < 2) for the cosine density 1/(2π cosh(λ/2)) is (2/π)·2·atan(tanh(1/2)) over the mass in range.
        let (t_lo, t_hi) = s.t_range();
        let expected = (s.t_of_lambda(-2.0) - s.t_of_lambda(2.0)) / (t_hi - t_lo);
        let inner = lambdas.iter().filter(|&&l| l.abs() < 2.0).count() as f64 / lambdas.len() as f64;
        assert!((inner - expected).abs() < 0.02, "P(|λ| < 2) = {inner}, expected {expected}");
    }
}
