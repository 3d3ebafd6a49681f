#!/usr/bin/env bash
# One run on a lent GPU machine: build, GPU tests, the full benchmark suite; everything into OUTDIR.
#
#   benchmarks/gpu_suite.sh OUTDIR
#
# Budget: about 8 minutes on an H100 (build ~1-2 min, GPU tests <= 2.5 min, benchmarks the rest;
# the benchmark CLI stops starting new tasks when its share runs out and still writes its report).
# The GPU machine has no network: the package installs with --no-build-isolation --no-deps into
# the machine's venv, and optional wheels (xformers) come from a git-ignored ./wheels folder.
# Each step's output goes to OUTDIR/<step>.log; OUTDIR/SUMMARY.txt lists every step's status.
# A failing step does not stop the later ones (so everything that can be measured is), but the
# script then exits 1 and prints FAILED loudly.
#
# Environment:
#   PYTHON            interpreter (default: /opt/torch/.venv/bin/python if present, else python3)
#   BENCH_DEVICE      cuda (default) | cpu   (cpu: rehearse the whole script on a machine without a GPU)
#   BENCH_SUITE       full (default) | quick
#   BENCH_ARGS        extra arguments for elasticast-bench (e.g. "--tiny" for a rehearsal)
#   GPU_SUITE_BUDGET  total seconds (default 470)
#   GPU_TESTS         marked (default: pytest -m gpu, then the varlen kernel tests on CUDA) | all | none
#   SKIP_BUILD=1      do not pip install (already installed)
#   DRY_RUN=1         print the steps without running them
set -uo pipefail

OUT=${1:?usage: benchmarks/gpu_suite.sh OUTDIR}
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 2

if [ -z "${PYTHON:-}" ]; then
  if [ -x /opt/torch/.venv/bin/python ]; then PYTHON=/opt/torch/.venv/bin/python; else PYTHON=python3; fi
fi
DEVICE=${BENCH_DEVICE:-cuda}
SUITE=${BENCH_SUITE:-full}
BUDGET=${GPU_SUITE_BUDGET:-470}
GPU_TESTS=${GPU_TESTS:-marked}
START=$(date +%s)
FAILED=()
SUMMARY="$OUT/SUMMARY.txt"
: > "$SUMMARY"

elapsed() { echo $(( $(date +%s) - START )); }
remaining() { echo $(( BUDGET - $(elapsed) )); }

# step NAME LIMIT_S CMD...: run CMD with a time limit (SIGINT first, so python writes what it has),
# log to OUTDIR/NAME.log, show its tail, record the status.
step() {
  local name=$1 limit=$2; shift 2
  local log="$OUT/$name.log"
  echo "== [$(elapsed)s] $name (limit ${limit}s): $*"
  if [ "${DRY_RUN:-0}" = 1 ]; then
    echo "$name: dry run" >> "$SUMMARY"; return 0
  fi
  if [ "$limit" -le 0 ]; then
    echo "$name: SKIPPED (no time left)" | tee -a "$SUMMARY"; FAILED+=("$name (no time left)"); return 1
  fi
  local t0=$(date +%s)
  timeout --signal=INT --kill-after=30 "$limit" "$@" > "$log" 2>&1
  local rc=$?
  tail -n 25 "$log"
  local took=$(( $(date +%s) - t0 ))
  if [ "$rc" -eq 0 ]; then
    echo "$name: ok (${took}s)" >> "$SUMMARY"
  else
    [ "$rc" -eq 124 ] && rc="124 (timed out)"
    echo "$name: FAILED rc=$rc (${took}s), see $name.log" | tee -a "$SUMMARY"
    FAILED+=("$name (rc=$rc)")
  fi
  return 0
}

finish() {
  echo "total: $(elapsed)s" >> "$SUMMARY"
  # Keep a copy of the report next to the logs under the names the README table is built from.
  [ -f "$OUT/report/results.json" ] && cp "$OUT/report/results.json" "$OUT/results-$DEVICE.json"
  echo
  cat "$SUMMARY"
  if [ "${#FAILED[@]}" -gt 0 ]; then
    echo "################################################################"
    echo "gpu_suite.sh FAILED: ${FAILED[*]}"
    echo "results so far are in $OUT"
    echo "################################################################"
    exit 1
  fi
  echo "gpu_suite.sh: all steps passed; results in $OUT"
}
trap finish EXIT

step environment 60 bash -c "nvidia-smi || true; '$PYTHON' -c 'import sys, torch, triton; print(sys.version); print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"available\", torch.cuda.is_available()); print(\"triton\", triton.__version__); print(torch.cuda.get_device_name() if torch.cuda.is_available() else \"no GPU\")'"

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  # sm_90 only on the lent H100/H200 machines (halves the nvcc time); override to build more.
  step build 240 env ELASTICAST_CUDA_ARCHS="${ELASTICAST_CUDA_ARCHS:-90}" MAX_JOBS="${MAX_JOBS:-16}" \
    "$PYTHON" -m pip install --no-build-isolation --no-deps -e .
  if compgen -G "wheels/*.whl" > /dev/null; then
    step wheels 90 bash -c "'$PYTHON' -m pip install --no-deps wheels/*.whl"
  fi
fi

tests_limit=$(( $(remaining) * 2 / 5 ))
[ "$tests_limit" -gt 150 ] && tests_limit=150
case "$GPU_TESTS" in
  none) ;;
  all) step gpu_tests "$tests_limit" "$PYTHON" -m pytest tests -q -rs -p no:cacheprovider --continue-on-collection-errors --junitxml="$OUT/tests.xml" ;;
  *)
    # Tests marked gpu, then the kernel test files that run on CUDA when it is present (small shapes).
    step gpu_tests "$tests_limit" bash -c "'$PYTHON' -m pytest tests -m gpu -q -rs -p no:cacheprovider --continue-on-collection-errors --junitxml='$OUT/tests-gpu.xml'; a=\$?; \
      '$PYTHON' -m pytest tests/test_varlen_attention.py tests/test_varlen_attention_api.py -q -rs -p no:cacheprovider --junitxml='$OUT/tests-varlen.xml'; b=\$?; \
      [ \$a -eq 0 ] && [ \$b -eq 0 ]" ;;
esac

# The benchmark CLI gets what is left, minus a margin for writing the report and plots.
bench_budget=$(( $(remaining) - 45 ))
step benchmarks $(( $(remaining) - 10 )) "$PYTHON" -m elasticast_kernels.bench --device "$DEVICE" --suite "$SUITE" \
  --out "$OUT/report" --no-progress --budget-s "$bench_budget" ${BENCH_ARGS:-}
