"""Data-parallel training under ``torchrun``: which rank this process is, its process group, the
few collectives the training loop needs, and the two ways of spreading a model over ranks: DDP
(every rank holds the whole model) or FSDP2 (``--fsdp``: each rank holds 1/N of the parameters,
gradients and optimizer state, gathering a block's weights just before it runs).

``torchrun`` (or, on one machine, ``python -m model.train.distributed``: ``launch_local``) starts one
process per device and tells each its place through environment variables (RANK, LOCAL_RANK,
WORLD_SIZE, MASTER_ADDR/PORT). Without them, or with a world of one, nothing here does anything: a
single process trains without a process group and without DDP.

torch.distributed has no authentication: whoever reaches its ports can join or disrupt a run.
torchrun's agent listens on every interface whatever its flags; ``launch_local`` keeps every
socket of a single-machine run on the loopback interface.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as tdist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from model.gpt import GPT

# How long a collective may wait for a slow (or stopped) rank before failing. Ranks meet at every
# optimizer step; the longest gap is rank 0 writing a checkpoint, seconds even for GPT-2 small. A
# rank that dies is noticed sooner: the launcher stops the others as soon as one exits non-zero.
TIMEOUT = timedelta(minutes=10)
TIMEOUT_ENV = "GPT_DIST_TIMEOUT"  # seconds, to change it


def timeout() -> timedelta:
    """TIMEOUT, or the seconds in $GPT_DIST_TIMEOUT."""
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None:
        return TIMEOUT
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds <= 7 * 24 * 3600:
        raise ValueError(f"{TIMEOUT_ENV} must be a number of seconds above 0, not {raw!r}")
    return timedelta(seconds=seconds)

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
    tdist.init_process_group(backend, timeout=timeout(), device_id=device if device.type == "cuda" else None)
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


def shard(model: torch.nn.Module, dist: Dist, amp_dtype: torch.dtype) -> torch.nn.Module:
    """FSDP2: each block is its own unit (its weights are gathered just before it runs and freed
    after), the embeddings, final LayerNorm and head one more. Parameters stay fp32 shards (the
    optimizer's master copy); with a lower ``amp_dtype`` they are gathered and computed in it, and
    gradients are reduced in fp32. Shards in place and returns the same module; call it before the
    optimizer is made, since it replaces the parameters. A single process gets the model back."""
    if not dist.enabled:
        return model
    policy = MixedPrecisionPolicy(param_dtype=None if amp_dtype == torch.float32 else amp_dtype,
                                  reduce_dtype=torch.float32)
    for block in model.blocks if isinstance(model, GPT) else []:  # the bigram is one unit
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def grad_sync(module: torch.nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """Micro-steps that only accumulate skip the gradient all-reduce (DDP) or reduce-scatter
    (FSDP); the last one averages the sum."""
    if isinstance(module, FSDPModule):
        module.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()
    if sync or not isinstance(module, DistributedDataParallel):
        return contextlib.nullcontext()
    return module.no_sync()


# gather every shard to rank 0's CPU; the other ranks get empty dicts (and no copy in memory)
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(model state, optimizer state) as one process holds them, so that a checkpoint of a sharded
    run loads in a single process. Under FSDP a collective (every rank calls it): the full tensors
    arrive on rank 0 only, and the optimizer state is keyed by parameter name."""
    if not is_sharded(model):
        return model.state_dict(), optimizer.state_dict()
    return get_model_state_dict(model, options=FULL), get_optimizer_state_dict(model, optimizer, options=FULL)


def load_optimizer(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Restore optimizer state saved by full_state: a plain state dict, or a sharded run's (keyed by
    parameter name), which each rank cuts to its own shards."""
    by_name = any(isinstance(p, str) for g in state.get("param_groups", []) for p in g["params"])
    if is_sharded(model) or by_name:
        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(state)


def item(value: torch.Tensor) -> float:
    """A scalar as a float; under FSDP the gradient norm is a replicated DTensor."""
    return (value.full_tensor() if isinstance(value, DTensor) else value).item()


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
    """Did a collective fail because another rank went away or stopped answering? NCCL raises
    DistError; gloo raises a plain RuntimeError naming the closed connection or the timeout."""
    text = str(error)
    return isinstance(error, tdist.DistError) or (
        isinstance(error, RuntimeError)
        and any(s in text for s in ("closed by peer", "reset by peer", "Timed out", "timed out"))
    )


def launch_local(nproc: int, command: Sequence[str], grace: float = 5.0) -> int:
    """Run ``python COMMAND`` as ``nproc`` ranks on this machine, every socket on loopback: the
    rendezvous store is bound to 127.0.0.1 here and handed to the ranks (as torchrun's agent store
    is), and gloo/NCCL are told to use the loopback interface. When one rank fails the others are
    stopped (SIGTERM, then SIGKILL after ``grace`` s, which also ends a stopped one). Returns the
    first non-zero exit code, or 0."""
    if nproc < 1:
        raise ValueError(f"--nproc-per-node must be at least 1, not {nproc}")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    store = tdist.TCPStore("127.0.0.1", port, world_size=nproc, is_master=True, wait_for_workers=False,
                           master_listen_fd=listener.detach(), timeout=timeout())  # the store owns it
    loopback = "lo0" if sys.platform == "darwin" else "lo"
    base = os.environ | {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(nproc),
                         "LOCAL_WORLD_SIZE": str(nproc), "TORCHELASTIC_USE_AGENT_STORE": "True"}
    for name in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
        base.setdefault(name, loopback)
    base.setdefault("OMP_NUM_THREADS", "1")  # as torchrun: N processes share the cores
    ranks = [subprocess.Popen([sys.executable, *command], env=base | {"RANK": str(r), "LOCAL_RANK": str(r)})
             for r in range(nproc)]
    previous = signal.signal(signal.SIGTERM, _interrupt)  # stopping the launcher stops its ranks
    try:
        code = 0
        while code == 0 and any(p.poll() is None for p in ranks):
            code = next((p.returncode for p in ranks if p.returncode not in (None, 0)), 0)
            time.sleep(0.1)
        code = code or next((p.returncode for p in ranks if p.returncode), 0)
    except KeyboardInterrupt:  # Ctrl+C (the terminal sent SIGINT to the ranks too) or SIGTERM
        code = 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    _stop(ranks, grace)
    del store  # closes the listening socket
    return code if code >= 0 else 128 - code  # killed by signal N -> 128 + N, as a shell says


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _stop(ranks: list[subprocess.Popen], grace: float) -> None:
    for p in ranks:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            p.send_signal(signal.SIGCONT)  # a stopped rank must run to act on it
    deadline = time.monotonic() + grace
    for p in ranks:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main(argv: Sequence[str] | None = None) -> None:
    """python -m model.train.distributed --nproc-per-node N -m model.train.cli [gpt-train flags]"""
    args = list(sys.argv[1:] if argv is None else argv)
    usage = "usage: python -m model.train.distributed --nproc-per-node N -m model.train.cli [flags]"
    if len(args) < 3 or args[0] != "--nproc-per-node" or not args[1].isdigit():
        sys.exit(usage)
    try:
        sys.exit(launch_local(int(args[1]), args[2:]))
    except ValueError as e:
        sys.exit(f"Error: {e}")


if __name__ == "__main__":
    main()
