"""`python -m openvision2.plan.child`: the fake run in a fresh process (plan/memory.py starts it where the
calling process cannot host torch's fake process group). Reads {config, and memory.measure_here's
arguments} as JSON on stdin, writes the MemoryFit as JSON on stdout."""

from __future__ import annotations

import json
import sys

from ..train.config import TrainConfig
from .memory import measure_here


def main() -> None:
    request = json.load(sys.stdin)
    config = TrainConfig.from_dict(request.pop("config"))
    print(json.dumps(measure_here(config, **request).to_dict()))


if __name__ == "__main__":
    main()
