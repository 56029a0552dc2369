#!/usr/bin/env bash
# Vision-tower benchmark (issue #5): full-size random-weight EVA ViT-g (39 blocks) + Q-Former +
# projections at 224 (stage 3) and 448 (stage 4), F16 / Q8_0 / Q4_0, N threads: seconds per
# image (best of REPS `embed-image` runs, the encode time the command reports) and peak RSS of
# the whole process; then PyTorch fp32 / bf16 on the same shapes in the same run
# (scripts/bench_vision_torch.py) when a Python with torch + transformers is given.
#
# usage: scripts/bench_vision.sh [--threads 2] [--reps 3] [--dir /tmp/tinygptv-vision]
#                                [--python /work/venv/bin/python] [--types f16,q8_0,q4_0]
# Needs a release build (cargo build --release) and ~8 GB of disk in --dir. Prints markdown.
set -euo pipefail
cd "$(dirname "$0")/.."

threads=2 reps=3 dir=/tmp/tinygptv-vision python="" types="f16,q8_0,q4_0"
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) threads=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --python) python=$2; shift 2 ;;
    --types) types=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
bin=${TINYGPTV_BIN:-target/release/tinygptv}
[ -x "$bin" ] || { echo "no release binary at $bin (cargo build --release)" >&2; exit 1; }
mkdir -p "$dir"
image=tests/fixtures/images/photo_40x30.jpg

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) CPUs; load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "tinygptv $(git rev-parse --short HEAD 2>/dev/null || echo '?'), threads $threads, best of $reps"
echo
echo "| engine | size | weights | file MiB | s/image (best) | s/image (mean) | peak RSS MiB |"
echo "|---|---:|---|---:|---:|---:|---:|"
IFS=, read -ra tys <<<"$types"
for stage in 3 4; do
  size=$([ $stage = 3 ] && echo 224 || echo 448)
  for ty in "${tys[@]}"; do
    vis="$dir/s$stage-vision-$ty.gguf"
    if [ ! -f "$vis" ]; then
      # synth writes the language model too; it is not needed here
      "$bin" synth --arch "tinygptv-stage$stage" --type "$ty" --out "$dir/lm-tmp.gguf" \
        --mmproj-out "$vis" -t "$threads" >/dev/null 2>&1
      rm -f "$dir/lm-tmp.gguf"
    fi
    best="" sum=0 rss=0
    for _ in $(seq "$reps"); do
      out=$( { /usr/bin/time -f 'RSS %M' "$bin" embed-image --mmproj "$vis" --image "$image" \
               --out "$dir/tokens.npy" -t "$threads"; } 2>&1 )
      ms=$(sed -n 's/.*image encode \([0-9]*\) ms.*/\1/p' <<<"$out")
      kb=$(sed -n 's/^RSS \([0-9]*\)$/\1/p' <<<"$out")
      [ -n "$ms" ] || { echo "embed-image failed: $out" >&2; exit 1; }
      sum=$((sum + ms)); [ "$kb" -gt "$rss" ] && rss=$kb
      if [ -z "$best" ] || [ "$ms" -lt "$best" ]; then best=$ms; fi
    done
    mib=$(( $(stat -c %s "$vis") >> 20 ))
    awk -v sz="$size" -v ty="$ty" -v mib="$mib" -v b="$best" -v s="$sum" -v n="$reps" -v r="$rss" \
      'BEGIN { printf "| tinygptv | %d | %s | %d | %.2f | %.2f | %d |\n", sz, ty, mib, b/1000, s/n/1000, r/1024 }'
  done
done
if [ -n "$python" ]; then
  tv=$("$python" -c 'import torch; print(torch.__version__)')
  for size in 224 448; do
    for dt in float32 bfloat16; do
      # one process per configuration, so the peak RSS is that configuration's
      "$python" scripts/bench_vision_torch.py --threads "$threads" --sizes "$size" --dtypes "$dt" \
          --reps "$reps" 2>/dev/null \
        | awk -F'|' -v tv="$tv" '/^\| [0-9]/ { gsub(/ /, "", $2); gsub(/ /, "", $3);
            printf "| PyTorch %s | %s | %s | | %s | %s | %s |\n", tv, $2, $3, $4, $5, $6 }'
    done
  done
fi
