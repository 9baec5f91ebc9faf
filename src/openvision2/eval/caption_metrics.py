"""Caption quality on held-out images: perplexity of the reference captions under the model,
CIDEr / BLEU-1..4 of generated captions against them (pycocoevalcap's scorers), and the share of
captions that stutter (a phrase of two or more words immediately repeated: "a large blue a large
blue circle"), which the reference captions never do.

Tokenisation for CIDEr/BLEU: pycocoevalcap's PTB tokenizer (Stanford CoreNLP, needs `java`) when
java is on the PATH, else a plain lower-case word split with punctuation removed; which one ran is
reported under "tokenizer".
"""

from __future__ import annotations

import re
import shutil
import subprocess

import torch

from ..generate import check_autoregressive, generate
from ..preprocess import normalize
from ..tokenizer import CaptionTokenizer


def repeats_a_phrase(text: str, min_words: int = 2) -> bool:
    """True if some phrase of at least min_words words is immediately followed by itself."""
    words = re.findall(r"[\w']+", text.lower())
    return any(words[i:i + size] == words[i + size:i + 2 * size]
               for size in range(min_words, len(words) // 2 + 1) for i in range(len(words) - 2 * size + 1))


def repeated_phrase_share(texts: list[str], min_words: int = 2) -> float:
    return sum(repeats_a_phrase(t, min_words) for t in texts) / max(len(texts), 1)


@torch.no_grad()
def perplexity(model, tokenizer: CaptionTokenizer, images: torch.Tensor, captions: list[str],
               batch_size: int = 64) -> dict:
    """exp(token-mean NLL) of the captions (DESIGN.md §3.3 targets: pieces and [eos]); the decoder sees the
    visual tokens it sees when captioning (the model's eval keep ratio)."""
    check_autoregressive(model)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    try:
        for start in range(0, len(images), batch_size):
            ids = tokenizer.encode(captions[start:start + batch_size], model.config.text_len).to(device)
            out = model(normalize(images[start:start + batch_size].to(device)), ids)  # the training loss's terms
            nll += out["nll_sum"].item()
            count += int(out["num_tokens"])
    finally:
        model.train(was_training)
    mean = nll / max(count, 1)
    return {"perplexity": float(torch.tensor(mean).exp()), "nll": mean, "tokens": count}


def java_available() -> bool:
    if shutil.which("java") is None:
        return False
    try:
        return subprocess.run(["java", "-version"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _simple_tokenize(texts: dict[int, list[str]]) -> dict[int, list[str]]:
    return {k: [" ".join(re.findall(r"[a-z0-9]+(?:-[a-z0-9]+)*", t.lower())) for t in v] for k, v in texts.items()}


def tokenize_for_scoring(texts: dict[int, list[str]], use_ptb: bool) -> dict[int, list[str]]:
    if not use_ptb:
        return _simple_tokenize(texts)
    import contextlib
    import io

    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    with contextlib.redirect_stdout(io.StringIO()):  # it prints a progress line; keep stdout for --json
        return PTBTokenizer().tokenize({k: [{"caption": t} for t in v] for k, v in texts.items()})


def cider_bleu(predictions: list[str], references: list[list[str]], tokenizer: str = "auto") -> dict:
    """CIDEr-D (pycocoevalcap's Cider) and BLEU-1..4 of one prediction per image against its references."""
    import contextlib
    import io

    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    use_ptb = java_available() if tokenizer == "auto" else tokenizer == "ptb"
    gts = tokenize_for_scoring(dict(enumerate(references)), use_ptb)
    res = tokenize_for_scoring({i: [p] for i, p in enumerate(predictions)}, use_ptb)
    with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its internals
        bleu, _ = Bleu(4).compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    return {"cider": float(cider), **{f"bleu{i + 1}": float(b) for i, b in enumerate(bleu)},
            "tokenizer": "ptb" if use_ptb else "simple"}


def caption_metrics(model, tokenizer: CaptionTokenizer, images: torch.Tensor, references: list[list[str]],
                    batch_size: int = 64, scoring_tokenizer: str = "auto", **decoding) -> dict:
    """Perplexity of the first reference per image, and CIDEr/BLEU of generated captions (decoding
    options as generate()'s; greedy by default). Also the generated captions, for inspection."""
    predictions = [text for start in range(0, len(images), batch_size)
                   for text in generate(model, tokenizer, images[start:start + batch_size], **decoding).texts]
    exact = sum(p.strip() == refs[0].strip() for p, refs in zip(predictions, references)) / max(len(images), 1)
    return {**perplexity(model, tokenizer, images, [refs[0] for refs in references], batch_size),
            **cider_bleu(predictions, references, scoring_tokenizer), "exact_match": exact,
            "repeated_phrase_share": repeated_phrase_share(predictions),
            "repeated_word_share": repeated_phrase_share(predictions, min_words=1),
            "reference_repeated_phrase_share": repeated_phrase_share([refs[0] for refs in references]),
            "eval_keep_ratio": getattr(model.config, "decoding_keep_ratio", 1.0),
            "num_images": len(images), "predictions": predictions}
