//! Samplers, one pure function each (as in k-diffusion's `sampling.py`). They see only a
//! [`Denoise`] and a falling list of EDM noise levels ending in 0.

pub mod ddim;

use burn::prelude::*;
use burn::tensor::Distribution;
use emulsion_models::{Denoise, Precond, UNet};
use emulsion_schedule::karras::Karras;
use emulsion_schedule::{process, Schedule};

use crate::config::{SampleConfig, SamplerKind, Spacing};
use crate::seeds::{self, Stream};

pub use ddim::sample_ddim;

/// `steps` EDM noise levels under `spacing`, within `schedule`'s log-SNR range, noisiest first,
/// then 0.
pub fn sigmas(schedule: &Schedule, spacing: Spacing, rho: f64, steps: usize) -> Vec<f64> {
    let (s_min, s_max) = (process::edm_sigma(schedule.lambda_max), process::edm_sigma(schedule.lambda_min));
    let mut sigmas: Vec<f64> = match spacing {
        Spacing::Schedule => schedule.lambda_grid(steps).into_iter().map(process::edm_sigma).collect(),
        Spacing::Cosine => {
            let cosine = Schedule::cosine(schedule.lambda_min, schedule.lambda_max).with_shift(schedule.shift());
            cosine.lambda_grid(steps).into_iter().map(process::edm_sigma).collect()
        }
        Spacing::Karras if steps < 2 => vec![s_max; steps],
        Spacing::Karras => Karras { sigma_min: s_min, sigma_max: s_max, rho }.sigmas(steps).into_iter().rev().collect(),
    };
    sigmas.push(0.0);
    sigmas
}

/// A network with its preconditioning, labels and guidance, seen as a denoiser.
pub struct NetDenoiser<'a, B: Backend> {
    pub net: &'a UNet<B>,
    pub precond: Precond,
    /// `[N]` class labels for a conditional network.
    pub labels: Option<Tensor<B, 1, Int>>,
    /// Classifier-free guidance: `D = D(∅) + w (D(y) − D(∅))`; 1 is plain conditional.
    pub guidance: f64,
    /// Clamp `D` to the data range `[-1, 1]` (DDPM's `clip_denoised`): at low SNR an
    /// ε-prediction error is multiplied by `s` in `D = x − s ε̂`.
    pub clip_denoised: bool,
}

impl<B: Backend> Denoise<B> for NetDenoiser<'_, B> {
    fn denoise(&self, x: Tensor<B, 4>, sigma: f64) -> Tensor<B, 4> {
        let n = x.dims()[0];
        let device = x.device();
        let sigma = || Tensor::full([n], sigma, &device);
        let conditional = self.precond.denoise(self.net, x.clone(), sigma(), self.labels.clone());
        let denoised = match self.net.null_label() {
            Some(null) if self.guidance != 1.0 => {
                let unconditional = self.precond.denoise(self.net, x, sigma(), Some(Tensor::full([n], null as i64, &device)));
                unconditional.clone() + (conditional - unconditional) * self.guidance
            }
            _ => conditional,
        };
        if self.clip_denoised { denoised.clamp(-1.0, 1.0) } else { denoised }
    }
}

/// Class labels of a sample grid: `i mod num_classes`, so each grid column is one class when
/// the grid has `num_classes` columns.
pub fn grid_labels<B: Backend>(n: usize, num_classes: usize, device: &B::Device) -> Option<Tensor<B, 1, Int>> {
    (num_classes > 0).then(|| {
        let labels: Vec<i64> = (0..n).map(|i| (i % num_classes) as i64).collect();
        Tensor::from_data(burn::tensor::TensorData::new(labels, [n]), device)
    })
}

/// Generates `n` images of shape `[channels, size, size]` with the configured sampler,
/// from noise fixed by `options.seed`.
pub fn generate<B: Backend>(
    net: &UNet<B>,
    precond: Precond,
    schedule: &Schedule,
    options: &SampleConfig,
    n: usize,
    [channels, size]: [usize; 2],
    device: &B::Device,
) -> Tensor<B, 4> {
    let sigmas = sigmas(schedule, options.spacing, options.rho, options.steps);
    B::seed(device, seeds::derive(options.seed, Stream::Sample, 0));
    // x_T ~ N(0, I) in VP coordinates is N(0, 1 + s²) in EDM coordinates.
    let x = Tensor::random([n, channels, size, size], Distribution::Normal(0.0, 1.0), device) * (1.0 + sigmas[0].powi(2)).sqrt();
    let denoiser = NetDenoiser {
        net,
        precond,
        labels: grid_labels(n, net.num_classes(), device),
        guidance: options.guidance,
        clip_denoised: options.clip_denoised,
    };
    let shape = x.shape();
    let mut noise = || Tensor::random(shape.clone(), Distribution::Normal(0.0, 1.0), device);
    match options.sampler {
        SamplerKind::Ddim => sample_ddim(&denoiser, x, &sigmas, options.eta, &mut noise),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use emulsion_schedule::ScheduleKind;

    /// The exact denoiser of data `N(mu, s² I)`: `D(x; σ) = mu + s² / (s² + σ²) (x − mu)`.
    pub(crate) struct GaussianDenoiser {
        pub mu: f64,
        pub s: f64,
    }

    impl<B: Backend> Denoise<B> for GaussianDenoiser {
        fn denoise(&self, x: Tensor<B, 4>, sigma: f64) -> Tensor<B, 4> {
            let k = self.s * self.s / (self.s * self.s + sigma * sigma);
            (x - self.mu) * k + self.mu
        }
    }

    #[test]
    fn clipping_keeps_denoised_estimates_in_the_data_range() {
        let _rng = crate::lock_backend_rng();
        let device = Default::default();
        // An untrained network predicts ε̂ ≈ 0, so D(x) = x: the noise is never removed.
        let net = emulsion_models::UNetConfig::new(4, 1)
            .with_model_channels(4)
            .with_channel_mult(vec![1])
            .with_num_blocks(1)
            .with_attn_resolutions(vec![])
            .init::<crate::TestBackend>(&device);
        let schedule = Schedule::cosine(-10.0, 10.0);
        let extreme = |clip_denoised| {
            let options = SampleConfig { steps: 4, clip_denoised, ..SampleConfig::default() };
            let x = generate(&net, Precond::Vp, &schedule, &options, 3, [1, 4], &device);
            x.abs().max().into_scalar() as f64
        };
        assert!(extreme(true) <= 1.0);
        assert!(extreme(false) > 1.0);
    }

    #[test]
    fn every_spacing_spans_the_truncated_range() {
        let laplace = Schedule::from_kind(ScheduleKind::Laplace, &Default::default(), -10.0, 10.0);
        for spacing in [Spacing::Cosine, Spacing::Schedule, Spacing::Karras] {
            let s = sigmas(&laplace, spacing, 7.0, 8);
            assert_eq!(s.len(), 9, "{spacing:?}");
            assert!((s[0] / 5f64.exp() - 1.0).abs() < 1e-9 && (s[7] / (-5f64).exp() - 1.0).abs() < 1e-9, "{spacing:?}: {s:?}");
            assert!(s.windows(2).all(|w| w[0] > w[1]), "{spacing:?}");
        }
        // Karras: evenly spaced in s^(1/7).
        let k: Vec<f64> = sigmas(&laplace, Spacing::Karras, 7.0, 8)[..8].iter().map(|s| s.powf(1.0 / 7.0)).collect();
        assert!(k.windows(3).all(|w| ((w[0] - w[1]) - (w[1] - w[2])).abs() < 1e-12));
        // Cosine spacing ignores the training density: λ evenly spaced in cosine t, symmetric about 0.
        let c = sigmas(&laplace, Spacing::Cosine, 7.0, 9);
        assert!((c[4] - 1.0).abs() < 1e-12, "the middle level of a symmetric range is λ = 0");
    }

    #[test]
    fn sigmas_fall_from_the_schedules_noisiest_level_to_zero() {
        let s = sigmas(&Schedule::cosine(-10.0, 10.0), Spacing::Schedule, 7.0, 5);
        assert_eq!(s.len(), 6);
        assert!((s[0] - 5f64.exp()).abs() < 1e-9 && (s[4] - (-5f64).exp()).abs() < 1e-12 && s[5] == 0.0);
        assert!(s.windows(2).all(|w| w[0] > w[1]));
    }
}
