//! Training objectives behind one small interface: given the network, clean images and their
//! (already assigned) noise, return one loss per sample. Each objective draws its own noise
//! levels from its schedule; the training step owns everything else (noise, assignment, label
//! dropout, reduction), so new objectives plug in without touching the loop.

pub mod consistency;
pub mod edm;
pub mod fdm;
pub mod flow;
pub mod vp;

use burn::prelude::*;
use emulsion_config::Invalid;
use emulsion_models::{Network, Precond};
use emulsion_schedule::process::edm_sigma_tensor;
use emulsion_schedule::Schedule;
use serde::{Deserialize, Serialize};

pub use consistency::{ConsistencyTraining, CtConfig, Curriculum, LevelChoice};
pub use edm::Edm;
pub use fdm::{Fdm, FdmConfig, LossClampWarmup};
pub use flow::Flow;
pub use vp::{Vp, VpTarget};

/// What an objective sees of a training batch.
#[derive(Debug, Clone)]
pub struct ObjectiveInput<B: Backend> {
    /// Clean images `x₀`, `[N, C, H, W]`.
    pub x0: Tensor<B, 4>,
    /// Standard normal noise paired with each image, `[N, C, H, W]`.
    pub noise: Tensor<B, 4>,
    /// Class labels (the null label where dropped), `[N]`; `None` for unconditional networks.
    pub labels: Option<Tensor<B, 1, Int>>,
    /// The 0-based optimiser step, for objectives whose recipe changes during training (FDM's
    /// clamp warm-up, the consistency curricula).
    pub step: u64,
}

/// `[diffusion.objective]`: what the network learns, as a name (`objective = "edm"`, its
/// defaults) or a table with `type` and that objective's own keys. [`ObjectiveConfig::init`]
/// puts it on the training schedule, as a Burn `Config` is initialised into its module.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self", tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ObjectiveConfig {
    /// Variance-preserving diffusion, MSE on `target`.
    Vp {
        #[serde(default)]
        target: VpTarget,
    },
    /// EDM: preconditioned denoiser, weighted MSE (Karras et al. 2022).
    Edm {
        /// The data standard deviation `s_d`.
        #[serde(default = "emulsion_models::precond::default_sigma_data")]
        sigma_data: f64,
    },
    /// Rectified flow / flow matching: MSE on the velocity `ε − x₀`.
    Flow {},
    /// Fast Diffusion Model (Wu et al. 2023) on a base preconditioning.
    Fdm(FdmConfig),
    /// Consistency training (iCT, Song & Dhariwal 2023; Gokmen et al. 2024).
    Ct(CtConfig),
}

emulsion_config::tagged_section!(ObjectiveConfig, "an objective's name (`vp`, `edm`, `flow`, `fdm` or `ct`), or a table with `type` and its keys");

impl Default for ObjectiveConfig {
    fn default() -> Self {
        ObjectiveConfig::Vp { target: VpTarget::Eps }
    }
}

impl ObjectiveConfig {
    /// The name configs use.
    pub fn name(&self) -> &'static str {
        match self {
            ObjectiveConfig::Vp { .. } => "vp",
            ObjectiveConfig::Edm { .. } => "edm",
            ObjectiveConfig::Flow {} => "flow",
            ObjectiveConfig::Fdm(_) => "fdm",
            ObjectiveConfig::Ct(_) => "ct",
        }
    }

    /// Checks what serde cannot; keys are relative to the section.
    pub fn validate(&self) -> Result<(), Invalid> {
        match self {
            ObjectiveConfig::Vp { .. } | ObjectiveConfig::Flow {} => Ok(()),
            ObjectiveConfig::Edm { sigma_data } => emulsion_config::positive("sigma_data", *sigma_data),
            ObjectiveConfig::Fdm(fdm) => fdm.validate(),
            ObjectiveConfig::Ct(ct) => ct.validate(),
        }
    }

    /// The objective on `schedule` (the training levels) for a run of `total_steps` steps.
    pub fn init(&self, schedule: Schedule, total_steps: u64) -> Objective {
        match self {
            ObjectiveConfig::Vp { target } => Objective::Vp(Vp { schedule, target: *target }),
            ObjectiveConfig::Edm { sigma_data } => Objective::Edm(Edm { schedule, sigma_data: *sigma_data }),
            ObjectiveConfig::Flow {} => Objective::Flow(Flow { schedule }),
            ObjectiveConfig::Fdm(fdm) => Objective::Fdm(fdm.init(schedule)),
            ObjectiveConfig::Ct(ct) => Objective::Consistency(ct.init(schedule, total_steps)),
        }
    }
}

/// An objective on its schedule, ready to give losses.
#[derive(Debug, Clone)]
pub enum Objective {
    Vp(Vp),
    Edm(Edm),
    Flow(Flow),
    Fdm(Fdm),
    Consistency(ConsistencyTraining),
}

/// What a loss draws from the backend's generator outside the network, drawn by
/// [`Objective::draw`] before the forward pass: then only the network's own draws (dropout)
/// tie a forward pass to the generator.
#[derive(Debug, Clone)]
pub enum Draws<B: Backend> {
    /// Each sample's log-SNR `λ`, `[N]`.
    Lambda(Tensor<B, 1>),
    /// Each sample's adjacent levels `(s_i, s_{i+1})`, `[N]` each, and the seed of the dropout
    /// masks its two passes share (consistency training).
    Pairs { sigma: Tensor<B, 1>, sigma_next: Tensor<B, 1>, mask_seed: u64 },
}

impl Objective {
    /// Unreduced per-sample losses, `[N]`: [`Self::draw`], then [`Self::loss_given`].
    pub fn loss<B: Backend, N: Network<B>>(&self, net: &N, input: ObjectiveInput<B>) -> Tensor<B, 1> {
        let draws = self.draw(input.step, input.x0.dims()[0], &input.x0.device());
        self.loss_given(net, input, draws)
    }

    /// The noise levels of a batch of `batch` samples at step `step` (and consistency training's
    /// dropout-mask seed), from the backend's generator.
    pub fn draw<B: Backend>(&self, step: u64, batch: usize, device: &B::Device) -> Draws<B> {
        match self {
            Objective::Consistency(o) => {
                let (sigma, sigma_next) = o.draw_pairs::<B>(step, batch, device);
                Draws::Pairs { sigma, sigma_next, mask_seed: ConsistencyTraining::draw_mask_seed::<B>(device) }
            }
            _ => Draws::Lambda(self.schedule().sample_lambda::<B>(batch, device)),
        }
    }

    /// Unreduced per-sample losses, `[N]`, at the levels `draws` that [`Self::draw`] gave.
    ///
    /// # Panics
    /// If `draws` are consistency training's pairs and the objective is not, or the other way.
    pub fn loss_given<B: Backend, N: Network<B>>(&self, net: &N, input: ObjectiveInput<B>, draws: Draws<B>) -> Tensor<B, 1> {
        match (self, draws) {
            (Objective::Vp(o), Draws::Lambda(lambda)) => o.loss_at(net, input, lambda),
            (Objective::Edm(o), Draws::Lambda(lambda)) => o.loss_at(net, input, edm_sigma_tensor(lambda)),
            (Objective::Flow(o), Draws::Lambda(lambda)) => o.loss_at(net, input, edm_sigma_tensor(lambda)),
            (Objective::Fdm(o), Draws::Lambda(lambda)) => o.loss_at(net, input, edm_sigma_tensor(lambda)),
            (Objective::Consistency(o), Draws::Pairs { sigma, sigma_next, mask_seed }) => o.loss_at(net, input, sigma, sigma_next, mask_seed),
            (objective, draws) => panic!("draws {draws:?} are not those of objective {objective:?}"),
        }
    }

    /// The schedule whose noise levels the objective trains on (samplers follow it too).
    pub fn schedule(&self) -> &Schedule {
        match self {
            Objective::Vp(o) => &o.schedule,
            Objective::Edm(o) => &o.schedule,
            Objective::Flow(o) => &o.schedule,
            Objective::Fdm(o) => &o.schedule,
            Objective::Consistency(o) => &o.schedule,
        }
    }

    /// How the trained network becomes a denoiser, for sampling.
    pub fn precond(&self) -> Precond {
        match self {
            Objective::Vp(o) => o.precond(),
            Objective::Edm(o) => o.precond(),
            Objective::Flow(o) => o.precond(),
            Objective::Fdm(o) => o.precond(),
            Objective::Consistency(o) => o.precond(),
        }
    }
}

/// The mean over all but the first dimension: `[N, C, H, W]` → `[N]`.
pub(crate) fn mean_per_sample<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 1> {
    let n = x.dims()[0];
    x.reshape([n as i32, -1]).mean_dim(1).squeeze_dim(1)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{TestAutodiffBackend, TestBackend};
    use burn::module::Param;
    use burn::tensor::Distribution;
    use emulsion_models::{Network, UNet, UNetConfig};

    /// A "network" whose output is a free parameter `θ`, whatever its input: the gradient of a
    /// loss with respect to `θ` is a hand computation.
    #[derive(Module, Debug)]
    pub(crate) struct FreeOutput<B: Backend> {
        theta: Param<Tensor<B, 4>>,
    }

    impl<B: Backend> Network<B> for FreeOutput<B> {
        fn forward(&self, _x: Tensor<B, 4>, _noise_labels: Tensor<B, 1>, _class_labels: Option<Tensor<B, 1, Int>>) -> Tensor<B, 4> {
            self.theta.val()
        }
    }

    /// A "network" that returns its input `c_in x`: the loss then shows the input scale.
    #[derive(Module, Debug)]
    pub(crate) struct EchoInput<B: Backend> {
        _backend: core::marker::PhantomData<B>,
    }

    impl<B: Backend> EchoInput<B> {
        pub(crate) fn new() -> Self {
            Self { _backend: core::marker::PhantomData }
        }
    }

    impl<B: Backend> Network<B> for EchoInput<B> {
        fn forward(&self, x: Tensor<B, 4>, _noise_labels: Tensor<B, 1>, _class_labels: Option<Tensor<B, 1, Int>>) -> Tensor<B, 4> {
            x
        }
    }

    impl FreeOutput<TestAutodiffBackend> {
        /// `θ ~ N(0, 1)` of shape `dims`, drawn from `seed`.
        pub(crate) fn random(dims: [usize; 4], seed: u64) -> Self {
            let device = Default::default();
            <TestAutodiffBackend as Backend>::seed(&device, seed);
            Self { theta: Param::from_tensor(Tensor::random(dims, Distribution::Normal(0.0, 1.0), &device)) }
        }

        pub(crate) fn values(&self) -> Vec<f32> {
            self.theta.val().into_data().to_vec().unwrap()
        }

        /// `∂ loss / ∂θ`, flattened.
        pub(crate) fn gradient(&self, loss: Tensor<TestAutodiffBackend, 1>) -> Vec<f32> {
            let grads = loss.backward();
            self.theta.val().grad(&grads).expect("θ takes part in the loss").into_data().to_vec().unwrap()
        }
    }

    /// A plain tensor onto the autodiff backend (as a constant).
    pub(crate) fn lift<const D: usize>(t: Tensor<TestBackend, D>) -> Tensor<TestAutodiffBackend, D> {
        Tensor::from_data(t.into_data(), &Default::default())
    }

    /// Same direction (cosine above 1 − 1e-6) and the same length to 1e-3.
    pub(crate) fn assert_gradient_matches(got: &[f32], want: &[f64]) {
        assert_eq!(got.len(), want.len());
        let dot: f64 = got.iter().zip(want).map(|(&g, w)| g as f64 * w).sum();
        let (ng, nw) = (got.iter().map(|&g| (g as f64).powi(2)).sum::<f64>().sqrt(), want.iter().map(|w| w * w).sum::<f64>().sqrt());
        assert!(nw > 0.0, "the hand gradient is not zero");
        assert!(dot / (ng * nw) > 1.0 - 1e-6, "direction: cosine {}", dot / (ng * nw));
        assert!((ng - nw).abs() < 1e-3 * nw, "length: {ng} vs {nw}");
    }

    /// A one-channel 8×8 UNet with one level, one block and no attention.
    pub(crate) fn tiny_unet<B: Backend>(dropout: f64, device: &B::Device) -> UNet<B> {
        UNetConfig::new(8, 1)
            .with_model_channels(8)
            .with_channel_mult(vec![1])
            .with_num_blocks(1)
            .with_attn_resolutions(vec![])
            .with_dropout(dropout)
            .init::<B>(device)
    }

    /// A one-channel 8×8 UNet, drawn after seeding the backend with `seed` (its output layer
    /// starts at ~0, so `F ≈ 0`), and `n` images in [−1, 1] with their standard normal noise.
    pub(crate) fn untrained_case(seed: u64, n: usize) -> (UNet<TestBackend>, Tensor<TestBackend, 4>, Tensor<TestBackend, 4>) {
        let device = Default::default();
        <TestBackend as Backend>::seed(&device, seed);
        let net = tiny_unet(0.0, &device);
        let x0 = Tensor::random([n, 1, 8, 8], Distribution::Uniform(-1.0, 1.0), &device);
        let noise = Tensor::random([n, 1, 8, 8], Distribution::Normal(0.0, 1.0), &device);
        (net, x0, noise)
    }

    #[test]
    fn gradients_match_the_hand_computation() {
        // F = θ, a free output, d = 64 pixels: for a target y, L = mean((θ − y)²) and
        // ∂L/∂θ = 2(θ − y)/d; for EDM, L = w mean((c_skip x + c_out θ − x₀)²) and
        // ∂L/∂θ = 2 w c_out (D − x₀)/d.
        let _rng = crate::lock_backend_rng();
        let (_, x0, noise) = untrained_case(12, 2);
        let (x0v, ev): (Vec<f32>, Vec<f32>) = (x0.clone().into_data().to_vec().unwrap(), noise.clone().into_data().to_vec().unwrap());
        let sigmas = [0.3f64, 4.0];
        let device = Default::default();
        let sigma_tensor = || lift(Tensor::<TestBackend, 1>::from_floats(sigmas.map(|s| s as f32), &device));
        let schedule = Schedule::cosine(-10.0, 10.0).unwrap();
        let cases: [(&str, Objective); 5] = [
            ("vp-eps", Objective::Vp(Vp { schedule: schedule.clone(), target: VpTarget::Eps })),
            ("vp-v", Objective::Vp(Vp { schedule: schedule.clone(), target: VpTarget::V })),
            ("vp-x0", Objective::Vp(Vp { schedule: schedule.clone(), target: VpTarget::X0 })),
            ("edm", Objective::Edm(Edm { schedule: schedule.clone(), sigma_data: 0.5 })),
            ("flow", Objective::Flow(Flow { schedule })),
        ];
        for (name, objective) in cases {
            let net = FreeOutput::random(x0.dims(), 13);
            let theta = net.values();
            let input = ObjectiveInput { x0: lift(x0.clone()), noise: lift(noise.clone()), labels: None, step: 0 };
            let loss = match &objective {
                // VP takes log-SNRs: λ = −2 ln s.
                Objective::Vp(o) => o.loss_at(&net, input, sigma_tensor().log() * -2.0),
                Objective::Edm(o) => o.loss_at(&net, input, sigma_tensor()),
                Objective::Flow(o) => o.loss_at(&net, input, sigma_tensor()),
                _ => unreachable!(),
            };
            let got = net.gradient(loss.sum());
            let want: Vec<f64> = (0..theta.len())
                .map(|j| {
                    let (s, x, e, th) = (sigmas[j / 64], x0v[j] as f64, ev[j] as f64, theta[j] as f64);
                    let (alpha, sigma) = (1.0 / (1.0 + s * s).sqrt(), s / (1.0 + s * s).sqrt());
                    let target = match name {
                        "vp-eps" => e,
                        "vp-v" => alpha * e - sigma * x,
                        "vp-x0" => x,
                        "flow" => e - x,
                        _ => {
                            let (sd, xs) = (0.5, x + s * e);
                            let (c_skip, c_out, w) = (sd * sd / (s * s + sd * sd), s * sd / (s * s + sd * sd).sqrt(), (s * s + sd * sd) / (s * sd).powi(2));
                            return 2.0 * w * c_out * (c_skip * xs + c_out * th - x) / 64.0;
                        }
                    };
                    2.0 * (th - target) / 64.0
                })
                .collect();
            assert_gradient_matches(&got, &want);
        }
    }
}
