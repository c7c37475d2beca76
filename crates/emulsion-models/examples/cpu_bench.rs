use burn::prelude::*;
use burn::tensor::Distribution;
use emulsion_models::UNetConfig;
use std::time::Instant;

fn run<B: burn::tensor::backend::AutodiffBackend>(name: &str, cfg: &UNetConfig, batch: usize) {
    let device = Default::default();
    let t0 = Instant::now();
    let net = cfg.init::<B>(&device);
    let mut times = vec![];
    for i in 0..6 {
        let x = Tensor::<B, 4>::random([batch, cfg.in_channels, cfg.image_size, cfg.image_size], Distribution::Default, &device);
        let t0 = Instant::now();
        let y = net.forward(x, Tensor::random([batch], Distribution::Default, &device), None);
        let loss = y.powf_scalar(2.0).mean();
        let g = loss.backward();
        drop(g);
        let _ = loss.into_scalar();
        if i > 0 { times.push(t0.elapsed().as_secs_f64()); }
    }
    println!("first-to-last {:.1}s", t0.elapsed().as_secs_f64());
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let med = times[times.len() / 2];
    println!("{name}: params {} batch {batch}: median {:.3}s/step = {:.0} img/s", net.num_params(), med, batch as f64 / med);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let ch: usize = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(32);
    let blocks: usize = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(1);
    let cfg = UNetConfig::new(28, 1).with_model_channels(ch).with_channel_mult(vec![1, 2, 2]).with_num_blocks(blocks).with_attn_resolutions(vec![7]).with_dropout(0.0);
    let b: usize = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(64); if args.get(4).map(|s| s=="wgpu").unwrap_or(false) { run::<burn::backend::Autodiff<burn::backend::Wgpu>>("wgpu", &cfg, b); return; }
    if args.get(4).map(|s| s=="flex").unwrap_or(false) { run::<burn::backend::Autodiff<burn::backend::Flex>>("flex", &cfg, b); return; }
    run::<burn::backend::Autodiff<burn::backend::NdArray<f32>>>("ndarray", &cfg, b);
    
}
