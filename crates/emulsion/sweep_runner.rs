//! Running a sweep's training runs as child processes of this binary: one at a time, or one
//! per device slot side by side (a device listed twice, or `--jobs-per-device`, holds several:
//! a 28×28 network leaves most of a large GPU idle). Each run resumes from its newest checkpoint, so a sweep stopped
//! half-way continues where each run stopped.

use std::collections::VecDeque;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::ValueEnum;
use emulsion_train::config::DeviceChoice;
use emulsion_report::sweep::SweepRun;

/// A run that fails sooner than this did not start: its device slot takes no more runs.
const START_FAILURE: Duration = Duration::from_secs(30);

/// One device of `--devices`: a device of `--device`, or `cuda:N` for GPU N.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceSlot {
    pub choice: DeviceChoice,
    pub gpu: Option<u32>,
}

impl std::str::FromStr for DeviceSlot {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (name, gpu) = match text.split_once(':') {
            Some((name, gpu)) => (name, Some(gpu)),
            None => (text, None),
        };
        let choice = DeviceChoice::from_str(name, false).map_err(|_| {
            let names: Vec<String> = DeviceChoice::value_variants().iter().filter_map(|d| d.to_possible_value()).map(|v| v.get_name().to_string()).collect();
            format!("`{text}` is not a device: {}, or cuda:N", names.join(", "))
        })?;
        let gpu = match (choice, gpu.map(str::parse::<u32>)) {
            (_, None) => None,
            (DeviceChoice::Cuda, Some(Ok(n))) => Some(n),
            _ => return Err(format!("`{text}`: only cuda takes a GPU index, as cuda:N")),
        };
        Ok(Self { choice, gpu })
    }
}

impl std::fmt::Display for DeviceSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.gpu {
            Some(n) => write!(f, "{}:{n}", self.choice),
            None => write!(f, "{}", self.choice),
        }
    }
}

/// Runs `runs`, `jobs_per_device` at once on each of `devices` (or on each run's own
/// `run.device` when none are given); returns a line for each failed run.
pub fn run_all(base: &Path, runs: Vec<SweepRun>, devices: &[DeviceSlot], jobs_per_device: usize) -> Result<Vec<String>> {
    let exe = std::env::current_exe().context("locating the emulsion binary")?;
    let total = runs.len();
    let queue = Mutex::new(runs.into_iter().enumerate().collect::<VecDeque<_>>());
    let failures = Mutex::new(Vec::new());
    let finished = std::sync::atomic::AtomicU64::new(0);
    emulsion_sample::progress::report("sweep", 0, total as u64);
    let devices: Vec<Option<DeviceSlot>> = if devices.is_empty() { vec![None] } else { devices.iter().copied().map(Some).collect() };
    let slots: Vec<Option<DeviceSlot>> = devices.iter().flat_map(|&d| std::iter::repeat_n(d, jobs_per_device.max(1))).collect();
    let side_by_side = slots.len() > 1;
    std::thread::scope(|scope| {
        for device in slots {
            let (queue, failures, exe, finished) = (&queue, &failures, &exe, &finished);
            scope.spawn(move || loop {
                let Some((index, run)) = queue.lock().expect("not poisoned").pop_front() else { break };
                let on = device.map(|d| format!(" on {d}")).unwrap_or_default();
                crate::progress::eprintln(&format!("[{}/{total}] {} seed {}{on}", index + 1, run.combination, run.seed));
                let started = Instant::now();
                let result = train_one(exe, base, &run, device, side_by_side);
                let done = finished.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                emulsion_sample::progress::report("sweep", done, total as u64);
                if let Err(e) = result {
                    let why = crate::describe(&e);
                    crate::progress::eprintln(&format!("[{}/{total}] {} seed {} failed: {why}", index + 1, run.combination, run.seed));
                    failures.lock().expect("not poisoned").push(format!("{} seed {}: {why}", run.combination, run.seed));
                    if side_by_side && started.elapsed() < START_FAILURE {
                        crate::progress::eprintln(&format!("{on}: a run failed to start there; it takes no more runs"));
                        break;
                    }
                }
            });
        }
    });
    Ok(failures.into_inner().expect("not poisoned"))
}

/// `emulsion train BASE --set … --resume [--device D]`; output goes to `<run>/train.log` when
/// runs share the terminal.
fn train_one(exe: &Path, base: &Path, run: &SweepRun, device: Option<DeviceSlot>, to_log: bool) -> Result<()> {
    let mut command = Command::new(exe);
    command.arg("train").arg(base).arg("--resume");
    for o in &run.overrides {
        command.arg("--set").arg(o);
    }
    if let Some(slot) = device {
        command.arg("--device").arg(slot.choice.to_string());
        if let Some(gpu) = slot.gpu {
            command.env("CUDA_VISIBLE_DEVICES", gpu.to_string());
        }
    }
    if to_log {
        std::fs::create_dir_all(&run.run_dir).with_context(|| format!("creating {}", run.run_dir.display()))?;
        let log = run.run_dir.join("train.log");
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).with_context(|| format!("opening {}", log.display()))?;
        command.stdout(Stdio::from(file.try_clone()?)).stderr(Stdio::from(file));
    }
    // On a terminal, the run's lines are printed above the sweep's bar (the run itself then
    // draws no bar of its own).
    let relay = !to_log && std::io::IsTerminal::is_terminal(&std::io::stderr());
    if relay {
        command.stderr(Stdio::piped());
    }
    let mut child = command.spawn().context("starting emulsion train")?;
    if let Some(stderr) = child.stderr.take() {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(std::result::Result::ok) {
            crate::progress::eprintln(&line);
        }
    }
    let status = child.wait().context("waiting for emulsion train")?;
    anyhow::ensure!(status.success(), "emulsion train exited with {status}");
    Ok(())
}
