"""ov2 bench --sweep AXIS=V1,V2,...: cost curves. Every method is benchmarked at each value of one
axis (as `ov2 bench` does one point: own worker per method, rounds interleaved on CPU), and step time,
peak memory and MFU are printed, written to OUT/sweep-AXIS.json and plotted to OUT/sweep-AXIS.png.

Axes: res (image size), batch, keep_ratio (OpenVision 2's share of visual tokens; the other
methods do not use it), logits_chunk (0 = full logits) and precision (fp32, bf16: MFU of each point
is against the peak of the precision it ran in).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from .rounds import base_spec_of, bench_methods, device_name
from .runner import log

AXES = {"res": ("image_size", int), "batch": ("batch_size", int), "keep_ratio": ("keep_ratio", float),
        "logits_chunk": ("logits_chunk", int), "precision": ("", str)}


def parse_sweep(text: str) -> tuple[str, list]:
    from ..errors import UserError

    axis, sep, values = text.partition("=")
    axis = axis.strip().replace("-", "_")
    if not sep or axis not in AXES:
        raise UserError(f"--sweep {text!r}: use AXIS=V1,V2,... with AXIS one of {', '.join(AXES)}")
    kind = AXES[axis][1]
    try:
        parsed = [kind(v.strip()) for v in values.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--sweep {text!r}: the values of {axis} must be numbers") from None
    if not parsed:
        raise UserError(f"--sweep {text!r}: give at least one value")
    if axis == "keep_ratio" and not all(0 < v <= 1 for v in parsed):
        raise UserError(f"--sweep {text!r}: keep ratios must be in (0, 1]")
    if axis in ("res", "batch") and min(parsed) < (8 if axis == "res" else 1):
        raise UserError(f"--sweep {text!r}: {axis} values must be at least {8 if axis == 'res' else 1}")
    if axis == "logits_chunk" and min(parsed) < 0:
        raise UserError(f"--sweep {text!r}: logits_chunk values must be 0 (full logits) or positive")
    return axis, parsed


def run_sweep(args, device, precision: str, methods: list[str], shape) -> int:
    from ..precision import resolve_precision_name
    from .peak import measure_peak_tflops  # imports torch: not when `ov2 --help` builds the parser

    axis, values = parse_sweep(args.sweep)
    field = AXES[axis][0]
    peaks: dict[str, tuple[float, str]] = {}
    points = []
    for value in values:
        point_shape, point_precision = shape, precision
        if axis == "precision":
            point_precision = resolve_precision_name(value, device)
        else:
            point_shape = replace(shape, **{field: value})
        if point_precision not in peaks:
            peaks[point_precision] = measure_peak_tflops(device, point_precision, args.peak_tflops)
        peak = peaks[point_precision][0]
        log(f"--- {axis} = {value} ---")
        spec = base_spec_of(args, device, point_precision, point_shape)
        points.append({"value": value, "precision": point_precision, "shape": point_shape.to_dict(),
                       "peak_tflops": peak, **bench_methods(methods, spec, args.rounds, args.steps_per_round, peak)})
    out = {"axis": axis, "values": values, "device": device.type, "device_name": device_name(device),
           "rounds": args.rounds, "steps_per_round": args.steps_per_round, "warmup": args.warmup,
           "activation_checkpointing": args.activation_checkpointing,
           "peaks": {p: {"tflops": t, "source": src} for p, (t, src) in peaks.items()}, "points": points}
    directory = Path(args.out)
    directory.mkdir(parents=True, exist_ok=True)
    json_path, png_path = directory / f"sweep-{axis}.json", directory / f"sweep-{axis}.png"
    json_path.write_text(json.dumps(out, indent=1))
    plot_sweep(out, png_path)
    if args.json:
        print(json.dumps(out))
    else:
        print_sweep(out)
    log(f"wrote {json_path} and {png_path}")
    return 0


def print_sweep(out: dict) -> None:
    s = out["points"][0]["shape"]
    print(f"sweep over {out['axis']}: {s['encoder']}, decoder {s['decoder']}, res {s['image_size']}, "
          f"batch {s['batch_size']}, keep {s['keep_ratio']:g}, logits chunk {s['logits_chunk']} "
          f"(the swept one varies); {out['device_name']}; median of {out['rounds']} "
          f"{'interleaved ' if out['device'] == 'cpu' else ''}rounds")
    print(f"{out['axis']:>10s} {'method':12s} {'step s':>8s} {'img/s':>8s} {'peak mem':>9s} {'MFU':>6s} "
          f"{'time/OV2':>8s} {'mem/OV2':>8s}")
    for point in out["points"]:
        for method, r in point["methods"].items():
            q = point["ratios_vs_openvision2"].get(method)
            ratio = f"{q['time']:7.2f}x {q['memory']:7.2f}x" if q else ""
            print(f"{point['value']!s:>10s} {method:12s} {r['step_s']:8.3f} {r['images_per_s']:8.2f} "
                  f"{r['peak_mem_bytes'] / 2**30:7.2f}Gi {100 * r['mfu']:5.1f}% {ratio}")


def plot_sweep(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    numeric = out["axis"] != "precision"
    xs = out["values"] if numeric else list(range(len(out["values"])))
    methods = list(out["points"][0]["methods"])
    panels = (("step time (s)", lambda r: r["step_s"]), ("peak memory (GiB)", lambda r: r["peak_mem_bytes"] / 2**30),
              ("MFU (%)", lambda r: 100 * r["mfu"]))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (title, get) in zip(axes, panels):
        for method in methods:
            ax.plot(xs, [get(p["methods"][method]) for p in out["points"]], marker="o", label=method)
        ax.set_title(title)
        ax.set_xlabel(out["axis"])
        ax.set_xticks(xs, [str(v) for v in out["values"]])
        ax.grid(alpha=0.3)
    axes[0].legend()
    s = out["points"][0]["shape"]
    fig.suptitle(f"{s['encoder']} + {s['decoder']} decoder on {out['device_name']} "
                 f"({', '.join(sorted({p['precision'] for p in out['points']}))})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
