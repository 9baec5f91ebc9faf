"""One benchmarked configuration in its own process: `python -m openvision2.bench.worker SPEC_JSON`.

Its own process so that peak memory belongs to one method alone: on GPU, torch's max allocated
bytes; on CPU, the peak resident set size (ru_maxrss) minus the resident size measured after every
import and before the model is built, i.e. what the model, its optimizer state and the step add.
It builds the model (with the spec's activation checkpointing and torch.compile, as `ov2 train`
wraps it), runs the warm-up steps, then answers JSON-line commands on stdin:
  {"cmd": "steps", "n": N}     -> {"times": [...seconds per step...]}
  {"cmd": "report"}             -> memory, parameter and (unless "flops": false) FLOPs figures, and
                                   "cache_releases" (how often the worker emptied its cache)
  {"cmd": "peak", "batch": B}   -> {"peak_mem_bytes": bytes or null if out of memory}: one step at
                                   batch B with the peak counter reset first (--max-batch's trial)
  {"cmd": "quit"}
Every reply is one JSON line on stdout; a failure is {"error": "...", "oom": bool}, then exit.

The GPU allocator's cache (what torch keeps reserved after tensors are freed) is released where
another measurement would otherwise pay for it, and nowhere else:
- after the warm-up, so an idle worker holds only its weights and AdamW's state;
- before and after each "peak" trial (and after one that ran out of memory), so each trial starts
  from a clean cache and leaves none behind for the next trial or the next method;
- never by "steps": timed steps reuse the warm working set. The first step after a release rebuilds
  that working set and is run untimed, so no timed step pays for the allocations.
On CPU a release is a no-op, but the worker takes the same decisions and counts them
("cache_releases"), so a test on a CPU sees them.

One process serves every --max-batch trial of a method: the weights and AdamW's state (created by
the warm-up) are the same at any batch, so each trial needs one step, not a fresh process. The
peak is reset between trials: on GPU torch's counter; on CPU the kernel's resident high-water mark
(VmHWM, reset by writing 5 to /proc/self/clear_refs) after returning freed heap pages to the kernel
(malloc_trim), so a trial at a smaller batch than the last still measures its own peak. On CPU a
spec's "mem_limit_bytes" caps the address space the step may add (RLIMIT_AS): a trial that would
need far more than the budget fails to allocate (reported as out of memory) instead of pushing a
shared machine into the kernel's OOM killer.

Test hook: a spec whose "inject_oom" lists its method raises torch.OutOfMemoryError at the first step
(the warm-up), as a GPU would at a batch that does not fit; the GPU check's dry run uses it
(bench/gpu_suite.py, OV2_GPU_CHECK_OOM_IN) to show that an out-of-memory loses nothing finished.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def reset_cpu_peak() -> None:
    """Return freed heap memory to the kernel, then restart the resident high-water mark from now."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: the mark may then include memory the allocator keeps
        pass
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def is_oom(err: BaseException, capped: bool = False) -> bool:
    """Out of memory? Under an address-space cap (mem_limit_bytes) an allocation failure surfaces in
    many forms (torch's allocator, oneDNN's "could not create a primitive", ...): any RuntimeError."""
    import torch

    text = str(err).lower()
    return isinstance(err, (torch.OutOfMemoryError, MemoryError)) or (capped and isinstance(err, RuntimeError)) or any(
        s in text for s in ("out of memory", "not enough memory", "can't allocate memory", "cannot allocate memory"))


def reply(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class Worker:
    def __init__(self, spec: dict, release_cache=None):
        """release_cache: what a release calls (default: torch.cuda.empty_cache on a GPU, nothing on
        CPU); a test passes its own to count the releases."""
        import torch

        from ..train.optim import build_optimizer
        from .methods import BenchShape, StepLoss, build_model, make_batch

        self.torch = torch
        self.method = spec["method"]
        self.device = torch.device(spec["device"])
        self.dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[spec["precision"]]
        if release_cache is None:
            release_cache = torch.cuda.empty_cache if self.device.type == "cuda" else (lambda: None)
        self.release_cache, self.cache_releases, self.cold = release_cache, 0, True
        self.inject_oom = self.method in spec.get("inject_oom", ())
        self.shape = BenchShape(**spec["shape"])
        if spec.get("threads"):
            torch.set_num_threads(spec["threads"])
        torch.manual_seed(0)
        if self.method == "coca":
            import open_clip  # noqa: F401  imported before the baseline, so its own memory is not counted
        if self.device.type != "cuda":  # the baseline without freed heap the trial's trim would give back
            reset_cpu_peak()
        self.baseline_rss = current_rss_bytes()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.model = build_model(self.method, self.shape, device=self.device).to(self.device).train()
        self.ranks = spec.get("ranks", 1)
        if self.ranks > 1:  # FSDP2 over the gloo ranks (main), wrapped and checkpointed as `ov2 train` does
            from ..train.parallel import parallelize

            parallelize(self.model, "fsdp", activation_checkpointing=spec.get("activation_checkpointing", "none"),
                        param_dtype=self.dtype)
        elif spec.get("activation_checkpointing", "none") != "none" or spec.get("compile"):
            from ..train.parallel import apply_activation_checkpointing, transformer_blocks

            apply_activation_checkpointing(self.model, spec.get("activation_checkpointing", "none"))
            if spec.get("compile"):  # as train/parallel.py apply_compile; a backend may be named (dry runs: eager)
                for _, _, block in transformer_blocks(self.model):
                    block.compile(backend=spec.get("compile_backend", "inductor"))
        self.make_batch = make_batch
        # no cap with several ranks: a rank out of memory mid-step would leave the others in a collective
        self.capped = bool(spec.get("mem_limit_bytes")) and self.device.type == "cpu" and self.ranks == 1
        if self.capped:
            vm = status_kib("VmSize") * 1024
            resource.setrlimit(resource.RLIMIT_AS, (vm + int(spec["mem_limit_bytes"]), resource.RLIM_INFINITY))
        self.optimizer = build_optimizer(self.model, 1e-4, 0.2, (0.9, 0.95), 1e-8)
        self.loss = StepLoss(self.method)
        self.batch = make_batch(self.method, self.shape, self.shape.batch_size, device=self.device)
        for _ in range(spec["warmup"]):
            self.step()
        self.release()

    def release(self) -> None:
        """Hand the allocator's cached blocks back to the GPU; the next step rebuilds its working set."""
        self.release_cache()
        self.cache_releases += 1
        self.cold = True

    def timed_steps(self, n: int) -> list[float]:
        if self.cold:  # rebuild the working set untimed: timed steps reuse a warm cache
            self.step()
        return [self.step() for _ in range(n)]

    def sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def step(self) -> float:
        """One training step as `ov2 train` runs it: forward, loss, backward, AdamW, zero_grad."""
        torch = self.torch
        if self.inject_oom:
            raise torch.OutOfMemoryError("out of memory (injected by the test hook inject_oom)")
        self.sync()
        start = time.perf_counter()
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            loss = self.loss(self.model, self.batch)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.sync()
        self.cold = False
        return time.perf_counter() - start

    def forward_flops_per_image(self) -> float:
        """Forward FLOPs of one image's step, counted by torch's FlopCounterMode with the math attention
        kernel (the fused CPU kernel is not counted); matmuls and attention only, as flops.py counts."""
        torch = self.torch
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from torch.utils.flop_counter import FlopCounterMode

        one = {k: v[:1] for k, v in self.batch.items()}
        with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
            self.loss(self.model, one)
        return float(counter.get_total_flops())

    def report(self, flops: bool = True) -> dict:
        torch = self.torch
        params = sum(p.numel() for p in self.model.parameters())
        state = sum(t.numel() * t.element_size() for s in self.optimizer.state.values() for t in s.values()
                    if torch.is_tensor(t))
        param_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        out = {"params": params, "param_bytes": param_bytes, "optimizer_state_bytes": state,
               "cache_releases": self.cache_releases}
        if self.device.type == "cuda":
            out["peak_mem_bytes"] = torch.cuda.max_memory_allocated(self.device)
            out["memory_kind"] = "cuda max_memory_allocated"
        else:
            out["peak_rss_bytes"] = peak_rss_bytes()
            out["baseline_rss_bytes"] = self.baseline_rss
            out["peak_mem_bytes"] = out["peak_rss_bytes"] - self.baseline_rss
            out["memory_kind"] = "peak RSS minus RSS before the model was built"
        if flops:
            out["forward_flops_per_image"] = self.forward_flops_per_image()
        return out

    def peak(self, batch_size: int) -> int | None:
        """Peak memory of one training step at this batch (None if it ran out of memory)."""
        torch = self.torch
        self.batch = None
        self.optimizer.zero_grad(set_to_none=True)
        self.release()  # a clean cache: nothing an earlier trial reserved counts against this one
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            base = 0
        else:
            reset_cpu_peak()
            base = self.baseline_rss
        try:
            self.batch = self.make_batch(self.method, self.shape, batch_size, device=self.device)
            self.step()
            if self.device.type == "cuda":
                return torch.cuda.max_memory_allocated(self.device)
            return status_kib("VmHWM") * 1024 - base
        except Exception as err:
            if not is_oom(err, self.capped):
                raise
            self.batch = None
            self.optimizer.zero_grad(set_to_none=True)
            return None
        finally:  # after the trial's tensors (and an OOM's traceback) are gone: leave no cache behind
            self.release()

    def serve(self) -> None:
        """Answer the commands on stdin; with several ranks, rank 0 reads them and hands each to the
        others, every rank runs it, and rank 0 answers (a peak: the largest rank's, beside each rank's)."""
        rank = self.torch.distributed.get_rank() if self.ranks > 1 else 0
        if rank == 0:
            reply({"ready": True})
        lines = iter(sys.stdin) if rank == 0 else None
        while True:
            command = json.loads(next(lines, '{"cmd": "quit"}')) if rank == 0 else None
            if self.ranks > 1:
                shared = [command]
                self.torch.distributed.broadcast_object_list(shared, src=0)
                command = shared[0]
            answer = self.run(command)
            if answer is None:
                return
            if rank == 0:
                reply(answer)

    def run(self, command: dict) -> dict | None:
        if command["cmd"] == "steps":
            return {"times": self.timed_steps(command["n"])}
        if command["cmd"] == "peak":
            peak = self.peak(command["batch"])
            if self.ranks == 1:
                return {"peak_mem_bytes": peak}
            peaks = [None] * self.ranks
            self.torch.distributed.all_gather_object(peaks, peak)
            worst = None if None in peaks else max(peaks)
            return {"peak_mem_bytes": worst, "rank_peaks": peaks}
        if command["cmd"] == "report":
            return self.report(command.get("flops", True))
        return None  # quit


def main() -> None:
    spec = json.loads(sys.argv[1])
    ranks = spec.get("ranks", 1)
    try:
        if ranks > 1:  # one of the gloo ranks runner.WorkerProcess started (RANK, WORLD_SIZE, MASTER_* set)
            import datetime

            import torch.distributed as dist

            dist.init_process_group("gloo", timeout=datetime.timedelta(minutes=10))
        Worker(spec).serve()
    except KeyboardInterrupt:  # Ctrl-C to the whole process group: the parent says it in one line
        os._exit(130)
    except Exception as err:  # reported to the parent as data: an OOM is a result for --max-batch
        capped = bool(spec.get("mem_limit_bytes")) and spec.get("device") == "cpu"
        reply({"error": f"{type(err).__name__}: {err}".splitlines()[0][:500], "oom": is_oom(err, capped)})
        sys.stdout.flush()
        os._exit(1)  # the other ranks may be waiting in a collective: nothing more to wait for
    if ranks > 1:
        dist.destroy_process_group()
        sys.stdout.flush()
        os._exit(0)  # gloo workers can abort at interpreter exit after their work is done


if __name__ == "__main__":
    main()
