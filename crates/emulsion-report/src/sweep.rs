//! Sweeps: one base config, a grid of overrides and a list of seeds. Every combination of grid
//! values runs once per seed in its own run directory,
//! `<out_dir>/<sweep>/<combination>/seed-<s>`, so an interrupted sweep resumes run by run, and
//! the runs' journals are summarised in `summary.md`, `summary.csv` and `fid.png`.
//!
//! ```toml
//! base = "../fashion_edm.toml"          # relative to the sweep file
//! seeds = [0, 1, 2]
//! target_fid = 20.0                     # for the "steps to target" column
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
    /// Overrides of every run, `"section.key" = value`.
    #[serde(default)]
    pub set: toml::Table,
    /// Keys and the values each takes, `"section.key" = [a, b]`.
    #[serde(default)]
    pub grid: toml::Table,
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
    pub target_fid: Option<f64>,
    /// `key=value` overrides of every run.
    pub fixed: Vec<String>,
    /// Each combination: its name and its `key=value` overrides.
    pub combinations: Vec<(String, Vec<String>)>,
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
        let combinations: Vec<(String, Vec<String>)> = combinations
            .into_iter()
            .map(|(names, sets)| (if names.is_empty() { "base".to_string() } else { names.join("_") }, sets))
            .collect();
        if combinations.iter().map(|c| &c.0).collect::<BTreeSet<_>>().len() != combinations.len() {
            return Err(invalid("two grid combinations get the same directory name; make the values distinct".into()));
        }
        Ok(Self {
            base: path.parent().unwrap_or(Path::new("")).join(&file.base),
            root: file.out_dir.join(&name),
            name,
            seeds: file.seeds,
            target_fid: file.target_fid,
            fixed: fixed.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            combinations,
        })
    }

    /// Every run: combinations in grid order, seeds within each.
    pub fn runs(&self) -> Vec<SweepRun> {
        let mut runs = Vec::new();
        for (combination, sets) in &self.combinations {
            for &seed in &self.seeds {
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
                Ok(config) if config.eval.fid_every > 0 && !config.eval.inception.is_file() => Err(SweepError::Invalid {
                    path: path.to_path_buf(),
                    message: format!("the runs evaluate FID but the Inception weights {} are missing: run scripts/fetch_inception.sh", config.eval.inception.display()),
                }),
                Ok(config) => Ok((run, config)),
                Err(source) => Err(SweepError::Run { path: path.to_path_buf(), combination: run.combination.clone(), seed: run.seed, source }),
            })
            .collect()
    }
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
            let has_final_fid = || journal::fid_lines(&run.metrics()).unwrap_or_default().iter().any(|l| l.step == step);
            if config.eval.fid_every == 0 || has_final_fid() { RunStatus::Done } else { RunStatus::Partial(step) }
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
    /// `(step, FID)` of every evaluation.
    pub fid: Vec<(u64, f64)>,
    /// First evaluation step at or below the target FID.
    pub steps_to_target: Option<u64>,
}

/// Reads the journal of `run`, whose resolved config is `config`.
pub fn run_result(run: &SweepRun, config: &Config, target_fid: Option<f64>) -> RunResult {
    let (mut lines, mut fid) = (Vec::new(), Vec::new());
    for line in journal::read(&RunDir::new(&run.run_dir).metrics()).unwrap_or_default() {
        match line {
            journal::JournalLine::Train(train) => lines.push(train),
            journal::JournalLine::Fid(f) => fid.push((f.step, f.fid)),
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
        steps_to_target: target_fid.and_then(|t| fid.iter().find(|(_, f)| *f <= t).map(|(s, _)| *s)),
        fid,
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

fn cell(value: Option<(f64, f64)>, digits: usize) -> String {
    match value {
        Some((mean, sd)) if sd > 0.0 => format!("{mean:.digits$} ± {sd:.digits$}"),
        Some((mean, _)) => format!("{mean:.digits$}"),
        None => "–".into(),
    }
}

/// Writes `summary.md`, `summary.csv` and `fid.png` into `root`; returns the Markdown.
pub fn write_summary(root: &Path, sweep_name: &str, target_fid: Option<f64>, results: &[RunResult]) -> std::io::Result<String> {
    std::fs::create_dir_all(root)?;
    let steps: BTreeSet<u64> = results.iter().flat_map(|r| r.fid.iter().map(|(s, _)| *s)).collect();
    let fid_at = |r: &RunResult, step: u64| r.fid.iter().find(|(s, _)| *s == step).map(|(_, f)| *f);

    let mut csv = String::from("combination,seed,finished,last_step,final_loss,images_per_s,steps_to_target");
    for step in &steps {
        write!(csv, ",fid@{step}").expect("string");
    }
    csv.push('\n');
    let opt = |v: Option<f64>| v.map(|v| format!("{v}")).unwrap_or_default();
    for r in results {
        write!(csv, "{},{},{},{},{},{},{}", r.combination, r.seed, r.finished, r.last_step, opt(r.final_loss), opt(r.images_per_s), r.steps_to_target.map(|s| s.to_string()).unwrap_or_default()).expect("string");
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
    let target = target_fid.map(|t| format!("steps to FID ≤ {t}")).unwrap_or_else(|| "steps to target (no target_fid)".into());
    let mut md = format!("# Sweep `{sweep_name}`\n\nMean ± standard deviation over the finished seeds; FID columns are the evaluations' steps.\n\n");
    write!(md, "| combination | seeds finished | final loss | images/s | {target} |").expect("string");
    for step in &steps {
        write!(md, " FID@{step} |").expect("string");
    }
    md.push_str("\n|---|---|---|---|---|");
    md.push_str(&"---|".repeat(steps.len()));
    md.push('\n');
    let mut curves = Vec::new();
    for name in &combinations {
        let all = results.iter().filter(|r| r.combination == *name).count();
        let runs: Vec<&RunResult> = results.iter().filter(|r| r.combination == *name && r.finished).collect();
        let collect = |f: &dyn Fn(&RunResult) -> Option<f64>| runs.iter().filter_map(|r| f(r)).collect::<Vec<f64>>();
        let reached = collect(&|r| r.steps_to_target.map(|s| s as f64));
        let reached_cell = if target_fid.is_none() { "–".to_string() } else { format!("{} ({}/{})", cell(mean_sd(&reached), 0), reached.len(), runs.len()) };
        write!(md, "| {name} | {}/{all} | {} | {} | {reached_cell} |", runs.len(), cell(mean_sd(&collect(&|r| r.final_loss)), 4), cell(mean_sd(&collect(&|r| r.images_per_s)), 1)).expect("string");
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
        plot_curves(&curves, &format!("FID, sweep {sweep_name} (mean over seeds)"), "FID", false, &root.join("fid.png")).map_err(std::io::Error::other)?;
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
        assert_eq!(runs[1].seed, 4);
        assert_eq!(runs[1].run_dir, PathBuf::from("out/grid/method-none_schedule-cosine/seed-4"));
        // Every run resolves to a config with its own values.
        let configs = sweep.configs(&path).unwrap();
        let (run, config) = &configs[7];
        assert_eq!((run.combination.as_str(), run.seed), ("method-lsa_schedule-laplace", 4));
        assert_eq!(config.run.seed, 4);
        assert_eq!(config.run_dir(), run.run_dir);
        assert_eq!(config.train.lr, 1e-3);
        assert_eq!(config.diffusion.curve().name(), "laplace");
        assert_eq!(format!("{:?}", config.assignment.method).to_lowercase(), "lsa");
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
            steps_to_target: fids.iter().find(|(_, f)| *f <= 30.0).map(|(s, _)| *s),
        };
        let results = [
            result("a", 0, &[(100, 50.0), (200, 28.0)], 0.1),
            result("a", 1, &[(100, 40.0), (200, 32.0)], 0.3),
            result("b", 0, &[(100, 25.0), (200, 20.0)], 0.2),
            // Unfinished: listed in the CSV, left out of the averages.
            RunResult { finished: false, ..result("b", 1, &[(100, 90.0)], 9.0) },
        ];
        let md = write_summary(&dir, "s", Some(30.0), &results).unwrap();
        // a: FID@100 = 45 ± 7.07, loss 0.2 ± 0.1414; one of two seeds reached 30 at step 200.
        assert!(md.contains("| a | 2/2 | 0.2000 ± 0.1414 | 100.0 | 200 (1/2) | 45.00 ± 7.07 | 30.00 ± 2.83 |"), "{md}");
        assert!(md.contains("| b | 1/2 | 0.2000 | 100.0 | 100 (1/1) | 25.00 | 20.00 |"), "{md}");
        let csv = std::fs::read_to_string(dir.join("summary.csv")).unwrap();
        assert_eq!(csv.lines().next().unwrap(), "combination,seed,finished,last_step,final_loss,images_per_s,steps_to_target,fid@100,fid@200");
        assert_eq!(csv.lines().nth(2).unwrap(), "a,1,true,200,0.3,100,,40,32");
        assert_eq!(csv.lines().nth(4).unwrap(), "b,1,false,200,9,100,,90,");
        assert_eq!(image::open(dir.join("fid.png")).unwrap().width(), 800);
    }
}
