"""ov2 bench --suite gpu [--dry-run] [--out DIR]: the whole GPU check in one command, for the
minutes a GPU is lent. Writes DIR/gpu_check.json and DIR/gpu_check.txt (format: docs/BENCHMARKS.md).

Sections, in this order; each has its own time budget, and each result is written (durably) the
moment it is finished, so a later failure, an out-of-memory or a kill loses nothing that finished:
  train         a 50-step `ov2 train` of the default preset on the embedded dataset: the loss must fall
  fsdp          `ov2 train` under torchrun on 1 rank, parallel=fsdp (FSDP2; nccl on GPU, gloo on CPU)
  bench         per resolution, OpenVision 2 vs OpenVision 1 at L/14 @84 and @224 in bf16: step time,
                peak memory, MFU against the GPU's bf16 peak (bench/peak.py), FLOPs
  max_batch     per resolution and method, the largest batch whose peak allocation fits 90% of the GPU
                (one step per trial, to 2%), without activation checkpointing
  compile       OpenVision 2 @224 with each block torch.compile'd vs eager
  max_batch_ac  the largest batches again with full activation checkpointing
A section's results are kept per resolution and per method: an error (an out-of-memory included)
becomes that one entry's result, {"error": ..., "oom": ...}, and the rest still run.

Memory: no two workers share the GPU. Methods are timed one after another (bench/rounds.py), each
largest-batch search runs in its own worker process (its own allocator: no other method's
reservation is on the GPU), and the compile section closes the eager worker before the compiled
one starts. Workers release the allocator cache after warm-up and around every trial, never between
timed steps (bench/worker.py). The timing batch follows from the GPU's memory (timing_batch).

Time on one H200 (GPU_PLAN.seconds; a worker still busy at its section's end is stopped, a search
starts no trial that would end past its share): train 40 s + fsdp 55 s + bench 90 s (two
resolutions, two methods, each worker ~15-25 s: start, 2 warm-up steps, 3 timed, FLOP count) +
max_batch 80 s (4 searches x 20 s) + compile 100 s (30 s eager and timing, plus 70 s set aside for
torch.compile's first compilation) + max_batch_ac 90 s (4 x 22.5 s) = 455 s, plus a few seconds of
start-up: under 8 minutes whatever the GPU does. A search cut short returns its largest fit so far,
marked stopped_early (shown in the summary as ">=B").

--dry-run runs every section on this machine with tiny models (mu/8 at 32 px, 64-word vocabulary,
a few steps, the eager compile backend), so a test can check the whole suite in seconds. Test hook:
OV2_GPU_CHECK_OOM_IN=SECTION[:METHOD] makes that section's workers (of that method only) raise
torch.OutOfMemoryError at their first step, as a batch that does not fit would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..durable import write_durably
from ..errors import UserError
from .gpu_summary import summarize
from .rounds import device_name, method_figures, timed_rounds
from .runner import PeakProbe, WorkerFailed, find_max_batch, log

METHODS = ["openvision2", "openvision1"]
SECTIONS = ("train", "fsdp", "bench", "max_batch", "compile", "max_batch_ac")
WORKER_SECTIONS = ("bench", "max_batch", "compile", "max_batch_ac")
INJECT_OOM = "OV2_GPU_CHECK_OOM_IN"


@dataclass
class SuitePlan:
    device: str
    precision: str
    encoder: str
    decoder: str
    resolutions: tuple[int, ...]
    batch: int  # timing batch; 0 = from the GPU's memory (timing_batch)
    vocab: int
    text_len: int
    alt_text_len: int
    rounds: int
    warmup: int
    max_batch_limit: int  # the searches' upper end (a miss above what fits costs one trial)
    compile_backend: str
    train_steps: int
    train_overrides: tuple[str, ...]
    seconds: dict[str, float] = field(default_factory=dict)  # each section's own budget
    compile_seconds: float = 0.0  # set aside for torch.compile's first compilation, on top of "compile"


GPU_PLAN = SuitePlan(device="cuda", precision="bf16", encoder="L/14", decoder="L", resolutions=(84, 224),
                     batch=0, vocab=32000, text_len=128, alt_text_len=80, rounds=3, warmup=2,
                     max_batch_limit=32768, compile_backend="inductor", train_steps=50,
                     train_overrides=("warmup_steps=5", "evals=", "show_captions=2", "eval_every=1000000"),
                     seconds={"train": 40, "fsdp": 55, "bench": 90, "max_batch": 80, "compile": 30,
                              "max_batch_ac": 90},
                     compile_seconds=70)
DRY_PLAN = SuitePlan(device="cpu", precision="fp32", encoder="mu/8", decoder="mu", resolutions=(32,), batch=2,
                     vocab=64, text_len=12, alt_text_len=8, rounds=1, warmup=1, max_batch_limit=3,
                     compile_backend="eager", train_steps=6,
                     train_overrides=("warmup_steps=1", "evals=", "show_captions=1", "eval_every=1000000",
                                      "encoder=mu/8", "decoder=mu", "image_size=32", "batch_size=8",
                                      "val_samples=8", "train_samples=256", "base_lr=0.01", "text_len=24", "num_workers=0",
                                      "tensorboard=false"),
                     # a shared 2-core machine may be slow: the budgets only bound a GPU's minutes
                     seconds={name: 900 for name in SECTIONS}, compile_seconds=900)
MEMORY_FRACTION = 0.9  # of the GPU for the largest batch: the rest for the CUDA context, cuBLAS and fragments
# OpenVision 1, the hungrier method, at L/14 + L decoder @224, bf16, no checkpointing: 6.2 GiB + 0.41 GiB per
# image, by ov2 plan's fake-run tracker (plan/memory.py measure, 2026-12-04): 111.5 GiB at batch 256
# (OpenVision 2: 5.1 + 0.28 GiB per image, 77.4 GiB at 256; issue 21 estimated ~100 and ~75).
OV1_FIXED_BYTES, OV1_PER_IMAGE_BYTES = 6.2 * 2**30, 0.41 * 2**30
USABLE = 0.88  # of the GPU for tracked bytes, the allowance ov2 plan makes (plan/memory.py USABLE)


def timing_batch(total_bytes: int) -> int:
    """The timing batch of a GPU with this much memory: the largest power of two up to 256 at which
    OpenVision 1 @224 fits by the figures above (H200: 256; H100-80GB: 128). One that runs out of
    memory anyway is retried once at half (Suite.timed_point)."""
    fits = (USABLE * total_bytes - OV1_FIXED_BYTES) / OV1_PER_IMAGE_BYTES
    batch = 1
    while batch * 2 <= min(fits, 256):
        batch *= 2
    return batch


def oom_target() -> tuple[str, str | None] | None:
    """The test hook OV2_GPU_CHECK_OOM_IN=SECTION[:METHOD], checked."""
    text = os.environ.get(INJECT_OOM, "").strip()
    if not text:
        return None
    section, _, method = text.partition(":")
    if section not in WORKER_SECTIONS or (method and method not in METHODS):
        raise UserError(f"{INJECT_OOM}={text}: use SECTION[:METHOD] with SECTION one of {', '.join(WORKER_SECTIONS)} "
                        f"and METHOD one of {', '.join(METHODS)}")
    return section, method or None


class Results:
    """gpu_check.json and gpu_check.txt, both rewritten durably each time an entry is finished."""

    def __init__(self, out_dir: Path, result: dict):
        self.out_dir, self.result = out_dir, result

    def save(self) -> None:
        write_durably(self.out_dir / "gpu_check.json", json.dumps(self.result, indent=1))
        write_durably(self.out_dir / "gpu_check.txt", summarize(self.result))

    def attempt(self, path: tuple[str, ...], work) -> dict:
        """Run work() and store what it returns at sections[path...]; an exception is stored there
        instead, as {"error": ..., "oom": ...}. Saved either way, before anything else runs."""
        start = time.monotonic()
        try:
            entry = work()
        except Exception as err:  # one failure must not cost the other entries their minutes
            oom = getattr(err, "oom", False) or "out of memory" in str(err).lower()
            entry = {"error": f"{type(err).__name__}: {err}".splitlines()[0][:500], "oom": oom}
            log(f"{'/'.join(path)}: {entry['error']}")
        entry["seconds"] = round(time.monotonic() - start, 1)
        node = self.result["sections"]
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = entry
        self.save()
        return entry


def run_suite(args) -> int:
    import torch

    plan = DRY_PLAN if args.dry_run else GPU_PLAN
    if plan.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--suite gpu needs a GPU visible to torch (--dry-run checks it on this machine)")
    inject = oom_target()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    device = torch.device(plan.device)
    total_bytes = torch.cuda.get_device_properties(device).total_memory if plan.device == "cuda" else 0
    batch = plan.batch or timing_batch(total_bytes)
    budget_bytes = int(MEMORY_FRACTION * total_bytes) if plan.device == "cuda" else 2**30  # dry run: the limit ends it
    from .peak import measure_peak_tflops  # imports torch: not when `ov2 --help` builds the parser

    peak, peak_source = measure_peak_tflops(device, plan.precision, args.peak_tflops)
    results = Results(out_dir, {
        "suite": "gpu", "dry_run": bool(args.dry_run), "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "torch": torch.__version__, "device_name": device_name(device), "plan": plan.__dict__,
        "batch": batch, "memory_bytes": total_bytes, "max_batch_budget_bytes": budget_bytes,
        "peak_tflops": peak, "peak_source": peak_source, "injected_oom": os.environ.get(INJECT_OOM) or None,
        "sections": {}, "finished": False, "ok": False, "seconds": 0.0})
    suite = Suite(plan, results, batch, budget_bytes, peak, inject)
    for name in SECTIONS:
        log(f"=== {name} ===")
        section_start = time.monotonic()
        budget = plan.seconds[name] + (plan.compile_seconds if name == "compile" else 0)
        getattr(suite, name)(section_start + budget)
        results.result["sections"].setdefault(name, {})["seconds"] = round(time.monotonic() - section_start, 1)
        results.result["sections"][name]["budget_s"] = budget
        results.result["seconds"] = round(time.monotonic() - started, 1)
        results.save()
    result = results.result
    result["finished"] = True
    result["ok"] = not list(errors(result["sections"])) and result["sections"]["train"].get("loss_fell", False)
    results.save()
    print(summarize(result), end="")
    log(f"wrote {out_dir / 'gpu_check.json'} and {out_dir / 'gpu_check.txt'}")
    return 0 if result["ok"] else 1


def errors(node: dict):
    """Every {"error": ...} entry under a section tree."""
    if "error" in node:
        yield node
    for value in node.values():
        if isinstance(value, dict):
            yield from errors(value)


class Suite:
    """The sections; each gets the time.monotonic() at which its budget ends."""

    def __init__(self, plan: SuitePlan, results: Results, batch: int, budget_bytes: int, peak: float, inject):
        self.plan, self.results, self.batch, self.budget_bytes, self.peak = plan, results, batch, budget_bytes, peak
        self.inject = inject

    def spec(self, section: str, res: int, batch: int | None = None, **extra) -> dict:
        """A worker spec without its method (the caller adds it)."""
        from .methods import BenchShape

        plan = self.plan
        shape = BenchShape(encoder=plan.encoder, decoder=plan.decoder, image_size=res, batch_size=batch or self.batch,
                           vocab_size=plan.vocab, text_len=plan.text_len, alt_text_len=plan.alt_text_len)
        inject = [] if self.inject is None or self.inject[0] != section else [self.inject[1]] if self.inject[1] else METHODS
        return {"device": plan.device, "precision": plan.precision, "shape": shape.to_dict(), "warmup": plan.warmup,
                "threads": 1 if plan.device == "cpu" else 0, "inject_oom": inject, **extra}

    def train(self, deadline: float) -> None:
        self.results.attempt(("train",), lambda: train_run(self.plan, self.results.out_dir / "train-run", False, deadline))

    def fsdp(self, deadline: float) -> None:
        self.results.attempt(("fsdp",), lambda: train_run(self.plan, self.results.out_dir / "fsdp-run", True, deadline))

    def bench(self, deadline: float) -> None:
        for res in self.plan.resolutions:
            self.results.attempt(("bench", str(res)), lambda: self.timed_point(res, deadline))

    def timed_point(self, res: int, deadline: float) -> dict:
        """OV2 and OV1 timed one after another at the timing batch; an out-of-memory retries both at half."""
        batch, oom_at = self.batch, None
        while True:
            spec = self.spec("bench", res, batch)
            try:
                times, reports = timed_rounds(METHODS, spec, self.plan.rounds, 1, together=False, deadline=deadline)
            except WorkerFailed as err:
                if not err.oom or oom_at is not None or batch < 2:
                    raise
                log(f"out of memory at batch {batch}: both methods again at {batch // 2}")
                oom_at, batch = batch, batch // 2
                continue
            point = method_figures(spec, times, reports, self.peak)
            return {"batch": batch, **point} | ({"oom_at_batch": oom_at} if oom_at else {})

    def max_batch(self, deadline: float, section: str = "max_batch", **extra) -> None:
        searches = [(res, m) for res in self.plan.resolutions for m in METHODS]
        for i, (res, method) in enumerate(searches):
            share = (deadline - time.monotonic()) / (len(searches) - i)  # the time left, shared by the searches left
            self.results.attempt((section, str(res), method),
                                 lambda: self.search({**self.spec(section, res, **extra), "method": method}, share,
                                                     deadline))

    def max_batch_ac(self, deadline: float) -> None:
        self.max_batch(deadline, "max_batch_ac", activation_checkpointing="full")

    def search(self, spec: dict, seconds: float, deadline: float) -> dict:
        """One method's largest batch in its own worker process, closed before the next search."""
        probe = PeakProbe(spec, deadline=deadline)
        try:
            found = find_max_batch(probe, self.budget_bytes, self.plan.max_batch_limit, log, spec["method"],
                                   tolerance=0.02, seconds=max(1.0, seconds))
        finally:
            probe.close()
        return {k: found[k] for k in ("max_batch", "at_limit", "stopped_early", "miss_above")} | {
            "trials": len(found["trials"])}

    def compile(self, deadline: float) -> None:
        """OpenVision 2 @224 eager, then compiled: each worker closed before the next starts."""
        res = max(self.plan.resolutions)
        for label, compiled in (("eager", False), ("compiled", True)):
            spec = self.spec("compile", res, compile=compiled, compile_backend=self.plan.compile_backend,
                             warmup=self.plan.warmup + 1)
            # FLOPs are counted on the eager model only: FlopCounterMode over compiled blocks would recompile them
            self.results.attempt(("compile", label), lambda: self.compile_point(spec, deadline, flops=not compiled))
        c = self.results.result["sections"]["compile"]
        c |= {"res": res, "batch": self.batch, "backend": self.plan.compile_backend}
        fwd = c["eager"].get("forward_flops_per_image")
        for entry in (c["eager"], c["compiled"]):
            if fwd and "step_s" in entry:
                entry["mfu"] = 3 * fwd * self.batch / entry["step_s"] / (self.peak * 1e12)
        if "step_s" in c["eager"] and "step_s" in c["compiled"]:
            c["speedup"] = c["eager"]["step_s"] / c["compiled"]["step_s"]
        self.results.save()

    def compile_point(self, spec: dict, deadline: float, flops: bool) -> dict:
        import statistics

        start = time.monotonic()
        times, reports = timed_rounds(["openvision2"], spec, self.plan.rounds, 1, together=False, deadline=deadline,
                                      flops=flops)
        report = reports["openvision2"]
        return {"step_s": statistics.median(times["openvision2"]), "step_s_all": times["openvision2"],
                "peak_mem_bytes": report["peak_mem_bytes"], "wall_s": round(time.monotonic() - start, 1),
                **{k: report[k] for k in ("forward_flops_per_image",) if k in report}}


def train_run(plan: SuitePlan, run_dir: Path, fsdp: bool, deadline: float) -> dict:
    """`ov2 train` in a child process (under torchrun on 1 rank for FSDP2); reads its metrics.jsonl.
    Its process group is killed at the deadline."""
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
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                             start_new_session=True)  # its own group: torchrun's rank goes with it at the deadline
    try:
        stdout, stderr = child.communicate(timeout=max(1.0, deadline - start))
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        raise RuntimeError(f"ov2 train stopped at the section's time budget ({deadline - start:.0f} s)") from None
    seconds = time.monotonic() - start
    records = []
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    losses = [(r["step"], r["loss"]) for r in records if "loss" in r and "step" in r]
    out = {"command": " ".join(["python", *command[1:]]), "returncode": child.returncode, "wall_s": round(seconds, 1),
           "losses": losses, "images_per_s": [r.get("images_per_s") for r in records if "images_per_s" in r]}
    if fsdp:
        out["backend"] = "nccl" if plan.device == "cuda" else "gloo"
    if child.returncode != 0 or not losses:
        lines = (stderr or stdout).strip().splitlines()
        # the cause, not torchrun's closing banner ("error_file: <N/A>", "To enable traceback see: ...")
        causes = [line.strip() for line in lines if "rror" in line and "error_file" not in line and "errors.html" not in line]
        raise RuntimeError(f"ov2 train exited with {child.returncode}: {' | '.join(causes[-2:] or lines[-3:])}")
    out["first_loss"], out["last_loss"] = losses[0][1], losses[-1][1]
    out["loss_fell"] = losses[-1][1] < losses[0][1]
    return out
