"""The vocabulary head + cross-entropy alone, forward + backward: full logits vs chunks, alternated in
one process (docs/BENCHMARKS.md, issue 14).   python scripts/bench_head.py TOKENS WIDTH fp32|bf16 REPEATS [CHUNK ...]
(chunk sizes to compare, 0 = full logits; default 0 1024)"""

import statistics
import sys
import time

import torch

from openvision2.models.chunked_ce import vocab_nll


def main() -> None:
    tokens, width, precision, repeats = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    torch.manual_seed(0)
    hidden = torch.randn(tokens, width, requires_grad=True)
    weight = (torch.randn(32000, width) * width ** -0.5).requires_grad_()
    targets, mask = torch.randint(0, 32000, (tokens,)), torch.ones(tokens, dtype=torch.bool)

    def once(chunk: int) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            nll_sum, _ = vocab_nll(hidden, weight, targets, mask, chunk)
        nll_sum.backward()
        hidden.grad = weight.grad = None
        return time.perf_counter() - start

    chunks = [int(c) for c in sys.argv[5:]] or [0, 1024]
    times = {c: [] for c in chunks}
    for chunk in chunks:  # warm-up
        once(chunk)
    for r in range(repeats):  # interleaved, the order reversed every other round
        for chunk in (chunks if r % 2 == 0 else chunks[::-1]):
            times[chunk].append(once(chunk))
    for chunk, t in times.items():
        print(f"{precision} tokens {tokens} width {width} chunk {chunk or 'off'}: median {statistics.median(t):.3f} s, "
              f"min {min(t):.3f} s")


if __name__ == "__main__":
    main()
