"""Flags that several commands share, so each concept has one name everywhere:
--encoder, --decoder, --image-size, --batch-size, --checkpoint, --json and the decoding options.
Renamed flags stay accepted as hidden aliases (not in --help), so documented commands keep working."""

from __future__ import annotations

import argparse

_ALIAS_KEYS = ("type", "choices", "action", "metavar", "nargs")


def add(parser, name: str, *, aliases: tuple[str, ...] = (), **kwargs) -> argparse.Action:
    """parser.add_argument(name, **kwargs), plus each old name in `aliases` accepted but hidden."""
    if "dest" in kwargs and kwargs.get("action") is None:  # show the flag's name, not an internal dest
        kwargs.setdefault("metavar", name.lstrip("-").replace("-", "_").upper())
    action = parser.add_argument(name, **kwargs)
    for old in aliases:
        parser.add_argument(old, dest=action.dest, help=argparse.SUPPRESS, default=argparse.SUPPRESS,
                            **{k: v for k, v in kwargs.items() if k in _ALIAS_KEYS})
    return action


def add_checkpoint(parser, required: bool = True) -> None:
    parser.add_argument("--checkpoint", required=required, metavar="DIR",
                        help="checkpoint directory, a run's checkpoints/ directory or a run directory")


def add_json(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def add_decoding(parser, *, sampling: bool = True, seed_default: int | None = None,
                 seed_aliases: tuple[str, ...] = ()) -> None:
    """--decoding and the options of each strategy (generate.generate's arguments)."""
    parser.add_argument("--decoding", default="greedy", choices=("greedy", "beam", "sample")[:3 if sampling else 2],
                        help="greedy, beam search" + (" or top-k / top-p sampling" if sampling else ""))
    parser.add_argument("--beam-size", type=int, default=4, help="beams for --decoding beam")
    if not sampling:
        return
    parser.add_argument("--length-penalty", type=float, default=0.0,
                        help="beam: rank by log-likelihood / length**penalty (0: plain likelihood)")
    parser.add_argument("--top-k", type=int, default=0, help="sampling: keep the k likeliest tokens (0: all)")
    parser.add_argument("--top-p", type=float, default=1.0, help="sampling: nucleus probability mass")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    add(parser, "--decode-seed", aliases=seed_aliases, type=int, default=seed_default,
        help="sampling seed" + (" (default: unseeded)" if seed_default is None else ""))


def decoding_options(args) -> dict:
    """generate()'s keyword arguments from the flags add_decoding made."""
    options = dict(strategy=args.decoding, beam_size=args.beam_size)
    for key in ("length_penalty", "top_k", "top_p", "temperature"):
        if hasattr(args, key):
            options[key] = getattr(args, key)
    if hasattr(args, "decode_seed"):
        options["seed"] = args.decode_seed
    return options


def add_eval_keep_ratio(parser) -> None:
    parser.add_argument("--eval-keep-ratio", type=float, default=None, metavar="R",
                        help="fraction of the visual tokens the decoder sees, one seeded subset "
                             "(default: the checkpoint's eval_keep_ratio; 1 = every token)")


def apply_eval_keep_ratio(model, ratio: float | None) -> None:
    """--eval-keep-ratio on a loaded model (a decoder reading visual tokens; others ignore it)."""
    if ratio is None or not hasattr(model.config, "eval_keep_ratio"):
        return
    from ..models.masking import check_keep_ratio

    model.config.eval_keep_ratio = check_keep_ratio(ratio)


def resolve_device(name: str | None):
    """--device as a torch.device: None picks cuda when torch sees a GPU; an unknown name or an absent GPU
    is a one-line error instead of torch's traceback deep inside the first .to()."""
    import torch

    from ..errors import UserError

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown --device {name!r}: use cpu or cuda (cuda:N for one GPU)") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name}: only cpu and cuda are supported")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for, but torch sees no GPU here: use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible")
    return device
