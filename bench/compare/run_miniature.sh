#!/usr/bin/env bash
# Reproduces bench/compare/miniature.{md,json,svg,png}: the `tinygptv compare` quantization
# sweep on the miniature fixtures (random weights; see README.md here). About 10 s.
# Usage: bench/compare/run_miniature.sh [path/to/tinygptv]   (default: target/release/tinygptv)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=$(realpath "${1:-$ROOT/target/release/tinygptv}")
OUT=$ROOT/bench/compare
F=$ROOT/tests/fixtures
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
cd "$TMP"
"$BIN" convert --phi2 "$F/phi2-safetensors" --type f16 --out miniature-lm-f16.gguf \
  --tinygptv "$F/checkpoints/tinygptv_stage3.pth" --eva "$F/checkpoints/eva_vit_g.pth" \
  --blip2 "$F/checkpoints/blip2_pretrained.pth" --mmproj-out miniature-mmproj-f16.gguf \
  --vision-heads 4 --qformer-heads 4 --image-size 28 >/dev/null 2>&1
cp -r "$F/images" images
cp "$OUT/sample.txt" sample.txt
ARGS=(compare --base miniature-lm-f16.gguf --mmproj-base miniature-mmproj-f16.gguf
  --quants q8_0,q6_k,q5_k,q4_k_m,q4_0 --text sample.txt --ctx 128
  --images images --prompt "What is in the image?" --answer-tokens 16
  --speed-pp 128 --speed-tg 32 --speed-reps 3 --keep-quants quants -t 2 -q)
"$BIN" "${ARGS[@]}" --plot miniature.svg --json-out "$OUT/miniature.json" > "$OUT/miniature.md"
cp miniature.svg miniature.png "$OUT/"
cat "$OUT/miniature.md"
