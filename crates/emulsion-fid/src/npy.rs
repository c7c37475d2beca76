//! NumPy `.npy` arrays (format 1-3, little-endian `u1`/`f4`/`f8`, C or Fortran order), read as
//! f64 in C order, and f64 arrays written as format 1.0, as `np.save` does.

/// An array's shape and its values in C (row-major) order.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub values: Vec<f64>,
}

/// Parses `.npy` bytes; the error says what is wrong with them.
pub fn parse(bytes: &[u8]) -> Result<Array, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not a .npy array (no \\x93NUMPY magic)".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize, 12),
        v => return Err(format!(".npy format version {v} is not supported")),
    };
    let header = bytes.get(start..start + header_len).ok_or("truncated .npy header")?;
    let header = std::str::from_utf8(header).map_err(|_| "the .npy header is not text")?;
    let field = |key: &str| -> Result<&str, String> {
        let at = header.find(&format!("'{key}'")).ok_or(format!("the .npy header has no '{key}'"))?;
        Ok(header[at + key.len() + 2..].trim_start().trim_start_matches(':').trim_start())
    };
    let descr = field("descr")?;
    let (width, read): (usize, fn(&[u8]) -> f64) = if descr.starts_with("'|u1'") {
        (1, |b| b[0] as f64)
    } else if descr.starts_with("'<f4'") {
        (4, |b| f32::from_le_bytes(b.try_into().expect("4 bytes")) as f64)
    } else if descr.starts_with("'<f8'") {
        (8, |b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
    } else {
        return Err(format!("dtype {} is not supported (u1, <f4 or <f8)", descr.split(',').next().unwrap_or(descr)));
    };
    let fortran = field("fortran_order")?.starts_with("True");
    let shape_text = field("shape")?.strip_prefix('(').ok_or("bad .npy shape")?;
    let shape_text = &shape_text[..shape_text.find(')').ok_or("bad .npy shape")?];
    let shape: Vec<usize> = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| format!("bad .npy shape ({shape_text})")))
        .collect::<Result<_, _>>()?;
    let bytes_needed = shape.iter().try_fold(width, |acc, &d| acc.checked_mul(d)).ok_or(format!("shape {shape:?} is too large"))?;
    let data = &bytes[start + header_len..];
    if data.len() != bytes_needed {
        return Err(format!("{} data bytes for shape {shape:?}, expected {bytes_needed}", data.len()));
    }
    let mut values: Vec<f64> = data.chunks_exact(width).map(read).collect();
    if fortran && shape.len() > 1 {
        values = fortran_to_c(&values, &shape);
    }
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
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let shape_text = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '<f8', 'fortran_order': False, 'shape': {shape_text}, }}");
    // Magic, version and length take 10 bytes; the header ends in '\n' at a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + values.len() * 8);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
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
