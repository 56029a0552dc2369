//! Tokenizer against its references:
//! * the committed ids from Python `tokenizers` for tests/fixtures/tokenizer/corpus.json;
//! * the HF `tokenizers` crate as a live oracle (corpus + seeded random strings), for encode,
//!   encode without special tokens, decode and the pre-tokenizer splits over all of Unicode.
//!
//! Our tokenizer is always built from the data a GGUF holds (`gguf_vocab_from_tokenizer_json`,
//! i.e. the llama.cpp converter's layout), never from the HF object.
//! The fixture is a miniature Phi-2 tokenizer (scripts/gen_tokenizer_fixture.py). The same
//! tests run on a full Phi-2 `tokenizer.json` when `TINYGPTV_PHI2_TOKENIZER` names one
//! (`cargo test -p tinygptv-runtime --test tokenizer -- --ignored`).

use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use runtime::tokenizer::{
    gguf_vocab_from_tokenizer_json, gguf_vocab_from_vocab_merges, pre_tokenize, StreamDecoder,
    TokenType, Tokenizer,
};
use serde_json::Value;

/// llama.cpp's pre-tokenizer probe text (convert_hf_to_gguf.py `get_vocab_base_pre`).
const LLAMA_CPP_PROBE: &str = "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n\u{1f680} (normal) \u{1f636}\u{200d}\u{1f32b}\u{fe0f} (multiple emojis concatenated) \u{2705} \u{1f999}\u{1f999} 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 \u{1780}\u{17b6}\u{1793}\u{17cb}\u{178f}\u{17c2}\u{1796}\u{17b7}\u{179f}\u{17c1}\u{179f}\u{17a2}\u{17b6}\u{1785}\u{1f601} ?\u{6211}\u{60f3}\u{5728}apple\u{5de5}\u{4f5c}1314151\u{5929}\u{ff5e} ------======= \u{43d}\u{435}\u{449}\u{43e} \u{43d}\u{430} \u{411}\u{44a}\u{43b}\u{433}\u{430}\u{440}\u{441}\u{43a}\u{438} ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL";

/// Phi-2's ids for the probe, from Python `tokenizers` on a Phi-2 tokenizer.json rebuilt from
/// GPT-2's vocabulary (scripts/gen_tokenizer_fixture.py --phi2-from-gpt2); the SHA-256 of their
/// Python list text is llama.cpp's "phi-2" hash fcace8b9…f00f713da085, so they are Phi-2's ids.
const PHI2_PROBE_IDS: [u32; 211] = [
    198, 220, 628, 220, 628, 198, 220, 197, 220, 50294, 220, 197, 198, 50286, 198, 50285, 198,
    50284, 198, 50283, 198, 8582, 248, 222, 357, 11265, 8, 30325, 114, 447, 235, 8582, 234, 104,
    37929, 357, 48101, 795, 13210, 271, 1673, 36686, 515, 8, 14519, 227, 12520, 99, 247, 8582, 99,
    247, 513, 4747, 23460, 513, 20370, 23460, 2091, 23460, 20370, 23460, 24840, 23460, 2091, 20370,
    513, 13, 18, 513, 492, 18, 513, 986, 18, 28053, 252, 222, 157, 252, 114, 157, 252, 241, 157,
    253, 233, 157, 252, 237, 157, 253, 224, 157, 252, 244, 157, 252, 115, 157, 252, 253, 157, 253,
    223, 157, 252, 253, 157, 252, 95, 157, 252, 114, 157, 252, 227, 47249, 223, 5633, 22755, 239,
    46349, 111, 28839, 101, 18040, 32432, 98, 43291, 1485, 1415, 24309, 25465, 171, 121, 252,
    40103, 1421, 18604, 12466, 121, 16843, 141, 231, 15166, 12466, 121, 16142, 12466, 239, 141,
    232, 30143, 140, 111, 16142, 21169, 21727, 31583, 18849, 705, 39115, 6, 33153, 15506, 63,
    15931, 15931, 16317, 13896, 3228, 9805, 3548, 314, 1053, 587, 705, 44040, 339, 338, 612, 11,
    705, 2200, 345, 1654, 30, 705, 44, 407, 1654, 314, 1183, 787, 340, 11, 705, 35, 345, 588, 617,
    8887, 30, 775, 6, 26979, 257, 6, 75, 43,
];

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tokenizer")
}

fn read(dir: &Path, name: &str) -> String {
    let p = dir.join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Our tokenizer from a HF folder, through the GGUF vocabulary builder.
fn ours_from_dir(dir: &Path, vocab_size: Option<usize>) -> Tokenizer {
    let mut v = gguf_vocab_from_tokenizer_json(&read(dir, "tokenizer.json"), vocab_size).unwrap();
    let cfg = std::fs::read_to_string(dir.join("tokenizer_config.json")).ok();
    v.resolve_special_tokens(cfg.as_deref(), None).unwrap();
    v.to_tokenizer().unwrap()
}

fn hf_from_dir(dir: &Path) -> tokenizers::Tokenizer {
    tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap()
}

fn hf_encode(hf: &tokenizers::Tokenizer, text: &str) -> Vec<u32> {
    hf.encode(text, false).unwrap().get_ids().to_vec()
}

fn corpus() -> Vec<String> {
    serde_json::from_str(&read(&fixture_dir(), "corpus.json")).unwrap()
}

/// Pieces random strings are made of: everything the brief lists, plus arbitrary code points.
fn random_text(rng: &mut StdRng, max_pieces: usize) -> String {
    const WORDS: &[&str] = &[
        "hello",
        "world",
        "The",
        "quick",
        "Phi",
        "image",
        "ImageHere",
        "Img",
        "<Img>",
        "</Img>",
        "<ImageHere>",
        "###",
        "Human",
        "Assistant",
        "[INST]",
        "[/INST]",
        "<p>",
        "</p>",
        "<delim>",
        "{<12>}",
        "'s",
        "'t",
        "'re",
        "'ve",
        "'m",
        "'ll",
        "'d",
        "'S",
        "'Re",
        "don't",
        "it's",
        "café",
        "naïve",
        "Straße",
        "日本語",
        "中文",
        "한국어",
        "Привет",
        "Ελληνικά",
        "مرحبا",
        "שלום",
        "हिन्दी",
        "ไทย",
        "😀",
        "👍🏽",
        "❤️",
        "👨‍👩‍👧‍👦",
        "🇺🇸",
        "🚀",
        "e\u{301}",
        "\u{301}",
        "\u{308}\u{323}",
        "\u{200b}",
        "\u{200d}",
        "\u{feff}",
        "\u{a0}",
        "\u{3000}",
        "\u{2003}",
        "\u{85}",
        "\u{2028}",
        "<|endoftext|>",
        "<|endoftext",
        "<|",
        "|>",
        "def",
        "fn",
        "return",
        "{",
        "}",
        "(",
        ")",
        ";",
        "::",
        "->",
        "=>",
        "==",
        "!=",
        "+=",
        "...",
        "!!",
        "??",
        "$",
        "€",
        "¥",
        "%",
        "@",
        "#",
        "&&",
        "||",
        "\\",
        "/",
        "\"",
        "'",
        "`",
        "~",
        "^",
        "ﬁ",
        "Ａｂｃ",
        "ｶﾀｶﾅ",
        "Ⅳ",
        "①",
        "²",
        "½",
        "١٢٣",
        "४२",
    ];
    let n = rng.random_range(0..=max_pieces);
    let mut s = String::new();
    for _ in 0..n {
        match rng.random_range(0..14) {
            0 | 1 => s.push_str(WORDS[rng.random_range(0..WORDS.len())]),
            2 => s.push_str(&" ".repeat(rng.random_range(1..=40))),
            3 => s.push_str(&"\t".repeat(rng.random_range(1..=12))),
            4 => s.push_str(
                [
                    "\n", "\n\n", "\r\n", "\r", " \n", "\n ", "\t\n", "\x0b", "\x0c",
                ][rng.random_range(0..9)],
            ),
            5 => {
                let digits = rng.random_range(1..=25);
                for _ in 0..digits {
                    s.push(char::from(b'0' + rng.random_range(0..10u8)));
                }
            }
            6 => s.push(char::from(rng.random_range(0x20..0x7fu8))),
            7 => s.push(' '),
            8 => {
                // Any code point (unassigned, private use, astral, controls included).
                let c = loop {
                    let cp = match rng.random_range(0..4) {
                        0 => rng.random_range(0..0x80),
                        1 => rng.random_range(0x80..0x800),
                        2 => rng.random_range(0x800..0x10000),
                        _ => rng.random_range(0x10000..0x110000),
                    };
                    if let Some(c) = char::from_u32(cp) {
                        break c;
                    }
                };
                s.push(c);
            }
            9 => s.push_str(["a", "b", "x", "Z", "é", "ö", "ß", "ñ"][rng.random_range(0..8)]),
            10 => s.push_str(["'", "''", "'s", "'ll", "'LL", "'ve"][rng.random_range(0..6)]),
            11 => s.push_str(&" ".repeat(rng.random_range(1..=4))),
            12 => {
                s.push_str(["...", "!", "?", ",", ".", "-", "_", "=", "*"][rng.random_range(0..9)])
            }
            _ => {
                let c = char::from_u32(rng.random_range(0x4e00..0x9fff)).unwrap();
                s.push(c);
            }
        }
    }
    s
}

/// Encode/decode agreement of ours vs the HF crate on corpus + `fuzz` random strings.
fn compare_with_hf(dir: &Path, vocab_size: Option<usize>, fuzz: usize, seed: u64) {
    let ours = ours_from_dir(dir, vocab_size);
    let mut hf = hf_from_dir(dir);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut texts = corpus();
    texts.push(LLAMA_CPP_PROBE.to_string());
    texts.extend((0..fuzz).map(|k| random_text(&mut rng, if k % 10 == 0 { 200 } else { 25 })));

    let mut mismatches = Vec::new();
    for t in &texts {
        let want = hf_encode(&hf, t);
        let got = ours.encode(t, true);
        if got != want {
            mismatches.push(format!("{t:?}\n  hf:   {want:?}\n  ours: {got:?}"));
        }
        assert_eq!(ours.decode(&got), *t, "round trip of {t:?}");
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} texts differ:\n{}",
        mismatches.len(),
        texts.len(),
        mismatches[..mismatches.len().min(5)].join("\n")
    );

    // parse_special = false is HF with encode_special_tokens.
    hf.set_encode_special_tokens(true);
    for t in &texts {
        assert_eq!(
            ours.encode(t, false),
            hf_encode(&hf, t),
            "no-special encode of {t:?}"
        );
    }

    // Decode of arbitrary id sequences (partial UTF-8, added tokens, special tokens).
    let n = hf.get_vocab_size(true) as u32;
    for _ in 0..fuzz {
        let len = rng.random_range(0..20);
        let ids: Vec<u32> = (0..len).map(|_| rng.random_range(0..n)).collect();
        let want = hf.decode(&ids, false).unwrap();
        assert_eq!(ours.decode(&ids), want, "decode of {ids:?}");
        assert_eq!(
            ours.decode_skip_special(&ids),
            hf.decode(&ids, true).unwrap(),
            "decode (skip special) of {ids:?}"
        );
        let mut sd = StreamDecoder::new(&ours);
        let mut streamed: String = ids.iter().map(|&id| sd.push(id)).collect();
        streamed.push_str(&sd.finish());
        assert_eq!(streamed, want, "streamed decode of {ids:?}");
    }
}

#[test]
fn corpus_matches_committed_python_ids() {
    let dir = fixture_dir();
    let expected: Value = serde_json::from_str(&read(&dir, "expected_ids.json")).unwrap();
    let ours = ours_from_dir(&dir, None);
    assert_eq!(
        ours.vocab_size() as u64,
        expected["vocab_size"].as_u64().unwrap()
    );
    let ids = |v: &Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let texts = corpus();
    for (k, t) in texts.iter().enumerate() {
        let got = ours.encode(t, true);
        assert_eq!(got, ids(&expected["encode"][k]), "encode of {t:?}");
        assert_eq!(
            ours.encode(t, false),
            ids(&expected["encode_no_special"][k]),
            "encode (no special) of {t:?}"
        );
        assert_eq!(
            ours.decode(&got),
            expected["decode"][k].as_str().unwrap(),
            "decode of {t:?}"
        );
    }
    // The corpus exercises what it is meant to: whitespace-run tokens and <|endoftext|>.
    let all: Vec<u32> = texts.iter().flat_map(|t| ours.encode(t, true)).collect();
    let eot = ours.find_token("<|endoftext|>").unwrap();
    assert!(all.contains(&eot));
    assert!(all.contains(&ours.find_token(&" ".repeat(31)).unwrap()));
    assert!(all.contains(&ours.find_token("\t\t").unwrap()));
}

#[test]
fn gguf_layout_of_the_fixture() {
    let dir = fixture_dir();
    let mut v = gguf_vocab_from_tokenizer_json(&read(&dir, "tokenizer.json"), Some(1280)).unwrap();
    v.resolve_special_tokens(
        Some(&read(&dir, "tokenizer_config.json")),
        Some(r#"{"bos_token_id": 7, "pad_token_id": 5000}"#),
    )
    .unwrap();
    let eot = 1200u32;
    assert_eq!(v.tokens.len(), 1280);
    assert_eq!(v.tokens[eot as usize], "<|endoftext|>");
    assert_eq!(v.token_types[eot as usize], TokenType::Control as i32);
    assert_eq!(v.tokens[1201], " ".repeat(31));
    assert_eq!(v.tokens[1230], "  ");
    assert_eq!(v.tokens[1231], "\t".repeat(9));
    assert_eq!(v.tokens[1238], "\t\t");
    assert!(v.token_types[1201..=1238]
        .iter()
        .all(|&t| t == TokenType::UserDefined as i32));
    assert_eq!(v.tokens[1239], "[PAD1239]");
    assert!(v.token_types[1239..]
        .iter()
        .all(|&t| t == TokenType::Unused as i32));
    assert!(v.token_types[..1200]
        .iter()
        .all(|&t| t == TokenType::Normal as i32));
    // bos/eos/unk from tokenizer_config (content lookup) win over config.json; pad id out of range.
    assert_eq!(
        (v.special.bos, v.special.eos, v.special.unk, v.special.pad),
        (Some(eot), Some(eot), Some(eot), None)
    );
    let merges_txt = read(&dir, "merges.txt");
    assert_eq!(v.merges.len() + 1, merges_txt.lines().count());
    assert!(v
        .merges
        .iter()
        .zip(merges_txt.lines().skip(1))
        .all(|(a, b)| a == b));

    // Padded vocabulary: [PAD] ids decode to nothing, like HF skipping unknown ids.
    let t = v.to_tokenizer().unwrap();
    assert_eq!(t.decode(&[1250, eot]), "<|endoftext|>");
    assert_eq!(t.decode_skip_special(&[1250, eot]), "");
    assert_eq!(t.bos(), Some(eot));
    assert_eq!(t.eos(), Some(eot));
}

#[test]
fn vocab_merges_layout_gives_the_same_vocabulary() {
    let dir = fixture_dir();
    let from_json = gguf_vocab_from_tokenizer_json(&read(&dir, "tokenizer.json"), None).unwrap();
    let mut from_files = gguf_vocab_from_vocab_merges(
        &read(&dir, "vocab.json"),
        &read(&dir, "merges.txt"),
        Some(&read(&dir, "added_tokens.json")),
        Some(&read(&dir, "tokenizer_config.json")),
        None,
    )
    .unwrap();
    assert_eq!(from_files.tokens, from_json.tokens);
    assert_eq!(from_files.token_types, from_json.token_types);
    assert_eq!(from_files.merges, from_json.merges);
    from_files
        .resolve_special_tokens(Some(&read(&dir, "tokenizer_config.json")), None)
        .unwrap();
    assert_eq!(from_files.special.eos, Some(1200));

    // Without tokenizer_config, <|endoftext|> is only a vocab.json entry: NORMAL, matched by BPE
    // never (so "<|endoftext|>" in text is not one token).
    let bare = gguf_vocab_from_vocab_merges(
        &read(&dir, "vocab.json"),
        &read(&dir, "merges.txt"),
        None,
        None,
        None,
    )
    .unwrap();
    assert_eq!(bare.tokens.len(), 1201);
    assert_eq!(bare.token_types[1200], TokenType::Normal as i32);
}

#[test]
fn new_style_pair_merges_are_read() {
    let dir = fixture_dir();
    let mut json: Value = serde_json::from_str(&read(&dir, "tokenizer.json")).unwrap();
    let pairs: Vec<Value> = json["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let (a, b) = m.as_str().unwrap().split_once(' ').unwrap();
            Value::Array(vec![a.into(), b.into()])
        })
        .collect();
    json["model"]["merges"] = Value::Array(pairs);
    let new_style = gguf_vocab_from_tokenizer_json(&json.to_string(), None).unwrap();
    let old_style = gguf_vocab_from_tokenizer_json(&read(&dir, "tokenizer.json"), None).unwrap();
    assert_eq!(new_style.merges, old_style.merges);
}

#[test]
fn matches_hf_tokenizers_crate() {
    compare_with_hf(&fixture_dir(), None, 3000, 0x5eed);
}

#[test]
fn matches_hf_with_padded_vocabulary() {
    // config.json vocab_size larger than the tokenizer (phi-2: 51200 vs 50295).
    compare_with_hf(&fixture_dir(), Some(1280), 300, 17);
}

#[test]
fn stream_decoder_never_splits_characters() {
    let ours = ours_from_dir(&fixture_dir(), None);
    let mut rng = StdRng::seed_from_u64(99);
    for _ in 0..300 {
        let text = random_text(&mut rng, 30);
        let ids = ours.encode(&text, true);
        let mut sd = StreamDecoder::new(&ours);
        let mut out = String::new();
        for &id in &ids {
            let piece = sd.push(id);
            assert!(
                !piece.contains('\u{FFFD}') || text.contains('\u{FFFD}'),
                "{text:?}: premature U+FFFD"
            );
            out.push_str(&piece);
            assert!(text.starts_with(&out));
        }
        assert_eq!(sd.finish(), "");
        assert_eq!(out, text);
    }
}

/// Our pre-tokenizer splits vs HF's ByteLevel pre-tokenizer (Oniguruma regex) for the code
/// points `cps`, each placed after a letter, a digit, punctuation, a quote, a space and a newline.
fn compare_pre_tokenizer(cps: impl Iterator<Item = u32>) {
    use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};
    let hf = tokenizers::pre_tokenizers::byte_level::ByteLevel::new(false, true, true);
    let chars: Vec<char> = cps.filter_map(char::from_u32).collect();
    for chunk in chars.chunks(4096) {
        let mut text = String::new();
        for &c in chunk {
            for ctx in ["a", "1", "!", "'", " ", "\n"] {
                text.push_str(ctx);
                text.push(c);
            }
        }
        let mut pre = PreTokenizedString::from(text.as_str());
        hf.pre_tokenize(&mut pre).unwrap();
        let want: Vec<(usize, usize)> = pre
            .get_splits(OffsetReferential::Original, OffsetType::Byte)
            .iter()
            .map(|s| s.1)
            .collect();
        let mut got = Vec::new();
        let mut at = 0;
        for p in pre_tokenize(&text) {
            got.push((at, at + p.len()));
            at += p.len();
        }
        if got != want {
            let first = got.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(0);
            let (s, e) = want.get(first).copied().unwrap_or((0, 0));
            panic!(
                "splits differ near {:?} (chunk from U+{:04X})",
                &text[s..e],
                chunk[0] as u32
            );
        }
    }
}

/// Every code point of the BMP and the SMP (where the scripts, symbols and emoji are), and a
/// sample of the planes above (CJK extensions, tags, private use, unassigned).
#[test]
fn pre_tokenizer_matches_hf_on_unicode() {
    compare_pre_tokenizer((0..0x20000).chain((0x20000..=0x10FFFF).step_by(61)));
}

#[test]
#[ignore = "slow (~20 s): every code point; the default run covers planes 0-1 fully"]
fn pre_tokenizer_matches_hf_on_all_code_points() {
    compare_pre_tokenizer(0..=0x10FFFF);
}

/// Full-size check on a real Phi-2 (or GPT-2 + Phi-2 added tokens) tokenizer.json:
/// `TINYGPTV_PHI2_TOKENIZER=/path/to/dir-with-tokenizer.json cargo test ... -- --ignored`.
#[test]
#[ignore = "needs TINYGPTV_PHI2_TOKENIZER (a folder with Phi-2's tokenizer.json)"]
fn matches_hf_on_full_phi2_vocabulary() {
    let dir = std::env::var("TINYGPTV_PHI2_TOKENIZER").expect("set TINYGPTV_PHI2_TOKENIZER");
    let dir = Path::new(&dir);
    compare_with_hf(dir, Some(51200), 20000, 2024);
    let ours = ours_from_dir(dir, Some(51200));
    assert_eq!(ours.vocab_size(), 51200);
    assert_eq!(ours.find_token("<|endoftext|>"), Some(50256));
    assert_eq!(ours.eos(), Some(50256));
    assert_eq!(ours.encode(LLAMA_CPP_PROBE, true), PHI2_PROBE_IDS);

    // Throughput on ~1 MB of mixed text (printed; run with --nocapture).
    let mut rng = StdRng::seed_from_u64(5);
    let text: String = (0..4000)
        .map(|_| random_text(&mut rng, 60))
        .collect::<Vec<_>>()
        .join(" ");
    let hf = hf_from_dir(dir);
    let t0 = std::time::Instant::now();
    let a = ours.encode(&text, true);
    let t1 = std::time::Instant::now();
    let b = hf_encode(&hf, &text);
    let t2 = std::time::Instant::now();
    assert_eq!(a, b);
    let mb = text.len() as f64 / 1e6;
    println!(
        "{mb:.2} MB, {} tokens: ours {:.1} MB/s, HF {:.1} MB/s",
        a.len(),
        mb / (t1 - t0).as_secs_f64(),
        mb / (t2 - t1).as_secs_f64()
    );
}
