//! `emulsion`: train diffusion models faster, on Burn.
//!
//! This crate is the command line and the glue: it parses arguments, picks the backend the
//! device asks for, and calls `emulsion-train`.

mod device;
mod kernel_cache;
mod progress;
mod sweep_runner;

use std::path::{Path, PathBuf};
use std::time::Instant;
use std::process::ExitCode;

use anyhow::{Context, Result};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;
use clap::{Args, Parser, Subcommand};
use emulsion_sample::SamplerKind;
use emulsion_train::config::DeviceChoice;
use emulsion_train::{Config, Resume, SampleRequest, TrainOptions};

#[derive(Parser)]
#[command(name = "emulsion", version, about = "Train diffusion and consistency models faster, on Burn")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Folder of the GPU kernel cache: CubeCL's autotune results (WGPU, CUDA), compiled PTX
    /// (CUDA) and the drivers' shader caches. Default: .kernel-cache/ at the root of the Emulsion
    /// checkout holding the working directory, else $XDG_CACHE_HOME/emulsion/kernels (~/.cache).
    #[arg(long, global = true, env = kernel_cache::ENV, value_name = "DIR")]
    kernel_cache: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model described by a TOML config (see configs/).
    Train(TrainArgs),
    /// Draw a grid of images from the EMA weights of a run's newest checkpoint.
    Sample(SampleArgs),
    /// Write a checkpoint's weights as EDM SongUNet's state dict (safetensors), for PyTorch.
    Export(ExportArgs),
    /// Inspect the noise schedules: print one as CSV, or plot them all.
    #[command(subcommand)]
    Schedule(ScheduleCommand),
    /// Measure parts of training and print a table.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Fréchet Inception Distance (or `--metric fd_fmnist`) between two image sets, or the
    /// statistics of one.
    Fid(FidArgs),
    /// Train every combination of a sweep file's grid and seeds, then summarise them.
    Sweep(SweepArgs),
    /// The classifier of the `fd_fmnist` metric (`eval.metric = "fd_fmnist"`).
    #[command(subcommand)]
    FdNet(FdNetCommand),
    /// Burn's global orchestrator, which the nodes of a multi-node run meet at (node 0 starts
    /// one itself unless distributed.start_coordinator = false).
    Coordinator(CoordinatorArgs),
}

#[derive(Subcommand)]
enum FdNetCommand {
    /// Train the Fashion-MNIST classifier whose features `fd_fmnist` compares, deterministically
    /// (same options, same weights); writes its weights and, beside them as JSON, its test
    /// accuracy and the metric's floor.
    Train(FdNetTrainArgs),
}

#[derive(Args)]
struct FdNetTrainArgs {
    /// Folder of Fashion-MNIST's IDX files [default: /usr/share/datasets/fashion-mnist when it
    /// holds the training split, else datasets/fashion-mnist: trains on all but the last
    /// --holdout test images]
    #[arg(long)]
    data: Option<PathBuf>,
    /// The weights file to write (its record goes beside it, as .json).
    #[arg(long, default_value = emulsion_fid::fd_fmnist::DEFAULT_WEIGHTS)]
    out: PathBuf,
    /// Passes over the training images [default: 8]
    #[arg(long)]
    epochs: Option<usize>,
    /// Images per step [default: 128]
    #[arg(long)]
    batch: Option<usize>,
    /// Adam's learning rate, constant [default: 0.001]
    #[arg(long)]
    lr: Option<f64>,
    /// Seed of the initial weights and the order of every epoch [default: 0]
    #[arg(long)]
    seed: Option<u64>,
    /// Test images held out when the folder has no training split [default: 2000]
    #[arg(long)]
    holdout: Option<usize>,
    /// Train on at most N images.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Where to train.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
}

#[derive(Args)]
struct FidArgs {
    /// Image sets: a folder of PNG/JPEG images, a training config (.toml: its training
    /// images, statistics cached in its run directory), saved statistics (.npz with mu, sigma),
    /// or a network's samples: a run directory, a checkpoint or an exported .safetensors file
    /// (its run's eval.fid_samples images, or --limit; sampled as its run's FID is).
    #[arg(required = true, num_args = 1..=2, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Save the statistics of the first PATH (pytorch-fid's `.npz`: mu, sigma).
    #[arg(long, value_name = "OUT.npz")]
    save_stats: Option<PathBuf>,
    /// Use at most N images of each folder or dataset.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Images per Inception batch.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Where the network runs.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
    /// Sampler of a network's images (default: its run's eval.sampler, else sample.sampler).
    #[arg(long, value_enum)]
    sampler: Option<SamplerKind>,
    /// Noise levels of that sampler (default: its run's eval.steps, else sample.steps).
    #[arg(long)]
    steps: Option<usize>,
    /// Whose features to compare: fid (Inception) or fd_fmnist (the classifier of
    /// `emulsion fd-net train`; 1×28×28 images).
    #[arg(long, value_enum, default_value_t = emulsion_fid::Metric::Fid)]
    metric: emulsion_fid::Metric,
    /// The metric's network: the converted Inception weights (scripts/fetch_inception.sh), or
    /// the fd_fmnist classifier; default: datasets/inception/… or datasets/fd_fmnist/… .
    #[arg(long)]
    weights: Option<PathBuf>,
}

#[derive(Args)]
struct SweepArgs {
    /// The sweep file, e.g. configs/sweeps/fmnist_methods.toml.
    file: PathBuf,
    /// Devices to run on side by side, comma separated: auto, cpu, ndarray, wgpu, cuda, or
    /// cuda:N (pins GPU N through CUDA_VISIBLE_DEVICES); default: one run at a time on each
    /// run's run.device.
    #[arg(long, value_delimiter = ',')]
    devices: Vec<sweep_runner::DeviceSlot>,
    /// Runs at once on each device (a device listed N times in --devices does the same).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    jobs_per_device: u64,
    /// List the runs and their state, run nothing.
    #[arg(long)]
    dry_run: bool,
    /// Only rewrite the summary from the runs' journals.
    #[arg(long, conflicts_with = "dry_run")]
    summary_only: bool,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Training speed: the run a config describes, built as `train` builds it (no checkpoints,
    /// samples or journal): time to the first step, steady-state images/s, memory.
    Train(BenchTrainArgs),
    /// The Inception FID pipeline: start-up seconds and images/s after it.
    Fid(BenchFidArgs),
    /// Noise assignment: distance kernel, LAPJV, CPU and device auctions, KNN, and scipy on the same matrices.
    Assign(BenchAssignArgs),
}

#[derive(Args)]
struct BenchTrainArgs {
    /// The config file, e.g. configs/fashion_edm.toml.
    config: PathBuf,
    /// Override a config key, e.g. --set train.micro_batch=0 (repeatable; applied in order).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Where to run (overrides run.device).
    #[arg(long, value_enum)]
    device: Option<DeviceChoice>,
    /// Optimiser steps in all: the first, the warm-up, then the timed windows (the default
    /// gives five windows, an odd count, so the median is one of them).
    #[arg(long, default_value_t = 31)]
    steps: usize,
    /// Untimed steps after the first.
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Steps per timed window; images/s is the median over the windows.
    #[arg(long, default_value_t = 5)]
    window: usize,
    /// Print one JSON object (the keys scripts/torch_reference.py prints) instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BenchFidArgs {
    /// Where the network runs.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
    /// Images in all; the first batch is start-up, the rest is timed.
    #[arg(long, default_value_t = 1000)]
    n: usize,
    /// Images per batch.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Side of the random RGB input images (resized to 299 for the network).
    #[arg(long, default_value_t = 32)]
    size: usize,
    /// The converted Inception weights (made by scripts/fetch_inception.sh).
    #[arg(long, default_value = emulsion_fid::DEFAULT_WEIGHTS)]
    weights: PathBuf,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BenchAssignArgs {
    /// Batch sizes, comma separated.
    #[arg(long, value_delimiter = ',', default_values_t = [128, 512, 1024])]
    batch: Vec<usize>,
    /// Values per image (3072 = 3x32x32).
    #[arg(long, default_value_t = 3072)]
    dim: usize,
    /// Timed runs per measurement; medians are reported.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Candidates per image for KNN.
    #[arg(long, default_value_t = 4)]
    k: usize,
    /// Final ε of the auction, in cost units: its total is within batch·ε of the optimum.
    #[arg(long, default_value_t = 1e-3)]
    epsilon: f64,
    /// Solve this B x B float32/float64 .npy matrix instead, printing each method's total and time.
    #[arg(long, value_name = "FILE.npy")]
    costs: Option<PathBuf>,
    /// The scipy timing script; skipped with a note when Python or scipy is missing.
    #[arg(long, default_value = "scripts/scipy_lsa.py")]
    scipy_script: PathBuf,
    /// Do not time scipy.
    #[arg(long)]
    no_scipy: bool,
    /// Where the distance kernel, the device auctions and KNN run.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Subcommand)]
enum ScheduleCommand {
    /// Print `t,lambda,alpha,sigma` of schedule NAME: its own λ(t) with the shift applied and no
    /// truncation, and the VP α and σ, one row per t, at full f64 precision.
    Dump {
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(emulsion_schedule::Curve::NAMES))]
        name: String,
        /// The times, comma separated, each in (0, 1).
        #[arg(long, value_delimiter = ',', default_values_t = [0.1, 0.25, 0.5, 0.75, 0.9])]
        t: Vec<f64>,
        /// A parameter of the schedule (mu=0.5) or of its range (shift=2, lambda_min=-10); repeatable.
        #[arg(long = "set", value_name = "PARAM=VALUE")]
        settings: Vec<String>,
    },
    /// Draw p(λ) and λ(t) of every schedule, with default parameters, on one PNG.
    Plot {
        #[arg(long, default_value = "schedules.png")]
        out: PathBuf,
    },
}

#[derive(Args)]
struct TrainArgs {
    /// The config file, e.g. configs/quickstart.toml.
    config: PathBuf,
    /// Override a config key, e.g. --set train.steps=2000 (repeatable; applied in order).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Where to run (overrides run.device).
    #[arg(long, value_enum)]
    device: Option<DeviceChoice>,
    /// Continue the run from its newest checkpoint, or from the checkpoint folder PATH.
    #[arg(long, value_name = "PATH")]
    resume: Option<Option<PathBuf>>,
    /// Delete an existing run directory of the same name and start over.
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    /// Print the resolved configuration and exit.
    #[arg(long)]
    dry_run: bool,
    /// Start the network and its EMA from these weights (EDM SongUNet's names and layouts, as
    /// `emulsion export` writes them) instead of a random initialisation; a resumed run ignores it.
    #[arg(long, value_name = "WEIGHTS.safetensors")]
    init_from: Option<PathBuf>,
    /// Data-parallel on these devices of one backend, one peer each, e.g. cuda:0,cuda:1 (sets
    /// run.device and distributed.devices; cpu:0,cpu:1 runs two peers on the CPU).
    #[arg(long, value_delimiter = ',', value_name = "KIND:N", conflicts_with = "device")]
    devices: Vec<PeerDevice>,
    /// Nodes (processes, usually machines) in the run, each with the same config and as many
    /// devices (distributed.nodes).
    #[arg(long)]
    nodes: Option<usize>,
    /// This node's number, 0 to nodes - 1 (distributed.node_rank); node 0 writes the run.
    #[arg(long)]
    node_rank: Option<usize>,
    /// Burn's global orchestrator, which every node connects to (distributed.coordinator);
    /// node 0 starts it on this port unless distributed.start_coordinator = false.
    #[arg(long, value_name = "HOST:PORT")]
    coordinator: Option<String>,
}

#[derive(Args)]
struct CoordinatorArgs {
    /// The port to listen on, on every interface: the port of every node's --coordinator.
    #[arg(long)]
    port: u16,
    /// Exit when standard input closes: how node 0 ties the orchestrator it starts to itself.
    #[arg(long, hide = true)]
    until_stdin_closes: bool,
}

#[derive(Args)]
struct ExportArgs {
    /// A run directory (its newest checkpoint), or a checkpoint folder.
    run_dir: PathBuf,
    /// The weights file to write (safetensors); its metadata and a .json beside it say which
    /// SongUNet it loads into.
    #[arg(long, value_name = "OUT.safetensors")]
    out: PathBuf,
    /// The trained weights instead of their EMA.
    #[arg(long)]
    raw: bool,
}

#[derive(Args)]
struct SampleArgs {
    /// A run directory (its newest checkpoint is used), a checkpoint folder, or a weights file
    /// that `emulsion export` wrote.
    run_dir: PathBuf,
    /// Number of images.
    #[arg(long, default_value_t = 64)]
    n: usize,
    /// Sampler (consistency for a consistency model; default: the run's sample.sampler).
    #[arg(long, value_enum)]
    sampler: Option<SamplerKind>,
    /// Noise levels (Heun evaluates the network 2·steps − 1 times; default: the run's sample.steps).
    #[arg(long)]
    steps: Option<usize>,
    /// DDIM η (default: the run's sample.eta).
    #[arg(long)]
    eta: Option<f64>,
    /// Seed of the sampling noise (default: the run's sample.seed).
    #[arg(long)]
    seed: Option<u64>,
    /// Classifier-free guidance scale for conditional models (default: the run's sample.guidance).
    #[arg(long)]
    guidance: Option<f64>,
    /// Clamp denoised estimates to [-1, 1]: true or false (default: the run's sample.clip_denoised).
    #[arg(long, value_name = "BOOL")]
    clip_denoised: Option<bool>,
    /// Output PNG.
    #[arg(long, default_value = "grid.png")]
    out: PathBuf,
    /// Where to run.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
}

/// The log filter without `EMULSION_LOG`: Emulsion's crates at info, everything else at warn.
const DEFAULT_LOG: &str = "warn,emulsion=info,emulsion_train=info,emulsion_fid=info,emulsion_assign=info,emulsion_schedule=info,emulsion_models=info";

fn main() -> ExitCode {
    let started = Instant::now();
    // The libraries report through `tracing`: progress and what a run did at info, problems at
    // warn; other crates (Burn, CubeCL, wgpu) only at warn. `EMULSION_LOG` (or `RUST_LOG`) takes
    // an env-filter directive instead, e.g. `EMULSION_LOG=debug` or `EMULSION_LOG=warn`.
    let filter = tracing_subscriber::EnvFilter::try_from_env("EMULSION_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| DEFAULT_LOG.into());
    // Progress events are for the bars, never log lines.
    let filter = filter.add_directive("emulsion::progress=off".parse().expect("a valid directive"));
    // On a terminal: colour, and progress bars with the log printed above them. Elsewhere (a
    // file, a pipe): plain lines, and the periodic info lines are the progress.
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let log = tracing_subscriber::fmt::layer().with_ansi(terminal).without_time().with_target(false);
    if terminal {
        let bars = progress::install();
        let progress_only = tracing_subscriber::filter::Targets::new().with_target(emulsion_sample::progress::TARGET, tracing::Level::TRACE);
        tracing_subscriber::registry()
            .with(log.with_writer(progress::AboveBars(bars.clone())).with_filter(filter))
            .with(progress::Bars::new(bars).with_filter(progress_only))
            .init();
    } else {
        tracing_subscriber::registry().with(log.with_writer(std::io::stderr).with_filter(filter)).init();
    }
    // Burn's collective panics in its network threads when another node goes away; the peers'
    // own error says what happened, so each such panic is one warning line, not a panic report.
    let report_panic = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| match std::thread::current().name() {
        Some("tokio-rt-worker") => tracing::warn!("Burn's collective runtime {info}"),
        _ => report_panic(info),
    }));
    let cli = Cli::parse();
    if let Err(error) = use_kernel_cache(cli.kernel_cache.as_deref()) {
        progress::clear();
        eprintln!("error: {}", describe(&error));
        return ExitCode::from(1);
    }
    let result = match cli.command {
        Command::Train(args) => train(args),
        Command::Sample(args) => sample(args),
        Command::Export(args) => export(args),
        Command::Schedule(command) => schedule(command),
        Command::Bench(BenchCommand::Train(args)) => bench_train(args, started),
        Command::Bench(BenchCommand::Fid(args)) => bench_fid(args, started),
        Command::Bench(BenchCommand::Assign(args)) => bench_assign(args),
        Command::Fid(args) => fid(args),
        Command::Sweep(args) => sweep(args),
        Command::FdNet(FdNetCommand::Train(args)) => fd_net_train(args),
        Command::Coordinator(args) => coordinator(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            progress::clear();
            eprintln!("error: {}", describe(&error));
            ExitCode::from(1)
        }
    }
}

/// `error` and its causes, `: `-separated, leaving out a cause whose text is already there: the
/// libraries' errors name their source in their own message, and anyhow's contexts do not.
fn describe(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
    }
    text
}

/// Resolves the kernel cache folder for the GPU backends (which open it when chosen), and leaves
/// it in the environment for the `emulsion train` children of a sweep.
fn use_kernel_cache(explicit: Option<&std::path::Path>) -> Result<()> {
    let cwd = std::env::current_dir().context("reading the working directory")?;
    let folder = kernel_cache::resolve(explicit, &cwd);
    // SAFETY: called before any other thread of ours starts or reads the environment.
    unsafe { std::env::set_var(kernel_cache::ENV, &folder) };
    kernel_cache::remember(folder);
    Ok(())
}

fn train(args: TrainArgs) -> Result<()> {
    // The node flags are overrides of their keys, applied before the config is validated (a
    // shared config may leave the coordinator to each node's command line).
    let mut overrides = args.overrides.clone();
    overrides.extend(args.nodes.map(|n| format!("distributed.nodes={n}")));
    overrides.extend(args.node_rank.map(|r| format!("distributed.node_rank={r}")));
    overrides.extend(args.coordinator.as_ref().map(|c| format!("distributed.coordinator={}", toml::Value::String(c.clone()))));
    let mut config = Config::load(&args.config, &overrides)?;
    if let Some(device) = args.device {
        config.run.device = device;
    }
    if let Some(first) = args.devices.first() {
        anyhow::ensure!(args.devices.iter().all(|d| d.choice == first.choice), "--devices {}: the devices must be of one kind", join(&args.devices));
        config.run.device = first.choice;
        config.distributed.devices = args.devices.iter().map(|d| d.index).collect();
    }
    // The command line changed the config after `load` validated it.
    config.validate().context("--devices")?;
    if args.dry_run {
        print!("{}", config.to_toml());
        return Ok(());
    }
    let options = TrainOptions {
        resume: match args.resume {
            None => Resume::No,
            Some(None) => Resume::Latest,
            Some(Some(path)) => Resume::From(path),
        },
        overwrite: args.overwrite,
        init_from: args.init_from,
    };
    let backend = device::resolve(config.run.device)?;
    eprintln!("device: {}", backend.describe());
    let orchestrator = start_orchestrator(&config.distributed)?;
    let report = on_backend!(backend, B => {
        emulsion_train::train::<burn::backend::Autodiff<B>>(&config, &Default::default(), &options)
    })
    .with_context(|| format!("training {}", args.config.display()))?;
    if let Some(orchestrator) = orchestrator {
        orchestrator.linger();
    }
    if let Some(samples) = &report.last_samples {
        eprintln!("samples: {}", samples.display());
    }
    if let Some(checkpoint) = &report.last_checkpoint {
        eprintln!("checkpoint: {}", checkpoint.display());
    }
    Ok(())
}

/// Node 0 of a multi-node run starts Burn's global orchestrator as a child process (`emulsion
/// coordinator`), which ends with it; the orchestrator's signal handling stays out of this
/// process. Every node first checks that its data service's port is free.
fn start_orchestrator(d: &emulsion_train::distributed::DistributedConfig) -> Result<Option<Orchestrator>> {
    if d.nodes == 1 {
        return Ok(None);
    }
    port_is_free(d.data_service_port()?, "distributed.data_port (this node's tensor data service)")?;
    if d.node_rank != 0 || !d.start_coordinator {
        return Ok(None);
    }
    let (_, port) = d.coordinator_address()?;
    port_is_free(port, "distributed.coordinator's port")?;
    let exe = std::env::current_exe().context("locating the emulsion binary")?;
    let child = std::process::Command::new(exe)
        .args(["coordinator", "--port", &port.to_string(), "--until-stdin-closes"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("starting Burn's global orchestrator (emulsion coordinator)")?;
    let mut orchestrator = Orchestrator(child);
    // One that cannot start says so at once (its error is above), not after the others' timeout.
    std::thread::sleep(std::time::Duration::from_millis(300));
    if let Some(status) = orchestrator.0.try_wait().context("watching the orchestrator")? {
        anyhow::bail!("Burn's global orchestrator (emulsion coordinator --port {port}) stopped at once ({status})");
    }
    eprintln!("orchestrator: listening on port {port} (process {})", orchestrator.0.id());
    Ok(Some(orchestrator))
}

/// Refuses a port another program listens on, before Burn's servers would fail on it in a
/// thread of their own (and leave the nodes waiting for the timeout).
fn port_is_free(port: u16, what: &str) -> Result<()> {
    std::net::TcpListener::bind(("0.0.0.0", port)).map(drop).with_context(|| format!("port {port} of {what} is not free"))
}

/// The orchestrator child of node 0: stopped when node 0 ends, or, should node 0 be killed,
/// when its standard input closes.
struct Orchestrator(std::process::Child);

impl Orchestrator {
    /// After a finished run: the other nodes leave right after node 0's last all-reduce, and
    /// the orchestrator acknowledges each; a moment for that, then it stops.
    fn linger(self) {
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
}

impl Drop for Orchestrator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn coordinator(args: CoordinatorArgs) -> Result<()> {
    port_is_free(args.port, "--port")?;
    if args.until_stdin_closes {
        std::thread::spawn(|| {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            std::process::exit(0);
        });
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the orchestrator's runtime")?;
    runtime.block_on(burn_collective::start_global_orchestrator(args.port));
    Ok(())
}

fn join(devices: &[PeerDevice]) -> String {
    devices.iter().map(|d| format!("{}:{}", d.choice, d.index)).collect::<Vec<_>>().join(",")
}

/// One device of `train --devices`: a backend and the device's index on it.
#[derive(Debug, Clone, Copy)]
struct PeerDevice {
    choice: DeviceChoice,
    index: u16,
}

impl std::str::FromStr for PeerDevice {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (name, index) = text.trim().split_once(':').unwrap_or((text.trim(), "0"));
        let choice = <DeviceChoice as clap::ValueEnum>::from_str(name, false).map_err(|_| format!("`{text}` is not a device: cpu, ndarray, wgpu or cuda, with :N for the N-th"))?;
        let index = index.parse().map_err(|_| format!("`{text}`: the device index after `:` must be a number"))?;
        Ok(Self { choice, index })
    }
}

fn sample(args: SampleArgs) -> Result<()> {
    let request = SampleRequest {
        n: args.n,
        sampler: args.sampler,
        steps: args.steps,
        eta: args.eta,
        seed: args.seed,
        guidance: args.guidance,
        clip_denoised: args.clip_denoised,
        out: args.out,
    };
    anyhow::ensure!(request.n > 0, "--n must be at least 1");
    anyhow::ensure!(request.steps != Some(0), "--steps must be at least 1");
    let backend = device::resolve(args.device)?;
    let out = on_backend!(backend, B => {
        emulsion_train::sample::<B>(&args.run_dir, &request, &Default::default())
    })
    .with_context(|| format!("sampling from {}", args.run_dir.display()))?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

fn export(args: ExportArgs) -> Result<()> {
    let out = emulsion_train::export::export::<burn::backend::Flex>(&args.run_dir, args.raw, &args.out, &Default::default())
        .with_context(|| format!("exporting {}", args.run_dir.display()))?;
    eprintln!("wrote {} and {}", out.display(), out.with_extension("json").display());
    Ok(())
}

fn fid(args: FidArgs) -> Result<()> {
    anyhow::ensure!(args.batch > 0, "--batch must be at least 1");
    anyhow::ensure!(args.limit.is_none_or(|n| n >= 2), "--limit must be at least 2 (a covariance needs two images)");
    anyhow::ensure!(
        args.paths.len() == 2 || args.save_stats.is_some(),
        "give two image sets to compare, or one with --save-stats OUT.npz"
    );
    let backend = device::resolve(args.device)?;
    let weights = args.weights.clone().unwrap_or_else(|| args.metric.default_weights().into());
    let needs_network = args.paths.iter().any(|p| !emulsion_report::fid::is_stats_file(p));
    anyhow::ensure!(
        (args.sampler.is_none() && args.steps.is_none()) || args.paths.iter().any(|p| emulsion_report::fid::is_network(p)),
        "--sampler and --steps choose how a network's images are drawn, and no PATH is a network (a run directory, a checkpoint or an exported .safetensors)"
    );
    if needs_network {
        eprintln!("device: {}", backend.describe());
    }
    let stats = on_backend!(backend, B => {
        let device = Default::default();
        let net = needs_network.then(|| args.metric.load::<B>(&weights, &device)).transpose()?;
        args.paths
            .iter()
            .map(|p| {
                let loaded = net.as_ref().map(|net| emulsion_report::fid::LoadedNet { metric: args.metric, net, weights: &weights });
                emulsion_report::fid::stats_of_path::<B>(p, loaded, args.limit, args.batch, (args.sampler, args.steps), &device)
                    .with_context(|| format!("statistics of {}", p.display()))
            })
            .collect::<Result<Vec<_>>>()?
    });
    if let Some(out) = &args.save_stats {
        stats[0].save_npz(out)?;
        eprintln!("wrote {} (statistics of {})", out.display(), args.paths[0].display());
    }
    if let [a, b] = &stats[..] {
        let distance = emulsion_fid::frechet_distance(a, b)?;
        eprintln!("{} {} vs {}:", args.metric.name().to_uppercase(), args.paths[0].display(), args.paths[1].display());
        println!("{distance:.6}");
    }
    Ok(())
}

fn fd_net_train(args: FdNetTrainArgs) -> Result<()> {
    let defaults = emulsion_train::fd_net::FdNetTraining::default();
    let options = emulsion_train::fd_net::FdNetTraining {
        data: args.data.unwrap_or(defaults.data),
        epochs: args.epochs.unwrap_or(defaults.epochs),
        batch: args.batch.unwrap_or(defaults.batch),
        lr: args.lr.unwrap_or(defaults.lr),
        seed: args.seed.unwrap_or(defaults.seed),
        holdout: args.holdout.unwrap_or(defaults.holdout),
        limit: args.limit,
        channels: defaults.channels,
    };
    let backend = device::resolve(args.device)?;
    eprintln!("device: {}", backend.describe());
    let record = on_backend!(backend, B => {
        let mut progress = |epoch, epochs, loss: f64| tracing::info!("epoch {epoch}/{epochs}: mean loss {loss:.4}");
        let (net, record) = emulsion_train::fd_net::train::<burn::backend::Autodiff<B>>(&options, &Default::default(), &mut progress)?;
        emulsion_train::fd_net::save(&net, &record, &args.out)?;
        record
    });
    eprintln!(
        "wrote {} and {}: trained on {}; test accuracy {:.4} on {}; floor (fd_fmnist, {} training vs {} test images) {:.4}; {:.0} s",
        args.out.display(),
        args.out.with_extension("json").display(),
        record.train_images,
        record.test_accuracy,
        record.test_images,
        record.floor_images,
        record.floor_images,
        record.floor,
        record.seconds.unwrap_or(f64::NAN)
    );
    Ok(())
}

fn sweep(args: SweepArgs) -> Result<()> {
    use emulsion_report::sweep::{run_result, run_status, write_summary, RunStatus, Sweep};
    let sweep = Sweep::load(&args.file)?;
    let runs = sweep.configs(&args.file)?;
    let statuses: Vec<RunStatus> = runs.iter().map(|(_, config)| run_status(config)).collect();
    let count = |f: fn(&RunStatus) -> bool| statuses.iter().filter(|s| f(s)).count();
    eprintln!(
        "sweep {}: {} combinations x {} seeds = {} runs ({} done, {} partial, {} new) in {}",
        sweep.name,
        sweep.combinations.len(),
        sweep.seeds.len(),
        runs.len(),
        count(|s| *s == RunStatus::Done),
        count(|s| matches!(s, RunStatus::Partial(_))),
        count(|s| *s == RunStatus::New),
        sweep.root.display()
    );
    if args.dry_run {
        for ((run, _), status) in runs.iter().zip(&statuses) {
            println!("{:<50} seed {:<4} {status:?}", run.combination, run.seed);
        }
        return Ok(());
    }
    let mut failures = Vec::new();
    if !args.summary_only {
        emulsion_report::sweep::check_networks(&args.file, &runs)?;
        std::fs::create_dir_all(&sweep.root).with_context(|| format!("creating {}", sweep.root.display()))?;
        record_sweep_files(&sweep, &args.file)?;
        let todo: Vec<_> = runs.iter().zip(&statuses).filter(|(_, s)| **s != RunStatus::Done).map(|(r, _)| r.0.clone()).collect();
        failures = sweep_runner::run_all(&sweep.base, todo, &args.devices, args.jobs_per_device as usize)?;
    }
    let results: Vec<_> = runs.iter().map(|(run, config)| run_result(run, config)).collect();
    let summary = write_summary(&sweep.root, &sweep.name, &sweep.target, &results)?;
    print!("{summary}");
    eprintln!("wrote {}/summary.md, summary.csv and fid.png", sweep.root.display());
    anyhow::ensure!(failures.is_empty(), "{} run(s) failed: {}", failures.len(), failures.join("; "));
    Ok(())
}

/// Keeps copies of the sweep file and its base config in the sweep folder, and warns when they
/// changed since an earlier start: finished runs keep what they were trained with.
fn record_sweep_files(sweep: &emulsion_report::sweep::Sweep, file: &std::path::Path) -> Result<()> {
    for (source, copy) in [(file, "sweep.toml"), (sweep.base.as_path(), "base.toml")] {
        let text = std::fs::read_to_string(source).with_context(|| format!("reading {}", source.display()))?;
        let copy = sweep.root.join(copy);
        match std::fs::read_to_string(&copy) {
            Ok(old) if old == text => continue,
            Ok(_) => {
                let previous = copy.with_extension("toml.previous");
                std::fs::rename(&copy, &previous).with_context(|| format!("keeping {}", previous.display()))?;
                eprintln!(
                    "warning: {} changed since this sweep started (the earlier text is in {}): finished runs are kept, unfinished ones continue with the new settings",
                    source.display(),
                    previous.display()
                );
            }
            Err(_) => {}
        }
        let tmp = copy.with_extension("toml.tmp");
        std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &copy)).with_context(|| format!("writing {}", copy.display()))?;
    }
    Ok(())
}

fn schedule(command: ScheduleCommand) -> Result<()> {
    use emulsion_report::schedule_report;
    match command {
        ScheduleCommand::Dump { name, t, settings } => {
            let ts = schedule_report::check_ts(t).map_err(anyhow::Error::msg)?;
            let schedule = schedule_report::resolve(&name, &settings)?;
            print!("{}", schedule_report::dump_csv(&schedule, &ts));
        }
        ScheduleCommand::Plot { out } => {
            let all = emulsion_schedule::Curve::NAMES
                .iter()
                .map(|name| Ok(schedule_report::resolve(name, &[])?))
                .collect::<Result<Vec<_>>>()?;
            schedule_report::plot(&all, &out).map_err(anyhow::Error::msg)?;
            eprintln!("wrote {}", out.display());
        }
    }
    Ok(())
}

fn bench_train(args: BenchTrainArgs, started: Instant) -> Result<()> {
    let mut config = Config::load(&args.config, &args.overrides)?;
    if let Some(device) = args.device {
        config.run.device = device;
    }
    let options = emulsion_report::bench::TrainBenchOptions { steps: args.steps, warmup: args.warmup, window: args.window };
    options.validate().map_err(|e| anyhow::anyhow!("--steps {}: {e}", args.steps))?;
    let backend = device::resolve(config.run.device)?;
    eprintln!("device: {}", backend.describe());
    let mut report = on_backend!(backend, B => {
        emulsion_report::bench::bench_train::<burn::backend::Autodiff<B>>(&config, &Default::default(), &options, started, &|| device::memory_mib(backend))
    })
    .with_context(|| format!("benchmarking {}", args.config.display()))?;
    report.config = args.config.display().to_string();
    report.device = backend.describe().to_string();
    print_report(&report, args.json)
}

fn bench_fid(args: BenchFidArgs, started: Instant) -> Result<()> {
    let backend = device::resolve(args.device)?;
    eprintln!("device: {}", backend.describe());
    let mut report = on_backend!(backend, B => {
        emulsion_report::bench::bench_fid::<B>(&args.weights, args.n, args.batch, args.size, &Default::default(), started, &|| device::memory_mib(backend))
    })?;
    report.device = backend.describe().to_string();
    print_report(&report, args.json)
}

/// A benchmark's figures on stdout: one JSON object, or its table.
fn print_report<R: serde::Serialize + std::fmt::Display>(report: &R, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}

/// Times scipy's `linear_sum_assignment` on the `.npy` cost matrices `files` through `script`
/// (`scripts/scipy_lsa.py`, which prints `seconds total` per file); a missing script, Python or
/// scipy is the reason the table gives, not an error.
fn run_scipy(script: &Path, files: &[PathBuf], repeats: usize) -> Result<Vec<emulsion_assign::bench::ReferenceTiming>, String> {
    if !script.is_file() {
        return Err(format!("{} not found (--scipy-script)", script.display()));
    }
    let output = std::process::Command::new("python3")
        .arg(script)
        .arg("--repeats")
        .arg(repeats.to_string())
        .args(files)
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    if !output.status.success() {
        let err = String::from_utf8_lossy(&output.stderr);
        return Err(format!("{} (pip install numpy scipy)", err.lines().last().unwrap_or("python3 failed")));
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let mut it = line.split_whitespace().map(str::parse::<f64>);
            match (it.next(), it.next()) {
                (Some(Ok(seconds)), Some(Ok(total))) => Ok(emulsion_assign::bench::ReferenceTiming { ms: seconds * 1e3, total }),
                _ => Err(format!("unexpected output from {}: {line}", script.display())),
            }
        })
        .collect()
}

fn bench_assign(args: BenchAssignArgs) -> Result<()> {
    use emulsion_assign::{bench, npy};
    anyhow::ensure!(args.repeats > 0, "--repeats must be at least 1");
    anyhow::ensure!(args.epsilon > 0.0 && args.epsilon.is_finite(), "--epsilon must be positive");
    if let Some(path) = &args.costs {
        let costs = npy::read_costs(path)?;
        let backend = device::resolve(args.device)?;
        eprintln!("device: {}", backend.describe());
        let table = on_backend!(backend, B => bench::bench_costs::<B>(&costs, args.repeats, args.epsilon, &Default::default()));
        print!("{table}");
        return Ok(());
    }
    anyhow::ensure!(args.dim > 0, "--dim must be at least 1");
    anyhow::ensure!(args.k > 0, "--k must be at least 1");
    anyhow::ensure!(args.batch.iter().all(|&b| b > 0), "--batch: batch sizes must be at least 1");
    let batches = args.batch;
    let options = bench::BenchOptions { batches, dim: args.dim, repeats: args.repeats, k: args.k, epsilon: args.epsilon, seed: args.seed };
    let script = args.scipy_script;
    let scipy = move |files: &[PathBuf], repeats: usize| run_scipy(&script, files, repeats);
    let reference = (!args.no_scipy).then_some(&scipy as bench::Reference);
    let backend = device::resolve(args.device)?;
    eprintln!("device: {}", backend.describe());
    let table = on_backend!(backend, B => bench::bench_assign::<B>(&options, reference, &Default::default()));
    print!("{table}");
    Ok(())
}
