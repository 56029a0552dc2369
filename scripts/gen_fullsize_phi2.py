#!/usr/bin/env python3
"""Writes a random-weight Phi-2 at the real shapes as a HuggingFace folder with sharded f16
safetensors (today's split q_proj/k_proj/v_proj layout), for the converter benchmark.

usage: gen_fullsize_phi2.py OUT_DIR [--shards 3]
The tokenizer files are copied from tests/fixtures/tokenizer (the miniature tokenizer; the
converter pads the vocabulary to config.vocab_size = 51200 with [PAD] tokens).
"""
import json, os, shutil, sys
import numpy as np
from safetensors.numpy import save_file

out = sys.argv[1]
shards = int(sys.argv[sys.argv.index("--shards") + 1]) if "--shards" in sys.argv else 3
os.makedirs(out, exist_ok=True)
V, E, L, F = 51200, 2560, 32, 10240
rng = np.random.default_rng(0)

def w(*shape, scale=0.02):
    return (rng.standard_normal(shape, dtype=np.float32) * scale).astype(np.float16)

tensors = []  # (name, fn) in file order
tensors.append(("model.embed_tokens.weight", lambda: w(V, E)))
for i in range(L):
    p = f"model.layers.{i}."
    tensors += [
        (p + "input_layernorm.weight", lambda: (1 + w(E, scale=0.1)).astype(np.float16)),
        (p + "input_layernorm.bias", lambda: w(E)),
    ]
    for n in ["q_proj", "k_proj", "v_proj", "dense"]:
        tensors += [(p + f"self_attn.{n}.weight", lambda: w(E, E)), (p + f"self_attn.{n}.bias", lambda: w(E))]
    tensors += [
        (p + "mlp.fc1.weight", lambda: w(F, E)), (p + "mlp.fc1.bias", lambda: w(F)),
        (p + "mlp.fc2.weight", lambda: w(E, F)), (p + "mlp.fc2.bias", lambda: w(E)),
    ]
tensors += [
    ("model.final_layernorm.weight", lambda: (1 + w(E, scale=0.1)).astype(np.float16)),
    ("model.final_layernorm.bias", lambda: w(E)),
    ("lm_head.weight", lambda: w(V, E)), ("lm_head.bias", lambda: w(V)),
]
per = (len(tensors) + shards - 1) // shards
index = {"metadata": {"total_size": 0}, "weight_map": {}}
for s in range(shards):
    name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
    part = {}
    for tname, fn in tensors[s * per:(s + 1) * per]:
        part[tname] = fn()
        index["weight_map"][tname] = name
        index["metadata"]["total_size"] += part[tname].nbytes
    save_file(part, os.path.join(out, name))
    del part
    print("wrote", name, flush=True)
json.dump(index, open(os.path.join(out, "model.safetensors.index.json"), "w"), indent=1)
json.dump({
    "architectures": ["PhiForCausalLM"], "model_type": "phi", "vocab_size": V, "hidden_size": E,
    "intermediate_size": F, "num_hidden_layers": L, "num_attention_heads": 32, "num_key_value_heads": 32,
    "max_position_embeddings": 2048, "partial_rotary_factor": 0.4, "rope_theta": 10000.0,
    "layer_norm_eps": 1e-5, "hidden_act": "gelu_new", "bos_token_id": 50256, "eos_token_id": 50256,
    "torch_dtype": "float16",
}, open(os.path.join(out, "config.json"), "w"), indent=1)
here = os.path.dirname(os.path.abspath(__file__))
for f in os.listdir(os.path.join(here, "..", "tests", "fixtures", "tokenizer")):
    if f.endswith((".json", ".txt")) and f not in ("corpus.json", "expected_ids.json"):
        shutil.copy(os.path.join(here, "..", "tests", "fixtures", "tokenizer", f), out)
