"""How a converted file is judged: its validation loss against the fp32 graph's, on the model's own data.

What it reads. The validation split of the data the model was trained on: ``--data`` when given,
else ``shakespeare`` when the checkpoint's stored training settings say so. A text file or folder
named in a checkpoint is never opened on its own (as ``gpt-train --resume`` never reads a data path
out of a file): the refusal names the ``--data`` to pass. A checkpoint that names no data (an
import) is refused the same way, rather than judged on text it never saw.

What it costs. The loss is a running sum over windows streamed one at a time through ONNX Runtime,
so no more than one window's logits (block_size x vocabulary floats) exist at once. It reads at most
``JUDGE_TOKENS`` targets: whole ``block_size`` windows spread evenly over the split, as
model.train.report.full_val_loss cuts them. A quantized file is compared with fp32 on the same
tokens, and the per-token differences between the two graphs are far smaller than the spread of the
loss itself, so a few thousand tokens settle a tolerance of percents, where the whole of Tiny
Shakespeare's validation split is some 35 prefills of 1,024 tokens per graph at GPT-2's size.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch.nn import functional as F

from model.terminal import visible

JUDGE_TOKENS = 8192  # targets judged at most, per graph


class JudgeDataError(ValueError):
    """No data to judge a converted file on; the message names the --data to pass."""


def judge_data(data: str | None, meta: dict, ckpt_path: Path, kind: str) -> tuple[str, str]:
    """(the data to judge on, why it is that one), from ``--data`` or the checkpoint's ``meta``."""
    if data is not None:
        if data != "shakespeare" and not Path(data).exists():
            raise JudgeDataError(f"--data {visible(data)} does not exist; pass shakespeare, a text file or "
                                 "a folder written by gpt-prepare")
        return data, "--data"
    settings = meta.get("train_config")
    stored = settings.get("data") if isinstance(settings, dict) else None
    if stored == "shakespeare":
        return stored, f"what {ckpt_path.name} was trained on"
    skip = "or --no-validate to write it unjudged"
    if isinstance(stored, str) and stored:
        raise JudgeDataError(
            f"{ckpt_path} was trained on {visible(stored)[:200]}: pass --data with that text or folder to "
            f"judge the {kind} file on its validation split (a path stored in a checkpoint is never "
            f"opened on its own), {skip}")
    raise JudgeDataError(
        f"{ckpt_path} does not say what it was trained on (an import?): pass --data shakespeare, a text "
        f"file or a gpt-prepare folder to judge the {kind} file on, {skip}")


def window_starts(n_tokens: int, block: int, tokens: int = JUDGE_TOKENS) -> list[int]:
    """Where the judged windows start: of the split's consecutive ``block``-token windows (each with
    its next token as the last target), ``tokens // block`` (at least one) spread evenly."""
    n = (n_tokens - 1) // block
    if n < 1:
        raise ValueError(f"the split has {n_tokens} tokens, fewer than one window of {block} + 1")
    k = min(n, max(1, tokens // block))
    return [(i * n // k) * block for i in range(k)]


def split_loss(backend, ids, tokens: int = JUDGE_TOKENS,
               progress: Callable[[int, int], None] = lambda done, total: None) -> float:
    """Mean cross-entropy of the graph behind ``backend`` (an export.ort_backend.OrtBackend, either
    cache layout) over the windows of ``ids`` (a tensor or a model.data.shards.TokenSplit) that
    ``window_starts`` picks: prefill only, one window per run; ``progress(windows done, windows)``
    after each."""
    block = backend.config.block_size
    starts = window_starts(len(ids), block, tokens)
    total = 0.0
    for i, start in enumerate(starts):
        window = torch.as_tensor(ids[start:start + block + 1], dtype=torch.long)  # (block + 1,)
        # (block, V): the only logits held
        logits = torch.from_numpy(backend.window_logits(window[None, :-1].numpy())[0])
        total += float(F.cross_entropy(logits.float(), window[1:], reduction="sum"))
        progress(i + 1, len(starts))
    return total / (len(starts) * block)
