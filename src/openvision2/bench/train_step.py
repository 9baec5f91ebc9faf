"""ov2 bench: train-step time and peak memory of OpenVision 2, OpenVision 1, the CapPa-style
variant and open_clip's CoCa at one shared shape, side by side.

Each method runs in its own worker process (bench/worker.py), so its peak memory is its own. The
workers are built and warmed up one after another, then timed in interleaved rounds (each round
runs every method once, in a rotated order), so that a slow spell of a shared machine lands on all
of them alike; the step time is the median over rounds. Ratios are printed against OpenVision 2
next to the forward-FLOPs ratio. Throughput is images/s and MFU = 3 x forward FLOPs x images/s
over a peak (a GPU's published dense bf16 peak when known, else a matmul probe on this machine).
`--max-batch` finds, per method, the largest batch whose peak memory fits `--mem-budget`.
"""

from __future__ import annotations

import json
import statistics
import sys

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
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--steps-per-round", type=int, default=1, help="timed steps per method per round")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per method first")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    parser.add_argument("--precision", default="auto", help="fp32, bf16 or auto (default): what `ov2 train` picks, "
                                                              "from hardware flags (bf16 on Ampere+ GPUs and on CPUs "
                                                              "with AVX-512 BF16 or AMX, else fp32)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads per worker (default: torch's)")
    parser.add_argument("--peak-tflops", type=float, help="peak for MFU (default: known GPU peak, else probe)")
    parser.add_argument("--max-batch", action="store_true", help="also bisect each method's largest batch "
                                                                 "under --mem-budget")
    parser.add_argument("--mem-budget", type=float, help="GiB for --max-batch (default: the GPU's memory, "
                                                         "or 3 GiB on CPU)")
    parser.add_argument("--max-batch-limit", type=int, help="largest batch --max-batch tries "
                                                             "(default 8192 on GPU, 64 on CPU)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def resolve(args):
    import torch

    from ..errors import UserError
    from ..flops import default_decoder
    from ..models.registry import decoder_size, parse_encoder_name
    from .methods import BenchShape, check_method

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device not in ("cpu", "cuda"):
        raise UserError(f"unknown device {args.device!r}: use cpu, cuda or auto")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no GPU is visible to torch")
    from ..precision import resolve_precision_name

    precision = resolve_precision_name(args.precision, torch.device(device))
    methods = [check_method(m.strip()) for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise UserError("--methods is empty: name at least one of openvision2, openvision1, cappa, coca")
    for key in ("rounds", "steps_per_round"):
        if getattr(args, key) < 1:
            raise UserError(f"--{key.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        raise UserError("--warmup cannot be negative")

    if args.preset:
        from ..train.presets import get_preset

        config = get_preset(args.preset)
        sizes = ("encoder", "decoder", "text_encoder", "image_size", "keep_ratio", "text_len", "alt_text_len")
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
                        ("vocab_size", args.vocab), ("keep_ratio", args.keep_ratio)):
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
    return torch.device(device), precision, methods, shape


def timed_rounds(methods: list[str], base_spec: dict, rounds: int, steps_per_round: int) -> tuple[dict, dict]:
    """(step times per method, worker report per method), every method in its own process."""
    from .runner import WorkerProcess

    workers: dict[str, WorkerProcess] = {}
    try:
        for method in methods:  # built one at a time, so no two compete for the cores while warming up
            log(f"building and warming up {method} ...")
            workers[method] = WorkerProcess({**base_spec, "method": method})
        times: dict[str, list[float]] = {m: [] for m in methods}
        for r in range(rounds):
            order = methods[r % len(methods):] + methods[:r % len(methods)]
            for method in order:
                times[method] += workers[method].ask({"cmd": "steps", "n": steps_per_round})["times"]
            log(f"round {r + 1}/{rounds}: " + ", ".join(f"{m} {times[m][-1]:.3f}s" for m in methods))
        reports = {m: workers[m].ask({"cmd": "report"}) for m in methods}
    finally:
        for worker in workers.values():
            worker.close()
    return times, reports


def run(args) -> int:
    from ..errors import UserError
    from dataclasses import replace

    from ..flops import count
    from ..methods import get_method
    from ..models.config import ModelConfig
    from .peak import known_peak_tflops, matmul_probe_tflops
    from .runner import WorkerFailed, find_max_batch, measure_peak

    device, precision, methods, shape = resolve(args)
    if args.peak_tflops:
        peak, peak_source = args.peak_tflops, "given with --peak-tflops"
    elif (known := known_peak_tflops(device, precision)) is not None:
        import torch

        peak, peak_source = known, f"published dense {precision} peak of {torch.cuda.get_device_name(device)}"
    else:
        log("probing the matmul peak ...")
        peak, peak_source = matmul_probe_tflops(device, precision), f"best {precision} matmul rate measured here"
    base_spec = {"device": device.type, "precision": precision, "shape": shape.to_dict(), "warmup": args.warmup,
                 "threads": args.threads}
    try:
        times, reports = timed_rounds(methods, base_spec, args.rounds, args.steps_per_round)
    except WorkerFailed as err:
        raise UserError(f"benchmark failed in {err} (try a smaller --batch or --model)") from None

    results = {}
    for method in methods:
        step_s = statistics.median(times[method])
        rep = reports[method]
        fwd = rep["forward_flops_per_image"]
        images_per_s = shape.batch_size / step_s
        results[method] = {
            "step_s": step_s, "step_s_all": times[method], "images_per_s": images_per_s,
            "peak_mem_bytes": rep["peak_mem_bytes"], "memory_kind": rep["memory_kind"],
            "params": rep["params"], "gflops_per_image": fwd / 1e9,
            "mfu": 3 * fwd * images_per_s / (peak * 1e12),
            **{k: rep[k] for k in ("peak_rss_bytes", "baseline_rss_bytes", "param_bytes", "optimizer_state_bytes")
               if k in rep},
        }
        if method != "coca":  # the analytic count of `ov2 flops` for the same step (both OV1 texts)
            model_config = replace(ModelConfig.from_dict(shape.to_dict()), method=method)
            analytic = count(model_config, get_method(method).train_text_passes)
            results[method]["gflops_per_image_analytic"] = analytic.total_flops / 1e9
    ref = results.get("openvision2")
    ratios = {}
    if ref:
        for method, r in results.items():
            ratios[method] = {"time": r["step_s"] / ref["step_s"], "memory": r["peak_mem_bytes"] / ref["peak_mem_bytes"],
                              "flops": r["gflops_per_image"] / ref["gflops_per_image"]}
    out = {"device": device.type, "device_name": device_name(device), "precision": precision,
           "precision_asked": args.precision, "shape": shape.to_dict(), "rounds": args.rounds,
           "steps_per_round": args.steps_per_round,
           "warmup": args.warmup, "peak_tflops": peak, "peak_source": peak_source,
           "methods": results, "ratios_vs_openvision2": ratios}

    if args.max_batch:
        if device.type == "cuda":
            import torch

            default_budget = torch.cuda.get_device_properties(device).total_memory / 2**30
        else:
            default_budget = 3.0
        budget = args.mem_budget or default_budget
        check_budget(device, budget)
        limit = args.max_batch_limit or (8192 if device.type == "cuda" else 64)
        log(f"largest batch under {budget:.2f} GiB (up to {limit}):")
        found = {}
        for method in methods:
            try:
                found[method] = find_max_batch(measure_peak({**base_spec, "method": method, "warmup": 2}),
                                               int(budget * 2**30), limit, log, method)
            except WorkerFailed as err:
                raise UserError(f"--max-batch failed in {err}") from None
        out["max_batch"] = {"budget_bytes": int(budget * 2**30), "limit": limit, "methods": found}

    if args.json:
        print(json.dumps(out))
    else:
        print_table(out)
    return 0


def device_name(device) -> str:
    if device.type == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    import platform

    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    import os

    return f"{model or platform.processor() or 'CPU'} ({os.cpu_count()} cores)"


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
    print(f"{s['encoder']} @ {s['image_size']}px, decoder {s['decoder']}, text tower {s['text_encoder'] or s['decoder']}, "
          f"batch {s['batch_size']}, {s['text_len'] - 1} caption positions, vocab {s['vocab_size']}, "
          f"keep {s['keep_ratio']:g}; {out['precision']} (asked {out.get('precision_asked', out['precision'])}) "
          f"on {out['device_name']}")
    print(f"peak {out['peak_tflops']:.3g} TFLOP/s ({out['peak_source']}); median of {out['rounds']} interleaved "
          f"rounds x {out['steps_per_round']} step(s) after {out['warmup']} warm-up step(s)")
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
    if "max_batch" in out:
        mb = out["max_batch"]
        print(f"largest batch under {mb['budget_bytes'] / 2**30:.2f} GiB: " + ", ".join(
            f"{m} {v['max_batch']}{'+' if v['at_limit'] else ''}" for m, v in mb["methods"].items()))
