//! Noise schedules for diffusion training, expressed as one map: `t ∈ (0, 1) ↦ λ(t)`, the
//! log signal-to-noise ratio `λ = ln(α² / σ²)`.
//!
//! Every schedule is a strictly decreasing `λ(t)` with an inverse `t(λ)` and the density `p(λ)`
//! that `t ~ U(0, 1)` induces; changing the schedule is importance sampling of noise levels.
//! [`process`] turns `λ` into the coefficients of `x_t`, so one code path serves VP, EDM (VE)
//! and flow parameterisations. The maths is plain `f64`; thin Burn layers draw batches of
//! log-SNRs ([`Schedule::sample_lambda`]) and level indices ([`ict`], [`polynomial`]) on the
//! device.
//!
//! | file | paper |
//! |---|---|
//! | [`cosine`], [`ddpm`] | Ho et al. 2020; Nichol & Dhariwal 2021 |
//! | [`logsnr_importance`] | Hang & Gu 2024, Laplace and Cauchy `p(λ)` |
//! | [`lognormal`], [`karras`] | Karras et al. 2022 (EDM) |
//! | [`flow`] | rectified flow |
//! | [`ict`] | Song & Dhariwal 2023, improved consistency training |
//! | [`polynomial`] | Gokmen et al. 2024, polynomial levels and sinusoidal curriculum |

pub mod cosine;
pub mod ddpm;
pub mod flow;
pub mod ict;
pub mod karras;
pub mod lognormal;
pub mod logsnr_importance;
pub mod polynomial;
pub mod process;
pub mod special;

use std::fmt;

use burn::tensor::{backend::Backend, Distribution, Tensor};
use emulsion_config::{at_least, finite, positive, Invalid};
use serde::{Deserialize, Serialize};

pub use cosine::Cosine;
pub use ddpm::{CosineBetas, Discrete, LinearBetas};
pub use flow::FlowTime;
pub use lognormal::LogNormal;
pub use logsnr_importance::{Cauchy, Laplace};
pub use process::Process;

/// A log-SNR schedule `λ(t)`, strictly decreasing on `(0, 1)`.
pub trait LogSnr {
    /// `λ(t)`.
    fn lambda(&self, t: f64) -> f64;
    /// The inverse map `t(λ)`.
    fn t_of_lambda(&self, lambda: f64) -> f64;
    /// `p(λ) = |dt/dλ|`, the density of `λ(t)` under `t ~ U(0, 1)`.
    fn density(&self, lambda: f64) -> f64;
    /// `λ(t)` element-wise on the device.
    fn lambda_tensor<B: Backend>(&self, t: Tensor<B, 1>) -> Tensor<B, 1>;
}

/// A log-SNR curve and its parameters: the `[diffusion.schedule]` section. Written as its name
/// (`schedule = "laplace"`, default parameters) or as a table naming it in `type` beside its
/// parameters (`type = "laplace"`, `mu`, `b`); a parameter of another curve is refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self", tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Curve {
    /// `λ(t) = -2 ln tan(π t / 2)` (Nichol & Dhariwal 2021, continuous form).
    Cosine {},
    /// Improved DDPM's discrete cosine `ᾱ` with `s = 0.008` and betas clipped at 0.999.
    CosineDiscrete(CosineBetas),
    /// DDPM's linear betas, 1e-4 to 0.02 over 1000 steps.
    Linear(LinearBetas),
    /// Laplace `p(λ)` (Hang & Gu 2024).
    Laplace(Laplace),
    /// Cauchy `p(λ)` (Hang & Gu 2024).
    Cauchy(Cauchy),
    /// EDM's log-normal noise levels, `ln s ~ N(P_mean, P_std²)`.
    #[serde(rename = "lognormal")]
    LogNormal(LogNormal),
    /// Uniform rectified-flow time, `λ(t) = 2 ln((1 - t) / t)`.
    Flow {},
}

emulsion_config::tagged_section!(Curve, "a schedule name, or a table with the schedule's `type` and its parameters");

impl Default for Curve {
    fn default() -> Self {
        Curve::Cosine {}
    }
}

impl Curve {
    /// Every curve's name, as configs and command lines write it.
    pub const NAMES: [&'static str; 7] = ["cosine", "cosine_discrete", "linear", "laplace", "cauchy", "lognormal", "flow"];

    /// The curve called `name`, with its default parameters.
    pub fn named(name: &str) -> Option<Curve> {
        Some(match name {
            "cosine" => Curve::Cosine {},
            "cosine_discrete" => Curve::CosineDiscrete(CosineBetas::default()),
            "linear" => Curve::Linear(LinearBetas::default()),
            "laplace" => Curve::Laplace(Laplace::default()),
            "cauchy" => Curve::Cauchy(Cauchy::default()),
            "lognormal" => Curve::LogNormal(LogNormal::default()),
            "flow" => Curve::Flow {},
            _ => return None,
        })
    }

    /// Every curve with its default parameters, in [`Curve::NAMES`] order.
    pub fn defaults() -> Vec<Curve> {
        Self::NAMES.iter().filter_map(|name| Self::named(name)).collect()
    }

    /// The name configs and command lines use.
    pub fn name(&self) -> &'static str {
        match self {
            Curve::Cosine {} => "cosine",
            Curve::CosineDiscrete(_) => "cosine_discrete",
            Curve::Linear(_) => "linear",
            Curve::Laplace(_) => "laplace",
            Curve::Cauchy(_) => "cauchy",
            Curve::LogNormal(_) => "lognormal",
            Curve::Flow {} => "flow",
        }
    }

    /// Checks the parameters; the error names one by its key (`b`, `timesteps`).
    pub fn validate(&self) -> Result<(), Invalid> {
        fn beta(key: &str, v: f64) -> Result<(), Invalid> {
            if v > 0.0 && v < 1.0 { Ok(()) } else { Err(Invalid::new(key, format!("must be in (0, 1), got {v}"))) }
        }
        match self {
            Curve::Cosine {} | Curve::Flow {} => Ok(()),
            Curve::CosineDiscrete(c) => {
                positive("s", c.s)?;
                beta("max_beta", c.max_beta)?;
                at_least("timesteps", c.timesteps, 2)
            }
            Curve::Linear(l) => {
                beta("beta_start", l.beta_start)?;
                beta("beta_end", l.beta_end)?;
                at_least("timesteps", l.timesteps, 2)
            }
            Curve::Laplace(l) => finite("mu", l.mu).and_then(|()| positive("b", l.b)),
            Curve::Cauchy(c) => finite("mu", c.mu).and_then(|()| positive("gamma", c.gamma)),
            Curve::LogNormal(l) => finite("p_mean", l.p_mean).and_then(|()| positive("p_std", l.p_std)),
        }
    }

    /// The map `λ(t)` ready to evaluate: discrete curves become their interpolation tables.
    fn map(&self) -> Result<Map, Invalid> {
        self.validate()?;
        Ok(match self {
            Curve::Cosine {} => Map::Cosine(Cosine),
            Curve::CosineDiscrete(c) => Map::Discrete(Discrete::from_betas(&c.betas())),
            Curve::Linear(l) => Map::Discrete(Discrete::from_betas(&l.betas())),
            Curve::Laplace(l) => Map::Laplace(*l),
            Curve::Cauchy(c) => Map::Cauchy(*c),
            Curve::LogNormal(l) => Map::LogNormal(*l),
            Curve::Flow {} => Map::Flow(FlowTime),
        })
    }
}

impl fmt::Display for Curve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A [`Curve`]'s `λ(t)` as evaluated: one variant per distinct formula.
#[derive(Debug, Clone, PartialEq)]
enum Map {
    Cosine(Cosine),
    Discrete(Discrete),
    Laplace(Laplace),
    Cauchy(Cauchy),
    LogNormal(LogNormal),
    Flow(FlowTime),
}

/// Calls the same method on whichever formula `map` holds.
macro_rules! dispatch {
    ($map:expr, $c:ident => $call:expr) => {
        match $map {
            Map::Cosine($c) => $call,
            Map::Discrete($c) => $call,
            Map::Laplace($c) => $call,
            Map::Cauchy($c) => $call,
            Map::LogNormal($c) => $call,
            Map::Flow($c) => $call,
        }
    };
}

impl LogSnr for Map {
    fn lambda(&self, t: f64) -> f64 {
        dispatch!(self, c => c.lambda(t))
    }
    fn t_of_lambda(&self, lambda: f64) -> f64 {
        dispatch!(self, c => c.t_of_lambda(lambda))
    }
    fn density(&self, lambda: f64) -> f64 {
        dispatch!(self, c => c.density(lambda))
    }
    fn lambda_tensor<B: Backend>(&self, t: Tensor<B, 1>) -> Tensor<B, 1> {
        dispatch!(self, c => c.lambda_tensor(t))
    }
}

/// A curve shifted by `2 ln(shift)` and truncated to `λ ∈ [lambda_min, lambda_max]`, where its
/// infinite ends are cut off.
///
/// `shift > 1` moves every level towards noise, as higher resolutions need (the resolution shift
/// of Hoogeboom et al. 2023 and SD3): `λ_shift(t) = λ(t) - 2 ln(shift)`. Truncation is done in
/// `t`: `t` is drawn uniformly from `[t(lambda_max), t(lambda_min)]`, which is exactly the
/// density restricted to the interval and renormalised.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    curve: Curve,
    map: Map,
    /// `2 ln(shift)`.
    offset: f64,
    pub lambda_min: f64,
    pub lambda_max: f64,
}

impl Schedule {
    /// `curve` shifted and truncated. The error names the curve's parameter (`b`), `shift`, or
    /// `lambda_min` when the range is not finite and increasing or holds none of the curve's
    /// log-SNRs.
    pub fn new(curve: Curve, lambda_min: f64, lambda_max: f64, shift: f64) -> Result<Self, Invalid> {
        positive("shift", shift).map_err(|e| Invalid { message: format!("{} (1 is no shift)", e.message), ..e })?;
        let map = curve.map()?;
        let schedule = Self { curve, map, offset: 2.0 * shift.ln(), lambda_min, lambda_max };
        let (lo, hi) = (lambda_min, lambda_max);
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return Err(Invalid::new("lambda_min", format!("the log-SNR range [lambda_min, lambda_max] = [{lo}, {hi}] must be finite and increasing")));
        }
        let (t_lo, t_hi) = schedule.t_range();
        if !(t_lo < t_hi) {
            return Err(Invalid::new(
                "lambda_min",
                format!(
                    "the log-SNR range [{lo}, {hi}] holds none of the `{}` schedule's log-SNRs, which span [{:.4}, {:.4}]",
                    schedule.curve,
                    schedule.lambda(1.0),
                    schedule.lambda(0.0)
                ),
            ));
        }
        Ok(schedule)
    }

    /// The continuous cosine schedule on `[lambda_min, lambda_max]`, unshifted.
    pub fn cosine(lambda_min: f64, lambda_max: f64) -> Result<Self, Invalid> {
        Self::new(Curve::Cosine {}, lambda_min, lambda_max, 1.0)
    }

    pub fn curve(&self) -> &Curve {
        &self.curve
    }

    /// The shift `e^{offset/2}`.
    pub fn shift(&self) -> f64 {
        (self.offset / 2.0).exp()
    }

    /// The `t` interval `[t(lambda_max), t(lambda_min)]` that maps onto the truncated range.
    pub fn t_range(&self) -> (f64, f64) {
        let (a, b) = (self.t_of_lambda(self.lambda_max), self.t_of_lambda(self.lambda_min));
        (a.clamp(0.0, 1.0), b.clamp(0.0, 1.0))
    }

    /// `λ(t)` clamped to the truncated range.
    pub fn lambda_clamped(&self, t: f64) -> f64 {
        self.lambda(t).clamp(self.lambda_min, self.lambda_max)
    }

    /// The EDM noise levels `[s_min, s_max]` of the log-SNR range (`s = e^{-λ/2}`).
    pub fn sigma_range(&self) -> (f64, f64) {
        (process::edm_sigma(self.lambda_max), process::edm_sigma(self.lambda_min))
    }

    /// The CDF of the truncated schedule's log-SNR: `P(λ ≤ x)`.
    pub fn cdf(&self, lambda: f64) -> f64 {
        let (t_lo, t_hi) = self.t_range();
        ((t_hi - self.t_of_lambda(lambda)) / (t_hi - t_lo)).clamp(0.0, 1.0)
    }

    /// Draws `n` log-SNRs on the device: `t ~ U(t_range)`, then `λ(t)`.
    pub fn sample_lambda<B: Backend>(&self, n: usize, device: &B::Device) -> Tensor<B, 1> {
        let (t_lo, t_hi) = self.t_range();
        let t = Tensor::<B, 1>::random([n], Distribution::Uniform(t_lo, t_hi), device);
        self.lambda_tensor(t).clamp(self.lambda_min, self.lambda_max)
    }

    /// `n` log-SNRs evenly spaced in `t` from the noisiest end to the cleanest, for samplers.
    pub fn lambda_grid(&self, n: usize) -> Vec<f64> {
        let (t_lo, t_hi) = self.t_range();
        match n {
            0 => vec![],
            1 => vec![self.lambda_clamped(t_hi)],
            _ => {
                let mut grid: Vec<f64> = (0..n)
                    .map(|i| {
                        let t = t_hi + (t_lo - t_hi) * i as f64 / (n - 1) as f64;
                        self.lambda_clamped(t)
                    })
                    .collect();
                // The ends exactly: a tail's `t` near 0 or 1 holds fewer digits than `λ` needs.
                grid[0] = self.lambda(1.0).max(self.lambda_min);
                grid[n - 1] = self.lambda(0.0).min(self.lambda_max);
                grid
            }
        }
    }
}

impl LogSnr for Schedule {
    /// `λ(t) - 2 ln(shift)`.
    fn lambda(&self, t: f64) -> f64 {
        self.map.lambda(t) - self.offset
    }

    fn t_of_lambda(&self, lambda: f64) -> f64 {
        self.map.t_of_lambda(lambda + self.offset)
    }

    fn density(&self, lambda: f64) -> f64 {
        self.map.density(lambda + self.offset)
    }

    fn lambda_tensor<B: Backend>(&self, t: Tensor<B, 1>) -> Tensor<B, 1> {
        self.map.lambda_tensor(t) - self.offset
    }
}

#[cfg(test)]
pub(crate) type TestBackend = burn::backend::NdArray<f32>;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Serialises tests that seed the backend's global RNG.
    pub(crate) fn lock_rng() -> std::sync::MutexGuard<'static, ()> {
        static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn all_schedules() -> Vec<Schedule> {
        let mut all: Vec<Schedule> = Curve::defaults().into_iter().map(|curve| Schedule::new(curve, -15.0, 15.0, 1.0).unwrap()).collect();
        all.push(Schedule::new(Curve::Laplace(Laplace { mu: 1.5, b: 2.0 }), -15.0, 15.0, 2.0).unwrap());
        all.push(Schedule::new(Curve::Cosine {}, -15.0, 15.0, 0.5).unwrap());
        all
    }

    fn name(s: &Schedule) -> String {
        format!("{} (shift {})", s.curve(), s.shift())
    }

    #[test]
    fn every_schedule_decreases_strictly_and_inverts_to_1e_12() {
        for s in all_schedules() {
            let mut last = f64::INFINITY;
            for i in 1..2000 {
                let t = i as f64 / 2000.0;
                let lambda = s.lambda(t);
                assert!(lambda < last, "{}: λ({t}) = {lambda} does not decrease", name(&s));
                last = lambda;
                let back = s.t_of_lambda(lambda);
                assert!((back - t).abs() < 1e-12, "{}: t(λ({t})) = {back}", name(&s));
            }
        }
    }

    /// `∫ f` over `[a, b]` by 3-point Gauss-Legendre on `panels` panels. Its nodes are interior,
    /// so a density that jumps at `a` or `b` is integrated exactly as if it did not.
    fn gauss_legendre(f: &dyn Fn(f64) -> f64, a: f64, b: f64, panels: usize) -> f64 {
        let nodes = [(-(0.6f64).sqrt(), 5.0 / 9.0), (0.0, 8.0 / 9.0), ((0.6f64).sqrt(), 5.0 / 9.0)];
        let h = (b - a) / panels as f64;
        (0..panels)
            .map(|i| {
                let mid = a + (i as f64 + 0.5) * h;
                nodes.iter().map(|(x, w)| w * f(mid + x * h / 2.0)).sum::<f64>() * h / 2.0
            })
            .sum()
    }

    #[test]
    fn every_density_integrates_to_one() {
        for s in all_schedules() {
            // Breakpoints: a geometric grid around 0 out to ±L, plus the knots of discrete curves
            // (where the density jumps), so each piece integrates a smooth function.
            let l = 16384.0;
            let mut points: Vec<f64> = vec![0.0];
            let mut x = 1.0 / 64.0;
            while x <= l {
                points.extend([x, -x]);
                x *= 2.0;
            }
            if let Map::Discrete(d) = &s.map {
                points.extend(d.lambdas().iter().map(|k| k - 2.0 * s.shift().ln()));
            }
            // And the Laplace kink at μ.
            if let Curve::Laplace(lap) = s.curve() {
                points.push(lap.mu - 2.0 * s.shift().ln());
            }
            points.sort_by(|a, b| a.partial_cmp(b).unwrap());
            points.dedup();
            let density = |x: f64| s.density(x);
            let inside: f64 = points.windows(2).map(|w| gauss_legendre(&density, w[0], w[1], 64)).sum();
            // The mass beyond ±L (only the Cauchy's is not negligible): F(-L) + 1 - F(L).
            let outside = (1.0 - s.t_of_lambda(-l)) + s.t_of_lambda(l);
            assert!(outside < 1e-4, "{}", name(&s));
            assert!((inside + outside - 1.0).abs() < 1e-9, "{}: ∫p = {inside} + {outside} outside ±L", name(&s));
        }
    }

    #[test]
    fn device_samples_pass_a_kolmogorov_smirnov_test() {
        let _rng = lock_rng();
        let device = Default::default();
        let n = 20_000;
        for (i, s) in all_schedules().into_iter().enumerate() {
            <TestBackend as Backend>::seed(&device, 100 + i as u64);
            let mut lambdas: Vec<f64> = s
                .sample_lambda::<TestBackend>(n, &device)
                .into_data()
                .to_vec::<f32>()
                .unwrap()
                .into_iter()
                .map(f64::from)
                .collect();
            assert!(lambdas.iter().all(|l| (-15.0..=15.0).contains(l)), "{}", name(&s));
            lambdas.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let d = lambdas
                .iter()
                .enumerate()
                .map(|(k, &l)| {
                    let f = s.cdf(l);
                    (f - k as f64 / n as f64).abs().max(((k + 1) as f64 / n as f64 - f).abs())
                })
                .fold(0.0, f64::max);
            // The 0.1% critical value of the one-sample KS statistic is 1.95 / √n.
            assert!(d < 1.95 / (n as f64).sqrt(), "{}: KS D = {d}", name(&s));
        }
    }

    #[test]
    fn device_map_matches_the_scalar_map() {
        for s in all_schedules() {
            let ts = [0.02f32, 0.1, 0.3, 0.5, 0.7, 0.9, 0.98];
            let got: Vec<f32> =
                s.lambda_tensor(Tensor::<TestBackend, 1>::from_floats(ts, &Default::default())).into_data().to_vec().unwrap();
            for (t, g) in ts.iter().zip(got) {
                let expected = s.lambda(*t as f64);
                assert!((g as f64 - expected).abs() < 2e-4 * expected.abs().max(1.0), "{}: λ({t}) = {g} vs {expected}", name(&s));
            }
        }
    }

    #[test]
    fn t_range_maps_onto_the_truncated_lambda_range() {
        let s = Schedule::cosine(-15.0, 15.0).unwrap();
        let (t_lo, t_hi) = s.t_range();
        assert!((s.lambda(t_lo) - 15.0).abs() < 1e-9);
        assert!((s.lambda(t_hi) + 15.0).abs() < 1e-9);
        assert!(0.0 < t_lo && t_lo < t_hi && t_hi < 1.0);
        let grid = s.lambda_grid(11);
        assert!((grid[0] + 15.0).abs() < 1e-9 && (grid[10] - 15.0).abs() < 1e-9);
        assert!(grid.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn shift_moves_every_level_by_2_ln_shift() {
        let plain = Schedule::new(Curve::named("laplace").unwrap(), -15.0, 15.0, 1.0).unwrap();
        let shifted = Schedule::new(Curve::named("laplace").unwrap(), -15.0, 15.0, 4.0).unwrap();
        for t in [0.1, 0.5, 0.9] {
            assert!((shifted.lambda(t) - (plain.lambda(t) - 2.0 * 4f64.ln())).abs() < 1e-14);
        }
        assert!((shifted.shift() - 4.0).abs() < 1e-14);
    }

    #[test]
    fn a_range_that_misses_the_curve_or_a_bad_shift_is_an_error() {
        // DDPM's linear schedule spans λ ∈ [-10.1, 9.2].
        let e = Schedule::new(Curve::named("linear").unwrap(), 10.0, 15.0, 1.0).unwrap_err();
        assert!(e.key == "lambda_min" && e.message.contains("holds none") && e.message.contains("linear"), "{e}");
        let e = Schedule::new(Curve::Cosine {}, 3.0, 1.0, 1.0).unwrap_err();
        assert!(e.key == "lambda_min" && e.message.contains("increasing"), "{e}");
        for shift in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert_eq!(Schedule::new(Curve::Cosine {}, -15.0, 15.0, shift).unwrap_err().key, "shift");
        }
    }

    #[test]
    fn parameters_are_validated_by_name() {
        let e = Schedule::new(Curve::Laplace(Laplace { mu: 0.0, b: 0.0 }), -15.0, 15.0, 1.0).unwrap_err();
        assert_eq!(e.key, "b");
        let e = Curve::Linear(LinearBetas { timesteps: 1, ..Default::default() }).validate().unwrap_err();
        assert_eq!(e.key, "timesteps");
        let e = Curve::CosineDiscrete(CosineBetas { max_beta: 1.0, ..Default::default() }).validate().unwrap_err();
        assert_eq!(e.key, "max_beta");
        assert!(Curve::defaults().iter().all(|c| c.validate().is_ok()));
    }

    #[test]
    fn every_name_gives_its_curve() {
        for (name, curve) in Curve::NAMES.iter().zip(Curve::defaults()) {
            assert_eq!((curve.name(), curve.to_string()), (*name, name.to_string()));
        }
        assert_eq!(Curve::defaults().len(), Curve::NAMES.len());
        assert!(Curve::named("laplacian").is_none());
    }
}
