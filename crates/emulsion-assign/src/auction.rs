//! Bertsekas' auction algorithm (1988) with ε-scaling and Jacobi (parallel) bidding: every
//! unassigned row bids at once for its best column, raising that column's price by the margin
//! over its second-best plus ε; each column goes to its highest bidder. At the end every row is
//! within ε of its best column (ε-complementary slackness), so the total is within `n·ε` of the
//! optimum, and exactly optimal for integer costs when `ε < 1/n`.
//!
//! This is the CPU reference: the GPU solver runs the same rounds as kernels.

use crate::lapjv::CostMatrix;

const NONE: usize = usize::MAX;

/// Each scaling phase divides ε by this.
const EPSILON_FACTOR: f64 = 5.0;

/// The column of each row, with total cost within `n · final_epsilon` of the minimum.
///
/// # Panics
/// If `final_epsilon` is not positive or a cost is not finite.
pub fn auction(c: &CostMatrix, final_epsilon: f64) -> Vec<usize> {
    assert!(final_epsilon > 0.0, "the auction's ε must be positive");
    let n = c.n();
    if n <= 1 {
        return (0..n).collect();
    }
    let range = (0..n * n).map(|k| c.get(k / n, k % n)).fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        assert!(v.is_finite(), "assignment costs must be finite");
        (lo.min(v), hi.max(v))
    });
    // Benefits are -cost; prices start at 0 and persist across phases.
    let mut prices = vec![0.0f64; n];
    let mut epsilon = ((range.1 - range.0) / EPSILON_FACTOR).max(final_epsilon);
    let mut column_of = vec![NONE; n];
    loop {
        column_of.fill(NONE);
        let mut owner = vec![NONE; n];
        let mut unassigned: Vec<usize> = (0..n).collect();
        let mut best_bid = vec![f64::NEG_INFINITY; n];
        let mut bidder = vec![NONE; n];
        while !unassigned.is_empty() {
            // Bidding: every unassigned row at the same prices.
            let mut touched = Vec::new();
            for &i in &unassigned {
                let row = c.row(i);
                let (mut best, mut second, mut j_best) = (f64::NEG_INFINITY, f64::NEG_INFINITY, 0);
                for (j, &cost) in row.iter().enumerate() {
                    let value = -cost - prices[j];
                    if value > best {
                        second = best;
                        best = value;
                        j_best = j;
                    } else if value > second {
                        second = value;
                    }
                }
                let bid = prices[j_best] + (best - second) + epsilon;
                if bidder[j_best] == NONE {
                    touched.push(j_best);
                }
                if bid > best_bid[j_best] {
                    best_bid[j_best] = bid;
                    bidder[j_best] = i;
                }
            }
            // Assignment: each column to its highest bidder; the previous owner is freed.
            let mut freed = Vec::new();
            for &j in &touched {
                let i = bidder[j];
                if owner[j] != NONE {
                    column_of[owner[j]] = NONE;
                    freed.push(owner[j]);
                }
                owner[j] = i;
                column_of[i] = j;
                prices[j] = best_bid[j];
                best_bid[j] = f64::NEG_INFINITY;
                bidder[j] = NONE;
            }
            unassigned.retain(|&i| column_of[i] == NONE);
            unassigned.extend(freed);
        }
        if epsilon <= final_epsilon {
            return column_of;
        }
        epsilon = (epsilon / EPSILON_FACTOR).max(final_epsilon);
    }
}

/// An exact solve of integer costs: the auction with `ε = 1/(n+1)`.
///
/// # Panics
/// If a cost is not an integer.
pub fn auction_exact(c: &CostMatrix) -> Vec<usize> {
    let n = c.n();
    assert!((0..n * n).all(|k| c.get(k / n, k % n).fract() == 0.0), "exact mode needs integer costs");
    auction(c, 1.0 / (n as f64 + 1.0))
}

/// Costs rounded to integers after multiplying by `scale`, for [`auction_exact`]: the result
/// is optimal for the rounded costs, within `n / (2·scale)` of the real optimum.
pub fn quantize_to_integers(c: &CostMatrix, scale: f64) -> CostMatrix {
    let n = c.n();
    CostMatrix::new(n, (0..n * n).map(|k| (c.get(k / n, k % n) * scale).round()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lapjv::lapjv;
    use rand::{Rng, SeedableRng};

    fn random(n: usize, seed: u64, integer: bool) -> CostMatrix {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        CostMatrix::new(n, (0..n * n).map(|_| if integer { rng.random_range(0..100) as f64 } else { rng.random::<f64>() * 10.0 }).collect())
    }

    fn is_permutation(p: &[usize]) -> bool {
        let mut seen = vec![false; p.len()];
        p.iter().all(|&j| j < p.len() && !std::mem::replace(&mut seen[j], true))
    }

    #[test]
    fn exact_mode_equals_lapjv_on_integer_costs() {
        for (n, seed) in [(2, 1), (5, 2), (8, 3), (64, 4), (200, 5), (512, 6)] {
            let c = random(n, seed, true);
            let p = auction_exact(&c);
            assert!(is_permutation(&p), "n = {n}");
            assert_eq!(c.total(&p), c.total(&lapjv(&c)), "n = {n}");
        }
    }

    #[test]
    fn approximate_mode_is_within_n_epsilon() {
        for (n, seed, epsilon) in [(50, 7, 0.1), (300, 8, 0.01), (300, 9, 1e-4)] {
            let c = random(n, seed, false);
            let p = auction(&c, epsilon);
            assert!(is_permutation(&p));
            let (got, best) = (c.total(&p), c.total(&lapjv(&c)));
            assert!(got >= best - 1e-9 && got <= best + n as f64 * epsilon, "n = {n}, ε = {epsilon}: {got} vs {best}");
        }
    }

    #[test]
    fn quantised_exact_mode_is_within_its_rounding_bound() {
        let n = 128;
        let c = random(n, 10, false);
        let scale = 1000.0;
        let p = auction_exact(&quantize_to_integers(&c, scale));
        let (got, best) = (c.total(&p), c.total(&lapjv(&c)));
        assert!(got - best <= n as f64 / scale + 1e-9, "{got} vs {best}");
    }
}
