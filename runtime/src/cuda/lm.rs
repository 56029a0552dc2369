//! [`CudaLm`]: the language model for the generation loop and the CLI on a GPU, whole
//! ([`CudaPhi2::forward`]: one copy of the embeddings in, one of the logits out) or partially
//! offloaded (`--gpu-layers N`: the first N layers on the device, then the hidden state is
//! copied to the host, where the remaining layers and the LM head run with
//! `Phi2Model::forward_layers` / `Phi2Model::logits` over a CPU KV cache of those layers).

use anyhow::{bail, Result};
use kernels::cuda::Device;

use super::phi2::CudaPhi2;
use crate::backend::LmBackend;
use crate::kv_cache::{CacheType, KvCache};
use crate::model::phi2::Phi2Model;

/// The language model with its first `n_gpu_layers` layers (all, or some) on a CUDA device.
pub struct CudaLm<'m> {
    model: &'m Phi2Model,
    gpu: CudaPhi2,
    /// The CPU's KV cache of layers `n_gpu_layers ..` (partial offload only).
    cpu_cache: Option<KvCache>,
}

impl<'m> CudaLm<'m> {
    /// Uploads the first `n_gpu_layers` (1 ..= n_layer) layers of `model` to `dev`; KV caches
    /// of `n_ctx` positions (f16 on the device, `cpu_cache_type` for the layers on the CPU).
    pub fn load(
        dev: &Device,
        model: &'m Phi2Model,
        n_ctx: usize,
        n_gpu_layers: usize,
        cpu_cache_type: CacheType,
    ) -> Result<CudaLm<'m>> {
        let cfg = &model.cfg;
        if n_gpu_layers == 0 || n_gpu_layers > cfg.n_layer {
            bail!(
                "--gpu-layers {n_gpu_layers}: the model has {} layers (1 ..= {0} on the GPU, or \
                 --device cpu)",
                cfg.n_layer
            );
        }
        let gpu = CudaPhi2::load_layers(dev, model, n_ctx, n_gpu_layers)?;
        let cpu_cache = (n_gpu_layers < cfg.n_layer).then(|| {
            KvCache::new(
                cpu_cache_type,
                cfg.n_layer - n_gpu_layers,
                n_ctx,
                cfg.kv_width(),
                cfg.head_dim,
            )
        });
        Ok(CudaLm {
            model,
            gpu,
            cpu_cache,
        })
    }

    /// The device-side part.
    pub fn gpu(&self) -> &CudaPhi2 {
        &self.gpu
    }

    /// Layers on the GPU.
    pub fn n_gpu_layers(&self) -> usize {
        self.gpu.n_layers()
    }
}

impl LmBackend for CudaLm<'_> {
    fn model(&self) -> &Phi2Model {
        self.model
    }

    fn forward(&mut self, x: Vec<f32>, all_logits: bool) -> Result<Vec<f32>> {
        let Some(cache) = &mut self.cpu_cache else {
            return self.gpu.forward(&x, all_logits);
        };
        // both caches must stay at the same length: check the CPU side's room first
        let t = x.len() / self.model.cfg.n_embd.max(1);
        if cache.len != self.gpu.len() {
            bail!("internal: the GPU and CPU KV caches disagree in length");
        }
        if cache.len + t > cache.n_ctx {
            bail!(
                "the sequence needs {} positions but the context holds {} (use a larger --ctx)",
                cache.len + t,
                cache.n_ctx
            );
        }
        let pos0 = self.gpu.len();
        let mut hidden = self.gpu.forward_hidden(&x)?;
        let first_cpu = self.gpu.n_layers();
        if let Err(e) =
            self.model
                .forward_layers(&mut hidden, first_cpu..self.model.cfg.n_layer, cache)
        {
            self.gpu.truncate(pos0);
            return Err(e);
        }
        self.model.logits(&mut hidden, all_logits)
    }

    fn len(&self) -> usize {
        self.gpu.len()
    }

    fn n_ctx(&self) -> usize {
        self.gpu.n_ctx()
    }

    fn truncate(&mut self, len: usize) {
        self.gpu.truncate(len);
        if let Some(c) = &mut self.cpu_cache {
            c.truncate(len);
        }
    }

    fn describe(&self) -> String {
        format!(
            "{}, {}/{} layers on the GPU",
            self.gpu.device().describe(),
            self.gpu.n_layers(),
            self.model.cfg.n_layer
        )
    }
}
