//! Fast Diffusion Model (Wu et al. 2023, arXiv 2306.06991; sail-sg/FDM): momentum diffusion as a
//! critically damped oscillator. As the authors implement it (`FDM_*Precond` in their
//! `networks.py`), noise is still added in EDM form `x₀ + s ε`; what changes is the network's
//! input scale `c_in`, replaced by the oscillator's mean decay below. The other ingredient, the
//! loss-weight clamp warm-up, belongs to the objective (`emulsion-train`'s `objective/fdm.rs`).

use burn::tensor::{backend::Backend, Tensor};
use serde::{Deserialize, Serialize};

use crate::Precond;

/// The preconditioning whose `c_skip` and `c_out` FDM keeps: sail-sg/FDM's `FDM_EDMPrecond`,
/// `FDM_VPPrecond` and `FDM_VEPrecond`. (Their noise labels differ, `999 t` for VP and
/// `ln(s/2)` for VE; here every network sees `ln(s)/4`, a relabelling the network learns.)
///
/// As a configuration section it is a name (`base = "vp"`) or a table with `type` and, for the
/// EDM base, `sigma_data` (default 0.5).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self", tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum FdmBase {
    Edm {
        /// EDM's data standard deviation `s_d`.
        #[serde(default = "crate::precond::default_sigma_data")]
        sigma_data: f64,
    },
    Vp {},
    Ve {},
}

emulsion_config::tagged_section!(FdmBase, "an FDM base (`edm`, `vp` or `ve`), or a table with `type` and, for `edm`, `sigma_data`");

impl Default for FdmBase {
    fn default() -> Self {
        FdmBase::Edm { sigma_data: crate::precond::DEFAULT_SIGMA_DATA }
    }
}

impl FdmBase {
    pub fn precond(self) -> Precond {
        match self {
            FdmBase::Edm { sigma_data } => Precond::Edm { sigma_data },
            FdmBase::Vp {} => Precond::Vp,
            FdmBase::Ve {} => Precond::Ve,
        }
    }
}

/// The critically damped input scale `scale(s) = e^{-mB} (1 + mB)`,
/// `B = β_min τ + β_d τ² / 2`, `τ = (s - s_min) / (s_max - s_min)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FdmScale {
    pub beta_min: f64,
    pub beta_d: f64,
    /// `m` (the official CLI's 2; VE-FDM has none, i.e. 1).
    pub multiplier: f64,
    pub sigma_min: f64,
    pub sigma_max: f64,
}

impl Default for FdmScale {
    /// The official CLI defaults with EDM's noise range.
    fn default() -> Self {
        Self { beta_min: 0.1, beta_d: 19.9, multiplier: 2.0, sigma_min: 0.002, sigma_max: 80.0 }
    }
}

impl FdmScale {
    /// `mB(s)`, with `τ = (s - s_min) / (s_max - s_min)` linear in `s`.
    fn damping(&self, sigma: f64) -> f64 {
        let tau = (sigma - self.sigma_min) / (self.sigma_max - self.sigma_min);
        self.multiplier * (self.beta_min * tau + 0.5 * self.beta_d * tau * tau)
    }

    /// `scale(s) = e^{-mB} (1 + mB)`.
    pub fn scale(&self, sigma: f64) -> f64 {
        let mb = self.damping(sigma);
        (-mb).exp() * (1.0 + mb)
    }

    /// `scale(s)` element-wise on the device.
    pub fn scale_tensor<B: Backend>(&self, sigma: Tensor<B, 1>) -> Tensor<B, 1> {
        let tau = (sigma - self.sigma_min) / (self.sigma_max - self.sigma_min);
        let mb = (tau.clone() * self.beta_min + tau.powi_scalar(2) * (0.5 * self.beta_d)) * self.multiplier;
        (-mb.clone()).exp() * (mb + 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;

    #[test]
    fn scale_is_one_at_sigma_min_and_decreases() {
        let f = FdmScale::default();
        assert_eq!(f.scale(f.sigma_min), 1.0);
        let mut last = 1.0;
        for i in 1..=1000 {
            let s = f.sigma_min + (f.sigma_max - f.sigma_min) * i as f64 / 1000.0;
            let scale = f.scale(s);
            assert!(scale < last && scale > 0.0, "scale({s}) = {scale}");
            last = scale;
        }
        // At s_max: B = 0.1 + 9.95 = 10.05, mB = 20.1, scale = e^{-20.1} · 21.1.
        assert!((f.scale(f.sigma_max) - (-20.1f64).exp() * 21.1).abs() < 1e-20);
        // The official default multiplier 2 doubles B; VE-FDM's m = 1 is the same function of B.
        let ve = FdmScale { multiplier: 1.0, ..f };
        assert!((ve.scale(f.sigma_max) - (-10.05f64).exp() * 11.05).abs() < 1e-15);
    }

    #[test]
    fn device_scale_matches_the_scalar_one() {
        let f = FdmScale::default();
        let sigmas = [0.002f32, 0.1, 1.0, 5.0, 20.0];
        let got: Vec<f32> = f.scale_tensor(Tensor::<TestBackend, 1>::from_floats(sigmas, &Default::default())).into_data().to_vec().unwrap();
        for (s, g) in sigmas.iter().zip(got) {
            assert!((g as f64 - f.scale(*s as f64)).abs() < 1e-6, "scale({s})");
        }
    }
}
