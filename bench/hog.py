"""A CPU hog for benchmarks: busy processes that stand in for the other work on a shared machine.

Each is a child Python spinning on integer arithmetic (no memory traffic to speak of, so it takes
cores, not bandwidth, from what is measured). It stops by itself once its parent is gone: it polls
``os.getppid()`` every few milliseconds, and a parent that dies, however it dies (SIGKILL
included), leaves it with another parent. ``stop()`` ends them while the parent lives; a ``with``
block (or a ``try``/``finally`` around ``start()``) calls it on any exit, Ctrl+C included.
"""

from __future__ import annotations

import os
import subprocess
import sys

# argv[1] is the parent's pid; the inner loop is a few milliseconds of work between polls
SPIN = """\
import os, sys
parent = int(sys.argv[1])
x = 0
while os.getppid() == parent:
    for i in range(20000):
        x = (x * 31 + i) % 1000003
"""


class Hog:
    """``n`` busy processes (default: one per core of the machine) while started."""

    def __init__(self, n: int | None = None):
        self.n = n if n is not None else os.cpu_count() or 1
        self.procs: list[subprocess.Popen] = []

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def start(self) -> None:
        """Start the processes (no-op when they run)."""
        if self.procs:
            return
        try:
            for _ in range(self.n):
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-c", SPIN, str(os.getpid())], stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """End the processes and reap them (no-op when none run)."""
        for p in self.procs:
            p.kill()  # they hold nothing worth a graceful end
        for p in self.procs:
            p.wait()
        self.procs = []

    def __enter__(self) -> Hog:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
