//! Preconditioning (Karras et al. 2022, Table 1): the denoiser
//! `D(x; s) = c_skip(s) x + c_out(s) F(c_in(s) x, c_noise(s))` around a raw network `F`,
//! with `x = x₀ + s ε` in the EDM (variance-exploding) coordinates every sampler uses.

use burn::prelude::*;

use crate::fdm::{FdmBase, FdmScale};
use crate::Network;

/// EDM's data standard deviation `s_d` for images scaled to [−1, 1].
pub const DEFAULT_SIGMA_DATA: f64 = 0.5;

/// [`DEFAULT_SIGMA_DATA`], for serde defaults.
pub fn default_sigma_data() -> f64 {
    DEFAULT_SIGMA_DATA
}

/// The preconditioning that turns a raw network into a denoiser: what the network predicts.
/// All are written in EDM coordinates `x = x₀ + s ε`; the VP sample is `x_t = x / √(1 + s²)`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Precond {
    /// VP, `F ≈ ε`: `D = x − s F`, `c_in = 1/√(s² + 1)`.
    #[default]
    Vp,
    /// VP, `F ≈ v = α ε − σ x₀`: `D = x/(s² + 1) − s F/√(s² + 1)`, `c_in = 1/√(s² + 1)`.
    VpV,
    /// VP, `F ≈ x₀`: `D = F`, `c_in = 1/√(s² + 1)`.
    VpX0,
    /// EDM (Karras et al. 2022, Table 1): `c_skip = s_d²/(s² + s_d²)`,
    /// `c_out = s s_d/√(s² + s_d²)`, `c_in = 1/√(s² + s_d²)`.
    Edm { sigma_data: f64 },
    /// Rectified flow, `F ≈ ε − x₀` at `x_t = (1 − t) x₀ + t ε`, `t = s/(1 + s)`:
    /// `D = x_t − t F`, i.e. `c_skip = c_in = 1/(1 + s)`, `c_out = −s/(1 + s)`.
    Flow,
    /// VE, `F ≈ −ε`: `D = x + s F`, `c_in = 1` (FDM's VE base).
    Ve,
    /// FDM (Wu et al. 2023): the base's `c_skip`, `c_out`, with `c_in = e^{−mB}(1 + mB)`.
    Fdm { base: FdmBase, scale: FdmScale },
    /// Consistency model (Song et al. 2023), `f(x, s_min) = x` exactly:
    /// `c_skip = s_d²/((s − s_min)² + s_d²)`, `c_out = (s − s_min) s_d/√(s² + s_d²)`,
    /// `c_in = 1/√(s² + s_d²)`.
    Consistency { sigma_data: f64, sigma_min: f64 },
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
        let vp_in = || (sigma.clone().powf_scalar(2.0) + 1.0).sqrt().recip();
        match *self {
            Precond::Vp => Scalings { c_skip: sigma.ones_like(), c_out: -sigma.clone(), c_in: vp_in(), c_noise },
            Precond::VpV => Scalings {
                c_skip: (sigma.clone().powf_scalar(2.0) + 1.0).recip(),
                c_out: -sigma.clone() * vp_in(),
                c_in: vp_in(),
                c_noise,
            },
            Precond::VpX0 => Scalings { c_skip: sigma.zeros_like(), c_out: sigma.ones_like(), c_in: vp_in(), c_noise },
            Precond::Edm { sigma_data } => {
                let total = sigma.clone().powf_scalar(2.0) + sigma_data * sigma_data;
                Scalings {
                    c_skip: total.clone().recip() * (sigma_data * sigma_data),
                    c_out: sigma.clone() * sigma_data / total.clone().sqrt(),
                    c_in: total.sqrt().recip(),
                    c_noise,
                }
            }
            Precond::Flow => {
                let shrink = (sigma.clone() + 1.0).recip();
                Scalings { c_skip: shrink.clone(), c_out: -sigma.clone() * shrink.clone(), c_in: shrink, c_noise }
            }
            Precond::Ve => Scalings { c_skip: sigma.ones_like(), c_out: sigma.clone(), c_in: sigma.ones_like(), c_noise },
            Precond::Fdm { base, scale } => Scalings { c_in: scale.scale_tensor(sigma.clone()), ..base.precond().scalings(sigma) },
            Precond::Consistency { sigma_data, sigma_min } => {
                let sd2 = sigma_data * sigma_data;
                let above_min = sigma.clone() - sigma_min;
                let edm = Precond::Edm { sigma_data }.scalings(sigma);
                Scalings {
                    c_skip: (above_min.clone().powf_scalar(2.0) + sd2).recip() * sd2,
                    c_out: above_min * edm.c_in.clone() * sigma_data,
                    ..edm
                }
            }
        }
    }

    /// `F(c_in x, c_noise)` and the scalings it used.
    ///
    /// # Shapes
    /// - `x`: `[N, C, H, W]`, `sigma`: `[N]`, `labels`: `[N]`
    pub fn raw_output<B: Backend, N: Network<B>>(
        &self,
        net: &N,
        x: Tensor<B, 4>,
        sigma: Tensor<B, 1>,
        labels: Option<Tensor<B, 1, Int>>,
    ) -> (Tensor<B, 4>, Scalings<B>) {
        let scalings = self.scalings(sigma);
        let f = net.forward(x * per_sample(scalings.c_in.clone()), scalings.c_noise.clone(), labels);
        (f, scalings)
    }

    /// `D(x; s) = c_skip x + c_out F(c_in x, c_noise)`.
    pub fn denoise<B: Backend, N: Network<B>>(
        &self,
        net: &N,
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
    fn every_preconditioning_matches_its_formula_and_recovers_x0_from_its_target() {
        let sigmas = [0.002f64, 0.5, 1.0, 80.0];
        let v = |t: Tensor<TestBackend, 1>| t.into_data().to_vec::<f32>().unwrap();
        let sd = 0.5;
        let fdm = FdmScale::default();
        let cm_min = 0.001;
        for precond in [
            Precond::Vp,
            Precond::VpV,
            Precond::VpX0,
            Precond::Edm { sigma_data: sd },
            Precond::Flow,
            Precond::Ve,
            Precond::Fdm { base: FdmBase::Edm { sigma_data: sd }, scale: fdm },
            Precond::Fdm { base: FdmBase::Vp {}, scale: fdm },
            Precond::Fdm { base: FdmBase::Ve {}, scale: FdmScale { multiplier: 1.0, ..fdm } },
            Precond::Consistency { sigma_data: sd, sigma_min: cm_min },
        ] {
            let s = precond.scalings(Tensor::<TestBackend, 1>::from_floats(sigmas.map(|x| x as f32), &Default::default()));
            for (i, &sigma) in sigmas.iter().enumerate() {
                let (alpha, sig) = (1.0 / (1.0 + sigma * sigma).sqrt(), sigma / (1.0 + sigma * sigma).sqrt());
                let want = match precond {
                    Precond::Vp => [1.0, -sigma, alpha],
                    Precond::VpV => [alpha * alpha, -sig, alpha],
                    Precond::VpX0 => [0.0, 1.0, alpha],
                    Precond::Edm { .. } => [sd * sd / (sigma * sigma + sd * sd), sigma * sd / (sigma * sigma + sd * sd).sqrt(), 1.0 / (sigma * sigma + sd * sd).sqrt()],
                    Precond::Flow => [1.0 / (1.0 + sigma), -sigma / (1.0 + sigma), 1.0 / (1.0 + sigma)],
                    Precond::Ve => [1.0, sigma, 1.0],
                    // sail-sg/FDM: the base's c_skip and c_out, c_in = e^{-mB}(1 + mB).
                    Precond::Fdm { base: FdmBase::Edm { .. }, scale } => [sd * sd / (sigma * sigma + sd * sd), sigma * sd / (sigma * sigma + sd * sd).sqrt(), scale.scale(sigma)],
                    Precond::Fdm { base: FdmBase::Vp {}, scale } => [1.0, -sigma, scale.scale(sigma)],
                    Precond::Fdm { base: FdmBase::Ve {}, scale } => [1.0, sigma, scale.scale(sigma)],
                    Precond::Consistency { .. } => {
                        let above = sigma - cm_min;
                        [sd * sd / (above * above + sd * sd), above * sd / (sigma * sigma + sd * sd).sqrt(), 1.0 / (sigma * sigma + sd * sd).sqrt()]
                    }
                };
                let got = [v(s.c_skip.clone())[i] as f64, v(s.c_out.clone())[i] as f64, v(s.c_in.clone())[i] as f64];
                for (g, w) in got.iter().zip(want) {
                    assert!((g - w).abs() <= 2e-6 * w.abs().max(1.0), "{precond:?} at s = {sigma}: {got:?} vs {want:?}");
                }
                // Fed its exact target, the denoiser returns x₀: x₀ = 0.3, ε = −1.2.
                let (x0, eps) = (0.3, -1.2);
                let x = x0 + sigma * eps;
                let target = match precond {
                    Precond::Vp => eps,
                    Precond::VpV => alpha * eps - sig * x0,
                    Precond::VpX0 => x0,
                    Precond::Edm { .. } | Precond::Fdm { base: FdmBase::Edm { .. }, .. } | Precond::Consistency { .. } => (x0 - want[0] * x) / want[1],
                    Precond::Flow => eps - x0,
                    Precond::Fdm { base: FdmBase::Vp {}, .. } => eps,
                    Precond::Ve | Precond::Fdm { base: FdmBase::Ve {}, .. } => -eps,
                };
                let d = got[0] * x + got[1] * target;
                assert!((d - x0).abs() < 1e-4 * (1.0 + sigma), "{precond:?} at s = {sigma}: D = {d}");
            }
        }
    }

    #[test]
    fn consistency_model_is_the_identity_at_sigma_min_exactly() {
        use crate::MlpConfig;
        use burn::tensor::Distribution;
        let device = Default::default();
        // The MLP's output is far from 0 at initialisation, so c_out F does not vanish by itself.
        let net = MlpConfig::new(2).init::<TestBackend>(&device);
        let x = Tensor::<TestBackend, 4>::random([3, 2, 1, 1], Distribution::Normal(0.0, 3.0), &device);
        let precond = Precond::Consistency { sigma_data: 0.5, sigma_min: 0.002 };
        let at = |sigma: f64| {
            let d = precond.denoise(&net, x.clone(), Tensor::full([3], sigma, &device), None);
            (d - x.clone()).abs().max().into_scalar()
        };
        assert_eq!(at(0.002), 0.0, "f(x, s_min) = x bit for bit");
        // Just above s_min the network's output is already mixed in, so the check can fail.
        assert!(at(0.5) > 0.0);
    }

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
