"""Driving benchmark workers (bench/worker.py): one process per configuration, commands over pipes."""

from __future__ import annotations

import json
import subprocess
import sys

from ..errors import UserError


class WorkerFailed(RuntimeError):
    def __init__(self, method: str, message: str, oom: bool):
        super().__init__(f"{method}: {message}")
        self.oom = oom


class WorkerProcess:
    """Starts a worker and waits until its model is built and warmed up."""

    def __init__(self, spec: dict):
        self.method = spec["method"]
        self.process = subprocess.Popen([sys.executable, "-m", "openvision2.bench.worker", json.dumps(spec)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._read()  # {"ready": true}

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            code = self.process.wait()
            raise WorkerFailed(self.method, f"worker exited with status {code} (killed for memory?)", oom=code == -9)
        answer = json.loads(line)
        if "error" in answer:
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


def measure_once(spec: dict) -> dict:
    """Build, warm up, report and quit: one memory measurement in a fresh process."""
    worker = WorkerProcess(spec)
    try:
        return worker.ask({"cmd": "report", "flops": False})
    finally:
        worker.close()


def max_batch(spec: dict, budget_bytes: int, limit: int, log) -> dict:
    """Largest batch whose peak memory fits budget_bytes (an OOM counts as not fitting).

    Starts at 1 and 2, then tries the batch a straight line through the two largest fitting points
    predicts (memory grows about linearly with the batch), doubling when there is no prediction and
    bisecting between the largest fit and the smallest miss, until they are adjacent."""
    fits: dict[int, int] = {}
    misses: set[int] = set()
    trials = []

    def trial(batch: int) -> None:
        try:
            peak = measure_once({**spec, "shape": {**spec["shape"], "batch_size": batch}})["peak_mem_bytes"]
            ok = peak <= budget_bytes
        except WorkerFailed as err:
            if not err.oom:
                raise
            peak, ok = None, False
        trials.append({"batch": batch, "peak_mem_bytes": peak, "fits": ok})
        log(f"  {spec['method']}: batch {batch}: " + (f"{peak / 2**30:.2f} GiB" if peak else "out of memory")
            + (" fits" if ok else " does not fit"))
        (fits.__setitem__(batch, peak) if ok else misses.add(batch))

    for batch in (1, 2):
        if batch <= limit:
            trial(batch)
    while True:
        lo = max(fits, default=0)
        hi = min(misses, default=limit + 1)
        if lo == 0 or hi - lo <= 1:
            break
        candidate = None
        if len(fits) >= 2:
            b1, b2 = sorted(fits)[-2:]
            slope = (fits[b2] - fits[b1]) / (b2 - b1)
            if slope > 0:
                candidate = int(b2 + (budget_bytes - fits[b2]) / slope)
        if candidate is None or not lo < candidate < hi:
            candidate = lo * 2 if hi > limit else (lo + hi) // 2
        candidate = min(candidate, limit)
        if candidate <= lo:
            break
        trial(candidate)
        # a prediction that landed just inside the range: check its neighbour to close the gap faster
        if candidate in fits and candidate + 1 < hi and candidate + 1 not in misses:
            trial(candidate + 1)
    best = max(fits, default=0)
    if best == 0:
        raise UserError(f"{spec['method']}: even batch 1 does not fit in {budget_bytes / 2**30:.2f} GiB")
    return {"max_batch": best, "at_limit": best >= limit, "trials": trials}
