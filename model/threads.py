"""How many CPU threads PyTorch (and ONNX Runtime) use: `--threads N`, else `OMP_NUM_THREADS`, else
the cores this process may use less the ones other work keeps busy.

Why not every core: a matmul split over T threads waits for its slowest thread at every op. On an
idle machine that is one core's share of the work; on a loaded one, a thread whose core another
process holds waits for the scheduler, and every op waits with it (a busy 2-core machine ran `-p`
and training several times slower with two threads than with one). So the default leaves busy
cores alone, judged by the processes running on the machine now (``/proc/loadavg``'s count of
runnable tasks, less this one, the median of a few samples 10 ms apart), of which the share falling
on the cores this process may use (its CPU affinity) is taken as busy. Not the 1-minute load
average: it lags a minute, so it would count the command that just finished in the same shell (a
benchmark, the previous training run) as other work and halve the threads of the next one; it is
the fallback where ``/proc`` is missing. `--threads` and `OMP_NUM_THREADS` override the guess.
"""

from __future__ import annotations

import os
import time


def default_threads(load: float, cores: int, machine_cores: int | None = None) -> int:
    """Threads for ``cores`` usable cores when the machine's 1-minute load average is ``load`` over
    ``machine_cores`` (default: ``cores``): the usable cores minus their share of the load, rounded
    to the nearest, at least 1. An idle machine gets every core; a core more than half busy is left
    alone."""
    machine = max(machine_cores or cores, cores)
    busy = max(0.0, load) * cores / machine  # the load on our cores, as if spread evenly
    return max(1, min(cores, int(cores - busy + 0.5)))


def usable_cores() -> int:
    """The cores this process may run on (its affinity, which containers and taskset narrow)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def asked_threads(asked: int | None = None) -> int | None:
    """The threads someone asked for: ``asked`` (a --threads flag), else a valid ``OMP_NUM_THREADS``
    (which PyTorch itself follows), else None."""
    if asked is not None:
        return asked
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(env) if env.isdigit() and int(env) > 0 else None


def running_others(samples: int = 5, path: str = "/proc/loadavg") -> float | None:
    """How many other tasks are runnable right now: the median over ``samples`` reads of the
    running count in /proc/loadavg ("0.20 0.18 0.12 3/80 11206": 3 runnable, this process one
    of them), less this process; None where the file is missing (not Linux)."""
    counts = []
    for i in range(samples):
        try:
            with open(path, encoding="ascii") as f:
                running = int(f.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return None
        counts.append(max(0, running - 1))
        if i + 1 < samples:
            time.sleep(0.01)
    return float(sorted(counts)[len(counts) // 2])


def choose_threads(asked: int | None = None) -> int:
    """``asked_threads``, else ``default_threads`` on what runs on this machine now."""
    explicit = asked_threads(asked)
    if explicit is not None:
        return explicit
    load = running_others()
    if load is None:  # no /proc: the 1-minute load average, or nothing (Windows has neither)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return default_threads(load, usable_cores(), os.cpu_count())


def set_threads(asked: int | None = None) -> int:
    """Give PyTorch's CPU ops ``choose_threads(asked)`` threads; that number."""
    import torch  # here: the CLIs call this after parsing, so --help never imports torch

    threads = choose_threads(asked)
    torch.set_num_threads(threads)
    return threads
