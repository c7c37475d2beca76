//! Group normalisation (Wu & He 2018): `y = γ (x − μ_g) / √(σ²_g + ε) + β` over groups of channels.

use burn::module::{Initializer, Param};
use burn::prelude::*;
use burn::tensor::activation::silu;

use crate::flex_group_norm;

/// GroupNorm with EDM's grouping: at most 32 groups of at least 4 channels.
///
/// Burn ships a GroupNorm; this one is arranged so that every broadcast is a per-row scalar
/// over a contiguous tensor (`γ` and `β` are repeated per sample first), the pattern CPU backends
/// vectorise. With Burn's `[1, C, 1, 1]` affine, Flex falls back to a scalar strided loop that
/// cost about a third of a CPU training step.
#[derive(Module, Debug)]
pub struct GroupNorm<B: Backend> {
    pub gamma: Param<Tensor<B, 1>>,
    pub beta: Param<Tensor<B, 1>>,
    #[module(skip)]
    groups: usize,
    #[module(skip)]
    epsilon: f64,
}

impl<B: Backend> GroupNorm<B> {
    /// # Panics
    /// If `channels` is 0.
    pub fn new(channels: usize, epsilon: f64, device: &B::Device) -> Self {
        assert!(channels > 0, "GroupNorm needs channels");
        let mut groups = (channels / 4).clamp(1, 32);
        while channels % groups != 0 {
            groups -= 1;
        }
        Self {
            gamma: Initializer::Ones.init([channels], device),
            beta: Initializer::Zeros.init([channels], device),
            groups,
            epsilon,
        }
    }

    pub fn groups(&self) -> usize {
        self.groups
    }

    /// # Shapes
    /// - `x`: `[N, C, H, W]`, output the same.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match flex_group_norm::group_norm(&x, &self.gamma.val(), &self.beta.val(), self.groups, self.epsilon, false) {
            Some(y) => y,
            None => self.composed(x),
        }
    }

    /// `silu(self.forward(x))`, in one pass on Burn's Flex backend.
    pub fn forward_silu(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match flex_group_norm::group_norm(&x, &self.gamma.val(), &self.beta.val(), self.groups, self.epsilon, true) {
            Some(y) => y,
            None => silu(self.composed(x)),
        }
    }

    /// The normalisation from Burn's ops, for every backend.
    pub(crate) fn composed(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [n, c, h, w] = x.dims();
        let grouped = x.reshape([n, self.groups, c / self.groups * h * w]);
        let centered = grouped.clone() - grouped.mean_dim(2);
        let std = centered.clone().square().mean_dim(2).add_scalar(self.epsilon).sqrt();
        let normalized = (centered / std).reshape([n, c, h * w]);
        let per_sample = |p: &Param<Tensor<B, 1>>| p.val().unsqueeze_dim::<2>(0).repeat_dim(0, n).unsqueeze_dim::<3>(2);
        (normalized * per_sample(&self.gamma) + per_sample(&self.beta)).reshape([n, c, h, w])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;
    use burn::nn::GroupNormConfig;
    use burn::tensor::Distribution;

    #[test]
    fn matches_burns_group_norm() {
        let device = Default::default();
        let x = Tensor::<TestBackend, 4>::random([3, 16, 5, 4], Distribution::Normal(0.5, 2.0), &device);
        let mut ours = GroupNorm::new(16, 1e-6, &device);
        ours.gamma = Param::from_tensor(Tensor::random([16], Distribution::Default, &device));
        ours.beta = Param::from_tensor(Tensor::random([16], Distribution::Default, &device));
        let mut theirs = GroupNormConfig::new(4, 16).with_epsilon(1e-6).init::<TestBackend>(&device);
        theirs.gamma = Some(ours.gamma.clone());
        theirs.beta = Some(ours.beta.clone());
        assert_eq!(ours.groups(), 4);
        let diff = (ours.forward(x.clone()) - theirs.forward(x)).abs().max().into_scalar();
        assert!(diff < 1e-5, "max difference {diff}");
    }

    #[test]
    fn grouping_follows_edm() {
        let device = Default::default();
        let groups = |c| GroupNorm::<TestBackend>::new(c, 1e-6, &device).groups();
        assert_eq!((groups(4), groups(32), groups(128), groups(256), groups(8)), (1, 8, 32, 32, 2));
    }
}
