//! DDPM ancestral sampling (Ho et al. 2020, eq. 6–7) with the denoised estimate `x̂₀`.

use burn::prelude::*;
use emulsion_models::Denoise;

/// Each step draws from the forward process's posterior `q(x_{s'} | x_s, x̂₀)`, which in EDM
/// coordinates (`x = x₀ + s ε`) is `N(x̂₀ + (s'²/s²)(x_s − x̂₀), s'²(s² − s'²)/s²)`; the last
/// step returns `x̂₀`. (DDIM with η = 1 takes the same step.)
pub fn sample_ddpm<B: Backend>(
    denoiser: &impl Denoise<B>,
    mut x: Tensor<B, 4>,
    sigmas: &[f64],
    noise: &mut dyn FnMut() -> Tensor<B, 4>,
) -> Tensor<B, 4> {
    for pair in sigmas.windows(2) {
        let (s, s_next) = (pair[0], pair[1]);
        let x0 = denoiser.denoise(x.clone(), s);
        if s_next == 0.0 {
            x = x0;
            continue;
        }
        let keep = (s_next * s_next) / (s * s);
        let std = s_next * (1.0 - keep).sqrt();
        x = x0.clone() + (x - x0) * keep + noise() * std;
    }
    x
}
