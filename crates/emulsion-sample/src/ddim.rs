//! DDIM (Song et al. 2021).

use burn::prelude::*;
use emulsion_models::Denoise;

/// DDIM, Song et al. 2021 eq. 12, in EDM coordinates (`x = x₀ + s ε`). With `η = 0` each step
/// is the deterministic Euler step `x ← x + (s' − s)(x − D(x; s)) / s`; with `η > 0` it moves to
/// `s_down` and adds `s_up` of fresh noise, `s_up = min(s', η √(s'² (s² − s'²) / s²))`,
/// `s_down = √(s'² − s_up²)` — exactly DDIM's σ_t(η) seen through `s = σ / α`.
/// `sigmas` falls and ends in 0; the last step returns the denoised estimate.
pub fn sample_ddim<B: Backend>(
    denoiser: &impl Denoise<B>,
    mut x: Tensor<B, 4>,
    sigmas: &[f64],
    eta: f64,
    noise: &mut dyn FnMut() -> Tensor<B, 4>,
) -> Tensor<B, 4> {
    for pair in sigmas.windows(2) {
        let (s, s_next) = (pair[0], pair[1]);
        let denoised = denoiser.denoise(x.clone(), s);
        if s_next == 0.0 {
            x = denoised;
            continue;
        }
        let (s_down, s_up) = ancestral_step(s, s_next, eta);
        // Euler step toward s_down along the ODE slope d = (x − D) / s.
        x = denoised.clone() + (x - denoised) * (s_down / s);
        if s_up > 0.0 {
            x = x + noise() * s_up;
        }
    }
    x
}

/// `(s_down, s_up)` of a step from `s` to `s_next` with noise fraction `eta` (k-diffusion's
/// `get_ancestral_step`).
pub fn ancestral_step(s: f64, s_next: f64, eta: f64) -> (f64, f64) {
    if eta == 0.0 {
        return (s_next, 0.0);
    }
    let up = (eta * (s_next * s_next * (s * s - s_next * s_next) / (s * s)).sqrt()).min(s_next);
    ((s_next * s_next - up * up).sqrt(), up)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Spacing;
    use crate::tests::{self as shared, GaussianDenoiser, MU, S};

    /// Mean and variance errors of samples drawn from `N(MU, S²)` data by DDIM with `steps` steps.
    fn moments(eta: f64, steps: usize) -> (f64, f64) {
        let d = GaussianDenoiser { mu: MU, s: S };
        shared::moments(steps, Spacing::Schedule, |x, sigmas, noise| sample_ddim(&d, x, sigmas, eta, noise))
    }

    #[test]
    fn reproduces_gaussian_data_and_improves_with_steps() {
        let _rng = crate::lock_backend_rng();
        let (mean_err, var_err_fine) = moments(0.0, 200);
        assert!(mean_err.abs() < 0.02 && var_err_fine.abs() < 0.05, "mean {mean_err}, var {var_err_fine}");
        let (_, var_err_coarse) = moments(0.0, 5);
        assert!(var_err_coarse.abs() > var_err_fine.abs(), "{var_err_coarse} vs {var_err_fine}");
        let (mean_err, var_err) = moments(1.0, 200);
        assert!(mean_err.abs() < 0.02 && var_err.abs() < 0.06, "η=1: mean {mean_err}, var {var_err}");
    }

    #[test]
    fn ancestral_step_splits_the_next_level() {
        let (down, up) = ancestral_step(2.0, 1.0, 1.0);
        assert!((down * down + up * up - 1.0).abs() < 1e-12);
        assert!((up - (3f64 / 4.0).sqrt()).abs() < 1e-12);
        assert_eq!(ancestral_step(2.0, 1.0, 0.0), (1.0, 0.0));
    }
}
