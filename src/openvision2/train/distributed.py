"""Who am I in the job: torchrun's RANK / WORLD_SIZE / LOCAL_RANK, the process group and the device.

A plain `ov2 train` has no torchrun variables and runs as rank 0 of 1 without a process group.
Under `torchrun` (one node or many, or srun + torchrun under SLURM) the group is initialised with
nccl on GPUs and gloo on CPUs.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import UserError
from ..host_group import host_group


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def restart_count(self) -> int:
        """How many times torchrun's elastic agent has restarted this job (0 on the first attempt)."""
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def rank_device(local_rank: int, device_count: int, visible: str | None = None) -> torch.device:
    """This rank's GPU: one per local rank. More ranks than GPUs on a node would put two ranks on one
    GPU (each then has half its memory and both are slow): refused in one line. One visible GPU under
    CUDA_VISIBLE_DEVICES (`visible`) is a launcher binding each process to its own GPU: that one."""
    if device_count == 1 and visible:
        return torch.device("cuda", 0)
    if local_rank >= device_count:
        raise UserError(f"LOCAL_RANK {local_rank} has no GPU of its own: this node has {device_count} GPU(s); "
                        f"start at most {device_count} processes per node (torchrun --nproc_per_node={device_count})")
    return torch.device("cuda", local_rank)


def init_world() -> World:
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = rank_device(local_rank, torch.cuda.device_count(), os.environ.get("CUDA_VISIBLE_DEVICES"))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        backend, timeout = "nccl" if device.type == "cuda" else "gloo", datetime.timedelta(minutes=30)
        dist.init_process_group(backend, timeout=timeout, store=_attempt_store(world_size, timeout), rank=rank,
                                world_size=world_size, device_id=device if device.type == "cuda" else None)
    return World(rank, world_size, local_rank, device)


def _attempt_store(world_size: int, timeout: datetime.timedelta) -> dist.Store | None:
    """Under torchrun, the agent's store seen through this attempt's prefix. The agent keeps one store
    for all its restarts (torch 2.14): without the prefix, restarted workers can read the addresses
    their killed predecessors published and fail to connect ("Connection refused" in gloo's mesh)."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != str(True):
        return None  # env:// as usual (srun, a hand-set MASTER_ADDR, or torchrun's non-shared store)
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size, is_master=False,
                          timeout=timeout)
    return dist.PrefixStore(f"attempt-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def all_reduce_sum(tensor: torch.Tensor, world: World) -> torch.Tensor:
    if world.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_host(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """Sum a CPU tensor over ranks on the host: its values can be read at once, with no device sync."""
    if world.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=host_group())
    return tensor


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def broadcast_object(value, world: World):
    """Rank 0's value on every rank (for small Python objects: an error message, a decision)."""
    if not world.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
