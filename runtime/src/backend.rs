//! Where the models run: the `--device cpu|cuda[:N]` choice ([`DeviceChoice`], parsed in every
//! build), the opened device ([`Compute`]), and the two interfaces the generation loop and the
//! CLI use, so the same code drives the CPU forward pass or the CUDA backend (feature `cuda`):
//!
//! - [`LmBackend`]: the language model with its KV cache ([`CpuLm`]: `Phi2Model` + `KvCache`;
//!   `crate::cuda::CudaLm`: `CudaPhi2`, optionally with the last layers and the LM head on the
//!   CPU). Token embedding and image splicing stay on the host: backends take input embeddings.
//! - [`ImageEncoder`]: normalized pixels → visual tokens ([`CpuImageEncoder`]: `VisionTower`;
//!   `crate::cuda::CudaVision`).

use std::borrow::BorrowMut;
use std::path::Path;

use anyhow::{bail, Result};

use crate::image::RgbImage;
use crate::kv_cache::{CacheType, KvCache};
use crate::model::phi2::{Phi2Config, Phi2Model};
use crate::model::vision::VisionTower;

/// The message of `--device cuda` in a build without the `cuda` feature.
pub const NO_CUDA_SUPPORT: &str = "this build has no CUDA support: rebuild with --features cuda";

/// Where a model runs: `cpu`, `cuda` (device 0) or `cuda:N`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceChoice {
    #[default]
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda(0)),
            _ => t
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| format!("unknown device '{s}' (expected cpu, cuda or cuda:N)")),
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Cpu => write!(f, "cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The language model
// ---------------------------------------------------------------------------------------------

/// A language model with its KV cache, on some device. The contract is
/// `Phi2Model::forward`'s: input embeddings `[T, n_embd]` at positions `len() .. len() + T`.
pub trait LmBackend {
    /// The host model: configuration and token embeddings (embedding stays on the host).
    fn model(&self) -> &Phi2Model;

    /// Runs `x` (`[T, n_embd]`) through the model, appending to the KV cache. Returns logits
    /// `[T, n_vocab]` when `all_logits`, else only the last position's `[n_vocab]`.
    fn forward(&mut self, x: Vec<f32>, all_logits: bool) -> Result<Vec<f32>>;

    /// Positions in the KV cache.
    fn len(&self) -> usize;

    /// Capacity of the KV cache.
    fn n_ctx(&self) -> usize;

    /// Keeps only the first `len` positions of the KV cache.
    fn truncate(&mut self, len: usize);

    /// "CPU (<kernel level> kernels)", or the GPU and how many layers run on it (for log lines).
    fn describe(&self) -> String;

    fn config(&self) -> &Phi2Config {
        &self.model().cfg
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets the whole KV cache (new conversation).
    fn clear(&mut self) {
        self.truncate(0);
    }

    /// Token embeddings `[ids.len(), n_embd]` (on the host).
    fn embed_tokens(&self, ids: &[u32]) -> Result<Vec<f32>> {
        self.model().embed_tokens(ids)
    }
}

/// The CPU forward pass: [`Phi2Model::forward`] over a KV cache that is owned (`C = KvCache`)
/// or borrowed (`C = &mut KvCache`).
pub struct CpuLm<'m, C: BorrowMut<KvCache> = KvCache> {
    pub model: &'m Phi2Model,
    pub cache: C,
}

impl<'m> CpuLm<'m> {
    /// `model` with a new KV cache of `n_ctx` positions.
    pub fn new(model: &'m Phi2Model, cache_type: CacheType, n_ctx: usize) -> CpuLm<'m> {
        CpuLm {
            model,
            cache: model.new_cache(cache_type, n_ctx),
        }
    }
}

impl<C: BorrowMut<KvCache>> LmBackend for CpuLm<'_, C> {
    fn model(&self) -> &Phi2Model {
        self.model
    }

    fn forward(&mut self, x: Vec<f32>, all_logits: bool) -> Result<Vec<f32>> {
        self.model.forward(x, self.cache.borrow_mut(), all_logits)
    }

    fn len(&self) -> usize {
        self.cache.borrow().len
    }

    fn n_ctx(&self) -> usize {
        self.cache.borrow().n_ctx
    }

    fn truncate(&mut self, len: usize) {
        self.cache.borrow_mut().truncate(len);
    }

    fn describe(&self) -> String {
        cpu_description()
    }
}

// ---------------------------------------------------------------------------------------------
// The vision tower
// ---------------------------------------------------------------------------------------------

/// Turns images into visual tokens `[n_query, n_embd_llm]` on some device.
pub trait ImageEncoder {
    /// The host tower: configuration and preprocessing parameters.
    fn tower(&self) -> &VisionTower;

    /// Normalized pixels `[3, S, S]` → visual tokens.
    fn encode(&mut self, pixels: &[f32]) -> Result<Vec<f32>>;

    /// Image file → (original image, normalized pixels, visual tokens), like
    /// `crate::vision::embed_image_file`.
    fn embed_image_file(
        &mut self,
        path: &Path,
        max_pixels: u64,
    ) -> Result<(RgbImage, Vec<f32>, Vec<f32>)> {
        let img = crate::image::load_rgb(path, max_pixels)?;
        let pixels = crate::vision::image_pixels(self.tower(), &img);
        let tokens = self.encode(&pixels)?;
        Ok((img, pixels, tokens))
    }
}

/// [`VisionTower::encode`] on the CPU.
pub struct CpuImageEncoder<'t> {
    pub tower: &'t VisionTower,
}

impl ImageEncoder for CpuImageEncoder<'_> {
    fn tower(&self) -> &VisionTower {
        self.tower
    }

    fn encode(&mut self, pixels: &[f32]) -> Result<Vec<f32>> {
        self.tower.encode(pixels)
    }
}

// ---------------------------------------------------------------------------------------------
// The opened device
// ---------------------------------------------------------------------------------------------

/// An opened [`DeviceChoice`]: the CPU, or a CUDA device (feature `cuda`; the CPU emulator of
/// the kernels in tests).
#[derive(Clone, Debug)]
pub enum Compute {
    Cpu,
    #[cfg(feature = "cuda")]
    Cuda(kernels::cuda::Device),
}

impl Compute {
    /// Opens the device: `cuda` fails with one line when there is no driver or no such
    /// device, and in builds without the `cuda` feature ([`NO_CUDA_SUPPORT`]).
    pub fn open(choice: DeviceChoice) -> Result<Compute> {
        match choice {
            DeviceChoice::Cpu => Ok(Compute::Cpu),
            #[cfg(feature = "cuda")]
            DeviceChoice::Cuda(n) => Ok(Compute::Cuda(kernels::cuda::Device::cuda(n)?)),
            #[cfg(not(feature = "cuda"))]
            DeviceChoice::Cuda(_) => bail!(NO_CUDA_SUPPORT),
        }
    }

    pub fn is_cpu(&self) -> bool {
        matches!(self, Compute::Cpu)
    }

    pub fn describe(&self) -> String {
        match self {
            Compute::Cpu => cpu_description(),
            #[cfg(feature = "cuda")]
            Compute::Cuda(d) => d.describe(),
        }
    }

    /// The GPU's theoretical memory bandwidth in GB/s, when the driver says (not the CPU's).
    pub fn peak_bandwidth_gbs(&self) -> Option<f64> {
        match self {
            Compute::Cpu => None,
            #[cfg(feature = "cuda")]
            Compute::Cuda(d) => d.peak_bandwidth_gbs(),
        }
    }

    /// The language model on this device with a KV cache of `n_ctx` positions. On a GPU,
    /// `gpu_layers` (default: all) layers run there and the rest plus the LM head on the CPU
    /// (`cache_type` is the CPU part's cache; the GPU's is f16); 0 runs everything on the CPU.
    /// On the CPU, `gpu_layers` must be `None` or 0.
    pub fn language_model<'m>(
        &self,
        model: &'m Phi2Model,
        cache_type: CacheType,
        n_ctx: usize,
        gpu_layers: Option<usize>,
    ) -> Result<Box<dyn LmBackend + 'm>> {
        match self {
            Compute::Cpu => {
                if gpu_layers.is_some_and(|n| n > 0) {
                    bail!("--gpu-layers needs a GPU (--device cuda)");
                }
                Ok(Box::new(CpuLm::new(model, cache_type, n_ctx)))
            }
            #[cfg(feature = "cuda")]
            Compute::Cuda(dev) => {
                let n = gpu_layers.unwrap_or(model.cfg.n_layer);
                if n == 0 {
                    return Ok(Box::new(CpuLm::new(model, cache_type, n_ctx)));
                }
                Ok(Box::new(crate::cuda::CudaLm::load(
                    dev, model, n_ctx, n, cache_type,
                )?))
            }
        }
    }

    /// The vision tower on this device.
    pub fn image_encoder<'t>(&self, tower: &'t VisionTower) -> Result<Box<dyn ImageEncoder + 't>> {
        match self {
            Compute::Cpu => Ok(Box::new(CpuImageEncoder { tower })),
            #[cfg(feature = "cuda")]
            Compute::Cuda(dev) => Ok(Box::new(crate::cuda::CudaVision::load(dev, tower)?)),
        }
    }
}

/// "CPU (avx512 kernels)": the kernel level in use (`TINYGPTV_CPU` lowers it).
fn cpu_description() -> String {
    format!("CPU ({} kernels)", kernels::simd::cpu_level())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_choice_parses() {
        assert_eq!("cpu".parse(), Ok(DeviceChoice::Cpu));
        assert_eq!("CUDA".parse(), Ok(DeviceChoice::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceChoice::Cuda(3)));
        assert_eq!(" gpu ".parse(), Ok(DeviceChoice::Cuda(0)));
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
        assert!("cuda:".parse::<DeviceChoice>().is_err());
        assert!("tpu".parse::<DeviceChoice>().is_err());
        assert_eq!(DeviceChoice::Cuda(2).to_string(), "cuda:2");
        assert_eq!(DeviceChoice::default(), DeviceChoice::Cpu);
    }

    /// `Phi2Model::forward` split at every layer (`forward_layers` over two ranges with a
    /// cache each, then `logits`, as partial offload does) is bit-identical to the whole
    /// forward, over a prompt and a decode step; `CpuLm` is the plain forward.
    #[test]
    fn split_forward_is_bit_identical() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../models/tiny/tinygptv-stage3-f16.gguf");
        if !path.is_file() {
            eprintln!("note: {} missing; test skipped", path.display());
            return;
        }
        let model = crate::llm::load_language_model(&path).unwrap().model;
        let cfg = model.cfg.clone();
        let steps: [&[u32]; 2] = [&[5, 17, 300, 42, 7, 9, 1000, 3, 64], &[99]];
        let mut whole = CpuLm::new(&model, CacheType::F16, 32);
        let want: Vec<Vec<f32>> = steps
            .iter()
            .map(|ids| {
                whole
                    .forward(model.embed_tokens(ids).unwrap(), true)
                    .unwrap()
            })
            .collect();
        assert_eq!(whole.len(), 10);
        for split in 0..=cfg.n_layer {
            let kvw = cfg.kv_width();
            let hd = cfg.head_dim;
            let mut first = KvCache::new(CacheType::F16, split, 32, kvw, hd);
            let mut rest = KvCache::new(CacheType::F16, cfg.n_layer - split, 32, kvw, hd);
            for (ids, want) in steps.iter().zip(&want) {
                let mut x = model.embed_tokens(ids).unwrap();
                model.forward_layers(&mut x, 0..split, &mut first).unwrap();
                model
                    .forward_layers(&mut x, split..cfg.n_layer, &mut rest)
                    .unwrap();
                let got = model.logits(&mut x, true).unwrap();
                assert!(
                    got.iter()
                        .zip(want)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "split at layer {split}: logits differ"
                );
            }
            assert_eq!((first.len, rest.len), (10, 10));
        }
        // a cache with too few layers, or a range outside the model, is an error
        let mut small = KvCache::new(CacheType::F16, 1, 32, cfg.kv_width(), cfg.head_dim);
        let mut x = model.embed_tokens(&[1, 2]).unwrap();
        assert!(model
            .forward_layers(&mut x, 0..cfg.n_layer, &mut small)
            .is_err());
        assert!(model
            .forward_layers(&mut x, 0..cfg.n_layer + 1, &mut small)
            .is_err());
        assert_eq!(small.len, 0);
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_an_error() {
        let e = Compute::open(DeviceChoice::Cuda(0)).unwrap_err();
        assert_eq!(e.to_string(), NO_CUDA_SUPPORT);
        assert!(Compute::open(DeviceChoice::Cpu).unwrap().is_cpu());
    }
}
