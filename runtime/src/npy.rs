//! Minimal NumPy `.npy` (format 1.0) reading and writing for float32 arrays.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// Encodes a little-endian float32 array of `shape` as `.npy` bytes.
pub fn encode_f32(data: &[f32], shape: &[usize]) -> Vec<u8> {
    assert_eq!(
        data.len(),
        shape.iter().product::<usize>(),
        "npy: shape does not match data"
    );
    let shape_str = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_str}, }}");
    // magic(6) + version(2) + len(2) + header + '\n' must be a multiple of 64
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat(total.next_multiple_of(64) - total));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Writes a float32 `.npy` file atomically (temporary file + rename).
pub fn write_f32(path: &Path, data: &[f32], shape: &[usize]) -> Result<()> {
    let bytes = encode_f32(data, shape);
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let result = (|| -> Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

/// Reads a `.npy` file holding float32 or float64 data (little-endian, C order) as f32,
/// returning the data and its shape.
pub fn read_f32(path: &Path) -> Result<(Vec<f32>, Vec<usize>)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    decode_f32(&bytes).with_context(|| format!("{}", path.display()))
}

pub fn decode_f32(bytes: &[u8]) -> Result<(Vec<f32>, Vec<usize>)> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        bail!("not a .npy file");
    }
    let (hlen, hstart) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
            12,
        ),
        v => bail!("unsupported .npy version {v}"),
    };
    let header = bytes
        .get(hstart..hstart + hlen)
        .ok_or_else(|| anyhow::anyhow!("truncated .npy header"))?;
    let header = std::str::from_utf8(header)?;
    let descr = if header.contains("'<f4'") {
        4
    } else if header.contains("'<f8'") {
        8
    } else {
        bail!("only little-endian float32/float64 .npy files are supported ({header})");
    };
    if header.contains("'fortran_order': True") {
        bail!("Fortran-order .npy files are not supported");
    }
    let shape_src = header
        .split("'shape':")
        .nth(1)
        .and_then(|s| s.split('(').nth(1))
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| anyhow::anyhow!("no shape in .npy header"))?;
    let shape: Vec<usize> = shape_src
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>())
        .collect::<Result<_, _>>()?;
    let n: usize = shape.iter().product();
    let data = &bytes[hstart + hlen..];
    if data.len() != n * descr {
        bail!("data size {} does not match shape {:?}", data.len(), shape);
    }
    let out = if descr == 4 {
        data.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    } else {
        data.chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect()
    };
    Ok((out, shape))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let data: Vec<f32> = (0..6).map(|i| i as f32 * 0.5).collect();
        let bytes = encode_f32(&data, &[2, 3]);
        assert_eq!((bytes.len() - 24) % 64, 0);
        let (back, shape) = decode_f32(&bytes).unwrap();
        assert_eq!(back, data);
        assert_eq!(shape, vec![2, 3]);
    }
}
