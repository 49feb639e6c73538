"""The benchmarks run: bench/hog.py's busy processes end with their parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

from bench.hog import Hog

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads processes in /proc")


def alive(pid: int) -> bool:
    """Whether ``pid`` runs: it exists and is not a zombie (ended, not yet reaped by its parent)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def gone(pids: list[int], within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not any(alive(p) for p in pids)


def test_the_hog_spins_one_process_per_core_by_default_until_stopped():
    assert Hog().n == os.cpu_count()
    hog = Hog(2)
    try:
        hog.start()
        pids = hog.pids
        assert len(set(pids)) == 2 and all(alive(p) for p in pids)
        time.sleep(0.3)
        assert all(alive(p) for p in pids)  # they spin, they do not return
    finally:
        hog.stop()
    assert not any(alive(p) for p in pids) and hog.pids == []


def test_the_hog_ends_by_itself_when_its_parent_is_killed():
    code = ("import os, signal; from bench.hog import Hog; hog = Hog(2); hog.start(); "
            "print(*hog.pids, flush=True); os.kill(os.getpid(), signal.SIGKILL)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    pids = [int(p) for p in proc.stdout.split()]
    try:
        assert proc.returncode == -signal.SIGKILL and len(pids) == 2, proc.stderr
        assert gone(pids), "the hog outlived the process that started it"
    finally:
        for p in pids:
            if alive(p):
                os.kill(p, signal.SIGKILL)
