//! A short training run on the quick-start data (the shipped Fashion-MNIST test split) works
//! with every schedule, and the run directory records which one was used.

mod common;

use std::path::Path;

use burn::backend::{Autodiff, NdArray};
use emulsion_schedule::Curve;
use emulsion_train::journal::train_lines;
use emulsion_train::trainer::Recipe;
use emulsion_train::{Config, Resume, TrainOptions};

type B = Autodiff<NdArray<f32>>;

#[test]
fn every_schedule_trains_on_the_quickstart_data() {
    let out = common::tempdir("schedules");
    let mut weights = Vec::new();
    for curve in Curve::defaults() {
        let kind = curve.name();
        let overrides: Vec<String> = [
            "data.limit=16".into(),
            "model.channel_mult=[1, 2]".into(),
            format!("diffusion.schedule={kind}"),
            "diffusion.shift=1.5".into(),
            "train.batch_size=4".into(),
            "train.steps=2".into(),
            "train.warmup_steps=0".into(),
            "train.checkpoint_every=2".into(),
            "sample.steps=3".into(),
            "sample.spacing=schedule".into(),
        ]
        .into();
        let config = common::quickstart_config(&out, &kind.to_string(), &overrides);
        assert_eq!(Recipe::from_config(&config).unwrap().objective.schedule().curve(), &curve);
        let options = TrainOptions { resume: Resume::No, overwrite: true, ..Default::default() };
        let report = emulsion_train::train::<B>(&config, &Default::default(), &options).unwrap();
        assert!(report.last_samples.is_some_and(|p| p.exists()), "{kind}: samples were drawn");

        let run = config.run_dir();
        let journal = train_lines(&run.join("metrics.jsonl")).unwrap();
        assert_eq!(journal.len(), 2, "{kind}");
        assert!(journal.iter().all(|l| l.loss.is_finite() && l.loss > 0.0), "{kind}: {journal:?}");
        weights.push(std::fs::read(run.join("checkpoints/step-00000002/model.mpk")).unwrap());

        let recorded = std::fs::read_to_string(run.join("config.toml")).unwrap();
        let recorded = Config::from_toml(&recorded, Path::new("config.toml"), &[]).unwrap();
        assert_eq!((recorded.diffusion.curve(), recorded.diffusion.shift), (curve, 1.5));
    }
    // Same seed, data and noise: only the noise levels differ, and so do the trained weights.
    for (i, a) in weights.iter().enumerate() {
        for (j, b) in weights.iter().enumerate().skip(i + 1) {
            assert_ne!(a, b, "{} and {} trained identical weights", Curve::NAMES[i], Curve::NAMES[j]);
        }
    }
    std::fs::remove_dir_all(&out).unwrap();
}
