"""ov2 eval zeroshot|probe|captions|all|speed|caption-accuracy|vlm --checkpoint DIR [--vs-random] [--json]"""

from __future__ import annotations

from . import caption_accuracy
from ._options import (add, add_checkpoint, add_decoding, add_eval_keep_ratio, add_json, apply_eval_keep_ratio,
                       decoding_options, resolve_device)

NAME = "eval"
HELP = ("evaluate a caption-trained encoder: zero-shot by caption likelihood, probes, caption metrics, "
        "caption accuracy on labelled shards, decoding speed")

# eval.tasks.TASKS, written out so that building the ov2 parser imports no torch (a test pins the two equal)
TASKS = ("synthetic-object", "synthetic-colour", "synthetic-shape", "fashion-mnist")

TARGETS = {
    "zeroshot": "zero-shot classification by caption likelihood: each class scored by the likelihood of its "
                "prompts as the image's caption (top-1/top-5)",
    "probe": "linear, attentive and k-NN probes on frozen features",
    "captions": "perplexity, CIDEr and BLEU of generated captions on held-out images",
    "all": "zero-shot, probes and caption metrics in one table, optionally against random init",
    "speed": "decoding speed with vs without the key/value cache (of a checkpoint, or of a preset's random init)",
    "caption-accuracy": caption_accuracy.HELP,
}


def _common(parser, checkpoint_required: bool = True) -> None:
    add_checkpoint(parser, required=checkpoint_required)
    add_eval_keep_ratio(parser)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    add_json(parser)
    parser.add_argument("--precision", default="auto",
                        help="fp32, bf16 or auto: resolved as `ov2 train` does, from hardware flags (default: auto)")


def _task_args(parser) -> None:
    parser.add_argument("--task", default="synthetic-object", metavar="TASK",
                        help=f"classification task: {', '.join(TASKS)} (default: synthetic-object, 30 colour+shape "
                             "classes), or your labelled images: imagefolder:DIR, csv:FILE (file,label rows; "
                             "also .jsonl), shards:PATTERN (label in each json)")
    parser.add_argument("--templates", default="", metavar="FILE",
                        help='zero-shot prompts, one template per line with "{}" for the class name, for any task '
                             '(default: the task\'s own prompts; "a photo of a {}", ... for your images)')
    parser.add_argument("--label-key", default="label", help="json field holding the label (shards: tasks)")
    parser.add_argument("--shards", default="", help="Fashion-MNIST shard directory (for --task fashion-mnist)")
    parser.add_argument("--test-images", type=int, default=500, help="held-out images")
    parser.add_argument("--seed", type=int, default=0, help="embedded dataset seed")
    parser.add_argument("--vs-random", action="store_true",
                        help="also evaluate the same architecture randomly initialised, side by side")


def _probe_args(parser) -> None:
    parser.add_argument("--train-images", type=int, default=2000, help="probe training images")
    parser.add_argument("--attentive-epochs", type=int, default=30, help="training epochs of the attentive probe")


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="eval_target", metavar="TARGET", required=True)
    target = {name: sub.add_parser(name, help=text, description=text) for name, text in TARGETS.items()}
    zs = target["zeroshot"]
    _common(zs)
    _task_args(zs)
    zs.add_argument("--reduce", default="sum", choices=("sum", "mean"),
                    help="prompt score: sum or mean of its token log-likelihoods")
    probe = target["probe"]
    _common(probe)
    _task_args(probe)
    _probe_args(probe)
    probe.add_argument("--probes", default="linear,attentive,knn", help="comma list of probes to run")
    caps = target["captions"]
    _common(caps)
    add(caps, "--caption-images", aliases=("--images",), type=int, default=256, help="held-out images to caption")
    caps.add_argument("--shards", default="", help="caption held-out shard images instead of the embedded dataset")
    caps.add_argument("--seed", type=int, default=0, help="embedded dataset seed")
    caps.add_argument("--show", type=int, default=0, help="print this many captions with their references")
    add_decoding(caps, seed_default=0)
    every = target["all"]
    _common(every)
    _task_args(every)
    _probe_args(every)
    every.add_argument("--caption-images", type=int, default=256, help="held-out images to caption")
    speed = target["speed"]
    _common(speed, checkpoint_required=False)
    speed.add_argument("--preset", default="tiny-cpu", help="model sizes when no --checkpoint")
    speed.add_argument("--encoder", help="override the preset's encoder (e.g. S/16)")
    speed.add_argument("--decoder", help="override the preset's decoder (e.g. S)")
    speed.add_argument("--image-size", type=int, help="override the preset's image size in pixels")
    speed.add_argument("--batch-size", type=int, default=16, help="images decoded together")
    speed.add_argument("--new-tokens", type=int, default=30, help="tokens decoded per image")
    speed.add_argument("--repeats", type=int, default=3, help="timed runs (the best is reported)")
    add_decoding(speed, sampling=False)
    from ..vlm.command import add_vlm_arguments

    add_vlm_arguments(sub, _common)
    accuracy = target["caption-accuracy"]
    caption_accuracy.add_arguments(accuracy)
    accuracy.set_defaults(run=caption_accuracy.run)


# --------------------------------------------------------------------------------------------- helpers

def _device(args):
    return resolve_device(args.device)


def _load(args):
    from ..checkpoint import load_checkpoint
    from ..generate import check_autoregressive

    model, tokenizer, meta = load_checkpoint(args.checkpoint, device=_device(args))
    apply_eval_keep_ratio(model, getattr(args, "eval_keep_ratio", None))
    if args.eval_target not in ("probe", "vlm"):  # probes and VLMs need only the encoder (imported checkpoints have no decoder)
        check_autoregressive(model)
    return model, tokenizer, meta


def random_twin(model, seed: int = 0):
    """The same architecture, freshly initialised (the baseline a trained encoder must beat)."""
    import torch

    from ..methods import build_model

    torch.manual_seed(seed)
    twin = build_model(model.config)
    return twin.to(next(model.parameters()).device).eval()


def _models(args):
    model, tokenizer, _ = _load(args)
    models = {"trained": model}
    if getattr(args, "vs_random", False):
        models["random_init"] = random_twin(model)
    return models, tokenizer


def _task(args, image_size: int, num_train: int = 16):
    from ..eval.tasks import load_task

    task = load_task(args.task, image_size, num_train=num_train, num_test=args.test_images, seed=args.seed,
                     shards=args.shards, templates=args.templates, label_key=args.label_key)
    args.skipped_samples = task.skipped  # reported by _emit
    return task


def _emit(args, result: dict, lines: list[str]) -> int:
    import json

    result = {**result, "precision": args.resolved_precision, "precision_asked": args.precision}
    lines = [*lines, f"(precision {args.resolved_precision}, asked {args.precision})"]
    skipped = getattr(args, "skipped_samples", None) or result.get("skipped_samples")
    if skipped:
        result["skipped_samples"] = skipped
        lines.append("(skipped bad samples: " + ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())) + ")")

    if args.json:
        print(json.dumps(result))
    else:
        print("\n".join(lines))
    return 0


def _table(title: str, rows: list[tuple[str, dict]], columns: list[str]) -> list[str]:
    widths = [max(14, len(c) + 2) for c in columns]  # long names (linear_patch_mean) keep a gap
    lines = [title, f"  {'':28s}" + "".join(f"{c:>{w}s}" for c, w in zip(columns, widths))]
    for name, values in rows:
        lines.append(f"  {name:28s}" + "".join(f"{values[c]:{w}.4f}" if isinstance(values.get(c), float)
                                              else f"{str(values.get(c, '-')):>{w}s}" for c, w in zip(columns, widths)))
    return lines


# --------------------------------------------------------------------------------------------- targets

def _zeroshot(args, models, tokenizer, task) -> dict:
    from ..eval.zeroshot import zero_shot

    out = {}
    for name, model in models.items():
        result = zero_shot(model, tokenizer, task.test.images, task.test.labels, task.prompts,
                           reduce=getattr(args, "reduce", "sum"))
        result.pop("predictions")
        out[name] = result
    return out


def _probes(args, models, task) -> dict:
    from ..eval.probe import PROBES, run_probes

    probes = tuple(p.strip() for p in getattr(args, "probes", ",".join(PROBES)).split(",") if p.strip())
    unknown = set(probes) - set(PROBES)
    if unknown:
        from ..errors import UserError

        raise UserError(f"unknown probe {', '.join(sorted(unknown))}: use some of {', '.join(PROBES)}")
    return {name: run_probes(model, task, probes, attentive_epochs=args.attentive_epochs)
            for name, model in models.items()}


def _probe_row(result: dict) -> dict:
    return {k: result[k]["accuracy"] for k in ("linear_pooled", "linear_patch_mean", "attentive", "knn")
            if k in result}


def _captions(args, model, tokenizer, count: int, options: dict) -> dict:
    from ..eval.caption_metrics import caption_metrics
    from ..eval.tasks import shard_captions, synthetic_captions

    size = model.config.image_size
    data = shard_captions(args.shards, count, size) if args.shards else synthetic_captions(count, size, args.seed)
    result = caption_metrics(model, tokenizer, data.images, data.references, **options)
    result["references"] = [refs[0] for refs in data.references]
    if data.skipped:
        result["skipped"] = data.skipped  # bad held-out samples passed over, by reason
    return result


# Count options of the targets: the least value each accepts.
_AT_LEAST = {"test_images": 1, "train_images": 1, "images": 1, "caption_images": 1, "attentive_epochs": 1,
             "beam_size": 1, "batch_size": 1, "new_tokens": 1, "repeats": 1, "show": 0, "top_k": 0}


def check_counts(args) -> None:
    from ..errors import UserError

    for key, least in _AT_LEAST.items():
        value = getattr(args, key, None)
        if value is not None and value < least:
            raise UserError(f"--{key.replace('_', '-')} must be >= {least}, got {value}")


def run(args) -> int:
    """Every evaluation runs under the precision `ov2 train` would pick here, and reports it."""
    from ..precision import DTYPES, autocast, resolve_precision_name

    check_counts(args)
    device = _device(args)
    args.resolved_precision = resolve_precision_name(args.precision, device)
    with autocast(device, DTYPES[args.resolved_precision]):
        return _run(args)


def _run(args) -> int:
    target = args.eval_target
    if target == "speed":
        return _run_speed(args)
    if target == "vlm":
        from ..vlm.command import run_vlm

        return run_vlm(args, _load, random_twin, _device(args), _emit)
    if target == "captions":
        model, tokenizer, _ = _load(args)
        result = _captions(args, model, tokenizer, args.caption_images, decoding_options(args))
        predictions, references = result.pop("predictions"), result.pop("references")
        lines = [f"held-out captions ({result['num_images']} images, {args.decoding}): "
                 f"perplexity {result['perplexity']:.3f}  CIDEr {result['cider']:.3f}  BLEU-4 {result['bleu4']:.3f}  "
                 f"BLEU-1 {result['bleu1']:.3f}  exact match {result['exact_match']:.3f}  "
                 f"repeated phrase {result['repeated_phrase_share']:.3f}  (tokenizer: {result['tokenizer']}; "
                 f"decoder sees {result['eval_keep_ratio']:g} of the visual tokens)"]
        for i in range(min(args.show, len(predictions))):
            lines.append(f"[{i}] {predictions[i]}\n    (truth: {references[i]})")
        if args.show:
            result["samples"] = [{"prediction": p, "reference": r}
                                 for p, r in zip(predictions[:args.show], references[:args.show])]
        return _emit(args, result, lines)

    models, tokenizer = _models(args)
    size = models["trained"].config.image_size
    if target == "zeroshot":
        task = _task(args, size)
        result = {"task": task.name, "reduce": args.reduce, **_zeroshot(args, models, tokenizer, task)}
        if task.test.skipped:
            result["skipped"] = task.test.skipped
        lines = _table(f"zero-shot {task.name} ({len(task.classnames)} classes, {len(task.test.labels)} images, "
                       f"prompt score = {args.reduce} of token log-likelihoods)",
                       [(n, result[n]) for n in models], ["top1", "top5"])
        return _emit(args, result, lines)
    if target == "probe":
        task = _task(args, size, args.train_images)
        result = {"task": task.name, **_probes(args, models, task)}
        lines = _table(f"probes on frozen features, {task.name} ({len(task.train.labels)} train / "
                       f"{len(task.test.labels)} held-out images), accuracy",
                       [(n, _probe_row(result[n])) for n in models],
                       ["linear_pooled", "linear_patch_mean", "attentive", "knn"])
        return _emit(args, result, lines)
    # all
    task = _task(args, size, args.train_images)
    zeroshot = _zeroshot(args, models, tokenizer, task)
    probes = _probes(args, models, task)
    result = {"task": task.name, "reduce": "sum"}
    rows = []
    for name, model in models.items():
        captions = _captions(args, model, tokenizer, args.caption_images, {})
        captions.pop("predictions"), captions.pop("references")
        result[name] = {"zeroshot": zeroshot[name], "probe": probes[name], "captions": captions}
        rows.append((name, {"zs_top1": zeroshot[name]["top1"], "zs_top5": zeroshot[name]["top5"],
                            **{k: v for k, v in _probe_row(probes[name]).items()},
                            "cider": captions["cider"], "perplexity": captions["perplexity"]}))
    lines = _table(f"{task.name}: zero-shot ({len(task.test.labels)} images), probes ({len(task.train.labels)} "
                   f"train images), captions ({args.caption_images} images)", rows,
                   ["zs_top1", "zs_top5", "linear_pooled", "linear_patch_mean", "attentive", "knn", "cider",
                    "perplexity"])
    return _emit(args, result, lines)


def _run_speed(args) -> int:
    import torch

    from ..eval.speed import decode_speed

    device = _device(args)
    if args.checkpoint:
        model, tokenizer, _ = _load(args)
        source = str(args.checkpoint)
    else:
        from ..data.build import build_tokenizer
        from ..data.synthetic import SyntheticCaptions
        from ..train.factory import build_model
        from ..train.presets import get_preset

        config = get_preset(args.preset)
        for key in ("encoder", "decoder", "image_size"):
            if getattr(args, key) is not None:
                setattr(config.model, key, getattr(args, key))
        config.model.method = "openvision2"  # the decoder speed is OpenVision 2's whatever the preset trains
        tokenizer = build_tokenizer(config.data, SyntheticCaptions(2000))
        torch.manual_seed(0)
        model = build_model(config.model.validate(), tokenizer).to(device).eval()
        source = f"random init, preset {args.preset}"
    if args.new_tokens > model.config.text_len - 2:
        from ..errors import UserError

        raise UserError(f"--new-tokens must be at most {model.config.text_len - 2} for this model (text_len - 2)")
    result = decode_speed(model, tokenizer, args.batch_size, args.new_tokens, args.repeats, args.decoding,
                          args.beam_size)
    result.update(model=f"{model.config.encoder} + decoder {model.config.decoder} @ {model.config.image_size}px, "
                        f"vocab {model.config.vocab_size}", source=source, threads=torch.get_num_threads())
    lines = [f"decoding {result['batch_size']} images x {result['new_tokens']} tokens ({result['strategy']}"
             f"{', beam ' + str(result['beam_size']) if result['strategy'] == 'beam' else ''}) on {result['device']}, "
             f"{result['model']}:",
             f"  with key/value cache:    {result['cached']['seconds']:.3f} s  "
             f"({result['cached']['tokens_per_s']:.0f} tokens/s)",
             f"  without (full re-run):   {result['uncached']['seconds']:.3f} s  "
             f"({result['uncached']['tokens_per_s']:.0f} tokens/s)",
             f"  speed-up: {result['speedup']:.2f}x"]
    return _emit(args, result, lines)
