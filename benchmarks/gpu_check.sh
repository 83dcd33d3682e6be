#!/usr/bin/env bash
# The GPU check: one script that fits in 10 minutes on one GPU and writes its sections of
# benchmarks/RESULTS.md (a copy, with the log, goes to $OUT when that is set):
#   1. bench_train_step.py --device cuda           attention vs densenet201 vs resnet101, bf16, channels_last
#   2. bench_train_step.py --device cuda --compile the same with torch.compile (attention and densenet201)
#   3. bench_data.py --device cuda                 the step fed by the data path vs on device tensors
#   4. bench_folds.py                              5-fold attention at 224 px on 200 synthetic studies
#                                                  (as many folds as fit, reported as such)
#   5. bench_scaling.py --untrained --device cuda  whole-ensemble prediction, s/study (full configs, 5 folds each)
# Each step has its own time limit; a step that runs out is reported and the next one starts.
#
# The quality bench at 224 px is a run of its own (a lease's device time holds one of the two):
#     bash benchmarks/gpu_check.sh quality      # bench_quality.py --config configs/bench_quality_224.yaml,
#                                               # under 9.5 minutes; writes benchmarks/QUALITY_224.md
# A quality run stopped at its limit resumes where it stopped when run again on the same outputs.
# The paper's comparison at the paper's size and crop size (1,632 studies, 224 px; the CPU runs it at 64 px):
#     bash benchmarks/gpu_check.sh paper        # run_paper_comparison.py --config configs/paper_cpu.yaml at
#                                               # 224 px; copies outputs/paper224/report/report.md to $OUT
# It too resumes (finished variants are kept) when a lease ends before it does.
#
# On a machine without internet whose Python lacks pydicom, dicomsdl or albumentations (the lent GPU
# machines here have torch, timm, opencv, pandas, scikit-learn, matplotlib): first, where pip can reach
# the registry,
#     bash benchmarks/gpu_check.sh wheels     # fills .whl/ (ignored by git) for Python 3.12, x86-64
# then carry .whl with the working tree and run
#     bash benchmarks/gpu_check.sh
#
# CI's smoke run (tests/test_benchmarks.py), no GPU needed, seconds per step:
#     bash benchmarks/gpu_check.sh smoke
# runs the same five steps with the same options, each followed by options that put it on the CPU at toy
# sizes (a later option wins): tiny configs (tests/data/), one round, batch 2, 32 px; torch.compile with the
# 'eager' backend (inductor takes minutes on a CPU) on the attention model alone, without --write. Steps
# write their sections to $OUT/RESULTS.md (a temporary folder without $OUT), never benchmarks/RESULTS.md,
# and the script exits 1 if any step failed. Its figures mean nothing.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = wheels ]; then
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    pydicom==3.0.2 dicomsdl==0.109.4 albumentations==2.0.8 albucore==0.0.24 simsimd stringzilla \
    pydantic pydantic-core annotated-types typing-inspection
  exit $?
fi

export PYTHONUNBUFFERED=1
SMOKE=
if [ "${1:-}" = smoke ]; then
  SMOKE=1
  OUT=${OUT:-$(mktemp -d)}
  mkdir -p "$OUT"
  export OUT LSDC_BENCH_RESULTS="$OUT/RESULTS.md"   # common.RESULTS: what --write records
fi
if [ -z "$SMOKE" ] && [ -d .whl ]; then   # (the smoke run uses the Python it is given, as it is)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src:$PWD/benchmarks:${PYTHONPATH:-}"
PY=${PYTHON:-python3}
LOG=${OUT:-/tmp}/gpu_check.log
: > "$LOG"

FAILED=0
step() {  # step SECONDS script args...: run one benchmark under a time limit, log it, go on whatever happens
  local limit=$1; shift
  [ -n "$SMOKE" ] && limit=600   # a CPU shared with other jobs: a generous limit, CI checks the outcome
  echo "== $(date -u +%H:%M:%S) $* (limit ${limit} s)" | tee -a "$LOG"
  timeout "$limit" "$PY" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 124 ] && echo "== ran out of its ${limit} s" | tee -a "$LOG"
  echo "== rc $rc" | tee -a "$LOG"
  [ "$rc" -eq 0 ] || FAILED=1
}

# Each step's toy-size options for the smoke run (appended after the GPU options; empty on a GPU run).
S_STEP= S_COMPILE= S_DATA= S_FOLDS= S_SCALING=
if [ -n "$SMOKE" ]; then
  S_STEP="--device cpu --batch 2 --size 32 --steps 1 --rounds 1 --warmup 0 --threads 1 --no-memory"
  S_COMPILE="$S_STEP --warmup 1 --compile-backend eager --models attention --memory --no-write"
  S_DATA="--device cpu --fed-step --studies 1 --size 32 --batch 8 --workers 1 --rounds 1 --gpu-batch 4 --gpu-steps 1"
  TINY=tests/data/bench_tiny.yaml   # the smallest experiment that trains, and the smallest localiser
  S_FOLDS="--config $TINY --studies 4 --workers 1"
  S_SCALING="--device cpu --sizes 1 --stages predict --configs $TINY \
    --localizer-config tests/data/bench_tiny_localizer.yaml --folds 2 --threads 1"
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$LOG"
fi
if [ "${1:-}" = quality ]; then
  step 570 benchmarks/bench_quality.py --config configs/bench_quality_224.yaml \
       --data-dir input/bench_quality_224 --output-dir outputs/bench_quality_224 \
       --write --out benchmarks/QUALITY_224.md
  [ -n "${OUT:-}" ] && [ -f benchmarks/QUALITY_224.md ] && cp benchmarks/QUALITY_224.md "$OUT/QUALITY_224.md"
  echo "== done $(date -u +%H:%M:%S)"
  exit 0
fi
if [ "${1:-}" = paper ]; then
  step 570 scripts/run_paper_comparison.py --config configs/paper_cpu.yaml --train-studies 1632 \
       --set crops.size=224 --set crops.workers=16 --set tag=paper224 \
       --data-dir input/paper --output-dir outputs/paper224
  [ -n "${OUT:-}" ] && [ -f outputs/paper224/report/report.md ] && cp outputs/paper224/report/report.md "$OUT/paper224_report.md"
  echo "== done $(date -u +%H:%M:%S)"
  exit 0
fi
[ -z "$SMOKE" ] && "$PY" -c "import torch, timm, cv2, pydicom; print('torch', torch.__version__, 'timm', timm.__version__, \
'opencv', cv2.__version__, 'pydicom', pydicom.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | tee -a "$LOG"

# $S_... unquoted on purpose: empty on a GPU run, several options in the smoke run.
# shellcheck disable=SC2086
{
step 80  benchmarks/bench_train_step.py --device cuda --write $S_STEP
step 110 benchmarks/bench_train_step.py --device cuda --compile --models attention densenet201 --no-memory \
         --rounds 3 --write $S_COMPILE
step 60  benchmarks/bench_data.py --device cuda --rounds 3 --write $S_DATA
step 220 benchmarks/bench_folds.py --config configs/attention.yaml --studies 200 --deadline 150 --write $S_FOLDS
step 80  benchmarks/bench_scaling.py --untrained --device cuda --sizes 10 20 --stages predict --write $S_SCALING
}

if [ -n "$SMOKE" ]; then
  echo "== done $(date -u +%H:%M:%S), sections in $LSDC_BENCH_RESULTS" | tee -a "$LOG"
  exit "$FAILED"
fi
[ -n "${OUT:-}" ] && cp "${LSDC_BENCH_RESULTS:-benchmarks/RESULTS.md}" "$OUT/RESULTS.md"
echo "== done $(date -u +%H:%M:%S)"
