//! The scalar fallback: the reference kernels of [`crate::formats`], row by row.

use crate::formats;
use crate::types::GgmlType;

/// `out[c·n + r] = vec_dot(W[r], A[c])` with the reference dot products. Lengths are checked by
/// the caller.
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm_ref(
    ty: GgmlType,
    k: usize,
    w: &[u8],
    w_rb: usize,
    n: usize,
    act: &[u8],
    a_rb: usize,
    m: usize,
    out: &mut [f32],
) {
    for (a_row, out_row) in act.chunks_exact(a_rb).zip(out.chunks_exact_mut(n)).take(m) {
        for (o, w_row) in out_row.iter_mut().zip(w.chunks_exact(w_rb)) {
            *o = formats::vec_dot(ty, k, w_row, a_row);
        }
    }
}
