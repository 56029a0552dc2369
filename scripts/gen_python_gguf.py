#!/usr/bin/env python3
"""Writes tests/fixtures/python-gguf/phi2-mini-f16.gguf: the miniature stock Phi-2
(tests/fixtures/phi2-safetensors) converted with the Python `gguf` package, the way llama.cpp's
convert_hf_to_gguf.py converts a `PhiForCausalLM` (class Phi2Model) with `--outtype f16`.

It is the "foreign writer" fixture of tests/llama_cpp.rs: a GGUF our converter did not write,
loaded by our runtime and by llama.cpp and compared. Run with the project venv:

    /work/venv/bin/python scripts/gen_python_gguf.py

What it mirrors (gguf.md §2-3):
* keys: general.architecture `phi2` (GGUFWriter constructor), general.type/name/size_label,
  phi2.context_length/embedding_length/feed_forward_length (= 4·n_embd)/block_count/
  attention.head_count/head_count_kv/layer_norm_epsilon/rope.dimension_count
  (= int(partial_rotary_factor·n_embd)//n_head), general.file_type = 1 (MOSTLY_F16),
  tokenizer.ggml.add_bos_token = false, then the gpt2 vocab, last general.quantization_version;
* tensors: HF names mapped with gguf.TensorNameMap, no permutation; 1-D tensors, `*_norm.weight`
  and every non-`.weight` tensor in F32, the other matrices in F16;
* vocab (`_set_vocab_gpt2` / `get_vocab_base`): AutoTokenizer, ids 0..config.vocab_size, missing ids
  `[PAD{i}]` UNUSED, added tokens CONTROL if special (or `<|…|>`-looking) else USER_DEFINED
  (non-normalized ones round-tripped through decode(encode())), others NORMAL; merges and special
  ids through gguf.SpecialVocab(load_merges=True).
One deliberate difference: convert_hf_to_gguf.py identifies the pre-tokenizer by hashing the
token ids of a probe text; the miniature vocabulary has no registered hash, so `phi-2` (what the real
phi-2 hashes to) is written directly.

Deterministic: the same inputs give the same bytes (sha256 printed).
"""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

import gguf
from transformers import AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "tests/fixtures/phi2-safetensors"
OUT = ROOT / "tests/fixtures/python-gguf/phi2-mini-f16.gguf"


def looks_special(token: str) -> bool:
    # convert_hf_to_gguf.py `does_token_look_special`
    return (token.startswith("<|") and token.endswith("|>")) or token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")


def vocab_base(tokenizer, vocab_size: int):
    tokens, toktypes = [], []
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_size:
        sys.exit(f"tokenizer id {max(vocab.values())} >= vocab_size {vocab_size}")
    reverse = {i: t for t, i in vocab.items()}
    added = tokenizer.get_added_vocab()
    decoder = tokenizer.added_tokens_decoder
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            toktypes.append(gguf.TokenType.UNUSED)
            continue
        token = reverse[i]
        if token in added:
            if not decoder[i].normalized:
                token = tokenizer.decode(tokenizer.encode(token, add_special_tokens=False))
            if decoder[i].special or looks_special(token):
                toktypes.append(gguf.TokenType.CONTROL)
            else:
                token = token.replace("\u2581", " ")
                toktypes.append(gguf.TokenType.USER_DEFINED)
        else:
            toktypes.append(gguf.TokenType.NORMAL)
        tokens.append(token)
    return tokens, toktypes


def main() -> None:
    cfg = json.loads((SRC / "config.json").read_text())
    n_embd = cfg["hidden_size"]
    n_head = cfg["num_attention_heads"]
    n_layer = cfg["num_hidden_layers"]
    weights = load_file(str(SRC / "model.safetensors"))

    OUT.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(OUT), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.PHI2])

    # tensors first (prepare_tensors), so the parameter count is known for size_label
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.PHI2, n_layer)
    n_params = 0
    for hf_name in weights:
        data = weights[hf_name]
        if hf_name.endswith((".rotary_emb.inv_freq", ".attention.bias", ".attention.masked_bias")):
            continue
        new_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            sys.exit(f"cannot map tensor {hf_name!r}")
        if data.ndim <= 1 or new_name.endswith("_norm.weight") or not new_name.endswith(".weight"):
            data = data.astype(np.float32)
        else:
            data = data.astype(np.float16)
        n_params += data.size
        w.add_tensor(new_name, data)

    # prepare_metadata: type, meta model, Phi2Model.set_gguf_parameters, vocab, quantization version
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(SRC.name)
    w.add_size_label(gguf.size_label(n_params, 0, 0, 0))
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(4 * n_embd)
    w.add_block_count(n_layer)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head)
    w.add_layer_norm_eps(cfg["layer_norm_eps"])
    w.add_rope_dimension_count(int(cfg["partial_rotary_factor"] * n_embd) // n_head)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_add_bos_token(False)

    tokenizer = AutoTokenizer.from_pretrained(str(SRC))
    tokens, toktypes = vocab_base(tokenizer, cfg["vocab_size"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("phi-2")
    w.add_token_list(tokens)
    w.add_token_types(toktypes)
    special = gguf.SpecialVocab(SRC, load_merges=True, n_vocab=len(tokens))
    special.add_to_gguf(w)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    blob = OUT.read_bytes()
    print(f"{OUT.relative_to(ROOT)}: {len(blob)} bytes, sha256 {hashlib.sha256(blob).hexdigest()}")
    print(f"{len(tokens)} tokens, {len(special.merges)} merges, {n_params} parameters")


if __name__ == "__main__":
    main()
