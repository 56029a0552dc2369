//! Writing GGUF v3 files: header built in memory (metadata and tensor infos only), tensor data
//! streamed from a callback, so a model never needs to be in memory as a whole.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::error::{esc, GgufError, GgufErrorKind};
use super::layout::{
    self, TensorInfo, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VERSION, MAX_KEY_BYTES,
};
use super::value::{self, Value};
use crate::repack::RepackLayout;
use crate::types::GgmlType;

/// Name used in errors of [`GgufWriter::write_to`] (no file name is known there).
const STREAM_NAME: &str = "<output>";

/// Builds a GGUF v3 file: metadata in insertion order, tensors in insertion order (which is
/// also their data order), offsets following llama.cpp's strict rule.
///
/// ```
/// use kernels::gguf::{GgufWriter, GgufFile, Value};
/// use kernels::GgmlType;
/// let mut w = GgufWriter::new();
/// w.add_kv("general.architecture", Value::from("phi2")).unwrap();
/// w.add_tensor("x", GgmlType::F32, &[2]).unwrap();
/// let mut bytes = Vec::new();
/// w.write_to(&mut bytes, |_, _, out| out.write_all(&[0u8; 8])).unwrap();
/// let f = GgufFile::from_bytes(bytes, "mem.gguf").unwrap();
/// assert_eq!(f.architecture(), Some("phi2"));
/// ```
#[derive(Clone, Debug)]
pub struct GgufWriter {
    alignment: u32,
    /// A value given to `set_alignment` that is not a power of two, reported when writing.
    bad_alignment: Option<u32>,
    metadata: Vec<(String, Value)>,
    keys: HashSet<String>,
    /// Offsets are filled in by `tensor_infos`, as they depend on the final alignment.
    tensors: Vec<TensorInfo>,
    names: HashSet<String>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    pub fn new() -> Self {
        GgufWriter {
            alignment: DEFAULT_ALIGNMENT,
            bad_alignment: None,
            metadata: Vec::new(),
            keys: HashSet::new(),
            tensors: Vec::new(),
            names: HashSet::new(),
        }
    }

    /// Sets the data alignment (a power of two). A non-default value is recorded as the
    /// `general.alignment` (u32) key — added now at the end of the metadata, or updated if
    /// present. An invalid value makes the write fail.
    pub fn set_alignment(&mut self, a: u32) {
        if layout::check_alignment(a.into()).is_err() {
            self.bad_alignment = Some(a);
            return;
        }
        self.bad_alignment = None;
        self.alignment = a;
        if let Some(entry) = self.metadata.iter_mut().find(|(k, _)| k == ALIGNMENT_KEY) {
            entry.1 = Value::U32(a);
        } else if a != DEFAULT_ALIGNMENT {
            self.keys.insert(ALIGNMENT_KEY.to_owned());
            self.metadata
                .push((ALIGNMENT_KEY.to_owned(), Value::U32(a)));
        }
    }

    pub fn alignment(&self) -> u32 {
        self.alignment
    }

    /// Adds a metadata entry (kept in insertion order). Rejects empty or over-long keys,
    /// duplicates, nested arrays, array elements of the wrong type and, for
    /// `general.alignment`, anything but a u32 power of two (which then sets the alignment).
    pub fn add_kv(&mut self, key: &str, value: Value) -> Result<(), GgufError> {
        let err = |kind| Err(GgufError::new(STREAM_NAME, kind));
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return err(GgufErrorKind::InvalidKey {
                key: key.to_owned(),
                problem: format!("keys must be 1 to {MAX_KEY_BYTES} bytes long"),
            });
        }
        if self.keys.contains(key) {
            return err(GgufErrorKind::DuplicateKey(key.to_owned()));
        }
        if let Err(problem) = value.check() {
            return err(GgufErrorKind::InvalidValue {
                key: key.to_owned(),
                problem,
            });
        }
        if key == ALIGNMENT_KEY {
            let problem = match value {
                Value::U32(a) => layout::check_alignment(a.into()).err(),
                ref v => Some(format!("must be of type u32, found {}", v.value_type())),
            };
            if let Some(problem) = problem {
                return err(GgufErrorKind::InvalidValue {
                    key: key.to_owned(),
                    problem,
                });
            }
            self.alignment = value.as_u32().unwrap_or(DEFAULT_ALIGNMENT);
            self.bad_alignment = None;
        }
        self.keys.insert(key.to_owned());
        self.metadata.push((key.to_owned(), value));
        Ok(())
    }

    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    /// Adds a tensor (`dims` in ggml `ne` order, `dims[0]` contiguous). Checks llama.cpp's
    /// rules: name 1 to 63 bytes and unique, 1 to 4 dims, `dims[0]` a multiple of the block
    /// size, sizes within int64.
    pub fn add_tensor(&mut self, name: &str, ty: GgmlType, dims: &[u64]) -> Result<(), GgufError> {
        self.add_tensor_in(name, ty, None, dims)
    }

    /// Adds a matrix (`dims == [cols, rows]`) stored in a ×16 interleaved layout
    /// ([`crate::repack`]): its data is a [`crate::repack::RepackedMatrix`]'s bytes. Only
    /// tinygptv reads such tensors (type id [`RepackLayout::gguf_type_id`]).
    pub fn add_interleaved_tensor(
        &mut self,
        name: &str,
        layout: RepackLayout,
        dims: &[u64],
    ) -> Result<(), GgufError> {
        self.add_tensor_in(name, layout.ty(), Some(layout), dims)
    }

    fn add_tensor_in(
        &mut self,
        name: &str,
        ty: GgmlType,
        interleaved: Option<RepackLayout>,
        dims: &[u64],
    ) -> Result<(), GgufError> {
        let invalid = |problem: String| {
            Err(GgufError::new(
                STREAM_NAME,
                GgufErrorKind::InvalidTensor {
                    name: name.to_owned(),
                    problem,
                },
            ))
        };
        if name.is_empty() {
            return invalid("empty name".into());
        }
        if let Err(problem) = layout::check_tensor_name(name) {
            return invalid(problem);
        }
        if self.names.contains(name) {
            return Err(GgufError::new(
                STREAM_NAME,
                GgufErrorKind::DuplicateTensor(name.to_owned()),
            ));
        }
        if dims.is_empty() {
            return invalid("needs at least one dimension".into());
        }
        let size = match interleaved {
            Some(l) => layout::interleaved_tensor_size(l, dims),
            None => layout::tensor_size(ty, dims),
        };
        let n_bytes = match size {
            Ok((_, n)) => n,
            Err(problem) => return invalid(problem),
        };
        self.names.insert(name.to_owned());
        self.tensors.push(TensorInfo {
            name: name.to_owned(),
            ty,
            dims: dims.to_vec(),
            offset: 0,
            n_bytes,
            layout: interleaved,
        });
        Ok(())
    }

    /// The tensor infos with their final offsets (relative to the data blob).
    pub fn tensor_infos(&self) -> Result<Vec<TensorInfo>, GgufError> {
        let align = self.checked_alignment(STREAM_NAME)?;
        let mut offset: u64 = 0;
        let mut out = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            out.push(TensorInfo {
                offset,
                ..t.clone()
            });
            offset = layout::align_up(t.n_bytes, align)
                .and_then(|padded| offset.checked_add(padded))
                .ok_or_else(|| {
                    GgufError::new(
                        STREAM_NAME,
                        GgufErrorKind::Other("total tensor data size overflows u64".into()),
                    )
                })?;
        }
        Ok(out)
    }

    /// Size of the data blob: every tensor padded to the alignment.
    pub fn data_size(&self) -> Result<u64, GgufError> {
        let align = self.checked_alignment(STREAM_NAME)? as u128;
        let total: u128 = self
            .tensors
            .iter()
            .map(|t| (t.n_bytes as u128).div_ceil(align) * align)
            .sum();
        u64::try_from(total).map_err(|_| {
            GgufError::new(
                STREAM_NAME,
                GgufErrorKind::Other("total tensor data size overflows u64".into()),
            )
        })
    }

    fn checked_alignment(&self, file: &str) -> Result<u64, GgufError> {
        match self.bad_alignment {
            Some(a) => Err(GgufError::new(
                file,
                GgufErrorKind::InvalidValue {
                    key: ALIGNMENT_KEY.into(),
                    problem: format!("set_alignment({a}): not a non-zero power of two"),
                },
            )),
            None => Ok(self.alignment.into()),
        }
    }

    /// Everything before the data blob, including the zero padding up to the alignment.
    pub fn header_bytes(&self) -> Result<Vec<u8>, GgufError> {
        let infos = self.tensor_infos()?;
        let mut out = self.encode_header(&infos);
        let align = self.alignment as u64;
        let padded = layout::align_up(out.len() as u64, align).unwrap_or(out.len() as u64);
        out.resize(padded as usize, 0);
        Ok(out)
    }

    /// Header without the final padding.
    fn encode_header(&self, infos: &[TensorInfo]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&GGUF_MAGIC);
        out.extend_from_slice(&GGUF_VERSION.to_le_bytes());
        out.extend_from_slice(&(infos.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, v) in &self.metadata {
            value::encode_string(&mut out, key);
            out.extend_from_slice(&v.value_type().id().to_le_bytes());
            value::encode_value(&mut out, v);
        }
        for t in infos {
            value::encode_string(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            let id = t.layout.map_or(t.ty.id(), RepackLayout::gguf_type_id);
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&t.offset.to_le_bytes());
        }
        out
    }

    /// Writes the file to `w`: header, then for each tensor in order calls
    /// `write_data(index, info, out)`, which must write exactly `info.n_bytes` bytes (checked;
    /// writing more fails at once), then pads with zeros. `w` is flushed at the end; wrap a
    /// `File` in a `BufWriter` yourself (or use [`write_to_path`](Self::write_to_path)).
    pub fn write_to<W: Write>(
        &self,
        w: W,
        write_data: impl FnMut(usize, &TensorInfo, &mut dyn Write) -> io::Result<()>,
    ) -> Result<(), GgufError> {
        self.write_impl(w, STREAM_NAME, write_data)
    }

    fn write_impl<W: Write>(
        &self,
        mut w: W,
        file: &str,
        mut write_data: impl FnMut(usize, &TensorInfo, &mut dyn Write) -> io::Result<()>,
    ) -> Result<(), GgufError> {
        let align = self.checked_alignment(file)?;
        let infos = self.tensor_infos().map_err(|e| GgufError {
            file: file.into(),
            ..e
        })?;
        let header = self.encode_header(&infos);
        let io_err = |op: &str| {
            let op = op.to_owned();
            move |e| GgufError::io(file, op, e)
        };
        w.write_all(&header).map_err(io_err("writing the header"))?;
        let header_len = header.len() as u64;
        drop(header);
        let data_start = layout::align_up(header_len, align).unwrap_or(header_len);
        write_zeros(&mut w, data_start - header_len).map_err(io_err("writing the header"))?;

        for (i, info) in infos.iter().enumerate() {
            let mut out = LimitedWriter {
                inner: &mut w,
                limit: info.n_bytes,
                written: 0,
                overflow: None,
            };
            let result = write_data(i, info, &mut out);
            let (written, overflow) = (out.written, out.overflow);
            if let Some(attempted) = overflow {
                return Err(GgufError::new(
                    file,
                    GgufErrorKind::WrongDataSize {
                        name: info.name.clone(),
                        expected: info.n_bytes,
                        written: written + attempted,
                    },
                ));
            }
            if let Err(err) = result {
                return Err(GgufError::new(
                    file,
                    GgufErrorKind::DataCallback {
                        name: info.name.clone(),
                        err,
                    },
                ));
            }
            if written != info.n_bytes {
                return Err(GgufError::new(
                    file,
                    GgufErrorKind::WrongDataSize {
                        name: info.name.clone(),
                        expected: info.n_bytes,
                        written,
                    },
                ));
            }
            let padded = layout::align_up(info.n_bytes, align).unwrap_or(info.n_bytes);
            write_zeros(&mut w, padded - info.n_bytes)
                .map_err(io_err(&format!("padding tensor '{}'", esc(&info.name))))?;
        }
        w.flush().map_err(io_err("flushing"))?;
        Ok(())
    }

    /// Writes the file to `path` through a temporary file in the same directory, renamed into
    /// place only on success. On any error (or a panic in `write_data`) the temporary file is
    /// removed and an existing file at `path` is left untouched.
    pub fn write_to_path(
        &self,
        path: &Path,
        write_data: impl FnMut(usize, &TensorInfo, &mut dyn Write) -> io::Result<()>,
    ) -> Result<(), GgufError> {
        let name = path.display().to_string();
        let (temp_path, file) = create_temp_beside(path)
            .map_err(|e| GgufError::io(&name, "cannot create a temporary file", e))?;
        let mut guard = TempFileGuard(Some(temp_path));
        let mut out = BufWriter::with_capacity(1 << 20, file);
        self.write_impl(&mut out, &name, write_data)?;
        let file = out
            .into_inner()
            .map_err(|e| GgufError::io(&name, "flushing", e.into_error()))?;
        file.sync_all()
            .map_err(|e| GgufError::io(&name, "syncing", e))?;
        drop(file);
        let temp_path = guard.0.as_deref().unwrap_or(path);
        fs::rename(temp_path, path).map_err(|e| {
            GgufError::io(
                &name,
                format!("renaming {} into place", temp_path.display()),
                e,
            )
        })?;
        guard.0 = None;
        Ok(())
    }
}

/// Creates `.NAME.tmp.PID.N` next to `path` (never overwriting anything).
fn create_temp_beside(path: &Path) -> io::Result<(PathBuf, File)> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    for _attempt in 0..1000 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(file_name);
        temp_name.push(format!(".tmp.{}.{n}", std::process::id()));
        let temp = dir.join(temp_name);
        match OpenOptions::new().write(true).create_new(true).open(&temp) {
            Ok(f) => return Ok((temp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "no free temporary file name",
    ))
}

/// Removes the temporary file on drop unless disarmed (set to `None`).
struct TempFileGuard(Option<PathBuf>);

impl Drop for TempFileGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

fn write_zeros(w: &mut impl Write, mut n: u64) -> io::Result<()> {
    const ZEROS: [u8; 4096] = [0; 4096];
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        w.write_all(&ZEROS[..k])?;
        n -= k as u64;
    }
    Ok(())
}

/// Passes at most `limit` bytes through; a write beyond it fails and is recorded.
struct LimitedWriter<'a, W: Write> {
    inner: &'a mut W,
    limit: u64,
    written: u64,
    /// Length of the first write that would have gone past the limit.
    overflow: Option<u64>,
}

impl<W: Write> Write for LimitedWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() as u64 > self.limit - self.written {
            self.overflow.get_or_insert(buf.len() as u64);
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "more data than the tensor's size",
            ));
        }
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
