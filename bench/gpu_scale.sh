#!/usr/bin/env bash
# Issue 14, deliverable 5, on one GPU within ten minutes (bench/gpu_scale.py describes both runs):
#   1. the largest preset whose sharded checkpoint fits the scratch disk: train, save (DCP), resume;
#   2. the largest preset that fits the GPU with FSDP + activation checkpointing + bf16: train only.
# Reports: $OUT/gpu_scale_<preset>.json (OUT defaults to ./gpu_scale_out).
#   PY=.venv/bin/python OUT=/some/dir bench/gpu_scale.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-gpu_scale_out}
"$PY" bench/gpu_scale.py --out "$OUT" --budget-s 270
"$PY" bench/gpu_scale.py --out "$OUT" --budget-s 270 --no-checkpoint
