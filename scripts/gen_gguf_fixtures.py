#!/usr/bin/env python3
"""GGUF cross-check fixtures between the python `gguf` package (0.19) and our Rust container.

Two directions, both committed under kernels/tests/data/gguf/ (CI has no python; the Rust tests
read the committed files):

  generate  Write `python_written.gguf` with gguf.GGUFWriter (every metadata value type, arrays
            of each, arrays of strings, an empty string; F32/F16/BF16/Q8_0/Q4_0/I8/I32 tensors)
            and `python_written.json`, the content it must parse to. Test:
            kernels/tests/gguf_fixtures.rs (`python_written_file_matches_expectations`).

  check     Read `rust_written.gguf` (written by OUR writer; regenerate it with
            `cargo test -p tinygptv-kernels --test gguf_fixtures -- --ignored`) with
            gguf.GGUFReader and assert it holds exactly RUST_EXPECTED below (written here
            independently of the Rust code). Writes `rust_written.python_check.json`, the record
            of what GGUFReader saw. The Rust test `rust_written_fixture_is_current` asserts the
            committed file is byte-identical to what the writer produces today, so this check
            stays valid without python in CI.

Usage: /work/venv/bin/python scripts/gen_gguf_fixtures.py [generate|check|all]   (default: all)
Sizes: python_written.gguf ~2 KB, rust_written.gguf ~2 KB, JSON files ~10 KB.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import sys
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q, GGUFValueType as VT

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "kernels" / "tests" / "data" / "gguf"

TYPE_NAMES = {
    VT.UINT8: "u8", VT.INT8: "i8", VT.UINT16: "u16", VT.INT16: "i16", VT.UINT32: "u32",
    VT.INT32: "i32", VT.FLOAT32: "f32", VT.BOOL: "bool", VT.STRING: "str", VT.ARRAY: "arr",
    VT.UINT64: "u64", VT.INT64: "i64", VT.FLOAT64: "f64",
}


def f32(x: float) -> float:
    """The double equal to x rounded to float32."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def scalar_json(vt: VT, v):
    """JSON for one scalar; floats also carry their exact bit pattern."""
    if vt == VT.FLOAT32:
        return {"value": f32(v) if math.isfinite(v) else None,
                "bits": struct.unpack("<I", struct.pack("<f", v))[0]}
    if vt == VT.FLOAT64:
        return {"value": v if math.isfinite(v) else None,
                "bits": struct.unpack("<Q", struct.pack("<d", v))[0]}
    return {"value": v}


def kv_json(key: str, vt: VT, v, sub: VT | None = None) -> dict:
    if vt == VT.ARRAY:
        return {"key": key, "type": "arr", "elem_type": TYPE_NAMES[sub],
                "values": [scalar_json(sub, x) for x in v]}
    return {"key": key, "type": TYPE_NAMES[vt], **scalar_json(vt, v)}


# ---------------------------------------------------------------------------------------------
# generate: python writes, Rust reads


# (key, type, value, array element type)
PY_KVS: list[tuple[str, VT, object, VT | None]] = [
    ("test.u8", VT.UINT8, 250, None),
    ("test.i8", VT.INT8, -120, None),
    ("test.u16", VT.UINT16, 65000, None),
    ("test.i16", VT.INT16, -32000, None),
    ("test.u32", VT.UINT32, 4_000_000_000, None),
    ("test.i32", VT.INT32, -2_000_000_000, None),
    ("test.f32", VT.FLOAT32, 0.1, None),
    ("test.bool_true", VT.BOOL, True, None),
    ("test.bool_false", VT.BOOL, False, None),
    ("test.string", VT.STRING, "héllo wörld ✓", None),
    ("test.empty_string", VT.STRING, "", None),
    ("test.u64", VT.UINT64, 2**64 - 2, None),
    ("test.i64", VT.INT64, -(2**63), None),
    ("test.f64", VT.FLOAT64, 2.718281828459045, None),
    ("test.arr.u8", VT.ARRAY, [0, 1, 255], VT.UINT8),
    ("test.arr.i8", VT.ARRAY, [-128, 0, 127], VT.INT8),
    ("test.arr.u16", VT.ARRAY, [0, 65535], VT.UINT16),
    ("test.arr.i16", VT.ARRAY, [-32768, 32767], VT.INT16),
    ("test.arr.u32", VT.ARRAY, [0, 1, 4294967295], VT.UINT32),
    ("test.arr.i32", VT.ARRAY, [-2147483648, 5, 2147483647], VT.INT32),
    ("test.arr.f32", VT.ARRAY, [1.5, -0.25, 0.1, 3.4028234663852886e38], VT.FLOAT32),
    ("test.arr.bool", VT.ARRAY, [True, False, True], VT.BOOL),
    ("test.arr.str", VT.ARRAY, ["a", "", "ünïcödé", 'quote " and\nnewline'], VT.STRING),
    ("test.arr.u64", VT.ARRAY, [0, 2**64 - 1], VT.UINT64),
    ("test.arr.i64", VT.ARRAY, [-(2**63), 2**63 - 1], VT.INT64),
    ("test.arr.f64", VT.ARRAY, [1e-300, -0.0, 1e300], VT.FLOAT64),
]


def py_tensors() -> list[tuple[str, np.ndarray, Q | None]]:
    """(name, array to pass to add_tensor, raw_dtype for pre-quantized bytes)."""
    rng = np.random.default_rng(1234)
    w = rng.standard_normal((2, 64)).astype(np.float32)
    return [
        ("t.f32", (np.arange(6, dtype=np.float32) * 0.5 - 1.0).reshape(2, 3), None),
        ("t.f16", np.array([0.5, -1.0, 2.0, 65504.0, -0.0, 1e-3, 3.0], dtype=np.float16), None),
        ("t.bf16", gguf.quants.quantize(np.array([[1.0, -2.5, 3.0e10, -0.0]], dtype=np.float32), Q.BF16), Q.BF16),
        ("t.q8_0", gguf.quants.quantize(w, Q.Q8_0), Q.Q8_0),
        ("t.q4_0", gguf.quants.quantize(w[:1], Q.Q4_0), Q.Q4_0),
        ("t.i8", np.array([-128, -1, 0, 1, 127], dtype=np.int8), None),
        ("t.i32", np.array([[-2147483648, 0], [1, 2147483647]], dtype=np.int32), None),
    ]


def generate() -> None:
    DATA.mkdir(parents=True, exist_ok=True)
    path = DATA / "python_written.gguf"
    writer = gguf.GGUFWriter(path, "testarch")  # writes general.architecture first
    for key, vt, v, sub in PY_KVS:
        # add_key_value: add_string/add_array silently skip empty values.
        writer.add_key_value(key, v, vt, sub_type=sub)
    writer.add_quantization_version(2)
    tensors = py_tensors()
    for name, arr, raw in tensors:
        writer.add_tensor(name, arr, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    # Cross-check with python's own reader before recording expectations.
    reader = gguf.GGUFReader(path)
    kvs = [kv_json("general.architecture", VT.STRING, "testarch")]
    kvs += [kv_json(k, vt, v, sub) for k, vt, v, sub in PY_KVS]
    kvs.append(kv_json("general.quantization_version", VT.UINT32, 2))
    expected_tensors = []
    for (name, arr, raw), rt in zip(tensors, reader.tensors):
        assert rt.name == name
        data = arr.tobytes()
        assert bytes(rt.data.tobytes()) == data, name
        expected_tensors.append({
            "name": name,
            "type": int(rt.tensor_type),
            "dims": [int(d) for d in rt.shape],  # ggml ne order
            "offset": int(rt.data_offset - reader.data_offset),
            "n_bytes": int(rt.n_bytes),
            "data_hex": data.hex(),
        })
    expected = {
        "generator": f"gguf-py {gguf_version()} GGUFWriter",
        "version": 3,
        "alignment": int(reader.alignment),
        "data_offset": int(reader.data_offset),
        "file_size": path.stat().st_size,
        "metadata": kvs,
        "tensors": expected_tensors,
    }
    (DATA / "python_written.json").write_text(json.dumps(expected, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {path} ({path.stat().st_size} bytes) and python_written.json")


def gguf_version() -> str:
    from importlib.metadata import version
    return version("gguf")


# ---------------------------------------------------------------------------------------------
# check: Rust writes, python reads

# Must mirror `rust_sample()` in kernels/tests/gguf_fixtures.rs, written out independently.
RUST_KVS: list[tuple[str, VT, object, VT | None]] = [
    ("general.architecture", VT.STRING, "testarch", None),
    ("general.alignment", VT.UINT32, 64, None),
    ("test.u8", VT.UINT8, 200, None),
    ("test.i8", VT.INT8, -100, None),
    ("test.u16", VT.UINT16, 60000, None),
    ("test.i16", VT.INT16, -30000, None),
    ("test.u32", VT.UINT32, 4_000_000_000, None),
    ("test.i32", VT.INT32, -2_000_000_000, None),
    ("test.f32", VT.FLOAT32, 0.1, None),
    ("test.bool_true", VT.BOOL, True, None),
    ("test.bool_false", VT.BOOL, False, None),
    ("test.string", VT.STRING, "héllo, wörld ✓", None),
    ("test.empty_string", VT.STRING, "", None),
    ("test.u64", VT.UINT64, 2**63 + 5, None),
    ("test.i64", VT.INT64, -(2**62) - 3, None),
    ("test.f64", VT.FLOAT64, 2.718281828459045, None),
    ("test.arr.u8", VT.ARRAY, [0, 1, 255], VT.UINT8),
    ("test.arr.i8", VT.ARRAY, [-128, 0, 127], VT.INT8),
    ("test.arr.u16", VT.ARRAY, [0, 65535], VT.UINT16),
    ("test.arr.i16", VT.ARRAY, [-32768, 32767], VT.INT16),
    ("test.arr.u32", VT.ARRAY, [0, 4294967295], VT.UINT32),
    ("test.arr.i32", VT.ARRAY, [-2147483648, 7], VT.INT32),
    ("test.arr.f32", VT.ARRAY, [1.5, -0.25, 3.4028234663852886e38], VT.FLOAT32),
    ("test.arr.bool", VT.ARRAY, [True, False, True], VT.BOOL),
    ("test.arr.str", VT.ARRAY, ["a", "", "ünïcode", 'with "quotes" and\nnewline'], VT.STRING),
    ("test.arr.u64", VT.ARRAY, [0, 2**64 - 1], VT.UINT64),
    ("test.arr.i64", VT.ARRAY, [-(2**63), 2**63 - 1], VT.INT64),
    ("test.arr.f64", VT.ARRAY, [1e-300, -0.0], VT.FLOAT64),
    ("test.arr.empty_u32", VT.ARRAY, [], VT.UINT32),
    ("test.arr.empty_str", VT.ARRAY, [], VT.STRING),
]


def rust_tensors() -> list[tuple[str, Q, list[int], bytes]]:
    """(name, type, ne dims, data bytes) — the data formulas of rust_sample()."""
    f32_vals = np.array([i * 0.5 - 1.0 for i in range(6)], dtype="<f4")
    f16_vals = np.array([0.0, 1.0, -2.0, 0.5, 65504.0], dtype="<f2")
    q8 = bytes((i * 7 + 3) % 256 for i in range(2 * 2 * 34))
    i32_vals = np.array([-1, 0, 1, 2**31 - 1], dtype="<i4")
    return [
        ("t.f32", Q.F32, [3, 2], f32_vals.tobytes()),
        ("t.f16", Q.F16, [5], f16_vals.tobytes()),
        ("t.q8_0", Q.Q8_0, [64, 2], q8),
        ("t.empty", Q.F32, [0], b""),
        ("t.i32", Q.I32, [4], i32_vals.tobytes()),
    ]


def field_value(field):
    """(type, value, elem type) of a GGUFReader field."""
    vt = VT(field.types[0])
    if vt == VT.ARRAY:
        # An empty array has no element type in GGUFReader's types list.
        sub = VT(field.types[1]) if len(field.types) > 1 else None
        return vt, field.contents(), sub
    return vt, field.contents(), None


def same(vt: VT, got, want) -> bool:
    if vt in (VT.FLOAT32, VT.FLOAT64):
        pack = "<f" if vt == VT.FLOAT32 else "<d"
        return struct.pack(pack, got) == struct.pack(pack, want)
    if vt == VT.BOOL:
        return bool(got) == want
    return got == want


def check() -> None:
    path = DATA / "rust_written.gguf"
    reader = gguf.GGUFReader(path)
    report: dict = {"checked_with": f"gguf-py {gguf_version()} GGUFReader", "file": path.name,
                    "file_size": path.stat().st_size, "alignment": int(reader.alignment),
                    "data_offset": int(reader.data_offset), "metadata": [], "tensors": []}
    assert reader.fields["GGUF.version"].contents() == 3
    fields = [f for name, f in reader.fields.items() if not name.startswith("GGUF.")]
    assert [f.name for f in fields] == [k for k, *_ in RUST_KVS], [f.name for f in fields]
    for f, (key, vt, want, sub) in zip(fields, RUST_KVS):
        got_vt, got, got_sub = field_value(f)
        assert got_vt == vt, (key, got_vt, vt)
        if vt == VT.ARRAY:
            if want:
                assert got_sub == sub, (key, got_sub, sub)
            assert len(got) == len(want), (key, got, want)
            assert all(same(sub, g, w) for g, w in zip(got, want)), (key, got, want)
            report["metadata"].append(kv_json(key, vt, got, sub))
        else:
            assert same(vt, got, want), (key, got, want)
            report["metadata"].append(kv_json(key, vt, got))
    assert reader.alignment == 64
    assert reader.data_offset % 64 == 0
    expected = rust_tensors()
    assert len(reader.tensors) == len(expected)
    offset = 0
    for rt, (name, ty, dims, data) in zip(reader.tensors, expected):
        assert rt.name == name, (rt.name, name)
        assert rt.tensor_type == ty, (name, rt.tensor_type, ty)
        assert [int(d) for d in rt.shape] == dims, (name, rt.shape, dims)
        assert int(rt.n_bytes) == len(data), (name, rt.n_bytes, len(data))
        assert rt.data_offset - reader.data_offset == offset, (name, rt.data_offset, offset)
        assert bytes(rt.data.tobytes()) == data, name
        offset += (len(data) + 63) // 64 * 64
        report["tensors"].append({"name": name, "type": int(ty), "dims": dims,
                                  "offset": int(rt.data_offset - reader.data_offset),
                                  "n_bytes": len(data),
                                  "sha256": hashlib.sha256(data).hexdigest()})
    # The file ends with the last tensor's padding.
    assert path.stat().st_size == reader.data_offset + offset, (path.stat().st_size, offset)
    report["result"] = "ok: GGUFReader reads exactly the expected content"
    (DATA / "rust_written.python_check.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    print(f"{path}: OK (read by gguf-py GGUFReader); wrote rust_written.python_check.json")


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "all"
    if mode not in ("generate", "check", "all"):
        sys.exit(__doc__)
    if mode in ("generate", "all"):
        generate()
    if mode in ("check", "all"):
        check()
