#!/usr/bin/env bash
# The embedded default, end to end on a laptop: synthesise a clickstream with planted buyer types,
# prepare it, learn buyer types, replay real sessions into traces, fine-tune a tiny persona agent,
# simulate every merchant's buyers on Ray, and compare them with the real ones.
# Run by `make demo` (which creates the venv first); OUT defaults to demo-run/.
set -euo pipefail
OUT=${1:-demo-run}
export HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0
start=$(date +%s)
step() { echo; echo "== $* ($(( $(date +%s) - start )) s)"; }

step "synthesise 3,000 buyers of 12 merchants"
simpersona synth --out "$OUT/raw" --buyers 3000 --merchants 12 --seed 7
step "prepare the raw logs"
simpersona prepare "$OUT/raw/logs" --mapping "$OUT/raw/mapping.yaml" --out "$OUT/data"
simpersona inspect "$OUT/data" --top 5
step "fit 8 buyer types (VQ-VAE on Ray Train) and assign every buyer"
simpersona fit-personas "$OUT/data" --codes 8 --workers 1 --epochs 6 --truth "$OUT/raw/truth.parquet" \
    --out "$OUT/personas" 2>&1 | grep -v -e "Reporting training result" -e "^\s*$"
step "replay real sessions through the storefront"
simpersona traces "$OUT/data" --out "$OUT/traces" --max-sessions 25
step "fine-tune the tiny persona agent (two stages, Ray Train)"
simpersona train-agent "$OUT/traces" --personas "$OUT/personas" --base-model tiny --workers 1 \
    --stage1-epochs 1 --stage2-epochs 2 --out "$OUT/agent" 2>&1 | grep -v "Reporting training result"
step "simulate 20 buyers per merchant: persona agent, and a uniform random baseline"
simpersona simulate --config examples/sim.yaml --data "$OUT/data" \
    --distributions "$OUT/personas/merchant_distributions.parquet" --buyers-per-merchant 20 \
    --policy transformers --policy-path "$OUT/agent" --out "$OUT/sim-persona"
simpersona simulate --config examples/sim.yaml --data "$OUT/data" \
    --distributions "$OUT/personas/merchant_distributions.parquet" --buyers-per-merchant 20 \
    --policy random --policy-path "" --out "$OUT/sim-random"
step "compare simulated with real buyers"
simpersona evaluate --real "$OUT/data" --sim persona="$OUT/sim-persona" --sim random="$OUT/sim-random" \
    --out "$OUT/report"

echo
echo "demo finished in $(( $(date +%s) - start )) s; report: $OUT/report/index.html, buyer types: $OUT/personas/report.html"
