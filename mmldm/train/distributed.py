"""Running one training on several processes with ``torchrun`` (DistributedDataParallel).

    torchrun --nproc_per_node=4 -m mmldm train-ldm --config paper

``torchrun`` starts N copies of the program and sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``
in each; :func:`setup` reads them, joins the process group (NCCL on CUDA, gloo on the CPU) and
picks this process's device. Without those variables it does nothing and training runs in one
process, so the same code serves a laptop and a GPU node.

What keeps N processes training one model (the rules the trainers follow):

- every process builds the model from the same seed, and DDP broadcasts rank 0's weights when it
  wraps the model; after that, each backward all-reduces (averages) the gradients, so every
  optimiser step is the same on every rank and the weights stay identical;
- the data is sharded by a DistributedSampler (same seed everywhere, ``set_epoch`` each epoch):
  together the ranks see each image of an epoch once;
- noise, timesteps and condition dropout come from per-rank generators (different streams);
- the VQ codebook's EMA statistics and dead-code restarts are all-reduced / broadcast inside the
  quantiser (``mmldm.models.quantizer``), because they are updated outside the optimiser;
- rank 0 alone writes checkpoints, logs and figures, between two barriers, so no rank runs ahead
  into a file another is still writing.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    """Where this process stands: its rank among ``world_size`` processes and its device."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and shows progress."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(device: str | None = None) -> Dist:
    """Join the process group if started by ``torchrun``; pick the device either way.

    ``device`` forces one ("cpu", "cuda", "cuda:N"); by default CUDA when available. Under torchrun each
    process takes GPU ``LOCAL_RANK``. Calling it again in a process that has joined already
    returns the same answer.
    """
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if not launched_by_torchrun():  # "cuda:N" picks GPU N; under torchrun each process takes LOCAL_RANK
        return Dist(device=torch.device(device if use_cuda and device else "cuda" if use_cuda else "cpu"))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(
            "nccl" if use_cuda else "gloo", rank=rank, world_size=world, timeout=datetime.timedelta(minutes=30)
        )
    return Dist(rank, local, world, torch.device(f"cuda:{local}" if use_cuda else "cpu"))


def cleanup() -> None:
    """Leave the process group (end of training)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@contextlib.contextmanager
def rank0_writes(d: Dist):
    """``with rank0_writes(d): if d.is_main: write()``: barriers on both sides, so no rank runs
    ahead into a file rank 0 is still writing."""
    barrier()
    try:
        yield
    finally:
        barrier()


def all_mean(values: dict[str, float], d: Dist) -> dict[str, float]:
    """Average a dict of numbers over the ranks (for logging); every rank must call it."""
    if not d.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return {k: float(v) / d.world_size for k, v in zip(keys, t.tolist())}


def gather_objects(obj, d: Dist) -> list:
    """Every rank's ``obj`` (picklable) on every rank, in rank order."""
    if not d.enabled:
        return [obj]
    out = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out
