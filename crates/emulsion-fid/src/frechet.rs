//! The Fréchet distance between two Gaussians fitted to features:
//! `d² = |μ₁ − μ₂|² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2}`.
//!
//! The last trace is computed without squaring anything: with `R = Σ^{1/2}` from the
//! eigen-decomposition of each covariance, `(R₁R₂)(R₁R₂)ᵀ = R₁Σ₂R₁`, so the trace is the sum of
//! the singular values of `R₁R₂`. Eigenvalues of `R₁Σ₂R₁` near zero carry an absolute error
//! of about ε‖Σ‖², and their square roots √(ε)‖Σ‖ each; the singular values keep ε‖Σ‖. A rank-
//! deficient covariance (fewer images than 2048) would otherwise put ~10⁻⁵ into FID(A, A).

use nalgebra::DMatrix;

use crate::stats::FeatureStats;
use crate::FidError;

/// The symmetric square root `V √Λ Vᵀ` of a covariance, negative round-off eigenvalues taken as 0.
pub fn sqrt_psd(sigma: &DMatrix<f64>) -> DMatrix<f64> {
    let eigen = sigma.clone().symmetric_eigen();
    let roots = eigen.eigenvalues.map(|l| l.max(0.0).sqrt());
    let scaled = &eigen.eigenvectors * DMatrix::from_diagonal(&roots);
    &scaled * eigen.eigenvectors.transpose()
}

/// `tr (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2}` from the square roots of both covariances.
pub fn trace_sqrt_product(root_1: &DMatrix<f64>, root_2: &DMatrix<f64>) -> f64 {
    (root_1 * root_2).singular_values().sum()
}

/// Statistics with the square root of their covariance, for comparing many sets to one.
#[derive(Debug, Clone)]
pub struct ReferenceStats {
    pub stats: FeatureStats,
    pub root: DMatrix<f64>,
}

impl ReferenceStats {
    pub fn new(stats: FeatureStats) -> Self {
        let root = sqrt_psd(&stats.sigma);
        Self { stats, root }
    }

    /// The Fréchet distance from these statistics to `other`.
    pub fn distance(&self, other: &FeatureStats) -> Result<f64, FidError> {
        check_compatible(&self.stats, other)?;
        let other_root = sqrt_psd(&other.sigma);
        let mean_term = (&self.stats.mu - &other.mu).norm_squared();
        let traces = self.stats.sigma.trace() + other.sigma.trace();
        let distance = mean_term + traces - 2.0 * trace_sqrt_product(&self.root, &other_root);
        if !distance.is_finite() {
            return Err(FidError::Invalid(format!("the Fréchet distance is {distance}: the statistics hold NaN or infinite values")));
        }
        Ok(distance)
    }
}

/// The Fréchet distance between the Gaussians of `a` and `b`.
pub fn frechet_distance(a: &FeatureStats, b: &FeatureStats) -> Result<f64, FidError> {
    check_compatible(a, b)?;
    ReferenceStats::new(a.clone()).distance(b)
}

fn check_compatible(a: &FeatureStats, b: &FeatureStats) -> Result<(), FidError> {
    if a.mu.len() != b.mu.len() || a.sigma.shape() != (a.mu.len(), a.mu.len()) || b.sigma.shape() != (b.mu.len(), b.mu.len()) {
        return Err(FidError::Invalid(format!(
            "statistics of different sizes: mu {} / sigma {:?} against mu {} / sigma {:?}",
            a.mu.len(),
            a.sigma.shape(),
            b.mu.len(),
            b.sigma.shape()
        )));
    }
    Ok(())
}
