"""Zero-shot classification without a text encoder: CapPa's scoring classifier (DESIGN.md §10.1).

Each class is scored by how likely the decoder finds its prompts as the caption of the image:
score(class) = log sum_prompts p(prompt | image), where log p(prompt | image) is the SUM of the
prompt's token log-likelihoods after [bos] (its joint probability; "mean" divides by its length
instead). A prompt is a caption's beginning, so [eos] is not scored unless include_eos is set.

Efficiency, so that 1,000 classes are practical: each image is encoded once and its visual prefix
run through the decoder once (a key/value cache); the cache is then shared by all prompts, which
run as batches of rows (image x prompt) sized so the copied cache stays within a memory budget.
"""

from __future__ import annotations

import torch

from ..errors import UserError
from ..generate import check_autoregressive
from ..preprocess import normalize
from ..tokenizer import CaptionTokenizer

REDUCTIONS = ("sum", "mean")


def prompt_tokens(tokenizer: CaptionTokenizer, prompts: list[str], max_len: int, include_eos: bool = False):
    """Decoder inputs [P, T] ([bos] + pieces[:-1]), targets [P, T] (the pieces) and their mask."""
    rows = []
    for enc in tokenizer.tokenizer.encode_batch(list(prompts), add_special_tokens=False):
        pieces = enc.ids + ([tokenizer.eos_id] if include_eos else [])
        if not pieces:
            raise UserError("an empty prompt cannot be scored: every class prompt needs some text")
        rows.append(pieces[:max_len])
    length = max(len(r) for r in rows)
    targets = torch.full((len(rows), length), tokenizer.pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.bool)
    for i, pieces in enumerate(rows):
        targets[i, :len(pieces)] = torch.tensor(pieces)
        mask[i, :len(pieces)] = True
    inputs = torch.cat([torch.full((len(rows), 1), tokenizer.bos_id, dtype=torch.long), targets[:, :-1]], dim=1)
    return inputs, targets, mask


def _rows_per_forward(cache, budget_bytes: int) -> int:
    per_row = sum(k[0].numel() + v[0].numel() for k, v in cache.layers) * cache.layers[0][0].element_size()
    return max(1, budget_bytes // max(per_row, 1))


@torch.no_grad()
def prompt_log_likelihoods(model, tokenizer: CaptionTokenizer, images: torch.Tensor, prompts: list[str], *,
                           reduce: str = "sum", include_eos: bool = False, image_batch: int = 32,
                           cache_budget_bytes: int = 1 << 30) -> torch.Tensor:
    """log p(prompt | image) for uint8 images [N, 3, H, W] and P prompts -> [N, P] (float32, CPU)."""
    check_autoregressive(model)
    if reduce not in REDUCTIONS:
        raise UserError(f"unknown reduction {reduce!r}: use one of {', '.join(REDUCTIONS)}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    inputs, targets, mask = (t.to(device) for t in prompt_tokens(tokenizer, prompts, model.config.text_len - 2,
                                                                  include_eos))
    lengths = mask.sum(dim=1).float()
    out = torch.empty(len(images), len(prompts))
    try:
        for start in range(0, len(images), image_batch):
            chunk = images[start:start + image_batch].to(device)
            visual = model.visual_prefix(normalize(chunk))
            _, cache = model.decoder.forward_cached(inputs[:0].new_empty(len(chunk), 0), visual=visual)
            rows = _rows_per_forward(cache, cache_budget_bytes)
            per_image = max(1, rows // len(chunk))  # prompts per forward, for all images of the chunk
            for p in range(0, len(prompts), per_image):
                count = min(per_image, len(prompts) - p)
                image_rows = torch.arange(len(chunk), device=device).repeat_interleave(count)
                prompt_rows = torch.arange(p, p + count, device=device).repeat(len(chunk))
                logits, _ = model.decoder.forward_cached(inputs[prompt_rows], cache.select(image_rows))
                log_probs = logits.float().log_softmax(dim=-1).gather(2, targets[prompt_rows, :, None])[..., 0]
                scores = (log_probs * mask[prompt_rows]).sum(dim=1)
                if reduce == "mean":
                    scores = scores / lengths[prompt_rows]
                out[start:start + len(chunk), p:p + count] = scores.view(len(chunk), count).cpu()
    finally:
        model.train(was_training)
    return out


def class_scores(prompt_scores: torch.Tensor, class_of_prompt: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[N, P] prompt log-likelihoods -> [N, C]: log of the summed probability of each class's prompts."""
    out = torch.full((prompt_scores.shape[0], num_classes), float("-inf"))
    for c in range(num_classes):
        out[:, c] = prompt_scores[:, class_of_prompt == c].logsumexp(dim=1)
    return out


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> dict[str, float]:
    """Share of rows whose label is among the k best-scored classes, for each k (capped at C)."""
    result = {}
    for k in ks:
        best = scores.topk(min(k, scores.shape[1]), dim=1).indices
        result[f"top{k}"] = (best == labels[:, None]).any(dim=1).float().mean().item()
    return result


def zero_shot(model, tokenizer: CaptionTokenizer, images: torch.Tensor, labels: torch.Tensor,
              class_prompts: list[list[str]], **options) -> dict:
    """Classify images by caption likelihood; returns top-1 / top-5 accuracy and the predictions."""
    flat = [p for prompts in class_prompts for p in prompts]
    if not flat:
        raise UserError("no class prompts to score")
    class_of_prompt = torch.tensor([c for c, prompts in enumerate(class_prompts) for _ in prompts])
    scores = class_scores(prompt_log_likelihoods(model, tokenizer, images, flat, **options), class_of_prompt,
                          len(class_prompts))
    return {**topk_accuracy(scores, labels), "num_images": len(images), "num_classes": len(class_prompts),
            "num_prompts": len(flat), "predictions": scores.argmax(dim=1).tolist()}


def prompts_from_templates(classnames: list[str], templates: list[str]) -> list[list[str]]:
    """CLIP-style prompts: each class name put into each template's "{}"."""
    if not templates or any("{}" not in t for t in templates):
        raise UserError('every template needs a "{}" where the class name goes, e.g. "a photo of a {}"')
    return [[t.format(name) for t in templates] for name in classnames]
