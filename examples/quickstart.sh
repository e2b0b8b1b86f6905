#!/usr/bin/env bash
# The embedded default, end to end: synthesise a clickstream with planted buyer types, prepare it,
# and summarise it. Run by `make demo` (which creates the venv first); OUT defaults to demo-run/.
set -euo pipefail
OUT=${1:-demo-run}
export HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0
start=$(date +%s)

simpersona synth --out "$OUT/raw" --buyers 3000 --merchants 12 --seed 7
simpersona prepare "$OUT/raw/logs" --mapping "$OUT/raw/mapping.yaml" --out "$OUT/data"
simpersona inspect "$OUT/data"

echo "demo finished in $(( $(date +%s) - start )) s; outputs under $OUT/"
