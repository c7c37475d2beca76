//! EDM's deterministic 2nd-order sampler (Karras et al. 2022, Algorithm 1 without churn).

use burn::prelude::*;
use emulsion_models::Denoise;

/// Heun's method: an Euler step to `s'`, then the average of the slopes at both ends,
/// `x ← x + (s' − s)(d + d')/2`; the last step (to `s' = 0`) stays Euler. `2·levels − 1`
/// denoiser evaluations for `levels` noise levels before the final 0.
pub fn sample_heun<B: Backend>(denoiser: &impl Denoise<B>, mut x: Tensor<B, 4>, sigmas: &[f64]) -> Tensor<B, 4> {
    for pair in sigmas.windows(2) {
        let (s, s_next) = (pair[0], pair[1]);
        let slope = (x.clone() - denoiser.denoise(x.clone(), s)) / s;
        let euler = x.clone() + slope.clone() * (s_next - s);
        if s_next == 0.0 {
            x = euler;
            continue;
        }
        let slope_next = (euler.clone() - denoiser.denoise(euler, s_next)) / s_next;
        x = x + (slope + slope_next) * ((s_next - s) / 2.0);
    }
    x
}
