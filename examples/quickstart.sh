#!/usr/bin/env bash
# The embedded default, end to end on a laptop: synthesise a clickstream with planted buyer types of
# 12 merchants, then run the evaluation protocol on it (examples/study-demo.yaml): prepare the logs,
# hold 4 merchants out, learn buyer types on the other 8 (VQ-VAE on Ray Train), replay their sessions
# into traces, fine-tune the tiny persona agent and its baselines, simulate the held-out merchants'
# buyers on Ray and compare them with the real ones. Every stage prints the simpersona command that
# re-runs it by hand.
# Run by `make demo` (which creates the venv first); OUT defaults to demo-run/.
set -euo pipefail
OUT=${1:-demo-run}
export HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0
start=$(date +%s)

echo "== synthesise 3,000 buyers of 12 merchants"
simpersona synth --out "$OUT/raw" --buyers 3000 --merchants 12 --seed 7
simpersona study examples/study-demo.yaml --out "$OUT/study" --inputs "$OUT/raw/logs" \
    --mapping "$OUT/raw/mapping.yaml" 2>&1 | grep -v -e "Reporting training result" -e "^\s*$"

echo
echo "demo finished in $(( $(date +%s) - start )) s"
echo "open $OUT/study/index.html (targets and reports) and $OUT/study/personas/report.html (the buyer types)"
