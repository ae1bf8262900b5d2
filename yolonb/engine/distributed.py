"""Data-parallel training of one run under torchrun: process group, device, batch split and collectives.

torchrun starts one process per device and describes the job in the environment
(WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). Without those variables, or with
WORLD_SIZE=1, every helper here falls back to plain single-process training.

Rules of a distributed run:
- `batch_size` is the global batch. Each process trains on batch_size / world_size images
  per step, so the learning rate stays as the profile sets it.
- Rank 0 alone evaluates and writes the run folder; the other ranks wait for it and
  receive its metrics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist

from yolonb.config import ConfigError, RunConfig

logger = logging.getLogger(__name__)

# Ranks other than 0 wait in a collective while rank 0 evaluates and saves a checkpoint.
# The default timeout (10 minutes for NCCL) could expire during a full VOC evaluation on a
# slow GPU, so the group allows an hour.
GROUP_TIMEOUT = datetime.timedelta(minutes=60)


def environment_world_size() -> int:
    """Return WORLD_SIZE from the environment (1 when unset), as torchrun sets it."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@dataclass(frozen=True)
class ProcessGroup:
    """The place of this process in a data-parallel run; world_size 1 means single-process training."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local_batch_size(self, batch_size: int) -> int:
        """Return the per-process share of the global `batch_size`.

        Raises:
            ConfigError: batch_size is not a multiple of the number of processes.
        """
        if batch_size % self.world_size:
            raise ConfigError(
                f"RunConfig.batch_size: {batch_size} does not split evenly over {self.world_size} processes; "
                f"batch_size is the global batch, so set it to a multiple of {self.world_size}"
            )
        return batch_size // self.world_size

    def place(self, runtime):
        """Return `runtime` with its device set to this process's GPU (cuda:LOCAL_RANK) in a CUDA run."""
        if not self.enabled or runtime.device.type != "cuda":
            return runtime
        device = torch.device("cuda", self.local_rank)
        torch.cuda.set_device(device)
        return dataclasses.replace(runtime, device=device)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """Wrap `model` in DistributedDataParallel, which averages the gradients of all processes.

        BatchNorm layers keep per-process batch statistics; DDP copies rank 0's running
        statistics to the other ranks at every forward pass.
        """
        if not self.enabled:
            return model
        device = next(model.parameters()).device
        device_ids = [device.index] if device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def mean(self, values: Sequence[float], device: torch.device) -> list[float]:
        """Return the mean of `values` over all processes, element-wise (one all-reduce)."""
        if not self.enabled:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        # Gloo has no AVG reduction, so sum and divide.
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return (tensor / self.world_size).tolist()

    def broadcast(self, value: Any) -> Any:
        """Return rank 0's `value` on every process (a picklable object)."""
        if not self.enabled:
            return value
        holder = [value if self.is_main else None]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def _backend(config: RunConfig) -> str:
    uses_cuda = config.device.startswith("cuda") or (config.device == "auto" and torch.cuda.is_available())
    if uses_cuda and ":" in config.device:
        raise ConfigError(
            f"RunConfig.device: {config.device!r} names one GPU, but torchrun gives each process its own "
            f"(cuda:LOCAL_RANK); use device='cuda' or 'auto' in a torchrun run"
        )
    return "nccl" if uses_cuda else "gloo"


@contextlib.contextmanager
def process_group(config: RunConfig) -> Iterator[ProcessGroup]:
    """Join the process group that torchrun describes in the environment, for the duration of one run.

    Outside torchrun this yields the single-process group. A process group that the caller
    already initialised (torch.distributed.init_process_group) is used as it is and left
    open; one initialised here is destroyed on exit.

    Raises:
        ConfigError: the device names one GPU (cuda:N) while torchrun assigns one per process.
    """
    if not dist.is_initialized() and environment_world_size() <= 1:
        yield ProcessGroup()
        return

    created = False
    if not dist.is_initialized():
        backend = _backend(config)
        dist.init_process_group(backend=backend, timeout=GROUP_TIMEOUT)
        created = True
    group = ProcessGroup(
        rank=dist.get_rank(),
        local_rank=int(os.environ.get("LOCAL_RANK", dist.get_rank())),
        world_size=dist.get_world_size(),
        backend=dist.get_backend(),
    )
    logger.debug("process %d of %d joined the %s group", group.rank, group.world_size, group.backend)
    try:
        yield group
    finally:
        if created:
            dist.destroy_process_group()
