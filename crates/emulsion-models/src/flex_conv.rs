//! Convolutions on Burn's CPU backend as GEMMs: `yₙ = W · im2col(xₙ) + b`, `dX = conv(dY, flip(Wᵀ))`, `dW = Σₙ dYₙ · im2col(xₙ)ᵀ`.
//!
//! Burn's generic conv2d backward computes the input gradient with a transposed convolution,
//! which Flex runs on one core, and the weight gradient as a convolution with the batch as the
//! channels, which Flex sends to its direct small-channel path for batches of four or fewer.
//! Flex's forward convolution, in turn, spent more time reordering the input to channels-last
//! on one core, unfolding it tile by tile and scattering each tile's product into place than in
//! the products themselves, for the quick-start network's 16 to 32 channels. Here every image
//! is one task on Flex's rayon pool: its im2col (one row per channel and kernel offset, copied
//! row by row from the image into a buffer the thread keeps) and one GEMM of the `gemm` crate,
//! which Flex multiplies with, written in place. The input gradient is that forward convolution
//! of the output gradient with the flipped, transposed kernel, and the weight gradient one
//! product per image against its im2col, summed in image order.
//!
//! Rust has no specialisation, and Burn's backend-extension pattern needs a trait bound on every
//! generic user of the network; so [`conv2d`] recognises `Autodiff<Flex>` and `Flex` by type
//! instead and leaves every other backend, and every convolution it does not cover, to Burn.

use std::any::{Any, TypeId};
use std::cell::RefCell;

use rayon::prelude::*;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::nn::conv::Conv2d;
use burn::nn::PaddingConfig2d;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};

/// The training backend whose convolution gradients this file computes.
pub(crate) type AutodiffFlex = Autodiff<Flex>;

/// `conv.forward(x)`, computed by this file where [`gemm_padding`] allows: with its gradients on
/// `Autodiff<Flex>`, the forward pass alone on `Flex` (sampling).
pub fn conv2d<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let Some(padding) = gemm_padding(conv, &x) else {
        return conv.forward(x);
    };
    let bias = conv.bias.as_ref().map(|bias| bias.val()).expect("gemm_padding checked the bias");
    if TypeId::of::<B>() == TypeId::of::<AutodiffFlex>() {
        cast(conv2d_gemm_grads(cast(x), cast(conv.weight.val()), cast(bias), padding))
    } else {
        let [x, weight, bias] = [x.into_primitive().tensor(), conv.weight.val().into_primitive().tensor(), bias.into_primitive().tensor()]
            .map(|t| cast::<_, FlexTensor>(t).to_contiguous());
        Tensor::from_primitive(TensorPrimitive::Float(cast(conv_forward(&x, &weight, Some(&bias), padding))))
    }
}

/// The padding of a convolution this file computes: on `Autodiff<Flex>` or `Flex` in f32, with a
/// bias, a square kernel, stride 1, no dilation, one group and the same padding `p < k` on every
/// side. `None` leaves it to Burn.
fn gemm_padding<B: Backend>(conv: &Conv2d<B>, x: &Tensor<B, 4>) -> Option<usize> {
    let [k, k_w] = conv.kernel_size;
    let plain = conv.stride == [1, 1] && conv.dilation == [1, 1] && conv.groups == 1 && k == k_w && conv.bias.is_some();
    let flex = TypeId::of::<B>() == TypeId::of::<AutodiffFlex>() || TypeId::of::<B>() == TypeId::of::<Flex>();
    let all_f32 = x.dtype() == DType::F32 && conv.weight.val().dtype() == DType::F32 && conv.bias.as_ref().is_some_and(|bias| bias.val().dtype() == DType::F32);
    if !plain || !flex || !all_f32 {
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
    let forward = |x: FlexTensor, weight: FlexTensor, bias: FlexTensor| conv_forward(&x.to_contiguous(), &weight.to_contiguous(), Some(&bias.to_contiguous()), padding);
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
        let grad = grads.consume::<Flex>(&ops.node).to_contiguous();
        let (x_state, weight_state, padding) = ops.state;
        let x = checkpointer.retrieve_node_output::<FloatTensor<Flex>>(x_state).to_contiguous();
        let weight = checkpointer.retrieve_node_output::<FloatTensor<Flex>>(weight_state).to_contiguous();
        let shape = ConvShape::of(&x, &weight, padding);
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, input_grad(&grad, &weight, padding));
        }
        if let Some(node) = node_weight {
            let dw = weight_grad(f32s(&x), f32s(&grad), shape);
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(dw, [shape.c_out, shape.c_in, shape.k, shape.k])));
        }
        if let Some(node) = node_bias {
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(bias_grad(f32s(&grad), shape), [shape.c_out])));
        }
    }
}

/// The values of a contiguous f32 tensor.
pub(crate) fn f32s(tensor: &FlexTensor) -> &[f32] {
    tensor.as_slice::<f32>().expect("a contiguous f32 tensor")
}

/// The sizes of one stride-1 convolution with a square `k × k` kernel and padding `p < k`.
#[derive(Debug, Clone, Copy)]
struct ConvShape {
    n: usize,
    c_in: usize,
    c_out: usize,
    k: usize,
    padding: usize,
    h: usize,
    w: usize,
}

impl ConvShape {
    fn of(x: &FlexTensor, weight: &FlexTensor, padding: usize) -> Self {
        let (x, weight) = (x.layout().shape(), weight.layout().shape());
        Self { n: x[0], c_in: x[1], c_out: weight[0], k: weight[2], padding, h: x[2], w: x[3] }
    }

    fn out(&self) -> [usize; 2] {
        [self.h + 2 * self.padding + 1 - self.k, self.w + 2 * self.padding + 1 - self.k]
    }

    fn hw_out(&self) -> usize {
        let [h, w] = self.out();
        h * w
    }

    /// The rows of an image's im2col: `C_in·k²`.
    fn patch(&self) -> usize {
        self.c_in * self.k * self.k
    }
}

/// `yₙ = W · im2col(xₙ) + b` for contiguous f32 tensors.
fn conv_forward(x: &FlexTensor, weight: &FlexTensor, bias: Option<&FlexTensor>, padding: usize) -> FlexTensor {
    let shape = ConvShape::of(x, weight, padding);
    let [h_out, w_out] = shape.out();
    let y = forward(f32s(x), f32s(weight), bias.map(f32s), shape);
    FlexTensor::from_data(TensorData::new(y, [shape.n, shape.c_out, h_out, w_out]))
}

/// `yₙ [C_out, H'W'] = W [C_out, C_in·k²] · im2col(xₙ) [C_in·k², H'W'] (+ b)`: one GEMM per
/// image, written in place; images in parallel on Flex's rayon pool, each on one core, so the
/// result does not depend on how the batch is split.
fn forward(x: &[f32], weight: &[f32], bias: Option<&[f32]>, shape: ConvShape) -> Vec<f32> {
    let (hw_out, patch) = (shape.hw_out(), shape.patch());
    let mut y = vec![0.0f32; shape.n * shape.c_out * hw_out];
    y.par_chunks_mut(shape.c_out * hw_out).zip(x.par_chunks(shape.c_in * shape.h * shape.w)).for_each(|(y_n, x_n)| {
        if let Some(bias) = bias {
            for (row, &b) in y_n.chunks_mut(hw_out).zip(bias) {
                row.fill(b);
            }
        }
        with_im2col(x_n, shape, |cols| {
            // SAFETY: `y_n` is `C_out × H'W'`, `weight` `C_out × C_in·k²` and `cols`
            // `C_in·k² × H'W'`, all row-major and in bounds for these strides.
            unsafe {
                gemm::gemm(
                    shape.c_out, hw_out, patch,
                    y_n.as_mut_ptr(), 1, hw_out as isize, bias.is_some(),
                    weight.as_ptr(), 1, patch as isize,
                    cols.as_ptr(), 1, hw_out as isize,
                    1.0, 1.0, false, false, false, gemm::Parallelism::None,
                );
            }
        });
    });
    y
}

/// `dX = conv(dY, W̃, padding k − 1 − p)` with `W̃[i, o, u, v] = W[o, i, k−1−u, k−1−v]` (stride 1).
fn input_grad(grad: &FlexTensor, weight: &FlexTensor, padding: usize) -> FlexTensor {
    let dims = weight.layout().shape();
    let (c_out, c_in, k) = (dims[0], dims[1], dims[2]);
    let weight = f32s(weight);
    let mut flipped = vec![0.0f32; weight.len()];
    for (index, value) in flipped.iter_mut().enumerate() {
        let (i, o, u, v) = (index / (c_out * k * k), index / (k * k) % c_out, index / k % k, index % k);
        *value = weight[((o * c_in + i) * k + (k - 1 - u)) * k + (k - 1 - v)];
    }
    let flipped = FlexTensor::from_data(TensorData::new(flipped, [c_in, c_out, k, k]));
    conv_forward(grad, &flipped, None, k - 1 - padding)
}

/// `dW[o, i, u, v] = Σ_{n,y,x} dY[n, o, y, x] · X̄[n, i, y + u, x + v]`, `X̄` the padded input:
/// per image the product `dYₙ [C_out, H'W'] · im2col(xₙ)ᵀ [H'W', C_in·k²]` (images in parallel),
/// then the images' products summed in order.
fn weight_grad(x: &[f32], grad: &[f32], shape: ConvShape) -> Vec<f32> {
    let (hw_out, patch) = (shape.hw_out(), shape.patch());
    let size = shape.c_out * patch;
    let mut products = vec![0.0f32; shape.n * size];
    products
        .par_chunks_mut(size)
        .zip(x.par_chunks(shape.c_in * shape.h * shape.w))
        .zip(grad.par_chunks(shape.c_out * hw_out))
        .for_each(|((product, x_n), grad_n)| {
            with_im2col(x_n, shape, |cols| {
                // SAFETY: `product` is `C_out × C_in·k²`, `grad_n` `C_out × H'W'` and `cols`
                // `C_in·k² × H'W'` (read transposed), all row-major and in bounds.
                unsafe {
                    gemm::gemm(
                        shape.c_out, patch, hw_out,
                        product.as_mut_ptr(), 1, patch as isize, false,
                        grad_n.as_ptr(), 1, hw_out as isize,
                        cols.as_ptr(), hw_out as isize, 1,
                        0.0, 1.0, false, false, false, gemm::Parallelism::None,
                    );
                }
            });
        });
    let mut chunks = products.chunks_exact(size);
    let mut sum = chunks.next().map(<[f32]>::to_vec).unwrap_or_else(|| vec![0.0; size]);
    for product in chunks {
        sum.iter_mut().zip(product).for_each(|(total, value)| *total += value);
    }
    sum
}

/// `db[o] = Σ_{n,y,x} dY[n, o, y, x]`, image by image in order.
fn bias_grad(grad: &[f32], shape: ConvShape) -> Vec<f32> {
    let hw_out = shape.hw_out();
    let mut sum = vec![0.0f32; shape.c_out];
    for grad_n in grad.chunks_exact(shape.c_out * hw_out) {
        for (total, row) in sum.iter_mut().zip(grad_n.chunks_exact(hw_out)) {
            *total += row.iter().sum::<f32>();
        }
    }
    sum
}

thread_local! {
    /// One im2col buffer per thread, reused from image to image.
    static IM2COL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Calls `f` with image `x_n`'s im2col, `[C_in·k², H'W']`: row `c·k² + u·k + v` holds channel
/// `c` of the padded image shifted by `(u, v)`. A 1×1 kernel without padding is the image itself.
fn with_im2col<R>(x_n: &[f32], shape: ConvShape, f: impl FnOnce(&[f32]) -> R) -> R {
    let ConvShape { k, padding, h, w, .. } = shape;
    if k == 1 && padding == 0 {
        return f(x_n);
    }
    let [h_out, w_out] = shape.out();
    IM2COL.with_borrow_mut(|cols| {
        cols.resize(shape.patch() * h_out * w_out, 0.0);
        for (row, out) in cols.chunks_exact_mut(h_out * w_out).enumerate() {
            let (channel, u, v) = (row / (k * k), row / k % k, row % k);
            let source = &x_n[channel * h * w..(channel + 1) * h * w];
            // Output column x reads input column x + v − padding; keep those inside the image.
            let x0 = padding.saturating_sub(v).min(w_out);
            let x1 = (w + padding).saturating_sub(v).clamp(x0, w_out);
            for (y, out_row) in out.chunks_exact_mut(w_out).enumerate() {
                match (y + u).checked_sub(padding).filter(|&sy| sy < h) {
                    Some(sy) if x0 < x1 => {
                        let start = sy * w + x0 + v - padding;
                        out_row[..x0].fill(0.0);
                        out_row[x0..x1].copy_from_slice(&source[start..start + x1 - x0]);
                        out_row[x1..].fill(0.0);
                    }
                    _ => out_row.fill(0.0),
                }
            }
        }
        f(cols)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::ops::ConvOptions;
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

    /// Sampling runs the network on plain `Flex`: the forward pass alone, as Burn's.
    #[test]
    fn forward_on_plain_flex_matches_burns_conv2d() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let device = Default::default();
        for case in 0..12 {
            let k: usize = rng.random_range(1..6);
            let padding = rng.random_range(0..k);
            let size = |rng: &mut rand_chacha::ChaCha8Rng| rng.random_range(k.saturating_sub(2 * padding).max(1)..12);
            let (n, c_in, c_out) = (rng.random_range(1..6), rng.random_range(1..7), rng.random_range(1..7));
            let conv: Conv2d<Flex> = Conv2dConfig::new([c_in, c_out], [k, k]).with_padding(PaddingConfig2d::Explicit(padding, padding, padding, padding)).init(&device);
            let x = random([n, c_in, size(&mut rng), size(&mut rng)], 2000 + case).inner();
            assert_eq!(gemm_padding(&conv, &x), Some(padding));
            let (ours, burns) = (conv2d(&conv, x.clone()).into_data(), conv.forward(x).into_data());
            assert_eq!(ours.shape, burns.shape, "case {case}");
            ours.assert_approx_eq::<f32>(&burns, tolerance());
        }
    }

    #[test]
    fn only_plain_f32_convolutions_with_bias_on_flex_come_here() {
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
        let untyped = Conv2dConfig::new([2, 3], [3, 3]).with_padding(same.clone()).init::<AutodiffFlex>(&device);
        assert_eq!(gemm_padding(&untyped, &x.clone().cast(DType::F64)), None, "an f64 input");

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
