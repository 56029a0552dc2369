//! Hugging Face model directories: `config.json`, the weights (single or sharded, safetensors
//! or `pytorch_model*.bin`) and the paths of the tokenizer files.

use std::path::{Path, PathBuf};

use crate::checkpoint::{CheckpointError, Result, StateDict};

/// Which weight files a model directory has, in the order they are preferred.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HfWeights {
    /// `model.safetensors`
    Safetensors(PathBuf),
    /// `model.safetensors.index.json` and its shards
    SafetensorsIndex(PathBuf),
    /// `pytorch_model.bin`
    TorchBin(PathBuf),
    /// `pytorch_model.bin.index.json` and its shards
    TorchBinIndex(PathBuf),
}

impl HfWeights {
    pub fn path(&self) -> &Path {
        match self {
            HfWeights::Safetensors(p)
            | HfWeights::SafetensorsIndex(p)
            | HfWeights::TorchBin(p)
            | HfWeights::TorchBinIndex(p) => p,
        }
    }
}

/// Tokenizer files present in the directory (read by the tokenizer code, not here).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HfTokenizerFiles {
    pub tokenizer_json: Option<PathBuf>,
    pub tokenizer_config_json: Option<PathBuf>,
    pub vocab_json: Option<PathBuf>,
    pub merges_txt: Option<PathBuf>,
    pub special_tokens_map_json: Option<PathBuf>,
    pub added_tokens_json: Option<PathBuf>,
}

/// An opened Hugging Face model directory.
#[derive(Clone, Debug)]
pub struct HfModelDir {
    pub dir: PathBuf,
    /// `config.json`, parsed.
    pub config: serde_json::Value,
    pub weights: HfWeights,
    pub tokenizer: HfTokenizerFiles,
}

/// Largest `config.json` we read (real ones are a few KB).
const MAX_CONFIG_BYTES: u64 = 16 << 20;

impl HfModelDir {
    /// Read `config.json` and find the weights. Fails if either is missing.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let config_path = dir.join("config.json");
        let size = std::fs::metadata(&config_path)
            .map_err(|e| CheckpointError::io(&config_path, e))?
            .len();
        if size > MAX_CONFIG_BYTES {
            return Err(CheckpointError::format(
                &config_path,
                "config.json is implausibly large",
            ));
        }
        let text = std::fs::read_to_string(&config_path)
            .map_err(|e| CheckpointError::io(&config_path, e))?;
        let config: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| CheckpointError::format(&config_path, format!("bad JSON: {e}")))?;
        if !config.is_object() {
            return Err(CheckpointError::format(
                &config_path,
                "config.json is not a JSON object",
            ));
        }

        let candidates = [
            (
                "model.safetensors",
                HfWeights::Safetensors as fn(PathBuf) -> HfWeights,
            ),
            ("model.safetensors.index.json", HfWeights::SafetensorsIndex),
            ("pytorch_model.bin", HfWeights::TorchBin),
            ("pytorch_model.bin.index.json", HfWeights::TorchBinIndex),
        ];
        let weights = candidates
            .iter()
            .map(|(name, make)| (dir.join(name), make))
            .find(|(path, _)| path.is_file())
            .map(|(path, make)| make(path))
            .ok_or_else(|| {
                CheckpointError::format(
                    &dir,
                    "no weights: expected model.safetensors, model.safetensors.index.json, pytorch_model.bin or pytorch_model.bin.index.json",
                )
            })?;

        let file = |name: &str| Some(dir.join(name)).filter(|p| p.is_file());
        let tokenizer = HfTokenizerFiles {
            tokenizer_json: file("tokenizer.json"),
            tokenizer_config_json: file("tokenizer_config.json"),
            vocab_json: file("vocab.json"),
            merges_txt: file("merges.txt"),
            special_tokens_map_json: file("special_tokens_map.json"),
            added_tokens_json: file("added_tokens.json"),
        };
        Ok(HfModelDir {
            dir,
            config,
            weights,
            tokenizer,
        })
    }

    /// All weights as one state dict (shards merged, file order).
    pub fn state_dict(&self) -> Result<StateDict> {
        match &self.weights {
            HfWeights::Safetensors(p) => crate::safetensors::load_safetensors(p),
            HfWeights::SafetensorsIndex(p) => crate::safetensors::load_safetensors_index(p),
            HfWeights::TorchBin(p) => crate::torch::TorchCheckpoint::open(p)?.state_dict(),
            HfWeights::TorchBinIndex(p) => crate::torch::load_torch_index(p),
        }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    /// A required unsigned integer from `config.json`.
    pub fn config_usize(&self, key: &str) -> Result<usize> {
        self.config
            .get(key)
            .and_then(|v| v.as_u64())
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| {
                CheckpointError::format(
                    &self.config_path(),
                    format!("`{key}` is missing or not an unsigned integer"),
                )
            })
    }

    /// A required number from `config.json`.
    pub fn config_f64(&self, key: &str) -> Result<f64> {
        self.config
            .get(key)
            .and_then(|v| v.as_f64())
            .ok_or_else(|| {
                CheckpointError::format(
                    &self.config_path(),
                    format!("`{key}` is missing or not a number"),
                )
            })
    }

    /// An optional string from `config.json`.
    pub fn config_str(&self, key: &str) -> Option<&str> {
        self.config.get(key).and_then(|v| v.as_str())
    }
}
