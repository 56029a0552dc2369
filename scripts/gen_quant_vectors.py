#!/usr/bin/env python3
"""Generate the block-format test vectors under kernels/tests/data/quants/.

Run with the project venv:   /work/venv/bin/python scripts/gen_quant_vectors.py [--llama-cpp-dir DIR]
CI has no Python (and no C toolchain for llama.cpp): the outputs are committed and
kernels/tests/formats_vectors.rs reads them.

Where the expected numbers come from (independent of our Rust code):

* F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 — quantized AND dequantized by the Python `gguf` package
  (`gguf.quants.quantize` / `dequantize`, numpy, written to match ggml's `quantize_row_*_ref`).
* Q4_K, Q5_K, Q6_K — the Python package cannot quantize K-quants, so they are quantized by
  llama.cpp's own C reference (`quantize_row_q4_K_ref` etc. in ggml/src/ggml-quants.c), compiled
  unmodified from the llama.cpp sources vendored in the `llama-cpp-sys-2` crate (0.1.161, the
  version `llama-cpp-2` 0.1.160 pulls), through our small command-line driver
  scripts/quant_vectors/ggml_ref_driver.c (no ggml code in it). The expected dequantized values
  come from `gguf.quants.dequantize` (Python), so dequantization is checked against a second,
  independent implementation.
* Q8_1, Q8_K (activation-only types) — quantized by ggml's C reference through the driver;
  Q8_K dequantized by ggml's `dequantize_row_q8_K`, Q8_1 by numpy (`d * q`, ggml has no Q8_1
  dequantizer).
* Dot products — ggml's scalar kernels `ggml_vec_dot_*_generic` (ggml/src/ggml-cpu/quants.c)
  through the driver, for weights and activations quantized by ggml's reference.

As a cross-check, every type the Python package quantizes is also quantized (and dequantized) by
ggml's C reference, and the script stops if the two disagree on a single byte or bit.

The driver is compiled with plain `gcc -O2 -std=c11 -DNDEBUG` (no -march: no FMA contraction),
matching the separately-rounded arithmetic of ggml's portable reference code; NDEBUG as in
llama.cpp's release builds (ggml's `nearest_int` asserts |x| <= 2^22, which the subnormal-scale
scenario exceeds; release builds return the trick's deterministic value there).

F16 specials: numpy keeps NaN payload bits where ggml's converter returns 0x7E00 | sign, so the
expected F16 bytes of float_specials.f32 are ggml's (numpy is checked on the non-NaN values).

Outputs (raw little-endian arrays; sizes are recorded in manifest.json):
  inputs.f32               16384 f32, 64 super-blocks of 256 in many distributions (see make_inputs)
  <type>.quant             the quantized bytes of inputs.f32
  <type>.dequant.f32       the dequantized values of <type>.quant
  float_specials.f32       special values (inf, NaN, ties, subnormals) for F16 / BF16,
  f16_specials.quant, bf16_specials.quant (+ .dequant.f32)
  dot_weights.f32          8 rows x 1024, dot_acts.f32: 4 rows x 1024
  dot_<w>.weights          weights quantized to <w>; dot_acts_<a>.quant: activations in q8_0/q8_1/q8_K
  dot_<w>.f32              8 x 4 expected dot products (row-major [weight row][activation row])
"""

import argparse
import glob
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "kernels" / "tests" / "data" / "quants"
DRIVER_SRC = ROOT / "scripts" / "quant_vectors" / "ggml_ref_driver.c"

N_INPUTS = 16384  # 64 super-blocks of 256 = 512 blocks of 32
DOT_K = 1024
DOT_WEIGHT_ROWS = 8
DOT_ACT_ROWS = 4

# name -> (ggml type id, block elems, block bytes)
TYPES = {
    "f16": (1, 1, 2),
    "bf16": (30, 1, 2),
    "q4_0": (2, 32, 18),
    "q4_1": (3, 32, 20),
    "q5_0": (6, 32, 22),
    "q5_1": (7, 32, 24),
    "q8_0": (8, 32, 34),
    "q8_1": (9, 32, 36),
    "q4_K": (12, 256, 144),
    "q5_K": (13, 256, 176),
    "q6_K": (14, 256, 210),
    "q8_K": (15, 256, 292),
}
PY_QUANT = {"f16": T.F16, "bf16": T.BF16, "q4_0": T.Q4_0, "q4_1": T.Q4_1, "q5_0": T.Q5_0,
            "q5_1": T.Q5_1, "q8_0": T.Q8_0}
PY_DEQUANT = dict(PY_QUANT, q4_K=T.Q4_K, q5_K=T.Q5_K, q6_K=T.Q6_K)
DOT_PAIRS = {"q4_0": "q8_0", "q4_1": "q8_1", "q5_0": "q8_0", "q5_1": "q8_1", "q8_0": "q8_0",
             "q4_K": "q8_K", "q5_K": "q8_K", "q6_K": "q8_K"}


def f32(a):
    return np.asarray(a, dtype=np.float32)


def make_inputs(rng):
    """64 super-blocks of 256 values; each super-block is one scenario (index = comment)."""
    sbs = []

    def add(x):
        x = f32(x).reshape(-1)
        assert x.size == 256
        sbs.append(x)

    # 0-7: gaussian, per-32 sub-block scales varying over three decades (K-quant scale diversity)
    for _ in range(8):
        scales = np.repeat(10.0 ** rng.uniform(-2, 1, 8), 32)
        add(rng.standard_normal(256) * scales)
    # 8-11: plain gaussian, weight-like magnitudes
    for s in (1.0, 0.02, 0.1, 3.0):
        add(rng.standard_normal(256) * s)
    # 12-15: uniform: symmetric, all positive, all negative, positive with offset
    add(rng.uniform(-1, 1, 256))
    add(rng.uniform(0, 1, 256))
    add(rng.uniform(-2, -0.5, 256))
    add(rng.uniform(0.5, 3, 256))
    # 16-19: heavy tails and outliers
    add(rng.laplace(0, 0.5, 256))
    add(rng.standard_t(3, 256))
    x = rng.standard_normal(256) * 0.05
    x[rng.integers(0, 256, 8)] *= 200
    add(x)
    x = rng.standard_normal(256)
    x[::32] = rng.choice([-1, 1], 8) * 40
    add(x)
    # 20: all zero; 21: half of the 32-element sub-blocks zero
    add(np.zeros(256))
    x = rng.standard_normal(256)
    for j in (0, 3, 4, 6):
        x[32 * j: 32 * j + 32] = 0
    add(x)
    # 22: each 32-block all zero but one spike; 23: constant 32-blocks
    x = np.zeros(256)
    for j in range(8):
        x[32 * j + rng.integers(0, 32)] = rng.choice([-1, 1]) * 10.0 ** rng.uniform(-3, 3)
    add(x)
    add(np.repeat(f32([3.0, -2.5, 0.1, -0.001, 7.0, 1e-3, -40.0, 0.5]), 32))
    # 24-27: tiny scales (f16 scales subnormal / flushed to zero)
    for s in (1e-5, 1e-8, 1e-30, 1e-39):
        add(rng.standard_normal(256) * s)
    # 28-31: large scales (f16 scales near and beyond 65504)
    for s in (1e3, 3e4, 1e5, 1e6):
        add(rng.standard_normal(256) * s)
    # 32-35: ties for Q8_0/Q8_1/Q8_K: element 0 of each 32-block is +-127*s, the others
    # (integer + 0.5)*s, so x/d lands exactly on .5 (s a power of two keeps it exact)
    for e in (0, -6, 3, -12):
        s = 2.0 ** e
        x = (rng.integers(-127, 127, 256) + 0.5) * s
        x[::32] = rng.choice([-1, 1], 8) * 127 * s
        add(x)
    # 36-37: ties for Q4_0 (max +-8*s, others k/2*s); 38-39: ties for Q5_0 (max +-16*s)
    for nmax in (8, 8, 16, 16):
        s = 2.0 ** rng.integers(-8, 4)
        x = rng.integers(-2 * nmax, 2 * nmax + 1, 256) / 2.0 * s
        x[::32] = rng.choice([-1, 1], 8) * nmax * s
        add(x)
    # 40-43: ties for Q4_1 / Q5_1: min 0, max 15*s or 31*s, others (k + 0.5)*s
    for nmax in (15, 15, 31, 31):
        s = 2.0 ** rng.integers(-8, 4)
        x = (rng.integers(0, nmax, 256) + 0.5) * s
        x[::32] = 0
        x[1::32] = nmax * s
        add(x)
    # 44-47: small integer grids (exact K-quant representations, many ties in the searches)
    for hi in (1, 3, 15, 31):
        add(rng.integers(-hi, hi + 1, 256).astype(np.float64))
    # 48-51: sub-block scales over six decades (many 6-bit sub-scales round to 0)
    for _ in range(4):
        scales = np.repeat(10.0 ** rng.uniform(-3, 3, 8), 32)
        add(rng.standard_normal(256) * scales)
    # 52-55: Q6_K-style 16-element groups with widely varying scales, some groups zero
    for _ in range(4):
        scales = np.repeat(10.0 ** rng.uniform(-2, 2, 16), 16)
        scales[rng.integers(0, 16, 3)] = 0
        add(rng.standard_normal(256) * scales)
    # 56-59: sparse (exact zeros sprinkled) and near-duplicate values
    for _ in range(2):
        x = rng.standard_normal(256)
        x[rng.random(256) < 0.5] = 0
        add(x)
    add(1.0 + rng.standard_normal(256) * 1e-6)
    add(-1.0 + rng.standard_normal(256) * 1e-4)
    # 60-63: more gaussian / mixed signs per sub-block
    for _ in range(4):
        x = rng.standard_normal(256) * 0.5
        x += np.repeat(rng.uniform(-1, 1, 8), 32)
        add(x)

    x = np.concatenate(sbs)
    assert x.size == N_INPUTS, x.size
    return f32(x)


def make_float_specials():
    inf, nan = np.inf, np.nan
    v = [0.0, -0.0, inf, -inf, nan, -nan, 1.0, -1.0,
         65504.0, 65519.0, 65520.0, 65536.0, -65520.0, 1e6, 3.4e38, -3.4e38,
         2.0 ** -14, 2.0 ** -24, 2.0 ** -25, 2.0 ** -26, 3 * 2.0 ** -26, 2.0 ** -25 * 1.0000001,
         1 + 2.0 ** -11, 1 + 3 * 2.0 ** -11, 1 + 2.0 ** -8, 1 + 3 * 2.0 ** -8,
         -(1 + 2.0 ** -8), 1 + 2.0 ** -8 + 2.0 ** -20, 1e-40, -1e-45, 1e-39, 3.3895314e38,
         3.3961775e38, 0.1, 1 / 3, 2 / 3, np.pi, -np.e]
    bits = [0x7F800001, 0x7FC00001, 0xFF812345, 0x7FBFFFFF, 0x7F7FFFFF, 0x00000001, 0x807FFFFF,
            0x3F808000, 0x3F818000, 0x3F80FFFF, 0x477FF000, 0x477FEFFF]
    x = f32(v)
    x = np.concatenate([x, np.array(bits, dtype=np.uint32).view(np.float32)])
    rng = np.random.default_rng(7)
    # random bit patterns (finite, no NaN) to pad to 256
    pad = rng.integers(0, 2 ** 32, 256 - x.size, dtype=np.uint64).astype(np.uint32)
    pad = pad.view(np.float32)
    pad = np.where(np.isfinite(pad), pad, f32(1.5))
    return f32(np.concatenate([x, pad]))


def find_llama_cpp(arg):
    if arg:
        return Path(arg)
    pattern = os.path.expanduser("~/.cargo/registry/src/*/llama-cpp-sys-2-0.1.161/llama.cpp")
    hits = sorted(glob.glob(pattern))
    if not hits:
        sys.exit("llama.cpp sources not found; fetch them with a cargo project depending on "
                 "llama-cpp-sys-2 = \"=0.1.161\" (cargo fetch), or pass --llama-cpp-dir")
    return Path(hits[-1])


def build_driver(ll, tmp):
    exe = tmp / "ggml_ref_driver"
    cmd = ["gcc", "-O2", "-std=c11", "-DNDEBUG", "-w",
           f"-I{ll}/ggml/include", f"-I{ll}/ggml/src", f"-I{ll}/ggml/src/ggml-cpu",
           str(DRIVER_SRC), f"{ll}/ggml/src/ggml-quants.c", f"{ll}/ggml/src/ggml-cpu/quants.c",
           "-lm", "-o", str(exe)]
    subprocess.run(cmd, check=True)
    return exe


class Driver:
    def __init__(self, exe, tmp):
        self.exe, self.tmp = exe, tmp

    def _run(self, *args):
        subprocess.run([str(self.exe), *map(str, args)], check=True)

    def quant(self, name, x):
        src, dst = self.tmp / "in.f32", self.tmp / "out.bin"
        f32(x).tofile(src)
        self._run("quant", name, src, dst)
        return np.fromfile(dst, dtype=np.uint8)

    def dequant(self, name, q):
        src, dst = self.tmp / "in.bin", self.tmp / "out.f32"
        np.asarray(q, dtype=np.uint8).tofile(src)
        self._run("dequant", name, src, dst)
        return np.fromfile(dst, dtype=np.float32)

    def dot(self, name, w, rows, a, acts, k):
        wp, ap, op = self.tmp / "w.bin", self.tmp / "a.bin", self.tmp / "dot.f32"
        w.tofile(wp)
        a.tofile(ap)
        self._run("dot", name, wp, rows, ap, acts, k, op)
        return np.fromfile(op, dtype=np.float32)


def py_quant(name, x):
    return quants.quantize(f32(x).reshape(1, -1), PY_QUANT[name]).view(np.uint8).reshape(-1)


def py_dequant(name, q):
    bs, ts = TYPES[name][1], TYPES[name][2]
    q = np.asarray(q, dtype=np.uint8).reshape(1, -1)
    if name == "f16":
        return q.view(np.float16).astype(np.float32).reshape(-1)
    return f32(quants.dequantize(q, PY_DEQUANT[name])).reshape(-1)


def q8_1_dequant(q):
    """Q8_1 block: d f16, s f16, qs i8[32]; value = d * q (ggml has no Q8_1 dequantizer)."""
    b = np.asarray(q, dtype=np.uint8).reshape(-1, 36)
    d = b[:, 0:2].copy().view(np.float16).astype(np.float32)
    qs = b[:, 4:].copy().view(np.int8).astype(np.float32)
    return f32(qs * d).reshape(-1)


def same_bits(a, b):
    a, b = f32(a), f32(b)
    if a.shape != b.shape:
        return False
    both_nan = np.isnan(a) & np.isnan(b)
    return bool(np.all(both_nan | (a.view(np.uint32) == b.view(np.uint32))))


def check_equal(what, a, b):
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype == np.float32:
        ok = same_bits(a, b)
    else:
        ok = a.shape == b.shape and bool(np.all(a == b))
    if not ok:
        if a.shape == b.shape:
            bad = np.nonzero(a.view(np.uint8) != b.view(np.uint8))[0] if a.dtype != np.float32 \
                else np.nonzero(~((np.isnan(a) & np.isnan(b)) | (a.view(np.uint32) == b.view(np.uint32))))[0]
            sys.exit(f"MISMATCH {what}: {bad.size} differing entries, first at {bad[:10]}")
        sys.exit(f"MISMATCH {what}: shapes {a.shape} vs {b.shape}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--llama-cpp-dir", help="llama.cpp source root (default: the llama-cpp-sys-2 "
                    "0.1.161 crate in ~/.cargo/registry)")
    args = ap.parse_args()
    ll = find_llama_cpp(args.llama_cpp_dir)

    rng = np.random.default_rng(20240611)
    inputs = make_inputs(rng)
    specials = make_float_specials()

    tmp = Path(tempfile.mkdtemp(prefix="quant_vectors_"))
    try:
        drv = Driver(build_driver(ll, tmp), tmp)
        OUT.mkdir(parents=True, exist_ok=True)
        for old in OUT.iterdir():  # stale vectors; README.md is hand-written
            if old.name != "README.md":
                old.unlink()
        manifest = {
            "generator": "scripts/gen_quant_vectors.py",
            "gguf_py_version": importlib.metadata.version("gguf"),
            "llama_cpp": str(ll).split("/registry/src/")[-1].split("/", 1)[-1],
            "n_inputs": N_INPUTS,
            "types": {},
        }
        inputs.tofile(OUT / "inputs.f32")
        specials.tofile(OUT / "float_specials.f32")

        for name, (tid, bs, ts) in TYPES.items():
            c_q = drv.quant(name, inputs)
            if name in PY_QUANT:
                q = py_quant(name, inputs)
                check_equal(f"{name} quantize: gguf-py vs ggml C", q, c_q)
                qsrc = "gguf-py quants.quantize (== ggml C reference)"
            else:
                q = c_q
                qsrc = f"ggml C quantize_row_{name}_ref"
            assert q.size == N_INPUTS // bs * ts
            if name in PY_DEQUANT:
                deq = py_dequant(name, q)
                check_equal(f"{name} dequantize: gguf-py vs ggml C", deq, drv.dequant(name, q))
                dsrc = "gguf-py quants.dequantize (== ggml C dequantize_row)"
            elif name == "q8_K":
                deq = drv.dequant(name, q)
                dsrc = "ggml C dequantize_row_q8_K"
            else:
                deq = q8_1_dequant(q)
                dsrc = "numpy d*q"
            q.tofile(OUT / f"{name}.quant")
            deq.tofile(OUT / f"{name}.dequant.f32")
            entry = {"id": tid, "block_elems": bs, "block_bytes": ts, "quant": f"{name}.quant",
                     "dequant": f"{name}.dequant.f32", "quant_source": qsrc,
                     "dequant_source": dsrc}
            if name in ("f16", "bf16"):
                sq = py_quant(name, specials)
                c_sq = drv.quant(name, specials)
                if name == "bf16":
                    check_equal("bf16 specials: gguf-py vs ggml C", sq, c_sq)
                else:
                    # numpy and ggml's portable fp16 converter agree except for NaN: numpy keeps
                    # payload bits, ggml returns 0x7E00 | sign. ggml's bytes are the reference.
                    fin = ~np.isnan(specials)
                    check_equal("f16 specials (non-NaN): numpy vs ggml C",
                                sq.view(np.uint16)[fin], c_sq.view(np.uint16)[fin])
                    sq = c_sq
                sdeq = py_dequant(name, sq)
                sq.tofile(OUT / f"{name}_specials.quant")
                sdeq.tofile(OUT / f"{name}_specials.dequant.f32")
                entry["specials_quant"] = f"{name}_specials.quant"
                entry["specials_dequant"] = f"{name}_specials.dequant.f32"
            manifest["types"][name] = entry

        # dot products: ggml's generic scalar kernels on ggml-quantized weights and activations
        drng = np.random.default_rng(99)
        w_rows = []
        for r in range(DOT_WEIGHT_ROWS):
            scales = np.repeat(10.0 ** drng.uniform(-1.5, 0.5, DOT_K // 32), 32)
            row = drng.standard_normal(DOT_K) * scales * 0.05
            if r % 3 == 1:
                row += np.repeat(drng.uniform(-0.05, 0.05, DOT_K // 32), 32)
            if r == 5:
                row[64:128] = 0
            w_rows.append(row)
        weights = f32(np.concatenate(w_rows))
        acts = f32(np.concatenate([
            drng.standard_normal(DOT_K),
            drng.uniform(-3, 3, DOT_K),
            drng.laplace(0, 1, DOT_K) * np.repeat(10.0 ** drng.uniform(-1, 1, DOT_K // 256), 256),
            np.where(drng.random(DOT_K) < 0.3, 0, drng.standard_normal(DOT_K) * 4),
        ]))
        weights.tofile(OUT / "dot_weights.f32")
        acts.tofile(OUT / "dot_acts.f32")
        act_q = {}
        for a in ("q8_0", "q8_1", "q8_K"):
            act_q[a] = drv.quant(a, acts)
            act_q[a].tofile(OUT / f"dot_acts_{a}.quant")
        manifest["dot"] = {"k": DOT_K, "weight_rows": DOT_WEIGHT_ROWS, "act_rows": DOT_ACT_ROWS,
                           "weights": "dot_weights.f32", "acts": "dot_acts.f32",
                           "acts_quant": {a: f"dot_acts_{a}.quant" for a in act_q},
                           "source": "ggml C ggml_vec_dot_<w>_<a>_generic", "cases": {}}
        for w, a in DOT_PAIRS.items():
            wq = drv.quant(w, weights)
            res = drv.dot(w, wq, DOT_WEIGHT_ROWS, act_q[a], DOT_ACT_ROWS, DOT_K)
            wq.tofile(OUT / f"dot_{w}.weights")
            res.tofile(OUT / f"dot_{w}.f32")
            manifest["dot"]["cases"][w] = {"act_type": a, "weights": f"dot_{w}.weights",
                                           "expected": f"dot_{w}.f32"}

        with open(OUT / "manifest.json", "w") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
            f.write("\n")
        total = sum(p.stat().st_size for p in OUT.iterdir())  # README included
        print(f"wrote {len(list(OUT.iterdir()))} files, {total / 1024:.0f} KiB, to {OUT}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
