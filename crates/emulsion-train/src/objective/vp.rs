//! Variance-preserving diffusion (Ho et al. 2020) in continuous time, with the three targets
//! the improved-schedule paper compares: `λ ~ p(λ)`, `x_t = α x₀ + σ ε` (`α² = sigmoid(λ)`,
//! `σ² = sigmoid(−λ)`), `L = ‖F(x_t, λ) − y‖²` with `y = ε`, `v = α ε − σ x₀` or `x₀`.

use burn::prelude::*;
use emulsion_models::precond::per_sample;
use emulsion_models::{Network, Precond};
use emulsion_schedule::process::edm_sigma_tensor;
use emulsion_schedule::Schedule;
use serde::{Deserialize, Serialize};

use super::{mean_per_sample, ObjectiveInput};

/// What the VP network predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum VpTarget {
    /// The noise `ε` (DDPM).
    #[default]
    Eps,
    /// The velocity `v = α ε − σ x₀` (Salimans & Ho 2022).
    V,
    /// The clean image `x₀`.
    X0,
}

/// `L = ‖F(c_in x, c_noise) − y‖²` with `x = x₀ + s ε`, `s = e^{−λ/2}`: under VP
/// preconditioning `c_in x = α x₀ + σ ε` is exactly the VP sample `x_t`.
#[derive(Debug, Clone)]
pub struct Vp {
    pub schedule: Schedule,
    pub target: VpTarget,
}

impl Vp {
    pub fn precond(&self) -> Precond {
        match self.target {
            VpTarget::Eps => Precond::Vp,
            VpTarget::V => Precond::VpV,
            VpTarget::X0 => Precond::VpX0,
        }
    }

    /// The loss at given log-SNRs `lambda` `[N]`.
    pub fn loss_at<B: Backend, N: Network<B>>(&self, net: &N, input: ObjectiveInput<B>, lambda: Tensor<B, 1>) -> Tensor<B, 1> {
        let ObjectiveInput { x0, noise, labels, .. } = input;
        let sigma = edm_sigma_tensor(lambda.clone());
        let x = x0.clone() + noise.clone() * per_sample(sigma.clone());
        let (prediction, _) = self.precond().raw_output(net, x, sigma, labels);
        let target = match self.target {
            VpTarget::Eps => noise,
            VpTarget::V => {
                let alpha = per_sample(burn::tensor::activation::sigmoid(lambda.clone()).sqrt());
                let sigma = per_sample(burn::tensor::activation::sigmoid(-lambda).sqrt());
                noise * alpha - x0 * sigma
            }
            VpTarget::X0 => x0,
        };
        mean_per_sample((prediction - target).powf_scalar(2.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;

    #[test]
    fn loss_at_initialisation_is_the_targets_second_moment() {
        let _rng = crate::lock_backend_rng();
        // The UNet's output layer starts at ~0, so F ≈ 0 and L ≈ ‖y‖² / d per sample.
        let (net, x0, noise) = crate::objective::tests::untrained_case(1, 16);
        let device = x0.device();
        let lambda = Tensor::<TestBackend, 1>::from_floats([-3.0, -1.0, 0.0, 0.5, 1.0, 2.0, 4.0, 6.0, -6.0, -0.5, 3.0, 1.5, -2.0, 0.25, 5.0, -4.0], &device);
        let per_sample = |t: Tensor<TestBackend, 4>| -> Vec<f32> { t.powf_scalar(2.0).reshape([16, 64]).mean_dim(1).reshape([16]).into_data().to_vec().unwrap() };
        let lambdas: Vec<f32> = lambda.clone().into_data().to_vec().unwrap();
        for target in [VpTarget::Eps, VpTarget::V, VpTarget::X0] {
            let objective = Vp { schedule: Schedule::cosine(-10.0, 10.0).unwrap(), target };
            let input = ObjectiveInput { x0: x0.clone(), noise: noise.clone(), labels: None, step: 0 };
            let got: Vec<f32> = objective.loss_at(&net, input, lambda.clone()).into_data().to_vec().unwrap();
            let want: Vec<f32> = match target {
                VpTarget::Eps => per_sample(noise.clone()),
                VpTarget::X0 => per_sample(x0.clone()),
                VpTarget::V => {
                    let (a, s): (Vec<f32>, Vec<f32>) = lambdas.iter().map(|&l| ((1.0 / (1.0 + (-l).exp())).sqrt(), (1.0 / (1.0 + l.exp())).sqrt())).unzip();
                    let a = Tensor::<TestBackend, 1>::from_floats(a.as_slice(), &device).reshape([16, 1, 1, 1]);
                    let s = Tensor::<TestBackend, 1>::from_floats(s.as_slice(), &device).reshape([16, 1, 1, 1]);
                    per_sample(noise.clone() * a - x0.clone() * s)
                }
            };
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 2e-3 * w.max(0.1), "{target:?}: {g} vs {w}");
            }
        }
    }
}
