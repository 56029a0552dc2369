#!/usr/bin/env bash
# CUDA device check (issue #9): builds with --features cuda, runs every CUDA test on the GPU (each
# kernel against the CPU reference; the device-side language model (runtime/src/cuda/) against
# the CPU forward on models/tiny; partial offload, the vision tower and the whole image → logits
# pipeline against the CPU on the miniature fixtures: tests/cuda_backend.rs), then the kernel
# benchmark at full TinyGPT-V sizes (Phi-2 decode GEMVs / pp512 GEMMs for Q4_0, Q8_0, Q4_K,
# Q6_K; attention for the 448 ViT and the f16 KV cache; EVA ViT-g matmuls at 224 and 448), then
# `tinygptv bench --device cuda` on full-size random-weight models (`tinygptv synth`): pp512 /
# tg128 for Q4_0 and Q8_0, the image encode at 224 and 448, a partial offload, and one
# `tinygptv run` (image + question: encode, prompt and decode times), and prints one summary.
# Budget: under 8 minutes on one H100 including the build (the run itself takes 2-4 minutes;
# the synthetic models need ~5 GB of disk under CUDA_CHECK_MODELS, default a temporary folder).
# CUDA_CHECK_SKIP_CLI=1 skips the `tinygptv bench` part.
#
# Usage:
#   scripts/cuda-check.sh               build here and run (a GPU machine with Rust)
#   scripts/cuda-check.sh --prepare     build only, into target-cudacheck/ (ignored by git;
#                                       for GPU machines without Rust: carry that folder)
#   scripts/cuda-check.sh --prebuilt    run the binary --prepare left in target-cudacheck/
#
# Environment: TINYGPTV_NVRTC_LIB (NVRTC library or folder; found automatically when unset),
# CUDA_CHECK_OUT (Markdown summary file; default $OUT/CUDA.md when $OUT is set, else
# bench/CUDA.md), CUDA_CHECK_MODELS (folder for the synthetic full-size models).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-build}
PREP=target-cudacheck
start=$(date +%s)

build() {
    local log=$PREP/build.log
    mkdir -p "$PREP"
    echo "== building tinygptv-kernels --features cuda (test binary; the test profile is optimized)"
    cargo test -p tinygptv-kernels --features cuda --lib --no-run 2>&1 | tee "$log"
    local exe
    exe=$(sed -n 's/.*Executable unittests src\/lib.rs (\(.*\))/\1/p' "$log" | tail -1)
    [ -n "$exe" ] && [ -f "$exe" ] || { echo "cuda-check: test binary not found in $log" >&2; exit 1; }
    # without debug info: ~2 MB to carry instead of ~30
    strip -o "$PREP/kernels-tests" "$exe" 2>/dev/null || cp "$exe" "$PREP/kernels-tests"
    echo "== test binary: $PREP/kernels-tests ($(du -h "$PREP/kernels-tests" | cut -f1))"
    rm -f "$PREP/runtime-tests"
    # the device-side model (runtime/src/cuda/), once runtime/src/lib.rs declares the module
    if grep -q 'pub mod cuda' runtime/src/lib.rs; then
        log=$PREP/build-runtime.log
        echo "== building tinygptv-runtime --features cuda (test binary)"
        cargo test -p tinygptv-runtime --features cuda --lib --no-run 2>&1 | tee "$log"
        exe=$(sed -n 's/.*Executable unittests src\/lib.rs (\(.*\))/\1/p' "$log" | tail -1)
        [ -n "$exe" ] && [ -f "$exe" ] || { echo "cuda-check: runtime test binary not found in $log" >&2; exit 1; }
        strip -o "$PREP/runtime-tests" "$exe" 2>/dev/null || cp "$exe" "$PREP/runtime-tests"
    fi
    # the CLI (`tinygptv bench/run --device cuda`) and its device tests (tests/cuda_backend.rs);
    # the test profile is optimized, and the binary is the one the integration test runs
    log=$PREP/build-cli.log
    echo "== building tinygptv --features cuda (CLI + tests/cuda_backend.rs)"
    cargo test -p tinygptv --features cuda --test cuda_backend --no-run 2>&1 | tee "$log"
    exe=$(sed -n 's/.*Executable tests\/cuda_backend.rs (\(.*\))/\1/p' "$log" | tail -1)
    [ -n "$exe" ] && [ -f "$exe" ] || { echo "cuda-check: tests/cuda_backend.rs binary not found in $log" >&2; exit 1; }
    strip -o "$PREP/cuda-backend-tests" "$exe" 2>/dev/null || cp "$exe" "$PREP/cuda-backend-tests"
    local bin
    bin=$(dirname "$(dirname "$exe")")/tinygptv
    [ -f "$bin" ] || { echo "cuda-check: $bin not built" >&2; exit 1; }
    strip -o "$PREP/tinygptv" "$bin" 2>/dev/null || cp "$bin" "$PREP/tinygptv"
    echo "== CLI: $PREP/tinygptv ($(du -h "$PREP/tinygptv" | cut -f1))"
}

# `tinygptv bench --device cuda` on full-size random-weight models; appends Markdown to $1.
cli_bench() {
    local md=$1 bin=$PREP/tinygptv
    local dir=${CUDA_CHECK_MODELS:-}
    local own_dir=0
    if [ -z "$dir" ]; then dir=$(mktemp -d); own_dir=1; fi
    mkdir -p "$dir"
    local rc=0
    synth() { # arch type out [mmproj-out]
        [ -f "$3" ] && return 0
        echo "== tinygptv synth --arch $1 --type $2 ($(basename "$3"))"
        "$bin" synth --arch "$1" --type "$2" --out "$3" ${4:+--mmproj-out "$4"} >/dev/null
    }
    section() { # title, command...
        local title=$1
        shift
        echo "== $title: $*"
        {
            echo
            echo "### $title"
            echo
            echo '```'
            echo "\$ tinygptv $*" | sed "s#$dir/##g"
        } >>"$md"
        if timeout 240 "$bin" "$@" 2>&1 | tee -a "$md"; then :; else rc=1; echo "(failed)" >>"$md"; fi
        echo '```' >>"$md"
    }
    {
        echo
        echo "## tinygptv --device cuda (full-size random-weight models)"
    } >>"$md"
    if synth tinygptv-stage3 q4_0 "$dir/s3-q4_0.gguf" "$dir/s3-vision-q4_0.gguf" \
        && synth tinygptv-stage3 q8_0 "$dir/s3-q8_0.gguf" \
        && synth tinygptv-stage4 q4_0 "$dir/s4-q4_0.gguf" "$dir/s4-vision-q4_0.gguf"; then
        section "Q4_0: pp512, tg128, image 224" bench --device cuda -m "$dir/s3-q4_0.gguf" \
            -p 512 -n 128 -r 3 --mmproj "$dir/s3-vision-q4_0.gguf"
        section "Q8_0: pp512, tg128" bench --device cuda -m "$dir/s3-q8_0.gguf" -p 512 -n 128 -r 3
        section "image 448 (stage 4, Q4_0)" bench --device cuda -m "$dir/s4-q4_0.gguf" -p 0 -n 0 -r 3 \
            --mmproj "$dir/s4-vision-q4_0.gguf"
        section "partial offload: Q4_0, 16 of 32 layers on the GPU" bench --device cuda --gpu-layers 16 \
            -m "$dir/s3-q4_0.gguf" -p 128 -n 32 -r 1
        section "image + question → answer (Q4_0, stage 3; timings in JSON)" run --device cuda \
            -m "$dir/s3-q4_0.gguf" --mmproj "$dir/s3-vision-q4_0.gguf" --image models/tiny/example.png \
            -p "Describe the image." -n 64 --temp 0 --json
    else
        rc=1
        echo "(tinygptv synth failed)" >>"$md"
    fi
    if [ "$own_dir" = 1 ]; then rm -rf "$dir"; fi
    return $rc
}

find_nvrtc() {
    [ -n "${TINYGPTV_NVRTC_LIB:-}" ] && return 0
    local d
    # the toolkit's NVRTC matches the driver's CUDA version best; then any pip wheel
    for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
        if ls "$d"/libnvrtc.so* >/dev/null 2>&1; then export TINYGPTV_NVRTC_LIB=$d; return 0; fi
    done
    local f
    f=$(find / -xdev \( -path /proc -o -path /sys \) -prune -o -name 'libnvrtc.so*' -print 2>/dev/null \
        | grep -v builtins | head -1 || true)
    if [ -n "$f" ]; then export TINYGPTV_NVRTC_LIB=$f; fi
}

run() {
    local bin=$1
    local out=${CUDA_CHECK_OUT:-${OUT:+$OUT/CUDA.md}}
    out=${out:-bench/CUDA.md}
    local logdir
    logdir=$(mktemp -d)
    find_nvrtc
    export TINYGPTV_REQUIRE_CUDA=1 TINYGPTV_REQUIRE_NVRTC=1 TINYGPTV_CUDA_EMU=off
    # a fresh module cache, so the compile time is measured once (and then reused by the bench)
    TINYGPTV_CUDA_CACHE=$(mktemp -d)
    export TINYGPTV_CUDA_CACHE
    echo "== GPU"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.memory --format=csv 2>&1 || true
    echo "== NVRTC: ${TINYGPTV_NVRTC_LIB:-<loader search>}"

    echo "== CUDA tests (every kernel against the CPU reference)"
    set +e
    timeout 300 "$bin" cuda:: --test-threads=4 2>&1 | tee "$logdir/tests.log"
    local test_rc=${PIPESTATUS[0]}
    if [ -x "$PREP/runtime-tests" ]; then
        echo "== device-side model tests (CudaPhi2 against the CPU forward on models/tiny)"
        TINYGPTV_TINY_MODEL=$PWD/models/tiny/tinygptv-stage3-f16.gguf timeout 300 "$PREP/runtime-tests" cuda:: --nocapture 2>&1 \
            | tee -a "$logdir/tests.log"
        [ "${PIPESTATUS[0]}" = 0 ] || test_rc=1
    fi
    if [ -x "$PREP/cuda-backend-tests" ]; then
        echo "== partial offload, vision tower, image → logits pipeline against the CPU (tests/cuda_backend.rs)"
        TINYGPTV_SOURCE_DIR=$PWD timeout 300 "$PREP/cuda-backend-tests" --test-threads=1 --nocapture 2>&1 \
            | tee -a "$logdir/tests.log"
        [ "${PIPESTATUS[0]}" = 0 ] || test_rc=1
    fi
    echo "== kernel benchmark"
    TINYGPTV_CUDA_BENCH_OUT="$logdir/bench.md" timeout 300 "$bin" cuda::bench::cuda_bench --ignored --nocapture 2>&1 \
        | tee "$logdir/bench.log"
    local bench_rc=${PIPESTATUS[0]}
    local cli_rc=0
    : >"$logdir/cli.md"
    if [ -x "$PREP/tinygptv" ] && [ "${CUDA_CHECK_SKIP_CLI:-0}" != 1 ]; then
        echo "== tinygptv bench --device cuda"
        cli_bench "$logdir/cli.md" || cli_rc=1
    fi
    set -e

    {
        echo "<!-- scripts/cuda-check.sh, $(date -u +%Y-%m-%dT%H:%MZ) -->"
        if [ -f "$logdir/bench.md" ]; then cat "$logdir/bench.md"; else echo "(benchmark failed: exit $bench_rc)"; fi
        cat "$logdir/cli.md"
        echo
        echo "## Tests"
        echo
        echo '```'
        grep -E -A1 '^test result|FAILED|panicked|Δlogit|max \|Δ\||cosine to' "$logdir/tests.log" | head -90 || true
        echo '```'
    } >"$logdir/summary.md"
    mkdir -p "$(dirname "$out")"
    cp "$logdir/summary.md" "$out"
    if [ -n "${OUT:-}" ]; then cp "$logdir/tests.log" "$logdir/bench.log" "$logdir/cli.md" "$OUT/" 2>/dev/null || true; fi

    echo
    echo "================ CUDA CHECK SUMMARY ================"
    cat "$logdir/summary.md"
    echo "tests exit $test_rc, benchmark exit $bench_rc, CLI bench exit $cli_rc, $(($(date +%s) - start)) s in all; summary in $out"
    [ "$test_rc" = 0 ] && [ "$bench_rc" = 0 ] && [ "$cli_rc" = 0 ]
}

case $mode in
    --prepare) build ;;
    --prebuilt)
        [ -x "$PREP/kernels-tests" ] || { echo "cuda-check: run scripts/cuda-check.sh --prepare first" >&2; exit 1; }
        run "$PREP/kernels-tests"
        ;;
    build)
        build
        run "$PREP/kernels-tests"
        ;;
    *)
        echo "usage: scripts/cuda-check.sh [--prepare | --prebuilt]" >&2
        exit 2
        ;;
esac
