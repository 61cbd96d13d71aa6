#!/usr/bin/env bash
# On a machine with one CUDA GPU: build attn.cuda._cuda, run the GPU tests, run the benchmark's
# gpu-check profile, and leave every log and result under OUT_DIR. Budget: under 8 minutes
# (build 100 s + GPU tests 80 s + benchmark 290 s, each step bounded by `timeout`).
#
#   bash bench/gpu_check.sh [--dry-run] OUT_DIR
#
# --dry-run prints the steps and writes nothing. Every step runs even when an earlier one
# fails (a failed CUDA build still leaves the Triton tests and the benchmark worth running);
# OUT_DIR/steps.txt lists each step's exit status, and the script exits non-zero if any failed.
# Run from the repository root (the script cds there itself).
set -u

DRY_RUN=0
if [ "${1:-}" = "--dry-run" ]; then DRY_RUN=1; shift; fi
if [ $# -ne 1 ]; then
    echo "usage: bash bench/gpu_check.sh [--dry-run] OUT_DIR" >&2
    exit 2
fi
OUT_DIR=$(realpath -m "$1")
cd "$(dirname "$0")/.."

BUILD_S=${ATTN_GPU_CHECK_BUILD_S:-100}
TESTS_S=${ATTN_GPU_CHECK_TESTS_S:-80}
BENCH_S=${ATTN_GPU_CHECK_BENCH_S:-290}
PY=${PYTHON:-python}

# Build only for the GPU that is here: one architecture compiles in a fraction of the time.
if [ $DRY_RUN -eq 0 ] && command -v nvidia-smi >/dev/null; then
    ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n1 | tr -d '.')
else
    ARCH=${ATTN_CUDA_ARCHS:-90}
fi

STEPS=(
    "gpu_info|30|nvidia-smi"
    "build|$BUILD_S|env ATTN_CUDA_ARCHS=$ARCH MAX_JOBS=$(nproc) $PY setup.py build_ext --inplace"
    "gpu_tests|$TESTS_S|env PYTHONPATH=. $PY -m pytest tests -m 'gpu and not slow' -q -p no:cacheprovider --junitxml=$OUT_DIR/gpu_tests.xml"
    "bench|$BENCH_S|env PYTHONPATH=. $PY -m bench --profile gpu-check --out $OUT_DIR/bench"
)

if [ $DRY_RUN -eq 1 ]; then
    echo "gpu_check (dry run): would write logs and results under $OUT_DIR"
    for step in "${STEPS[@]}"; do
        IFS='|' read -r name limit cmd <<< "$step"
        echo "step $name (timeout ${limit} s): $cmd > $OUT_DIR/$name.log 2>&1"
    done
    exit 0
fi

mkdir -p "$OUT_DIR"
FAILED=0
: > "$OUT_DIR/steps.txt"
for step in "${STEPS[@]}"; do
    IFS='|' read -r name limit cmd <<< "$step"
    echo "== $name (timeout ${limit} s): $cmd"
    start=$(date +%s)
    timeout --kill-after=10 "$limit" bash -c "$cmd" > "$OUT_DIR/$name.log" 2>&1
    status=$?
    echo "$name exit=$status seconds=$(( $(date +%s) - start ))" | tee -a "$OUT_DIR/steps.txt"
    tail -n 5 "$OUT_DIR/$name.log"
    if [ $status -ne 0 ]; then FAILED=1; fi
done
exit $FAILED
