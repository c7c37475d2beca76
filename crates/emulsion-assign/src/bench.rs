//! `emulsion bench assign`: what assignment costs, per batch size. The distance kernel, the
//! device auction and KNN run on the chosen backend; LAPJV and the reference auction on this
//! CPU; an outside solver (the command line runs scipy's `linear_sum_assignment`) on the very
//! same matrices, handed over as `.npy` files, so the ratio is measured in the same run.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::{Distribution, ElementConversion, Int, Tensor, TensorData};

use crate::auction::auction;
use crate::backend::{AssignBackend, AuctionMode};
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
    /// Final ε of the approximate auctions, in cost units: their totals are within `B·ε`.
    pub epsilon: f64,
    pub seed: u64,
}

/// An outside solver's result on one matrix: median milliseconds and the optimum's total.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReferenceTiming {
    pub ms: f64,
    pub total: f64,
}

/// Times an outside solver on the fp16 cost matrices in these `.npy` files, `repeats` runs
/// each: one result per file, or why it could not run (a note in the table, not an error).
pub type Reference<'a> = &'a dyn Fn(&[PathBuf], usize) -> Result<Vec<ReferenceTiming>, String>;

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

/// The device auction's column for each row of `costs` (read back, so the timing includes it).
fn device_auction<B: AssignBackend>(costs: Tensor<B, 2>, mode: AuctionMode) -> Vec<usize> {
    let columns = Tensor::<B, 1, Int>::from_primitive(B::auction(costs.into_primitive().tensor(), mode));
    columns.into_data().convert::<i64>().to_vec::<i64>().expect("int columns").into_iter().map(|j| j as usize).collect()
}

/// The table for random images-like data (`U(-1, 1)`) against standard normal noise, with
/// `reference` (scipy) timed on the same matrices when given.
pub fn bench_assign<B: AssignBackend>(options: &BenchOptions, reference: Option<Reference>, device: &B::Device) -> String {
    let mut table = String::new();
    let d = options.dim;
    writeln!(
        table,
        "dim {d}, median of {} runs; distance = cost matrix on the device + readback; lapjv, cpu auction on this CPU;\n\
         device auctions include their cost matrix and the permutation's readback\n",
        options.repeats
    )
    .unwrap();
    writeln!(
        table,
        "{:>6} {:>12} {:>11} {:>14} {:>15} {:>17} {:>17} {:>10} {:>13} {:>12} {:>11} {:>11} {:>11} {:>9} {:>12} {:>16}",
        "batch",
        "distance ms",
        "lapjv ms",
        "lapjv fp16 ms",
        "cpu auction ms",
        "dev auction ms",
        "dev auction ε ms",
        "knn ms",
        "scipy fp16 ms",
        "scipy/lapjv",
        "random d",
        "lsa d",
        "knn d",
        "fp16 gap",
        "auction ε gap",
        "dev exact = opt"
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
            let c: Vec<f32> = cost_matrix(x.clone(), e.clone(), Metric::L2, Quantize::None).into_data().convert::<f32>().to_vec().unwrap();
            c
        });
        let exact = CostMatrix::new(b, costs.iter().map(|&c| c as f64).collect());
        let fp16 = CostMatrix::new(b, costs.iter().map(|&c| quantize(c, Quantize::Fp16) as f64).collect());
        let (lapjv_ms, best) = median_ms(options.repeats, || lapjv(&exact));
        let (lapjv16_ms, best16) = median_ms(options.repeats, || lapjv(&fp16));
        let (auction_ms, bid) = median_ms(options.repeats, || auction(&exact, options.epsilon));
        // On the device: fp16 costs solved exactly (training's `quantize = "fp16"`), and f32
        // costs to within B·ε.
        let (device_ms, device_exact) =
            median_ms(options.repeats, || device_auction(cost_matrix(x.clone(), e.clone(), Metric::L2, Quantize::Fp16), AuctionMode::Exact));
        let epsilon = AuctionMode::Approximate { epsilon: options.epsilon as f32 };
        let (device_eps_ms, device_eps) =
            median_ms(options.repeats, || device_auction(cost_matrix(x.clone(), e.clone(), Metric::L2, Quantize::None), epsilon));
        let (knn_ms, knn_d) = median_ms(options.repeats, || {
            let (_, distance) = knn_noise(x.clone(), options.k);
            distance.mean().into_scalar().elem::<f64>()
        });
        let random_d = exact.total(&(0..b).collect::<Vec<_>>()) / b as f64;
        let lsa_d = exact.total(&best) / b as f64;
        // The fp16 solution scored on the exact costs, against the exact optimum.
        let gap = (exact.total(&best16) - exact.total(&best)) / exact.total(&best);
        let auction_gap = (exact.total(&device_eps) - exact.total(&best)) / exact.total(&best);
        let cpu_gap = (exact.total(&bid) - exact.total(&best)) / exact.total(&best);
        let exact_optimal = fp16.total(&device_exact) == fp16.total(&best16);
        fp16_optima.push(fp16.total(&best16));
        if reference.is_some() {
            std::fs::create_dir_all(&scratch).ok();
            let path = scratch.join(format!("costs-fp16-{b}.npy"));
            if npy::write_costs(&path, &fp16).is_ok() {
                files.push(path);
            }
        }
        rows.push(Row {
            b,
            distance_ms,
            lapjv_ms,
            lapjv16_ms,
            auction_ms,
            device_ms,
            device_eps_ms,
            knn_ms,
            random_d,
            lsa_d,
            knn_d,
            gap,
            auction_gap: auction_gap.max(cpu_gap),
            exact_optimal,
        });
    }
    let scipy = match reference {
        Some(solve) if files.len() == rows.len() => Some(solve(&files, options.repeats)),
        Some(_) => Some(Err(format!("the cost matrices could not be written to {}", scratch.display()))),
        None => None,
    };
    let scipy = match scipy {
        Some(Ok(s)) if s.len() != rows.len() => Some(Err(format!("it answered for {} of {} matrices", s.len(), rows.len()))),
        other => other,
    };
    for (i, row) in rows.into_iter().enumerate() {
        let (scipy_ms, ratio) = match &scipy {
            Some(Ok(s)) => (format!("{:.2}", s[i].ms), format!("{:.1}x", s[i].ms / row.lapjv16_ms)),
            _ => ("n/a".into(), "n/a".into()),
        };
        let Row { b, distance_ms, lapjv_ms, lapjv16_ms, auction_ms, device_ms, device_eps_ms, knn_ms, random_d, lsa_d, knn_d, .. } = row;
        writeln!(
            table,
            "{b:>6} {distance_ms:>12.2} {lapjv_ms:>11.2} {lapjv16_ms:>14.2} {auction_ms:>15.2} {device_ms:>17.2} {device_eps_ms:>17.2} {knn_ms:>10.2} {scipy_ms:>13} {ratio:>12} {random_d:>11.4} {lsa_d:>11.4} {knn_d:>11.4} {:>8.4}% {:>11.5}% {:>16}",
            row.gap * 100.0,
            row.auction_gap * 100.0,
            if row.exact_optimal { "yes" } else { "NO" }
        )
        .unwrap();
    }
    match scipy {
        Some(Ok(s)) => {
            // scipy's optimum must equal ours on the same fp16 matrices.
            let agree = s.iter().zip(&fp16_optima).all(|(s, ours)| (ours - s.total).abs() <= 1e-9 * s.total.abs().max(1.0));
            writeln!(table, "\nscipy's optimal totals {} LAPJV's on every fp16 matrix", if agree { "equal" } else { "DIFFER FROM" }).unwrap();
        }
        Some(Err(why)) => writeln!(table, "\nscipy not timed: {why}").unwrap(),
        None => {}
    }
    writeln!(
        table,
        "knn: nearest of k = {}; auctions: final ε = {} (exact: integer costs, ε < 1/(B+1)); d: mean image-noise L2 distance;\n\
         gaps: extra total cost over the exact optimum (auction ε gap: the larger of the CPU and device auctions');\n\
         dev exact = opt: the device's exact auction on fp16 costs reaches LAPJV's fp16 optimum",
        options.k, options.epsilon
    )
    .unwrap();
    let _ = std::fs::remove_dir_all(&scratch);
    table
}

/// One batch size's measurements.
struct Row {
    b: usize,
    distance_ms: f64,
    lapjv_ms: f64,
    lapjv16_ms: f64,
    auction_ms: f64,
    device_ms: f64,
    device_eps_ms: f64,
    knn_ms: f64,
    random_d: f64,
    lsa_d: f64,
    knn_d: f64,
    gap: f64,
    auction_gap: f64,
    exact_optimal: bool,
}

/// The table for a given cost matrix: each method's total cost and time. The device auctions
/// get the matrix as f32 (the time excludes the upload, includes the permutation's readback).
pub fn bench_costs<B: AssignBackend>(costs: &CostMatrix, repeats: usize, epsilon: f64, device: &B::Device) -> String {
    let n = costs.n();
    let name = 22;
    let mut table = format!("{n} x {n} costs, median of {repeats} runs\n\n{:<name$} {:>24} {:>12}\n", "method", "total cost", "ms");
    let mut row = |method: &str, columns: &[usize], ms: Option<f64>| {
        let ms = ms.map_or("-".to_string(), |ms| format!("{ms:.3}"));
        writeln!(table, "{method:<name$} {:>24} {ms:>12}", format!("{}", costs.total(columns))).unwrap();
    };
    row("identity", &(0..n).collect::<Vec<_>>(), None);
    let (ms, best) = median_ms(repeats, || lapjv(costs));
    row("lapjv", &best, Some(ms));
    let (ms, bid) = median_ms(repeats, || auction(costs, epsilon));
    row("auction (cpu, ε)", &bid, Some(ms));
    let values: Vec<f32> = (0..n * n).map(|k| costs.get(k / n, k % n) as f32).collect();
    let matrix = Tensor::<B, 2>::from_data(TensorData::new(values, [n, n]), device);
    let (ms, columns) = median_ms(repeats, || device_auction(matrix.clone(), AuctionMode::Exact));
    row("auction (device, exact)", &columns, Some(ms));
    let (ms, columns) = median_ms(repeats, || device_auction(matrix.clone(), AuctionMode::Approximate { epsilon: epsilon as f32 }));
    row("auction (device, ε)", &columns, Some(ms));
    writeln!(
        table,
        "\nauctions with ε = {epsilon} are within {} of the optimum; the exact one is optimal for the costs\n\
         rounded to multiples of 2^-k (k as large as keeps range·2^k·(n+1) ≤ 2^24): exactly optimal for fp16 or integer costs",
        n as f64 * epsilon
    )
    .unwrap();
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;

    fn options() -> BenchOptions {
        BenchOptions { batches: vec![5, 7], dim: 6, repeats: 1, k: 2, epsilon: 1e-3, seed: 1 }
    }

    /// A stand-in for scipy: LAPJV's optimum of each matrix file, read back from its `.npy`.
    fn solve(files: &[PathBuf], _repeats: usize) -> Result<Vec<ReferenceTiming>, String> {
        files
            .iter()
            .map(|f| {
                let costs = npy::read_costs(f).map_err(|e| e.to_string())?;
                Ok(ReferenceTiming { ms: 1.0, total: costs.total(&lapjv(&costs)) })
            })
            .collect()
    }

    #[test]
    fn an_outside_solver_is_timed_and_checked_on_the_same_matrices() {
        // The bench seeds the backend's global generator.
        let _rng = crate::tests::lock_rng();
        let device = Default::default();
        let table = bench_assign::<TestBackend>(&options(), Some(&solve), &device);
        assert!(table.contains("scipy's optimal totals equal LAPJV's"), "{table}");
        let wrong = |files: &[PathBuf], repeats| solve(files, repeats).map(|t| t.into_iter().map(|r| ReferenceTiming { total: r.total + 1.0, ..r }).collect());
        let table = bench_assign::<TestBackend>(&options(), Some(&wrong), &device);
        assert!(table.contains("DIFFER FROM"), "{table}");
        let short = |files: &[PathBuf], repeats| solve(&files[..1], repeats);
        let table = bench_assign::<TestBackend>(&options(), Some(&short), &device);
        assert!(table.contains("scipy not timed: it answered for 1 of 2 matrices"), "{table}");
        let missing = |_: &[PathBuf], _| Err("python3: not found".to_string());
        let table = bench_assign::<TestBackend>(&options(), Some(&missing), &device);
        assert!(table.contains("scipy not timed: python3: not found"), "{table}");
        assert!(!bench_assign::<TestBackend>(&options(), None, &device).contains("scipy not timed"));
    }
}
