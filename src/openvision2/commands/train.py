"""ov2 train --preset NAME --out DIR [--steps N] [key=value ...]"""

from __future__ import annotations

from dataclasses import fields

NAME = "train"
HELP = "train a model from a named preset, with key=value overrides of any preset field"


def add_arguments(parser) -> None:
    parser.add_argument("--preset", default="tiny-cpu", help="named preset (default: tiny-cpu; see --list)")
    parser.add_argument("--out", default="runs/tiny-cpu", help="run directory (metrics, checkpoints)")
    parser.add_argument("--steps", type=int, help="number of optimizer steps (overrides the preset)")
    parser.add_argument("--list", action="store_true", help="list presets and exit")
    parser.add_argument("--list-keys", action="store_true", help="print the preset's fields and values and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override a preset field")


def run(args) -> int:
    from ..train.config import apply_overrides
    from ..train.presets import PRESETS, get_preset

    if args.list:
        for name, fn in PRESETS.items():
            print(f"{name}: {' '.join(fn.__doc__.split())}")
        return 0
    config = apply_overrides(get_preset(args.preset), args.overrides)
    if args.steps is not None:
        config.steps = args.steps
    if args.list_keys:
        for field in fields(config):
            print(f"{field.name}={getattr(config, field.name)}")
        return 0
    from ..train.loop import train

    train(config, args.out, progress=not args.no_progress)
    return 0
