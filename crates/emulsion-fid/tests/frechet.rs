//! The Fréchet distance against closed forms, and its matrix square roots on ill-conditioned
//! covariances.

use emulsion_fid::frechet::{sqrt_psd, trace_sqrt_product};
use emulsion_fid::{frechet_distance, FeatureStats, StatsAccumulator};
use nalgebra::{DMatrix, DVector};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    // Box–Muller: enough for test data.
    let (u, v): (f64, f64) = (rng.random::<f64>().max(1e-300), rng.random());
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

/// A random orthogonal matrix (Q of a Gaussian matrix's QR).
fn rotation(d: usize, rng: &mut ChaCha8Rng) -> DMatrix<f64> {
    DMatrix::from_fn(d, d, |_, _| normal(rng)).qr().q()
}

/// `Q diag(λ) Qᵀ`.
fn with_spectrum(q: &DMatrix<f64>, eigenvalues: &[f64]) -> DMatrix<f64> {
    q * DMatrix::from_diagonal(&DVector::from_row_slice(eigenvalues)) * q.transpose()
}

/// `n` rows of `d` features: positive, correlated, mean ~1, like pooled ReLU features.
fn features(n: usize, d: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let mix = DMatrix::from_fn(d, d, |_, _| normal(rng) / (d as f64).sqrt());
    (0..n)
        .flat_map(|_| {
            let z = DVector::from_fn(d, |_, _| normal(rng));
            (&mix * z).map(|v| (v.exp() * 0.5) as f32).iter().copied().collect::<Vec<_>>()
        })
        .collect()
}

fn stats_of(rows: &[f32], d: usize) -> FeatureStats {
    let mut acc = StatsAccumulator::new(d);
    acc.add(rows);
    acc.finish().unwrap()
}

#[test]
fn a_set_is_at_distance_zero_from_itself_even_with_a_rank_deficient_covariance() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    // 120 images of 512 features: the covariance has rank 119.
    let stats = stats_of(&features(120, 512, &mut rng), 512);
    let fid = frechet_distance(&stats, &stats).unwrap();
    assert!(fid.abs() < 1e-6, "FID(A, A) = {fid:e}");
    // Squaring instead (eigenvalues of R Σ R, then their roots) is what this guards against.
    let root = sqrt_psd(&stats.sigma);
    let product = &root * &stats.sigma * &root;
    let squared = product.symmetric_eigenvalues().iter().map(|l| l.max(0.0).sqrt()).sum::<f64>();
    let naive = 2.0 * stats.sigma.trace() - 2.0 * squared;
    assert!(naive.abs() > fid.abs(), "the naive route ({naive:e}) is no worse here, so the test shows nothing");
}

#[test]
fn shifting_every_feature_by_delta_gives_the_squared_shift() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let d = 64;
    let rows = features(2000, d, &mut rng);
    let delta: Vec<f32> = (0..d).map(|j| 0.25 * (j as f32 * 0.7).sin()).collect();
    let shifted: Vec<f32> = rows.iter().enumerate().map(|(k, v)| v + delta[k % d]).collect();
    let fid = frechet_distance(&stats_of(&rows, d), &stats_of(&shifted, d)).unwrap();
    // The shift in f32 rounds each feature by up to 2⁻²⁴ of its size.
    let expected: f64 = delta.iter().map(|&x| (x as f64).powi(2)).sum();
    assert!((fid - expected).abs() < 1e-5 * expected, "{fid} vs {expected}");
}

#[test]
fn isotropic_gaussians_match_the_closed_form() {
    // N(μ₁, a²I) vs N(μ₂, b²I): |μ₁ − μ₂|² + d (a − b)².
    let d = 50;
    let (a, b) = (0.7, 1.9);
    let gaussian = |mu: f64, s: f64| FeatureStats { mu: DVector::from_element(d, mu), sigma: DMatrix::identity(d, d) * (s * s), count: 0 };
    let fid = frechet_distance(&gaussian(0.5, a), &gaussian(-0.25, b)).unwrap();
    let expected = d as f64 * 0.75f64.powi(2) + d as f64 * (a - b).powi(2);
    assert!((fid - expected).abs() < 1e-10 * expected, "{fid} vs {expected}");
}

#[test]
fn square_roots_stay_accurate_on_ill_conditioned_covariances() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let d = 96;
    let q = rotation(d, &mut rng);
    // Condition number 10¹²: eigenvalues from 10⁻¹⁰ to 10².
    let spectrum: Vec<f64> = (0..d).map(|i| 10f64.powf(-10.0 + 12.0 * i as f64 / (d - 1) as f64)).collect();
    let s1 = with_spectrum(&q, &spectrum);
    let root = sqrt_psd(&s1);
    let relative = (&root * &root - &s1).norm() / s1.norm();
    assert!(relative < 1e-12, "‖R² − Σ‖/‖Σ‖ = {relative:e}");

    // Σ₂ = Σ₁⁻¹: Σ₁Σ₂ = I, so tr √(Σ₁Σ₂) = d whatever the conditioning.
    let inverse: Vec<f64> = spectrum.iter().map(|l| 1.0 / l).collect();
    let trace = trace_sqrt_product(&root, &sqrt_psd(&with_spectrum(&q, &inverse)));
    assert!((trace - d as f64).abs() < 1e-6 * d as f64, "tr √(Σ Σ⁻¹) = {trace}");

    // Commuting covariances: tr √(Σ₁Σ₂) = Σᵢ √(aᵢ bᵢ).
    let other: Vec<f64> = (0..d).map(|i| 10f64.powf(3.0 - 9.0 * ((i * 7) % d) as f64 / (d - 1) as f64)).collect();
    let trace = trace_sqrt_product(&root, &sqrt_psd(&with_spectrum(&q, &other)));
    let expected: f64 = spectrum.iter().zip(&other).map(|(a, b)| (a * b).sqrt()).sum();
    assert!((trace - expected).abs() < 1e-9 * expected, "{trace} vs {expected}");
}

#[test]
fn non_commuting_2x2_covariances_match_the_closed_form() {
    // For 2x2, tr √M = √(tr M + 2 √det M), and M = Σ₁Σ₂ has det Σ₁ det Σ₂.
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    for condition in [1.0, 1e4, 1e8] {
        let a = with_spectrum(&rotation(2, &mut rng), &[1.0, 1.0 / condition]);
        let b = with_spectrum(&rotation(2, &mut rng), &[3.0, 2.0 / condition]);
        let expected = ((&a * &b).trace() + 2.0 * (a.determinant() * b.determinant()).sqrt()).sqrt();
        let trace = trace_sqrt_product(&sqrt_psd(&a), &sqrt_psd(&b));
        assert!((trace - expected).abs() < 1e-10 * expected, "condition {condition:e}: {trace} vs {expected}");
    }
}

#[test]
fn statistics_of_different_sizes_are_refused() {
    let small = FeatureStats { mu: DVector::zeros(2), sigma: DMatrix::identity(2, 2), count: 0 };
    let large = FeatureStats { mu: DVector::zeros(3), sigma: DMatrix::identity(3, 3), count: 0 };
    assert!(frechet_distance(&small, &large).unwrap_err().to_string().contains("different sizes"));
}
