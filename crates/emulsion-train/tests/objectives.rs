//! Every objective trains a few steps on the quick-start data with finite losses, with the
//! preconditioning it needs for sampling, and a sample from its checkpoint is an image.

mod common;

use burn::backend::{Autodiff, NdArray};
use emulsion_train::journal::train_lines;
use emulsion_train::{Config, Resume, SampleRequest, TrainOptions};

type B = Autodiff<NdArray<f32>>;

#[test]
fn every_objective_trains_and_samples() {
    let out = common::tempdir("objectives");
    let cases: [(&str, &[&str]); 11] = [
        ("vp-eps", &["diffusion.objective=vp"]),
        ("vp-v", &["diffusion.objective=vp", "diffusion.objective.target=v"]),
        ("vp-x0", &["diffusion.objective=vp", "diffusion.objective.target=x0", "sample.sampler=heun"]),
        ("edm", &["diffusion.objective=edm", "diffusion.schedule=lognormal", "diffusion.objective.sigma_data=0.5", "sample.sampler=heun", "sample.spacing=karras"]),
        ("flow", &["diffusion.objective=flow", "diffusion.schedule=flow", "sample.sampler=euler", "assignment.method=lsa"]),
        ("flow-dpm", &["diffusion.objective=flow", "sample.sampler=dpmpp_2m", "assignment.method=knn"]),
        ("fdm-edm", &["diffusion.objective=fdm", "diffusion.schedule=lognormal", "sample.sampler=heun", "assignment.method=lsa"]),
        ("fdm-vp", &["diffusion.objective=fdm", "diffusion.objective.base=vp", "diffusion.objective.multiplier=1.5", "sample.sampler=dpmpp_2m"]),
        ("fdm-ve", &["diffusion.objective=fdm", "diffusion.objective.base=ve", "diffusion.objective.warmup=0", "sample.sampler=euler"]),
        ("ct", &["diffusion.objective=ct", "diffusion.schedule=lognormal", "sample.sampler=consistency", "sample.steps=2", "assignment.method=knn"]),
        ("ct-polynomial", &["diffusion.objective=ct", "diffusion.objective.levels=polynomial", "diffusion.objective.curriculum=sinusoidal", "sample.sampler=consistency", "sample.steps=1"]),
    ];
    for (name, extra) in cases {
        let mut overrides: Vec<String> =
            ["data.limit=32", "model.channel_mult=[1]", "train.batch_size=8", "train.steps=2", "train.checkpoint_every=2", "sample.steps=3"]
                .map(String::from)
                .into();
        overrides.extend(extra.iter().map(|s| s.to_string()));
        let config = common::quickstart_config(&out, name, &overrides);
        emulsion_train::train::<B>(&config, &Default::default(), &TrainOptions { resume: Resume::No, overwrite: true, ..Default::default() }).unwrap();
        let journal = train_lines(&config.run_dir().join("metrics.jsonl")).unwrap();
        assert_eq!(journal.len(), 2, "{name}");
        assert!(journal.iter().all(|l| l.loss.is_finite() && l.loss > 0.0), "{name}: {journal:?}");
        let grid = out.join(format!("{name}.png"));
        let request = SampleRequest { n: 2, sampler: None, steps: None, eta: None, seed: None, guidance: None, clip_denoised: None, out: grid.clone() };
        emulsion_train::sample::<burn::backend::NdArray<f32>>(&config.run_dir(), &request, &Default::default()).unwrap();
        assert!(grid.is_file(), "{name}");
    }
    // Options that belong to another objective are errors that say why.
    let quickstart = common::repo().join("configs/quickstart.toml");
    for set in ["diffusion.objective.target=v", "diffusion.objective.sigma_data=0.5", "diffusion.objective.warmup=10", "diffusion.objective.rho=7"] {
        let key = set.split('=').next().unwrap();
        let overrides = ["diffusion.objective=flow".to_string(), set.to_string()];
        let e = Config::load(&quickstart, &overrides).unwrap_err().to_string();
        assert!(e.contains(&format!("`{key}`")) && e.contains("does not apply to `type = \"flow\"`"), "{e}");
    }
    // Combinations that make no sense, each refused with the key and the reason.
    let refused: [(&[&str], &str, &str); 5] = [
        (&["diffusion.objective=ct"], "sample.sampler", "consistency"),
        (&["sample.sampler=consistency"], "sample.sampler", "consistency model"),
        (&["diffusion.objective=fdm", "diffusion.objective.base=ve", "diffusion.objective.multiplier=2"], "diffusion.objective.multiplier", "VE-FDM"),
        (&["diffusion.objective=fdm", "diffusion.objective.base=vp", "diffusion.objective.base.sigma_data=0.5"], "diffusion.objective.base.sigma_data", "`type = \"vp\"`"),
        (&["diffusion.objective=ct", "sample.sampler=consistency", "diffusion.objective.levels=polynomial", "diffusion.schedule=laplace"], "diffusion.schedule", "polynomial"),
    ];
    for (sets, key, why) in refused {
        let overrides: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let e = Config::load(&quickstart, &overrides).unwrap_err().to_string();
        assert!(e.contains(&format!("`{key}`")) && e.contains(why), "{sets:?}: {e}");
    }
    // `emulsion sample --sampler` on a run of the other kind is refused too.
    let ct_run = common::quickstart_config(&out, "ct", &[]).run_dir();
    let request = SampleRequest { n: 2, sampler: Some(emulsion_sample::SamplerKind::Heun), steps: None, eta: None, seed: None, guidance: None, clip_denoised: None, out: out.join("x.png") };
    let e = emulsion_train::sample::<burn::backend::NdArray<f32>>(&ct_run, &request, &Default::default()).unwrap_err().to_string();
    assert!(e.contains("`sample.sampler`") && e.contains("consistency"), "{e}");
    std::fs::remove_dir_all(&out).unwrap();
}
