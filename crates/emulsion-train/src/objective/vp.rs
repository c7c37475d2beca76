//! Variance-preserving diffusion with ε-prediction (Ho et al. 2020) in continuous time:
//! `λ ~ p(λ)`, `x_t = α x₀ + σ ε`, `L = ‖ε̂(x_t, λ) − ε‖²`.

use burn::prelude::*;
use emulsion_models::precond::per_sample;
use emulsion_models::{Precond, UNet};
use emulsion_schedule::Schedule;

use super::{mean_per_sample, ObjectiveInput};

/// `L = ‖F(c_in x, c_noise) − ε‖²` with `x = x₀ + s ε`, `s = e^{−λ/2}`; under VP
/// preconditioning `c_in x = α x₀ + σ ε` is exactly the VP sample `x_t`.
#[derive(Debug, Clone)]
pub struct VpEpsilon {
    pub schedule: Schedule,
}

impl VpEpsilon {
    pub fn loss<B: Backend>(&self, net: &UNet<B>, input: ObjectiveInput<B>) -> Tensor<B, 1> {
        let ObjectiveInput { x0, noise, labels } = input;
        let lambda = self.schedule.sample_lambda::<B>(x0.dims()[0], &x0.device());
        let sigma = (lambda * -0.5).exp();
        let x = x0 + noise.clone() * per_sample(sigma.clone());
        let (eps_hat, _) = Precond::Vp.raw_output(net, x, sigma, labels);
        mean_per_sample((eps_hat - noise).powf_scalar(2.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;
    use emulsion_models::UNetConfig;

    #[test]
    fn loss_at_initialisation_is_the_noise_variance() {
        let _rng = crate::lock_backend_rng();
        // The UNet's output layer starts at ~0, so ε̂ ≈ 0 and L ≈ E‖ε‖² / d = 1 per sample.
        let device = Default::default();
        <TestBackend as Backend>::seed(&device, 1);
        let net = UNetConfig::new(8, 1)
            .with_model_channels(8)
            .with_channel_mult(vec![1])
            .with_num_blocks(1)
            .with_attn_resolutions(vec![])
            .init::<TestBackend>(&device);
        let objective = VpEpsilon { schedule: Schedule::cosine(-10.0, 10.0) };
        let x0 = Tensor::<TestBackend, 4>::random([64, 1, 8, 8], burn::tensor::Distribution::Uniform(-1.0, 1.0), &device);
        let noise = Tensor::random([64, 1, 8, 8], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let losses = objective.loss(&net, ObjectiveInput { x0, noise: noise.clone(), labels: None });
        assert_eq!(losses.dims(), [64]);
        let mean = losses.mean().into_scalar() as f64;
        let expected = noise.powf_scalar(2.0).mean().into_scalar() as f64;
        assert!((mean - expected).abs() < 1e-3, "loss {mean} vs E[ε²] {expected}");
    }
}
