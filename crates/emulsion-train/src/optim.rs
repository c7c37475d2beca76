//! What Burn's optimisers leave to us: clipping by the *global* gradient norm, an exponential
//! moving average of the weights, and linear learning-rate warm-up.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::lr_scheduler::LrScheduler;
use burn::optim::{GradientsParams, LearningRate};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use std::collections::HashMap;

/// `‖g‖₂²`, the squared L2 norm of every gradient of `module` together, `[1]` on the device;
/// `None` when `grads` holds none of its parameters.
pub fn grad_norm_squared<B: AutodiffBackend, M: Module<B>>(module: &M, grads: &GradientsParams) -> Option<Tensor<B::InnerBackend, 1>> {
    struct SquaredNorm<'a, B: AutodiffBackend> {
        grads: &'a GradientsParams,
        total: Option<Tensor<B::InnerBackend, 1>>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredNorm<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
                let sq = g.powf_scalar(2.0).sum();
                self.total = Some(match self.total.take() {
                    Some(t) => t + sq,
                    None => sq,
                });
            }
        }
    }
    let mut norm = SquaredNorm::<B> { grads, total: None };
    module.visit(&mut norm);
    norm.total
}

/// Scales all gradients of `module` by `min(1, max_norm / ‖g‖₂)`, where `‖g‖₂` is the L2 norm
/// of every gradient together (PyTorch's `clip_grad_norm_`). Burn's own clipping is per tensor.
/// Stays on the device: the norm is never read back.
pub fn clip_grad_global_norm<B: AutodiffBackend, M: Module<B>>(module: &M, grads: GradientsParams, max_norm: f64) -> GradientsParams {
    match grad_norm_squared::<B, M>(module, &grads) {
        Some(squared) => clip_grad_to_norm::<B, M>(module, grads, max_norm, squared),
        None => grads,
    }
}

/// [`clip_grad_global_norm`] given `‖g‖₂²` (`[1]`): data-parallel peers pass the one they share.
pub fn clip_grad_to_norm<B: AutodiffBackend, M: Module<B>>(
    module: &M,
    mut grads: GradientsParams,
    max_norm: f64,
    squared: Tensor<B::InnerBackend, 1>,
) -> GradientsParams {
    struct Scale<'a, B: AutodiffBackend> {
        grads: &'a mut GradientsParams,
        factor: Tensor<B::InnerBackend, 1>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
                let factor = self.factor.clone().reshape([1; D]);
                self.grads.register(param.id, g * factor);
            }
        }
    }

    // factor = max_norm / max(‖g‖, max_norm): 1 below the threshold, shrinking above it.
    let factor = squared.sqrt().clamp_min(max_norm).recip() * max_norm;
    module.visit(&mut Scale::<B> { grads: &mut grads, factor });
    grads
}

/// `ema ← decay · ema + (1 − decay) · weights`, for every float parameter under the sub-module
/// `ema`, paired by path with the parameter under `weights`. Outside the autodiff graph.
pub fn update_ema<B: Backend, M: Module<B>>(module: M, weights: &str, ema: &str, decay: f64) -> M {
    #[derive(Default)]
    struct Collect<B: Backend> {
        root: String,
        path: Vec<String>,
        values: HashMap<String, Vec<Tensor<B, 1>>>,
    }
    impl<B: Backend> ModuleVisitor<B> for Collect<B> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if self.path.first() == Some(&self.root) {
                let key = self.path[1..].join(".");
                self.values.entry(key).or_default().push(param.val().detach().flatten(0, D - 1));
            }
        }
    }
    struct Blend<B: Backend> {
        root: String,
        path: Vec<String>,
        values: HashMap<String, Vec<Tensor<B, 1>>>,
        decay: f64,
    }
    impl<B: Backend> ModuleMapper<B> for Blend<B> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            if self.path.first() != Some(&self.root) {
                return param;
            }
            let key = self.path[1..].join(".");
            let source = self.values.get_mut(&key).and_then(|v| (!v.is_empty()).then(|| v.remove(0)));
            let Some(source) = source else {
                panic!("EMA parameter `{}.{key}` has no counterpart in the weights", self.root)
            };
            let (id, value, mapper) = param.consume();
            let shape = value.shape();
            let blended = value.detach() * self.decay + source.reshape(shape) * (1.0 - self.decay);
            Param::from_mapped_value(id, blended.detach(), mapper)
        }
    }
    let mut collect = Collect::<B> { root: weights.to_string(), ..Default::default() };
    module.visit(&mut collect);
    module.map(&mut Blend { root: ema.to_string(), path: vec![], values: collect.values, decay })
}

/// Linear warm-up from 0 to `peak` over `warmup` steps, then constant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WarmupLr {
    peak: f64,
    warmup: usize,
    step: usize,
}

impl WarmupLr {
    pub fn new(peak: f64, warmup: usize) -> Self {
        Self { peak, warmup, step: 0 }
    }
}

impl LrScheduler for WarmupLr {
    type Record<B: Backend> = usize;

    /// The learning rate of the next step (1-based): `peak · min(1, step / warmup)`.
    fn step(&mut self) -> LearningRate {
        self.step += 1;
        if self.warmup == 0 { self.peak } else { self.peak * (self.step as f64 / self.warmup as f64).min(1.0) }
    }

    fn to_record<B: Backend>(&self) -> Self::Record<B> {
        self.step
    }

    fn load_record<B: Backend>(mut self, record: Self::Record<B>) -> Self {
        self.step = record;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{TestAutodiffBackend, TestBackend};
    use burn::nn::{Linear, LinearConfig};

    #[derive(Module, Debug)]
    struct Pair<B: Backend> {
        weights: Linear<B>,
        ema: Linear<B>,
    }

    #[test]
    fn global_norm_clipping_scales_all_gradients_together() {
        let _rng = crate::lock_backend_rng();
        let device = Default::default();
        let layer: Linear<TestAutodiffBackend> = LinearConfig::new(3, 2).init(&device);
        let x = Tensor::<TestAutodiffBackend, 2>::from_floats([[1.0, 2.0, 3.0]], &device);
        let grads = GradientsParams::from_grads((layer.forward(x) * 10.0).sum().backward(), &layer);
        let w = grads.get::<TestBackend, 2>(layer.weight.id).unwrap();
        let b = grads.get::<TestBackend, 1>(layer.bias.as_ref().unwrap().id).unwrap();
        let norm = (w.clone().powf_scalar(2.0).sum() + b.clone().powf_scalar(2.0).sum()).sqrt().into_scalar() as f64;
        // ‖g‖ = 10 · sqrt(2 · (1 + 4 + 9) + 2) = 10 √30
        assert!((norm - 10.0 * 30f64.sqrt()).abs() < 1e-3);

        let clipped = clip_grad_global_norm(&layer, grads, 1.0);
        let w2 = clipped.get::<TestBackend, 2>(layer.weight.id).unwrap();
        let b2 = clipped.get::<TestBackend, 1>(layer.bias.as_ref().unwrap().id).unwrap();
        let norm2 = (w2.clone().powf_scalar(2.0).sum() + b2.powf_scalar(2.0).sum()).sqrt().into_scalar() as f64;
        assert!((norm2 - 1.0).abs() < 1e-5, "clipped norm {norm2}");
        // Direction is kept: every entry is scaled by the same factor.
        let ratio: Vec<f32> = (w2 / w).into_data().to_vec().unwrap();
        assert!(ratio.iter().all(|r| (*r as f64 - 1.0 / norm).abs() < 1e-6));

        let grads = GradientsParams::from_grads(layer.forward(Tensor::<TestAutodiffBackend, 2>::from_floats([[0.01, 0.0, 0.0]], &device)).sum().backward(), &layer);
        let before: Vec<f32> = grads.get::<TestBackend, 2>(layer.weight.id).unwrap().into_data().to_vec().unwrap();
        let kept = clip_grad_global_norm(&layer, grads, 5.0);
        let after: Vec<f32> = kept.get::<TestBackend, 2>(layer.weight.id).unwrap().into_data().to_vec().unwrap();
        assert_eq!(before, after, "gradients below the threshold are untouched");
    }

    #[test]
    fn ema_blends_each_parameter_with_its_counterpart() {
        let device = Default::default();
        let pair = Pair::<TestBackend> {
            weights: LinearConfig::new(2, 2).with_initializer(burn::nn::Initializer::Constant { value: 1.0 }).init(&device),
            ema: LinearConfig::new(2, 2).with_initializer(burn::nn::Initializer::Constant { value: 3.0 }).init(&device),
        };
        let ids_before = burn::module::list_param_ids(&pair);
        let pair = update_ema(pair, "weights", "ema", 0.75);
        assert_eq!(burn::module::list_param_ids(&pair), ids_before, "parameter ids are kept");
        let ema: Vec<f32> = pair.ema.weight.val().into_data().to_vec().unwrap();
        assert!(ema.iter().all(|v| (*v - (0.75 * 3.0 + 0.25 * 1.0)).abs() < 1e-6), "{ema:?}");
        let weights: Vec<f32> = pair.weights.weight.val().into_data().to_vec().unwrap();
        assert!(weights.iter().all(|v| *v == 1.0), "the weights are untouched");
    }

    #[test]
    fn warmup_rises_linearly_then_holds_and_resumes() {
        let mut lr = WarmupLr::new(1e-3, 4);
        let seq: Vec<f64> = (0..6).map(|_| lr.step()).collect();
        let expected = [2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3];
        assert!(seq.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-15), "{seq:?}");
        let record = WarmupLr::new(1e-3, 4).load_record::<TestBackend>(2);
        assert_eq!(record.clone().step(), 7.5e-4);
    }
}
