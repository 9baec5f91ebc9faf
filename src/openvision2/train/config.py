"""The training configuration, in sections as torchtitan's and big_vision's are: model (models/config.py),
data (data/config.py), optim, parallel, eval (eval/config.py) and run. A named preset fills it and
`key=value` overrides change it; each layer is handed only its section.

Keys: `section.field` (e.g. model.keep_ratio=0.25), or the flat name every field had before the
config had sections (keep_ratio=0.25, eval_every=50, parallel=fsdp), which stays an alias, for
overrides and for attribute access (config.keep_ratio). Every field declares its meaning and valid
range (options.option), so `ov2 train --list-keys` and the up-front validation read one declaration.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
from dataclasses import asdict, dataclass, fields

from ..data.config import DataConfig
from ..errors import UserError
from ..eval.config import EvalConfig
from ..models.config import ModelConfig
from ..options import check_fields, default_of, describe, option

PARALLEL_STRATEGIES = ("auto", "none", "ddp", "fsdp")
ACTIVATION_CHECKPOINTING = ("none", "full", "selective")
PRECISIONS = ("auto", "bf16", "fp32")


@dataclass
class OptimConfig:
    """AdamW with warmup + cosine (DESIGN.md §4.4, §4.5)."""

    batch_size: int = option(256, "global batch (all ranks and micro-batches together)", low=1, high=2**20,
                             high_open=False)
    steps: int = option(1000, "optimizer steps", low=1)
    warmup_steps: int = option(100, "linear warmup steps", low=0)
    base_lr: float = option(8e-6, "learning rate per 256 images: peak LR = base_lr x batch_size / 256",
                            low=0.0, low_open=True)
    weight_decay: float = option(0.2, "AdamW weight decay (decoupled)", low=0.0)
    beta1: float = option(0.9, "AdamW beta1", low=0.0, high=1.0)
    beta2: float = option(0.95, "AdamW beta2", low=0.0, high=1.0)
    eps: float = option(1e-8, "AdamW epsilon", low=0.0, low_open=True)
    caption_loss_weight: float = option(2.0, "weight of the caption loss (the release's x2); reported losses "
                                             "are unweighted", low=0.0, low_open=True)

    @property
    def peak_lr(self) -> float:
        return self.base_lr * self.batch_size / 256


@dataclass
class ParallelConfig:
    """Scale-out under torchrun: wrapping, accumulation, initialisation, precision (docs/DISTRIBUTED.md)."""

    strategy: str = option("auto", "auto (ddp with >1 rank, else none), none, ddp or fsdp (FSDP2 per block)",
                           choices=PARALLEL_STRATEGIES, alias="parallel")
    micro_batch: str = option("auto", "images per device per forward: auto (a GPU: the largest that fits its "
                              "memory, by `ov2 plan`; a CPU: the rank's whole share) or a number; recorded, "
                              "reused on resume")
    grad_accum: int = option(0, "micro-batches per step and rank (fixes micro_batch = batch_size / (ranks x "
                             "grad_accum)); 0 = follows from micro_batch", low=0)
    activation_checkpointing: str = option("none", "per block: none, full, or selective (keeps matmul outputs)",
                                           choices=ACTIVATION_CHECKPOINTING)
    compile: bool = option(False, "torch.compile each transformer block")
    meta_init: bool = option(False, "build on the meta device, shard, then initialise (1B+ models under FSDP)")
    precision: str = option("auto", "auto (bf16 where the hardware computes it natively: Ampere+ GPUs, CPUs with "
                            "AVX-512 BF16 or AMX; else fp32; recorded in the run and reused on resume), bf16 or fp32",
                            choices=PRECISIONS)

    def fixed_micro_batch(self) -> int | None:
        """micro_batch as given: None for auto, else a positive integer (an override arrives as text)."""
        if self.micro_batch == "auto":
            return None
        text = str(self.micro_batch)
        if isinstance(self.micro_batch, bool) or not text.isdigit() or int(text) < 1:
            raise UserError(f"micro_batch must be auto or a positive integer (images per device per forward), "
                            f"got {self.micro_batch!r}")
        return int(text)


@dataclass
class RunConfig:
    """Bookkeeping: seed, logging, checkpoints, where the weights start, when a run gives up."""

    # The mask seed (seed x 1 000 003 + step) x 65 537 + micro-batch stays below 2**64 (torch.manual_seed).
    seed: int = option(0, "seed of the data order, the initialisation and the token masks", low=0, high=2**28)
    log_every: int = option(10, "steps between metric records", low=1)
    ckpt_every: int = option(500, "steps between checkpoints (and at the end)", low=1)
    keep_checkpoints: int = option(2, "checkpoints kept (older ones are deleted)", low=1)
    init_from: str = option("", "checkpoint or run directory whose weights start this run (next curriculum stage)")
    max_bad_steps: int = option(20, "consecutive steps with a NaN/inf loss or gradient before the run stops", low=1)
    peak_tflops: float = option(0.0, "per-device peak TFLOP/s for MFU; 0 = known GPUs only", low=0.0)
    tensorboard: bool = option(True, "also log to OUT/tensorboard")


SECTION_HELP = {"model": "the model (models/config.py); saved in every checkpoint's config.json",
                "data": "samples and tokens (data/config.py)", "optim": "AdamW, warmup + cosine (DESIGN.md §4.4, §4.5)",
                "parallel": "scale-out under torchrun (docs/DISTRIBUTED.md)",
                "eval": "evaluations during training (eval/config.py)",
                "run": "seed, logging, checkpoints, initial weights, fault tolerance"}
SECTIONS = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "parallel": ParallelConfig,
            "eval": EvalConfig, "run": RunConfig}
_TYPES = {"int": int, "float": float, "bool": bool, "str": str}


def _keys() -> tuple[dict[str, tuple[str, object]], dict[str, tuple[str, object]]]:
    """({"section.field": (section, Field)}, {flat alias: (section, Field)}) of every settable field."""
    dotted, flat = {}, {}
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            if f.metadata.get("derived"):
                continue
            dotted[f"{section}.{f.name}"] = (section, f)
            alias = f.metadata.get("alias") or f.name
            assert alias not in flat, f"flat key {alias} names two fields"
            flat[alias] = (section, f)
    return dotted, flat


DOTTED_KEYS, FLAT_KEYS = _keys()


@dataclass(init=False, repr=False, eq=False)
class TrainConfig:
    """model, data, optim, parallel, eval and run sections (each a dataclass, or its dict). Also
    constructible, readable and writable by the flat names: TrainConfig(encoder="S/16", steps=10).steps == 10."""

    model: ModelConfig
    data: DataConfig
    optim: OptimConfig
    parallel: ParallelConfig
    eval: EvalConfig
    run: RunConfig

    def __init__(self, model: ModelConfig | None = None, data: DataConfig | None = None,
                 optim: OptimConfig | None = None, parallel: ParallelConfig | str | None = None,
                 eval: EvalConfig | None = None, run: RunConfig | None = None, **flat):
        given = {"model": model, "data": data, "optim": optim, "parallel": parallel, "eval": eval, "run": run}
        if isinstance(parallel, str):  # the flat key `parallel` (the strategy), not the section
            given["parallel"], flat["parallel"] = None, parallel
        for name, cls in SECTIONS.items():
            value = given[name]
            if isinstance(value, dict):  # a section as dataclasses.asdict / to_dict() writes it
                known = {f.name for f in fields(cls)}
                value = cls(**{k: v for k, v in value.items() if k in known})
            object.__setattr__(self, name, copy.deepcopy(value) if value is not None else cls())
        for key, value in flat.items():
            if key not in FLAT_KEYS and key not in DOTTED_KEYS:
                raise TypeError(f"TrainConfig got an unexpected keyword argument {key!r}")
            self.set(key, value)

    # --- flat names as aliases ------------------------------------------------------------------
    def __getattr__(self, name: str):
        if name in FLAT_KEYS:
            section, f = FLAT_KEYS[name]
            return getattr(object.__getattribute__(self, section), f.name)
        raise AttributeError(f"TrainConfig has no field {name!r}")

    def __setattr__(self, name: str, value) -> None:
        if name in SECTIONS and isinstance(value, SECTIONS[name]):
            object.__setattr__(self, name, value)
        elif name in FLAT_KEYS:
            self.set(name, value)
        else:
            raise AttributeError(f"TrainConfig has no field {name!r}; `ov2 train --list-keys` shows them")

    def set(self, key: str, value) -> None:
        """Set a field by its dotted or flat key (no type conversion; see apply_overrides)."""
        section, f = DOTTED_KEYS.get(key) or FLAT_KEYS[key]
        setattr(getattr(self, section), f.name, value)

    def __eq__(self, other) -> bool:
        return isinstance(other, TrainConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return "TrainConfig(" + ", ".join(f"{name}={getattr(self, name)!r}" for name in SECTIONS) + ")"

    def __deepcopy__(self, memo) -> "TrainConfig":
        return TrainConfig(**{name: getattr(self, name) for name in SECTIONS})

    def replace(self, **changes) -> "TrainConfig":
        """A copy with fields changed by their flat names (dataclasses.replace for this config)."""
        config = copy.deepcopy(self)
        for key, value in changes.items():
            if key not in FLAT_KEYS:
                raise TypeError(f"TrainConfig has no field {key!r}")
            config.set(key, value)
        return config

    @property
    def peak_lr(self) -> float:
        return self.optim.peak_lr

    def model_config(self, vocab_size: int, pad_id: int) -> ModelConfig:
        """The model section with a tokenizer's vocabulary size and [pad] id."""
        return dataclasses.replace(self.model, vocab_size=vocab_size, pad_id=pad_id)

    # --- checking, saving, loading -------------------------------------------------------------
    def validate(self) -> "TrainConfig":
        """One-line UserErrors for every value out of its field's range (and the model's own checks)."""
        for name in SECTIONS:
            section = getattr(self, name)
            if isinstance(section, (ModelConfig, DataConfig, EvalConfig)):
                section.validate()  # the declared ranges, plus their own checks (names, evaluations)
            else:
                check_fields(section)
        self.parallel.fixed_micro_batch()
        return self

    def to_dict(self) -> dict:
        """{section: {field: value}}, as a run's config.json holds it."""
        return {name: asdict(getattr(self, name)) for name in SECTIONS}

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """From to_dict()'s form, or from the flat form of a config.json written before the config
        had sections; keys this version does not know (or sets itself, like the vocabulary) are ignored."""
        config = cls(**{k: v for k, v in data.items() if k in SECTIONS and isinstance(v, dict)})
        for key, value in data.items():
            if key in FLAT_KEYS and not (key in SECTIONS and isinstance(value, dict)):
                config.set(key, value)
        return config


def _parse_value(key: str, text: str, kind: type):
    if kind is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise UserError(f"override {key}={text}: expected true or false")
    try:
        return kind(text)
    except ValueError:
        name = {int: "an integer", float: "a number"}.get(kind, kind.__name__)
        raise UserError(f"override {key}={text}: expected {name}") from None


def apply_overrides(config: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Apply `key=value` strings (dotted or flat keys), checking that each key exists, each value has
    the field's type, and, at the end, that every value is in its field's range."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"override {item!r} is not of the form key=value")
        if key not in DOTTED_KEYS and key not in FLAT_KEYS:
            derived = [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in fields(cls)
                       if f.metadata.get("derived") and key in (f.name, f"{s}.{f.name}")]
            if derived:
                raise UserError(f"{derived[0]} is set from the tokenizer, not by an override")
            close = difflib.get_close_matches(key, [*DOTTED_KEYS, *FLAT_KEYS], n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else "; `ov2 train --list-keys` shows them"
            raise UserError(f"unknown override key {key!r}{hint}")
        _, f = DOTTED_KEYS.get(key) or FLAT_KEYS[key]
        config.set(key, _parse_value(key, value, _TYPES[f.type]))
    return _check_patch_fits(config.validate())


def describe_keys(config: TrainConfig) -> list[str]:
    """`ov2 train --list-keys`: per field, key=value (this config's), its flat alias, default and meaning."""
    lines = []
    for name in SECTIONS:
        lines.append(f"# {name}: {SECTION_HELP[name]}")
        for key, (section, f) in DOTTED_KEYS.items():
            if section != name:
                continue
            alias = f.metadata.get("alias") or f.name
            value = getattr(getattr(config, section), f.name)
            lines.append(f"{key}={value}    (alias {alias}; default {default_of(f)!r}) {describe(f)}")
    return lines


def _check_patch_fits(config: TrainConfig) -> TrainConfig:
    """The image holds at least one patch. A side that is not a multiple of the patch is fine: the
    patch convolution drops the remainder as the release's VALID convolution does (384 px / 14 = 27
    patches; DESIGN.md §1.2)."""
    from ..models.registry import parse_encoder_name

    _, patch = parse_encoder_name(config.encoder)
    if config.image_size < patch:
        raise UserError(f"image_size={config.image_size} is smaller than the patch size {patch} of encoder "
                        f"{config.encoder}: use at least image_size={patch}")
    return config
