//! A small MLP `F(x, c_noise)` for low-dimensional data such as 2-D toy distributions: it takes
//! `[N, C, 1, 1]` "images", so every preconditioning, objective and sampler runs on it unchanged
//! and can be trained in seconds on a CPU.

use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::silu;

use crate::embedding::{NoiseEmbedding, NoiseFeatures};
use crate::Network;

#[derive(Config, Debug)]
pub struct MlpConfig {
    /// Data dimensions `C` (the input is `[N, C, 1, 1]`).
    pub channels: usize,
    #[config(default = 128)]
    pub hidden: usize,
    /// Hidden layers after the first.
    #[config(default = 2)]
    pub depth: usize,
    /// Sinusoidal features of the noise label (DDPM++'s embedding), even and at least 4.
    #[config(default = 16)]
    pub noise_channels: usize,
}

#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    input: Linear<B>,
    input_norm: LayerNorm<B>,
    hidden: Vec<Linear<B>>,
    output: Linear<B>,
    #[module(skip)]
    noise_features: NoiseFeatures,
}

impl MlpConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> Mlp<B> {
        Mlp {
            input: LinearConfig::new(self.channels + self.noise_channels, self.hidden).init(device),
            input_norm: LayerNormConfig::new(self.hidden).init(device),
            hidden: (0..self.depth).map(|_| LinearConfig::new(self.hidden, self.hidden).init(device)).collect(),
            output: LinearConfig::new(self.hidden, self.channels).init(device),
            noise_features: NoiseFeatures::new(NoiseEmbedding::Positional, self.noise_channels),
        }
    }
}

impl<B: Backend> Network<B> for Mlp<B> {
    /// `[x, features(c_noise)]` through a layer-normalised first layer (scale-robust, as the
    /// UNet's group norms are: FDM feeds unnormalised inputs) and SiLU layers; class labels are
    /// not supported.
    fn forward(&self, x: Tensor<B, 4>, noise_labels: Tensor<B, 1>, _class_labels: Option<Tensor<B, 1, Int>>) -> Tensor<B, 4> {
        let [n, channels, height, width] = x.dims();
        assert!(height == 1 && width == 1, "the MLP takes [N, C, 1, 1] inputs, got {:?}", x.dims());
        let features = Tensor::cat(vec![x.reshape([n, channels]), self.noise_features.forward(noise_labels)], 1);
        let mut h = silu(self.input_norm.forward(self.input.forward(features)));
        for layer in &self.hidden {
            h = silu(layer.forward(h));
        }
        self.output.forward(h).reshape([n, channels, 1, 1])
    }
}
