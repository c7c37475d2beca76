//! The CubeCL kernels on Burn's WGPU backend (with fusion, as the binary builds it): on CI's
//! lavapipe, or any Vulkan GPU. Shapes are small: lavapipe compiles each kernel on first use.
#![cfg(feature = "cubecl")]

use burn::backend::Wgpu;
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use emulsion_assign::{assign, cost_matrix, lapjv, AssignBackend, AssignConfig, AuctionMode, CostMatrix, Method, Metric, Quantize};
use rand::{Rng, SeedableRng};

type B = Wgpu;

fn device() -> burn::backend::wgpu::WgpuDevice {
    Default::default()
}

fn matrix(n: usize, values: &[f32]) -> Tensor<B, 2> {
    Tensor::from_data(TensorData::new(values.to_vec(), [n, n]), &device())
}

fn device_auction(n: usize, values: &[f32], mode: AuctionMode) -> Vec<usize> {
    let columns = Tensor::<B, 1, Int>::from_primitive(B::auction(matrix(n, values).into_primitive().tensor(), mode));
    columns.into_data().convert::<i64>().to_vec::<i64>().unwrap().into_iter().map(|j| j as usize).collect()
}

fn is_permutation(p: &[usize]) -> bool {
    let mut seen = vec![false; p.len()];
    p.iter().all(|&j| j < p.len() && !std::mem::replace(&mut seen[j], true))
}

fn brute_force(c: &CostMatrix) -> f64 {
    fn go(c: &CostMatrix, row: usize, used: &mut Vec<bool>) -> f64 {
        if row == c.n() {
            return 0.0;
        }
        let mut best = f64::INFINITY;
        for j in 0..c.n() {
            if !used[j] {
                used[j] = true;
                best = best.min(c.get(row, j) + go(c, row + 1, used));
                used[j] = false;
            }
        }
        best
    }
    go(c, 0, &mut vec![false; c.n()])
}

#[test]
fn cost_kernel_agrees_with_an_f64_reference_including_odd_shapes() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    // Batches that fill no tile evenly, and a rectangular one.
    for (b, b2, d) in [(1, 1, 5), (37, 37, 3072), (65, 3, 40)] {
        let x: Vec<f64> = (0..b * d).map(|_| rng.random_range(-1.0..1.0)).collect();
        let e: Vec<f64> = (0..b2 * d).map(|_| rng.random_range(-2.5..2.5)).collect();
        let tensor = |v: &[f64], rows: usize| Tensor::<B, 2>::from_data(TensorData::new(v.iter().map(|&a| a as f32).collect::<Vec<_>>(), [rows, d]), &device());
        for metric in [Metric::L2, Metric::L2sq] {
            for quantize in [Quantize::None, Quantize::Fp16] {
                let got: Vec<f32> = cost_matrix(tensor(&x, b), tensor(&e, b2), metric, quantize).into_data().to_vec().unwrap();
                assert_eq!(got.len(), b * b2);
                for (k, g) in got.iter().enumerate() {
                    let (i, j) = (k / b2, k % b2);
                    let sq: f64 = (0..d).map(|t| (x[i * d + t] - e[j * d + t]).powi(2)).sum();
                    let want = if metric == Metric::L2 { sq.sqrt() } else { sq };
                    // f32 GEMM error ~ √d·2⁻²⁴ of ‖x‖² + ‖e‖², plus one fp16 rounding (2⁻¹¹ relative).
                    let scale = if metric == Metric::L2 { want.max(1.0) } else { 2.0 * want.max(1.0) };
                    let fp16 = if quantize == Quantize::Fp16 { want * 2f64.powi(-11) } else { 0.0 };
                    assert!((*g as f64 - want).abs() <= 1e-4 * scale + fp16, "{metric:?} {quantize:?} {b}x{b2}x{d} [{i},{j}]: {g} vs {want}");
                }
            }
        }
    }
}

#[test]
fn fp16_rounding_on_the_device_is_the_hosts_bit_for_bit() {
    // Costs fed straight through the epilogue: x_sq = c, e_sq = 0, G = 0, squared metric.
    let mut values: Vec<f32> = vec![0.0, 1e-8, 3e-6, 6.0e-5, 6.1035156e-5, 1.0, 1.0004883, 1.0007324, 2.0009766, 65504.0, 65519.0, 65520.0, 1e6];
    // Exact ties between fp16 neighbours (ties go to even), and random magnitudes.
    values.extend([1.0 + 2f32.powi(-11), 1.0 + 3.0 * 2f32.powi(-11), 100.0 + 2f32.powi(-5)]);
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    values.extend((0..2000).map(|_| 10f32.powf(rng.random_range(-6.0..5.0))));
    let n = values.len();
    let x_sq = Tensor::<B, 2>::from_data(TensorData::new(values.clone(), [n, 1]), &device());
    let zeros = |shape: [usize; 2]| Tensor::<B, 2>::zeros(shape, &device()).into_primitive().tensor();
    let out = B::cost_epilogue(x_sq.into_primitive().tensor(), zeros([1, 1]), zeros([n, 1]), Metric::L2sq, Quantize::Fp16);
    let got: Vec<f32> = Tensor::<B, 2>::from_primitive(burn::tensor::TensorPrimitive::Float(out)).into_data().to_vec().unwrap();
    for (v, g) in values.iter().zip(&got) {
        let want = emulsion_assign::distance::quantize(*v, Quantize::Fp16);
        assert_eq!(g.to_bits(), want.to_bits(), "fp16({v}) = {want}, device gave {g}");
    }
}

#[test]
fn exact_auction_equals_brute_force_and_lapjv() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    // lavapipe stops a shader after 65,535 loop iterations in all (Mesa's LP_MAX_TGSI_LOOP_ITERATIONS):
    // sizes and cost ranges that stay within it; real GPUs have no such limit.
    for (n, top) in [(2, 100), (3, 100), (5, 100), (8, 100), (64, 100), (200, 100), (300, 100_000)] {
        let values: Vec<f32> = (0..n * n).map(|_| rng.random_range(0..top) as f32).collect();
        let c = CostMatrix::new(n, values.iter().map(|&v| v as f64).collect());
        let p = device_auction(n, &values, AuctionMode::Exact);
        assert!(is_permutation(&p), "n = {n}: {p:?}");
        let optimum = if n <= 8 { brute_force(&c) } else { c.total(&lapjv(&c)) };
        assert_eq!(c.total(&p), optimum, "n = {n}");
    }
}

#[test]
fn exact_auction_solves_fp16_image_noise_costs_and_approximate_stays_within_n_epsilon() {
    let _ = <B as burn::tensor::backend::Backend>::seed(&device(), 6);
    let n = 200;
    let x = Tensor::<B, 2>::random([n, 192], Distribution::Uniform(-1.0, 1.0), &device());
    let e = Tensor::<B, 2>::random([n, 192], Distribution::Normal(0.0, 1.0), &device());
    for (quantize, mode) in [(Quantize::Fp16, AuctionMode::Exact), (Quantize::None, AuctionMode::Approximate { epsilon: 1e-3 })] {
        let values: Vec<f32> = cost_matrix(x.clone(), e.clone(), Metric::L2, quantize).into_data().to_vec().unwrap();
        let c = CostMatrix::new(n, values.iter().map(|&v| v as f64).collect());
        let best = c.total(&lapjv(&c));
        let p = device_auction(n, &values, mode);
        assert!(is_permutation(&p));
        let got = c.total(&p);
        match mode {
            AuctionMode::Exact => assert_eq!(got, best),
            AuctionMode::Approximate { epsilon } => {
                // f32 prices: allow their rounding on top of the n·ε bound.
                assert!(got >= best - 1e-6 * best && got <= best + n as f64 * epsilon as f64 + 1e-6 * best, "{got} vs {best}")
            }
        }
    }
}

#[test]
fn auction_assignment_permutes_the_noise_and_beats_random_pairing() {
    let _ = <B as burn::tensor::backend::Backend>::seed(&device(), 7);
    let x = Tensor::<B, 2>::random([48, 64], Distribution::Uniform(-1.0, 1.0), &device());
    let noise = Tensor::<B, 2>::random([48, 64], Distribution::Normal(0.0, 1.0), &device());
    let random = assign(x.clone(), noise.clone(), &AssignConfig::default()).mean_distance.into_scalar();
    let config = AssignConfig { method: Method::Auction, quantize: Quantize::Fp16, ..Default::default() };
    let assigned = assign(x.clone(), noise.clone(), &config);
    let rows = |t: Tensor<B, 2>| -> Vec<Vec<u32>> {
        let v: Vec<f32> = t.into_data().to_vec().unwrap();
        let mut rows: Vec<Vec<u32>> = v.chunks(64).map(|r| r.iter().map(|a| a.to_bits()).collect()).collect();
        rows.sort();
        rows
    };
    assert_eq!(rows(assigned.noise.clone()), rows(noise.clone()), "the assigned noise is not a permutation of the draws");
    let lsa = assign(x, noise, &AssignConfig { method: Method::Lsa, quantize: Quantize::Fp16, ..Default::default() });
    let (auction_d, lsa_d) = (assigned.mean_distance.into_scalar(), lsa.mean_distance.into_scalar());
    assert!(auction_d < random, "{auction_d} vs random {random}");
    // Both optimal for the same fp16 costs; ties among optima differ by at most half an fp16
    // step (2⁻⁸ at distances of 8-16) per pair in the real distances.
    assert!((auction_d - lsa_d).abs() <= 2f32.powi(-8), "auction {auction_d} vs lsa {lsa_d}");
}
