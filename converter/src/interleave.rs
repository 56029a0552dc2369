//! `tinygptv repack IN.gguf OUT.gguf`: the same language model with its Q4_0 / Q8_0 / Q4_K /
//! Q5_K / Q6_K layer matrices and LM head stored in the ×16 row-interleaved layouts of
//! `kernels::repack`, which the runtime then reads in place from the memory map.
//!
//! Why: decode streams every weight once per token. On the plain layout the kernels walk eight
//! rows at once (eight short streams per tile), which streams slower than the one stream per
//! thread of the ×16 layout; the runtime therefore repacks at load time, but only on machines
//! with room for a second copy (`linear::repacks`): 8 GB devices keep the map. A file written
//! here gives them the ×16 speed without the copy, the repacking time or the memory.
//!
//! The bytes are the input's, rearranged (nothing is requantized), and each written matrix is
//! checked row by row against the input before the output is renamed into place. The tensors
//! get type ids that no ggml reader knows (`RepackLayout::gguf_type_id`), so llama.cpp and
//! other tools refuse the file instead of misreading it; keep the original for them.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use kernels::gguf::{GgufFile, GgufWriter, TensorInfo, Value, ALIGNMENT_KEY};
use kernels::repack::{RepackLayout, RepackedMatrix};

use crate::plan::{tensor_progress_bar, INTERRUPTED};

/// Alignment of the output's tensors: every 16-row group starts a cache line.
const OUTPUT_ALIGNMENT: u32 = 64;

/// What [`interleave_gguf`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct InterleaveSummary {
    /// Matrices stored interleaved, per layout.
    pub interleaved: Vec<(RepackLayout, usize)>,
    /// Tensors copied unchanged.
    pub copied: usize,
    pub bytes: u64,
    pub seconds: f64,
}

/// Whether `info` is a matrix that the runtime multiplies with (so it is worth interleaving):
/// a layer matrix or the LM head, in a type with a ×16 layout. The token embedding table is
/// read a row at a time and stays plain.
fn interleaves(info: &TensorInfo) -> Option<RepackLayout> {
    let matrix = info.dims.len() == 2
        && (info.name.starts_with("blk.") && info.name.ends_with(".weight")
            || info.name == "output.weight");
    if !matrix || info.layout.is_some() {
        return None;
    }
    RepackLayout::for_type(info.ty)
}

/// Writes `output`: `input` (a language-model GGUF) with its layer matrices and LM head in the
/// ×16 layouts. Nothing is left at `output` on error.
pub fn interleave_gguf(input: &Path, output: &Path, quiet: bool) -> Result<InterleaveSummary> {
    let t0 = Instant::now();
    let f = GgufFile::open(input).with_context(|| format!("opening {}", input.display()))?;
    let name = input.display();
    if let Some(t) = f.tensors().iter().find(|t| t.layout.is_some()) {
        bail!(
            "{name}: tensor '{}' is already stored interleaved ({:?}); the file needs no repacking",
            t.name,
            t.layout.unwrap()
        );
    }
    match f.architecture() {
        Some("phi2" | "tinygptv") => {}
        Some("clip") => bail!(
            "{name}: a vision (mmproj) file; its prompt-sized products run on the plain layout, \
             so only language-model files are repacked"
        ),
        other => bail!(
            "{name}: general.architecture is {}, not phi2 or tinygptv (a language model)",
            other.map_or("missing".to_string(), |a| format!("'{a}'"))
        ),
    }
    let plan: Vec<Option<RepackLayout>> = f.tensors().iter().map(interleaves).collect();
    if plan.iter().all(Option::is_none) {
        bail!(
            "{name}: no layer matrix is Q4_0, Q8_0, Q4_K, Q5_K or Q6_K; there is nothing to repack"
        );
    }

    let mut w = GgufWriter::new();
    for (k, v) in f.metadata() {
        if k != ALIGNMENT_KEY {
            w.add_kv(k, v.clone())?;
        }
    }
    w.set_alignment(OUTPUT_ALIGNMENT.max(f.alignment().try_into().unwrap_or(u32::MAX)));
    w.add_kv(
        "tinygptv.interleaved_from",
        Value::String(
            input
                .file_name()
                .map_or(String::new(), |n| n.to_string_lossy().into_owned()),
        ),
    )?;
    for (info, layout) in f.tensors().iter().zip(&plan) {
        match layout {
            Some(l) => w.add_interleaved_tensor(&info.name, *l, &info.dims)?,
            None => w.add_tensor(&info.name, info.ty, &info.dims)?,
        }
    }

    let total: u64 = f.tensors().iter().map(|t| t.n_bytes).sum();
    let bar = tensor_progress_bar(total, quiet);
    let result = w.write_to_path(output, |i, _, sink: &mut dyn Write| {
        if INTERRUPTED.load(Ordering::Relaxed) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "interrupted",
            ));
        }
        let info = &f.tensors()[i];
        bar.set_message(info.name.clone());
        let data = f.tensor_data(info);
        match plan[i] {
            Some(_) => {
                let (cols, rows) = (info.dims[0] as usize, info.dims[1] as usize);
                let m = RepackedMatrix::new(info.ty, data, rows, cols).map_err(|e| {
                    std::io::Error::other(format!("repacking tensor '{}': {e}", info.name))
                })?;
                sink.write_all(m.bytes())?;
            }
            None => sink.write_all(data)?,
        }
        // each input tensor is read once: let its pages go
        f.release_tensor(info);
        bar.inc(info.n_bytes);
        Ok(())
    });
    bar.finish_and_clear();
    result.with_context(|| format!("writing {}", output.display()))?;

    // Re-open and compare every row with the input; a file that fails is removed.
    let check = || -> Result<u64> {
        let out = GgufFile::open(output)?;
        if out.tensors().len() != f.tensors().len() {
            bail!(
                "wrote {} tensors but read back {}",
                f.tensors().len(),
                out.tensors().len()
            );
        }
        let mut row = Vec::new();
        for ((a, b), layout) in f.tensors().iter().zip(out.tensors()).zip(&plan) {
            if a.name != b.name || a.ty != b.ty || a.dims != b.dims || b.layout != *layout {
                bail!("tensor '{}' was read back as '{}' {:?}", a.name, b.name, b);
            }
            let src = f.tensor_data(a);
            if layout.is_none() {
                if src != out.tensor_data(b) {
                    bail!("tensor '{}' differs from the input", a.name);
                }
                continue;
            }
            let m = RepackedMatrix::from_gguf(&out, b).map_err(|e| anyhow!("'{}': {e}", a.name))?;
            let rb = src.len() / m.rows();
            for (r, want) in src.chunks_exact(rb).enumerate() {
                m.row(r, &mut row);
                if row != want {
                    bail!("tensor '{}' row {r} differs from the input", a.name);
                }
            }
            f.release_tensor(a);
            out.release_tensor(b);
        }
        Ok(out.file_size())
    };
    let bytes = match check() {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_file(output);
            return Err(e.context(format!("checking {} (output removed)", output.display())));
        }
    };
    let mut interleaved: Vec<(RepackLayout, usize)> = Vec::new();
    for l in plan.iter().flatten() {
        match interleaved.iter_mut().find(|(x, _)| x == l) {
            Some(e) => e.1 += 1,
            None => interleaved.push((*l, 1)),
        }
    }
    let summary = InterleaveSummary {
        copied: plan.iter().filter(|p| p.is_none()).count(),
        interleaved,
        bytes,
        seconds: t0.elapsed().as_secs_f64(),
    };
    if !quiet {
        let kinds: Vec<String> = summary
            .interleaved
            .iter()
            .map(|(l, n)| format!("{n} {l:?}"))
            .collect();
        eprintln!(
            "wrote {} ({} matrices interleaved: {}; {} tensors copied; {:.1} MiB) in {:.1} s",
            output.display(),
            plan.iter().flatten().count(),
            kinds.join(", "),
            summary.copied,
            bytes as f64 / (1 << 20) as f64,
            summary.seconds
        );
    }
    Ok(summary)
}
