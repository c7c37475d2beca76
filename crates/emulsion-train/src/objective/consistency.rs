//! Consistency training, the iCT recipe (Song & Dhariwal 2023):
//! `L = (√(‖f(x₀ + s_{i+1} ε, s_{i+1}) − sg f(x₀ + s_i ε, s_i)‖² + c²) − c) / (s_{i+1} − s_i)`,
//! the same `ε` for both points, `sg` the same network without gradient (no EMA teacher), `f` the
//! consistency-model parameterisation ([`Precond::Consistency`]), `c = 0.00054 √d`.
//! The levels are `N(k)` Karras levels (iCT's doubling curriculum, or Gokmen et al.'s sinusoidal
//! one); the pair index `i` is drawn from the schedule's mass between adjacent levels (iCT: the
//! `lognormal` schedule with `P_mean = −1.1`, `P_std = 2`), or placed by Gokmen et al.'s
//! polynomial on one predefined Karras vector.

use burn::prelude::*;
use burn::tensor::{Distribution, ElementConversion, TensorData};
use emulsion_config::Invalid;
use emulsion_models::precond::per_sample;
use emulsion_models::{Network, Precond};
use emulsion_schedule::ict::{level_probabilities, sample_indices, IctCurriculum};
use emulsion_schedule::karras::Karras;
use emulsion_schedule::polynomial::{PolynomialLevels, PredefinedLevels, SinusoidalCurriculum};
use emulsion_schedule::Schedule;
use serde::{Deserialize, Serialize};

use super::ObjectiveInput;

/// `[diffusion.objective]` with `type = "ct"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CtConfig {
    /// The data standard deviation `s_d` of the parameterisation.
    pub sigma_data: f64,
    /// Karras' `ρ` of the levels (and the sinusoidal curriculum's exponent `(ρ − 1)/4`).
    pub rho: f64,
    /// How many levels there are at each step: `ict` (`s0`, `s1`) or `sinusoidal`
    /// (`n_init`, `n_final`). The sinusoidal curriculum's `ρ` is not read from here but set to
    /// `rho` by [`CtConfig::init`]: use the curriculum of the built objective.
    pub curriculum: Curriculum,
    /// Where each sample's pair of levels is: `schedule` or `polynomial` (`curve`, `jitter`).
    pub levels: LevelChoice,
    /// The pseudo-Huber `c`; default `0.00054 √d`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub huber_c: Option<f64>,
    /// The steps `K` the curriculum is laid out over; default `train.steps`. Set it to extend
    /// a finished run (a larger `train.steps` and `--resume`) without re-laying `N(k)`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<u64>,
}

impl Default for CtConfig {
    fn default() -> Self {
        Self {
            sigma_data: emulsion_models::precond::DEFAULT_SIGMA_DATA,
            rho: 7.0,
            curriculum: Curriculum::Ict(IctCurriculum::default()),
            levels: LevelChoice::Schedule {},
            huber_c: None,
            steps: None,
        }
    }
}

impl CtConfig {
    /// A bound on the number of levels: each micro-batch compares its draws against every level.
    const MAX_LEVELS: usize = 65_536;

    /// The objective on `schedule` (its log-SNR range is `[s_min, s_max]`) for a run of
    /// `total_steps` steps (unless `steps` says otherwise).
    pub fn init(&self, schedule: Schedule, total_steps: u64) -> ConsistencyTraining {
        let curriculum = match self.curriculum {
            Curriculum::Sinusoidal(c) => Curriculum::Sinusoidal(SinusoidalCurriculum { rho: self.rho, ..c }),
            ict => ict,
        };
        ConsistencyTraining {
            schedule,
            sigma_data: self.sigma_data,
            rho: self.rho,
            levels: self.levels,
            curriculum,
            total_steps: self.steps.unwrap_or(total_steps),
            huber_c: self.huber_c,
        }
    }

    /// Checks what serde cannot; keys are relative to the section.
    pub fn validate(&self) -> Result<(), Invalid> {
        emulsion_config::positive("sigma_data", self.sigma_data)?;
        if !(self.rho.is_finite() && self.rho > 1.0) {
            return Err(Invalid::new("rho", format!("must be above 1, got {}", self.rho)));
        }
        let (first, last, (first_key, last_key)) = match self.curriculum {
            Curriculum::Ict(c) => (c.s0, c.s1, ("curriculum.s0", "curriculum.s1")),
            Curriculum::Sinusoidal(c) => (c.n_init, c.n_final, ("curriculum.n_init", "curriculum.n_final")),
        };
        emulsion_config::at_least(first_key, first, 2)?;
        emulsion_config::at_least(last_key, last, first)?;
        if last > Self::MAX_LEVELS {
            return Err(Invalid::new(last_key, format!("must be at most {} levels, got {last}", Self::MAX_LEVELS)));
        }
        if let LevelChoice::Polynomial(placement) = self.levels {
            emulsion_config::positive("levels.curve", placement.curve)?;
            if !(placement.jitter.is_finite() && placement.jitter >= 0.0) {
                return Err(Invalid::new("levels.jitter", format!("must be a finite number ≥ 0, got {}", placement.jitter)));
            }
        }
        if let Some(c) = self.huber_c {
            emulsion_config::positive("huber_c", c)?;
        }
        if self.steps == Some(0) {
            return Err(Invalid::new("steps", "must be at least 1"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct ConsistencyTraining {
    /// The noise range `[s_min, s_max]` (from its log-SNR range) and, for
    /// [`LevelChoice::Schedule`], the density of the levels.
    pub schedule: Schedule,
    pub sigma_data: f64,
    /// Karras' `ρ` of the levels.
    pub rho: f64,
    pub levels: LevelChoice,
    pub curriculum: Curriculum,
    /// The run's length `K`, which the curricula are laid out over.
    pub total_steps: u64,
    /// The pseudo-Huber `c`; `None`: `0.00054 √d`.
    pub huber_c: Option<f64>,
}

/// Where each sample's pair of levels lies: a name or a table with `type`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self", tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum LevelChoice {
    /// `p(i)` = the schedule's probability of `λ` between `λ(s_{i+1})` and `λ(s_i)`; with the
    /// log-normal schedule this is iCT's `erf` formula.
    Schedule {},
    /// Gokmen et al.: deterministic polynomial positions with jitter, levels taken from one
    /// predefined Karras vector of the curriculum's largest size.
    Polynomial(PolynomialLevels),
}

emulsion_config::tagged_section!(LevelChoice, "`schedule` or `polynomial`, or a table with `type` (and `curve`, `jitter` for `polynomial`)");

/// How many levels there are at step `k`: a name or a table with `type`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self", tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Curriculum {
    /// iCT's doubling from `s0 + 1` to `s1 + 1` levels.
    Ict(IctCurriculum),
    /// Gokmen et al.'s: rises from `n_init` to `n_final` levels and falls back.
    Sinusoidal(SinusoidalCurriculum),
}

emulsion_config::tagged_section!(Curriculum, "`ict` or `sinusoidal`, or a table with `type` and its level counts");

impl Curriculum {
    /// `N(k)`, at least 2 (one pair).
    pub fn levels(&self, step: u64, total_steps: u64) -> usize {
        let (k, total) = (step as usize, total_steps as usize);
        match self {
            Curriculum::Ict(c) => c.levels(k, total),
            Curriculum::Sinusoidal(c) => c.levels(k, total),
        }
        .max(2)
    }

    /// The most levels it ever asks for (the size of the predefined vector).
    pub fn max_levels(&self) -> usize {
        match self {
            Curriculum::Ict(c) => c.s1 + 1,
            Curriculum::Sinusoidal(c) => c.n_final.max(c.n_init),
        }
        .max(2)
    }
}

impl ConsistencyTraining {
    /// The consistency-model parameterisation at the schedule's `s_min`.
    pub fn precond(&self) -> Precond {
        Precond::Consistency { sigma_data: self.sigma_data, sigma_min: self.sigma_min() }
    }

    pub fn sigma_min(&self) -> f64 {
        self.schedule.sigma_range().0
    }

    /// Karras levels over the schedule's noise range.
    fn karras(&self) -> Karras {
        let (sigma_min, sigma_max) = self.schedule.sigma_range();
        Karras { sigma_min, sigma_max, rho: self.rho }
    }

    /// Gokmen et al.'s one Karras vector of the curriculum's largest size, which every step's
    /// levels are a subset of.
    pub fn predefined(&self) -> PredefinedLevels {
        PredefinedLevels::new(&self.karras(), self.curriculum.max_levels())
    }

    /// The `N(k)` noise levels of step `step`, increasing.
    pub fn levels_at(&self, step: u64) -> Vec<f64> {
        let n = self.curriculum.levels(step, self.total_steps);
        match &self.levels {
            LevelChoice::Schedule {} => self.karras().sigmas(n),
            LevelChoice::Polynomial(_) => self.predefined().subset(n),
        }
    }

    /// The seed of the dropout masks both passes of a sample share (see [`Self::outputs`]).
    pub fn draw_mask_seed<B: Backend>(device: &B::Device) -> u64 {
        Tensor::<B, 1, Int>::random([1], Distribution::Uniform(0.0, i32::MAX as f64), device).into_scalar().elem::<i64>() as u64
    }

    /// Each sample's pair of adjacent levels `(s_i, s_{i+1})` at step `step`, `[batch]` each.
    pub fn draw_pairs<B: Backend>(&self, step: u64, batch: usize, device: &B::Device) -> (Tensor<B, 1>, Tensor<B, 1>) {
        let levels = self.levels_at(step);
        let index = match &self.levels {
            LevelChoice::Schedule {} => sample_indices::<B>(&level_probabilities(&self.schedule, &levels), batch, device),
            LevelChoice::Polynomial(placement) => placement.sample::<B>(batch, levels.len(), device),
        };
        let table: Vec<f32> = levels.iter().map(|&s| s as f32).collect();
        let table = Tensor::<B, 1>::from_data(TensorData::new(table, [levels.len()]), device);
        (table.clone().select(0, index.clone()), table.select(0, index + 1))
    }

    /// The loss of the pairs `(sigma, sigma_next)` `[N]`, `sigma < sigma_next`.
    pub fn loss_at<B: Backend, N: Network<B>>(&self, net: &N, input: ObjectiveInput<B>, sigma: Tensor<B, 1>, sigma_next: Tensor<B, 1>, mask_seed: u64) -> Tensor<B, 1> {
        let (student, teacher) = self.outputs(net, input, sigma.clone(), sigma_next.clone(), mask_seed);
        let [n, channels, height, width] = student.dims();
        let c = self.huber_c.unwrap_or(0.00054 * ((channels * height * width) as f64).sqrt());
        let squared = (student - teacher).powf_scalar(2.0).reshape([n as i32, -1]).sum_dim(1).squeeze_dim(1);
        ((squared + c * c).sqrt() - c) / (sigma_next - sigma)
    }

    /// `f(x₀ + s_{i+1} ε, s_{i+1})` and its target `sg f(x₀ + s_i ε, s_i)`: the same network
    /// without gradient (no EMA teacher), under the same dropout mask (the generator is reseeded
    /// with `mask_seed` for each pass, as openai/consistency_models restores its RNG state; a
    /// network that draws nothing leaves the generator alone).
    pub fn outputs<B: Backend, N: Network<B>>(&self, net: &N, input: ObjectiveInput<B>, sigma: Tensor<B, 1>, sigma_next: Tensor<B, 1>, mask_seed: u64) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let ObjectiveInput { x0, noise, labels, .. } = input;
        let device = x0.device();
        let precond = self.precond();
        let reseed = || {
            if net.draws_in_forward() {
                B::seed(&device, mask_seed);
            }
        };
        reseed();
        let noisier = x0.clone() + noise.clone() * per_sample(sigma_next.clone());
        let student = precond.denoise(net, noisier, sigma_next, labels.clone());
        reseed();
        let cleaner = x0 + noise * per_sample(sigma.clone());
        let teacher = precond.denoise(&net.clone().no_grad(), cleaner, sigma, labels).detach();
        (student, teacher)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objective::tests::{assert_gradient_matches, lift, untrained_case, FreeOutput};
    use emulsion_schedule::{Curve, LogNormal};

    fn objective(levels: LevelChoice, curriculum: Curriculum) -> ConsistencyTraining {
        let lognormal = Curve::LogNormal(LogNormal { p_mean: -1.1, p_std: 2.0 });
        // λ = −2 ln s: [0.002, 80].
        let schedule = Schedule::new(lognormal, -2.0 * 80f64.ln(), -2.0 * 0.002f64.ln(), 1.0).unwrap();
        ConsistencyTraining { schedule, sigma_data: 0.5, rho: 7.0, levels, curriculum, total_steps: 1000, huber_c: None }
    }

    /// `(s_d² x) / ((s − s_min)² + s_d²)`: `f` when `F = 0`.
    fn c_skip(s: f64) -> f64 {
        0.25 / ((s - 0.002).powi(2) + 0.25)
    }

    #[test]
    fn loss_at_initialisation_matches_the_hand_computation() {
        let _rng = crate::lock_backend_rng();
        // F ≈ 0 at initialisation: f(x, s) = c_skip(s) x, the same ε at both levels.
        let (net, x0, noise) = untrained_case(5, 3);
        let device = x0.device();
        let o = objective(LevelChoice::Schedule {}, Curriculum::Ict(IctCurriculum::default()));
        let pairs = [(0.002f32, 0.01f32), (0.5, 0.7), (20.0, 80.0)];
        let input = ObjectiveInput { x0: x0.clone(), noise: noise.clone(), labels: None, step: 0 };
        let got: Vec<f32> = o
            .loss_at(&net, input, Tensor::from_floats(pairs.map(|p| p.0), &device), Tensor::from_floats(pairs.map(|p| p.1), &device), 0)
            .into_data()
            .to_vec()
            .unwrap();
        let (x0v, ev): (Vec<f32>, Vec<f32>) = (x0.into_data().to_vec().unwrap(), noise.into_data().to_vec().unwrap());
        let c = 0.00054 * 8.0;
        for (i, &(s, t)) in pairs.iter().enumerate() {
            let (s, t) = (s as f64, t as f64);
            let squared: f64 = (0..64)
                .map(|k| {
                    let (x, e) = (x0v[i * 64 + k] as f64, ev[i * 64 + k] as f64);
                    (c_skip(t) * (x + t * e) - c_skip(s) * (x + s * e)).powi(2)
                })
                .sum();
            let want = ((squared + c * c).sqrt() - c) / (t - s);
            assert!((got[i] as f64 - want).abs() < 2e-3 * want, "pair {i}: {} vs {want}", got[i]);
        }
    }

    #[test]
    fn gradient_flows_through_the_noisier_point_only() {
        // F = θ: Δ = f(x', s') − sg f(x, s), ∂L/∂θ = c_out(s') Δ / (√(‖Δ‖² + c²) (s' − s)).
        // A gradient through the target too would have c_out(s') − c_out(s) in place of c_out(s').
        let _rng = crate::lock_backend_rng();
        let (_, x0, noise) = untrained_case(6, 2);
        let (x0v, ev): (Vec<f32>, Vec<f32>) = (x0.clone().into_data().to_vec().unwrap(), noise.clone().into_data().to_vec().unwrap());
        let o = objective(LevelChoice::Schedule {}, Curriculum::Ict(IctCurriculum::default()));
        let (lo, hi) = ([0.3f64, 5.0], [0.4f64, 9.0]);
        let net = FreeOutput::random(x0.dims(), 8);
        let theta = net.values();
        let input = ObjectiveInput { x0: lift(x0), noise: lift(noise), labels: None, step: 0 };
        let level = |v: [f64; 2]| lift(Tensor::from_floats(v.map(|s| s as f32), &Default::default()));
        let got = net.gradient(o.loss_at(&net, input, level(lo), level(hi), 0).sum());
        let c_out = |s: f64| (s - 0.002) * 0.5 / (s * s + 0.25).sqrt();
        let c = 0.00054 * 8.0;
        let mut want = vec![0.0; theta.len()];
        for i in 0..2 {
            let (s, t) = (lo[i], hi[i]);
            let delta: Vec<f64> = (i * 64..(i + 1) * 64)
                .map(|j| {
                    let (x, e, th) = (x0v[j] as f64, ev[j] as f64, theta[j] as f64);
                    (c_skip(t) * (x + t * e) + c_out(t) * th) - (c_skip(s) * (x + s * e) + c_out(s) * th)
                })
                .collect();
            let norm = (delta.iter().map(|d| d * d).sum::<f64>() + c * c).sqrt();
            for (k, d) in delta.iter().enumerate() {
                want[i * 64 + k] = c_out(t) * d / (norm * (t - s));
            }
        }
        assert_gradient_matches(&got, &want);
    }

    #[test]
    fn levels_follow_the_curriculum_within_the_schedule_range() {
        let o = objective(LevelChoice::Schedule {}, Curriculum::Ict(IctCurriculum::default()));
        // K = 1000 over 8 stages of 125 steps: 11 levels, then 21.
        let first = o.levels_at(0);
        assert_eq!(first.len(), 11);
        assert!((first[0] - 0.002).abs() < 1e-12 && (first[10] - 80.0).abs() < 1e-9, "{first:?}");
        assert_eq!(o.levels_at(125).len(), 21);
        assert_eq!(o.levels_at(999).len(), 1281);
        let poly = objective(LevelChoice::Polynomial(PolynomialLevels::default()), Curriculum::Sinusoidal(SinusoidalCurriculum::default()));
        // One vector of the curriculum's largest size over the schedule's range.
        let predefined = poly.predefined();
        let all = predefined.all();
        assert_eq!(all.len(), 1280);
        assert!((all[0] - 0.002).abs() < 1e-12 && (all[1279] - 80.0).abs() < 1e-9);
        for step in [0, 300, 700] {
            let levels = poly.levels_at(step);
            assert_eq!(levels.len(), SinusoidalCurriculum::default().levels(step as usize, 1000));
            assert!(levels.iter().all(|s| predefined.all().contains(s)), "step {step}: only predefined levels");
        }
    }

    #[test]
    fn drawn_pairs_are_adjacent_levels() {
        let _rng = crate::lock_backend_rng();
        let device = Default::default();
        <crate::TestBackend as Backend>::seed(&device, 9);
        for o in [
            objective(LevelChoice::Schedule {}, Curriculum::Ict(IctCurriculum::default())),
            objective(LevelChoice::Polynomial(PolynomialLevels::default()), Curriculum::Sinusoidal(SinusoidalCurriculum::default())),
        ] {
            for step in [0, 130, 600] {
                let levels: Vec<f32> = o.levels_at(step).iter().map(|&s| s as f32).collect();
                let (lo, hi) = o.draw_pairs::<crate::TestBackend>(step, 256, &device);
                let (lo, hi): (Vec<f32>, Vec<f32>) = (lo.into_data().to_vec().unwrap(), hi.into_data().to_vec().unwrap());
                for (a, b) in lo.iter().zip(&hi) {
                    let i = levels.iter().position(|l| l == a).expect("a drawn level is one of the step's levels");
                    assert_eq!(levels.get(i + 1), Some(b), "step {step}: ({a}, {b}) are not neighbours");
                }
                // Both ends of the range are drawn at some step of a batch this size.
                assert!(lo.iter().any(|&a| a < 0.1) && hi.iter().any(|&b| b > 1.0), "step {step}");
            }
        }
    }

    #[test]
    fn target_shares_the_students_dropout_mask() {
        use crate::objective::tests::tiny_unet;
        use crate::TestAutodiffBackend;
        let _rng = crate::lock_backend_rng();
        let device = Default::default();
        <TestAutodiffBackend as Backend>::seed(&device, 10);
        // Dropout is on under autodiff; with both points at the same level, f and its target
        // see the same input, so they agree bit for bit only if the masks do.
        let net = tiny_unet::<TestAutodiffBackend>(0.5, &device);
        // Burn draws weights lazily, from the same generator: draw them all first.
        crate::trainer::materialize(&net);
        let x0 = Tensor::<TestAutodiffBackend, 4>::random([2, 1, 8, 8], burn::tensor::Distribution::Uniform(-1.0, 1.0), &device);
        let noise = Tensor::random([2, 1, 8, 8], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let o = objective(LevelChoice::Schedule {}, Curriculum::Ict(IctCurriculum::default()));
        let level = || Tensor::<TestAutodiffBackend, 1>::from_floats([0.7, 3.0], &device);
        let (student, teacher) = o.outputs(&net, ObjectiveInput { x0, noise, labels: None, step: 0 }, level(), level(), 11);
        let (a, b): (Vec<f32>, Vec<f32>) = (student.into_data().to_vec().unwrap(), teacher.into_data().to_vec().unwrap());
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "the two passes drew different masks");
    }
}
