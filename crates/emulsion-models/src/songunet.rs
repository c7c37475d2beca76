//! EDM's `SongUNet` state dict (NVlabs/edm `training/networks.py`): the names, PyTorch layouts
//! and buffers under which a [`UNet`]'s weights load into EDM's network built with the same
//! hyperparameters (`load_state_dict(..., strict=True)`), and back.
//!
//! The layers are EDM's one for one; three layouts differ. Burn stores a linear weight as
//! `[in, out]`, PyTorch as `[out, in]`. Our attention splits `qkv`'s channels as
//! `[3, heads, d]`, EDM as `[heads, d, 3]`. And EDM's resampling convolutions carry their box
//! filter as a buffer (`resample_filter`), which Burn's pooling does not need.

use std::collections::BTreeMap;

use burn::module::ParamId;
use burn::prelude::*;
use burn::tensor::TensorData;
use burn_store::{ModuleSnapshot, TensorSnapshot};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::embedding::NoiseEmbedding;
use crate::unet::{UNet, UNetConfig};

/// Tensors by EDM name, `f32` in PyTorch's layouts.
pub type StateDict = BTreeMap<String, TensorData>;

/// The box filter of EDM's `resample_filter=[1,1]`, `[1, 1, 2, 2]`.
const BOX_FILTER: [f32; 4] = [0.25; 4];

/// Why a state dict does not fit a network.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum StateDictError {
    #[error("`{name}` is missing")]
    Missing { name: String },
    #[error("`{name}` is not a tensor of this SongUNet")]
    Unexpected { name: String },
    #[error("`{name}` has shape {found:?}, this network's is {expected:?}")]
    Shape { name: String, found: Vec<usize>, expected: Vec<usize> },
    #[error("`{name}`: {reason}")]
    Value { name: String, reason: String },
    #[error("not a safetensors file of floating-point tensors: {0}")]
    File(String),
}

/// How a tensor's layout differs between Burn and EDM.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Layout {
    Same,
    /// A linear weight: `[in, out]` in Burn, `[out, in]` in PyTorch.
    Transposed,
    /// `qkv`'s output channels: `[3, heads, d]` here, `[heads, d, 3]` in EDM.
    Qkv { heads: usize },
}

/// One tensor of the network: its Burn path, its EDM name and how its layout differs.
#[derive(Debug, Clone)]
struct Entry {
    path: String,
    name: String,
    layout: Layout,
}

/// EDM's names of the encoder and decoder blocks, in the order [`UNetConfig::init`] builds them.
fn block_names(config: &UNetConfig) -> (Vec<String>, Vec<String>) {
    let res = |level: usize| {
        let r = config.image_size >> level;
        format!("{r}x{r}")
    };
    let mut encoder = Vec::new();
    for level in 0..config.channel_mult.len() {
        if level > 0 {
            encoder.push(format!("{}_down", res(level)));
        }
        encoder.extend((0..config.num_blocks).map(|idx| format!("{}_block{idx}", res(level))));
    }
    let mut decoder = Vec::new();
    let last = config.channel_mult.len() - 1;
    for level in (0..=last).rev() {
        if level == last {
            decoder.push(format!("{}_in0", res(level)));
            decoder.push(format!("{}_in1", res(level)));
        } else {
            decoder.push(format!("{}_up", res(level)));
        }
        decoder.extend((0..=config.num_blocks).map(|idx| format!("{}_block{idx}", res(level))));
    }
    (encoder, decoder)
}

/// The EDM name of a block's tensor `rest` (`conv0.weight`, `attention.qkv.bias`, …).
fn block_tensor(rest: &str, heads: usize) -> (String, Layout) {
    let (layer, param) = rest.rsplit_once('.').unwrap_or(("", rest));
    let layer = layer.strip_prefix("attention.").map(|l| if l == "norm" { "norm2" } else { l }).unwrap_or(layer);
    let param = match param {
        "gamma" => "weight",
        "beta" => "bias",
        p => p,
    };
    let layout = match layer {
        "affine" if param == "weight" => Layout::Transposed,
        "qkv" => Layout::Qkv { heads },
        _ => Layout::Same,
    };
    (format!("{layer}.{param}"), layout)
}

/// Every tensor of `net` with its EDM name.
fn entries<B: Backend>(net: &UNet<B>, config: &UNetConfig) -> Vec<Entry> {
    let (encoder, decoder) = block_names(config);
    let top = format!("{0}x{0}", config.image_size);
    net.collect(None, None, false)
        .into_iter()
        .map(|snapshot| {
            let path = snapshot.full_path();
            let parts: Vec<&str> = path.splitn(3, '.').collect();
            let (name, layout) = match parts.as_slice() {
                ["map_layer0" | "map_layer1" | "map_label", "weight"] => (path.clone(), Layout::Transposed),
                ["map_layer0" | "map_layer1" | "map_label", _] => (path.clone(), Layout::Same),
                ["conv_in", param] => (format!("enc.{top}_conv.{param}"), Layout::Same),
                ["out_conv", param] => (format!("dec.{top}_aux_conv.{param}"), Layout::Same),
                ["out_norm", param] => (format!("dec.{top}_aux_norm.{}", if *param == "gamma" { "weight" } else { "bias" }), Layout::Same),
                [side @ ("encoder" | "decoder"), index, rest] => {
                    let blocks = if *side == "encoder" { &encoder } else { &decoder };
                    let block = index.parse::<usize>().ok().and_then(|i| blocks.get(i)).expect("one name per block");
                    let (tensor, layout) = block_tensor(rest, config.num_heads);
                    (format!("{}.{block}.{tensor}", &side[..3]), layout)
                }
                _ => unreachable!("a UNet tensor outside the known layers: {path}"),
            };
            Entry { path, name, layout }
        })
        .collect()
}

/// EDM's buffers of `config`'s network: the box filter of each resampling convolution, and the
/// Fourier embedding's frequencies.
fn buffers(config: &UNetConfig, has_skip: impl Fn(&str) -> bool) -> StateDict {
    let (encoder, decoder) = block_names(config);
    let mut buffers = StateDict::new();
    let blocks = encoder.iter().map(|b| format!("enc.{b}")).chain(decoder.iter().map(|b| format!("dec.{b}")));
    for block in blocks.filter(|b| b.ends_with("_down") || b.ends_with("_up")) {
        for conv in ["conv0", "skip"] {
            if conv == "conv0" || has_skip(&block) {
                buffers.insert(format!("{block}.{conv}.resample_filter"), TensorData::new(BOX_FILTER.to_vec(), [1, 1, 2, 2]));
            }
        }
    }
    if config.embedding == NoiseEmbedding::Fourier {
        // EDM multiplies its `freqs` by 2π in `forward`; ours hold the product.
        let freqs: Vec<f32> = crate::embedding::NoiseFeatures::new(config.embedding, config.model_channels)
            .frequencies()
            .iter()
            .map(|f| (*f as f64 / (2.0 * std::f64::consts::PI)) as f32)
            .collect();
        let n = freqs.len();
        buffers.insert("map_noise.freqs".into(), TensorData::new(freqs, [n]));
    }
    buffers
}

/// Output channel `r` of our `qkv` (`[3, heads, d]`) is EDM's channel `qkv_row(r)` (`[heads, d, 3]`).
fn qkv_row(r: usize, channels: usize, heads: usize) -> usize {
    let d = channels / heads;
    let (which, rest) = (r / channels, r % channels);
    let (head, j) = (rest / d, rest % d);
    (head * d + j) * 3 + which
}

/// Our layout of a tensor in EDM's (`to_edm`), or EDM's in ours.
fn convert(data: TensorData, layout: Layout, to_edm: bool) -> TensorData {
    let shape = data.shape.clone();
    let values: Vec<f32> = data.convert::<f32>().to_vec().expect("float tensor");
    match layout {
        Layout::Same => TensorData::new(values, shape),
        // A transpose is its own inverse.
        Layout::Transposed => {
            let (rows, cols) = (shape[0], shape[1]);
            let t: Vec<f32> = (0..cols).flat_map(|c| (0..rows).map(move |r| (r, c))).map(|(r, c)| values[r * cols + c]).collect();
            TensorData::new(t, [cols, rows])
        }
        // Our row `r` is EDM's row `qkv_row(r)`.
        Layout::Qkv { heads } => {
            let rows = shape[0];
            let per_row = values.len() / rows;
            let mut out = vec![0.0; values.len()];
            for r in 0..rows {
                let (from, into) = if to_edm { (r, qkv_row(r, rows / 3, heads)) } else { (qkv_row(r, rows / 3, heads), r) };
                out[into * per_row..(into + 1) * per_row].copy_from_slice(&values[from * per_row..(from + 1) * per_row]);
            }
            TensorData::new(out, shape)
        }
    }
}

/// Checks, before a network of `config` is built for `state`, that the two agree on the sizes
/// that set the network's: its input convolution, its embedding and each block's output
/// convolution. A `config` from a file's metadata is so never bigger than the weights it carries.
pub fn check_sizes(config: &UNetConfig, state: &StateDict) -> Result<(), StateDictError> {
    let mc = config.model_channels;
    let (encoder, decoder) = block_names(config);
    let top = format!("{0}x{0}", config.image_size);
    let mut wanted = vec![(format!("enc.{top}_conv.weight"), vec![mc, config.in_channels, 3, 3]), ("map_layer0.weight".to_string(), vec![mc * config.channel_mult_emb, mc])];
    let mut channels = config.channel_mult.iter().flat_map(|m| std::iter::repeat_n(m * mc, config.num_blocks));
    let mut cout = mc;
    for block in &encoder {
        if !block.ends_with("_down") {
            cout = channels.next().unwrap_or(cout);
        }
        wanted.push((format!("enc.{block}.conv1.weight"), vec![cout, cout, 3, 3]));
    }
    wanted.extend(decoder.iter().map(|block| (format!("dec.{block}.conv0.bias"), Vec::new())));
    for (name, shape) in wanted {
        let found = state.get(&name).ok_or_else(|| StateDictError::Missing { name: name.clone() })?;
        if !shape.is_empty() && found.shape.to_vec() != shape {
            return Err(StateDictError::Shape { name, found: found.shape.to_vec(), expected: shape });
        }
    }
    Ok(())
}

impl<B: Backend> UNet<B> {
    /// The network's weights as EDM's `SongUNet` built from `config` holds them (buffers
    /// included), `config` being the one this network was built from.
    pub fn to_state_dict(&self, config: &UNetConfig) -> StateDict {
        let snapshots: BTreeMap<String, TensorSnapshot> = self.collect(None, None, false).into_iter().map(|s| (s.full_path(), s)).collect();
        let entries = entries(self, config);
        let mut state: StateDict = entries
            .iter()
            .map(|e| {
                let data = snapshots[&e.path].to_data().expect("a materialised tensor");
                (e.name.clone(), convert(data, e.layout, true))
            })
            .collect();
        let skips: Vec<String> = entries.iter().filter(|e| e.name.ends_with(".skip.weight")).map(|e| e.name.clone()).collect();
        state.extend(buffers(config, |block| skips.contains(&format!("{block}.skip.weight"))));
        state
    }

    /// This network (built from `config`) with the weights of `state`, EDM `SongUNet`'s state
    /// dict of the same hyperparameters: every tensor present, none left over, each of its shape.
    pub fn load_state_dict(mut self, config: &UNetConfig, state: &StateDict) -> Result<Self, StateDictError> {
        let entries = entries(&self, config);
        let expected: BTreeMap<String, Vec<usize>> = self.collect(None, None, false).into_iter().map(|s| (s.full_path(), s.shape.to_vec())).collect();
        let skips: Vec<String> = entries.iter().filter(|e| e.name.ends_with(".skip.weight")).map(|e| e.name.clone()).collect();
        let buffers = buffers(config, |block| skips.contains(&format!("{block}.skip.weight")));
        if let Some(name) = state.keys().find(|name| !buffers.contains_key(*name) && !entries.iter().any(|e| &e.name == *name)) {
            return Err(StateDictError::Unexpected { name: name.clone() });
        }
        for (name, buffer) in &buffers {
            let found = state.get(name).ok_or_else(|| StateDictError::Missing { name: name.clone() })?;
            let close = found.shape == buffer.shape
                && found.clone().convert::<f32>().to_vec::<f32>().is_ok_and(|f| f.iter().zip(buffer.to_vec::<f32>().expect("f32")).all(|(a, b)| (a - b).abs() <= 1e-6 * b.abs().max(1.0)));
            if !close {
                let reason = if name.ends_with("resample_filter") {
                    "only EDM's DDPM++ filter `resample_filter=[1,1]` is supported"
                } else {
                    "EDM draws its Fourier frequencies at random; Emulsion's are fixed, and these differ"
                };
                return Err(StateDictError::Value { name: name.clone(), reason: reason.into() });
            }
        }
        let mut snapshots = Vec::with_capacity(entries.len());
        for e in &entries {
            let found = state.get(&e.name).ok_or_else(|| StateDictError::Missing { name: e.name.clone() })?;
            let mut shape = expected[&e.path].clone();
            if e.layout == Layout::Transposed {
                shape.reverse();
            }
            if found.shape.to_vec() != shape {
                return Err(StateDictError::Shape { name: e.name.clone(), found: found.shape.to_vec(), expected: shape });
            }
            let data = convert(found.clone(), e.layout, false);
            let path: Vec<String> = e.path.split('.').map(str::to_string).collect();
            snapshots.push(TensorSnapshot::from_data(data, path, Vec::new(), ParamId::new()));
        }
        let result = self.apply(snapshots, None, None, false);
        if let Some(error) = result.errors.first() {
            return Err(StateDictError::Value { name: "a tensor".into(), reason: format!("cannot be applied: {error:?}") });
        }
        Ok(self)
    }
}

/// EDM `SongUNet`'s keyword arguments for a network: `SongUNet(**kwargs)` builds the network
/// whose state dict [`UNet::to_state_dict`] writes. DDPM++ layout: standard encoder and
/// decoder, `[1,1]` resampling, noise features of `model_channels`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SongUNetKwargs {
    pub img_resolution: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub label_dim: usize,
    pub augment_dim: usize,
    pub model_channels: usize,
    pub channel_mult: Vec<usize>,
    pub channel_mult_emb: usize,
    pub num_blocks: usize,
    pub attn_resolutions: Vec<usize>,
    pub dropout: f64,
    pub embedding_type: String,
    pub channel_mult_noise: usize,
    pub encoder_type: String,
    pub decoder_type: String,
    pub resample_filter: Vec<usize>,
}

impl SongUNetKwargs {
    pub fn of(config: &UNetConfig) -> Self {
        Self {
            img_resolution: config.image_size,
            in_channels: config.in_channels,
            out_channels: config.in_channels,
            label_dim: config.num_classes,
            augment_dim: 0,
            model_channels: config.model_channels,
            channel_mult: config.channel_mult.clone(),
            channel_mult_emb: config.channel_mult_emb,
            num_blocks: config.num_blocks,
            attn_resolutions: config.attn_resolutions.clone(),
            dropout: config.dropout,
            embedding_type: match config.embedding {
                NoiseEmbedding::Positional => "positional",
                NoiseEmbedding::Fourier => "fourier",
            }
            .into(),
            channel_mult_noise: 1,
            encoder_type: "standard".into(),
            decoder_type: "standard".into(),
            resample_filter: vec![1, 1],
        }
    }
}

/// `state` as a safetensors file (`f32`, names sorted) with the string `metadata`. safetensors
/// writes its metadata map in hash order: identical inputs give identical bytes only with at most
/// one metadata key.
pub fn encode(state: &StateDict, metadata: &[(&str, &str)]) -> Vec<u8> {
    let bytes: Vec<(&String, Vec<u8>, Vec<usize>)> = state
        .iter()
        .map(|(name, data)| {
            let values: Vec<f32> = data.clone().convert::<f32>().to_vec().expect("f32 data");
            (name, values.iter().flat_map(|v| v.to_le_bytes()).collect(), data.shape.to_vec())
        })
        .collect();
    let views: Vec<(&String, TensorView)> = bytes
        .iter()
        .map(|(name, data, shape)| (*name, TensorView::new(Dtype::F32, shape.clone(), data).expect("shape and bytes agree")))
        .collect();
    let metadata = (!metadata.is_empty()).then(|| metadata.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    safetensors::serialize(views, metadata).expect("f32 tensors serialise")
}

/// The tensors (as `f32`) and metadata of a safetensors file.
pub fn decode(bytes: &[u8]) -> Result<(StateDict, BTreeMap<String, String>), StateDictError> {
    let file = SafeTensors::deserialize(bytes).map_err(|e| StateDictError::File(e.to_string()))?;
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| StateDictError::File(e.to_string()))?;
    let metadata = header.metadata().clone().unwrap_or_default().into_iter().collect();
    let mut state = StateDict::new();
    for (name, view) in file.tensors() {
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F64 => view.data().chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32).collect(),
            Dtype::F16 => view.data().chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::BF16 => view.data().chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            other => return Err(StateDictError::File(format!("`{name}` has dtype {other:?}"))),
        };
        state.insert(name, TensorData::new(values, view.shape().to_vec()));
    }
    Ok((state, metadata))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;

    fn tiny(num_classes: usize, num_heads: usize) -> UNetConfig {
        UNetConfig::new(8, 3)
            .with_model_channels(8)
            .with_channel_mult(vec![1, 2])
            .with_num_blocks(1)
            .with_attn_resolutions(vec![4])
            .with_num_heads(num_heads)
            .with_dropout(0.0)
            .with_num_classes(num_classes)
    }

    fn net(config: &UNetConfig, seed: u64) -> UNet<TestBackend> {
        let device = Default::default();
        TestBackend::seed(&device, seed);
        config.init(&device)
    }

    /// The output for a fixed input (no draw from the backend's generator, which the tests
    /// running in parallel share).
    fn forward(net: &UNet<TestBackend>) -> Vec<f32> {
        let device = Default::default();
        let values: Vec<f32> = (0..3 * 3 * 8 * 8).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
        let x = Tensor::from_data(TensorData::new(values, [3, 3, 8, 8]), &device);
        let labels = (net.num_classes() > 0).then(|| Tensor::from_ints([2, 7, net.num_classes() as i32], &device));
        net.forward(x, Tensor::from_floats([-1.3, 0.2, 2.1], &device), labels).into_data().to_vec().unwrap()
    }

    #[test]
    fn export_then_import_gives_the_same_network_bit_for_bit() {
        for (classes, heads) in [(0, 1), (10, 1), (10, 2)] {
            let config = tiny(classes, heads);
            let a = net(&config, 1);
            // Untrained layers are zero (biases, EDM's zero-initialised last layers): perturb
            // every tensor so that each one moves the output.
            let mut state = a.to_state_dict(&config);
            for (name, data) in state.iter_mut().filter(|(n, _)| !n.ends_with("resample_filter")) {
                let values: Vec<f32> = data.to_vec::<f32>().unwrap().iter().enumerate().map(|(i, v)| v + 0.01 * ((i * 7 + name.len()) % 13) as f32).collect();
                *data = TensorData::new(values, data.shape.clone());
            }
            let a = a.load_state_dict(&config, &state).unwrap();
            let b = net(&config, 2).load_state_dict(&config, &a.to_state_dict(&config)).unwrap();
            assert_eq!(forward(&a), forward(&b), "{classes} classes, {heads} heads");
            assert_eq!(a.to_state_dict(&config), b.to_state_dict(&config));
        }
    }

    #[test]
    fn layouts_are_pytorchs() {
        let config = tiny(10, 1);
        let state = net(&config, 1).to_state_dict(&config);
        let shape = |name: &str| state[name].shape.to_vec();
        assert_eq!(shape("map_label.weight"), [8, 10]);
        assert_eq!(shape("map_layer0.weight"), [32, 8]);
        assert_eq!(shape("dec.4x4_block1.affine.weight"), [16, 32]);
        assert_eq!(shape("dec.4x4_block1.qkv.weight"), [48, 16, 1, 1]);
        assert_eq!(shape("enc.8x8_conv.weight"), [8, 3, 3, 3]);
        assert_eq!(state["enc.4x4_down.skip.resample_filter"].to_vec::<f32>().unwrap(), [0.25; 4]);
        let names: Vec<&str> = state.keys().map(String::as_str).filter(|n| n.ends_with("resample_filter")).collect();
        assert_eq!(names, ["dec.8x8_up.conv0.resample_filter", "dec.8x8_up.skip.resample_filter", "enc.4x4_down.conv0.resample_filter", "enc.4x4_down.skip.resample_filter"]);
        // EDM's qkv channels are [heads, d, 3]: with 2 heads of 2 channels (C = 4), our
        // k (which = 1) of head 1, channel 0 (row 4 + 2 = 6) is EDM's row (1·2 + 0)·3 + 1 = 7.
        assert_eq!(qkv_row(6, 4, 2), 7);
        let mut rows: Vec<usize> = (0..12).map(|r| qkv_row(r, 4, 2)).collect();
        rows.sort();
        assert_eq!(rows, (0..12).collect::<Vec<_>>(), "a permutation");
    }

    #[test]
    fn a_state_dict_of_another_network_is_refused_by_name() {
        let config = tiny(10, 1);
        let good = net(&config, 1).to_state_dict(&config);
        let load = |state: &StateDict| net(&config, 2).load_state_dict(&config, state).map(|_| ()).unwrap_err();
        let mut missing = good.clone();
        missing.remove("dec.4x4_in0.qkv.bias");
        assert_eq!(load(&missing), StateDictError::Missing { name: "dec.4x4_in0.qkv.bias".into() });
        let mut extra = good.clone();
        extra.insert("map_augment.weight".into(), TensorData::new(vec![0f32; 8], [8, 1]));
        assert_eq!(load(&extra), StateDictError::Unexpected { name: "map_augment.weight".into() });
        let mut wrong = good.clone();
        wrong.insert("map_layer0.weight".into(), TensorData::new(vec![0f32; 256], [8, 32]));
        assert!(matches!(load(&wrong), StateDictError::Shape { name, found, expected } if name == "map_layer0.weight" && found == [8, 32] && expected == [32, 8]));
        let mut filter = good.clone();
        filter.insert("enc.4x4_down.conv0.resample_filter".into(), TensorData::new(vec![0.125f32, 0.375, 0.375, 0.125], [1, 1, 2, 2]));
        assert!(load(&filter).to_string().contains("resample_filter=[1,1]"));
        let unconditional = tiny(0, 1);
        assert!(matches!(net(&unconditional, 1).load_state_dict(&unconditional, &good).unwrap_err(), StateDictError::Unexpected { .. }));
    }

    #[test]
    fn sizes_are_checked_against_the_weights_before_a_network_is_built() {
        let config = tiny(10, 1);
        let state = net(&config, 1).to_state_dict(&config);
        assert_eq!(check_sizes(&config, &state), Ok(()));
        let bigger = [
            config.clone().with_model_channels(64),
            config.clone().with_num_blocks(3),
            config.clone().with_channel_mult(vec![1, 8]),
            config.clone().with_channel_mult_emb(16),
            UNetConfig { in_channels: 4, ..config.clone() },
            UNetConfig { image_size: 16, ..config.clone() },
        ];
        for config in bigger {
            assert!(check_sizes(&config, &state).is_err(), "{config:?}");
        }
    }

    #[test]
    fn files_round_trip_and_identical_weights_give_identical_bytes() {
        let config = tiny(10, 1);
        let state = net(&config, 1).to_state_dict(&config);
        let bytes = encode(&state, &[("k", "v")]);
        assert!(bytes == encode(&state.clone(), &[("k", "v")]), "one state dict, two encodings");
        let (read, metadata) = decode(&bytes).unwrap();
        assert_eq!(read, state);
        assert_eq!(metadata.get("k").map(String::as_str), Some("v"));
        assert!(decode(b"not safetensors").is_err());
    }
}
