"""LLaVA-1.5's protocol in miniature: stage 1 trains the projector on captions, stage 2 the projector and
the language model on question/answer pairs, then held-out questions are answered greedily and scored.

The encoder stays frozen throughout. Each example is
    [bos] <image> x n_image_tokens  prompt  target [eos]
with the loss on target and [eos] only; the prompt is "describe the image." in stage 1 and the
question in stage 2. Images are preprocessed once by the export's own image processor.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from .vqa import VQASet, score

CAPTION_PROMPT = "describe the image."


@dataclass
class StageOptions:
    steps: int
    lr: float
    batch_size: int = 32
    warmup: float = 0.05  # share of steps


class Encoded:
    """Token ids of prompts and targets, in the tokenizer of the LM at hand."""

    def __init__(self, tokenizer, image_tokens: int):
        self.tokenizer, self.image_tokens = tokenizer, image_tokens
        self.image_id = tokenizer.convert_tokens_to_ids("<image>")
        self.prefix = ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + \
            [self.image_id] * image_tokens

    def ids(self, text: str) -> list[int]:
        return self.tokenizer(" " + text, add_special_tokens=False)["input_ids"]

    def training_batch(self, pairs: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
        """Right-padded input_ids, attention_mask and labels (-100 outside target + [eos])."""
        rows, labels = [], []
        for prompt, target in pairs:
            head, tail = self.prefix + self.ids(prompt), self.ids(target) + [self.tokenizer.eos_token_id]
            rows.append(head + tail)
            labels.append([-100] * len(head) + tail)
        length = max(map(len, rows))
        pad = self.tokenizer.pad_token_id
        return {"input_ids": torch.tensor([r + [pad] * (length - len(r)) for r in rows]),
                "attention_mask": torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r in rows]),
                "labels": torch.tensor([r + [-100] * (length - len(r)) for r in labels])}

    def prompt_batch(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Left-padded prompts for generation."""
        rows = [self.prefix + self.ids(p) for p in prompts]
        length = max(map(len, rows))
        pad = self.tokenizer.pad_token_id
        return {"input_ids": torch.tensor([[pad] * (length - len(r)) + r for r in rows]),
                "attention_mask": torch.tensor([[0] * (length - len(r)) + [1] * len(r) for r in rows])}


def pixel_values(processor, images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, S, S] through the export's image processor, as a user feeds PIL images or arrays."""
    arrays = [np.ascontiguousarray(im.permute(1, 2, 0).numpy()) for im in images]
    out = [processor(images=arrays[i:i + 256], return_tensors="pt")["pixel_values"] for i in range(0, len(arrays), 256)]
    return torch.cat(out)


def _schedule(options: StageOptions):
    warmup = max(1, int(options.warmup * options.steps))
    return lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step / options.steps, 1)))


def train_stage(llava, encoded: Encoded, pixels: torch.Tensor, examples: list[tuple[int, str, str]],
                params: list[torch.nn.Parameter], options: StageOptions, seed: int, progress=None) -> dict:
    """AdamW on `params` over (image index, prompt, target) examples drawn in a seeded order; returns
    the mean loss of the first and last tenth of the steps."""
    device = next(p for p in llava.parameters() if p.device.type != "meta").device
    optimizer = torch.optim.AdamW(params, lr=options.lr, weight_decay=0.0, betas=(0.9, 0.98))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(options))
    generator = torch.Generator().manual_seed(seed)
    order, losses, start = torch.randperm(len(examples), generator=generator), [], time.perf_counter()
    llava.train()
    llava.model.vision_tower.eval()  # frozen: no dropout / norm statistics change, no gradients
    for step in range(options.steps):
        begin = (step * options.batch_size) % len(examples)
        if begin + options.batch_size > len(examples):  # a new epoch: new order
            order = torch.randperm(len(examples), generator=generator)
            begin = 0
        chosen = [examples[i] for i in order[begin:begin + options.batch_size].tolist()]
        batch = encoded.training_batch([(p, t) for _, p, t in chosen])
        batch = {k: v.to(device) for k, v in batch.items()}
        images = pixels[[i for i, _, _ in chosen]].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = llava(pixel_values=images, **batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if progress is not None:
            progress.update(1)
    llava.eval()
    tenth = max(1, len(losses) // 10)
    return {"steps": options.steps, "first_loss": sum(losses[:tenth]) / tenth,
            "last_loss": sum(losses[-tenth:]) / tenth, "seconds": time.perf_counter() - start}


@torch.no_grad()
def answer(llava, encoded: Encoded, pixels: torch.Tensor, questions: list[tuple[int, str, str, str]],
           batch_size: int = 64, max_new_tokens: int = 8) -> list[str]:
    """Greedy answers to the questions (transformers' generate), decoded without special tokens."""
    device = next(p for p in llava.parameters() if p.device.type != "meta").device
    tokenizer, out = encoded.tokenizer, []
    for start in range(0, len(questions), batch_size):
        chunk = questions[start:start + batch_size]
        batch = {k: v.to(device) for k, v in encoded.prompt_batch([q for _, _, q, _ in chunk]).items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            generated = llava.generate(**batch, pixel_values=pixels[[i for i, _, _, _ in chunk]].to(device),
                                       max_new_tokens=max_new_tokens, do_sample=False,
                                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        new = generated[:, batch["input_ids"].shape[1]:]
        out += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    return out


def run_protocol(llava, tokenizer, processor, image_tokens: int, train: VQASet, test: VQASet,
                 stage1: StageOptions, stage2: StageOptions, seed: int = 0, progress=None,
                 stage1_train_lm: bool = False) -> dict:
    """Both stages on `train`, then exact-match scores on `test`'s questions. stage1_train_lm: stage 1
    trains the LM with the projector (a from-scratch tiny LM knows no language otherwise)."""
    encoded = Encoded(tokenizer, image_tokens)
    device = next(p for p in llava.parameters() if p.device.type != "meta").device
    train_pixels = pixel_values(processor, train.images).to(device)
    projector = list(llava.model.multi_modal_projector.parameters())
    language = list(llava.model.language_model.parameters()) + list(llava.lm_head.parameters())
    captions = [(i, CAPTION_PROMPT, c) for i, c in enumerate(train.captions)]
    for p in language:
        p.requires_grad_(stage1_train_lm)
    first = train_stage(llava, encoded, train_pixels, captions,
                        projector + (_unique(language) if stage1_train_lm else []), stage1, seed, progress)
    for p in language:
        p.requires_grad_(True)
    qa = [(i, q, a) for i, _, q, a in train.questions]
    second = train_stage(llava, encoded, train_pixels, qa, projector + _unique(language), stage2, seed + 1, progress)
    start = time.perf_counter()
    predictions = answer(llava, encoded, pixel_values(processor, test.images).to(device), test.questions)
    result = score(test.questions, predictions)
    result.update(stage1=first, stage2=second, answer_seconds=time.perf_counter() - start,
                  samples=[{"question": q, "answer": a, "prediction": p}
                           for (_, _, q, a), p in zip(test.questions[:8], predictions[:8])])
    return result


def _unique(params: list[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    """Tied weights (lm_head = embeddings) once."""
    seen, out = set(), []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out
