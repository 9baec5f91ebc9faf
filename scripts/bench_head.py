"""The vocabulary head + cross-entropy alone, forward + backward, its variants alternated in one process
(docs/BENCHMARKS.md, issue 14; docs/DESIGN.md "The vocabulary loss on CPU and on CUDA").

    python scripts/bench_head.py TOKENS WIDTH fp32|bf16 REPEATS [VARIANT ...] [--device cuda] [--keep 0.8]

VARIANT: 0 = full logits; N = the compacting path (the CPU's) in N-token chunks; static = the device's
static path (on CUDA: 4,096-token chunks, compiled chunk body); static:N = the static path in N-token
chunks (compiled on CUDA, eager elsewhere); liger = liger-kernel's fused linear cross-entropy
(`pip install --no-deps liger-kernel==0.8.5`, CUDA only). Default: 0 1024. --keep: the share of tokens
inside the loss mask (caption pads are outside). Every variant's loss is printed (they must agree), and
on CUDA its peak allocated memory and its first host sync (torch.cuda.set_sync_debug_mode), or none."""

import argparse
import statistics
import time

import torch

from openvision2.models.chunked_ce import LossPath, chunk_nll_and_grad, loss_path, vocab_nll


def variant_loss(name: str, device: torch.device):
    """A function (hidden, weight, targets, mask) -> summed NLL for one variant."""
    if name == "liger":
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        return lambda h, w, t, m: liger_fused_linear_cross_entropy(
            h, w, t.masked_fill(~m, -100), ignore_index=-100, reduction="sum", accum_dtype=torch.float32)
    if name.startswith("static"):
        path = loss_path(torch.device("cuda")) if device.type == "cuda" else None
        if ":" in name or path is None:
            chunk = int(name.partition(":")[2] or 4096)
            body = path.body if path is not None else chunk_nll_and_grad
            path = LossPath("static", chunk, body, name)
        return lambda h, w, t, m: vocab_nll(h, w, t, m, path.chunk_tokens, path=path)[0]
    chunk = int(name)
    path = LossPath("compacting", chunk, None, name)
    return lambda h, w, t, m: vocab_nll(h, w, t, m, chunk, path=path)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tokens", type=int)
    parser.add_argument("width", type=int)
    parser.add_argument("precision", choices=("fp32", "bf16"))
    parser.add_argument("repeats", type=int)
    parser.add_argument("variants", nargs="*", default=["0", "1024"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--keep", type=float, default=1.0)
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    hidden = torch.randn(args.tokens, args.width, device=device, requires_grad=True)
    weight = (torch.randn(32000, args.width, device=device) * args.width ** -0.5).requires_grad_()
    targets = torch.randint(0, 32000, (args.tokens,), device=device)
    mask = torch.rand(args.tokens, device=device) < args.keep
    losses = {}
    for name in args.variants:
        try:
            losses[name] = variant_loss(name, device)
        except ImportError as error:
            print(f"{name}: skipped ({error}; pip install --no-deps liger-kernel==0.8.5)")
    names = list(losses)

    def once(name: str) -> tuple[float, float, int]:
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            nll_sum = losses[name](hidden, weight, targets, mask)
        nll_sum.backward()
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        hidden.grad = weight.grad = None
        return seconds, float(nll_sum.detach()), torch.cuda.max_memory_allocated() if cuda else 0

    def first_host_sync(name: str) -> str:
        """"none", or the first operation in the variant's forward + backward that waits for the GPU."""
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
                nll_sum = losses[name](hidden, weight, targets, mask)
            nll_sum.backward()
            return "none"
        except RuntimeError as error:
            return str(error).strip().splitlines()[0]
        finally:
            torch.cuda.set_sync_debug_mode("default")
            hidden.grad = weight.grad = None

    for name in names:  # warm-up (and compilation)
        _, loss, peak = once(name)
        print(f"{name}: loss {loss:.6g}" + (f", peak allocated {peak / 2 ** 30:.3f} GiB, host syncs: "
                                             f"{first_host_sync(name)}" if cuda else ""))
    times = {name: [] for name in names}
    for r in range(args.repeats):  # interleaved, the order reversed every other round
        for name in (names if r % 2 == 0 else names[::-1]):
            times[name].append(once(name)[0])
    for name, t in times.items():
        print(f"{args.precision} {device.type} tokens {args.tokens} width {args.width} keep {args.keep:g} "
              f"{'full logits' if name == '0' else name}: median {statistics.median(t):.4f} s, min {min(t):.4f} s")


if __name__ == "__main__":
    main()
