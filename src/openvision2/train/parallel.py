"""Every kind of wrapping, in one place: activation checkpointing -> per-block torch.compile ->
FSDP2 or DDP (torchtitan's order). Model files know nothing about it.

The unit of all three is the transformer block: every element of a ModuleList / Sequential that a
module keeps under the name `blocks` or `layers` (the ViT's and the decoder's blocks; an extra tower
added by another method is found the same way).

Gradient reduction: DDP and FSDP2 average gradients over ranks. The loop backpropagates the *sum*
of token losses and afterwards multiplies the gradients by world_size / (global count of caption
tokens), which undoes the average exactly and gives the token mean over the whole global batch.
"""

from __future__ import annotations

import contextlib
from functools import partial

import torch
from torch import nn

from ..errors import UserError

PARALLEL = ("auto", "none", "ddp", "fsdp")
ACTIVATION_CHECKPOINTING = ("none", "full", "selective")
_BLOCK_CONTAINERS = ("blocks", "layers")


def transformer_blocks(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """(container, index, block) for every transformer block, in module order."""
    found = []
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in _BLOCK_CONTAINERS and isinstance(module, (nn.ModuleList, nn.Sequential)):
            found.extend((module, index, block) for index, block in module.named_children())
    return found


def resolve_parallel(parallel: str, world_size: int) -> str:
    if parallel not in PARALLEL:
        raise UserError(f"unknown parallel {parallel!r}: use one of {', '.join(PARALLEL)}")
    if parallel == "auto":
        return "ddp" if world_size > 1 else "none"
    return parallel


def _selective_policy():
    """Keep the outputs of matmuls and attention (expensive to redo), recompute the rest (norms,
    GELU, residual adds: cheap, and most of the activation memory)."""
    from torch.utils.checkpoint import CheckpointPolicy

    aten = torch.ops.aten
    save = {aten.mm.default, aten.addmm.default, aten.bmm.default, aten.linear.default}
    for name in ("_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention",
                 "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu"):
        if hasattr(aten, name):
            save.add(getattr(aten, name).default)

    def policy(ctx, op, *args, **kwargs):
        return CheckpointPolicy.MUST_SAVE if op in save else CheckpointPolicy.PREFER_RECOMPUTE

    return policy


def apply_activation_checkpointing(model: nn.Module, mode: str) -> None:
    if mode not in ACTIVATION_CHECKPOINTING:
        raise UserError(f"unknown activation_checkpointing {mode!r}: use one of {', '.join(ACTIVATION_CHECKPOINTING)}")
    if mode == "none":
        return
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    kwargs = {}
    if mode == "selective":
        from torch.utils.checkpoint import create_selective_checkpoint_contexts

        kwargs["context_fn"] = partial(create_selective_checkpoint_contexts, _selective_policy())
    # The wrapper's state-dict hooks strip its prefix, so checkpoints keep the plain parameter names.
    for container, index, block in transformer_blocks(model):
        container.register_module(index, checkpoint_wrapper(block, preserve_rng_state=True, **kwargs))


def apply_compile(model: nn.Module) -> None:
    # nn.Module.compile works in place, so parameter names stay free of `_orig_mod`.
    for _, _, block in transformer_blocks(model):
        block.compile()


def apply_fsdp(model: nn.Module, param_dtype: torch.dtype, reshard_after_forward: bool = True) -> None:
    """FSDP2: one unit per block, then the root (embeddings, patch conv, heads, norms). The last block
    keeps its gathered parameters after forward (torchtitan's choice): the backward starts with it at
    once, so freeing them only to gather them again would be an all-gather for nothing."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    blocks = transformer_blocks(model)
    for position, (_, _, block) in enumerate(blocks, start=1):
        fully_shard(block, mp_policy=policy, reshard_after_forward=reshard_after_forward and position < len(blocks))
    fully_shard(model, mp_policy=policy)


def parallelize(model: nn.Module, parallel: str, *, activation_checkpointing: str = "none", compile: bool = False,
                param_dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> nn.Module:
    """Returns the module to call in training (the model itself, or its DDP wrapper)."""
    apply_activation_checkpointing(model, activation_checkpointing)
    if compile:
        apply_compile(model)
    if parallel == "fsdp":
        apply_fsdp(model, param_dtype)
        return model
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [device] if device is not None and device.type == "cuda" else None
        # Every parameter takes part in every method's loss (OpenVision 2 does not compute the pooled
        # output it never uses; tests/test_backend.py checks each method), so DDP need not search the
        # graph for unused ones after each forward.
        return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=False)
    return model


def no_gradient_sync(wrapped: nn.Module, active: bool):
    """Skip the gradient reduction for a micro-batch that is not the last of its step."""
    if not active:
        return contextlib.nullcontext()
    from torch.distributed.fsdp import FSDPModule
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(wrapped, DistributedDataParallel):
        return wrapped.no_sync()
    if isinstance(wrapped, FSDPModule):
        return _fsdp_no_sync(wrapped)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _fsdp_no_sync(model):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def unwrap(wrapped: nn.Module) -> nn.Module:
    return getattr(wrapped, "module", wrapped)


@torch.no_grad()
def initialize_weights(model: nn.Module) -> None:
    """Initialise a model materialised from the meta device: call reset_parameters() of the outermost
    modules that define one (the encoder's and decoder's own JAX-style initialisations)."""
    def visit(module: nn.Module) -> None:
        if callable(getattr(module, "reset_parameters", None)):
            module.reset_parameters()
            return
        for child in module.children():
            visit(child)

    visit(model)


def materialize(model: nn.Module, device: torch.device) -> None:
    """A model built on the meta device (or its FSDP shards) allocated on `device` and initialised."""
    model.to_empty(device=device)
    initialize_weights(model)
