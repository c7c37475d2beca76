//! Gokmen et al. (2024, arXiv 2404.06353): a polynomial distribution of consistency-training
//! levels that covers the whole range in every batch, a sinusoidal curriculum for the number of
//! levels, and one predefined Karras vector so that changing `N` never creates new levels.
//!
//! The paper gives the curve; the jitter's size could not be read from the authors' code and is
//! a documented default here.

use burn::tensor::{backend::Backend, Distribution, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::karras::Karras;

/// Batch position `i` of `B` gets level index `(i / (B-1))^c (N - k - 1)` plus Gaussian jitter;
/// a jittered index out of range falls back to the un-jittered one; indices are sorted. The
/// pair trained on is `(s_idx, s_{idx+k})`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolynomialLevels {
    /// `c`: larger values put more of the batch at low noise (paper: 4; authors' code: 2.5).
    pub curve: f64,
    /// Standard deviation of the jitter, in level indices (not given by the paper).
    pub jitter: f64,
    /// Distance `k` between the two levels of a pair. Not a configuration key: consistency
    /// training pairs adjacent levels.
    #[serde(skip)]
    pub gap: usize,
}

impl Default for PolynomialLevels {
    fn default() -> Self {
        Self { curve: 4.0, jitter: 1.0, gap: 1 }
    }
}

impl PolynomialLevels {
    /// The un-jittered positions `(i / (B-1))^c (N - k - 1)`, `i = 0..B`.
    pub fn base_positions(&self, batch: usize, levels: usize) -> Vec<f64> {
        let top = levels.saturating_sub(self.gap + 1) as f64;
        (0..batch)
            .map(|i| {
                let frac = if batch > 1 { i as f64 / (batch - 1) as f64 } else { 1.0 };
                frac.powf(self.curve) * top
            })
            .collect()
    }

    /// `batch` sorted indices into `levels` levels, drawn on the device: each is the lower index
    /// of a pair `(idx, idx + gap)`.
    pub fn sample<B: Backend>(&self, batch: usize, levels: usize, device: &B::Device) -> Tensor<B, 1, Int> {
        let top = levels.saturating_sub(self.gap + 1) as f64;
        let base: Vec<f32> = self.base_positions(batch, levels).into_iter().map(|p| p as f32).collect();
        let base = Tensor::<B, 1>::from_data(TensorData::new(base, [batch]), device);
        let jittered = (base.clone() + Tensor::random([batch], Distribution::Normal(0.0, self.jitter), device)).round();
        let out_of_range = jittered.clone().lower_elem(0.0).bool_or(jittered.clone().greater_elem(top));
        jittered.mask_where(out_of_range, base.round()).sort(0).int()
    }
}

/// The authors' sinusoidal curriculum for the number of levels:
/// `N(k) = ⌈|(N_final - N_init) sin(⌊10π (k/K)^{(ρ-1)/4}⌋ / 10) + N_init|⌉`; it rises to
/// `N_final` and falls back.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinusoidalCurriculum {
    pub n_init: usize,
    pub n_final: usize,
    /// Karras' `ρ` of the levels; not a key of its own: the objective that owns the levels
    /// sets it.
    #[serde(skip)]
    pub rho: f64,
}

impl Default for SinusoidalCurriculum {
    fn default() -> Self {
        Self { n_init: 10, n_final: 1280, rho: 7.0 }
    }
}

impl SinusoidalCurriculum {
    /// `N(k)` at step `k` of `total_steps`.
    pub fn levels(&self, step: usize, total_steps: usize) -> usize {
        let progress = (step as f64 / total_steps.max(1) as f64).powf((self.rho - 1.0) / 4.0);
        let phase = (10.0 * std::f64::consts::PI * progress).floor() / 10.0;
        let span = self.n_final as f64 - self.n_init as f64;
        (span * phase.sin() + self.n_init as f64).abs().ceil() as usize
    }
}

/// One fixed Karras vector of `max_levels` levels; `N` levels are an evenly spread subset of
/// it, so every level ever trained on is one of the same `max_levels`.
#[derive(Debug, Clone, PartialEq)]
pub struct PredefinedLevels {
    sigmas: Vec<f64>,
}

impl PredefinedLevels {
    pub fn new(karras: &Karras, max_levels: usize) -> Self {
        Self { sigmas: karras.sigmas(max_levels) }
    }

    /// All predefined levels, increasing.
    pub fn all(&self) -> &[f64] {
        &self.sigmas
    }

    /// `n` levels taken from the predefined vector at evenly spread positions, first and last
    /// included.
    pub fn subset(&self, n: usize) -> Vec<f64> {
        let max = self.sigmas.len();
        let n = n.clamp(2, max);
        (0..n).map(|j| self.sigmas[((j * (max - 1)) as f64 / (n - 1) as f64).round() as usize]).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;

    #[test]
    fn base_positions_follow_the_polynomial_and_reach_the_top() {
        let p = PolynomialLevels { curve: 2.0, ..Default::default() };
        let base = p.base_positions(5, 11);
        // (i/4)² · (11 - 1 - 1) = 9 · {0, 1/16, 1/4, 9/16, 1}.
        let expected = [0.0, 9.0 / 16.0, 2.25, 81.0 / 16.0, 9.0];
        assert!(base.iter().zip(expected).all(|(b, e)| (b - e).abs() < 1e-12), "{base:?}");
    }

    #[test]
    fn device_indices_are_sorted_in_range_and_cover_the_top() {
        let _rng = crate::tests::lock_rng();
        let device = Default::default();
        <TestBackend as Backend>::seed(&device, 11);
        let p = PolynomialLevels { jitter: 3.0, ..Default::default() };
        let idx: Vec<i64> = p.sample::<TestBackend>(256, 41, &device).into_data().convert::<i64>().to_vec().unwrap();
        assert!(idx.windows(2).all(|w| w[0] <= w[1]), "sorted");
        assert!(idx.iter().all(|&i| (0..=39).contains(&i)), "the pair (i, i + 1) stays below 41 levels");
        assert_eq!(*idx.last().unwrap() >= 36, true, "every batch reaches the highest noise");
        // Without jitter the indices are the rounded polynomial positions.
        let exact = PolynomialLevels { jitter: 0.0, ..p };
        let idx: Vec<i64> = exact.sample::<TestBackend>(5, 41, &device).into_data().convert::<i64>().to_vec().unwrap();
        let expected: Vec<i64> = exact.base_positions(5, 41).iter().map(|b| b.round() as i64).collect();
        assert_eq!(idx, expected);
    }

    #[test]
    fn sinusoidal_curriculum_rises_to_n_final_and_falls_back() {
        let c = SinusoidalCurriculum::default();
        let total = 100_000;
        assert_eq!(c.levels(0, total), 10);
        let path: Vec<usize> = (0..=100).map(|i| c.levels(i * total / 100, total)).collect();
        let peak = *path.iter().max().unwrap();
        // The phase ⌊10π x⌋/10 reaches 1.6, where sin is 0.9996: the peak is just below N_final.
        assert!(peak <= 1280 && peak >= 1279, "peak {peak}");
        let at_end = *path.last().unwrap();
        // At k = K the phase is ⌊10π⌋/10 = 3.1: N = ⌈1270 sin(3.1) + 10⌉.
        assert_eq!(at_end, (1270.0 * 3.1f64.sin() + 10.0).ceil() as usize);
        let peak_at = path.iter().position(|&n| n == peak).unwrap();
        assert!(path[..peak_at].windows(2).all(|w| w[0] <= w[1]) && path[peak_at..].windows(2).all(|w| w[0] >= w[1]));
    }

    #[test]
    fn subsets_reuse_the_predefined_levels() {
        let levels = PredefinedLevels::new(&Karras::default(), 1281);
        for n in [11, 21, 100, 641, 1281] {
            let sub = levels.subset(n);
            assert_eq!(sub.len(), n);
            assert_eq!(sub[0], 0.002);
            assert_eq!(*sub.last().unwrap(), levels.all()[1280]);
            assert!(sub.iter().all(|s| levels.all().contains(s)));
        }
    }
}
