//! `emulsion bench assign`: what assignment costs, per batch size. The distance kernel and KNN
//! run on the chosen backend; LAPJV on this CPU; scipy's `linear_sum_assignment` (through
//! `scripts/scipy_lsa.py`, when Python and scipy are there) on the very same matrices, so the
//! ratio is measured in the same run.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use burn::tensor::{backend::Backend, Distribution, ElementConversion, Tensor};

use crate::auction::auction;
use crate::distance::{cost_matrix, quantize, Metric, Quantize};
use crate::knn::knn_noise;
use crate::lapjv::{lapjv, CostMatrix};
use crate::npy;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub batches: Vec<usize>,
    pub dim: usize,
    /// Timed runs per measurement; the median is reported.
    pub repeats: usize,
    /// Candidates per image for KNN.
    pub k: usize,
    /// Final ε of the (CPU reference) auction, in cost units: its total is within `B·ε`.
    pub epsilon: f64,
    /// `scripts/scipy_lsa.py`, to time scipy on the same matrices; `None` skips it.
    pub scipy: Option<PathBuf>,
    pub seed: u64,
}

/// The median of `repeats` timings of `f`, in milliseconds, and its last result.
fn median_ms<T>(repeats: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut times = Vec::with_capacity(repeats);
    let mut last = None;
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        last = Some(f());
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (times[times.len() / 2], last.expect("at least one run"))
}

/// One scipy measurement: median seconds and the optimum's total.
struct Scipy {
    ms: f64,
    total: f64,
}

/// Times scipy on `files` with `script`; a missing Python or scipy is a note, not an error.
fn run_scipy(script: &Path, files: &[PathBuf], repeats: usize) -> Result<Vec<Scipy>, String> {
    let output = Command::new("python3")
        .arg(script)
        .arg("--repeats")
        .arg(repeats.to_string())
        .args(files)
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    if !output.status.success() {
        let err = String::from_utf8_lossy(&output.stderr);
        return Err(err.lines().last().unwrap_or("failed").to_string());
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            // `seconds total` per file, one line each.
            let mut it = line.split_whitespace().map(str::parse::<f64>);
            match (it.next(), it.next()) {
                (Some(Ok(s)), Some(Ok(total))) => Ok(Scipy { ms: s * 1e3, total }),
                _ => Err(format!("unexpected output from {}: {line}", script.display())),
            }
        })
        .collect()
}

/// The table for random images-like data (`U(-1, 1)`) against standard normal noise.
pub fn bench_assign<B: Backend>(options: &BenchOptions, device: &B::Device) -> String {
    let mut table = String::new();
    let d = options.dim;
    writeln!(
        table,
        "dim {d}, median of {} runs; distance = cost matrix on the device + readback; lapjv on this CPU\n",
        options.repeats
    )
    .unwrap();
    writeln!(
        table,
        "{:>6} {:>12} {:>11} {:>14} {:>11} {:>10} {:>13} {:>12} {:>11} {:>11} {:>11} {:>9} {:>12}",
        "batch", "distance ms", "lapjv ms", "lapjv fp16 ms", "auction ms", "knn ms", "scipy fp16 ms", "scipy/lapjv", "random d", "lsa d", "knn d", "fp16 gap", "auction gap"
    )
    .unwrap();
    let scratch = std::env::temp_dir().join(format!("emulsion-bench-assign-{}", std::process::id()));
    let mut rows = Vec::new();
    let mut files = Vec::new();
    // LAPJV's optimal total on each fp16 matrix, which scipy must reproduce.
    let mut fp16_optima = Vec::new();
    for &b in &options.batches {
        B::seed(device, options.seed ^ b as u64);
        let x = Tensor::<B, 2>::random([b, d], Distribution::Uniform(-1.0, 1.0), device);
        let e = Tensor::<B, 2>::random([b, d], Distribution::Normal(0.0, 1.0), device);
        let (distance_ms, costs) = median_ms(options.repeats, || {
            let c: Vec<f32> = cost_matrix(x.clone(), e.clone(), Metric::L2).into_data().convert::<f32>().to_vec().unwrap();
            c
        });
        let exact = CostMatrix::new(b, costs.iter().map(|&c| c as f64).collect());
        let fp16 = CostMatrix::new(b, costs.iter().map(|&c| quantize(c, Quantize::Fp16) as f64).collect());
        let (lapjv_ms, best) = median_ms(options.repeats, || lapjv(&exact));
        let (lapjv16_ms, best16) = median_ms(options.repeats, || lapjv(&fp16));
        let (auction_ms, bid) = median_ms(options.repeats, || auction(&exact, options.epsilon));
        let (knn_ms, knn_d) = median_ms(options.repeats, || {
            let (_, distance) = knn_noise(x.clone(), options.k);
            distance.mean().into_scalar().elem::<f64>()
        });
        let random_d = exact.total(&(0..b).collect::<Vec<_>>()) / b as f64;
        let lsa_d = exact.total(&best) / b as f64;
        // The fp16 solution scored on the exact costs, against the exact optimum.
        let gap = (exact.total(&best16) - exact.total(&best)) / exact.total(&best);
        let auction_gap = (exact.total(&bid) - exact.total(&best)) / exact.total(&best);
        fp16_optima.push(fp16.total(&best16));
        if options.scipy.is_some() {
            std::fs::create_dir_all(&scratch).ok();
            let path = scratch.join(format!("costs-fp16-{b}.npy"));
            if npy::write_costs(&path, &fp16).is_ok() {
                files.push(path);
            }
        }
        rows.push((b, distance_ms, lapjv_ms, lapjv16_ms, auction_ms, knn_ms, random_d, lsa_d, knn_d, gap, auction_gap));
    }
    let scipy = match &options.scipy {
        Some(script) if files.len() == rows.len() => Some(run_scipy(script, &files, options.repeats)),
        _ => None,
    };
    for (i, (b, distance_ms, lapjv_ms, lapjv16_ms, auction_ms, knn_ms, random_d, lsa_d, knn_d, gap, auction_gap)) in
        rows.into_iter().enumerate()
    {
        let (scipy_ms, ratio) = match &scipy {
            Some(Ok(s)) => (format!("{:.2}", s[i].ms), format!("{:.1}x", s[i].ms / lapjv16_ms)),
            _ => ("n/a".into(), "n/a".into()),
        };
        writeln!(
            table,
            "{b:>6} {distance_ms:>12.2} {lapjv_ms:>11.2} {lapjv16_ms:>14.2} {auction_ms:>11.2} {knn_ms:>10.2} {scipy_ms:>13} {ratio:>12} {random_d:>11.4} {lsa_d:>11.4} {knn_d:>11.4} {:>8.4}% {:>11.5}%",
            gap * 100.0,
            auction_gap * 100.0
        )
        .unwrap();
    }
    match scipy {
        Some(Ok(s)) => {
            // scipy's optimum must equal ours on the same fp16 matrices.
            let agree = s.iter().zip(&fp16_optima).all(|(s, ours)| (ours - s.total).abs() <= 1e-9 * s.total.abs().max(1.0));
            writeln!(table, "\nscipy's optimal totals {} LAPJV's on every fp16 matrix", if agree { "equal" } else { "DIFFER FROM" }).unwrap();
        }
        Some(Err(why)) => writeln!(table, "\nscipy not timed: {why} (pip install numpy scipy)").unwrap(),
        None => {}
    }
    writeln!(
        table,
        "knn: nearest of k = {}; auction: CPU reference, final ε = {}; d: mean image-noise L2 distance; gaps: extra total cost over the exact optimum",
        options.k, options.epsilon
    )
    .unwrap();
    let _ = std::fs::remove_dir_all(&scratch);
    table
}

/// The table for a given cost matrix: each method's total cost and time.
pub fn bench_costs(costs: &CostMatrix, repeats: usize, epsilon: f64) -> String {
    let n = costs.n();
    let mut table = format!("{n} x {n} costs, median of {repeats} runs\n\n{:<10} {:>24} {:>12}\n", "method", "total cost", "ms");
    let identity: Vec<usize> = (0..n).collect();
    writeln!(table, "{:<10} {:>24} {:>12}", "identity", format!("{}", costs.total(&identity)), "-").unwrap();
    let (ms, best) = median_ms(repeats, || lapjv(costs));
    writeln!(table, "{:<10} {:>24} {:>12.3}", "lapjv", format!("{}", costs.total(&best)), ms).unwrap();
    let (ms, bid) = median_ms(repeats, || auction(costs, epsilon));
    writeln!(table, "{:<10} {:>24} {:>12.3}", "auction", format!("{}", costs.total(&bid)), ms).unwrap();
    writeln!(table, "\nauction: CPU reference, final ε = {epsilon}, so within {} of the optimum", n as f64 * epsilon).unwrap();
    table
}
