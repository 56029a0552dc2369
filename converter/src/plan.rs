//! A planned GGUF file: metadata plus tensors whose f32 data is produced on demand, one tensor
//! at a time, then quantized in parallel and streamed to disk. Memory stays bounded by a few
//! tensors whatever the model size.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use kernels::gguf::{GgufFile, GgufWriter, Value};
use kernels::GgmlType;
use rayon::prelude::*;

/// Set by the CLI's Ctrl-C handler: the write stops at the next tensor and removes its
/// temporary file, so no half-written output is left behind.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Produces a tensor's f32 data (row-major, GGUF `ne[0]` contiguous).
pub type Source = Box<dyn Fn() -> Result<Vec<f32>> + Send + Sync>;

pub struct PlannedTensor {
    pub name: String,
    pub ty: GgmlType,
    /// GGUF dims (`dims[0]` = row length = the last PyTorch dim).
    pub dims: Vec<u64>,
    pub source: Source,
}

#[derive(Default)]
pub struct Plan {
    pub kv: Vec<(String, Value)>,
    pub tensors: Vec<PlannedTensor>,
}

/// What a finished write reports.
#[derive(Debug, Default)]
pub struct Summary {
    pub tensors_per_type: Vec<(GgmlType, usize)>,
    pub bytes: u64,
    pub seconds: f64,
}

impl Plan {
    pub fn kv(&mut self, key: &str, value: Value) {
        self.kv.push((key.to_string(), value));
    }

    pub fn tensor(
        &mut self,
        name: impl Into<String>,
        ty: GgmlType,
        dims: Vec<u64>,
        source: Source,
    ) {
        self.tensors.push(PlannedTensor {
            name: name.into(),
            ty,
            dims,
            source,
        });
    }

    /// Writes the plan to `out` (temporary file + rename; nothing is left behind on error),
    /// re-opens the result and checks it, and prints a summary unless `quiet`.
    pub fn write(&self, out: &Path, quiet: bool) -> Result<Summary> {
        let t0 = Instant::now();
        let mut w = GgufWriter::new();
        for (k, v) in &self.kv {
            w.add_kv(k, v.clone())?;
        }
        for t in &self.tensors {
            w.add_tensor(&t.name, t.ty, &t.dims)?;
        }
        let total: u64 = self
            .tensors
            .iter()
            .map(|t| t.ty.row_bytes(t.dims[0]).unwrap_or(0) * t.dims[1..].iter().product::<u64>())
            .sum();
        let bar = tensor_progress_bar(total, quiet);
        let result = w.write_to_path(out, |i, info, sink: &mut dyn Write| {
            let t = &self.tensors[i];
            if INTERRUPTED.load(Ordering::Relaxed) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::Interrupted,
                    "interrupted",
                ));
            }
            bar.set_message(t.name.clone());
            let data = (t.source)().map_err(|e| std::io::Error::other(format!("{e:#}")))?;
            let n = info.n_elements() as usize;
            if data.len() != n {
                return Err(std::io::Error::other(format!(
                    "tensor '{}' produced {} values, expected {n}",
                    t.name,
                    data.len()
                )));
            }
            let bytes =
                quantize_tensor(t.ty, &data, t.dims[0] as usize).map_err(std::io::Error::other)?;
            sink.write_all(&bytes)?;
            bar.inc(bytes.len() as u64);
            Ok(())
        });
        bar.finish_and_clear();
        result.with_context(|| format!("writing {}", out.display()))?;

        // Re-open and validate what was written; a file that fails is not left behind either.
        let f = match GgufFile::open(out) {
            Ok(f) if f.tensors().len() == self.tensors.len() => f,
            Ok(f) => {
                let _ = std::fs::remove_file(out);
                bail!(
                    "{}: wrote {} tensors but read back {} (output removed)",
                    out.display(),
                    self.tensors.len(),
                    f.tensors().len()
                );
            }
            Err(e) => {
                let _ = std::fs::remove_file(out);
                return Err(
                    anyhow!(e).context(format!("re-opening {} (output removed)", out.display()))
                );
            }
        };
        let mut per_type: Vec<(GgmlType, usize)> = Vec::new();
        for t in &self.tensors {
            match per_type.iter_mut().find(|(ty, _)| *ty == t.ty) {
                Some(e) => e.1 += 1,
                None => per_type.push((t.ty, 1)),
            }
        }
        let summary = Summary {
            tensors_per_type: per_type,
            bytes: f.file_size(),
            seconds: t0.elapsed().as_secs_f64(),
        };
        if !quiet {
            let types: Vec<String> = summary
                .tensors_per_type
                .iter()
                .map(|(t, n)| format!("{n} {t}"))
                .collect();
            eprintln!(
                "wrote {} ({} tensors: {}; {:.1} MiB) in {:.1} s",
                out.display(),
                self.tensors.len(),
                types.join(", "),
                summary.bytes as f64 / (1 << 20) as f64,
                summary.seconds
            );
        }
        Ok(summary)
    }
}

/// A progress bar over `total` bytes of tensors (the message: the current tensor's name), on
/// stderr when it is a terminal and not `quiet`; hidden otherwise.
pub fn tensor_progress_bar(total: u64, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(total);
    b.set_style(
        ProgressStyle::with_template(
            "{msg:40!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap()
        .progress_chars("=> "),
    );
    b
}

/// Quantizes a whole tensor (rows of `ne0` f32 values) to `ty` bytes, rows in parallel.
/// Stops early with an error once [`INTERRUPTED`] is set (a full-size embedding takes seconds).
pub fn quantize_tensor(ty: GgmlType, data: &[f32], ne0: usize) -> Result<Vec<u8>> {
    let row_bytes = ty
        .row_bytes(ne0 as u64)
        .ok_or_else(|| anyhow!("rows of {ne0} elements do not fit {ty} blocks"))?
        as usize;
    let rows = data.len() / ne0;
    let mut out = vec![0u8; rows * row_bytes];
    out.par_chunks_mut(row_bytes)
        .zip(data.par_chunks(ne0))
        .try_for_each(|(dst, src)| {
            if INTERRUPTED.load(Ordering::Relaxed) {
                bail!("interrupted");
            }
            kernels::formats::quantize_row(ty, src, dst)
                .map_err(|e| anyhow!("quantizing to {ty}: {e}"))
        })?;
    Ok(out)
}

// Helpers for metadata values.
pub fn v_u32(v: usize) -> Value {
    Value::U32(v as u32)
}
pub fn v_f32(v: f64) -> Value {
    Value::F32(v as f32)
}
pub fn v_str(s: &str) -> Value {
    Value::String(s.to_string())
}
