//! The two steps of the assignment that a GPU backend runs as its own kernels: the epilogue of
//! the cost GEMM and the auction. Burn's pattern for custom kernels: a backend extension trait
//! whose default methods are the portable path (Burn ops, or the CPU auction), overridden for
//! `CubeBackend` (WGPU, CUDA) by CubeCL kernels, and forwarded through `Fusion` and `Autodiff`.

use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{Int, Tensor, TensorData, TensorPrimitive};

use crate::auction::{auction, auction_exact, quantize_to_integers};
use crate::distance::{quantize, Metric, Quantize};
use crate::lapjv::CostMatrix;

/// How the auction solves: exactly on integer costs, or to within `n·ε` of the optimum.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AuctionMode {
    /// Costs `c − min c` are scaled by the largest power of two that keeps them below 2²⁴/(n+1),
    /// rounded to integers, and solved with final ε = 1/(n+1): optimal for the rounded costs,
    /// which are the costs themselves when they are fp16 values (or integers) of a usual range.
    Exact,
    /// Real costs, final ε as given (cost units): total within `n·ε` of the optimum.
    Approximate { epsilon: f32 },
}

/// A Burn backend that can assign noise on its own device.
pub trait AssignBackend: Backend {
    /// `C = max(‖x‖² + ‖e‖² − 2G, 0)`, its square root for L2, rounded to fp16 if asked, from the
    /// row norms `x_sq` `[B, 1]`, `e_sq` `[1, B']` and the Gram matrix `G` `[B, B']`.
    fn cost_epilogue(x_sq: FloatTensor<Self>, e_sq: FloatTensor<Self>, gram: FloatTensor<Self>, metric: Metric, quantize_to: Quantize) -> FloatTensor<Self> {
        let [x_sq, e_sq, gram] = [x_sq, e_sq, gram].map(Tensor::<Self, 2>::from_primitive_float);
        let squared = (x_sq + e_sq - gram * 2.0).clamp_min(0.0);
        let costs = match metric {
            Metric::L2 => squared.sqrt(),
            Metric::L2sq => squared,
        };
        let costs = match quantize_to {
            Quantize::None => costs,
            // The CPU path: round on the host, as the LAPJV path reads the costs there anyway.
            Quantize::Fp16 => {
                let (shape, device) = (costs.shape(), costs.device());
                let values: Vec<f32> = costs.into_data().convert::<f32>().to_vec().expect("f32 costs");
                let values: Vec<f32> = values.into_iter().map(|c| quantize(c, Quantize::Fp16)).collect();
                Tensor::from_data(TensorData::new(values, shape), &device)
            }
        };
        costs.into_primitive().tensor()
    }

    /// The column of each row `[n]` of a minimum-cost assignment of the square `costs` `[n, n]`.
    /// The portable path reads the costs back and runs the CPU auction.
    fn auction(costs: FloatTensor<Self>, mode: AuctionMode) -> IntTensor<Self> {
        let costs = Tensor::<Self, 2>::from_primitive_float(costs);
        let [n, _] = costs.dims();
        let device = costs.device();
        let values: Vec<f32> = costs.into_data().convert::<f32>().to_vec().expect("f32 costs");
        let columns = solve_on_host(n, &values, mode);
        let columns: Vec<i64> = columns.into_iter().map(|j| j as i64).collect();
        Tensor::<Self, 1, Int>::from_data(TensorData::new(columns, [n]), &device).into_primitive()
    }
}

/// The CPU auction on `n × n` row-major costs, with the device kernel's exact-mode scaling.
pub fn solve_on_host(n: usize, costs: &[f32], mode: AuctionMode) -> Vec<usize> {
    if n < 2 {
        return (0..n).collect();
    }
    match mode {
        AuctionMode::Exact => {
            let (lo, hi) = costs.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &c| (lo.min(c), hi.max(c)));
            let scale = exact_scale(hi - lo, n) as f64;
            let shifted = CostMatrix::new(n, costs.iter().map(|&c| (c - lo) as f64).collect());
            auction_exact(&quantize_to_integers(&shifted, scale))
        }
        AuctionMode::Approximate { epsilon } => auction(&CostMatrix::new(n, costs.iter().map(|&c| c as f64).collect()), epsilon as f64),
    }
}

/// The power of two `s` with `range · s · (n+1)` in `(2²³, 2²⁴]` (1 for a zero range): integer
/// costs that, times `n+1`, stay exact in f32 and leave i32 room for prices.
pub fn exact_scale(range: f32, n: usize) -> f32 {
    const LIMIT: f32 = (1u32 << 24) as f32;
    let span = range * (n as f32 + 1.0);
    if !(span > 0.0) {
        return 1.0;
    }
    let mut scale = 1.0f32;
    while span * scale * 2.0 <= LIMIT {
        scale *= 2.0;
    }
    while span * scale > LIMIT {
        scale *= 0.5;
    }
    scale
}

trait FromPrimitiveFloat<B: Backend> {
    fn from_primitive_float(p: FloatTensor<B>) -> Self;
}

impl<B: Backend, const D: usize> FromPrimitiveFloat<B> for Tensor<B, D> {
    fn from_primitive_float(p: FloatTensor<B>) -> Self {
        Tensor::from_primitive(TensorPrimitive::Float(p))
    }
}

#[cfg(any(test, feature = "ndarray"))]
impl AssignBackend for burn::backend::NdArray<f32> {}

#[cfg(feature = "flex")]
impl AssignBackend for burn::backend::Flex {}

#[cfg(feature = "autodiff")]
mod autodiff {
    use super::*;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::Autodiff;
    use burn::tensor::backend::AutodiffBackend;

    /// Costs and assignments carry no gradient: both run on the inner backend.
    impl<B: AssignBackend, C: CheckpointStrategy> AssignBackend for Autodiff<B, C> {
        fn cost_epilogue(x_sq: FloatTensor<Self>, e_sq: FloatTensor<Self>, gram: FloatTensor<Self>, metric: Metric, quantize_to: Quantize) -> FloatTensor<Self> {
            let [x_sq, e_sq, gram] = [x_sq, e_sq, gram].map(Self::inner);
            Self::from_inner(B::cost_epilogue(x_sq, e_sq, gram, metric, quantize_to))
        }

        fn auction(costs: FloatTensor<Self>, mode: AuctionMode) -> IntTensor<Self> {
            Self::int_from_inner(B::auction(Self::inner(costs), mode))
        }
    }
}

#[cfg(feature = "cubecl")]
mod fusion {
    use super::*;
    use burn::tensor::{DType, Element, Shape};
    use burn_fusion::stream::{Operation, OperationStreams};
    use burn_fusion::{Fusion, FusionBackend, FusionRuntime};
    use burn_ir::{CustomOpIr, HandleContainer, OperationIr, OperationOutput, TensorIr};
    use std::marker::PhantomData;

    /// Each op ends the fused stream and runs the inner backend's kernel.
    impl<B: FusionBackend + AssignBackend> AssignBackend for Fusion<B> {
        fn cost_epilogue(x_sq: FloatTensor<Self>, e_sq: FloatTensor<Self>, gram: FloatTensor<Self>, metric: Metric, quantize_to: Quantize) -> FloatTensor<Self> {
            #[derive(Clone, Debug)]
            struct Epilogue<B> {
                desc: CustomOpIr,
                metric: Metric,
                quantize_to: Quantize,
                _backend: PhantomData<B>,
            }
            impl<B1: FusionBackend + AssignBackend> Operation<B1::FusionRuntime> for Epilogue<B1> {
                fn execute(&self, handles: &mut HandleContainer<<B1::FusionRuntime as FusionRuntime>::FusionHandle>) {
                    let ([x_sq, e_sq, gram], [out]) = self.desc.as_fixed();
                    let [x_sq, e_sq, gram] = [x_sq, e_sq, gram].map(|t| handles.get_float_tensor::<B1>(t));
                    handles.register_float_tensor::<B1>(&out.id, B1::cost_epilogue(x_sq, e_sq, gram, self.metric, self.quantize_to));
                }
            }
            let client = gram.client.clone();
            let streams = OperationStreams::with_inputs([&x_sq, &e_sq, &gram]);
            let out = TensorIr::uninit(client.create_empty_handle(), gram.shape.clone(), gram.dtype);
            let desc = CustomOpIr::new("emulsion_cost_epilogue", &[x_sq.into_ir(), e_sq.into_ir(), gram.into_ir()], &[out]);
            let op = Epilogue::<B> { desc: desc.clone(), metric, quantize_to, _backend: PhantomData };
            client.register(streams, OperationIr::Custom(desc), op).output()
        }

        fn auction(costs: FloatTensor<Self>, mode: AuctionMode) -> IntTensor<Self> {
            #[derive(Clone, Debug)]
            struct Auction<B> {
                desc: CustomOpIr,
                mode: AuctionMode,
                _backend: PhantomData<B>,
            }
            impl<B1: FusionBackend + AssignBackend> Operation<B1::FusionRuntime> for Auction<B1> {
                fn execute(&self, handles: &mut HandleContainer<<B1::FusionRuntime as FusionRuntime>::FusionHandle>) {
                    let ([costs], [columns]) = self.desc.as_fixed();
                    let costs = handles.get_float_tensor::<B1>(costs);
                    handles.register_int_tensor::<B1>(&columns.id, B1::auction(costs, self.mode));
                }
            }
            let client = costs.client.clone();
            let n = costs.shape[0];
            let streams = OperationStreams::with_inputs([&costs]);
            let dtype: DType = B::IntElem::dtype();
            let out = TensorIr::uninit(client.create_empty_handle(), Shape::new([n]), dtype);
            let desc = CustomOpIr::new("emulsion_auction", &[costs.into_ir()], &[out]);
            let op = Auction::<B> { desc: desc.clone(), mode, _backend: PhantomData };
            client.register(streams, OperationIr::Custom(desc), op).output()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lapjv::lapjv;
    use crate::TestBackend;
    use rand::{Rng, SeedableRng};

    #[test]
    fn exact_scale_is_the_largest_power_of_two_under_the_integer_budget() {
        for (range, n) in [(99.0f32, 300), (1e-3, 4), (60.0, 4096), (7.5, 1024)] {
            let s = exact_scale(range, n);
            assert_eq!(s.log2().fract(), 0.0, "{s} is not a power of two");
            let span = range as f64 * (n as f64 + 1.0) * s as f64;
            assert!(span <= 16_777_216.0 && span * 2.0 > 16_777_216.0, "range {range}, n {n}: scale {s}");
        }
        assert_eq!(exact_scale(0.0, 10), 1.0);
    }

    #[test]
    fn the_portable_auction_is_exact_on_fp16_like_costs_and_within_n_epsilon_otherwise() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let n = 96;
        // Costs on the fp16 grid of [32, 64): multiples of 2⁻⁵, so the exact mode is exact.
        let values: Vec<f32> = (0..n * n).map(|_| 32.0 + rng.random_range(0..1024) as f32 / 32.0).collect();
        let c = CostMatrix::new(n, values.iter().map(|&v| v as f64).collect());
        let best = c.total(&lapjv(&c));
        let device = Default::default();
        let costs = Tensor::<TestBackend, 2>::from_data(TensorData::new(values, [n, n]), &device);
        for mode in [AuctionMode::Exact, AuctionMode::Approximate { epsilon: 0.01 }] {
            let columns = Tensor::<TestBackend, 1, Int>::from_primitive(TestBackend::auction(costs.clone().into_primitive().tensor(), mode));
            let p: Vec<usize> = columns.into_data().convert::<i64>().to_vec::<i64>().unwrap().into_iter().map(|j| j as usize).collect();
            let got = c.total(&p);
            match mode {
                AuctionMode::Exact => assert_eq!(got, best),
                AuctionMode::Approximate { epsilon } => assert!(got >= best && got <= best + n as f64 * epsilon as f64 + 1e-9, "{got} vs {best}"),
            }
        }
    }
}
