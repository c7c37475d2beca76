//! A step-based learning strategy for Burn's `SupervisedTraining`: the `Learner` takes one
//! optimiser step per batch from the start step to the last, while the strategy checkpoints and
//! samples on its step counts (Burn's own strategies count epochs).

use std::path::PathBuf;
use std::sync::mpsc::SyncSender;
use std::time::Instant;

use burn::data::dataloader::Progress;
use burn::module::AutodiffModule;
use burn::optim::Optimizer;
use burn::tensor::backend::AutodiffBackend;
use emulsion_assign::AssignBackend;
use burn::train::metric::store::EventStoreClient;
use burn::train::{
    EventProcessorTraining, Interrupter, Learner, LearnerEvent, LearningComponentsMarker, SupervisedLearningStrategy,
    SupervisedTrainingEventProcessor, TrainLoader, TrainingComponents, TrainingItem, ValidLoader,
};
use emulsion_sample::grid::{grid_columns, save_grid};
use emulsion_models::UNetConfig;
use emulsion_sample::{progress, Generator, SampleConfig};

use burn::module::{ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::Transaction;

use crate::checkpoint::{CheckpointStore, JournalWindow, SkipCount, TrainState};
use crate::monitor::{journal_line_due, Running};
use crate::config::OnNonFinite;
use crate::export::{self, SNAPSHOT_FILE};
use crate::optim::{clip_grad_to_norm, grad_norm_squared};
use crate::trainer::DiffusionOutput;
use crate::data::DataOrder;
use crate::distributed::Peer;
use crate::fid::FidPlan;
use crate::optim::WarmupLr;
use crate::seeds::{self, Stream};
use crate::trainer::{with_backend_draws, Trainer};
use crate::TrainError;

/// The learning components of every Emulsion run.
pub type Components<B, O> = LearningComponentsMarker<B, WarmupLr, Trainer<B>, O>;

/// When to checkpoint and sample, and what a checkpoint records besides Burn's records.
pub struct StepPlan {
    /// Steps already done (0 for a fresh run).
    pub start_step: u64,
    pub total_steps: u64,
    pub batch_size: usize,
    pub checkpoint_every: u64,
    /// 0: only at the end.
    pub sample_every: u64,
    pub seed: u64,
    /// The data order, to record where the next batch starts.
    pub order: DataOrder,
    /// Training time of earlier sessions of this run.
    pub wall_time_offset: f64,
    /// Small text files written into every checkpoint (the resolved config and the model shape).
    pub checkpoint_files: Vec<(String, String)>,
    /// The network, for the checkpoints' sampling snapshots.
    pub unet: UNetConfig,
    /// The resolved config (TOML), recorded in the snapshots.
    pub config_toml: String,
    /// What a non-finite loss or gradient norm does, and how many skips in a row end the run.
    pub on_nonfinite: OnNonFinite,
    pub max_skipped_steps: usize,
    /// Updates skipped before `start_step`.
    pub skipped: SkipCount,
    /// Steps per journal line, and the part of the current line's window done before
    /// `start_step` (carried in checkpoints, so the journal does not depend on where a run resumed).
    pub log_every: u64,
    pub journal_window: JournalWindow,
}

/// How the periodic sample grids are drawn.
pub struct SamplePlan {
    pub dir: PathBuf,
    pub options: SampleConfig,
    pub generator: Generator,
}

/// Where a session ended, and the last files it wrote.
#[derive(Debug, Clone, Default)]
pub struct Finished {
    pub last_step: u64,
    pub last_checkpoint: Option<PathBuf>,
    pub last_samples: Option<PathBuf>,
}

pub struct StepStrategy<B: AutodiffBackend> {
    pub device: B::Device,
    /// This replica's part in data-parallel training; only the writer checkpoints and samples.
    pub peer: Peer,
    pub plan: StepPlan,
    pub samples: SamplePlan,
    /// FID at the steps `eval.fid_every` and `eval.fid_at` ask for, and at the end.
    pub fid: Option<FidPlan<B::InnerBackend>>,
    /// The run's checkpoints; `None` on the peers that do not write the run directory.
    pub store: Option<CheckpointStore>,
    /// Burn's `fit` returns only the model: how the session ended is sent here, once.
    pub outcome: SyncSender<Result<Finished, TrainError>>,
}

impl<B> StepStrategy<B>
where
    B: AutodiffBackend + AssignBackend,
    B::InnerBackend: AssignBackend,
{
    fn checkpoint<O>(
        &self,
        learner: &Learner<Components<B, O>>,
        step: u64,
        started: Instant,
        window: &JournalWindow,
        skipped: &SkipCount,
        store_client: &EventStoreClient,
    ) -> Result<PathBuf, TrainError>
    where
        O: Optimizer<Trainer<B>, B> + 'static,
    {
        if !all_finite::<B, _>(&learner.model()) {
            return Err(TrainError::NonFinite {
                step,
                message: "the weights hold non-finite values; no checkpoint is written (the newest one on disk is the last finite state)".into(),
            });
        }
        let plan = &self.plan;
        let state = TrainState {
            journal_window: *window,
            skipped: *skipped,
            ..TrainState::new(step, plan.seed, plan.order.position(step), step * plan.batch_size as u64, plan.wall_time_offset + started.elapsed().as_secs_f64())
        };
        // The sampling snapshot: the EMA weights alone, readable without Burn (`export.rs`).
        let snapshot = export::snapshot(&learner.model().ema.valid(), &plan.unet, &plan.config_toml, step);
        let files: Vec<(&str, &[u8])> = plan
            .checkpoint_files
            .iter()
            .map(|(name, text)| (name.as_str(), text.as_bytes()))
            .chain([(SNAPSHOT_FILE, snapshot.as_slice())])
            .collect();
        let store = self.store.as_ref().expect("only the writing peer checkpoints");
        Ok(store.save(learner, &state, &files, store_client)?)
    }

    fn sample(&self, model: &Trainer<B>, step: u64) -> Result<PathBuf, TrainError> {
        let ema = model.ema.valid();
        let s = &self.samples;
        let noise_seed = seeds::derive(s.options.seed, Stream::Sample, 0);
        let images = with_backend_draws(|| s.generator.generate(&ema, &s.options, 0..s.options.n, noise_seed, &self.device));
        let path = s.dir.join(format!("step-{step:08}.png"));
        save_grid(images, grid_columns(s.options.n, ema.num_classes()), &path)
            .map_err(|source| TrainError::Io { path: path.clone(), source })?;
        Ok(path)
    }

    fn evaluate_fid(&self, fid: &FidPlan<B::InnerBackend>, model: &Trainer<B>, step: u64) -> Result<f64, TrainError> {
        with_backend_draws(|| fid.evaluate(&model.ema.valid(), &self.samples.generator, step, &self.device))
    }
}

impl<B, O> SupervisedLearningStrategy<Components<B, O>> for StepStrategy<B>
where
    B: AutodiffBackend + AssignBackend,
    B::InnerBackend: AssignBackend,
    O: Optimizer<Trainer<B>, B> + 'static,
{
    fn fit(
        &self,
        components: TrainingComponents<Components<B, O>>,
        mut learner: Learner<Components<B, O>>,
        loader: TrainLoader<Components<B, O>>,
        _valid: ValidLoader<Components<B, O>>,
        _starting_epoch: usize,
    ) -> (Trainer<B>, SupervisedTrainingEventProcessor<Components<B, O>>) {
        let TrainingComponents { mut event_processor, event_store, interrupter, .. } = components;
        learner.fork(&self.device);
        let result = self.train_steps(&mut learner, loader, &mut event_processor, &event_store, &interrupter);
        event_processor.process_train(LearnerEvent::EndEpoch(1));
        // Burn calls `fit` once; the receiver in `train` reads the one result after `launch`.
        let _ = self.outcome.try_send(result);
        (learner.model(), event_processor)
    }
}

impl<B> StepStrategy<B>
where
    B: AutodiffBackend + AssignBackend,
    B::InnerBackend: AssignBackend,
{
    /// The training loop: one optimiser step per batch, then whatever the step is due for.
    fn train_steps<O>(
        &self,
        learner: &mut Learner<Components<B, O>>,
        loader: TrainLoader<Components<B, O>>,
        event_processor: &mut SupervisedTrainingEventProcessor<Components<B, O>>,
        event_store: &EventStoreClient,
        interrupter: &Interrupter,
    ) -> Result<Finished, TrainError>
    where
        O: Optimizer<Trainer<B>, B> + 'static,
    {
        let loader = loader.to_device(&self.device);
        let plan = &self.plan;
        let started = Instant::now();
        let whole_run = Progress::new(1, 1);
        let mut batches = loader.iter();
        let mut guard = NonFiniteGuard::new(plan.on_nonfinite, plan.max_skipped_steps, plan.skipped);
        let mut window = plan.journal_window;
        let mut finished = Finished { last_step: plan.start_step, ..Finished::default() };
        // Seconds per step in the all-reduce, waiting for the slowest peer included.
        let mut all_reduce = Running::default();
        while let Some(batch) = batches.next() {
            let step = batch.step + 1;
            learner.lr_step();
            let mut output = learner.train_step(batch);
            let mut shared_norm = None;
            if self.peer.count > 1 {
                // The batch's gradients, loss and mean distance: sums of every peer's share.
                let model = learner.model();
                let item = &mut output.item;
                let extra = Tensor::cat(vec![item.loss.clone().inner(), item.assign_distance.clone().inner() / self.peer.count as f64], 0);
                let grads = std::mem::take(&mut output.grads);
                let reducing = Instant::now();
                let (grads, summed) = self.peer.sum_gradients::<B, _>(&model, grads, extra, step)?;
                // A GPU's reductions may give each peer other last bits of the same norm: the
                // peers clip by their mean, the same bits everywhere, so they stay identical.
                let squared = grad_norm_squared::<B, _>(&model, &grads).map(|sq| self.peer.mean(sq, step)).transpose()?;
                all_reduce.add(reducing.elapsed().as_secs_f64());
                output.grads = match &squared {
                    Some(sq) if model.recipe.grad_clip > 0.0 => clip_grad_to_norm::<B, _>(&model, grads, model.recipe.grad_clip, sq.clone()),
                    _ => grads,
                };
                shared_norm = squared;
                item.loss = Tensor::from_inner(summed.clone().narrow(0, 0, 1));
                item.assign_distance = Tensor::from_inner(summed.narrow(0, 1, 1));
            }
            // One read-back per step: a non-finite loss or gradient must stop (or skip) this
            // step's update before it reaches the weights.
            let values = StepValues::read::<B>(&learner.model(), &output, shared_norm);
            let verdict = guard.check(step, &values);
            if let Ok(Verdict::Apply) = verdict {
                learner.optimizer_step(output.grads);
            }
            // As the monitor's window does: every finite value, applied or skipped.
            window.loss.add(values.loss);
            window.distance.add(values.distance);
            verdict?;
            output.item.skipped_steps = guard.skipped.total;
            let item = TrainingItem::new(output.item, batches.progress(), whole_run.clone(), Some(step as usize), Some(learner.lr_current()));
            event_processor.process_train(LearnerEvent::ProcessedItem(item));
            progress::report("train", step, plan.total_steps);
            if journal_line_due(step, plan.log_every, plan.total_steps) {
                window = JournalWindow::default();
            }

            let last = step == plan.total_steps;
            if !self.peer.writes() {
                finished.last_step = step;
                if interrupter.should_stop() {
                    break;
                }
                continue;
            }
            // The other peers wait at the next step's all-reduce meanwhile.
            self.peer.busy(|| -> Result<(), TrainError> {
                if step % plan.checkpoint_every == 0 || last {
                    finished.last_checkpoint = Some(self.checkpoint(learner, step, started, &window, &guard.skipped, event_store)?);
                }
                if (plan.sample_every > 0 && step % plan.sample_every == 0) || last {
                    finished.last_samples = Some(self.sample(&learner.model(), step)?);
                }
                if let Some(fid) = self.fid.as_ref().filter(|fid| fid.when.fid_due(step, plan.total_steps)) {
                    self.evaluate_fid(fid, &learner.model(), step)?;
                }
                Ok(())
            })?;
            finished.last_step = step;
            if interrupter.should_stop() {
                break;
            }
        }
        if self.peer.writes() && all_reduce.count > 0 {
            tracing::info!("all-reduce of {} peers: {:.2} ms per step on average, waiting for the slowest included", self.peer.count, all_reduce.sum / all_reduce.count as f64 * 1e3);
        }
        // Every peer took the same updates: their weights are the same bits.
        self.peer.agree::<B, _>(&learner.model(), finished.last_step, "end")?;
        self.peer.leave::<B::InnerBackend>();
        Ok(finished)
    }
}

/// What one step's read-back says: its loss, gradient norm and mean assigned distance.
struct StepValues {
    loss: f64,
    grad_norm: f64,
    distance: f64,
}

impl StepValues {
    /// `squared_norm`: `‖g‖₂²` when already known (data-parallel peers clip before the check).
    fn read<B: AutodiffBackend + AssignBackend>(model: &Trainer<B>, output: &burn::train::TrainOutput<DiffusionOutput<B>>, squared_norm: Option<Tensor<B::InnerBackend, 1>>) -> Self
    where
        B::InnerBackend: AssignBackend,
    {
        let item = &output.item;
        let norm = squared_norm
            .or_else(|| grad_norm_squared::<B, _>(model, &output.grads))
            .unwrap_or_else(|| Tensor::zeros([1], &item.loss.device().clone()));
        let values: Vec<f64> = Transaction::default()
            .register(item.loss.clone().inner())
            .register(norm)
            .register(item.assign_distance.clone().inner())
            .execute()
            .into_iter()
            .map(|data| data.iter::<f64>().next().unwrap_or(f64::NAN))
            .collect();
        Self { loss: values[0], grad_norm: values[1].sqrt(), distance: values[2] }
    }
}

/// What a step's update does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Apply,
    /// Dropped (`on_nonfinite = "skip"`).
    Skip,
}

/// Watches every step's loss and gradient norm: a non-finite one stops the run or (within
/// `max_skipped_steps` in a row) drops that step's update.
struct NonFiniteGuard {
    policy: OnNonFinite,
    max_in_a_row: usize,
    /// Carried across sessions in the checkpoints.
    skipped: SkipCount,
    last_finite: Option<(u64, f64)>,
}

impl NonFiniteGuard {
    fn new(policy: OnNonFinite, max_in_a_row: usize, skipped: SkipCount) -> Self {
        Self { policy, max_in_a_row, skipped, last_finite: None }
    }

    fn check(&mut self, step: u64, values: &StepValues) -> Result<Verdict, TrainError> {
        if values.loss.is_finite() && values.grad_norm.is_finite() {
            self.skipped.in_a_row = 0;
            self.last_finite = Some((step, values.loss));
            return Ok(Verdict::Apply);
        }
        let what = if values.loss.is_finite() {
            format!("the gradient norm is {} (loss {})", values.grad_norm, values.loss)
        } else {
            format!("the loss is {}", values.loss)
        };
        let last = match self.last_finite {
            Some((s, loss)) => format!("the last finite loss was {loss:.6} at step {s}"),
            None => "no step of this session had a finite loss".into(),
        };
        const TRY: &str = "lower train.lr, lengthen train.warmup_steps or set train.grad_clip; resume with --resume from the newest checkpoint (all checkpoints hold finite weights)";
        match self.policy {
            OnNonFinite::Stop => Err(TrainError::NonFinite {
                step,
                message: format!("{what}; {last}. The run stopped before this update (train.on_nonfinite = \"stop\"): {TRY}, or set train.on_nonfinite = \"skip\""),
            }),
            OnNonFinite::Skip => {
                let in_a_row = self.skipped.in_a_row + 1;
                if in_a_row > self.max_in_a_row as u64 {
                    return Err(TrainError::NonFinite {
                        step,
                        message: format!(
                            "{what}: {in_a_row} non-finite steps in a row exceed train.max_skipped_steps = {}; {last}. The run stopped before this update: {TRY}",
                            self.max_in_a_row
                        ),
                    });
                }
                self.skipped = SkipCount { total: self.skipped.total + 1, in_a_row };
                tracing::warn!("step {step}: {what}; its update is skipped ({in_a_row} in a row)");
                Ok(Verdict::Skip)
            }
        }
    }
}

/// Whether every float parameter of `module` is finite (one value read back).
fn all_finite<B: AutodiffBackend, M: burn::module::Module<B>>(module: &M) -> bool {
    struct Sum<B: AutodiffBackend>(Option<Tensor<B::InnerBackend, 1>>);
    impl<B: AutodiffBackend> ModuleVisitor<B> for Sum<B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            // x - x is 0 where x is finite and NaN where it is not.
            let value = param.val().inner();
            let zero = (value.clone() - value).sum();
            self.0 = Some(match self.0.take() {
                Some(total) => total + zero,
                None => zero,
            });
        }
    }
    let mut sum = Sum::<B>(None);
    module.visit(&mut sum);
    sum.0.is_none_or(|total| total.into_scalar().elem::<f64>().is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(loss: f64, grad_norm: f64) -> StepValues {
        StepValues { loss, grad_norm, distance: 1.0 }
    }

    /// What keeps a checkpoint of non-finite weights from being written.
    #[test]
    fn one_non_finite_weight_anywhere_is_found() {
        use burn::nn::LinearConfig;
        type B = crate::TestAutodiffBackend;
        let device = Default::default();
        let linear = LinearConfig::new(3, 2).init::<B>(&device);
        assert!(all_finite::<B, _>(&linear));
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut weights = vec![1e30f32; 6];
            weights[4] = bad;
            let mut broken = linear.clone();
            broken.weight = Param::from_tensor(Tensor::<B, 1>::from_floats(weights.as_slice(), &device).reshape([3, 2]));
            assert!(!all_finite::<B, _>(&broken), "{bad}");
        }
        // Huge but finite weights are fine (x - x, not a sum of the weights, is checked).
        let mut huge = linear.clone();
        huge.weight = Param::from_tensor(Tensor::<B, 1>::from_floats([3e38f32; 6].as_slice(), &device).reshape([3, 2]));
        assert!(all_finite::<B, _>(&huge));
    }

    #[test]
    fn stop_names_the_step_and_the_last_finite_loss() {
        let mut guard = NonFiniteGuard::new(OnNonFinite::Stop, 10, SkipCount::default());
        assert_eq!(guard.check(1, &values(0.5, 2.0)).unwrap(), Verdict::Apply);
        let e = guard.check(2, &values(f64::NAN, 2.0)).unwrap_err().to_string();
        assert!(e.contains("step 2: the loss is NaN") && e.contains("0.500000 at step 1") && e.contains("train.lr"), "{e}");
        let e = NonFiniteGuard::new(OnNonFinite::Stop, 10, SkipCount::default()).check(7, &values(0.3, f64::INFINITY)).unwrap_err().to_string();
        assert!(e.contains("step 7: the gradient norm is inf") && e.contains("no step of this session"), "{e}");
    }

    #[test]
    fn skip_drops_updates_counts_them_and_stops_after_too_many_in_a_row() {
        let mut guard = NonFiniteGuard::new(OnNonFinite::Skip, 2, SkipCount::default());
        assert_eq!(guard.check(1, &values(f64::NAN, 1.0)).unwrap(), Verdict::Skip);
        assert_eq!(guard.check(2, &values(0.1, f64::NAN)).unwrap(), Verdict::Skip);
        assert_eq!(guard.check(3, &values(0.1, 1.0)).unwrap(), Verdict::Apply, "a finite step ends the run of skips");
        assert_eq!(guard.check(4, &values(f64::NAN, 1.0)).unwrap(), Verdict::Skip);
        assert_eq!(guard.check(5, &values(f64::NAN, 1.0)).unwrap(), Verdict::Skip);
        let e = guard.check(6, &values(f64::NAN, 1.0)).unwrap_err().to_string();
        assert!(e.contains("step 6") && e.contains("3 non-finite steps in a row") && e.contains("0.100000 at step 3"), "{e}");
        assert_eq!(guard.skipped, SkipCount { total: 4, in_a_row: 2 }, "the stopping step is not a skipped one");
        // A resumed run continues the count it checkpointed.
        let mut resumed = NonFiniteGuard::new(OnNonFinite::Skip, 2, SkipCount { total: 4, in_a_row: 2 });
        assert!(resumed.check(7, &values(f64::NAN, 1.0)).is_err());
    }
}
