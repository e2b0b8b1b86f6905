#!/usr/bin/env bash
# The GPU check on a lent GPU machine, from the repository root, with .gpu carried
# (benchmarks/gpu_bundle.sh builds it here):
#   bash benchmarks/gpu_check.sh [benchmarks/gpu_check.py flags]
# Unpacks polars and gymnasium from .gpu onto PYTHONPATH (the machine lacks them), runs
# benchmarks/gpu_check.py on the brand study's traces in .gpu/brand, and copies its JSON and table
# into $OUT (what a device run brings back); the trained agent stays on the machine.
set -euo pipefail
site=$(mktemp -d)
tar -xJf .gpu/polars.tar.xz -C "$site"
export PYTHONPATH="$PWD:$PWD/.gpu/site:$site" HF_HUB_OFFLINE=1
work=$(mktemp -d)
out=${OUT:-$work}
python -m benchmarks.gpu_check --study .gpu/brand --out "$work/check" "$@" | tee "$out/gpu-check.log"
cp "$work/check/gpu-check.json" "$out/"
