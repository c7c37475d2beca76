//! Karras et al. (2022)'s discretisation of noise levels, evenly spaced in `s^{1/ρ}`.

use serde::{Deserialize, Serialize};

/// `s_i = (s_min^{1/ρ} + i/(N-1) (s_max^{1/ρ} - s_min^{1/ρ}))^ρ`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Karras {
    pub sigma_min: f64,
    pub sigma_max: f64,
    pub rho: f64,
}

impl Default for Karras {
    fn default() -> Self {
        Self { sigma_min: 0.002, sigma_max: 80.0, rho: 7.0 }
    }
}

impl Karras {
    /// `N ≥ 2` levels from `s_min` up to `s_max`, increasing (consistency training's order;
    /// samplers walk them backwards).
    pub fn sigmas(&self, n: usize) -> Vec<f64> {
        assert!(n >= 2, "a Karras discretisation needs at least two levels");
        let (lo, hi) = (self.sigma_min.powf(1.0 / self.rho), self.sigma_max.powf(1.0 / self.rho));
        let mut sigmas: Vec<f64> = (0..n).map(|i| (lo + i as f64 / (n - 1) as f64 * (hi - lo)).powf(self.rho)).collect();
        // The ends exactly, not as powf's round trip left them.
        sigmas[0] = self.sigma_min;
        sigmas[n - 1] = self.sigma_max;
        sigmas
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_are_exact_and_the_middle_matches_the_formula() {
        let s = Karras::default().sigmas(18);
        assert_eq!((s[0], s[17]), (0.002, 80.0));
        assert!(s.windows(2).all(|w| w[0] < w[1]));
        // Hand value at i = 9 of 18: (0.002^(1/7) + 9/17 (80^(1/7) - 0.002^(1/7)))^7.
        let (lo, hi) = (0.002f64.powf(1.0 / 7.0), 80f64.powf(1.0 / 7.0));
        assert!((s[9] - (lo + 9.0 / 17.0 * (hi - lo)).powi(7)).abs() < 1e-12);
    }
}
