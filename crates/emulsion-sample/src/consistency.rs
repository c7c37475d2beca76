//! Consistency-model sampling (Song et al. 2023, Algorithm 1): one step, or several.

use burn::prelude::*;
use emulsion_models::Denoise;

/// `x ← f(x, s₀)`, then for each later level `s > 0`: `x ← f(x + √(s² − s_min²) z, s)`, where
/// `f` is the consistency function (a [`Denoise`] that maps any noise level straight to data)
/// and `s_min` its boundary level. `sigmas = [s_max, 0]` is the one-step sampler.
pub fn sample_consistency<B: Backend>(
    model: &impl Denoise<B>,
    x: Tensor<B, 4>,
    sigmas: &[f64],
    s_min: f64,
    noise: &mut dyn FnMut() -> Tensor<B, 4>,
) -> Tensor<B, 4> {
    let levels: Vec<f64> = sigmas.iter().copied().filter(|&s| s > 0.0).collect();
    let (&first, rest) = levels.split_first().expect("at least one positive noise level");
    let mut x = model.denoise(x, first);
    for &s in rest {
        x = model.denoise(x + noise() * (s * s - s_min * s_min).max(0.0).sqrt(), s);
    }
    x
}
