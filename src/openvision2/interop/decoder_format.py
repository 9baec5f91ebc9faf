"""The caption decoder and its tokenizer as a release artefact (STYLE.md: users ask for the decoder).

A directory with decoder_config.json, decoder.safetensors and the tokenizer files. The decoder reads
the encoder's patch tokens (at inference the checkpoint's eval_keep_ratio of them, one seeded
subset, models/masking.py), so it pairs with any export of the same encoder; `load_captioner(DIR, tower)` puts them together for `generate.greedy_caption`:

    tower = timm.create_model("local-dir:ENCODER_DIR", pretrained=True)   # or our own encoder
    captioner, tokenizer = load_captioner("DECODER_DIR", tower)
    greedy_caption(captioner, tokenizer, uint8_images)                    # -> list of captions
    # (generate.generate / generate.caption take it too: beam search, sampling)
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import torch
from torch import nn

from ..errors import UserError
from ..models.decoder import CaptionDecoder
from ..models.masking import keep_eval_tokens
from ..models.registry import Size
from ..tokenizer import CaptionTokenizer
from ..preprocess import Preprocess

CONFIG = "decoder_config.json"
WEIGHTS = "decoder.safetensors"


def save_decoder_dir(model, tokenizer: CaptionTokenizer, preprocess: Preprocess, directory: Path) -> None:
    from safetensors.torch import save_file

    decoder, config = model.decoder, model.config
    first = decoder.blocks[0]
    meta = dict(
        decoder=config.decoder, width=decoder.width, depth=len(decoder.blocks), heads=first.heads,
        mlp_dim=first.fc1.out_features, vision_width=decoder.visual_proj.in_features,
        vocab_size=decoder.head.out_features, text_len=config.text_len, mask=decoder.mask_kind,
        text_pos="learned" if decoder.text_pos is not None else "none", encoder=config.encoder,
        preprocess=preprocess.to_dict(), eval_keep_ratio=config.decoding_keep_ratio,
        inputs="patch tokens of the encoder (no CLS, no final LayerNorm; eval_keep_ratio of them, the "
               "seeded subset of openvision2.models.masking.keep_eval_tokens), then [bos] + caption ids",
    )
    (directory / CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
    save_file({k: v.detach().cpu().contiguous() for k, v in decoder.state_dict().items()}, directory / WEIGHTS)
    tokenizer.save(directory)


def load_decoder(directory: str | Path, device: str | torch.device = "cpu") -> tuple[CaptionDecoder, CaptionTokenizer, dict]:
    from safetensors.torch import load_file

    directory = Path(directory)
    try:
        meta = json.loads((directory / CONFIG).read_text())
        state = load_file(directory / WEIGHTS, device=str(device))
    except Exception as err:  # OSError, JSON and safetensors errors: an unreadable export
        raise UserError(f"cannot read the decoder export in {directory}: {err}") from None
    size = Size(meta["width"], meta["depth"], meta["heads"], meta["mlp_dim"])
    decoder = CaptionDecoder(size, meta["vision_width"], meta["vocab_size"], meta["text_len"] - 1, meta["mask"],
                             meta["text_pos"], device="meta")
    decoder.load_state_dict(state, assign=True)
    return decoder.eval(), CaptionTokenizer.load(directory), meta


def patch_tokens(tower: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """images -> patch tokens for a timm VisionTransformer (ours included); pass a function for others."""
    if not hasattr(tower, "forward_features") or not hasattr(tower, "num_prefix_tokens"):
        raise UserError(f"cannot read patch tokens from a {type(tower).__name__}: pass a function images -> tokens")
    return lambda images: tower.forward_features(images)[:, tower.num_prefix_tokens:]


class Captioner(nn.Module):
    """The interface generate.greedy_caption uses (visual_prefix, decoder, config.text_len) over an
    encoder from any library and an exported decoder."""

    def __init__(self, tower: nn.Module, decoder: CaptionDecoder, text_len: int, image_size: int,
                 tokens: Callable[[torch.Tensor], torch.Tensor] | None = None, eval_keep_ratio: float = 1.0):
        super().__init__()
        self.tower, self.decoder, self.eval_keep_ratio = tower, decoder, eval_keep_ratio
        self.config = SimpleNamespace(text_len=text_len, image_size=image_size,
                                      vocab_size=decoder.head.out_features)
        self._tokens = tokens or patch_tokens(tower)

    def visual_prefix(self, images: torch.Tensor) -> torch.Tensor:
        return keep_eval_tokens(self._tokens(images), self.eval_keep_ratio)


def load_captioner(directory: str | Path, tower: nn.Module,
                   tokens: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[Captioner, CaptionTokenizer]:
    decoder, tokenizer, meta = load_decoder(directory)
    captioner = Captioner(tower.eval(), decoder, meta["text_len"], meta["preprocess"]["size"], tokens,
                          meta.get("eval_keep_ratio", 1.0))  # exports made before the field: all tokens
    return captioner, tokenizer
