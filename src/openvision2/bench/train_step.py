"""ov2 bench: train-step time and peak memory of OpenVision 2, OpenVision 1, the CapPa-style
variant and open_clip's CoCa at one shared shape, side by side.

Each method runs in its own worker process (bench/worker.py), so its peak memory is its own. On
CPU the workers are built and warmed up one after another, then timed in interleaved rounds (each
round runs every method once, in a rotated order), so that a slow spell of a shared machine lands
on all of them alike; on a GPU each method is built, timed and closed before the next starts (two
working sets need not fit together; bench/rounds.py). The step time is the median over rounds. Ratios are printed against OpenVision 2
next to the forward-FLOPs ratio. Throughput is images/s and MFU = 3 x forward FLOPs x images/s
over a peak of the precision the steps run in (a GPU's published dense bf16 peak when known, else
a matmul probe in that precision on this machine; `precision=auto` resolves as `ov2 train` does).
`--max-batch` finds, per method, the largest batch whose peak memory fits `--mem-budget` (one
worker per method, one step per trial; `--rounds 0` skips the timing). `--sweep AXIS=...` draws
cost curves (bench/sweep.py); `--suite gpu` is the whole GPU check (bench/gpu_suite.py).
"""

from __future__ import annotations

import json

from .gpu_suite import run_suite
from .rounds import base_spec_of, bench_methods, device_name
from .runner import PeakProbe, WorkerFailed, find_max_batch, log
from .sweep import run_sweep

HELP = "train-step time, peak memory and MFU of openvision2 vs openvision1, cappa and open_clip CoCa"
DEFAULT_METHODS = "openvision2,openvision1,cappa,coca"


def add_arguments(parser) -> None:
    from ..commands._options import add

    # dest keeps the old names (args.model, args.res, args.batch); --model, --res, --batch stay accepted
    add(parser, "--encoder", aliases=("--model",), dest="model",
        help="encoder, e.g. S/16 or L/14 (default: S/16 on CPU, L/14 on GPU)")
    add(parser, "--image-size", aliases=("--res",), dest="res", type=int, help="image size in pixels (default 224)")
    parser.add_argument("--decoder", help="decoder size (default: as `ov2 flops` assumes for the encoder)")
    parser.add_argument("--text-encoder", help="text tower size of OpenVision 1 and CoCa (default: the decoder's)")
    parser.add_argument("--preset", help="take encoder, decoder, resolution, text lengths and vocabulary "
                                         "from a training preset")
    add(parser, "--batch-size", aliases=("--batch",), dest="batch", type=int,
        help="images per step (default: 2 on CPU, 64 on GPU)")
    parser.add_argument("--text-len", type=int, default=None, help="caption length incl. [CLS] (default 128)")
    parser.add_argument("--alt-text-len", type=int, default=None, help="OpenVision 1 text length (default 80)")
    parser.add_argument("--vocab", type=int, default=None, help="vocabulary size (default 32000)")
    parser.add_argument("--keep-ratio", type=float, default=None, help="OpenVision 2 keep ratio (default 0.35)")
    parser.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated (default {DEFAULT_METHODS})")
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds (interleaved on CPU)")
    parser.add_argument("--steps-per-round", type=int, default=1, help="timed steps per method per round")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per method first")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    parser.add_argument("--precision", default="auto", help="fp32, bf16 or auto (default): what `ov2 train` picks, "
                                                              "from hardware flags (bf16 on Ampere+ GPUs and on CPUs "
                                                              "with AVX-512 BF16 or AMX, else fp32)")
    parser.add_argument("--logits-chunk", type=int, default=None,
                        help="tokens per chunk of the vocabulary head + cross-entropy (default: the model option "
                             "logits_chunk, 512); 0 = full logits (as before the chunked loss)")
    parser.add_argument("--activation-checkpointing", default="none", choices=("none", "full", "selective"),
                        help="per-block activation checkpointing, as `ov2 train` applies it")
    parser.add_argument("--compile", action="store_true", help="torch.compile each transformer block")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads per worker (default: torch's)")
    parser.add_argument("--peak-tflops", type=float, help="peak for MFU (default: known GPU peak, else probe)")
    parser.add_argument("--max-batch", action="store_true", help="also bisect each method's largest batch "
                                                                 "under --mem-budget")
    parser.add_argument("--mem-budget", type=float, help="GiB for --max-batch (default: the GPU's memory, "
                                                         "or 3 GiB on CPU)")
    parser.add_argument("--max-batch-limit", type=int, help="largest batch --max-batch tries "
                                                             "(default 8192 on GPU, 64 on CPU)")
    parser.add_argument("--sweep", metavar="AXIS=V1,V2,...",
                        help="cost curves: run every method at each value of one axis (res, batch, keep_ratio, "
                             "precision or logits_chunk) and write sweep-AXIS.json and .png to --out")
    parser.add_argument("--suite", choices=("gpu",), help="the whole GPU check (bench/gpu_suite.py): one JSON and "
                                                          "a text summary in --out")
    parser.add_argument("--dry-run", action="store_true", help="with --suite: tiny models on this machine, to "
                                                               "check the suite end to end in seconds")
    parser.add_argument("--out", default="bench-out", help="directory for --sweep and --suite files")
    parser.add_argument("--max-batch-fresh", action="store_true",
                        help="--max-batch: a fresh worker process per trial (slower; nothing an earlier trial left in "
                             "the allocator or oneDNN's caches is counted: steadier CPU readings at large batches)")
    parser.add_argument("--max-batch-tolerance", type=float, default=0.0,
                        help="stop --max-batch once the largest fit and the smallest miss are within this "
                             "fraction (0: adjacent batches)")
    parser.add_argument("--ranks", type=int, default=1,
                        help="CPU only: each method's model wrapped with FSDP2 over this many gloo ranks (one "
                             "process each, --batch-size images per rank); peaks are the largest rank's")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def resolve(args):
    import torch

    from ..commands._options import resolve_device
    from ..errors import UserError
    from ..flops import default_decoder
    from ..models.registry import decoder_size, parse_encoder_name
    from .methods import BenchShape, check_method

    resolved = resolve_device(None if args.device == "auto" else args.device)
    if resolved.index is not None:  # workers are spawned per method and each takes the current GPU
        raise UserError(f"--device {args.device}: use cpu, cuda or auto (CUDA_VISIBLE_DEVICES picks the GPU)")
    device = resolved.type
    if args.threads:  # the matmul probe then runs on as many threads as each worker
        torch.set_num_threads(args.threads)
    from ..precision import resolve_precision_name

    precision = resolve_precision_name(args.precision, torch.device(device))
    methods = [check_method(m.strip()) for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise UserError("--methods is empty: name at least one of openvision2, openvision1, cappa, coca")
    if args.steps_per_round < 1 or args.rounds < (0 if args.max_batch else 1):
        raise UserError("--rounds and --steps-per-round must be at least 1 (--rounds 0 with --max-batch: "
                        "no timing, the largest batch only)")
    if args.warmup < 0:
        raise UserError("--warmup cannot be negative")
    if args.ranks < 1 or (args.ranks > 1 and (device != "cpu" or "coca" in methods or args.compile)):
        raise UserError(f"--ranks {args.ranks}: at least 1, and more than 1 only on --device cpu, without coca "
                        f"(open_clip's model is not wrapped) and without --compile")

    if args.preset:
        from ..train.presets import get_preset

        config = get_preset(args.preset)
        sizes = ("encoder", "decoder", "text_encoder", "image_size", "keep_ratio", "text_len", "alt_text_len",
                 "logits_chunk")
        shape = BenchShape(**{k: getattr(config.model, k) for k in sizes}, vocab_size=config.data.expected_vocab_size)
    else:
        encoder = args.model or ("L/14" if device == "cuda" else "S/16")
        shape = BenchShape(encoder=encoder, decoder=default_decoder(encoder))
    if args.model:
        shape.encoder = args.model
        if not args.decoder and not args.preset:
            shape.decoder = default_decoder(args.model)
    for attr, value in (("decoder", args.decoder), ("text_encoder", args.text_encoder), ("image_size", args.res),
                        ("text_len", args.text_len), ("alt_text_len", args.alt_text_len),
                        ("vocab_size", args.vocab), ("keep_ratio", args.keep_ratio),
                        ("logits_chunk", args.logits_chunk)):
        if value is not None:
            setattr(shape, attr, value)
    shape.batch_size = args.batch or (64 if device == "cuda" else 2)
    parse_encoder_name(shape.encoder)
    decoder_size(shape.decoder)
    decoder_size(shape.text_encoder or shape.decoder)
    if shape.batch_size < 1 or shape.image_size < 8 or shape.text_len < 4 or shape.alt_text_len < 4 or shape.vocab_size < 8:
        raise UserError("batch must be >= 1, res >= 8, text lengths >= 4 and vocab >= 8")
    if not 0 < shape.keep_ratio <= 1:
        raise UserError(f"--keep-ratio must be in (0, 1], got {shape.keep_ratio}")
    if shape.logits_chunk < 0:
        raise UserError(f"--logits-chunk must be 0 (full logits) or positive, got {shape.logits_chunk}")
    return torch.device(device), precision, methods, shape


def run(args) -> int:
    from ..errors import UserError
    from .peak import measure_peak_tflops  # imports torch: not when `ov2 --help` builds the parser

    if args.suite:
        return run_suite(args)
    if args.dry_run:
        raise UserError("--dry-run goes with --suite gpu")
    device, precision, methods, shape = resolve(args)
    if args.sweep:
        return run_sweep(args, device, precision, methods, shape)
    base_spec = base_spec_of(args, device, precision, shape)
    out = {"device": device.type, "device_name": device_name(device), "precision": precision,
           "precision_asked": args.precision, "shape": shape.to_dict(), "rounds": args.rounds, "steps_per_round": args.steps_per_round,
           "warmup": args.warmup, "activation_checkpointing": args.activation_checkpointing,
           "compile": args.compile, "ranks": args.ranks}
    if args.rounds:
        peak, peak_source = measure_peak_tflops(device, precision, args.peak_tflops)
        out |= {"peak_tflops": peak, "peak_source": peak_source,
                **bench_methods(methods, base_spec, args.rounds, args.steps_per_round, peak)}
    if args.max_batch:
        out["max_batch"] = max_batches(methods, base_spec, device, args.mem_budget, args.max_batch_limit,
                                       args.max_batch_tolerance, args.max_batch_fresh)
    if args.json:
        print(json.dumps(out))
    else:
        print_table(out)
    return 0


def max_batches(methods: list[str], base_spec: dict, device, budget_gib: float | None, limit: int | None,
                tolerance: float = 0.0, fresh: bool = False) -> dict:
    """--max-batch: per method, the largest batch whose training step fits the budget (one worker per
    method, one step per trial; bench/runner.py PeakProbe)."""
    from ..errors import UserError

    if device.type == "cuda":
        import torch

        default_budget = torch.cuda.get_device_properties(device).total_memory / 2**30
    else:
        default_budget = 3.0
    budget = budget_gib or default_budget
    check_budget(device, budget)
    limit = limit or (8192 if device.type == "cuda" else 64)
    budget_bytes = int(budget * 2**30)
    log(f"largest batch under {budget:.2f} GiB (up to {limit}), "
        f"activation checkpointing {base_spec.get('activation_checkpointing', 'none')}:")
    found = {}
    for method in methods:
        # on CPU a trial may add at most 1.5x the budget before its allocations fail (worker.py)
        probe = PeakProbe({**base_spec, "method": method, "mem_limit_bytes": int(1.5 * budget_bytes) + 2**29},
                          fresh=fresh)
        try:
            found[method] = find_max_batch(probe, budget_bytes, limit, log, method, tolerance=tolerance)
        except WorkerFailed as err:
            raise UserError(f"--max-batch failed in {err}") from None
        finally:
            probe.close()
    out = {"budget_bytes": budget_bytes, "limit": limit, "tolerance": tolerance, "fresh_worker_per_trial": fresh,
           "activation_checkpointing": base_spec.get("activation_checkpointing", "none"), "methods": found}
    if "openvision2" in found:
        out["openvision2_over"] = {m: found["openvision2"]["max_batch"] / v["max_batch"]
                                        for m, v in found.items()}
    return out


def check_budget(device, budget_gib: float) -> None:
    """On CPU a budget beyond the free memory would let a trial push the machine into the OOM killer."""
    from ..errors import UserError

    if budget_gib <= 0:
        raise UserError(f"--mem-budget must be positive, got {budget_gib}")
    if device.type == "cpu":
        import os

        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
        if budget_gib > 0.7 * available:
            raise UserError(f"--mem-budget {budget_gib:.1f} GiB is more than 70% of the {available:.1f} GiB "
                            "free on this machine: choose a smaller budget")


def print_table(out: dict) -> None:
    s = out["shape"]
    if "methods" not in out:  # --rounds 0: the largest batch only
        print(f"{s['encoder']} @ {s['image_size']}px, decoder {s['decoder']}; {out['precision']} on "
              f"{out['device_name']}; logits chunk {s['logits_chunk'] or 'off'}")
        print_max_batch(out)
        return
    print(f"{s['encoder']} @ {s['image_size']}px, decoder {s['decoder']}, text tower {s['text_encoder'] or s['decoder']}, "
          f"batch {s['batch_size']}, {s['text_len'] - 1} caption positions, vocab {s['vocab_size']}, "
          f"keep {s['keep_ratio']:g}; {out['precision']} (asked {out.get('precision_asked', out['precision'])}) "
          f"on {out['device_name']}")
    print(f"peak {out['peak_tflops']:.3g} TFLOP/s ({out['peak_source']}); median of {out['rounds']} "
          f"{'interleaved ' if out['device'] == 'cpu' else ''}"
          f"rounds x {out['steps_per_round']} step(s) after {out['warmup']} warm-up step(s); logits chunk "
          f"{s['logits_chunk'] or 'off'}, activation checkpointing {out['activation_checkpointing']}"
          + (", compiled" if out["compile"] else ""))
    head = f"{'method':12s} {'step s':>8s} {'img/s':>8s} {'peak mem':>9s} {'GFLOPs/img':>10s} {'MFU':>6s}"
    if out["ratios_vs_openvision2"]:
        head += f" | {'time/OV2':>8s} {'mem/OV2':>8s} {'FLOPs/OV2':>9s}"
    print(head)
    for method, r in out["methods"].items():
        line = (f"{method:12s} {r['step_s']:8.3f} {r['images_per_s']:8.2f} {r['peak_mem_bytes'] / 2**30:7.2f}Gi "
                f"{r['gflops_per_image']:10.2f} {100 * r['mfu']:5.1f}%")
        if method in out["ratios_vs_openvision2"]:
            q = out["ratios_vs_openvision2"][method]
            line += f" | {q['time']:7.2f}x {q['memory']:7.2f}x {q['flops']:8.2f}x"
        print(line)
    kind = next(iter(out["methods"].values()))["memory_kind"]
    print(f"peak mem = {kind}; GFLOPs/img = forward matmul+attention FLOPs of the training step, counted")
    print_max_batch(out)


def print_max_batch(out: dict) -> None:
    if "max_batch" in out:
        mb = out["max_batch"]
        print(f"largest batch under {mb['budget_bytes'] / 2**30:.2f} GiB: " + ", ".join(
            f"{m} {v['max_batch']}{'+' if v['at_limit'] else ''}" for m, v in mb["methods"].items())
            + "".join(f"; openvision2 / {m} {q:.2f}x" for m, q in mb.get("openvision2_over", {}).items()
                      if m != "openvision2"))
