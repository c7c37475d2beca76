//! Weights the rest of the world can use: checkpoints carry a sampling snapshot, identical runs
//! write identical weight files, an export reads back as the same network, sampling from it
//! draws what sampling the run draws, and `init_from` starts a run from it.

mod common;

use std::path::Path;

use burn::backend::{Autodiff, NdArray};
use burn::module::Module;
use emulsion_models::UNetConfig;
use emulsion_train::checkpoint::{self, Checkpoint, MODEL};
use emulsion_train::export::{self, SNAPSHOT_FILE};
use emulsion_train::trainer::{Recipe, Trainer};
use emulsion_train::{Config, SampleRequest, TrainOptions};

type B = Autodiff<NdArray<f32>>;

/// The backend's random generator is one per process: runs that draw from it must not overlap.
fn one_run_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The quick start's conditional network with attention, 3 steps of 4 images, one checkpoint.
fn config(out: &Path, name: &str, extra: &[&str]) -> Config {
    let mut overrides: Vec<String> = ["train.steps=3", "train.batch_size=4", "train.checkpoint_every=3", "train.warmup_steps=1", "model.attn_resolutions=[7]", "model.num_heads=2", "sample.steps=3"]
        .map(String::from)
        .to_vec();
    overrides.extend(extra.iter().map(|s| s.to_string()));
    common::quickstart_config(out, name, &overrides)
}

fn train(config: &Config, options: TrainOptions) {
    emulsion_train::train::<B>(config, &Default::default(), &TrainOptions { overwrite: true, ..options }).unwrap();
}

fn newest_checkpoint(config: &Config) -> std::path::PathBuf {
    checkpoint::latest(&config.run_dir().join("checkpoints")).unwrap()
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn identical_runs_write_identical_weight_files() {
    let _rng = one_run_at_a_time();
    let root = common::tempdir("export-bytes");
    let run = config(&root, "same", &[]);
    train(&run, TrainOptions::default());
    let first = newest_checkpoint(&run);
    let (snapshot, model) = (read(&first.join(SNAPSHOT_FILE)), read(&first.join("model.mpk")));
    // The same run again, in the same place (the recorded config names the run directory).
    train(&run, TrainOptions::default());
    let second = newest_checkpoint(&run);
    assert!(read(&second.join(SNAPSHOT_FILE)) == snapshot, "the sampling snapshots differ");
    assert!(read(&second.join("model.mpk")) == model, "the model records differ");
    let out = root.join("a.safetensors");
    export::export::<NdArray<f32>>(&run.run_dir(), false, &out, &Default::default()).unwrap();
    let exported = read(&out);
    export::export::<NdArray<f32>>(&second, false, &out, &Default::default()).unwrap();
    assert!(read(&out) == exported, "two exports of one checkpoint differ");
    // The snapshot is the EMA's export.
    assert!(exported == snapshot, "the export of the EMA is not the snapshot");
}

#[test]
fn an_export_is_the_checkpoints_network_and_samples_alike() {
    let _rng = one_run_at_a_time();
    let root = common::tempdir("export-roundtrip");
    let run = config(&root, "roundtrip", &[]);
    train(&run, TrainOptions::default());
    let device = Default::default();
    let dir = newest_checkpoint(&run);
    let ckpt = Checkpoint::open(&dir).unwrap();
    let unet: UNetConfig = serde_json::from_str(&ckpt.read_file("unet.json").unwrap()).unwrap();
    let trainer: Trainer<NdArray<f32>> = Recipe::from_config(&run).unwrap().init(&unet, &device);
    let trainer = trainer.load_record(ckpt.load(MODEL, &device).unwrap());
    for raw in [false, true] {
        let out = root.join(if raw { "raw.safetensors" } else { "ema.safetensors" });
        export::export::<NdArray<f32>>(&dir, raw, &out, &device).unwrap();
        let exported = export::load::<NdArray<f32>>(&out, &device).unwrap();
        let expected = if raw { &trainer.net } else { &trainer.ema };
        let (a, b) = (common::weights(&exported.net), common::weights(expected));
        assert!(a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "raw = {raw}: the export reads back as other weights");
        assert_eq!((exported.info.weights.as_str(), exported.info.step), (if raw { "raw" } else { "ema" }, 3));
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.with_extension("json")).unwrap()).unwrap();
        assert_eq!(json["songunet"]["label_dim"], 10);
        assert_eq!(json["songunet"]["img_resolution"], 28);
    }
    // `emulsion sample` draws the same grid from the run and from its export.
    let request = |out: &Path| SampleRequest { n: 3, sampler: None, steps: Some(3), eta: None, seed: Some(5), guidance: None, clip_denoised: None, out: out.to_path_buf() };
    let from_run = emulsion_train::sample::<NdArray<f32>>(&run.run_dir(), &request(&root.join("run.png")), &device).unwrap();
    let from_file = emulsion_train::sample::<NdArray<f32>>(&root.join("ema.safetensors"), &request(&root.join("file.png")), &device).unwrap();
    assert!(read(&from_run) == read(&from_file), "the grids differ");
    // A file that is not an export says so.
    std::fs::write(root.join("junk.safetensors"), b"junk").unwrap();
    let e = emulsion_train::sample::<NdArray<f32>>(&root.join("junk.safetensors"), &request(&root.join("x.png")), &device).unwrap_err().to_string();
    assert!(e.contains("junk.safetensors") && e.contains("not a safetensors file"), "{e}");
}

#[test]
fn init_from_starts_the_network_and_its_ema_from_the_weights() {
    let _rng = one_run_at_a_time();
    let root = common::tempdir("export-init");
    let source = config(&root, "source", &[]);
    train(&source, TrainOptions::default());
    let weights = root.join("source.safetensors");
    export::export::<NdArray<f32>>(&source.run_dir(), false, &weights, &Default::default()).unwrap();
    // A learning rate too small to move an f32 weight: the run ends where it started.
    let tuned = config(&root, "tuned", &["run.seed=9", "train.lr=1e-30"]);
    train(&tuned, TrainOptions { init_from: Some(weights.clone()), ..Default::default() });
    let device = Default::default();
    let start = common::weights(&export::load::<NdArray<f32>>(&weights, &device).unwrap().net);
    let end = common::weights(&export::load::<NdArray<f32>>(&newest_checkpoint(&tuned).join(SNAPSHOT_FILE), &device).unwrap().net);
    assert_eq!(start.len(), end.len());
    let worst = start.iter().zip(&end).map(|(a, b)| (a - b).abs() / a.abs().max(1e-3)).fold(0f32, f32::max);
    assert!(worst < 1e-5, "the tuned run did not start from the weights (relative change {worst})");
    // Weights of another network are refused by name, before `overwrite` deletes anything.
    let wider = config(&root, "wider", &["model.channels=16"]);
    train(&wider, TrainOptions::default());
    let e = emulsion_train::train::<B>(&wider, &device, &TrainOptions { overwrite: true, init_from: Some(weights), ..Default::default() }).unwrap_err().to_string();
    assert!(e.contains("source.safetensors") && e.contains("has shape"), "{e}");
    assert!(newest_checkpoint(&wider).join(SNAPSHOT_FILE).is_file(), "the run that was to be overwritten is still there");
}
