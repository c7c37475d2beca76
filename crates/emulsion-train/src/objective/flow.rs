//! Rectified flow / flow matching (Liu et al. 2022; Lipman et al. 2022): `x_t = (1 − t) x₀ + t ε`,
//! `L = ‖F(x_t, t) − (ε − x₀)‖²`. Time and noise level are one: `t = s/(1 + s)`, `λ = 2 ln((1−t)/t)`,
//! so any schedule gives the levels (`flow`: uniform `t`).

use burn::prelude::*;
use emulsion_models::precond::per_sample;
use emulsion_models::{Network, Precond};
use emulsion_schedule::Schedule;

use super::{mean_per_sample, ObjectiveInput};

#[derive(Debug, Clone)]
pub struct Flow {
    pub schedule: Schedule,
}

impl Flow {
    pub fn precond(&self) -> Precond {
        Precond::Flow
    }

    /// The loss at given noise levels `sigma` `[N]` (`t = s/(1 + s)`).
    pub fn loss_at<B: Backend, N: Network<B>>(&self, net: &N, input: ObjectiveInput<B>, sigma: Tensor<B, 1>) -> Tensor<B, 1> {
        let ObjectiveInput { x0, noise, labels, .. } = input;
        // Flow preconditioning feeds c_in (x₀ + s ε) = (1 − t) x₀ + t ε = x_t to the network.
        let x = x0.clone() + noise.clone() * per_sample(sigma.clone());
        let (velocity, _) = self.precond().raw_output(net, x, sigma, labels);
        mean_per_sample((velocity - (noise - x0)).powf_scalar(2.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_at_initialisation_is_the_velocitys_second_moment() {
        let _rng = crate::lock_backend_rng();
        let (net, x0, noise) = crate::objective::tests::untrained_case(3, 3);
        let device = x0.device();
        let got: Vec<f32> = Flow { schedule: Schedule::cosine(-10.0, 10.0).unwrap() }
            .loss_at(&net, ObjectiveInput { x0: x0.clone(), noise: noise.clone(), labels: None, step: 0 }, Tensor::from_floats([0.1, 1.0, 10.0], &device))
            .into_data()
            .to_vec()
            .unwrap();
        let want: Vec<f32> = (noise - x0).powf_scalar(2.0).reshape([3, 64]).mean_dim(1).reshape([3]).into_data().to_vec().unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 2e-3 * w, "{g} vs {w}");
        }
    }
}
