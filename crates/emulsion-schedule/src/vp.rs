//! The variance-preserving process on top of a log-SNR: `x_t = α x₀ + σ ε` with
//! `α² = sigmoid(λ)`, `σ² = sigmoid(-λ)`, and its variance-exploding (EDM) twin `x = x₀ + s ε`
//! with `s = σ / α = exp(-λ / 2)`.

/// `(α, σ)` of the VP process: `α² = sigmoid(λ)`, `σ² = sigmoid(-λ)`.
pub fn alpha_sigma(lambda: f64) -> (f64, f64) {
    (sigmoid(lambda).sqrt(), sigmoid(-lambda).sqrt())
}

/// The EDM noise level `s = exp(-λ / 2)` of the same log-SNR.
pub fn edm_sigma(lambda: f64) -> f64 {
    (-lambda / 2.0).exp()
}

/// The log-SNR `λ = -2 ln s` of an EDM noise level.
pub fn lambda_of_edm_sigma(sigma: f64) -> f64 {
    -2.0 * sigma.ln()
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpha_and_sigma_preserve_variance_and_match_the_log_snr() {
        for lambda in [-20.0, -3.0, -0.5, 0.0, 0.5, 3.0, 20.0] {
            let (a, s) = alpha_sigma(lambda);
            assert!((a * a + s * s - 1.0).abs() < 1e-12);
            assert!(((a * a / (s * s)).ln() - lambda).abs() < 1e-9);
            assert!((edm_sigma(lambda) - s / a).abs() < 1e-9 * (s / a));
            assert!((lambda_of_edm_sigma(edm_sigma(lambda)) - lambda).abs() < 1e-12);
        }
    }
}
