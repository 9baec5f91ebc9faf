"""ov2 bench [--model S/16 --res 224 | --preset NAME] ...   and   ov2 bench data ...

Without a sub-target it benchmarks training steps (openvision2.bench.train_step); `ov2 bench data`
benchmarks the input pipeline (openvision2.bench.data)."""

from __future__ import annotations

import importlib

NAME = "bench"
HELP = "benchmark train steps (default) or, with `data`, the input pipeline"
TARGETS = {"data": "openvision2.bench.data"}
DEFAULT = "openvision2.bench.train_step"


def _load(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        return None


def add_arguments(parser) -> None:
    default = _load(DEFAULT)
    if default is not None:
        default.add_arguments(parser)
        parser.set_defaults(bench_run=default.run)
    sub = parser.add_subparsers(dest="bench_target", metavar="TARGET")
    for name, module_name in TARGETS.items():
        module = _load(module_name)
        if module is not None:
            target = sub.add_parser(name, help=module.HELP, description=module.HELP)
            module.add_arguments(target)
            target.set_defaults(bench_run=module.run)


def run(args) -> int:
    from ..errors import UserError

    if not hasattr(args, "bench_run"):
        raise UserError("no benchmark is available in this installation")
    return args.bench_run(args)
