#!/usr/bin/env python3
"""Generate the checkpoint-reader fixtures under converter/tests/data/.

Run with the project venv:  /work/venv/bin/python scripts/gen_reader_fixtures.py
CI has no Python: the outputs are committed and the Rust tests read them.

Every fixture is tiny. `expected.json` records, for each file and tensor, the dtype, the
PyTorch-order shape and the full value list (as float32, then as Python float for f64), so the
Rust readers can be compared exactly.
"""

import collections
import json
import os
import pickle
import secrets
import shutil
import struct
import zipfile
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "converter" / "tests" / "data"

DTYPE_NAMES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "Bool",
}


def describe(t: torch.Tensor) -> dict:
    """Expected reader output for one tensor: values flattened in C order."""
    flat = t.detach().contiguous().reshape(-1)
    return {
        "dtype": DTYPE_NAMES[t.dtype],
        "shape": list(t.shape),
        # What read_f32 / read_f64 must return, as IEEE bit patterns (JSON float parsers may
        # be off by an ulp; bits compare exactly).
        "f32_bits": [struct.unpack("<I", struct.pack("<f", x))[0]
                     for x in flat.to(torch.float32).tolist()],
        "f64_bits": ["%016x" % struct.unpack("<Q", struct.pack("<d", x))[0]
                     for x in flat.to(torch.float64).tolist()],
    }


def describe_dict(sd) -> dict:
    return {"order": list(sd.keys()), "tensors": {k: describe(v) for k, v in sd.items()}}


def small_state_dict() -> "collections.OrderedDict[str, torch.Tensor]":
    g = torch.Generator().manual_seed(1234)
    sd = collections.OrderedDict()
    sd["f32"] = torch.arange(12, dtype=torch.float32).reshape(3, 4) * 0.5 - 1.0
    sd["f16"] = torch.randn(2, 3, 4, generator=g).to(torch.float16)
    sd["bf16"] = torch.randn(5, 3, generator=g).to(torch.bfloat16)
    sd["f64"] = torch.randn(7, generator=g, dtype=torch.float64)
    sd["i64"] = torch.arange(7, dtype=torch.int64).reshape(1, 7) - 3
    sd["i32"] = torch.tensor([[-5, 0, 7]], dtype=torch.int32)
    sd["u8"] = torch.tensor([0, 1, 255], dtype=torch.uint8)
    sd["bool"] = torch.tensor([True, False, True])
    base = torch.randn(3, 5, generator=g)
    # Non-contiguous: the transpose shares base's storage with strides (1, 5).
    sd["transposed"] = base.t()
    big = torch.randn(6, 4, generator=g)
    sd["big"] = big
    # A view with a storage offset of 8 into big's storage (shared storage).
    sd["view_offset"] = big[2:5]
    # A strided column with offset 1: shape (6,), stride (4,).
    sd["column"] = big[:, 1]
    # The same tensor object twice (tied weights): pickled once, then a memo reference.
    tied = torch.randn(4, 2, generator=g)
    sd["tied_a"] = tied
    sd["tied_b"] = tied
    sd["scalar"] = torch.tensor(3.25)
    sd["empty"] = torch.zeros(0, 3)
    # A half-precision transposed view (non-contiguous f16).
    sd["f16_t"] = torch.randn(4, 3, generator=g).to(torch.float16).t()
    return sd


class TinyModel(torch.nn.Module):
    """Names shaped like the TinyGPT-V trainable set (projection + LoRA + norms)."""

    def __init__(self):
        super().__init__()
        self.llama_proj = torch.nn.Linear(6, 8)
        self.llama_proj2 = torch.nn.Linear(8, 5)
        self.lora_A = torch.nn.Parameter(torch.randn(2, 5))
        self.lora_B = torch.nn.Parameter(torch.zeros(5, 2))
        self.post_layernorm = torch.nn.Parameter(torch.ones(5))


class Hostile:
    """Pickles as a call to os.system: loading it with pickle would run the command."""

    def __init__(self, cmd: str):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def plain_value():
    """A plain Python value exercising most pickle opcodes (protocols 0-5)."""
    return {
        "none": None,
        "true": True,
        "false": False,
        "small": 7,
        "neg": -300,
        "int32": 2**31 - 1,
        "int64": -(2**62),
        "big": 2**80 + 5,
        "float": 1.5e-3,
        "str": "héllo ☃",
        "bytes": b"\x00\x01\xffab",
        "tuple": (1, "two", 3.0),
        "list": [1, [2, [3, []]], {"k": "v"}],
        "set": {3},
        "frozenset": frozenset({4}),
        "empty_tuple": (),
        "nested": collections.OrderedDict([("a", 1), ("b", (2, 3))]),
        7: "int key",
    }


def plain_to_json(v):
    """The JSON form the Rust `Pickle::to_json` must produce for plain_value()."""
    if v is None or isinstance(v, (bool, str, float)):
        return v
    if isinstance(v, int):
        if -(2**63) <= v < 2**63:
            return v
        return {"$bigint": str(v)}
    if isinstance(v, bytes):
        return {"$bytes": list(v)}
    if isinstance(v, tuple):
        return {"$tuple": [plain_to_json(x) for x in v]}
    if isinstance(v, list):
        return [plain_to_json(x) for x in v]
    if isinstance(v, frozenset):
        return {"$set": [plain_to_json(x) for x in sorted(v)]}
    if isinstance(v, set):
        return {"$set": [plain_to_json(x) for x in sorted(v)]}
    if isinstance(v, dict):
        if all(isinstance(k, str) for k in v):
            return {k: plain_to_json(x) for k, x in v.items()}
        return {"$dict": [[plain_to_json(k), plain_to_json(x)] for k, x in v.items()]}
    raise TypeError(type(v))


def safetensors_order(path: Path) -> list:
    """Tensor names in data-offset order: the order a reader finds them in the file."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    return sorted(header, key=lambda k: header[k]["data_offsets"][0])


def main():
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    torch.manual_seed(0)
    expected = {}

    # 1. Bare state dict, zip format (like eva_vit_g.pth), default protocol 2 and protocol 4.
    sd = small_state_dict()
    torch.save(sd, OUT / "small.pth")
    torch.save(sd, OUT / "small_p4.pth", pickle_protocol=4)
    expected["small"] = describe_dict(sd)

    # The same archive with every entry deflated (torch writes stored entries; other zip
    # tools may not).
    with zipfile.ZipFile(OUT / "small.pth") as src, \
            zipfile.ZipFile(OUT / "small_deflated.pth", "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))

    # 2. Legacy (pre-1.6, non-zip) torch format with the same content.
    torch.save(sd, OUT / "small_legacy.pth", _use_new_zipfile_serialization=False)

    # 3. BLIP-2-like: {"model": state_dict, "extra": ...}.
    blip = collections.OrderedDict()
    blip["Qformer.bert.embeddings.LayerNorm.weight"] = torch.randn(8)
    blip["query_tokens"] = torch.randn(1, 4, 8)
    blip["ln_vision.weight"] = torch.randn(6).to(torch.float16)
    torch.save({"model": blip, "note": "blip2-like"}, OUT / "blip2_like.pth")
    expected["blip2_like"] = describe_dict(blip)

    # 4. TinyGPT-V-like training checkpoint with real Adam state.
    model = TinyModel()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(3, 6)
    loss = model.llama_proj2(model.llama_proj(x)).pow(2).sum() + (model.lora_B @ model.lora_A).sum()
    loss.backward()
    opt.step()
    msd = model.state_dict()
    config = {
        "model": {"arch": "minigpt4", "lora_r": 64, "lora_alpha": 16, "image_size": 224,
                  "prompt_path": None, "freeze_vit": True, "dtype_list": ["fp16", 1.5]},
        "run": {"lr": 1e-5, "epochs": [1, 2, 3]},
    }
    scaler = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
              "growth_interval": 2000, "_growth_tracker": 0}
    tgv = {"model": msd, "optimizer": opt.state_dict(), "config": config, "scaler": scaler,
           "epoch": 3}
    torch.save(tgv, OUT / "tinygptv_like.pth")
    expected["tinygptv_like"] = describe_dict(msd)
    expected["tinygptv_like"]["config"] = config
    expected["tinygptv_like"]["epoch"] = 3
    expected["tinygptv_like"]["optimizer_state_keys"] = sorted(opt.state_dict()["state"].keys())

    # 5. Parameters pickled directly (exercise _rebuild_parameter).
    params = collections.OrderedDict(
        [("p", torch.nn.Parameter(torch.arange(6, dtype=torch.float32).reshape(2, 3))),
         ("q", torch.nn.Parameter(torch.tensor([1.5, -2.0]), requires_grad=False))])
    torch.save(params, OUT / "params.pth")
    expected["params"] = describe_dict(params)

    # 6. safetensors, single file and sharded (HF layout).
    g = torch.Generator().manual_seed(99)
    st = collections.OrderedDict()
    st["model.embed_tokens.weight"] = torch.randn(10, 4, generator=g)
    st["model.layers.0.mlp.fc1.weight"] = torch.randn(6, 4, generator=g).to(torch.float16)
    st["model.layers.0.mlp.fc1.bias"] = torch.randn(6, generator=g).to(torch.bfloat16)
    st["model.final_layernorm.weight"] = torch.ones(4)
    st["lm_head.weight"] = torch.randn(10, 4, generator=g).to(torch.float16)
    hf_config = {"architectures": ["PhiForCausalLM"], "model_type": "phi", "hidden_size": 4,
                 "num_hidden_layers": 1, "vocab_size": 10, "torch_dtype": "float16"}

    single = OUT / "hf_single"
    single.mkdir()
    save_file(st, single / "model.safetensors", metadata={"format": "pt"})
    (single / "config.json").write_text(json.dumps(hf_config, indent=1))
    (single / "tokenizer.json").write_text("{}")
    expected["safetensors"] = describe_dict(st)
    expected["safetensors"]["order"] = safetensors_order(single / "model.safetensors")

    sharded = OUT / "hf_sharded"
    sharded.mkdir()
    names = list(st.keys())
    shards = [names[:2], names[2:]]
    weight_map = {}
    for i, part in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: st[k] for k in part}, sharded / fname, metadata={"format": "pt"})
        for k in part:
            weight_map[k] = fname
    (sharded / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}, indent=1))
    (sharded / "config.json").write_text(json.dumps(hf_config, indent=1))

    # 7. HF directories with pytorch_model.bin (single and sharded).
    hf_bin = OUT / "hf_bin"
    hf_bin.mkdir()
    torch.save(st, hf_bin / "pytorch_model.bin")
    (hf_bin / "config.json").write_text(json.dumps(hf_config, indent=1))
    (hf_bin / "vocab.json").write_text("{}")
    (hf_bin / "merges.txt").write_text("#version: 0.2\n")

    hf_bin_sharded = OUT / "hf_bin_sharded"
    hf_bin_sharded.mkdir()
    weight_map = {}
    for i, part in enumerate(shards):
        fname = f"pytorch_model-{i + 1:05d}-of-{len(shards):05d}.bin"
        torch.save(collections.OrderedDict((k, st[k]) for k in part), hf_bin_sharded / fname)
        for k in part:
            weight_map[k] = fname
    (hf_bin_sharded / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}, indent=1))
    (hf_bin_sharded / "config.json").write_text(json.dumps(hf_config, indent=1))
    expected["hf_config"] = hf_config

    # 8. Hostile pickles: loading them with Python's pickle would run `touch MARKER`.
    marker = f"/tmp/tinygptv_pwned_{secrets.token_hex(6)}"
    cmd = f"touch {marker}"
    (OUT / "hostile.pkl").write_bytes(pickle.dumps(Hostile(cmd), protocol=2))
    torch.save({"model": Hostile(cmd), "epoch": 1}, OUT / "hostile_model.pth")
    torch.save(collections.OrderedDict([("w", torch.ones(2)), ("evil", Hostile(cmd))]),
               OUT / "hostile_entry.pth")
    expected["hostile_marker"] = marker
    if os.path.exists(marker):
        sys.exit("marker exists after writing the hostile fixtures")

    # 9. Plain pickles of one value, every protocol (opcode coverage for the value tree).
    pv = plain_value()
    for proto in range(0, 6):
        (OUT / f"plain_p{proto}.pkl").write_bytes(pickle.dumps(pv, protocol=proto))
    expected["plain"] = plain_to_json(pv)

    for f in OUT.rglob("*"):
        os.chmod(f, 0o755 if f.is_dir() else 0o644)
    (OUT / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True))
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT} ({total} bytes)")


if __name__ == "__main__":
    main()
