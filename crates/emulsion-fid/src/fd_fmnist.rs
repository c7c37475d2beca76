//! `fd_fmnist`: the Fréchet distance on the features of a small Fashion-MNIST classifier that
//! `emulsion fd-net train` trains. Inception FID of 28×28 grayscale images costs minutes on a
//! CPU (each image is upscaled to 299×299 RGB) and judges them with ImageNet features; this
//! network sees the images at their size and costs milliseconds per batch.
//!
//! The network: three `ReLU(conv 3×3, padding 1)` layers with 2×2 max pools after the first two
//! (28 → 14 → 7), a global average pool (the features), and a linear classifier head. It is
//! stored as safetensors with PyTorch's layouts (`conv{i}.weight` `[out, in, 3, 3]`,
//! `conv{i}.bias`, `head.weight` `[classes, features]`, `head.bias`) and one metadata key,
//! `emulsion_fd_net`, with how it was trained (JSON).

use std::path::Path;

use burn::module::{Module, Param};
use burn::prelude::*;
use burn::tensor::activation::relu;
use burn::tensor::module::{conv2d, max_pool2d};
use burn::tensor::ops::ConvOptions;
use burn::tensor::Distribution;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::FidError;

/// Where `emulsion fd-net train` writes the network by default, relative to the repository.
pub const DEFAULT_WEIGHTS: &str = "datasets/fd_fmnist/fd_fmnist.safetensors";

/// Side of the square grayscale images the network takes.
pub const IMAGE_SIZE: usize = 28;

/// The safetensors metadata key of the training record (one key: identical networks must
/// write identical bytes, and safetensors writes its metadata map in hash order).
pub const INFO_KEY: &str = "emulsion_fd_net";

/// The classifier's shape.
#[derive(Config, Debug)]
pub struct FdNetConfig {
    /// Output channels of the three convolutions; the last is the length of the features.
    #[config(default = "[32, 64, 128]")]
    pub channels: [usize; 3],
    /// Classes of the head.
    #[config(default = 10)]
    pub classes: usize,
}

/// `ReLU(conv 3×3(x) + b)`, padding 1.
#[derive(Module, Debug)]
pub struct Conv3x3<B: Backend> {
    pub weight: Param<Tensor<B, 4>>,
    pub bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> Conv3x3<B> {
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        relu(conv2d(x, self.weight.val(), Some(self.bias.val()), ConvOptions::new([1, 1], [1, 1], [1, 1], 1)))
    }
}

/// The feature network and its classifier head.
#[derive(Module, Debug)]
pub struct FdNet<B: Backend> {
    pub convs: Vec<Conv3x3<B>>,
    /// `[classes, features]`, as PyTorch's `nn.Linear`.
    pub head_weight: Param<Tensor<B, 2>>,
    pub head_bias: Param<Tensor<B, 1>>,
}

impl FdNetConfig {
    /// A network with He-uniform weights (Burn's and PyTorch's default bound, `√(1/fan_in)`)
    /// from the device's generator, and zero biases.
    pub fn init<B: Backend>(&self, device: &B::Device) -> FdNet<B> {
        self.init_with(device, |shape, bound| {
            let values = Tensor::<B, 1>::random([shape.iter().product::<usize>()], Distribution::Uniform(-bound, bound), device).into_data();
            TensorData::new(values.convert::<f32>().to_vec::<f32>().expect("converted to f32"), shape.to_vec())
        })
    }

    /// The network with each weight tensor `draw(shape, bound)`: values of U(−bound, bound),
    /// `bound = √(1/fan_in)`; the biases are zero.
    pub fn init_with<B: Backend>(&self, device: &B::Device, mut draw: impl FnMut(&[usize], f64) -> TensorData) -> FdNet<B> {
        let mut weight = |shape: &[usize]| {
            let fan_in: usize = shape[1..].iter().product();
            draw(shape, (1.0 / fan_in as f64).sqrt())
        };
        let zeros = |n: usize| Param::from_tensor(Tensor::zeros([n], device));
        let mut input = 1;
        let mut convs = Vec::with_capacity(self.channels.len());
        for &out in &self.channels {
            convs.push(Conv3x3 { weight: Param::from_data(weight(&[out, input, 3, 3]), device), bias: zeros(out) });
            input = out;
        }
        FdNet { convs, head_weight: Param::from_data(weight(&[self.classes, input]), device), head_bias: zeros(self.classes) }
    }
}

impl<B: Backend> FdNet<B> {
    /// Length of the features.
    pub fn dim(&self) -> usize {
        self.head_weight.dims()[1]
    }

    /// Features `[N, dim]` of `[N, 1, 28, 28]` images of pixel values in `[0, 255]`.
    pub fn features(&self, pixels: Tensor<B, 4>) -> Tensor<B, 2> {
        let mut x = pixels / 127.5 - 1.0;
        for (i, conv) in self.convs.iter().enumerate() {
            x = conv.forward(x);
            if i + 1 < self.convs.len() {
                x = max_pool2d(x, [2, 2], [2, 2], [0, 0], [1, 1], false);
            }
        }
        let [n, c, _, _] = x.dims();
        x.mean_dim(3).mean_dim(2).reshape([n, c])
    }

    /// Class logits `[N, classes]` of the same images.
    pub fn logits(&self, pixels: Tensor<B, 4>) -> Tensor<B, 2> {
        self.features(pixels).matmul(self.head_weight.val().transpose()) + self.head_bias.val().unsqueeze::<2>()
    }

    /// The network as a safetensors file, with `info` (JSON) under [`INFO_KEY`].
    pub fn encode(&self, info: &str) -> Vec<u8> {
        let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
        let mut push = |name: String, data: TensorData| {
            let shape = data.shape.to_vec();
            tensors.push((name, shape, data.convert::<f32>().to_vec().expect("f32 weights")));
        };
        for (i, conv) in self.convs.iter().enumerate() {
            push(format!("conv{i}.weight"), conv.weight.val().into_data());
            push(format!("conv{i}.bias"), conv.bias.val().into_data());
        }
        push("head.weight".into(), self.head_weight.val().into_data());
        push("head.bias".into(), self.head_bias.val().into_data());
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors.into_iter().map(|(n, s, v)| (n, s, v.iter().flat_map(|x| x.to_le_bytes()).collect())).collect();
        let views: Vec<(&str, TensorView)> = bytes.iter().map(|(n, s, b)| (n.as_str(), TensorView::new(Dtype::F32, s.clone(), b).expect("shape and bytes agree"))).collect();
        let metadata = Some([(INFO_KEY.to_string(), info.to_string())].into_iter().collect());
        safetensors::serialize(views, metadata).expect("f32 tensors serialise")
    }

    /// Reads a network [`encode`](Self::encode) wrote; returns it and its training record.
    pub fn load(path: &Path, device: &B::Device) -> Result<(Self, String), FidError> {
        if !path.exists() {
            return Err(FidError::Invalid(format!(
                "the fd_fmnist network {} does not exist: train it with `emulsion fd-net train` (or pass its path)",
                path.display()
            )));
        }
        let bytes = std::fs::read(path).map_err(|source| FidError::Io { path: path.to_path_buf(), source })?;
        let bad = |reason: String| FidError::Weights { path: path.to_path_buf(), reason };
        let file = SafeTensors::deserialize(&bytes).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let info = header.metadata().as_ref().and_then(|m| m.get(INFO_KEY)).cloned().ok_or_else(|| bad(format!("no `{INFO_KEY}` metadata: not a network of `emulsion fd-net train`")))?;
        let tensor = |name: &str, shape: &[Option<usize>]| -> Result<TensorData, String> {
            let view = file.tensor(name).map_err(|_| format!("tensor `{name}` is missing"))?;
            if view.dtype() != Dtype::F32 {
                return Err(format!("tensor `{name}` is {:?}, expected F32", view.dtype()));
            }
            let fits = view.shape().len() == shape.len() && view.shape().iter().zip(shape).all(|(&d, want)| d > 0 && want.is_none_or(|w| w == d));
            if !fits {
                let want: Vec<String> = shape.iter().map(|d| d.map_or("_".into(), |d| d.to_string())).collect();
                return Err(format!("tensor `{name}` has shape {:?}, expected [{}]", view.shape(), want.join(", ")));
            }
            let values: Vec<f32> = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            Ok(TensorData::new(values, view.shape().to_vec()))
        };
        let mut convs = Vec::new();
        let mut input = 1;
        while file.tensor(&format!("conv{}.weight", convs.len())).is_ok() {
            let i = convs.len();
            let weight = tensor(&format!("conv{i}.weight"), &[None, Some(input), Some(3), Some(3)]).map_err(bad)?;
            let out = weight.shape[0];
            let bias = tensor(&format!("conv{i}.bias"), &[Some(out)]).map_err(bad)?;
            convs.push(Conv3x3 { weight: Param::from_data(weight, device), bias: Param::from_data(bias, device) });
            input = out;
        }
        if convs.len() != 3 {
            return Err(bad(format!("{} convolutions (`conv0.weight`, …), expected 3", convs.len())));
        }
        let head_weight = tensor("head.weight", &[None, Some(input)]).map_err(bad)?;
        let classes = head_weight.shape[0];
        let head_bias = tensor("head.bias", &[Some(classes)]).map_err(bad)?;
        let net = Self { convs, head_weight: Param::from_data(head_weight, device), head_bias: Param::from_data(head_bias, device) };
        Ok((net, info))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestBackend = burn::backend::NdArray;

    #[test]
    fn features_and_logits_have_the_configured_shapes() {
        let device = Default::default();
        let net = FdNetConfig::new().with_channels([4, 6, 8]).with_classes(3).init::<TestBackend>(&device);
        let pixels = Tensor::<TestBackend, 4>::random([5, 1, 28, 28], Distribution::Uniform(0.0, 255.0), &device);
        assert_eq!(net.features(pixels.clone()).dims(), [5, 8]);
        assert_eq!(net.logits(pixels).dims(), [5, 3]);
        assert_eq!(net.dim(), 8);
    }

    #[test]
    fn a_saved_network_loads_to_the_same_function_and_bad_files_are_named() {
        let device = Default::default();
        TestBackend::seed(&device, 3);
        let net = FdNetConfig::new().with_channels([4, 6, 8]).init::<TestBackend>(&device);
        let dir = std::env::temp_dir().join(format!("emulsion-fd-net-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("net.safetensors");
        let bytes = net.encode("{\"note\":1}");
        assert_eq!(bytes, net.encode("{\"note\":1}"), "encoding is deterministic");
        std::fs::write(&path, &bytes).unwrap();
        let (loaded, info) = FdNet::<TestBackend>::load(&path, &device).unwrap();
        assert_eq!(info, "{\"note\":1}");
        let pixels = Tensor::<TestBackend, 4>::random([2, 1, 28, 28], Distribution::Uniform(0.0, 255.0), &device);
        let a: Vec<f32> = net.logits(pixels.clone()).into_data().to_vec().unwrap();
        let b: Vec<f32> = loaded.logits(pixels).into_data().to_vec().unwrap();
        assert_eq!(a, b);

        let missing = FdNet::<TestBackend>::load(&dir.join("absent.safetensors"), &device).unwrap_err().to_string();
        assert!(missing.contains("fd-net train"), "{missing}");
        std::fs::write(&path, b"not safetensors").unwrap();
        assert!(FdNet::<TestBackend>::load(&path, &device).unwrap_err().to_string().contains("not a safetensors file"));
        // A head that does not fit the last convolution.
        let mut wrong = FdNetConfig::new().with_channels([4, 6, 8]).init::<TestBackend>(&device);
        wrong.head_weight = Param::from_tensor(Tensor::zeros([10, 7], &device));
        std::fs::write(&path, wrong.encode("{}")).unwrap();
        let e = FdNet::<TestBackend>::load(&path, &device).unwrap_err().to_string();
        assert!(e.contains("head.weight") && e.contains("[10, 7]"), "{e}");
        // Two convolutions are not the network the metric is defined on.
        let mut short = FdNetConfig::new().with_channels([4, 6, 8]).init::<TestBackend>(&device);
        short.convs.pop();
        short.head_weight = Param::from_tensor(Tensor::zeros([10, 6], &device));
        std::fs::write(&path, short.encode("{}")).unwrap();
        let e = FdNet::<TestBackend>::load(&path, &device).unwrap_err().to_string();
        assert!(e.contains("2 convolutions"), "{e}");
    }
}
