"""The paper's models really stepped: FSDP2 on gloo CPU ranks under torchrun, checked (docs/DISTRIBUTED.md).

For each method (OpenVision 2 and 1) at the stage-1 shape (ViT-L/14 + L decoder, 84 px, text_len 128,
WordPiece; the l14-stage1 preset: FSDP2, meta-device build, selective checkpointing, bf16), on shards:

  reference  4 ranks, uninterrupted, `steps` steps: the global sample order, the losses, step time
             and peak RSS per rank.
  restart    4 ranks under `torchrun --max-restarts=1`, a checkpoint every step; one rank is SIGKILLed in
             the middle of step 2; the agent restarts the workers, which resume from the newest
             checkpoint. Every step's samples and loss must equal the reference's.
  reshard    the restart run's step-1 checkpoint (saved by 4 ranks) resumed on 2 ranks, whose step-2
             checkpoint is resumed on 3 ranks: every step's samples (all ranks together) must equal the
             reference's; losses finite (they differ from the reference only by summation order).
  so400m     So400m/14 at 384 px (729 tokens), L decoder: one step on 2 ranks, finite loss.

Samples are named by their shard key: each rank logs the keys it trains on (OV2_TRACE_SAMPLES, train/loop.py).
--size tiny runs the same checks with 1-block models in seconds (tests/test_scale_check.py).
Exit status 0 when every check passed; the report goes to stdout and OUT/scale_check.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

METHODS = ("openvision2", "openvision1")
CHECKS = ("reference", "restart", "reshard", "so400m")
KILL_STEP = 2  # the restart check kills a rank during this step (step 1's checkpoint exists by then)

# The model of each check, by --size. "paper": the shapes of the paper's stage 1 and of So400m/14 at
# 384 px; "tiny": the same checks with 1-block models, for the unit tests. So400m/14 gets the L decoder:
# with its recipe's So400m-shaped one (860M parameters in all) two ranks' fp32 weights, gradients and
# Adam moments plus the consolidated export need ~20 GiB, more than a shared 24 GiB machine has.
SIZES = {
    "paper": {"l14": ["encoder=L/14", "decoder=L", "image_size=84", "text_len=128"],
              "so400m": ["encoder=So400m/14", "decoder=L", "image_size=384", "text_len=128"],
              "so400m_batch": 2},
    "tiny": {"l14": ["encoder=mu/14", "decoder=mu", "image_size=42", "text_len=32"],
             "so400m": ["encoder=mu/14", "decoder=mu", "image_size=84", "text_len=32"],
             "so400m_batch": 2},
}


def run_overrides(data: Path, steps: int, batch: int) -> list[str]:
    """The l14-stage1 preset made small enough for CPU ranks: a global batch that 4, 2 and 3 ranks split (one
    micro-batch per rank on a CPU), a few steps, the shards written by make_shards, no periodic evaluations
    or captions, the samples read in the rank's own process (2 cores: no room for loader workers)."""
    return [f"train_shards={data / 'train'}", f"val_shards={data / 'val'}", "caption_key=txt",
            "alt_caption_key=org_caption", f"batch_size={batch}", f"steps={steps}", "warmup_steps=0",
            "log_every=1", "eval_every=100000", "evals=", "show_captions=0", "val_samples=4", "tensorboard=false",
            "num_workers=0", f"keep_checkpoints={steps + 1}"]


# --- data ---

def make_shards(data: Path, train_samples: int, python: str) -> None:
    """Shards of the embedded dataset through `ov2 shards`: caption as txt, alt-text as org_caption."""
    from openvision2.data.synthetic import SyntheticCaptions
    from PIL import Image

    for split, count, per_shard in (("train", train_samples, 12), ("val", 8, 8)):
        if (data / split / "sizes.json").is_file():
            continue
        images = data / f"{split}-images"
        images.mkdir(parents=True, exist_ok=True)
        rows = []
        dataset = SyntheticCaptions(count, split=split, image_size=96, seed=0)
        for i in range(count):
            sample = dataset[i]
            Image.fromarray(sample["image"].permute(1, 2, 0).numpy()).save(images / f"{i:05d}.png")
            rows.append({"file": f"{i:05d}.png", "caption": sample["caption"], "org_caption": sample["alt_text"]})
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        subprocess.run([python, "-m", "openvision2", "shards", "--image-dir", str(images), "--captions",
                        str(data / f"{split}.jsonl"), "--per-shard", str(per_shard), "--workers", "1",
                        "--out", str(data / split)], check=True, stdout=subprocess.DEVNULL)


# --- one torchrun launch, watched ---

class Launch:
    """`torchrun --standalone ov2 train ...` with every rank logging its samples; while it runs, the peak
    RSS of each worker is read from /proc, and optionally one rank is SIGKILLed during a given step."""

    def __init__(self, name: str, root: Path, ranks: int, out: Path, args: list[str], python: str,
                 max_restarts: int = 0):
        self.name, self.ranks, self.out, self.trace = name, ranks, out, root / "trace" / name
        self.trace.mkdir(parents=True, exist_ok=True)
        self.command = [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
                        f"--max-restarts={max_restarts}", "-m", "openvision2", "train", "--out", str(out), *args]
        self.log = root / "logs" / f"{name}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.peak_rss: dict[tuple[int, int], int] = {}  # (attempt, rank) -> VmHWM in KiB
        self.killed: dict | None = None

    def run(self, kill: tuple[int, int, float] | None = None, timeout: float = 3600, reuse: bool = False) -> int:
        """Run to the end; kill = (rank, step, delay s): SIGKILL that rank `delay` seconds after it took
        the samples of `step` (first attempt only). reuse: a launch that ended well in an earlier
        invocation (its OUT/logs/NAME.json) is taken as it was instead of run again."""
        if reuse and self.ended_well():
            saved = json.loads(self.record.read_text())
            self.peak_rss = {tuple(map(int, k.split("/"))): v for k, v in saved["peak_rss"].items()}
            self.killed = saved["killed"]
            return 0
        rc = self._run(kill, timeout)
        self.record.write_text(json.dumps({"rc": rc, "killed": self.killed,
                                           "peak_rss": {f"{a}/{r}": v for (a, r), v in self.peak_rss.items()}}))
        return rc

    @property
    def record(self) -> Path:
        return self.log.with_suffix(".json")

    def ended_well(self) -> bool:
        return self.record.is_file() and json.loads(self.record.read_text())["rc"] == 0

    def reset(self) -> None:
        """Remove what an earlier, unfinished launch left (its run directory and sample logs)."""
        for path in (self.out, self.trace):
            shutil.rmtree(path, ignore_errors=True)
        self.trace.mkdir(parents=True)

    def _run(self, kill, timeout: float) -> int:
        env = {**os.environ, "OV2_TRACE_SAMPLES": str(self.trace)}
        started = time.monotonic()
        with self.log.open("w") as log:
            agent = subprocess.Popen(self.command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     preexec_fn=_first_to_go)
            while agent.poll() is None:
                workers = self._workers(agent.pid)
                for (attempt, rank), pid in workers.items():
                    hwm = _vm_hwm(pid)
                    self.peak_rss[attempt, rank] = max(self.peak_rss.get((attempt, rank), 0), hwm)
                if kill and self.killed is None:
                    self._maybe_kill(workers, *kill)
                if time.monotonic() - started > timeout:
                    agent.kill()
                    raise TimeoutError(f"{self.name}: no end after {timeout:.0f} s (log: {self.log})")
                time.sleep(0.2)
        return agent.returncode

    def _maybe_kill(self, workers: dict, rank: int, step: int, delay: float) -> None:
        taken = [r for r in self.records(rank) if r["attempt"] == 0 and r["step"] == step]
        pid = workers.get((0, rank))
        if taken and pid:
            time.sleep(delay)
            os.kill(pid, signal.SIGKILL)
            # the checkpoint a restart must resume from: the newest complete one when the rank died
            latest = self.out / "checkpoints" / "latest"
            self.killed = {"rank": rank, "step": step, "newest": latest.read_text().strip() if latest.is_file() else ""}

    @staticmethod
    def _workers(agent: int) -> dict[tuple[int, int], int]:
        """(restart attempt, rank) -> pid of torchrun's workers (its children with RANK set)."""
        found = {}
        for child in _children(agent):
            env = _environ(child)
            if "RANK" in env:
                found[int(env.get("TORCHELASTIC_RESTART_COUNT", 0)), int(env["RANK"])] = child
        return found

    def records(self, rank: int) -> list[dict]:
        return trace_records(self.trace, rank)

    def steps(self) -> dict[int, list[str]]:
        return samples_by_step(self.trace, self.ranks)

    def attempts(self) -> dict[int, list[int]]:
        """attempt -> the steps rank 0 started in it."""
        out: dict[int, list[int]] = {}
        for record in self.records(0):
            out.setdefault(record["attempt"], []).append(record["step"])
        return out


def _first_to_go() -> None:
    """Should memory run out, the kernel ends the check's processes (the agent and, inherited, its
    workers) before anything else running on the machine."""
    with open("/proc/self/oom_score_adj", "w") as f:
        f.write("1000")


def trace_records(trace: Path, rank: int) -> list[dict]:
    """What one rank logged under OV2_TRACE_SAMPLES=trace: {step, attempt, time, keys} per step."""
    path = trace / f"rank-{rank:05d}.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def samples_by_step(trace: Path, ranks: int) -> dict[int, list[str]]:
    """step -> the keys of all ranks' samples, in rank order; a step retried after a restart counts once,
    as its last attempt took it."""
    by_rank = []
    for rank in range(ranks):
        last = {}
        for record in trace_records(trace, rank):
            last[record["step"]] = record["keys"]
        by_rank.append(last)
    return {step: [k for rank in by_rank for k in rank.get(step, [])] for step in sorted(by_rank[0])}


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _environ(pid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            pairs = f.read().split(b"\0")
    except OSError:
        return {}
    return dict(p.decode(errors="replace").split("=", 1) for p in pairs if b"=" in p)


def _vm_hwm(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


# --- reading a run ---

def losses(run: Path) -> dict[int, float]:
    """step -> loss from metrics.jsonl; a step logged twice (replayed after a restart) counts as last logged."""
    out = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            out[record["step"]] = record["loss"]
    return out


def step_seconds(run: Path) -> dict[int, float]:
    """step -> seconds, from the images/s of one-step metric windows (a window ends at the step's log
    line, before its checkpoint, so the reference run, which saves only at the end, times steps cleanly)."""
    out, batch = {}, json.loads((run / "config.json").read_text())["optim"]["batch_size"]
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "images_per_s" in record:
            out[record["step"]] = batch / record["images_per_s"]
    return out


def drop_checkpoints(run: Path) -> None:
    """A finished run's checkpoints, once no later check resumes from them (an L/14 one is ~6.5 GB)."""
    shutil.rmtree(run / "checkpoints", ignore_errors=True)


def copy_up_to(run: Path, step: int, to: Path) -> None:
    """A run directory holding `run`'s checkpoint of `step` as its newest (hard links: no copy of the
    weights), as if the run had stopped there; a resume continues from it."""
    name = f"step-{step:07d}"
    (to / "checkpoints").mkdir(parents=True)
    shutil.copytree(run / "checkpoints" / name, to / "checkpoints" / name, copy_function=os.link)
    (to / "checkpoints" / "latest").write_text(name + "\n")
    shutil.copy(run / "config.json", to / "config.json")
    kept = [line for line in (run / "metrics.jsonl").read_text().splitlines() if json.loads(line)["step"] <= step]
    (to / "metrics.jsonl").write_text("".join(line + "\n" for line in kept))


# --- the checks ---

class Report:
    def __init__(self):
        self.checks: list[dict] = []
        self.figures: dict = {}

    def check(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append({"check": name, "ok": bool(ok), "detail": detail})
        print(f"[{'PASS' if ok else 'FAIL'}] {name}: {detail}", flush=True)
        return ok

    @property
    def ok(self) -> bool:
        return all(c["ok"] for c in self.checks)


def describe_run(label: str, launch: Launch, run: Path, report: Report, attempt: int = 0, timed: bool = True):
    """Print (and keep) each rank's peak RSS of one launch and, for runs that save only at the end, the
    step times (the same on every rank: each step ends in collectives)."""
    seconds = step_seconds(run) if timed else {}
    rss = {rank: launch.peak_rss.get((attempt, rank), 0) / 2**20 for rank in range(launch.ranks)}
    report.figures[label] = {"step_seconds": seconds, "peak_rss_gib": rss}
    times = "".join(f"step {s} {t:.1f} s, " for s, t in sorted(seconds.items()))
    print(f"  {label}: {times}peak RSS per rank " + ", ".join(f"{r}: {g:.2f} GiB" for r, g in rss.items()),
          flush=True)


def compare_samples(name: str, reference: dict[int, list[str]], got: dict[int, list[str]], steps, report: Report):
    """Every step's samples (all ranks together, as sets: a world size may slice a batch differently)."""
    bad = [s for s in steps if sorted(got.get(s, [])) != sorted(reference.get(s, [])) or not got.get(s)]
    detail = (f"steps {list(steps)}: the same {len(reference[steps[0]])} samples per step as the reference"
              if not bad else f"step {bad[0]}: {_diff(reference.get(bad[0], []), got.get(bad[0], []))}")
    return report.check(name, not bad, detail)


def _diff(want: list[str], got: list[str]) -> str:
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    return (f"{len(got)} samples, {len(missing)} of the reference's missing (e.g. {missing[:2]}), "
            f"{len(extra)} not in it (e.g. {extra[:2]})")


def check_method(method: str, args, root: Path, report: Report, checks: set[str]) -> None:
    size, python = SIZES[args.size], args.python
    base = ["--preset", "l14-stage1", f"method={method}", *size["l14"],
            *run_overrides(root / "data", args.steps, args.batch)]
    where = root / method
    print(f"\n== {method}: {' '.join(size['l14'])}, 4 gloo ranks, FSDP2 from meta, selective checkpointing, bf16",
          flush=True)

    ref_dir = where / "reference"
    ref = Launch(f"{method}-reference", root, 4, ref_dir, [*base, f"ckpt_every={args.steps}"], python)
    if not (args.reuse and ref.ended_well()):
        ref.reset()
    rc = ref.run(reuse=args.reuse)
    if not report.check(f"{method} reference", rc == 0 and _finite(ref_dir), _ended(rc, ref, ref_dir)):
        return
    describe_run(f"{method} reference (4 ranks)", ref, ref_dir, report)
    reference, ref_losses = ref.steps(), losses(ref_dir)
    drop_checkpoints(ref_dir)
    all_steps = list(range(1, args.steps + 1))
    if sorted(reference) != all_steps:
        report.check(f"{method} reference samples", False, f"rank logs hold steps {sorted(reference)}")
        return

    if not checks & {"restart", "reshard"}:
        return
    restart_dir = where / "restart"
    restart = Launch(f"{method}-restart", root, 4, restart_dir, [*base, "ckpt_every=1"], python, max_restarts=1)
    delay = 0.3 * min(step_seconds(ref_dir).values())
    if not (args.reuse and restart.ended_well()):
        restart.reset()
    rc = restart.run(kill=(1, KILL_STEP, delay), reuse=args.reuse)
    attempts, killed = restart.attempts(), restart.killed or {}
    resumed, newest = attempts.get(1, [None])[0], killed.get("newest", "")
    ok = (rc == 0 and killed and newest.startswith("step-") and resumed == int(newest.removeprefix("step-")) + 1
          and _finite(restart_dir))
    report.check(f"{method} restart after SIGKILL", ok,
                 f"rank 1 SIGKILLed {delay:.1f} s into step {KILL_STEP}, newest checkpoint then {newest or None}; "
                 f"the agent restarted the workers, which went on at step {resumed} (steps per attempt: {attempts}); "
                 f"torchrun exit {rc}" if killed else f"no rank was killed (steps per attempt {attempts}); exit {rc}")
    if "restart" in checks and rc == 0:
        describe_run(f"{method} restarted (4 ranks)", restart, restart_dir, report, attempt=1, timed=False)
        compare_samples(f"{method} restart: samples", reference, restart.steps(), all_steps, report)
        got = losses(restart_dir)
        report.check(f"{method} restart: losses", got == ref_losses,
                     "every step's loss equals the reference's, bit for bit" if got == ref_losses
                     else f"reference {ref_losses}, restarted {got}")

    if "reshard" not in checks or rc != 0:
        return
    # 4 ranks saved step 1 (the restart run's first attempt); 2 ranks go on from it, 3 from their step 2.
    previous = restart_dir
    for ranks, from_step in ((2, 1), (3, 2)):
        leg_dir = where / f"reshard-{ranks}"
        leg = Launch(f"{method}-reshard-{ranks}", root, ranks, leg_dir, ["--resume", *base, "ckpt_every=1"], python)
        if not (args.reuse and leg.ended_well()):
            leg.reset()
            copy_up_to(previous, from_step, leg_dir)
        rc = leg.run(reuse=args.reuse)
        leg_steps = list(range(from_step + 1, args.steps + 1))
        if not report.check(f"{method} resume on {ranks} ranks", rc == 0 and _finite(leg_dir),
                            _ended(rc, leg, leg_dir) + f", from the checkpoint of step {from_step}"):
            return
        describe_run(f"{method} resumed on {ranks} ranks", leg, leg_dir, report, timed=False)
        compare_samples(f"{method} {4 if ranks == 2 else 2} -> {ranks} ranks: the exact next samples", reference,
                        leg.steps(), leg_steps, report)
        got = losses(leg_dir)
        print("  losses vs the 4-rank reference: " + ", ".join(
            f"step {s}: {got[s]:.6f} vs {ref_losses[s]:.6f}" for s in leg_steps if s in got), flush=True)
        drop_checkpoints(previous)
        previous = leg_dir
    drop_checkpoints(previous)


def check_so400m(args, root: Path, report: Report) -> None:
    size = SIZES[args.size]
    print(f"\n== So400m: {' '.join(size['so400m'])}, one step on 2 gloo ranks", flush=True)
    out = root / "so400m"
    launch = Launch("so400m", root, 2, out, ["--preset", "l14-stage1", *size["so400m"],
                                             *run_overrides(root / "data", 1, size["so400m_batch"])], args.python)
    if not (args.reuse and launch.ended_well()):
        launch.reset()
    rc = launch.run(reuse=args.reuse)
    if report.check("so400m one step", rc == 0 and _finite(out), _ended(rc, launch, out)):
        describe_run("So400m (2 ranks)", launch, out, report)
    drop_checkpoints(out)


def _finite(run: Path) -> bool:
    try:
        got = losses(run)
    except (OSError, ValueError):
        return False
    return bool(got) and all(math.isfinite(v) for v in got.values())


def _ended(rc: int, launch: Launch, run: Path) -> str:
    if rc != 0:
        tail = launch.log.read_text().splitlines()[-5:] if launch.log.is_file() else []
        return f"torchrun exit {rc} (log {launch.log}): " + " | ".join(tail)
    got = losses(run)
    return "exit 0, losses " + ", ".join(f"step {s}: {v:.4f}" for s, v in sorted(got.items()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="scale-check", help="work directory (made fresh; default scale-check)")
    parser.add_argument("--size", choices=sorted(SIZES), default="paper")
    parser.add_argument("--methods", default="openvision2,openvision1=reference",
                        help="comma list of METHOD or METHOD=CHECK+CHECK (methods: " + ", ".join(METHODS) +
                             "; default: every check for openvision2, the reference run for openvision1)")
    parser.add_argument("--checks", default=",".join(CHECKS), help="comma list of " + ", ".join(CHECKS))
    parser.add_argument("--steps", type=int, default=3, help="steps of each run (>= 3: 4 -> 2 -> 3 ranks)")
    parser.add_argument("--batch", type=int, default=12, help="global batch, divisible by 4, 3 and 2")
    parser.add_argument("--reuse", action="store_true",
                        help="keep OUT and take the launches that ended well in an earlier invocation as they were "
                             "(continue a check that was stopped); without it OUT is made fresh")
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args(argv)
    checks = set(args.checks.split(","))
    root = Path(args.out)
    if root.exists() and not args.reuse:
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    make_shards(root / "data", max(96, 2 * args.steps * args.batch), args.python)
    report = Report()
    for entry in args.methods.split(","):
        method, _, only = entry.partition("=")
        check_method(method, args, root, report, checks & set(only.split("+")) if only else checks)
    if "so400m" in checks:
        check_so400m(args, root, report)
    minutes = (time.monotonic() - started) / 60
    passed = sum(c["ok"] for c in report.checks)
    print(f"\n{passed}/{len(report.checks)} checks passed in {minutes:.1f} min", flush=True)
    (root / "scale_check.json").write_text(json.dumps({"checks": report.checks, "figures": report.figures,
                                                       "minutes": minutes, "size": args.size}, indent=2) + "\n")
    return 0 if report.ok and report.checks else 1


if __name__ == "__main__":
    sys.exit(main())
