"""Why a library could not load weights, in one line: shared by `ov2 import`'s readers (interop/) and
`ov2 eval vlm --lm` (vlm/llava.py). Loading never runs code, so a pickle that needs code is refused;
this names that case for what it is instead of quoting torch's advice to load it unsafely."""

from __future__ import annotations

import pickle


def load_failure(err: Exception) -> str:
    """One line saying why weights could not be loaded (the libraries' messages run to several lines)."""
    text = str(err)
    if isinstance(err, pickle.UnpicklingError) or "weights_only" in text:
        return ("the weights are a pickle that needs code to load, and ov2 never runs code from a file: "
                "save them as safetensors")
    return next((line.strip() for line in text.splitlines() if line.strip()), type(err).__name__)
