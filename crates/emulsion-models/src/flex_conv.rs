//! Convolution gradients on Burn's CPU backend as GEMMs: `dX = conv(dY, flip(Wᵀ))`, `dW = Σₙ dYₙ · im2col(Xₙ)ᵀ`.
//!
//! Burn's generic conv2d backward computes the input gradient with a transposed convolution,
//! which Flex runs on one core, and the weight gradient as a convolution with the batch as the
//! channels, which Flex sends to its direct small-channel path for batches of four or fewer.
//! Profiled on the quick-start network (2 cores, batch 8), the two took a third of the training
//! step's CPU time, and a batch of 4 trained no faster per step than a batch of 8. Here the
//! input gradient is Flex's own (tiled, multi-threaded) forward convolution of the output
//! gradient with the flipped, transposed kernel, and the weight gradient one batched matrix
//! product against the unfolded input: the im2col formulation of the same sums.
//!
//! Rust has no specialisation, and Burn's backend-extension pattern needs a trait bound on every
//! generic user of the network; so [`conv2d`] recognises `Autodiff<Flex>` by type instead and
//! leaves every other backend, and every convolution it does not cover, to Burn.

use std::any::{Any, TypeId};

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::{Autodiff, Flex};
use burn::nn::conv::Conv2d;
use burn::nn::PaddingConfig2d;
use burn::tensor::backend::Backend;
use burn::tensor::ops::{ConvOptions, FloatTensor, ModuleOps};
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};

/// The training backend whose convolution gradients this file computes.
pub(crate) type AutodiffFlex = Autodiff<Flex>;

/// `conv.forward(x)`, with the gradients of this file where [`gemm_padding`] allows.
pub fn conv2d<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    match gemm_padding(conv, &x) {
        Some(padding) => {
            let bias = conv.bias.as_ref().map(|bias| bias.val()).expect("gemm_padding checked the bias");
            cast(conv2d_gemm_grads(cast(x), cast(conv.weight.val()), cast(bias), padding))
        }
        None => conv.forward(x),
    }
}

/// The padding of a convolution whose gradients this file computes: on `Autodiff<Flex>` in f32,
/// with a bias, a square kernel, stride 1, no dilation, one group and the same padding `p < k`
/// on every side. `None` leaves it to Burn.
fn gemm_padding<B: Backend>(conv: &Conv2d<B>, x: &Tensor<B, 4>) -> Option<usize> {
    let [k, k_w] = conv.kernel_size;
    let plain = conv.stride == [1, 1] && conv.dilation == [1, 1] && conv.groups == 1 && k == k_w && conv.bias.is_some();
    if !plain || TypeId::of::<B>() != TypeId::of::<AutodiffFlex>() || x.dtype() != DType::F32 {
        return None;
    }
    match conv.padding {
        PaddingConfig2d::Explicit(top, left, bottom, right) if [left, bottom, right] == [top; 3] && top < k => Some(top),
        _ => None,
    }
}

/// Moves a value into the type it is known (by `TypeId`) to be.
pub(crate) fn cast<T: 'static, U: 'static>(value: T) -> U {
    let mut slot = Some(value);
    (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<U>>()
        .and_then(Option::take)
        .expect("cast between identical types")
}

/// A stride-1 convolution with bias on `Autodiff<Flex>` (padding `< k`), with the backward pass
/// below.
fn conv2d_gemm_grads(x: Tensor<AutodiffFlex, 4>, weight: Tensor<AutodiffFlex, 4>, bias: Tensor<AutodiffFlex, 1>, padding: usize) -> Tensor<AutodiffFlex, 4> {
    let [x, weight, bias] = [x.into_primitive().tensor(), weight.into_primitive().tensor(), bias.into_primitive().tensor()];
    let options = ConvOptions::new([1, 1], [padding, padding], [1, 1], 1);
    let forward = |x, weight, bias| <Flex as ModuleOps<Flex>>::conv2d(x, weight, Some(bias), options.clone());
    let output = match GemmConv2d.prepare::<NoCheckpointing>([x.node.clone(), weight.node.clone(), bias.node.clone()]).compute_bound().stateful() {
        OpsKind::Tracked(mut prep) => {
            let state = (prep.checkpoint(&x), prep.checkpoint(&weight), padding);
            prep.finish(state, forward(x.primitive, weight.primitive, bias.primitive))
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(x.primitive, weight.primitive, bias.primitive)),
    };
    Tensor::from_primitive(TensorPrimitive::Float(output))
}

#[derive(Debug)]
struct GemmConv2d;

impl Backward<Flex, 3> for GemmConv2d {
    /// The input, the kernel and the padding.
    type State = (NodeId, NodeId, usize);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let [node_x, node_weight, node_bias] = ops.parents;
        let grad = flex_tensor(grads.consume::<Flex>(&ops.node));
        let (x_state, weight_state, padding) = ops.state;
        let x = flex_tensor(checkpointer.retrieve_node_output::<FloatTensor<Flex>>(x_state));
        let weight = flex_tensor(checkpointer.retrieve_node_output::<FloatTensor<Flex>>(weight_state));
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, input_grad(grad.clone(), weight.clone(), padding).into_primitive().tensor());
        }
        if let Some(node) = node_weight {
            grads.register::<Flex>(node.id, weight_grad(x, grad.clone(), weight.dims(), padding).into_primitive().tensor());
        }
        if let Some(node) = node_bias {
            grads.register::<Flex>(node.id, bias_grad(grad).into_primitive().tensor());
        }
    }
}

fn flex_tensor<const D: usize>(primitive: FloatTensor<Flex>) -> Tensor<Flex, D> {
    Tensor::from_primitive(TensorPrimitive::Float(primitive))
}

/// `dX = conv(dY, W̃, padding k − 1 − p)` with `W̃[i, o, u, v] = W[o, i, k−1−u, k−1−v]` (stride 1).
fn input_grad(grad: Tensor<Flex, 4>, weight: Tensor<Flex, 4>, padding: usize) -> Tensor<Flex, 4> {
    let k = weight.dims()[2];
    let flipped = weight.swap_dims(0, 1).flip([2, 3]);
    burn::tensor::module::conv2d(grad, flipped, None, ConvOptions::new([1, 1], [k - 1 - padding; 2], [1, 1], 1))
}

/// `dW[o, i, u, v] = Σ_{n,y,x} dY[n, o, y, x] · X̄[n, i, y + u, x + v]`, `X̄` the padded input:
/// one batched product `dYₙ [O, HW] · colsₙᵀ [HW, I·k²]`, summed over the batch.
fn weight_grad(x: Tensor<Flex, 4>, grad: Tensor<Flex, 4>, weight_dims: [usize; 4], padding: usize) -> Tensor<Flex, 4> {
    let [n, o, h_out, w_out] = grad.dims();
    let [_, i, k, _] = weight_dims;
    let cols = im2col(x, k, padding, [h_out, w_out]);
    grad.reshape([n, o, h_out * w_out])
        .matmul(cols.swap_dims(1, 2))
        .sum_dim(0)
        .reshape([o, i, k, k])
}

/// `[N, C·k², H'W']`: row `c·k² + u·k + v` holds the padded input shifted by `(u, v)`. Written
/// row by row here: Burn's `stack` of shifted slices copied element by element on Flex, and took
/// longer than the products.
fn im2col(x: Tensor<Flex, 4>, k: usize, padding: usize, [h_out, w_out]: [usize; 2]) -> Tensor<Flex, 3> {
    let [n, c, h, w] = x.dims();
    if k == 1 && padding == 0 {
        return x.reshape([n, c, h * w]);
    }
    let device = x.device();
    let data = x.into_data();
    let input = data.as_slice::<f32>().expect("gemm_padding admits f32 tensors only");
    let mut cols = vec![0.0f32; n * c * k * k * h_out * w_out];
    for (row, out) in cols.chunks_mut(h_out * w_out).enumerate() {
        // Row `(plane, u, v)`, where `plane` is an (image, channel) pair.
        let (plane, (u, v)) = (row / (k * k), (row % (k * k) / k, row % k));
        let source = &input[plane * h * w..(plane + 1) * h * w];
        // Output column x reads input column x + v − padding; keep those inside the image.
        let (x0, x1) = (padding.saturating_sub(v), w_out.min((w + padding).saturating_sub(v)));
        for y in 0..h_out {
            let Some(sy) = (y + u).checked_sub(padding).filter(|&sy| sy < h) else { continue };
            if x0 < x1 {
                let start = sy * w + x0 + v - padding;
                out[y * w_out + x0..y * w_out + x1].copy_from_slice(&source[start..start + x1 - x0]);
            }
        }
    }
    Tensor::from_data(TensorData::new(cols, [n, c * k * k, h_out * w_out]), &device)
}

/// `db[o] = Σ_{n,y,x} dY[n, o, y, x]`.
fn bias_grad(grad: Tensor<Flex, 4>) -> Tensor<Flex, 1> {
    let [n, o, h, w] = grad.dims();
    grad.reshape([n, o, h * w]).sum_dim(2).sum_dim(0).reshape([o])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::module::AutodiffModule;
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::Tolerance;

    /// Random values from a generator of their own, so tests running in parallel do not share
    /// the backend's.
    fn random<const D: usize>(shape: [usize; D], seed: u64) -> Tensor<AutodiffFlex, D> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let values: Vec<f32> = (0..shape.iter().product()).map(|_| rng.random_range(-1.0..1.0)).collect();
        Tensor::<AutodiffFlex, 1>::from_floats(values.as_slice(), &Default::default()).reshape(shape)
    }

    fn tolerance() -> Tolerance<f32> {
        Tolerance::<f32>::absolute(1e-4).set_relative(1e-4)
    }

    /// Which of the input, the kernel and the bias need a gradient.
    #[derive(Clone, Copy)]
    struct Tracked {
        x: bool,
        weight: bool,
    }

    /// Burn's own conv2d and this file's, forward and every gradient asked for, on one shape.
    fn check(n: usize, c_in: usize, c_out: usize, k: usize, padding: usize, [h, w]: [usize; 2], seed: u64, tracked: Tracked) {
        let x = random([n, c_in, h, w], seed);
        let weight = random([c_out, c_in, k, k], seed + 1);
        let bias = random([c_out], seed + 2);
        let upstream = random([n, c_out, h + 2 * padding + 1 - k, w + 2 * padding + 1 - k], seed + 3);
        let run = |ours: bool| {
            let x = if tracked.x { x.clone().require_grad() } else { x.clone() };
            let weight = if tracked.weight { weight.clone().require_grad() } else { weight.clone() };
            let bias = bias.clone().require_grad();
            let y = if ours {
                conv2d_gemm_grads(x.clone(), weight.clone(), bias.clone(), padding)
            } else {
                burn::tensor::module::conv2d(x.clone(), weight.clone(), Some(bias.clone()), ConvOptions::new([1, 1], [padding; 2], [1, 1], 1))
            };
            let grads = (y.clone() * upstream.clone()).sum().backward();
            let grad = |t: &Tensor<AutodiffFlex, 4>| t.grad(&grads).map(|g| g.into_data());
            (y.into_data(), grad(&x), grad(&weight), bias.grad(&grads).map(|g| g.into_data()))
        };
        let (ours, burns) = (run(true), run(false));
        let what = format!("n={n} c_in={c_in} c_out={c_out} k={k} padding={padding} {h}x{w}");
        assert_eq!(ours.0.shape, burns.0.shape, "output shape, {what}");
        ours.0.assert_approx_eq::<f32>(&burns.0, tolerance());
        for (name, wanted, a, b) in [("dX", tracked.x, ours.1, burns.1), ("dW", tracked.weight, ours.2, burns.2)] {
            assert_eq!(a.is_some(), wanted, "{name} present, {what}");
            if let (Some(a), Some(b)) = (a, b) {
                assert_eq!(a.shape, b.shape, "{name} shape, {what}");
                a.assert_approx_eq::<f32>(&b, tolerance());
            }
        }
        ours.3.expect("a bias gradient").assert_approx_eq::<f32>(&burns.3.expect("a bias gradient"), tolerance());
    }

    const ALL: Tracked = Tracked { x: true, weight: true };

    #[test]
    fn gradients_match_burns_conv2d_on_odd_shapes() {
        let shapes = [
            (1, 1, 1, 1, 0, [1, 1]),
            (1, 3, 5, 3, 1, [5, 7]),
            (2, 4, 3, 3, 1, [7, 5]),
            (3, 5, 2, 3, 0, [6, 4]),
            (4, 8, 16, 3, 1, [14, 14]),
            (5, 2, 3, 1, 0, [3, 9]),
            (2, 3, 4, 5, 2, [9, 6]),
            (2, 3, 4, 5, 4, [3, 2]),
            (2, 2, 3, 2, 0, [5, 4]),
            (2, 2, 3, 2, 1, [3, 6]),
            (1, 3, 2, 4, 1, [6, 5]),
            (1, 3, 2, 4, 3, [2, 3]),
            (8, 16, 16, 3, 1, [7, 7]),
        ];
        for (i, (n, c_in, c_out, k, p, hw)) in shapes.into_iter().enumerate() {
            check(n, c_in, c_out, k, p, hw, 10 * i as u64, ALL);
        }
    }

    #[test]
    fn random_shapes_match_burns_conv2d() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for case in 0..16 {
            let k: usize = rng.random_range(1..6);
            let padding = rng.random_range(0..k);
            let size = |rng: &mut rand_chacha::ChaCha8Rng| rng.random_range(k.saturating_sub(2 * padding).max(1)..12);
            let hw = [size(&mut rng), size(&mut rng)];
            check(rng.random_range(1..6), rng.random_range(1..7), rng.random_range(1..7), k, padding, hw, 1000 + case, ALL);
        }
    }

    /// The network's first convolution sees an input that needs no gradient; a frozen kernel
    /// needs none either.
    #[test]
    fn untracked_inputs_and_kernels_get_no_gradient() {
        check(2, 3, 4, 3, 1, [5, 6], 50, Tracked { x: false, weight: true });
        check(2, 3, 4, 3, 1, [5, 6], 60, Tracked { x: true, weight: false });
    }

    #[test]
    fn only_plain_f32_convolutions_with_bias_on_autodiff_flex_come_here() {
        let device = Default::default();
        let same = PaddingConfig2d::Explicit(1, 1, 1, 1);
        let plain: Conv2d<AutodiffFlex> = Conv2dConfig::new([2, 3], [3, 3]).with_padding(same.clone()).init(&device);
        let x = random([2, 2, 5, 5], 3);
        assert_eq!(gemm_padding(&plain, &x), Some(1));
        let refused = [
            Conv2dConfig::new([2, 3], [3, 3]).with_padding(same.clone()).with_stride([2, 2]),
            Conv2dConfig::new([2, 3], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 0, 1, 0)),
            Conv2dConfig::new([2, 3], [3, 3]).with_padding(PaddingConfig2d::Explicit(3, 3, 3, 3)),
            Conv2dConfig::new([2, 3], [3, 3]).with_padding(same.clone()).with_bias(false),
            Conv2dConfig::new([2, 4], [3, 3]).with_padding(same.clone()).with_groups(2),
            Conv2dConfig::new([2, 3], [3, 3]).with_padding(same.clone()).with_dilation([2, 2]),
        ];
        for config in refused {
            assert_eq!(gemm_padding(&config.init::<AutodiffFlex>(&device), &x), None, "{config:?}");
        }
        // Other backends keep Burn's convolution.
        let on_ndarray: Conv2d<Autodiff<NdArray<f32>>> = Conv2dConfig::new([2, 3], [3, 3]).with_padding(same.clone()).init(&Default::default());
        assert_eq!(gemm_padding(&on_ndarray, &Tensor::zeros([2, 2, 5, 5], &Default::default())), None);
        assert_eq!(gemm_padding(&plain.valid(), &Tensor::<Flex, 4>::zeros([2, 2, 5, 5], &device)), None);

        // Through the module: the same output and gradients as the module's own forward.
        let grads_of = |ours: bool| {
            let x = x.clone().require_grad();
            let y = if ours { conv2d(&plain, x.clone()) } else { plain.forward(x.clone()) };
            let grads = (y.clone() * y.clone()).sum().backward();
            let weight = plain.weight.val().grad(&grads).expect("a kernel gradient").into_data();
            (y.into_data(), x.grad(&grads).expect("an input gradient").into_data(), weight)
        };
        let (ours, burns) = (grads_of(true), grads_of(false));
        ours.0.assert_approx_eq::<f32>(&burns.0, tolerance());
        ours.1.assert_approx_eq::<f32>(&burns.1, tolerance());
        ours.2.assert_approx_eq::<f32>(&burns.2, tolerance());
    }
}
