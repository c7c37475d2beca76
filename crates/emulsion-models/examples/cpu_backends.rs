//! Which CPU backend trains the UNet faster: the median time of a forward and backward pass on
//! Burn's Flex and ndarray backends, printed as a table.
//!
//! ```sh
//! cargo run --release -p emulsion-models --example cpu_backends -- [CHANNELS] [BATCH] [REPEATS]
//! ```
//! Defaults: the quick-start network (16 channels, multipliers [1, 2, 2], 28x28, one block per
//! level), batch 32, 5 timed passes after one warm-up pass.

use std::time::Instant;

use burn::backend::{Autodiff, Flex, NdArray};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Distribution;
use emulsion_models::UNetConfig;

/// Median seconds of `repeats` forward + backward passes of `config` at `batch`.
fn median_pass<B: AutodiffBackend>(config: &UNetConfig, batch: usize, repeats: usize) -> f64 {
    let device = Default::default();
    let net = config.init::<B>(&device);
    let shape = [batch, config.in_channels, config.image_size, config.image_size];
    let mut times: Vec<f64> = (0..=repeats)
        .map(|_| {
            let x = Tensor::<B, 4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
            let noise = Tensor::<B, 1>::random([batch], Distribution::Normal(0.0, 1.0), &device);
            let start = Instant::now();
            let loss = net.forward(x, noise, None).powf_scalar(2.0).mean();
            let _grads = loss.backward();
            start.elapsed().as_secs_f64()
        })
        .skip(1)
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("numbers")).collect();
    let channels = args.first().copied().unwrap_or(16);
    let batch = args.get(1).copied().unwrap_or(32);
    let repeats = args.get(2).copied().unwrap_or(5).max(1);
    let config = UNetConfig::new(28, 1)
        .with_model_channels(channels)
        .with_channel_mult(vec![1, 2, 2])
        .with_num_blocks(1)
        .with_attn_resolutions(vec![7])
        .with_dropout(0.0);
    println!("UNet: {channels} channels, 28x28x1, batch {batch}, median of {repeats} forward+backward passes");
    println!("| backend | s/pass | images/s | vs Flex |");
    println!("|---------|--------|----------|---------|");
    let flex = median_pass::<Autodiff<Flex>>(&config, batch, repeats);
    println!("| flex    | {flex:6.3} | {:8.1} | 1.00x   |", batch as f64 / flex);
    let ndarray = median_pass::<Autodiff<NdArray<f32>>>(&config, batch, repeats);
    println!("| ndarray | {ndarray:6.3} | {:8.1} | {:.2}x   |", batch as f64 / ndarray, flex / ndarray);
}
