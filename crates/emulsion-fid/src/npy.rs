//! NumPy `.npy` arrays through `npyz`: `u1`, `f4` and `f8` arrays in C or Fortran order read as
//! f64 in C order, and f64 arrays written as `np.save` does. (`.npz` files are zip archives of
//! these, opened with `zip` in `stats.rs`.)

/// An array's shape and its values in C (row-major) order.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub values: Vec<f64>,
}

/// Parses `.npy` bytes; the error says what is wrong with them.
pub fn parse(bytes: &[u8]) -> Result<Array, String> {
    if !bytes.starts_with(b"\x93NUMPY") {
        return Err("not a .npy array (no \\x93NUMPY magic)".into());
    }
    let mut data = bytes;
    let header = npyz::NpyHeader::from_reader(&mut data).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => "truncated .npy header".to_string(),
        _ => format!("bad .npy header: {e}"),
    })?;
    let type_str = match header.dtype() {
        npyz::DType::Plain(t) => t.to_string(),
        _ => return Err("structured dtypes are not supported (u1, f4 or f8)".into()),
    };
    let shape: Vec<usize> = header.shape().iter().map(|&d| usize::try_from(d).map_err(|_| format!("shape {:?} is too large", header.shape()))).collect::<Result<_, _>>()?;
    let width = match type_str.as_str() {
        "|u1" => 1,
        "<f4" | ">f4" => 4,
        "<f8" | ">f8" => 8,
        other => return Err(format!("dtype {other} is not supported (u1, f4 or f8)")),
    };
    // Checked before reading, so that a header claiming a huge shape allocates nothing.
    let bytes_needed = shape.iter().try_fold(width, |acc: usize, &d| acc.checked_mul(d)).ok_or(format!("shape {shape:?} is too large"))?;
    if data.len() != bytes_needed {
        return Err(format!("{} data bytes for shape {shape:?}, expected {bytes_needed}", data.len()));
    }
    let fortran = header.order() == npyz::Order::Fortran;
    let file = npyz::NpyFile::with_header(header, data);
    let values = match width {
        1 => file.into_vec::<u8>().map(|v| v.into_iter().map(f64::from).collect()),
        4 => file.into_vec::<f32>().map(|v| v.into_iter().map(f64::from).collect()),
        _ => file.into_vec::<f64>(),
    };
    let values = values.map_err(|e| format!("unreadable .npy data: {e}"))?;
    let values = if fortran && shape.len() > 1 { fortran_to_c(&values, &shape) } else { values };
    Ok(Array { shape, values })
}

/// Reorders column-major values of `shape` into row-major order.
fn fortran_to_c(values: &[f64], shape: &[usize]) -> Vec<f64> {
    let mut out = vec![0.0; values.len()];
    let mut index = vec![0usize; shape.len()];
    for value in values {
        let c_offset = index.iter().zip(shape).fold(0, |acc, (&i, &n)| acc * n + i);
        out[c_offset] = *value;
        // Fortran order: the first index runs fastest.
        for (i, n) in index.iter_mut().zip(shape) {
            *i += 1;
            if *i < *n {
                break;
            }
            *i = 0;
        }
    }
    out
}

/// `.npy` bytes of an f64 array in C order.
pub fn to_bytes(shape: &[usize], values: &[f64]) -> Vec<u8> {
    use npyz::WriterBuilder;
    let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let mut out = Vec::new();
    // Writing into memory cannot fail.
    let mut writer = npyz::WriteOptions::new().default_dtype().shape(&shape).writer(&mut out).begin_nd().expect("writing to memory");
    writer.extend(values.iter().copied()).expect("writing to memory");
    writer.finish().expect("writing to memory");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_round_trip_and_fortran_order_is_transposed() {
        let values = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let bytes = to_bytes(&[2, 3], &values);
        assert_eq!((bytes.len() - 48) % 64, 0, "a header padded to a multiple of 64 bytes, then six f64");
        assert_eq!(parse(&bytes).unwrap(), Array { shape: vec![2, 3], values: values.clone() });
        let mut f = bytes.clone();
        let at = bytes.windows(5).position(|w| w == b"False").unwrap();
        f[at..at + 5].copy_from_slice(b"True ");
        // Column-major [1..6] of shape (2, 3) is [[1, 3, 5], [2, 4, 6]].
        assert_eq!(parse(&f).unwrap().values, vec![1.0, 3.0, 5.0, 2.0, 4.0, 6.0]);
        assert!(parse(b"\x93NUMPY\x01\x00\x40\x00{'descr").unwrap_err().contains("truncated"));
        assert!(parse(b"PK\x03\x04 not npy").unwrap_err().contains("magic"));
    }
}
