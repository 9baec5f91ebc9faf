"""`python -m openvision2.plan.child`: the fake run in a fresh process (plan/memory.py starts it where the
calling process cannot host torch's fake process group). Reads {config, world_size, checkpointing, accumulate} as JSON
on stdin, writes the tracked steps (plan/fake.py Tracked, at memory.FIT_MICRO_BATCHES) as JSON on stdout."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

from ..train.config import TrainConfig
from .fake import tracked_steps
from .memory import FIT_MICRO_BATCHES


def main() -> None:
    request = json.load(sys.stdin)
    config = TrainConfig.from_dict(request["config"])
    steps = tracked_steps(config, request["world_size"], FIT_MICRO_BATCHES, request["checkpointing"],
                          request["accumulate"])
    print(json.dumps([asdict(step) for step in steps]))


if __name__ == "__main__":
    main()
