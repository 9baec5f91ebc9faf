"""ov2 compare --methods openvision2,openvision1,cappa --preset tiny-cpu --steps N --out DIR [--budget steps|wall|flops]"""

from __future__ import annotations

NAME = "compare"
HELP = ("train several methods on the same data, seed and steps (or budget), measure their costs side by side, "
        "evaluate every encoder alike; writes compare.json and an HTML page")


def add_arguments(parser) -> None:
    from ..compare.options import BUDGETS, EVALS, CompareOptions
    from ..vlm.options import VLM_PRESETS

    d = CompareOptions(methods=[])
    parser.add_argument("--methods", default="openvision2,openvision1,cappa",
                        help="comma list; the first is the reference of ratios and budgets (default: all three)")
    parser.add_argument("--preset", default=d.preset, help=f"shared starting point (default: {d.preset})")
    parser.add_argument("--steps", type=int, default=d.steps, help=f"steps of each method (default: {d.steps})")
    parser.add_argument("--budget", default=d.budget, choices=BUDGETS,
                        help="steps: equal steps (default); wall / flops: every method gets the measured time / "
                             "the FLOPs that --steps cost the first method")
    parser.add_argument("--out", default="runs/compare",
                        help="directory: one run per method and step count (reused and resumed when present), "
                             "compare.json + index.html (compare-wall.json + compare-wall.html, ... for --budget)")
    parser.add_argument("--evals", default=",".join(EVALS), help=f"comma list of {', '.join(EVALS)} (default: all)")
    parser.add_argument("--task", default=d.task, help="probe / zero-shot task (default: synthetic-object; also "
                                                       "fashion-mnist, imagefolder:DIR, csv:FILE, shards:PATTERN)")
    parser.add_argument("--shards", default="", help="Fashion-MNIST shard directory for --task fashion-mnist")
    parser.add_argument("--probe-train-images", type=int, default=d.probe_train_images, help="probe training images")
    parser.add_argument("--test-images", type=int, default=d.test_images, help="held-out images of probes and zero-shot")
    parser.add_argument("--attentive-epochs", type=int, default=d.attentive_epochs,
                        help="training epochs of the attentive probe")
    parser.add_argument("--vlm-preset", default=d.vlm_preset, choices=list(VLM_PRESETS),
                        help=f"eval vlm's named protocol (default: {d.vlm_preset}; see `ov2 eval vlm --help`)")
    parser.add_argument("--vlm-train-images", type=int, default=None, help="eval vlm: training images (default: the preset's)")
    parser.add_argument("--vlm-test-images", type=int, default=None, help="eval vlm: held-out images (default: the preset's)")
    parser.add_argument("--vlm-stage1-steps", type=int, default=None, help="eval vlm: stage-1 steps (default: the preset's)")
    parser.add_argument("--vlm-stage2-steps", type=int, default=None,
                        help="eval vlm: projector + LM steps (default: the preset's)")
    parser.add_argument("--rounds", type=int, default=d.rounds, help="interleaved timing rounds (default: 3)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--json", action="store_true", help="print compare.json's content on stdout")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override a preset field for every method")


def run(args) -> int:
    import contextlib
    import json
    import sys

    from ..compare.options import CompareOptions
    from ..compare.run import ComparisonStopped, run_compare
    from ..train.faults import PREEMPTED_EXIT
    from ._options import resolve_device

    options = CompareOptions(
        methods=[m.strip() for m in args.methods.split(",") if m.strip()], preset=args.preset, steps=args.steps,
        budget=args.budget, overrides=args.overrides, evals=[e.strip() for e in args.evals.split(",") if e.strip()],
        task=args.task, shards=args.shards, probe_train_images=args.probe_train_images,
        test_images=args.test_images, attentive_epochs=args.attentive_epochs,
        vlm_preset=args.vlm_preset, vlm_train_images=args.vlm_train_images, vlm_test_images=args.vlm_test_images,
        vlm_stage1_steps=args.vlm_stage1_steps, vlm_stage2_steps=args.vlm_stage2_steps, rounds=args.rounds,
        progress=not (args.no_progress or args.json), device=str(resolve_device(None)))
    try:
        with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
            result = run_compare(options, args.out)
    except ComparisonStopped as stop:  # exit as `ov2 train` does when preempted: schedulers see it unfinished
        print(f"ov2 compare: {stop}; what finished is kept: run the same command to continue", file=sys.stderr)
        return PREEMPTED_EXIT
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"comparison: {result['html']}")
    for method, r in result["methods"].items():
        evals = "  ".join(f"{k} {v:.3f}" for k, v in sorted(r["evals"].items()))
        print(f"  {method:12s} {r['steps']:6d} steps  {r['train_time_s']:8.1f} s  "
              f"{r['peak_mem_bytes'] / 2**20:8.1f} MiB  {evals}")
    return 0
