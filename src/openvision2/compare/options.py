"""The settings of `ov2 compare` (no torch here: the command-line parser reads the defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..vlm.options import VLM_PRESETS, VLMOptions

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
    # eval vlm: one of its named protocols, with these sizes replaced where given (None: the preset's).
    # "thorough", not eval vlm's quick default: under quick no encoder learns the existence questions, so
    # the comparison would rank encoders on three types only (docs/BENCHMARKS.md, issue 12).
    vlm_preset: str = "thorough"
    vlm_train_images: int | None = None
    vlm_test_images: int | None = None
    vlm_stage1_steps: int | None = None
    vlm_stage2_steps: int | None = None
    rounds: int = 3
    progress: bool = True
    # Where costs are measured and encoders evaluated: the command resolves it as every command does
    # (commands/_options.py resolve_device: cuda when torch sees a GPU), the device training takes too.
    device: str = "cpu"

    def vlm_options(self) -> VLMOptions:
        sizes = {name: getattr(self, f"vlm_{name}") for name in ("train_images", "test_images", "stage1_steps",
                                                                   "stage2_steps")}
        return replace(VLM_PRESETS[self.vlm_preset][1], **{k: v for k, v in sizes.items() if v is not None})
