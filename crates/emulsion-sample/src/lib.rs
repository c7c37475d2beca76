//! Emulsion's samplers, one pure function each (as in k-diffusion's `sampling.py`): they see
//! only a [`Denoise`] and a falling list of EDM noise levels ending in 0. Around them: the
//! `[sample]` section ([`SampleConfig`]), the noise levels a [`Spacing`] puts between a
//! schedule's ends ([`sigmas`]), a network seen as a denoiser ([`NetDenoiser`]), images from a
//! network ([`Generator`]) and PNG grids of them ([`grid`]). Inference needs nothing of
//! Burn's training crate.

pub mod consistency;
mod config;
pub mod ddim;
pub mod ddpm;
pub mod dpmpp_2m;
pub mod euler;
pub mod grid;
pub mod heun;
pub mod progress;

use burn::prelude::*;
use burn::tensor::Distribution;
use emulsion_models::{Denoise, Network, Precond};
use emulsion_schedule::karras::Karras;
use emulsion_schedule::{process, Curve, Schedule};

pub use config::{SampleConfig, SamplerKind, Spacing};
pub use consistency::sample_consistency;
pub use ddim::sample_ddim;
pub use ddpm::sample_ddpm;
pub use dpmpp_2m::sample_dpmpp_2m;
pub use euler::sample_euler;
pub use heun::sample_heun;

/// `steps` EDM noise levels under `spacing`, within `schedule`'s log-SNR range, noisiest first,
/// then 0.
pub fn sigmas(schedule: &Schedule, spacing: Spacing, rho: f64, steps: usize) -> Vec<f64> {
    let (s_min, s_max) = schedule.sigma_range();
    let mut sigmas: Vec<f64> = match spacing {
        Spacing::Schedule => schedule.lambda_grid(steps).into_iter().map(process::edm_sigma).collect(),
        Spacing::Cosine => {
            let cosine = Schedule::new(Curve::Cosine {}, schedule.lambda_min, schedule.lambda_max, schedule.shift())
                .expect("the cosine spans every log-SNR, and the range and shift are a valid schedule's");
            cosine.lambda_grid(steps).into_iter().map(process::edm_sigma).collect()
        }
        Spacing::Karras if steps < 2 => vec![s_max; steps],
        Spacing::Karras => Karras { sigma_min: s_min, sigma_max: s_max, rho }.sigmas(steps).into_iter().rev().collect(),
    };
    sigmas.push(0.0);
    sigmas
}

/// A network with its preconditioning, labels and guidance, seen as a denoiser.
pub struct NetDenoiser<'a, B: Backend, N: Network<B>> {
    pub net: &'a N,
    pub precond: Precond,
    /// `[N]` class labels for a conditional network.
    pub labels: Option<Tensor<B, 1, Int>>,
    /// Classifier-free guidance: `D = D(∅) + w (D(y) − D(∅))`; 1 is plain conditional.
    pub guidance: f64,
    /// Clamp `D` to the data range `[-1, 1]` (DDPM's `clip_denoised`): at low SNR an
    /// ε-prediction error is multiplied by `s` in `D = x − s ε̂`.
    pub clip_denoised: bool,
    /// The sampler's falling noise levels: progress is how many lie above the one denoised.
    pub levels: &'a [f64],
}

impl<B: Backend, N: Network<B>> Denoise<B> for NetDenoiser<'_, B, N> {
    fn denoise(&self, x: Tensor<B, 4>, sigma: f64) -> Tensor<B, 4> {
        let above = self.levels.iter().take_while(|&&s| s > sigma).count();
        progress::report("sample", above as u64, self.levels.len().saturating_sub(1) as u64);
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

/// Class labels of images `images`: `i mod num_classes`, so each grid column is one class when
/// the grid has `num_classes` columns, and batches of a longer series continue the cycle.
pub fn grid_labels<B: Backend>(images: std::ops::Range<usize>, num_classes: usize, device: &B::Device) -> Option<Tensor<B, 1, Int>> {
    (num_classes > 0).then(|| {
        let n = images.len();
        let labels: Vec<i64> = images.map(|i| (i % num_classes) as i64).collect();
        Tensor::from_data(burn::tensor::TensorData::new(labels, [n]), device)
    })
}

/// What turns a trained network into images: the preconditioning it was trained under, the
/// schedule whose log-SNR range bounds the sampler's levels, and the image shape.
#[derive(Debug, Clone)]
pub struct Generator {
    pub precond: Precond,
    pub schedule: Schedule,
    /// `[channels, size]` of the square images.
    pub shape: [usize; 2],
}

impl Generator {
    /// Generates images `images` (their indices set the class labels, see [`grid_labels`])
    /// with `options`' sampler, from noise drawn with the backend seeded by `noise_seed`.
    pub fn generate<B: Backend, N: Network<B>>(&self, net: &N, options: &SampleConfig, images: std::ops::Range<usize>, noise_seed: u64, device: &B::Device) -> Tensor<B, 4> {
        let n = images.len();
        let [channels, size] = self.shape;
        let sigmas = match options.sampler {
            // A consistency model is the identity at s_min: `steps` levels above it, then 0.
            SamplerKind::Consistency => {
                let mut levels = sigmas(&self.schedule, options.spacing, options.rho, options.steps + 1);
                levels.remove(options.steps);
                levels
            }
            _ => sigmas(&self.schedule, options.spacing, options.rho, options.steps),
        };
        B::seed(device, noise_seed);
        // x_T ~ N(0, I) in VP coordinates is N(0, 1 + s²) in EDM coordinates.
        let x = Tensor::random([n, channels, size, size], Distribution::Normal(0.0, 1.0), device) * (1.0 + sigmas[0].powi(2)).sqrt();
        let denoiser = NetDenoiser {
            net,
            precond: self.precond,
            labels: grid_labels(images, net.num_classes(), device),
            guidance: options.guidance,
            clip_denoised: options.clip_denoised,
            levels: &sigmas,
        };
        let shape = x.shape();
        let mut noise = || Tensor::random(shape.clone(), Distribution::Normal(0.0, 1.0), device);
        let images = match options.sampler {
            SamplerKind::Ddim => sample_ddim(&denoiser, x, &sigmas, options.eta, &mut noise),
            SamplerKind::Ddpm => sample_ddpm(&denoiser, x, &sigmas, &mut noise),
            SamplerKind::Euler => sample_euler(&denoiser, x, &sigmas),
            SamplerKind::Heun => sample_heun(&denoiser, x, &sigmas),
            SamplerKind::Dpmpp2m => sample_dpmpp_2m(&denoiser, x, &sigmas),
            SamplerKind::Consistency => {
                // The level at which the model is the identity (only 0 for a plain denoiser).
                let s_min = match self.precond {
                    Precond::Consistency { sigma_min, .. } => sigma_min,
                    _ => 0.0,
                };
                sample_consistency(&denoiser, x, &sigmas, s_min, &mut noise)
            }
        };
        let steps = sigmas.len().saturating_sub(1) as u64;
        progress::report("sample", steps, steps);
        images
    }
}

#[cfg(test)]
pub(crate) type TestBackend = burn::backend::NdArray<f32>;

/// Serialises the tests that draw from the backend's generator (one global per backend).
#[cfg(test)]
pub(crate) fn lock_backend_rng() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

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

    /// The exact consistency function of `N(mu, s² I)` data: the probability-flow ODE scales
    /// `x − mu` by `s / √(s² + σ²)` on its way to σ = 0.
    struct GaussianConsistency {
        mu: f64,
        s: f64,
    }

    impl<B: Backend> Denoise<B> for GaussianConsistency {
        fn denoise(&self, x: Tensor<B, 4>, sigma: f64) -> Tensor<B, 4> {
            (x - self.mu) * (self.s / (self.s * self.s + sigma * sigma).sqrt()) + self.mu
        }
    }

    pub(crate) const MU: f64 = 0.3;
    pub(crate) const S: f64 = 0.5;

    /// Errors of the sample mean and of the variance ratio for `N(MU, S²)` data, from the same
    /// starting noise and noise stream for every sampler.
    pub(crate) fn moments(steps: usize, spacing: Spacing, sample: impl Fn(Tensor<crate::TestBackend, 4>, &[f64], &mut dyn FnMut() -> Tensor<crate::TestBackend, 4>) -> Tensor<crate::TestBackend, 4>) -> (f64, f64) {
        let device = Default::default();
        <crate::TestBackend as Backend>::seed(&device, 3);
        let sigmas = sigmas(&Schedule::cosine(-12.0, 12.0).unwrap(), spacing, 7.0, steps);
        let x = Tensor::<crate::TestBackend, 4>::random([4096, 1, 2, 2], Distribution::Normal(0.0, 1.0), &device) * (S * S + sigmas[0] * sigmas[0]).sqrt() + MU;
        let shape = x.shape();
        let mut noise = || Tensor::random(shape.clone(), Distribution::Normal(0.0, 1.0), &device);
        let out = sample(x, &sigmas, &mut noise);
        let mean = out.clone().mean().into_scalar() as f64;
        let var = (out - mean).powf_scalar(2.0).mean().into_scalar() as f64;
        (mean - MU, var / (S * S) - 1.0)
    }

    #[test]
    fn every_sampler_reproduces_gaussian_data_and_higher_orders_beat_euler() {
        let _rng = crate::lock_backend_rng();
        let d = GaussianDenoiser { mu: MU, s: S };
        type T = Tensor<crate::TestBackend, 4>;
        let euler = |x: T, s: &[f64], _: &mut dyn FnMut() -> T| sample_euler(&d, x, s);
        let heun = |x: T, s: &[f64], _: &mut dyn FnMut() -> T| sample_heun(&d, x, s);
        let dpmpp = |x: T, s: &[f64], _: &mut dyn FnMut() -> T| sample_dpmpp_2m(&d, x, s);
        let ddpm = |x: T, s: &[f64], n: &mut dyn FnMut() -> T| sample_ddpm(&d, x, s, n);
        for (name, fine) in [
            ("euler", moments(200, Spacing::Karras, &euler)),
            ("heun", moments(200, Spacing::Karras, &heun)),
            ("dpm++2m", moments(200, Spacing::Karras, &dpmpp)),
            ("ddpm", moments(400, Spacing::Karras, &ddpm)),
        ] {
            // 4096×4 draws: the sample mean and variance are themselves within ~1% and ~3%.
            assert!(fine.0.abs() < 0.02 && fine.1.abs() < 0.06, "{name}: mean error {}, variance error {}", fine.0, fine.1);
        }
        // Deterministic samplers at equal levels: the exact ODE maps the start to the data
        // variance, so the error is the solver's (plus ~1% from the finite sample, shared by
        // all). On this Karras grid (s from 403 to 0.0025) Euler's error halves per doubling of
        // the levels and the 2nd-order ones quarter (computed in f64: at 32 levels −0.216, 0.057,
        // 0.063; at 128: −0.058, 0.003, 0.003). Below ~16 levels Heun overshoots the big steps.
        let error = |f: &dyn Fn(T, &[f64], &mut dyn FnMut() -> T) -> T, steps| moments(steps, Spacing::Karras, f).1.abs();
        let (e, h, p) = (error(&euler, 32), error(&heun, 32), error(&dpmpp, 32));
        assert!(h < e / 3.0 && p < e / 3.0, "32 levels: euler {e}, heun {h}, dpm++2m {p}");
        for (name, f) in [("euler", &euler as &dyn Fn(T, &[f64], &mut dyn FnMut() -> T) -> T), ("heun", &heun), ("dpm++2m", &dpmpp)] {
            assert!(error(f, 128) < error(f, 32), "{name} does not improve with steps");
        }
    }

    #[test]
    fn ddim_is_euler_and_ddpm_is_ddim_at_eta_one() {
        let _rng = crate::lock_backend_rng();
        let d = GaussianDenoiser { mu: MU, s: S };
        let device = Default::default();
        let sigmas = sigmas(&Schedule::cosine(-12.0, 12.0).unwrap(), Spacing::Cosine, 7.0, 12);
        let x = Tensor::<crate::TestBackend, 4>::random([64, 1, 2, 2], Distribution::Normal(0.0, 3.0), &device);
        let close = |a: Tensor<crate::TestBackend, 4>, b: Tensor<crate::TestBackend, 4>| (a - b).abs().max().into_scalar() < 1e-5;
        let mut none = || -> Tensor<crate::TestBackend, 4> { unreachable!("deterministic") };
        assert!(close(sample_ddim(&d, x.clone(), &sigmas, 0.0, &mut none), sample_euler(&d, x.clone(), &sigmas)));
        // The same noise stream for both: DDPM's posterior step is DDIM's η = 1 step.
        let stream = |seed| {
            <crate::TestBackend as Backend>::seed(&device, seed);
            (0..sigmas.len()).map(|_| Tensor::random([64, 1, 2, 2], Distribution::Normal(0.0, 1.0), &device)).collect::<Vec<_>>()
        };
        let (a, b) = (stream(8), stream(8));
        let (mut a, mut b) = (a.into_iter(), b.into_iter());
        let ddpm = sample_ddpm(&d, x.clone(), &sigmas, &mut || a.next().unwrap());
        let ddim = sample_ddim(&d, x, &sigmas, 1.0, &mut || b.next().unwrap());
        assert!(close(ddpm, ddim));
    }

    #[test]
    fn consistency_sampling_with_the_exact_consistency_function_recovers_the_data() {
        let _rng = crate::lock_backend_rng();
        let f = GaussianConsistency { mu: MU, s: S };
        type T = Tensor<crate::TestBackend, 4>;
        let s_min = 0.002;
        let one_step = |x: T, s: &[f64], n: &mut dyn FnMut() -> T| sample_consistency(&f, x, &[s[0], 0.0], s_min, n);
        let multistep = |x: T, s: &[f64], n: &mut dyn FnMut() -> T| sample_consistency(&f, x, s, s_min, n);
        for (name, (mean, var)) in [("one step", moments(4, Spacing::Karras, &one_step)), ("4 steps", moments(4, Spacing::Karras, &multistep))] {
            assert!(mean.abs() < 0.02 && var.abs() < 0.06, "{name}: mean error {mean}, variance error {var}");
        }
        // The boundary: at s_min the exact f is (almost) the identity.
        let x = Tensor::<crate::TestBackend, 4>::ones([1, 1, 1, 1], &Default::default());
        let y = Denoise::<crate::TestBackend>::denoise(&f, x, 0.0);
        assert!((y.into_scalar() as f64 - 1.0).abs() < 1e-6);
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
        let generator = Generator { precond: Precond::Vp, schedule: Schedule::cosine(-10.0, 10.0).unwrap(), shape: [1, 4] };
        let extreme = |clip_denoised| {
            let options = SampleConfig { steps: 4, clip_denoised, ..SampleConfig::default() };
            let x = generator.generate(&net, &options, 0..3, 1, &device);
            x.abs().max().into_scalar() as f64
        };
        assert!(extreme(true) <= 1.0);
        assert!(extreme(false) > 1.0);
    }

    #[test]
    fn every_spacing_spans_the_truncated_range() {
        let laplace = Schedule::new(Curve::named("laplace").unwrap(), -10.0, 10.0, 1.0).unwrap();
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
        let s = sigmas(&Schedule::cosine(-10.0, 10.0).unwrap(), Spacing::Schedule, 7.0, 5);
        assert_eq!(s.len(), 6);
        assert!((s[0] - 5f64.exp()).abs() < 1e-9 && (s[4] - (-5f64).exp()).abs() < 1e-12 && s[5] == 0.0);
        assert!(s.windows(2).all(|w| w[0] > w[1]));
    }
}
