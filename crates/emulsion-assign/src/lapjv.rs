//! The Jonker-Volgenant algorithm (1987) for the dense linear assignment problem: column
//! reduction, reduction transfer and two rounds of augmenting row reduction give most rows a
//! column cheaply; shortest augmenting paths (Dijkstra over reduced costs) place the rest.
//! `min Σ_i C[i][π(i)]` over permutations `π`, exactly, in `O(n³)` worst case.

/// A square cost matrix, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct CostMatrix {
    n: usize,
    costs: Vec<f64>,
}

impl CostMatrix {
    /// # Panics
    /// If `costs.len() != n * n`.
    pub fn new(n: usize, costs: Vec<f64>) -> Self {
        assert_eq!(costs.len(), n * n, "a cost matrix of side {n} has {} entries", n * n);
        Self { n, costs }
    }

    pub fn n(&self) -> usize {
        self.n
    }

    #[inline]
    pub fn get(&self, row: usize, col: usize) -> f64 {
        self.costs[row * self.n + col]
    }

    pub fn row(&self, row: usize) -> &[f64] {
        &self.costs[row * self.n..(row + 1) * self.n]
    }

    /// `Σ_i C[i][π(i)]`.
    pub fn total(&self, assignment: &[usize]) -> f64 {
        assignment.iter().enumerate().map(|(i, &j)| self.get(i, j)).sum()
    }
}

const FREE: usize = usize::MAX;

/// The column assigned to each row by a minimum-cost assignment.
///
/// # Panics
/// If a cost is not finite.
pub fn lapjv(c: &CostMatrix) -> Vec<usize> {
    let n = c.n;
    assert!(c.costs.iter().all(|v| v.is_finite()), "assignment costs must be finite");
    match n {
        0 => return vec![],
        1 => return vec![0],
        _ => {}
    }
    let mut row_of = vec![FREE; n]; // column → row
    let mut col_of = vec![FREE; n]; // row → column
    let mut v = vec![0.0f64; n]; // column duals
    let mut matches = vec![0u32; n];

    // Column reduction: each column's cheapest row, scanned from the last column as JV do.
    for j in (0..n).rev() {
        let (mut imin, mut min) = (0, c.get(0, j));
        for i in 1..n {
            let h = c.get(i, j);
            if h < min {
                min = h;
                imin = i;
            }
        }
        v[j] = min;
        matches[imin] += 1;
        if matches[imin] == 1 {
            col_of[imin] = j;
            row_of[j] = imin;
        } else if v[j] < v[col_of[imin]] {
            let j1 = col_of[imin];
            col_of[imin] = j;
            row_of[j] = imin;
            row_of[j1] = FREE;
        } else {
            row_of[j] = FREE;
        }
    }

    // Reduction transfer from rows matched once; collect the free rows.
    let mut free = Vec::with_capacity(n);
    for i in 0..n {
        match matches[i] {
            0 => free.push(i),
            1 => {
                let j1 = col_of[i];
                let row = c.row(i);
                let min = (0..n).filter(|&j| j != j1).map(|j| row[j] - v[j]).fold(f64::INFINITY, f64::min);
                v[j1] -= min;
            }
            _ => {}
        }
    }

    // Augmenting row reduction, twice.
    for _ in 0..2 {
        let previous = std::mem::take(&mut free);
        let mut queue: std::collections::VecDeque<usize> = previous.into();
        while let Some(i) = queue.pop_front() {
            let row = c.row(i);
            // The smallest and second-smallest reduced costs of row i.
            let (mut umin, mut j1) = (row[0] - v[0], 0);
            let (mut usubmin, mut j2) = (f64::INFINITY, FREE);
            for j in 1..n {
                let h = row[j] - v[j];
                if h < usubmin {
                    if h >= umin {
                        usubmin = h;
                        j2 = j;
                    } else {
                        usubmin = umin;
                        j2 = j1;
                        umin = h;
                        j1 = j;
                    }
                }
            }
            let mut i0 = row_of[j1];
            if umin < usubmin {
                // Lower column j1's price so that row i prefers it by the full margin.
                v[j1] -= usubmin - umin;
            } else if i0 != FREE {
                // A tie: take the second column instead of displacing j1's row.
                j1 = j2;
                i0 = row_of[j2];
            }
            col_of[i] = j1;
            row_of[j1] = i;
            if i0 != FREE {
                col_of[i0] = FREE;
                if umin < usubmin {
                    queue.push_front(i0);
                } else {
                    free.push(i0);
                }
            }
        }
    }

    // Shortest augmenting paths for the rows still free.
    let mut d = vec![0.0f64; n];
    let mut pred = vec![0usize; n];
    let mut cols: Vec<usize> = (0..n).collect();
    for &free_row in &free {
        let row = c.row(free_row);
        for j in 0..n {
            d[j] = row[j] - v[j];
            pred[j] = free_row;
            cols[j] = j;
        }
        // cols[..low] are scanned, cols[low..up] hold the current minimum (ready to scan),
        // cols[up..] are still to be reached.
        let (mut low, mut up) = (0usize, 0usize);
        let mut last = 0usize;
        let mut min = 0.0;
        let end = 'search: loop {
            if up == low {
                last = low;
                min = d[cols[up]];
                up += 1;
                for k in up..n {
                    let j = cols[k];
                    let h = d[j];
                    if h <= min {
                        if h < min {
                            up = low;
                            min = h;
                        }
                        cols[k] = cols[up];
                        cols[up] = j;
                        up += 1;
                    }
                }
                for &j in &cols[low..up] {
                    if row_of[j] == FREE {
                        break 'search j;
                    }
                }
            }
            let j1 = cols[low];
            low += 1;
            let i = row_of[j1];
            let ri = c.row(i);
            let h = ri[j1] - v[j1] - min;
            let mut k = up;
            while k < n {
                let j = cols[k];
                let v2 = ri[j] - v[j] - h;
                if v2 < d[j] {
                    pred[j] = i;
                    if v2 == min {
                        if row_of[j] == FREE {
                            break 'search j;
                        }
                        cols[k] = cols[up];
                        cols[up] = j;
                        up += 1;
                    }
                    d[j] = v2;
                }
                k += 1;
            }
        };
        // Columns scanned before the last minimum level move their prices.
        for &j in &cols[..last] {
            v[j] += d[j] - min;
        }
        // Flip the path.
        let mut j = end;
        loop {
            let i = pred[j];
            row_of[j] = i;
            let next = col_of[i];
            col_of[i] = j;
            if i == free_row {
                break;
            }
            j = next;
        }
    }
    col_of
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random(n: usize, seed: u64, integer: bool) -> CostMatrix {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let costs = (0..n * n)
            .map(|_| if integer { rng.random_range(0..10) as f64 } else { rng.random::<f64>() })
            .collect();
        CostMatrix::new(n, costs)
    }

    fn is_permutation(p: &[usize]) -> bool {
        let mut seen = vec![false; p.len()];
        p.iter().all(|&j| j < p.len() && !std::mem::replace(&mut seen[j], true))
    }

    /// Every permutation of `0..n`, by Heap's algorithm.
    fn brute_force(c: &CostMatrix) -> f64 {
        let n = c.n();
        let mut p: Vec<usize> = (0..n).collect();
        let mut best = c.total(&p);
        let mut stack = vec![0usize; n];
        let mut i = 0;
        while i < n {
            if stack[i] < i {
                if i % 2 == 0 { p.swap(0, i) } else { p.swap(stack[i], i) }
                best = best.min(c.total(&p));
                stack[i] += 1;
                i = 0;
            } else {
                stack[i] = 0;
                i += 1;
            }
        }
        best
    }

    /// An independent solver: the Hungarian method with potentials (Kuhn-Munkres, O(n³)), written
    /// from the textbook, sharing nothing with `lapjv`.
    fn hungarian(c: &CostMatrix) -> f64 {
        let n = c.n();
        let (mut u, mut v) = (vec![0.0; n + 1], vec![0.0; n + 1]);
        let (mut p, mut way) = (vec![0usize; n + 1], vec![0usize; n + 1]);
        for i in 1..=n {
            p[0] = i;
            let mut j0 = 0;
            let mut minv = vec![f64::INFINITY; n + 1];
            let mut used = vec![false; n + 1];
            loop {
                used[j0] = true;
                let (i0, mut delta, mut j1) = (p[j0], f64::INFINITY, 0);
                for j in 1..=n {
                    if !used[j] {
                        let cur = c.get(i0 - 1, j - 1) - u[i0] - v[j];
                        if cur < minv[j] {
                            minv[j] = cur;
                            way[j] = j0;
                        }
                        if minv[j] < delta {
                            delta = minv[j];
                            j1 = j;
                        }
                    }
                }
                for j in 0..=n {
                    if used[j] {
                        u[p[j]] += delta;
                        v[j] -= delta;
                    } else {
                        minv[j] -= delta;
                    }
                }
                j0 = j1;
                if p[j0] == 0 {
                    break;
                }
            }
            loop {
                let j1 = way[j0];
                p[j0] = p[j1];
                j0 = j1;
                if j0 == 0 {
                    break;
                }
            }
        }
        (1..=n).map(|j| c.get(p[j] - 1, j - 1)).sum()
    }

    #[test]
    fn equals_brute_force_up_to_8() {
        for n in 1..=8 {
            for seed in 0..20 {
                // Integer costs force ties, the hard case for the row-reduction phase.
                for integer in [false, true] {
                    let c = random(n, seed * 31 + n as u64, integer);
                    let p = lapjv(&c);
                    assert!(is_permutation(&p), "n = {n}: {p:?}");
                    assert!((c.total(&p) - brute_force(&c)).abs() < 1e-9, "n = {n}, seed {seed}, integer {integer}");
                }
            }
        }
    }

    #[test]
    fn equals_an_independent_solver_from_64_to_512() {
        for (n, seed) in [(64, 1), (100, 2), (257, 3), (512, 4)] {
            for integer in [false, true] {
                let c = random(n, seed, integer);
                let p = lapjv(&c);
                assert!(is_permutation(&p));
                let (got, want) = (c.total(&p), hungarian(&c));
                assert!((got - want).abs() < 1e-9 * want.abs().max(1.0), "n = {n}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn beats_the_identity_on_a_shuffled_diagonal() {
        // Zero cost only on a known permutation: the solver must find exactly it.
        let n = 50;
        let target: Vec<usize> = (0..n).map(|i| (i * 7 + 3) % n).collect();
        let costs = (0..n * n).map(|k| if target[k / n] == k % n { 0.0 } else { 1.0 + (k % 13) as f64 }).collect();
        assert_eq!(lapjv(&CostMatrix::new(n, costs)), target);
    }
}
