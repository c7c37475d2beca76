//! Training objectives behind one small interface: given the network, clean images and their
//! (already assigned) noise, return one loss per sample. Each objective draws its own noise
//! levels from its schedule; the training step owns everything else (noise, assignment, label
//! dropout, reduction), so new objectives plug in without touching the loop.

pub mod edm;
pub mod flow;
pub mod vp;

use burn::prelude::*;
use emulsion_models::{Precond, UNet};
use emulsion_schedule::Schedule;

use crate::config::{Config, ObjectiveKind};

pub use edm::Edm;
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
}

/// The objectives, by configuration.
#[derive(Debug, Clone)]
pub enum Objective {
    Vp(Vp),
    Edm(Edm),
    Flow(Flow),
}

impl Objective {
    pub fn from_config(config: &Config) -> Self {
        let d = &config.diffusion;
        let schedule = d.schedule();
        match d.objective {
            ObjectiveKind::Vp => Objective::Vp(Vp { schedule, target: d.target.unwrap_or_default() }),
            ObjectiveKind::Edm => Objective::Edm(Edm { schedule, sigma_data: d.sigma_data.unwrap_or(DEFAULT_SIGMA_DATA) }),
            ObjectiveKind::Flow => Objective::Flow(Flow { schedule }),
        }
    }

    /// Unreduced per-sample losses, `[N]`.
    pub fn loss<B: Backend>(&self, net: &UNet<B>, input: ObjectiveInput<B>) -> Tensor<B, 1> {
        match self {
            Objective::Vp(o) => o.loss(net, input),
            Objective::Edm(o) => o.loss(net, input),
            Objective::Flow(o) => o.loss(net, input),
        }
    }

    /// The schedule whose noise levels the objective trains on (samplers follow it too).
    pub fn schedule(&self) -> &Schedule {
        match self {
            Objective::Vp(o) => &o.schedule,
            Objective::Edm(o) => &o.schedule,
            Objective::Flow(o) => &o.schedule,
        }
    }

    /// How the trained network becomes a denoiser, for sampling.
    pub fn precond(&self) -> Precond {
        match self {
            Objective::Vp(o) => o.precond(),
            Objective::Edm(o) => o.precond(),
            Objective::Flow(o) => o.precond(),
        }
    }
}

/// EDM's `s_d` for images scaled to [−1, 1].
pub const DEFAULT_SIGMA_DATA: f64 = 0.5;

/// The mean over all but the first dimension: `[N, C, H, W]` → `[N]`.
pub(crate) fn mean_per_sample<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 1> {
    let n = x.dims()[0];
    x.reshape([n as i32, -1]).mean_dim(1).squeeze_dim(1)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::TestBackend;
    use burn::tensor::Distribution;
    use emulsion_models::UNetConfig;

    /// A one-channel 8×8 UNet, drawn after seeding the backend with `seed` (its output layer
    /// starts at ~0, so `F ≈ 0`), and `n` images in [−1, 1] with their standard normal noise.
    pub(crate) fn untrained_case(seed: u64, n: usize) -> (UNet<TestBackend>, Tensor<TestBackend, 4>, Tensor<TestBackend, 4>) {
        let device = Default::default();
        <TestBackend as Backend>::seed(&device, seed);
        let net = UNetConfig::new(8, 1)
            .with_model_channels(8)
            .with_channel_mult(vec![1])
            .with_num_blocks(1)
            .with_attn_resolutions(vec![])
            .init::<TestBackend>(&device);
        let x0 = Tensor::random([n, 1, 8, 8], Distribution::Uniform(-1.0, 1.0), &device);
        let noise = Tensor::random([n, 1, 8, 8], Distribution::Normal(0.0, 1.0), &device);
        (net, x0, noise)
    }
}
