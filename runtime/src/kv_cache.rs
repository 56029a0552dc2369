//! Key/value cache for the language model: per layer and KV head, keys `[n_ctx, head_dim]`
//! and values transposed `[head_dim, n_ctx]`, stored in f16 (default, like llama.cpp) or f32.

use half::f16;
use kernels::GgmlType;
// slice conversions run F16C / NEON code when the CPU has it (detected at run time)
use half::slice::HalfFloatSliceExt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheType {
    F16,
    F32,
}

impl std::str::FromStr for CacheType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f16" => Ok(CacheType::F16),
            "f32" => Ok(CacheType::F32),
            _ => Err(format!("unknown cache type '{s}' (expected f16 or f32)")),
        }
    }
}

enum Store {
    F16(Vec<f16>),
    F32(Vec<f32>),
}

impl Store {
    fn new(ty: CacheType, n: usize) -> Store {
        match ty {
            CacheType::F16 => Store::F16(vec![f16::ZERO; n]),
            CacheType::F32 => Store::F32(vec![0.0; n]),
        }
    }

    fn write(&mut self, at: usize, src: &[f32]) {
        self.as_mut().write(at, src)
    }

    fn as_mut(&mut self) -> StoreMut<'_> {
        match self {
            Store::F16(v) => StoreMut::F16(v),
            Store::F32(v) => StoreMut::F32(v),
        }
    }

    /// `src[i]` to element `at + i·stride`.
    fn write_strided(&mut self, at: usize, stride: usize, src: &[f32]) {
        match self {
            Store::F16(v) => {
                for (i, &x) in src.iter().enumerate() {
                    v[at + i * stride] = f16::from_f32(x);
                }
            }
            Store::F32(v) => {
                for (i, &x) in src.iter().enumerate() {
                    v[at + i * stride] = x;
                }
            }
        }
    }

    /// `f(h, piece h)` for the pieces of `len` elements (one head each), in parallel.
    fn for_each_head(&mut self, len: usize, f: impl Fn(usize, StoreMut) + Sync + Send) {
        match self {
            Store::F16(v) => crate::pool::for_each_chunk_mut(v, len, |h, p| f(h, StoreMut::F16(p))),
            Store::F32(v) => crate::pool::for_each_chunk_mut(v, len, |h, p| f(h, StoreMut::F32(p))),
        }
    }

    fn read(&self, at: usize, dst: &mut [f32]) {
        match self {
            Store::F16(v) => v[at..at + dst.len()].convert_to_f32_slice(dst),
            Store::F32(v) => dst.copy_from_slice(&v[at..at + dst.len()]),
        }
    }

    fn get(&self, at: usize) -> f32 {
        match self {
            Store::F16(v) => v[at].to_f32(),
            Store::F32(v) => v[at],
        }
    }

    /// Elements `[at, at + len)` as bytes.
    fn bytes(&self, at: usize, len: usize) -> &[u8] {
        fn as_bytes<T>(v: &[T]) -> &[u8] {
            // SAFETY: f16 / f32 are plain data without padding; u8 has no alignment needs.
            unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
        }
        match self {
            Store::F16(v) => as_bytes(&v[at..at + len]),
            Store::F32(v) => as_bytes(&v[at..at + len]),
        }
    }
}

/// A piece of a [`Store`], written by one task.
enum StoreMut<'a> {
    F16(&'a mut [f16]),
    F32(&'a mut [f32]),
}

impl StoreMut<'_> {
    /// `src` to elements `at..`, as [`Store::write`].
    fn write(&mut self, at: usize, src: &[f32]) {
        match self {
            StoreMut::F16(v) => v[at..at + src.len()].convert_from_f32_slice(src),
            StoreMut::F32(v) => v[at..at + src.len()].copy_from_slice(src),
        }
    }
}

/// The keys and values of every layer, per KV head: keys `[n_ctx, head_dim]` (a head's keys
/// are contiguous rows), values transposed `[head_dim, n_ctx]` (so the weighted sum over
/// positions reads rows). Attention runs its GEMMs straight on these f16 / f32 rows
/// ([`KvCache::head_keys`], [`KvCache::head_values_t`]) without converting the cache.
pub struct KvCache {
    pub ty: CacheType,
    pub n_ctx: usize,
    /// Width of one cached row (n_kv_heads · head_dim).
    pub width: usize,
    pub head_dim: usize,
    /// Number of positions filled so far.
    pub len: usize,
    k: Vec<Store>,
    v: Vec<Store>,
}

/// One head's cached keys or transposed values: `rows` rows of `row_len` elements
/// (`GgmlType::F16` or `F32`), `stride` bytes apart.
pub struct HeadRows<'a> {
    pub ty: GgmlType,
    pub data: &'a [u8],
    pub stride: usize,
}

impl KvCache {
    /// A cache of `n_layer` layers with room for `n_ctx` positions of `width` values, heads of
    /// `head_dim` (`width` must be a multiple of it).
    pub fn new(
        ty: CacheType,
        n_layer: usize,
        n_ctx: usize,
        width: usize,
        head_dim: usize,
    ) -> KvCache {
        assert!(
            head_dim > 0 && width.is_multiple_of(head_dim),
            "KvCache: width {width} is not a multiple of head_dim {head_dim}"
        );
        KvCache {
            ty,
            n_ctx,
            width,
            head_dim,
            len: 0,
            k: (0..n_layer)
                .map(|_| Store::new(ty, n_ctx * width))
                .collect(),
            v: (0..n_layer)
                .map(|_| Store::new(ty, n_ctx * width))
                .collect(),
        }
    }

    /// Bytes held by the cache.
    pub fn bytes(&self) -> usize {
        2 * self.k.len() * self.n_ctx * self.width * self.element_bytes()
    }

    fn element_bytes(&self) -> usize {
        match self.ty {
            CacheType::F16 => 2,
            CacheType::F32 => 4,
        }
    }

    fn ggml_type(&self) -> GgmlType {
        match self.ty {
            CacheType::F16 => GgmlType::F16,
            CacheType::F32 => GgmlType::F32,
        }
    }

    /// Stores `rows` consecutive K and V rows (`[rows, width]` each) for `layer` starting at
    /// position `pos`.
    pub fn store(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        let (w, hd, n_ctx) = (self.width, self.head_dim, self.n_ctx);
        let rows = k.len() / w;
        if rows <= 4 {
            for (i, krow) in k.chunks_exact(w).enumerate() {
                for (h, kh) in krow.chunks_exact(hd).enumerate() {
                    self.k[layer].write((h * n_ctx + pos + i) * hd, kh);
                }
            }
            // value element j = h·head_dim + d goes to row j of the transposed values
            for (i, vrow) in v.chunks_exact(w).enumerate() {
                self.v[layer].write_strided(pos + i, n_ctx, vrow);
            }
            return;
        }
        // a prompt: one task per head (its `n_ctx·head_dim` keys and as many transposed
        // values are one piece of each store)
        self.k[layer].for_each_head(n_ctx * hd, |h, mut keys| {
            for i in 0..rows {
                keys.write((pos + i) * hd, &k[i * w + h * hd..][..hd]);
            }
        });
        self.v[layer].for_each_head(n_ctx * hd, |h, mut values| {
            let mut run = vec![0f32; rows];
            for d in 0..hd {
                let j = h * hd + d;
                for (i, x) in run.iter_mut().enumerate() {
                    *x = v[i * w + j];
                }
                values.write(d * n_ctx + pos, &run);
            }
        });
    }

    /// Head `h`'s keys in `layer`: rows of `head_dim` elements, one per position.
    pub fn head_keys(&self, layer: usize, h: usize) -> HeadRows<'_> {
        let (hd, n_ctx) = (self.head_dim, self.n_ctx);
        HeadRows {
            ty: self.ggml_type(),
            data: self.k[layer].bytes(h * n_ctx * hd, n_ctx * hd),
            stride: hd * self.element_bytes(),
        }
    }

    /// Head `h`'s values in `layer`, transposed: `head_dim` rows of positions.
    pub fn head_values_t(&self, layer: usize, h: usize) -> HeadRows<'_> {
        let (hd, n_ctx) = (self.head_dim, self.n_ctx);
        HeadRows {
            ty: self.ggml_type(),
            data: self.v[layer].bytes(h * hd * n_ctx, hd * n_ctx),
            stride: n_ctx * self.element_bytes(),
        }
    }

    /// The K and V rows (`[width]` each, as stored) at position `pos` of `layer`.
    pub fn read_row(&self, layer: usize, pos: usize, k: &mut [f32], v: &mut [f32]) {
        let (hd, n_ctx) = (self.head_dim, self.n_ctx);
        for (h, (kh, vh)) in k
            .chunks_exact_mut(hd)
            .zip(v.chunks_exact_mut(hd))
            .enumerate()
        {
            self.k[layer].read((h * n_ctx + pos) * hd, kh);
            for (d, x) in vh.iter_mut().enumerate() {
                *x = self.v[layer].get((h * hd + d) * n_ctx + pos);
            }
        }
    }

    /// Forget everything (new conversation).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Keep only the first `len` positions (e.g. to re-use a shared prefix).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_through_the_head_layouts() {
        for ty in [CacheType::F16, CacheType::F32] {
            let (n_ctx, width, hd) = (5, 6, 3);
            let mut c = KvCache::new(ty, 2, n_ctx, width, hd);
            // two positions at once, then one; values exact in f16
            let k: Vec<f32> = (0..3 * width).map(|i| i as f32).collect();
            let v: Vec<f32> = (0..3 * width).map(|i| -(i as f32) / 4.0).collect();
            c.store(1, 0, &k[..2 * width], &v[..2 * width]);
            c.store(1, 2, &k[2 * width..], &v[2 * width..]);
            let (mut kr, mut vr) = (vec![0f32; width], vec![0f32; width]);
            for p in 0..3 {
                c.read_row(1, p, &mut kr, &mut vr);
                assert_eq!(kr, &k[p * width..(p + 1) * width]);
                assert_eq!(vr, &v[p * width..(p + 1) * width]);
            }
            // head 1, position 2: keys row 2 of the head; values column 2 of its rows
            let el = if ty == CacheType::F16 { 2 } else { 4 };
            let keys = c.head_keys(1, 1);
            assert_eq!(keys.stride, hd * el);
            let vt = c.head_values_t(1, 1);
            assert_eq!(vt.stride, n_ctx * el);
            let read = |b: &[u8], i: usize| -> f32 {
                if el == 2 {
                    f16::from_le_bytes([b[2 * i], b[2 * i + 1]]).to_f32()
                } else {
                    f32::from_le_bytes(b[4 * i..4 * i + 4].try_into().unwrap())
                }
            };
            for d in 0..hd {
                assert_eq!(read(keys.data, 2 * hd + d), k[2 * width + hd + d]);
                assert_eq!(read(vt.data, d * n_ctx + 2), v[2 * width + hd + d]);
            }
        }
    }

    #[test]
    fn a_prompt_store_equals_storing_its_rows_one_by_one() {
        // the prompt path (one task per head) against the one-row path, f16 rounding included
        for ty in [CacheType::F16, CacheType::F32] {
            let (n_ctx, width, hd, rows) = (40, 96, 16, 23);
            let k: Vec<f32> = (0..rows * width)
                .map(|i| (i as f32 * 0.37).sin() * 3.1)
                .collect();
            let v: Vec<f32> = (0..rows * width)
                .map(|i| (i as f32 * 0.11).cos() * 1.7)
                .collect();
            let mut whole = KvCache::new(ty, 2, n_ctx, width, hd);
            whole.store(1, 3, &k, &v);
            let mut one = KvCache::new(ty, 2, n_ctx, width, hd);
            for i in 0..rows {
                let r = i * width..(i + 1) * width;
                one.store(1, 3 + i, &k[r.clone()], &v[r]);
            }
            for h in 0..width / hd {
                assert_eq!(
                    whole.head_keys(1, h).data,
                    one.head_keys(1, h).data,
                    "{ty:?} keys"
                );
                assert_eq!(
                    whole.head_values_t(1, h).data,
                    one.head_values_t(1, h).data,
                    "{ty:?} values"
                );
            }
            assert!(
                whole.head_keys(0, 0).data.iter().all(|&b| b == 0),
                "layer 0 untouched"
            );
        }
    }
}
