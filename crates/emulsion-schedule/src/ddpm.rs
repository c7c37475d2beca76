//! Discrete-time DDPM schedules, `ᾱ_i = ∏_{j ≤ i} (1 - β_j)` over `T` steps: the linear betas of
//! Ho et al. 2020 and the cosine `ᾱ` of Nichol & Dhariwal 2021. Each becomes a log-SNR map by
//! placing step `i` at `t_i = i / (T - 1)` and interpolating `λ` linearly between steps.

use std::sync::Arc;

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::LogSnr;

/// DDPM's linear betas: `β` evenly spaced from `beta_start` to `beta_end` over `timesteps`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinearBetas {
    pub beta_start: f64,
    pub beta_end: f64,
    pub timesteps: usize,
}

impl Default for LinearBetas {
    fn default() -> Self {
        Self { beta_start: 1e-4, beta_end: 0.02, timesteps: 1000 }
    }
}

impl LinearBetas {
    /// `β_i = beta_start + (beta_end - beta_start) i / (T - 1)`.
    pub fn betas(&self) -> Vec<f64> {
        let last = (self.timesteps - 1) as f64;
        (0..self.timesteps).map(|i| self.beta_start + (self.beta_end - self.beta_start) * i as f64 / last).collect()
    }
}

/// Improved DDPM's cosine: `ᾱ(t) = f(t) / f(0)`, `f(t) = cos²((t + s) / (1 + s) · π/2)`, with
/// `β_i = min(1 - ᾱ(t_{i+1}) / ᾱ(t_i), max_beta)` (diffusers' `squaredcos_cap_v2`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CosineBetas {
    pub s: f64,
    pub max_beta: f64,
    pub timesteps: usize,
}

impl Default for CosineBetas {
    fn default() -> Self {
        Self { s: 0.008, max_beta: 0.999, timesteps: 1000 }
    }
}

impl CosineBetas {
    /// `f(t) = cos²((t + s) / (1 + s) · π/2)`.
    pub fn f(&self, t: f64) -> f64 {
        ((t + self.s) / (1.0 + self.s) * std::f64::consts::FRAC_PI_2).cos().powi(2)
    }

    /// `β_i = min(1 - f((i+1)/T) / f(i/T), max_beta)`.
    pub fn betas(&self) -> Vec<f64> {
        let t = self.timesteps as f64;
        (0..self.timesteps)
            .map(|i| (1.0 - self.f((i + 1) as f64 / t) / self.f(i as f64 / t)).min(self.max_beta))
            .collect()
    }
}

/// A discrete schedule as a log-SNR map, piecewise linear through `(i / (T-1), λ_i)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Discrete {
    /// `λ_i = ln(ᾱ_i / (1 - ᾱ_i))`, strictly decreasing.
    lambdas: Arc<[f64]>,
}

impl Discrete {
    /// From betas in `(0, 1)`, at least two of them.
    pub fn from_betas(betas: &[f64]) -> Self {
        assert!(betas.len() >= 2 && betas.iter().all(|b| *b > 0.0 && *b < 1.0), "betas must be in (0, 1), at least two");
        // Accumulate ln ᾱ and take 1 - ᾱ = -expm1(ln ᾱ): no cancellation near ᾱ = 1.
        let mut log_alpha_bar = 0.0;
        let lambdas = betas
            .iter()
            .map(|beta| {
                log_alpha_bar += (-beta).ln_1p();
                log_alpha_bar - (-log_alpha_bar.exp_m1()).ln()
            })
            .collect();
        Self { lambdas }
    }

    /// `ᾱ_i = sigmoid(λ_i)` for `i = 0..T`.
    pub fn alpha_bars(&self) -> Vec<f64> {
        self.lambdas.iter().map(|l| 1.0 / (1.0 + (-l).exp())).collect()
    }

    /// `λ_i` for `i = 0..T`.
    pub fn lambdas(&self) -> &[f64] {
        &self.lambdas
    }

    fn last_segment(&self) -> usize {
        self.lambdas.len() - 2
    }

    /// The width in `t` of one step.
    fn dt(&self) -> f64 {
        1.0 / (self.lambdas.len() - 1) as f64
    }

    /// The segment `[λ_{i+1}, λ_i]` that holds `lambda`, clamped to the first and last.
    fn segment_of_lambda(&self, lambda: f64) -> usize {
        // `lambdas` decreases: count the knots above `lambda`.
        let above = self.lambdas.partition_point(|&l| l > lambda);
        above.saturating_sub(1).min(self.last_segment())
    }
}

impl LogSnr for Discrete {
    /// `λ(t) = λ_i + (t/Δt - i)(λ_{i+1} - λ_i)` for `t` in step `i`'s interval.
    fn lambda(&self, t: f64) -> f64 {
        let u = t / self.dt();
        let i = (u.floor().max(0.0) as usize).min(self.last_segment());
        let (l0, l1) = (self.lambdas[i], self.lambdas[i + 1]);
        l0 + (u - i as f64) * (l1 - l0)
    }

    /// The inverse on `[λ_{T-1}, λ_0]`; `t` is clamped to `[0, 1]` outside it.
    fn t_of_lambda(&self, lambda: f64) -> f64 {
        let i = self.segment_of_lambda(lambda);
        let (l0, l1) = (self.lambdas[i], self.lambdas[i + 1]);
        ((i as f64 + (l0 - lambda) / (l0 - l1)) * self.dt()).clamp(0.0, 1.0)
    }

    /// `Δt / (λ_i - λ_{i+1})` inside segment `i`, 0 outside `[λ_{T-1}, λ_0]`.
    fn density(&self, lambda: f64) -> f64 {
        let (lowest, highest) = (self.lambdas[self.lambdas.len() - 1], self.lambdas[0]);
        if !(lowest..=highest).contains(&lambda) {
            return 0.0;
        }
        let i = self.segment_of_lambda(lambda);
        self.dt() / (self.lambdas[i] - self.lambdas[i + 1])
    }

    fn lambda_tensor<B: Backend>(&self, t: Tensor<B, 1>) -> Tensor<B, 1> {
        let device = t.device();
        let knots: Vec<f32> = self.lambdas.iter().map(|&l| l as f32).collect();
        let knots = Tensor::<B, 1>::from_data(TensorData::new(knots, [self.lambdas.len()]), &device);
        let u = t / self.dt();
        let i: Tensor<B, 1, Int> = u.clone().floor().clamp(0.0, self.last_segment() as f64).int();
        let frac = u - i.clone().float();
        let l0 = knots.clone().select(0, i.clone());
        let l1 = knots.select(0, i + 1);
        l0.clone() + frac * (l1 - l0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_alpha_bar_is_the_product_formula() {
        let d = Discrete::from_betas(&LinearBetas::default().betas());
        let ab = d.alpha_bars();
        assert_eq!(ab.len(), 1000);
        // By hand: ᾱ_0 = 1 - 1e-4, ᾱ_1 = (1 - 1e-4)(1 - (1e-4 + 0.0199/999)).
        assert!((ab[0] - (1.0 - 1e-4)).abs() < 1e-15);
        assert!((ab[1] - (1.0 - 1e-4) * (1.0 - (1e-4 + 0.0199 / 999.0))).abs() < 1e-15);
        // ᾱ_T = 4.0358e-5 (√ᾱ_T = 0.006353, the final-SNR figure quoted for DDPM's schedule).
        assert!((ab[999] / 4.035829765375687e-05 - 1.0).abs() < 1e-10, "ᾱ_T = {}", ab[999]);
    }

    #[test]
    fn cosine_alpha_bar_telescopes_to_f_over_f0_until_the_clip() {
        let c = CosineBetas::default();
        let ab = Discrete::from_betas(&c.betas()).alpha_bars();
        // Unclipped, ∏ (1 - β_j) telescopes to f((i+1)/T) / f(0).
        for i in [0, 1, 10, 500, 900, 990] {
            let expected = c.f((i + 1) as f64 / 1000.0) / c.f(0.0);
            assert!((ab[i] / expected - 1.0).abs() < 1e-12, "ᾱ_{i} = {} vs {expected}", ab[i]);
        }
        // The last beta would be 1 (f(1) = 0) and is clipped to 0.999.
        assert!((ab[999] / ab[998] - 0.001).abs() < 1e-12);
        // Hand value: ᾱ_0 = cos²(0.009/1.008 · π/2) / cos²(0.008/1.008 · π/2).
        let hand = (0.009f64 / 1.008 * std::f64::consts::FRAC_PI_2).cos().powi(2) / (0.008f64 / 1.008 * std::f64::consts::FRAC_PI_2).cos().powi(2);
        assert!((ab[0] - hand).abs() < 1e-15);
    }

    #[test]
    fn knots_are_hit_exactly_and_density_is_flat_between_them() {
        let d = Discrete::from_betas(&LinearBetas { timesteps: 11, ..Default::default() }.betas());
        for (i, l) in d.lambdas().iter().enumerate() {
            assert!((d.lambda(i as f64 / 10.0) - l).abs() < 1e-12);
        }
        let mid = 0.5 * (d.lambdas()[3] + d.lambdas()[4]);
        assert!((d.density(mid) - 0.1 / (d.lambdas()[3] - d.lambdas()[4])).abs() < 1e-15);
        assert_eq!(d.density(d.lambdas()[0] + 1.0), 0.0);
    }
}
