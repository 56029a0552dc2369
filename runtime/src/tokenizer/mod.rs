//! GPT-2 byte-level BPE tokenizer as Phi-2 uses it (tinygptv.md §12, gguf.md §3).
//!
//! Built from the data a GGUF holds (`tokenizer.ggml.tokens` / `token_type` / `merges`), it
//! reproduces the ids of the HF `tokenizers` library with Phi-2's `tokenizer.json`:
//!
//! 1. Added tokens (GGUF types CONTROL, USER_DEFINED, UNKNOWN) are cut out of the raw text first,
//!    leftmost-longest like HF's added-vocabulary matcher (Phi-2: `<|endoftext|>` and the
//!    whitespace-run tokens, e.g. 4 spaces or 2 tabs, which therefore never reach BPE).
//! 2. The rest is split by the GPT-2 pre-tokenizer regex (`pretokenize.rs`), each piece's bytes
//!    are spelled with the byte-level alphabet and merged by BPE rank (`bpe.rs`).
//!
//! Decoding maps byte-level spellings back to bytes; added tokens decode to their content.
//! [`StreamDecoder`] emits text incrementally without splitting multi-byte characters.
//!
//! Where this can differ from HF (not for Phi-2's tokenizer, which the tests check in full):
//! * HF matches non-normalized added tokens on the raw text, then normalized ones in the
//!   remaining pieces; a GGUF does not record which is which, so all are matched in one
//!   leftmost-longest pass. Same result without a normalizer and without added tokens that
//!   overlap each other.
//! * `lstrip` / `rstrip` / `single_word` added-token options are not in a GGUF (Phi-2: all off).
//! * HF sends an added token's content through the byte-level decoder when every character of
//!   it is a byte-level character (e.g. an added token "é" would decode to the byte 0xE9); we
//!   always decode added tokens to their content, like llama.cpp.

mod bpe;
mod byte_level;
mod hf_files;
mod pretokenize;
mod unicode_tables;

use std::collections::HashMap;
use std::sync::Mutex;

pub use hf_files::{
    gguf_vocab_from_tokenizer_json, gguf_vocab_from_vocab_merges, GgufVocab, HfSpecialTokens,
};

/// Most tokens a vocabulary may have (bounds allocations on corrupt input).
pub const MAX_VOCAB_SIZE: usize = 1 << 24;
/// Longest token text accepted, in bytes.
pub const MAX_TOKEN_LEN: usize = 1 << 16;
/// Pre-tokens shorter than this (in bytes) are cached.
const CACHE_MAX_WORD_LEN: usize = 256;
/// Cached pre-tokens at most; the cache is cleared when full.
const CACHE_CAPACITY: usize = 1 << 16;

/// llama.cpp's `llama_token_type` values, as stored in `tokenizer.ggml.token_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum TokenType {
    Undefined = 0,
    Normal = 1,
    Unknown = 2,
    Control = 3,
    UserDefined = 4,
    Unused = 5,
    Byte = 6,
}

impl TokenType {
    pub fn from_i32(v: i32) -> Option<TokenType> {
        Some(match v {
            0 => TokenType::Undefined,
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => return None,
        })
    }

    /// Tokens matched as whole strings in the input before BPE (HF "added tokens").
    fn is_added(self) -> bool {
        matches!(
            self,
            TokenType::Control | TokenType::UserDefined | TokenType::Unknown
        )
    }

    /// Special added tokens: recognised in text only with `parse_special`, skipped by
    /// [`Tokenizer::decode_skip_special`].
    fn is_special(self) -> bool {
        matches!(self, TokenType::Control | TokenType::Unknown)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{0}")]
    Invalid(String),
    #[error("{what}: invalid JSON: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
}

pub(crate) fn invalid(msg: impl Into<String>) -> TokenizerError {
    TokenizerError::Invalid(msg.into())
}

/// An added token as the matcher sees it.
struct AddedToken {
    content: String,
    id: u32,
    special: bool,
}

/// Byte-level BPE tokenizer. `Sync`: encode from several threads at once is fine.
pub struct Tokenizer {
    tokens: Vec<String>,
    types: Vec<TokenType>,
    /// Decoded bytes of every token, concatenated; token `i` is `bytes[offsets[i]..offsets[i+1]]`.
    bytes: Vec<u8>,
    offsets: Vec<usize>,
    /// Vocab spelling → id (for BPE symbols and `find_token`).
    token_to_id: HashMap<String, u32>,
    /// Id of the one-character token of each byte (the BPE start symbols).
    byte_ids: [Option<u32>; 256],
    merges: bpe::MergeMap,
    /// Added tokens grouped by first byte, longest first.
    added_by_first_byte: Vec<Vec<AddedToken>>,
    bos: Option<u32>,
    eos: Option<u32>,
    cache: Mutex<HashMap<String, Vec<u32>>>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.tokens.len())
            .field("merges", &self.merges.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Builds the tokenizer from GGUF-style data.
    ///
    /// `tokens`: vocabulary in GPT-2 byte-level spelling (`Ġ` = space); added tokens
    /// (CONTROL / USER_DEFINED / UNKNOWN) hold their plain content. `token_types`: llama.cpp
    /// token types, one per token. `merges`: `"left right"`, rank = index; every side and the
    /// merged spelling must be in the vocabulary.
    pub fn from_parts<I>(
        tokens: Vec<String>,
        token_types: Vec<i32>,
        merges: I,
        bos: Option<u32>,
        eos: Option<u32>,
    ) -> Result<Tokenizer, TokenizerError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let n = tokens.len();
        if n == 0 || n > MAX_VOCAB_SIZE {
            return Err(invalid(format!(
                "vocabulary size {n} is not in 1..={MAX_VOCAB_SIZE}"
            )));
        }
        if token_types.len() != n {
            return Err(invalid(format!(
                "{} token types for {n} tokens",
                token_types.len()
            )));
        }
        let types = token_types
            .iter()
            .enumerate()
            .map(|(i, &t)| {
                TokenType::from_i32(t)
                    .ok_or_else(|| invalid(format!("token {i}: unknown token type {t}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        for (name, id) in [("bos", bos), ("eos", eos)] {
            if let Some(id) = id {
                if id as usize >= n {
                    return Err(invalid(format!(
                        "{name} token id {id} is outside the vocabulary of {n}"
                    )));
                }
            }
        }

        let mut bytes = Vec::new();
        let mut offsets = Vec::with_capacity(n + 1);
        offsets.push(0);
        for (i, (tok, &ty)) in tokens.iter().zip(&types).enumerate() {
            if tok.len() > MAX_TOKEN_LEN {
                return Err(invalid(format!(
                    "token {i} is {} bytes long (limit {MAX_TOKEN_LEN})",
                    tok.len()
                )));
            }
            match ty {
                // Added tokens decode to their content (HF keeps it verbatim for whitespace
                // tokens; llama.cpp always does).
                TokenType::Control | TokenType::UserDefined | TokenType::Unknown => {
                    bytes.extend_from_slice(tok.as_bytes())
                }
                // `[PAD{id}]` fillers are not tokens of the HF tokenizer, which skips their ids.
                TokenType::Unused => {}
                TokenType::Byte => match parse_byte_token(tok) {
                    Some(b) => bytes.push(b),
                    None => bytes.extend_from_slice(&byte_level::spelling_to_bytes(tok)),
                },
                TokenType::Normal | TokenType::Undefined => {
                    bytes.extend_from_slice(&byte_level::spelling_to_bytes(tok))
                }
            }
            offsets.push(bytes.len());
        }

        // Normal spellings take precedence over added / padding tokens with the same text.
        let mut token_to_id: HashMap<String, u32> = HashMap::with_capacity(n);
        for pass_normal in [true, false] {
            for (i, (tok, &ty)) in tokens.iter().zip(&types).enumerate() {
                let normal = matches!(
                    ty,
                    TokenType::Normal | TokenType::Undefined | TokenType::Byte
                );
                if normal == pass_normal {
                    token_to_id.entry(tok.clone()).or_insert(i as u32);
                }
            }
        }

        let mut byte_ids = [None; 256];
        for (b, slot) in byte_ids.iter_mut().enumerate() {
            *slot = token_to_id
                .get(byte_level::BYTE_TO_CHAR[b].to_string().as_str())
                .copied();
        }

        let mut merge_map = bpe::MergeMap::new();
        let mut joined = String::new();
        for (rank, merge) in merges.into_iter().enumerate() {
            let merge = merge.as_ref();
            if rank > u32::MAX as usize {
                return Err(invalid("too many merges"));
            }
            // Split at the first space after the first character, like llama.cpp.
            let split = merge
                .char_indices()
                .skip(1)
                .find(|&(_, c)| c == ' ')
                .map(|(k, _)| k)
                .ok_or_else(|| invalid(format!("merge {rank} {merge:?} is not \"left right\"")))?;
            let (left, right) = (&merge[..split], &merge[split + 1..]);
            let lookup = |s: &str| {
                token_to_id.get(s).copied().ok_or_else(|| {
                    invalid(format!(
                        "merge {rank} {merge:?}: {s:?} is not in the vocabulary"
                    ))
                })
            };
            let (a, b) = (lookup(left)?, lookup(right)?);
            joined.clear();
            joined.push_str(left);
            joined.push_str(right);
            let merged = lookup(&joined)?;
            // A repeated pair keeps its last rank, like the HF BPE model.
            merge_map.insert((a, b), (rank as u32, merged));
        }

        let mut added_by_first_byte: Vec<Vec<AddedToken>> = (0..256).map(|_| Vec::new()).collect();
        for (i, (tok, &ty)) in tokens.iter().zip(&types).enumerate() {
            if ty.is_added() && !tok.is_empty() {
                added_by_first_byte[tok.as_bytes()[0] as usize].push(AddedToken {
                    content: tok.clone(),
                    id: i as u32,
                    special: ty.is_special(),
                });
            }
        }
        for group in &mut added_by_first_byte {
            // Longest first; among equal contents the lowest id wins.
            group.sort_by(|x, y| y.content.len().cmp(&x.content.len()).then(x.id.cmp(&y.id)));
        }

        Ok(Tokenizer {
            tokens,
            types,
            bytes,
            offsets,
            token_to_id,
            byte_ids,
            merges: merge_map,
            added_by_first_byte,
            bos,
            eos,
            cache: Mutex::new(HashMap::new()),
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// Vocabulary spelling of `id` (byte-level for normal tokens); "" when out of range.
    pub fn token_str(&self, id: u32) -> &str {
        self.tokens
            .get(id as usize)
            .map(String::as_str)
            .unwrap_or("")
    }

    /// Raw bytes `id` decodes to; empty when out of range or an unused (`[PAD…]`) id.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        let i = id as usize;
        if i >= self.tokens.len() {
            return &[];
        }
        &self.bytes[self.offsets[i]..self.offsets[i + 1]]
    }

    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.types.get(id as usize).copied()
    }

    /// Id of the token spelled `s` (vocabulary spelling, or an added token's content).
    pub fn find_token(&self, s: &str) -> Option<u32> {
        self.token_to_id.get(s).copied()
    }

    /// Encodes `text`; never adds BOS/EOS.
    ///
    /// `parse_special = true` is HF `encode(text, add_special_tokens=False)`: special tokens
    /// written in the text (`<|endoftext|>`) become their ids. `false` is HF with
    /// `encode_special_tokens = True` (llama.cpp `parse_special = false`): special tokens are
    /// tokenized as ordinary text. Non-special added tokens (Phi-2's whitespace runs) are
    /// matched either way, as in HF and llama.cpp.
    pub fn encode(&self, text: &str, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        let mut text_start = 0;
        let bytes = text.as_bytes();
        let mut pos = 0;
        while pos < bytes.len() {
            match self.added_at(bytes, pos) {
                Some(tok) => {
                    let end = pos + tok.content.len();
                    // A special token that is not parsed still hides its span from other added
                    // tokens (HF skips the match rather than searching inside it).
                    if tok.special && !parse_special {
                        pos = end;
                        continue;
                    }
                    self.encode_plain(&text[text_start..pos], &mut out);
                    out.push(tok.id);
                    pos = end;
                    text_start = end;
                }
                None => pos += 1,
            }
        }
        self.encode_plain(&text[text_start..], &mut out);
        out
    }

    /// Longest added token that starts at byte `pos` of `text`.
    fn added_at(&self, text: &[u8], pos: usize) -> Option<&AddedToken> {
        self.added_by_first_byte[text[pos] as usize]
            .iter()
            .find(|t| text[pos..].starts_with(t.content.as_bytes()))
    }

    /// Pre-tokenizes and BPE-encodes text that contains no added token.
    fn encode_plain(&self, text: &str, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let mut ids = Vec::new();
        pretokenize::split_gpt2(text, |piece| {
            if let Some(hit) = cache.get(piece) {
                out.extend_from_slice(hit);
                return;
            }
            ids.clear();
            // Bytes without a one-character token are dropped, as HF's BPE does without an
            // unk token (never happens with a complete byte-level alphabet).
            ids.extend(piece.bytes().filter_map(|b| self.byte_ids[b as usize]));
            bpe::merge_word(&mut ids, &self.merges);
            out.extend_from_slice(&ids);
            if piece.len() < CACHE_MAX_WORD_LEN {
                if cache.len() >= CACHE_CAPACITY {
                    cache.clear();
                }
                cache.insert(piece.to_string(), ids.clone());
            }
        });
    }

    /// Decodes `ids` to text (special tokens included, like HF `decode(ids, false)`).
    /// Invalid UTF-8 becomes U+FFFD; out-of-range and unused ids are skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        String::from_utf8_lossy(&self.decode_bytes(ids, false)).into_owned()
    }

    /// Like [`Tokenizer::decode`] but leaves out special tokens (CONTROL / UNKNOWN), like HF
    /// `decode(ids, skip_special_tokens=True)`.
    pub fn decode_skip_special(&self, ids: &[u32]) -> String {
        String::from_utf8_lossy(&self.decode_bytes(ids, true)).into_owned()
    }

    /// Concatenated raw bytes of `ids`.
    pub fn decode_bytes(&self, ids: &[u32], skip_special: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for &id in ids {
            if skip_special && self.is_special(id) {
                continue;
            }
            out.extend_from_slice(self.token_bytes(id));
        }
        out
    }

    /// Whether `id` is a special (CONTROL / UNKNOWN) token.
    pub fn is_special(&self, id: u32) -> bool {
        self.token_type(id).is_some_and(TokenType::is_special)
    }
}

/// `<0xHH>` → the byte (SentencePiece-style byte tokens).
fn parse_byte_token(s: &str) -> Option<u8> {
    let hex = s.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// The GPT-2 pre-tokenizer split of `text` (what BPE sees, before the byte-level spelling).
/// Added tokens are not cut out here; see [`Tokenizer::encode`].
pub fn pre_tokenize(text: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    pretokenize::split_gpt2(text, |p| pieces.push(p));
    pieces
}

/// transformers' `clean_up_tokenization`, which its `decode` applies when the tokenizer config
/// has `clean_up_tokenization_spaces = true` (the HF default TinyGPT-V decodes with,
/// tinygptv.md §12): removes the space before some punctuation and English contractions.
pub fn clean_up_tokenization(text: &str) -> String {
    text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}

/// Incremental decoder: feed ids one at a time, get back the text that is complete so far.
/// A multi-byte UTF-8 character split over several tokens is held back until it is complete;
/// bytes that can no longer form a valid character become U+FFFD right away. The
/// concatenation of all `push` results and `finish` equals [`Tokenizer::decode`] of all ids.
pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    pending: Vec<u8>,
    skip_special: bool,
}

impl<'a> StreamDecoder<'a> {
    pub fn new(tokenizer: &'a Tokenizer) -> StreamDecoder<'a> {
        StreamDecoder {
            tokenizer,
            pending: Vec::new(),
            skip_special: false,
        }
    }

    /// Leave special tokens out of the text (like [`Tokenizer::decode_skip_special`]).
    pub fn skip_special(mut self, skip: bool) -> Self {
        self.skip_special = skip;
        self
    }

    pub fn push(&mut self, id: u32) -> String {
        if self.skip_special && self.tokenizer.is_special(id) {
            return String::new();
        }
        self.pending
            .extend_from_slice(self.tokenizer.token_bytes(id));
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    // `valid` is valid UTF-8 by the definition of `valid_up_to`.
                    out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        // An invalid sequence: same replacement as from_utf8_lossy.
                        Some(len) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[len..];
                        }
                        // An incomplete character at the end: wait for more bytes.
                        None => {
                            rest = after;
                            break;
                        }
                    }
                }
            }
        }
        let keep = rest.len();
        let total = self.pending.len();
        self.pending.drain(..total - keep);
        out
    }

    /// Text still held back (an unfinished character) becomes U+FFFD.
    pub fn finish(self) -> String {
        String::from_utf8_lossy(&self.pending).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tiny hand-made vocabulary: 256 byte tokens, a few merges and added tokens.
    fn tiny() -> Tokenizer {
        let mut tokens: Vec<String> = (0..=255u8)
            .map(|b| byte_level::BYTE_TO_CHAR[b as usize].to_string())
            .collect();
        let mut types = vec![1; 256];
        for t in ["he", "ll", "hell", "hello", "Ġw", "Ġwo", "Ġwor", "Ġworl"] {
            tokens.push(t.to_string());
            types.push(1);
        }
        let merges = [
            "h e", "l l", "he ll", "hell o", "Ġ w", "Ġw o", "Ġwo r", "Ġwor l",
        ];
        tokens.push("<|endoftext|>".into());
        types.push(3);
        tokens.push("  ".into());
        types.push(4);
        tokens.push("   ".into());
        types.push(4);
        tokens.push("[PAD267]".into());
        types.push(5);
        // Token b < 256 is byte b; 256.. he ll hell hello Ġw Ġwo Ġwor Ġworl; 264 eot;
        // 265 two spaces; 266 three spaces; 267 padding.
        Tokenizer::from_parts(tokens, types, merges, Some(264), Some(264)).unwrap()
    }

    #[test]
    fn encode_small() {
        let t = tiny();
        assert_eq!(t.encode("hello world", true), vec![259, 263, 100]);
        assert_eq!(t.encode("hello<|endoftext|>", true), vec![259, 264]);
        assert_eq!(t.encode("a     b", true), vec![97, 266, 265, 98]);
        let plain = t.encode("<|endoftext|>", false);
        assert!(!plain.contains(&264) && !plain.is_empty());
        assert_eq!(t.decode(&plain), "<|endoftext|>");
        assert_eq!(
            t.decode(&[259, 265, 264, 267, 9999]),
            "hello  <|endoftext|>"
        );
        assert_eq!(t.decode_skip_special(&[259, 264]), "hello");
        assert_eq!(t.find_token("Ġw"), Some(260));
        assert_eq!(t.token_bytes(260), b" w");
        assert_eq!(t.token_str(267), "[PAD267]");
    }

    #[test]
    fn bad_input_is_an_error() {
        let toks = || vec!["a".to_string(), "b".to_string()];
        assert!(Tokenizer::from_parts(toks(), vec![1], Vec::<String>::new(), None, None).is_err());
        assert!(
            Tokenizer::from_parts(toks(), vec![1, 9], Vec::<String>::new(), None, None).is_err()
        );
        assert!(Tokenizer::from_parts(toks(), vec![1, 1], ["a b"], None, None).is_err()); // "ab" missing
        assert!(Tokenizer::from_parts(toks(), vec![1, 1], ["ab"], None, None).is_err());
        assert!(
            Tokenizer::from_parts(toks(), vec![1, 1], Vec::<String>::new(), Some(2), None).is_err()
        );
        assert!(Tokenizer::from_parts(vec![], vec![], Vec::<String>::new(), None, None).is_err());
    }

    #[test]
    fn stream_decoder_holds_partial_characters() {
        let t = tiny();
        let id = |b: u8| {
            t.find_token(&byte_level::BYTE_TO_CHAR[b as usize].to_string())
                .unwrap()
        };
        // "é😀" byte by byte, then an invalid lead byte followed by ASCII.
        let mut ids: Vec<u32> = "aé😀".bytes().map(id).collect();
        ids.extend([id(0xF0), id(0x9F), id(b'x'), id(0xE2), id(0x82)]);
        let mut d = StreamDecoder::new(&t);
        let pieces: Vec<String> = ids.iter().map(|&i| d.push(i)).collect();
        let tail = d.finish();
        assert_eq!(pieces[..9], ["a", "", "é", "", "", "", "😀", "", ""]);
        assert_eq!(pieces[9..], ["\u{FFFD}x", "", ""]);
        assert_eq!(tail, "\u{FFFD}");
        assert_eq!(pieces.concat() + &tail, t.decode(&ids));
    }

    #[test]
    fn clean_up_matches_transformers() {
        assert_eq!(
            clean_up_tokenization("Hi , I 'm here . Is n't it ? yes !"),
            "Hi, I'm here. Isn't it? yes!"
        );
    }
}
