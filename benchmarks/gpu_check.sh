#!/usr/bin/env bash
# Everything that needs a GPU, as one command (run it in the repo root of a CUDA machine):
#   bash benchmarks/gpu_check.sh [STEP ...]   # GPU_CHECK_SECONDS=540 by default
# STEPs (default: all, in this order): tests sanitizer ops e2e study profile progressive e2e-rest;
# the build and the check that it has CUDA kernels always run. A later GPU session can run the steps
# an earlier one had no time for, e.g. `bash benchmarks/gpu_check.sh progressive e2e-rest`.
# Builds the extension from source against the machine's torch, runs every test (CUDA included),
# compute-sanitizer memcheck over the CUDA op tests, the op and end-to-end benchmarks and a step
# profile, and writes a dated report to benchmarks/results/gpu-check-<date>.md.
#
# A lent GPU runs one command for at most 600 s, so the steps run in order of value within a time
# budget (GPU_CHECK_SECONDS): a step that cannot start with the time it needs is reported as skipped,
# a running one is stopped at the budget. After every step the report and a tarball of all results
# and full logs are copied to $OUT (when set; how the device tool brings files back), so whatever
# finished comes back even if the command is cut off. The benchmarks write their results after every
# configuration, so a step stopped at its cap keeps what it measured.
#
# Environment:
#   GPU_CHECK_SECONDS      the budget (default 540)
#   GPU_CHECK_CUDA_ARCH    the arch list to build for (default 9.0: H100/H200). The machine's own
#                          TORCH_CUDA_ARCH_LIST is ignored: an image's list may name sm_50-72, which
#                          nvcc 13 cannot build, and the run would end with no results.
#   GPU_CHECK_DRY_RUN=1    a rehearsal on a machine without a GPU (run by .ci/run's tests): every step
#                          goes through the same budget, report and delivery logic, but its command is
#                          replaced by "skipped: no GPU (dry run)"; steps whose names match the regex
#                          GPU_CHECK_DRY_RUN_EXECUTE run for real (tests point COMPUTE_SANITIZER at a fake).
#   GPU_CHECK_RESULTS      where the report goes (default benchmarks/results)
#   COMPUTE_SANITIZER      the sanitizer binary (default: on PATH, else /usr/local/cuda/bin)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
budget=${GPU_CHECK_SECONDS:-540}
dry_run=${GPU_CHECK_DRY_RUN:-0}
start=$(date +%s)
stamp=$(date -u +%Y-%m-%d)
results=${GPU_CHECK_RESULTS:-benchmarks/results}
report=$results/gpu-check-$stamp.md
logs=$(mktemp -d)
status=0
requested=("$@")
known=" tests sanitizer ops e2e study profile progressive e2e-rest "
for r in "${requested[@]}"; do
  [[ "$known" == *" $r "* ]] || { echo "gpu_check.sh: unknown step '$r' (known:$known)" >&2; exit 2; }
done
mkdir -p "$results"
# H100 / H200 = sm_90. Set unconditionally: the image's own arch list, if any, may name arches nvcc 13
# no longer builds.
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${GPU_CHECK_CUDA_ARCH:-9.0}

deliver() {  # the report alone (quick to read) and everything in one tarball: the tool returns at most 8 files
  [ -n "${OUT:-}" ] || return 0
  cp "$report" "$OUT"/ 2>/dev/null
  tar czf "$OUT/gpu-check-$stamp.tar.gz" "$report" $(ls "$results"/*-cuda.* 2>/dev/null) -C "$logs" . 2>/dev/null
}

dry_run_executes() {  # dry_run_executes NAME: true when a dry run runs step NAME's command for real
  [ -n "${GPU_CHECK_DRY_RUN_EXECUTE:-}" ] && [[ "$1" =~ $GPU_CHECK_DRY_RUN_EXECUTE ]]
}

# A step whose tool the machine refuses (compute-sanitizer or CUPTI without the needed permissions or
# support, seen on some H200 hosts) is recorded as refused and does not fail the run: set
# refusal_pattern (an extended regex matched against the step's log) before such a step.
refusal_pattern=""
trap deliver EXIT

want() {  # want STEP: true when no steps were named on the command line, or STEP was
  [ ${#requested[@]} -eq 0 ] && return 0
  local r
  for r in "${requested[@]}"; do [ "$r" = "$1" ] && return 0; done
  return 1
}

# step NAME NEED_S CAP_S CMD...: run CMD with at most CAP_S seconds (and never past the budget), or
# skip it when fewer than NEED_S seconds are left; its output's tail goes into the report, all of it
# into the logs.
step() {
  local name=$1 need=$2 cap=$3
  shift 3
  local left=$((budget - ($(date +%s) - start)))
  local log
  log="$logs/$(echo "$name" | tr -c 'A-Za-z0-9_\n-' '_').log"
  echo "== $name ($left s left)"
  printf '\n## %s\n\n```\n' "$name" >> "$report"
  if [ "$left" -lt "$need" ]; then
    echo "skipped: $left s of the budget left, this step needs about $need s" | tee -a "$report"
    printf '```\n' >> "$report"
    return 2
  fi
  [ "$cap" -lt "$left" ] && left=$cap
  local t0
  t0=$(date +%s)
  if [ "$dry_run" = 1 ] && ! dry_run_executes "$name"; then
    echo "skipped: no GPU (dry run): $*" > "$log"
  else
    timeout --kill-after=15 "$left" "$@" > "$log" 2>&1
  fi
  local rc=$?
  tail -n 60 "$log" >> "$report"
  [ -n "$(tail -c 1 "$log")" ] && echo >> "$report"  # a log cut off mid-line
  echo "exit code: $rc, $(($(date +%s) - t0)) s$([ $rc -eq 124 ] && echo ", stopped at its time limit ($left s)")" >> "$report"
  if [ $rc -ne 0 ] && [ $rc -ne 124 ] && [ -n "$refusal_pattern" ] && grep -Eq "$refusal_pattern" "$log"; then
    echo "refused by this machine (not a failure of ours): $(grep -Em1 "$refusal_pattern" "$log")" | tee -a "$report"
    rc=0
  fi
  printf '```\n' >> "$report"
  tail -n 5 "$log"
  [ $rc -eq 0 ] || status=1
  deliver
  return $rc
}

{
  echo "# GPU check $stamp"
  echo
  echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "- gpu: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)"
  echo "- torch: $($PY -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)' 2>&1 | tail -1)"
  echo "- python: $($PY --version 2>&1)"
  echo "- nvcc: $(nvcc --version 2>/dev/null | tail -1)"
  echo "- budget: $budget s; TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST$([ "$dry_run" = 1 ] && echo "; DRY RUN (no GPU: commands not run)")"
} > "$report"
deliver

step "build from source" 30 300 $PY -m pip install --no-build-isolation --no-deps -e . || { echo "build failed"; exit 1; }
step "extension has CUDA kernels" 5 60 $PY -c "from pulse_ext import _extension as e; import torch; \
assert e.is_loaded(), e.LOAD_ERROR; assert e.compiled_with_cuda(), 'built without CUDA kernels'; \
assert torch.cuda.is_available(), 'torch sees no GPU'; print('ok')" \
  || { echo "no CUDA kernels: nothing else here is worth the GPU time"; exit 1; }

# pytest-xdist (in the lent machines' image) spreads the CPU-bound tests over the cores, each worker
# with its share of them (8 workers x all-core OpenMP pools would oversubscribe the CPU).
xdist=()
workers=8
$PY -c "import xdist" 2>/dev/null && xdist=(-n "$workers")
cores=$(nproc 2>/dev/null || echo 16)
threads_per_worker=$(( cores / workers > 0 ? cores / workers : 1 ))
want tests && step "all tests (CUDA included)" 60 240 env OMP_NUM_THREADS=$threads_per_worker \
  $PY -m pytest -q -ra "${xdist[@]}" tests
# Straight after the tests: the one check that catches what no CPU test can. Without PyTorch's caching
# allocator every tensor is its own allocation, so an out-of-bounds access past a small tensor is not
# hidden inside a cached 2 MB block. The large-shape tests are left out (their small cases run).
sanitizer=${COMPUTE_SANITIZER:-$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)}
if want sanitizer && { [ -x "$sanitizer" ] || [ "$dry_run" = 1 ]; }; then
  refusal_pattern='Device not supported|not supported on this|Unable to find injection|INSUFFICIENT_PRIVILEGES|ERR_NVGPUCTRPERM|terminated before first instrumented API call'
  step "compute-sanitizer memcheck: CUDA op tests" 60 150 \
    env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$sanitizer" --tool memcheck --error-exitcode 3 \
    $PY -m pytest -q -x tests/test_ops.py -k "cuda and not opcheck and not large"
  refusal_pattern=""
elif want sanitizer; then
  printf '\n## compute-sanitizer\n\nnot found on this machine\n' >> "$report"
fi
want ops && step "op microbenchmarks" 60 150 $PY benchmarks/bench_ops.py --device cuda --seconds 0.1 --repeats 3
# The comparisons the issues ask for: R=1 and R=32 at 64, 256 and 1024 px (18 configurations, one
# process each); the rest of the R grid comes last.
want e2e && step "bench_e2e.py (R = 1, 32)" 90 240 $PY benchmarks/bench_e2e.py --device cuda --restarts 1,32 \
  --timeout 90
# Loop options at the default generator's shape: CUDA graph, TF32 off (TF32's accuracy check), bf16, ...
want study && step "bench_e2e.py --study (64 px, R = 32, 100 steps)" 60 150 $PY benchmarks/bench_e2e.py \
  --device cuda --study --sizes 64 --restarts 32 --steps 100 --timeout 60
refusal_pattern='CUPTI_ERROR|INSUFFICIENT_PRIVILEGES|ERR_NVGPUCTRPERM'
want profile && step "profile_step.py (where a 64-px R=32 step goes)" 30 60 $PY benchmarks/profile_step.py --device cuda
refusal_pattern=""
want progressive && step "bench_e2e.py --progressive (search_resolution, bf16 precision)" 90 150 \
  $PY benchmarks/bench_e2e.py --device cuda --progressive --sizes 64,1024 --timeout 90
want e2e-rest && step "bench_e2e.py (R = 8, 64)" 90 240 $PY benchmarks/bench_e2e.py --device cuda --restarts 8,64 \
  --tag r8-64 --timeout 90

echo "report: $report (overall status $status, $(($(date +%s) - start)) s)"
exit $status
