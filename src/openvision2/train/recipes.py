"""The resolution curriculum (DESIGN.md §4.3) as recipes: ordered stages, each a complete TrainConfig.

A stage restores all weights from the previous stage's final export (`init_from`) and starts a
fresh optimizer and schedule; the peak LR is base_lr x batch/256 in every stage. `run_recipe`
trains the stages in order into OUT/stage-<name>/, skips stages already finished, resumes the
unfinished one from its latest checkpoint, and points OUT/checkpoints/latest at the newest export
(so `ov2 caption --checkpoint OUT` works).

Paper stages (DESIGN.md §4.3; 1 ep = 1,281,167 samples, steps = floor(ep x 1,281,167 / batch); the numbers
live in presets.PAPER_STAGES, whose pretraining stage is also the l14-stage1 preset):
    pretrain  84 px, batch 32768, 10000 ep = 390,981 steps, warmup 1,563, base_lr 8e-6 (peak 1.024e-3)
    finetune 224 px, batch 16384,   800 ep =  62,556 steps, warmup 1,563, base_lr 4e-7 (peak 2.56e-5)
    high-res 336/384/448 px, batch 8192, 200 ep = 31,278 steps, no warmup, base_lr 1e-7 (inferred, OV1's script)
Decoders (models/registry.py PAPER_DECODERS, shared with `ov2 flops`): L for L/14 and So400m-shaped
for So400m/14 (inferred from FLOPs, DESIGN.md §2); H/14 and g/14 are unknown, and take the H decoder
(1024 x 24, the size OpenVision 1 calls `g`).
Data (presets.PAPER_DATA, DESIGN.md §3.2, §4.1): shards of the recaptioned corpus, caption key
llava_llama3_condition_True_dense_weighted_topk (ReCap-DataComp-1B v2; with v1 use
caption_key=re_caption), shuffle buffer 250,000; the embedded dataset is refused unless
allow_embedded=true (on it the recipes only show that the shapes run).
Precision: bf16 autocast (fast on GPUs); the released OpenVision 2 trains in float32, so
precision=fp32 is the faithful setting (DESIGN.md §1.2).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..checkpoint import LATEST
from ..durable import write_durably
from ..errors import UserError
from ..logs import get_logger, setup_logging
from ..models.registry import paper_decoder
from . import presets, rundir
from .config import TrainConfig, apply_overrides
from .presets import tiny_cpu

DONE = "stage-done.json"
logger = get_logger("train")
RECIPE = "recipe.json"


@dataclass(frozen=True)
class Stage:
    name: str
    config: TrainConfig


def paper_stage(kind: str, encoder: str, decoder: str, image_size: int) -> Stage:
    """One of the paper's stages (presets.paper_stage), named by its resolution."""
    return Stage(f"{image_size}", presets.paper_stage(kind, encoder, decoder, image_size))


def paper_recipe(encoder: str, high_res: int | None = None) -> list[Stage]:
    decoder = paper_decoder(encoder)
    stages = [paper_stage("pretrain", encoder, decoder, 84), paper_stage("finetune", encoder, decoder, 224)]
    if high_res:
        stages.append(paper_stage("highres", encoder, decoder, high_res))
    return stages


def tiny_cpu_recipe() -> list[Stage]:
    """tiny-cpu's model in 8 px patches through the same two stages, shrunk: 32 px (a 4x4 grid, as
    84 px gives 6x6 with /14) at tiny-cpu's LR, then 64 px (8x8, as 224 px gives 16x16) with a
    quarter of the LR and a shorter schedule, like the paper's short fine-tune."""
    low = tiny_cpu().replace(encoder="nano/8", image_size=32, steps=600, warmup_steps=30, eval_every=200,
                  ckpt_every=200)
    high = tiny_cpu().replace(encoder="nano/8", image_size=64, steps=200, warmup_steps=10, base_lr=low.base_lr / 4,
                   eval_every=100, ckpt_every=100)
    return [Stage("32", low), Stage("64", high)]


RECIPES: dict[str, Callable[[], list[Stage]]] = {
    "tiny-cpu": tiny_cpu_recipe,
    "l14": lambda: paper_recipe("L/14"),
    "l14-336": lambda: paper_recipe("L/14", 336),
    "so400m14-384": lambda: paper_recipe("So400m/14", 384),
    "h14": lambda: paper_recipe("H/14"),
    "h14-336": lambda: paper_recipe("H/14", 336),
    "h14-448": lambda: paper_recipe("H/14", 448),
    "g14": lambda: paper_recipe("g/14"),
}
RECIPE_HELP = {
    "tiny-cpu": "tiny-cpu's model at 32 px then 64 px on the embedded dataset: the curriculum on 2 CPU cores",
    "l14": "paper ViT-L/14: 84 px pretraining (12.8B samples) then 224 px fine-tuning (1.0B); GPUs",
    "l14-336": "l14 plus a 336 px stage (256M samples, inferred from OpenVision 1); GPUs",
    "so400m14-384": "paper SoViT-400M/14 with a So400m-shaped decoder: 84 -> 224 -> 384 px; GPUs",
    "h14": "paper ViT-H/14 (H decoder, unconfirmed): 84 -> 224 px; GPUs",
    "h14-336": "h14 plus a 336 px stage; GPUs",
    "h14-448": "h14 plus a 448 px stage; GPUs",
    "g14": "paper ViT-g/14, 1.01B parameters (H decoder, unconfirmed): 84 -> 224 px; GPUs, FSDP2 from the meta device",
}


def get_recipe(name: str) -> list[Stage]:
    if name not in RECIPES:
        raise UserError(f"unknown recipe {name!r}: use one of {', '.join(RECIPES)}")
    return RECIPES[name]()


def stage_dir(out_dir: Path, stage: Stage) -> Path:
    return out_dir / f"stage-{stage.name}"


def run_recipe(name: str, out_dir: str | Path, overrides: list[str] = (), steps: int | None = None,
               progress: bool = True) -> list[dict]:
    """Train every stage of a recipe in order; returns the summaries of the stages run now. OUT is
    locked for all stages; a later stage reuses the automatic choices (precision, threads, ...) that
    the first recorded, so a curriculum never changes precision between stages."""
    from .distributed import init_world

    setup_logging()
    world = init_world()
    out_dir = Path(out_dir)
    with rundir.owned(out_dir, world, what="recipe", claim=lambda: claim_for_recipe(out_dir, name)):
        return _run_stages(name, out_dir, overrides, steps, progress, world)


def claim_for_recipe(out_dir: Path, name: str) -> None:
    """OUT/recipe.json names the recipe that owns OUT: another recipe, or a directory holding
    something else, is refused rather than mixed in."""
    marker = out_dir / RECIPE
    if marker.is_file():
        owner = json.loads(marker.read_text()).get("recipe")
        if owner != name:
            raise UserError(f"{out_dir} holds recipe {owner!r}, not {name!r}: continue it with --recipe {owner}, "
                            f"or choose another --out")
        return
    others = [n for n in rundir.existing_run_files(out_dir) if not n.startswith("stage-") and n != "checkpoints"]
    if others:
        raise UserError(f"{out_dir} is not empty ({', '.join(others[:4])}) and is not a recipe's directory: "
                        f"choose another --out")
    write_durably(marker, json.dumps({"recipe": name}) + "\n")


def _run_stages(name: str, out_dir: Path, overrides, steps, progress, world) -> list[dict]:
    from .distributed import barrier
    from .loop import train

    stages, summaries, previous = get_recipe(name), [], None
    for index, stage in enumerate(stages):
        directory = stage_dir(out_dir, stage)
        config = apply_overrides(stage.config.replace(), list(overrides))
        if steps is not None:
            config.steps = steps
        if previous is not None:
            config.init_from = str(previous)
        if (directory / DONE).is_file():
            previous = directory
            continue
        if world.is_main:
            logger.info(f"== recipe {name}: stage {index + 1}/{len(stages)} ({stage.name}) in {directory}")
        inherit = rundir.recorded(previous) if previous is not None else {}
        summary = train(config, directory, progress=progress, resume=True, inherit=inherit)
        summaries.append(summary)
        if summary.get("stopped"):
            return summaries
        if world.is_main:
            write_durably(directory / DONE, json.dumps({k: summary[k] for k in ("first_val_loss", "final_val_loss",
                                                                                "step", "checkpoint")}) + "\n")
            link_latest(out_dir, directory)
        barrier(world)
        previous = directory
    if not summaries and world.is_main:
        logger.info(f"recipe {name}: all {len(stages)} stages are finished in {out_dir}")
    return summaries


def link_latest(out_dir: Path, directory: Path) -> None:
    """OUT/checkpoints/latest -> the newest stage's export, as a relative path."""
    stage_latest = (directory / "checkpoints" / LATEST).read_text().strip()
    pointer_dir = out_dir / "checkpoints"
    pointer_dir.mkdir(parents=True, exist_ok=True)
    write_durably(pointer_dir / LATEST, f"../{directory.name}/checkpoints/{stage_latest}\n")
