//! Preconditioning (Karras et al. 2022, Table 1): the denoiser
//! `D(x; s) = c_skip(s) x + c_out(s) F(c_in(s) x, c_noise(s))` around a raw network `F`,
//! with `x = x₀ + s ε` in the EDM (variance-exploding) coordinates every sampler uses.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::UNet;

/// The preconditioning that turns a raw network into a denoiser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Precond {
    /// VP with ε-prediction: `c_skip = 1`, `c_out = -s`, `c_in = 1 / √(s² + 1)`.
    #[default]
    Vp,
}

/// The four coefficients of a preconditioning, one value per sample.
#[derive(Debug, Clone)]
pub struct Scalings<B: Backend> {
    pub c_skip: Tensor<B, 1>,
    pub c_out: Tensor<B, 1>,
    pub c_in: Tensor<B, 1>,
    pub c_noise: Tensor<B, 1>,
}

impl Precond {
    /// The coefficients at noise levels `sigma` (EDM `s`). Every preconditioning uses the noise
    /// label `c_noise = ln(s) / 4`, so the network itself never depends on a schedule.
    pub fn scalings<B: Backend>(&self, sigma: Tensor<B, 1>) -> Scalings<B> {
        let c_noise = sigma.clone().log() / 4.0;
        match self {
            Precond::Vp => Scalings {
                c_skip: sigma.ones_like(),
                c_out: -sigma.clone(),
                c_in: (sigma.powf_scalar(2.0) + 1.0).sqrt().recip(),
                c_noise,
            },
        }
    }

    /// `F(c_in x, c_noise)` and the scalings it used.
    ///
    /// # Shapes
    /// - `x`: `[N, C, H, W]`, `sigma`: `[N]`, `labels`: `[N]`
    pub fn raw_output<B: Backend>(
        &self,
        net: &UNet<B>,
        x: Tensor<B, 4>,
        sigma: Tensor<B, 1>,
        labels: Option<Tensor<B, 1, Int>>,
    ) -> (Tensor<B, 4>, Scalings<B>) {
        let scalings = self.scalings(sigma);
        let f = net.forward(x * per_sample(scalings.c_in.clone()), scalings.c_noise.clone(), labels);
        (f, scalings)
    }

    /// `D(x; s) = c_skip x + c_out F(c_in x, c_noise)`.
    pub fn denoise<B: Backend>(
        &self,
        net: &UNet<B>,
        x: Tensor<B, 4>,
        sigma: Tensor<B, 1>,
        labels: Option<Tensor<B, 1, Int>>,
    ) -> Tensor<B, 4> {
        let (f, s) = self.raw_output(net, x.clone(), sigma, labels);
        x * per_sample(s.c_skip) + f * per_sample(s.c_out)
    }
}

/// A denoiser `D(x; s)`: the only thing samplers see.
pub trait Denoise<B: Backend> {
    /// `D(x; s)` at one noise level for the whole batch. `x`: `[N, C, H, W]`.
    fn denoise(&self, x: Tensor<B, 4>, sigma: f64) -> Tensor<B, 4>;
}

/// `[N]` → `[N, 1, 1, 1]`, to scale each sample of an image batch.
pub fn per_sample<B: Backend>(values: Tensor<B, 1>) -> Tensor<B, 4> {
    values.unsqueeze_dims(&[1, 2, 3])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;

    #[test]
    fn vp_scalings_match_table_1() {
        let sigmas = [0.002f32, 0.5, 1.0, 80.0];
        let s = Precond::Vp.scalings(Tensor::<TestBackend, 1>::from_floats(sigmas, &Default::default()));
        let v = |t: Tensor<TestBackend, 1>| t.into_data().to_vec::<f32>().unwrap();
        for (i, sigma) in sigmas.iter().map(|&x| x as f64).enumerate() {
            assert_eq!(v(s.c_skip.clone())[i], 1.0);
            assert!((v(s.c_out.clone())[i] as f64 + sigma).abs() < 1e-6);
            assert!((v(s.c_in.clone())[i] as f64 - 1.0 / (sigma * sigma + 1.0).sqrt()).abs() < 1e-6);
            assert!((v(s.c_noise.clone())[i] as f64 - sigma.ln() / 4.0).abs() < 1e-6);
        }
    }
}
