"""Driving benchmark workers (bench/worker.py): one process per configuration, commands over pipes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time

from ..errors import UserError


def log(message: str) -> None:
    """Progress of a benchmark, on stderr (stdout carries its figures)."""
    print(message, file=sys.stderr, flush=True)


class WorkerFailed(RuntimeError):
    def __init__(self, method: str, message: str, oom: bool):
        super().__init__(f"{method}: {message}")
        self.oom = oom


class OutOfTime(WorkerFailed):
    """The worker was stopped at its deadline (WorkerProcess)."""

    def __init__(self, method: str):
        super().__init__(method, "stopped at its section's time budget", oom=False)


class WorkerProcess:
    """Starts a worker and waits until its model is built and warmed up. With a deadline (a
    time.monotonic() value), a worker still busy then is killed and the wait ends in WorkerFailed:
    a section of the GPU check never runs past its time budget."""

    def __init__(self, spec: dict, deadline: float | None = None):
        self.method = spec["method"]
        self.deadline = deadline
        env = None
        if spec.get("live_cpu_peak") and spec["device"] == "cpu":
            # glibc's adaptive mmap threshold keeps freed blocks of earlier steps in the heap, so the resident
            # peak depends on history; a fixed 64 KiB threshold returns every large block at once and the
            # peak follows the live tensors, as torch.cuda.max_memory_allocated does on a GPU
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        command = [sys.executable, "-m", "openvision2.bench.worker", json.dumps(spec)]
        ranks = spec.get("ranks", 1)
        self.others = []  # ranks 1.. of a multi-rank worker: rank 0 speaks for them (worker.serve)
        if ranks > 1:
            env = {**(env or os.environ), "WORLD_SIZE": str(ranks), "MASTER_ADDR": "127.0.0.1",
                   "MASTER_PORT": str(free_port())}
            self.others = [subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)})
                           for r in range(1, ranks)]
            env = {**env, "RANK": "0", "LOCAL_RANK": "0"}
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        for other in self.others:  # a rank that fails leaves rank 0 in a collective: end it too
            threading.Thread(target=self._stop_if_failed, args=(other,), daemon=True).start()
        try:
            self._read()  # {"ready": true}
        except BaseException:
            self._kill_others()
            raise

    def _read(self) -> dict:
        timer = None
        if self.deadline is not None:
            timer = threading.Timer(max(0.0, self.deadline - time.monotonic()), self.process.kill)
            timer.start()
        try:
            line = self.process.stdout.readline()
        finally:
            if timer is not None:
                timer.cancel()
        if not line:
            self._kill_others()
            code = self.process.wait()
            if self.deadline is not None and time.monotonic() >= self.deadline:
                raise OutOfTime(self.method)
            raise WorkerFailed(self.method, f"worker exited with status {code} (killed for memory?)", oom=code == -9)
        answer = json.loads(line)
        if "error" in answer:
            self._kill_others()
            self.process.wait()
            raise WorkerFailed(self.method, answer["error"], answer.get("oom", False))
        return answer

    def ask(self, command: dict) -> dict:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.process.stdin.flush()
                self.process.wait(timeout=30)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        for other in self.others:  # they quit with rank 0 (it hands them the quit); else they are stopped
            try:
                other.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        self._kill_others()

    def _stop_if_failed(self, other: subprocess.Popen) -> None:
        if other.wait() != 0 and self.process.poll() is None:
            self.process.kill()

    def _kill_others(self) -> None:
        for other in self.others:
            if other.poll() is None:
                other.kill()
                other.wait()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure_once(spec: dict) -> dict:
    """Build, warm up, report and quit: one memory measurement in a fresh process."""
    worker = WorkerProcess(spec)
    try:
        return worker.ask({"cmd": "report", "flops": False})
    finally:
        worker.close()


def measure_peak(spec: dict):
    """A measure for find_max_batch: batch -> peak memory bytes in a fresh worker, or None on OOM."""
    def measure(batch: int) -> int | None:
        try:
            return measure_once({**spec, "shape": {**spec["shape"], "batch_size": batch}})["peak_mem_bytes"]
        except WorkerFailed as err:
            if not err.oom:
                raise
            return None

    return measure


class PeakProbe:
    """The fast measure for find_max_batch: one worker per method serves every trial with one
    training step (bench/worker.py "peak"); a worker killed for memory is replaced by a fresh one."""

    def __init__(self, spec: dict, fresh: bool = False, deadline: float | None = None):
        # warm-up at batch 1 creates AdamW's state, which every trial's step then holds, as in training;
        # on CPU the worker reads the live peak (WorkerProcess), not what the allocator kept from earlier steps.
        # The worker is this probe's own: no other method's reservation is on the GPU during its trials.
        self.spec = {**spec, "shape": {**spec["shape"], "batch_size": 1}, "warmup": 1, "live_cpu_peak": True}
        self.worker = None
        # fresh: a new worker per trial, so that nothing an earlier, larger trial left in the allocator or
        # in oneDNN's per-shape caches is counted (CPU trials with activation checkpointing read unevenly)
        self.fresh = fresh
        self.deadline = deadline

    def __call__(self, batch: int) -> int | None:
        try:
            if self.worker is None:
                self.worker = WorkerProcess(self.spec, self.deadline)
            return self.worker.ask({"cmd": "peak", "batch": batch})["peak_mem_bytes"]
        except WorkerFailed as err:
            self.worker = None
            if not err.oom:
                raise
            return None
        finally:
            if self.fresh:
                self.close()

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None


def find_max_batch(measure, budget_bytes: int, limit: int, log=lambda message: None, name: str = "",
                   tolerance: float = 0.0, seconds: float | None = None) -> dict:
    """Largest batch b <= limit with measure(b) <= budget_bytes (measure returns None for an OOM).

    Tries 1 and 2, then once the batch that a straight line through them predicts (memory grows
    about linearly with the batch) and, if that fits, the next one up; after that it doubles, or
    bisects between the largest fit and the smallest miss, until those two are adjacent, or (with
    tolerance > 0) within that fraction of each other. With `seconds`, no trial starts that would
    end after that many seconds (judged by the last trial's duration): the largest fit so far is
    returned with "stopped_early"."""
    deadline = None if seconds is None else time.monotonic() + seconds
    last_trial_s = 0.0
    stopped_early = False
    fits: dict[int, int] = {}
    misses: set[int] = set()
    trials = []

    def trial(batch: int) -> bool:
        nonlocal last_trial_s
        start = time.monotonic()
        peak = measure(batch)
        last_trial_s = time.monotonic() - start
        ok = peak is not None and peak <= budget_bytes
        trials.append({"batch": batch, "peak_mem_bytes": peak, "fits": ok})
        log(f"  {name}: batch {batch}: " + (f"{peak / 2**30:.3f} GiB" if peak is not None else "out of memory")
            + (" fits" if ok else " does not fit"))
        if ok:
            fits[batch] = peak
        else:
            misses.add(batch)
        return ok

    def search() -> None:
        nonlocal stopped_early
        for batch in (1, 2):
            if batch <= limit and not trial(batch):
                return
        predicted_once = False
        while fits:
            lo, hi = max(fits), min(misses, default=limit + 1)
            if hi - lo <= max(1, int(lo * tolerance)) and not (hi == limit + 1 and lo < limit):
                return
            if deadline is not None and time.monotonic() + last_trial_s > deadline:
                stopped_early = True
                return
            if not predicted_once and len(fits) >= 2:
                predicted_once = True
                b1, b2 = sorted(fits)[-2:]
                slope = (fits[b2] - fits[b1]) / (b2 - b1)
                if slope > 0:
                    candidate = min(max(int(b2 + (budget_bytes - fits[b2]) / slope), lo + 1), hi - 1)
                    if trial(candidate) and candidate + 1 < hi:
                        trial(candidate + 1)
                    continue
            if hi > limit:  # no miss yet: step past the line's prediction by half again, or double
                b1, b2 = sorted(fits)[-2:] if len(fits) >= 2 else (lo, lo)
                slope = (fits[b2] - fits[b1]) / (b2 - b1) if b2 > b1 else 0
                step = math.ceil(1.5 * (budget_bytes - fits[lo]) / slope) if slope > 0 else lo
                trial(min(lo + max(step, 1), lo * 2, limit))
            else:
                trial((lo + hi) // 2)

    try:
        search()
    except OutOfTime:  # killed mid-trial at the hard deadline: what was found so far stands
        stopped_early = True
    best = max(fits, default=0)
    if best == 0:
        if stopped_early:
            raise UserError(f"{name}: the time budget ended before batch 1 was measured")
        if trials and trials[0]["peak_mem_bytes"] is None:
            raise UserError(f"{name}: even batch 1 runs out of memory")
        raise UserError(f"{name}: even batch 1 does not fit in {budget_bytes / 2**30:.2f} GiB")
    return {"max_batch": best, "at_limit": best >= limit, "trials": trials, "stopped_early": stopped_early,
            "miss_above": min(misses, default=None)}
