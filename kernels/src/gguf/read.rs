//! Reading GGUF files: memory-mapped, header parsed and validated up front, tensor data as
//! zero-copy slices of the map.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use super::cursor::Cursor;
use super::error::{esc, GgufError, GgufErrorKind};
use super::layout::{self, TensorInfo, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_DIMS};
use super::value::{self, bounded_capacity, Value};
use crate::repack::RepackLayout;
use crate::types::GgmlType;

/// Bytes of the fixed header: magic, version, tensor count, KV count.
const FIXED_HEADER_BYTES: u64 = 24;
/// Smallest KV record: key length (8), type id (4), one byte of value.
const MIN_KV_BYTES: u64 = 13;
/// Smallest tensor-info record: name length (8), n_dims (4), type (4), offset (8).
const MIN_TENSOR_INFO_BYTES: u64 = 24;

/// The bytes of an open file: a read-only map, or an owned buffer for [`GgufFile::from_bytes`].
enum Storage {
    Mapped(Mmap),
    /// Held as u64 words so the data is 8-byte aligned like the (page-aligned) map.
    Owned {
        words: Vec<u64>,
        len: usize,
    },
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Owned { words, len } => &bytemuck::cast_slice::<u64, u8>(words)[..*len],
        }
    }
}

/// A tensor's bytes together with a share of the file's map ([`GgufFile::shared_tensor_data`]).
#[derive(Clone)]
pub struct SharedTensorData {
    storage: Arc<Storage>,
    start: usize,
    len: usize,
}

impl std::ops::Deref for SharedTensorData {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // in bounds: the range came from a tensor_data slice of this storage
        &self.storage.bytes()[self.start..self.start + self.len]
    }
}

/// A tensor's info together with its data.
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a> {
    pub info: &'a TensorInfo,
    pub data: &'a [u8],
}

impl<'a> TensorView<'a> {
    /// The data as f32 values, if the tensor is F32 (the data is always suitably aligned in a
    /// file that passed validation: offsets are multiples of the alignment, which is at least 1
    /// — `None` if a file with a tiny alignment leaves it misaligned).
    pub fn as_f32(&self) -> Option<&'a [f32]> {
        if self.info.ty != GgmlType::F32 {
            return None;
        }
        bytemuck::try_cast_slice(self.data).ok()
    }
}

/// An open, validated GGUF file (v3, or v2 which has the same layout).
///
/// Opening parses and checks the whole header (magic, version, every KV, every tensor info,
/// alignment, llama.cpp's strict data layout, data ranges within the file); it never touches
/// the tensor data, so it takes milliseconds even for multi-GB files. Accessors afterwards
/// cannot fail.
///
/// The file must not be modified while it is open (it is memory-mapped).
pub struct GgufFile {
    path: PathBuf,
    storage: Arc<Storage>,
    header: Header,
}

struct Header {
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, Value)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl GgufFile {
    /// Maps and validates `path`. Errors name the file and the problem.
    pub fn open(path: &Path) -> Result<GgufFile, GgufError> {
        let name = path.display().to_string();
        let file = File::open(path).map_err(|e| GgufError::io(&name, "cannot open", e))?;
        let meta = file
            .metadata()
            .map_err(|e| GgufError::io(&name, "cannot stat", e))?;
        if !meta.is_file() {
            return Err(GgufError::new(
                &name,
                GgufErrorKind::Other("not a regular file".into()),
            ));
        }
        if meta.len() < FIXED_HEADER_BYTES {
            // Checked before mapping: an empty file cannot be mapped on every platform.
            return Err(GgufError::at(
                &name,
                GgufErrorKind::Truncated {
                    what: "GGUF header".into(),
                    needed: FIXED_HEADER_BYTES,
                    available: meta.len(),
                },
                0,
            ));
        }
        // SAFETY: the map is read-only and shared only with this value's views; like every
        // mmap-based model loader we rely on the file not being truncated or rewritten while it
        // is open.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| GgufError::io(&name, "cannot map", e))?;
        // A hint: pages read in from disk come in 2 MiB folios, which the kernel maps with
        // 2 MiB pages (one TLB entry instead of 512 for the weights that decode streams).
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        let header = parse(&map, &name)?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            storage: Arc::new(Storage::Mapped(map)),
            header,
        })
    }

    /// Validates an in-memory file; `name` is used in errors and returned by [`path`](Self::path).
    pub fn from_bytes(bytes: Vec<u8>, name: &str) -> Result<GgufFile, GgufError> {
        let header = parse(&bytes, name)?;
        let len = bytes.len();
        let mut words = vec![0u64; len.div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..len].copy_from_slice(&bytes);
        Ok(GgufFile {
            path: PathBuf::from(name),
            storage: Arc::new(Storage::Owned { words, len }),
            header,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// 3, or 2 for the older files with the same layout.
    pub fn version(&self) -> u32 {
        self.header.version
    }

    /// `general.alignment` or 32.
    pub fn alignment(&self) -> u64 {
        self.header.alignment
    }

    /// Absolute file offset of the data blob (tensor offsets are relative to it).
    pub fn data_offset(&self) -> u64 {
        self.header.data_offset
    }

    pub fn file_size(&self) -> u64 {
        self.bytes().len() as u64
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        self.storage.bytes()
    }

    /// All metadata in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.header.metadata
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        let i = *self.header.key_index.get(key)?;
        Some(&self.header.metadata[i].1)
    }

    fn get_typed<'a, T>(
        &'a self,
        key: &str,
        expected: &'static str,
        convert: impl FnOnce(&'a Value) -> Option<T>,
    ) -> Result<T, GgufError> {
        let v = self.get(key).ok_or_else(|| {
            GgufError::new(self.name(), GgufErrorKind::MissingKey(key.to_owned()))
        })?;
        convert(v).ok_or_else(|| {
            GgufError::new(
                self.name(),
                GgufErrorKind::WrongType {
                    key: key.to_owned(),
                    expected,
                    found: v.value_type(),
                },
            )
        })
    }

    /// Any integer type holding a value that fits in u32.
    pub fn get_u32(&self, key: &str) -> Result<u32, GgufError> {
        self.get_typed(key, "an integer fitting in u32", Value::as_u32)
    }

    /// Any integer type holding a non-negative value.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        self.get_typed(key, "a non-negative integer", Value::as_u64)
    }

    /// F32, or F64 rounded to f32.
    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        self.get_typed(key, "f32", Value::as_f32)
    }

    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        self.get_typed(key, "str", Value::as_str)
    }

    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        self.get_typed(key, "bool", Value::as_bool)
    }

    pub fn get_string_array(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        self.get_typed(key, "array of str", Value::as_string_array)
    }

    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>, GgufError> {
        self.get_typed(key, "array of f32", Value::as_f32_array)
    }

    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>, GgufError> {
        self.get_typed(key, "array of integers fitting in i32", Value::as_i32_array)
    }

    /// Tensor infos in file order (which is also data order).
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.header.tensors
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        let i = *self.header.tensor_index.get(name)?;
        Some(&self.header.tensors[i])
    }

    /// The tensor's bytes, a view into the map. `info` must come from this file; for any other
    /// info whose range lies outside the file the result is empty.
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let range = self
            .header
            .data_offset
            .checked_add(info.offset)
            .and_then(|start| Some((start, start.checked_add(info.n_bytes)?)));
        match range {
            Some((start, end)) => usize::try_from(start)
                .ok()
                .zip(usize::try_from(end).ok())
                .and_then(|(s, e)| self.bytes().get(s..e))
                .unwrap_or(&[]),
            None => &[],
        }
    }

    /// The tensor's bytes as [`Self::tensor_data`], in a value that keeps the file's map (or
    /// buffer) alive by itself, for data used beyond a borrow of this file.
    pub fn shared_tensor_data(&self, info: &TensorInfo) -> SharedTensorData {
        let data = self.tensor_data(info);
        let start = if data.is_empty() {
            0
        } else {
            data.as_ptr() as usize - self.bytes().as_ptr() as usize
        };
        SharedTensorData {
            storage: self.storage.clone(),
            start,
            len: data.len(),
        }
    }

    /// Hints that the tensor's bytes will not be read again soon, so the pages of the map that
    /// lie entirely inside it may leave memory (a one-pass reader such as `quantize` otherwise
    /// keeps the whole mapped input resident). No effect on in-memory files.
    pub fn release_tensor(&self, info: &TensorInfo) {
        let Storage::Mapped(map) = &*self.storage else {
            return;
        };
        let data = self.tensor_data(info);
        if data.is_empty() {
            return;
        }
        let start = data.as_ptr() as usize - map.as_ptr() as usize;
        let page = 4096;
        let first = start.div_ceil(page) * page;
        let end = (start + data.len()) / page * page;
        if end > first && end <= map.len() {
            // SAFETY: a read-only private file mapping: dropped pages are read from the file
            // again if touched later, so no data can change or be lost. Views handed out
            // earlier stay valid (same addresses, same contents).
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, first, end - first)
            };
        }
    }

    pub fn tensor(&self, name: &str) -> Option<TensorView<'_>> {
        let info = self.tensor_info(name)?;
        Some(TensorView {
            info,
            data: self.tensor_data(info),
        })
    }

    /// `general.architecture`, if present and a string.
    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture")?.as_str()
    }

    /// Name used in error messages.
    pub fn name(&self) -> String {
        self.path.display().to_string()
    }
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.header.version)
            .field("n_kv", &self.header.metadata.len())
            .field("n_tensors", &self.header.tensors.len())
            .finish()
    }
}

/// Parses and validates the header of `bytes` (a whole file). Touches only the header bytes.
fn parse(bytes: &[u8], file: &str) -> Result<Header, GgufError> {
    let mut c = Cursor::new(bytes, file);

    let magic = c.take(4, || "magic".into())?;
    if magic != GGUF_MAGIC {
        let mut found = [0u8; 4];
        found.copy_from_slice(magic);
        let hint = match &found {
            b"lmgg" | b"fmgg" | b"tjgg" | b"algg" => {
                " (a legacy GGML/GGJT file: convert it to GGUF)"
            }
            _ => "",
        };
        return Err(c.error(GgufErrorKind::BadMagic { found, hint }, 0));
    }

    let version = c.u32(|| "version".into())?;
    if version != 0 && version & 0xFFFF == 0 {
        // A byte-swapped small number: written by a big-endian writer (gguf.md §1.5).
        return Err(c.error(GgufErrorKind::BigEndian(version), 4));
    }
    if version != 2 && version != 3 {
        return Err(c.error(GgufErrorKind::UnsupportedVersion(version), 4));
    }

    let tensor_count = c.u64(|| "tensor count".into())?;
    let kv_count = c.u64(|| "metadata KV count".into())?;
    // Bound both counts by the bytes left before reserving anything.
    let available = c.remaining();
    if kv_count > available / MIN_KV_BYTES {
        return Err(c.error(
            GgufErrorKind::CountTooLarge {
                what: "metadata KV".into(),
                count: kv_count,
                available,
            },
            16,
        ));
    }
    if tensor_count > available / MIN_TENSOR_INFO_BYTES
        || kv_count * MIN_KV_BYTES + tensor_count * MIN_TENSOR_INFO_BYTES > available
    {
        return Err(c.error(
            GgufErrorKind::CountTooLarge {
                what: "tensor info".into(),
                count: tensor_count,
                available,
            },
            8,
        ));
    }

    // ---- metadata
    let mut metadata: Vec<(String, Value)> =
        Vec::with_capacity(bounded_capacity::<(String, Value)>(kv_count, available));
    // A hash table takes a few times its entries' size: reserve for a quarter of the bound.
    let mut key_index: HashMap<String, usize> =
        HashMap::with_capacity(bounded_capacity::<(String, usize)>(kv_count, available) / 4);
    let mut kv_offsets: Vec<u64> = Vec::with_capacity(bounded_capacity::<u64>(kv_count, available));
    let mut element_budget = value::MAX_METADATA_ARRAY_ELEMENTS;
    for i in 0..kv_count {
        let at = c.pos();
        let key = c.string(|| format!("metadata key #{i}"))?;
        if key.is_empty() {
            return Err(c.error(
                GgufErrorKind::InvalidKey {
                    key,
                    problem: "empty key".into(),
                },
                at,
            ));
        }
        if key_index.contains_key(&key) {
            return Err(c.error(GgufErrorKind::DuplicateKey(key), at));
        }
        let ty = value::decode_type(&mut c, &|| format!("metadata key '{}'", esc(&key)))?;
        let v = value::decode_value(&mut c, ty, &key, &mut element_budget)?;
        key_index.insert(key.clone(), metadata.len());
        metadata.push((key, v));
        kv_offsets.push(at);
    }

    let alignment = match key_index.get(ALIGNMENT_KEY) {
        None => DEFAULT_ALIGNMENT as u64,
        Some(&i) => {
            let problem = match metadata[i].1 {
                Value::U32(a) => layout::check_alignment(a.into()).err(),
                ref v => Some(format!("must be of type u32, found {}", v.value_type())),
            };
            if let Some(problem) = problem {
                return Err(c.error(
                    GgufErrorKind::InvalidValue {
                        key: ALIGNMENT_KEY.into(),
                        problem,
                    },
                    kv_offsets[i],
                ));
            }
            metadata[i].1.as_u64().unwrap_or(DEFAULT_ALIGNMENT as u64)
        }
    };

    // ---- tensor infos
    let available = c.remaining();
    if tensor_count > available / MIN_TENSOR_INFO_BYTES {
        return Err(c.error(
            GgufErrorKind::CountTooLarge {
                what: "tensor info".into(),
                count: tensor_count,
                available,
            },
            8,
        ));
    }
    let mut tensors: Vec<TensorInfo> =
        Vec::with_capacity(bounded_capacity::<TensorInfo>(tensor_count, available));
    let mut tensor_index: HashMap<String, usize> =
        HashMap::with_capacity(bounded_capacity::<(String, usize)>(tensor_count, available) / 4);
    let mut info_offsets: Vec<u64> =
        Vec::with_capacity(bounded_capacity::<u64>(tensor_count, available));
    // llama.cpp's rule: offset_i == sum over k < i of align_up(n_bytes_k, alignment).
    let mut expected_offset: u64 = 0;
    for i in 0..tensor_count {
        let at = c.pos();
        let name = c.string(|| format!("name of tensor #{i}"))?;
        let invalid = |name: &str, problem: String| GgufErrorKind::InvalidTensor {
            name: name.to_owned(),
            problem,
        };
        if let Err(problem) = layout::check_tensor_name(&name) {
            return Err(c.error(invalid(&name, problem), at));
        }
        if tensor_index.contains_key(&name) {
            return Err(c.error(GgufErrorKind::DuplicateTensor(name), at));
        }
        let dims_at = c.pos();
        let n_dims = c.u32(|| format!("dimension count of tensor '{}'", esc(&name)))?;
        if n_dims as usize > MAX_DIMS {
            return Err(c.error(
                invalid(
                    &name,
                    format!("has {n_dims} dimensions, at most {MAX_DIMS} are supported"),
                ),
                dims_at,
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize); // at most MAX_DIMS
        for d in 0..n_dims {
            dims.push(c.u64(|| format!("dimension {d} of tensor '{}'", esc(&name)))?);
        }
        let type_at = c.pos();
        let type_id = c.u32(|| format!("type of tensor '{}'", esc(&name)))?;
        // a ggml type, or one of tinygptv's ×16 interleaved layouts of one
        let interleaved = RepackLayout::from_gguf_type_id(type_id);
        let ty = GgmlType::from_id(type_id)
            .or(interleaved.map(RepackLayout::ty))
            .ok_or_else(|| {
                c.error(
                    invalid(
                        &name,
                        format!("unknown or unsupported ggml type id {type_id}"),
                    ),
                    type_at,
                )
            })?;
        let offset_at = c.pos();
        let offset = c.u64(|| format!("data offset of tensor '{}'", esc(&name)))?;
        let (_, n_bytes) = match interleaved {
            Some(l) => layout::interleaved_tensor_size(l, &dims),
            None => layout::tensor_size(ty, &dims),
        }
        .map_err(|problem| c.error(invalid(&name, problem), dims_at))?;

        if offset != expected_offset {
            let problem = if offset % alignment != 0 {
                format!("not a multiple of the alignment {alignment}")
            } else if offset < expected_offset {
                match tensors.last() {
                    Some(prev) => format!("overlaps the data of tensor '{}'", esc(&prev.name)),
                    None => "the first tensor must start at offset 0".into(),
                }
            } else {
                "llama.cpp requires tensor data in tensor-info order, each padded to the \
                 alignment, without gaps"
                    .into()
            };
            return Err(c.error(
                GgufErrorKind::TensorOffset {
                    name,
                    offset,
                    expected: expected_offset,
                    problem,
                },
                offset_at,
            ));
        }
        expected_offset = layout::align_up(n_bytes, alignment)
            .and_then(|padded| expected_offset.checked_add(padded))
            .ok_or_else(|| {
                c.error(
                    invalid(&name, "data offsets overflow u64".into()),
                    offset_at,
                )
            })?;

        tensor_index.insert(name.clone(), tensors.len());
        tensors.push(TensorInfo {
            name,
            ty,
            dims,
            offset,
            n_bytes,
            layout: interleaved,
        });
        info_offsets.push(at);
    }

    // ---- data blob: starts at the next multiple of the alignment (absolute file offset)
    let file_size = bytes.len() as u64;
    let data_offset = layout::align_up(c.pos(), alignment).ok_or_else(|| {
        GgufError::new(
            file,
            GgufErrorKind::Other("data offset overflows u64".into()),
        )
    })?;
    for (t, &at) in tensors.iter().zip(&info_offsets) {
        // Offsets are bounded by the running sum checked above, so only overflow of the
        // absolute position remains to check.
        let start = data_offset.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(t.n_bytes));
        match (start, end) {
            (Some(_), Some(end)) if end <= file_size => {}
            _ => {
                return Err(GgufError::at(
                    file,
                    GgufErrorKind::TensorDataOutOfFile {
                        name: t.name.clone(),
                        start: start.unwrap_or(u64::MAX),
                        end: end.unwrap_or(u64::MAX),
                        file_size,
                    },
                    at,
                ))
            }
        }
    }

    Ok(Header {
        version,
        alignment,
        data_offset,
        metadata,
        key_index,
        tensors,
        tensor_index,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(version: u32, n_tensors: u64, n_kv: u64) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&version.to_le_bytes());
        b.extend_from_slice(&n_tensors.to_le_bytes());
        b.extend_from_slice(&n_kv.to_le_bytes());
        b
    }

    #[test]
    fn minimal_file_parses() {
        let f = GgufFile::from_bytes(header(3, 0, 0), "min.gguf").unwrap();
        assert_eq!(f.version(), 3);
        assert_eq!(f.alignment(), 32);
        assert_eq!(f.data_offset(), 32);
        assert!(f.metadata().is_empty() && f.tensors().is_empty());
    }

    #[test]
    fn counts_are_bounded_by_file_size() {
        let e = GgufFile::from_bytes(header(3, 0, 1 << 40), "x.gguf").unwrap_err();
        assert!(matches!(e.kind, GgufErrorKind::CountTooLarge { .. }), "{e}");
        let e = GgufFile::from_bytes(header(3, u64::MAX, 0), "x.gguf").unwrap_err();
        assert!(matches!(e.kind, GgufErrorKind::CountTooLarge { .. }), "{e}");
        assert!(e.to_string().starts_with("x.gguf: "), "{e}");
    }
}
