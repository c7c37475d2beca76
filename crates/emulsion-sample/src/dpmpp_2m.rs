//! DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), multistep in `t = −ln s`.

use burn::prelude::*;
use emulsion_models::Denoise;

/// With `h = t' − t`: `x ← (s'/s) x − (e^{−h} − 1) D̃`, where `D̃ = D` on the first step and
/// `D̃ = (1 + 1/(2r)) D − (1/(2r)) D_prev`, `r = h_prev / h`, after it (a 2nd-order
/// extrapolation of the denoised estimate). One denoiser evaluation per level; the step to 0
/// returns `D`.
pub fn sample_dpmpp_2m<B: Backend>(denoiser: &impl Denoise<B>, mut x: Tensor<B, 4>, sigmas: &[f64]) -> Tensor<B, 4> {
    let mut previous: Option<(Tensor<B, 4>, f64)> = None;
    for pair in sigmas.windows(2) {
        let (s, s_next) = (pair[0], pair[1]);
        let denoised = denoiser.denoise(x.clone(), s);
        if s_next == 0.0 {
            x = denoised;
            continue;
        }
        let h = s.ln() - s_next.ln();
        let estimate = match &previous {
            Some((old, h_last)) => {
                let r = h_last / h;
                denoised.clone() * (1.0 + 1.0 / (2.0 * r)) - old.clone() * (1.0 / (2.0 * r))
            }
            None => denoised.clone(),
        };
        x = x * (s_next / s) - estimate * (-h).exp_m1();
        previous = Some((denoised, h));
    }
    x
}
