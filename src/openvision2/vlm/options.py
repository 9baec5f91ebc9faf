"""The settings of `ov2 eval vlm` and its named presets (no torch here: the command-line parser reads them)."""

from __future__ import annotations

from dataclasses import dataclass, replace

VQA_TASK = "synthetic-vqa"


@dataclass
class VLMOptions:
    task: str = VQA_TASK
    lm: str = "tiny"
    tokens: str = "patch"
    train_images: int = 2000
    test_images: int = 300
    stage1_train_lm: bool = False  # LLaVA trains only the projector in stage 1; True: the LM too
    stage1_steps: int = 150
    stage2_steps: int = 600
    stage1_lr: float = 1e-3
    stage2_lr: float = 1e-3
    batch_size: int = 32
    seed: int = 0
    shards: str = ""
    label_key: str = "label"

    def check(self, flag_prefix: str = "") -> VLMOptions:
        """One line naming the flag (`--{flag_prefix}train-images`, ...) of the first impossible value."""
        from ..errors import UserError

        bounds = {"train_images": (1, ">="), "test_images": (1, ">="), "batch_size": (1, ">="),
                  "stage1_steps": (0, ">="), "stage2_steps": (0, ">="), "stage1_lr": (0, ">"), "stage2_lr": (0, ">")}
        for name, (bound, op) in bounds.items():
            value = getattr(self, name)
            if not (value > bound if op == ">" else value >= bound):
                raise UserError(f"--{flag_prefix}{name.replace('_', '-')} must be {op} {bound}, got {value}")
        return self


# Named protocols; command-line flags override any field. Measured on the default tiny-cpu checkpoint in
# docs/BENCHMARKS.md ("ov2 eval vlm on the default checkpoint").
VLM_PRESETS: dict[str, tuple[str, VLMOptions]] = {
    "quick": ("LLaVA-1.5's shape in miniature (every patch token, projector-only stage 1), under a minute per "
              "encoder on 2 CPU cores; too short for a from-scratch tiny LM to learn existence questions",
              VLMOptions()),
    "thorough": ("the tiny-LM setting that separates a trained encoder from a random one on every question "
                 "type of the embedded VQA split: one pooled token, the LM trained from stage 1 on, 10,000 "
                 "images, 6000 stage-2 steps at lr 3e-4 (stage 2 at 1e-3 leaves existence at chance), 600 "
                 "scored images; ~2.5 min per encoder on 2 CPU cores",
                 replace(VLMOptions(), tokens="pooled", stage1_train_lm=True, stage1_steps=300, train_images=10000,
                         stage2_steps=6000, stage2_lr=3e-4, test_images=600)),
}
DEFAULT_VLM_PRESET = "quick"
