//! Features of the scalar noise label fed to the network's embedding MLP.

use std::f64::consts::PI;

use burn::tensor::{backend::Backend, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// How the scalar noise label becomes a vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NoiseEmbedding {
    /// Transformer sinusoids, `max_positions = 10000`, endpoint included (DDPM++).
    #[default]
    Positional,
    /// Random Fourier features with scale 16 (NCSN++), fixed by a constant seed.
    Fourier,
}

/// The frequencies (in radians per unit of noise label) of a noise embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseFeatures {
    frequencies: Vec<f32>,
}

impl NoiseFeatures {
    /// # Panics
    /// If `channels` is odd or below 4.
    pub fn new(kind: NoiseEmbedding, channels: usize) -> Self {
        assert!(channels >= 4 && channels % 2 == 0, "noise channels must be even and >= 4, got {channels}");
        let half = channels / 2;
        let frequencies = match kind {
            // (1 / max_positions)^(i / (half - 1)), i = 0..half.
            NoiseEmbedding::Positional => (0..half)
                .map(|i| (1e-4f64).powf(i as f64 / (half - 1) as f64) as f32)
                .collect(),
            // 2π f, f ~ N(0, 16²); the seed is part of the architecture, so it is a constant.
            NoiseEmbedding::Fourier => {
                let mut rng = ChaCha8Rng::seed_from_u64(0x6e6f697365);
                (0..half)
                    .map(|_| (2.0 * PI * 16.0 * standard_normal(&mut rng)) as f32)
                    .collect()
            }
        };
        Self { frequencies }
    }

    /// The angular frequencies the noise label is multiplied by.
    pub fn frequencies(&self) -> &[f32] {
        &self.frequencies
    }

    pub fn channels(&self) -> usize {
        2 * self.frequencies.len()
    }

    /// `[sin(c f), cos(c f)]` for each noise label `c`.
    ///
    /// # Shapes
    /// - `noise_labels`: `[N]`
    /// - output: `[N, channels]`
    pub fn forward<B: Backend>(&self, noise_labels: Tensor<B, 1>) -> Tensor<B, 2> {
        let device = noise_labels.device();
        let freqs = Tensor::<B, 1>::from_data(
            TensorData::new(self.frequencies.clone(), [self.frequencies.len()]),
            &device,
        );
        let angles = noise_labels.unsqueeze_dim::<2>(1) * freqs.unsqueeze_dim::<2>(0);
        Tensor::cat(vec![angles.clone().sin(), angles.cos()], 1)
    }
}

fn standard_normal(rng: &mut impl Rng) -> f64 {
    // Box-Muller; the first uniform is kept away from 0.
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;

    #[test]
    fn positional_features_are_sinusoids_of_geometric_frequencies() {
        let f = NoiseFeatures::new(NoiseEmbedding::Positional, 8);
        let out: Vec<f32> = f
            .forward(Tensor::<TestBackend, 1>::from_floats([0.5], &Default::default()))
            .into_data()
            .to_vec()
            .unwrap();
        let freqs = [1.0f64, 1e-4f64.powf(1.0 / 3.0), 1e-4f64.powf(2.0 / 3.0), 1e-4];
        for (i, w) in freqs.iter().enumerate() {
            assert!((out[i] as f64 - (0.5 * w).sin()).abs() < 1e-6);
            assert!((out[4 + i] as f64 - (0.5 * w).cos()).abs() < 1e-6);
        }
    }

    #[test]
    fn fourier_features_are_fixed_by_the_architecture() {
        let a = NoiseFeatures::new(NoiseEmbedding::Fourier, 64);
        let b = NoiseFeatures::new(NoiseEmbedding::Fourier, 64);
        assert_eq!(a, b);
        let spread = a.frequencies.iter().map(|f| (*f as f64 / (2.0 * PI)).powi(2)).sum::<f64>() / 32.0;
        assert!((spread.sqrt() - 16.0).abs() < 6.0, "frequency scale {}", spread.sqrt());
    }
}
