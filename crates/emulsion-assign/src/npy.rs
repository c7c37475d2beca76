//! Reading and writing square cost matrices as NumPy `.npy` files (format versions 1-3,
//! little-endian `f4`/`f8`, C order), so `bench assign --costs` and scipy see the same numbers.

use std::path::Path;

use crate::lapjv::CostMatrix;

/// Why a `.npy` file could not be used.
#[derive(Debug)]
pub struct NpyError(pub String);

impl std::fmt::Display for NpyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NpyError {}

/// Reads a square float32 or float64 matrix.
pub fn read_costs(path: &Path) -> Result<CostMatrix, NpyError> {
    let name = path.display();
    let bytes = std::fs::read(path).map_err(|e| NpyError(format!("{name}: {e}")))?;
    let bad = |why: &str| NpyError(format!("{name}: {why}"));
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy file (no \\x93NUMPY magic)"));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        v => return Err(bad(&format!("unsupported .npy format version {v}"))),
    };
    let header = bytes.get(start..start + header_len).ok_or_else(|| bad("truncated header"))?;
    let header = std::str::from_utf8(header).map_err(|_| bad("the header is not text"))?;
    let field = |key: &str| -> Option<&str> {
        let at = header.find(&format!("'{key}'"))? + key.len() + 2;
        let rest = header.get(at..)?.trim_start().strip_prefix(':')?.trim_start();
        Some(rest)
    };
    let descr = field("descr").and_then(|r| r.strip_prefix('\'')).and_then(|r| r.split('\'').next()).ok_or_else(|| bad("no 'descr' in the header"))?;
    if field("fortran_order").is_some_and(|r| r.starts_with("True")) {
        return Err(bad("Fortran-ordered arrays are not supported; save with np.ascontiguousarray"));
    }
    let shape = field("shape").and_then(|r| r.strip_prefix('(')).and_then(|r| r.split(')').next()).ok_or_else(|| bad("no 'shape' in the header"))?;
    let dims: Vec<usize> = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| bad(&format!("bad shape ({shape})"))))
        .collect::<Result<_, _>>()?;
    let n = match dims[..] {
        [r, c] if r == c => r,
        _ => return Err(bad(&format!("expected a square B x B matrix, got shape ({shape})"))),
    };
    let data = &bytes[start + header_len..];
    let width = match descr {
        "<f4" => 4,
        "<f8" => 8,
        other => return Err(bad(&format!("dtype {other} is not float32 or float64 (little-endian)"))),
    };
    let want = n.checked_mul(n).and_then(|e| e.checked_mul(width)).ok_or_else(|| bad(&format!("shape ({shape}) is too large")))?;
    check_len(data.len(), want).map_err(|w| bad(&w))?;
    let costs: Vec<f64> = data
        .chunks_exact(width)
        .map(|b| if width == 4 { f32::from_le_bytes(b.try_into().expect("4 bytes")) as f64 } else { f64::from_le_bytes(b.try_into().expect("8 bytes")) })
        .collect();
    if let Some(k) = costs.iter().position(|c| !c.is_finite()) {
        return Err(bad(&format!("entry ({}, {}) is {}: costs must be finite", k / n, k % n, costs[k])));
    }
    Ok(CostMatrix::new(n, costs))
}

fn check_len(got: usize, want: usize) -> Result<(), String> {
    match got.cmp(&want) {
        std::cmp::Ordering::Less => Err(format!("truncated data: {got} bytes, the shape needs {want}")),
        std::cmp::Ordering::Greater => Err(format!("{} bytes follow the data the shape describes", got - want)),
        std::cmp::Ordering::Equal => Ok(()),
    }
}

/// Writes `costs` as a float64 `.npy` (version 1).
pub fn write_costs(path: &Path, costs: &CostMatrix) -> std::io::Result<()> {
    let n = costs.n();
    let mut header = format!("{{'descr': '<f8', 'fortran_order': False, 'shape': ({n}, {n}), }}");
    // Magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + n * n * 8);
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for i in 0..n {
        for &c in costs.row(i) {
            bytes.extend_from_slice(&c.to_le_bytes());
        }
    }
    std::fs::write(path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reads_float32() {
        let dir = std::env::temp_dir().join(format!("emulsion-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let costs = CostMatrix::new(3, vec![0.5, 1.0, -2.0, 3.25, 4.0, 5.0, 6.0, 7.0, 1e-9]);
        let path = dir.join("c.npy");
        write_costs(&path, &costs).unwrap();
        assert_eq!(read_costs(&path).unwrap(), costs);
        // A float32 file as NumPy writes it.
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }";
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        for v in [1.5f32, 2.0, 3.0, 4.5] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read_costs(&path).unwrap(), CostMatrix::new(2, vec![1.5, 2.0, 3.0, 4.5]));
        // Errors name the problem.
        bytes.truncate(bytes.len() - 3);
        std::fs::write(&path, &bytes).unwrap();
        assert!(read_costs(&path).unwrap_err().to_string().contains("truncated"));
        std::fs::write(&path, b"hello").unwrap();
        assert!(read_costs(&path).unwrap_err().to_string().contains("not a .npy"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
