//! Improved consistency training (Song & Dhariwal 2023): the discretisation curriculum `N(k)`
//! that doubles the number of Karras levels in stages, and sampling of level indices from a
//! schedule's density (iCT: log-normal).

use burn::tensor::{backend::Backend, Distribution, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::process::lambda_of_edm_sigma;
use crate::Schedule;

/// `N(k) = min(s₀ 2^⌊k/K'⌋, s₁) + 1`, `K' = ⌊K / (log₂⌊s₁/s₀⌋ + 1)⌋`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IctCurriculum {
    pub s0: usize,
    pub s1: usize,
}

impl Default for IctCurriculum {
    fn default() -> Self {
        Self { s0: 10, s1: 1280 }
    }
}

impl IctCurriculum {
    /// `K'`, the steps per stage of a `total_steps`-step run (at least 1).
    pub fn stage_steps(&self, total_steps: usize) -> usize {
        let stages = (self.s1 / self.s0).max(1).ilog2() as usize + 1;
        (total_steps / stages).max(1)
    }

    /// `N(k)`: the number of levels at step `k` of `total_steps`.
    pub fn levels(&self, step: usize, total_steps: usize) -> usize {
        let doublings = (step / self.stage_steps(total_steps)).min(usize::BITS as usize - 1);
        self.s0.saturating_mul(1 << doublings).min(self.s1) + 1
    }
}

/// The probability of each pair `(s_i, s_{i+1})` of increasing levels: the schedule's mass of
/// `λ` between `λ(s_{i+1})` and `λ(s_i)`, renormalised over the pairs. With the `lognormal`
/// schedule this is iCT's
/// `p(i) ∝ erf((ln s_{i+1} - P_mean) / (√2 P_std)) - erf((ln s_i - P_mean) / (√2 P_std))`.
pub fn level_probabilities(schedule: &Schedule, sigmas: &[f64]) -> Vec<f64> {
    let cdf: Vec<f64> = sigmas.iter().map(|&s| schedule.cdf(lambda_of_edm_sigma(s))).collect();
    let mass: Vec<f64> = cdf.windows(2).map(|w| w[0] - w[1]).collect();
    let total: f64 = mass.iter().sum();
    assert!(total > 0.0, "the levels hold none of the schedule's mass");
    mass.into_iter().map(|m| m / total).collect()
}

/// Draws `n` indices from `probabilities` on the device, by inverting the CDF against uniforms:
/// `i = #{j : F_j < u}`. Only the small CDF travels to the device.
pub fn sample_indices<B: Backend>(probabilities: &[f64], n: usize, device: &B::Device) -> Tensor<B, 1, Int> {
    let mut running = 0.0;
    let mut cdf: Vec<f32> = probabilities.iter().map(|p| { running += p; running as f32 }).collect();
    // The last entry is exactly 1, so every u < 1 lands on a valid index.
    *cdf.last_mut().expect("at least one probability") = 1.0;
    let levels = cdf.len();
    let cdf = Tensor::<B, 1>::from_data(TensorData::new(cdf, [levels]), device).reshape([1, levels]).expand([n, levels]);
    let u = Tensor::<B, 1>::random([n], Distribution::Default, device).reshape([n, 1]).expand([n, levels]);
    cdf.lower(u).int().sum_dim(1).reshape([n])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::karras::Karras;
    use crate::TestBackend;

    #[test]
    fn curriculum_doubles_from_11_to_1281_at_stage_boundaries() {
        let c = IctCurriculum::default();
        let total = 400_000;
        // log₂⌊1280/10⌋ + 1 = 8 stages of 50,000 steps.
        assert_eq!(c.stage_steps(total), 50_000);
        let at_boundaries: Vec<usize> = (0..8).map(|stage| c.levels(stage * 50_000, total)).collect();
        assert_eq!(at_boundaries, [11, 21, 41, 81, 161, 321, 641, 1281]);
        assert_eq!(c.levels(49_999, total), 11);
        assert_eq!(c.levels(total - 1, total), 1281);
        assert_eq!(c.levels(10 * total, total), 1281, "capped at s₁ + 1");
    }

    #[test]
    fn level_probabilities_follow_the_erf_formula() {
        let sigmas = Karras::default().sigmas(11);
        // iCT's P_mean = -1.1, P_std = 2 over the levels' own range.
        let lognormal = crate::Curve::LogNormal(crate::LogNormal { p_mean: -1.1, p_std: 2.0 });
        let schedule = Schedule::new(lognormal, lambda_of_edm_sigma(80.0), lambda_of_edm_sigma(0.002), 1.0).unwrap();
        let p = level_probabilities(&schedule, &sigmas);
        assert_eq!(p.len(), 10);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        let erf_gap = |i: usize| {
            let z = |s: f64| (s.ln() + 1.1) / (std::f64::consts::SQRT_2 * 2.0);
            libm::erf(z(sigmas[i + 1])) - libm::erf(z(sigmas[i]))
        };
        let total: f64 = (0..10).map(erf_gap).sum();
        for (i, pi) in p.iter().enumerate() {
            assert!((pi - erf_gap(i) / total).abs() < 1e-10, "p({i}) = {pi}");
        }
    }

    #[test]
    fn device_indices_follow_the_probabilities() {
        let _rng = crate::tests::lock_rng();
        let device = Default::default();
        <TestBackend as Backend>::seed(&device, 3);
        let p = [0.1, 0.4, 0.0, 0.3, 0.2];
        let n = 40_000;
        let idx: Vec<i64> = sample_indices::<TestBackend>(&p, n, &device).into_data().convert::<i64>().to_vec().unwrap();
        for (i, pi) in p.iter().enumerate() {
            let freq = idx.iter().filter(|&&j| j == i as i64).count() as f64 / n as f64;
            // Five standard errors of a binomial proportion.
            assert!((freq - pi).abs() <= 5.0 * (pi * (1.0 - pi) / n as f64).sqrt() + 1e-12, "P({i}) = {freq}, expected {pi}");
        }
    }
}
