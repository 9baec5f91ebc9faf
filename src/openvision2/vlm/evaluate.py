"""`ov2 eval vlm`: one encoder (and optionally its random twin) through the LLaVA-style protocol.

Defaults are sized for 2 CPU cores (a few minutes per encoder at tiny size); on a GPU, a real
encoder (L/14) and a real LM (`--lm PATH`) run the same code with larger --train-images/--steps.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from ..errors import UserError
from . import vqa
from .llava import TOKEN_CHOICES, build_llava, export_tower
from .options import VQA_TASK, VLMOptions
from .protocol import StageOptions, run_protocol

def check_fits(images: int, image_size: int, memory_bytes: int = 0) -> None:
    """One line instead of memory that grows until the kernel kills the run: the protocol holds every image
    at once (uint8, and float32 pixel values for the tower), so a count that cannot fit in half of the
    machine's memory (memory_bytes: its RAM unless given) is refused before any is made."""
    per_image = 15 * image_size ** 2 + 1024  # 3 bytes + 12 bytes per pixel, and the image's texts
    memory = memory_bytes or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if images * per_image > memory // 2:
        raise UserError(f"{images} training and held-out images at {image_size} px would hold "
                        f"~{images * per_image / 2**30:,.1f} GiB at once, over half of this machine's "
                        f"{memory / 2**30:,.1f} GiB: ask for fewer images")


def check_vqa_fits(options: VLMOptions, image_size: int) -> None:
    """check_fits for the images a task generates: as many as asked (a user's own data caps itself)."""
    from ..eval.tasks import SYNTHETIC_TASKS

    if options.task in (VQA_TASK, *SYNTHETIC_TASKS):
        check_fits(options.train_images + options.test_images, image_size)


def load_vqa(options: VLMOptions, image_size: int) -> tuple[vqa.VQASet, vqa.VQASet]:
    """(train, test) sets: the embedded VQA split, or "what is this item?" on a classification task."""
    from ..eval.tasks import load_task

    check_vqa_fits(options, image_size)
    if options.task == VQA_TASK:
        return (vqa.synthetic_vqa("train", options.train_images, image_size, options.seed),
                vqa.synthetic_vqa("val", options.test_images, image_size, options.seed))
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
