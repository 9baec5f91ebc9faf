"""The `ov2 eval vlm` arguments and runner (kept apart from commands/eval.py, which only dispatches here)."""

from __future__ import annotations

import argparse
from dataclasses import asdict, fields, replace

from .options import DEFAULT_VLM_PRESET, VLM_PRESETS, VQA_TASK, VLMOptions

HELP = "LLaVA-style evaluation: projector + LM trained on the frozen encoder (via its hf export), VQA accuracy"


def _per_preset(name: str) -> str:
    """' (quick: 2000, thorough: 10000)': what each preset sets a field to, for its --help line."""
    values = {preset: getattr(options, name) for preset, (_, options) in VLM_PRESETS.items()}
    return " (" + ", ".join(f"{preset}: {value}" for preset, value in values.items()) + ")"


def add_vlm_arguments(sub, common) -> None:
    presets = "; ".join(f"{name}: {about}" for name, (about, _) in VLM_PRESETS.items())
    vlm = sub.add_parser("vlm", help=HELP, description=HELP)
    common(vlm)
    # Protocol flags default to None: the preset fills what the command line leaves out.
    vlm.add_argument("--preset", default=DEFAULT_VLM_PRESET, choices=list(VLM_PRESETS),
                     help=f"named protocol, flags below override its fields (default: {DEFAULT_VLM_PRESET}). {presets}")
    vlm.add_argument("--task", default=None,
                     help=f"{VQA_TASK} (default: attribute, counting, position and existence questions on the "
                          "embedded dataset) or a classification task asked as 'what is this item?' "
                          "(fashion-mnist, imagefolder:DIR, csv:FILE, shards:PATTERN)")
    vlm.add_argument("--shards", default=None, help="Fashion-MNIST shard directory (for --task fashion-mnist)")
    vlm.add_argument("--label-key", default=None, help="json field holding the label (shards: tasks)")
    vlm.add_argument("--lm", default=None,
                     help="language model: 'tiny' (a 2-layer Llama from a config, word-level vocabulary learned from "
                          "the instruction data; the CPU default) or a local Hugging Face causal LM directory")
    vlm.add_argument("--tokens", default=None, choices=("patch", "pooled"),
                     help="what the LM sees: every patch token (LLaVA's default) or the one pooled token" + _per_preset("tokens"))
    vlm.add_argument("--train-images", type=int, default=None, help="images for both training stages" + _per_preset("train_images"))
    vlm.add_argument("--test-images", type=int, default=None, help="held-out images whose questions are scored" + _per_preset("test_images"))
    vlm.add_argument("--stage1-steps", type=int, default=None, help="stage-1 steps on captions" + _per_preset("stage1_steps"))
    vlm.add_argument("--stage2-steps", type=int, default=None, help="projector + LM steps on question/answer pairs" + _per_preset("stage2_steps"))
    vlm.add_argument("--stage1-train-lm", default=None, action=argparse.BooleanOptionalAction,
                     help="stage 1 trains the LM with the projector (LLaVA trains the projector only; a from-scratch "
                          "--lm tiny knows no language before stage 1)" + _per_preset("stage1_train_lm"))
    vlm.add_argument("--stage1-lr", type=float, default=None, help="peak learning rate of stage 1" + _per_preset("stage1_lr"))
    vlm.add_argument("--stage2-lr", type=float, default=None,
                     help="peak learning rate of stage 2 (use ~2e-5 with a pretrained --lm, as LLaVA-1.5 does)" + _per_preset("stage2_lr"))
    vlm.add_argument("--batch-size", type=int, default=None, help="examples per step of both stages" + _per_preset("batch_size"))
    vlm.add_argument("--seed", type=int, default=None, help="data and initialisation seed" + _per_preset("seed"))
    vlm.add_argument("--vs-random", action="store_true",
                     help="also evaluate the same encoder architecture randomly initialised, side by side")
    vlm.add_argument("--no-progress", action="store_true", help="no progress bar")


def options_from(args) -> VLMOptions:
    """The preset's options with every field the command line gives replaced."""
    given = {f.name: getattr(args, f.name) for f in fields(VLMOptions) if getattr(args, f.name, None) is not None}
    return replace(VLM_PRESETS[args.preset][1], **given).check()


def run_vlm(args, load, random_twin, device, emit) -> int:
    """`load(args)` -> (model, tokenizer, meta); `emit(args, result, lines)` prints text or JSON."""
    from tqdm import tqdm

    from .evaluate import evaluate_encoder, load_vqa

    options = options_from(args)
    model, _, meta = load(args)
    models = {"trained": model}
    if args.vs_random:
        models["random_init"] = random_twin(model)
    train, test = load_vqa(options, model.config.image_size)
    total = len(models) * (options.stage1_steps + options.stage2_steps)
    result = {"preset": args.preset, "options": asdict(options), "task": options.task, "lm": options.lm,
              "tokens": options.tokens, "stage1_train_lm": options.stage1_train_lm, "num_train_images": len(train.images),
              "num_train_questions": len(train.questions), "num_test_questions": len(test.questions)}
    if train.skipped:
        result["skipped_samples"] = train.skipped
    with tqdm(total=total, desc="eval vlm", disable=args.no_progress or args.json) as progress:
        for name, encoder_model in models.items():
            result[name] = evaluate_encoder(encoder_model, meta, train, test, options, device, progress)
    types = list(result["trained"]["accuracy"])
    lines = [f"LLaVA-style evaluation, {options.task}: {result['trained']['export']} export, "
             f"{result['trained']['image_tokens']} {options.tokens} token(s) per image, LM {options.lm}; "
             f"{len(train.images)} training images ({len(train.questions)} questions), "
             f"{len(test.questions)} held-out questions; exact-match accuracy",
             f"  {'':14s}" + "".join(f"{t:>12s}" for t in types) + f"{'overall':>12s}"]
    for name in models:
        acc = result[name]["accuracy"]
        lines.append(f"  {name:14s}" + "".join(f"{acc[t]:12.3f}" for t in types) + f"{result[name]['overall']:12.3f}")
    for sample in result["trained"]["samples"][:4]:
        lines.append(f"  e.g. {sample['question']} -> {sample['prediction']!r} (truth: {sample['answer']})")
    return emit(args, result, lines)
