"""The process group for small host-side sums (token counts, stop flags, bad-sample counters).

Under NCCL a collective on a CPU tensor is not possible and one on a device tensor makes the host wait
for the GPU when its value is read; a gloo group beside NCCL sums host values with no device sync. On
CPUs the default (gloo) group already does. Made once per default group, by every rank at the same
point of the program (creating a group is a collective), on first use."""

from __future__ import annotations

import torch.distributed as dist

_GLOO_BESIDE: dict = {}  # id(default group) -> its gloo twin


def host_group():
    """The group to sum CPU tensors over (None = the default group)."""
    if dist.get_backend() == "gloo":
        return None
    world = id(dist.group.WORLD)
    if world not in _GLOO_BESIDE:
        _GLOO_BESIDE.clear()  # a new default group (a re-initialised run): the old twin is gone with it
        _GLOO_BESIDE[world] = dist.new_group(backend="gloo")
    return _GLOO_BESIDE[world]
