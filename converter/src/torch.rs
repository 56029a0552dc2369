//! PyTorch checkpoints written by `torch.save`: the zip format (torch ≥ 1.6, `.pth`/`.bin`)
//! and the legacy stream format (magic number, pickles, then raw storages).
//!
//! The pickle is read with the safe reader in [`crate::pickle`]; storages stay in the memory
//! map (stored zip entries and legacy storages) or compressed in the zip until a tensor is read.

use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use zip::CompressionMethod;

use crate::checkpoint::{
    map_file, CheckpointError, CheckpointTensor, FileBytes, Layout, Result, SharedMap, SharedZip,
    StateDict, StorageBytes, TensorSource,
};
use crate::pickle::{self, Object, Pickle, TensorRef, Value};
use crate::safetensors::ShardIndex;

/// `torch.serialization.MAGIC_NUMBER` (0x1950a86a20f9469cfc6c) as minimal little-endian bytes.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
const LEGACY_PROTOCOL_VERSION: i64 = 1001;
/// Largest `data.pkl` we read (real ones are kilobytes to a few megabytes).
const MAX_PICKLE_BYTES: u64 = 256 << 20;
/// Largest uncompressed/compressed size ratio accepted for deflated zip entries.
const MAX_INFLATE_RATIO: u64 = 1100;
/// Keys under which training checkpoints keep the model's state dict, in search order.
pub const STATE_DICT_KEYS: [&str; 3] = ["model", "state_dict", "module"];

/// Which container a torch checkpoint used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TorchFormat {
    /// `torch.save` ≥ 1.6: a zip with `<prefix>data.pkl` and `<prefix>data/<key>` entries.
    Zip { prefix: String },
    /// The pre-1.6 stream format.
    Legacy,
    /// A plain pickle with no storages (not a torch file; only useful for reporting).
    PlainPickle,
}

/// An opened torch checkpoint: its pickle value graph plus lazily readable storages.
pub struct TorchCheckpoint {
    path: PathBuf,
    format: TorchFormat,
    pickle: Pickle,
    storages: HashMap<String, Arc<StorageBytes>>,
}

impl std::fmt::Debug for TorchCheckpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorchCheckpoint")
            .field("path", &self.path)
            .field("format", &self.format)
            .field("storages", &self.storages.len())
            .finish()
    }
}

fn pickle_err(path: &Path, what: &str, e: pickle::PickleError) -> CheckpointError {
    CheckpointError::format(path, format!("{what}: {e}"))
}

impl TorchCheckpoint {
    /// Open a `.pth`/`.bin` file (zip or legacy format). Only the pickle is parsed here.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Self::open_shared(path, map_file(path)?)
    }

    /// Like [`TorchCheckpoint::open`] for a file already in memory; `name` is used in errors.
    pub fn from_bytes(name: impl AsRef<Path>, bytes: Vec<u8>) -> Result<Self> {
        Self::open_shared(name.as_ref(), Arc::new(bytes))
    }

    fn open_shared(path: &Path, map: FileBytes) -> Result<Self> {
        let bytes = (*map).as_ref();
        if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
            Self::open_zip(path, map)
        } else {
            Self::open_stream(path, map)
        }
    }

    fn open_zip(path: &Path, map: FileBytes) -> Result<Self> {
        let file_len = (*map).as_ref().len();
        let zip_err = |e: zip::result::ZipError| {
            CheckpointError::format(path, format!("bad zip archive: {e}"))
        };
        let mut archive: SharedZip =
            zip::ZipArchive::new(Cursor::new(SharedMap(map.clone()))).map_err(zip_err)?;
        // The pickle is `<archive name>/data.pkl`; the archive name varies (file stem, "archive").
        let pkl_name = archive
            .file_names()
            .filter(|n| n.ends_with("data.pkl"))
            .map(str::to_string)
            .filter(|n| {
                let prefix = &n[..n.len() - "data.pkl".len()];
                prefix.is_empty() || (prefix.ends_with('/') && prefix.matches('/').count() == 1)
            })
            .min_by_key(|n| n.len())
            .ok_or_else(|| {
                CheckpointError::format(path, "zip archive has no data.pkl: not a torch checkpoint")
            })?;
        let prefix = pkl_name[..pkl_name.len() - "data.pkl".len()].to_string();

        if let Ok(entry) = archive.by_name(&format!("{prefix}byteorder")) {
            let mut order = String::new();
            entry
                .take(16)
                .read_to_string(&mut order)
                .map_err(|e| CheckpointError::format(path, format!("reading byteorder: {e}")))?;
            if order.trim() != "little" {
                return Err(CheckpointError::format(
                    path,
                    format!("byte order `{}` is not supported", order.trim()),
                ));
            }
        }

        let pkl_bytes = {
            let entry = archive.by_name(&pkl_name).map_err(zip_err)?;
            if entry.size() > MAX_PICKLE_BYTES {
                return Err(CheckpointError::format(
                    path,
                    format!("{pkl_name} is implausibly large"),
                ));
            }
            let mut bytes = Vec::new();
            entry
                .take(MAX_PICKLE_BYTES)
                .read_to_end(&mut bytes)
                .map_err(|e| CheckpointError::format(path, format!("reading {pkl_name}: {e}")))?;
            bytes
        };
        let (pickle, _) = pickle::parse(&pkl_bytes).map_err(|e| pickle_err(path, &pkl_name, e))?;

        // Index the storage entries. Stored ones are addressed in the memory map directly.
        let data_prefix = format!("{prefix}data/");
        let mut storages = HashMap::new();
        let mut compressed = Vec::new();
        for index in 0..archive.len() {
            let entry = archive.by_index_raw(index).map_err(zip_err)?;
            let Some(key) = entry.name().strip_prefix(&data_prefix) else {
                continue;
            };
            if key.is_empty() || key.contains('/') {
                continue;
            }
            let key = key.to_string();
            let size = usize::try_from(entry.size()).map_err(|_| {
                CheckpointError::format(path, format!("storage `{key}` is too large"))
            })?;
            if entry.compression() == CompressionMethod::Stored {
                let start = usize::try_from(entry.data_start()).ok();
                let fits = start
                    .and_then(|s| s.checked_add(size))
                    .is_some_and(|end| end <= file_len && entry.compressed_size() == entry.size());
                let (Some(start), true) = (start, fits) else {
                    return Err(CheckpointError::format(
                        path,
                        format!("storage `{key}` lies outside the file"),
                    ));
                };
                storages.insert(
                    key,
                    Arc::new(StorageBytes::Mapped {
                        map: map.clone(),
                        start,
                        len: size,
                    }),
                );
            } else {
                // Bound what a lying header can make us inflate (deflate peaks near 1032:1).
                if entry.size() > entry.compressed_size().saturating_mul(MAX_INFLATE_RATIO) + 4096 {
                    return Err(CheckpointError::format(
                        path,
                        format!("storage `{key}` claims an implausible uncompressed size"),
                    ));
                }
                compressed.push((key, index, size));
            }
        }
        if !compressed.is_empty() {
            let shared = Arc::new(Mutex::new(archive));
            for (key, index, len) in compressed {
                storages.insert(
                    key,
                    Arc::new(StorageBytes::Zipped {
                        archive: shared.clone(),
                        index,
                        len,
                    }),
                );
            }
        }
        Ok(TorchCheckpoint {
            path: path.to_path_buf(),
            format: TorchFormat::Zip { prefix },
            pickle,
            storages,
        })
    }

    fn open_stream(path: &Path, map: FileBytes) -> Result<Self> {
        let data = (*map).as_ref();
        if data.len() > 262 && &data[257..262] == b"ustar" {
            return Err(CheckpointError::format(
                path,
                "this is the tar-based torch format (torch < 0.4), which is not supported; re-save it with torch>=1.6",
            ));
        }
        let (first, mut pos) = pickle::parse(data).map_err(|e| pickle_err(path, "pickle", e))?;
        let is_legacy = matches!(first.root(), Value::BigInt(b) if b[..] == LEGACY_MAGIC[..]);
        if !is_legacy {
            // A plain pickle: expose its value graph; there are no storages to read.
            return Ok(TorchCheckpoint {
                path: path.to_path_buf(),
                format: TorchFormat::PlainPickle,
                pickle: first,
                storages: HashMap::new(),
            });
        }
        let mut next = |what: &str| -> Result<Pickle> {
            let (p, used) = pickle::parse(&data[pos..]).map_err(|e| pickle_err(path, what, e))?;
            pos += used;
            Ok(p)
        };
        let version = next("legacy protocol version")?;
        if *version.root() != Value::Int(LEGACY_PROTOCOL_VERSION) {
            return Err(CheckpointError::format(
                path,
                "unsupported legacy torch protocol version",
            ));
        }
        let sys_info = next("legacy sys_info")?;
        if sys_info.dict_get(sys_info.root(), "little_endian") == Some(&Value::Bool(false)) {
            return Err(CheckpointError::format(
                path,
                "big-endian legacy checkpoints are not supported",
            ));
        }
        let main = next("legacy main pickle")?;
        let keys_pickle = next("legacy storage key list")?;
        let keys: Vec<String> = keys_pickle
            .sequence(keys_pickle.root())
            .ok_or_else(|| CheckpointError::format(path, "legacy storage key list is not a list"))?
            .iter()
            .map(|k| match k {
                Value::Str(s) => Ok(s.to_string()),
                _ => Err(CheckpointError::format(
                    path,
                    "legacy storage key is not a string",
                )),
            })
            .collect::<Result<_>>()?;

        // Element sizes come from the storage classes the main pickle names.
        let mut element_sizes: HashMap<&str, usize> = HashMap::new();
        for object in main.objects() {
            if let Object::Storage(s) = object {
                if let Some(size) = s.dtype.element_size() {
                    element_sizes.insert(s.key.as_str(), size);
                }
            }
        }
        // Each storage: i64 element count, then the raw little-endian elements.
        let mut storages = HashMap::new();
        for key in &keys {
            let size = *element_sizes.get(key.as_str()).ok_or_else(|| {
                CheckpointError::format(
                    path,
                    format!("legacy storage `{key}` has no known element type"),
                )
            })?;
            let header = data.get(pos..pos + 8).ok_or_else(|| {
                CheckpointError::format(path, format!("legacy storage `{key}` is truncated"))
            })?;
            let numel = i64::from_le_bytes(header.try_into().unwrap_or([0xff; 8]));
            pos += 8;
            let len = u64::try_from(numel)
                .ok()
                .and_then(|n| n.checked_mul(size as u64))
                .and_then(|n| usize::try_from(n).ok())
                .filter(|&n| n <= data.len() - pos)
                .ok_or_else(|| {
                    CheckpointError::format(path, format!("legacy storage `{key}` is truncated"))
                })?;
            storages.insert(
                key.clone(),
                Arc::new(StorageBytes::Mapped {
                    map: map.clone(),
                    start: pos,
                    len,
                }),
            );
            pos += len;
        }
        Ok(TorchCheckpoint {
            path: path.to_path_buf(),
            format: TorchFormat::Legacy,
            pickle: main,
            storages,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn format(&self) -> &TorchFormat {
        &self.format
    }

    /// The pickle's value graph.
    pub fn pickle(&self) -> &Pickle {
        &self.pickle
    }

    /// The pickled top-level value.
    pub fn root(&self) -> &Value {
        self.pickle.root()
    }

    /// String keys of the top-level dict (empty if the top level is not a dict).
    pub fn top_level_keys(&self) -> Vec<String> {
        self.pickle
            .dict_entries(self.root())
            .unwrap_or(&[])
            .iter()
            .filter_map(|(k, _)| match k {
                Value::Str(s) => Some(s.to_string()),
                _ => None,
            })
            .collect()
    }

    /// A top-level dict entry (`"epoch"`, `"config"`, ...).
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.pickle.dict_get(self.root(), key)
    }

    /// A top-level entry as JSON (see [`Pickle::to_json`]); e.g. the training `config`, which
    /// is a plain dict in TinyGPT-V checkpoints (an omegaconf object shows up as `{"$call": ..}`).
    pub fn get_json(&self, key: &str) -> Option<serde_json::Value> {
        self.get(key).map(|v| self.pickle.to_json(v))
    }

    fn refuse_opaque(&self, value: &Value, location: &str) -> Result<()> {
        match self.pickle.opaque_callable(value) {
            Some(callable) => Err(CheckpointError::Refused {
                path: self.path.clone(),
                callable,
                location: location.to_string(),
            }),
            None => Ok(()),
        }
    }

    /// The model's tensors: the top-level dict if it holds tensors (a bare state dict like
    /// `eva_vit_g.pth`), else the dict under `"model"`, `"state_dict"` or `"module"` (BLIP-2,
    /// TinyGPT-V training checkpoints). Optimizer state, scaler and config are not touched.
    pub fn state_dict(&self) -> Result<StateDict> {
        let root = self.root();
        self.refuse_opaque(root, "the top level")?;
        let Some(entries) = self.pickle.dict_entries(root) else {
            return Err(CheckpointError::format(
                &self.path,
                format!(
                    "the checkpoint holds {}, not a dict of tensors",
                    self.pickle.describe(root)
                ),
            ));
        };
        let holds_tensors = entries
            .iter()
            .any(|(_, v)| self.pickle.as_tensor(v).is_some());
        if holds_tensors || entries.is_empty() {
            return self.tensor_dict(root, "the top level");
        }
        for key in STATE_DICT_KEYS {
            if let Some(value) = self.pickle.dict_get(root, key) {
                self.refuse_opaque(value, &format!("`{key}`"))?;
                if self.pickle.dict_entries(value).is_some() {
                    return self.tensor_dict(value, &format!("`{key}`"));
                }
            }
        }
        Err(CheckpointError::format(
            &self.path,
            format!(
                "no tensors at the top level and no dict under {STATE_DICT_KEYS:?} (top-level keys: {:?})",
                self.top_level_keys()
            ),
        ))
    }

    /// The tensors of the dict under a top-level key (e.g. `"model"`).
    pub fn state_dict_at(&self, key: &str) -> Result<StateDict> {
        let value = self.get(key).ok_or_else(|| {
            CheckpointError::format(&self.path, format!("no top-level key `{key}`"))
        })?;
        self.refuse_opaque(value, &format!("`{key}`"))?;
        self.tensor_dict(value, &format!("`{key}`"))
    }

    /// Turn a dict of tensors into a [`StateDict`]. Non-tensor plain values are skipped (and
    /// listed in [`StateDict::non_tensor_keys`]); a placeholder for a refused call is an error.
    pub fn tensor_dict(&self, dict: &Value, location: &str) -> Result<StateDict> {
        let entries = self.pickle.dict_entries(dict).ok_or_else(|| {
            CheckpointError::format(
                &self.path,
                format!(
                    "{location} holds {}, not a dict of tensors",
                    self.pickle.describe(dict)
                ),
            )
        })?;
        let mut state = StateDict::new(&self.path);
        let file = Arc::new(self.path.clone());
        for (key, value) in entries {
            let key = match key {
                Value::Str(s) => s.to_string(),
                Value::Int(i) => i.to_string(),
                other => {
                    return Err(CheckpointError::format(
                        &self.path,
                        format!(
                            "{location} has a key that is {}",
                            self.pickle.describe(other)
                        ),
                    ))
                }
            };
            self.refuse_opaque(value, &format!("{location} → `{key}`"))?;
            match self.pickle.as_tensor(value) {
                Some(tensor) => state.insert(self.make_tensor(&file, key, tensor)?),
                None => state.note_non_tensor(key),
            }
        }
        Ok(state)
    }

    fn make_tensor(
        &self,
        file: &Arc<PathBuf>,
        name: String,
        tensor: &TensorRef,
    ) -> Result<CheckpointTensor> {
        let storage = self.storages.get(&tensor.storage.key).ok_or_else(|| {
            CheckpointError::format(
                &self.path,
                format!(
                    "tensor `{name}`: storage `{}` is missing from the checkpoint",
                    tensor.storage.key
                ),
            )
        })?;
        let offset = usize::try_from(tensor.offset).map_err(|_| {
            CheckpointError::format(&self.path, format!("tensor `{name}`: offset too large"))
        })?;
        let source = TensorSource {
            file: file.clone(),
            storage: storage.clone(),
            layout: Layout {
                offset,
                stride: tensor.stride.clone(),
            },
        };
        CheckpointTensor::new(name, tensor.storage.dtype, tensor.shape.clone(), source)
    }
}

/// Read a sharded `pytorch_model.bin.index.json` checkpoint.
pub fn load_torch_index(index_path: &Path) -> Result<StateDict> {
    ShardIndex::read(index_path)?.load_with(|p| TorchCheckpoint::open(p)?.state_dict())
}
