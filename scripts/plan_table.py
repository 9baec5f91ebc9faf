"""The table of docs/DISTRIBUTED.md "Largest micro-batch per GPU": for every published encoder at 84, 224
and 384 px, OpenVision 2 and OpenVision 1, the largest micro-batch per device on H100-80GB and H200 with
each activation-checkpointing mode, from `ov2 plan`'s memory model (fake tensors, no GPU).

    python scripts/plan_table.py OUT_DIR [--jobs 2] [--gpus 8] [--only L/14,g/14]

Each (encoder, size, method) is the paper's stage for that size (`ov2 plan --encoder E --image-size R
--method M`: its decoder, text lengths, bf16, parallel as the stage sets it) at --gpus devices; for each
checkpointing mode plan/memory.py `measure` searches the largest micro-batch within 88% of each GPU's
memory by fake steps. Results are kept as OUT_DIR/<name>.json (a rerun skips what is there); the markdown
table is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from openvision2.hardware import accelerator
from openvision2.models.registry import PUBLISHED_ENCODERS

SIZES = (84, 224, 384)
METHODS = ("openvision2", "openvision1")
MODES = ("none", "selective", "full")
GPUS = ("H100-80GB", "H200")


def name_of(encoder: str, size: int, method: str) -> str:
    return f"{encoder.replace('/', '-')}_{size}_{method}"


def plan_one(out: Path, encoder: str, size: int, method: str, gpus: int) -> tuple[str, float]:
    from openvision2.commands.plan import _paper_config
    from openvision2.plan.memory import USABLE, GIB, measure
    from openvision2.train.parallel import resolve_parallel

    path = out / f"{name_of(encoder, size, method)}.json"
    if path.exists():
        return path.name, 0.0
    start = time.monotonic()
    config = _paper_config(encoder, size)
    config.model.method = method
    capacities = [USABLE * accelerator(gpu).memory_gib * GIB for gpu in GPUS]
    row = {"encoder": encoder, "decoder": config.model.decoder, "image_size": size, "method": method, "gpus": gpus,
           "parallel": resolve_parallel(config.parallel.strategy, gpus), "precision": config.parallel.precision,
           "text_len": config.model.text_len, "modes": {}}
    for mode in MODES:
        fit = measure(config, gpus, mode, capacities=tuple(capacities))
        row["modes"][mode] = {"largest": {gpu: fit.largest(c) for gpu, c in zip(GPUS, capacities)},
                              "measured": [[b, parts["total"] / GIB] for b, parts in fit.points]}
    row["plan_seconds"] = time.monotonic() - start
    path.with_suffix(".tmp").write_text(json.dumps(row, indent=1))
    path.with_suffix(".tmp").rename(path)
    return path.name, row["plan_seconds"]


def render(out: Path) -> str:
    head = ["encoder", "px", "method"] + [f"{gpu}: {mode}" for gpu in GPUS for mode in MODES]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for encoder in PUBLISHED_ENCODERS:
        for size in SIZES:
            for method in METHODS:
                path = out / f"{name_of(encoder, size, method)}.json"
                label = [encoder, str(size), "OV2" if method == "openvision2" else "OV1"]
                if not path.exists():
                    lines.append("| " + " | ".join(label + ["not computed"] * len(GPUS) * len(MODES)) + " |")
                    continue
                row = json.loads(path.read_text())
                cells = [f"{row['modes'][m]['largest'][gpu]:,}" for gpu in GPUS for m in MODES]
                lines.append("| " + " | ".join(label + cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--only", default="", help="comma-separated encoders (default: every published one)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    encoders = args.only.split(",") if args.only else PUBLISHED_ENCODERS
    work = [(e, s, m) for e in encoders for s in SIZES for m in METHODS]
    with ProcessPoolExecutor(args.jobs) as pool:
        jobs = [pool.submit(plan_one, args.out, *w, args.gpus) for w in work]
        for job in jobs:
            name, seconds = job.result()
            print(f"{name}: {seconds:.0f} s", flush=True)
    print(render(args.out))


if __name__ == "__main__":
    main()
