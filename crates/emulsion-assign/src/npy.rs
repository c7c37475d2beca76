//! Square cost matrices as NumPy `.npy` files (read through `npyz`: `f4` or `f8`, C order), so
//! `bench assign --costs` and scipy see the same numbers.

use std::path::Path;

use crate::lapjv::CostMatrix;

/// Why a `.npy` file could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NpyError(pub String);

/// Reads a square float32 or float64 matrix.
pub fn read_costs(path: &Path) -> Result<CostMatrix, NpyError> {
    let name = path.display();
    let bytes = std::fs::read(path).map_err(|e| NpyError(format!("{name}: {e}")))?;
    let bad = |why: &str| NpyError(format!("{name}: {why}"));
    if !bytes.starts_with(b"\x93NUMPY") {
        return Err(bad("not a .npy file (no \\x93NUMPY magic)"));
    }
    let mut data = bytes.as_slice();
    let header = npyz::NpyHeader::from_reader(&mut data).map_err(|e| bad(&format!("bad .npy header: {e}")))?;
    if header.order() == npyz::Order::Fortran {
        return Err(bad("Fortran-ordered arrays are not supported; save with np.ascontiguousarray"));
    }
    let n = match header.shape() {
        &[r, c] if r == c => usize::try_from(r).map_err(|_| bad("the matrix is too large"))?,
        shape => return Err(bad(&format!("expected a square B x B matrix, got shape {shape:?}"))),
    };
    let type_str = match header.dtype() {
        npyz::DType::Plain(t) => t.to_string(),
        _ => return Err(bad("structured dtypes are not costs")),
    };
    let width = match type_str.as_str() {
        "<f4" | ">f4" => 4,
        "<f8" | ">f8" => 8,
        other => return Err(bad(&format!("dtype {other} is not float32 or float64"))),
    };
    // Checked before reading, so that a header claiming a huge shape allocates nothing.
    let want = n.checked_mul(n).and_then(|e| e.checked_mul(width)).ok_or_else(|| bad(&format!("shape ({n}, {n}) is too large")))?;
    match data.len().cmp(&want) {
        std::cmp::Ordering::Less => return Err(bad(&format!("truncated data: {} bytes, the shape needs {want}", data.len()))),
        std::cmp::Ordering::Greater => return Err(bad(&format!("{} bytes follow the data the shape describes", data.len() - want))),
        std::cmp::Ordering::Equal => {}
    }
    let file = npyz::NpyFile::with_header(header, data);
    let costs = if width == 4 { file.into_vec::<f32>().map(|v| v.into_iter().map(f64::from).collect()) } else { file.into_vec::<f64>() };
    let costs: Vec<f64> = costs.map_err(|e| bad(&format!("unreadable data: {e}")))?;
    if let Some(k) = costs.iter().position(|c| !c.is_finite()) {
        return Err(bad(&format!("entry ({}, {}) is {}: costs must be finite", k / n, k % n, costs[k])));
    }
    Ok(CostMatrix::new(n, costs))
}

/// Writes `costs` as a float64 `.npy`.
pub fn write_costs(path: &Path, costs: &CostMatrix) -> std::io::Result<()> {
    use npyz::WriterBuilder;
    let n = costs.n() as u64;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut writer = npyz::WriteOptions::new().default_dtype().shape(&[n, n]).writer(&mut file).begin_nd()?;
    writer.extend((0..costs.n()).flat_map(|i| costs.row(i).iter().copied()))?;
    writer.finish()?;
    std::io::Write::flush(&mut file)
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
