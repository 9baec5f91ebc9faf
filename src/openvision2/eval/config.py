"""The `eval` section of a training config: what is evaluated during training, how often, on what."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from ..options import check_fields, option

EVALS = ("zeroshot", "captions", "probe")


def parse_evals(text: str) -> tuple[str, ...]:
    chosen = tuple(e.strip() for e in text.split(",") if e.strip())
    unknown = [e for e in chosen if e not in EVALS]
    if unknown:
        raise UserError(f"unknown evaluation {', '.join(unknown)} in evals={text!r}: use some of {', '.join(EVALS)}")
    return chosen


@dataclass
class EvalConfig:
    every: int = option(100, "steps between held-out evaluations (and at the end)", low=1, alias="eval_every")
    evals: str = option("zeroshot,captions", "comma list of zeroshot, captions, probe; empty = none")
    images: int = option(256, "held-out images per evaluation (probes train on twice as many)", low=1,
                         high=65_536, high_open=False, alias="eval_images")
    task: str = option("", "zero-shot / probe task; empty = the dataset's (synthetic-object), or fashion-mnist",
                       alias="eval_task")
    shards: str = option("", "Fashion-MNIST shard directory for task fashion-mnist; empty = val_shards' directory",
                         alias="eval_shards")
    show_captions: int = option(8, "held-out images printed with their captions at the end", low=0)

    def validate(self) -> "EvalConfig":
        check_fields(self, "")
        parse_evals(self.evals)
        return self
