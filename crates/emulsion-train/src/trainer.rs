//! The module Burn's `Learner` trains: the network, its EMA copy (kept in the module so it is
//! checkpointed with it), and the recipe of one training step.

use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::{GradientsAccumulator, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Distribution, Transaction};
use burn::train::metric::{Adaptor, ItemLazy, LossInput};
use burn::train::{InferenceStep, TrainOutput, TrainStep};
use burn::backend::Flex;
use emulsion_models::{UNet, UNetConfig};

use emulsion_assign::{assign, assign_by_columns, host_costs, lapjv, AssignBackend, AssignConfig, Scope};

use crate::data::DiffusionBatch;
use crate::distributed::Peer;
use crate::objective::{Objective, ObjectiveInput};
use crate::optim::{clip_grad_global_norm, update_ema};
use crate::metrics::{AssignDistance, AssignMilliseconds, SkippedSteps};
use crate::seeds::{self, Stream};

/// Everything about a training step that is not a weight.
#[derive(Debug, Clone)]
pub struct Recipe {
    pub objective: Objective,
    /// Seeds each step's randomness together with the step index.
    pub seed: u64,
    pub ema_decay: f64,
    /// Global gradient-norm threshold; 0 disables clipping.
    pub grad_clip: f64,
    /// Probability of training a sample on the null label (classifier-free guidance).
    pub label_dropout: f64,
    /// Images per forward/backward pass; a larger batch is split and its gradients summed
    /// (EDM's `batch_gpu`). 0: the whole batch at once.
    pub micro_batch: usize,
    /// Threads computing micro-batches (see `TrainConfig::micro_batch_threads`); 0: two on a CPU
    /// backend, one on a GPU. The results are the same bits whatever the number.
    pub micro_batch_threads: usize,
    /// How each batch's noise is paired with its images (immiscible diffusion).
    pub assignment: AssignConfig,
    /// The next step's assignment, being solved on a host thread (`assignment.overlap`).
    pub ahead: AssignAhead,
    /// This replica's part in data-parallel training: the rows of each batch it trains.
    pub peer: Peer,
}

/// The assignment of step `k + 1`, solved by LAPJV on a host thread while step `k` runs
/// (`assignment.overlap`): its images are known a step early and its noise is a pure function of
/// the step, so the permutation is the one solving it inline would give. Shared by the clones of
/// a recipe (Burn clones the module).
#[derive(Debug, Clone, Default)]
pub struct AssignAhead(Arc<Mutex<Option<(u64, JoinHandle<Vec<usize>>)>>>);

impl AssignAhead {
    /// The columns solved for `step`, waiting for them if need be; `None` when none were
    /// started for it (the first step of a session).
    fn take(&self, step: u64) -> Option<Vec<usize>> {
        let pending = self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
        match pending {
            Some((ahead, handle)) if ahead == step => Some(handle.join().expect("LAPJV panicked on its host thread")),
            _ => None,
        }
    }

    fn start(&self, step: u64, solve: impl FnOnce() -> Vec<usize> + Send + 'static) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some((step, std::thread::spawn(solve)));
    }
}

/// The trained module: `net` is optimised, `ema` follows it.
#[derive(Module, Debug)]
pub struct Trainer<B: Backend> {
    pub net: UNet<B>,
    pub ema: UNet<B>,
    #[module(skip)]
    pub recipe: Recipe,
}

impl Recipe {
    /// Builds the network and its EMA copy, identical weights drawn from the run seed.
    pub fn init<B: Backend>(self, unet: &UNetConfig, device: &B::Device) -> Trainer<B> {
        let init = |device: &B::Device| {
            with_backend_draws(|| {
                B::seed(device, seeds::derive(self.seed, Stream::Init, 0));
                let net = unet.init::<B>(device);
                // Burn initialises lazily; draw every parameter now, in a fixed order.
                materialize(&net);
                net
            })
        };
        // Two initialisations from one seed: the same values under distinct parameter ids, so
        // the optimiser never mistakes an EMA parameter for a weight.
        Trainer { net: number_parameters(init(device), 0), ema: number_parameters(init(device), EMA_IDS), recipe: self }
    }
}

/// The first parameter id of the EMA copy (the network's count from 0).
const EMA_IDS: u64 = 1 << 32;

/// Numbers `module`'s parameters `first, first + 1, …` in visiting order. Burn draws parameter
/// ids at random, and records hold them: two identical runs would write different bytes.
fn number_parameters<B: Backend, M: Module<B>>(module: M, first: u64) -> M {
    struct Numbering(u64);
    impl<B: Backend> ModuleMapper<B> for Numbering {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (_, tensor, mapper) = param.consume();
            self.0 += 1;
            Param::from_mapped_value(ParamId::from(self.0 - 1), tensor, mapper)
        }
    }
    module.map(&mut Numbering(first))
}

/// Draws the values of every lazily initialised parameter of `module`.
pub fn materialize<B: Backend, M: Module<B>>(module: &M) {
    struct Touch;
    impl<B: Backend> ModuleVisitor<B> for Touch {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let _ = param.val();
        }
    }
    module.visit(&mut Touch);
}

impl<B: AssignBackend> Trainer<B> {
    /// The mean loss of `batch` (not reduced across devices), with all of the step's randomness
    /// drawn from the backend generator seeded by `(seed, step)`.
    pub fn loss(&self, batch: DiffusionBatch<B>) -> Tensor<B, 1> {
        self.loss_and_assignment(batch).loss
    }

    fn loss_and_assignment(&self, batch: DiffusionBatch<B>) -> DiffusionOutput<B> {
        let DiffusionBatch { images, labels, step, next_images } = batch;
        let noise = self.batch_noise(&images, step, next_images.as_ref());
        let loss = self.chunk_loss(images, noise.noise, labels, step, 0);
        DiffusionOutput { loss, assign_distance: noise.mean_distance, assign_seconds: noise.seconds, skipped_steps: 0 }
    }

    /// The noise of step `step`'s whole batch, drawn from its own stream and assigned to the
    /// images as the recipe says, before any split into micro-batches. Given the next step's
    /// images (and `assignment.overlap` with `lsa`), it also starts solving the next step's
    /// assignment on a host thread; the step that finds its own solved waits only for the rest.
    ///
    /// The noise is drawn for the whole (global) batch; what is assigned, and returned, are the
    /// rows [`Self::assigned_rows`] names: all of them, or this peer's shard.
    pub fn batch_noise(&self, images: &Tensor<B, 4>, step: u64, next_images: Option<&Tensor<B, 4>>) -> BatchNoise<B> {
        let rows = self.assigned_rows(images.dims()[0]);
        let part = |t: Tensor<B, 4>| t.narrow(0, rows.start, rows.len());
        let flat = |t: Tensor<B, 4>| t.reshape([rows.len() as i32, -1]);
        let noise = part(self.step_noise(images, step));
        let shape = noise.dims();
        let started = Instant::now();
        let assignment = &self.recipe.assignment;
        let assigned = match self.recipe.ahead.take(step) {
            Some(columns) => assign_by_columns(flat(part(images.clone())), flat(noise), &columns, started),
            None => assign(flat(part(images.clone())), flat(noise), assignment),
        };
        if let Some(next) = next_images.filter(|_| assignment.overlap && assignment.solves_on_host()) {
            let next_noise = flat(part(self.step_noise(next, step + 1)));
            if let Some(costs) = host_costs(&flat(part(next.clone())), &next_noise, assignment) {
                self.recipe.ahead.start(step + 1, move || lapjv(&costs));
            }
        }
        BatchNoise { rows, noise: assigned.noise.reshape(shape), mean_distance: assigned.mean_distance, seconds: started.elapsed().as_secs_f64() }
    }

    /// The rows of a batch of `n` that one assignment pairs: the whole batch (`assignment.scope
    /// = "global"`, the same problem on every peer) or this peer's shard (`"peer"`).
    fn assigned_rows(&self, n: usize) -> Range<usize> {
        match self.recipe.assignment.scope {
            Scope::Global => 0..n,
            Scope::Peer => self.recipe.peer.shard(n),
        }
    }

    /// Step `step`'s noise for `images` (the whole batch), from its own stream.
    fn step_noise(&self, images: &Tensor<B, 4>, step: u64) -> Tensor<B, 4> {
        let device = images.device();
        let step_seed = seeds::derive(self.recipe.seed, Stream::Step, step);
        with_backend_draws(|| {
            B::seed(&device, seeds::derive(step_seed, Stream::Noise, 0));
            Tensor::<B, 4>::random(images.dims(), Distribution::Normal(0.0, 1.0), &device)
        })
    }

    /// The mean loss of micro-batch `chunk` of step `step`, given its noise. Chunk 0 draws from
    /// the step's own seed, so an unsplit batch is the same whatever `micro_batch` is.
    ///
    /// Its draws (label drops, noise levels) are made holding [`BACKEND_DRAWS`], and its forward
    /// pass too when the network draws dropout masks; otherwise forward passes on several
    /// threads run side by side.
    fn chunk_loss(&self, images: Tensor<B, 4>, noise: Tensor<B, 4>, labels: Option<Tensor<B, 1, Int>>, step: u64, chunk: u64) -> Tensor<B, 1> {
        let device = images.device();
        let turn = BACKEND_DRAWS.lock().unwrap_or_else(PoisonError::into_inner);
        let step_seed = seeds::derive(self.recipe.seed, Stream::Step, step);
        B::seed(&device, if chunk == 0 { step_seed } else { seeds::derive(step_seed, Stream::MicroBatch, chunk) });
        let labels = match (self.net.null_label(), labels) {
            (Some(null), Some(labels)) => Some(self.drop_labels(labels, null)),
            _ => None,
        };
        let draws = self.recipe.objective.draw(step, images.dims()[0], &device);
        let turn = self.net.draws_in_forward().then_some(turn);
        let losses = self.recipe.objective.loss_given(&self.net, ObjectiveInput { x0: images, noise, labels, step }, draws);
        drop(turn);
        losses.mean()
    }

    /// Replaces each label by `null` with probability `label_dropout`.
    fn drop_labels(&self, labels: Tensor<B, 1, Int>, null: usize) -> Tensor<B, 1, Int> {
        if self.recipe.label_dropout <= 0.0 {
            return labels;
        }
        let dropped = Tensor::<B, 1>::random(labels.shape(), Distribution::Default, &labels.device())
            .lower_elem(self.recipe.label_dropout);
        labels.mask_fill(dropped, null as i64)
    }
}

/// A batch's noise after assignment.
pub struct BatchNoise<B: Backend> {
    /// The rows of the batch it is for.
    pub rows: Range<usize>,
    /// `[rows, C, H, W]`, row `i` paired with image `rows.start + i`.
    pub noise: Tensor<B, 4>,
    /// Mean L2 distance between each image and its noise, `[1]`, on the device.
    pub mean_distance: Tensor<B, 1>,
    /// Host seconds spent assigning.
    pub seconds: f64,
}

/// What a training step reports: its mean loss, and how far its images were from their noise.
pub struct DiffusionOutput<B: Backend> {
    pub loss: Tensor<B, 1>,
    /// Mean L2 distance between each image and its assigned noise, `[1]`.
    pub assign_distance: Tensor<B, 1>,
    /// Host seconds the assignment took.
    pub assign_seconds: f64,
    /// Steps skipped so far in the session (set by the training strategy).
    pub skipped_steps: u64,
}

impl<B: Backend> Adaptor<SkippedSteps> for DiffusionOutput<B> {
    fn adapt(&self) -> SkippedSteps {
        SkippedSteps(self.skipped_steps)
    }
}

impl<B: Backend> Adaptor<LossInput<B>> for DiffusionOutput<B> {
    fn adapt(&self) -> LossInput<B> {
        LossInput::new(self.loss.clone())
    }
}

impl<B: Backend> Adaptor<AssignDistance> for DiffusionOutput<B> {
    fn adapt(&self) -> AssignDistance {
        AssignDistance(self.assign_distance.clone().into_scalar().elem())
    }
}

impl<B: Backend> Adaptor<AssignMilliseconds> for DiffusionOutput<B> {
    fn adapt(&self) -> AssignMilliseconds {
        AssignMilliseconds(self.assign_seconds * 1e3)
    }
}

impl<B: Backend> ItemLazy for DiffusionOutput<B> {
    type ItemSync = DiffusionOutput<Flex>;

    /// Reads the loss back on the metrics thread, so the training loop never waits for it.
    fn sync(self) -> Self::ItemSync {
        let [loss, distance] = Transaction::default()
            .register(self.loss)
            .register(self.assign_distance)
            .execute()
            .try_into()
            .expect("two tensors");
        let device = Default::default();
        DiffusionOutput {
            loss: Tensor::from_data(loss, &device),
            assign_distance: Tensor::from_data(distance, &device),
            assign_seconds: self.assign_seconds,
            skipped_steps: self.skipped_steps,
        }
    }
}

impl<B: AutodiffBackend + AssignBackend> TrainStep for Trainer<B> {
    type Input = DiffusionBatch<B>;
    type Output = DiffusionOutput<B>;

    /// One backward pass per micro-batch; the gradients add up to those of the batch mean.
    fn step(&self, batch: DiffusionBatch<B>) -> TrainOutput<DiffusionOutput<B>> {
        let DiffusionBatch { images, labels, step, next_images } = batch;
        let n = images.dims()[0];
        let noise = self.batch_noise(&images, step, next_images.as_ref());
        // This peer's rows (all of them in a single process), in micro-batches numbered as in
        // a single process, so each image gets the draws it would get there.
        let shard = self.recipe.peer.shard(n);
        let size = match self.recipe.micro_batch {
            0 => shard.len(),
            m => m.min(shard.len()),
        };
        let parts: Vec<MicroBatch<B>> = shard
            .clone()
            .step_by(size)
            .map(|start| {
                let len = size.min(shard.end - start);
                MicroBatch {
                    chunk: (start / size) as u64,
                    images: images.clone().narrow(0, start, len),
                    noise: noise.noise.clone().narrow(0, start - noise.rows.start, len),
                    labels: labels.as_ref().map(|l| l.clone().narrow(0, start, len)),
                    // Weighted by its share of the batch, so the sum is the batch mean.
                    share: (len < n).then(|| len as f64 / n as f64),
                }
            })
            .collect();
        let threads = micro_batch_threads::<B>(self.recipe.micro_batch_threads, &images.device()).min(parts.len());
        let results = if threads <= 1 {
            parts.into_iter().map(|part| self.micro_batch_grads(part, step)).collect()
        } else {
            self.micro_batch_grads_in_parallel(parts, threads, step)
        };
        // Summed in micro-batch order whatever the threads: the same bits as one thread.
        let mut accumulator = GradientsAccumulator::new();
        let mut total: Option<Tensor<B, 1>> = None;
        for (grads, loss) in results {
            accumulator.accumulate(self, grads);
            total = Some(match total {
                Some(t) => t + loss,
                None => loss,
            });
        }
        let item = DiffusionOutput {
            loss: total.expect("a batch has images"),
            assign_distance: noise.mean_distance,
            assign_seconds: noise.seconds,
            skipped_steps: 0,
        };
        TrainOutput { grads: accumulator.grads(), item }
    }

    /// Clips by global norm, takes the optimiser step, then moves the EMA toward the new weights.
    fn optimize<AB, O>(self, optim: &mut O, lr: f64, grads: GradientsParams) -> Self
    where
        AB: AutodiffBackend,
        O: Optimizer<Self, AB>,
        Self: AutodiffModule<AB>,
    {
        let (clip, decay) = (self.recipe.grad_clip, self.recipe.ema_decay);
        // Data-parallel peers have clipped already, by the norm they share (`strategy.rs`).
        let clip = if self.recipe.peer.count > 1 { 0.0 } else { clip };
        let grads = if clip > 0.0 { clip_grad_global_norm::<AB, Self>(&self, grads, clip) } else { grads };
        let stepped = optim.step(lr, self, grads);
        update_ema::<AB, Self>(stepped, "net", "ema", decay)
    }
}

/// One micro-batch of a step: its images, their noise and labels, and its index in the step.
struct MicroBatch<B: Backend> {
    chunk: u64,
    images: Tensor<B, 4>,
    noise: Tensor<B, 4>,
    labels: Option<Tensor<B, 1, Int>>,
    /// Its share of the batch, when it is not the whole batch.
    share: Option<f64>,
}

/// Held while a micro-batch seeds and draws from the backend's generator (to the end of its
/// forward pass if the network draws dropout masks): Burn's CPU backends keep one generator per
/// process, so micro-batches, and data-parallel peers, computed at once take turns to draw from
/// it.
static BACKEND_DRAWS: Mutex<()> = Mutex::new(());

/// Runs `draw` holding [`BACKEND_DRAWS`]: what draws from the backend's generator beside the
/// training steps of other peers (peer 0's sample grids and FID images).
pub(crate) fn with_backend_draws<T>(draw: impl FnOnce() -> T) -> T {
    let _turn = BACKEND_DRAWS.lock().unwrap_or_else(PoisonError::into_inner);
    draw()
}

/// How many threads compute micro-batches: `configured`, or for 0 two on Burn's CPU backends
/// (whose operations mostly keep one core busy; each thread holds a micro-batch's activations,
/// and a third thread found no third core here) when there are two cores, and one on a GPU.
fn micro_batch_threads<B: Backend>(configured: usize, device: &B::Device) -> usize {
    match configured {
        0 if is_cpu_backend::<B>(device) => std::thread::available_parallelism().map_or(1, |n| n.get().min(2)),
        0 => 1,
        n => n,
    }
}

/// Whether `B` is (an autodiff of) Burn's Flex or ndarray backend, by the names Burn gives them.
fn is_cpu_backend<B: Backend>(device: &B::Device) -> bool {
    let name = B::name(device);
    ["flex", "ndarray"].iter().any(|cpu| name == *cpu || name == format!("autodiff<{cpu}>"))
}

impl<B: AutodiffBackend + AssignBackend> Trainer<B> {
    /// The gradients and (detached, weighted) loss of one micro-batch.
    fn micro_batch_grads(&self, part: MicroBatch<B>, step: u64) -> (GradientsParams, Tensor<B, 1>) {
        let loss = self.chunk_loss(part.images, part.noise, part.labels, step, part.chunk);
        let loss = match part.share {
            Some(share) => loss * share,
            None => loss,
        };
        (GradientsParams::from_grads(loss.backward(), self), loss.detach())
    }

    /// The same trainer whose network's parameters are new leaves of the autodiff graph (same
    /// values, same ids). Threads that share leaves share Burn's graph, and one thread's backward
    /// pass then deadlocks with another's forward pass.
    fn replica(&self) -> Self {
        struct NewLeaves;
        impl<B: AutodiffBackend> ModuleMapper<B> for NewLeaves {
            fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
                let (id, tensor, mapper) = param.consume();
                // A detached tensor is a new leaf, and keeps `require_grad`.
                Param::from_mapped_value(id, tensor.detach(), mapper)
            }
        }
        Trainer { net: self.net.clone().map(&mut NewLeaves), ema: self.ema.clone(), recipe: self.recipe.clone() }
    }

    /// [`Self::micro_batch_grads`] of every part on `threads` threads, each with its own
    /// [`Self::replica`], in the parts' order.
    fn micro_batch_grads_in_parallel(&self, parts: Vec<MicroBatch<B>>, threads: usize, step: u64) -> Vec<(GradientsParams, Tensor<B, 1>)> {
        let count = parts.len();
        let queue = Mutex::new(parts.into_iter().enumerate());
        let mut done: Vec<(usize, (GradientsParams, Tensor<B, 1>))> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        let replica = self.replica();
                        let mut done = Vec::new();
                        loop {
                            let next = queue.lock().unwrap_or_else(PoisonError::into_inner).next();
                            let Some((index, part)) = next else { break done };
                            done.push((index, replica.micro_batch_grads(part, step)));
                        }
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|worker| worker.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
                .collect()
        });
        done.sort_by_key(|(index, _)| *index);
        debug_assert_eq!(done.len(), count);
        done.into_iter().map(|(_, result)| result).collect()
    }
}

impl<B: AssignBackend> InferenceStep for Trainer<B> {
    type Input = DiffusionBatch<B>;
    type Output = DiffusionOutput<B>;

    fn step(&self, batch: DiffusionBatch<B>) -> DiffusionOutput<B> {
        self.loss_and_assignment(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, DatasetKind};
    use crate::{TestAutodiffBackend, TestBackend};

    fn recipe(seed: u64) -> Recipe {
        let config = Config::from_toml("[data]\ndataset = \"idx\"\n", std::path::Path::new("t.toml"), &[]).unwrap();
        assert_eq!(config.data.dataset, DatasetKind::Idx);
        Recipe {
            objective: config.diffusion.build_objective(config.train.steps as u64).unwrap(),
            seed,
            ema_decay: 0.5,
            grad_clip: 1.0,
            label_dropout: 0.5,
            micro_batch: 0,
            micro_batch_threads: 1,
            assignment: AssignConfig::default(),
            ahead: AssignAhead::default(),
            peer: Peer::alone(),
        }
    }

    fn tiny() -> UNetConfig {
        UNetConfig::new(4, 1).with_model_channels(4).with_channel_mult(vec![1]).with_num_blocks(1).with_attn_resolutions(vec![]).with_num_classes(3)
    }

    #[test]
    fn net_and_ema_start_equal_with_distinct_ids_and_init_is_seeded() {
        let _rng = crate::lock_backend_rng();
        let device = Default::default();
        let a = recipe(3).init::<TestBackend>(&tiny(), &device);
        let b = recipe(3).init::<TestBackend>(&tiny(), &device);
        let c = recipe(4).init::<TestBackend>(&tiny(), &device);
        let weights = |m: &UNet<TestBackend>| -> Vec<f32> {
            let mut v = Vec::new();
            struct Grab<'a>(&'a mut Vec<f32>);
            impl ModuleVisitor<TestBackend> for Grab<'_> {
                fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<TestBackend, D>>) {
                    self.0.extend(p.val().into_data().to_vec::<f32>().unwrap());
                }
            }
            m.visit(&mut Grab(&mut v));
            v
        };
        assert_eq!(weights(&a.net), weights(&a.ema));
        assert_eq!(weights(&a.net), weights(&b.net));
        assert_ne!(weights(&a.net), weights(&c.net));
        let ids = burn::module::list_param_ids(&a.net);
        assert!(burn::module::list_param_ids(&a.ema).iter().all(|id| !ids.contains(id)));
    }

    #[test]
    fn label_dropout_uses_the_null_label_at_the_configured_rate() {
        let _rng = crate::lock_backend_rng();
        let device = Default::default();
        let trainer = recipe(0).init::<TestBackend>(&tiny(), &device);
        <TestBackend as Backend>::seed(&device, 9);
        let labels = Tensor::<TestBackend, 1, Int>::zeros([4000], &device);
        let dropped: Vec<i64> = trainer.drop_labels(labels, 3).into_data().convert::<i64>().to_vec().unwrap();
        let nulls = dropped.iter().filter(|&&l| l == 3).count() as f64 / 4000.0;
        assert!(dropped.iter().all(|&l| l == 0 || l == 3));
        assert!((nulls - 0.5).abs() < 0.05, "{nulls}");
    }

    #[test]
    fn a_step_is_a_pure_function_of_seed_and_step() {
        let _rng = crate::lock_backend_rng();
        let device = Default::default();
        let trainer = recipe(1).init::<TestAutodiffBackend>(&tiny(), &device);
        let batch = |step| DiffusionBatch::<TestAutodiffBackend> {
            images: Tensor::zeros([2, 1, 4, 4], &device),
            labels: Some(Tensor::from_ints([0, 1], &device)),
            step,
            next_images: None,
        };
        let loss = |step| trainer.loss(batch(step)).into_scalar();
        assert_eq!(loss(5), loss(5));
        assert_ne!(loss(5), loss(6));
    }

    /// Every gradient of `module` in `grads`, flattened in visiting order.
    fn flat_grads<M: Module<TestAutodiffBackend>>(module: &M, grads: &GradientsParams) -> Vec<f32> {
        struct Grab<'a>(&'a GradientsParams, Vec<f32>);
        impl ModuleVisitor<TestAutodiffBackend> for Grab<'_> {
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<TestAutodiffBackend, D>>) {
                if let Some(g) = self.0.get::<TestBackend, D>(p.id) {
                    self.1.extend(g.into_data().to_vec::<f32>().unwrap());
                }
            }
        }
        let mut grab = Grab(grads, Vec::new());
        module.visit(&mut grab);
        grab.1
    }

    #[test]
    fn micro_batches_on_several_threads_give_the_bits_of_one() {
        let _rng = crate::lock_backend_rng();
        let device = Default::default();
        // With dropout, forward passes draw masks and take turns; without, they run side by side
        // after their draws (label drops, levels, consistency training's mask seed).
        for (objective, dropout) in [("edm", 0.3), ("edm", 0.0), ("ct", 0.0), ("ct", 0.3)] {
            let unet = tiny().with_dropout(dropout);
            let sampler = if objective == "ct" { "consistency" } else { "heun" };
            let config = Config::from_toml(&format!("[data]\ndataset = \"idx\"\n[diffusion]\nobjective = \"{objective}\"\n[sample]\nsampler = \"{sampler}\"\n"), std::path::Path::new("t.toml"), &[]).unwrap();
            assert_eq!(unet.init::<TestAutodiffBackend>(&device).draws_in_forward(), dropout > 0.0);
            let run = |threads| {
                let mut trainer = recipe(6).init::<TestAutodiffBackend>(&unet, &device);
                trainer.recipe.objective = config.diffusion.build_objective(1000).unwrap();
                trainer.recipe.micro_batch = 1;
                trainer.recipe.micro_batch_threads = threads;
                <TestAutodiffBackend as Backend>::seed(&device, 8);
                let images = Tensor::<TestAutodiffBackend, 4>::random([5, 1, 4, 4], Distribution::Uniform(-1.0, 1.0), &device);
                let labels = Tensor::<TestAutodiffBackend, 1, Int>::from_ints([0, 1, 2, 0, 1], &device);
                let out = TrainStep::step(&trainer, DiffusionBatch { images, labels: Some(labels), step: 3, next_images: None });
                (out.item.loss.into_scalar(), flat_grads(&trainer, &out.grads))
            };
            let one = run(1);
            assert!(!one.1.is_empty());
            for threads in [2, 3, 8] {
                let many = run(threads);
                assert!(many == one, "{objective}, dropout {dropout}, {threads} threads: loss {} vs {}", many.0, one.0);
            }
        }
    }

    #[test]
    fn lsa_solved_a_step_ahead_gives_the_bits_of_lsa_solved_inline() {
        let _rng = crate::lock_backend_rng();
        let device = Default::default();
        <TestAutodiffBackend as Backend>::seed(&device, 12);
        let batches: Vec<Tensor<TestAutodiffBackend, 4>> = (0..4).map(|_| Tensor::random([6, 1, 4, 4], Distribution::Uniform(-1.0, 1.0), &device)).collect();
        let labels = Tensor::<TestAutodiffBackend, 1, Int>::from_ints([0, 1, 2, 0, 1, 2], &device);
        let trainer = |overlap: bool| {
            let mut trainer = recipe(9).init::<TestAutodiffBackend>(&tiny(), &device);
            trainer.recipe.assignment = AssignConfig { method: emulsion_assign::Method::Lsa, overlap, ..Default::default() };
            trainer
        };
        // Steps 10 to 13 as training takes them, each given the next one's images.
        let next = |k: usize| batches.get(k + 1).cloned();
        let noises = |overlap: bool| {
            let trainer = trainer(overlap);
            let mut noises = Vec::new();
            for (k, images) in batches.iter().enumerate() {
                let noise = trainer.batch_noise(images, k as u64 + 10, next(k).as_ref());
                // While step k runs, step k + 1's assignment is being solved (not after the last).
                assert_eq!(trainer.recipe.ahead.0.lock().unwrap().as_ref().map(|p| p.0), (overlap && k < 3).then_some(k as u64 + 11));
                noises.push(noise.noise.into_data().to_vec::<f32>().unwrap());
            }
            noises
        };
        let steps = |overlap: bool| {
            let trainer = trainer(overlap);
            let mut out = Vec::new();
            for (k, images) in batches.iter().enumerate() {
                let batch = DiffusionBatch { images: images.clone(), labels: Some(labels.clone()), step: k as u64 + 10, next_images: next(k) };
                let step = TrainStep::step(&trainer, batch);
                out.push((step.item.loss.into_scalar(), step.item.assign_distance.into_scalar(), flat_grads(&trainer, &step.grads)));
            }
            out
        };
        let inline = noises(false);
        assert!(inline == noises(true), "the overlapped assignment changed the noise");
        assert!(steps(false) == steps(true), "the overlapped assignment changed a loss, a distance or a gradient");
        // And LSA did pair the noise: not the unassigned draw.
        let mut plain = recipe(9).init::<TestAutodiffBackend>(&tiny(), &device);
        plain.recipe.assignment = AssignConfig::default();
        let unassigned: Vec<f32> = plain.batch_noise(&batches[0], 10, None).noise.into_data().to_vec().unwrap();
        assert_ne!(unassigned, inline[0]);
    }

    #[test]
    fn micro_batches_add_up_to_the_batch_mean() {
        let _rng = crate::lock_backend_rng();
        let device = Default::default();
        let whole = recipe(2).init::<TestAutodiffBackend>(&tiny(), &device);
        <TestAutodiffBackend as Backend>::seed(&device, 5);
        let images = Tensor::<TestAutodiffBackend, 4>::random([3, 1, 4, 4], Distribution::Uniform(-1.0, 1.0), &device);
        let labels = Tensor::<TestAutodiffBackend, 1, Int>::from_ints([0, 2, 1], &device);
        let batch = DiffusionBatch { images: images.clone(), labels: Some(labels.clone()), step: 4, next_images: None };

        // A micro-batch at least as large as the batch changes nothing.
        let mut same = recipe(2).init::<TestAutodiffBackend>(&tiny(), &device);
        same.recipe.micro_batch = 8;
        let (a, b) = (TrainStep::step(&whole, batch.clone()), TrainStep::step(&same, batch.clone()));
        assert_eq!(a.item.loss.into_scalar(), b.item.loss.into_scalar());

        // Chunks of 2 and 1: (2 · mean(chunk 0) + 1 · mean(chunk 1)) / 3, and its gradient.
        let mut split = recipe(2).init::<TestAutodiffBackend>(&tiny(), &device);
        split.recipe.micro_batch = 2;
        let out = TrainStep::step(&split, batch);
        // The noise is drawn for the whole batch, then split with it.
        let noise = split.batch_noise(&images, 4, None).noise;
        let part = |start, len, chunk| {
            let (x, e) = (images.clone().narrow(0, start, len), noise.clone().narrow(0, start, len));
            split.chunk_loss(x, e, Some(labels.clone().narrow(0, start, len)), 4, chunk)
        };
        let expected = (part(0, 2, 0) * 2.0 + part(2, 1, 1)) / 3.0;
        let expected_grads = GradientsParams::from_grads(expected.backward(), &split);
        let (got, want) = (out.item.loss.into_scalar(), expected.into_scalar());
        assert!((got - want).abs() < 1e-6, "loss {got} vs {want}");
        let (got, want) = (flat_grads(&split, &out.grads), flat_grads(&split, &expected_grads));
        assert_eq!(got.len(), want.len());
        assert!(!got.is_empty() && got.iter().zip(&want).all(|(g, w)| (g - w).abs() <= 1e-5 * (1.0 + w.abs())));
        assert_ne!(got, flat_grads(&whole, &a.grads), "the second micro-batch draws other noise levels than the whole batch");
    }
}
