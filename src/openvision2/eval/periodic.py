"""Evaluations run during training (every eval_every steps and at the end) and by `ov2 report`.

run_evals(model, tokenizer, config) returns a flat dict of numbers, e.g.
{"zeroshot/top1": .., "zeroshot/top5": .., "captions/cider": .., "captions/bleu4": ..,
 "captions/perplexity": .., "probe/linear": .., "probe/attentive": .., "probe/knn": ..},
ready to be written to metrics.jsonl. Which evaluations run: config.evals, a comma list of
"zeroshot", "captions", "probe" (empty: none). Their data is built once and cached.
"""

from __future__ import annotations

from functools import lru_cache

from ..errors import UserError
from .caption_metrics import caption_metrics
from .probe import run_probes
from .tasks import CaptionSet, ClassificationTask, load_task, shard_captions, synthetic_captions
from .zeroshot import zero_shot

EVALS = ("zeroshot", "captions", "probe")


def parse_evals(text: str) -> tuple[str, ...]:
    chosen = tuple(e.strip() for e in text.split(",") if e.strip())
    unknown = [e for e in chosen if e not in EVALS]
    if unknown:
        raise UserError(f"unknown evaluation {', '.join(unknown)} in evals={text!r}: use some of {', '.join(EVALS)}")
    return chosen


def task_for(config) -> ClassificationTask | None:
    """The classification task of the run's data: the embedded dataset's, or Fashion-MNIST shards'."""
    name = getattr(config, "eval_task", "") or ("synthetic-object" if config.dataset == "synthetic" else "")
    if not name:
        return None  # shards of unknown content: no labels to classify
    shards = getattr(config, "eval_shards", "") or _shard_dir(getattr(config, "val_shards", ""))
    return load_task(name, config.image_size, num_train=2 * config_images(config), num_test=config_images(config),
                     seed=config.seed, shards=shards)


def captions_for(config) -> CaptionSet:
    count = config_images(config)
    if config.dataset == "synthetic":
        return _synthetic_captions(count, config.image_size, config.seed)
    source = getattr(config, "eval_shards", "") or getattr(config, "val_shards", "")
    if not source:
        raise UserError("caption metrics on shards need val_shards (or eval_shards) in the config")
    return _shard_captions(source, count, config.image_size)


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


def config_images(config) -> int:
    return max(1, int(getattr(config, "eval_images", 256)))


def run_evals(model, tokenizer, config, evals: str | None = None, attentive_epochs: int = 10) -> dict[str, float]:
    """The configured evaluations of `model` (left in the train/eval mode it came in)."""
    chosen = parse_evals(getattr(config, "evals", "") if evals is None else evals)
    if not hasattr(getattr(model, "decoder", None), "forward_cached"):
        # no left-to-right decoder (e.g. OpenVision 1's parallel one): only the probes apply
        chosen = tuple(e for e in chosen if e == "probe")
    metrics: dict[str, float] = {}
    task = task_for(config) if {"zeroshot", "probe"} & set(chosen) else None
    if "zeroshot" in chosen and task is not None:
        result = zero_shot(model, tokenizer, task.test.images, task.test.labels, task.prompts)
        metrics["zeroshot/top1"], metrics["zeroshot/top5"] = result["top1"], result["top5"]
    if "captions" in chosen:
        data = captions_for(config)
        result = caption_metrics(model, tokenizer, data.images, data.references)
        for key in ("cider", "bleu4", "perplexity", "exact_match"):
            metrics[f"captions/{key}"] = result[key]
    if "probe" in chosen and task is not None:
        result = run_probes(model, task, attentive_epochs=attentive_epochs)
        metrics["probe/linear"] = result["linear_pooled"]["accuracy"]
        metrics["probe/attentive"] = result["attentive"]["accuracy"]
        metrics["probe/knn"] = result["knn"]["accuracy"]
    return metrics
