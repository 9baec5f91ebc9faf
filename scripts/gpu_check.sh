#!/usr/bin/env bash
# The whole GPU check in one command, for the minutes a GPU is lent: under 8 minutes on one H200, compile
# included, because every section has its own enforced time budget (455 s in all; bench/gpu_suite.py).
# OpenVision 2 vs OpenVision 1 at L/14 @84 and @224 in bf16 (step time, peak memory, MFU, largest batch
# with and without activation checkpointing), torch.compile on vs off, FSDP2 on 1 rank with nccl, and a
# 50-step `ov2 train` whose loss must fall. Writes OUT/gpu_check.json and OUT/gpu_check.txt after every
# finished entry, so an out-of-memory or a kill loses nothing finished (format: docs/BENCHMARKS.md,
# "The GPU check"). Exit status 0 when every entry passed, 1 when one failed (its error is in both files).
#   scripts/gpu_check.sh [OUT]              # default OUT: gpu-check
#   scripts/gpu_check.sh OUT --dry-run      # the same sections with tiny models on this machine's CPU
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu-check}"
shift || true
python="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
exec "$python" -m openvision2 bench --suite gpu --out "$out" "$@"
