"""Evaluations run during training (every eval.every steps and at the end) and by `ov2 report`.

run_evals(model, tokenizer, config, data) returns a flat dict of numbers, e.g.
{"zeroshot/top1": .., "zeroshot/top5": .., "captions/cider": .., "captions/bleu4": ..,
 "captions/perplexity": .., "probe/linear": .., "probe/attentive": .., "probe/knn": ..},
ready to be written to metrics.jsonl. config is the run's `eval` section (eval/config.py): which
evaluations ("zeroshot", "captions", "probe"; empty: none), on how many images, on which task. data
says what the run trains on (HeldOut), which picks the default task and the held-out captions.
Their data is built once and cached.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from ..errors import UserError
from ..methods import AUTOREGRESSIVE, method_of
from .caption_metrics import caption_metrics
from .config import EVALS, EvalConfig, parse_evals
from .probe import run_probes
from .task_data import ClassificationTask
from .tasks import CaptionSet, load_task, shard_captions, synthetic_captions
from .zeroshot import zero_shot

__all__ = ["EVALS", "HeldOut", "captions_for", "parse_evals", "run_evals", "task_for"]


@dataclass(frozen=True)
class HeldOut:
    """What the evaluations need to know of the run's data: the dataset, its held-out shards, the seed."""

    dataset: str = "synthetic"
    val_shards: str = ""
    seed: int = 0


def task_for(config: EvalConfig, data: HeldOut, image_size: int) -> ClassificationTask | None:
    """The classification task of the run's data: the embedded dataset's, or Fashion-MNIST shards'."""
    name = config.task or ("synthetic-object" if data.dataset == "synthetic" else "")
    if not name:
        return None  # shards of unknown content: no labels to classify
    shards = config.shards or _shard_dir(data.val_shards)
    images = max(1, config.images)
    return load_task(name, image_size, num_train=2 * images, num_test=images, seed=data.seed, shards=shards)


def captions_for(config: EvalConfig, data: HeldOut, image_size: int) -> CaptionSet:
    count = max(1, config.images)
    if data.dataset == "synthetic":
        return _synthetic_captions(count, image_size, data.seed)
    source = config.shards or data.val_shards
    if not source:
        raise UserError("caption metrics on shards need val_shards (or eval_shards) in the config")
    return _shard_captions(source, count, image_size)


@lru_cache(maxsize=4)
def _synthetic_captions(count, image_size, seed):
    return synthetic_captions(count, image_size, seed)


@lru_cache(maxsize=4)
def _shard_captions(source, count, image_size):
    return shard_captions(source, count, image_size)


def _shard_dir(spec: str) -> str:
    from pathlib import Path

    if not spec or "{" in spec or ";" in spec:
        return ""
    path = Path(spec)
    return str(path if path.is_dir() else path.parent)


def run_evals(model, tokenizer, config: EvalConfig, data: HeldOut = HeldOut(), evals: str | None = None,
              attentive_epochs: int = 10) -> dict[str, float]:
    """The configured evaluations of `model` (left in the train/eval mode it came in)."""
    chosen = parse_evals(config.evals if evals is None else evals)
    image_size = model.config.image_size
    if model.decoder is None or method_of(model).decoding != AUTOREGRESSIVE:
        # no left-to-right decoder (an encoder only, or OpenVision 1's parallel one): only the probes apply
        chosen = tuple(e for e in chosen if e == "probe")
    metrics: dict[str, float] = {}
    task = task_for(config, data, image_size) if {"zeroshot", "probe"} & set(chosen) else None
    if "zeroshot" in chosen and task is not None:
        result = zero_shot(model, tokenizer, task.test.images, task.test.labels, task.prompts)
        metrics["zeroshot/top1"], metrics["zeroshot/top5"] = result["top1"], result["top5"]
    if "captions" in chosen:
        held_out = captions_for(config, data, image_size)
        result = caption_metrics(model, tokenizer, held_out.images, held_out.references)
        for key in ("cider", "bleu4", "perplexity", "exact_match", "repeated_phrase_share"):
            metrics[f"captions/{key}"] = result[key]
        if held_out.skipped:  # bad held-out samples passed over (each reason logged once per shard)
            metrics["captions/skipped"] = float(sum(held_out.skipped.values()))
    if "probe" in chosen and task is not None:
        result = run_probes(model, task, attentive_epochs=attentive_epochs)
        metrics["probe/linear"] = result["linear_pooled"]["accuracy"]
        metrics["probe/attentive"] = result["attentive"]["accuracy"]
        metrics["probe/knn"] = result["knn"]["accuracy"]
    return metrics
