//! Every objective trains a few steps on the quick-start data with finite losses, with the
//! preconditioning it needs for sampling, and a sample from its checkpoint is an image.

mod common;

use burn::backend::{Autodiff, NdArray};
use emulsion_train::monitor::read_journal;
use emulsion_train::{Config, Resume, SampleRequest, TrainOptions};

type B = Autodiff<NdArray<f32>>;

#[test]
fn every_objective_trains_and_samples() {
    let out = common::tempdir("objectives");
    let cases: [(&str, &[&str]); 6] = [
        ("vp-eps", &["diffusion.objective=vp"]),
        ("vp-v", &["diffusion.objective=vp", "diffusion.target=v"]),
        ("vp-x0", &["diffusion.objective=vp", "diffusion.target=x0", "sample.sampler=heun"]),
        ("edm", &["diffusion.objective=edm", "diffusion.schedule=lognormal", "diffusion.sigma_data=0.5", "sample.sampler=heun", "sample.spacing=karras"]),
        ("flow", &["diffusion.objective=flow", "diffusion.schedule=flow", "sample.sampler=euler", "assignment.method=lsa"]),
        ("flow-dpm", &["diffusion.objective=flow", "sample.sampler=dpmpp_2m", "assignment.method=knn"]),
    ];
    for (name, extra) in cases {
        let mut overrides: Vec<String> =
            ["data.limit=32", "model.channel_mult=[1]", "train.batch_size=8", "train.steps=2", "train.checkpoint_every=2", "sample.steps=3"]
                .map(String::from)
                .into();
        overrides.extend(extra.iter().map(|s| s.to_string()));
        let config = common::quickstart_config(&out, name, &overrides);
        emulsion_train::train::<B>(&config, &Default::default(), &TrainOptions { resume: Resume::No, overwrite: true }).unwrap();
        let journal = read_journal(&config.run_dir().join("metrics.jsonl")).unwrap();
        assert_eq!(journal.len(), 2, "{name}");
        assert!(journal.iter().all(|l| l.loss.is_finite() && l.loss > 0.0), "{name}: {journal:?}");
        let grid = out.join(format!("{name}.png"));
        let request = SampleRequest { n: 2, sampler: None, steps: None, eta: None, seed: None, guidance: None, clip_denoised: None, out: grid.clone() };
        emulsion_train::sample::<burn::backend::NdArray<f32>>(&config.run_dir(), &request, &Default::default()).unwrap();
        assert!(grid.is_file(), "{name}");
    }
    // Options that belong to another objective are errors that say why.
    for (set, key) in [("diffusion.target=v", "diffusion.target"), ("diffusion.sigma_data=0.5", "diffusion.sigma_data")] {
        let overrides = ["diffusion.objective=flow".to_string(), set.to_string()];
        let e = Config::load(&common::repo().join("configs/quickstart.toml"), &overrides).unwrap_err().to_string();
        assert!(e.contains(&format!("`{key}`")) && e.contains("flow"), "{e}");
    }
    std::fs::remove_dir_all(&out).unwrap();
}
