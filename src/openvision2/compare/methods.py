"""The run configuration of each compared method, and what still differs between them.

Every method starts from the same preset (data, seed, encoder size, resolution, batch, schedule);
a method then changes exactly the fields its own tiny-cpu preset changes against `tiny-cpu`
(e.g. OpenVision 1: method, text encoder, alt-text length; CapPa: keep ratio 1, parallel
prediction, learned text positions). The differences left are listed for the report.
"""

from __future__ import annotations

from ..errors import UserError
from ..train.config import FLAT_KEYS, TrainConfig, apply_overrides
from ..train.presets import get_preset

METHODS = ("openvision2", "openvision1", "cappa")
_METHOD_PRESETS = {"openvision2": "tiny-cpu", "openvision1": "tiny-cpu-ov1", "cappa": "tiny-cpu-cappa"}
BOOKKEEPING = {"out", "log_every", "eval_every", "ckpt_every", "keep_checkpoints", "show_captions", "tensorboard",
               "evals", "eval_images", "eval_task", "eval_shards"}


def method_fields(method: str) -> dict:
    """The fields the method's own preset sets differently from tiny-cpu (its definition as a change)."""
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}: compare some of {', '.join(METHODS)}")
    base, own = get_preset("tiny-cpu"), get_preset(_METHOD_PRESETS[method])
    return {name: getattr(own, name) for name in FLAT_KEYS if getattr(own, name) != getattr(base, name)}


def method_config(preset: str, method: str, overrides: list[str], steps: int | None = None,
                  warmup: int | None = None) -> TrainConfig:
    """The preset, then the method's own fields, then the user's overrides, then steps and warmup."""
    config = get_preset(preset)
    for key, value in method_fields(method).items():
        setattr(config, key, value)
    config = apply_overrides(config, overrides)
    if steps is not None:
        config.steps = steps
    if warmup is not None:
        config.warmup_steps = warmup
    check_fair(config)
    return config


def check_fair(config: TrainConfig) -> None:
    """OpenVision 1's contrastive loss needs a real alt-text, distinct from the target caption."""
    if config.method != "openvision1" or config.dataset != "shards":
        return  # the embedded dataset has its own alt-text (colours and shapes only)
    if not config.alt_caption_key or config.alt_caption_key == config.caption_key:
        raise UserError("openvision1 needs an alt-text distinct from the caption: these shards would give it the "
                        "caption twice; set alt_caption_key=FIELD (a field of the shards' json) or leave it out")


def differences(configs: dict[str, TrainConfig]) -> dict[str, dict]:
    """{field: {method: value}} for every training field that is not the same for all methods."""
    out = {}
    for name in FLAT_KEYS:
        if name in BOOKKEEPING:
            continue
        values = {m: getattr(c, name) for m, c in configs.items()}
        if len({repr(v) for v in values.values()}) > 1:
            out[name] = values
    return out
