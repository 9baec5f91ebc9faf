"""ov2 bench --suite gpu [--dry-run] [--out DIR]: the whole GPU check in one command, for the
minutes a GPU is lent. Writes DIR/gpu_check.json and DIR/gpu_check.txt (format: docs/BENCHMARKS.md).

Sections, in this order, each timed and each allowed to fail without stopping the others (its
"error" says why):
  train         a 50-step `ov2 train` of the default preset on the embedded dataset: the loss must fall
  fsdp          `ov2 train` under torchrun on 1 rank, parallel=fsdp (FSDP2; nccl on GPU, gloo on CPU)
  bench         OpenVision 2 vs OpenVision 1 at L/14 @84 and @224 in bf16: interleaved step time, peak
                memory, MFU against the GPU's bf16 peak (bench/peak.py), FLOPs; then, on the same
                workers, the largest batch whose peak allocation fits 85% of the GPU's memory (one
                step per trial, 2% resolution)
  compile       OpenVision 2 @224 with each block torch.compile'd vs eager, interleaved
  max_batch_ac  the largest batches again with full activation checkpointing (fresh workers)
The largest-batch searches share what is left of the suite's time budget (7 minutes on a GPU): a
search that runs out returns its largest fit so far, marked "stopped_early".

--dry-run runs every section on this machine with tiny models (mu/8 at 32 px, 64-word vocabulary,
a few steps, the eager compile backend), so a test can check the whole suite in seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

METHODS = ["openvision2", "openvision1"]


@dataclass
class SuitePlan:
    device: str
    precision: str
    encoder: str
    decoder: str
    resolutions: tuple[int, ...]
    batch: int
    vocab: int
    text_len: int
    alt_text_len: int
    rounds: int
    warmup: int
    max_batch_limit: int
    max_batch_seconds: float  # at most per search
    total_seconds: float  # the searches stop early to keep the whole suite within this
    compile_backend: str
    train_steps: int
    train_overrides: tuple[str, ...]


GPU_PLAN = SuitePlan(device="cuda", precision="bf16", encoder="L/14", decoder="L", resolutions=(84, 224),
                     batch=256, vocab=32000, text_len=128, alt_text_len=80, rounds=3, warmup=2,
                     max_batch_limit=32768, max_batch_seconds=30.0, total_seconds=420.0,
                     compile_backend="inductor", train_steps=50,
                     train_overrides=("warmup_steps=5", "evals=", "show_captions=2", "eval_every=1000000"))
DRY_PLAN = SuitePlan(device="cpu", precision="fp32", encoder="mu/8", decoder="mu", resolutions=(32,), batch=2,
                     vocab=64, text_len=12, alt_text_len=8, rounds=1, warmup=1, max_batch_limit=3,
                     max_batch_seconds=60.0, total_seconds=3600.0, compile_backend="eager", train_steps=6,
                     train_overrides=("warmup_steps=1", "evals=", "show_captions=1", "eval_every=1000000",
                                      "encoder=mu/8", "decoder=mu", "image_size=32", "batch_size=8",
                                      "val_samples=8", "train_samples=256", "base_lr=0.01", "text_len=24", "num_workers=0",
                                      "tensorboard=false"))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_suite(args) -> int:
    import torch

    from ..errors import UserError

    plan = DRY_PLAN if args.dry_run else GPU_PLAN
    if plan.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--suite gpu needs a GPU visible to torch (--dry-run checks it on this machine)")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    result = {"suite": "gpu", "dry_run": bool(args.dry_run), "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
              "torch": torch.__version__, "plan": plan.__dict__, "sections": {}}
    device = torch.device(plan.device)
    from .train_step import device_name, measure_peak_tflops

    result["device_name"] = device_name(device)
    peak, peak_source = measure_peak_tflops(device, plan.precision, args.peak_tflops)
    result |= {"peak_tflops": peak, "peak_source": peak_source}
    sections = result["sections"]
    clock = SearchClock(started + plan.total_seconds, searches=4 * len(plan.resolutions), cap=plan.max_batch_seconds)
    for name, section in (("train", lambda: train_section(plan, out_dir / "train-run", fsdp=False)),
                          ("fsdp", lambda: train_section(plan, out_dir / "fsdp-run", fsdp=True)),
                          ("bench", lambda: bench_section(plan, peak, clock)),
                          ("compile", lambda: compile_section(plan, peak)),
                          ("max_batch_ac", lambda: max_batch_ac_section(plan, clock))):
        log(f"=== {name} ===")
        start = time.monotonic()
        try:
            sections[name] = section()
        except Exception as err:  # one failed check must not cost the others their minutes
            sections[name] = {"error": f"{type(err).__name__}: {err}".splitlines()[0][:500]}
        sections[name]["seconds"] = round(time.monotonic() - start, 1)
        (out_dir / "gpu_check.json").write_text(json.dumps(result, indent=1))  # partial results survive a kill
    result["seconds"] = round(time.monotonic() - started, 1)
    result["ok"] = all("error" not in s for s in sections.values()) and sections["train"].get("loss_fell", False)
    (out_dir / "gpu_check.json").write_text(json.dumps(result, indent=1))
    summary = summarize(result)
    (out_dir / "gpu_check.txt").write_text(summary)
    print(summary, end="")
    log(f"wrote {out_dir / 'gpu_check.json'} and {out_dir / 'gpu_check.txt'}")
    return 0 if result["ok"] else 1


def _shape(plan: SuitePlan, res: int):
    from .methods import BenchShape

    return BenchShape(encoder=plan.encoder, decoder=plan.decoder, image_size=res, batch_size=plan.batch,
                      vocab_size=plan.vocab, text_len=plan.text_len, alt_text_len=plan.alt_text_len)


def _spec(plan: SuitePlan, shape, **extra) -> dict:
    return {"device": plan.device, "precision": plan.precision, "shape": shape.to_dict(), "warmup": plan.warmup,
            "threads": 1 if plan.device == "cpu" else 0, **extra}


class SearchClock:
    """Shares the time left until the deadline among the largest-batch searches still to run."""

    def __init__(self, deadline: float, searches: int, cap: float):
        self.deadline, self.left, self.cap = deadline, searches, cap

    def next_share(self) -> float:
        share = (self.deadline - time.monotonic()) / max(self.left, 1)
        self.left -= 1
        return max(1.0, min(self.cap, share))


def _search(plan: SuitePlan, probe, method: str, clock: SearchClock) -> dict:
    from .runner import find_max_batch

    budget = _budget_bytes(plan)
    found = find_max_batch(probe, budget, plan.max_batch_limit, log, method, tolerance=0.02,
                           seconds=clock.next_share())
    return {k: found[k] for k in ("max_batch", "at_limit", "stopped_early", "miss_above")} | {
        "trials": len(found["trials"])}


def _budget_bytes(plan: SuitePlan) -> int:
    import torch

    if plan.device == "cuda":
        # 85% of the GPU, for both methods alike: the bench section's search runs while the other
        # method's worker still holds its weights and optimizer state on the same GPU
        return int(0.85 * torch.cuda.get_device_properties(0).total_memory)
    return 2**30  # dry run: 1 GiB, far above what a tiny model needs (the limit ends the search)


def bench_section(plan: SuitePlan, peak: float, clock: SearchClock) -> dict:
    """Per resolution: OV2 vs OV1 timed and measured, then each worker's largest batch without AC."""
    from .runner import PeakProbe, WorkerProcess
    from .train_step import interleave, summarize

    out = {}
    for res in plan.resolutions:
        spec = _spec(plan, _shape(plan, res))
        workers = {}
        try:
            for method in METHODS:
                log(f"building and warming up {method} @{res} ...")
                workers[method] = WorkerProcess({**spec, "method": method})
            times, reports = interleave(workers, plan.rounds, 1)
            point = summarize(spec, times, reports, peak)
            point["max_batch_no_ac"] = {}
            for method, worker in workers.items():
                probe = PeakProbe({**spec, "method": method}, worker=worker)
                point["max_batch_no_ac"][method] = _search(plan, probe, method, clock)
        finally:
            for worker in workers.values():
                worker.close()
        out[str(res)] = point
    return out


def max_batch_ac_section(plan: SuitePlan, clock: SearchClock) -> dict:
    from .runner import PeakProbe

    out = {}
    for res in plan.resolutions:
        spec = _spec(plan, _shape(plan, res), activation_checkpointing="full")
        out[str(res)] = {}
        for method in METHODS:
            probe = PeakProbe({**spec, "method": method})
            try:
                out[str(res)][method] = _search(plan, probe, method, clock)
            finally:
                probe.close()
    return out


def compile_section(plan: SuitePlan, peak: float) -> dict:
    from .runner import WorkerProcess
    from .train_step import interleave

    shape = _shape(plan, max(plan.resolutions))
    workers = {}
    try:
        for label, compiled in (("eager", False), ("compiled", True)):
            log(f"building openvision2 ({label}) ...")
            start = time.monotonic()
            workers[label] = WorkerProcess({**_spec(plan, shape), "method": "openvision2", "compile": compiled,
                                            "compile_backend": plan.compile_backend, "warmup": plan.warmup + 1})
            log(f"  ready after {time.monotonic() - start:.1f} s")
        times, reports = interleave(workers, plan.rounds, 1)
    finally:
        for worker in workers.values():
            worker.close()
    import statistics

    step = {label: statistics.median(t) for label, t in times.items()}
    fwd = reports["eager"]["forward_flops_per_image"]
    return {"res": shape.image_size, "batch": shape.batch_size, "backend": plan.compile_backend,
            "step_s": step, "speedup": step["eager"] / step["compiled"],
            "mfu": {label: 3 * fwd * shape.batch_size / s / (peak * 1e12) for label, s in step.items()},
            "peak_mem_bytes": {label: r["peak_mem_bytes"] for label, r in reports.items()}}


def train_section(plan: SuitePlan, run_dir: Path, fsdp: bool) -> dict:
    """`ov2 train` in a child process (under torchrun on 1 rank for FSDP2); reads its metrics.jsonl."""
    import shutil

    shutil.rmtree(run_dir, ignore_errors=True)
    train = ["train", "--out", str(run_dir), "--steps", str(plan.train_steps), "--no-progress",
             f"log_every={max(1, plan.train_steps // 5)}", f"ckpt_every={plan.train_steps}", *plan.train_overrides]
    if fsdp:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                   "-m", "openvision2", *train, "parallel=fsdp"]
    else:
        command = [sys.executable, "-m", "openvision2", *train]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    start = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.monotonic() - start
    records = []
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    losses = [(r["step"], r["loss"]) for r in records if "loss" in r and "step" in r]
    out = {"command": " ".join(["python", *command[1:]]), "returncode": done.returncode, "wall_s": round(seconds, 1),
           "losses": losses, "images_per_s": [r.get("images_per_s") for r in records if "images_per_s" in r]}
    if fsdp:
        out["backend"] = "nccl" if plan.device == "cuda" else "gloo"
    if done.returncode != 0 or not losses:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"ov2 train exited with {done.returncode}: {' | '.join(tail)}")
    out["first_loss"], out["last_loss"] = losses[0][1], losses[-1][1]
    out["loss_fell"] = losses[-1][1] < losses[0][1]
    return out


def _gib(n) -> str:
    return "-" if n is None else f"{n / 2**30:.1f} GiB"


def summarize(result: dict) -> str:
    """The short text summary: one line per figure."""
    s = result["sections"]
    lines = [f"GPU check{' (DRY RUN: tiny models, CPU)' if result['dry_run'] else ''}: {result['device_name']}, "
             f"torch {result['torch']}, {result['date']}, {result['seconds']:.0f} s, "
             f"{'OK' if result['ok'] else 'FAILED'}",
             f"MFU against {result['peak_tflops']:.4g} TFLOP/s ({result['peak_source']})"]
    plan = result["plan"]
    bench = s.get("bench", {})
    if "error" in bench:
        lines.append(f"bench: ERROR {bench['error']}")
    for res, point in ((k, v) for k, v in bench.items() if k != "seconds" and k != "error"):
        lines.append(f"{plan['encoder']} @{res} batch {plan['batch']} {plan['precision']}:")
        ac = s.get("max_batch_ac", {}).get(res, {})
        for method, r in point["methods"].items():
            q = point["ratios_vs_openvision2"][method]
            mb = point["max_batch_no_ac"].get(method, {})
            mb_ac = ac.get(method, {})
            lines.append(f"  {method:12s} step {r['step_s']:.3f} s ({q['time']:.2f}x)  peak {_gib(r['peak_mem_bytes'])} "
                         f"({q['memory']:.2f}x)  MFU {100 * r['mfu']:.1f}%  max batch {mb.get('max_batch', '-')}"
                         f"{'+' if mb.get('at_limit') else ''} / with AC {mb_ac.get('max_batch', '-')}"
                         f"{'+' if mb_ac.get('at_limit') else ''}")
        ov2, ov1 = (point["max_batch_no_ac"].get(m, {}).get("max_batch") for m in METHODS)
        ov2_ac, ov1_ac = (ac.get(m, {}).get("max_batch") for m in METHODS)
        if ov2 and ov1:
            lines.append(f"  max batch OV2/OV1: {ov2 / ov1:.2f}x without AC"
                         + (f", {ov2_ac / ov1_ac:.2f}x with AC" if ov2_ac and ov1_ac else "") + " (paper: 4x)")
    if "error" in s.get("max_batch_ac", {}):
        lines.append(f"max batch with AC: ERROR {s['max_batch_ac']['error']}")
    c = s.get("compile", {})
    lines.append(f"torch.compile: ERROR {c['error']}" if "error" in c else
                 f"torch.compile ({c['backend']}) OV2 @{c['res']} batch {c['batch']}: eager {c['step_s']['eager']:.3f} s, "
                 f"compiled {c['step_s']['compiled']:.3f} s ({c['speedup']:.2f}x)")
    for name in ("fsdp", "train"):
        t = s.get(name, {})
        label = f"FSDP2 1 rank ({t.get('backend', '?')})" if name == "fsdp" else f"training run, {plan['train_steps']} steps"
        lines.append(f"{label}: ERROR {t['error']}" if "error" in t else
                     f"{label}: loss {t['first_loss']:.3f} -> {t['last_loss']:.3f} "
                     f"({'falls' if t['loss_fell'] else 'DOES NOT FALL'}), {t['wall_s']:.0f} s")
    return "\n".join(lines) + "\n"
