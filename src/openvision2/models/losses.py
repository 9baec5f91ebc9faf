"""The caption loss every method shares (DESIGN.md §3.3, §3.4), and the training objective built from it.

Every model's forward returns
    nll_sum     summed caption cross-entropy over the target tokens (fp32),
    num_tokens  how many target tokens there were,
    loss        their token mean (what the logs call the caption loss),
and, where a method has more than the caption loss, aux_loss: the rest of its objective, already
weighted (OpenVision 1: clip_loss_weight x contrastive). The training loop normalises nll_sum by a
token count over the whole global batch instead of per micro-batch; see objective().
"""

from __future__ import annotations

import torch

from .chunked_ce import DEFAULT_CHUNK_TOKENS, vocab_nll


def caption_targets(captions: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decoder inputs, targets and loss mask from [B, L] caption sequences (DESIGN.md §3.3).

    inputs = positions 0..L-2, target[i] = token[i+1]; the mask is the non-pad mask of the inputs
    shifted left by one with a 0 appended: 1 where the target is a real piece or [eos], 0 for
    pads and for the trailing [CLS].
    """
    inputs, targets = captions[:, :-1], captions[:, 1:]
    mask = torch.cat([inputs[:, 1:] != pad_id, torch.zeros_like(inputs[:, :1], dtype=torch.bool)], dim=1)
    return inputs, targets, mask


def caption_nll(hidden: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor,
                mask: torch.Tensor, chunk_tokens: int = DEFAULT_CHUNK_TOKENS) -> dict[str, torch.Tensor]:
    """The vocabulary head and the masked caption cross-entropy, in one place.

    hidden [B, T, D] (after the final LayerNorm), targets and mask [B, T] -> {nll_sum, num_tokens,
    loss}. The head and the cross-entropy run in chunks without ever holding the full [tokens, vocab]
    logits (models/chunked_ce.py: chunk_tokens tokens a chunk on a CPU; on CUDA 4,096 with a compiled
    chunk body and no host sync); chunk_tokens=0 forms the full logits. All give the same loss and
    gradients."""
    nll_sum, num_tokens = vocab_nll(hidden, head.weight, targets, mask, chunk_tokens)
    return {"loss": nll_sum / (num_tokens + 1e-8), "nll_sum": nll_sum, "num_tokens": num_tokens}


def objective(out: dict[str, torch.Tensor], caption_loss_weight: float, token_scale,
              micro_batches: int = 1) -> torch.Tensor:
    """What a training step backpropagates for one micro-batch: caption_loss_weight x nll_sum x
    token_scale (1 / the tokens counted over the batch) plus the model's aux_loss, averaged over
    the step's micro-batches."""
    return caption_loss_weight * out["nll_sum"] * token_scale + out.get("aux_loss", 0.0) / micro_batches
