"""The analytic cross-check of the fake run (`ov2 plan --explain`): activation bytes per token of each
transformer block in the manner of Korthikanti et al. 2022 (arXiv 2205.05198, §4.1), and the bytes of
weights, gradients and AdamW state, from the model's sizes alone.

Per block and token, what backward needs (e = bytes of an activation: 2 under bf16 autocast, 4 in fp32;
h the width, m the MLP width; no dropout; SDPA keeps its output and a per-head logsumexp, no scores):
    no checkpointing  LN1 input h, LN1 output h, q k v 3h, attention output h, LN2 input h, LN2 output h,
                      fc1 output m, GELU output m                          = e (8h + 2m)
                      (Korthikanti's 34 sbh + 5 a s^2 b with m = 4h, less dropout's 2 sbh, less the
                      5 a s^2 b scores flash attention never keeps: 32 sbh at e = 2)
    selective         the block input h, q k v 3h, attention output h, out-projection output h,
                      fc1 output m, fc2 output h (matmul and attention outputs are kept)  = e (7h + m)
    full              the block input only                                       = e h
plus, with checkpointing, one block's full set while it is recomputed. Tokens per sample: the encoder's
patches + CLS; OpenVision 2's decoder K kept visual + text_len - 1 caption tokens; OpenVision 1's text
encoder two texts of alt_text_len and its decoder all patches + alt_text_len - 1 + text_len queries.
The loss (vocabulary head + cross-entropy) and the small tensors between the stacks are not counted here:
the difference to the fake run's per-sample bytes shows them.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..methods import get_method
from ..models.masking import num_kept
from ..models.registry import Size, decoder_size, parse_encoder_name


@dataclass(frozen=True)
class Stack:
    name: str
    size: Size
    tokens: int  # per sample


def stacks(model) -> list[Stack]:
    """The transformer stacks of a model config and the tokens each runs over, per sample."""
    enc, patch = parse_encoder_name(model.encoder)
    patches = (model.image_size // patch) ** 2
    out = [Stack("encoder", enc, patches + 1)]
    if get_method(model.method).has_text_encoder:
        out.append(Stack("text encoder", decoder_size(model.text_encoder or model.decoder), 2 * model.alt_text_len))
        out.append(Stack("decoder", decoder_size(model.decoder), patches + model.alt_text_len - 1 + model.text_len))
    else:
        kept = num_kept(patches, model.keep_ratio)
        out.append(Stack("decoder", decoder_size(model.decoder), kept + model.text_len - 1))
    return out


def block_bytes_per_token(size: Size, checkpointing: str, element: int) -> int:
    h, m = size.width, size.mlp_dim
    return element * {"none": 8 * h + 2 * m, "selective": 7 * h + m, "full": h}[checkpointing]


def activation_bytes_per_sample(model, checkpointing: str, element: int) -> dict[str, int]:
    """Per stack: bytes per sample that the stack's blocks keep for backward ("encoder-full": full
    checkpointing of the encoder's blocks, none elsewhere)."""
    out = {}
    for stack in stacks(model):
        mode = checkpointing
        if checkpointing == "encoder-full":
            mode = "full" if stack.name == "encoder" else "none"
        kept = stack.size.depth * stack.tokens * block_bytes_per_token(stack.size, mode, element)
        if mode != "none":  # one block recomputed at a time holds its full set
            kept += stack.tokens * block_bytes_per_token(stack.size, "none", element)
        out[stack.name] = kept
    return out


def state_bytes(params: int, world_size: int, sharded: bool) -> dict[str, int]:
    """fp32 parameters, fp32 gradients and AdamW's two fp32 moments per device (sharded: 1/world_size)."""
    share = world_size if sharded else 1
    return {"parameters": 4 * params // share, "gradients": 4 * params // share, "optimizer": 8 * params // share}
