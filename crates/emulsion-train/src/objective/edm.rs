//! EDM (Karras et al. 2022, eq. 2 and Table 1): `L = λ(s) ‖D(x₀ + s ε; s) − x₀‖²` with the
//! loss weight `λ(s) = (s² + s_d²)/(s s_d)²`, which makes the effective target of `F` unit
//! variance at every level. Noise levels come from the schedule (EDM's own: `lognormal`).

use burn::prelude::*;
use emulsion_models::precond::per_sample;
use emulsion_models::{Network, Precond};
use emulsion_schedule::Schedule;

use super::{mean_per_sample, ObjectiveInput};

#[derive(Debug, Clone)]
pub struct Edm {
    pub schedule: Schedule,
    /// The data's standard deviation `s_d` (0.5 for images in [−1, 1]).
    pub sigma_data: f64,
}

impl Edm {
    pub fn precond(&self) -> Precond {
        Precond::Edm { sigma_data: self.sigma_data }
    }

    /// The loss at given noise levels `sigma` `[N]`.
    pub fn loss_at<B: Backend, N: Network<B>>(&self, net: &N, input: ObjectiveInput<B>, sigma: Tensor<B, 1>) -> Tensor<B, 1> {
        let weight = loss_weight(sigma.clone(), self.sigma_data);
        denoising_error(&self.precond(), net, input, sigma) * weight
    }
}

/// EDM's loss weight `λ(s) = (s² + s_d²)/(s s_d)²`.
pub fn loss_weight<B: Backend>(sigma: Tensor<B, 1>, sigma_data: f64) -> Tensor<B, 1> {
    let sd2 = sigma_data * sigma_data;
    (sigma.clone().powf_scalar(2.0) + sd2) / (sigma.powf_scalar(2.0) * sd2)
}

/// The unweighted `‖D(x₀ + s ε; s) − x₀‖²` per sample (mean over pixels), under `precond`.
pub fn denoising_error<B: Backend, N: Network<B>>(precond: &Precond, net: &N, input: ObjectiveInput<B>, sigma: Tensor<B, 1>) -> Tensor<B, 1> {
    let ObjectiveInput { x0, noise, labels, .. } = input;
    let x = x0.clone() + noise * per_sample(sigma.clone());
    let denoised = precond.denoise(net, x, sigma, labels);
    mean_per_sample((denoised - x0).powf_scalar(2.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_at_initialisation_matches_the_hand_computation() {
        let _rng = crate::lock_backend_rng();
        // F ≈ 0 at initialisation, so D = c_skip x and D − x₀ = (c_skip − 1) x₀ + c_skip s ε.
        let (net, x0, noise) = crate::objective::tests::untrained_case(2, 4);
        let device = x0.device();
        let objective = Edm { schedule: Schedule::cosine(-10.0, 10.0).unwrap(), sigma_data: 0.5 };
        let sigmas = [0.02f32, 0.5, 2.0, 40.0];
        let got: Vec<f32> = objective
            .loss_at(&net, ObjectiveInput { x0: x0.clone(), noise: noise.clone(), labels: None, step: 0 }, Tensor::from_floats(sigmas, &device))
            .into_data()
            .to_vec()
            .unwrap();
        let x0v: Vec<f32> = x0.into_data().to_vec().unwrap();
        let ev: Vec<f32> = noise.into_data().to_vec().unwrap();
        for (i, &s) in sigmas.iter().enumerate() {
            let (s, sd) = (s as f64, 0.5f64);
            let c_skip = sd * sd / (s * s + sd * sd);
            let weight = (s * s + sd * sd) / (s * sd).powi(2);
            let want: f64 = (0..64).map(|k| ((c_skip - 1.0) * x0v[i * 64 + k] as f64 + c_skip * s * ev[i * 64 + k] as f64).powi(2)).sum::<f64>() / 64.0 * weight;
            assert!((got[i] as f64 - want).abs() < 1e-3 * want, "s = {s}: {} vs {want}", got[i]);
        }
    }
}
