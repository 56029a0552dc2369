//! The format-independent view of a checkpoint: named tensors that are read lazily, one at a
//! time, as contiguous little-endian bytes or converted to `f32`/`f64`.
//!
//! Readers for the concrete formats (`safetensors`, `torch`, `hf`) build a [`StateDict`] of
//! [`CheckpointTensor`]s whose bytes stay in a memory map (or compressed in a zip) until read.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use half::{bf16, f16};
use memmap2::Mmap;

/// Element types found in checkpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    U16,
    U32,
    U64,
    Bool,
    /// A type we can name but not convert (complex, fp8, quantized, ...). The string is the
    /// type or storage-class name from the file.
    Other(&'static str),
}

impl DType {
    /// Bytes per element, or None for types we cannot address (sub-byte, unknown).
    pub fn element_size(self) -> Option<usize> {
        Some(match self {
            DType::F64 | DType::I64 | DType::U64 => 8,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F16 | DType::BF16 | DType::I16 | DType::U16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
            DType::Other(name) => match name {
                "C64" | "torch.ComplexFloatStorage" => 8,
                "C128" | "torch.ComplexDoubleStorage" => 16,
                "F8_E4M3"
                | "F8_E5M2"
                | "torch.Float8_e4m3fnStorage"
                | "torch.Float8_e5m2Storage" => 1,
                _ => return None,
            },
        })
    }

    /// True for the types [`CheckpointTensor::read_f32`] can convert.
    pub fn is_numeric(self) -> bool {
        !matches!(self, DType::Other(_))
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F64 => "F64",
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::I64 => "I64",
            DType::I32 => "I32",
            DType::I16 => "I16",
            DType::I8 => "I8",
            DType::U8 => "U8",
            DType::U16 => "U16",
            DType::U32 => "U32",
            DType::U64 => "U64",
            DType::Bool => "Bool",
            DType::Other(name) => name,
        }
    }

    /// The dtype of a torch storage class (`torch.HalfStorage` → F16). `torch.UntypedStorage`
    /// is bytes.
    pub fn from_torch_storage_class(class: &str) -> DType {
        match class {
            "torch.FloatStorage" => DType::F32,
            "torch.DoubleStorage" => DType::F64,
            "torch.HalfStorage" => DType::F16,
            "torch.BFloat16Storage" => DType::BF16,
            "torch.LongStorage" => DType::I64,
            "torch.IntStorage" => DType::I32,
            "torch.ShortStorage" => DType::I16,
            "torch.CharStorage" => DType::I8,
            "torch.ByteStorage" | "torch.UntypedStorage" => DType::U8,
            "torch.BoolStorage" => DType::Bool,
            "torch.ComplexFloatStorage" => DType::Other("torch.ComplexFloatStorage"),
            "torch.ComplexDoubleStorage" => DType::Other("torch.ComplexDoubleStorage"),
            "torch.Float8_e4m3fnStorage" => DType::Other("torch.Float8_e4m3fnStorage"),
            "torch.Float8_e5m2Storage" => DType::Other("torch.Float8_e5m2Storage"),
            "torch.QInt8Storage" => DType::Other("torch.QInt8Storage"),
            "torch.QUInt8Storage" => DType::Other("torch.QUInt8Storage"),
            "torch.QInt32Storage" => DType::Other("torch.QInt32Storage"),
            _ => DType::Other("unknown torch storage class"),
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Errors from the checkpoint readers. Every variant names the file; tensor-level ones name the
/// tensor too.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Format { path: PathBuf, message: String },
    #[error("{}: no tensor named `{name}`", path.display())]
    MissingTensor { path: PathBuf, name: String },
    #[error("{}: tensor `{name}` has dtype {dtype}, which cannot be read as {wanted}", path.display())]
    UnsupportedDtype {
        path: PathBuf,
        name: String,
        dtype: DType,
        wanted: &'static str,
    },
    #[error(
        "refusing to call {callable} from {} (at {location}): only torch tensor rebuild functions are allowed",
        path.display()
    )]
    Refused {
        path: PathBuf,
        callable: String,
        location: String,
    },
}

impl CheckpointError {
    pub fn format(path: &Path, message: impl Into<String>) -> Self {
        CheckpointError::Format {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }

    pub fn io(path: &Path, source: std::io::Error) -> Self {
        CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

pub type Result<T, E = CheckpointError> = std::result::Result<T, E>;

/// The bytes of a whole checkpoint file.
pub(crate) trait FileData: AsRef<[u8]> + Send + Sync {
    /// Hint that `[start, start + len)` will not be read again soon, so its pages may leave
    /// memory. Converting a model reads each tensor once: without this a memory-mapped 5.6 GB
    /// checkpoint would stay resident as the conversion walks through it.
    fn release(&self, _start: usize, _len: usize) {}
}

impl FileData for Vec<u8> {}

impl FileData for Mmap {
    fn release(&self, start: usize, len: usize) {
        let page = 4096;
        let first = start.div_ceil(page) * page;
        let end = (start + len) / page * page;
        if end > first && end <= self.len() {
            // SAFETY: a read-only private file mapping: dropped pages are read from the file
            // again if touched later, so no data can change or be lost.
            let _ = unsafe {
                self.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, first, end - first)
            };
        }
    }
}

/// A whole checkpoint file's bytes: a memory map, or a buffer for in-memory checkpoints.
pub(crate) type FileBytes = Arc<dyn FileData>;

/// Open a file read-only and memory-map it.
pub(crate) fn map_file(path: &Path) -> Result<FileBytes> {
    let file = std::fs::File::open(path).map_err(|e| CheckpointError::io(path, e))?;
    // SAFETY: the map is read-only. Like every mmap reader we rely on the checkpoint not being
    // truncated by another process while it is open.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| CheckpointError::io(path, e))?;
    Ok(Arc::new(map))
}

/// Shared file bytes usable as a `Read + Seek` source through `std::io::Cursor`.
#[derive(Clone)]
pub(crate) struct SharedMap(pub FileBytes);

impl AsRef<[u8]> for SharedMap {
    fn as_ref(&self) -> &[u8] {
        (*self.0).as_ref()
    }
}

pub(crate) type SharedZip = zip::ZipArchive<std::io::Cursor<SharedMap>>;

/// Where a storage's bytes live.
pub(crate) enum StorageBytes {
    /// A byte range of a memory-mapped file (safetensors data, stored zip entries, legacy
    /// torch storages).
    Mapped {
        map: FileBytes,
        start: usize,
        len: usize,
    },
    /// A compressed zip entry, inflated on each read.
    Zipped {
        archive: Arc<Mutex<SharedZip>>,
        index: usize,
        len: usize,
    },
}

impl StorageBytes {
    pub(crate) fn len(&self) -> usize {
        match self {
            StorageBytes::Mapped { len, .. } | StorageBytes::Zipped { len, .. } => *len,
        }
    }

    /// The bytes `[start, start + len)` of the storage.
    fn range(&self, path: &Path, start: usize, len: usize) -> Result<Cow<'_, [u8]>> {
        let end = start
            .checked_add(len)
            .filter(|&e| e <= self.len())
            .ok_or_else(|| {
                CheckpointError::format(path, "tensor reaches past the end of its storage")
            })?;
        match self {
            StorageBytes::Mapped {
                map, start: base, ..
            } => {
                let bytes = (**map)
                    .as_ref()
                    .get(base + start..base + end)
                    .ok_or_else(|| {
                        CheckpointError::format(path, "storage reaches past the end of the file")
                    })?;
                Ok(Cow::Borrowed(bytes))
            }
            StorageBytes::Zipped {
                archive,
                index,
                len: total,
            } => {
                let mut archive = archive.lock().map_err(|_| {
                    CheckpointError::format(path, "zip reader poisoned by an earlier panic")
                })?;
                let entry = archive.by_index(*index).map_err(|e| {
                    CheckpointError::format(path, format!("zip entry {index}: {e}"))
                })?;
                // Never trust the declared size for the allocation beyond what we asked for.
                let mut data = Vec::with_capacity(end);
                entry
                    .take(end as u64)
                    .read_to_end(&mut data)
                    .map_err(|e| CheckpointError::io(path, e))?;
                if data.len() < end {
                    return Err(CheckpointError::format(
                        path,
                        format!(
                            "zip entry {index} inflates to {} bytes, expected {total}",
                            data.len()
                        ),
                    ));
                }
                data.drain(..start);
                Ok(Cow::Owned(data))
            }
        }
    }
}

/// How a tensor's elements are laid out in its storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Offset of element 0, in elements.
    pub offset: usize,
    /// Strides in elements (PyTorch order, like the shape).
    pub stride: Vec<usize>,
}

/// Where one tensor's data is.
#[derive(Clone)]
pub(crate) struct TensorSource {
    pub file: Arc<PathBuf>,
    pub storage: Arc<StorageBytes>,
    pub layout: Layout,
}

/// One tensor of a checkpoint. Cheap to clone; reading materializes only this tensor.
#[derive(Clone)]
pub struct CheckpointTensor {
    pub name: String,
    pub dtype: DType,
    /// PyTorch-order shape (outermost first).
    pub shape: Vec<usize>,
    pub(crate) source: TensorSource,
}

impl fmt::Debug for CheckpointTensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckpointTensor")
            .field("name", &self.name)
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .field("file", &self.source.file)
            .field("layout", &self.source.layout)
            .finish()
    }
}

pub(crate) fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; shape.len()];
    let mut acc = 1usize;
    for (s, &n) in strides.iter_mut().zip(shape).rev() {
        *s = acc;
        acc = acc.saturating_mul(n);
    }
    strides
}

/// Number of elements of a shape, or None on overflow.
pub(crate) fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &n| acc.checked_mul(n))
}

/// How much a strided view may repeat storage elements (stride 0), as a factor of the storage
/// size. Bounds what a hostile shape can make us allocate.
const MAX_VIEW_EXPANSION: usize = 16;

impl CheckpointTensor {
    /// Build a tensor after checking that the view fits in its storage.
    pub(crate) fn new(
        name: String,
        dtype: DType,
        shape: Vec<usize>,
        source: TensorSource,
    ) -> Result<Self> {
        let file = source.file.as_path();
        let bad =
            |message: String| CheckpointError::format(file, format!("tensor `{name}`: {message}"));
        if shape.len() != source.layout.stride.len() {
            return Err(bad("shape and stride differ in length".into()));
        }
        let numel =
            checked_numel(&shape).ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
        if let Some(size) = dtype.element_size() {
            let storage_numel = source.storage.len() / size;
            if numel > 0 {
                // Largest element index the view touches.
                let mut last = source.layout.offset as u128;
                for (&n, &s) in shape.iter().zip(&source.layout.stride) {
                    last += (n as u128 - 1) * s as u128;
                }
                if last >= storage_numel as u128 {
                    return Err(bad(format!(
                        "view (offset {}, shape {shape:?}, stride {:?}) reaches element {last}, but the storage holds {storage_numel}",
                        source.layout.offset, source.layout.stride
                    )));
                }
                if numel > storage_numel.max(1).saturating_mul(MAX_VIEW_EXPANSION) {
                    return Err(bad(format!(
                        "view of {numel} elements repeats its {storage_numel}-element storage more than {MAX_VIEW_EXPANSION} times"
                    )));
                }
            }
        }
        Ok(CheckpointTensor {
            name,
            dtype,
            shape,
            source,
        })
    }

    pub fn numel(&self) -> usize {
        checked_numel(&self.shape).unwrap_or(0)
    }

    /// The file the tensor's data is in.
    pub fn file(&self) -> &Path {
        &self.source.file
    }

    /// True if the elements are stored densely in C order.
    pub fn is_contiguous(&self) -> bool {
        let want = contiguous_strides(&self.shape);
        self.shape
            .iter()
            .zip(self.source.layout.stride.iter().zip(&want))
            .all(|(&n, (&s, &w))| n <= 1 || s == w)
    }

    fn unsupported(&self, wanted: &'static str) -> CheckpointError {
        CheckpointError::UnsupportedDtype {
            path: self.file().to_path_buf(),
            name: self.name.clone(),
            dtype: self.dtype,
            wanted,
        }
    }

    /// The tensor's elements as contiguous C-order little-endian bytes of `self.dtype`.
    /// Lets the pages of this tensor's storage leave memory (after a conversion has read it).
    pub fn release(&self) {
        if let StorageBytes::Mapped { map, start, len } = &*self.source.storage {
            map.release(*start, *len);
        }
    }

    /// Borrowed straight from the memory map when the tensor is contiguous and uncompressed;
    /// a non-contiguous view is copied into a new buffer.
    pub fn read_bytes(&self) -> Result<Cow<'_, [u8]>> {
        let size = self
            .dtype
            .element_size()
            .ok_or_else(|| self.unsupported("bytes"))?;
        let numel = self.numel();
        let file = self.file();
        let layout = &self.source.layout;
        let too_big =
            || CheckpointError::format(file, format!("tensor `{}` is too large", self.name));
        if numel == 0 {
            return Ok(Cow::Owned(Vec::new()));
        }
        let start = layout.offset.checked_mul(size).ok_or_else(too_big)?;
        if self.is_contiguous() {
            let len = numel.checked_mul(size).ok_or_else(too_big)?;
            return self.source.storage.range(file, start, len);
        }
        // Strided gather: read the span the view covers, then walk it in C order.
        let mut span = 1usize;
        for (&n, &s) in self.shape.iter().zip(&layout.stride) {
            span = span
                .checked_add((n - 1).checked_mul(s).ok_or_else(too_big)?)
                .ok_or_else(too_big)?;
        }
        let raw =
            self.source
                .storage
                .range(file, start, span.checked_mul(size).ok_or_else(too_big)?)?;
        let mut out = Vec::with_capacity(numel.checked_mul(size).ok_or_else(too_big)?);
        let dims = self.shape.len();
        let mut index = vec![0usize; dims];
        let mut src = 0usize; // element offset within `raw`
        for _ in 0..numel {
            out.extend_from_slice(&raw[src * size..(src + 1) * size]);
            // Advance the odometer (innermost dimension fastest).
            for d in (0..dims).rev() {
                index[d] += 1;
                src += layout.stride[d];
                if index[d] < self.shape[d] {
                    break;
                }
                src -= layout.stride[d] * self.shape[d];
                index[d] = 0;
            }
        }
        Ok(Cow::Owned(out))
    }

    /// The tensor as contiguous C-order `f32` values, converted from any numeric dtype
    /// (f16/bf16 exactly, f64 and wide integers rounded to nearest, bool as 0/1).
    pub fn read_f32(&self) -> Result<Vec<f32>> {
        if !self.dtype.is_numeric() {
            return Err(self.unsupported("f32"));
        }
        let bytes = self.read_bytes()?;
        let out = convert_le(
            &bytes,
            self.dtype,
            |v| v as f32,
            |h| h.to_f32(),
            |b| b.to_f32(),
            |x| x,
        );
        drop(bytes);
        self.release();
        Ok(out)
    }

    /// The tensor as contiguous C-order `f64` values (exact for every numeric dtype except
    /// 64-bit integers beyond 2^53).
    pub fn read_f64(&self) -> Result<Vec<f64>> {
        if !self.dtype.is_numeric() {
            return Err(self.unsupported("f64"));
        }
        let bytes = self.read_bytes()?;
        Ok(convert_le(
            &bytes,
            self.dtype,
            |v| v,
            |h| h.to_f64(),
            |b| b.to_f64(),
            |x| x as f64,
        ))
    }

    /// The tensor as `i64` values; only for integer and bool dtypes.
    pub fn read_i64(&self) -> Result<Vec<i64>> {
        let bytes = self.read_bytes()?;
        let b = &bytes[..];
        Ok(match self.dtype {
            DType::I64 => b
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect(),
            DType::U64 => b
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as i64)
                .collect(),
            DType::I32 => b
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                .collect(),
            DType::U32 => b
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                .collect(),
            DType::I16 => b
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]) as i64)
                .collect(),
            DType::U16 => b
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]) as i64)
                .collect(),
            DType::I8 => b.iter().map(|&x| x as i8 as i64).collect(),
            DType::U8 | DType::Bool => b.iter().map(|&x| x as i64).collect(),
            _ => return Err(self.unsupported("i64")),
        })
    }
}

/// Convert little-endian elements of `dtype` with one conversion per source family.
fn convert_le<T>(
    bytes: &[u8],
    dtype: DType,
    from_f64: impl Fn(f64) -> T,
    from_f16: impl Fn(f16) -> T,
    from_bf16: impl Fn(bf16) -> T,
    from_f32: impl Fn(f32) -> T,
) -> Vec<T> {
    match dtype {
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|c| from_f32(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|c| from_f16(f16::from_le_bytes([c[0], c[1]])))
            .collect(),
        DType::BF16 => bytes
            .chunks_exact(2)
            .map(|c| from_bf16(bf16::from_le_bytes([c[0], c[1]])))
            .collect(),
        DType::F64 => bytes
            .chunks_exact(8)
            .map(|c| {
                from_f64(f64::from_le_bytes([
                    c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7],
                ]))
            })
            .collect(),
        DType::I64 => bytes
            .chunks_exact(8)
            .map(|c| {
                from_f64(
                    i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f64,
                )
            })
            .collect(),
        DType::U64 => bytes
            .chunks_exact(8)
            .map(|c| {
                from_f64(
                    u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f64,
                )
            })
            .collect(),
        DType::I32 => bytes
            .chunks_exact(4)
            .map(|c| from_f64(i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64))
            .collect(),
        DType::U32 => bytes
            .chunks_exact(4)
            .map(|c| from_f64(u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64))
            .collect(),
        DType::I16 => bytes
            .chunks_exact(2)
            .map(|c| from_f64(i16::from_le_bytes([c[0], c[1]]) as f64))
            .collect(),
        DType::U16 => bytes
            .chunks_exact(2)
            .map(|c| from_f64(u16::from_le_bytes([c[0], c[1]]) as f64))
            .collect(),
        DType::I8 => bytes.iter().map(|&b| from_f64(b as i8 as f64)).collect(),
        DType::U8 => bytes.iter().map(|&b| from_f64(b as f64)).collect(),
        DType::Bool => bytes
            .iter()
            .map(|&b| from_f64(if b != 0 { 1.0 } else { 0.0 }))
            .collect(),
        DType::Other(_) => Vec::new(),
    }
}

/// Named tensors in file order, with lookup by name.
#[derive(Clone, Debug)]
pub struct StateDict {
    path: PathBuf,
    tensors: Vec<CheckpointTensor>,
    by_name: HashMap<String, usize>,
    non_tensors: Vec<String>,
}

impl StateDict {
    /// An empty state dict whose errors name `path` (a file, or a directory for sharded ones).
    pub fn new(path: &Path) -> Self {
        StateDict {
            path: path.to_path_buf(),
            tensors: Vec::new(),
            by_name: HashMap::new(),
            non_tensors: Vec::new(),
        }
    }

    /// Add a tensor; a later tensor with the same name replaces the earlier one in place
    /// (Python dict semantics).
    pub(crate) fn insert(&mut self, tensor: CheckpointTensor) {
        match self.by_name.get(&tensor.name) {
            Some(&i) => self.tensors[i] = tensor,
            None => {
                self.by_name.insert(tensor.name.clone(), self.tensors.len());
                self.tensors.push(tensor);
            }
        }
    }

    pub(crate) fn note_non_tensor(&mut self, key: String) {
        self.non_tensors.push(key);
    }

    /// Append all tensors of `other` (e.g. the next shard); a name present in both is an error.
    pub fn merge(&mut self, other: StateDict) -> Result<()> {
        for tensor in other.tensors {
            if self.by_name.contains_key(&tensor.name) {
                return Err(CheckpointError::format(
                    tensor.file(),
                    format!("tensor `{}` also appears in an earlier file", tensor.name),
                ));
            }
            self.insert(tensor);
        }
        self.non_tensors.extend(other.non_tensors);
        Ok(())
    }

    /// The file (or directory) this state dict was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Tensor names in file order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.iter().map(|t| t.name.as_str())
    }

    /// Tensors in file order.
    pub fn iter(&self) -> std::slice::Iter<'_, CheckpointTensor> {
        self.tensors.iter()
    }

    pub fn tensors(&self) -> &[CheckpointTensor] {
        &self.tensors
    }

    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// The tensor called `name`, if present.
    pub fn find(&self, name: &str) -> Option<&CheckpointTensor> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The tensor called `name`; the error names the file and the missing key.
    pub fn get(&self, name: &str) -> Result<&CheckpointTensor> {
        self.find(name)
            .ok_or_else(|| CheckpointError::MissingTensor {
                path: self.path.clone(),
                name: name.to_string(),
            })
    }

    /// Shorthand for `get(name)?.read_f32()`.
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        self.get(name)?.read_f32()
    }

    /// Keys of the dict that held something other than a tensor (plain numbers, strings); they
    /// are skipped.
    pub fn non_tensor_keys(&self) -> &[String] {
        &self.non_tensors
    }

    /// Tensors whose name starts with `prefix`, with the prefix removed.
    pub fn with_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a CheckpointTensor)> + 'a {
        self.tensors
            .iter()
            .filter_map(move |t| t.name.strip_prefix(prefix).map(|rest| (rest, t)))
    }
}

impl<'a> IntoIterator for &'a StateDict {
    type Item = &'a CheckpointTensor;
    type IntoIter = std::slice::Iter<'a, CheckpointTensor>;
    fn into_iter(self) -> Self::IntoIter {
        self.tensors.iter()
    }
}

/// Formats [`load_state_dict`] recognizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointFormat {
    /// A `.safetensors` file.
    Safetensors,
    /// A `*.safetensors.index.json` shard index.
    SafetensorsIndex,
    /// A `pytorch_model*.bin.index.json` shard index.
    TorchIndex,
    /// A torch zip checkpoint (torch.save ≥ 1.6).
    TorchZip,
    /// Anything else that starts like a pickle: legacy torch files and plain pickles.
    Pickle,
    /// A Hugging Face model directory.
    HfDirectory,
}

/// Guess a checkpoint's format from its name and first bytes.
pub fn detect_format(path: &Path) -> Result<CheckpointFormat> {
    if path.is_dir() {
        return Ok(CheckpointFormat::HfDirectory);
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.ends_with(".index.json") {
        return Ok(if name.contains("safetensors") {
            CheckpointFormat::SafetensorsIndex
        } else {
            CheckpointFormat::TorchIndex
        });
    }
    let mut head = [0u8; 9];
    let mut file = std::fs::File::open(path).map_err(|e| CheckpointError::io(path, e))?;
    let mut got = 0;
    while got < head.len() {
        match file.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => return Err(CheckpointError::io(path, e)),
        }
    }
    let head = &head[..got];
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return Ok(CheckpointFormat::TorchZip);
    }
    if name.ends_with(".safetensors") || (head.len() == 9 && head[8] == b'{') {
        return Ok(CheckpointFormat::Safetensors);
    }
    if head.first() == Some(&0x80)
        || name.ends_with(".pkl")
        || name.ends_with(".pth")
        || name.ends_with(".bin")
    {
        return Ok(CheckpointFormat::Pickle);
    }
    Err(CheckpointError::format(
        path,
        "not a safetensors, torch or pickle file",
    ))
}

/// Load the tensors of any supported checkpoint: a safetensors file or shard index, a torch
/// `.pth`/`.bin` (zip or legacy) whose state dict is found at the top level or under
/// `"model"`/`"state_dict"`, or a Hugging Face model directory.
pub fn load_state_dict(path: impl AsRef<Path>) -> Result<StateDict> {
    let path = path.as_ref();
    match detect_format(path)? {
        CheckpointFormat::Safetensors => crate::safetensors::load_safetensors(path),
        CheckpointFormat::SafetensorsIndex => crate::safetensors::load_safetensors_index(path),
        CheckpointFormat::TorchIndex => crate::torch::load_torch_index(path),
        CheckpointFormat::TorchZip | CheckpointFormat::Pickle => {
            crate::torch::TorchCheckpoint::open(path)?.state_dict()
        }
        CheckpointFormat::HfDirectory => crate::hf::HfModelDir::open(path)?.state_dict(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapped(bytes: &[u8]) -> Arc<StorageBytes> {
        Arc::new(StorageBytes::Mapped {
            map: Arc::new(bytes.to_vec()),
            start: 0,
            len: bytes.len(),
        })
    }

    fn tensor(
        bytes: &[u8],
        dtype: DType,
        shape: &[usize],
        offset: usize,
        stride: &[usize],
    ) -> Result<CheckpointTensor> {
        CheckpointTensor::new(
            "t".into(),
            dtype,
            shape.to_vec(),
            TensorSource {
                file: Arc::new(PathBuf::from("mem")),
                storage: mapped(bytes),
                layout: Layout {
                    offset,
                    stride: stride.to_vec(),
                },
            },
        )
    }

    #[test]
    fn strided_gather_matches_manual_transpose() {
        // storage 0..6 as f32, view = [[0,1,2],[3,4,5]].T  → shape (3,2), stride (1,3)
        let bytes: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let t = tensor(&bytes, DType::F32, &[3, 2], 0, &[1, 3]).unwrap();
        assert!(!t.is_contiguous());
        assert_eq!(t.read_f32().unwrap(), vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        // a column with offset 1: shape (2,), stride (3,)
        let c = tensor(&bytes, DType::F32, &[2], 1, &[3]).unwrap();
        assert_eq!(c.read_f32().unwrap(), vec![1.0, 4.0]);
        // stride-0 broadcast of one element
        let b = tensor(&bytes, DType::F32, &[4], 5, &[0]).unwrap();
        assert_eq!(b.read_f32().unwrap(), vec![5.0; 4]);
    }

    #[test]
    fn conversions() {
        let h: Vec<u8> = [1.5f32, -2.25]
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect();
        assert_eq!(
            tensor(&h, DType::F16, &[2], 0, &[1])
                .unwrap()
                .read_f32()
                .unwrap(),
            vec![1.5, -2.25]
        );
        let b: Vec<u8> = [3.0f32, -0.5]
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
            .collect();
        assert_eq!(
            tensor(&b, DType::BF16, &[2], 0, &[1])
                .unwrap()
                .read_f64()
                .unwrap(),
            vec![3.0, -0.5]
        );
        let d: Vec<u8> = [0.1f64].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(
            tensor(&d, DType::F64, &[1], 0, &[1])
                .unwrap()
                .read_f32()
                .unwrap(),
            vec![0.1f64 as f32]
        );
        let i: Vec<u8> = [-3i64, 7].iter().flat_map(|v| v.to_le_bytes()).collect();
        let t = tensor(&i, DType::I64, &[2], 0, &[1]).unwrap();
        assert_eq!(t.read_i64().unwrap(), vec![-3, 7]);
        assert_eq!(t.read_f32().unwrap(), vec![-3.0, 7.0]);
    }

    #[test]
    fn views_outside_the_storage_are_rejected() {
        let bytes = [0u8; 16];
        assert!(tensor(&bytes, DType::F32, &[5], 0, &[1]).is_err());
        assert!(tensor(&bytes, DType::F32, &[2, 2], 1, &[2, 1]).is_err());
        assert!(tensor(&bytes, DType::F32, &[usize::MAX, 2], 0, &[0, 0]).is_err());
        assert!(tensor(&bytes, DType::F32, &[1000], 0, &[0]).is_err());
        assert!(tensor(&bytes, DType::F32, &[0, 7], 100, &[7, 1]).is_ok());
        let c = tensor(&bytes, DType::Other("C64"), &[2], 0, &[1]).unwrap();
        assert!(matches!(
            c.read_f32(),
            Err(CheckpointError::UnsupportedDtype { .. })
        ));
    }
}
