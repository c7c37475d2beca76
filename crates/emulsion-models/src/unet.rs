//! The DDPM++ UNet (Song et al. 2021) in the layout of EDM's `SongUNet` (Karras et al. 2022):
//! residual blocks of GroupNorm, SiLU and 3x3 convolutions conditioned on a noise embedding,
//! self-attention at chosen resolutions, box-filter down/up-sampling and skips scaled by √½.

use burn::module::{Initializer, Module};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::silu;
use burn::tensor::module::{attention, avg_pool2d, interpolate};
use burn::tensor::ops::{AttentionModuleOptions, InterpolateMode, InterpolateOptions};

use crate::embedding::{NoiseEmbedding, NoiseFeatures};
use crate::flex_conv::conv2d;
use crate::norm::GroupNorm;

/// √½: residual sums are scaled to keep unit variance.
const SKIP_SCALE: f64 = std::f64::consts::FRAC_1_SQRT_2;
/// EDM initialises the last layer of each residual branch to almost zero.
const INIT_ZERO_GAIN: f64 = 1e-5;
/// EDM's gain for the query/key/value projection.
const INIT_ATTN_GAIN: f64 = 0.447_213_595_499_958; // √0.2

/// Configuration of [`UNet`]. The defaults are EDM's CIFAR-10 DDPM++.
#[derive(Config, Debug)]
pub struct UNetConfig {
    /// Side of the square input images, in pixels.
    pub image_size: usize,
    /// Channels of the input and of the output.
    pub in_channels: usize,
    /// Base channel count; level `i` has `model_channels * channel_mult[i]` channels.
    #[config(default = 128)]
    pub model_channels: usize,
    /// Channel multiplier per resolution level; each level after the first halves the resolution.
    #[config(default = "vec![2, 2, 2]")]
    pub channel_mult: Vec<usize>,
    /// The embedding width is `model_channels * channel_mult_emb`.
    #[config(default = 4)]
    pub channel_mult_emb: usize,
    /// Residual blocks per level.
    #[config(default = 4)]
    pub num_blocks: usize,
    /// Resolutions (image sides) at which blocks carry self-attention.
    #[config(default = "vec![16]")]
    pub attn_resolutions: Vec<usize>,
    /// Dropout probability inside residual blocks.
    #[config(default = 0.1)]
    pub dropout: f64,
    /// Attention heads.
    #[config(default = 1)]
    pub num_heads: usize,
    /// Classes for class conditioning; 0 trains an unconditional model.
    #[config(default = 0)]
    pub num_classes: usize,
    /// Features of the noise label.
    #[config(default = "NoiseEmbedding::Positional")]
    pub embedding: NoiseEmbedding,
}

/// The DDPM++ UNet. `forward` maps noisy images, noise labels and optional class labels to an
/// output of the input's shape (the raw network `F` of the preconditioning).
#[derive(Module, Debug)]
pub struct UNet<B: Backend> {
    /// EDM's label map: a linear layer on one-hot labels scaled by √K; the null label is the
    /// zero vector, which leaves the bias alone.
    map_label: Option<Linear<B>>,
    map_layer0: Linear<B>,
    map_layer1: Linear<B>,
    conv_in: Conv2d<B>,
    encoder: Vec<UNetBlock<B>>,
    decoder: Vec<UNetBlock<B>>,
    out_norm: GroupNorm<B>,
    out_conv: Conv2d<B>,
    #[module(skip)]
    noise_features: NoiseFeatures,
    #[module(skip)]
    num_classes: usize,
}

impl UNetConfig {
    /// Checks the configuration without building anything.
    pub fn validate(&self) -> Result<(), String> {
        let levels = self.channel_mult.len();
        if levels == 0 {
            return Err("channel_mult must have at least one level".into());
        }
        if self.model_channels == 0 || self.channel_mult.contains(&0) || self.channel_mult_emb == 0 {
            return Err("model_channels, channel_mult and channel_mult_emb must be positive".into());
        }
        if self.model_channels % 2 != 0 || self.model_channels < 4 {
            return Err(format!("model_channels must be even and at least 4, got {}", self.model_channels));
        }
        if self.in_channels == 0 {
            return Err("in_channels must be at least 1".into());
        }
        let factor = 1usize << (levels - 1);
        if self.image_size == 0 || self.image_size % factor != 0 {
            return Err(format!(
                "image_size {} must be divisible by 2^(levels - 1) = {factor} for {levels} levels",
                self.image_size
            ));
        }
        if self.num_heads == 0 {
            return Err("num_heads must be at least 1".into());
        }
        for mult in &self.channel_mult {
            let channels = self.model_channels * mult;
            if channels % self.num_heads != 0 {
                return Err(format!("{channels} channels are not divisible by {} heads", self.num_heads));
            }
        }
        let resolutions: Vec<usize> = (0..levels).map(|l| self.image_size >> l).collect();
        for r in &self.attn_resolutions {
            if !resolutions.contains(r) {
                return Err(format!(
                    "attention resolution {r} is not one of the network's resolutions {resolutions:?}"
                ));
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        Ok(())
    }

    /// Builds the network.
    ///
    /// # Panics
    /// If [`UNetConfig::validate`] fails.
    pub fn init<B: Backend>(&self, device: &B::Device) -> UNet<B> {
        if let Err(message) = self.validate() {
            panic!("invalid UNet configuration: {message}");
        }
        let noise_channels = self.model_channels;
        let emb_channels = self.model_channels * self.channel_mult_emb;
        let block = |cin: usize, cout: usize, resample: Resample, attn: bool| {
            UNetBlockConfig {
                in_channels: cin,
                out_channels: cout,
                emb_channels,
                resample,
                num_heads: if attn { self.num_heads } else { 0 },
                dropout: self.dropout,
            }
            .init(device)
        };

        let mut encoder = Vec::new();
        let mut skips = vec![self.model_channels];
        let mut cout = self.model_channels;
        for (level, mult) in self.channel_mult.iter().enumerate() {
            let res = self.image_size >> level;
            if level > 0 {
                encoder.push(block(cout, cout, Resample::Down, false));
                skips.push(cout);
            }
            for _ in 0..self.num_blocks {
                let cin = cout;
                cout = self.model_channels * mult;
                encoder.push(block(cin, cout, Resample::None, self.attn_resolutions.contains(&res)));
                skips.push(cout);
            }
        }

        let mut decoder = Vec::new();
        let last = self.channel_mult.len() - 1;
        for (level, mult) in self.channel_mult.iter().enumerate().rev() {
            let res = self.image_size >> level;
            if level == last {
                decoder.push(block(cout, cout, Resample::None, true));
                decoder.push(block(cout, cout, Resample::None, false));
            } else {
                decoder.push(block(cout, cout, Resample::Up, false));
            }
            for idx in 0..=self.num_blocks {
                let cin = cout + skips.pop().expect("one skip per encoder output");
                cout = self.model_channels * mult;
                let attn = idx == self.num_blocks && self.attn_resolutions.contains(&res);
                decoder.push(block(cin, cout, Resample::None, attn));
            }
        }
        debug_assert!(skips.is_empty());

        UNet {
            map_label: (self.num_classes > 0).then(|| linear(self.num_classes, noise_channels, 1.0, device)),
            map_layer0: linear(noise_channels, emb_channels, 1.0, device),
            map_layer1: linear(emb_channels, emb_channels, 1.0, device),
            conv_in: conv(self.in_channels, self.model_channels, 3, 1.0, device),
            encoder,
            decoder,
            out_norm: group_norm(cout, device),
            out_conv: conv(cout, self.in_channels, 3, INIT_ZERO_GAIN, device),
            noise_features: NoiseFeatures::new(self.embedding, noise_channels),
            num_classes: self.num_classes,
        }
    }
}

impl<B: Backend> UNet<B> {
    /// Classes the network is conditioned on (0 when unconditional).
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Whether a forward pass draws dropout masks: Burn's dropout draws only when the backend
    /// tracks gradients and the probability is not 0.
    pub fn draws_in_forward(&self) -> bool {
        B::ad_enabled(&self.conv_in.weight.device()) && self.encoder.iter().chain(&self.decoder).any(|block| block.dropout.prob > 0.0)
    }

    /// The label index that means "no class" (classifier-free guidance), if conditional.
    pub fn null_label(&self) -> Option<usize> {
        (self.num_classes > 0).then_some(self.num_classes)
    }

    /// # Shapes
    /// - `x`: `[N, C, H, W]`
    /// - `noise_labels`: `[N]`
    /// - `class_labels`: `[N]`, values in `0..=num_classes` (`num_classes` is the null label);
    ///   ignored by an unconditional network.
    /// - output: `[N, C, H, W]`
    pub fn forward(
        &self,
        x: Tensor<B, 4>,
        noise_labels: Tensor<B, 1>,
        class_labels: Option<Tensor<B, 1, Int>>,
    ) -> Tensor<B, 4> {
        let mut emb = self.noise_features.forward(noise_labels);
        if let Some(map_label) = &self.map_label {
            let n = emb.dims()[0];
            let labels = class_labels
                .unwrap_or_else(|| Tensor::full([n], self.num_classes as i64, &emb.device()));
            let k = self.num_classes;
            let classes = Tensor::<B, 1, Int>::arange(0..k as i64, &emb.device()).reshape([1, k]).expand([n, k]);
            // The null label `k` matches no class: a zero row.
            let one_hot = labels.reshape([n, 1]).expand([n, k]).equal(classes).float() * (k as f64).sqrt();
            emb = emb + map_label.forward(one_hot);
        }
        let emb = silu(self.map_layer1.forward(silu(self.map_layer0.forward(emb))));

        let mut x = conv2d(&self.conv_in, x);
        let mut skips = vec![x.clone()];
        for block in &self.encoder {
            x = block.forward(x, emb.clone());
            skips.push(x.clone());
        }
        for block in &self.decoder {
            if x.dims()[1] != block.in_channels {
                let skip = skips.pop().expect("one skip per decoder block that concatenates");
                x = Tensor::cat(vec![x, skip], 1);
            }
            x = block.forward(x, emb.clone());
        }
        conv2d(&self.out_conv, self.out_norm.forward_silu(x))
    }
}

/// Resampling applied before a block's first convolution and on its skip path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Resample {
    None,
    /// 2x2 box filter, stride 2.
    Down,
    /// Nearest-neighbour 2x.
    Up,
}

impl Resample {
    fn apply<B: Backend>(self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match self {
            Resample::None => x,
            Resample::Down => avg_pool2d(x, [2, 2], [2, 2], [0, 0], true, false),
            Resample::Up => {
                let [_, _, h, w] = x.dims();
                interpolate(x, [2 * h, 2 * w], InterpolateOptions::new(InterpolateMode::Nearest))
            }
        }
    }
}

#[derive(Debug, Clone)]
struct UNetBlockConfig {
    in_channels: usize,
    out_channels: usize,
    emb_channels: usize,
    resample: Resample,
    /// 0 for no attention.
    num_heads: usize,
    dropout: f64,
}

impl UNetBlockConfig {
    fn init<B: Backend>(&self, device: &B::Device) -> UNetBlock<B> {
        let (cin, cout) = (self.in_channels, self.out_channels);
        let needs_skip = cin != cout || self.resample != Resample::None;
        UNetBlock {
            norm0: group_norm(cin, device),
            conv0: conv(cin, cout, 3, 1.0, device),
            affine: linear(self.emb_channels, cout, 1.0, device),
            norm1: group_norm(cout, device),
            dropout: DropoutConfig::new(self.dropout).init(),
            conv1: conv(cout, cout, 3, INIT_ZERO_GAIN, device),
            skip: needs_skip.then(|| conv(cin, cout, 1, 1.0, device)),
            attention: (self.num_heads > 0).then(|| SelfAttention {
                norm: group_norm(cout, device),
                qkv: conv(cout, 3 * cout, 1, INIT_ATTN_GAIN, device),
                proj: conv(cout, cout, 1, INIT_ZERO_GAIN, device),
                num_heads: self.num_heads,
            }),
            resample: self.resample,
            in_channels: cin,
        }
    }
}

/// A residual block: `x + conv1(dropout(silu(norm1(conv0(silu(norm0(x))) + affine(emb)))))`,
/// optionally followed by self-attention.
#[derive(Module, Debug)]
struct UNetBlock<B: Backend> {
    norm0: GroupNorm<B>,
    conv0: Conv2d<B>,
    affine: Linear<B>,
    norm1: GroupNorm<B>,
    dropout: Dropout,
    conv1: Conv2d<B>,
    skip: Option<Conv2d<B>>,
    attention: Option<SelfAttention<B>>,
    #[module(skip)]
    resample: Resample,
    #[module(skip)]
    in_channels: usize,
}

impl<B: Backend> UNetBlock<B> {
    fn forward(&self, x: Tensor<B, 4>, emb: Tensor<B, 2>) -> Tensor<B, 4> {
        let h = conv2d(&self.conv0, self.resample.apply(self.norm0.forward_silu(x.clone())));
        let shift: Tensor<B, 4> = self.affine.forward(emb).unsqueeze_dims(&[2, 3]);
        let h = self.norm1.forward_silu(h + shift);
        let h = conv2d(&self.conv1, self.dropout.forward(h));
        let skip = match &self.skip {
            Some(conv) => conv2d(conv, self.resample.apply(x)),
            None => x,
        };
        let x = (h + skip) * SKIP_SCALE;
        match &self.attention {
            Some(attn) => attn.forward(x),
            None => x,
        }
    }
}

/// Multi-head self-attention over the pixels of a feature map, with a residual connection.
#[derive(Module, Debug)]
struct SelfAttention<B: Backend> {
    norm: GroupNorm<B>,
    qkv: Conv2d<B>,
    proj: Conv2d<B>,
    #[module(skip)]
    num_heads: usize,
}

impl<B: Backend> SelfAttention<B> {
    /// `x + proj(softmax(q kᵀ / √d) v)`, scaled by √½.
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [n, c, h, w] = x.dims();
        let (heads, d) = (self.num_heads, c / self.num_heads);
        // [N, 3C, H, W] -> [3, N, heads, H*W, d]
        let qkv = conv2d(&self.qkv, self.norm.forward(x.clone()))
            .reshape([n, 3, heads, d, h * w])
            .permute([1, 0, 2, 4, 3]);
        let part = |i: usize| -> Tensor<B, 4> {
            qkv.clone().narrow(0, i, 1).reshape([n, heads, h * w, d])
        };
        let a = attention(part(0), part(1), part(2), None, None, AttentionModuleOptions::default());
        // [N, heads, H*W, d] -> [N, C, H, W]
        let a = a.swap_dims(2, 3).reshape([n, c, h, w]);
        (conv2d(&self.proj, a) + x) * SKIP_SCALE
    }
}

/// GroupNorm with EDM's grouping and eps 1e-6.
fn group_norm<B: Backend>(channels: usize, device: &B::Device) -> GroupNorm<B> {
    GroupNorm::new(channels, 1e-6, device)
}

/// A `k`x`k` convolution with "same" padding, Xavier-uniform weights times `gain`, zero bias.
fn conv<B: Backend>(cin: usize, cout: usize, k: usize, gain: f64, device: &B::Device) -> Conv2d<B> {
    let p = k / 2;
    let mut conv = Conv2dConfig::new([cin, cout], [k, k])
        .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
        .with_initializer(Initializer::XavierUniform { gain })
        .init(device);
    conv.bias = Some(Initializer::Zeros.init([cout], device));
    conv
}

/// A linear layer with Xavier-uniform weights times `gain` and zero bias.
fn linear<B: Backend>(din: usize, dout: usize, gain: f64, device: &B::Device) -> Linear<B> {
    let mut linear = LinearConfig::new(din, dout)
        .with_initializer(Initializer::XavierUniform { gain })
        .init(device);
    linear.bias = Some(Initializer::Zeros.init([dout], device));
    linear
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{TestAutodiffBackend, TestBackend};

    fn tiny(num_classes: usize) -> UNetConfig {
        UNetConfig::new(8, 3)
            .with_model_channels(8)
            .with_channel_mult(vec![1, 2])
            .with_num_blocks(1)
            .with_attn_resolutions(vec![4])
            .with_num_heads(2)
            .with_dropout(0.0)
            .with_num_classes(num_classes)
    }

    #[test]
    fn output_has_the_input_shape() {
        let device = Default::default();
        let net = tiny(0).init::<TestBackend>(&device);
        let x = Tensor::<TestBackend, 4>::random([2, 3, 8, 8], burn::tensor::Distribution::Default, &device);
        let y = net.forward(x, Tensor::from_floats([0.1, -0.3], &device), None);
        assert_eq!(y.dims(), [2, 3, 8, 8]);
    }

    #[test]
    fn class_labels_change_the_output_and_null_is_the_default() {
        let device = Default::default();
        // EDM zero-initialises the last layer of every path, so at init a label moves the output
        // by ~1e-10: below f32 resolution. Give every weight a fixed non-trivial value instead.
        let net = tiny(3).init::<TestBackend>(&device).map(&mut FixedWeights);
        let x = Tensor::<TestBackend, 4>::ones([1, 3, 8, 8], &device);
        let noise = || Tensor::from_floats([0.2], &device);
        let y0 = net.forward(x.clone(), noise(), Some(Tensor::from_ints([0], &device)));
        let y1 = net.forward(x.clone(), noise(), Some(Tensor::from_ints([1], &device)));
        let null = net.forward(x.clone(), noise(), Some(Tensor::from_ints([3], &device)));
        let default = net.forward(x, noise(), None);
        assert!((y0 - y1).abs().max().into_scalar() > 1e-6);
        assert_eq!(null.into_data(), default.into_data());
        assert_eq!(net.null_label(), Some(3));
    }

    /// Replaces every float parameter with a fixed, well-scaled pseudo-random pattern, without
    /// touching the backend's global RNG.
    struct FixedWeights;

    impl burn::module::ModuleMapper<TestBackend> for FixedWeights {
        fn map_float<const D: usize>(
            &mut self,
            param: burn::module::Param<Tensor<TestBackend, D>>,
        ) -> burn::module::Param<Tensor<TestBackend, D>> {
            let (id, tensor, mapper) = param.consume();
            let dims = tensor.dims();
            let fan_in: usize = dims.iter().skip(1).product::<usize>().max(1);
            let scale = (fan_in as f64).recip().sqrt() as f32;
            let count: usize = dims.iter().product();
            let values: Vec<f32> = (0..count).map(|i| scale * (i as f32 * 12.9898).sin()).collect();
            let tensor = Tensor::from_data(burn::tensor::TensorData::new(values, dims), &tensor.device());
            burn::module::Param::from_mapped_value(id, tensor, mapper)
        }
    }

    #[test]
    fn gradients_reach_every_parameter() {
        let device = Default::default();
        let net = tiny(3).init::<TestAutodiffBackend>(&device);
        let x = Tensor::<TestAutodiffBackend, 4>::random([2, 3, 8, 8], burn::tensor::Distribution::Default, &device);
        let loss = net
            .forward(x, Tensor::from_floats([0.0, 1.0], &device), Some(Tensor::from_ints([0, 2], &device)))
            .powf_scalar(2.0)
            .mean();
        let grads = loss.backward();
        let params = burn::module::list_param_ids(&net);
        let grads = burn::optim::GradientsParams::from_grads(grads, &net);
        // The near-zero initial output layers scale gradients down but do not block them.
        assert_eq!(grads.len(), params.len());
    }

    #[test]
    fn edm_cifar_size_is_within_one_percent_of_edms_55_7m() {
        let count = UNetConfig::new(32, 3).with_dropout(0.13).init::<TestBackend>(&Default::default()).num_params();
        let rel = (count as f64 - 55.7e6).abs() / 55.7e6;
        eprintln!("EDM CIFAR-10 DDPM++ size: {count} parameters");
        assert!(rel < 0.01, "{count} parameters vs EDM's 55.7M");
    }

    #[test]
    fn upsampling_repeats_each_pixel_and_downsampling_averages() {
        let device = Default::default();
        let x = Tensor::<TestBackend, 1>::from_floats([1.0, 2.0, 3.0, 4.0], &device).reshape([1, 1, 2, 2]);
        let up: Vec<f32> = Resample::Up.apply(x.clone()).into_data().to_vec().unwrap();
        assert_eq!(up, vec![1., 1., 2., 2., 1., 1., 2., 2., 3., 3., 4., 4., 3., 3., 4., 4.]);
        let down: Vec<f32> = Resample::Down.apply(x).into_data().to_vec().unwrap();
        assert_eq!(down, vec![2.5]);
    }

    #[test]
    fn invalid_configurations_are_rejected_with_a_reason() {
        assert!(UNetConfig { image_size: 7, ..tiny(0) }.validate().unwrap_err().contains("divisible"));
        assert!(tiny(0).with_attn_resolutions(vec![5]).validate().unwrap_err().contains("attention"));
        assert!(tiny(0).with_num_heads(3).validate().unwrap_err().contains("heads"));
    }
}
