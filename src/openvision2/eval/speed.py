"""Decoding speed with and without the key/value cache (`ov2 eval speed`).

Every image decodes exactly `new_tokens` tokens ([eos] ignored), so both modes do the same work
whatever the weights; the figure is generated tokens per second, best of `repeats` timed runs after
one warm-up run.
"""

from __future__ import annotations

import time

import torch

from ..generate import generate


def _best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: allocator, kernels, lazy initialisation
    best = float("inf")
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def decode_speed(model, tokenizer, batch_size: int = 16, new_tokens: int = 30, repeats: int = 3,
                 strategy: str = "greedy", beam_size: int = 4, seed: int = 0) -> dict:
    size = model.config.image_size
    device = next(model.parameters()).device
    images = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(seed)).to(device)
    result = {"batch_size": batch_size, "new_tokens": new_tokens, "strategy": strategy,
              "beam_size": beam_size if strategy == "beam" else 1, "device": str(device)}
    for mode, use_cache in (("cached", True), ("uncached", False)):
        seconds = _best_seconds(lambda: generate(model, tokenizer, images, strategy=strategy, beam_size=beam_size,
                                                 max_new_tokens=new_tokens, use_cache=use_cache, ignore_eos=True,
                                                 seed=seed), repeats)
        result[mode] = {"seconds": seconds, "tokens_per_s": batch_size * new_tokens / seconds}
    result["speedup"] = result["uncached"]["seconds"] / result["cached"]["seconds"]
    return result
