//! Feature statistics: mean and covariance of the pool features, accumulated in f64 from
//! batches, and stored as a pytorch-fid `.npz` (`mu`, `sigma`).

use std::io::{Read, Write};
use std::path::Path;

use nalgebra::{DMatrix, DVector};

use crate::npy;
use crate::FidError;

/// Mean and covariance (divided by `n − 1`, as `np.cov`) of `count` feature vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureStats {
    pub mu: DVector<f64>,
    pub sigma: DMatrix<f64>,
    /// Vectors summarised; 0 when read from a file that does not say.
    pub count: usize,
}

/// Sums features batch by batch. They are shifted by the first batch's mean before summing,
/// so the covariance does not lose digits to a large mean.
#[derive(Debug, Clone)]
pub struct StatsAccumulator {
    dim: usize,
    count: usize,
    shift: Option<DVector<f64>>,
    sum: DVector<f64>,
    gram: DMatrix<f64>,
}

impl StatsAccumulator {
    pub fn new(dim: usize) -> Self {
        Self { dim, count: 0, shift: None, sum: DVector::zeros(dim), gram: DMatrix::zeros(dim, dim) }
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// Adds the rows of `features`, a row-major `[n, dim]` slice.
    pub fn add(&mut self, features: &[f32]) {
        assert_eq!(features.len() % self.dim, 0, "features are rows of {} values", self.dim);
        let n = features.len() / self.dim;
        if n == 0 {
            return;
        }
        let mut rows = DMatrix::<f64>::from_fn(n, self.dim, |i, j| features[i * self.dim + j] as f64);
        let shift = self.shift.get_or_insert_with(|| rows.row_mean().transpose()).clone();
        for mut row in rows.row_iter_mut() {
            row -= shift.transpose();
        }
        self.sum += rows.row_sum().transpose();
        self.gram.gemm_tr(1.0, &rows, &rows, 1.0);
        self.count += n;
    }

    /// The mean and covariance; needs at least two vectors.
    pub fn finish(self) -> Result<FeatureStats, FidError> {
        if self.count < 2 {
            return Err(FidError::Invalid(format!("a covariance needs at least 2 images, got {}", self.count)));
        }
        if !(self.sum.iter().all(|v| v.is_finite()) && self.gram.iter().all(|v| v.is_finite())) {
            return Err(FidError::Invalid("the Inception features hold NaN or infinite values (did the images diverge?)".into()));
        }
        let n = self.count as f64;
        let shifted_mean = &self.sum / n;
        let sigma = (self.gram - &shifted_mean * shifted_mean.transpose() * n) / (n - 1.0);
        let mu = self.shift.expect("count ≥ 2") + shifted_mean;
        Ok(FeatureStats { mu, sigma: (&sigma + sigma.transpose()) * 0.5, count: self.count })
    }
}

impl FeatureStats {
    /// Writes `mu` and `sigma` (f64) as an `.npz`, like pytorch-fid's `--save-stats`.
    pub fn save_npz(&self, path: &Path) -> Result<(), FidError> {
        let io = |source| FidError::Io { path: path.to_path_buf(), source };
        // Per process: runs of a sweep may write the same cached statistics at once.
        let tmp = path.with_extension(format!("npz.{}.tmp", std::process::id()));
        let file = std::fs::File::create(&tmp).map_err(io)?;
        let mut zip = zip::ZipWriter::new(file);
        let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored).large_file(true);
        let d = self.mu.len();
        // nalgebra is column-major; sigma is symmetric, but write it row by row all the same.
        let sigma_rows: Vec<f64> = (0..d).flat_map(|i| self.sigma.row(i).iter().copied().collect::<Vec<_>>()).collect();
        for (name, bytes) in [("mu.npy", npy::to_bytes(&[d], self.mu.as_slice())), ("sigma.npy", npy::to_bytes(&[d, d], &sigma_rows))] {
            zip.start_file(name, options).map_err(|e| io(e.into()))?;
            zip.write_all(&bytes).map_err(io)?;
        }
        zip.finish().map_err(|e| io(e.into()))?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Reads `mu` and `sigma` from an `.npz` (pytorch-fid, clean-fid, or [`save_npz`]).
    ///
    /// [`save_npz`]: FeatureStats::save_npz
    pub fn load_npz(path: &Path) -> Result<Self, FidError> {
        let bad = |reason: String| FidError::Stats { path: path.to_path_buf(), reason };
        let file = std::fs::File::open(path).map_err(|source| FidError::Io { path: path.to_path_buf(), source })?;
        let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(format!("not an .npz (zip) file: {e}")))?;
        let mut array = |name: &str| -> Result<npy::Array, FidError> {
            let mut entry = zip.by_name(&format!("{name}.npy")).map_err(|_| bad(format!("no `{name}` array (expected keys `mu` and `sigma`)")))?;
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).map_err(|e| bad(format!("`{name}`: {e}")))?;
            npy::parse(&bytes).map_err(|e| bad(format!("`{name}`: {e}")))
        };
        let (mu, sigma) = (array("mu")?, array("sigma")?);
        let d = mu.values.len();
        if mu.shape != [d] || sigma.shape != [d, d] {
            return Err(bad(format!("`mu` has shape {:?} and `sigma` {:?}; expected (d,) and (d, d)", mu.shape, sigma.shape)));
        }
        if !mu.values.iter().chain(&sigma.values).all(|v| v.is_finite()) {
            return Err(bad("the statistics hold NaN or infinite values".into()));
        }
        Ok(Self { mu: DVector::from_vec(mu.values), sigma: DMatrix::from_row_slice(d, d, &sigma.values), count: 0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batched_statistics_equal_the_two_pass_formula_despite_a_large_mean() {
        // Rows x_i = 1e6 + small values: a naive sum of squares would lose them.
        let (n, d) = (7, 3);
        let rows: Vec<f32> = (0..n * d).map(|k| 1.0e6 + ((k * 37 % 11) as f32) * 0.25).collect();
        let mut acc = StatsAccumulator::new(d);
        acc.add(&rows[..2 * d]);
        acc.add(&rows[2 * d..]);
        let stats = acc.finish().unwrap();
        let x = |i: usize, j: usize| rows[i * d + j] as f64;
        for j in 0..d {
            let mean = (0..n).map(|i| x(i, j)).sum::<f64>() / n as f64;
            assert!((stats.mu[j] - mean).abs() < 1e-9);
            for k in 0..d {
                let mean_k = (0..n).map(|i| x(i, k)).sum::<f64>() / n as f64;
                let cov = (0..n).map(|i| (x(i, j) - mean) * (x(i, k) - mean_k)).sum::<f64>() / (n - 1) as f64;
                assert!((stats.sigma[(j, k)] - cov).abs() < 1e-12, "({j}, {k}): {} vs {cov}", stats.sigma[(j, k)]);
            }
        }
        assert!(StatsAccumulator::new(d).finish().is_err());
    }

    #[test]
    fn npz_round_trips_and_bad_files_are_named() {
        let dir = std::env::temp_dir().join(format!("emulsion-fid-npz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let stats = FeatureStats {
            mu: DVector::from_vec(vec![1.0, -2.5]),
            sigma: DMatrix::from_row_slice(2, 2, &[2.0, 0.5, 0.5, 3.0]),
            count: 0,
        };
        let path = dir.join("s.npz");
        stats.save_npz(&path).unwrap();
        assert_eq!(FeatureStats::load_npz(&path).unwrap(), stats);
        std::fs::write(dir.join("bad.npz"), b"not a zip").unwrap();
        let error = FeatureStats::load_npz(&dir.join("bad.npz")).unwrap_err().to_string();
        assert!(error.contains("bad.npz") && error.contains("zip"), "{error}");
    }
}
