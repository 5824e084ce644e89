"""DistributedDataParallel helpers: torchrun environment, process group, DDP wrap, reductions.

Launch with torchrun; every rank runs the same script and the :class:`~covseg_fast.train.Trainer`
picks the process group up by itself::

    torchrun --nproc_per_node 4 -m covseg_fast.cli.main train --model refnet --data DIR --out runs/r1

NCCL on CUDA (one GPU per rank, ``cuda:LOCAL_RANK``), gloo on CPU. Each rank sees its own share of
every epoch (:class:`~covseg_fast.train.batching.EpochSampler`); gradients are averaged by DDP; only
rank 0 writes checkpoints, the history and the progress bar; validation is sharded and all-reduced.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import os
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DistInfo:
    """This process's place in the job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when torchrun (or another launcher) set WORLD_SIZE > 1 in the environment."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(backend: Optional[str] = None, timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group described by the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT); a no-op returning rank 0 of 1 when WORLD_SIZE is unset or 1.

    ``backend`` defaults to "nccl" when CUDA is available, else "gloo". On CUDA the current device
    is set to ``cuda:LOCAL_RANK``.
    """
    if dist.is_available() and dist.is_initialized():
        return dist_info()
    if not launched_by_torchrun():
        return DistInfo()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    info = dist_info()
    log.info("distributed: rank %d of %d (%s)", info.rank, info.world_size, backend)
    return info


def dist_info() -> DistInfo:
    """The current process group's rank / world size (rank 0 of 1 when none is initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(),
                    local_rank=int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def wrap_ddp(model: nn.Module, device: torch.device, find_unused_parameters: bool = False) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel (device_ids set on CUDA); rank 0's weights and
    buffers are broadcast to every rank at construction."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return DDP(model, device_ids=[index], output_device=index, find_unused_parameters=find_unused_parameters)
    return DDP(model, find_unused_parameters=find_unused_parameters)


def all_reduce_sum(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Sum ``t`` over ranks (moved to ``device`` for NCCL, back to t's device after); identity when
    not distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return t
    work = t.to(device) if dist.get_backend() == "nccl" else t.clone()
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(t.device)


def broadcast_buffers(model: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) to every rank. DDP broadcasts them at
    the start of each forward, so after the last step of an epoch they differ per rank; syncing them
    before validation and checkpointing makes every rank hold rank 0's model. No-op when not distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    for buf in model.buffers():
        if dist.get_backend() != "nccl" or buf.is_cuda:
            dist.broadcast(buf.data, src)


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group if one is initialised."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
