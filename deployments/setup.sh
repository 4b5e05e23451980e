#!/usr/bin/env bash
# Work pools and limits for deployments/prefect.yaml. Idempotent: existing pools are kept as they are.
#
#   export PREFECT_API_URL=http://127.0.0.1:4200/api
#   deployments/setup.sh                  # cpu + gpu process pools, gpu concurrency limit 1
#   GPU_SLOTS=4 deployments/setup.sh      # 4 GPUs in the pool (start each worker with --limit 1)
#   GPU_POOL_TYPE=docker deployments/setup.sh   # a docker gpu pool (needs prefect-docker)
set -euo pipefail

PREFECT=${PREFECT:-prefect}
GPU_SLOTS=${GPU_SLOTS:-1}

create_pool() {  # name type
  local out
  if out=$("$PREFECT" work-pool create "$1" --type "$2" 2>&1); then
    echo "created work pool $1 ($2)"
  elif grep -q "already exists" <<<"$out"; then
    echo "work pool $1 exists: kept as it is"
  else
    echo "$out" >&2
    exit 1
  fi
}

create_pool cpu "${CPU_POOL_TYPE:-process}"
create_pool gpu "${GPU_POOL_TYPE:-process}"
# At most GPU_SLOTS stage runs at once in the gpu pool: with one GPU, never two training stages together.
"$PREFECT" work-pool set-concurrency-limit gpu "$GPU_SLOTS" >/dev/null
echo "gpu pool concurrency limit: $GPU_SLOTS"
