"""The vocabulary head and its cross-entropy without the full logits (a fused linear + cross-entropy).

A caption decoder's last step is hidden [tokens, D] @ head [V, D]^T -> logits [tokens, V] ->
cross-entropy. With 127 caption positions per image and V = 32,000 the logits, their fp32 copy, the
softmax and the logits' gradient are four [tokens x 32,000] tensors: at batch 32 that is 4,064 x
32,000 x 4 bytes = 0.5 GB each, a large share of OpenVision 2's per-image memory.

`vocab_nll` walks the tokens in chunks instead. Because the loss is a sum over tokens (a scalar),
each chunk's gradients are known as soon as its logits are: d nll / d logits = softmax - onehot.
So in the forward pass every chunk computes its logits, its NLL, and at once its contributions to
the gradients of the hidden states and of the head weight; only those two gradients ([tokens, D]
and [V, D]) are kept for backward, which scales them by the incoming scalar gradient. No
[tokens, V] tensor lives longer than one chunk, and there is no recomputation: the FLOPs are those
of the full-logits path (forward matmul plus the two backward matmuls). Without autograd (eval)
it computes the NLL alone. Under autocast the matmuls run in the autocast dtype and the softmax in
fp32, as `F.cross_entropy(logits.float())` does on the full logits.

Two paths, chosen by device (`loss_path`, docs/DESIGN.md "The vocabulary loss on CPU and on CUDA"):
- compacting (CPU, the reference): only the tokens the mask keeps are computed (nonzero(): free on a
  CPU), `logits_chunk` tokens a chunk (512), the softmax formed in place in one fp32 buffer.
- static (CUDA): every token, the masked ones zeroed, so no shape depends on data and nothing is read
  back to the host (nonzero() would stall the GPU queue every micro-batch); 4,096-token chunks, so the
  fp32 head gradient, read and written once per chunk, costs less than the chunk's matmul; the chunk's
  softmax and gradient are one torch.compile'd function (Triton kernels reading the low-precision logits
  about twice and writing the gradient once, where the eager ops make ~7 fp32 passes); the head
  gradient accumulates into its fp32 buffer inside the matmul (no [V, D] temporary).

chunk_tokens=0 is the full-logits reference path (what every method did before): the tests compare
the paths to it to 1e-6 in fp32.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
import torch.utils._triton as triton_check

# 512 x 32,000 fp32 logits = 66 MB per chunk. 1024 is < 1% of a step faster but holds 0.08 GiB more at
# the peak; 256 saves ~0.04 GiB more but costs 2.4% (docs/BENCHMARKS.md, issue 14). CPU only.
DEFAULT_CHUNK_TOKENS = 512
# The static (CUDA) path's chunk. Each chunk reads and writes the fp32 [V, D] head gradient once
# (8·V·D bytes) for 2·chunk·V·D FLOPs of its matmul: chunk/4 FLOPs a byte, ~1,000 at 4,096 against an
# H100's ~300 (989 TFLOP/s bf16 over 3.35 TB/s), where 512 tokens would leave that matmul memory-bound.
# Transient: two [4,096 x 32,000] tensors in the matmul dtype (0.5 GiB in bf16).
CUDA_CHUNK_TOKENS = 4096


@dataclass(frozen=True)
class LossPath:
    """How vocab_nll runs on a device: "compacting" or "static", tokens per chunk, the static path's chunk
    body (chunk_nll_and_grad, compiled or not), and one line saying why."""

    name: str
    chunk_tokens: int
    body: Callable | None
    reason: str


def chunk_nll_and_grad(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                       need_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One chunk of the static path: logits [C, V] (matmul dtype), targets and bool mask [C] -> (the
    masked tokens' summed NLL in fp32, d(that sum)/d logits = (softmax - onehot) on masked rows, 0
    elsewhere, in the logits' dtype). Only shape-static ops (no nonzero, no one_hot's range check), so
    torch.compile(fullgraph=True) takes it whole."""
    x = logits.float()
    lse = torch.logsumexp(x, dim=1)
    nll = torch.where(mask, lse - x.gather(1, targets[:, None]).squeeze(1), 0.0).sum()
    if not need_grad:
        return nll, None
    onehot = torch.arange(x.shape[1], device=x.device) == targets[:, None]
    grad = torch.where(mask[:, None], torch.exp(x - lse[:, None]) - onehot.float(), 0.0)
    return nll, grad.to(logits.dtype)


@functools.cache
def _warn_once(reason: str) -> None:
    warnings.warn(f"vocabulary loss: {reason}", stacklevel=4)


class CompiledBody:
    """chunk_nll_and_grad compiled; if compiling fails (say, no C compiler for Triton's launcher on the
    machine), the eager body from then on, said once: a slower first run rather than a crash at step 1."""

    def __init__(self):
        # dynamic=None: the first shape is compiled static; a second one (the last, shorter chunk; an eval
        # batch) marks the token dimension dynamic instead of compiling once per shape.
        self.compiled = torch.compile(chunk_nll_and_grad, fullgraph=True)
        self.failed = False

    def __call__(self, *args):
        if not self.failed:
            try:
                return self.compiled(*args)
            except torch._dynamo.exc.BackendCompilerFailed as error:
                self.failed = True
                inner = getattr(error, "inner_exception", error)
                reason = f"{type(inner).__name__}: {(str(inner).strip().splitlines() or [''])[0]}"
                _warn_once(f"torch.compile failed ({reason}): the chunk body runs eagerly (same results, "
                           "several times its memory traffic)")
        return chunk_nll_and_grad(*args)


_compiled_body = functools.cache(CompiledBody)


def loss_path(device: torch.device, chunk_tokens: int = DEFAULT_CHUNK_TOKENS) -> LossPath:
    """The path vocab_nll takes on `device`: compacting on a CPU (and anything but CUDA), static with a
    compiled chunk body on CUDA (an eager body, with the reason, where Triton is missing)."""
    if device.type != "cuda":
        return LossPath("compacting", chunk_tokens, None,
                        f"{device.type}: the masked tokens' rows gathered first (nonzero, free off a GPU), "
                        f"{chunk_tokens}-token chunks")
    if not triton_check.has_triton_package():
        reason = ("cuda without Triton: the chunk body runs eagerly (same results, several times its memory "
                  "traffic); install the triton build that matches torch to compile it")
        _warn_once(reason)
        return LossPath("static", CUDA_CHUNK_TOKENS, chunk_nll_and_grad, reason)
    return LossPath("static", CUDA_CHUNK_TOKENS, _compiled_body(),
                    f"cuda: {CUDA_CHUNK_TOKENS}-token chunks, every token (masked ones zeroed, no host sync), "
                    "chunk body compiled by torch.compile")


def vocab_nll(hidden: torch.Tensor, head_weight: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
              chunk_tokens: int = DEFAULT_CHUNK_TOKENS, path: LossPath | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden [..., D] (after the final norm), head_weight [V, D], targets and mask [...] ->
    (sum of the masked tokens' NLL, number of masked tokens). chunk_tokens=0: full logits, on every
    device; otherwise the device's loss_path (or `path`, for the tests) with chunk_tokens the CPU chunk."""
    hidden, targets, mask = hidden.flatten(0, -2), targets.flatten(), mask.flatten().bool()
    num_tokens = mask.sum()
    if chunk_tokens <= 0:
        logits = F.linear(hidden, head_weight)
        nll = F.cross_entropy(logits.float(), targets, reduction="none")
        return (nll * mask).sum(), num_tokens
    device_type = hidden.device.type
    autocast = torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)
    dtype = torch.get_autocast_dtype(device_type) if autocast else hidden.dtype
    need_grad = torch.is_grad_enabled() and (hidden.requires_grad or head_weight.requires_grad)
    path = path or loss_path(hidden.device, chunk_tokens)
    function = _StaticVocabNLL if path.name == "static" else _CompactingVocabNLL
    nll_sum = function.apply(hidden, head_weight, targets, mask, path.chunk_tokens, dtype, need_grad, path.body)
    return nll_sum, num_tokens


def _accumulate(grad_w: torch.Tensor, grad_logits_t: torch.Tensor, h: torch.Tensor) -> None:
    """grad_w (fp32) += grad_logits^T @ h, in place."""
    if grad_logits_t.dtype == grad_w.dtype:
        grad_w.addmm_(grad_logits_t, h)
    elif grad_w.device.type == "meta" or (grad_w.device.type == "cuda"
                                          and torch.cuda.get_device_capability(grad_w.device)[0] >= 8):
        # cuBLAS sums the low-precision products into the fp32 output: no [V, D] temporary, no rounding
        # of each chunk's contribution to bf16 (what liger-kernel's fused linear cross-entropy does too)
        torch.addmm(grad_w, grad_logits_t, h, out_dtype=torch.float32, out=grad_w)
    else:  # CPU has no mixed-dtype addmm: the chunk's [V, D] product in the matmul dtype, added in fp32
        grad_w.add_(grad_logits_t @ h)


class _VocabNLL(torch.autograd.Function):
    """The backward both paths share: the gradients formed in the forward pass, scaled by grad_out."""

    @staticmethod
    def backward(ctx, grad_out):
        if getattr(ctx, "consumed", False):  # the saved gradients are scaled in place below
            raise RuntimeError("vocab_nll: a second backward through the same loss is not supported")
        ctx.consumed = True
        grad_h, grad_w, kept = ctx.saved_tensors
        shape, hidden_dtype = ctx.hidden_meta
        grad_hidden = grad_w_out = None
        if ctx.needs_input_grad[0]:
            scaled = grad_h.mul_(grad_out).to(hidden_dtype)
            if kept is None:
                grad_hidden = scaled.view(shape)
            else:
                grad_hidden = torch.zeros(shape, dtype=hidden_dtype, device=grad_h.device)
                grad_hidden.index_copy_(0, kept, scaled)
        if ctx.needs_input_grad[1]:
            grad_w_out = grad_w.mul_(grad_out).to(ctx.weight_dtype)
        return grad_hidden, grad_w_out, None, None, None, None, None, None

    @staticmethod
    def save(ctx, hidden, weight, grad_h, grad_w, kept):
        ctx.save_for_backward(grad_h, grad_w, kept)
        ctx.hidden_meta = (hidden.shape, hidden.dtype)
        ctx.weight_dtype = weight.dtype


class _StaticVocabNLL(_VocabNLL):
    """Every token, masked rows zeroed by the body: fixed shapes, nothing read back to the host."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, mask, chunk_tokens, dtype, need_grad, body):
        h, w = hidden.to(dtype), weight.to(dtype)
        nll_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(h) if need_grad else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_grad else None
        for start in range(0, h.shape[0], chunk_tokens):
            rows = slice(start, start + chunk_tokens)
            nll, grad_logits = body(torch.mm(h[rows], w.t()), targets[rows], mask[rows], need_grad)
            nll_sum += nll
            if need_grad:
                torch.mm(grad_logits, w, out=grad_h[rows])
                _accumulate(grad_w, grad_logits.t(), h[rows])
        if need_grad:
            _VocabNLL.save(ctx, hidden, weight, grad_h, grad_w, None)
        return nll_sum


class _CompactingVocabNLL(_VocabNLL):
    """The masked tokens' rows only, the softmax formed in place in one fp32 buffer (the CPU path)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, mask, chunk_tokens, dtype, need_grad, body):
        kept = mask.nonzero().squeeze(1)
        h = hidden.index_select(0, kept).to(dtype)
        t = targets.index_select(0, kept)
        w = weight.to(dtype)
        nll_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(h) if need_grad else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_grad else None
        # One fp32 buffer (and one in the matmul dtype) serves every chunk: no per-chunk allocation, and
        # the softmax is formed in place (logsumexp would allocate a second [chunk, V] tensor).
        rows = min(chunk_tokens, len(kept))
        buffer = torch.empty(rows, weight.shape[0], dtype=torch.float32, device=hidden.device)
        low = torch.empty(rows, weight.shape[0], dtype=dtype, device=hidden.device) if dtype != torch.float32 else None
        for start in range(0, len(kept), chunk_tokens):
            h_c, t_c = h[start:start + chunk_tokens], t[start:start + chunk_tokens]
            logits = buffer[:len(t_c)]
            if low is None:
                torch.mm(h_c, w.t(), out=logits)
            else:
                logits.copy_(torch.mm(h_c, w.t(), out=low[:len(t_c)]))
            target_logit = logits.gather(1, t_c[:, None]).squeeze(1)
            top = logits.amax(dim=1, keepdim=True)
            total = logits.sub_(top).exp_().sum(dim=1, keepdim=True)  # logits now hold exp(logit - max)
            nll_sum += (total.log() + top).squeeze(1).sub_(target_logit).sum()
            if need_grad:
                # d(sum nll) / d logits = softmax - onehot
                logits.div_(total)
                logits[torch.arange(len(t_c), device=t_c.device), t_c] -= 1
                grad_logits = logits if low is None else low[:len(t_c)].copy_(logits)
                torch.mm(grad_logits, w, out=grad_h[start:start + chunk_tokens])
                _accumulate(grad_w, grad_logits.t(), h_c)
        if need_grad:
            _VocabNLL.save(ctx, hidden, weight, grad_h, grad_w, kept)
        return nll_sum
