//! Matrix multiply of f32 activations with GGUF weights, multi-threaded with rayon.
//!
//! This is the single entry point every model uses (`matmul`), so faster kernels (SIMD, AMX,
//! CUDA) drop in here without touching model code. Activations are quantized once per matmul
//! to the weight type's activation partner (`GgmlType::vec_dot_type`), then every weight row is
//! dotted with every activation row. Work is split over blocks of weight rows so each weight
//! row is read from memory once per matmul, whatever the number of tokens.

use kernels::formats;
use kernels::GgmlType;
use rayon::prelude::*;

/// A weight matrix in a GGUF tensor: `rows` output features of `cols` input elements each.
#[derive(Clone, Copy)]
pub struct Weight<'a> {
    pub ty: GgmlType,
    pub data: &'a [u8],
    pub rows: usize,
    pub cols: usize,
}

impl Weight<'_> {
    pub fn row_bytes(&self) -> usize {
        self.cols / self.ty.block_size() * self.ty.type_size()
    }

    pub fn row(&self, i: usize) -> &[u8] {
        let rb = self.row_bytes();
        &self.data[i * rb..(i + 1) * rb]
    }

    /// Dequantized row `i` (embedding lookup).
    pub fn dequantize_row(&self, i: usize, out: &mut [f32]) {
        formats::dequantize_row(self.ty, self.row(i), out).expect("row length checked at load");
    }
}

/// Raw pointer that may be shared between rayon tasks writing disjoint elements.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

/// `y[t][j] = Σ_k x[t][k]·W[j][k] (+ bias[j])` for `m` activation rows of `w.cols` elements.
/// `y` has `m × w.rows` elements.
pub fn matmul(w: &Weight, bias: Option<&[f32]>, x: &[f32], m: usize, y: &mut [f32]) {
    let (n, k) = (w.rows, w.cols);
    assert_eq!(x.len(), m * k, "matmul: activation shape");
    assert_eq!(y.len(), m * n, "matmul: output shape");

    // 1. Quantize activations once (one row per task).
    let acts: Vec<Vec<u8>> = x
        .par_chunks(k)
        .map(|row| {
            let mut buf = Vec::new();
            formats::quantize_activation_row(w.ty, row, &mut buf);
            buf
        })
        .collect();

    // 2. Blocks of weight rows; each block computes all m outputs for its rows.
    let threads = rayon::current_num_threads().max(1);
    let block = if m == 1 {
        // decode: enough blocks for load balance, big enough to amortize task overhead
        (n / (threads * 8)).clamp(16, 256)
    } else {
        16
    };
    let out = SharedOut(y.as_mut_ptr());
    (0..n.div_ceil(block)).into_par_iter().for_each(|b| {
        let out = out;
        let r0 = b * block;
        let r1 = (r0 + block).min(n);
        for j in r0..r1 {
            let wrow = w.row(j);
            let bj = bias.map_or(0.0, |b| b[j]);
            for (t, act) in acts.iter().enumerate() {
                let v = formats::vec_dot(w.ty, k, wrow, act) + bj;
                // SAFETY: (t, j) pairs are disjoint across tasks (j ranges do not overlap)
                // and t * n + j < m * n = y.len().
                unsafe { *out.0.add(t * n + j) = v };
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_matmul_with_bias() {
        // W = [[1,2],[3,4],[5,6]] (3 rows of 2), x = [[1,1],[2,-1]]
        let w: Vec<f32> = vec![1., 2., 3., 4., 5., 6.];
        let bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
        let wt = Weight {
            ty: GgmlType::F32,
            data: &bytes,
            rows: 3,
            cols: 2,
        };
        let x = vec![1., 1., 2., -1.];
        let mut y = vec![0.0; 6];
        matmul(&wt, Some(&[0.5, 0.0, -1.0]), &x, 2, &mut y);
        assert_eq!(y, vec![3.5, 7.0, 10.0, 0.5, 2.0, 3.0]);
    }
}
