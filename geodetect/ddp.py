"""torch.distributed helpers for training on several GPUs (or CPU processes).

`torchrun --nproc-per-node N -m geodetect train …` sets RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT; `train` then runs inside `distributed(device)`, which starts the
process group (nccl on CUDA, gloo on CPU), gives each rank its own GPU, and tears it down.
Every rank draws its own chips (seeded by rank), DDP averages the gradients, and only rank 0
writes files. Without WORLD_SIZE > 1 all of this is a no-op, so one code path serves both.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from geodetect.errors import DeviceError

TIMEOUT = datetime.timedelta(minutes=30)  # a rank stuck longer than this aborts the job


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files and prints progress."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_info() -> DistInfo:
    """The job layout from torchrun's environment (one process: rank 0 of 1)."""
    try:
        return DistInfo(
            int(os.environ.get("RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)),
        )
    except ValueError:
        return DistInfo()


def info() -> DistInfo:
    """The running group's layout, or the environment's when no group is up."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), env_info().local_rank)
    return env_info()


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def rank_device(device: torch.device, local_rank: int) -> torch.device:
    """Each rank on its own GPU (cuda:LOCAL_RANK); CPU ranks share the CPU."""
    if device.type != "cuda":
        return device
    n = torch.cuda.device_count()
    if local_rank >= n:
        raise DeviceError(
            f"rank {local_rank} needs GPU {local_rank} but only {n} are visible; "
            "use --nproc-per-node no larger than the number of GPUs"
        )
    return torch.device("cuda", local_rank)


@contextlib.contextmanager
def distributed(device: torch.device) -> Iterator[tuple[DistInfo, torch.device]]:
    """Run the body in the process group torchrun describes; yields (info, this rank's device).

    A group started by the caller (tests, notebooks) is used as is and left running.
    """
    env = env_info()
    if not env.enabled or not dist.is_available():
        yield DistInfo(), device
        return
    dev = rank_device(device, env.local_rank)
    if dist.is_initialized():
        yield info(), dev
        return
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend_for(dev), init_method="env://", timeout=TIMEOUT)
    try:
        yield info(), dev
    finally:
        dist.destroy_process_group()


def wrap_model(net: torch.nn.Module, device: torch.device, **kwargs: Any) -> torch.nn.Module:
    """DDP-wrap a model when a group is running (gradients averaged across ranks)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return net
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else 0] if device.type == "cuda" else None
    return DistributedDataParallel(net, device_ids=ids, **kwargs)


def unwrap(net: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside a DDP wrapper (what the checkpoint saves)."""
    return getattr(net, "module", net)


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_mean(value: float | torch.Tensor, device: torch.device) -> float:
    """Mean of a scalar over ranks (losses and metrics for logging and early decisions)."""
    t = torch.as_tensor(value, dtype=torch.float64).detach().reshape(1).clone()
    if not _active():
        return float(t)
    return float(all_reduce_sum(t, device)) / dist.get_world_size()


def all_reduce_sum(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Element-wise sum over ranks (e.g. counts), reduced on the run's `device` (NCCL takes
    only CUDA tensors); the result comes back on `t`'s device."""
    if not _active():
        return t
    work = t.to(device)
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(t.device)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s picklable object on every rank (e.g. the validation split or metrics)."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    """Wait for every rank (before rank 0 writes files the others then read)."""
    if _active():
        dist.barrier()


def rank_seed(seed: int, rank: int | None = None) -> int:
    """A per-rank seed, so ranks draw different chips but a rerun draws the same ones."""
    r = info().rank if rank is None else rank
    return int(seed) + 1_000_003 * r
