//! EDM SongUNet weights made by PyTorch (`scripts/songunet_fixture.py`) load by name into the
//! same network here and give PyTorch's output.

use burn::backend::NdArray;
use burn::prelude::*;
use emulsion_models::songunet::{self, StateDict};
use emulsion_models::UNetConfig;

type B = NdArray<f32>;

#[test]
fn pytorch_weights_give_pytorchs_output() {
    let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/songunet_tiny.safetensors")).unwrap();
    let (mut state, _) = songunet::decode(&bytes).unwrap();
    let mut take = |name: &str| state.remove(name).unwrap_or_else(|| panic!("{name} in the fixture"));
    let (x, noise_labels, labels, expected) = (take("io.x"), take("io.noise_labels"), take("io.class_labels"), take("io.output"));
    let weights: StateDict = state;
    // TINY of the script.
    let config = UNetConfig::new(8, 3)
        .with_model_channels(8)
        .with_channel_mult(vec![1, 2])
        .with_num_blocks(1)
        .with_attn_resolutions(vec![4])
        .with_num_heads(1)
        .with_dropout(0.0)
        .with_num_classes(10);
    let device = Default::default();
    let net = config.init::<B>(&device).load_state_dict(&config, &weights).unwrap();
    // Every tensor PyTorch holds is one of ours, and back: `strict=True` both ways.
    let exported = net.to_state_dict(&config);
    assert_eq!(exported.keys().collect::<Vec<_>>(), weights.keys().collect::<Vec<_>>());
    let labels: Vec<i64> = labels.to_vec::<f32>().unwrap().iter().map(|&l| l as i64).collect();
    let out = net.forward(
        Tensor::from_data(x, &device),
        Tensor::from_data(noise_labels, &device),
        Some(Tensor::from_data(TensorData::new(labels, [3]), &device)),
    );
    let (out, expected): (Vec<f32>, Vec<f32>) = (out.into_data().to_vec().unwrap(), expected.to_vec().unwrap());
    let scale = expected.iter().map(|v| v.abs()).fold(0f32, f32::max);
    let worst = out.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst <= 1e-4 * scale, "largest difference {worst} against outputs up to {scale}");
}
