//! A step-based learning strategy for Burn's `SupervisedTraining`: the `Learner` takes one
//! optimiser step per batch from the start step to the last, while the strategy checkpoints and
//! samples on its step counts (Burn's own strategies count epochs).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burn::data::dataloader::Progress;
use burn::module::AutodiffModule;
use burn::optim::Optimizer;
use burn::tensor::backend::AutodiffBackend;
use emulsion_assign::AssignBackend;
use burn::train::checkpoint::AsyncCheckpointer;
use burn::train::{
    EventProcessorTraining, Learner, LearnerEvent, LearningCheckpointer, LearningComponentsMarker,
    SupervisedLearningStrategy, SupervisedTrainingEventProcessor, TrainLoader, TrainingComponents,
    TrainingItem, ValidLoader,
};
use emulsion_models::Precond;
use emulsion_schedule::Schedule;

use crate::checkpoint::{CheckpointStore, SaveWhenAsked, StagedPart, TrainState, MODEL, OPTIMIZER, SCHEDULER};
use crate::config::SampleConfig;
use crate::data::DataOrder;
use crate::fid::{fid_due, FidPlan};
use crate::grid::{grid_columns, save_grid};
use crate::optim::WarmupLr;
use crate::sampling;
use crate::trainer::Trainer;
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
}

/// How the periodic sample grids are drawn.
pub struct SamplePlan {
    pub dir: PathBuf,
    pub options: SampleConfig,
    pub precond: Precond,
    pub schedule: Schedule,
    /// `[channels, size]` of the images.
    pub shape: [usize; 2],
}

/// What happened, for the caller of `launch` (which returns only the model).
#[derive(Default)]
pub struct Outcome {
    pub error: Option<TrainError>,
    pub last_step: u64,
    pub last_checkpoint: Option<PathBuf>,
    pub last_samples: Option<PathBuf>,
}

pub struct StepStrategy<B: AutodiffBackend> {
    pub device: B::Device,
    pub plan: StepPlan,
    pub samples: SamplePlan,
    /// FID every `fid.every` steps and at the end, when `eval.fid_every > 0`.
    pub fid: Option<FidPlan<B::InnerBackend>>,
    pub store: Arc<CheckpointStore>,
    pub outcome: Arc<Mutex<Outcome>>,
}

impl<B> StepStrategy<B>
where
    B: AutodiffBackend + AssignBackend,
    B::InnerBackend: AssignBackend,
{
    fn checkpoint<O>(
        &self,
        checkpointer: &mut LearningCheckpointer<Components<B, O>>,
        learner: &Learner<Components<B, O>>,
        step: u64,
        started: Instant,
        store_client: &burn::train::metric::store::EventStoreClient,
    ) -> Result<PathBuf, TrainError>
    where
        O: Optimizer<Trainer<B>, B> + 'static,
    {
        self.store.begin(step)?;
        checkpointer.checkpoint(learner, step as usize, store_client);
        self.store.wait(step, 3)?;
        let plan = &self.plan;
        let state = TrainState::new(
            step,
            plan.seed,
            plan.order.position(step),
            step * plan.batch_size as u64,
            plan.wall_time_offset + started.elapsed().as_secs_f64(),
        );
        Ok(self.store.commit(&state, &plan.checkpoint_files)?)
    }

    fn sample(&self, model: &Trainer<B>, step: u64) -> Result<PathBuf, TrainError> {
        let ema = model.ema.valid();
        let s = &self.samples;
        let images = sampling::generate(&ema, s.precond, &s.schedule, &s.options, 0..s.options.n, s.shape, &self.device);
        let path = s.dir.join(format!("step-{step:08}.png"));
        save_grid(images, grid_columns(s.options.n, ema.num_classes()), &path)
            .map_err(|source| TrainError::Io { path: path.clone(), source })?;
        Ok(path)
    }

    fn evaluate_fid(&self, fid: &FidPlan<B::InnerBackend>, model: &Trainer<B>, step: u64) -> Result<f64, TrainError> {
        let s = &self.samples;
        fid.evaluate(&model.ema.valid(), s.precond, &s.schedule, s.shape, step, &self.device)
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
        let loader = loader.to_device(&self.device);
        learner.fork(&self.device);
        let part = |name| StagedPart::new(self.store.clone(), name);
        let mut checkpointer = LearningCheckpointer::new(
            AsyncCheckpointer::new(part(MODEL)),
            AsyncCheckpointer::new(part(OPTIMIZER)),
            AsyncCheckpointer::new(part(SCHEDULER)),
            Box::new(SaveWhenAsked),
        );
        let plan = &self.plan;
        let started = Instant::now();
        let whole_run = Progress::new(1, 1);
        let mut batches = loader.iter();
        while let Some(batch) = batches.next() {
            let step = batch.step + 1;
            learner.lr_step();
            let output = learner.train_step(batch);
            learner.optimizer_step(output.grads);
            let item = TrainingItem::new(output.item, batches.progress(), whole_run.clone(), Some(step as usize), Some(learner.lr_current()));
            event_processor.process_train(LearnerEvent::ProcessedItem(item));

            let last = step == plan.total_steps;
            let mut result = Ok(());
            if step % plan.checkpoint_every == 0 || last {
                result = self
                    .checkpoint(&mut checkpointer, &learner, step, started, &event_store)
                    .map(|path| self.outcome.lock().expect("not poisoned").last_checkpoint = Some(path));
            }
            if result.is_ok() && ((plan.sample_every > 0 && step % plan.sample_every == 0) || last) {
                result = self
                    .sample(&learner.model(), step)
                    .map(|path| self.outcome.lock().expect("not poisoned").last_samples = Some(path));
            }
            if let (Ok(()), Some(fid)) = (&result, &self.fid) {
                if fid_due(fid.every, step, plan.total_steps) {
                    result = self.evaluate_fid(fid, &learner.model(), step).map(|_| ());
                }
            }
            let mut outcome = self.outcome.lock().expect("not poisoned");
            outcome.last_step = step;
            if let Err(e) = result {
                outcome.error = Some(e);
                break;
            }
            if interrupter.should_stop() {
                break;
            }
        }
        event_processor.process_train(LearnerEvent::EndEpoch(1));
        (learner.model(), event_processor)
    }
}
