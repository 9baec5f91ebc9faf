"""ov2 plan --preset NAME | --recipe NAME | --encoder L/14 [--image-size 224 --batch-size 2048 --method ...]
           [--gpus N] [--gpu KIND | --device-memory GIB] [--mfu F] [--price-per-gpu-hour P] [--explain] [--json]
           [key=value ...]

Will a training config fit a GPU cluster, how fast will it run, what will it cost: per stage, the peak
memory per device broken down, whether it fits, the largest micro-batch per checkpointing mode and the
accumulation that follows, step time, images/s, GPU-hours, days and cost. The memory comes from the real
training step run on fake tensors on this machine's CPU (openvision2/plan/fake.py); no GPU is needed."""

from __future__ import annotations

import json

from ._options import add, add_json

NAME = "plan"
HELP = "memory per GPU, the micro-batch that fits, step time and cost of a training config on a GPU cluster"


def add_arguments(parser) -> None:
    parser.add_argument("--preset", help="plan a training preset (`ov2 train --list`)")
    parser.add_argument("--recipe", help="plan every stage of a recipe (`ov2 train --list`)")
    add(parser, "--encoder", aliases=("--model",), help="plan the paper's stage for this encoder at --image-size "
                                                         "(84 px: pretraining, 224: fine-tuning, more: high-res)")
    parser.add_argument("--decoder", help="decoder size (default: the recipes' for the encoder)")
    parser.add_argument("--method", help="openvision2, openvision1 or cappa (default: the config's)")
    add(parser, "--image-size", aliases=("--res",), type=int, help="image size in pixels (default 224 with --encoder)")
    add(parser, "--batch-size", aliases=("--batch",), type=int,
        help="global batch (with --encoder: the stage's steps follow, at the stage's number of samples)")
    parser.add_argument("--gpus", type=int, default=8, help="devices the global batch is split over")
    parser.add_argument("--gpu", help="device kind, one of the table in openvision2/hardware.py (default H100-80GB)")
    parser.add_argument("--device-memory", type=float, metavar="GIB", help="memory per device in GiB (instead of --gpu)")
    parser.add_argument("--peak-tflops", type=float, help="dense peak per device in the run's precision (default: "
                                                          "the --gpu's; with --device-memory alone no timing)")
    parser.add_argument("--mfu", type=float, default=0.40, help="model FLOPs utilisation assumed for the step time")
    parser.add_argument("--price-per-gpu-hour", type=float, help="price of one device-hour, for the cost")
    parser.add_argument("--release-settings", action="store_true",
                        help="the released code's memory settings (docs/DESIGN.md): fp32 for OpenVision 2, bf16 "
                             "activations for OpenVision 1, full rematerialisation of the image tower only, full "
                             "logits, Adam's first moment in bf16, every device holding all weights (data parallel)")
    parser.add_argument("--explain", action="store_true", help="also the analytic cross-check (activation bytes per "
                                                               "token per block, Korthikanti et al. 2022) and the difference")
    add_json(parser)
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="override a config field as `ov2 train` does (parallel=fsdp, activation_checkpointing=full, "
                             "precision=fp32, micro_batch=8, keep_ratio=0.25, logits_chunk=0, ...)")


def run(args) -> int:
    from ..errors import UserError

    if sum(bool(x) for x in (args.preset, args.recipe, args.encoder)) != 1:
        raise UserError("give one of --preset NAME, --recipe NAME or --encoder NAME (e.g. --encoder L/14)")
    if args.gpu and args.device_memory:
        raise UserError("give --gpu KIND or --device-memory GIB, not both")
    if not 0 < args.mfu <= 1:
        raise UserError(f"--mfu must be in (0, 1], got {args.mfu}")
    if args.device_memory is not None and args.device_memory <= 0:
        raise UserError(f"--device-memory must be positive, got {args.device_memory}")
    if args.price_per_gpu_hour is not None and args.price_per_gpu_hour < 0:
        raise UserError(f"--price-per-gpu-hour cannot be negative, got {args.price_per_gpu_hour}")
    if args.gpus < 1:
        raise UserError(f"--gpus must be at least 1, got {args.gpus}")
    from .. import hardware

    gpu = hardware.accelerator(args.gpu or "H100-80GB") if not args.device_memory else None
    stages = _stages(args)

    from ..plan.stage import Device, plan_stage

    plans = []
    for name, config in stages:
        precision = "tf32" if config.parallel.precision == "fp32" else "bf16"
        peak = args.peak_tflops or (gpu and (gpu.bf16_tflops if precision == "bf16" else gpu.tf32_tflops))
        device = Device(gpu.kind if gpu else "custom", gpu.memory_gib if gpu else args.device_memory, peak)
        release = _release_settings(config) if args.release_settings else {}
        plan = plan_stage(config, args.gpus, device, args.mfu, args.price_per_gpu_hour, args.explain, **release)
        plans.append({"stage": name, **plan})
    out = {"stages": plans, "total": _total(plans), "usable_fraction": plans[0]["usable_fraction"],
           "release_settings": args.release_settings}
    if args.json:
        print(json.dumps(out))
    else:
        print_plan(out)
    return 0


def _stages(args) -> list:
    """(name, TrainConfig) of every stage to plan, with the flags and key=value overrides applied."""
    from ..train.config import apply_overrides

    if args.recipe:
        from ..train.recipes import get_recipe

        stages = [(stage.name, stage.config) for stage in get_recipe(args.recipe)]
    elif args.preset:
        from ..train.presets import get_preset

        stages = [(args.preset, get_preset(args.preset))]
    else:
        stages = [(f"{args.image_size or 224}", _paper_config(args.encoder, args.image_size or 224))]
    out = []
    for name, config in stages:
        samples = config.optim.batch_size * config.optim.steps
        for flag, key in (("method", "method"), ("decoder", "decoder"), ("image_size", "image_size"),
                          ("batch_size", "batch_size")):
            value = getattr(args, flag)
            if value is not None:
                config.set(key, value)
        if args.batch_size and args.encoder:
            config.optim.steps = max(1, samples // args.batch_size)
        out.append((name, apply_overrides(config, list(args.overrides))))
    return out


def _paper_config(encoder: str, image_size: int):
    """The paper's stage for an encoder at a resolution (train/presets.py paper_stage)."""
    from ..models.registry import paper_decoder, parse_encoder_name
    from ..train.presets import paper_stage

    parse_encoder_name(encoder)
    kind = "pretrain" if image_size <= 84 else "finetune" if image_size <= 224 else "highres"
    return paper_stage(kind, encoder, paper_decoder(encoder), image_size)


def _release_settings(config) -> dict:
    """docs/DESIGN.md §1.2, §4.4, §4.6, §6: what the released (JAX, TPU) code keeps in memory."""
    from ..plan.fake import ENCODER_ONLY

    config.parallel.precision = "bf16" if config.model.method == "openvision1" else "fp32"
    config.parallel.strategy = "none"  # data parallel: each chip holds every weight, gradient and moment
    config.model.logits_chunk = 0
    return {"checkpointing": ENCODER_ONLY, "modes": (ENCODER_ONLY,), "adam_first_moment_bf16": True}


def _total(plans: list[dict]) -> dict:
    times = [p["time"] for p in plans]
    out = {}
    for key in ("gpu_hours", "days", "cost"):
        if all(key in t for t in times):
            out[key] = sum(t[key] for t in times)
    return out


def size(gib: float) -> str:
    return f"{gib:.2f} GiB" if abs(gib) >= 0.1 else f"{gib * 1024:.1f} MiB"


def print_plan(out: dict) -> None:
    for p in out["stages"]:
        verdict = "fits" if p["fits"] else "DOES NOT FIT"
        print(f"stage {p['stage']}: {p['method']} {p['encoder']} + {p['decoder']} decoder @ {p['image_size']}px, "
              f"batch {p['batch_size']} x {p['steps']} steps on {p['gpus']} x {p['gpu']} "
              f"({p['device_memory_gib']:g} GiB), {p['parallel']}, {p['precision']}, "
              f"checkpointing {p['activation_checkpointing']}")
        print(f"  per device: batch {p['per_device_batch']} = micro-batch {p['micro_batch']} x {p['grad_accum']} "
              f"accumulation; peak {size(p['peak_gib'])} of {size(p['usable_gib'])} usable: {verdict}")
        print("  " + ", ".join(f"{k.replace('_', ' ')} {size(v)}" for k, v in p["breakdown_gib"].items())
              + f" (allowance: {1 - p['usable_fraction']:.0%} of the device, for what no tracker sees)")
        print(f"  memory at this micro-batch: {size(p['fit']['fixed_gib'])} + {p['fit']['per_sample_mib']:.1f} MiB "
              f"per sample" + (" (with accumulation)" if p["fit"]["accumulating"] else "") + "; measured at micro-batches "
              + ", ".join(str(b) for b, _ in p["fit"]["measured"]))
        print("  largest micro-batch per checkpointing mode: " + "; ".join(
            f"{mode} {c['micro_batch']} x {c['grad_accum']} ({size(c['peak_gib'])}; up to {c['largest_fitting']} fit"
            + (" with accumulation)" if c["accumulating"] else " in one pass)")
            if c["micro_batch"] else f"{mode}: none fits" for mode, c in p["largest_micro_batch"].items()))
        if not p["fits"]:
            better = [m for m, c in p["largest_micro_batch"].items() if c["micro_batch"]]
            print(f"  does not fit with checkpointing {p['activation_checkpointing']}: use "
                  + " or ".join(f"activation_checkpointing={m}" for m in better))
        t = p["time"]
        if "step_s" in t:
            cost = f", ${t['cost']:,.0f}" if "cost" in t else ""
            print(f"  time at MFU {t['mfu']:.0%} of {t['peak_tflops']:g} TFLOP/s ({t['gflops_per_sample']:.3g} GFLOPs "
                  f"per sample): step {t['step_s']:.3g} s, {t['images_per_s_per_device']:.0f} images/s per device; "
                  f"{t['days']:.1f} days, {t['gpu_hours']:,.0f} GPU-hours{cost}")
        else:
            print(f"  time: give --gpu or --peak-tflops ({t['gflops_per_sample']:.3g} GFLOPs per sample)")
        if "explain" in p:
            e = p["explain"]
            a, s = e["activation_mib_per_sample"], e["state_gib"]
            print(f"  analytic: activations {a['analytic']:.1f} MiB per sample vs {a['tracked']:.1f} tracked "
                  f"({a['difference']:+.0%}; " + ", ".join(f"{k} {v:.1f}" for k, v in a["per_stack"].items())
                  + f"); weights + gradients + AdamW {s['analytic']:.2f} GiB vs {s['tracked']:.2f} tracked "
                  f"({s['difference']:+.0%})")
            print(f"  ({e['note']})")
    total = out["total"]
    if len(out["stages"]) > 1 and "days" in total:
        cost = f", ${total['cost']:,.0f}" if "cost" in total else ""
        print(f"all stages: {total['days']:.1f} days, {total['gpu_hours']:,.0f} GPU-hours{cost}")
