"""One sentence of a long caption: OpenVision 1's second text (DESIGN.md §6)."""

from __future__ import annotations

import random
import re


def sub_caption(caption: str, rng=random) -> str:
    """One sentence of a long caption, chosen uniformly (split on '.' and '!', as OpenVision 1 /
    CLIPS do, DESIGN.md §6); the whole caption if it has a single sentence. Datasets draw it with the
    sample's own rng (the one its augmentation uses), so a resume reproduces it at any worker count."""
    pieces = [p.strip() for p in re.split(r"[.!]", caption) if p.strip()]
    return rng.choice(pieces) if pieces else caption
