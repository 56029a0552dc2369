#!/usr/bin/env bash
# Rebuilds models/tiny/ (the bundled random-weight demo model) from the committed miniature
# checkpoints in tests/fixtures/, with this project's own converter.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${TINYGPTV:-target/release/tinygptv}
[ -x "$bin" ] || cargo build --release
mkdir -p models/tiny
"$bin" convert --phi2 tests/fixtures/phi2-safetensors --tinygptv tests/fixtures/checkpoints/tinygptv_stage3.pth \
  --eva tests/fixtures/checkpoints/eva_vit_g.pth --blip2 tests/fixtures/checkpoints/blip2_pretrained.pth \
  --stage 3 --vision-heads 4 --qformer-heads 4 --type f16 \
  --out models/tiny/tinygptv-stage3-f16.gguf --mmproj-out models/tiny/tinygptv-stage3-vision-f16.gguf
cp tests/fixtures/images/rgb_37x23.png models/tiny/example.png
