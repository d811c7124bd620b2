"""Process-group set-up for multi-process training under `torchrun` (DDP)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Processes:
    """This process's place in a torchrun group (rank 0 of 1 when running alone).

    Parameters
    ----------
    rank : int
        This process's rank.
    world : int
        Processes in the group.
    device : torch.device
        This process's device.
    owns_group : bool
        This process created the group (and destroys it in `stop`).
    """
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # we created the process group, so we destroy it

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the process that writes."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Whether a process group of more than one process runs."""
        return self.world > 1


def start(device: str = "cpu") -> Processes:
    """Join the process group that torchrun describes in the environment (WORLD_SIZE > 1), if any.

    gloo on CPU, nccl on CUDA; each process takes the GPU of its LOCAL_RANK.

    Parameters
    ----------
    device : str
        "cpu", "cuda" or "cuda:N".

    Returns
    -------
    Processes
        This process's place.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and not dist.is_initialized():
        return Processes(device=torch.device(device))
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
        owns = True
    rank, world = dist.get_rank(), dist.get_world_size()
    target = torch.device(device)
    if target.type == "cuda":
        target = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
        torch.cuda.set_device(target)
    return Processes(rank=rank, world=world, device=target, owns_group=owns)


def gather_objects(processes: Processes, value: Any) -> list[Any]:
    """Every process's `value`, in rank order.

    Parameters
    ----------
    processes : Processes
        This process's place in the group.
    value : object
        A picklable value.

    Returns
    -------
    list
        One value per rank ([value] when running alone).
    """
    if not processes.active:
        return [value]
    gathered: list[Any] = [None] * processes.world
    dist.all_gather_object(gathered, value)
    return gathered


def any_process(processes: Processes, flag: bool) -> bool:
    """Whether `flag` is True in at least one process (keeps stop decisions in step).

    Parameters
    ----------
    processes : Processes
        This process's place in the group.
    flag : bool
        This process's flag.

    Returns
    -------
    bool
        The flags OR-ed over the group.
    """
    if not processes.active:
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item() > 0)


def barrier(processes: Processes) -> None:
    """Wait until every process gets here (a no-op when running alone).

    Parameters
    ----------
    processes : Processes
        This process's place in the group.
    """
    if processes.active:
        dist.barrier()


def stop(processes: Processes) -> None:
    """Leave the process group, when this process created it.

    Parameters
    ----------
    processes : Processes
        This process's place in the group.
    """
    if processes.owns_group and dist.is_initialized():
        dist.destroy_process_group()
