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

/// The schedules, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum), value(rename_all = "snake_case"))]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// `λ(t) = -2 ln tan(π t / 2)` (Nichol & Dhariwal 2021, continuous form).
    #[default]
    Cosine,
    /// Improved DDPM's discrete cosine `ᾱ` with `s = 0.008` and betas clipped at 0.999.
    CosineDiscrete,
    /// DDPM's linear betas, 1e-4 to 0.02 over 1000 steps.
    Linear,
    /// Laplace `p(λ)` (Hang & Gu 2024).
    Laplace,
    /// Cauchy `p(λ)` (Hang & Gu 2024).
    Cauchy,
    /// EDM's log-normal noise levels, `ln s ~ N(P_mean, P_std²)`.
    #[serde(rename = "lognormal")]
    #[cfg_attr(feature = "clap", value(name = "lognormal"))]
    LogNormal,
    /// Uniform rectified-flow time, `λ(t) = 2 ln((1 - t) / t)`.
    Flow,
}

impl ScheduleKind {
    pub const ALL: [ScheduleKind; 7] = [
        ScheduleKind::Cosine,
        ScheduleKind::CosineDiscrete,
        ScheduleKind::Linear,
        ScheduleKind::Laplace,
        ScheduleKind::Cauchy,
        ScheduleKind::LogNormal,
        ScheduleKind::Flow,
    ];

    /// The name used in configs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ScheduleKind::Cosine => "cosine",
            ScheduleKind::CosineDiscrete => "cosine_discrete",
            ScheduleKind::Linear => "linear",
            ScheduleKind::Laplace => "laplace",
            ScheduleKind::Cauchy => "cauchy",
            ScheduleKind::LogNormal => "lognormal",
            ScheduleKind::Flow => "flow",
        }
    }

    /// The parameter names of this schedule (its table in the config).
    pub fn parameters(self) -> &'static [&'static str] {
        match self {
            ScheduleKind::Cosine | ScheduleKind::Flow => &[],
            ScheduleKind::CosineDiscrete => &["s", "max_beta", "timesteps"],
            ScheduleKind::Linear => &["beta_start", "beta_end", "timesteps"],
            ScheduleKind::Laplace => &["mu", "b"],
            ScheduleKind::Cauchy => &["mu", "gamma"],
            ScheduleKind::LogNormal => &["p_mean", "p_std"],
        }
    }
}

impl fmt::Display for ScheduleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Every schedule's parameters; only the chosen schedule's are used.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleParams {
    pub cosine_discrete: CosineBetas,
    pub linear: LinearBetas,
    pub laplace: Laplace,
    pub cauchy: Cauchy,
    pub lognormal: LogNormal,
}

impl ScheduleParams {
    /// Checks the chosen schedule's parameters; the error names the parameter as
    /// `table.key` (e.g. `laplace.b`).
    pub fn validate(&self, kind: ScheduleKind) -> Result<(), (&'static str, String)> {
        fn positive(key: &'static str, v: f64) -> Result<(), (&'static str, String)> {
            if v.is_finite() && v > 0.0 { Ok(()) } else { Err((key, format!("must be positive and finite, got {v}"))) }
        }
        fn finite(key: &'static str, v: f64) -> Result<(), (&'static str, String)> {
            if v.is_finite() { Ok(()) } else { Err((key, format!("must be finite, got {v}"))) }
        }
        fn beta(key: &'static str, v: f64) -> Result<(), (&'static str, String)> {
            if v > 0.0 && v < 1.0 { Ok(()) } else { Err((key, format!("must be in (0, 1), got {v}"))) }
        }
        fn steps(key: &'static str, v: usize) -> Result<(), (&'static str, String)> {
            if v >= 2 { Ok(()) } else { Err((key, format!("must be at least 2, got {v}"))) }
        }
        match kind {
            ScheduleKind::Cosine | ScheduleKind::Flow => Ok(()),
            ScheduleKind::CosineDiscrete => {
                let c = &self.cosine_discrete;
                positive("cosine_discrete.s", c.s)?;
                beta("cosine_discrete.max_beta", c.max_beta)?;
                steps("cosine_discrete.timesteps", c.timesteps)
            }
            ScheduleKind::Linear => {
                let l = &self.linear;
                beta("linear.beta_start", l.beta_start)?;
                beta("linear.beta_end", l.beta_end)?;
                steps("linear.timesteps", l.timesteps)
            }
            ScheduleKind::Laplace => {
                finite("laplace.mu", self.laplace.mu)?;
                positive("laplace.b", self.laplace.b)
            }
            ScheduleKind::Cauchy => {
                finite("cauchy.mu", self.cauchy.mu)?;
                positive("cauchy.gamma", self.cauchy.gamma)
            }
            ScheduleKind::LogNormal => {
                finite("lognormal.p_mean", self.lognormal.p_mean)?;
                positive("lognormal.p_std", self.lognormal.p_std)
            }
        }
    }
}

/// A schedule with its parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum Curve {
    Cosine(Cosine),
    CosineDiscrete(Discrete),
    Linear(Discrete),
    Laplace(Laplace),
    Cauchy(Cauchy),
    LogNormal(LogNormal),
    Flow(FlowTime),
}

impl Curve {
    /// # Panics
    /// On parameters that [`ScheduleParams::validate`] rejects.
    pub fn new(kind: ScheduleKind, params: &ScheduleParams) -> Self {
        if let Err((key, message)) = params.validate(kind) {
            panic!("invalid schedule parameter `{key}`: {message}");
        }
        match kind {
            ScheduleKind::Cosine => Curve::Cosine(Cosine),
            ScheduleKind::CosineDiscrete => Curve::CosineDiscrete(Discrete::from_betas(&params.cosine_discrete.betas())),
            ScheduleKind::Linear => Curve::Linear(Discrete::from_betas(&params.linear.betas())),
            ScheduleKind::Laplace => Curve::Laplace(params.laplace),
            ScheduleKind::Cauchy => Curve::Cauchy(params.cauchy),
            ScheduleKind::LogNormal => Curve::LogNormal(params.lognormal),
            ScheduleKind::Flow => Curve::Flow(FlowTime),
        }
    }

    pub fn kind(&self) -> ScheduleKind {
        match self {
            Curve::Cosine(_) => ScheduleKind::Cosine,
            Curve::CosineDiscrete(_) => ScheduleKind::CosineDiscrete,
            Curve::Linear(_) => ScheduleKind::Linear,
            Curve::Laplace(_) => ScheduleKind::Laplace,
            Curve::Cauchy(_) => ScheduleKind::Cauchy,
            Curve::LogNormal(_) => ScheduleKind::LogNormal,
            Curve::Flow(_) => ScheduleKind::Flow,
        }
    }
}

/// Calls the same method on whichever schedule `curve` holds.
macro_rules! dispatch {
    ($curve:expr, $c:ident => $call:expr) => {
        match $curve {
            Curve::Cosine($c) => $call,
            Curve::CosineDiscrete($c) | Curve::Linear($c) => $call,
            Curve::Laplace($c) => $call,
            Curve::Cauchy($c) => $call,
            Curve::LogNormal($c) => $call,
            Curve::Flow($c) => $call,
        }
    };
}

impl LogSnr for Curve {
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

/// A schedule shifted by `2 ln(shift)` and truncated to `λ ∈ [lambda_min, lambda_max]`, where its
/// infinite ends are cut off.
///
/// `shift > 1` moves every level towards noise, as higher resolutions need (the resolution shift
/// of Hoogeboom et al. 2023 and SD3): `λ_shift(t) = λ(t) - 2 ln(shift)`. Truncation is done in
/// `t`: `t` is drawn uniformly from `[t(lambda_max), t(lambda_min)]`, which is exactly the
/// density restricted to the interval and renormalised.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    curve: Curve,
    /// `2 ln(shift)`.
    offset: f64,
    pub lambda_min: f64,
    pub lambda_max: f64,
}

impl Schedule {
    /// # Panics
    /// If the range is not finite and increasing, or holds none of the curve's log-SNRs:
    /// callers validate configs first ([`Schedule::check`]).
    pub fn new(curve: Curve, lambda_min: f64, lambda_max: f64) -> Self {
        let schedule = Self { curve, offset: 0.0, lambda_min, lambda_max };
        if let Err(message) = schedule.check() {
            panic!("{message}");
        }
        schedule
    }

    /// The same schedule with `λ(t) - 2 ln(shift)`.
    ///
    /// # Panics
    /// If `shift` is not positive and finite, or the shifted curve misses the range.
    pub fn with_shift(self, shift: f64) -> Self {
        assert!(shift.is_finite() && shift > 0.0, "the shift must be positive, got {shift}");
        let schedule = Self { offset: 2.0 * shift.ln(), ..self };
        if let Err(message) = schedule.check() {
            panic!("{message}");
        }
        schedule
    }

    /// A schedule that may not be samplable, for [`Schedule::check`] to explain why.
    pub fn new_unchecked(curve: Curve, lambda_min: f64, lambda_max: f64, shift: f64) -> Self {
        Self { curve, offset: 2.0 * shift.ln(), lambda_min, lambda_max }
    }

    /// Why this schedule cannot be sampled, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        let (lo, hi) = (self.lambda_min, self.lambda_max);
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return Err(format!("the log-SNR range [lambda_min, lambda_max] = [{lo}, {hi}] must be finite and increasing"));
        }
        let (t_lo, t_hi) = self.t_range();
        if !(t_lo < t_hi) {
            return Err(format!(
                "the log-SNR range [{lo}, {hi}] holds none of the `{}` schedule's log-SNRs, which span [{:.4}, {:.4}]",
                self.kind(),
                self.lambda(1.0),
                self.lambda(0.0)
            ));
        }
        Ok(())
    }

    /// From a name and its parameters.
    pub fn from_kind(kind: ScheduleKind, params: &ScheduleParams, lambda_min: f64, lambda_max: f64) -> Self {
        Self::new(Curve::new(kind, params), lambda_min, lambda_max)
    }

    /// The continuous cosine schedule on `[lambda_min, lambda_max]`.
    pub fn cosine(lambda_min: f64, lambda_max: f64) -> Self {
        Self::new(Curve::Cosine(Cosine), lambda_min, lambda_max)
    }

    pub fn kind(&self) -> ScheduleKind {
        self.curve.kind()
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
        self.curve.lambda(t) - self.offset
    }

    fn t_of_lambda(&self, lambda: f64) -> f64 {
        self.curve.t_of_lambda(lambda + self.offset)
    }

    fn density(&self, lambda: f64) -> f64 {
        self.curve.density(lambda + self.offset)
    }

    fn lambda_tensor<B: Backend>(&self, t: Tensor<B, 1>) -> Tensor<B, 1> {
        self.curve.lambda_tensor(t) - self.offset
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
        let params = ScheduleParams::default();
        let mut all: Vec<Schedule> =
            ScheduleKind::ALL.iter().map(|&kind| Schedule::from_kind(kind, &params, -15.0, 15.0)).collect();
        let laplace = ScheduleParams { laplace: Laplace { mu: 1.5, b: 2.0 }, ..params };
        all.push(Schedule::from_kind(ScheduleKind::Laplace, &laplace, -15.0, 15.0).with_shift(2.0));
        all.push(Schedule::from_kind(ScheduleKind::Cosine, &params, -15.0, 15.0).with_shift(0.5));
        all
    }

    fn name(s: &Schedule) -> String {
        format!("{} (shift {})", s.kind(), s.shift())
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
            if let Curve::CosineDiscrete(d) | Curve::Linear(d) = s.curve() {
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
        let s = Schedule::from_kind(ScheduleKind::Cosine, &ScheduleParams::default(), -15.0, 15.0);
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
        let params = ScheduleParams::default();
        let plain = Schedule::from_kind(ScheduleKind::Laplace, &params, -15.0, 15.0);
        let shifted = plain.clone().with_shift(4.0);
        for t in [0.1, 0.5, 0.9] {
            assert!((shifted.lambda(t) - (plain.lambda(t) - 2.0 * 4f64.ln())).abs() < 1e-14);
        }
        assert!((shifted.shift() - 4.0).abs() < 1e-14);
    }

    #[test]
    fn a_range_that_misses_the_curve_is_an_error() {
        // DDPM's linear schedule spans λ ∈ [-10.1, 9.2].
        let s = Schedule::new_unchecked(Curve::new(ScheduleKind::Linear, &ScheduleParams::default()), 10.0, 15.0, 1.0);
        let e = s.check().unwrap_err();
        assert!(e.contains("holds none") && e.contains("linear"), "{e}");
    }

    #[test]
    fn parameters_are_validated_by_name() {
        let bad = ScheduleParams { laplace: Laplace { mu: 0.0, b: 0.0 }, ..Default::default() };
        assert_eq!(bad.validate(ScheduleKind::Laplace).unwrap_err().0, "laplace.b");
        assert!(bad.validate(ScheduleKind::Cosine).is_ok(), "only the chosen schedule's parameters matter");
        let bad = ScheduleParams { linear: LinearBetas { timesteps: 1, ..Default::default() }, ..Default::default() };
        assert_eq!(bad.validate(ScheduleKind::Linear).unwrap_err().0, "linear.timesteps");
    }
}
