#!/usr/bin/env bash
# Every GPU measurement in one call (<= 8 min on an H100/H200), for a lent GPU machine:
#
#   benchmarks/gpu_check.sh [OUT]            # on the GPU host: writes OUT/speed.json (+ png), OUT/gpu_check.log
#   benchmarks/gpu_check.sh --dry-run [OUT]  # anywhere: the same steps at tiny sizes on the CPU (checks the script)
#
# Steps: the machine and card; the speed benchmark's gpu section (MLM pretraining of MiniLM and BERT-base vs HF
# Trainer with bf16 + torch_compile + group_by_length: tokens/s and MFU; embeddings vs sentence-transformers encode
# in bf16: benchmarks/speed_gpu.py); then on the host's cores the scale section (a 20,480-tweet pool on 1 and 4 Dask
# workers x 2 threads; scored in bf16 where the host's CPU computes it natively, so the three layouts fit), and, in
# whatever time is left, the CPU pseudo_label section.
# Each step has its own time limit, and a failed step does not stop the others: the JSON of those that ran
# is written anyway (each step merges its section into OUT/speed.json).
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
OUT=${1:-benchmarks/results/gpu}
mkdir -p "$OUT"
PY=${PY:-.venv/bin/python}
[[ -x "$PY" ]] || PY=python3
LOG="$OUT/gpu_check.log"
: > "$LOG"
step() {  # name, limit seconds, command...
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s): $*" | tee -a "$LOG"
  local t0=$SECONDS
  timeout "$limit" "$@" >> "$LOG" 2>&1
  local rc=$?
  echo "== $name: rc=$rc in $((SECONDS - t0)) s" | tee -a "$LOG"
}
step machine 60 "$PY" -c "import torch, os; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU', 'cores', os.cpu_count())"
TOTAL=470   # seconds for the whole script (<= 8 min): the last step gets what the others left
if [[ $DRY == 1 ]]; then
  export CUDA_VISIBLE_DEVICES=""   # the CPU, whatever the host has
  DEV=cpu
  SIZES=(--quick --repeats 1 --size pretrain_steps=2 --size pl_texts=64 --size gpu_steps=3 --size scale_pool=256
         --size scale_shard_rows=128 --size gpu_texts=64 --size gpu_batch_tokens=512 --size gpu_max_length=32
         --size gpu_warmup=0 --size gpu_compile=false --size scale_cpu_bf16=true)
  LIMIT_GPU=300; LIMIT_SCALE=300; TOTAL=900
else
  DEV=cuda
  SIZES=(--size gpu_steps=60 --repeats 1 --size pl_texts=4000 --size scale_pool=20480 --size scale_cpu_bf16=true)
  LIMIT_GPU=270; LIMIT_SCALE=160
fi
# 1 x 2 and 4 x 2 threads (the target's two layouts; 2 x 2 would not fit the minutes) where the host has >= 8 cores
LAYOUTS=()
if (( $(nproc) >= 8 )); then LAYOUTS=(--scale-layouts 1x2,4x2); fi
START=$SECONDS
# 1. the GPU itself: pretraining MiniLM + BERT-base vs HF Trainer (tokens/s, MFU), embeddings vs sentence-transformers
step gpu "$LIMIT_GPU" "$PY" -m benchmarks.speed "${SIZES[@]}" --only gpu --device "$DEV" --merge --out "$OUT"
# 2. the host's cores: the sharded pool on 1 and 4 Dask workers (needs >= 8 cores for the 4 x 2 layout)
step scale "$LIMIT_SCALE" "$PY" -m benchmarks.speed "${SIZES[@]}" "${LAYOUTS[@]}" --only scale --merge --out "$OUT"
# 3. with the time left: CPU pseudo-labelling vs transformers.pipeline (eager, compiled, bf16)
LEFT=$((TOTAL - (SECONDS - START)))
if (( LEFT >= 60 )); then
  step pseudo_label "$LEFT" "$PY" -m benchmarks.speed "${SIZES[@]}" --no-int8 --only pseudo_label --merge --out "$OUT"
else
  echo "== pseudo_label: skipped, ${LEFT}s left of ${TOTAL}s" | tee -a "$LOG"
fi
ls -l "$OUT" | tee -a "$LOG"
[[ -s "$OUT/speed.json" ]] || { echo "gpu_check: no speed.json written; see $LOG" >&2; exit 1; }
echo "gpu_check: wrote $OUT/speed.json ($([[ $DRY == 1 ]] && echo dry run on the CPU || echo GPU run))"
