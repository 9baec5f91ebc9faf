"""ov2 train --preset NAME --out DIR [--steps N] [--resume] [key=value ...]
   ov2 train --recipe NAME --out DIR [key=value ...]      (all curriculum stages, resumable)

On several processes: torchrun --standalone --nproc_per_node=N -m openvision2.cli train ... (or
`torchrun ... $(which ov2) train ...`); see docs/DISTRIBUTED.md for multi-node and SLURM."""

from __future__ import annotations

NAME = "train"
HELP = "train a model from a named preset (or all stages of a recipe), with key=value overrides"


def add_arguments(parser) -> None:
    parser.add_argument("--preset", default="tiny-cpu", help="named preset (see --list)")
    parser.add_argument("--recipe", help="run every stage of a resolution-curriculum recipe into OUT/stage-*/ "
                                         "(see --list); finished stages are skipped, the current one resumes")
    parser.add_argument("--out", default="runs/tiny-cpu", help="run directory (metrics, checkpoints)")
    parser.add_argument("--steps", type=int, help="number of optimizer steps (overrides the preset)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in OUT from OUT/checkpoints/latest (model, optimizer, schedule, data "
                             "position, RNG); an empty or missing OUT starts a new run, a directory that is not a "
                             "run of ov2 is refused; a resume may change steps and bookkeeping, not what was "
                             "trained (docs/RELIABILITY.md)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start a new run in OUT that holds a run of ov2, deleting that run's checkpoints, "
                             "metrics and config (nothing else; without it, a non-empty OUT is refused unless "
                             "--resume)")
    parser.add_argument("--list", action="store_true", help="list presets and recipes and exit")
    parser.add_argument("--list-keys", action="store_true",
                        help="print every key (section.field, with its flat alias), the preset's value, the "
                             "default and the meaning, and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="override a preset field: section.field=value (model.keep_ratio=0.25) or its flat "
                             "alias (keep_ratio=0.25); see --list-keys")


def run(args) -> int:
    from ..errors import UserError
    from ..train.config import apply_overrides, describe_keys
    from ..train.presets import PRESETS, get_preset
    from ..train.recipes import RECIPE_HELP, RECIPES

    if args.list:
        for name, fn in PRESETS.items():
            print(f"{name}: {' '.join(fn.__doc__.split())}")
        for name in RECIPES:
            print(f"recipe {name}: {RECIPE_HELP[name]}")
        return 0
    if args.recipe:
        if args.list_keys:
            raise UserError("--list-keys shows a preset; a recipe's stages are in openvision2/train/recipes.py")
        if args.overwrite:
            raise UserError("a recipe always continues what is in --out: give a new --out instead of --overwrite")
        from ..train.recipes import get_recipe, run_recipe

        get_recipe(args.recipe)  # an unknown name fails before any process group starts
        return _distributed(lambda: (run_recipe(args.recipe, args.out, args.overrides, args.steps,
                                                progress=not args.no_progress) or [{}])[-1])
    config = apply_overrides(get_preset(args.preset), args.overrides)
    if args.steps is not None:
        config.optim.steps = args.steps
        config.validate()
    if args.list_keys:
        print("\n".join(describe_keys(config)))
        return 0
    from ..train.loop import train

    return _distributed(lambda: train(config, args.out, progress=not args.no_progress, resume=args.resume,
                                      overwrite=args.overwrite))


def _distributed(job) -> int:
    """Run the job, then leave the process group (if torchrun gave one) cleanly. A run stopped by
    SIGTERM (after saving) exits with PREEMPTED_EXIT, so schedulers see it as unfinished; one whose
    data source failed raises DataSourceFailed, which the CLI turns into its exit status (69)."""
    import torch.distributed as dist

    from ..train.faults import PREEMPTED_EXIT

    try:
        summary = job()
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return PREEMPTED_EXIT if summary.get("stopped") == "preempted" else 0
