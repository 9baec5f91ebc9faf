"""The settings of `ov2 compare` (no torch here: the command-line parser reads the defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..vlm.options import VLMOptions

BUDGETS = ("steps", "wall", "flops")
EVALS = ("probe", "zeroshot", "vlm")


@dataclass
class CompareOptions:
    methods: list[str]
    preset: str = "tiny-cpu"
    steps: int = 1000
    budget: str = "steps"
    overrides: list[str] = field(default_factory=list)
    evals: list[str] = field(default_factory=lambda: list(EVALS))
    task: str = "synthetic-object"
    shards: str = ""
    probe_train_images: int = 2000
    test_images: int = 500
    attentive_epochs: int = 30
    # eval vlm's sizes: its own defaults unless the comparison asks otherwise
    vlm_train_images: int = VLMOptions.train_images
    vlm_test_images: int = VLMOptions.test_images
    vlm_stage1_steps: int = VLMOptions.stage1_steps
    vlm_stage2_steps: int = VLMOptions.stage2_steps
    rounds: int = 3
    progress: bool = True
