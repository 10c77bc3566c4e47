#!/usr/bin/env bash
# Continue training the default face generator on a lent GPU, as one command, and bring the state back.
#
#   here, once:  python python/prepare_faces.py --tar ../shared/data/utkface-200.tar --out data/utkface64 --carry
#   device run:  command "bash python/gpu_train.sh 6", carry ["data/utkface64/carry-train.npz"], timeout_s 600
#   back here:   python python/train_generator.py --data data/utkface64 --out /work/checkpoints/default64 \
#                    --resume-from <files_at>/parts --bf16 --channels-last ...   (docs/training.md, section 4)
#
# MINUTES (default 6) of training with bf16 autocast and batch 64, from runs/gpu when an earlier call on
# the same warm machine left a checkpoint there, else from the committed compact state
# (python/training_state/default64-compact.pt, which travels with the checkout). Then, into $OUT: the
# full checkpoint as parts of <= 15 MiB (parts/), log.jsonl and latest-G_ema.safetensors -- 8 files at
# most, as the device tool returns. The carried faces file is 31 MiB and the checkout ~27 MiB: together
# under the 64 MiB a call may send. TRAIN_DEVICE=cpu runs the same steps on a CPU (a dry run).
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-6}
PY=${PYTHON:-python3}
device=${TRAIN_DEVICE:-cuda}
data=data/utkface64/carry-train.npz
run=${TRAIN_RUN_DIR:-runs/gpu}
export PYTHONUNBUFFERED=1

[ -f "$data" ] || { echo "gpu_train.sh: $data is missing: make it with prepare_faces.py --carry and carry it" >&2; exit 2; }
if compgen -G "$run/ckpt-*.pt" > /dev/null; then
  resume=(--resume)
else
  resume=(--resume-from python/training_state/default64-compact.pt)
fi
echo "gpu_train.sh: $minutes min on $device into $run (${resume[*]}); torch $($PY -c 'import torch; print(torch.__version__)')"
$PY python/train_generator.py --data "$data" --out "$run" "${resume[@]}" --device "$device" --bf16 --batch 64 \
  --minutes "$minutes"
if [ -n "${OUT:-}" ]; then
  $PY python/train_generator.py --out "$run" --export-parts "$OUT/parts"
  for f in log.jsonl latest-G_ema.safetensors; do  # the log has a line per minute of training
    [ -f "$run/$f" ] && cp "$run/$f" "$OUT/"
  done
  ls -la "$OUT" "$OUT/parts"
fi
