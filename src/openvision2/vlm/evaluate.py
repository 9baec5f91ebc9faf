"""`ov2 eval vlm`: one encoder (and optionally its random twin) through the LLaVA-style protocol.

Defaults are sized for 2 CPU cores (a few minutes per encoder at tiny size); on a GPU, a real
encoder (L/14) and a real LM (`--lm PATH`) run the same code with larger --train-images/--steps.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from ..errors import UserError
from . import vqa
from .llava import TOKEN_CHOICES, build_llava, export_tower
from .options import VQA_TASK, VLMOptions
from .protocol import StageOptions, run_protocol

def load_vqa(options: VLMOptions, image_size: int) -> tuple[vqa.VQASet, vqa.VQASet]:
    """(train, test) sets: the embedded VQA split, or "what is this item?" on a classification task."""
    if options.task == VQA_TASK:
        return (vqa.synthetic_vqa("train", options.train_images, image_size, options.seed),
                vqa.synthetic_vqa("val", options.test_images, image_size, options.seed))
    from ..eval.tasks import load_task

    task = load_task(options.task, image_size, num_train=options.train_images, num_test=options.test_images,
                     seed=options.seed, shards=options.shards, label_key=options.label_key)
    captions_of = None
    if task.name == "fashion-mnist":
        from ..data.fashion_mnist import captions_for
        captions_of = captions_for
    train = vqa.classification_vqa(task.train.images, task.train.labels, task.classnames, options.seed, captions_of)
    train.skipped = task.skipped  # the task's count covers both splits
    return train, vqa.classification_vqa(task.test.images, task.test.labels, task.classnames, options.seed + 1,
                                         captions_of)


def evaluate_encoder(model, meta: dict, train: vqa.VQASet, test: vqa.VQASet, options: VLMOptions,
                     device: torch.device, progress=None) -> dict:
    """Export the encoder, build LLaVA around it, run both stages, score the held-out questions."""
    if options.tokens not in TOKEN_CHOICES:
        raise UserError(f"unknown --tokens {options.tokens!r}: use one of {', '.join(TOKEN_CHOICES)}")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # its per-file progress bars and notices would drown the results
    hf_logging.disable_progress_bar()
    texts = train.captions + [q for _, _, q, _ in train.questions] + [a for _, _, _, a in train.questions]
    with tempfile.TemporaryDirectory(prefix="ov2-vlm-") as tmp:
        tower_dir = Path(tmp) / "tower"
        fmt, strategy = export_tower(model.cpu(), meta, tower_dir)
        llava, tokenizer, processor, image_tokens = build_llava(tower_dir, strategy, options.tokens, options.lm,
                                                                texts, options.seed)
    llava.to(device)
    stage1 = StageOptions(options.stage1_steps, options.stage1_lr, options.batch_size)
    stage2 = StageOptions(options.stage2_steps, options.stage2_lr, options.batch_size)
    result = run_protocol(llava, tokenizer, processor, image_tokens, train, test, stage1, stage2, options.seed,
                          progress, options.stage1_train_lm)
    result.update(image_tokens=image_tokens, export=fmt,
                  lm_parameters=sum(p.numel() for p in llava.model.language_model.parameters()))
    return result
