//! The scalar fallback: the reference kernels of [`crate::formats`], row by row.

use crate::formats;
use crate::types::GgmlType;

/// `out[c·n + r] = vec_dot(W[r], A[c])` with the reference dot products; weight row `r` starts
/// at byte `r·w_stride`. Lengths are checked by the caller.
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm_ref(
    ty: GgmlType,
    k: usize,
    w: &[u8],
    w_stride: usize,
    n: usize,
    act: &[u8],
    a_rb: usize,
    m: usize,
    out: &mut [f32],
) {
    let w_rb = k / ty.block_size() * ty.type_size();
    for (a_row, out_row) in act.chunks_exact(a_rb).zip(out.chunks_exact_mut(n)).take(m) {
        for (r, o) in out_row.iter_mut().enumerate() {
            *o = formats::vec_dot(ty, k, &w[r * w_stride..r * w_stride + w_rb], a_row);
        }
    }
}
