//! Fast Diffusion Model (Wu et al. 2023; sail-sg/FDM `training/loss.py`):
//! `L = min(w(s), clamp_k) ‖D(x₀ + s ε; s) − x₀‖²`, with `D` the base preconditioning whose input
//! scale is the critically damped `e^{−mB}(1 + mB)` ([`Precond::Fdm`]), `w` the base's weight
//! (EDM: `(s² + s_d²)/(s s_d)²`; VP, VE: `1/s²`) and `clamp_k = 5 · 100^{k/warmup}` until it
//! reaches 500 at step `warmup`, unclamped from then on. The reference advances the clamp once
//! per loss call, i.e. per optimiser step without gradient accumulation; here `k` is the
//! optimiser step whatever `train.micro_batch` is, so micro-batching does not change it.

use burn::prelude::*;
use emulsion_config::Invalid;
use emulsion_models::{FdmBase, FdmScale, Network, Precond};
use emulsion_schedule::Schedule;
use serde::{Deserialize, Serialize};

use super::edm::{denoising_error, loss_weight};
use super::ObjectiveInput;

#[derive(Debug, Clone)]
pub struct Fdm {
    pub schedule: Schedule,
    pub base: FdmBase,
    pub scale: FdmScale,
    pub warmup: LossClampWarmup,
}

impl Fdm {
    pub fn precond(&self) -> Precond {
        Precond::Fdm { base: self.base, scale: self.scale }
    }

    /// The loss at given noise levels `sigma` `[N]`, at the input's step.
    pub fn loss_at<B: Backend, N: Network<B>>(&self, net: &N, input: ObjectiveInput<B>, sigma: Tensor<B, 1>) -> Tensor<B, 1> {
        let weight = match self.base {
            FdmBase::Edm { sigma_data } => loss_weight(sigma.clone(), sigma_data),
            FdmBase::Vp {} | FdmBase::Ve {} => sigma.clone().powf_scalar(2.0).recip(),
        };
        let weight = match self.warmup.clamp_at(input.step) {
            Some(clamp) => weight.clamp_max(clamp),
            None => weight,
        };
        denoising_error(&self.precond(), net, input, sigma) * weight
    }
}

/// `[diffusion.objective]` with `type = "fdm"`. The scale's multiplier, noise range and the
/// warm-up default to the chosen base's official values, hence `Option`s here rather than an
/// [`FdmScale`] of fixed defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FdmConfig {
    /// Whose `c_skip`, `c_out` and loss weight FDM keeps: `edm` (with its `sigma_data`), `vp`
    /// or `ve`.
    pub base: FdmBase,
    /// `m` in `e^{−mB}(1 + mB)`; default 2 (the official CLI). VE-FDM has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multiplier: Option<f64>,
    pub beta_min: f64,
    pub beta_d: f64,
    /// The noise range `τ = (s − s_min)/(s_max − s_min)` is measured over; default the base's
    /// official range (EDM [0.002, 80], VP [0.001, 152.3], VE [0.02, 100]), whatever
    /// `lambda_min`/`lambda_max` say: τ decides where the scale falls from 1 to 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sigma_min: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sigma_max: Option<f64>,
    /// Steps over which the loss-weight clamp grows from 5 to 500; default 200 for `edm`, 400
    /// for `vp` and `ve` (the official values); 0 never clamps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warmup: Option<u64>,
}

impl Default for FdmConfig {
    fn default() -> Self {
        let scale = FdmScale::default();
        Self { base: FdmBase::default(), multiplier: None, beta_min: scale.beta_min, beta_d: scale.beta_d, sigma_min: None, sigma_max: None, warmup: None }
    }
}

impl FdmConfig {
    /// sail-sg/FDM's noise ranges: EDM's; VP's `s(t) = √(e^{β_d t²/2 + β_min t} − 1)` at
    /// `t = 10⁻⁵` and 1 (β_d = 19.9, β_min = 0.1); VE's.
    pub fn official_sigma_range(base: FdmBase) -> (f64, f64) {
        let vp_sigma = |t: f64| ((0.5 * 19.9 * t * t + 0.1 * t).exp() - 1.0).sqrt();
        match base {
            FdmBase::Edm { .. } => (0.002, 80.0),
            FdmBase::Vp {} => (vp_sigma(1e-5), vp_sigma(1.0)),
            FdmBase::Ve {} => (0.02, 100.0),
        }
    }

    /// The `[s_min, s_max]` of τ: the configured one, else the base's official range.
    pub fn sigma_range(&self) -> (f64, f64) {
        let (official_min, official_max) = Self::official_sigma_range(self.base);
        (self.sigma_min.unwrap_or(official_min), self.sigma_max.unwrap_or(official_max))
    }

    /// The objective on `schedule` (the training levels).
    pub fn init(&self, schedule: Schedule) -> Fdm {
        let (default_multiplier, default_warmup) = match self.base {
            FdmBase::Edm { .. } => (FdmScale::default().multiplier, 200),
            FdmBase::Vp {} => (FdmScale::default().multiplier, 400),
            FdmBase::Ve {} => (1.0, 400),
        };
        let (sigma_min, sigma_max) = self.sigma_range();
        let scale = FdmScale { beta_min: self.beta_min, beta_d: self.beta_d, multiplier: self.multiplier.unwrap_or(default_multiplier), sigma_min, sigma_max };
        Fdm { schedule, base: self.base, scale, warmup: LossClampWarmup { warmup: self.warmup.unwrap_or(default_warmup) } }
    }

    /// Checks what serde cannot; keys are relative to the section.
    pub fn validate(&self) -> Result<(), Invalid> {
        if let FdmBase::Edm { sigma_data } = self.base {
            emulsion_config::positive("base.sigma_data", sigma_data)?;
        }
        if let Some(m) = self.multiplier {
            if self.base == (FdmBase::Ve {}) {
                return Err(Invalid::new("multiplier", "VE-FDM has no multiplier (the official VE-FDM scales by e^{-B}(1 + B))"));
            }
            emulsion_config::positive("multiplier", m)?;
        }
        for (key, v) in [("beta_min", self.beta_min), ("beta_d", self.beta_d)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Invalid::new(key, format!("must be a finite number ≥ 0, got {v}")));
            }
        }
        if self.beta_min + self.beta_d == 0.0 {
            return Err(Invalid::new("beta_d", "beta_min and beta_d are both 0, so FDM would not scale the input at all"));
        }
        let (lo, hi) = self.sigma_range();
        if !(lo.is_finite() && hi.is_finite() && 0.0 <= lo && lo < hi) {
            return Err(Invalid::new("sigma_min", format!("[sigma_min, sigma_max] = [{lo}, {hi}] must be finite, increasing and not negative")));
        }
        Ok(())
    }
}

/// The loss-weight clamp warm-up: the weight is clamped at `5 · 100^{k / warmup}` at step `k`,
/// which reaches 500 after exactly `warmup` steps; from then on it is not clamped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LossClampWarmup {
    /// 200 iterations for EDM on CIFAR-10, 400 for VP/VE (the official defaults); 0 disables.
    pub warmup: u64,
}

impl LossClampWarmup {
    const START: f64 = 5.0;
    const GROWTH: f64 = 100.0;

    /// The clamp at optimiser step `step` (0-based), or `None` once it has reached 500.
    pub fn clamp_at(&self, step: u64) -> Option<f64> {
        (step < self.warmup).then(|| Self::START * Self::GROWTH.powf(step as f64 / self.warmup as f64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objective::tests::{assert_gradient_matches, lift, untrained_case, EchoInput, FreeOutput};

    #[test]
    fn clamp_grows_from_5_to_500_in_exactly_warmup_steps() {
        let w = LossClampWarmup { warmup: 200 };
        assert_eq!(w.clamp_at(0), Some(5.0));
        // The reference multiplies by e^{ln 100 / warmup} on each call; the closed form agrees.
        let mut iterated = 5.0;
        for k in 0..200 {
            let clamp = w.clamp_at(k).expect("clamped during warm-up");
            assert!((clamp - iterated).abs() < 1e-9 * iterated && clamp < 500.0);
            iterated *= (100f64.ln() / 200.0).exp();
        }
        assert!((iterated - 500.0).abs() < 1e-9, "500 after exactly `warmup` steps");
        assert_eq!(w.clamp_at(200), None);
        assert_eq!(LossClampWarmup { warmup: 0 }.clamp_at(0), None);
    }

    /// The base's `(c_skip, c_out, weight)` at `s`, by hand, in f64.
    fn hand_coefficients(base: FdmBase, s: f64) -> (f64, f64, f64) {
        match base {
            FdmBase::Edm { sigma_data: sd } => (sd * sd / (s * s + sd * sd), s * sd / (s * s + sd * sd).sqrt(), (s * s + sd * sd) / (s * sd).powi(2)),
            FdmBase::Vp {} => (1.0, -s, 1.0 / (s * s)),
            FdmBase::Ve {} => (1.0, s, 1.0 / (s * s)),
        }
    }

    fn objective(base: FdmBase) -> Fdm {
        Fdm { schedule: Schedule::cosine(-10.0, 10.0).unwrap(), base, scale: FdmScale::default(), warmup: LossClampWarmup { warmup: 200 } }
    }

    #[test]
    fn loss_at_initialisation_is_the_base_loss_with_the_clamped_weight() {
        let _rng = crate::lock_backend_rng();
        // F ≈ 0 at initialisation: D = c_skip x, so D − x₀ = (c_skip − 1) x₀ + c_skip s ε.
        let (net, x0, noise) = untrained_case(3, 4);
        let device = x0.device();
        let sigmas = [0.02f32, 0.3, 2.0, 40.0];
        let x0v: Vec<f32> = x0.clone().into_data().to_vec().unwrap();
        let ev: Vec<f32> = noise.clone().into_data().to_vec().unwrap();
        for base in [FdmBase::Edm { sigma_data: 0.5 }, FdmBase::Vp {}, FdmBase::Ve {}] {
            let o = objective(base);
            for step in [0u64, 100, 200] {
                let input = ObjectiveInput { x0: x0.clone(), noise: noise.clone(), labels: None, step };
                let got: Vec<f32> = o.loss_at(&net, input, Tensor::from_floats(sigmas, &device)).into_data().to_vec().unwrap();
                for (i, &s) in sigmas.iter().enumerate() {
                    let s = s as f64;
                    let (c_skip, _, weight) = hand_coefficients(base, s);
                    let clamp = 5.0 * 100f64.powf(step as f64 / 200.0);
                    let weight = if step < 200 { weight.min(clamp) } else { weight };
                    let mse: f64 = (0..64).map(|k| ((c_skip - 1.0) * x0v[i * 64 + k] as f64 + c_skip * s * ev[i * 64 + k] as f64).powi(2)).sum::<f64>() / 64.0;
                    let want = weight * mse;
                    assert!((got[i] as f64 - want).abs() < 2e-3 * want, "{base:?}, step {step}, s = {s}: {} vs {want}", got[i]);
                }
            }
        }
    }

    #[test]
    fn the_network_sees_the_critically_damped_input() {
        // F = its input c_in x: D = (c_skip + c_out scale(s)) x, so a dropped or unreplaced c_in
        // changes the loss.
        let _rng = crate::lock_backend_rng();
        let (_, x0, noise) = untrained_case(5, 3);
        let (x0v, ev): (Vec<f32>, Vec<f32>) = (x0.clone().into_data().to_vec().unwrap(), noise.clone().into_data().to_vec().unwrap());
        let sigmas = [0.5f64, 20.0, 60.0];
        let o = Fdm { warmup: LossClampWarmup { warmup: 0 }, ..objective(FdmBase::Vp {}) };
        let input = ObjectiveInput { x0, noise, labels: None, step: 0 };
        let got: Vec<f32> = o.loss_at(&EchoInput::new(), input, Tensor::from_floats(sigmas.map(|s| s as f32), &Default::default())).into_data().to_vec().unwrap();
        for (i, &s) in sigmas.iter().enumerate() {
            let gain = 1.0 - s * o.scale.scale(s);
            let mse: f64 = (0..64).map(|k| (gain * (x0v[i * 64 + k] as f64 + s * ev[i * 64 + k] as f64) - x0v[i * 64 + k] as f64).powi(2)).sum::<f64>() / 64.0;
            let want = mse / (s * s);
            assert!((got[i] as f64 - want).abs() < 1e-3 * want, "s = {s}: {} vs {want}", got[i]);
        }
    }

    #[test]
    fn gradient_matches_the_hand_computation() {
        // F = θ, a free output: L = w_c mean((c_skip x + c_out θ − x₀)²), so
        // ∂L/∂θ = 2 w_c c_out (D − x₀) / d with the clamped weight w_c; c_in plays no part.
        let _rng = crate::lock_backend_rng();
        let (_, x0, noise) = untrained_case(4, 2);
        let (x0v, ev): (Vec<f32>, Vec<f32>) = (x0.clone().into_data().to_vec().unwrap(), noise.clone().into_data().to_vec().unwrap());
        let sigmas = [0.1f64, 3.0];
        let step = 50;
        for base in [FdmBase::Edm { sigma_data: 0.5 }, FdmBase::Vp {}] {
            let o = objective(base);
            let net = FreeOutput::random(x0.dims(), 7);
            let theta = net.values();
            let input = ObjectiveInput { x0: lift(x0.clone()), noise: lift(noise.clone()), labels: None, step };
            let got = net.gradient(o.loss_at(&net, input, lift(Tensor::from_floats(sigmas.map(|s| s as f32), &Default::default()))).sum());
            let clamp = o.warmup.clamp_at(step).unwrap();
            let want: Vec<f64> = (0..theta.len())
                .map(|j| {
                    let s = sigmas[j / 64];
                    let (c_skip, c_out, weight) = hand_coefficients(base, s);
                    let x = x0v[j] as f64 + s * ev[j] as f64;
                    let denoised = c_skip * x + c_out * theta[j] as f64;
                    2.0 * weight.min(clamp) * c_out * (denoised - x0v[j] as f64) / 64.0
                })
                .collect();
            assert_gradient_matches(&got, &want);
        }
    }
}
