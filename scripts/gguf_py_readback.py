#!/usr/bin/env python3
"""Reads our converter's three kinds of output with the Python `gguf` package (gguf-py) and
records what it sees in tests/fixtures/gguf-py-readback.json.

    /work/venv/bin/python scripts/gguf_py_readback.py PATH/TO/tinygptv
    (e.g. target/release/tinygptv; any profile writes the same bytes)

It runs `tinygptv convert` on the committed fixtures (the RUNS below; the exact argument lists are
stored in the JSON, with `{fixtures}` = tests/fixtures and `{out}` = a scratch folder), opens every
output with `gguf.GGUFReader`, and writes per file:
* `header`: GGUF version, tensor count, metadata key count;
* `metadata`: a list of every key in file order, with gguf-py's value type (`UINT32`, `ARRAY`, ...), the
  element type of arrays, and the value. Arrays longer than SHORT_ARRAY are summarized as
  `{"len", "first", "last", "fnv1a64"}`, the hash (FNV-1a 64, hex) taken over the elements'
  canonical bytes: numbers and bools as stored (little-endian), strings as u64 LE byte length +
  UTF-8 bytes;
* `tensors`: a list in file order of name, gguf-py type name (`Q4_K`, `F32`, ...), `shape` in gguf-py's
  `ReaderTensor.shape` order, which is GGUF/ggml `ne` order (innermost dimension first; the reverse
  of the PyTorch shape), `n_bytes`, and the float64 sum and sum of squares (math.fsum, i.e.
  correctly rounded) of the values gguf-py's `gguf.quants.dequantize` returns.

tests/gguf_py_readback.rs converts the same fixtures the same way, reads them with our reader and
dequantizers and checks everything against this file. That test FAILS whenever the converter's
output changes: rerun this script (after checking the change is intended) and commit the JSON.
"""

import json
import math
import subprocess
import sys
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

import gguf
from gguf import GGUFReader, GGUFValueType

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
OUT_JSON = FIX / "gguf-py-readback.json"
SHORT_ARRAY = 16
ENDS = 4  # first/last elements kept of a long array

# The three kinds: stock phi2 LM, TinyGPT-V LM, vision (mmproj). Types chosen so that gguf-py's
# dequantizers for Q4_K, Q5_K, Q6_K, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, BF16 and F16 are all exercised
# (K-quant fallbacks on 64-wide rows give the legacy types).
VISION_ARGS = ["--eva", "{fixtures}/checkpoints/eva_vit_g.pth", "--blip2", "{fixtures}/checkpoints/blip2_pretrained.pth", "--vision-heads", "4", "--qformer-heads", "4"]
RUNS = [
    ["convert", "--phi2", "{fixtures}/phi2-safetensors", "--type", "q4_k", "--out", "{out}/phi2-stock-q4_k.gguf"],
    ["convert", "--phi2", "{fixtures}/phi2-sharded", "--type", "bf16", "--out", "{out}/phi2-stock-bf16.gguf"],
    ["convert", "--phi2", "{fixtures}/phi2-msft", "--type", "f16", "--out", "{out}/phi2-stock-msft-f16.gguf"],
    ["convert", "--phi2", "{fixtures}/phi2-fused", "--tinygptv", "{fixtures}/checkpoints/tinygptv_stage3.pth"] + VISION_ARGS
    + ["--type", "q4_k_m", "--out", "{out}/tinygptv-stage3-q4_k_m.gguf", "--mmproj-out", "{out}/mmproj-stage3-q4_k_m.gguf"],
    ["convert", "--phi2", "{fixtures}/phi2-msft", "--tinygptv", "{fixtures}/checkpoints/tinygptv_stage4.pth"] + VISION_ARGS
    + ["--type", "q4_0", "--out", "{out}/tinygptv-stage4-q4_0.gguf", "--mmproj-out", "{out}/mmproj-stage4-q4_0.gguf"],
    ["convert", "--phi2", "{fixtures}/phi2-bin", "--tinygptv", "{fixtures}/checkpoints/tinygptv_stage3.pth"] + VISION_ARGS
    + ["--type", "q4_1", "--pure", "--out", "{out}/tinygptv-stage3-q4_1.gguf", "--mmproj-out", "{out}/mmproj-stage3-q4_1.gguf"],
    ["convert", "--phi2", "{fixtures}/phi2-safetensors", "--tinygptv", "{fixtures}/checkpoints/tinygptv_stage4.pth"] + VISION_ARGS
    + ["--type", "q6_k", "--out", "{out}/tinygptv-stage4-q6_k.gguf", "--mmproj-out", "{out}/mmproj-stage4-q6_k.gguf"],
]


def fnv1a64(chunks):
    h = 0xCBF29CE484222325
    for chunk in chunks:
        for b in chunk:
            h ^= b
            h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def element_bytes(field, sub_type):
    """Canonical bytes of each array element (see the module docstring)."""
    for idx in field.data:
        raw = field.parts[idx].tobytes()
        if sub_type == GGUFValueType.STRING:
            yield len(raw).to_bytes(8, "little") + raw
        else:
            yield raw


def plain(v):
    """numpy scalars -> Python values (floats stay exact: f32 -> f64 is exact)."""
    if isinstance(v, (np.generic,)):
        return v.item()
    return v


def field_entry(field):
    main = field.types[0]
    entry = OrderedDict([("key", field.name), ("type", main.name)])
    if main != GGUFValueType.ARRAY:
        entry["value"] = plain(field.contents())
        return entry
    sub = field.types[-1] if len(field.types) > 1 else None
    if sub is None:  # empty array: gguf-py keeps no element type
        entry["elem_type"] = None
        entry["value"] = []
        return entry
    if sub == GGUFValueType.ARRAY:
        sys.exit(f"{field.name}: nested arrays are not expected in our files")
    entry["elem_type"] = sub.name
    values = [plain(v) for v in field.contents()]
    if len(values) <= SHORT_ARRAY:
        entry["value"] = values
    else:
        entry["value"] = OrderedDict(
            [
                ("len", len(values)),
                ("first", values[:ENDS]),
                ("last", values[-ENDS:]),
                ("fnv1a64", fnv1a64(element_bytes(field, sub))),
            ]
        )
    return entry


def read_file(path):
    r = GGUFReader(path)
    header = OrderedDict()
    metadata = []
    for name, field in r.fields.items():
        if name.startswith("GGUF."):
            header[name[len("GGUF.") :]] = plain(field.contents())
        else:
            metadata.append(field_entry(field))
    tensors = []
    for t in r.tensors:
        x = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64).ravel()
        assert x.size == int(np.prod(t.shape)), t.name
        assert np.isfinite(x).all(), t.name
        tensors.append(
            OrderedDict(
                [
                    ("name", t.name),
                    ("type", t.tensor_type.name),
                    ("shape", [int(d) for d in t.shape]),
                    ("n_bytes", int(t.n_bytes)),
                    ("sum", math.fsum(x.tolist())),
                    ("sum_sq", math.fsum((x * x).tolist())),
                ]
            )
        )
    return OrderedDict([("header", header), ("metadata", metadata), ("tensors", tensors)])


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: gguf_py_readback.py PATH/TO/tinygptv")
    exe = Path(sys.argv[1]).resolve()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for args in RUNS:
            real = [a.replace("{fixtures}", str(FIX)).replace("{out}", tmp) for a in args]
            p = subprocess.run([str(exe)] + real, capture_output=True, text=True)
            if p.returncode != 0:
                sys.exit(f"{' '.join(real)} failed:\n{p.stderr}")
            outputs = []
            for a in args:
                if a.startswith("{out}/"):
                    name = a[len("{out}/") :]
                    print(f"reading {name}")
                    outputs.append(OrderedDict([("file", name)] + list(read_file(Path(tmp) / name).items())))
            runs.append(OrderedDict([("args", args), ("outputs", outputs)]))
    doc = OrderedDict(
        [
            ("generator", "scripts/gguf_py_readback.py"),
            ("gguf_py_version", gguf.__version__ if hasattr(gguf, "__version__") else _gguf_version()),
            ("shape_order", "gguf-py ReaderTensor.shape = GGUF ne order, innermost dimension first"),
            ("sums", "float64 math.fsum of gguf.quants.dequantize values, and of their squares"),
            ("runs", runs),
        ]
    )
    OUT_JSON.write_text(to_json(doc))
    print(f"wrote {OUT_JSON.relative_to(ROOT)} ({OUT_JSON.stat().st_size} bytes)")


def to_json(doc):
    """JSON with one line per run argument list, header, metadata key and tensor (small, diffable)."""

    def one(v):
        return json.dumps(v, ensure_ascii=False)

    def lines(items, indent):
        pad = " " * indent
        return "[\n" + ",\n".join(pad + one(x) for x in items) + "\n" + " " * (indent - 1) + "]"

    out = ["{"]
    for k in ("generator", "gguf_py_version", "shape_order", "sums"):
        out.append(f" {one(k)}: {one(doc[k])},")
    out.append(' "runs": [')
    runs = []
    for r in doc["runs"]:
        outputs = []
        for o in r["outputs"]:
            outputs.append(
                "    {\n"
                f'     "file": {one(o["file"])},\n'
                f'     "header": {one(o["header"])},\n'
                f'     "metadata": {lines(o["metadata"], 6)},\n'
                f'     "tensors": {lines(o["tensors"], 6)}\n'
                "    }"
            )
        runs.append("  {\n" f'   "args": {one(r["args"])},\n' '   "outputs": [\n' + ",\n".join(outputs) + "\n   ]\n  }")
    out.append(",\n".join(runs))
    out.append(" ]")
    out.append("}")
    text = "\n".join(out) + "\n"
    assert json.loads(text) == json.loads(json.dumps(doc)), "formatter changed the document"
    return text


def _gguf_version():
    from importlib.metadata import version

    return version("gguf")


if __name__ == "__main__":
    main()
