#!/usr/bin/env bash
# The GPU check (issue 12): on one GPU, in under 5 minutes, from the source tree (no install):
#   1. the engine's `gpu`-marked tests (pytest -m gpu, Ray and Optuna unimportable);
#   2. bench/gpu_throughput.py: gpt2-base in bf16 at one GPU's share of its global micro-batch
#      (48 of 384 sequences, an 8-GPU node's share): MFU per executed depth, eager and compiled
#      per block, peak memory, and a large bf16 matmul on the same card as the second yardstick;
#   3. a short `progtune train` of gpt2-base (40 steps of 32 x 1024 tokens; Ray, Optuna and
#      pandas unimportable).
# It writes ONE results file, gpu_check.json, into $OUT when set, else bench/results/; exit 0
# when every step passed, 1 otherwise (the file says which step failed, with its output's tail).
#
#   bash bench/gpu_check.sh              # on the GPU machine: python3 with torch, pytest, pyarrow
#   bash bench/gpu_check.sh --tiny       # or GPU_CHECK_TINY=1: the same steps on a CPU with
#                                        # the tiny preset and no compilation, well under a minute
# PYTHON picks the interpreter (default python3).
set -u -o pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
TINY=${GPU_CHECK_TINY:-0}
[ "${1:-}" = "--tiny" ] && TINY=1
DEST=${OUT:-bench/results}/gpu_check.json
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
# Caches stay in the work folder: nothing is written to the home folder or the repository.
export PROGTUNE_CACHE="$WORK/cache" TORCHINDUCTOR_CACHE_DIR="$WORK/inductor"
START=$(date +%s.%N)

if [ "$TINY" = 1 ]; then
    MODE=tiny
    export OMP_NUM_THREADS=1 TORCHINDUCTOR_COMPILE_THREADS=1
    THROUGHPUT=(--preset tiny --steps 3 --warmup 1 --time-limit 40 --no-compile runtime.threads=1)
    PRESET=tiny
    TRAIN=(budget.tokens=4096 eval.points=2 runtime.threads=1)
else
    MODE=gpu
    THROUGHPUT=(--preset gpt2-base --time-limit 120 budget.batch_size=48)
    # 40 steps: the preset's boundaries (5, 10, 25 %) fall on distinct steps 2, 4 and 10.
    PRESET=gpt2-base
    TRAIN=(budget.batch_size=16 budget.grad_accum=2 budget.tokens=1310720 eval.points=4
           eval.max_tokens=65536)
fi

step() {  # step NAME SECONDS CMD...: run with a time limit, output to the terminal and NAME.log
    local name=$1 limit=$2 rc
    shift 2
    echo "== gpu_check: $name"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$WORK/$name.log"
    rc=${PIPESTATUS[0]}
    RCS+=("$name=$rc")
}
RCS=()
mapfile -t GPU_TESTS < <(grep -l "pytest.mark.gpu" tests/test_*.py)  # files with GPU tests
[ ${#GPU_TESTS[@]} -gt 0 ] || GPU_TESTS=(tests/test_train.py)  # never pytest's whole testpaths
# Limits: hung steps only (expected on an H100/H200: ~40 s, ~125 s, ~60 s).
step tests 120 "$PY" bench/gpu_check_steps.py tests "$WORK/tests.xml" "${GPU_TESTS[@]}"
step throughput 200 "$PY" bench/gpu_throughput.py --json "$WORK/throughput.json" "${THROUGHPUT[@]}"
step train 150 "$PY" bench/gpu_check_steps.py train --preset "$PRESET" --out "$WORK/run" --quiet \
    "data.cache_dir=$WORK/cache" "${TRAIN[@]}"

WALL=$(awk -v a="$START" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
"$PY" bench/gpu_check_steps.py merge --work "$WORK" --dest "$DEST" --mode "$MODE" \
    --wall-s "$WALL" "${RCS[@]}"
