//! The `emulsion` command as a user runs it: configs, errors, training, sampling, resuming.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The repository root (the binary package's manifest dir).
fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn emulsion(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_emulsion"))
        .args(args)
        .current_dir(repo())
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .expect("the emulsion binary runs")
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("emulsion-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Fails with the command's stderr unless it succeeded.
fn ok(output: Output) -> Output {
    assert!(output.status.success(), "command failed ({}):\n{}", output.status, stderr(&output));
    output
}

/// Asserts a clean failure: exit code 1 (not a panic's 101) and every `needle` in stderr.
fn fails_with(output: Output, needles: &[&str]) {
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "expected exit code 1, got {}:\n{err}", output.status);
    assert!(!err.contains("panicked"), "panicked:\n{err}");
    for needle in needles {
        assert!(err.contains(needle), "stderr lacks {needle:?}:\n{err}");
    }
}

/// Overrides that shrink the quick start to a seconds-long CPU run writing into `out`.
fn tiny(out: &Path, name: &str) -> Vec<String> {
    [
        format!("run.out_dir={}", out.display()),
        format!("run.name={name}"),
        "data.limit=64".into(),
        "model.channels=8".into(),
        "model.channel_mult=[1, 2]".into(),
        "model.num_blocks=1".into(),
        "model.attn_resolutions=[14]".into(),
        "train.batch_size=8".into(),
        "train.steps=4".into(),
        "train.checkpoint_every=2".into(),
        "train.sample_every=2".into(),
        "train.log_every=1".into(),
        "sample.n=4".into(),
        "sample.steps=3".into(),
    ]
    .into_iter()
    .collect()
}

fn with_sets<'a>(base: &[&'a str], sets: &'a [String]) -> Vec<&'a str> {
    let mut args = base.to_vec();
    for set in sets {
        args.push("--set");
        args.push(set);
    }
    args
}

#[test]
fn dry_run_prints_the_resolved_config_with_overrides() {
    let out = ok(emulsion(&["train", "configs/quickstart.toml", "--dry-run", "--set", "train.steps=5", "--device", "cpu"]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("steps = 5") && text.contains("device = \"cpu\""), "{text}");
    ok(emulsion(&["train", "configs/cifar.toml", "--dry-run"]));
}

#[test]
fn every_example_config_is_valid() {
    for entry in std::fs::read_dir(repo().join("configs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            ok(emulsion(&["train", path.to_str().unwrap(), "--dry-run"]));
        }
    }
    // Every sweep resolves every run's config (and finds the networks its metric needs).
    for entry in std::fs::read_dir(repo().join("configs/sweeps")).unwrap() {
        let path = entry.unwrap().path();
        let listed = ok(emulsion(&["sweep", path.to_str().unwrap(), "--dry-run"]));
        assert!(stderr(&listed).contains("runs ("), "{}", stderr(&listed));
    }
}

#[test]
fn malformed_configs_name_the_key_and_never_panic() {
    let dir = tempdir("bad-config");
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    let unknown = write("unknown.toml", "[data]\ndataset = \"idx\"\n[train]\nstepz = 3\n");
    fails_with(emulsion(&["train", &unknown]), &["unknown.toml:4", "`train.stepz`", "unknown field"]);
    let wrong_type = write("type.toml", "[data]\ndataset = \"idx\"\n[train]\nbatch_size = \"big\"\n");
    fails_with(emulsion(&["train", &wrong_type]), &["type.toml:4", "`train.batch_size`", "invalid type"]);
    let bad_enum = write("enum.toml", "[data]\ndataset = \"idx\"\n[diffusion]\nschedule = \"fancy\"\n");
    fails_with(emulsion(&["train", &bad_enum]), &["enum.toml:4", "`diffusion.schedule`", "`cosine`"]);
    let syntax = write("syntax.toml", "[data\n");
    fails_with(emulsion(&["train", &syntax]), &["syntax.toml"]);
    fails_with(emulsion(&["train", "configs/quickstart.toml", "--set", "model.dropout=2"]), &["`model.dropout`"]);
    fails_with(emulsion(&["train", "configs/quickstart.toml", "--set", "assignment.method=hungarian"]), &["`assignment.method`", "`lsa`", "`auction`", "`knn`"]);
    fails_with(emulsion(&["train", "configs/quickstart.toml", "--set", "assignment.epsilon=-1"]), &["`assignment.epsilon`", "≥ 0"]);
    fails_with(emulsion(&["train", "configs/quickstart.toml", "--set", "assignment.k=0"]), &["`assignment.k`", "at least 1"]);
    fails_with(
        emulsion(&["train", "configs/quickstart.toml", "--set", "diffusion.schedule=laplace", "--set", "diffusion.schedule.b=0"]),
        &["--set diffusion.schedule.b=0", "`diffusion.schedule.b`", "positive"],
    );
    fails_with(
        emulsion(&["train", "configs/quickstart.toml", "--set", "diffusion.schedule=linear", "--set", "diffusion.lambda_min=10"]),
        &["`diffusion.lambda_min`", "holds none of the `linear` schedule's log-SNRs"],
    );
    fails_with(emulsion(&["train", "configs/quickstart.toml", "--set", "train.steps=x"]), &["--set train.steps=x", "`train.steps`"]);
    usage_error(emulsion(&["train", "configs/quickstart.toml", "--device", "tpu"]), &["'tpu'", "--device", "cpu"]);
    fails_with(emulsion(&["train", &dir.join("absent.toml").to_string_lossy()]), &["absent.toml"]);
    // The images' size is known only once the IDX files are read: checked then, not panicked on.
    let out_dir = format!("run.out_dir={}", dir.display());
    fails_with(
        emulsion(&["train", "configs/quickstart.toml", "--device", "cpu", "--set", &out_dir, "--set", "model.attn_resolutions=[5]"]),
        &["`model`", "attention resolution 5", "28x28"],
    );
    let missing_data = write("nodata.toml", &format!("[data]\ndataset = \"cifar10\"\npath = \"{}\"\n", dir.join("none").display()));
    fails_with(emulsion(&["train", &missing_data, "--device", "cpu"]), &["data_batch_1.bin", "cifar-10-binary.tar.gz"]);
    let unlabeled = write(
        "folder.toml",
        &format!("[data]\ndataset = \"folder\"\npath = \"{}\"\nimage_size = 8\n", dir.display()),
    );
    fails_with(emulsion(&["train", &unlabeled, "--device", "cpu"]), &["no PNG or JPEG images"]);
}

#[test]
fn schedule_dump_prints_the_formulas_and_plot_draws_them() {
    let rows = |output: Output| -> Vec<Vec<f64>> {
        let text = String::from_utf8(output.stdout).unwrap();
        assert_eq!(text.lines().next(), Some("t,lambda,alpha,sigma"));
        text.lines().skip(1).map(|l| l.split(',').map(|v| v.parse().unwrap()).collect()).collect()
    };
    // Laplace(μ = 0.25, b = 1): λ(t) = μ - b sgn(1/2 - t) ln(1 - 2|t - 1/2|).
    let laplace = rows(ok(emulsion(&["schedule", "dump", "laplace", "--t", "0.1,0.5,0.9", "--set", "mu=0.25", "--set", "b=1"])));
    let expected = [0.25 - 0.2f64.ln(), 0.25, 0.25 + 0.2f64.ln()];
    for (row, lambda) in laplace.iter().zip(expected) {
        assert!((row[1] - lambda).abs() < 1e-15, "{row:?} vs λ = {lambda}");
        // VP: α² = sigmoid(λ).
        assert!((row[2] * row[2] - 1.0 / (1.0 + (-lambda).exp())).abs() < 1e-15);
        assert!((row[3] * row[3] - 1.0 / (1.0 + lambda.exp())).abs() < 1e-15);
    }
    // Cosine with a shift of 2: -2 ln tan(π t / 2) - 2 ln 2.
    let cosine = rows(ok(emulsion(&["schedule", "dump", "cosine", "--t", "0.3", "--set", "shift=2"])));
    let lambda = -2.0 * (std::f64::consts::FRAC_PI_2 * 0.3).tan().ln() - 2.0 * 2f64.ln();
    assert!((cosine[0][1] - lambda).abs() < 1e-14);
    usage_error(emulsion(&["schedule", "dump", "laplacian"]), &["'laplacian'", "possible values", "laplace"]);
    fails_with(emulsion(&["schedule", "dump", "cauchy", "--set", "gamma=0"]), &["`diffusion.schedule.gamma`", "positive"]);
    fails_with(emulsion(&["schedule", "dump", "cosine", "--t", "1.5"]), &["--t", "outside (0, 1)"]);

    let dir = tempdir("schedule-plot");
    let out = dir.join("schedules.png");
    ok(emulsion(&["schedule", "plot", "--out", out.to_str().unwrap()]));
    assert_eq!(image_dimensions(&out), (1400, 600));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bench_assign_prints_a_table_and_solves_given_costs_exactly() {
    let output = ok(emulsion(&["bench", "assign", "--batch", "8,13", "--dim", "10", "--repeats", "1", "--device", "cpu", "--no-scipy"]));
    let table = String::from_utf8(output.stdout).unwrap();
    assert!(table.contains("lapjv ms") && table.contains("dev auction ms") && table.contains("auction ε gap") && table.contains("knn d"), "{table}");
    let rows: Vec<&str> = table.lines().filter(|l| l.split_whitespace().next().is_some_and(|w| w == "8" || w == "13")).collect();
    assert_eq!(rows.len(), 2, "{table}");
    // The exact auction on fp16 costs reaches LAPJV's optimum on each.
    assert!(rows.iter().all(|r| r.ends_with("yes")), "{table}");

    // A held-out matrix whose optimum is known: 1 on a hidden permutation, larger elsewhere.
    let dir = tempdir("bench-costs");
    let n = 40;
    let hidden: Vec<usize> = (0..n).map(|i| (i * 17 + 5) % n).collect();
    let costs = (0..n * n).map(|k| if hidden[k / n] == k % n { 1.0 } else { 2.0 + ((k * 7) % 11) as f64 }).collect();
    let path = dir.join("costs.npy");
    emulsion_assign::npy::write_costs(&path, &emulsion_assign::CostMatrix::new(n, costs)).unwrap();
    let output = ok(emulsion(&["bench", "assign", "--costs", path.to_str().unwrap(), "--repeats", "1"]));
    let table = String::from_utf8(output.stdout).unwrap();
    // Each row: name (may hold spaces), total, ms.
    let total = |table: &str, name: &str| -> String {
        let row = table.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no `{name}` row in\n{table}"));
        let words: Vec<&str> = row.split_whitespace().collect();
        words[words.len() - 2].to_string()
    };
    assert_eq!(total(&table, "lapjv"), "40", "{table}");
    assert_eq!(total(&table, "auction (device, exact)"), "40", "{table}");
    // Integer costs and ε below 1/n: the ε auctions are exact too.
    let output = ok(emulsion(&["bench", "assign", "--costs", path.to_str().unwrap(), "--repeats", "1", "--epsilon", "0.02"]));
    let table = String::from_utf8(output.stdout).unwrap();
    for name in ["auction (cpu, ε)", "auction (device, ε)", "auction (device, exact)"] {
        assert_eq!(total(&table, name), "40", "{name}: {table}");
    }
    std::fs::write(&path, b"not numpy").unwrap();
    fails_with(emulsion(&["bench", "assign", "--costs", path.to_str().unwrap()]), &["costs.npy", "not a .npy file"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn backends_missing_from_the_build_are_a_clear_error() {
    if !cfg!(feature = "cuda") {
        fails_with(emulsion(&["train", "configs/quickstart.toml", "--device", "cuda"]), &["built without the `cuda` backend"]);
    }
}

#[test]
fn quickstart_data_trains_samples_and_fills_the_run_directory() {
    let out = tempdir("quickstart");
    let sets = tiny(&out, "qs");
    ok(emulsion(&with_sets(&["train", "configs/quickstart.toml", "--device", "cpu"], &sets)));
    let run = out.join("qs");
    for file in ["config.toml", "unet.json", "metrics.jsonl", "loss.png", "samples/step-00000002.png", "samples/step-00000004.png"] {
        assert!(run.join(file).is_file(), "{file} is missing");
    }
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.iter().map(|l| l["step"].as_u64().unwrap()).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    assert!(lines.iter().all(|l| l["kind"] == "train"), "every line says its kind: {lines:?}");
    for key in ["loss", "lr", "images_per_s", "wall_time_s"] {
        assert!(lines.iter().all(|l| l[key].as_f64().is_some_and(f64::is_finite)), "{key}");
    }
    assert!(run.join("checkpoints/step-00000004/model.mpk").is_file());

    // Training again into the same run is refused: it would replace finished checkpoints.
    fails_with(emulsion(&with_sets(&["train", "configs/quickstart.toml", "--device", "cpu"], &sets)), &["--resume", "--overwrite"]);
    // Resuming a finished run is a no-op that succeeds.
    ok(emulsion(&with_sets(&["train", "configs/quickstart.toml", "--device", "cpu", "--resume"], &sets)));

    let grid = out.join("grid.png");
    ok(emulsion(&["sample", run.to_str().unwrap(), "--n", "3", "--steps", "2", "--out", grid.to_str().unwrap(), "--device", "cpu"]));
    let img = image_dimensions(&grid);
    // 3 images of 28 px in a 2-column grid with 2 px borders: 2 * 30 + 2 wide, 2 rows.
    assert_eq!(img, (62, 62));
    for sampler in ["ddpm", "euler", "heun", "dpmpp_2m"] {
        std::fs::remove_file(&grid).unwrap();
        ok(emulsion(&["sample", run.to_str().unwrap(), "--n", "2", "--steps", "2", "--sampler", sampler, "--out", grid.to_str().unwrap(), "--device", "cpu"]));
        assert!(grid.is_file(), "{sampler}");
    }
    usage_error(emulsion(&["sample", run.to_str().unwrap(), "--sampler", "plms", "--device", "cpu"]), &["'plms'", "--sampler", "possible values", "heun", "dpmpp_2m"]);
    fails_with(emulsion(&["sample", out.to_str().unwrap(), "--device", "cpu"]), &["no complete checkpoint"]);

    // The weights for PyTorch, beside their description; and sampled like the run.
    let weights = out.join("qs.safetensors");
    ok(emulsion(&["export", run.to_str().unwrap(), "--out", weights.to_str().unwrap()]));
    let info: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("qs.json")).unwrap()).unwrap();
    assert_eq!((info["step"].as_u64(), info["weights"].as_str(), info["songunet"]["img_resolution"].as_u64()), (Some(4), Some("ema"), Some(28)));
    ok(emulsion(&["sample", weights.to_str().unwrap(), "--n", "2", "--steps", "2", "--out", grid.to_str().unwrap(), "--device", "cpu"]));
    fails_with(emulsion(&["export", out.to_str().unwrap(), "--out", weights.to_str().unwrap()]), &["no complete checkpoint"]);
}

#[test]
fn sigkill_at_any_moment_leaves_a_resumable_run() {
    let out = tempdir("sigkill");
    let mut sets = tiny(&out, "killed");
    sets.extend(["train.steps=30".to_string(), "train.checkpoint_every=3".into(), "train.sample_every=0".into()]);
    let args = with_sets(&["train", "configs/quickstart.toml", "--device", "cpu"], &sets);
    let checkpoints = out.join("killed/checkpoints");
    // Kill three times, at different moments after checkpoints start to appear.
    for (round, extra_ms) in [0u64, 150, 400].into_iter().enumerate() {
        let mut args = args.clone();
        if round > 0 {
            args.push("--resume");
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_emulsion"))
            .args(&args)
            .current_dir(repo())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let before = newest_step(&checkpoints);
        let deadline = Instant::now() + Duration::from_secs(120);
        while newest_step(&checkpoints) == before && Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(extra_ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Whatever the moment, the newest checkpoint is complete and loads.
        if newest_step(&checkpoints).is_some() {
            let grid = out.join(format!("after-kill-{round}.png"));
            ok(emulsion(&["sample", out.join("killed").to_str().unwrap(), "--n", "1", "--steps", "1", "--out", grid.to_str().unwrap(), "--device", "cpu"]));
        }
    }
    let mut args = args.clone();
    args.push("--resume");
    ok(emulsion(&args));
    assert_eq!(newest_step(&checkpoints), Some(30));
    let last = std::fs::read_to_string(out.join("killed/metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(last.lines().last().unwrap()).unwrap();
    assert_eq!(last["step"], 30);
}

#[test]
fn cifar_format_files_train_with_the_cifar_config() {
    let out = tempdir("cifar");
    let data = out.join("cifar-10-batches-bin");
    std::fs::create_dir_all(&data).unwrap();
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"] {
        let mut bytes = Vec::new();
        for k in 0..4u8 {
            bytes.push(k);
            bytes.extend(std::iter::repeat_n(k * 60, 3072));
        }
        std::fs::write(data.join(format!("{name}.bin")), bytes).unwrap();
    }
    let sets = [
        format!("data.path={}", out.display()),
        format!("run.out_dir={}", out.display()),
        "train.steps=2".into(),
        "train.batch_size=4".into(),
        "model.channels=8".into(),
        "model.num_blocks=1".into(),
        "sample.n=2".into(),
        "sample.steps=2".into(),
    ];
    ok(emulsion(&with_sets(&["train", "configs/cifar.toml", "--device", "cpu"], &sets)));
    assert!(out.join("cifar/samples/step-00000002.png").is_file());
}

/// Every file under `dir` with its bytes, by path relative to `dir`.
fn folder_contents(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut files = std::collections::BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.insert(path.strip_prefix(dir).unwrap().to_path_buf(), std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

/// WGPU (lavapipe without a GPU) trains and samples, and the kernel cache works: a first run
/// against an empty cache folder writes Mesa's shader cache into it (and, with `autotune`,
/// CubeCL's autotune results); a second identical run re-tunes nothing (CubeCL's files are
/// unchanged) and finds most of its shaders in Mesa's cache.
#[test]
fn wgpu_trains_and_samples_and_its_second_run_reuses_the_kernel_cache() {
    if !cfg!(feature = "wgpu") || std::env::var_os("EMULSION_SKIP_WGPU").is_some() {
        eprintln!("skipped: built without wgpu, or EMULSION_SKIP_WGPU is set");
        return;
    }
    // On Linux a Vulkan driver registers itself in an ICD folder; without one (no GPU driver,
    // no lavapipe) there is nothing to run on.
    let has_vulkan = ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d"].iter().any(|d| std::fs::read_dir(d).is_ok_and(|mut e| e.next().is_some()));
    if cfg!(target_os = "linux") && !has_vulkan {
        let note = "no Vulkan driver: install mesa-vulkan-drivers (scripts/test_setup.sh does where it can)";
        assert!(std::env::var_os("EMULSION_CI").is_none(), "{note}");
        eprintln!("skipped: {note}");
        return;
    }
    let out = tempdir("wgpu");
    let cache = out.join("kernel-cache");
    let run = |name: &str| {
        let mut sets = tiny(&out, name);
        sets.extend(["train.steps=1".to_string(), "data.limit=16".into(), "train.batch_size=4".into(), "sample.n=2".into(), "sample.steps=2".into()]);
        let mut args = vec!["--kernel-cache", cache.to_str().unwrap()];
        args.extend(with_sets(&["train", "configs/quickstart.toml", "--device", "wgpu"], &sets));
        let output = Command::new(env!("CARGO_BIN_EXE_emulsion"))
            .args(&args)
            .current_dir(repo())
            .env("XDG_RUNTIME_DIR", std::env::temp_dir())
            // A software adapter: tune shapes coarsely, as the README advises.
            .env("CUBECL_AUTOTUNE_LEVEL", "minimal")
            // Mesa's cache must be the one in the folder, and on.
            .env_remove("MESA_SHADER_CACHE_DIR")
            .env_remove("MESA_SHADER_CACHE_DISABLE")
            .env_remove("MESA_DISK_CACHE_SINGLE_FILE")
            .output()
            .expect("the emulsion binary runs");
        ok(output);
        assert!(out.join(name).join("samples/step-00000001.png").is_file());
        folder_contents(&cache)
    };
    // Mesa keys a few shaders of fused kernels differently in every process (measured: about 13
    // of 400 entries per run of the quick-start network), so its part is compared by bytes.
    let is_mesa = |path: &Path| path.starts_with("mesa");
    let mesa_bytes = |files: &std::collections::BTreeMap<PathBuf, Vec<u8>>, new_since: Option<&std::collections::BTreeMap<PathBuf, Vec<u8>>>| -> usize {
        files.iter().filter(|(p, _)| is_mesa(p) && new_since.is_none_or(|old| !old.contains_key(*p))).map(|(_, b)| b.len()).sum()
    };
    let first = run("first");
    let tuned = first.keys().filter(|p| p.starts_with("autotune")).count();
    if cfg!(feature = "autotune") {
        assert!(tuned > 0, "the first run wrote no autotune results into {}: {:?}", cache.display(), first.keys().collect::<Vec<_>>());
    } else {
        assert_eq!(tuned, 0, "autotune results without the autotune feature");
    }
    assert!(mesa_bytes(&first, None) > 100_000, "Mesa's shader cache is in the folder: {} bytes", mesa_bytes(&first, None));
    let second = run("second");
    let retuned: Vec<_> = second.iter().filter(|(path, bytes)| !is_mesa(path) && first.get(*path) != Some(bytes)).map(|(path, _)| path).collect();
    assert!(retuned.is_empty(), "the second run re-tuned: {retuned:?}");
    let (new, old) = (mesa_bytes(&second, Some(&first)), mesa_bytes(&first, None));
    assert!(new * 5 < old, "the second run compiled {new} bytes of shaders again, the first {old}");
}

fn newest_step(checkpoints: &Path) -> Option<u64> {
    std::fs::read_dir(checkpoints)
        .ok()?
        .flatten()
        .filter(|e| e.path().join("state.json").is_file())
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("step-")?.parse().ok())
        .max()
}

/// Width and height of a PNG, from its IHDR chunk.
fn image_dimensions(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");
    let be = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap());
    (be(16), be(20))
}

/// The Inception weights (`EMULSION_INCEPTION`, or where scripts/fetch_inception.sh puts them);
/// `None`, with a note saying how to get them, when they are not there (a failure under
/// `EMULSION_CI`).
fn inception_weights() -> Option<String> {
    let path = std::env::var("EMULSION_INCEPTION")
        .unwrap_or_else(|_| repo().join(emulsion_fid::DEFAULT_WEIGHTS).display().to_string());
    if Path::new(&path).is_file() {
        return Some(path);
    }
    let note = format!("{path} not found: run scripts/fetch_inception.sh (or set EMULSION_INCEPTION)");
    assert!(std::env::var_os("EMULSION_CI").is_none(), "{note}");
    eprintln!("skipped: {note}");
    None
}

/// `n` 28x28 grayscale PNGs of a bright square whose size and place depend on `shift`.
fn png_folder(dir: &Path, n: u32, shift: u32) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let image = image::GrayImage::from_fn(28, 28, |x, y| {
            let inside = (x + i) % 28 > 6 + shift && (y + 2 * i) % 28 > 8 && x < 20 + shift;
            image::Luma([if inside { 230 } else { (x * 3 + y) as u8 }])
        });
        image.save(dir.join(format!("{i:03}.png"))).unwrap();
    }
}

#[test]
fn fid_compares_folders_configs_and_saved_statistics() {
    let out = tempdir("fid");
    let (a, b) = (out.join("a"), out.join("b"));
    png_folder(&a, 6, 0);
    png_folder(&b, 6, 5);
    let Some(weights) = inception_weights() else { return };
    let fid = |args: &[&str]| {
        let mut all = vec!["fid", "--device", "cpu", "--batch", "4", "--weights", &weights];
        all.extend_from_slice(args);
        emulsion(&all)
    };
    let value = |output: Output| -> f64 { String::from_utf8_lossy(&ok(output).stdout).trim().parse().unwrap() };
    let stats = out.join("a.npz");
    ok(fid(&[a.to_str().unwrap(), "--save-stats", stats.to_str().unwrap()]));
    // Saved statistics against the folder they came from: 0.
    let same = value(fid(&[stats.to_str().unwrap(), a.to_str().unwrap()]));
    assert!(same.abs() < 1e-6, "FID(a, a) = {same}");
    let apart = value(fid(&[a.to_str().unwrap(), b.to_str().unwrap()]));
    assert!(apart > 1.0, "FID(a, b) = {apart}");
    let back = value(fid(&[b.to_str().unwrap(), stats.to_str().unwrap()]));
    assert!((back - apart).abs() < 1e-6 * apart, "symmetric: {back} vs {apart}");

    // A training config: its images' statistics, cached in its run directory.
    let config = out.join("ref.toml");
    let text = std::fs::read_to_string(repo().join("configs/quickstart.toml")).unwrap();
    std::fs::write(&config, text.replace("\"runs\"", &format!("{:?}", out.display().to_string())).replace("\"quickstart\"", "\"ref\"")).unwrap();
    ok(fid(&[config.to_str().unwrap(), a.to_str().unwrap(), "--limit", "5"]));
    let cached: Vec<_> = std::fs::read_dir(out.join("ref")).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with("fid-reference-")).collect();
    assert_eq!(cached.len(), 1, "one cached reference");
    let again = ok(fid(&[config.to_str().unwrap(), a.to_str().unwrap(), "--limit", "5"]));
    assert!(stderr(&again).contains("FID reference statistics: "), "the cache is read:\n{}", stderr(&again));
    // Logged through `tracing`, as plain lines when stderr is not a terminal.
    assert!(!stderr(&again).contains('\u{1b}'), "no colour codes in a pipe:\n{}", stderr(&again));

    fails_with(fid(&[a.to_str().unwrap()]), &["--save-stats"]);
    fails_with(fid(&[a.to_str().unwrap(), "no/such/folder"]), &["no/such/folder"]);
    std::fs::write(out.join("bad.npz"), b"not a zip").unwrap();
    fails_with(fid(&[out.join("bad.npz").to_str().unwrap(), stats.to_str().unwrap()]), &["bad.npz", "zip"]);
    fails_with(emulsion(&["fid", "--device", "cpu", "--weights", "missing.safetensors", a.to_str().unwrap(), b.to_str().unwrap()]), &["missing.safetensors", "fetch_inception.sh"]);
}

/// Writes the quick start as `out/base.toml` (its data path made absolute) and returns the
/// `[set]` lines of a sweep that shrinks it as `tiny` does.
fn sweep_base(out: &Path) -> String {
    let text = std::fs::read_to_string(repo().join("configs/quickstart.toml")).unwrap().replace("\"datasets/fashion-mnist\"", &format!("{:?}", repo().join("datasets/fashion-mnist").display().to_string()));
    std::fs::write(out.join("base.toml"), text).unwrap();
    tiny(out, "unused")
        .iter()
        .filter(|s| !s.starts_with("run."))
        .map(|s| {
            let (k, v) = s.split_once('=').unwrap();
            format!("\"{k}\" = {}\n", if v.starts_with('[') || v.parse::<f64>().is_ok() { v.to_string() } else { format!("{v:?}") })
        })
        .collect()
}

#[test]
fn sweeps_run_every_combination_resume_and_summarise() {
    let Some(weights) = inception_weights() else { return };
    let out = tempdir("sweep");
    let mut set = sweep_base(&out);
    set.push_str(&format!("\"eval.fid_every\" = 2\n\"eval.fid_samples\" = 4\n\"eval.fid_reference\" = 4\n\"eval.fid_batch\" = 4\n\"eval.inception\" = {weights:?}\n\"run.device\" = \"cpu\"\n"));
    let sweep = out.join("tiny.toml");
    std::fs::write(
        &sweep,
        format!("base = \"base.toml\"\nout_dir = {:?}\nseeds = [0]\ntarget_fid = 1e9\n[set]\n{set}[grid]\n\"assignment.method\" = [\"none\", \"lsa\"]\n", out.display().to_string()),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let mut all = vec!["sweep", sweep.to_str().unwrap()];
        all.extend_from_slice(args);
        emulsion(&all)
    };
    let first = ok(run(&[]));
    assert!(stderr(&first).contains("2 runs (0 done, 0 partial, 2 new)"), "{}", stderr(&first));
    let root = out.join("tiny");
    for combination in ["method-none", "method-lsa"] {
        let journal = std::fs::read_to_string(root.join(combination).join("seed-0/metrics.jsonl")).unwrap();
        assert_eq!(journal.lines().filter(|l| l.contains("\"fid\"")).count(), 2, "{combination}: FID at steps 2 and 4");
    }
    assert_eq!(std::fs::read_dir(&root).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with("fid-reference-")).count(), 1, "one shared reference");
    let summary = std::fs::read_to_string(root.join("summary.md")).unwrap();
    assert!(summary.contains("| method-none | 1/1 |") && summary.contains("| method-lsa | 1/1 |") && summary.contains("FID@2") && summary.contains("FID@4"), "{summary}");
    assert!(summary.contains("2 (1/1)"), "the huge target is reached at the first evaluation:\n{summary}");
    assert_eq!(std::fs::read_to_string(root.join("summary.csv")).unwrap().lines().count(), 3);
    assert!(root.join("fid.png").is_file());

    // Interrupted: one run loses its last checkpoint and the journal lines after step 2.
    let lsa = root.join("method-lsa/seed-0");
    std::fs::remove_dir_all(lsa.join("checkpoints/step-00000004")).unwrap();
    let finished = root.join("method-none/seed-0/metrics.jsonl");
    let untouched = std::fs::read_to_string(&finished).unwrap();
    let second = ok(run(&[]));
    assert!(stderr(&second).contains("(1 done, 1 partial, 0 new)"), "{}", stderr(&second));
    assert!(stderr(&second).contains("resuming from"), "{}", stderr(&second));
    assert_eq!(std::fs::read_to_string(&finished).unwrap(), untouched, "a finished run is not run again");
    assert_eq!(newest_step(&lsa.join("checkpoints")), Some(4));
    let fid_steps: Vec<u64> = std::fs::read_to_string(lsa.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|l| l.get("fid").is_some())
        .map(|l| l["step"].as_u64().unwrap())
        .collect();
    assert_eq!(fid_steps, vec![2, 4], "the resumed run re-evaluates step 4 once");
    let third = ok(run(&["--dry-run"]));
    assert!(stderr(&third).contains("(2 done, 0 partial, 0 new)"));

    // Killed after its last checkpoint but before its last FID: not done; resuming evaluates it.
    let journal = std::fs::read_to_string(&finished).unwrap();
    let without_last_fid: String = journal.lines().filter(|l| !(l.contains("\"fid\"") && l.contains("\"step\":4"))).map(|l| format!("{l}\n")).collect();
    assert_ne!(journal, without_last_fid);
    std::fs::write(&finished, without_last_fid).unwrap();
    let fourth = ok(run(&[]));
    assert!(stderr(&fourth).contains("(1 done, 1 partial, 0 new)"), "{}", stderr(&fourth));
    assert!(stderr(&fourth).contains("step 4: FID"), "{}", stderr(&fourth));
    assert_eq!(std::fs::read_to_string(&finished).unwrap().lines().filter(|l| l.contains("\"fid\"")).count(), 2);

    std::fs::write(&sweep, "base = \"base.toml\"\n[grid]\n\"run.seed\" = [1, 2]\n").unwrap();
    fails_with(run(&[]), &["tiny.toml", "run.seed", "seeds"]);
}

/// The keys `bench train --json` prints; `scripts/torch_reference.py --json` prints the same.
const BENCH_TRAIN_KEYS: [&str; 17] = [
    "implementation", "config", "device", "parameters", "batch_size", "micro_batch", "steps", "warmup_steps", "window_steps",
    "setup_s", "first_step_s", "images_per_s", "step_s", "window_images_per_s", "peak_host_mib", "peak_device_mib", "final_loss",
];

#[test]
fn bench_train_json_on_the_cpu_carries_every_key() {
    let out = ok(emulsion(&["bench", "train", "configs/quickstart.toml", "--device", "cpu", "--steps", "6", "--warmup", "1", "--window", "2", "--json"]));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
    let mut keys: Vec<&str> = report.as_object().unwrap().keys().map(String::as_str).collect();
    let mut expected = BENCH_TRAIN_KEYS.to_vec();
    keys.sort();
    expected.sort();
    assert_eq!(keys, expected);
    let number = |key: &str| report[key].as_f64().unwrap_or_else(|| panic!("{key} is not a number: {}", report[key]));
    assert_eq!(report["implementation"], "emulsion");
    assert_eq!(report["config"], "configs/quickstart.toml");
    assert_eq!(number("parameters"), 317_297.0, "the quick-start network");
    assert_eq!((number("batch_size"), number("steps"), number("warmup_steps"), number("window_steps")), (8.0, 6.0, 1.0, 2.0));
    assert!(0.0 < number("setup_s") && number("setup_s") < number("first_step_s"));
    assert_eq!(report["window_images_per_s"].as_array().unwrap().len(), 2, "steps 3-4 and 5-6");
    let windows: Vec<f64> = report["window_images_per_s"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let (lo, hi) = (windows[0].min(windows[1]), windows[0].max(windows[1]));
    assert!(lo <= number("images_per_s") && number("images_per_s") <= hi, "the median of the windows");
    assert!(8.0 / hi <= number("step_s") && number("step_s") <= 8.0 / lo, "seconds per step within the windows'");
    assert!(number("final_loss").is_finite());
    if cfg!(target_os = "linux") {
        assert!(number("peak_host_mib") > 10.0);
    }
    assert!(report["peak_device_mib"].is_null(), "the CPU backend reports no device memory");

    // The reference's JSON is the dict literal `result = { "key": …, … }`: the same keys.
    let reference = std::fs::read_to_string(repo().join("scripts/torch_reference.py")).unwrap();
    let literal = reference.split("    result = {\n").nth(1).and_then(|rest| rest.split("\n    }\n").next()).expect("torch_reference.py builds `result = {…}`");
    let mut printed: Vec<&str> = literal.lines().filter_map(|l| l.trim().strip_prefix('"')?.split('"').next()).collect();
    printed.sort();
    assert_eq!(printed, expected, "scripts/torch_reference.py prints other keys");
    fails_with(emulsion(&["bench", "train", "configs/quickstart.toml", "--device", "cpu", "--steps", "3", "--warmup", "2"]), &["--steps 3", "no timed window"]);
}

#[test]
fn bench_fid_reports_start_up_and_throughput() {
    let Some(weights) = inception_weights() else { return };
    let out = ok(emulsion(&["bench", "fid", "--device", "cpu", "--n", "6", "--batch", "2", "--size", "16", "--weights", &weights, "--json"]));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
    assert_eq!((report["images"].as_u64(), report["batch"].as_u64(), report["image_size"].as_u64()), (Some(6), Some(2), Some(16)));
    assert!(report["startup_s"].as_f64().unwrap() > 0.0 && report["images_per_s"].as_f64().unwrap() > 0.0);
    fails_with(emulsion(&["bench", "fid", "--device", "cpu", "--n", "2", "--batch", "2", "--weights", &weights]), &["nothing to time"]);
}

/// A second `train` on a run directory in use is refused at once, naming the holder; once the
/// holder is killed, its lock is taken over.
#[test]
fn a_second_trainer_on_a_run_directory_is_refused_and_a_dead_holders_lock_is_taken_over() {
    let out = tempdir("lock");
    let mut sets = tiny(&out, "shared");
    sets.extend(["train.steps=400".to_string(), "train.checkpoint_every=2".into(), "train.sample_every=0".into()]);
    let args = with_sets(&["train", "configs/quickstart.toml", "--device", "cpu"], &sets);
    let mut first = Command::new(env!("CARGO_BIN_EXE_emulsion")).args(&args).current_dir(repo()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    // Wait for the first trainer's first checkpoint: the lock is held and there is work to lose.
    let first_checkpoint = out.join("shared/checkpoints/step-00000002/state.json");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !first_checkpoint.is_file() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(first_checkpoint.is_file(), "the first trainer wrote no checkpoint in 120 s");
    let second = emulsion(&args.iter().copied().chain(["--resume"]).collect::<Vec<_>>());
    fails_with(second, &["is in use by another `emulsion train`", &format!("pid {}", first.id()), "run.name"]);
    assert!(first.try_wait().unwrap().is_none(), "the first trainer is untouched");
    first.kill().unwrap();
    first.wait().unwrap();
    let mut resumed = args.clone();
    resumed.extend(["--resume", "--set", "train.steps=2"]);
    let resumed = ok(emulsion(&resumed));
    // The killed trainer had written checkpoints (every 2 steps) before the second was refused.
    assert!(stderr(&resumed).contains("resuming from") && stderr(&resumed).contains("the newest complete checkpoint"), "{}", stderr(&resumed));
}

/// Checkpoints checked before Burn loads them: a model of another shape, a record of another
/// module, a truncated file and an impossible state.json are errors that say so, never panics;
/// `sample` names the checkpoint it uses and the incomplete ones it skipped.
#[test]
fn mismatched_or_damaged_checkpoints_are_named_errors() {
    let out = tempdir("checked");
    let sets = tiny(&out, "run");
    ok(emulsion(&with_sets(&["train", "configs/quickstart.toml", "--device", "cpu"], &sets)));
    let run = out.join("run");
    let step4 = run.join("checkpoints/step-00000004");
    let resume_with = |extra: &str| {
        let mut args = with_sets(&["train", "configs/quickstart.toml", "--device", "cpu", "--resume"], &sets);
        args.extend(["--set", extra, "--set", "train.steps=6"]);
        emulsion(&args)
    };
    fails_with(resume_with("model.channels=16"), &["model.mpk", "parameter `", "in the checkpoint and", "in the model the config builds"]);
    fails_with(resume_with("model.num_blocks=2"), &["model.mpk", "parameter `", "the model the config builds"]);
    fails_with(resume_with("model.class_conditional=false"), &["model.mpk", "map_label", "does not have"]);

    let sample = |out_png: &str| emulsion(&["sample", run.to_str().unwrap(), "--n", "1", "--steps", "1", "--device", "cpu", "--out", out.join(out_png).to_str().unwrap()]);
    // The training state is read by `export --raw` (`sample` reads the snapshot).
    let export_raw = || emulsion(&["export", run.to_str().unwrap(), "--raw", "--out", out.join("raw.safetensors").to_str().unwrap()]);
    let unet = std::fs::read_to_string(step4.join("unet.json")).unwrap();
    std::fs::write(step4.join("unet.json"), unet.replace("\"model_channels\": 8", "\"model_channels\": 16")).unwrap();
    fails_with(export_raw(), &["step-00000004", "model.mpk", "has shape"]);
    std::fs::write(step4.join("unet.json"), &unet).unwrap();

    let record = std::fs::read(step4.join("model.mpk")).unwrap();
    std::fs::write(step4.join("model.mpk"), &record[..record.len() / 2]).unwrap();
    fails_with(export_raw(), &["model.mpk", "corrupt"]);
    std::fs::write(step4.join("model.mpk"), &record).unwrap();

    // A damaged sampling snapshot is named; without one, the EMA comes from the training state.
    let snapshot = std::fs::read(step4.join("ema.safetensors")).unwrap();
    std::fs::write(step4.join("ema.safetensors"), &snapshot[..snapshot.len() / 2]).unwrap();
    fails_with(sample("a.png"), &["ema.safetensors", "not a safetensors file"]);
    std::fs::remove_file(step4.join("ema.safetensors")).unwrap();
    let from_record = ok(sample("b.png"));
    assert!(stderr(&from_record).contains("has no ema.safetensors"), "{}", stderr(&from_record));
    std::fs::write(step4.join("ema.safetensors"), &snapshot).unwrap();

    let state = std::fs::read_to_string(step4.join("state.json")).unwrap();
    std::fs::write(step4.join("state.json"), state.replace("\"step\": 4", "\"step\": 999")).unwrap();
    fails_with(sample("c.png"), &["says step 999 but the folder is step 4"]);
    std::fs::remove_file(step4.join("state.json")).unwrap();
    let fell_back = ok(sample("d.png"));
    assert!(stderr(&fell_back).contains("step-00000002") && stderr(&fell_back).contains("skipped") && stderr(&fell_back).contains("step-00000004"), "{}", stderr(&fell_back));
}

/// A diverging run (learning rate 1e6) stops by step 3 with an error naming the step and what to
/// try; the checkpoints it leaves hold finite weights (`sample` draws from them); `skip` drops
/// updates until too many come in a row.
#[test]
fn a_diverging_run_stops_with_a_clear_error_and_leaves_only_finite_checkpoints() {
    let out = tempdir("diverge");
    let mut sets = tiny(&out, "nan");
    sets.extend(["train.lr=1e6".to_string(), "train.warmup_steps=0".into(), "train.steps=20".into(), "train.checkpoint_every=1".into(), "train.keep_checkpoints=1".into(), "train.sample_every=0".into()]);
    let failed = emulsion(&with_sets(&["train", "configs/quickstart.toml", "--device", "cpu"], &sets));
    let err = stderr(&failed);
    fails_with(failed, &["train.on_nonfinite", "train.lr"]);
    let line = err.lines().find(|l| l.starts_with("error:")).unwrap_or_default();
    let step: u64 = line.split("step ").nth(1).and_then(|s| s.split(':').next()).and_then(|s| s.trim().parse().ok()).unwrap_or_else(|| panic!("no step in:\n{err}"));
    assert!(step <= 3, "stopped at step {step}");
    let checkpoints = out.join("nan/checkpoints");
    assert!(newest_step(&checkpoints).is_none_or(|s| s < step), "no checkpoint of step {step} or later");
    if newest_step(&checkpoints).is_some() {
        ok(emulsion(&["sample", out.join("nan").to_str().unwrap(), "--n", "1", "--steps", "1", "--device", "cpu", "--out", out.join("nan.png").to_str().unwrap()]));
    }

    let mut skip = tiny(&out, "skip");
    skip.extend(["train.lr=1e6".to_string(), "train.warmup_steps=0".into(), "train.steps=20".into(), "train.on_nonfinite=skip".into(), "train.max_skipped_steps=2".into()]);
    fails_with(emulsion(&with_sets(&["train", "configs/quickstart.toml", "--device", "cpu"], &skip)), &["3 non-finite steps in a row", "train.max_skipped_steps = 2"]);
}

/// On the CPU backend (Flex, with this project's convolution gradients), micro-batches computed
/// on several threads train the same weights, bit for bit, as on one; dropout and label dropout
/// make every micro-batch draw during its forward pass.
#[test]
fn micro_batch_threads_train_the_same_bits_as_one_thread() {
    let out = tempdir("threads");
    let weights = |threads: usize| {
        let mut sets = tiny(&out, &format!("t{threads}"));
        sets.extend([
            "train.micro_batch=2".to_string(),
            format!("train.micro_batch_threads={threads}"),
            "model.dropout=0.2".into(),
            "train.sample_every=0".into(),
        ]);
        ok(emulsion(&with_sets(&["train", "configs/quickstart.toml", "--device", "cpu"], &sets)));
        // The network and its EMA (the snapshot's metadata names the run, so it differs).
        std::fs::read(out.join(format!("t{threads}/checkpoints/step-00000004/model.mpk"))).unwrap()
    };
    let one = weights(1);
    for threads in [2, 3] {
        assert!(weights(threads) == one, "{threads} threads: model.mpk differs from one thread's");
    }
}

/// Resuming from an older checkpoint sets the newer ones aside (kept, not deleted), so that
/// neither pruning nor a later `--resume` mixes the abandoned continuation with the new one.
#[test]
fn resuming_from_an_older_checkpoint_sets_the_newer_ones_aside() {
    let out = tempdir("aside");
    let mut sets = tiny(&out, "run");
    sets.extend(["train.steps=6".to_string(), "train.keep_checkpoints=3".into(), "train.sample_every=0".into()]);
    ok(emulsion(&with_sets(&["train", "configs/quickstart.toml", "--device", "cpu"], &sets)));
    let checkpoints = out.join("run/checkpoints");
    let mut args = with_sets(&["train", "configs/quickstart.toml", "--device", "cpu"], &sets);
    let from = format!("--resume={}", checkpoints.join("step-00000002").display());
    args.extend([from.as_str(), "--set", "train.steps=4", "--set", "train.keep_checkpoints=1"]);
    let resumed = ok(emulsion(&args));
    assert!(stderr(&resumed).contains("moved the 2 newer checkpoint(s)"), "{}", stderr(&resumed));
    let mut names: Vec<String> = std::fs::read_dir(&checkpoints).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");
    assert_eq!(names[1], "step-00000004", "the new step 4 is kept although keep_checkpoints = 1 would prune by step alone");
    let aside = checkpoints.join(&names[0]);
    assert!(names[0].starts_with("abandoned-") && aside.join("step-00000004/state.json").is_file() && aside.join("step-00000006/state.json").is_file(), "{names:?}");
}

/// Enumerated flags are the config's own enums, parsed by clap: a bad value is refused before
/// anything runs, with the valid values listed.
#[test]
fn bad_flag_values_are_refused_with_the_valid_ones_listed() {
    let listed = |args: &[&str], bad: &str, valid: &[&str]| {
        let mut wanted = vec![bad, "possible values"];
        wanted.extend_from_slice(valid);
        usage_error(emulsion(args), &wanted);
    };
    listed(&["train", "configs/quickstart.toml", "--device", "tpu"], "'tpu'", &["auto", "cpu", "ndarray", "wgpu", "cuda"]);
    listed(&["fid", "a", "b", "--device", "gpu"], "'gpu'", &["auto", "cuda"]);
    listed(&["bench", "assign", "--device", "x"], "'x'", &["ndarray"]);
    listed(&["schedule", "dump", "sigmoid"], "'sigmoid'", &["cosine_discrete", "lognormal", "laplace", "flow"]);
    usage_error(emulsion(&["sweep", "x.toml", "--devices", "cpu,tpu"]), &["`tpu` is not a device", "auto, cpu, ndarray, wgpu, cuda, or cuda:N"]);
    usage_error(emulsion(&["sweep", "x.toml", "--devices", "cpu:1"]), &["only cuda takes a GPU index"]);
    usage_error(emulsion(&["bench", "assign", "--batch", "8,x"]), &["'x'", "--batch"]);
    usage_error(emulsion(&["schedule", "dump", "cosine", "--t", "0.5,y"]), &["'y'", "--t"]);
}

#[test]
fn an_error_names_its_cause_once() {
    for args in [&["train", "missing.toml", "--dry-run"][..], &["sweep", "missing.toml", "--dry-run"]] {
        let output = emulsion(args);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{err}");
        assert!(err.contains("missing.toml") && !err.contains("panicked"), "{err}");
        assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    }
}

/// A command line clap refuses: exit code 2 (the convention for usage errors), no panic.
fn usage_error(output: Output, needles: &[&str]) {
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "expected exit code 2, got {}:
{err}", output.status);
    assert!(!err.contains("panicked"), "panicked:
{err}");
    for needle in needles {
        assert!(err.contains(needle), "stderr lacks {needle:?}:
{err}");
    }
}

#[test]
fn fd_net_trains_and_a_sweep_runs_two_fd_fmnist_runs_at_once_on_one_device() {
    let out = tempdir("fd-sweep");
    let net = out.join("fd.safetensors");
    let data = repo().join("datasets/fashion-mnist");
    let train = |net: &Path| ok(emulsion(&["fd-net", "train", "--device", "cpu", "--data", data.to_str().unwrap(), "--limit", "256", "--epochs", "1", "--batch", "64", "--holdout", "200", "--out", net.to_str().unwrap()]));
    let first = train(&net);
    assert!(stderr(&first).contains("test accuracy") && stderr(&first).contains("floor"), "{}", stderr(&first));
    let record: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(net.with_extension("json")).unwrap()).unwrap();
    assert_eq!(record["train_images"], "test split, images 0..256");
    // Four steps learn little; the unit tests check learning. Here: a record that makes sense.
    let accuracy = record["test_accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&accuracy) && record["floor"].as_f64().unwrap() > 0.0 && record["seconds"].as_f64().unwrap() > 0.0, "{record}");
    // Deterministic: a second training writes the same bytes.
    let again = out.join("again.safetensors");
    train(&again);
    assert_eq!(std::fs::read(&net).unwrap(), std::fs::read(&again).unwrap());
    fails_with(emulsion(&["fd-net", "train", "--device", "cpu", "--data", data.to_str().unwrap(), "--holdout", "20000"]), &["--holdout", "20000"]);

    let mut set = sweep_base(&out);
    set.push_str(&format!(
        "\"eval.metric\" = \"fd_fmnist\"\n\"eval.fd_net\" = {:?}\n\"eval.fid_at\" = [1, 2]\n\"eval.fid_samples\" = 4\n\"eval.fid_reference\" = 8\n\"eval.fid_batch\" = 4\n\"run.device\" = \"cpu\"\n",
        net.display().to_string()
    ));
    let sweep = out.join("fd.toml");
    std::fs::write(&sweep, format!("base = \"base.toml\"\nout_dir = {:?}\nseeds = [0]\nbaseline = \"method-none\"\n[set]\n{set}[grid]\n\"assignment.method\" = [\"none\", \"lsa\"]\n", out.display().to_string())).unwrap();
    ok(emulsion(&["sweep", sweep.to_str().unwrap(), "--devices", "cpu", "--jobs-per-device", "2"]));
    let root = out.join("fd");
    for combination in ["method-none", "method-lsa"] {
        let run = root.join(combination).join("seed-0");
        // Side by side, each child writes its own log.
        assert!(run.join("train.log").is_file(), "{combination}");
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).filter(|l: &serde_json::Value| l["kind"] == "fid").collect();
        let steps: Vec<u64> = lines.iter().map(|l| l["step"].as_u64().unwrap()).collect();
        assert_eq!(steps, vec![1, 2, 4], "{combination}: fid_at and the last step");
        assert!(lines.iter().all(|l| l["metric"] == "fd_fmnist" && l["fid"].as_f64().unwrap() >= 0.0), "{lines:?}");
    }
    assert_eq!(std::fs::read_dir(&root).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with("fd_fmnist-reference-")).count(), 1);
    let summary = std::fs::read_to_string(root.join("summary.md")).unwrap();
    assert!(summary.contains("1.1 × final of method-none") && summary.contains("95% interval"), "{summary}");
    // The baseline reaches 1.1 × its own final value by its last step at the latest.
    assert!(summary.lines().any(|l| l.starts_with("| method-none | 1/1 |") && l.contains("(1/1)")), "{summary}");
    let zero = emulsion(&["sweep", sweep.to_str().unwrap(), "--jobs-per-device", "0"]);
    assert_eq!(zero.status.code(), Some(2), "a usage error");
    assert!(stderr(&zero).contains("jobs-per-device"), "{}", stderr(&zero));
}

/// The float tensors of a `.safetensors` file (`emulsion export`), by name.
fn safetensors_f32(path: &Path) -> std::collections::BTreeMap<String, Vec<f32>> {
    let bytes = std::fs::read(path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let data = &bytes[8 + header_len..];
    header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, info)| info["dtype"] == "F32")
        .map(|(name, info)| {
            let [start, end] = [0, 1].map(|i| info["data_offsets"][i].as_u64().unwrap() as usize);
            (name.clone(), data[start..end].chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect())
        })
        .collect()
}

/// Data-parallel training equals one process training the same global batch: with two peers
/// (on one device listed twice, for `lsa`) and assignment `none` or `lsa` over the global
/// batch, the same bits (two micro-batches summed
/// in either order are the same floats); with four peers, whose all-reduce adds the four
/// micro-batches in another order, within 1e-5 relative. Each run also checks at its end that
/// every peer holds the same weights.
#[test]
fn data_parallel_peers_train_what_one_process_trains() {
    let out = tempdir("peers");
    let train = |name: &str, devices: Option<&str>, extra: &[&str]| {
        let mut sets = tiny(&out, name);
        sets.extend(["train.steps=20".to_string(), "train.checkpoint_every=20".into(), "train.sample_every=0".into()]);
        sets.extend(extra.iter().map(|s| s.to_string()));
        let mut args = with_sets(&["train", "configs/quickstart.toml"], &sets);
        match devices {
            Some(devices) => args.extend(["--devices", devices]),
            None => args.extend(["--device", "cpu"]),
        }
        let output = ok(emulsion(&args));
        if devices.is_some() {
            assert!(stderr(&output).contains("data-parallel"), "{}", stderr(&output));
        }
        out.join(name).join("checkpoints/step-00000020")
    };
    let model = |checkpoint: PathBuf| std::fs::read(checkpoint.join("model.mpk")).unwrap();
    for (method, peer_micro) in [("none", "train.micro_batch=4"), ("lsa", "train.micro_batch=0")] {
        let assignment = format!("assignment.method={method}");
        let one = model(train(&format!("one-{method}"), None, &["train.micro_batch=4", &assignment]));
        // micro_batch = 0: each peer's shard (4 images) is its micro-batch.
        let devices = if method == "lsa" { "cpu:0,cpu:0" } else { "cpu:0,cpu:1" };
        let two = model(train(&format!("two-{method}"), Some(devices), &[peer_micro, &assignment]));
        assert!(one == two, "assignment {method}: two peers' weights differ from one process's");
    }
    let export = |checkpoint: PathBuf, name: &str| {
        let file = out.join(format!("{name}.safetensors"));
        ok(emulsion(&["export", checkpoint.to_str().unwrap(), "--out", file.to_str().unwrap(), "--raw"]));
        safetensors_f32(&file)
    };
    let one = export(train("one-4", None, &["train.micro_batch=2"]), "one-4");
    let four = export(train("four", Some("cpu:0,cpu:1,cpu:2,cpu:3"), &["train.micro_batch=2"]), "four");
    let relative = relative_distance(&one, &four);
    assert!(relative <= 1e-5, "four peers: ‖Δw‖/‖w‖ = {relative:e}");
}

/// ‖b − a‖/‖a‖ over every tensor of two exports, which must name the same tensors.
fn relative_distance(a: &std::collections::BTreeMap<String, Vec<f32>>, b: &std::collections::BTreeMap<String, Vec<f32>>) -> f64 {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    let (mut diff, mut norm) = (0f64, 0f64);
    for (name, xs) in a {
        for (x, y) in xs.iter().zip(&b[name]) {
            diff += (*x as f64 - *y as f64).powi(2);
            norm += (*x as f64).powi(2);
        }
    }
    (diff / norm).sqrt()
}

/// Killing a data-parallel run (all its peers: they are threads of one process) and resuming it
/// trains the same weights as the run never stopped; per-peer assignment also trains.
#[test]
fn a_killed_data_parallel_run_resumes_to_the_uninterrupted_weights() {
    let out = tempdir("peers-resume");
    let run = |name: &str| {
        let mut sets = tiny(&out, name);
        sets.extend([
            "train.steps=30".to_string(),
            "train.checkpoint_every=3".into(),
            "train.sample_every=0".into(),
            "assignment.method=lsa".into(),
            "assignment.scope=peer".into(),
        ]);
        sets
    };
    let whole = run("whole");
    ok(emulsion(&with_sets(&["train", "configs/quickstart.toml", "--devices", "cpu:0,cpu:1"], &whole)));
    let killed = run("killed");
    let args = with_sets(&["train", "configs/quickstart.toml", "--devices", "cpu:0,cpu:1"], &killed);
    let checkpoints = out.join("killed/checkpoints");
    let mut child = Command::new(env!("CARGO_BIN_EXE_emulsion")).args(&args).current_dir(repo()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while newest_step(&checkpoints).is_none() && Instant::now() < deadline && child.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let stopped_at = newest_step(&checkpoints);
    assert!(matches!(stopped_at, Some(step) if step < 30), "the kill came after step {stopped_at:?}: nothing to resume");
    let mut args = args.clone();
    args.push("--resume");
    ok(emulsion(&args));
    let last = |name: &str| std::fs::read(out.join(name).join("checkpoints/step-00000030/model.mpk")).unwrap();
    assert!(last("whole") == last("killed"), "resumed from step {stopped_at:?}: the weights differ from the uninterrupted run's");
}

#[test]
fn bad_device_lists_are_clear_errors() {
    let out = tempdir("peers-bad");
    let sets = tiny(&out, "bad");
    let run = |devices: &str, extra: &[&str]| {
        let mut args = with_sets(&["train", "configs/quickstart.toml", "--devices", devices], &sets);
        args.extend(extra);
        emulsion(&args)
    };
    fails_with(run("cpu:0,cpu:1,cpu:2", &[]), &["train.batch_size", "does not split evenly over 3 peers"]);
    fails_with(run("cpu:0,cpu:1", &["--set", "train.micro_batch=3"]), &["train.micro_batch", "each of the 2 peers trains 4 images"]);
    fails_with(run("cpu:0,wgpu:1", &[]), &["--devices", "of one kind"]);
    usage_error(run("cpu:x", &[]), &["device index"]);
}

/// `n` ports that were free a moment ago on 127.0.0.1.
fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<_> = (0..N).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    std::array::from_fn(|i| listeners[i].local_addr().unwrap().port())
}

/// The command line of node `rank` of a two-node run on 127.0.0.1: the orchestrator at
/// `ports[0]` (node 0 starts it), node r's data service at `ports[1 + r]`.
fn node_args(sets: &[String], rank: usize, ports: [u16; 3], extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["train", "configs/quickstart.toml", "--nodes", "2"].map(String::from).to_vec();
    args.extend(["--node-rank".into(), rank.to_string(), "--coordinator".into(), format!("127.0.0.1:{}", ports[0])]);
    args.extend(["--set".into(), format!("distributed.data_port={}", ports[1 + rank])]);
    for set in sets {
        args.extend(["--set".into(), set.clone()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn spawn_node(args: &[String]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_emulsion"))
        .args(args)
        .current_dir(repo())
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Runs both nodes of a two-node run on 127.0.0.1 to their end; their outputs in rank order.
fn two_nodes(sets: &[String], extra: &[&str]) -> [Output; 2] {
    let ports = free_ports::<3>();
    let nodes = [0, 1].map(|rank| spawn_node(&node_args(sets, rank, ports, extra)));
    nodes.map(|node| node.wait_with_output().unwrap())
}

/// Two processes on 127.0.0.1, joined by Burn's global orchestrator (started by node 0), train
/// what one process trains with the same global batch: with one peer per node, the same bits
/// (assignment `none`, and `lsa` over the global batch); with two peers per node (four in all),
/// within 1e-5 relative. Each run checks at its end that every peer holds the same weights.
#[test]
fn multi_node_runs_train_what_one_process_trains() {
    let out = tempdir("nodes");
    let sets = |name: &str, extra: &[&str]| {
        let mut sets = tiny(&out, name);
        // A minute, not the default ten, for a hung all-reduce to fail the test.
        sets.extend(["train.steps=20".to_string(), "train.checkpoint_every=20".into(), "train.sample_every=0".into(), "distributed.timeout_s=60".into()]);
        sets.extend(extra.iter().map(|s| s.to_string()));
        sets
    };
    let checkpoint = |name: &str| out.join(name).join("checkpoints/step-00000020");
    let one_process = |name: &str, extra: &[&str]| ok(emulsion(&with_sets(&["train", "configs/quickstart.toml", "--device", "cpu"], &sets(name, extra))));
    let both_nodes = |name: &str, extra: &[&str], devices: &[&str]| {
        let [node_0, node_1] = two_nodes(&sets(name, extra), devices);
        let (node_0, node_1) = (ok(node_0), ok(node_1));
        assert!(stderr(&node_1).contains("data-parallel: node 1 of 2"), "{}", stderr(&node_1));
        assert!(stderr(&node_0).contains("orchestrator: listening"), "{}", stderr(&node_0));
    };
    for method in ["none", "lsa"] {
        let assignment = format!("assignment.method={method}");
        one_process(&format!("one-{method}"), &["train.micro_batch=4", &assignment]);
        // micro_batch = 0: each node's shard (4 images) is its micro-batch.
        both_nodes(&format!("nodes-{method}"), &["train.micro_batch=0", &assignment], &["--device", "cpu"]);
        let model = |name: String| std::fs::read(checkpoint(&name).join("model.mpk")).unwrap();
        assert!(model(format!("one-{method}")) == model(format!("nodes-{method}")), "assignment {method}: two nodes' weights differ from one process's");
    }
    let export = |name: &str| {
        let file = out.join(format!("{name}.safetensors"));
        ok(emulsion(&["export", checkpoint(name).to_str().unwrap(), "--out", file.to_str().unwrap(), "--raw"]));
        safetensors_f32(&file)
    };
    one_process("one-4", &["train.micro_batch=2"]);
    both_nodes("nodes-4", &["train.micro_batch=0"], &["--devices", "cpu:0,cpu:1"]);
    let (one, four) = (export("one-4"), export("nodes-4"));
    let relative = relative_distance(&one, &four);
    assert!(relative <= 1e-5, "two nodes of two peers: ‖Δw‖/‖w‖ = {relative:e}");
}

/// Killing both nodes of a run after a checkpoint and resuming both (node 1 reads node 0's run
/// directory) trains the weights of the run that never stopped.
#[test]
fn a_killed_multi_node_run_resumes_to_the_uninterrupted_weights() {
    let out = tempdir("nodes-resume");
    let sets = |name: &str| {
        let mut sets = tiny(&out, name);
        sets.extend([
            "train.steps=30".to_string(),
            "train.checkpoint_every=3".into(),
            "train.sample_every=0".into(),
            "assignment.method=lsa".into(),
            "distributed.timeout_s=60".into(),
        ]);
        sets
    };
    for node in two_nodes(&sets("whole"), &["--device", "cpu"]) {
        ok(node);
    }
    let killed = sets("killed");
    let ports = free_ports::<3>();
    let mut nodes = [0, 1].map(|rank| spawn_node(&node_args(&killed, rank, ports, &["--device", "cpu"])));
    let checkpoints = out.join("killed/checkpoints");
    let deadline = Instant::now() + Duration::from_secs(120);
    while newest_step(&checkpoints).is_none() && Instant::now() < deadline && nodes.iter_mut().all(|n| n.try_wait().unwrap().is_none()) {
        std::thread::sleep(Duration::from_millis(20));
    }
    for node in &mut nodes {
        node.kill().unwrap(); // SIGKILL
        node.wait().unwrap();
    }
    let stopped_at = newest_step(&checkpoints);
    assert!(matches!(stopped_at, Some(step) if step < 30), "the kill came after step {stopped_at:?}: nothing to resume");
    for node in two_nodes(&killed, &["--device", "cpu", "--resume"]) {
        ok(node);
    }
    let last = |name: &str| std::fs::read(out.join(name).join("checkpoints/step-00000030/model.mpk")).unwrap();
    assert!(last("whole") == last("killed"), "resumed from step {stopped_at:?}: the weights differ from the uninterrupted run's");
}

/// Killing one node of a running pair makes the other exit non-zero within
/// `distributed.timeout_s`, with an error that names the node it waited for.
#[test]
fn killing_one_node_stops_the_other_within_the_timeout() {
    let out = tempdir("nodes-kill");
    for victim in [1, 0] {
        let mut sets = tiny(&out, &format!("kill-{victim}"));
        sets.extend(["train.steps=100000".to_string(), "train.checkpoint_every=1".into(), "train.sample_every=0".into(), "train.log_every=1000".into(), "distributed.timeout_s=5".into()]);
        let ports = free_ports::<3>();
        let mut nodes = [0, 1].map(|rank| Some(spawn_node(&node_args(&sets, rank, ports, &["--device", "cpu"]))));
        let checkpoints = out.join(format!("kill-{victim}/checkpoints"));
        let deadline = Instant::now() + Duration::from_secs(120);
        while newest_step(&checkpoints).unwrap_or(0) < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        // Both train: the kill lands mid-run, not on a node that never started.
        assert!(newest_step(&checkpoints).unwrap_or(0) >= 2, "no checkpoint within 120 s");
        for node in nodes.iter_mut().flatten() {
            assert!(node.try_wait().unwrap().is_none(), "a node ended before the kill");
        }
        let mut dead = nodes[victim].take().unwrap();
        dead.kill().unwrap(); // SIGKILL
        dead.wait().unwrap();
        let killed_at = Instant::now();
        let survivor = nodes[1 - victim].take().unwrap().wait_with_output().unwrap();
        let waited = killed_at.elapsed();
        let err = stderr(&survivor);
        assert_eq!(survivor.status.code(), Some(1), "node {} after node {victim} was killed ({}):\n{err}", 1 - victim, survivor.status);
        assert!(err.contains(&format!("the peers of node {victim}")) && err.contains("with --resume"), "node {}:\n{err}", 1 - victim);
        assert!(waited < Duration::from_secs(30), "node {} stopped {waited:?} after node {victim} was killed", 1 - victim);
    }
}

/// `--nodes`, `--node-rank` and `--coordinator` are checked with the config they complete: a
/// shared config may name the nodes and leave the coordinator to each node's command line.
#[test]
fn node_flags_are_checked_with_the_config() {
    let run = |extra: &[&str]| {
        let mut args = vec!["train", "configs/quickstart.toml", "--device", "cpu", "--dry-run"];
        args.extend(extra);
        emulsion(&args)
    };
    let shown = ok(run(&["--set", "distributed.nodes=2", "--node-rank", "1", "--coordinator", "127.0.0.1:29500"]));
    let toml = String::from_utf8_lossy(&shown.stdout);
    for line in ["nodes = 2", "node_rank = 1", "coordinator = \"127.0.0.1:29500\""] {
        assert!(toml.lines().any(|l| l.trim() == line), "the resolved config lacks {line:?}:\n{toml}");
    }
    fails_with(run(&["--nodes", "2"]), &["distributed.coordinator", "HOST:PORT"]);
    fails_with(run(&["--nodes", "2", "--node-rank", "2", "--coordinator", "h:1"]), &["distributed.node_rank", "below nodes = 2"]);
    fails_with(run(&["--nodes", "2", "--coordinator", "10.0.0.1:29500"]), &["distributed.node_address", "cannot reach"]);
    fails_with(run(&["--nodes", "3", "--coordinator", "127.0.0.1:29500"]), &["train.batch_size", "does not split evenly over 3 peers"]);
}
