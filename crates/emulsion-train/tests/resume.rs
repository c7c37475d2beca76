//! Training 2N steps in one go and training N, stopping, resuming and training N more give
//! bitwise-identical weights (and EMA, and optimiser state) on the ndarray backend.

mod common;

use std::path::Path;

use burn::backend::{Autodiff, NdArray};
use burn::module::Module;
use emulsion_train::checkpoint::{self, Checkpoint, MODEL};
use emulsion_train::trainer::{Recipe, Trainer};
use emulsion_train::{Config, Resume, TrainOptions};

type B = Autodiff<NdArray<f32>>;

/// The backend's random generator is one per process: runs that draw from it must not overlap.
fn one_run_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn config(data: &Path, out: &Path, name: &str, steps: usize, (diffusion, sampler): (&str, &str)) -> Config {
    let text = format!(
        r#"
[run]
name = "{name}"
out_dir = "{out}"
seed = 7

[data]
dataset = "idx"
path = "{data}"
hflip = true

[model]
channels = 8
channel_mult = [1, 2]
num_blocks = 1
attn_resolutions = [4]
num_heads = 2
dropout = 0.2
class_conditional = true
label_dropout = 0.3

[diffusion]
{diffusion}

[assignment]
method = "lsa"

[train]
batch_size = 6
steps = {steps}
lr = 1e-3
warmup_steps = 2
ema_decay = 0.9
grad_clip = 0.5
checkpoint_every = 3
sample_every = 0
log_every = 1

[sample]
sampler = "{sampler}"
n = 2
steps = 2
"#,
        out = out.display(),
        data = data.display(),
    );
    Config::from_toml(&text, Path::new("resume.toml"), &[]).unwrap()
}

fn final_model(run_dir: &Path, config: &Config) -> (Vec<f32>, Vec<f32>, u64) {
    let ckpt = Checkpoint::open(&checkpoint::latest(&run_dir.join("checkpoints")).unwrap()).unwrap();
    let device = Default::default();
    let unet = config.unet_config(8, 1, 10);
    let trainer: Trainer<NdArray<f32>> =
        Recipe::from_config(config).unwrap().init(&unet, &device).load_record(ckpt.load(MODEL, &device).unwrap());
    (common::weights(&trainer.net), common::weights(&trainer.ema), ckpt.state.step)
}

/// The quick VP recipe; FDM, whose loss-weight clamp (warm-up 4) changes between the checkpoint
/// at step 3 and the end; consistency training, whose curriculum (laid out over `diffusion.objective.steps`, not
/// the `train.steps` that the first half stops at) doubles its levels at step 3.
const RECIPES: [(&str, (&str, &str)); 3] = [
    ("vp", ("objective = \"vp\"", "ddim")),
    ("fdm", ("schedule = \"lognormal\"\nobjective.type = \"fdm\"\nobjective.warmup = 4", "heun")),
    ("ct", ("schedule = \"lognormal\"\nobjective.type = \"ct\"\nobjective.steps = 6\nobjective.curriculum = { type = \"ict\", s0 = 2, s1 = 4 }", "consistency")),
];

#[test]
fn resuming_reproduces_the_uninterrupted_run_bit_for_bit() {
    let _rng = one_run_at_a_time();
    let root = common::tempdir("resume");
    let data = root.join("data");
    std::fs::create_dir_all(&data).unwrap();
    // 10 images, batches of 6: epochs are crossed mid-batch, and the stop falls mid-epoch.
    common::write_idx_dataset(&data, 10, 8);
    let device = Default::default();

    for (recipe, diffusion) in RECIPES {
        let run = |name: &str, steps: usize| config(&data, &root, &format!("{recipe}-{name}"), steps, diffusion);
        let straight = run("straight", 6);
        emulsion_train::train::<B>(&straight, &device, &TrainOptions::default()).unwrap();

        let first_half = run("resumed", 3);
        emulsion_train::train::<B>(&first_half, &device, &TrainOptions::default()).unwrap();
        let second_half = run("resumed", 6);
        let report = emulsion_train::train::<B>(&second_half, &device, &TrainOptions { resume: Resume::Latest, ..Default::default() }).unwrap();
        assert_eq!((report.start_step, report.last_step), (3, 6));

        let (net_a, ema_a, step_a) = final_model(&straight.run_dir(), &straight);
        let (net_b, ema_b, step_b) = final_model(&second_half.run_dir(), &second_half);
        assert_eq!((step_a, step_b), (6, 6));
        assert!(net_a.iter().zip(&net_b).all(|(a, b)| a.to_bits() == b.to_bits()), "{recipe}: weights differ after resume");
        assert!(ema_a.iter().zip(&ema_b).all(|(a, b)| a.to_bits() == b.to_bits()), "{recipe}: EMA differs after resume");
        assert_eq!(net_a.len(), net_b.len());

        // The weights moved, and the EMA lags behind them: the test is not comparing two copies
        // of the initialisation.
        let init = common::weights(&Recipe::from_config(&straight).unwrap().init::<NdArray<f32>>(&straight.unet_config(8, 1, 10), &device).net);
        assert!(net_a.iter().zip(&init).any(|(a, b)| a != b));
        assert!(net_a.iter().zip(&ema_a).any(|(a, b)| a != b));

        let steps: Vec<u64> = checkpoint::list(&second_half.run_dir().join("checkpoints")).unwrap().into_iter().map(|(s, _)| s).collect();
        assert_eq!(steps, vec![3, 6]);

        // A different seed gives a different run.
        let mut other = run("other", 6);
        other.run.seed = 8;
        emulsion_train::train::<B>(&other, &device, &TrainOptions::default()).unwrap();
        let (net_c, _, _) = final_model(&other.run_dir(), &other);
        assert_ne!(net_c, net_a);
    }
}

/// The journal does not depend on where a run was resumed: with a line every 5 steps and a
/// checkpoint every 3, the run stopped at step 3 and resumed logs at steps 5 and 10 the same loss
/// and assigned distance as the run that was never stopped (their windows straddle the stop).
#[test]
fn a_resumed_run_logs_the_same_journal_as_the_uninterrupted_one() {
    let _rng = one_run_at_a_time();
    let root = common::tempdir("journal");
    let data = root.join("data");
    std::fs::create_dir_all(&data).unwrap();
    common::write_idx_dataset(&data, 10, 8);
    let device = Default::default();
    let run = |name: &str, steps: usize| {
        let mut c = config(&data, &root, name, steps, RECIPES[0].1);
        c.train.log_every = 5;
        c
    };
    emulsion_train::train::<B>(&run("straight", 10), &device, &TrainOptions::default()).unwrap();
    emulsion_train::train::<B>(&run("resumed", 4), &device, &TrainOptions::default()).unwrap();
    // The first session wrote its checkpoint at step 3 and stopped at step 4; resume at 3.
    let resumed = run("resumed", 10);
    let report = emulsion_train::train::<B>(&resumed, &device, &TrainOptions { resume: Resume::From(resumed.run_dir().join("checkpoints/step-00000003")), ..Default::default() }).unwrap();
    assert_eq!(report.start_step, 3);
    let lines = |name: &str| -> Vec<(u64, f64, Option<f64>)> {
        emulsion_train::journal::train_lines(&root.join(name).join("metrics.jsonl"))
            .unwrap()
            .into_iter()
            .filter(|l| l.step % 5 == 0)
            .map(|l| (l.step, l.loss, l.assign_distance))
            .collect()
    };
    let (straight, resumed) = (lines("straight"), lines("resumed"));
    assert_eq!(straight.iter().map(|l| l.0).collect::<Vec<_>>(), vec![5, 10]);
    assert_eq!(resumed, straight, "the journal after resuming at step 3");
}
