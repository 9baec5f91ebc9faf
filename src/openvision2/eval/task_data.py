"""What a classification task is: its images, labels, class names and prompts. The built-in tasks
(eval/tasks.py) and the user's own (eval/user_tasks.py) both produce one; zero-shot and probes read it."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Split:
    images: torch.Tensor  # uint8 [N, 3, S, S]
    labels: torch.Tensor  # long [N]
    skipped: dict[str, int] = field(default_factory=dict)  # bad samples passed over, by reason


@dataclass
class ClassificationTask:
    name: str
    classnames: list[str]
    prompts: list[list[str]]  # per class: the texts whose likelihoods (summed as probabilities) score it
    train: Split  # for probes
    test: Split  # held out: zero-shot and probe accuracy
    skipped: dict[str, int] = field(default_factory=dict)  # bad samples left out, by reason
