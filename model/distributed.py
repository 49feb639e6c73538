"""Data-parallel training under ``torchrun``: which rank this process is, its process group, and
the few collectives the training loop needs.

``torchrun`` starts one process per device and tells each its place through environment variables
(RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT). Without them, or with a world of one, nothing
here does anything: a single process trains without a process group and without DDP.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as tdist
from torch.nn.parallel import DistributedDataParallel

# How long a collective may wait for a slow rank before failing. Ranks meet at every optimizer
# step; the longest gap is rank 0 writing a checkpoint, seconds even for GPT-2 small. A rank that
# dies is noticed sooner: torchrun stops the others as soon as a worker exits non-zero.
TIMEOUT = timedelta(minutes=10)

# Rank r samples with seed + r * RANK_STRIDE: rank 0 keeps the run seed (a single process is
# unchanged) and no rank lands on seed + 1, which evaluation uses.
RANK_STRIDE = 1_000_003


@dataclass(frozen=True)
class Dist:
    """This process's place in the run."""

    rank: int = 0  # across all nodes
    local_rank: int = 0  # on this node: which GPU to use
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, shows the progress bar and writes files."""
        return self.rank == 0


SINGLE = Dist()


def from_env() -> Dist:
    """The rank torchrun assigned, or a single process when not launched by torchrun."""
    if "WORLD_SIZE" not in os.environ:
        return SINGLE
    try:
        dist = Dist(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"]))
    except (KeyError, ValueError) as e:
        raise ValueError(
            f"WORLD_SIZE is set but RANK/LOCAL_RANK are missing or not integers ({e}); "
            "launch distributed runs with torchrun"
        ) from None
    if not 0 <= dist.rank < dist.world_size:
        raise ValueError(f"RANK {dist.rank} is outside WORLD_SIZE {dist.world_size}; launch with torchrun")
    return dist


def device_for(dist: Dist, device: torch.device) -> torch.device:
    """One GPU per process (cuda:LOCAL_RANK); CPU ranks share the machine."""
    if not dist.enabled or device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ValueError(f"distributed training runs on cuda (NCCL) or cpu (gloo), not {device.type}; "
                         "pass --device cuda or --device cpu")
    if dist.local_rank >= torch.cuda.device_count():
        raise ValueError(f"LOCAL_RANK {dist.local_rank} but only {torch.cuda.device_count()} GPUs are "
                         "visible; --nproc-per-node must not exceed the GPUs on each node")
    return torch.device("cuda", dist.local_rank)


@contextlib.contextmanager
def process_group(dist: Dist, device: torch.device) -> Iterator[None]:
    """Join the run's process group (NCCL on CUDA, gloo on CPU) and always leave it, so a failing
    rank closes its connections instead of leaving the others waiting."""
    if not dist.enabled:
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    tdist.init_process_group(backend, timeout=TIMEOUT, device_id=device if device.type == "cuda" else None)
    try:
        yield
        tdist.barrier()  # nobody leaves while rank 0 is still writing the last checkpoint
    finally:
        tdist.destroy_process_group()


@contextlib.contextmanager
def local_main_first(dist: Dist) -> Iterator[None]:
    """Local rank 0 of each node goes first (downloads into the shared cache), the rest follow."""
    if dist.enabled and dist.local_rank != 0:
        tdist.barrier()
    yield
    if dist.enabled and dist.local_rank == 0:
        tdist.barrier()


def rank_seed(seed: int, rank: int) -> int:
    return seed + rank * RANK_STRIDE


def batch_generator(seed: int, rank: int = 0) -> torch.Generator:
    """The training-batch sampler of ``rank``. A run of W ranks with batch B sees, each step, the
    same windows as one process with batch W*B whose batch is rank 0's, then rank 1's, ..."""
    return torch.Generator().manual_seed(rank_seed(seed, rank))


def wrap(model: torch.nn.Module, dist: Dist, device: torch.device) -> torch.nn.Module:
    """DDP averages gradients across ranks during backward; a single process gets the model back."""
    if not dist.enabled:
        return model
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    # The only buffer is the constant causal mask: no need to re-broadcast it every forward. Set
    # after construction because torch 2.13 renamed the keyword and older releases lack the new one.
    ddp.broadcast_buffers = False
    return ddp


def grad_sync(module: torch.nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """Micro-steps that only accumulate skip DDP's all-reduce; the last one averages the sum."""
    if sync or not isinstance(module, DistributedDataParallel):
        return contextlib.nullcontext()
    return module.no_sync()


def mean(value: torch.Tensor, dist: Dist) -> torch.Tensor:
    """The mean of a tensor over ranks (every rank gets it). Gloo has no AVG, so sum and divide."""
    if not dist.enabled:
        return value
    value = value.clone()
    tdist.all_reduce(value, op=tdist.ReduceOp.SUM)
    return value / dist.world_size


def gather(obj: object, dist: Dist) -> list | None:
    """Every rank's ``obj`` as a list on rank 0 (None elsewhere); a collective, so all ranks call it."""
    if not dist.enabled:
        return [obj]
    out = [None] * dist.world_size if dist.is_main else None
    tdist.gather_object(obj, out, dst=0)
    return out


def lost_peer(error: BaseException) -> bool:
    """Did a collective fail because another rank went away? NCCL raises DistError; gloo raises a
    plain RuntimeError naming the closed connection."""
    text = str(error)
    return isinstance(error, tdist.DistError) or (
        isinstance(error, RuntimeError) and ("closed by peer" in text or "reset by peer" in text)
    )
