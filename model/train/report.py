"""What a model card needs: losses over whole splits, and the learning curve from metrics.jsonl."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from model.atomic import atomic_write
from model.checkpoint import load_model
from model.data.corpus import open_corpus
from model.device import autocast, resolve_dtype


def split_losses(ckpt: str | Path, data: str = "shakespeare", batch_size: int = 64,
                 on_batch: Callable[[str, int, int], None] | None = None) -> dict[str, float]:
    """Mean loss over every target of the train and val splits (consecutive block_size windows);
    ``on_batch(split, batches done, batches in all)`` follows the progress."""
    model, tokenizer, _ = load_model(ckpt)
    _, splits = open_corpus(data, tokenizer)
    block = model.config.block_size
    cpu = torch.device("cpu")
    # bf16 only where the CPU does it natively: emulated bf16 is slower than fp32
    with autocast(cpu, resolve_dtype("auto", cpu)):
        return {name: full_val_loss(model, splits.split(name), block, batch_size, on_batch=(
                    None if on_batch is None else lambda done, total, name=name: on_batch(name, done, total)))
                for name in ("train", "val")}


@torch.no_grad()
def full_val_loss(model, ids: torch.Tensor, block_size: int, batch_size: int = 64, device="cpu",
                  on_batch: Callable[[int, int], None] | None = None) -> float:
    """Loss over the whole split: consecutive non-overlapping windows, every target counted once."""
    model.eval()
    n = (len(ids) - 1) // block_size
    x = ids[: n * block_size].view(n, block_size)
    y = ids[1 : n * block_size + 1].view(n, block_size)
    total = 0.0
    batches = -(-n // batch_size)
    for b, i in enumerate(range(0, n, batch_size)):
        _, loss = model(x[i : i + batch_size].to(device), y[i : i + batch_size].to(device))
        total += loss.item() * len(x[i : i + batch_size])
        if on_batch is not None:
            on_batch(b + 1, batches)
    return total / n


class PlottingMissingError(ValueError):
    """matplotlib, the optional ``plot`` extra, is not installed."""


def pyplot():
    """matplotlib's pyplot drawing to files (no display needed); plotting is an optional extra."""
    try:
        import matplotlib
    except ImportError:
        raise PlottingMissingError("plotting needs matplotlib: pip install 'gpt-from-scratch[plot]' "
                                   "(or pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def compare_curves(runs: list[tuple[str, str | Path]], out: str | Path, title: str = "") -> Path:
    """Several runs on one plot, a colour each: the batch loss (faint) and the evaluated val loss
    (points), against steps: how a sweep's runs compare at the same steps."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    lows, firsts = [], []
    for (name, path), color in zip(runs, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4, strict=False):
        train_rows, eval_rows = read_metrics(path)
        if not eval_rows:
            raise ValueError(f"{path} holds no evaluation rows; is it a gpt-train metrics.jsonl?")
        ax.plot([r["step"] for r in train_rows], [r["loss"] for r in train_rows], color=color, alpha=0.3,
                lw=0.8)
        ax.plot([r["step"] for r in eval_rows], [r["val_loss"] for r in eval_rows], "o-", color=color, ms=3,
                label=f"{name}: val {eval_rows[-1]['val_loss']:.4f}")
        lows.append(min([r["loss"] for r in train_rows] + [r["val_loss"] for r in eval_rows]))
        firsts.append(eval_rows[0]["val_loss"])
    ax.set(xlabel="step", ylabel="cross-entropy (nats per token)", title=title,
           ylim=(0.97 * min(lows), 1.2 * max(firsts)))
    ax.grid(alpha=0.3)
    ax.legend(title="faint: batch loss; points: val loss")
    fig.tight_layout()
    with atomic_write(out) as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return Path(out)


def read_metrics(path: str | Path) -> tuple[list[dict], list[dict]]:
    """(training rows, evaluation rows) of a metrics.jsonl, by step. A step logged twice (a run
    resumed from an older checkpoint, by a version that kept the rows after it) counts once, with
    its last row; a line cut short by a killed run is skipped."""
    train: dict[int, dict] = {}
    evals: dict[int, dict] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "step" in row:
            if "loss" in row:
                train[row["step"]] = row
            if "val_loss" in row:
                evals[row["step"]] = row
    return [train[s] for s in sorted(train)], [evals[s] for s in sorted(evals)]


def plot_learning_curve(metrics: str | Path, out: str | Path, title: str = "") -> Path:
    """Train loss (every logged step) and evaluated train/val loss against steps, as a PNG."""
    plt = pyplot()

    train_rows, eval_rows = read_metrics(metrics)
    if not eval_rows and not train_rows:
        raise ValueError(f"{metrics} holds no metrics rows; is it a gpt-train metrics.jsonl?")
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    ax.plot([r["step"] for r in train_rows], [r["loss"] for r in train_rows],
            color="tab:blue", alpha=0.3, lw=0.8, label="train (batch)")
    ax.plot([r["step"] for r in eval_rows], [r["train_loss"] for r in eval_rows],
            "o-", color="tab:blue", ms=3, label="train (eval)")
    ax.plot([r["step"] for r in eval_rows], [r["val_loss"] for r in eval_rows],
            "o-", color="tab:orange", ms=3, label="val (eval)")
    if eval_rows:
        best = min(eval_rows, key=lambda r: r["val_loss"])
        ax.annotate(f"{best['val_loss']:.4f}", (best["step"], best["val_loss"]),
                    textcoords="offset points", xytext=(-10, -14))
    # the first batches (loss ~ln V) would squash the interesting part: start at the first evaluation
    losses = [r["loss"] for r in train_rows] + [r["val_loss"] for r in eval_rows]
    top = 1.2 * eval_rows[0]["val_loss"] if eval_rows else max(losses)
    ax.set(xlabel="step", ylabel="cross-entropy (nats per token)", title=title,
           ylim=(0.97 * min(losses), top))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_write(out) as f:  # creates the folder; a full disk leaves no half PNG
        fig.savefig(f, format="png")
    plt.close(fig)
    return Path(out)
