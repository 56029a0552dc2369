#!/usr/bin/env bash
# Reproduces bench/compare/full-size.{md,json,svg,png}: the `tinygptv compare` sweep on a
# full-size TinyGPT-V stage-3 model with RANDOM weights written by `tinygptv synth` (Phi-2
# 2.7B + EVA ViT-g/Q-Former tower). Needs ~20 GB of disk in WORK (default /tmp/tinygptv-full);
# about 25 min on 2 cores. Random weights do not predict real-model quality (README.md here).
# Usage: bench/compare/run_full_size.sh [path/to/tinygptv] [WORK]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=$(realpath "${1:-$ROOT/target/release/tinygptv}")
WORK=${2:-/tmp/tinygptv-full}
OUT=$ROOT/bench/compare
mkdir -p "$WORK/images"
cd "$WORK"
[ -f tinygptv-f16.gguf ] || "$BIN" synth --arch tinygptv-stage3 --type f16 --out tinygptv-f16.gguf --mmproj-out mmproj-f16.gguf
cp "$ROOT/tests/fixtures/images/photo_40x30.jpg" "$ROOT/tests/fixtures/images/rgb_37x23.png" images/
cp "$OUT/sample.txt" sample.txt
# --keep-quants reuses the quantized files of an earlier run
"$BIN" compare --base tinygptv-f16.gguf --mmproj-base mmproj-f16.gguf \
  --quants q8_0,q6_k,q5_k,q4_k_m,q4_0 --text sample.txt --ctx 256 --chunks 2 --images images \
  --speed-pp 32 --speed-tg 4 --speed-reps 1 --keep-quants quants -t 2 \
  --plot full-size.svg --json-out "$OUT/full-size.json" > "$OUT/full-size.md"
cp full-size.svg full-size.png "$OUT/"
cat "$OUT/full-size.md"
