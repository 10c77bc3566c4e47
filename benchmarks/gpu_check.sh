#!/usr/bin/env bash
# Everything that needs a GPU, as one command (run it in the repo root of a CUDA machine):
#   bash benchmarks/gpu_check.sh
# Builds the extension from source against the machine's torch, runs every test (CUDA included),
# runs compute-sanitizer memcheck over the CUDA op tests, runs the benchmarks, and writes a dated
# report to benchmarks/results/gpu-check-<date>.md (copied with the result files into $OUT when set,
# which is how the device tool brings them back).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=$(date -u +%Y-%m-%d)
report=benchmarks/results/gpu-check-$stamp.md
mkdir -p benchmarks/results
log=$(mktemp -d)
status=0

section() { printf '\n## %s\n\n```\n' "$1" >> "$report"; }
end_section() { printf '```\n' >> "$report"; }
run() {  # run NAME CMD...: append the command's tail and exit code to the report
  local name=$1; shift
  echo "== $name"
  section "$name"
  "$@" > "$log/out" 2>&1
  local rc=$?
  tail -n 60 "$log/out" >> "$report"
  echo "exit code: $rc" >> "$report"
  end_section
  tail -n 5 "$log/out"
  [ $rc -eq 0 ] || status=1
  return $rc
}

{
  echo "# GPU check $stamp"
  echo
  echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "- gpu: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)"
  echo "- torch: $($PY -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)')"
  echo "- nvcc: $(nvcc --version 2>/dev/null | tail -1)"
} > "$report"

export MAX_JOBS=${MAX_JOBS:-16}
run "build from source" $PY -m pip install --no-build-isolation --no-deps -e . || { echo "build failed"; exit 1; }
run "extension has CUDA kernels" $PY -c "from pulse_ext import _extension as e; import torch; assert e.compiled_with_cuda() and torch.cuda.is_available(), e.LOAD_ERROR; print('ok')"
run "all tests (CUDA included)" $PY -m pytest -q -ra tests
if command -v compute-sanitizer >/dev/null; then
  run "compute-sanitizer memcheck: CUDA op tests" compute-sanitizer --tool memcheck --error-exitcode 3 \
    $PY -m pytest -q -x tests/test_ops.py -k cuda
else
  section "compute-sanitizer"; echo "not installed on this machine" >> "$report"; end_section
fi
run "op microbenchmarks" $PY benchmarks/bench_ops.py --device cuda
run "bench_e2e.py" $PY benchmarks/bench_e2e.py --device cuda
run "bench_e2e.py --progressive (search_resolution, bf16 precision)" $PY benchmarks/bench_e2e.py --device cuda \
  --progressive --sizes 64,256,1024
run "profile_step.py (where a 64-px R=32 step goes)" $PY benchmarks/profile_step.py --device cuda

echo "report: $report (overall status $status)"
if [ -n "${OUT:-}" ]; then
  cp "$report" benchmarks/results/*-cuda.md benchmarks/results/*-cuda.json "$OUT"/ 2>/dev/null
fi
exit $status
