//! Every objective trains a small MLP on a 2-D mixture of Gaussians, on the CPU, to samples
//! measurably closer to the data (sliced Wasserstein distance) than the untrained network's.

use burn::backend::{Autodiff, NdArray};
use burn::module::AutodiffModule;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::Distribution;
use emulsion_models::{FdmBase, Mlp, MlpConfig};
use emulsion_schedule::ict::IctCurriculum;
use emulsion_schedule::polynomial::{PolynomialLevels, SinusoidalCurriculum};
use emulsion_schedule::process::lambda_of_edm_sigma;
use emulsion_schedule::{Curve, LogNormal, Schedule};
use emulsion_sample::{Generator, SampleConfig, SamplerKind, Spacing};
use emulsion_train::objective::{ConsistencyTraining, Curriculum, Edm, Fdm, FdmConfig, Flow, LevelChoice, Objective, ObjectiveInput, Vp, VpTarget};
use emulsion_train::seeds::{self, Stream};

type B = NdArray<f32>;
type AB = Autodiff<B>;

const STEPS: usize = 1200;
const BATCH: usize = 256;
const SAMPLES: usize = 2000;

/// Four Gaussians of standard deviation 0.1 at `(±0.5, ±0.5)`: `[n, 2, 1, 1]`.
fn mixture<Bk: Backend>(n: usize, device: &Bk::Device) -> Tensor<Bk, 4> {
    let centers = Tensor::<Bk, 2>::from_floats([[0.5, 0.5], [-0.5, 0.5], [0.5, -0.5], [-0.5, -0.5]], device);
    let which = Tensor::<Bk, 1, Int>::random([n], Distribution::Uniform(0.0, 4.0), device);
    let points = centers.select(0, which) + Tensor::random([n, 2], Distribution::Normal(0.0, 0.1), device);
    points.reshape([n, 2, 1, 1])
}

/// The sliced Wasserstein-1 distance between two equal-sized point sets, over 64 directions.
fn sliced_wasserstein(a: &[f32], b: &[f32]) -> f64 {
    let directions = 64;
    (0..directions)
        .map(|k| {
            let angle = std::f64::consts::PI * k as f64 / directions as f64;
            let project = |p: &[f32]| {
                let mut v: Vec<f64> = p.chunks(2).map(|q| q[0] as f64 * angle.cos() + q[1] as f64 * angle.sin()).collect();
                v.sort_by(f64::total_cmp);
                v
            };
            let (pa, pb) = (project(a), project(b));
            pa.iter().zip(&pb).map(|(x, y)| (x - y).abs()).sum::<f64>() / pa.len() as f64
        })
        .sum::<f64>()
        / directions as f64
}

fn samples(net: &Mlp<B>, objective: &Objective, sampler: SamplerKind, steps: usize) -> Vec<f32> {
    // The data lie in [-1, 1]; the VP and VE networks clip their estimates there, as DDPM does:
    // their D = x ∓ s F multiplies an error of F by s.
    let clip_denoised = matches!(objective, Objective::Vp(_) | Objective::Fdm(Fdm { base: FdmBase::Vp {} | FdmBase::Ve {}, .. }));
    let options = SampleConfig { sampler, steps, n: SAMPLES, clip_denoised, spacing: Spacing::Karras, seed: 3, ..Default::default() };
    let generator = Generator { precond: objective.precond(), schedule: objective.schedule().clone(), shape: [2, 1] };
    generator.generate(net, &options, 0..SAMPLES, seeds::derive(options.seed, Stream::Sample, 0), &Default::default()).into_data().to_vec().unwrap()
}

/// Trains from a fixed initialisation and returns the distances to fresh data of the untrained
/// and the trained network's samples.
fn train_and_measure(objective: &Objective, sampler: SamplerKind, steps: usize) -> (f64, f64) {
    let device = Default::default();
    <AB as Backend>::seed(&device, 0);
    let mut net: Mlp<AB> = MlpConfig::new(2).init(&device);
    let data: Vec<f32> = mixture::<B>(SAMPLES, &device).into_data().to_vec().unwrap();
    let before = sliced_wasserstein(&samples(&net.valid(), objective, sampler, steps), &data);
    let mut optim = AdamConfig::new().init::<AB, Mlp<AB>>();
    for step in 0..STEPS {
        <AB as Backend>::seed(&device, 1000 + step as u64);
        let x0 = mixture::<AB>(BATCH, &device);
        let noise = Tensor::random(x0.shape(), Distribution::Normal(0.0, 1.0), &device);
        let loss = objective.loss(&net, ObjectiveInput { x0, noise, labels: None, step: step as u64 }).mean();
        let grads = GradientsParams::from_grads(loss.backward(), &net);
        let lr = if step < STEPS * 3 / 4 { 2e-3 } else { 5e-4 };
        net = optim.step(lr, net, grads);
    }
    let after = sliced_wasserstein(&samples(&net.valid(), objective, sampler, steps), &data);
    (before, after)
}

/// `[s_min, s_max] = [0.002, 80]` as a log-SNR range.
fn edm_range(curve: Curve) -> Schedule {
    Schedule::new(curve, lambda_of_edm_sigma(80.0), lambda_of_edm_sigma(0.002), 1.0).unwrap()
}

fn lognormal(p_mean: f64, p_std: f64) -> Curve {
    Curve::LogNormal(LogNormal { p_mean, p_std })
}

/// The backend's generator is one global: the two tests take turns.
fn lock_rng() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn check(name: &str, objective: Objective, sampler: SamplerKind, steps: usize) {
    let (before, after) = train_and_measure(&objective, sampler, steps);
    eprintln!("{name}: sliced W1 to the data {before:.4} untrained -> {after:.4} trained");
    // Measured (ndarray, this seed): 0.018 (EDM) to 0.152 (VP x₀, whose D = F has no skip)
    // against 0.13 to 0.45 untrained.
    assert!(after < 0.4 * before && after < 0.2, "{name}: {before} -> {after}");
}

#[test]
fn diffusion_objectives_learn_a_2d_mixture() {
    let _rng = lock_rng();
    let cosine = Schedule::cosine(-10.0, 10.0).unwrap();
    for target in [VpTarget::Eps, VpTarget::V, VpTarget::X0] {
        check(&format!("vp-{target:?}"), Objective::Vp(Vp { schedule: cosine.clone(), target }), SamplerKind::Heun, 18);
    }
    let edm = edm_range(lognormal(-1.2, 1.2));
    check("edm", Objective::Edm(Edm { schedule: edm.clone(), sigma_data: 0.5 }), SamplerKind::Heun, 18);
    let flow = Schedule::new(Curve::Flow {}, -10.0, 10.0, 1.0).unwrap();
    check("flow", Objective::Flow(Flow { schedule: flow }), SamplerKind::Euler, 32);
    // Each FDM variant as configured (official τ ranges and warm-ups), on its base's levels:
    // EDM's log-normal, VP's and VE's cosine over their official ranges.
    let ve = Schedule::cosine(lambda_of_edm_sigma(100.0), lambda_of_edm_sigma(0.02)).unwrap();
    for (name, base, schedule) in [("fdm-edm", FdmBase::Edm { sigma_data: 0.5 }, edm.clone()), ("fdm-vp", FdmBase::Vp {}, cosine.clone()), ("fdm-ve", FdmBase::Ve {}, ve)] {
        let fdm = FdmConfig { base, ..Default::default() }.init(schedule);
        check(name, Objective::Fdm(fdm), SamplerKind::Heun, 18);
    }
}

#[test]
fn consistency_training_learns_a_2d_mixture() {
    let _rng = lock_rng();
    let ct = ConsistencyTraining {
        schedule: edm_range(lognormal(-1.1, 2.0)),
        sigma_data: 0.5,
        rho: 7.0,
        levels: LevelChoice::Schedule {},
        curriculum: Curriculum::Ict(IctCurriculum::default()),
        total_steps: STEPS as u64,
        huber_c: None,
    };
    check("ct (iCT)", Objective::Consistency(ct.clone()), SamplerKind::Consistency, 2);
    // Gokmen et al.: polynomial placement on a predefined Karras vector, sinusoidal curriculum.
    let gokmen = ConsistencyTraining {
        levels: LevelChoice::Polynomial(PolynomialLevels::default()),
        curriculum: Curriculum::Sinusoidal(SinusoidalCurriculum::default()),
        ..ct
    };
    check("ct (polynomial, sinusoidal)", Objective::Consistency(gokmen), SamplerKind::Consistency, 2);
}
