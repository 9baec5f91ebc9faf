"""Question/answer data for the LLaVA-style evaluation, and its exact-match scoring.

Embedded dataset: each scene (data/synthetic.py) yields one question of each type, built from the
scene's description so the answer is a function of the image, with types that mirror the paper's
benchmarks:
- attribute (GQA-like): the colour, shape or size of an object picked by a property it alone has
  ("what colour is the triangle?" when only one group is triangles);
- counting: "how many red circles are there?" (the total over groups of that colour and shape);
- position (spatial): "where is the red circle?" -> one of the 3x3 grid regions, e.g. "top left";
- existence (POPE, random setting): "is there a red circle?", answers balanced (even scene
  index: yes, odd: no, with an absent colour+shape drawn at random).
A question of a type is skipped when the scene cannot make it unambiguous. A classification task
(Fashion-MNIST, the user's labelled images) asks "what is this item?" with the class name as answer.
Stage-1 captions are the scenes' long descriptions, or for a classification task a caption template
filled with the class name.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

import numpy as np
import torch

from ..data import synthetic

QUESTION_TYPES = ("attribute", "counting", "position", "existence")
ITEM_QUESTION = "what is this item?"
CAPTION_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.")
_NUMBERS = {w: str(i) for i, w in enumerate(("zero", "one", "two", "three", "four", "five", "six", "seven",
                                            "eight", "nine", "ten"))}


@dataclass
class VQASet:
    """Images with one caption each (stage 1) and question/answer pairs about them (stage 2, scoring)."""
    images: torch.Tensor  # uint8 [N, 3, S, S]
    captions: list[str]
    questions: list[tuple[int, str, str, str]] = field(default_factory=list)  # (image index, type, question, answer)
    skipped: dict[str, int] = field(default_factory=dict)  # bad samples of the source task, by reason

    def types(self) -> list[str]:
        return list(dict.fromkeys(t for _, t, _, _ in self.questions))


def _plural(shape: str, count: int) -> str:
    return shape if count == 1 else synthetic._PLURAL[shape]


def scene_questions(scene: synthetic.Scene, rng: random.Random, want_yes: bool) -> dict[str, tuple[str, str]]:
    """{question type: (question, answer)} for one scene (a type is absent when it would be ambiguous)."""
    groups = scene.groups
    totals: dict[tuple[str, str], int] = {}
    for g in groups:
        totals[g.colour, g.shape] = totals.get((g.colour, g.shape), 0) + g.count
    unique = [g for g in groups if sum(h.colour == g.colour and h.shape == g.shape for h in groups) == 1]
    out = {}

    attribute = []  # (question, answer) candidates, each about an object its reference picks out alone
    for g in groups:
        verb = "is" if g.count == 1 else "are"
        if sum(h.shape == g.shape for h in groups) == 1:
            attribute.append((f"what colour {verb} the {_plural(g.shape, g.count)}?", g.colour))
        if sum(h.colour == g.colour for h in groups) == 1:
            attribute.append((f"what shape {verb} the {g.colour} {'object' if g.count == 1 else 'objects'}?",
                              g.shape))
        if g in unique:
            attribute.append((f"what size {verb} the {g.colour} {_plural(g.shape, g.count)}?", g.size))
    if attribute:
        out["attribute"] = rng.choice(attribute)

    colour, shape = rng.choice(sorted(totals))
    out["counting"] = (f"how many {colour} {synthetic._PLURAL[shape]} are there?", str(totals[colour, shape]))

    if unique:
        g = rng.choice(unique)
        out["position"] = (f"where {'is' if g.count == 1 else 'are'} the {g.colour} {_plural(g.shape, g.count)}?",
                           g.region)

    if want_yes:
        colour, shape = rng.choice(sorted(totals))
    else:
        absent = [(c, s) for c in synthetic.COLOURS for s in synthetic.SHAPES if (c, s) not in totals]
        colour, shape = rng.choice(absent)
    out["existence"] = (f"is there a {colour} {shape}?", "yes" if want_yes else "no")
    return out


def synthetic_vqa(split: str, num_images: int, image_size: int, seed: int = 0) -> VQASet:
    """The first `num_images` scenes of a split of the embedded dataset, with their questions."""
    images, captions, questions = [], [], []
    for index in range(num_images):
        scene = synthetic.make_scene(index, split, seed)
        images.append(torch.from_numpy(np.asarray(synthetic.render(scene, image_size)).copy()).permute(2, 0, 1))
        captions.append(synthetic.describe(scene))
        rng = random.Random(f"vqa/{seed}/{split}/{index}")
        for qtype, (question, answer) in scene_questions(scene, rng, want_yes=index % 2 == 0).items():
            questions.append((index, qtype, question, answer))
    return VQASet(torch.stack(images), captions, questions)


def classification_vqa(images: torch.Tensor, labels: torch.Tensor, classnames: list[str], seed: int = 0,
                       captions_of=None) -> VQASet:
    """"what is this item?" -> the class name, for every image; captions from `captions_of(label)` (a list
    to draw from) or the built-in templates."""
    rng = random.Random(f"vqa-items/{seed}")
    captions, questions = [], []
    for i, label in enumerate(labels.tolist()):
        options = captions_of(label) if captions_of else [t.format(classnames[label]) for t in CAPTION_TEMPLATES]
        captions.append(rng.choice(options))
        questions.append((i, "item", ITEM_QUESTION, classnames[label]))
    return VQASet(images, captions, questions)


def normalize_answer(text: str) -> str:
    """VQA-style normalisation: lower case, punctuation to spaces, articles dropped, number words to digits."""
    words = re.sub(r"[^\w\s]", " ", text.lower()).split()
    return " ".join(_NUMBERS.get(w, w) for w in words if w not in ("a", "an", "the"))


def score(questions: list[tuple[int, str, str, str]], predictions: list[str]) -> dict:
    """Exact-match accuracy (after normalize_answer) per question type and overall (mean over questions)."""
    hits: dict[str, list[bool]] = {}
    for (_, qtype, _, answer), prediction in zip(questions, predictions, strict=True):
        hits.setdefault(qtype, []).append(normalize_answer(prediction) == normalize_answer(answer))
    per_type = {t: sum(h) / len(h) for t, h in hits.items()}
    every = [x for h in hits.values() for x in h]
    return {"accuracy": per_type, "overall": sum(every) / len(every),
            "num_questions": {t: len(h) for t, h in hits.items()}}
