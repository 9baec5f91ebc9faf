#!/usr/bin/env bash
# The paper's models really stepped on CPU ranks (docs/DISTRIBUTED.md, "The scale check"): ViT-L/14 + L
# decoder at 84 px, OpenVision 2 and 1, FSDP2 on 4 gloo ranks from the meta device, selective
# checkpointing, bf16, on shards; a SIGKILLed rank restarted by torchrun; resumes on 2 then 3 ranks with
# the exact next samples; So400m/14 at 384 px one step on 2 ranks. ~20 minutes on 2 cores, ~20 GiB.
#   scripts/scale_check.sh [--out DIR]           # default DIR: scale-check (made fresh)
#   scripts/scale_check.sh --size tiny           # the same checks with 1-block models (seconds)
#   scripts/scale_check.sh --methods openvision2 --checks reference,reshard
# Exit status 0 when every check passed; DIR/scale_check.json holds the checks and the figures.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # one thread per rank: the ranks share the cores
exec "$python" scripts/scale_check.py --python "$python" "$@"
