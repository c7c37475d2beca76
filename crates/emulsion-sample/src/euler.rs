//! Euler's method on the probability-flow ODE (Karras et al. 2022, eq. 4 with `s(t) = 1`).

use burn::prelude::*;
use emulsion_models::Denoise;

/// `x ← x + (s' − s)·d`, `d = (x − D(x; s)) / s`: one denoiser evaluation per level. In these
/// (EDM) coordinates this is exactly deterministic DDIM. `sigmas` falls and ends in 0.
pub fn sample_euler<B: Backend>(denoiser: &impl Denoise<B>, mut x: Tensor<B, 4>, sigmas: &[f64]) -> Tensor<B, 4> {
    for pair in sigmas.windows(2) {
        let (s, s_next) = (pair[0], pair[1]);
        let denoised = denoiser.denoise(x.clone(), s);
        let slope = (x.clone() - denoised) / s;
        x = x + slope * (s_next - s);
    }
    x
}
