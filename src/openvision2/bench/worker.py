"""One benchmarked configuration in its own process: `python -m openvision2.bench.worker SPEC_JSON`.

Its own process so that peak memory belongs to one method alone: on GPU, torch's max allocated
bytes; on CPU, the peak resident set size (ru_maxrss) minus the resident size measured after every
import and before the model is built, i.e. what the model, its optimizer state and the step add.
It builds the model, runs the warm-up steps, then answers JSON-line commands on stdin:
  {"cmd": "steps", "n": N}  -> {"times": [...seconds per step...]}
  {"cmd": "report"}          -> memory, parameter and (unless "flops": false) FLOPs figures
  {"cmd": "quit"}
Every reply is one JSON line on stdout; a failure is {"error": "...", "oom": bool}, then exit.
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


def reply(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class Worker:
    def __init__(self, spec: dict):
        import torch

        from ..train.optim import build_optimizer
        from .methods import BenchShape, StepLoss, build_model, make_batch

        self.torch = torch
        self.method = spec["method"]
        self.device = torch.device(spec["device"])
        self.dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[spec["precision"]]
        self.shape = BenchShape(**spec["shape"])
        if spec.get("threads"):
            torch.set_num_threads(spec["threads"])
        torch.manual_seed(0)
        if self.method == "coca":
            import open_clip  # noqa: F401  imported before the baseline, so its own memory is not counted
        self.baseline_rss = current_rss_bytes()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.model = build_model(self.method, self.shape).to(self.device).train()
        self.optimizer = build_optimizer(self.model, 1e-4, 0.2, (0.9, 0.95), 1e-8)
        self.loss = StepLoss(self.method)
        self.batch = {k: v.to(self.device) for k, v in make_batch(self.method, self.shape, self.shape.batch_size).items()}
        for _ in range(spec["warmup"]):
            self.step()

    def sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def step(self) -> float:
        """One training step as `ov2 train` runs it: forward, loss, backward, AdamW, zero_grad."""
        torch = self.torch
        self.sync()
        start = time.perf_counter()
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            loss = self.loss(self.model, self.batch)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.sync()
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
        out = {"params": params, "param_bytes": param_bytes, "optimizer_state_bytes": state}
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

    def serve(self) -> None:
        reply({"ready": True})
        for line in sys.stdin:
            command = json.loads(line)
            if command["cmd"] == "steps":
                reply({"times": [self.step() for _ in range(command["n"])]})
                if self.device.type == "cuda":
                    self.torch.cuda.empty_cache()  # let the other workers on this GPU use the cache
            elif command["cmd"] == "report":
                reply(self.report(command.get("flops", True)))
            elif command["cmd"] == "quit":
                return


def main() -> None:
    spec = json.loads(sys.argv[1])
    try:
        Worker(spec).serve()
    except Exception as err:  # reported to the parent as data: an OOM is a result for --max-batch
        import torch

        oom = isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()
        reply({"error": f"{type(err).__name__}: {err}".splitlines()[0][:500], "oom": oom})
        sys.exit(1)


if __name__ == "__main__":
    main()
