"""A run's folder (``--out``): one run at a time, never replaced by accident, tidy after a crash.

OUT holds ``ckpt.pt`` (the full state at the last evaluation), ``best.pt`` (the weights alone at the
evaluation with the lowest val loss so far: what to ship when a long run ends past its best, as
nanoGPT keeps with ``always_save_checkpoint=False``), ``metrics.jsonl`` (one JSON row per logged
step and per evaluation) and ``.lock``, which a running gpt-train holds with ``flock``:
the kernel drops the lock when the process ends, however it ends, so a lock left by a killed run
never blocks the next one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from model.atomic import atomic_write, take_flock, temp_files
from model.train.config import SettingsError

CKPT = "ckpt.pt"
BEST = "best.pt"
METRICS = "metrics.jsonl"
LOCK = ".lock"


class RunLockedError(RuntimeError):
    """Another process is training into the same folder."""


@contextmanager
def locked(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out`` for the block; refuse at once if another process has it."""
    out.mkdir(parents=True, exist_ok=True)
    f = open(out / LOCK, "a+", encoding="utf-8")
    try:
        if (holder := take_flock(f)) is not None:
            raise RunLockedError(f"{out} is in use by another gpt-train (PID {holder}); wait for it to "
                                 "finish, or pass another --out")
        yield
    finally:
        f.close()  # releases the lock; the file stays, since removing it would race a starting run


def check_start(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to start a run that would replace or mix with the one already in ``out``."""
    if resume:
        if not (out / CKPT).is_file():
            why = (" (its run stopped before its first evaluation)" if (out / METRICS).exists() else "")
            raise SettingsError(f"--resume: {out / CKPT} does not exist{why}; start a new run "
                                f"{'with --overwrite' if why else 'without --resume'}")
        return
    existing = [name for name in (CKPT, BEST, METRICS) if (out / name).exists()]
    if existing and not overwrite:
        raise SettingsError(f"{out} already holds a run ({', '.join(existing)}): continue it with "
                            "--resume, or pass --overwrite to replace it")


def clear(out: Path) -> None:
    """Remove the files of the run in ``out`` (for --overwrite)."""
    for name in (CKPT, BEST, METRICS):
        (out / name).unlink(missing_ok=True)


def remove_stale_temps(out: Path) -> int:
    """Delete the temp files of writes a killed run left half done -> how many. Only while
    holding the lock: then no other process is writing them."""
    stale = temp_files(out / CKPT) + temp_files(out / METRICS)
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def cut_metrics(path: Path, step: int) -> int:
    """Keep the rows of ``path`` up to ``step`` (the checkpoint a run resumes from), atomically, so
    the steps logged again after resuming appear once -> rows dropped (a torn last line counts)."""
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
            keep = row["step"] <= step
        except (ValueError, KeyError, TypeError):
            keep = False  # a line cut short when the process was killed
        if keep:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        with atomic_write(path, "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in kept))
    return dropped
