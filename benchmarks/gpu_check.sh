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
#
# On a machine without internet whose Python lacks pydicom, dicomsdl or albumentations (the lent GPU
# machines here have torch, timm, opencv, pandas, scikit-learn, matplotlib): first, where pip can reach
# the registry,
#     bash benchmarks/gpu_check.sh wheels     # fills .whl/ (ignored by git) for Python 3.12, x86-64
# then carry .whl with the working tree and run
#     bash benchmarks/gpu_check.sh
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
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src:$PWD/benchmarks:${PYTHONPATH:-}"
PY=${PYTHON:-python3}
LOG=${OUT:-/tmp}/gpu_check.log
: > "$LOG"

step() {  # step SECONDS script args...: run one benchmark under a time limit, log it, go on whatever happens
  local limit=$1; shift
  echo "== $(date -u +%H:%M:%S) $* (limit ${limit} s)" | tee -a "$LOG"
  timeout "$limit" "$PY" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 124 ] && echo "== ran out of its ${limit} s" | tee -a "$LOG"
  echo "== rc $rc" | tee -a "$LOG"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$LOG"
if [ "${1:-}" = quality ]; then
  step 570 benchmarks/bench_quality.py --config configs/bench_quality_224.yaml \
       --data-dir input/bench_quality_224 --output-dir outputs/bench_quality_224 \
       --write --out benchmarks/QUALITY_224.md
  [ -n "${OUT:-}" ] && [ -f benchmarks/QUALITY_224.md ] && cp benchmarks/QUALITY_224.md "$OUT/QUALITY_224.md"
  echo "== done $(date -u +%H:%M:%S)"
  exit 0
fi
"$PY" -c "import torch, timm, cv2, pydicom; print('torch', torch.__version__, 'timm', timm.__version__, \
'opencv', cv2.__version__, 'pydicom', pydicom.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | tee -a "$LOG"

step 80  benchmarks/bench_train_step.py --device cuda --write
step 110 benchmarks/bench_train_step.py --device cuda --compile --models attention densenet201 --no-memory \
         --rounds 3 --write
step 60  benchmarks/bench_data.py --device cuda --rounds 3 --write
step 220 benchmarks/bench_folds.py --config configs/attention.yaml --studies 200 --deadline 150 --write
step 80  benchmarks/bench_scaling.py --untrained --device cuda --sizes 10 20 --stages predict --write

[ -n "${OUT:-}" ] && cp benchmarks/RESULTS.md "$OUT/RESULTS.md"
echo "== done $(date -u +%H:%M:%S)"
