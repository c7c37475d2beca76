//! GroupNorm, optionally followed by SiLU, on Burn's CPU backend as one pass with its own backward: `y = silu(γ (x − μ_g) / √(σ²_g + ε) + β)`.
//!
//! Composed from Burn's ops, a GroupNorm and the SiLU after it are some twenty passes over the
//! activations (forward and backward), each a separate Flex kernel on one core; profiled on the
//! quick-start network they were the largest cost after the convolutions. Here the forward pass
//! reads each element twice (statistics, output) and the backward pass twice (sums, gradient),
//! over each sample's contiguous groups, one sample per rayon task. [`group_norm`] recognises
//! `Autodiff<Flex>` by type, as [`crate::flex_conv`] does, and leaves every other backend to the
//! composed ops in [`crate::norm`].

use std::any::TypeId;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
use rayon::prelude::*;

use crate::flex_conv::{cast, f32s, AutodiffFlex};

/// `silu(γ x̂ + β)` (or `γ x̂ + β` without `silu`) with `x̂` normalised over `groups` groups of
/// channels, computed here when `B` is `Autodiff<Flex>` (with its backward) or `Flex` (forward
/// only) and `x`, `γ` and `β` are f32; `None` otherwise.
pub(crate) fn group_norm<B: Backend>(
    x: &Tensor<B, 4>,
    gamma: &Tensor<B, 1>,
    beta: &Tensor<B, 1>,
    groups: usize,
    epsilon: f64,
    silu: bool,
) -> Option<Tensor<B, 4>> {
    if [x.dtype(), gamma.dtype(), beta.dtype()] != [DType::F32; 3] {
        return None;
    }
    let norm = FusedGroupNorm { groups, epsilon, silu };
    if TypeId::of::<B>() == TypeId::of::<AutodiffFlex>() {
        Some(cast(norm.apply(cast(x.clone()), cast(gamma.clone()), cast(beta.clone()))))
    } else if TypeId::of::<B>() == TypeId::of::<Flex>() {
        // Sampling: the forward pass alone.
        let [x, gamma, beta] = [x.clone().into_primitive().tensor(), gamma.clone().into_primitive().tensor(), beta.clone().into_primitive().tensor()]
            .map(|t| cast::<_, FlexTensor>(t).to_contiguous());
        Some(Tensor::from_primitive(TensorPrimitive::Float(cast(norm.output(&x, &gamma, &beta)))))
    } else {
        None
    }
}

/// `[N, C, H·W]` of an `[N, C, H, W]` tensor.
fn dims3(x: &FlexTensor) -> [usize; 3] {
    let shape = x.layout().shape();
    [shape[0], shape[1], shape[2] * shape[3]]
}

/// The fixed arguments of one GroupNorm.
#[derive(Debug, Clone, Copy)]
struct FusedGroupNorm {
    groups: usize,
    epsilon: f64,
    silu: bool,
}

/// What the backward pass needs: the input, the affine parameters, each (sample, group)'s
/// mean and `1/√(σ² + ε)`, and with SiLU each element's `sigmoid(a)` (one activation's memory,
/// to spare the backward pass an `exp` per element).
#[derive(Debug, Clone)]
struct Saved {
    x: FlexTensor,
    gamma: FlexTensor,
    beta: FlexTensor,
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    sigmoid: Vec<f32>,
}

impl FusedGroupNorm {
    fn apply(self, x: Tensor<AutodiffFlex, 4>, gamma: Tensor<AutodiffFlex, 1>, beta: Tensor<AutodiffFlex, 1>) -> Tensor<AutodiffFlex, 4> {
        let [x, gamma, beta] = [x.into_primitive().tensor(), gamma.into_primitive().tensor(), beta.into_primitive().tensor()];
        let nodes = [x.node.clone(), gamma.node.clone(), beta.node.clone()];
        let (xp, gp, bp) = (x.primitive.to_contiguous(), gamma.primitive.to_contiguous(), beta.primitive.to_contiguous());
        let output = match self.prepare::<NoCheckpointing>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let mut sigmoid = vec![0.0; if self.silu { xp.layout().num_elements() } else { 0 }];
                let (y, mean, inv_std) = self.forward(f32s(&xp), f32s(&gp), f32s(&bp), self.layout(dims3(&xp)), &mut sigmoid);
                let output = FlexTensor::from_data(TensorData::new(y, xp.layout().shape().clone()));
                prep.finish(Saved { x: xp, gamma: gp, beta: bp, mean, inv_std, sigmoid }, output)
            }
            OpsKind::UnTracked(prep) => prep.finish(self.output(&xp, &gp, &bp)),
        };
        Tensor::from_primitive(TensorPrimitive::Float(output))
    }

    /// The output alone, of contiguous f32 tensors (no gradient to come).
    fn output(&self, x: &FlexTensor, gamma: &FlexTensor, beta: &FlexTensor) -> FlexTensor {
        let (y, _, _) = self.forward(f32s(x), f32s(gamma), f32s(beta), self.layout(dims3(x)), &mut []);
        FlexTensor::from_data(TensorData::new(y, x.layout().shape().clone()))
    }

    fn layout(&self, [n, c, hw]: [usize; 3]) -> Layout {
        Layout { n, c, hw, groups: self.groups, group_channels: c / self.groups }
    }

    /// The output and, per (sample, group), `μ` and `1/√(σ² + ε)`; with SiLU, each `sigmoid(a)`
    /// into `sigmoid` unless it is empty.
    fn forward(&self, x: &[f32], gamma: &[f32], beta: &[f32], at: Layout, sigmoid: &mut [f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let mut y = vec![0.0f32; x.len()];
        let mut stats = vec![(0.0f32, 0.0f32); at.n * at.groups];
        let sample = at.c * at.hw;
        let keep = !sigmoid.is_empty();
        let sigmoids: Vec<&mut [f32]> = if keep { sigmoid.chunks_mut(sample).collect() } else { (0..at.n).map(|_| &mut [][..]).collect() };
        y.par_chunks_mut(sample)
            .zip(x.par_chunks(sample))
            .zip(stats.par_chunks_mut(at.groups))
            .zip(sigmoids)
            .for_each(|(((y, x), stats), sigmoid)| {
                for (g, stat) in stats.iter_mut().enumerate() {
                    let range = at.group_range(g);
                    let (mean, inv_std) = moments(&x[range.clone()], self.epsilon);
                    *stat = (mean, inv_std);
                    for i in 0..at.group_channels {
                        let ch = g * at.group_channels + i;
                        let pixels = range.start + i * at.hw..range.start + (i + 1) * at.hw;
                        // γ x̂ + β = x·s + t: one multiply-add per element.
                        let s = gamma[ch] * inv_std;
                        let t = beta[ch] - s * mean;
                        let (y, x) = (&mut y[pixels.clone()], &x[pixels.clone()]);
                        if !self.silu {
                            y.iter_mut().zip(x).for_each(|(y, &x)| *y = x * s + t);
                        } else if keep {
                            for ((y, sig), &x) in y.iter_mut().zip(&mut sigmoid[pixels]).zip(x) {
                                let a = x * s + t;
                                *sig = 1.0 / (1.0 + (-a).exp());
                                *y = a * *sig;
                            }
                        } else {
                            y.iter_mut().zip(x).for_each(|(y, &x)| {
                                let a = x * s + t;
                                *y = a / (1.0 + (-a).exp());
                            });
                        }
                    }
                }
            });
        let (mean, inv_std) = stats.into_iter().unzip();
        (y, mean, inv_std)
    }

    /// `(dx, dγ, dβ)` from the output gradient `dy`:
    /// `dx = (1/σ) (g − mean_g(g) − x̂ · mean_g(g x̂))` with `g = γ · dy · silu'(a)`,
    /// `dγ = Σ dy silu'(a) x̂`, `dβ = Σ dy silu'(a)`, sums over samples and pixels.
    fn gradients(&self, dy: &[f32], saved: &Saved, at: Layout) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (x, gamma, beta) = (f32s(&saved.x), f32s(&saved.gamma), f32s(&saved.beta));
        let mut dx = vec![0.0f32; x.len()];
        // Per-sample partial sums of dγ and dβ, added in sample order below so that the result
        // does not depend on how rayon splits the batch.
        let mut partial = vec![(0.0f32, 0.0f32); at.n * at.c];
        dx.par_chunks_mut(at.c * at.hw)
            .zip(partial.par_chunks_mut(at.c))
            .enumerate()
            .for_each(|(sample, (dx, partial))| {
                let x = &x[sample * at.c * at.hw..][..at.c * at.hw];
                let dy = &dy[sample * at.c * at.hw..][..at.c * at.hw];
                let sigmoid = if self.silu { &saved.sigmoid[sample * at.c * at.hw..][..at.c * at.hw] } else { &[][..] };
                for g in 0..at.groups {
                    let stat = sample * at.groups + g;
                    let (mean, inv_std) = (saved.mean[stat], saved.inv_std[stat]);
                    let range = at.group_range(g);
                    // First pass: g = γ dy silu'(a) into dx, the channel sums and the group means.
                    let (mut sum_g, mut sum_gx) = (0.0f64, 0.0f64);
                    for i in 0..at.group_channels {
                        let ch = g * at.group_channels + i;
                        let pixels = range.start + i * at.hw..range.start + (i + 1) * at.hw;
                        let (mut d_beta, mut d_gamma) = (0.0f32, 0.0f32);
                        let (mut channel_g, mut channel_gx) = (0.0f32, 0.0f32);
                        for (j, ((dx, &x), &dy)) in dx[pixels.clone()].iter_mut().zip(&x[pixels.clone()]).zip(&dy[pixels.clone()]).enumerate() {
                            let x_hat = (x - mean) * inv_std;
                            let da = if self.silu {
                                let (a, s) = (gamma[ch] * x_hat + beta[ch], sigmoid[pixels.start + j]);
                                dy * s * (1.0 + a * (1.0 - s))
                            } else {
                                dy
                            };
                            d_beta += da;
                            d_gamma += da * x_hat;
                            let g = da * gamma[ch];
                            channel_g += g;
                            channel_gx += g * x_hat;
                            *dx = g;
                        }
                        partial[ch] = (d_gamma, d_beta);
                        sum_g += f64::from(channel_g);
                        sum_gx += f64::from(channel_gx);
                    }
                    // Second pass: dx = (g − mean(g) − x̂ mean(g x̂)) / σ.
                    let count = (at.group_channels * at.hw) as f64;
                    let (mean_g, mean_gx) = ((sum_g / count) as f32, (sum_gx / count) as f32);
                    for (dx, &x) in dx[range.clone()].iter_mut().zip(&x[range]) {
                        let x_hat = (x - mean) * inv_std;
                        *dx = (*dx - mean_g - x_hat * mean_gx) * inv_std;
                    }
                }
            });
        let (mut d_gamma, mut d_beta) = (vec![0.0f32; at.c], vec![0.0f32; at.c]);
        for sample in partial.chunks(at.c) {
            for (ch, &(dg, db)) in sample.iter().enumerate() {
                d_gamma[ch] += dg;
                d_beta[ch] += db;
            }
        }
        (dx, d_gamma, d_beta)
    }
}

impl Backward<Flex, 3> for FusedGroupNorm {
    type State = Saved;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node).to_contiguous();
        let saved = ops.state;
        let at = self.layout(dims3(&saved.x));
        let (dx, d_gamma, d_beta) = self.gradients(f32s(&dy), &saved, at);
        let c = at.c;
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(dx, saved.x.layout().shape().clone())));
        }
        if let Some(node) = node_gamma {
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(d_gamma, [c])));
        }
        if let Some(node) = node_beta {
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(d_beta, [c])));
        }
    }
}

/// Sizes of an `[N, C, H·W]` activation split into groups of `group_channels` channels.
#[derive(Debug, Clone, Copy)]
struct Layout {
    n: usize,
    c: usize,
    hw: usize,
    groups: usize,
    group_channels: usize,
}

impl Layout {
    /// The elements of group `g` within one sample.
    fn group_range(&self, g: usize) -> std::ops::Range<usize> {
        let len = self.group_channels * self.hw;
        g * len..(g + 1) * len
    }
}

/// `(μ, 1/√(σ² + ε))` of one group, in two passes as Burn's composed ops.
fn moments(x: &[f32], epsilon: f64) -> (f32, f32) {
    let count = x.len() as f64;
    let mean = lane_sum(x.iter().copied()) / count;
    let mean32 = mean as f32;
    let variance = lane_sum(x.iter().map(|&v| (v - mean32) * (v - mean32))) / count;
    (mean32, (1.0 / (variance + epsilon).sqrt()) as f32)
}

/// A sum in eight f32 lanes, which the compiler vectorises, added up in f64.
fn lane_sum(values: impl Iterator<Item = f32>) -> f64 {
    let mut lanes = [0.0f32; 8];
    for (i, v) in values.enumerate() {
        lanes[i % 8] += v;
    }
    lanes.iter().map(|&l| f64::from(l)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::norm::GroupNorm;
    use burn::backend::NdArray;
    use burn::module::Param;
    use burn::tensor::activation;
    use burn::tensor::Tolerance;

    /// Values `offset ± scale` from a generator of their own, so tests running in parallel do not
    /// share the backend's.
    fn random<Bk: Backend, const D: usize>(shape: [usize; D], offset: f32, scale: f32, seed: u64) -> Tensor<Bk, D> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let values: Vec<f32> = (0..shape.iter().product()).map(|_| offset + scale * rng.random_range(-1.0f32..1.0)).collect();
        Tensor::<Bk, 1>::from_floats(values.as_slice(), &Default::default()).reshape(shape)
    }

    fn tolerance() -> Tolerance<f32> {
        Tolerance::<f32>::absolute(2e-5).set_relative(2e-4)
    }

    fn norm<Bk: Backend>(c: usize, seed: u64) -> GroupNorm<Bk> {
        let mut norm = GroupNorm::new(c, 1e-6, &Default::default());
        norm.gamma = Param::from_tensor(random([c], 1.0, 0.5, seed));
        norm.beta = Param::from_tensor(random([c], 0.0, 0.5, seed + 1));
        norm
    }

    /// This file's pass and Burn's composed ops, forward and the three gradients, on one shape.
    fn check([n, c, h, w]: [usize; 4], silu: bool, x_tracked: bool, seed: u64) {
        let norm = norm::<AutodiffFlex>(c, seed);
        // An offset mean, as activations have, tests the centring.
        let x = random::<AutodiffFlex, 4>([n, c, h, w], 2.0, 3.0, seed + 2);
        let x = if x_tracked { x.require_grad() } else { x };
        let upstream = random::<AutodiffFlex, 4>([n, c, h, w], 0.0, 1.0, seed + 3);
        let run = |fused: bool| {
            let y = match (fused, silu) {
                (true, true) => norm.forward_silu(x.clone()),
                (true, false) => norm.forward(x.clone()),
                (false, true) => activation::silu(norm.composed(x.clone())),
                (false, false) => norm.composed(x.clone()),
            };
            let grads = (y.clone() * upstream.clone()).sum().backward();
            let grad = x.grad(&grads).map(|g| g.into_data());
            (y.into_data(), grad, norm.gamma.grad(&grads).map(|g| g.into_data()), norm.beta.grad(&grads).map(|g| g.into_data()))
        };
        let (ours, burns) = (run(true), run(false));
        let what = format!("{n}x{c}x{h}x{w} groups={} silu={silu}", norm.groups());
        assert_eq!(ours.0.shape, burns.0.shape, "output shape, {what}");
        ours.0.assert_approx_eq::<f32>(&burns.0, tolerance());
        assert_eq!(ours.1.is_some(), x_tracked, "dx present, {what}");
        for (name, a, b) in [("dx", ours.1, burns.1), ("dgamma", ours.2, burns.2), ("dbeta", ours.3, burns.3)] {
            assert_eq!(a.is_some(), b.is_some(), "{name} present, {what}");
            if let (Some(a), Some(b)) = (a, b) {
                assert_eq!(a.shape, b.shape, "{name} shape, {what}");
                a.assert_approx_eq::<f32>(&b, tolerance());
            }
        }
    }

    #[test]
    fn matches_burns_ops_forward_and_backward_on_odd_shapes() {
        let shapes = [[1, 1, 1, 1], [1, 4, 1, 1], [2, 3, 5, 7], [3, 8, 4, 3], [2, 12, 3, 5], [1, 64, 2, 2], [2, 136, 3, 1], [4, 32, 7, 7]];
        for (i, shape) in shapes.into_iter().enumerate() {
            for silu in [false, true] {
                check(shape, silu, true, 10 * i as u64);
            }
        }
    }

    #[test]
    fn matches_burns_ops_on_random_shapes() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(19);
        for seed in 0..12 {
            let shape = [rng.random_range(1..5), rng.random_range(1..70), rng.random_range(1..9), rng.random_range(1..9)];
            check(shape, rng.random(), true, 100 + seed);
        }
    }

    #[test]
    fn an_untracked_input_gets_no_gradient() {
        check([2, 8, 3, 3], true, false, 7);
    }

    #[test]
    fn sampling_on_flex_matches_burns_ops() {
        let norm = norm::<Flex>(24, 3);
        let x = random::<Flex, 4>([3, 24, 5, 6], -1.0, 2.0, 4);
        norm.forward_silu(x.clone()).into_data().assert_approx_eq::<f32>(&activation::silu(norm.composed(x.clone())).into_data(), tolerance());
        norm.forward(x.clone()).into_data().assert_approx_eq::<f32>(&norm.composed(x).into_data(), tolerance());
    }

    #[test]
    fn only_flex_in_f32_comes_here() {
        let x = random::<AutodiffFlex, 4>([1, 4, 2, 2], 0.0, 1.0, 1);
        let (gamma, beta) = (random::<AutodiffFlex, 1>([4], 1.0, 0.1, 2), random::<AutodiffFlex, 1>([4], 0.0, 0.1, 3));
        assert!(group_norm(&x, &gamma, &beta, 2, 1e-6, true).is_some());
        let x = random::<NdArray, 4>([1, 4, 2, 2], 0.0, 1.0, 1);
        let (gamma, beta) = (random::<NdArray, 1>([4], 1.0, 0.1, 2), random::<NdArray, 1>([4], 0.0, 0.1, 3));
        assert!(group_norm(&x, &gamma, &beta, 2, 1e-6, true).is_none());
        let x = random::<Flex, 4>([1, 4, 2, 2], 0.0, 1.0, 1).cast(DType::F64);
        let (gamma, beta) = (random::<Flex, 1>([4], 1.0, 0.1, 2).cast(DType::F64), random::<Flex, 1>([4], 0.0, 0.1, 3).cast(DType::F64));
        assert!(group_norm(&x, &gamma, &beta, 2, 1e-6, true).is_none());
    }
}
