"""The settings of `ov2 eval vlm` (no torch here: the command-line parser reads the defaults)."""

from __future__ import annotations

from dataclasses import dataclass

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
