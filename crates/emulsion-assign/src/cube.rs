//! The assignment's CubeCL kernels, for `CubeBackend` (WGPU, CUDA):
//!
//! - `cost_epilogue`: one unit per cost, `max(‖x‖² + ‖e‖² − 2G, 0)`, √ for L2, fp16 rounding.
//! - `auction`: Bertsekas' auction with ε-scaling and Jacobi bidding in **one cube and one
//!   dispatch**: all phases and rounds run between cube barriers, so no round costs a host
//!   round-trip. Late rounds have few bidders, so each bidder's scan of the `n` prices is split
//!   over a group of units (as many as the bidders leave free) and reduced in shared memory.
//!
//! On lavapipe (Mesa's software Vulkan) every shader stops after 65,535 loop iterations in all,
//! so there the auction is only complete for small batches; use the CPU backend instead.

use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{DType, Shape};
use burn_cubecl::kernel::{cast, into_contiguous};
use burn_cubecl::ops::numeric::empty_device;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeElement, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::*;

use crate::backend::{AssignBackend, AuctionMode};
use crate::distance::{Metric, Quantize};

/// Units in the auction's cube (capped by the device).
const AUCTION_UNITS: u32 = 1024;
/// Each scaling phase divides ε by this, as the CPU reference does.
const EPSILON_FACTOR: i32 = 5;

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> AssignBackend for CubeBackend<R, F, I, BT> {
    fn cost_epilogue(x_sq: FloatTensor<Self>, e_sq: FloatTensor<Self>, gram: FloatTensor<Self>, metric: Metric, quantize_to: Quantize) -> FloatTensor<Self> {
        let client = gram.client.clone();
        let shape = gram.meta.shape().clone();
        let out = empty_device::<R, F>(client.clone(), gram.device.clone(), shape.clone());
        let units = shape.num_elements();
        let cube_dim = CubeDim::new(&client, units);
        let cube_count = cubecl::calculate_cube_count_elemwise(&client, units, cube_dim);
        cost_epilogue_kernel::launch::<F, R>(
            &client,
            cube_count,
            cube_dim,
            x_sq.into_tensor_arg(),
            e_sq.into_tensor_arg(),
            gram.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            metric == Metric::L2,
            quantize_to == Quantize::Fp16,
        );
        out
    }

    fn auction(costs: FloatTensor<Self>, mode: AuctionMode) -> IntTensor<Self> {
        let columns = match mode {
            AuctionMode::Exact => launch_auction::<R, F, i32>(costs, 1.0, true),
            AuctionMode::Approximate { epsilon } => launch_auction::<R, F, f32>(costs, epsilon, false),
        };
        let int_dtype: DType = I::dtype();
        if int_dtype == DType::I32 { columns } else { cast(columns, int_dtype) }
    }
}

/// Allocates the auction's scratch and launches it on one cube: prices of type `N` (i32 in
/// exact mode, f32 otherwise). Returns each row's column, `[n]` i32.
fn launch_auction<R: CubeRuntime, F: FloatElement, N: Numeric + CubeElement>(costs: CubeTensor<R>, epsilon_final: f32, exact: bool) -> CubeTensor<R> {
    let costs = into_contiguous(costs);
    let (client, device) = (costs.client.clone(), costs.device.clone());
    let n = costs.meta.shape()[0];
    let units = AUCTION_UNITS.min(client.properties().hardware.max_units_per_cube).min(n.next_power_of_two().max(32) as u32);
    let units = 1u32 << (31 - units.leading_zeros()); // a power of two, for the group reductions
    let scratch = |len: usize| empty_device::<R, i32>(client.clone(), device.clone(), Shape::new([len]));
    let columns = scratch(n);
    let max_rounds = 64 * (n as u32) + 4096;
    auction_kernel::launch::<F, N, R>(
        &client,
        CubeCount::Static(1, 1, 1),
        CubeDim::new_1d(units),
        costs.into_tensor_arg(),
        empty_device::<R, N>(client.clone(), device.clone(), Shape::new([2 * n])).into_tensor_arg(),
        scratch(3 * n).into_tensor_arg(),
        scratch(2 * n + 1).into_tensor_arg(),
        columns.clone().into_tensor_arg(),
        epsilon_final,
        max_rounds,
        units as usize,
        exact,
    );
    columns
}

/// `C = max(‖x‖² + ‖e‖² − 2G, 0)`, then √ for L2, then rounded to the nearest fp16 value.
#[cube(launch)]
fn cost_epilogue_kernel<F: Float>(x_sq: &Tensor<F>, e_sq: &Tensor<F>, gram: &Tensor<F>, out: &mut Tensor<F>, #[comptime] root: bool, #[comptime] fp16: bool) {
    if ABSOLUTE_POS >= out.len() {
        terminate!();
    }
    let cols = out.shape(1);
    let i = ABSOLUTE_POS / cols;
    let j = ABSOLUTE_POS % cols;
    let g = gram[i * gram.stride(0) + j * gram.stride(1)];
    let squared = x_sq[i * x_sq.stride(0)] + e_sq[j * e_sq.stride(1)] - F::new(2.0) * g;
    let mut c = f32::cast_from(F::max(squared, F::new(0.0)));
    if root {
        c = c.sqrt();
    }
    if fp16 {
        c = round_to_fp16(c);
    }
    out[ABSOLUTE_POS] = F::cast_from(c);
}

/// The nearest fp16 value to `c ≥ 0` (ties to even), saturating at fp16's largest, 65504. In f32
/// bit arithmetic, because fp16 storage is optional on WGPU.
#[cube]
fn round_to_fp16(c: f32) -> f32 {
    // Keep 11 significant bits: drop 13 of f32's 24, rounding half to even.
    let bits = u32::reinterpret(c);
    let mut rounded = f32::reinterpret((bits + 0xFFFu32 + ((bits >> 13u32) & 1u32)) & 0xFFFF_E000u32);
    if c < 6.103_515_6e-5 {
        // fp16 subnormals are multiples of 2⁻²⁴ (ties: WGSL rounds to even, CUDA away from 0).
        rounded = f32::round(c * 16_777_216.0) / 16_777_216.0;
    }
    if rounded > 65504.0 {
        rounded = 65504.0;
    }
    rounded
}

/// Bertsekas' auction for the square `costs` `[n, n]`, writing each row's column to `columns`.
///
/// Scratch, uninitialised: `prices` `[2n]` (object prices, then each bid's offered price),
/// `state` `[3n]` (object owners, this round's bidders, each bid's object), `atomics` `[2n+1]`
/// (best offer per object, as an order-preserving i32; winning bid per object; rounds used, −1
/// if `max_rounds` ran out and the rest was paired arbitrarily).
/// `N` is i32 in exact mode (ε ends at 1 on costs scaled by n+1), f32 otherwise (ε ends at
/// `epsilon_final`). Prices start at 0 and only rise, so f32 prices order as their bits do.
#[cube(launch)]
fn auction_kernel<F: Float, N: Numeric>(
    costs: &Tensor<F>,
    prices: &mut Tensor<N>,
    state: &mut Tensor<i32>,
    atomics: &mut Tensor<Atomic<i32>>,
    columns: &mut Tensor<i32>,
    epsilon_final: f32,
    max_rounds: u32,
    #[comptime] units: usize,
    #[comptime] exact: bool,
) {
    let n = columns.len();
    let unit = UNIT_POS as usize;
    let mut low = SharedMemory::<f32>::new(units);
    let mut high = SharedMemory::<f32>::new(units);
    let mut best = SharedMemory::<N>::new(units);
    let mut second = SharedMemory::<N>::new(units);
    let mut best_object = SharedMemory::<i32>::new(units);
    let mut scan = SharedMemory::<u32>::new(units);
    let chunk = (n + units - 1) / units;

    // The cost range, for the exact mode's scale and the first ε.
    let mut lo = f32::new(3.0e38);
    let mut hi = f32::new(-3.0e38);
    let mut k = unit;
    while k < n * n {
        let c = f32::cast_from(costs[k]);
        lo = f32::min(lo, c);
        hi = f32::max(hi, c);
        k += units;
    }
    low[unit] = lo;
    high[unit] = hi;
    sync_cube();
    let mut stride = (units / 2).runtime();
    while stride > 0 {
        if unit < stride {
            low[unit] = f32::min(low[unit], low[unit + stride]);
            high[unit] = f32::max(high[unit], high[unit + stride]);
        }
        sync_cube();
        stride /= 2;
    }
    let lo = low[0];
    let range = high[0] - low[0];
    let scale = exact_scale(range, n);

    // Work in `value = c − min c` (scaled and rounded to integers in exact mode).
    let mut epsilon = N::cast_from(epsilon_final);
    let mut top = N::cast_from(range);
    if exact {
        epsilon = N::from_int(1);
        top = N::cast_from(f32::round(range * scale)) * N::cast_from(n + 1);
    }
    let five = N::from_int(EPSILON_FACTOR as i64);
    if top / five > epsilon {
        epsilon = top / five;
    }
    let epsilon_last = if exact { N::from_int(1) } else { N::cast_from(epsilon_final) };
    let nothing = -1i32;
    let mut j = unit;
    while j < n {
        prices[j] = N::from_int(0);
        j += units;
    }

    let mut round = 0u32.runtime();
    loop {
        // A phase: everyone unassigned, prices kept from the last phase.
        let mut j = unit;
        while j < n {
            state[j] = nothing;
            columns[j] = nothing;
            atomics[j].store(nothing);
            atomics[n + j].store(2_147_483_647i32);
            j += units;
        }
        sync_storage();
        sync_cube();
        loop {
            // This round's bidders: the unassigned rows in increasing order (deterministic, so
            // runs repeat), each unit compacting its own chunk at a prefix-sum offset.
            let first = unit * chunk;
            let last = usize::min(first + chunk, n);
            let mut mine = 0u32.runtime();
            let mut i = first;
            while i < last {
                if columns[i] < 0 {
                    mine += 1;
                }
                i += 1;
            }
            scan[unit] = mine;
            sync_cube();
            let mut offset = 1usize.runtime();
            while offset < units {
                let mut sum = scan[unit];
                if unit >= offset {
                    sum += scan[unit - offset];
                }
                sync_cube();
                scan[unit] = sum;
                sync_cube();
                offset *= 2;
            }
            let mut slot = (scan[unit] - mine) as usize;
            let mut i = first;
            while i < last {
                if columns[i] < 0 {
                    state[n + slot] = i as i32;
                    slot += 1;
                }
                i += 1;
            }
            sync_storage();
            sync_cube();
            let bidders = scan[units - 1] as usize;
            if bidders == 0 || round >= max_rounds {
                break;
            }

            // Bidding: `group` units scan one bidder's row, then reduce (best, second, argmin).
            let mut group = 1usize.runtime();
            while group * 2 * bidders <= units {
                group *= 2;
            }
            let groups = units / group;
            let lane = unit % group;
            let batches = (bidders + groups - 1) / groups;
            for batch in 0..batches {
                let slot = batch * groups + unit / group;
                let mut b1 = N::max_value();
                let mut b2 = N::max_value();
                let mut j1 = i32::new(-1);
                if slot < bidders {
                    let i = state[n + slot] as usize;
                    let mut j = lane;
                    while j < n {
                        let w = value::<F, N>(costs[i * n + j], lo, scale, n, exact) + prices[j];
                        if w < b1 {
                            b2 = b1;
                            b1 = w;
                            j1 = j as i32;
                        } else if w < b2 {
                            b2 = w;
                        }
                        j += group;
                    }
                }
                best[unit] = b1;
                second[unit] = b2;
                best_object[unit] = j1;
                sync_cube();
                let mut half = group / 2;
                while half > 0 {
                    if lane < half {
                        let a1 = best[unit];
                        let a2 = second[unit];
                        let c1 = best[unit + half];
                        let c2 = second[unit + half];
                        if c1 < a1 {
                            // Theirs is the best; ours competes for second.
                            best[unit] = c1;
                            best_object[unit] = best_object[unit + half];
                            second[unit] = if c2 < a1 { c2 } else { a1 };
                        } else if c1 < a2 {
                            second[unit] = c1;
                        }
                    }
                    sync_cube();
                    half /= 2;
                }
                if slot < bidders && lane == 0 {
                    // Raise the price by the margin over the second best, plus ε.
                    let j = best_object[unit] as usize;
                    let offer = prices[j] + (second[unit] - best[unit]) + epsilon;
                    state[2 * n + slot] = j as i32;
                    prices[n + slot] = offer;
                    atomics[j].fetch_max(i32::reinterpret(offer));
                }
                sync_cube();
            }
            sync_storage();
            sync_cube();
            // Each object goes to its highest offer (the lowest slot among equal offers).
            let mut slot = unit;
            while slot < bidders {
                let j = state[2 * n + slot] as usize;
                if atomics[j].load() == i32::reinterpret(prices[n + slot]) {
                    atomics[n + j].fetch_min(slot as i32);
                }
                slot += units;
            }
            sync_storage();
            sync_cube();
            let mut slot = unit;
            while slot < bidders {
                let j = state[2 * n + slot] as usize;
                if atomics[n + j].load() == slot as i32 {
                    let previous = state[j];
                    if previous >= 0 {
                        columns[previous as usize] = nothing;
                    }
                    let i = state[n + slot];
                    state[j] = i;
                    columns[i as usize] = j as i32;
                    prices[j] = prices[n + slot];
                    atomics[j].store(nothing);
                    atomics[n + j].store(2_147_483_647i32);
                }
                slot += units;
            }
            sync_storage();
            sync_cube();
            round += 1;
        }
        if epsilon <= epsilon_last || round >= max_rounds {
            break;
        }
        epsilon = epsilon / five;
        if epsilon < epsilon_last {
            epsilon = epsilon_last;
        }
    }

    if unit == 0 {
        if round >= max_rounds {
            // Out of rounds (only on pathological input): pair the rest so the result is still a
            // permutation, and say so.
            let mut free = 0usize.runtime();
            for i in 0..n {
                if columns[i] < 0 {
                    while state[free] >= 0 {
                        free += 1;
                    }
                    state[free] = i as i32;
                    columns[i] = free as i32;
                }
            }
            atomics[2 * n].store(-1);
        } else {
            atomics[2 * n].store(round as i32);
        }
    }
}

/// The auction's value of cost `c`: `c − lo`, or in exact mode `round((c − lo)·scale)·(n+1)`.
#[cube]
fn value<F: Float, N: Numeric>(c: F, lo: f32, scale: f32, n: usize, #[comptime] exact: bool) -> N {
    let shifted = f32::cast_from(c) - lo;
    if exact {
        N::cast_from(f32::round(shifted * scale)) * N::cast_from(n + 1)
    } else {
        N::cast_from(shifted)
    }
}

/// [`crate::backend::exact_scale`], in the kernel.
#[cube]
fn exact_scale(range: f32, n: usize) -> f32 {
    let limit = 16_777_216.0f32;
    let span = range * f32::cast_from(n + 1);
    let mut scale = 1.0f32.runtime();
    if span > 0.0 {
        while span * scale * 2.0 <= limit {
            scale *= 2.0;
        }
        while span * scale > limit {
            scale *= 0.5;
        }
    }
    scale
}
