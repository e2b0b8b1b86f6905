#!/usr/bin/env bash
# Packs into .gpu/ (git-ignored) what benchmarks/gpu_check.sh needs on a lent GPU machine, which has
# torch, transformers and pyarrow but no Ray, gymnasium or polars, and no package index:
#   make gpu-bundle                       # here, once: 14 minutes on a busy 2-core box (the VQ-VAE most)
#   bash benchmarks/gpu_check.sh          # there, with .gpu carried (device run's carry: [".gpu"])
# - .gpu/site: gymnasium and its pure-Python dependencies, unpacked (the versions of this venv);
# - .gpu/polars.tar.xz: polars and its runtime, unpacked then xz-compressed (the wheel alone is over
#   50 MiB, past what a device run carries once the tree is counted);
# - .gpu/brand: the brand study's traces, codes and training data (simpersona study on
#   examples/study-tmall-brand-cpu.yaml with only the Markov chain to simulate: the agents are the
#   GPU check's to train).
set -euo pipefail
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-.gpu}
version() { "$PY" -m pip show "$1" | sed -n 's/^Version: //p'; }
mkdir -p "$OUT"
rm -rf "$OUT/site"
"$PY" -m pip install --quiet --no-deps --target "$OUT/site" \
  "gymnasium==$(version gymnasium)" "farama-notifications==$(version farama-notifications)" \
  "cloudpickle==$(version cloudpickle)"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m pip install --quiet --no-deps --target "$tmp" \
  "polars==$(version polars)" "polars-runtime-32==$(version polars-runtime-32)"
tar -C "$tmp" -cJf "$OUT/polars.tar.xz" .
if [ ! -f "$OUT/brand/traces/traces.parquet" ]; then
  "$PY" -m engine.cli study examples/study-tmall-brand-cpu.yaml --out "$tmp/study" \
    --variants same-window --systems markov --goal-systems markov --goal-merchants 1 --bootstrap 10
  mkdir -p "$OUT/brand"
  for part in traces codes train-data; do
    rm -rf "$OUT/brand/$part" && cp -r "$tmp/study/$part" "$OUT/brand/$part"
  done
fi
du -sh "$OUT"/*
