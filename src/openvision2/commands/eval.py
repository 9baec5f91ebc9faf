"""ov2 eval zeroshot|probe|captions|all|speed|vlm --checkpoint DIR [--vs-random] [--json]"""

from __future__ import annotations

NAME = "eval"
HELP = "evaluate a caption-trained encoder: zero-shot by caption likelihood, probes, caption metrics, decoding speed"

DECODING_HELP = "decoding: greedy (default), beam or sample"


def _common(parser, checkpoint_required: bool = True) -> None:
    parser.add_argument("--checkpoint", required=checkpoint_required, help="checkpoint or run directory")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _task_args(parser) -> None:
    from ..eval.tasks import TASKS

    parser.add_argument("--task", default="synthetic-object", metavar="TASK",
                        help=f"classification task: {', '.join(TASKS)} (default: synthetic-object, 30 colour+shape "
                             "classes), or your labelled images: imagefolder:DIR, csv:FILE (file,label rows; "
                             "also .jsonl), shards:PATTERN (label in each json)")
    parser.add_argument("--templates", default="", metavar="FILE",
                        help='zero-shot prompts for your task: one template per line with "{}" for the class name '
                             '(default: "a photo of a {}", ...)')
    parser.add_argument("--label-key", default="label", help="json field holding the label (shards: tasks)")
    parser.add_argument("--shards", default="", help="Fashion-MNIST shard directory (for --task fashion-mnist)")
    parser.add_argument("--test-images", type=int, default=500, help="held-out images (default: 500)")
    parser.add_argument("--seed", type=int, default=0, help="embedded dataset seed (default: 0)")
    parser.add_argument("--vs-random", action="store_true",
                        help="also evaluate the same architecture randomly initialised, side by side")


def _decoding_args(parser) -> None:
    parser.add_argument("--decoding", default="greedy", choices=("greedy", "beam", "sample"), help=DECODING_HELP)
    parser.add_argument("--beam-size", type=int, default=4)
    parser.add_argument("--top-k", type=int, default=0, help="sampling: keep the k likeliest tokens (0: all)")
    parser.add_argument("--top-p", type=float, default=1.0, help="sampling: nucleus probability mass")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--decode-seed", type=int, default=0, help="sampling seed")


def decoding_options(args) -> dict:
    return dict(strategy=args.decoding, beam_size=args.beam_size, top_k=args.top_k, top_p=args.top_p,
                temperature=args.temperature, seed=args.decode_seed)


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="eval_target", metavar="TARGET", required=True)
    zs = sub.add_parser("zeroshot", help="zero-shot classification by caption likelihood (top-1/top-5)")
    _common(zs)
    _task_args(zs)
    zs.add_argument("--reduce", default="sum", choices=("sum", "mean"),
                    help="prompt score: sum (default) or mean of its token log-likelihoods")
    probe = sub.add_parser("probe", help="linear, attentive and k-NN probes on frozen features")
    _common(probe)
    _task_args(probe)
    probe.add_argument("--train-images", type=int, default=2000, help="probe training images (default: 2000)")
    probe.add_argument("--probes", default="linear,attentive,knn", help="comma list (default: all three)")
    probe.add_argument("--attentive-epochs", type=int, default=30)
    caps = sub.add_parser("captions", help="perplexity, CIDEr and BLEU on held-out images")
    _common(caps)
    caps.add_argument("--images", type=int, default=256, help="held-out images (default: 256)")
    caps.add_argument("--shards", default="", help="caption held-out shard images instead of the embedded dataset")
    caps.add_argument("--seed", type=int, default=0)
    caps.add_argument("--show", type=int, default=0, help="print this many captions with their references")
    _decoding_args(caps)
    every = sub.add_parser("all", help="zero-shot, probes and caption metrics, optionally against random init")
    _common(every)
    _task_args(every)
    every.add_argument("--train-images", type=int, default=2000)
    every.add_argument("--caption-images", type=int, default=256)
    every.add_argument("--attentive-epochs", type=int, default=30)
    from ..vlm.command import add_vlm_arguments

    add_vlm_arguments(sub, _common)
    speed = sub.add_parser("speed", help="decoding speed with vs without the key/value cache")
    _common(speed, checkpoint_required=False)
    speed.add_argument("--preset", default="tiny-cpu", help="model sizes when no --checkpoint (default: tiny-cpu)")
    speed.add_argument("--encoder", help="override the encoder (e.g. S/16)")
    speed.add_argument("--decoder", help="override the decoder (e.g. S)")
    speed.add_argument("--image-size", type=int)
    speed.add_argument("--batch-size", type=int, default=16)
    speed.add_argument("--new-tokens", type=int, default=30)
    speed.add_argument("--repeats", type=int, default=3)
    speed.add_argument("--decoding", default="greedy", choices=("greedy", "beam"))
    speed.add_argument("--beam-size", type=int, default=4)


# --------------------------------------------------------------------------------------------- helpers

def _device(args):
    import torch

    return torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _load(args):
    from ..checkpoint import load_checkpoint
    from ..generate import check_autoregressive

    model, tokenizer, meta = load_checkpoint(args.checkpoint, device=_device(args))
    if args.eval_target not in ("probe", "vlm"):  # probes and VLMs need only the encoder (imported checkpoints have no decoder)
        check_autoregressive(model)
    return model, tokenizer, meta


def random_twin(model, seed: int = 0):
    """The same architecture, freshly initialised (the baseline a trained encoder must beat)."""
    import torch

    torch.manual_seed(seed)
    twin = type(model)(model.config)
    return twin.to(next(model.parameters()).device).eval()


def _models(args):
    model, tokenizer, _ = _load(args)
    models = {"trained": model}
    if getattr(args, "vs_random", False):
        models["random_init"] = random_twin(model)
    return models, tokenizer


def _task(args, image_size: int, num_train: int = 16):
    from ..eval.tasks import load_task

    return load_task(args.task, image_size, num_train=num_train, num_test=args.test_images, seed=args.seed,
                     shards=args.shards, templates=args.templates, label_key=args.label_key)


def _emit(args, result: dict, lines: list[str]) -> int:
    import json

    if args.json:
        print(json.dumps(result))
    else:
        print("\n".join(lines))
    return 0


def _table(title: str, rows: list[tuple[str, dict]], columns: list[str]) -> list[str]:
    lines = [title, f"  {'':28s}" + "".join(f"{c:>14s}" for c in columns)]
    for name, values in rows:
        lines.append(f"  {name:28s}" + "".join(f"{values[c]:14.4f}" if isinstance(values.get(c), float)
                                              else f"{str(values.get(c, '-')):>14s}" for c in columns))
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
    return result


def run(args) -> int:
    target = args.eval_target
    if target == "speed":
        return _run_speed(args)
    if target == "vlm":
        from ..vlm.command import run_vlm

        return run_vlm(args, _load, random_twin, _device(args), _emit)
    if target == "captions":
        model, tokenizer, _ = _load(args)
        result = _captions(args, model, tokenizer, args.images, decoding_options(args))
        predictions, references = result.pop("predictions"), result.pop("references")
        lines = [f"held-out captions ({result['num_images']} images, {args.decoding}): "
                 f"perplexity {result['perplexity']:.3f}  CIDEr {result['cider']:.3f}  BLEU-4 {result['bleu4']:.3f}  "
                 f"BLEU-1 {result['bleu1']:.3f}  exact match {result['exact_match']:.3f}  "
                 f"(tokenizer: {result['tokenizer']})"]
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
        from ..data.synthetic import SyntheticCaptions
        from ..models import OpenVision2
        from ..tokenizer import CaptionTokenizer
        from ..train.presets import get_preset

        config = get_preset(args.preset)
        for key in ("encoder", "decoder", "image_size"):
            if getattr(args, key) is not None:
                setattr(config, key, getattr(args, key))
        if config.tokenizer == "wordpiece":
            tokenizer = CaptionTokenizer.wordpiece(config.tokenizer_path or None)
        else:
            tokenizer = CaptionTokenizer.train_bpe(SyntheticCaptions(2000).captions(), config.bpe_vocab_size)
        torch.manual_seed(0)
        model = OpenVision2(config.model_config(tokenizer.vocab_size, tokenizer.pad_id)).to(device).eval()
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
