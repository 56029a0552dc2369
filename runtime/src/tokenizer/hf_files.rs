//! HF tokenizer files → the `tokenizer.ggml.*` arrays, the way llama.cpp's converter builds them
//! (gguf.md §3.2: `_set_vocab_gpt2` + gguf-py `SpecialVocab`). Shared by the converter (to write
//! GGUF metadata) and by tests (to build a [`Tokenizer`] from the same data a GGUF holds).

use std::collections::HashMap;

use serde_json::Value;

use super::{invalid, TokenType, Tokenizer, TokenizerError, MAX_TOKEN_LEN, MAX_VOCAB_SIZE};

/// Special token ids and flags as gguf-py's `SpecialVocab` finds them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HfSpecialTokens {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    pub sep: Option<u32>,
    pub pad: Option<u32>,
    pub cls: Option<u32>,
    pub mask: Option<u32>,
    /// `add_bos_token` / `add_eos_token` from tokenizer_config.json, when present.
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    pub chat_template: Option<String>,
}

/// Vocabulary arrays ready for `tokenizer.ggml.tokens` / `token_type` / `merges`.
#[derive(Clone, Debug)]
pub struct GgufVocab {
    /// `vocab_size` entries: byte-level spellings, added tokens' content, `[PAD{id}]` fillers.
    pub tokens: Vec<String>,
    /// [`TokenType`] values: NORMAL, CONTROL (special added), USER_DEFINED (other added), UNUSED.
    pub token_types: Vec<i32>,
    /// `"left right"`, rank = index.
    pub merges: Vec<String>,
    /// Filled by [`GgufVocab::resolve_special_tokens`].
    pub special: HfSpecialTokens,
    /// Added tokens (id, content) in file order, to resolve special tokens by content.
    added: Vec<(u32, String)>,
}

struct AddedEntry {
    id: u32,
    content: String,
    special: bool,
}

fn parse_json(text: &str, what: &str) -> Result<Value, TokenizerError> {
    serde_json::from_str(text).map_err(|source| TokenizerError::Json {
        what: what.to_string(),
        source,
    })
}

fn id_of(v: &Value, what: &str) -> Result<u32, TokenizerError> {
    v.as_u64()
        .filter(|&id| (id as usize) < MAX_VOCAB_SIZE)
        .map(|id| id as u32)
        .ok_or_else(|| {
            invalid(format!(
                "{what}: token id {v} is not an integer below {MAX_VOCAB_SIZE}"
            ))
        })
}

/// `{"token": id, ...}` (vocab.json, `model.vocab`, added_tokens.json).
fn parse_vocab_object(v: &Value, what: &str) -> Result<Vec<(String, u32)>, TokenizerError> {
    let obj = v
        .as_object()
        .ok_or_else(|| invalid(format!("{what}: expected an object of token → id")))?;
    if obj.len() > MAX_VOCAB_SIZE {
        return Err(invalid(format!(
            "{what}: {} entries (limit {MAX_VOCAB_SIZE})",
            obj.len()
        )));
    }
    obj.iter()
        .map(|(k, id)| Ok((k.clone(), id_of(id, what)?)))
        .collect()
}

/// gguf-py's `does_token_look_special` (conversion/base.py).
fn looks_special(token: &str) -> bool {
    matches!(token, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (token.starts_with("<|") && token.ends_with("|>"))
        || (token.starts_with("<｜") && token.ends_with("｜>"))
        || (token.starts_with("<unused") && token.ends_with('>'))
}

/// Lays out the vocabulary like `_set_vocab_gpt2`: ids not used by the HF tokenizer become
/// `[PAD{id}]` / UNUSED; added tokens CONTROL if special (or looking like `<|…|>`), else
/// USER_DEFINED; everything else NORMAL.
fn build(
    vocab: Vec<(String, u32)>,
    added: Vec<AddedEntry>,
    merges: Vec<String>,
    vocab_size: Option<usize>,
    what: &str,
) -> Result<GgufVocab, TokenizerError> {
    let max_id = vocab
        .iter()
        .map(|v| v.1)
        .chain(added.iter().map(|a| a.id))
        .max();
    let needed = max_id.map_or(0, |m| m as usize + 1);
    let n = vocab_size.unwrap_or(needed);
    if n == 0 || n > MAX_VOCAB_SIZE {
        return Err(invalid(format!(
            "{what}: vocabulary size {n} is not in 1..={MAX_VOCAB_SIZE}"
        )));
    }
    if needed > n {
        return Err(invalid(format!(
            "{what}: token id {} does not fit the vocabulary size {n}",
            needed - 1
        )));
    }
    let mut slots: Vec<Option<(String, TokenType)>> = vec![None; n];
    for (tok, id) in vocab {
        if tok.len() > MAX_TOKEN_LEN {
            return Err(invalid(format!(
                "{what}: token {id} is longer than {MAX_TOKEN_LEN} bytes"
            )));
        }
        slots[id as usize] = Some((tok, TokenType::Normal));
    }
    // Added tokens override the model's entry with the same id (phi-2: <|endoftext|>).
    // Non-normalized added tokens would be round-tripped through decode(encode()) by the
    // converter; for byte-level BPE that is the identity on their content.
    for a in &added {
        if a.content.len() > MAX_TOKEN_LEN {
            return Err(invalid(format!(
                "{what}: added token {} is longer than {MAX_TOKEN_LEN} bytes",
                a.id
            )));
        }
        let entry = if a.special || looks_special(&a.content) {
            (a.content.clone(), TokenType::Control)
        } else {
            // Pre-normalize SentencePiece spaces (a no-op for GPT-2 vocabularies).
            (a.content.replace('\u{2581}', " "), TokenType::UserDefined)
        };
        slots[a.id as usize] = Some(entry);
    }
    let mut tokens = Vec::with_capacity(n);
    let mut token_types = Vec::with_capacity(n);
    for (i, slot) in slots.into_iter().enumerate() {
        let (tok, ty) = slot.unwrap_or_else(|| (format!("[PAD{i}]"), TokenType::Unused));
        tokens.push(tok);
        token_types.push(ty as i32);
    }
    Ok(GgufVocab {
        tokens,
        token_types,
        merges,
        special: HfSpecialTokens::default(),
        added: added.into_iter().map(|a| (a.id, a.content)).collect(),
    })
}

/// Builds the GGUF vocabulary from a `tokenizer.json` (BPE model). `vocab_size`: the model's
/// `config.json` `vocab_size` (51200 for phi-2), or `None` for max id + 1. Special token ids are
/// left unset: call [`GgufVocab::resolve_special_tokens`].
pub fn gguf_vocab_from_tokenizer_json(
    tokenizer_json: &str,
    vocab_size: Option<usize>,
) -> Result<GgufVocab, TokenizerError> {
    const WHAT: &str = "tokenizer.json";
    let root = parse_json(tokenizer_json, WHAT)?;
    let model = root
        .get("model")
        .ok_or_else(|| invalid(format!("{WHAT}: no \"model\"")))?;
    if let Some(ty) = model.get("type").and_then(Value::as_str) {
        if ty != "BPE" {
            return Err(invalid(format!("{WHAT}: model type {ty:?} is not BPE")));
        }
    }
    let vocab = parse_vocab_object(
        model.get("vocab").unwrap_or(&Value::Null),
        "tokenizer.json model.vocab",
    )?;
    let merges_value = model
        .get("merges")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid(format!("{WHAT}: no model.merges array")))?;
    if merges_value.len() > MAX_VOCAB_SIZE {
        return Err(invalid(format!(
            "{WHAT}: {} merges (limit {MAX_VOCAB_SIZE})",
            merges_value.len()
        )));
    }
    let mut merges = Vec::with_capacity(merges_value.len());
    for (i, m) in merges_value.iter().enumerate() {
        let merge = match m {
            Value::String(s) => s.clone(),
            // New-style `[left, right]`: spaces inside a side are written as U+0120 (gguf-py).
            Value::Array(pair) if pair.len() == 2 => {
                let side = |v: &Value| {
                    v.as_str()
                        .map(|s| s.replace(' ', "\u{120}"))
                        .ok_or_else(|| {
                            invalid(format!("{WHAT}: merge {i} is not a pair of strings"))
                        })
                };
                format!("{} {}", side(&pair[0])?, side(&pair[1])?)
            }
            _ => {
                return Err(invalid(format!(
                    "{WHAT}: merge {i} is neither \"a b\" nor [a, b]"
                )))
            }
        };
        merges.push(merge);
    }
    let mut added = Vec::new();
    if let Some(list) = root.get("added_tokens") {
        let list = list
            .as_array()
            .ok_or_else(|| invalid(format!("{WHAT}: added_tokens is not an array")))?;
        for (i, t) in list.iter().enumerate() {
            let content = t
                .get("content")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(format!("{WHAT}: added token {i} has no content")))?;
            let id = id_of(
                t.get("id").unwrap_or(&Value::Null),
                "tokenizer.json added_tokens",
            )?;
            let special = t.get("special").and_then(Value::as_bool).unwrap_or(false);
            added.push(AddedEntry {
                id,
                content: content.to_string(),
                special,
            });
        }
    }
    build(vocab, added, merges, vocab_size, WHAT)
}

/// Builds the GGUF vocabulary from the slow-tokenizer layout: `vocab.json`, `merges.txt`
/// (optional `#version` first line), `added_tokens.json` (content → id) and
/// `tokenizer_config.json` (`added_tokens_decoder`; tokens named as `*_token` are special).
pub fn gguf_vocab_from_vocab_merges(
    vocab_json: &str,
    merges_txt: &str,
    added_tokens_json: Option<&str>,
    tokenizer_config_json: Option<&str>,
    vocab_size: Option<usize>,
) -> Result<GgufVocab, TokenizerError> {
    let vocab = parse_vocab_object(&parse_json(vocab_json, "vocab.json")?, "vocab.json")?;
    let mut merges = Vec::new();
    for (k, line) in merges_txt.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || (k == 0 && line.starts_with('#')) {
            continue;
        }
        let parts: Vec<&str> = line.split_whitespace().collect();
        if parts.len() != 2 {
            return Err(invalid(format!(
                "merges.txt line {}: {line:?} is not \"left right\"",
                k + 1
            )));
        }
        if merges.len() >= MAX_VOCAB_SIZE {
            return Err(invalid(format!(
                "merges.txt: more than {MAX_VOCAB_SIZE} merges"
            )));
        }
        merges.push(format!("{} {}", parts[0], parts[1]));
    }

    let config = tokenizer_config_json
        .map(|t| parse_json(t, "tokenizer_config.json"))
        .transpose()?;
    let mut special_contents: Vec<String> = Vec::new();
    if let Some(cfg) = &config {
        for typ in SPECIAL_TYPES {
            if let Some(c) = token_content(cfg.get(format!("{typ}_token").as_str())) {
                special_contents.push(c.to_string());
            }
        }
    }
    let mut added: Vec<AddedEntry> = Vec::new();
    if let Some(dec) = config
        .as_ref()
        .and_then(|c| c.get("added_tokens_decoder"))
        .and_then(Value::as_object)
    {
        for (id_text, t) in dec {
            let id = id_text
                .parse::<u32>()
                .ok()
                .filter(|&id| (id as usize) < MAX_VOCAB_SIZE)
                .ok_or_else(|| invalid(format!("tokenizer_config.json: added_tokens_decoder key {id_text:?} is not a token id")))?;
            let content = t.get("content").and_then(Value::as_str).ok_or_else(|| {
                invalid(format!(
                    "tokenizer_config.json: added token {id} has no content"
                ))
            })?;
            let special = t.get("special").and_then(Value::as_bool).unwrap_or(false)
                || special_contents.iter().any(|c| c == content);
            added.push(AddedEntry {
                id,
                content: content.to_string(),
                special,
            });
        }
    }
    if let Some(text) = added_tokens_json {
        let mut list =
            parse_vocab_object(&parse_json(text, "added_tokens.json")?, "added_tokens.json")?;
        list.sort_by_key(|e| e.1);
        for (content, id) in list {
            if !added.iter().any(|a| a.id == id) {
                let special = special_contents.contains(&content);
                added.push(AddedEntry {
                    id,
                    content,
                    special,
                });
            }
        }
    }
    // Special tokens that only live in vocab.json (GPT-2's <|endoftext|>) are added tokens too.
    let vocab_ids: HashMap<&str, u32> = vocab.iter().map(|(t, id)| (t.as_str(), *id)).collect();
    for c in &special_contents {
        if !added.iter().any(|a| &a.content == c) {
            if let Some(&id) = vocab_ids.get(c.as_str()) {
                added.push(AddedEntry {
                    id,
                    content: c.clone(),
                    special: true,
                });
            }
        }
    }
    added.sort_by_key(|a| a.id);
    build(vocab, added, merges, vocab_size, "vocab.json/merges.txt")
}

const SPECIAL_TYPES: [&str; 7] = ["bos", "eos", "unk", "sep", "pad", "cls", "mask"];

/// A `*_token` entry: a string or `{"content": ...}`.
fn token_content(v: Option<&Value>) -> Option<&str> {
    match v? {
        Value::String(s) => Some(s),
        Value::Object(o) => o.get("content").and_then(Value::as_str),
        _ => None,
    }
}

impl GgufVocab {
    /// Special token ids like gguf-py's `SpecialVocab`: `tokenizer_config.json` `<typ>_token`
    /// looked up by content among the added tokens, else `config.json` `<typ>_token_id`; ids
    /// outside the vocabulary are ignored. Also reads `add_bos_token` / `add_eos_token` and
    /// `chat_template` (string form).
    pub fn resolve_special_tokens(
        &mut self,
        tokenizer_config_json: Option<&str>,
        config_json: Option<&str>,
    ) -> Result<(), TokenizerError> {
        let n = self.tokens.len();
        let mut found: [Option<u32>; 7] = [None; 7];
        if let Some(text) = tokenizer_config_json {
            let cfg = parse_json(text, "tokenizer_config.json")?;
            self.special.add_bos = cfg.get("add_bos_token").and_then(Value::as_bool);
            self.special.add_eos = cfg.get("add_eos_token").and_then(Value::as_bool);
            self.special.chat_template = cfg
                .get("chat_template")
                .and_then(Value::as_str)
                .map(str::to_string);
            for (k, typ) in SPECIAL_TYPES.iter().enumerate() {
                if let Some(content) = token_content(cfg.get(format!("{typ}_token").as_str())) {
                    found[k] = self
                        .added
                        .iter()
                        .find(|(_, c)| c == content)
                        .map(|(id, _)| *id)
                        .filter(|&id| (id as usize) < n);
                }
            }
        }
        if let Some(text) = config_json {
            let cfg = parse_json(text, "config.json")?;
            for (k, typ) in SPECIAL_TYPES.iter().enumerate() {
                if found[k].is_none() {
                    found[k] = cfg
                        .get(format!("{typ}_token_id").as_str())
                        .and_then(Value::as_u64)
                        .filter(|&id| (id as usize) < n)
                        .map(|id| id as u32);
                }
            }
        }
        let s = &mut self.special;
        [s.bos, s.eos, s.unk, s.sep, s.pad, s.cls, s.mask] = found;
        Ok(())
    }

    /// The runtime tokenizer for this vocabulary (bos/eos from `special`).
    pub fn to_tokenizer(&self) -> Result<Tokenizer, TokenizerError> {
        Tokenizer::from_parts(
            self.tokens.clone(),
            self.token_types.clone(),
            &self.merges,
            self.special.bos,
            self.special.eos,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: &str = r#"{
        "added_tokens": [
            {"id": 5, "content": "<|endoftext|>", "special": true, "normalized": false},
            {"id": 6, "content": "  ", "special": false, "normalized": true},
            {"id": 7, "content": "<|im_start|>", "special": false}
        ],
        "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "Ġ": 3, "Ġa": 4, "<|endoftext|>": 5},
                  "merges": ["a b", ["Ġ", "a"]]}
    }"#;

    #[test]
    fn tokenizer_json_layout() {
        let mut v = gguf_vocab_from_tokenizer_json(JSON, Some(10)).unwrap();
        assert_eq!(
            v.tokens,
            [
                "a",
                "b",
                "ab",
                "Ġ",
                "Ġa",
                "<|endoftext|>",
                "  ",
                "<|im_start|>",
                "[PAD8]",
                "[PAD9]"
            ]
        );
        assert_eq!(v.token_types, [1, 1, 1, 1, 1, 3, 4, 3, 5, 5]);
        assert_eq!(v.merges, ["a b", "Ġ a"]);
        v.resolve_special_tokens(
            Some(r#"{"bos_token": "<|endoftext|>", "eos_token": {"content": "<|endoftext|>"}, "unk_token": "nope", "add_bos_token": false}"#),
            Some(r#"{"unk_token_id": 1, "pad_token_id": 99}"#),
        )
        .unwrap();
        assert_eq!(
            (v.special.bos, v.special.eos, v.special.unk, v.special.pad),
            (Some(5), Some(5), Some(1), None)
        );
        assert_eq!(v.special.add_bos, Some(false));
        let t = v.to_tokenizer().unwrap();
        assert_eq!(t.encode("ab a  a<|endoftext|>", true), [2, 4, 6, 0, 5]);
        assert!(gguf_vocab_from_tokenizer_json(JSON, Some(7)).is_err());
        assert!(gguf_vocab_from_tokenizer_json("{", None).is_err());
        assert!(
            gguf_vocab_from_tokenizer_json(r#"{"model": {"type": "WordPiece"}}"#, None).is_err()
        );
    }

    #[test]
    fn pair_merges_with_spaces() {
        let json = r#"{"model": {"vocab": {"a": 0, "Ġ": 1}, "merges": [["a b", "c"]]}}"#;
        let v = gguf_vocab_from_tokenizer_json(json, None).unwrap();
        assert_eq!(v.merges, ["aĠb c"]);
    }

    #[test]
    fn vocab_merges_layout() {
        let vocab = r#"{"a": 0, "b": 1, "ab": 2, "<|endoftext|>": 3}"#;
        let merges = "#version: 0.2\na b\n\n";
        let v = gguf_vocab_from_vocab_merges(
            vocab,
            merges,
            Some(r#"{"\t\t": 4}"#),
            Some(r#"{"eos_token": "<|endoftext|>"}"#),
            None,
        )
        .unwrap();
        assert_eq!(v.tokens, ["a", "b", "ab", "<|endoftext|>", "\t\t"]);
        assert_eq!(v.token_types, [1, 1, 1, 3, 4]);
        assert_eq!(v.merges, ["a b"]);
        assert!(gguf_vocab_from_vocab_merges(vocab, "a b c\n", None, None, None).is_err());
    }
}
