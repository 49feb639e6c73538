"""Keep freed memory in the process: glibc's malloc tuned for tensors that come and go every step.

A training step on the CPU allocates the same large activations (tens of MB each: a 6 x 384 model at
batch 64 x 256 holds 50 MB of attention scores per layer) and frees them again, hundreds of times a
step. glibc serves any block above its mmap threshold (at most 32 MiB, adjusted on the fly) with a
fresh ``mmap`` and gives it back with ``munmap`` when freed, and trims the heap's top whenever more
than 128 KiB is free. So every step maps its activations anew and the kernel zero-fills them page by
page: a third of the step went to page faults (``sys`` time) on a 2-core CPU. Raising both
thresholds keeps the freed blocks in the heap, where the next step finds them. The price is a
process that holds on to its high-water mark, which a training run reaches at its first step anyway.

PyTorch's own CPU allocator does no caching (unlike its CUDA one), so this is the layer to tune. Two
ways: ``GLIBC_TUNABLES`` read by glibc as the process starts, or ``mallopt`` called while it runs.
Only the first holds fully: set after start-up, freed blocks above 32 MiB still went back to the
system on some steps (half the page faults remained). So ``gpt-train`` starts itself again with the
tunables set (``relaunch_tuned``, before any work: the same process id, arguments and streams),
and ``keep_freed_memory`` is the in-process fallback that library callers of model.train.loop get.
Elsewhere (macOS, musl, Windows) nothing is changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform
import sys

# mallopt's parameter numbers, from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30  # blocks below 1 GiB come from the heap
TRIM_THRESHOLD = (1 << 31) - 1  # an int: never trim the heap's top (it is reused next step)


TUNABLES = f"glibc.malloc.mmap_threshold={MMAP_THRESHOLD}:glibc.malloc.trim_threshold={TRIM_THRESHOLD}"


def _glibc() -> bool:
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def tuned() -> bool:
    """Whether this process started with the tunables (or the user's own malloc tunables)."""
    return "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")


def relaunch_tuned() -> None:
    """Replace this process by the same command with the tunables set; returns only where there is
    nothing to do (not glibc, or already tuned, including by the user) or the exec failed."""
    if not _glibc() or tuned() or not sys.executable:
        return
    env = dict(os.environ)
    env["GLIBC_TUNABLES"] = ":".join(filter(None, (env.get("GLIBC_TUNABLES"), TUNABLES)))
    sys.stdout.flush()
    sys.stderr.flush()
    try:  # orig_argv: the interpreter's own flags and the script or -m module, as first started
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError:
        return


@functools.cache
def keep_freed_memory() -> bool:
    """Tune glibc's malloc from inside the process, once -> whether it took effect (or the process
    started tuned)."""
    if tuned():
        return True
    if not _glibc():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt returns 1 on success; older glibc refuses thresholds above 32 MiB, so fall back to that
    mmap_ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 or mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1
    return mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and mmap_ok
