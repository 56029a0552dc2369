//! `tinygptv info FILE.gguf [--json]`: header, metadata, tensor table, per-type totals and the
//! validation result of a GGUF file.
//!
//! Opening the file runs every container check of `kernels::gguf` (magic, version, lengths,
//! types, llama.cpp's layout rules, data ranges); an invalid file is a one-line error
//! `error: FILE: problem (at byte N)` and exit status 1. A valid file prints the report and
//! exits 0; soft findings (no `general.architecture`, quantized tensors without
//! `general.quantization_version`, bytes after the data) are listed as warnings.
//!
//! `--json` prints one JSON object with the same content:
//! - `file`, `file_size` (bytes), `valid` (always `true`: invalid files are errors),
//!   `version`, `byte_order` (`"little-endian"`), `alignment`, `data_offset` (absolute),
//!   `kv_count`, `tensor_count`;
//! - `metadata`: array in file order of `{key, type, value}`; `type` is ggml's short type name
//!   (`u8`…`f64`, `bool`, `str`, `arr`). Arrays are `{key, type: "arr", elem_type, len, values,
//!   truncated}` with at most the first 8 `values`. Non-finite floats are `null`;
//! - `tensors`: array in file order of `{name, type, type_id, dims, n_elements, n_bytes,
//!   offset, file_offset}` (`dims` in ggml `ne` order, `dims[0]` contiguous; `offset` relative
//!   to the data blob, `file_offset` absolute);
//! - `by_type`: `{type, count, n_elements, n_bytes}` per tensor type;
//! - `total_parameters` (sum of elements), `total_tensor_bytes` (unpadded), `data_end`
//!   (absolute end of the last tensor's data), `warnings` (array of strings).

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use kernels::gguf::{GgufFile, TensorInfo, Value};
use kernels::GgmlType;
use serde_json::{json, Value as Json};

#[derive(clap::Args)]
pub struct InfoArgs {
    /// The GGUF file to inspect.
    pub file: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Array items shown before an array is summarised.
const ARRAY_ITEMS_SHOWN: usize = 8;
/// Characters of a string value shown in the text report.
const STRING_CHARS_SHOWN: usize = 100;

pub fn run(args: InfoArgs) -> anyhow::Result<ExitCode> {
    let file = GgufFile::open(&args.file)?;
    let report = Report::new(&file);
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let written = if args.json {
        serde_json::to_writer_pretty(&mut out, &report.to_json(&file))
            .map_err(io::Error::from)
            .and_then(|_| writeln!(out))
    } else {
        report.write_text(&file, &mut out)
    };
    match written.and_then(|_| out.flush()) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        // `tinygptv info big.gguf | head` is not an error.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(anyhow::Error::new(e).context("writing the report")),
    }
}

#[derive(Default, Clone, Copy)]
struct TypeTotals {
    count: u64,
    n_elements: u64,
    n_bytes: u64,
}

/// Everything derived from the file once, for both output formats.
struct Report {
    by_type: BTreeMap<GgmlType, TypeTotals>,
    total_parameters: u64,
    total_tensor_bytes: u64,
    data_end: u64,
    warnings: Vec<String>,
}

impl Report {
    fn new(file: &GgufFile) -> Report {
        let mut by_type: BTreeMap<GgmlType, TypeTotals> = BTreeMap::new();
        let (mut total_parameters, mut total_tensor_bytes) = (0u64, 0u64);
        let mut data_end = file.data_offset();
        for t in file.tensors() {
            let e = by_type.entry(t.ty).or_default();
            e.count += 1;
            e.n_elements += t.n_elements();
            e.n_bytes += t.n_bytes;
            total_parameters += t.n_elements();
            total_tensor_bytes += t.n_bytes;
            data_end = data_end.max(file.data_offset() + t.offset + t.n_bytes);
        }

        let mut warnings = Vec::new();
        if file.architecture().is_none() {
            warnings.push("no general.architecture (string) key".to_string());
        }
        if file.tensors().iter().any(|t| t.ty.is_quantized())
            && file.get("general.quantization_version").is_none()
        {
            warnings.push(
                "quantized tensors but no general.quantization_version (llama.cpp expects 2)"
                    .to_string(),
            );
        }
        // The last tensor is padded to the alignment; anything beyond that is unexpected.
        let padded_end = if file.tensors().is_empty() {
            file.data_offset()
        } else {
            data_end.div_ceil(file.alignment()) * file.alignment()
        };
        if file.file_size() > padded_end {
            warnings.push(format!(
                "{} bytes after the end of the tensor data",
                file.file_size() - padded_end
            ));
        }
        Report {
            by_type,
            total_parameters,
            total_tensor_bytes,
            data_end,
            warnings,
        }
    }

    fn write_text(&self, file: &GgufFile, out: &mut impl Write) -> io::Result<()> {
        writeln!(out, "file:        {}", file.path().display())?;
        writeln!(out, "file size:   {}", bytes_h(file.file_size()))?;
        writeln!(
            out,
            "GGUF:        version {}, little-endian",
            file.version()
        )?;
        writeln!(out, "alignment:   {}", file.alignment())?;
        writeln!(
            out,
            "data offset: {} (0x{:x})",
            file.data_offset(),
            file.data_offset()
        )?;
        writeln!(out, "metadata:    {} keys", file.metadata().len())?;
        writeln!(out, "tensors:     {}", file.tensors().len())?;

        writeln!(out, "\nmetadata ({}):", file.metadata().len())?;
        let key_width = file
            .metadata()
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0)
            .min(48);
        let rows: Vec<(String, String)> =
            file.metadata().iter().map(|(_, v)| value_text(v)).collect();
        let type_width = rows
            .iter()
            .map(|(ty, _)| ty.len())
            .max()
            .unwrap_or(0)
            .max(12);
        for ((key, _), (ty, text)) in file.metadata().iter().zip(&rows) {
            writeln!(
                out,
                "  {:key_width$}  {ty:type_width$}  {text}",
                one_line(key, 200)
            )?;
        }

        writeln!(out, "\ntensors ({}):", file.tensors().len())?;
        let name_width = file
            .tensors()
            .iter()
            .map(|t| t.name.chars().count())
            .max()
            .unwrap_or(4)
            .max(4);
        let idx_width = file.tensors().len().max(1).to_string().len().max(1);
        writeln!(
            out,
            "  {:>idx_width$}  {:name_width$}  {:<5}  {:<24}  {:>14}  {:>14}  {:>14}",
            "#", "name", "type", "shape (ne)", "elements", "bytes", "offset"
        )?;
        for (i, t) in file.tensors().iter().enumerate() {
            writeln!(
                out,
                "  {i:>idx_width$}  {:name_width$}  {:<5}  {:<24}  {:>14}  {:>14}  {:>14}",
                one_line(&t.name, 64),
                type_name(t),
                shape(t),
                t.n_elements(),
                t.n_bytes,
                t.offset
            )?;
        }

        writeln!(out, "\nby type:")?;
        for (ty, s) in &self.by_type {
            writeln!(
                out,
                "  {:<5}  {:>6} tensors  {:>16} elements  {}",
                ty.to_string(),
                s.count,
                s.n_elements,
                bytes_h(s.n_bytes)
            )?;
        }
        writeln!(
            out,
            "\ntotal:       {} tensors, {} parameters ({}), tensor data {}, file size {}",
            file.tensors().len(),
            self.total_parameters,
            count_h(self.total_parameters),
            bytes_h(self.total_tensor_bytes),
            bytes_h(file.file_size())
        )?;
        writeln!(
            out,
            "validation:  OK (header, metadata, tensor infos, llama.cpp data layout and data \
             ranges checked)"
        )?;
        if self.warnings.is_empty() {
            writeln!(out, "warnings:    none")?;
        } else {
            for w in &self.warnings {
                writeln!(out, "warning:     {w}")?;
            }
        }
        Ok(())
    }

    fn to_json(&self, file: &GgufFile) -> Json {
        let metadata: Vec<Json> = file
            .metadata()
            .iter()
            .map(|(key, v)| match v {
                Value::Array(a) => json!({
                    "key": key,
                    "type": "arr",
                    "elem_type": a.elem_type.name(),
                    "len": a.values.len(),
                    "values": a.values.iter().take(ARRAY_ITEMS_SHOWN).map(scalar_json).collect::<Vec<_>>(),
                    "truncated": a.values.len() > ARRAY_ITEMS_SHOWN,
                }),
                _ => json!({"key": key, "type": v.value_type().name(), "value": scalar_json(v)}),
            })
            .collect();
        let tensors: Vec<Json> = file
            .tensors()
            .iter()
            .map(|t| {
                json!({
                    "name": t.name,
                    "type": type_name(t),
                    "type_id": t.layout.map_or(t.ty.id(), |l| l.gguf_type_id()),
                    "dims": t.dims,
                    "n_elements": t.n_elements(),
                    "n_bytes": t.n_bytes,
                    "offset": t.offset,
                    "file_offset": file.data_offset() + t.offset,
                })
            })
            .collect();
        let by_type: Vec<Json> = self
            .by_type
            .iter()
            .map(|(ty, s)| {
                json!({"type": ty.to_string(), "count": s.count, "n_elements": s.n_elements, "n_bytes": s.n_bytes})
            })
            .collect();
        json!({
            "file": file.path().display().to_string(),
            "file_size": file.file_size(),
            "valid": true,
            "version": file.version(),
            "byte_order": "little-endian",
            "alignment": file.alignment(),
            "data_offset": file.data_offset(),
            "kv_count": file.metadata().len(),
            "tensor_count": file.tensors().len(),
            "metadata": metadata,
            "tensors": tensors,
            "by_type": by_type,
            "total_parameters": self.total_parameters,
            "total_tensor_bytes": self.total_tensor_bytes,
            "data_end": self.data_end,
            "warnings": self.warnings,
        })
    }
}

fn scalar_json(v: &Value) -> Json {
    match v {
        Value::U8(x) => json!(x),
        Value::I8(x) => json!(x),
        Value::U16(x) => json!(x),
        Value::I16(x) => json!(x),
        Value::U32(x) => json!(x),
        Value::I32(x) => json!(x),
        // Through the shortest decimal of the f32, so 0.1f32 prints as 0.1.
        Value::F32(x) => x
            .to_string()
            .parse::<f64>()
            .map(Json::from)
            .unwrap_or(Json::Null),
        Value::Bool(x) => json!(x),
        Value::String(s) => json!(s),
        Value::U64(x) => json!(x),
        Value::I64(x) => json!(x),
        Value::F64(x) => Json::from(*x),
        Value::Array(a) => json!({"elem_type": a.elem_type.name(), "len": a.values.len()}),
    }
}

/// `(type column, value text)` for the text report.
fn value_text(v: &Value) -> (String, String) {
    match v {
        Value::Array(a) => {
            let shown: Vec<String> = a
                .values
                .iter()
                .take(if a.values.len() > ARRAY_ITEMS_SHOWN {
                    5
                } else {
                    ARRAY_ITEMS_SHOWN
                })
                .map(|x| scalar_text(x, 40))
                .collect();
            let more = a.values.len() - shown.len();
            let tail = if more > 0 {
                format!(", … {more} more")
            } else {
                String::new()
            };
            (
                format!("arr[{},{}]", a.elem_type, a.values.len()),
                format!("[{}{tail}]", shown.join(", ")),
            )
        }
        _ => (
            v.value_type().name().to_string(),
            scalar_text(v, STRING_CHARS_SHOWN),
        ),
    }
}

fn scalar_text(v: &Value, max_chars: usize) -> String {
    match v {
        Value::String(s) => format!("\"{}\"", one_line(s, max_chars)),
        Value::U8(x) => x.to_string(),
        Value::I8(x) => x.to_string(),
        Value::U16(x) => x.to_string(),
        Value::I16(x) => x.to_string(),
        Value::U32(x) => x.to_string(),
        Value::I32(x) => x.to_string(),
        // `{:?}` is the shortest round-trip form and uses exponents for large/small values.
        Value::F32(x) => format!("{x:?}"),
        Value::Bool(x) => x.to_string(),
        Value::U64(x) => x.to_string(),
        Value::I64(x) => x.to_string(),
        Value::F64(x) => format!("{x:?}"),
        Value::Array(a) => format!("arr[{},{}]", a.elem_type, a.values.len()),
    }
}

/// Escapes quotes, backslashes and control characters; shortens to `max_chars`.
fn one_line(s: &str, max_chars: usize) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == max_chars {
            out.push('…');
            break;
        }
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.extend(c.escape_debug()),
            c => out.push(c),
        }
    }
    out
}

fn shape(t: &TensorInfo) -> String {
    let dims: Vec<String> = t.dims.iter().map(u64::to_string).collect();
    format!("[{}]", dims.join(", "))
}

fn bytes_h(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut x = n as f64 / 1024.0;
    let mut unit = 0;
    while x >= 1024.0 && unit + 1 < UNITS.len() {
        x /= 1024.0;
        unit += 1;
    }
    format!("{n} bytes ({x:.2} {})", UNITS[unit])
}

fn count_h(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2} B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2} M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.2} K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

/// A tensor's type as stored: the ggml type, or the ×16 layout of one (`tinygptv repack`).
fn type_name(t: &kernels::gguf::TensorInfo) -> String {
    t.layout.map_or(t.ty.to_string(), |l| format!("{l:?}"))
}
