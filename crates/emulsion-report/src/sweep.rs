//! Sweeps: one base config, a grid of overrides and a list of seeds. Every combination of grid
//! values runs once per seed in its own run directory,
//! `<out_dir>/<sweep>/<combination>/seed-<s>`, so an interrupted sweep resumes run by run, and
//! the runs' journals are summarised in `summary.md`, `summary.csv` and `fid.png`: per
//! combination, the steps each seed took to reach a target FID (or metric), their mean ± sd and
//! a 95% bootstrap interval over seeds.
//!
//! ```toml
//! base = "../fashion_edm.toml"          # relative to the sweep file
//! seeds = [0, 1, 2]
//! target_fid = 20.0                     # for the "steps to target" column, or:
//! # baseline = "method-none"            # the target is this combination's final value
//! # target_factor = 1.1                 #   (mean over seeds) times this
//! [set]                                 # every run
//! "train.steps" = 20000
//! [grid]                                # every combination
//! "assignment.method" = ["none", "lsa", "knn"]
//! "diffusion.schedule" = ["cosine", "laplace"]
//! ```

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use emulsion_train::checkpoint;
use emulsion_train::config::{Config, ConfigError};
use emulsion_train::journal;
use emulsion_train::monitor::plot_curves;
use emulsion_train::run::RunDir;

/// A sweep file, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepFile {
    /// The base config, relative to the sweep file.
    pub base: PathBuf,
    /// The sweep's name (default: the sweep file's stem).
    #[serde(default)]
    pub name: Option<String>,
    /// Sweeps live in `<out_dir>/<name>`, relative to the working directory.
    #[serde(default = "default_out_dir")]
    pub out_dir: PathBuf,
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// FID a run must reach to count in "steps to target".
    #[serde(default)]
    pub target_fid: Option<f64>,
    /// The combination whose final FID (mean over its finished seeds), times `target_factor`,
    /// is the target instead.
    #[serde(default)]
    pub baseline: Option<String>,
    /// Default 1.1 with `baseline`.
    #[serde(default)]
    pub target_factor: Option<f64>,
    /// Overrides of every run, `"section.key" = value`.
    #[serde(default)]
    pub set: toml::Table,
    /// Keys and the values each takes, `"section.key" = [a, b]`.
    #[serde(default)]
    pub grid: toml::Table,
    /// Named sets of overrides, `[arms.lsa] "assignment.method" = "lsa"`: each arm is a
    /// combination of its own (crossed with the grid's, when there is one), for studies that
    /// compare methods one by one rather than every combination.
    #[serde(default)]
    pub arms: toml::Table,
}

fn default_out_dir() -> PathBuf {
    "runs/sweeps".into()
}

fn default_seeds() -> Vec<u64> {
    vec![0]
}

/// A sweep with its file resolved and its grid expanded.
#[derive(Debug, Clone)]
pub struct Sweep {
    pub name: String,
    pub base: PathBuf,
    pub root: PathBuf,
    pub seeds: Vec<u64>,
    pub target: Target,
    /// `key=value` overrides of every run.
    pub fixed: Vec<String>,
    /// Each combination: its name and its `key=value` overrides.
    pub combinations: Vec<(String, Vec<String>)>,
}

/// The FID (or metric value) "steps to target" counts to.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    None,
    Fixed(f64),
    /// `factor` × the final value of `combination`, mean over its finished seeds.
    Baseline { combination: String, factor: f64 },
}

impl Target {
    /// The target's value given the runs' results; `None` while the baseline has no finished run.
    pub fn value(&self, results: &[RunResult]) -> Option<f64> {
        match self {
            Target::None => None,
            Target::Fixed(value) => Some(*value),
            Target::Baseline { combination, factor } => {
                let finals: Vec<f64> = results.iter().filter(|r| r.finished && &r.combination == combination).filter_map(|r| r.fid.last().map(|&(_, f)| f)).collect();
                mean_sd(&finals).map(|(mean, _)| mean * factor)
            }
        }
    }

    /// The column heading, for values of the metric named `metric`.
    fn describe(&self, value: Option<f64>, metric: &str) -> String {
        match (self, value) {
            (Target::None, _) => "steps to target (no target)".into(),
            (Target::Fixed(v), _) => format!("steps to {metric} ≤ {v}"),
            (Target::Baseline { combination, factor }, Some(v)) => format!("steps to {metric} ≤ {v:.4} ({factor} × final of {combination})"),
            (Target::Baseline { combination, factor }, None) => format!("steps to {factor} × final {metric} of {combination} (not finished)"),
        }
    }
}

/// One training run of a sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepRun {
    pub combination: String,
    pub seed: u64,
    /// Every override of the run, fixed ones first, then the grid's, then seed and directory.
    pub overrides: Vec<String>,
    pub run_dir: PathBuf,
}

/// Why a sweep file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("cannot read sweep file {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error("{}: combination `{combination}`, seed {seed}: {source}", path.display())]
    Run { path: PathBuf, combination: String, seed: u64, source: ConfigError },
}

/// `table`'s values under dotted keys, nested tables flattened (`[grid.diffusion]` works too).
fn flatten(table: &toml::Table, prefix: &str, out: &mut Vec<(String, toml::Value)>) {
    for (key, value) in table {
        let dotted = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        match value {
            toml::Value::Table(inner) => flatten(inner, &dotted, out),
            _ => out.push((dotted, value.clone())),
        }
    }
}

/// A value as a path-safe name part: strings as they are, others as TOML.
fn label(value: &toml::Value) -> String {
    let text = match value {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    text.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '-' }).collect()
}

impl Sweep {
    /// Reads and expands the sweep file at `path`.
    pub fn load(path: &Path) -> Result<Self, SweepError> {
        let text = std::fs::read_to_string(path).map_err(|source| SweepError::Read { path: path.to_path_buf(), source })?;
        let invalid = |message: String| SweepError::Invalid { path: path.to_path_buf(), message };
        let file: SweepFile = toml::from_str(&text).map_err(|e| invalid(e.message().to_string()))?;
        if file.seeds.is_empty() {
            return Err(invalid("`seeds` is empty: give at least one seed".into()));
        }
        if file.seeds.iter().collect::<BTreeSet<_>>().len() != file.seeds.len() {
            return Err(invalid(format!("`seeds` repeats a seed: {:?}", file.seeds)));
        }
        let name = match file.name {
            Some(name) => name,
            None => path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "sweep".into()),
        };
        if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
            return Err(invalid(format!("`name` must be a plain directory name, got {name:?}")));
        }
        let mut fixed = Vec::new();
        flatten(&file.set, "", &mut fixed);
        if let Some((key, _)) = fixed.iter().find(|(k, _)| ["run.seed", "run.name", "run.out_dir"].contains(&k.as_str())) {
            return Err(invalid(format!("`set.{key}`: the sweep sets run.seed, run.name and run.out_dir itself (use `seeds`, `name`, `out_dir`)")));
        }
        let mut axes = Vec::new();
        flatten(&file.grid, "", &mut axes);
        let mut combinations: Vec<(Vec<String>, Vec<String>)> = vec![(Vec::new(), Vec::new())];
        for (key, values) in &axes {
            let values = match values {
                toml::Value::Array(values) if !values.is_empty() => values,
                _ => return Err(invalid(format!("`grid.{key}` must be a non-empty list of values"))),
            };
            if ["run.seed", "run.name", "run.out_dir"].contains(&key.as_str()) {
                return Err(invalid(format!("`grid.{key}`: the sweep sets run.seed, run.name and run.out_dir itself (use `seeds`, `name`, `out_dir`)")));
            }
            // The last part of the key names the value: `diffusion.schedule` → `schedule-laplace`.
            let short = key.rsplit('.').next().expect("split yields one part");
            combinations = combinations
                .into_iter()
                .flat_map(|(names, sets)| {
                    values.iter().map(move |v| {
                        let mut names = names.clone();
                        let mut sets = sets.clone();
                        names.push(format!("{short}-{}", label(v)));
                        sets.push(format!("{key}={v}"));
                        (names, sets)
                    })
                })
                .collect();
        }
        let mut arms: Vec<(String, Vec<String>)> = Vec::new();
        for (arm, sets) in &file.arms {
            let toml::Value::Table(sets) = sets else { return Err(invalid(format!("`arms.{arm}` must be a table of overrides, `[arms.{arm}]`"))) };
            if label(&toml::Value::String(arm.clone())) != *arm || arm.chars().all(|c| c == '.') {
                return Err(invalid(format!("`arms.{arm}`: an arm's name is a directory name: letters, digits, `.` and `-`, not only dots")));
            }
            let mut overrides = Vec::new();
            flatten(sets, "", &mut overrides);
            if let Some((key, _)) = overrides.iter().find(|(k, _)| axes.iter().any(|(a, _)| a == k)) {
                return Err(invalid(format!("`arms.{arm}.{key}`: the grid sets `{key}` too; give it in one place")));
            }
            if let Some((key, _)) = overrides.iter().find(|(k, _)| ["run.seed", "run.name", "run.out_dir"].contains(&k.as_str())) {
                return Err(invalid(format!("`arms.{arm}.{key}`: the sweep sets run.seed, run.name and run.out_dir itself")));
            }
            arms.push((arm.clone(), overrides.iter().map(|(k, v)| format!("{k}={v}")).collect()));
        }
        let combinations: Vec<(String, Vec<String>)> = if arms.is_empty() {
            combinations.into_iter().map(|(names, sets)| (if names.is_empty() { "base".to_string() } else { names.join("_") }, sets)).collect()
        } else {
            arms.iter()
                .flat_map(|(arm, arm_sets)| {
                    combinations.iter().map(move |(names, sets)| {
                        let name = std::iter::once(arm.clone()).chain(names.iter().cloned()).collect::<Vec<_>>().join("_");
                        (name, arm_sets.iter().chain(sets).cloned().collect())
                    })
                })
                .collect()
        };
        if combinations.iter().map(|c| &c.0).collect::<BTreeSet<_>>().len() != combinations.len() {
            return Err(invalid("two grid combinations get the same directory name; make the values distinct".into()));
        }
        let target = match (file.target_fid, file.baseline, file.target_factor) {
            (Some(_), Some(_), _) => return Err(invalid("give `target_fid` or `baseline`, not both".into())),
            (_, None, Some(_)) => return Err(invalid("`target_factor` needs `baseline`".into())),
            (Some(value), None, None) if value.is_finite() => Target::Fixed(value),
            (Some(value), None, None) => return Err(invalid(format!("`target_fid` must be a number, got {value}"))),
            (None, Some(combination), factor) => {
                if !combinations.iter().any(|(name, _)| *name == combination) {
                    let names: Vec<&str> = combinations.iter().map(|c| c.0.as_str()).collect();
                    return Err(invalid(format!("`baseline` = {combination:?} is not a combination of the grid: {}", names.join(", "))));
                }
                let factor = factor.unwrap_or(1.1);
                if !(factor > 0.0 && factor.is_finite()) {
                    return Err(invalid(format!("`target_factor` must be positive, got {factor}")));
                }
                Target::Baseline { combination, factor }
            }
            (None, None, None) => Target::None,
        };
        Ok(Self {
            base: path.parent().unwrap_or(Path::new("")).join(&file.base),
            root: file.out_dir.join(&name),
            name,
            seeds: file.seeds,
            target,
            fixed: fixed.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            combinations,
        })
    }

    /// Every run: the first seed of every combination (in grid order), then the second seed of
    /// every one, and so on, so that a sweep stopped part-way (a GPU window ending) leaves the
    /// combinations with equal numbers of seeds rather than some done and others not started.
    pub fn runs(&self) -> Vec<SweepRun> {
        let mut runs = Vec::new();
        for &seed in &self.seeds {
            for (combination, sets) in &self.combinations {
                let dir = self.root.join(combination);
                let mut overrides = self.fixed.clone();
                overrides.extend(sets.iter().cloned());
                if !self.fixed.iter().chain(sets).any(|o| o.starts_with("eval.fid_cache=")) {
                    // One set of reference statistics for the whole sweep.
                    overrides.push(format!("eval.fid_cache={}", toml::Value::String(self.root.display().to_string())));
                }
                overrides.push(format!("run.seed={seed}"));
                overrides.push(format!("run.out_dir={}", toml::Value::String(dir.display().to_string())));
                overrides.push(format!("run.name=\"seed-{seed}\""));
                runs.push(SweepRun { combination: combination.clone(), seed, overrides, run_dir: dir.join(format!("seed-{seed}")) });
            }
        }
        runs
    }

    /// The resolved config of every run, so a bad value stops the sweep before anything runs.
    pub fn configs(&self, path: &Path) -> Result<Vec<(SweepRun, Config)>, SweepError> {
        self.runs()
            .into_iter()
            .map(|run| match Config::load(&self.base, &run.overrides) {
                Ok(config) => Ok((run, config)),
                Err(source) => Err(SweepError::Run { path: path.to_path_buf(), combination: run.combination.clone(), seed: run.seed, source }),
            })
            .collect()
    }
}

/// Refuses to start `runs` when a network their metric needs is missing, so a sweep does not
/// fail run after run.
pub fn check_networks(path: &Path, runs: &[(SweepRun, Config)]) -> Result<(), SweepError> {
    match runs.iter().map(|(_, c)| &c.eval).find(|e| e.fid_on() && !e.metric_weights().is_file()) {
        Some(eval) => Err(SweepError::Invalid {
            path: path.to_path_buf(),
            message: format!(
                "the runs evaluate {} but its network {} is missing: {}",
                eval.metric,
                eval.metric_weights().display(),
                match eval.metric {
                    emulsion_fid::Metric::Fid => "run scripts/fetch_inception.sh",
                    emulsion_fid::Metric::FdFmnist => "train it with `emulsion fd-net train`",
                }
            ),
        }),
        None => Ok(()),
    }
}

impl Sweep {
}

/// How far a run got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    New,
    /// Stopped at the step of its newest checkpoint.
    Partial(u64),
    Done,
}

/// The status of the run `config` describes, from its checkpoints; a run at its last step
/// without the FID of that step (when it evaluates FID) is not done yet.
pub fn run_status(config: &Config) -> RunStatus {
    let run = RunDir::new(config.run_dir());
    let newest = checkpoint::list(&run.checkpoints()).ok().and_then(|list| list.last().map(|(step, _)| *step));
    match newest {
        None => RunStatus::New,
        Some(step) if step >= config.train.steps as u64 => {
            let has_final_fid = || journal::fid_lines(&run.metrics()).unwrap_or_default().iter().any(|l| l.step == step && l.metric == config.eval.metric);
            if !config.eval.fid_on() || has_final_fid() { RunStatus::Done } else { RunStatus::Partial(step) }
        }
        Some(step) => RunStatus::Partial(step),
    }
}

/// What one run's journal says.
#[derive(Debug, Clone, PartialEq)]
pub struct RunResult {
    pub combination: String,
    pub seed: u64,
    /// Reached `train.steps` (and its last FID); only finished runs enter the averages.
    pub finished: bool,
    pub last_step: u64,
    pub final_loss: Option<f64>,
    /// Median of the journal's images/s.
    pub images_per_s: Option<f64>,
    /// `(step, FID)` of every evaluation, in the run's `eval.metric`.
    pub fid: Vec<(u64, f64)>,
    pub metric: emulsion_fid::Metric,
}

impl RunResult {
    /// First evaluation step at or below `target`.
    pub fn steps_to(&self, target: f64) -> Option<u64> {
        self.fid.iter().find(|(_, f)| *f <= target).map(|(s, _)| *s)
    }
}

/// Reads the journal of `run`, whose resolved config is `config`.
pub fn run_result(run: &SweepRun, config: &Config) -> RunResult {
    let (mut lines, mut fid) = (Vec::new(), Vec::new());
    for line in journal::read(&RunDir::new(&run.run_dir).metrics()).unwrap_or_default() {
        match line {
            journal::JournalLine::Train(train) => lines.push(train),
            // A run's own metric only: a resumed run whose `eval.metric` changed keeps both.
            journal::JournalLine::Fid(f) if f.metric == config.eval.metric => fid.push((f.step, f.fid)),
            journal::JournalLine::Fid(_) => {}
        }
    }
    fid.sort_by_key(|&(step, _)| step);
    let mut rates: Vec<f64> = lines.iter().map(|l| l.images_per_s).filter(|r| r.is_finite() && *r > 0.0).collect();
    rates.sort_by(f64::total_cmp);
    RunResult {
        combination: run.combination.clone(),
        seed: run.seed,
        finished: run_status(config) == RunStatus::Done,
        last_step: lines.iter().map(|l| l.step).max().unwrap_or(0),
        final_loss: lines.iter().max_by_key(|l| l.step).map(|l| l.loss),
        images_per_s: (!rates.is_empty()).then(|| rates[rates.len() / 2]),
        fid,
        metric: config.eval.metric,
    }
}

/// Mean and sample standard deviation.
fn mean_sd(values: &[f64]) -> Option<(f64, f64)> {
    let n = values.len() as f64;
    if values.is_empty() {
        return None;
    }
    let mean = values.iter().sum::<f64>() / n;
    let sd = if values.len() > 1 { (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt() } else { 0.0 };
    Some((mean, sd))
}

/// The 95% percentile bootstrap interval of the mean of `values`: `resamples` resamples with
/// replacement, drawn from a generator seeded by `seed` (so a summary is reproducible).
pub fn bootstrap_mean_interval(values: &[f64], resamples: usize, seed: u64) -> Option<(f64, f64)> {
    use rand::{Rng, SeedableRng};
    if values.is_empty() || resamples == 0 {
        return None;
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n = values.len();
    let mut means: Vec<f64> = (0..resamples).map(|_| (0..n).map(|_| values[rng.random_range(0..n)]).sum::<f64>() / n as f64).collect();
    means.sort_by(f64::total_cmp);
    let at = |q: f64| means[((q * (resamples - 1) as f64).round() as usize).min(resamples - 1)];
    Some((at(0.025), at(0.975)))
}

/// Resamples of the bootstrap intervals in summaries.
const BOOTSTRAP_RESAMPLES: usize = 10_000;

/// Seeds that must reach the target for a summary to give an interval.
const MIN_SEEDS_FOR_INTERVAL: usize = 3;

fn cell(value: Option<(f64, f64)>, digits: usize) -> String {
    match value {
        Some((mean, sd)) if sd > 0.0 => format!("{mean:.digits$} ± {sd:.digits$}"),
        Some((mean, _)) => format!("{mean:.digits$}"),
        None => "–".into(),
    }
}

/// Writes `summary.md`, `summary.csv` and `fid.png` into `root`; returns the Markdown.
pub fn write_summary(root: &Path, sweep_name: &str, target: &Target, results: &[RunResult]) -> std::io::Result<String> {
    let target_value = target.value(results);
    // Column names after the runs' metric: `FID@1000`, or `FD_FMNIST@1000`.
    let metric = results.first().map(|r| r.metric).unwrap_or_default();
    let (lower, upper) = (metric.name(), metric.name().to_uppercase());
    std::fs::create_dir_all(root)?;
    let steps: BTreeSet<u64> = results.iter().flat_map(|r| r.fid.iter().map(|(s, _)| *s)).collect();
    let fid_at = |r: &RunResult, step: u64| r.fid.iter().find(|(s, _)| *s == step).map(|(_, f)| *f);

    let mut csv = String::from("combination,seed,finished,last_step,final_loss,images_per_s,steps_to_target");
    for step in &steps {
        write!(csv, ",{lower}@{step}").expect("string");
    }
    csv.push('\n');
    let opt = |v: Option<f64>| v.map(|v| format!("{v}")).unwrap_or_default();
    for r in results {
        let steps_to_target = target_value.and_then(|t| r.steps_to(t)).map(|s| s.to_string()).unwrap_or_default();
        write!(csv, "{},{},{},{},{},{},{steps_to_target}", r.combination, r.seed, r.finished, r.last_step, opt(r.final_loss), opt(r.images_per_s)).expect("string");
        for &step in &steps {
            write!(csv, ",{}", opt(fid_at(r, step))).expect("string");
        }
        csv.push('\n');
    }

    let mut combinations: Vec<&str> = Vec::new();
    for r in results {
        if !combinations.contains(&r.combination.as_str()) {
            combinations.push(&r.combination);
        }
    }
    let heading = target.describe(target_value, &upper);
    let mut md = format!(
        "# Sweep `{sweep_name}`\n\nMean ± standard deviation over the finished seeds; {upper} columns are the evaluations' steps. \
         Steps to target: mean ± sd over the seeds that reached it (how many of the finished ones did), then the 95% bootstrap \
         interval of that mean ({BOOTSTRAP_RESAMPLES} resamples of the seeds that reached it; given from {MIN_SEEDS_FOR_INTERVAL} such seeds).\n\n"
    );
    write!(md, "| combination | seeds finished | final loss | images/s | {heading} | 95% interval |").expect("string");
    for step in &steps {
        write!(md, " {upper}@{step} |").expect("string");
    }
    md.push_str("\n|---|---|---|---|---|---|");
    md.push_str(&"---|".repeat(steps.len()));
    md.push('\n');
    let mut curves = Vec::new();
    for name in &combinations {
        let all = results.iter().filter(|r| r.combination == *name).count();
        let runs: Vec<&RunResult> = results.iter().filter(|r| r.combination == *name && r.finished).collect();
        let collect = |f: &dyn Fn(&RunResult) -> Option<f64>| runs.iter().filter_map(|r| f(r)).collect::<Vec<f64>>();
        let reached = collect(&|r| target_value.and_then(|t| r.steps_to(t)).map(|s| s as f64));
        let reached_cell = if target_value.is_none() { "–".to_string() } else { format!("{} ({}/{})", cell(mean_sd(&reached), 0), reached.len(), runs.len()) };
        // A percentile bootstrap of one or two values says nothing about the spread.
        let interval = match bootstrap_mean_interval(&reached, BOOTSTRAP_RESAMPLES, 0) {
            Some((low, high)) if reached.len() >= MIN_SEEDS_FOR_INTERVAL => format!("{low:.0} – {high:.0}"),
            _ => "–".into(),
        };
        write!(md, "| {name} | {}/{all} | {} | {} | {reached_cell} | {interval} |", runs.len(), cell(mean_sd(&collect(&|r| r.final_loss)), 4), cell(mean_sd(&collect(&|r| r.images_per_s)), 1)).expect("string");
        let mut curve = Vec::new();
        for &step in &steps {
            let at = mean_sd(&collect(&|r| fid_at(r, step)));
            write!(md, " {} |", cell(at, 2)).expect("string");
            if let Some((mean, _)) = at {
                curve.push((step as f64, mean));
            }
        }
        md.push('\n');
        curves.push((name.to_string(), curve));
    }
    std::fs::write(root.join("summary.md"), &md)?;
    std::fs::write(root.join("summary.csv"), csv)?;
    if !steps.is_empty() {
        plot_curves(&curves, &format!("{upper}, sweep {sweep_name} (mean over seeds)"), &upper, false, &root.join("fid.png")).map_err(std::io::Error::other)?;
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sweep_file(dir: &Path, text: &str) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("base.toml"), "[data]\ndataset = \"idx\"\n[train]\nsteps = 4\n").unwrap();
        let path = dir.join("grid.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn grids_expand_to_every_combination_and_seed() {
        let dir = std::env::temp_dir().join(format!("emulsion-sweep-expand-{}", std::process::id()));
        let path = sweep_file(
            &dir,
            "base = \"base.toml\"\nseeds = [3, 4]\nout_dir = \"out\"\n[set]\n\"train.lr\" = 1e-3\n[grid]\n\"assignment.method\" = [\"none\", \"lsa\", \"knn\"]\ndiffusion.schedule = [\"cosine\", \"laplace\"]\n",
        );
        let sweep = Sweep::load(&path).unwrap();
        assert_eq!(sweep.name, "grid");
        assert_eq!(sweep.base, dir.join("base.toml"));
        let names: Vec<&str> = sweep.combinations.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(names.len(), 6);
        assert_eq!(names[0], "method-none_schedule-cosine");
        assert_eq!(names[5], "method-knn_schedule-laplace");
        let runs = sweep.runs();
        assert_eq!(runs.len(), 12);
        // Seed-major: every combination's first seed before any second seed.
        assert_eq!((runs[1].combination.as_str(), runs[1].seed), ("method-none_schedule-laplace", 3));
        assert_eq!(runs[6].seed, 4);
        assert_eq!(runs[6].run_dir, PathBuf::from("out/grid/method-none_schedule-cosine/seed-4"));
        // Every run resolves to a config with its own values.
        let configs = sweep.configs(&path).unwrap();
        let (run, config) = &configs[9];
        assert_eq!((run.combination.as_str(), run.seed), ("method-lsa_schedule-laplace", 4));
        assert_eq!(config.run.seed, 4);
        assert_eq!(config.run_dir(), run.run_dir);
        assert_eq!(config.train.lr, 1e-3);
        assert_eq!(config.diffusion.curve().name(), "laplace");
        assert_eq!(format!("{:?}", config.assignment.method).to_lowercase(), "lsa");
    }

    #[test]
    fn arms_are_combinations_of_their_own_crossed_with_the_grid() {
        let dir = std::env::temp_dir().join(format!("emulsion-sweep-arms-{}", std::process::id()));
        let path = sweep_file(
            &dir,
            "base = \"base.toml\"\nbaseline = \"edm_lr-0.001\"\n[grid]\n\"train.lr\" = [1e-3, 2e-3]\n[arms.edm]\n[arms.lsa]\n\"assignment.method\" = \"lsa\"\n[arms.laplace.diffusion]\nschedule = \"laplace\"\n",
        );
        let sweep = Sweep::load(&path).unwrap();
        let names: Vec<&str> = sweep.combinations.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(names, ["edm_lr-0.001", "edm_lr-0.002", "laplace_lr-0.001", "laplace_lr-0.002", "lsa_lr-0.001", "lsa_lr-0.002"]);
        assert_eq!(sweep.combinations[3].1, ["diffusion.schedule=\"laplace\"", "train.lr=0.002"]);
        let configs = sweep.configs(&path).unwrap();
        assert_eq!(format!("{:?}", configs[4].1.assignment.method).to_lowercase(), "lsa");
        assert_eq!(configs[4].1.train.lr, 1e-3);
        assert_eq!(configs[2].1.diffusion.curve().name(), "laplace");
        assert_ne!(configs[0].1.diffusion.curve().name(), "laplace");
        let error = |text: &str| Sweep::load(&sweep_file(&dir, text)).unwrap_err().to_string();
        assert!(error("base = \"base.toml\"\n[arms]\nlsa = 1\n").contains("`arms.lsa` must be a table"));
        assert!(error("base = \"base.toml\"\n[arms.\"a b\"]\n").contains("directory name"));
        assert!(error("base = \"base.toml\"\n[arms.a]\n\"run.seed\" = 1\n").contains("arms.a.run.seed"));
        assert!(error("base = \"base.toml\"\n[arms.\"..\"]\n").contains("not only dots"));
        let e = error("base = \"base.toml\"\n[grid]\n\"train.lr\" = [1e-3]\n[arms.a]\n\"train.lr\" = 2e-3\n");
        assert!(e.contains("`arms.a.train.lr`: the grid sets `train.lr` too"), "{e}");
    }

    #[test]
    fn bad_sweeps_are_refused_with_the_reason() {
        let dir = std::env::temp_dir().join(format!("emulsion-sweep-bad-{}", std::process::id()));
        let error = |text: &str| Sweep::load(&sweep_file(&dir, text)).unwrap_err().to_string();
        assert!(error("base = \"base.toml\"\nseeds = []\n").contains("seeds"));
        assert!(error("base = \"base.toml\"\n[grid]\n\"train.lr\" = 1e-3\n").contains("grid.train.lr"));
        assert!(error("base = \"base.toml\"\nbogus = 1\n").contains("bogus"));
        let sweep = Sweep::load(&sweep_file(&dir, "base = \"base.toml\"\n[grid]\n\"diffusion.schedule\" = [\"cosine\", \"nonsense\"]\n")).unwrap();
        let e = sweep.configs(&dir.join("grid.toml")).unwrap_err().to_string();
        assert!(e.contains("schedule-nonsense") && e.contains("diffusion.schedule"), "{e}");
        let grid = "[grid]\n\"assignment.method\" = [\"none\", \"lsa\"]\n";
        let e = error(&format!("base = \"base.toml\"\nbaseline = \"method-knn\"\n{grid}"));
        assert!(e.contains("`baseline` = \"method-knn\" is not a combination") && e.contains("method-none, method-lsa"), "{e}");
        assert!(error(&format!("base = \"base.toml\"\nbaseline = \"method-none\"\ntarget_fid = 3.0\n{grid}")).contains("not both"));
        assert!(error(&format!("base = \"base.toml\"\ntarget_factor = 1.1\n{grid}")).contains("needs `baseline`"));
        assert!(error(&format!("base = \"base.toml\"\nbaseline = \"method-none\"\ntarget_factor = -1.0\n{grid}")).contains("must be positive"));
        let sweep = Sweep::load(&sweep_file(&dir, &format!("base = \"base.toml\"\nbaseline = \"method-none\"\n{grid}"))).unwrap();
        assert_eq!(sweep.target, Target::Baseline { combination: "method-none".into(), factor: 1.1 });
    }

    #[test]
    fn the_bootstrap_interval_holds_the_mean_and_narrows_as_seeds_are_added() {
        // Synthetic steps to target: a fixed spread, repeated as more seeds are added.
        let pattern = [800.0, 1000.0, 1200.0, 900.0, 1100.0];
        let width = |n: usize| {
            let values: Vec<f64> = pattern.iter().cycle().take(n).copied().collect();
            let mean = values.iter().sum::<f64>() / n as f64;
            let (low, high) = bootstrap_mean_interval(&values, 10_000, 0).unwrap();
            assert!(low <= mean && mean <= high, "{low} ≤ {mean} ≤ {high}");
            high - low
        };
        let widths: Vec<f64> = [5, 10, 20, 40].into_iter().map(width).collect();
        assert!(widths.windows(2).all(|w| w[1] < w[0]), "{widths:?}");
        // About 2 · 1.96 · σ/√n for a mean, σ the spread of the values (141.4 here): 87.7 at 40.
        assert!((widths[3] - 87.7).abs() < 10.0, "{widths:?}");
        assert_eq!(bootstrap_mean_interval(&[5.0], 100, 0), Some((5.0, 5.0)));
        assert_eq!(bootstrap_mean_interval(&[], 100, 0), None);
        // Reproducible: seeded.
        assert_eq!(bootstrap_mean_interval(&pattern, 1000, 3), bootstrap_mean_interval(&pattern, 1000, 3));
    }

    #[test]
    fn the_summary_aggregates_seeds_and_finds_the_target() {
        let dir = std::env::temp_dir().join(format!("emulsion-sweep-summary-{}", std::process::id()));
        let result = |combination: &str, seed, fids: &[(u64, f64)], loss| RunResult {
            combination: combination.into(),
            seed,
            finished: true,
            last_step: 200,
            final_loss: Some(loss),
            images_per_s: Some(100.0),
            fid: fids.to_vec(),
            metric: Default::default(),
        };
        let results = [
            result("a", 0, &[(100, 50.0), (200, 28.0)], 0.1),
            result("a", 1, &[(100, 40.0), (200, 32.0)], 0.3),
            result("b", 0, &[(100, 25.0), (200, 20.0)], 0.2),
            // Unfinished: listed in the CSV, left out of the averages.
            RunResult { finished: false, ..result("b", 1, &[(100, 90.0)], 9.0) },
        ];
        let md = write_summary(&dir, "s", &Target::Fixed(30.0), &results).unwrap();
        // a: FID@100 = 45 ± 7.07, loss 0.2 ± 0.1414; one of two seeds reached 30 at step 200.
        // Fewer than three seeds at the target: no interval.
        assert!(md.contains("| a | 2/2 | 0.2000 ± 0.1414 | 100.0 | 200 (1/2) | – | 45.00 ± 7.07 | 30.00 ± 2.83 |"), "{md}");
        assert!(md.contains("| b | 1/2 | 0.2000 | 100.0 | 100 (1/1) | – | 25.00 | 20.00 |"), "{md}");
        let csv = std::fs::read_to_string(dir.join("summary.csv")).unwrap();
        assert_eq!(csv.lines().next().unwrap(), "combination,seed,finished,last_step,final_loss,images_per_s,steps_to_target,fid@100,fid@200");
        assert_eq!(csv.lines().nth(2).unwrap(), "a,1,true,200,0.3,100,,40,32");
        assert_eq!(csv.lines().nth(4).unwrap(), "b,1,false,200,9,100,,90,");
        assert_eq!(image::open(dir.join("fid.png")).unwrap().width(), 800);

        // Relative to a baseline: 1.1 × a's final mean (30) = 33; a's seed 0 reaches it at 200,
        // seed 1 too (32); b at 100.
        let target = Target::Baseline { combination: "a".into(), factor: 1.1 };
        assert!((target.value(&results).unwrap() - 33.0).abs() < 1e-12);
        let md = write_summary(&dir, "s", &target, &results).unwrap();
        assert!(md.contains("steps to FID ≤ 33.0000 (1.1 × final of a)"), "{md}");
        assert!(md.contains("| a | 2/2 | 0.2000 ± 0.1414 | 100.0 | 200 (2/2) | – |"), "{md}");
        // Three seeds at it: 100, 200, 200. All three resampled as 100 has probability 1/27 >
        // 2.5%, all as 200 8/27: the interval is 100 – 200.
        let mut three = results.to_vec();
        three.extend([result("c", 0, &[(100, 20.0)], 0.1), result("c", 1, &[(100, 40.0), (200, 30.0)], 0.2), result("c", 2, &[(100, 40.0), (200, 32.0)], 0.3)]);
        let md = write_summary(&dir, "s", &target, &three).unwrap();
        assert!(md.contains("| c | 3/3 | 0.2000 ± 0.1000 | 100.0 | 167 ± 58 (3/3) | 100 – 200 |"), "{md}");
        // Another metric names the columns.
        let fd: Vec<RunResult> = results.iter().map(|r| RunResult { metric: emulsion_fid::Metric::FdFmnist, ..r.clone() }).collect();
        let md = write_summary(&dir, "s", &target, &fd).unwrap();
        assert!(md.contains("steps to FD_FMNIST ≤ 33.0000") && md.contains("FD_FMNIST@200"), "{md}");
        assert!(std::fs::read_to_string(dir.join("summary.csv")).unwrap().starts_with("combination,seed,finished,last_step,final_loss,images_per_s,steps_to_target,fd_fmnist@100,fd_fmnist@200"));
        let csv = std::fs::read_to_string(dir.join("summary.csv")).unwrap();
        assert_eq!(csv.lines().nth(2).unwrap(), "a,1,true,200,0.3,100,200,40,32");
        // Without a finished baseline run there is no target yet.
        let unfinished: Vec<RunResult> = results.iter().map(|r| RunResult { finished: false, ..r.clone() }).collect();
        assert_eq!(target.value(&unfinished), None);
    }
}
