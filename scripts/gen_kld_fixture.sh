#!/usr/bin/env bash
# Regenerates tests/fixtures/kld/: a `.kld` base-logits file written by llama.cpp's own
# `llama-perplexity --kl-divergence-base`, plus the numbers `llama-perplexity --kl-divergence`
# printed for our q8_0 / q4_0 conversions against it (issue #8: `.kld` interoperability).
# tests/compare_cli.rs checks that `tinygptv compare --base-logits` on that file reproduces them.
#
# Usage: scripts/gen_kld_fixture.sh [path/to/tinygptv]   (default: target/release/tinygptv)
#
# Needs llama.cpp's tools built in $LLAMA_BUILD (default /work/llama-build; CI has none):
#   the llama.cpp source vendored by the crate llama-cpp-sys-2 0.1.161 (copied out of the cargo
#   registry), whose tools/ folders hold only READMEs, plus tools/{perplexity,quantize,llama-bench}
#   taken from the llama-cpp-python 0.3.36 sdist on PyPI (`pip download --no-binary :all:`), with
#   tools/CMakeLists.txt cut down to those three and a `common_log_flush` added at the end of
#   tools/perplexity/main.cpp (without it the last lines of output are sometimes lost). Built with
#   cmake -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON \
#     -DGGML_AVX512_BF16=ON -DGGML_AVX512_VBMI=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
#     -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF
#   cmake --build . -j2 --target llama-perplexity llama-quantize llama-bench
#
# The model is the miniature stock-phi2 fixture (random weights, 1280-token vocabulary) converted
# by our converter; the text is bench/compare/sample.txt; 6 chunks of 64 tokens (-b 64: one chunk
# per batch, as our compare evaluates them). Output: ~480 KB.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$(realpath "${1:-$ROOT/target/release/tinygptv}")
LLAMA_BIN=${LLAMA_BUILD:-/work/llama-build}/bin
PPL=$LLAMA_BIN/llama-perplexity
[ -x "$PPL" ] || { echo "no llama-perplexity in $LLAMA_BIN (set LLAMA_BUILD)" >&2; exit 1; }
OUT=$ROOT/tests/fixtures/kld
KLD=$OUT/phi2-mini-f32-c64.kld
CTX=64
CHUNKS=6
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$OUT"
cp "$ROOT/bench/compare/sample.txt" "$OUT/sample.txt"

F=$ROOT/tests/fixtures/phi2-safetensors
"$BIN" convert --phi2 "$F" --type f32 --out "$TMP/f32.gguf" -t 2 >/dev/null 2>&1
for ty in q8_0 q4_0; do
  "$BIN" convert --phi2 "$F" --type $ty --pure --out "$TMP/$ty.gguf" -t 2 >/dev/null 2>&1
done

# 1) base run: F32 perplexity + the .kld file
"$PPL" -m "$TMP/f32.gguf" -f "$OUT/sample.txt" -c $CTX -b $CTX --chunks $CHUNKS -t 2 \
  --kl-divergence-base "$KLD" >"$TMP/base.log" 2>&1
base_ppl=$(sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p' "$TMP/base.log")

# 2) each quantized file against it; the "name : value" lines of the final report
stat_of() { # LOG LABEL -> first number after the label's colon
  grep -F "$2" "$1" | head -1 | sed 's/^[^:]*: *//' | awk '{print $1}' | tr -d '%'
}
{
  echo "{"
  echo "  \"llama_cpp\": \"$("$PPL" --version 2>&1 | head -1 | sed 's/"/'"'"'/g'); llama-cpp-sys-2 0.1.161 sources, tools from llama-cpp-python 0.3.36\","
  echo "  \"text\": \"sample.txt\", \"n_ctx\": $CTX, \"n_chunk\": $CHUNKS,"
  echo "  \"base\": {\"model\": \"phi2-safetensors --type f32\", \"final_ppl\": $base_ppl},"
  sep=""
  for ty in q8_0 q4_0; do
    log=$TMP/$ty.log
    "$PPL" -m "$TMP/$ty.gguf" --kl-divergence-base "$KLD" --kl-divergence -b $CTX -t 2 >"$log" 2>&1
    grep -q "Same top p:" "$log" || { echo "llama-perplexity printed no summary for $ty" >&2; cat "$log" >&2; exit 1; }
    sed -n '/====== Perplexity statistics/,$p' "$log" | sed 's/^[0-9.]* [IWE] //' >"$OUT/llama-perplexity-$ty.txt"
    printf '%s  "%s": {"model": "phi2-safetensors --type %s --pure", "ppl": %s, "ppl_base": %s, "kld_mean": %s, "kld_err": %s, "kld_p99": %s, "kld_max": %s, "kld_median": %s, "rms_dp_percent": %s, "same_top_p_percent": %s}' \
      "$sep" "$ty" "$ty" \
      "$(stat_of "$log" 'Mean PPL(Q) ')" "$(stat_of "$log" 'Mean PPL(base)')" \
      "$(stat_of "$log" 'Mean    KLD')" \
      "$(grep -F 'Mean    KLD' "$log" | sed 's/.*± *//' | awk '{print $1}')" \
      "$(stat_of "$log" '99.0%   KLD')" "$(stat_of "$log" 'Maximum KLD')" \
      "$(stat_of "$log" 'Median  KLD')" "$(stat_of "$log" 'RMS Δp')" \
      "$(stat_of "$log" 'Same top p:')"
    sep=$',\n'
  done
  printf '\n}\n'
} >"$OUT/llama-perplexity.json"
cat "$OUT/llama-perplexity.json"

# 3) the other direction (printed, not stored): llama-perplexity reads a .kld written by us
"$BIN" compare --base "$TMP/f32.gguf" --text "$OUT/sample.txt" --ctx $CTX --chunks $CHUNKS \
  --save-base "$TMP/ours.kld" -t 2 -q >/dev/null
for ty in q8_0 q4_0; do
  echo "llama-perplexity on our .kld, $ty:"
  "$PPL" -m "$TMP/$ty.gguf" --kl-divergence-base "$TMP/ours.kld" --kl-divergence -b $CTX -t 2 2>&1 |
    grep -E 'Mean PPL|Mean    KLD|Same top p:' | sed 's/^[0-9.]* [IWE] /  /'
done
ls -l "$KLD"
