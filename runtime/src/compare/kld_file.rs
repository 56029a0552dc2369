//! llama.cpp's `.kld` base-logits file (`llama-perplexity --kl-divergence-base`, gguf.md §8.3),
//! read and written byte-for-byte like `tools/perplexity/perplexity.cpp`:
//!
//! ```text
//! "_logits_"  u32 n_ctx  i32 n_vocab  i32 n_chunk  i32 tokens[n_ctx·n_chunk]
//! then per chunk, per scored position (n_ctx − 1 − n_ctx/2 of them, the second half):
//!   nv = 2·⌈n_vocab/2⌉ + 4 u16 words: f32 scale, f32 min_log_prob, u16 q[n_vocab] (+1 pad word)
//! ```
//! with `log p_i = scale·q_i + min_log_prob`. All little-endian.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

pub const KLD_MAGIC: &[u8; 8] = b"_logits_";
/// Bytes before the token array.
pub const KLD_HEADER_BYTES: u64 = 8 + 4 + 4 + 4;

/// Sanity bounds checked before anything is allocated.
pub const MAX_N_CTX: usize = 1 << 20;
pub const MAX_N_VOCAB: usize = 1 << 24;
pub const MAX_N_CHUNK: usize = 1 << 24;

/// Log-probabilities more than this far below the top one are stored as 0 (and ignored by
/// the KL divergence).
pub const LOG_PROB_RANGE: f32 = 16.0;

/// u16 words of one position's record: two f32 + one word per vocab entry, padded to even.
pub fn record_words(n_vocab: usize) -> usize {
    2 * n_vocab.div_ceil(2) + 4
}

/// Positions scored per chunk: the second half, `n_ctx/2 .. n_ctx−1` (each predicts the next token).
pub fn scored_positions(n_ctx: usize) -> usize {
    n_ctx.saturating_sub(1 + n_ctx / 2)
}

/// First scored position of a chunk.
pub fn first_scored(n_ctx: usize) -> usize {
    n_ctx / 2
}

/// Packs one row of logits into a record (`out.len() == record_words(logits.len())`), the way
/// llama.cpp does: f32 max/min, an f64 sum of f32 exponentials, round-half-even quantization
/// of `logit − min_logit` in 65535 steps over at most 16 nats.
pub fn encode_log_probs(logits: &[f32], out: &mut [u16]) -> Result<()> {
    let n = logits.len();
    if n == 0 || out.len() != record_words(n) {
        bail!(
            "encode_log_probs: {} logits do not fit a record of {} words",
            n,
            out.len()
        );
    }
    let mut max = logits[0];
    let mut min = logits[0];
    for &l in &logits[1..] {
        max = max.max(l);
        min = min.min(l);
    }
    if !max.is_finite() || !min.is_finite() || logits.iter().any(|l| !l.is_finite()) {
        bail!("the logits contain NaN or infinity");
    }
    let min = min.max(max - LOG_PROB_RANGE);
    let sum_exp: f64 = logits.iter().map(|&l| (l - max).exp() as f64).sum();
    let log_sum_exp = sum_exp.ln() as f32;
    let min_log_prob = min - max - log_sum_exp;
    let scale = (max - min) / 65535.0;
    let (head, q) = out.split_at_mut(4);
    let s = scale.to_bits();
    let m = min_log_prob.to_bits();
    head.copy_from_slice(&[s as u16, (s >> 16) as u16, m as u16, (m >> 16) as u16]);
    q.fill(0);
    if scale != 0.0 {
        let inv = 1.0 / scale;
        for (w, &l) in q.iter_mut().zip(logits) {
            if l > min {
                *w = (inv * (l - min)).round_ties_even().clamp(0.0, 65535.0) as u16;
            }
        }
    }
    Ok(())
}

/// `(scale, min_log_prob)` of a record.
pub fn record_scale(rec: &[u16]) -> (f32, f32) {
    let s = rec[0] as u32 | (rec[1] as u32) << 16;
    let m = rec[2] as u32 | (rec[3] as u32) << 16;
    (f32::from_bits(s), f32::from_bits(m))
}

/// Unpacks a record into `n_vocab` log-probabilities (`scale·q + min_log_prob`, in f32 as
/// llama.cpp computes them); returns the index of the largest (the first one on ties).
pub fn decode_log_probs(rec: &[u16], n_vocab: usize, out: &mut Vec<f64>) -> usize {
    let (scale, min_log_prob) = record_scale(rec);
    out.clear();
    let mut best = 0;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &q) in rec[4..4 + n_vocab].iter().enumerate() {
        let lp = scale * q as f32 + min_log_prob;
        if i == 0 || lp > best_v {
            best_v = lp;
            best = i;
        }
        out.push(lp as f64);
    }
    best
}

/// The header and evaluation tokens of a `.kld` file.
#[derive(Clone, Debug, PartialEq)]
pub struct KldHeader {
    pub n_ctx: usize,
    pub n_vocab: usize,
    pub n_chunk: usize,
    /// `n_ctx · n_chunk` token ids, chunk after chunk.
    pub tokens: Vec<u32>,
}

impl KldHeader {
    pub fn record_words(&self) -> usize {
        record_words(self.n_vocab)
    }

    /// u16 words of one chunk's records.
    pub fn chunk_words(&self) -> usize {
        scored_positions(self.n_ctx) * self.record_words()
    }

    /// Total file size this header implies (None on overflow).
    pub fn file_bytes(&self) -> Option<u64> {
        let tokens = (self.n_ctx as u64)
            .checked_mul(self.n_chunk as u64)?
            .checked_mul(4)?;
        let records = (self.chunk_words() as u64)
            .checked_mul(2)?
            .checked_mul(self.n_chunk as u64)?;
        KLD_HEADER_BYTES.checked_add(tokens)?.checked_add(records)
    }

    pub fn chunk_tokens(&self, chunk: usize) -> &[u32] {
        &self.tokens[chunk * self.n_ctx..(chunk + 1) * self.n_ctx]
    }
}

/// Reads a `.kld` file chunk by chunk.
pub struct KldReader {
    path: PathBuf,
    file: BufReader<File>,
    pub header: KldHeader,
    chunks_read: usize,
}

fn read_u32(r: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

impl KldReader {
    /// Opens and validates a `.kld` file: magic, bounded sizes, exact file length, token ids
    /// below `n_vocab`.
    pub fn open(path: &Path) -> Result<KldReader> {
        let name = path.display();
        let f = File::open(path).with_context(|| format!("opening {name}"))?;
        let len = f
            .metadata()
            .with_context(|| format!("reading {name}"))?
            .len();
        let mut file = BufReader::with_capacity(1 << 20, f);
        let mut magic = [0u8; 8];
        if len < KLD_HEADER_BYTES || file.read_exact(&mut magic).is_err() || &magic != KLD_MAGIC {
            bail!("{name}: not a llama.cpp .kld log-probability file (no \"_logits_\" header)");
        }
        let n_ctx = read_u32(&mut file).with_context(|| format!("reading {name}"))? as usize;
        let n_vocab = read_u32(&mut file).with_context(|| format!("reading {name}"))? as i32;
        let n_chunk = read_u32(&mut file).with_context(|| format!("reading {name}"))? as i32;
        if !(4..=MAX_N_CTX).contains(&n_ctx) {
            bail!("{name}: context size {n_ctx} is out of range (4..={MAX_N_CTX})");
        }
        if n_vocab < 2 || n_vocab as usize > MAX_N_VOCAB {
            bail!("{name}: vocabulary size {n_vocab} is out of range (2..={MAX_N_VOCAB})");
        }
        if n_chunk < 0 || n_chunk as usize > MAX_N_CHUNK {
            bail!("{name}: chunk count {n_chunk} is out of range (0..={MAX_N_CHUNK})");
        }
        let mut header = KldHeader {
            n_ctx,
            n_vocab: n_vocab as usize,
            n_chunk: n_chunk as usize,
            tokens: Vec::new(),
        };
        let want = header
            .file_bytes()
            .ok_or_else(|| anyhow::anyhow!("{name}: header sizes overflow"))?;
        if len != want {
            bail!(
                "{name}: the file is {len} bytes but its header (n_ctx {n_ctx}, n_vocab {n_vocab}, {n_chunk} chunks) implies {want}{}",
                if len < want { " (truncated?)" } else { "" }
            );
        }
        let n_tok = n_ctx * header.n_chunk;
        let mut raw = vec![0u8; n_tok * 4];
        file.read_exact(&mut raw)
            .with_context(|| format!("reading the tokens of {name}"))?;
        header.tokens = raw
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if let Some((i, t)) = header
            .tokens
            .iter()
            .enumerate()
            .find(|(_, &t)| t as usize >= header.n_vocab)
        {
            bail!(
                "{name}: token {i} has id {} (vocabulary has {} entries)",
                *t as i32,
                header.n_vocab
            );
        }
        Ok(KldReader {
            path: path.to_path_buf(),
            file,
            header,
            chunks_read: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the next chunk's records (`header.chunk_words()` words) into `out`.
    pub fn read_chunk(&mut self, out: &mut Vec<u16>) -> Result<()> {
        if self.chunks_read >= self.header.n_chunk {
            bail!(
                "{}: all {} chunks have been read",
                self.path.display(),
                self.header.n_chunk
            );
        }
        let words = self.header.chunk_words();
        let mut raw = vec![0u8; words * 2];
        self.file.read_exact(&mut raw).with_context(|| {
            format!(
                "{}: reading the log-probs of chunk {}",
                self.path.display(),
                self.chunks_read
            )
        })?;
        out.clear();
        out.extend(
            raw.chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]])),
        );
        self.chunks_read += 1;
        Ok(())
    }
}

/// Writes a `.kld` file: to `PATH.tmp.<pid>` first, renamed into place by [`finish`](Self::finish).
pub struct KldWriter {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<BufWriter<File>>,
    header: KldHeader,
    chunks_written: usize,
    record: Vec<u16>,
    bytes: Vec<u8>,
}

impl KldWriter {
    /// Starts a file for `tokens.len() / n_ctx` chunks of `n_ctx` tokens over `n_vocab` logits.
    pub fn create(path: &Path, n_ctx: usize, n_vocab: usize, tokens: &[u32]) -> Result<KldWriter> {
        if !(4..=MAX_N_CTX).contains(&n_ctx) || !(2..=MAX_N_VOCAB).contains(&n_vocab) {
            bail!(
                "{}: n_ctx {n_ctx} / n_vocab {n_vocab} out of range",
                path.display()
            );
        }
        if !tokens.len().is_multiple_of(n_ctx) || tokens.len() / n_ctx > MAX_N_CHUNK {
            bail!(
                "{}: {} tokens are not a whole number of {n_ctx}-token chunks",
                path.display(),
                tokens.len()
            );
        }
        if tokens.iter().any(|&t| t as usize >= n_vocab) {
            bail!(
                "{}: a token id is not below the vocabulary size {n_vocab}",
                path.display()
            );
        }
        let header = KldHeader {
            n_ctx,
            n_vocab,
            n_chunk: tokens.len() / n_ctx,
            tokens: tokens.to_vec(),
        };
        let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(format!(".tmp.{}", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        let f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut w = KldWriter {
            path: path.to_path_buf(),
            tmp,
            file: Some(BufWriter::with_capacity(1 << 20, f)),
            record: vec![0; record_words(n_vocab)],
            bytes: Vec::new(),
            header,
            chunks_written: 0,
        };
        let bytes = header_bytes(&w.header, w.header.n_chunk);
        w.write_raw(&bytes)?;
        Ok(w)
    }

    pub fn header(&self) -> &KldHeader {
        &self.header
    }

    pub fn chunks_written(&self) -> usize {
        self.chunks_written
    }

    fn write_raw(&mut self, bytes: &[u8]) -> Result<()> {
        let f = self.file.as_mut().expect("writer is open");
        f.write_all(bytes)
            .with_context(|| format!("writing {}", self.tmp.display()))
    }

    /// Appends the records of the next chunk from its logits `[n_ctx, n_vocab]` (all positions;
    /// only the scored second half is stored).
    pub fn write_chunk(&mut self, logits: &[f32]) -> Result<()> {
        let (n_ctx, n_vocab) = (self.header.n_ctx, self.header.n_vocab);
        if self.chunks_written >= self.header.n_chunk {
            bail!(
                "{}: all {} chunks have been written",
                self.path.display(),
                self.header.n_chunk
            );
        }
        if logits.len() != n_ctx * n_vocab {
            bail!(
                "{}: chunk logits are {} values, expected {n_ctx}×{n_vocab}",
                self.path.display(),
                logits.len()
            );
        }
        let first = first_scored(n_ctx);
        let mut bytes = std::mem::take(&mut self.bytes);
        bytes.clear();
        for (j, row) in logits
            .chunks_exact(n_vocab)
            .enumerate()
            .skip(first)
            .take(scored_positions(n_ctx))
        {
            encode_log_probs(row, &mut self.record)
                .with_context(|| format!("chunk {} position {j}", self.chunks_written))?;
            bytes.extend(self.record.iter().flat_map(|w| w.to_le_bytes()));
        }
        self.write_raw(&bytes)?;
        self.bytes = bytes;
        self.chunks_written += 1;
        Ok(())
    }

    /// Completes the file (all chunks written) and moves it into place.
    pub fn finish(mut self) -> Result<()> {
        if self.chunks_written != self.header.n_chunk {
            bail!(
                "{}: only {} of {} chunks were written",
                self.path.display(),
                self.chunks_written,
                self.header.n_chunk
            );
        }
        let f = self.file.take().expect("writer is open");
        f.into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .with_context(|| format!("writing {}", self.tmp.display()))?;
        std::fs::rename(&self.tmp, &self.path)
            .with_context(|| format!("renaming {} to {}", self.tmp.display(), self.path.display()))
    }

    /// Completes a file with only the chunks written so far (after an interruption): rewrites
    /// the header and token array for that many chunks. Returns false (and writes nothing)
    /// when no chunk was written.
    pub fn finish_partial(mut self) -> Result<bool> {
        let done = self.chunks_written;
        if done == self.header.n_chunk {
            self.finish()?;
            return Ok(true);
        }
        let f = self.file.take().expect("writer is open");
        f.into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("writing {}", self.tmp.display()))?;
        if done == 0 {
            let _ = std::fs::remove_file(&self.tmp);
            return Ok(false);
        }
        let tmp_name = self.tmp.display().to_string();
        let mut src = File::open(&self.tmp).with_context(|| format!("opening {tmp_name}"))?;
        let skip = KLD_HEADER_BYTES + (self.header.n_ctx * self.header.n_chunk * 4) as u64;
        src.seek(SeekFrom::Start(skip))
            .with_context(|| format!("reading {tmp_name}"))?;
        let mut part = self.path.as_os_str().to_os_string();
        part.push(format!(".part.{}", std::process::id()));
        let part = PathBuf::from(part);
        let mut out = BufWriter::new(
            File::create(&part).with_context(|| format!("creating {}", part.display()))?,
        );
        out.write_all(&header_bytes(&self.header, done))
            .with_context(|| format!("writing {}", part.display()))?;
        let record_bytes = (self.header.chunk_words() * 2 * done) as u64;
        let copied = std::io::copy(&mut (&mut src).take(record_bytes), &mut out)
            .with_context(|| format!("copying {tmp_name}"))?;
        if copied != record_bytes {
            bail!("{tmp_name}: expected {record_bytes} bytes of records, found {copied}");
        }
        out.into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .with_context(|| format!("writing {}", part.display()))?;
        std::fs::rename(&part, &self.path)
            .with_context(|| format!("renaming {} to {}", part.display(), self.path.display()))?;
        let _ = std::fs::remove_file(&self.tmp);
        Ok(true)
    }
}

impl Drop for KldWriter {
    fn drop(&mut self) {
        // an unfinished writer leaves nothing behind
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Magic, sizes and the first `n_chunk` chunks' tokens.
fn header_bytes(h: &KldHeader, n_chunk: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(KLD_HEADER_BYTES as usize + h.n_ctx * n_chunk * 4);
    b.extend_from_slice(KLD_MAGIC);
    b.extend_from_slice(&(h.n_ctx as u32).to_le_bytes());
    b.extend_from_slice(&(h.n_vocab as i32).to_le_bytes());
    b.extend_from_slice(&(n_chunk as i32).to_le_bytes());
    for &t in &h.tokens[..h.n_ctx * n_chunk] {
        b.extend_from_slice(&(t as i32).to_le_bytes());
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits_row(n: usize, seed: u32) -> Vec<f32> {
        // deterministic, spread over ~30 nats so the 16-nat floor is exercised
        (0..n)
            .map(|i| {
                let x = (i as u32)
                    .wrapping_mul(2_654_435_761)
                    .wrapping_add(seed.wrapping_mul(40503))
                    >> 8;
                (x % 30_000) as f32 / 1000.0 - 20.0
            })
            .collect()
    }

    #[test]
    fn record_size() {
        assert_eq!(record_words(1280), 1284);
        assert_eq!(record_words(1279), 1284);
        assert_eq!(record_words(51200), 51204);
        assert_eq!(record_words(3), 8);
        assert_eq!(scored_positions(512), 255);
        assert_eq!(scored_positions(9), 4);
        assert_eq!(first_scored(9), 4);
    }

    #[test]
    fn encode_matches_the_formula() {
        let logits = [1.0f32, -20.0, 3.5, 0.25, 3.5];
        let mut rec = vec![0u16; record_words(5)];
        encode_log_probs(&logits, &mut rec).unwrap();
        assert_eq!(rec.len(), 10);
        // max 3.5, min clamped to 3.5 − 16 = −12.5
        let (scale, min_lp) = record_scale(&rec);
        assert_eq!(scale, 16.0f32 / 65535.0);
        let lse: f64 = logits
            .iter()
            .map(|&l| ((l - 3.5) as f64).exp())
            .sum::<f64>()
            .ln();
        assert!((min_lp as f64 - (-16.0 - lse)).abs() < 1e-6);
        assert_eq!(rec[4], ((1.0f32 + 12.5) / scale).round() as u16);
        assert_eq!(rec[5], 0, "below the 16-nat floor");
        assert_eq!(rec[6], 65535);
        assert_eq!(rec[8], 65535);
        assert_eq!(rec[9], 0, "padding word");
        let mut lp = Vec::new();
        let top = decode_log_probs(&rec, 5, &mut lp);
        assert_eq!(top, 2, "first of the tied maxima");
        for (i, &l) in logits.iter().enumerate().filter(|(i, _)| *i != 1) {
            let exact = (l - 3.5) as f64 - lse;
            assert!((lp[i] - exact).abs() < 2e-4, "{i}: {} vs {exact}", lp[i]);
        }
        // constant logits: scale 0, all words 0, log p = −ln n
        let mut rec = vec![7u16; record_words(4)];
        encode_log_probs(&[2.0; 4], &mut rec).unwrap();
        assert_eq!(record_scale(&rec), (0.0, -(4.0f64.ln() as f32)));
        assert!(rec[4..].iter().all(|&w| w == 0));
        assert!(encode_log_probs(&[1.0, f32::NAN], &mut [0u16; 6]).is_err());
    }

    #[test]
    fn write_read_round_trip_and_exact_layout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("base.kld");
        let (n_ctx, n_vocab, n_chunk) = (9usize, 7usize, 2usize);
        let tokens: Vec<u32> = (0..(n_ctx * n_chunk) as u32).map(|i| (i * 5) % 7).collect();
        let mut w = KldWriter::create(&path, n_ctx, n_vocab, &tokens).unwrap();
        let chunks: Vec<Vec<f32>> = (0..n_chunk)
            .map(|c| {
                (0..n_ctx)
                    .flat_map(|p| logits_row(n_vocab, (c * 100 + p) as u32))
                    .collect()
            })
            .collect();
        for c in &chunks {
            w.write_chunk(c).unwrap();
        }
        w.finish().unwrap();

        let bytes = std::fs::read(&path).unwrap();
        let nv = 2 * 4 + 4; // 2·⌈7/2⌉ + 4
        let n_pos = 9 - 1 - 4;
        assert_eq!(
            bytes.len(),
            20 + 4 * n_ctx * n_chunk + 2 * nv * n_pos * n_chunk
        );
        assert_eq!(&bytes[..8], b"_logits_");
        assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 9);
        assert_eq!(i32::from_le_bytes(bytes[12..16].try_into().unwrap()), 7);
        assert_eq!(i32::from_le_bytes(bytes[16..20].try_into().unwrap()), 2);
        for (i, &t) in tokens.iter().enumerate() {
            assert_eq!(
                i32::from_le_bytes(bytes[20 + 4 * i..24 + 4 * i].try_into().unwrap()),
                t as i32
            );
        }
        // second chunk, third scored position (row 4 + 2 = 6): hand-packed record
        let rec_off = 20 + 4 * n_ctx * n_chunk + 2 * nv * (n_pos + 2);
        let rec: Vec<u16> = bytes[rec_off..rec_off + 2 * nv]
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect();
        let row = &chunks[1][6 * n_vocab..7 * n_vocab];
        let max = row.iter().cloned().fold(f32::MIN, f32::max);
        let min = row.iter().cloned().fold(f32::MAX, f32::min).max(max - 16.0);
        let scale = (max - min) / 65535.0;
        assert_eq!(
            f32::from_le_bytes(bytes[rec_off..rec_off + 4].try_into().unwrap()),
            scale
        );
        for (k, &l) in row.iter().enumerate() {
            let want = if l > min {
                ((l - min) / scale).round() as i64
            } else {
                0
            };
            assert!((rec[4 + k] as i64 - want).abs() <= 1, "word {k}");
        }
        assert_eq!(rec[nv - 1], 0, "pad word");

        let mut r = KldReader::open(&path).unwrap();
        assert_eq!(r.header.n_ctx, 9);
        assert_eq!(r.header.n_vocab, 7);
        assert_eq!(r.header.n_chunk, 2);
        assert_eq!(r.header.tokens, tokens);
        let mut words = Vec::new();
        let mut want = vec![0u16; nv];
        for c in &chunks {
            r.read_chunk(&mut words).unwrap();
            assert_eq!(words.len(), n_pos * nv);
            for p in 0..n_pos {
                encode_log_probs(&c[(4 + p) * n_vocab..(5 + p) * n_vocab], &mut want).unwrap();
                assert_eq!(&words[p * nv..(p + 1) * nv], &want[..]);
            }
        }
        assert!(r.read_chunk(&mut words).is_err());
    }

    #[test]
    fn partial_file_after_interruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.kld");
        let tokens: Vec<u32> = (0..24).map(|i| i % 5).collect();
        let mut w = KldWriter::create(&path, 8, 5, &tokens).unwrap();
        let logits: Vec<f32> = (0..40).map(|i| (i % 7) as f32).collect();
        w.write_chunk(&logits).unwrap();
        assert!(w.finish_partial().unwrap());
        let r = KldReader::open(&path).unwrap();
        assert_eq!(r.header.n_chunk, 1);
        assert_eq!(r.header.tokens, tokens[..8]);
        // nothing written: no file, no temporary left
        let path2 = dir.path().join("q.kld");
        let w = KldWriter::create(&path2, 8, 5, &tokens).unwrap();
        assert!(!w.finish_partial().unwrap());
        assert!(!path2.exists());
        drop(KldWriter::create(&path2, 8, 5, &tokens).unwrap());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "only p.kld remains"
        );
    }

    #[test]
    fn hostile_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.kld");
        let check = |bytes: &[u8], needle: &str| {
            std::fs::write(&p, bytes).unwrap();
            let e = format!("{:#}", KldReader::open(&p).err().expect("must fail"));
            assert!(e.contains(needle), "{e}");
            assert!(e.contains("x.kld"), "{e}");
        };
        check(b"_logitz_\0\0\0\0\0\0\0\0\0\0\0\0", "not a llama.cpp .kld");
        check(b"_log", "not a llama.cpp .kld");
        let head = |n_ctx: u32, n_vocab: i32, n_chunk: i32| {
            let mut b = b"_logits_".to_vec();
            b.extend(n_ctx.to_le_bytes());
            b.extend(n_vocab.to_le_bytes());
            b.extend(n_chunk.to_le_bytes());
            b
        };
        check(&head(u32::MAX, 10, 1), "context size");
        check(&head(8, -1, 1), "vocabulary size");
        check(&head(8, 10, -3), "chunk count");
        check(&head(8, 10, 1_000_000), "implies");
        // right length, token id out of range
        let mut b = head(4, 3, 1);
        b.extend([9i32, 0, 0, 0].iter().flat_map(|t| t.to_le_bytes()));
        b.extend(vec![0u8; 2 * (2 * 2 + 4)]);
        check(&b, "token 0 has id 9");
    }
}
