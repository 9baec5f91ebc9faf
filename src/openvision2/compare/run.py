"""`ov2 compare`: train several methods alike, measure their costs side by side, evaluate their encoders
with one suite, and write OUT/compare.json and OUT/index.html.

Order of work, each part reused when OUT already holds it (so an interrupted comparison resumes):
1. costs: every method's train step at the preset's shape, each in its own worker process, timed in
   rounds (bench/rounds.py: interleaved on CPU, one at a time on a GPU): step time, peak memory, forward FLOPs;
2. budgets: `steps` gives every method --steps; `wall` and `flops` give each method the steps that
   cost what --steps cost the first method (by the measured step time, or by the FLOPs per step);
3. training: OUT/METHOD-STEPS is an ordinary run directory (`ov2 train --resume` semantics), so a
   run of the same method and steps is shared by the equal-steps and the equal-budget comparisons;
4. evaluation: probes (linear, attentive, k-NN), zero-shot (by caption likelihood where the method has
   a left-to-right decoder, CLIP's where it has a text tower: OpenVision 1) and `eval vlm`, on the same
   task and images for every encoder, on the device the command resolved (CompareOptions.device).
SIGTERM in any part ends the comparison with exit 75 and one line (ComparisonStopped): a method's training
saves its checkpoint first; costs and evaluations are written whole or not at all, so what finished is
kept and the same command continues from there.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict
from pathlib import Path

from ..errors import UserError
from ..train.faults import PreemptionFlag
from .methods import differences, method_config
from .options import BUDGETS, EVALS, CompareOptions

def _log(message: str) -> None:
    print(message, flush=True)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


# --- 1. costs ----------------------------------------------------------------------------------------

def measure_costs(configs: dict, rounds: int, device: str) -> dict:
    """{method: step_s, peak_mem_bytes, forward_flops_per_image, ...} at each method's training shape."""
    import torch

    from ..bench.methods import BenchShape
    from ..bench.runner import WorkerFailed
    from ..bench.rounds import timed_rounds
    from ..precision import resolve_precision

    first = next(iter(configs.values()))
    device = torch.device(device)
    precision = "bf16" if resolve_precision(first.precision, device) == torch.bfloat16 else "fp32"
    shape = BenchShape(encoder=first.encoder, decoder=first.decoder, text_encoder=first.text_encoder,
                       image_size=first.image_size, batch_size=first.batch_size, keep_ratio=first.keep_ratio,
                       text_len=first.text_len, alt_text_len=configs.get("openvision1", first).alt_text_len,
                       vocab_size=32000 if first.tokenizer == "wordpiece" else first.bpe_vocab_size)
    spec = {"device": device.type, "precision": precision, "shape": shape.to_dict(), "warmup": 1, "threads": 0}
    try:
        times, reports = timed_rounds(list(configs), spec, rounds, 1)
    except WorkerFailed as err:
        raise UserError(f"cost measurement failed in {err}") from None
    return {"device": device.type, "precision": precision, "shape": shape.to_dict(), "rounds": rounds,
            "methods": {m: {"step_s": statistics.median(times[m]), "step_s_all": times[m],
                            "peak_mem_bytes": reports[m]["peak_mem_bytes"], "memory_kind": reports[m]["memory_kind"],
                            "params": reports[m]["params"],
                            "forward_flops_per_image": reports[m]["forward_flops_per_image"]} for m in configs}}


def budget_steps(costs: dict, methods: list[str], steps: int, budget: str) -> dict[str, int]:
    """Steps per method: equal steps, or what `steps` of the first method cost in wall time / FLOPs."""
    if budget == "steps":
        return {m: steps for m in methods}
    key = "step_s" if budget == "wall" else "forward_flops_per_image"
    ref = costs["methods"][methods[0]][key]
    return {m: max(1, round(steps * ref / costs["methods"][m][key])) for m in methods}


# --- 3. training ----------------------------------------------------------------------------------------

def train_method(config, run_dir: Path, progress: bool) -> dict:
    """Train (or resume, or reuse) one method's run; returns {"steps", "wall_s", "reused"}."""
    from ..checkpoint import resolve_checkpoint
    from ..train.loop import train

    state_path = run_dir / "compare_train.json"
    state = _read_json(state_path) or {"wall_s": 0.0}
    saved = check_same_run(config, run_dir)
    if saved is not None:
        try:
            latest = json.loads((resolve_checkpoint(run_dir) / "config.json").read_text()).get("step")
        except UserError:
            latest = None
        if latest == config.steps:
            return {**state, "steps": config.steps, "reused": True}
    start = time.perf_counter()
    summary = train(config, run_dir, progress=progress, resume=saved is not None)
    wall_s = state["wall_s"] + time.perf_counter() - start
    if summary.get("stopped") == "preempted":  # the loop saved a checkpoint: the next call resumes it
        _write_json(state_path, {"wall_s": wall_s})
        raise ComparisonStopped(f"{run_dir.name} stopped by a signal, its checkpoint saved")
    state = {"wall_s": wall_s, "steps": config.steps, "reused": False}
    _write_json(state_path, state)
    return state


class ComparisonStopped(Exception):
    """SIGTERM stopped the comparison: in a method's training after saving its checkpoint (nothing is
    evaluated or reported from a partial run), or while measuring or evaluating (that part is redone);
    the same command resumes."""


class StopOnSignal(PreemptionFlag):
    """SIGTERM outside a method's training raises ComparisonStopped naming what was under way. Training
    installs its own PreemptionFlag (save, then stop) and gives this one back when it returns."""

    def __init__(self):
        super().__init__()
        self.doing = "starting"

    def _handle(self, signum, frame) -> None:
        raise ComparisonStopped(f"stopped by a signal while {self.doing}")


def check_same_run(config, run_dir: Path, ignore: tuple[str, ...] = ()) -> dict | None:
    """The saved config of run_dir (None if there is no run yet); refuses one made with other settings."""
    saved = _read_json(run_dir / "config.json")
    if saved is None:
        return None
    saved_flat, wanted = _flat(saved), _flat(config.to_dict())
    mismatch = {k: (saved_flat.get(k), v) for k, v in wanted.items()
                if saved_flat.get(k) != v and k.rpartition(".")[2] not in ignore}
    if mismatch:
        key, (there, here) = next(iter(mismatch.items()))
        raise UserError(f"{run_dir} holds a run with other settings ({key}={there!r} there, {here!r} now): "
                        "use another --out, or the settings it was made with")
    return saved


def _flat(data: dict, prefix: str = "") -> dict:
    """A config dict (sections as nested dicts) as {"section.field": value}."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def loss_curve(run_dir: Path) -> dict[str, list]:
    from ..eval.report import read_metrics

    records = read_metrics(run_dir / "metrics.jsonl")
    train = [(r["step"], r["loss"]) for r in records if isinstance(r.get("loss"), (int, float))]
    val = [(r["step"], r["val_loss"]) for r in records if isinstance(r.get("val_loss"), (int, float))]
    return {"train": train, "val": val}


# --- 4. evaluation ---------------------------------------------------------------------------------------

def evaluate(run_dir: Path, options: CompareOptions) -> dict:
    """The suite on one run's latest checkpoint; cached in RUN/compare_eval.json by its settings."""
    import torch

    from ..checkpoint import load_checkpoint
    from ..eval.probe import run_probes
    from ..eval.tasks import load_task
    from ..eval.zeroshot import zero_shot

    settings = {k: getattr(options, k) for k in ("evals", "task", "shards", "probe_train_images", "test_images",
                                                 "attentive_epochs")}
    settings["vlm"] = asdict(options.vlm_options())
    cache = _read_json(run_dir / "compare_eval.json")
    if cache and cache.get("settings") == settings:
        return cache["results"]
    model, tokenizer, meta = load_checkpoint(run_dir, device=options.device)
    size, results = model.config.image_size, {}
    task = load_task(options.task, size, num_train=options.probe_train_images, num_test=options.test_images,
                     shards=options.shards)
    if "probe" in options.evals:
        probes = run_probes(model, task, attentive_epochs=options.attentive_epochs)
        results.update({f"probe/{k}": v["accuracy"] for k, v in probes.items() if isinstance(v, dict)})
    if "zeroshot" in options.evals:  # by caption likelihood (a left-to-right decoder) or CLIP's (a text tower)
        zs = None
        if hasattr(getattr(model, "decoder", None), "forward_cached"):
            zs = zero_shot(model, tokenizer, task.test.images, task.test.labels, task.prompts)
        elif hasattr(model, "text_encoder"):
            from ..eval.clip_zeroshot import clip_zero_shot
            zs = clip_zero_shot(model, tokenizer, task.test.images, task.test.labels, task.prompts)
        if zs is not None:
            results.update({"zeroshot/top1": zs["top1"], "zeroshot/top5": zs["top5"]})
    if "vlm" in options.evals:
        from ..vlm.evaluate import evaluate_encoder, load_vqa

        vlm_options = options.vlm_options()
        train_set, test_set = load_vqa(vlm_options, size)
        vlm = evaluate_encoder(model, meta, train_set, test_set, vlm_options, torch.device(options.device))
        results["vlm/overall"] = vlm["overall"]
        results.update({f"vlm/{t}": a for t, a in vlm["accuracy"].items()})
    _write_json(run_dir / "compare_eval.json", {"settings": settings, "results": results})
    return results


# --- all of it -------------------------------------------------------------------------------------------

def run_compare(options: CompareOptions, out: str | Path) -> dict:
    """Check the options, then hold OUT for the whole comparison (costs, runs, evaluations, page)."""
    from ..train.rundir import locked

    if options.budget not in BUDGETS:
        raise UserError(f"unknown --budget {options.budget!r}: use one of {', '.join(BUDGETS)}")
    if len(options.methods) < 1 or len(set(options.methods)) != len(options.methods):
        raise UserError("--methods needs one or more distinct methods, e.g. openvision2,openvision1,cappa")
    unknown = set(options.evals) - set(EVALS)
    if unknown:
        raise UserError(f"unknown evaluation {', '.join(sorted(unknown))}: use some of {', '.join(EVALS)}")
    if options.steps < 1:
        raise UserError("--steps must be >= 1")
    # evaluation settings are checked before any measuring and training: a bad one would fail only after it
    for name in ("probe_train_images", "test_images", "attentive_epochs", "rounds"):
        if getattr(options, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(options, name)}")
    options.vlm_options().check(flag_prefix="vlm-")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: pass a directory (it gets one run per method)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a file in the way, no permission, a read-only disk
        raise UserError(f"--out {out}: cannot make the directory ({err.strerror}): pass a writable directory") from None
    # two comparisons would race on costs.json and each run's evaluation
    with locked(out, "ov2 compare"), StopOnSignal() as stop:
        return _compare(options, out, stop)


def _compare(options: CompareOptions, out: Path, stop: StopOnSignal) -> dict:
    from .page import write_page

    options.overrides = pin_precision(options)
    base = {m: method_config(options.preset, m, options.overrides) for m in options.methods}
    if "vlm" in options.evals:  # before any training, as the other evaluation settings
        from ..vlm.evaluate import check_vqa_fits

        check_vqa_fits(options.vlm_options(), base[options.methods[0]].image_size)
    warmup = min(base[options.methods[0]].warmup_steps, max(1, options.steps // 10))
    if options.budget == "steps":  # before any measurement, so that a clash is found at once
        for method in options.methods:
            check_same_run(method_config(options.preset, method, options.overrides, options.steps, warmup),
                           run_dir(out, method, options.steps))

    costs_path = out / "costs.json"
    costs = _read_json(costs_path)
    wanted_shape = {m: c.to_dict() for m, c in base.items()}
    if not costs or costs.get("configs") != wanted_shape or costs.get("rounds") != options.rounds:
        _log(f"measuring step time, peak memory and FLOPs of {', '.join(options.methods)} (interleaved) ...")
        stop.doing = "measuring costs"
        costs = {**measure_costs(base, options.rounds, options.device), "configs": wanted_shape}
        _write_json(costs_path, costs)
    steps = budget_steps(costs, options.methods, options.steps, options.budget)
    configs = {m: method_config(options.preset, m, options.overrides, steps[m], warmup) for m in options.methods}

    methods = {}
    for method, config in configs.items():
        directory = run_dir(out, method, steps[method])
        _log(f"{method}: {steps[method]} steps -> {directory}")
        stop.doing = f"training {method}"
        training = train_method(config, directory, options.progress)
        _log(f"{method}: evaluating ({', '.join(options.evals) or 'nothing'}) ...")
        stop.doing = f"evaluating {method}"
        cost = costs["methods"][method]
        batch = config.batch_size
        methods[method] = {
            "steps": steps[method], "train_wall_s": training["wall_s"], "reused_run": training["reused"],
            "train_time_s": steps[method] * cost["step_s"],  # by the interleaved step time: comparable
            "peak_mem_bytes": cost["peak_mem_bytes"], "step_s": cost["step_s"],
            "train_flops": 3 * cost["forward_flops_per_image"] * batch * steps[method],
            "forward_gflops_per_image": cost["forward_flops_per_image"] / 1e9,
            "run": str(directory), "loss": loss_curve(directory), "evals": evaluate(directory, options)}
    ref = methods[options.methods[0]]
    ratios = {m: {"time_per_step": r["step_s"] / ref["step_s"], "memory": r["peak_mem_bytes"] / ref["peak_mem_bytes"],
                  "flops_per_image": r["forward_gflops_per_image"] / ref["forward_gflops_per_image"]}
              for m, r in methods.items()}
    result = {"preset": options.preset, "budget": options.budget, "base_steps": options.steps,
              "reference": options.methods[0], "overrides": options.overrides, "task": options.task,
              "options": {k: v for k, v in asdict(options).items() if k != "progress"},
              "vlm_protocol": asdict(options.vlm_options()),
              "cost_measurement": {k: costs[k] for k in ("device", "precision", "shape", "rounds")},
              "differences": {k: {m: v for m, v in vals.items()} for k, vals in differences(configs).items()},
              "methods": methods, "ratios_vs_reference": ratios}
    name = "compare" if options.budget == "steps" else f"compare-{options.budget}"
    stop.doing = "writing the page"
    _write_json(out / f"{name}.json", result)
    result["html"] = str(write_page(result, out, "index.html" if options.budget == "steps" else f"{name}.html"))
    return result


def pin_precision(options: CompareOptions) -> list[str]:
    """precision=auto times a matmul to choose, which a busy machine can answer differently from one run
    to the next: choose once, for every method."""
    import torch

    from ..precision import resolve_precision

    if any(o.startswith("precision=") for o in options.overrides):
        return options.overrides
    config = method_config(options.preset, options.methods[0], options.overrides)
    dtype = resolve_precision(config.precision, torch.device(options.device))
    return [*options.overrides, f"precision={'bf16' if dtype == torch.bfloat16 else 'fp32'}"]


def run_dir(out: Path, method: str, steps: int) -> Path:
    return out / f"{method}-{steps}steps"
