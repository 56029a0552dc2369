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
# the synthetic models need ~5 GB of disk under CUDA_CHECK_MODELS, default a temporary folder,
# and are made in the background while the tests run). Each test runs in its own process
# (CUDA_CHECK_TEST_TIMEOUT s each, default 60; none starts after CUDA_CHECK_TEST_DEADLINE s,
# default 240); a test that fails with a CUDA error is rerun
# under compute-sanitizer when it is installed (CUDA_CHECK_SANITIZE runs at most, default 3).
# The CLI sections stop once CUDA_CHECK_DEADLINE seconds have passed (default 420), each
# limited to CUDA_CHECK_STEP_TIMEOUT s (default 90). CUDA_CHECK_SKIP_CLI=1 skips that part.
# On the lent machine ($OUT set) every log is written straight to $OUT.
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
    # the CLI for the timings: a release build (the test profile keeps debug assertions)
    log=$PREP/build-release.log
    echo "== building tinygptv --features cuda --release (the CLI the benchmarks run)"
    cargo build -p tinygptv --features cuda --release 2>&1 | tee "$log"
    local bin
    bin=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/release/tinygptv
    [ -f "$bin" ] || { echo "cuda-check: $bin not built" >&2; exit 1; }
    strip -o "$PREP/tinygptv" "$bin" 2>/dev/null || cp "$bin" "$PREP/tinygptv"
    echo "== CLI: $PREP/tinygptv ($(du -h "$PREP/tinygptv" | cut -f1))"
}

# Compresses what build() left, so the folder fits beside the working tree when it is carried
# to a GPU machine (--prepare).
pack() {
    rm -f "$PREP"/*.xz
    xz -T0 -6 "$PREP/kernels-tests" "$PREP/cuda-backend-tests" "$PREP/tinygptv"
    if [ -f "$PREP/runtime-tests" ]; then xz -T0 -6 "$PREP/runtime-tests"; fi
    echo "== $PREP: $(du -ch "$PREP"/*.xz | tail -1 | cut -f1) compressed"
}

# Unpacks what --prepare left (xz, or Python's lzma where xz is missing), for --prebuilt.
unpack() {
    local f
    for f in "$PREP"/*.xz; do
        [ -e "$f" ] || continue
        if command -v xz >/dev/null; then xz -dkf "$f"; else
            python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[1][:-3], "wb"))' "$f"
        fi
        chmod +x "${f%.xz}"
    done
}

# Starts `tinygptv synth` of the full-size random-weight models in the background (they take
# CPU time only, so they overlap the GPU tests); `wait_models` waits for them.
MODELS_DIR=
SYNTH_PID=
start_models() {
    local bin=$PREP/tinygptv
    [ -x "$bin" ] && [ "${CUDA_CHECK_SKIP_CLI:-0}" != 1 ] || return 0
    MODELS_DIR=${CUDA_CHECK_MODELS:-$(mktemp -d)}
    mkdir -p "$MODELS_DIR"
    (
        synth() { # arch type out [mmproj-out]
            [ -f "$3" ] && return 0
            "$bin" synth --arch "$1" --type "$2" --out "$3" ${4:+--mmproj-out "$4"} >/dev/null
        }
        synth tinygptv-stage3 q4_0 "$MODELS_DIR/s3-q4_0.gguf" "$MODELS_DIR/s3-vision-q4_0.gguf" \
            && synth tinygptv-stage3 q8_0 "$MODELS_DIR/s3-q8_0.gguf" \
            && synth tinygptv-stage4 q4_0 "$MODELS_DIR/s4-q4_0.gguf" "$MODELS_DIR/s4-vision-q4_0.gguf"
    ) >"$MODELS_DIR/synth.log" 2>&1 &
    SYNTH_PID=$!
}

# `tinygptv bench --device cuda` on the full-size random-weight models; appends Markdown to $1.
# Sections are skipped once the deadline ($2, seconds since the start) has passed.
cli_bench() {
    local md=$1 deadline=$2 bin=$PREP/tinygptv dir=$MODELS_DIR
    local rc=0
    section() { # title, command...
        local title=$1
        shift
        if [ $(($(date +%s) - start)) -gt "$deadline" ]; then
            echo "== $title: skipped (past the ${deadline} s deadline)"
            printf '\n### %s\n\n(skipped: past the %s s deadline)\n' "$title" "$deadline" >>"$md"
            rc=1
            return
        fi
        echo "== $title: $*"
        {
            echo
            echo "### $title"
            echo
            echo '```'
            echo "\$ tinygptv $*" | sed "s#$dir/##g"
        } >>"$md"
        timeout "${CUDA_CHECK_STEP_TIMEOUT:-90}" "$bin" "$@" 2>&1 | tee -a "$md"
        local code=${PIPESTATUS[0]}
        if [ "$code" != 0 ]; then
            rc=1
            echo "(failed: exit $code)" >>"$md"
        fi
        echo '```' >>"$md"
    }
    {
        echo
        echo "## tinygptv --device cuda (full-size random-weight models)"
    } >>"$md"
    echo "== waiting for tinygptv synth"
    if wait "$SYNTH_PID"; then
        section "Q4_0: pp512, tg128, image 224" bench --device cuda -m "$dir/s3-q4_0.gguf" \
            -p 512 -n 128 -r 3 --mmproj "$dir/s3-vision-q4_0.gguf"
        section "image + question → answer (Q4_0, stage 3; timings in JSON)" run --device cuda \
            -m "$dir/s3-q4_0.gguf" --mmproj "$dir/s3-vision-q4_0.gguf" --image models/tiny/example.png \
            -p "Describe the image." -n 64 --temp 0 --json
        section "Q8_0: pp512, tg128" bench --device cuda -m "$dir/s3-q8_0.gguf" -p 512 -n 128 -r 3
        section "image 448 (stage 4, Q4_0)" bench --device cuda -m "$dir/s4-q4_0.gguf" -p 0 -n 0 -r 3 \
            --mmproj "$dir/s4-vision-q4_0.gguf"
        section "partial offload: Q4_0, 16 of 32 layers on the GPU" bench --device cuda --gpu-layers 16 \
            -m "$dir/s3-q4_0.gguf" -p 128 -n 32 -r 1
    else
        rc=1
        echo "(tinygptv synth failed)" >>"$md"
        cat "$MODELS_DIR/synth.log" >>"$md"
    fi
    if [ -z "${CUDA_CHECK_MODELS:-}" ]; then rm -rf "$dir"; fi
    return $rc
}

# Runs each test of binary $1 matching filter $2 in its own process (a sticky CUDA fault in one
# test then cannot fail the ones after it), each under timeout $3 s; appends to $LOGDIR/tests.log
# and one result line per test to $LOGDIR/results.txt. A test that fails with a CUDA error is
# rerun once under compute-sanitizer (when installed; at most $SANITIZE_LEFT times in all).
SANITIZE_LEFT=${CUDA_CHECK_SANITIZE:-3}
run_tests() {
    local bin=$1 filter=$2 limit=$3 rc=0 name t0 code
    local names
    # not the #[ignore]d ones (the benchmark)
    names=$(comm -23 <("$bin" --list --format terse "$filter" 2>/dev/null | sed -n 's/: test$//p' | sort) \
        <("$bin" --list --format terse --ignored "$filter" 2>/dev/null | sed -n 's/: test$//p' | sort))
    if [ -z "$names" ]; then
        echo "no tests match '$filter' in $(basename "$bin")" | tee -a "$LOGDIR/tests.log"
        return 1
    fi
    for name in $names; do
        if [ $(($(date +%s) - start)) -gt "${CUDA_CHECK_TEST_DEADLINE:-240}" ]; then
            printf '%-10s %6s    %s %s\n' SKIPPED "-" "$(basename "$bin")" "$name" | tee -a "$LOGDIR/results.txt"
            rc=1
            continue
        fi
        t0=$(date +%s%N)
        echo "---- $(basename "$bin") $name" >>"$LOGDIR/tests.log"
        timeout "$limit" "$bin" --exact "$name" --nocapture --test-threads=1 >"$LOGDIR/one.log" 2>&1
        code=$?
        cat "$LOGDIR/one.log" >>"$LOGDIR/tests.log"
        local verdict=ok
        if [ "$code" = 124 ]; then verdict="TIMEOUT (${limit} s)"; elif [ "$code" != 0 ]; then verdict="FAILED (exit $code)"; fi
        printf '%-10s %6.1f s  %s %s\n' "${verdict%% *}" "$(awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')" \
            "$(basename "$bin")" "$name" | tee -a "$LOGDIR/results.txt"
        if [ "$code" != 0 ]; then
            rc=1
            grep -m3 -E 'panicked|CUDA_ERROR|error' "$LOGDIR/one.log" | cut -c1-300 | sed 's/^/    /' \
                | tee -a "$LOGDIR/results.txt"
            if [ "$SANITIZE_LEFT" -gt 0 ] && command -v compute-sanitizer >/dev/null \
                && grep -q 'CUDA_ERROR' "$LOGDIR/one.log"; then
                SANITIZE_LEFT=$((SANITIZE_LEFT - 1))
                echo "==== compute-sanitizer $(basename "$bin") $name" >>"$LOGDIR/sanitizer.log"
                timeout 120 compute-sanitizer --tool memcheck --print-limit 8 \
                    "$bin" --exact "$name" --nocapture --test-threads=1 2>&1 | head -c 60000 \
                    >>"$LOGDIR/sanitizer.log"
            fi
        fi
    done
    rm -f "$LOGDIR/one.log"
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
    # logs go straight to $OUT on the lent machine, so they come back even if the call is cut off
    LOGDIR=${OUT:-$(mktemp -d)}
    : >"$LOGDIR/tests.log"
    : >"$LOGDIR/results.txt"
    find_nvrtc
    export TINYGPTV_REQUIRE_CUDA=1 TINYGPTV_REQUIRE_NVRTC=1 TINYGPTV_CUDA_EMU=off
    # a fresh module cache, so the compile time is measured once (and then reused by the bench)
    TINYGPTV_CUDA_CACHE=$(mktemp -d)
    export TINYGPTV_CUDA_CACHE
    echo "== GPU"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.memory --format=csv 2>&1 || true
    echo "== NVRTC: ${TINYGPTV_NVRTC_LIB:-<loader search>}; CPU: $(nproc) × $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
    start_models

    echo "== CUDA tests, one process each (every kernel against the CPU reference)"
    set +e
    local test_rc=0
    run_tests "$bin" cuda:: "${CUDA_CHECK_TEST_TIMEOUT:-60}" || test_rc=1
    if [ -x "$PREP/runtime-tests" ]; then
        echo "== device-side model tests (CudaPhi2 against the CPU forward on models/tiny)"
        TINYGPTV_TINY_MODEL=$PWD/models/tiny/tinygptv-stage3-f16.gguf \
            run_tests "$PREP/runtime-tests" cuda:: "${CUDA_CHECK_TEST_TIMEOUT:-60}" || test_rc=1
    fi
    if [ -x "$PREP/cuda-backend-tests" ]; then
        echo "== partial offload, vision tower, image → logits pipeline against the CPU (tests/cuda_backend.rs)"
        TINYGPTV_SOURCE_DIR=$PWD run_tests "$PREP/cuda-backend-tests" device:: "${CUDA_CHECK_TEST_TIMEOUT:-60}" \
            || test_rc=1
    fi
    echo "== kernel benchmark"
    TINYGPTV_CUDA_BENCH_OUT="$LOGDIR/bench.md" timeout "${CUDA_CHECK_BENCH_TIMEOUT:-150}" "$bin" \
        cuda::bench::cuda_bench --ignored --nocapture 2>&1 | tee "$LOGDIR/bench.log"
    local bench_rc=${PIPESTATUS[0]}
    local cli_rc=0
    : >"$LOGDIR/cli.md"
    if [ -n "$SYNTH_PID" ]; then
        echo "== tinygptv bench --device cuda"
        cli_bench "$LOGDIR/cli.md" "${CUDA_CHECK_DEADLINE:-420}" || cli_rc=1
    fi
    set -e

    {
        echo "<!-- scripts/cuda-check.sh, $(date -u +%Y-%m-%dT%H:%MZ) -->"
        if [ -f "$LOGDIR/bench.md" ]; then cat "$LOGDIR/bench.md"; else echo "(benchmark failed: exit $bench_rc)"; fi
        cat "$LOGDIR/cli.md"
        echo
        echo "## Tests (each in its own process)"
        echo
        echo '```'
        cat "$LOGDIR/results.txt"
        grep -E 'Δlogit|max \|Δ\||cosine to' "$LOGDIR/tests.log" | head -60 || true
        echo '```'
    } >"$LOGDIR/summary.md"
    mkdir -p "$(dirname "$out")"
    if [ "$out" != "$LOGDIR/summary.md" ]; then cp "$LOGDIR/summary.md" "$out"; fi
    if [ -n "${OUT:-}" ]; then rm -f "$LOGDIR/summary.md"; fi

    echo
    echo "================ CUDA CHECK SUMMARY ================"
    cat "$out"
    echo "tests exit $test_rc, benchmark exit $bench_rc, CLI bench exit $cli_rc, $(($(date +%s) - start)) s in all; summary in $out"
    [ "$test_rc" = 0 ] && [ "$bench_rc" = 0 ] && [ "$cli_rc" = 0 ]
}

case $mode in
    --prepare)
        build
        pack
        ;;
    --prebuilt)
        unpack
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
