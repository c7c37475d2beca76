//! Immiscible noise assignment (Li et al. 2024, arXiv 2406.12303): before forming `x_t`, pair
//! each image of a batch with a noise so that the total image-noise distance is small, by
//! solving a linear assignment problem over the batch's own i.i.d. noises. Because the result
//! is a permutation of i.i.d. draws, the noise marginal stays exactly `N(0, I)`.
//!
//! - [`distance`]: the cost matrix as one GEMM on the device.
//! - [`lapjv`]: the exact solver (Jonker-Volgenant) on the CPU.
//! - [`auction`]: Bertsekas' auction with ε-scaling and Jacobi bidding (CPU reference); the
//!   same auction runs on WGPU/CUDA as one CubeCL kernel (`cube.rs`).
//! - [`knn`]: the improved paper's nearest-of-`k` selection on the device (biased marginal).
//! - [`backend`]: [`AssignBackend`], the backend extension the device kernels hang on.
//! - [`bench`], [`npy`]: `emulsion bench assign`, and the `.npy` matrices it shares with scipy.

pub mod auction;
pub mod backend;
pub mod bench;
#[cfg(feature = "cubecl")]
mod cube;
pub mod distance;
pub mod knn;
pub mod lapjv;
pub mod npy;

use std::time::Instant;

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

pub use backend::{AssignBackend, AuctionMode};
pub use distance::{cost_matrix, Metric, Quantize};
pub use knn::knn_noise;
pub use lapjv::{lapjv, CostMatrix};

/// How noises are paired with images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Independent noise for each image.
    #[default]
    None,
    /// Exact minimum-cost assignment (LAPJV on the CPU) over the batch.
    Lsa,
    /// Bertsekas' auction on the device (on the CPU for CPU backends): exact when `epsilon` is
    /// 0, else within `B·epsilon` of the minimum total cost.
    Auction,
    /// Nearest of `k` fresh candidates per image (biases the noise marginal).
    Knn,
}

/// The assignment options of a run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AssignConfig {
    pub method: Method,
    /// Candidates per image for `knn`.
    pub k: usize,
    pub metric: Metric,
    /// Rounding of the costs before `lsa` or `auction` solves them.
    pub quantize: Quantize,
    /// The auction's final ε in cost units; 0 solves exactly (integer-quantised costs).
    pub epsilon: f64,
    /// `lsa`: solve step k+1's assignment on a host thread while step k runs (its images and
    /// noise are known a step ahead); the permutations are the same as solving inline.
    pub overlap: bool,
    /// Which images and noise one assignment pairs in data-parallel training.
    pub scope: Scope,
}

/// The batch an assignment is solved over when several peers train one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Each peer's shard alone, as the official code assigns per GPU: `P` problems of `B/P`.
    Peer,
    /// The whole global batch, as one process would: one problem of `B`, solved by every peer.
    #[default]
    Global,
}

impl Default for AssignConfig {
    fn default() -> Self {
        Self { method: Method::None, k: 4, metric: Metric::L2, quantize: Quantize::None, epsilon: 0.0, overlap: true, scope: Scope::Global }
    }
}

impl AssignConfig {
    /// The first option that is out of range; the error names its key (`k`, `epsilon`).
    pub fn validate(&self) -> Result<(), emulsion_config::Invalid> {
        emulsion_config::at_least("k", self.k, 1)?;
        if !(self.epsilon.is_finite() && self.epsilon >= 0.0) {
            return Err(emulsion_config::Invalid::new("epsilon", format!("must be a finite number ≥ 0 (0 = exact), got {}", self.epsilon)));
        }
        Ok(())
    }

    /// Whether the assignment is solved on the host (`lsa`), so it can be solved ahead.
    pub fn solves_on_host(&self) -> bool {
        self.method == Method::Lsa
    }

    /// The auction's mode for these options.
    pub fn auction_mode(&self) -> AuctionMode {
        if self.epsilon == 0.0 {
            AuctionMode::Exact
        } else {
            AuctionMode::Approximate { epsilon: self.epsilon as f32 }
        }
    }
}

/// A batch's noise after assignment.
#[derive(Debug, Clone)]
pub struct Assigned<B: Backend> {
    /// `[B, D]`: row `i` is the noise of image `i`.
    pub noise: Tensor<B, 2>,
    /// The mean L2 distance between each image and its noise, on the device (read it when
    /// convenient: reading it waits for the device).
    pub mean_distance: Tensor<B, 1>,
    /// Host time spent in the assignment: for `lsa` (and `auction` on a CPU backend) the cost
    /// readback and the solve; for the on-device methods only the time to enqueue their work.
    pub seconds: f64,
}

/// Pairs `noise` `[B, D]` with images `x` `[B, D]` as `config` says. `knn` ignores `noise` and
/// draws its own `B·k` candidates from the backend's generator.
pub fn assign<B: AssignBackend>(x: Tensor<B, 2>, noise: Tensor<B, 2>, config: &AssignConfig) -> Assigned<B> {
    let started = Instant::now();
    let (noise, distance) = match config.method {
        Method::Knn => knn_noise(x, config.k),
        _ => {
            let noise = match permutation(&x, &noise, config) {
                Some(columns) => noise.select(0, columns),
                None => noise,
            };
            (noise.clone(), row_distance(x, noise))
        }
    };
    let mean_distance = distance.mean();
    Assigned { noise, mean_distance, seconds: started.elapsed().as_secs_f64() }
}

/// `noise` paired with `x` by `columns`, a solution [`host_costs`]' matrix had: row `i` gets
/// noise row `columns[i]`. `started` is when the step began waiting for the assignment.
pub fn assign_by_columns<B: Backend>(x: Tensor<B, 2>, noise: Tensor<B, 2>, columns: &[usize], started: Instant) -> Assigned<B> {
    let [b, _] = x.dims();
    assert_eq!(columns.len(), b, "one column per image");
    let index: Vec<i64> = columns.iter().map(|&j| j as i64).collect();
    let noise = noise.select(0, Tensor::<B, 1, Int>::from_data(TensorData::new(index, [b]), &x.device()));
    let mean_distance = row_distance(x, noise.clone()).mean();
    Assigned { noise, mean_distance, seconds: started.elapsed().as_secs_f64() }
}

/// The cost matrix a host-solved method (`lsa`) solves, read back from the device; `None` for
/// the other methods and for a batch of one. `lapjv` of it gives the columns.
pub fn host_costs<B: AssignBackend>(x: &Tensor<B, 2>, noise: &Tensor<B, 2>, config: &AssignConfig) -> Option<CostMatrix> {
    let [b, _] = x.dims();
    if !(config.solves_on_host() && b >= 2) {
        return None;
    }
    let costs: Vec<f32> = cost_matrix(x.clone(), noise.clone(), config.metric, config.quantize).into_data().convert::<f32>().to_vec().expect("f32 costs");
    Some(CostMatrix::new(b, costs.into_iter().map(f64::from).collect()))
}

/// The noise row of each image, `[B]`, for the methods that permute the batch's own noise
/// (`None` for the others, and for a batch of one).
fn permutation<B: AssignBackend>(x: &Tensor<B, 2>, noise: &Tensor<B, 2>, config: &AssignConfig) -> Option<Tensor<B, 1, Int>> {
    let [b, _] = x.dims();
    if let Some(costs) = host_costs(x, noise, config) {
        let index: Vec<i64> = lapjv(&costs).iter().map(|&j| j as i64).collect();
        return Some(Tensor::from_data(TensorData::new(index, [b]), &x.device()));
    }
    match config.method {
        Method::Auction if b >= 2 => {
            let costs = cost_matrix(x.clone(), noise.clone(), config.metric, config.quantize);
            Some(Tensor::from_primitive(B::auction(costs.into_primitive().tensor(), config.auction_mode())))
        }
        _ => None,
    }
}

/// `‖x_i − e_i‖` for each row, `[B]`.
fn row_distance<B: Backend>(x: Tensor<B, 2>, e: Tensor<B, 2>) -> Tensor<B, 1> {
    let [b, _] = x.dims();
    (x - e).powi_scalar(2).sum_dim(1).sqrt().reshape([b])
}

#[cfg(test)]
pub(crate) type TestBackend = burn::backend::NdArray<f32>;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use burn::tensor::Distribution;

    /// Serialises tests that seed the backend's global RNG.
    pub(crate) fn lock_rng() -> std::sync::MutexGuard<'static, ()> {
        static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    #[test]
    fn lsa_permutes_the_noise_and_lowers_the_mean_distance() {
        let _rng = lock_rng();
        let device = Default::default();
        <TestBackend as Backend>::seed(&device, 21);
        let x = Tensor::<TestBackend, 2>::random([64, 96], Distribution::Uniform(-1.0, 1.0), &device);
        let noise = Tensor::<TestBackend, 2>::random([64, 96], Distribution::Normal(0.0, 1.0), &device);
        let rows = |t: Tensor<TestBackend, 2>| -> Vec<Vec<f32>> {
            let v: Vec<f32> = t.into_data().to_vec().unwrap();
            v.chunks(96).map(<[f32]>::to_vec).collect()
        };
        let random = assign(x.clone(), noise.clone(), &AssignConfig::default());
        for quantize in [Quantize::None, Quantize::Fp16] {
            for metric in [Metric::L2, Metric::L2sq] {
                let config = AssignConfig { method: Method::Lsa, metric, quantize, ..Default::default() };
                let assigned = assign(x.clone(), noise.clone(), &config);
                // The same rows, reordered: a permutation of the i.i.d. draws.
                let (mut got, mut want) = (rows(assigned.noise.clone()), rows(noise.clone()));
                assert_ne!(got, want, "{config:?}: the assignment moved nothing");
                got.sort_by(|a, b| a.partial_cmp(b).unwrap());
                want.sort_by(|a, b| a.partial_cmp(b).unwrap());
                assert_eq!(got, want, "{config:?}");
                let (after, before) = (assigned.mean_distance.into_scalar(), random.mean_distance.clone().into_scalar());
                assert!(after < before, "{config:?}: mean distance {after} not below random pairing {before}");
            }
        }
    }

    #[test]
    fn none_keeps_the_noise_and_a_batch_of_one_is_a_no_op() {
        let device = Default::default();
        let x = Tensor::<TestBackend, 2>::from_floats([[0.0, 1.0]], &device);
        let e = Tensor::<TestBackend, 2>::from_floats([[3.0, 5.0]], &device);
        for method in [Method::None, Method::Lsa] {
            let a = assign(x.clone(), e.clone(), &AssignConfig { method, ..Default::default() });
            assert_eq!(a.noise.into_data(), e.clone().into_data());
            assert_eq!(a.mean_distance.into_scalar(), 5.0);
        }
    }
}
