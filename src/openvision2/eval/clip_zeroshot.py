"""Zero-shot classification for a model with a text encoder (OpenVision 1): CLIP's protocol.

Each class embedding is the normalised mean of its prompts' normalised text embeddings (CLIP's
prompt ensembling); an image is assigned the class whose embedding is most similar to its own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..preprocess import normalize
from .zeroshot import topk_accuracy


@torch.no_grad()
def clip_zero_shot(model, tokenizer, images: torch.Tensor, labels: torch.Tensor, class_prompts: list[list[str]],
                   batch_size: int = 128) -> dict:
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        classes = []
        for prompts in class_prompts:
            ids = tokenizer.encode(list(prompts), model.config.alt_text_len).to(device)
            classes.append(F.normalize(F.normalize(model.text_encoder(ids)[0].float(), dim=-1).mean(0), dim=0))
        text = torch.stack(classes)
        scores = []
        for start in range(0, len(images), batch_size):
            pooled, _ = model.encode_image(normalize(images[start:start + batch_size].to(device)))
            scores.append((F.normalize(model.image_head(pooled).float(), dim=-1) @ text.T).cpu())
    finally:
        model.train(was_training)
    scores = torch.cat(scores)
    return {**topk_accuracy(scores, labels), "num_images": len(images), "num_classes": len(class_prompts),
            "predictions": scores.argmax(dim=1).tolist()}
