//! A run end to end: dataset, model, Burn's `Learner` driven by the step strategy, resume, and
//! the run directory:
//!
//! ```text
//! runs/<name>/
//!   config.toml     the resolved configuration
//!   unet.json       the network's shape (dataset facts included)
//!   metrics.jsonl   one JSON line per record, `kind` "train" (step, loss, lr, images/s, wall time,
//!                   mean assigned distance, assignment ms) or "fid" (step, FID, samples, seconds)
//!   loss.png        the loss curve
//!   fid.png         FID against step, when `eval.fid_every` or `eval.fid_at` asks for FID
//!   fid-reference-<key>.npz  the training images' Inception statistics (`fd_fmnist-reference-…` with that metric), computed once
//!   samples/        step-00005000.png, …
//!   checkpoints/    step-00005000/{model,optimizer,scheduler}.mpk, state.json, config.toml, unet.json
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::module::{AutodiffModule, Module};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use emulsion_assign::AssignBackend;
use burn::train::logger::MetricLogger;
use crate::metrics::{AssignDistance, AssignMilliseconds, ScalarMetric, SkippedSteps};
use burn::train::metric::store::{EpochSummary, MetricsUpdate, Split};
use burn::train::metric::{LearningRateMetric, LossMetric, MetricDefinition, NumericEntry};
use burn::train::{Learner, SupervisedTraining, TrainingStrategy};
use emulsion_config::Invalid;
use emulsion_models::{UNet, UNetConfig};
use emulsion_sample::grid::{grid_columns, save_grid};
use emulsion_sample::{Generator, SampleConfig, SamplerKind};

use crate::checkpoint::{self, Checkpoint, CheckpointError, CheckpointStore, MODEL, OPTIMIZER, SCHEDULER};
use crate::config::{Config, DEFAULT_MAX_SKIPPED_STEPS};
use crate::lock::{RunLock, LOCK_FILE};
use crate::data::{self, DataOrder, StepLoader};
use crate::distributed::Peer;
use crate::fid::FidPlan;
use crate::journal;
use crate::monitor::{MonitorConfig, SilentMonitor, TrainingMonitor};
use crate::optim::WarmupLr;
use crate::seeds::{self, Stream};
use crate::strategy::{Components, SamplePlan, StepPlan, StepStrategy};
use crate::export::{self, SNAPSHOT_FILE};
use crate::trainer::{with_backend_draws, Recipe, Trainer};
use crate::TrainError;

/// The resolved config of a run, in its directory and in each checkpoint.
pub(crate) const CONFIG_FILE: &str = "config.toml";
/// The network's `UNetConfig` (JSON), beside it.
pub(crate) const UNET_FILE: &str = "unet.json";

/// The files of a run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }
    pub fn samples(&self) -> PathBuf {
        self.root.join("samples")
    }
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }
    pub fn loss_curve(&self) -> PathBuf {
        self.root.join("loss.png")
    }
    pub fn fid_curve(&self) -> PathBuf {
        self.root.join("fid.png")
    }
}

/// Where training starts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Resume {
    /// A new run; refuses a run directory that already has checkpoints.
    #[default]
    No,
    /// The newest checkpoint of the run (a new run if there is none yet).
    Latest,
    /// A given checkpoint folder.
    From(PathBuf),
}

#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    pub resume: Resume,
    /// Delete an existing run directory of the same name first.
    pub overwrite: bool,
    /// Start a new run from these weights (EDM SongUNet's names, as `emulsion export` writes
    /// them) instead of a random initialisation: the network and its EMA both.
    pub init_from: Option<PathBuf>,
}

/// What a finished (or stopped) run left behind.
#[derive(Debug, Clone)]
pub struct TrainReport {
    pub run_dir: PathBuf,
    pub num_params: usize,
    pub start_step: u64,
    pub last_step: u64,
    pub last_checkpoint: Option<PathBuf>,
    pub last_samples: Option<PathBuf>,
}

impl Recipe {
    /// The recipe `config` describes; the error names the key that rules it out.
    pub fn from_config(config: &Config) -> Result<Self, Invalid> {
        Ok(Recipe {
            objective: config.diffusion.build_objective(config.train.steps as u64)?,
            seed: config.run.seed,
            ema_decay: config.train.ema_decay,
            grad_clip: config.train.grad_clip,
            label_dropout: config.model.label_dropout,
            micro_batch: config.train.micro_batch,
            micro_batch_threads: config.train.micro_batch_threads,
            assignment: config.assignment,
            ahead: Default::default(),
            peer: Peer::alone(),
        })
    }
}

/// Trains the run `config` describes: on `device`, or as one peer per device that
/// `distributed.devices` names (each on a thread of its own, joined by Burn's collective, with
/// the peers of the other `distributed.nodes`; node 0's first peer writes the run directory).
pub fn train<B>(config: &Config, device: &B::Device, options: &TrainOptions) -> Result<TrainReport, TrainError>
where
    B: AutodiffBackend + AssignBackend,
    B::InnerBackend: AssignBackend,
{
    let dist = &config.distributed;
    let peers = dist.peers();
    let device_of = |peer: &Peer| if dist.devices.is_empty() { device.clone() } else { peer.device::<B>() };
    let (prepared, mut store) = Prepared::new::<B>(config, options, device)?;
    if dist.is_single() {
        return session::<B>(config, &prepared, store, &peers[0], &device_of(&peers[0]), options);
    }
    let per_peer = config.train.batch_size / dist.peer_count();
    if dist.nodes > 1 {
        tracing::info!("data-parallel: node {} of {}, peers {}..={} on devices {:?}, {per_peer} images each per step", dist.node_rank, dist.nodes, peers[0].rank, peers[peers.len() - 1].rank, dist.device_indices());
    } else {
        tracing::info!("data-parallel: {} peers on devices {:?}, {per_peer} images each per step", peers.len(), dist.device_indices());
    }
    crate::distributed::enroll(&peers);
    let results: Vec<Result<TrainReport, TrainError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = peers
            .iter()
            .map(|peer| {
                let (prepared, store, device) = (&prepared, if peer.writes() { store.take() } else { None }, device_of(peer));
                std::thread::Builder::new()
                    .name(format!("peer-{}", peer.rank))
                    .spawn_scoped(scope, move || {
                        let run = std::panic::AssertUnwindSafe(|| session::<B>(config, prepared, store, peer, &device, options));
                        let result = std::panic::catch_unwind(run).unwrap_or_else(|panic| {
                            let what = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
                            Err(TrainError::Device(format!("peer {} panicked: {}", peer.rank, what.unwrap_or_default())))
                        });
                        if let Err(e) = &result {
                            peer.fail(&e.to_string());
                        }
                        result
                    })
                    .expect("a thread starts")
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(TrainError::Device("a peer's thread panicked".into())))).collect()
    });
    // After a failure between nodes Burn's collective server may be gone with the node it lost
    // (resetting it would panic); the process ends with the error anyway.
    let failed = results.iter().any(Result::is_err);
    crate::distributed::reset::<B::InnerBackend>(!(failed && dist.nodes > 1));
    // The first failure is the cause; the others' errors say they stopped because of it.
    let mut reports = Vec::new();
    let mut failures: Vec<TrainError> = Vec::new();
    for result in results {
        match result {
            Ok(report) => reports.push(report),
            Err(e) => failures.push(e),
        }
    }
    if let Some(cause) = failures.iter().position(|e| !matches!(e, TrainError::Peer(crate::distributed::PeerError::PeerFailed { .. }))) {
        return Err(failures.swap_remove(cause));
    }
    if let Some(first) = failures.into_iter().next() {
        return Err(first);
    }
    Ok(reports.swap_remove(0))
}

/// What a node prepares once for all of its peers: the run directory (node 0 alone writes it,
/// under its lock), the images and the network shape, and the checkpoint to resume from.
struct Prepared {
    run: RunDir,
    _lock: Option<RunLock>,
    images: Arc<data::ImageSet>,
    unet: UNetConfig,
    resume_from: Option<Checkpoint>,
    config_toml: String,
    unet_json: String,
}

impl Prepared {
    /// The writer's checkpoint store comes with it on node 0.
    fn new<B: AutodiffBackend>(config: &Config, options: &TrainOptions, device: &B::Device) -> Result<(Self, Option<CheckpointStore>), TrainError> {
        let run = RunDir::new(config.run_dir());
        let writes = config.distributed.writes_run_dir();
        // One writer per run directory, before anything in it is touched (and before the data
        // is read, so that a second writer is refused at once).
        let lock = writes.then(|| RunLock::acquire(&run.root)).transpose()?;
        let (images, unet) = load_images(config)?;
        if let Some(weights) = &options.init_from {
            // Checked before the run directory is touched (`--overwrite` deletes it).
            export::load_weights(unet.init::<B::InnerBackend>(device), &unet, weights)?;
        }
        let mut resolved = config.clone();
        resolved.data.image_size = Some(images.size);
        resolved.model.attn_resolutions = Some(unet.attn_resolutions.clone());
        let config_toml = resolved.to_toml();
        let unet_json = serde_json::to_string_pretty(&unet).expect("UNetConfig serialises");
        let images = Arc::new(images);
        if !writes {
            // The other nodes read the checkpoint they resume from (node 0's run directory, shared
            // or copied) and write nothing.
            let resume_from = find_resume_point(&run, options)?;
            return Ok((Self { run, _lock: None, images, unet, resume_from, config_toml, unet_json }, None));
        }
        let resume_from = prepare_run_dir(&run, options)?;
        // Clears what an interrupted write left, before this session writes anything.
        let store = CheckpointStore::open(&run.checkpoints(), config.train.keep_checkpoints)?;
        for (name, text) in [(CONFIG_FILE, &config_toml), (UNET_FILE, &unet_json)] {
            let path = run.root.join(name);
            std::fs::write(&path, text).map_err(|source| TrainError::Io { path, source })?;
        }
        Ok((Self { run, _lock: lock, images, unet, resume_from, config_toml, unet_json }, Some(store)))
    }
}

/// One peer's training session (the only one of a single-device run): its learner, the
/// checkpoint loaded into it, and Burn's `Learner` driven by the step strategy. `store` is the
/// writer's (peer 0's).
fn session<B>(config: &Config, prepared: &Prepared, store: Option<CheckpointStore>, peer: &Peer, device: &B::Device, options: &TrainOptions) -> Result<TrainReport, TrainError>
where
    B: AutodiffBackend + AssignBackend,
    B::InnerBackend: AssignBackend,
{
    let Prepared { run, images, unet, resume_from, config_toml, unet_json, .. } = prepared;
    let writes = store.is_some();
    let recipe = Recipe { peer: peer.clone(), ..Recipe::from_config(config)? };
    let generator = Generator { precond: recipe.objective.precond(), schedule: recipe.objective.schedule().clone(), shape: [images.channels, images.size] };
    let (mut learner, num_params) = build_learner_with::<B>(config, recipe, unet, device);
    let t = &config.train;
    if writes {
        tracing::info!(
            "{}: {} images of {}x{}x{}, {num_params} parameters ({:.2}M), batch {}, {} steps",
            run.root.display(),
            images.len(),
            images.channels,
            images.size,
            images.size,
            num_params as f64 / 1e6,
            t.batch_size,
            t.steps
        );
    }

    match (&options.init_from, resume_from) {
        (Some(weights), None) => {
            let model = learner.model();
            let net = export::load_weights(model.net, unet, weights)?;
            let ema = export::load_weights(model.ema, unet, weights)?;
            learner.load_model(Trainer { net, ema, recipe: model.recipe }.into_record());
            if writes {
                tracing::info!("the network and its EMA start from {}", weights.display());
            }
        }
        (Some(weights), Some(ckpt)) if writes => {
            tracing::info!("{} is not read: the run continues from its checkpoint {}, and --init-from applies only to a run's start", weights.display(), ckpt.dir.display());
        }
        _ => {}
    }
    let (start_step, wall_time_offset, journal_window, skipped) = match resume_from {
        Some(ckpt) => {
            let model = ckpt.load_for::<_, B>(MODEL, &learner.model(), device)?;
            learner.load_model(model);
            learner.load_optim(ckpt.load_state_for::<_, _, B>(OPTIMIZER, &learner.model(), device)?);
            learner.load_scheduler(ckpt.load::<_, B>(SCHEDULER, device)?);
            if ckpt.state.seed != config.run.seed && writes {
                tracing::warn!("the checkpoint was trained with seed {} and the config says {}; the run continues with {}", ckpt.state.seed, config.run.seed, config.run.seed);
            }
            (ckpt.state.step, ckpt.state.wall_time_s, ckpt.state.journal_window, ckpt.state.skipped)
        }
        None => (0, 0.0, Default::default(), Default::default()),
    };
    // Every peer of every node starts here, with the same weights, or none does.
    peer.join::<B, _>(&config.distributed, &learner.model(), start_step)?;
    let journal = run.metrics();
    if writes {
        journal::truncate(&journal, start_step).map_err(|source| TrainError::Io { path: journal.clone(), source })?;
    }
    let total_steps = t.steps as u64;
    let mut report = TrainReport { run_dir: run.root.clone(), num_params, start_step, last_step: start_step, last_checkpoint: resume_from.as_ref().map(|c| c.dir.clone()), last_samples: None };
    // A run stopped between a checkpoint and its FID (or resumed once complete without its
    // last FID) evaluates that checkpoint first, so no FID step goes missing.
    let catch_up = writes
        && start_step > 0
        && config.eval.fid_due(start_step, total_steps)
        && !journal::fid_lines(&journal).unwrap_or_default().iter().any(|l| l.step == start_step && l.metric == config.eval.metric);
    let fid = if writes && config.eval.fid_on() && (start_step < total_steps || catch_up) {
        let cache = config.eval.fid_cache.clone().unwrap_or_else(|| run.root.clone());
        Some(FidPlan::prepare(config, images, journal.clone(), run.fid_curve(), &cache, device)?)
    } else {
        None
    };
    if let (true, Some(fid)) = (catch_up, &fid) {
        peer.busy(|| with_backend_draws(|| fid.evaluate(&learner.model().ema.valid(), &generator, start_step, device)))?;
    }
    if start_step >= total_steps {
        if writes {
            tracing::info!("the run is already complete at step {start_step} (train.steps = {total_steps})");
        }
        peer.leave::<B::InnerBackend>();
        return Ok(report);
    }

    let order = DataOrder::new(images.len(), t.batch_size, config.run.seed, config.data.hflip);
    let lookahead = config.assignment.overlap && config.assignment.solves_on_host();
    let train_loader = Arc::new(StepLoader::<B>::new(images.clone(), order.clone(), t.batch_size, start_step..total_steps, device.clone()).with_lookahead(lookahead));
    let valid_loader = Arc::new(StepLoader::<B::InnerBackend>::new(images.clone(), order.clone(), t.batch_size, 0..0, device.clone()));
    let (outcome, finished) = std::sync::mpsc::sync_channel(1);
    let strategy = StepStrategy::<B> {
        device: device.clone(),
        peer: peer.clone(),
        plan: StepPlan {
            start_step,
            total_steps,
            batch_size: t.batch_size,
            checkpoint_every: t.checkpoint_every as u64,
            sample_every: t.sample_every as u64,
            seed: config.run.seed,
            order,
            wall_time_offset,
            checkpoint_files: vec![(CONFIG_FILE.into(), config_toml.clone()), (UNET_FILE.into(), unet_json.clone())],
            unet: unet.clone(),
            config_toml: config_toml.clone(),
            on_nonfinite: t.on_nonfinite,
            max_skipped_steps: t.max_skipped_steps.unwrap_or(DEFAULT_MAX_SKIPPED_STEPS),
            log_every: t.log_every as u64,
            journal_window,
            skipped,
        },
        samples: SamplePlan { dir: run.samples(), options: config.sample.clone(), generator },
        fid,
        store,
        outcome,
    };
    let training = SupervisedTraining::new(&run.root, train_loader, valid_loader)
        .metric_train_numeric(LossMetric::new())
        .metric_train_numeric(LearningRateMetric::new())
        .metric_train_numeric(ScalarMetric::<AssignDistance>::new())
        .metric_train_numeric(ScalarMetric::<AssignMilliseconds>::new())
        .metric_train_numeric(ScalarMetric::<SkippedSteps>::new())
        .with_metric_logger(QuietLogger)
        .with_application_logger(None)
        .with_training_strategy(TrainingStrategy::Custom(Arc::new(strategy)));
    let training = if writes {
        let monitor = TrainingMonitor::new(MonitorConfig {
            journal: journal.clone(),
            loss_curve: run.loss_curve(),
            batch_size: t.batch_size,
            start_step,
            total_steps,
            log_every: t.log_every as u64,
            wall_time_offset,
            window: journal_window,
        })
        .map_err(|source| TrainError::Io { path: journal, source })?;
        training.renderer(monitor)
    } else {
        training.renderer(SilentMonitor)
    };
    training.launch(learner);

    // `launch` returns once `fit` has, and `fit` always sends.
    let finished = finished.try_recv().expect("the strategy reports how training ended")?;
    report.last_step = finished.last_step;
    report.last_checkpoint = finished.last_checkpoint.or(report.last_checkpoint);
    report.last_samples = finished.last_samples;
    Ok(report)
}

/// The learner of a run: the network and its EMA under the config's recipe, AdamW and the
/// warm-up schedule, before any checkpoint is loaded.
pub type RunLearner<B> = Learner<Components<B, OptimizerAdaptor<AdamW, Trainer<B>, B>>>;

/// The training images and the network shape that fits them, both checked against the config.
pub fn load_images(config: &Config) -> Result<(data::ImageSet, UNetConfig), TrainError> {
    let images = data::load(config)?;
    if config.model.class_conditional && images.labels.is_none() {
        return Err(TrainError::Invalid(Invalid::new(
            "model.class_conditional",
            format!("the {} dataset has no class labels", crate::config::enum_name(&config.data.dataset)),
        )));
    }
    if images.len() < config.train.batch_size {
        tracing::warn!("the dataset has {} images, fewer than a batch of {}", images.len(), config.train.batch_size);
    }
    let unet = config.unet_config(images.size, images.channels, images.num_classes);
    unet.validate().map_err(|message| Invalid::new("model", format!("{message} (the images are {}x{})", images.size, images.size)))?;
    Ok((images, unet))
}

/// Builds the learner `train` trains (and `bench train` times), with its parameter count.
pub fn build_learner<B>(config: &Config, unet: &UNetConfig, device: &B::Device) -> Result<(RunLearner<B>, usize), Invalid>
where
    B: AutodiffBackend + AssignBackend,
    B::InnerBackend: AssignBackend,
{
    Ok(build_learner_with::<B>(config, Recipe::from_config(config)?, unet, device))
}

/// [`build_learner`] with a given recipe.
fn build_learner_with<B>(config: &Config, recipe: Recipe, unet: &UNetConfig, device: &B::Device) -> (RunLearner<B>, usize)
where
    B: AutodiffBackend + AssignBackend,
    B::InnerBackend: AssignBackend,
{
    let model = recipe.init::<B>(unet, device);
    let num_params = model.net.num_params();
    let t = &config.train;
    let optimizer = AdamWConfig::new()
        .with_beta_1(t.betas[0] as f32)
        .with_beta_2(t.betas[1] as f32)
        .with_epsilon(t.adam_eps as f32)
        .with_weight_decay(t.weight_decay as f32)
        .init::<B, Trainer<B>>();
    (Learner::new(model, optimizer, WarmupLr::new(t.lr, t.warmup_steps)), num_params)
}

/// The checkpoint `options` resume from, read without changing the run directory (the nodes
/// other than node 0, which check it against node 0's when they join).
fn find_resume_point(run: &RunDir, options: &TrainOptions) -> Result<Option<Checkpoint>, TrainError> {
    let ckpt = match &options.resume {
        Resume::No => return Ok(None),
        Resume::Latest => match checkpoint::list(&run.checkpoints())?.last() {
            Some((_, dir)) => Checkpoint::open(dir)?,
            None => return Ok(None),
        },
        Resume::From(dir) => Checkpoint::open(dir)?,
    };
    tracing::info!("resuming from {} (step {})", ckpt.dir.display(), ckpt.state.step);
    Ok(Some(ckpt))
}

/// Creates the run directory's folders and finds the checkpoint to resume from.
fn prepare_run_dir(run: &RunDir, options: &TrainOptions) -> Result<Option<Checkpoint>, TrainError> {
    let existing = checkpoint::list(&run.checkpoints())?;
    let resume_from = match &options.resume {
        Resume::No if !existing.is_empty() && !options.overwrite => {
            return Err(TrainError::RunDir(format!(
                "{} already holds checkpoints (newest: step {}); pass --resume to continue it, \
                 --overwrite to replace it, or choose another name with --set run.name=…",
                run.root.display(),
                existing.last().expect("not empty").0
            )));
        }
        Resume::No => {
            if options.overwrite && run.root.exists() {
                // Everything but the lock this process holds.
                for entry in std::fs::read_dir(&run.root).map_err(|source| TrainError::Io { path: run.root.clone(), source })?.flatten() {
                    let path = entry.path();
                    if entry.file_name() != LOCK_FILE {
                        let removed = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
                        removed.map_err(|source| TrainError::Io { path, source })?;
                    }
                }
            }
            None
        }
        Resume::Latest => match existing.last() {
            Some((_, dir)) => {
                let ckpt = Checkpoint::open(dir)?;
                tracing::info!("resuming from {} (step {}): the newest complete checkpoint{}", dir.display(), ckpt.state.step, skipped_incomplete(&run.checkpoints(), ckpt.state.step));
                Some(ckpt)
            }
            None => {
                tracing::info!("no complete checkpoint in {} yet: starting the run from scratch{}", run.checkpoints().display(), skipped_incomplete(&run.checkpoints(), 0));
                None
            }
        },
        Resume::From(dir) => {
            let ckpt = Checkpoint::open(dir)?;
            tracing::info!("resuming from {} (step {}): the checkpoint --resume names", dir.display(), ckpt.state.step);
            set_aside_newer(&run.checkpoints(), &existing, ckpt.state.step)?;
            Some(ckpt)
        }
    };
    for dir in [run.root.clone(), run.checkpoints(), run.samples()] {
        std::fs::create_dir_all(&dir).map_err(|source| TrainError::Io { path: dir.clone(), source })?;
    }
    Ok(resume_from)
}

/// Moves the complete checkpoints newer than `step` (the future of a run resumed from an older
/// checkpoint) into `abandoned-<unix time>/`, where neither `--resume` nor pruning sees them:
/// kept, not deleted.
fn set_aside_newer(root: &Path, existing: &[(u64, PathBuf)], step: u64) -> Result<(), TrainError> {
    let newer: Vec<&PathBuf> = existing.iter().filter(|(s, _)| *s > step).map(|(_, p)| p).collect();
    if newer.is_empty() {
        return Ok(());
    }
    let seconds = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let aside = root.join(format!("abandoned-{seconds}"));
    std::fs::create_dir_all(&aside).map_err(|source| TrainError::Io { path: aside.clone(), source })?;
    for dir in &newer {
        let to = aside.join(dir.file_name().unwrap_or_default());
        std::fs::rename(dir, &to).map_err(|source| TrainError::Io { path: (*dir).clone(), source })?;
    }
    tracing::info!("moved the {} newer checkpoint(s) of the abandoned continuation to {}", newer.len(), aside.display());
    Ok(())
}

/// `; skipped …` naming the checkpoint folders newer than `step` that are incomplete (no
/// `state.json`: not written by a finished commit), or nothing.
fn skipped_incomplete(root: &Path, step: u64) -> String {
    let skipped: Vec<String> = checkpoint::incomplete(root).into_iter().filter(|(s, _)| *s > step).map(|(_, p)| p.display().to_string()).collect();
    if skipped.is_empty() {
        String::new()
    } else {
        format!("; skipped {} (incomplete: no state.json)", skipped.join(", "))
    }
}

/// Metrics go to `metrics.jsonl` through the monitor; Burn's per-epoch log files stay unwritten.
struct QuietLogger;

impl MetricLogger for QuietLogger {
    fn log(&mut self, _update: MetricsUpdate, _epoch: usize, _split: &Split) {}
    fn read_numeric(&mut self, name: &str, _epoch: usize, _split: &Split) -> Result<Vec<NumericEntry>, String> {
        Err(format!("metric {name} is recorded in metrics.jsonl"))
    }
    fn log_metric_definition(&mut self, _definition: MetricDefinition) {}
    fn log_epoch_summary(&mut self, _summary: EpochSummary) {}
}

/// What `emulsion sample` asks for; `None` keeps the run's `[sample]` setting.
#[derive(Debug, Clone)]
pub struct SampleRequest {
    pub n: usize,
    pub sampler: Option<SamplerKind>,
    pub steps: Option<usize>,
    pub eta: Option<f64>,
    pub seed: Option<u64>,
    pub guidance: Option<f64>,
    pub clip_denoised: Option<bool>,
    pub out: PathBuf,
}

/// Draws a grid from the EMA weights of a checkpoint (its sampling snapshot) or of an exported
/// weights file. `path` is a run directory (its newest checkpoint is used), a checkpoint folder
/// or a `.safetensors` file that `emulsion export` wrote.
pub fn sample<B: Backend>(path: &Path, request: &SampleRequest, device: &B::Device) -> Result<PathBuf, TrainError> {
    let (net, config, unet) = sampling_network::<B>(path, device)?;
    let recipe = Recipe::from_config(&config)?;
    let schedule = recipe.objective.schedule().clone();
    let precond = recipe.objective.precond();
    let defaults = &config.sample;
    let options = SampleConfig {
        sampler: request.sampler.unwrap_or(defaults.sampler),
        steps: request.steps.unwrap_or(defaults.steps),
        eta: request.eta.unwrap_or(defaults.eta),
        seed: request.seed.unwrap_or(defaults.seed),
        guidance: request.guidance.unwrap_or(defaults.guidance),
        clip_denoised: request.clip_denoised.unwrap_or(defaults.clip_denoised),
        n: request.n,
        ..defaults.clone()
    };
    let requested = Config { sample: options.clone(), ..config.clone() };
    requested.validate().map_err(|e| TrainError::RunDir(format!("this run cannot be sampled so: {e}")))?;
    let generator = Generator { precond, schedule, shape: [unet.in_channels, unet.image_size] };
    let images = generator.generate(&net, &options, 0..request.n, seeds::derive(options.seed, Stream::Sample, 0), device);
    save_grid(images, grid_columns(request.n, unet.num_classes), &request.out)
        .map_err(|source| TrainError::Io { path: request.out.clone(), source })?;
    Ok(request.out.clone())
}

/// The checkpoint folder `path` names: itself, or a run directory's newest complete one.
pub(crate) fn checkpoint_in(path: &Path) -> Result<PathBuf, TrainError> {
    if path.join("state.json").is_file() {
        return Ok(path.to_path_buf());
    }
    let root = RunDir::new(path).checkpoints();
    let dir = checkpoint::latest(&root).map_err(|e| match e {
        CheckpointError::NoneFound { dir } => TrainError::RunDir(format!(
            "no complete checkpoint in {}: is {} a run directory of a run that reached its first checkpoint, or an exported .safetensors file?{}",
            dir.display(),
            path.display(),
            skipped_incomplete(&dir, 0)
        )),
        other => other.into(),
    })?;
    let step = Checkpoint::open(&dir)?.state.step;
    tracing::info!("{} (step {}): the newest complete checkpoint of {}{}", dir.display(), step, path.display(), skipped_incomplete(&root, step));
    Ok(dir)
}

/// The EMA network `path` names, its run's config and its shape: an exported weights file, a
/// checkpoint folder or a run directory (its newest checkpoint).
pub fn sampling_network<B: Backend>(path: &Path, device: &B::Device) -> Result<(UNet<B>, Config, UNetConfig), TrainError> {
    if export::is_weights_file(path) {
        let exported = export::load::<B>(path, device)?;
        return Ok((exported.net, exported.config, exported.info.unet));
    }
    sampling_weights::<B>(&checkpoint_in(path)?, device)
}

/// The EMA network of the checkpoint `dir`, its config and shape: from its sampling snapshot,
/// or, for a checkpoint written before snapshots, from its training state.
fn sampling_weights<B: Backend>(dir: &Path, device: &B::Device) -> Result<(UNet<B>, Config, UNetConfig), TrainError> {
    let ckpt = Checkpoint::open(dir)?;
    let snapshot = dir.join(SNAPSHOT_FILE);
    if snapshot.is_file() {
        let exported = export::load::<B>(&snapshot, device)?;
        return Ok((exported.net, exported.config, exported.info.unet));
    }
    tracing::info!("{} has no {SNAPSHOT_FILE} (written before sampling snapshots): its EMA is read from the training state", dir.display());
    let config = Config::from_recorded_toml(&ckpt.read_file(CONFIG_FILE)?, &dir.join(CONFIG_FILE))?;
    let unet: UNetConfig = serde_json::from_str(&ckpt.read_file(UNET_FILE)?).map_err(|e| CheckpointError::Invalid {
        path: dir.join(UNET_FILE),
        reason: e.to_string(),
    })?;
    let trainer: Trainer<B> = Recipe::from_config(&config)?.init::<B>(&unet, device);
    let record = ckpt.load_for(MODEL, &trainer, device)?;
    Ok((trainer.load_record(record).ema, config, unet))
}
