//! The `[sample]` section: which sampler, how many levels spaced how, and its options.

use emulsion_config::{at_least, positive, Invalid};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SampleConfig {
    pub sampler: SamplerKind,
    /// Denoiser evaluations per image.
    pub steps: usize,
    /// DDIM's η: 0 is deterministic, 1 is ancestral (DDPM-like).
    pub eta: f64,
    /// Images in each periodic sample grid.
    pub n: usize,
    /// Seed of the sampling noise, fixed so grids are comparable across steps.
    pub seed: u64,
    /// Classifier-free guidance scale (conditional models); 1 is plain conditional sampling.
    pub guidance: f64,
    /// Clamp each denoised estimate to the data range [-1, 1], as DDPM and DDIM do.
    pub clip_denoised: bool,
    /// Where the sampler's noise levels sit between `diffusion.lambda_max` and `lambda_min`.
    pub spacing: Spacing,
    /// `ρ` of the `karras` spacing.
    pub rho: f64,
}

impl Default for SampleConfig {
    fn default() -> Self {
        Self {
            sampler: SamplerKind::Ddim,
            steps: 50,
            eta: 0.0,
            n: 64,
            seed: 0,
            guidance: 1.0,
            clip_denoised: true,
            spacing: Spacing::Cosine,
            rho: 7.0,
        }
    }
}

impl SampleConfig {
    /// Checks what the types cannot; keys are relative to the section.
    pub fn validate(&self) -> Result<(), Invalid> {
        at_least("steps", self.steps, 1)?;
        at_least("n", self.n, 1)?;
        if !(self.eta >= 0.0) {
            return Err(Invalid::new("eta", format!("must be non-negative, got {}", self.eta)));
        }
        positive("rho", self.rho)?;
        if !(self.guidance.is_finite() && self.guidance >= 0.0) {
            return Err(Invalid::new("guidance", format!("must be non-negative, got {}", self.guidance)));
        }
        Ok(())
    }
}

/// The discretisation samplers walk. It is separate from the training schedule because a
/// training density such as Laplace concentrates levels where learning matters, not where a
/// sampler needs its steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Spacing {
    /// Evenly spaced in `t` of the cosine schedule (with `diffusion.shift`).
    #[default]
    Cosine,
    /// Evenly spaced in `t` of the training schedule (DDIM's usual choice for DDPM schedules).
    Schedule,
    /// Evenly spaced in `s^{1/ρ}` (EDM).
    Karras,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum), value(rename_all = "lowercase"))]
#[serde(rename_all = "lowercase")]
pub enum SamplerKind {
    /// DDIM (Song et al. 2021) with configurable η.
    #[default]
    Ddim,
    /// DDPM ancestral sampling (Ho et al. 2020).
    Ddpm,
    /// Euler on the probability-flow ODE.
    Euler,
    /// EDM's 2nd-order Heun sampler (Karras et al. 2022, Algorithm 1).
    Heun,
    /// DPM-Solver++(2M) (Lu et al. 2022).
    #[serde(rename = "dpmpp_2m")]
    #[cfg_attr(feature = "clap", value(name = "dpmpp_2m"))]
    Dpmpp2m,
    /// Consistency-model sampling (Song et al. 2023): `steps` evaluations of `f`, for `ct`.
    Consistency,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_bad_value_names_its_key() {
        assert!(SampleConfig::default().validate().is_ok());
        for (bad, key) in [
            (SampleConfig { steps: 0, ..Default::default() }, "steps"),
            (SampleConfig { n: 0, ..Default::default() }, "n"),
            (SampleConfig { eta: -0.1, ..Default::default() }, "eta"),
            (SampleConfig { eta: f64::NAN, ..Default::default() }, "eta"),
            (SampleConfig { rho: 0.0, ..Default::default() }, "rho"),
            (SampleConfig { guidance: f64::INFINITY, ..Default::default() }, "guidance"),
        ] {
            assert_eq!(bad.validate().unwrap_err().key, key);
        }
    }
}
