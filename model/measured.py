"""Timings that decide something, measured once per machine and remembered.

Two things here are chosen by the clock: whether decoding uses bf16 weights (``--precision auto``:
whichever step is faster on this model) and the matmul rate MFU is a fraction of. Measured afresh
at every start, both move with whatever else the machine is doing, so two runs of the same command
could decode in different precisions (and, with one seed, write different text) or report MFU
against different baselines. So the first measurement is kept, per machine (processor, threads,
torch version) and per question (the model's shape, the dtype), in the user's cache, and later
runs use it and say so. Deleting the file measures again.

The file is a cache, not an input: anything in it that is not a measurement of the expected form
is ignored (and measured again), and nothing read from it is run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import torch

from model.atomic import WriteError, atomic_write
from model.device import machine
from model.paths import cache_dir

FILE = "measured.json"
MAX_ENTRIES = 256  # oldest dropped first: a machine sees a few models, not thousands
MAX_BYTES = 1 << 20


def path() -> Path:
    return cache_dir() / FILE


def remembered(question: str, key: dict, device: torch.device, measure: Callable[[], dict[str, float]],
               ) -> tuple[dict[str, float], bool]:
    """The measurement answering ``question`` for ``key`` on this machine: the stored one, else
    ``measure()``'s (a dict of finite numbers), stored for next time. Returns (it, whether it was
    stored before). A cache that cannot be read or written only means measuring again."""
    entry = json.dumps({"question": question, **key, **machine(device)}, sort_keys=True)
    entries = _read()
    found = entries.get(entry)
    if found is not None:
        return found, True
    value = measure()
    entries.pop(entry, None)
    entries[entry] = value
    try:
        with atomic_write(path(), "w", encoding="utf-8") as f:
            json.dump(dict(list(entries.items())[-MAX_ENTRIES:]), f, indent=1)
    except WriteError:
        pass  # a read-only home: the measurement still holds for this run
    return value, False


def _read() -> dict[str, dict[str, float]]:
    try:
        if path().stat().st_size > MAX_BYTES:
            return {}
        data = json.loads(path().read_text(encoding="utf-8"))
    except (OSError, ValueError):  # absent, unreadable, not JSON or not UTF-8
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and _is_measurement(v)}


def _is_measurement(value: object) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        for k, v in value.items())
