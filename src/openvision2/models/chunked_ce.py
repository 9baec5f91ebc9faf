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
it computes the NLL alone.

Only the tokens the mask keeps are computed (pads and the trailing [CLS] contribute nothing to the
loss or its gradient either way). Under autocast the matmuls run in the autocast dtype and the
softmax in fp32, as `F.cross_entropy(logits.float())` does on the full logits.

chunk_tokens=0 is the full-logits reference path (what every method did before): the tests compare
the two to 1e-6 in fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# 512 x 32,000 fp32 logits = 66 MB per chunk. 1024 is < 1% of a step faster but holds 0.08 GiB more at
# the peak; 256 saves ~0.04 GiB more but costs 2.4% (docs/BENCHMARKS.md, issue 14)
DEFAULT_CHUNK_TOKENS = 512


def vocab_nll(hidden: torch.Tensor, head_weight: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
              chunk_tokens: int = DEFAULT_CHUNK_TOKENS) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden [..., D] (after the final norm), head_weight [V, D], targets and mask [...] ->
    (sum of the masked tokens' NLL, number of masked tokens). chunk_tokens=0: full logits."""
    hidden, targets, mask = hidden.flatten(0, -2), targets.flatten(), mask.flatten().bool()
    num_tokens = mask.sum()
    if chunk_tokens <= 0:
        logits = F.linear(hidden, head_weight)
        nll = F.cross_entropy(logits.float(), targets, reduction="none")
        return (nll * mask).sum(), num_tokens
    dtype = torch.get_autocast_dtype(hidden.device.type) if torch.is_autocast_enabled(hidden.device.type) \
        else hidden.dtype
    need_grad = torch.is_grad_enabled() and (hidden.requires_grad or head_weight.requires_grad)
    nll_sum = _ChunkedVocabNLL.apply(hidden, head_weight, targets, mask, chunk_tokens, dtype, need_grad)
    return nll_sum, num_tokens


class _ChunkedVocabNLL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, mask, chunk_tokens, dtype, need_grad):
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
                grad_w.add_(grad_logits.t() @ h_c)  # accumulates in fp32 without a converted copy
        if need_grad:
            ctx.save_for_backward(grad_h, grad_w, kept)
            ctx.hidden_meta = (hidden.shape, hidden.dtype)
            ctx.weight_dtype = weight.dtype
        return nll_sum

    @staticmethod
    def backward(ctx, grad_out):
        if getattr(ctx, "consumed", False):  # the saved gradients are scaled in place below
            raise RuntimeError("vocab_nll: a second backward through the same loss is not supported")
        ctx.consumed = True
        grad_h, grad_w, kept = ctx.saved_tensors
        shape, hidden_dtype = ctx.hidden_meta
        grad_hidden = grad_w_out = None
        if ctx.needs_input_grad[0]:
            grad_hidden = torch.zeros(shape, dtype=hidden_dtype, device=grad_h.device)
            grad_hidden.index_copy_(0, kept, (grad_h * grad_out).to(hidden_dtype))
        if ctx.needs_input_grad[1]:
            grad_w_out = grad_w.mul_(grad_out).to(ctx.weight_dtype)
        return grad_hidden, grad_w_out, None, None, None, None, None
