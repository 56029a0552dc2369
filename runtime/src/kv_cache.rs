//! Key/value cache for the language model: one K and one V matrix per layer,
//! `[n_ctx, n_kv_heads·head_dim]`, stored in f16 (default, like llama.cpp) or f32.

use half::f16;
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
        match self {
            Store::F16(v) => v[at..at + src.len()].convert_from_f32_slice(src),
            Store::F32(v) => v[at..at + src.len()].copy_from_slice(src),
        }
    }

    fn read(&self, at: usize, dst: &mut [f32]) {
        match self {
            Store::F16(v) => v[at..at + dst.len()].convert_to_f32_slice(dst),
            Store::F32(v) => dst.copy_from_slice(&v[at..at + dst.len()]),
        }
    }
}

pub struct KvCache {
    pub ty: CacheType,
    pub n_ctx: usize,
    /// Width of one cached row (n_kv_heads · head_dim).
    pub width: usize,
    /// Number of positions filled so far.
    pub len: usize,
    k: Vec<Store>,
    v: Vec<Store>,
}

impl KvCache {
    pub fn new(ty: CacheType, n_layer: usize, n_ctx: usize, width: usize) -> KvCache {
        KvCache {
            ty,
            n_ctx,
            width,
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
        let el = match self.ty {
            CacheType::F16 => 2,
            CacheType::F32 => 4,
        };
        2 * self.k.len() * self.n_ctx * self.width * el
    }

    /// Stores `rows` consecutive K and V rows for `layer` starting at position `pos`.
    pub fn store(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        self.k[layer].write(pos * self.width, k);
        self.v[layer].write(pos * self.width, v);
    }

    /// Reads the `len`-wide slice `[off, off+dst.len())` of the K row at `pos`.
    pub fn read_k(&self, layer: usize, pos: usize, off: usize, dst: &mut [f32]) {
        self.k[layer].read(pos * self.width + off, dst);
    }

    pub fn read_v(&self, layer: usize, pos: usize, off: usize, dst: &mut [f32]) {
        self.v[layer].read(pos * self.width + off, dst);
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
