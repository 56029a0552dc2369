//! safetensors files, single and sharded (`model.safetensors.index.json`), memory-mapped.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ::safetensors::tensor::{Dtype, SafeTensors};

use crate::checkpoint::{
    contiguous_strides, map_file, CheckpointError, CheckpointTensor, DType, FileBytes, Layout,
    Result, StateDict, StorageBytes, TensorSource,
};

fn dtype_from_safetensors(dtype: Dtype) -> DType {
    match dtype {
        Dtype::F64 => DType::F64,
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::I64 => DType::I64,
        Dtype::I32 => DType::I32,
        Dtype::I16 => DType::I16,
        Dtype::I8 => DType::I8,
        Dtype::U8 => DType::U8,
        Dtype::U16 => DType::U16,
        Dtype::U32 => DType::U32,
        Dtype::U64 => DType::U64,
        Dtype::BOOL => DType::Bool,
        Dtype::C64 => DType::Other("C64"),
        Dtype::F8_E4M3 => DType::Other("F8_E4M3"),
        Dtype::F8_E5M2 => DType::Other("F8_E5M2"),
        Dtype::F8_E8M0 => DType::Other("F8_E8M0"),
        Dtype::F4 => DType::Other("F4"),
        Dtype::F6_E2M3 => DType::Other("F6_E2M3"),
        Dtype::F6_E3M2 => DType::Other("F6_E3M2"),
        _ => DType::Other("unknown safetensors dtype"),
    }
}

/// Read one `.safetensors` file's header; tensors stay in the memory map, in file order.
pub fn load_safetensors(path: &Path) -> Result<StateDict> {
    load_safetensors_shared(path, map_file(path)?)
}

/// Like [`load_safetensors`] for a file already in memory; `name` is used in errors.
pub fn load_safetensors_bytes(name: &Path, bytes: Vec<u8>) -> Result<StateDict> {
    load_safetensors_shared(name, Arc::new(bytes))
}

fn load_safetensors_shared(path: &Path, map: FileBytes) -> Result<StateDict> {
    let (header_len, metadata) = SafeTensors::read_metadata((*map).as_ref())
        .map_err(|e| CheckpointError::format(path, format!("bad safetensors header: {e}")))?;
    let data_start = 8 + header_len;
    let file = Arc::new(path.to_path_buf());
    let mut state = StateDict::new(path);
    // offset_keys() lists names by data offset, i.e. in the order the writer laid them out.
    for name in metadata.offset_keys() {
        let Some(info) = metadata.info(&name) else {
            continue;
        };
        let (begin, end) = info.data_offsets;
        let storage = StorageBytes::Mapped {
            map: map.clone(),
            start: data_start + begin,
            len: end - begin,
        };
        let source = TensorSource {
            file: file.clone(),
            storage: Arc::new(storage),
            layout: Layout {
                offset: 0,
                stride: contiguous_strides(&info.shape),
            },
        };
        let tensor = CheckpointTensor::new(
            name,
            dtype_from_safetensors(info.dtype),
            info.shape.clone(),
            source,
        )?;
        state.insert(tensor);
    }
    Ok(state)
}

/// A parsed shard index (`*.index.json`): which file holds which tensor.
#[derive(Clone, Debug)]
pub struct ShardIndex {
    pub path: PathBuf,
    /// Shard file names (relative to the index's directory), sorted, each listed once.
    pub files: Vec<String>,
    /// `(tensor name, shard file)` pairs.
    pub weight_map: Vec<(String, String)>,
}

impl ShardIndex {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| CheckpointError::io(path, e))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| CheckpointError::format(path, format!("bad JSON: {e}")))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| CheckpointError::format(path, "no `weight_map` object"))?;
        let mut weight_map = Vec::with_capacity(map.len());
        let mut files = Vec::new();
        for (name, file) in map {
            let file = file.as_str().ok_or_else(|| {
                CheckpointError::format(path, format!("weight_map[`{name}`] is not a file name"))
            })?;
            // Shards must be plain names next to the index (no path tricks).
            if file.is_empty() || file.contains('/') || file.contains('\\') || file == ".." {
                return Err(CheckpointError::format(
                    path,
                    format!("shard name `{file}` is not a plain file name"),
                ));
            }
            weight_map.push((name.clone(), file.to_string()));
            files.push(file.to_string());
        }
        files.sort();
        files.dedup();
        Ok(ShardIndex {
            path: path.to_path_buf(),
            files,
            weight_map,
        })
    }

    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// Load every shard with `load_one`, merge them, and check that each tensor of the weight
    /// map is in the shard the index names.
    pub fn load_with(&self, load_one: impl Fn(&Path) -> Result<StateDict>) -> Result<StateDict> {
        let mut state = StateDict::new(&self.path);
        for file in &self.files {
            state.merge(load_one(&self.dir().join(file))?)?;
        }
        for (name, file) in &self.weight_map {
            match state.find(name) {
                Some(t) if t.file().file_name().and_then(|n| n.to_str()) == Some(file.as_str()) => {
                }
                Some(t) => {
                    return Err(CheckpointError::format(
                        &self.path,
                        format!(
                            "tensor `{name}` is listed in {file} but found in {}",
                            t.file().display()
                        ),
                    ))
                }
                None => {
                    return Err(CheckpointError::MissingTensor {
                        path: self.dir().join(file),
                        name: name.clone(),
                    })
                }
            }
        }
        Ok(state)
    }
}

/// Read a sharded safetensors checkpoint through its index.
pub fn load_safetensors_index(index_path: &Path) -> Result<StateDict> {
    ShardIndex::read(index_path)?.load_with(load_safetensors)
}
