"""Captioning (the decoder sees all visual tokens at inference): generate() with greedy, beam and
top-k / top-p decoding on a key/value cache, or a parallel decoder's argmax (OpenVision 1), by the
model's method; greedy_caption and parallel_caption are its shorthands."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass

import torch

from .errors import UserError
from .methods import AUTOREGRESSIVE, PARALLEL, method_of
from .preprocess import normalize
from .tokenizer import CaptionTokenizer


def greedy_caption(model, tokenizer: CaptionTokenizer, images: torch.Tensor,
                   max_new_tokens: int | None = None) -> list[str]:
    """uint8 images [B, 3, H, W] -> one caption each, the argmax token until [eos] (generate()'s greedy)."""
    return generate(model, tokenizer, images, max_new_tokens=max_new_tokens).texts


def parallel_caption(model, tokenizer: CaptionTokenizer, images: torch.Tensor,
                     alt_texts: list[str] | None = None) -> list[str]:
    """OpenVision 1's captions (generate()'s parallel decoding), conditioned on the images' alt-texts."""
    return generate(model, tokenizer, images, alt_texts=alt_texts).texts


# --- greedy, beam and top-k / top-p decoding, batched, with or without a key/value cache ----------

STRATEGIES = ("greedy", "beam", "sample")


@dataclass
class Generation:
    """Per image: the generated ids (after [bos], up to and including [eos] when one was produced),
    their summed log-likelihood under the model (untempered), and the text."""

    tokens: list[list[int]]
    log_likelihoods: list[float]
    texts: list[str]


def check_autoregressive(model) -> None:
    """A UserError unless the model captions left to right (its method's decoding, methods.py)."""
    if model.decoder is None:
        model.require_decoder()
    if method_of(model).decoding != AUTOREGRESSIVE:
        raise UserError(f"{type(model).__name__} has no left-to-right caption decoder: "
                        "greedy/beam/sampled decoding and caption-likelihood scoring need one "
                        "(OpenVision 2 or CapPa checkpoints)")


class _Stepper:
    """Next-token logits for growing sequences: with a cache, only the new token runs; without,
    the whole [visual; text] sequence is re-run each step (the reference the cache must match)."""

    def __init__(self, decoder, visual: torch.Tensor, use_cache: bool):
        self.decoder, self.visual, self.use_cache, self.cache = decoder, visual, use_cache, None

    def first(self, ids: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Logits after ids [N, T] for each image, then repeated to the given rows (beams)."""
        if self.use_cache:
            logits, self.cache = self.decoder.forward_cached(ids, visual=self.visual)
            if rows is not None:
                self.cache = self.cache.select(rows)
                logits = logits.index_select(0, rows)
            return logits[:, -1]
        if rows is not None:
            self.visual = self.visual.index_select(0, rows)
            ids = ids.index_select(0, rows)
        return self.decoder(self.visual, ids)[:, -1]

    def next(self, ids: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Logits after ids [N, T]; rows (beam search) says which earlier row each row continues."""
        if self.use_cache:
            if rows is not None:
                self.cache = self.cache.select(rows)
            logits, self.cache = self.decoder.forward_cached(ids[:, -1:], self.cache)
            return logits[:, -1]
        if rows is not None:
            self.visual = self.visual.index_select(0, rows)
        return self.decoder(self.visual, ids)[:, -1]


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """-inf outside the top_k logits (0 = no limit) and outside the smallest set whose probability
    reaches top_p (nucleus); the most likely token always stays."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs >= top_p  # mass before this token already reaches top_p
        drop[..., 0] = False
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def _check_options(strategy, beam_size, top_k, top_p, temperature, vocab_size) -> None:
    if strategy not in STRATEGIES:
        raise UserError(f"unknown decoding {strategy!r}: use one of {', '.join(STRATEGIES)}")
    if not 1 <= beam_size <= vocab_size:
        raise UserError(f"beam size must be between 1 and the vocabulary size {vocab_size}, got {beam_size}")
    if top_k < 0 or not 0 < top_p <= 1 or temperature <= 0:
        raise UserError(f"sampling needs top_k >= 0, 0 < top_p <= 1 and temperature > 0; "
                        f"got top_k={top_k}, top_p={top_p}, temperature={temperature}")


@torch.no_grad()
def generate(model, tokenizer: CaptionTokenizer, images: torch.Tensor, *, strategy: str = "greedy",
             beam_size: int = 4, top_k: int = 0, top_p: float = 1.0, temperature: float = 1.0,
             length_penalty: float = 0.0, max_new_tokens: int | None = None, use_cache: bool = True,
             ignore_eos: bool = False, seed: int | None = None, alt_texts: list[str] | None = None) -> Generation:
    """Caption uint8 images [B, 3, H, W] by greedy, beam or sampled (top-k / top-p) decoding.

    Beam search keeps finished beams (they continue with [pad] at no cost) and ranks the final
    beams by log-likelihood / length**length_penalty (0: plain log-likelihood). ignore_eos decodes
    exactly max_new_tokens for every image (for timing). A method with parallel decoding (OpenVision
    1) is greedy only, and reads the images' alt-texts (alt_texts; empty ones where not given).
    """
    if method_of(model).decoding == PARALLEL:
        if strategy != "greedy":
            raise UserError("this checkpoint's decoder predicts every position at once: only greedy decoding")
        return _parallel(model, tokenizer, images, alt_texts)
    check_autoregressive(model)
    _check_options(strategy, beam_size, top_k, top_p, temperature, model.config.vocab_size)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    max_new_tokens = max_new_tokens or model.config.text_len - 2
    if not 1 <= max_new_tokens <= model.config.text_len - 2:
        raise UserError(f"max_new_tokens must be between 1 and {model.config.text_len - 2} (text_len - 2)")
    try:
        visual = model.visual_prefix(normalize(images.to(device)))
        stepper = _Stepper(model.decoder, visual, use_cache)
        bos = torch.full((len(images), 1), tokenizer.bos_id, dtype=torch.long, device=device)
        if strategy == "beam":
            ids, scores = _beam_search(stepper, bos, tokenizer, beam_size, length_penalty, max_new_tokens,
                                       ignore_eos)
        else:
            generator = None
            if strategy == "sample" and seed is not None:
                generator = torch.Generator(device=device).manual_seed(seed)
            ids, scores = _left_to_right(stepper, bos, tokenizer, strategy, top_k, top_p, temperature,
                                         max_new_tokens, ignore_eos, generator)
    finally:
        model.train(was_training)
    tokens = [_strip(row, tokenizer) for row in ids[:, 1:].tolist()]
    return Generation(tokens, scores.tolist(), [tokenizer.decode(t) for t in tokens])


@torch.no_grad()
def _parallel(model, tokenizer: CaptionTokenizer, images: torch.Tensor, alt_texts: list[str] | None) -> Generation:
    """OpenVision 1's captioner: the argmax at each of its learned queries, from the image and an
    alt-text (DESIGN.md §6). Without alt-texts it is given empty ones, i.e. conditioned on the image only,
    which is outside what it was trained on; pass the images' alt-texts where they exist."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        alt = tokenizer.encode(alt_texts or [""] * len(images), model.config.alt_text_len).to(device)
        _, patches = model.encode_image(normalize(images.to(device)))
        log_probs = model.caption_logits(patches, alt).float().log_softmax(dim=-1)
    finally:
        model.train(was_training)
    best, ids = log_probs.max(dim=-1)
    tokens = [_strip(row, tokenizer) for row in ids.cpu().tolist()]
    scores = [float(row[:len(t)].sum()) for row, t in zip(best.cpu(), tokens)]
    return Generation(tokens, scores, [tokenizer.decode(t) for t in tokens])


def _strip(row: list[int], tokenizer: CaptionTokenizer) -> list[int]:
    """Generated ids up to and including the first [eos]; pads after it dropped."""
    return row[: row.index(tokenizer.eos_id) + 1] if tokenizer.eos_id in row else row


def _left_to_right(stepper, ids, tokenizer, strategy, top_k, top_p, temperature, max_new_tokens,
                   ignore_eos, generator):
    finished = torch.zeros(len(ids), dtype=torch.bool, device=ids.device)
    scores = torch.zeros(len(ids), dtype=torch.float32, device=ids.device)
    logits = stepper.first(ids)
    for step in range(max_new_tokens):
        log_probs = logits.float().log_softmax(dim=-1)
        if strategy == "greedy":
            next_id = log_probs.argmax(dim=-1)
        else:
            probs = filter_logits(logits.float() / temperature, top_k, top_p).softmax(dim=-1)
            next_id = torch.multinomial(probs, 1, generator=generator)[:, 0]
        step_score = log_probs.gather(1, next_id[:, None])[:, 0]
        scores += torch.where(finished, torch.zeros_like(step_score), step_score)
        next_id = torch.where(finished, torch.full_like(next_id, tokenizer.pad_id), next_id)
        ids = torch.cat([ids, next_id[:, None]], dim=1)
        if not ignore_eos:
            finished |= next_id == tokenizer.eos_id
        if finished.all() or step == max_new_tokens - 1:
            break
        logits = stepper.next(ids)
    return ids.cpu(), scores.cpu()


def _beam_search(stepper, bos, tokenizer, beam_size, length_penalty, max_new_tokens, ignore_eos):
    batch, width, device = len(bos), beam_size, bos.device
    rows = torch.arange(batch, device=device).repeat_interleave(width)
    ids = bos.index_select(0, rows)
    # every beam starts identical: only the first may expand at step one, or all would pick the same token
    scores = torch.zeros(batch, width, device=device)
    scores[:, 1:] = float("-inf")
    finished = torch.zeros(batch * width, dtype=torch.bool, device=device)
    logits = stepper.first(bos, rows)
    for step in range(max_new_tokens):
        log_probs = logits.float().log_softmax(dim=-1)
        vocab = log_probs.shape[-1]
        # a finished beam continues only with [pad], at no cost, so it keeps its score
        log_probs[finished] = float("-inf")
        log_probs[finished, tokenizer.pad_id] = 0.0
        candidates = (scores.view(-1, 1) + log_probs).view(batch, width * vocab)
        scores, best = candidates.topk(width, dim=1)
        origin = (torch.arange(batch, device=device)[:, None] * width + best // vocab).flatten()
        next_id = (best % vocab).flatten()
        ids = torch.cat([ids.index_select(0, origin), next_id[:, None]], dim=1)
        finished = finished.index_select(0, origin)
        if not ignore_eos:
            finished |= next_id == tokenizer.eos_id
        if finished.all() or step == max_new_tokens - 1:
            break
        logits = stepper.next(ids, origin)
    lengths = ((ids[:, 1:] != tokenizer.pad_id).sum(dim=1)).view(batch, width).clamp(min=1).float()
    choice = (scores / lengths ** length_penalty).argmax(dim=1)
    picked = torch.arange(batch, device=device) * width + choice
    return ids.index_select(0, picked).cpu(), scores.gather(1, choice[:, None])[:, 0].cpu()


# --- the Python API -------------------------------------------------------------------------------

def as_uint8_batch(images, size: int) -> torch.Tensor:
    """PIL images, a uint8 tensor [B, 3, H, W] or [3, H, W] (or a list of them), or float tensors in
    [0, 1] (torchvision's ToTensor) -> uint8 [B, 3, size, size] (bilinear resize where needed)."""
    from PIL import Image

    from .preprocess import pil_to_uint8

    if isinstance(images, (Image.Image, torch.Tensor)):
        images = [images] if isinstance(images, Image.Image) or images.dim() == 3 else list(images)
    batch = []
    for image in images:
        if isinstance(image, Image.Image):
            batch.append(pil_to_uint8(image, size))
            continue
        if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
            raise UserError("images must be PIL images or [3, H, W] / [B, 3, H, W] tensors")
        if image.is_floating_point():
            image = (image.clamp(0, 1) * 255).round().to(torch.uint8)
        if image.shape[1:] != (size, size):
            image = torch.nn.functional.interpolate(image[None].float(), size=(size, size), mode="bilinear",
                                                    antialias=True, align_corners=False)[0]
            image = image.round().clamp(0, 255).to(torch.uint8)
        batch.append(image.to(torch.uint8))
    if not batch:
        raise UserError("no images to caption")
    return torch.stack([b.cpu() for b in batch])


def caption(model, tokenizer: CaptionTokenizer, images, batch_size: int = 32, **options) -> list[str]:
    """Captions for PIL images or image tensors (see as_uint8_batch); options as generate()'s."""
    batch = as_uint8_batch(images, model.config.image_size)
    return [text for start in range(0, len(batch), batch_size)
            for text in generate(model, tokenizer, batch[start:start + batch_size], **options).texts]


class _CallableModule(types.ModuleType):
    """`openvision2.generate` is this module (a package attribute cannot be both a submodule and a
    function), so calling the module calls generate()."""

    def __call__(self, *args, **kwargs) -> Generation:
        return generate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
