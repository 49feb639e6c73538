"""What a model card needs: losses over whole splits, and the learning curve from metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from model.checkpoint import load_model
from model.data import load_corpus
from model.device import autocast, resolve_dtype


def split_losses(ckpt: str | Path, data: str = "shakespeare", batch_size: int = 64) -> dict[str, float]:
    """Mean loss over every target of the train and val splits (consecutive block_size windows)."""
    model, tokenizer, _ = load_model(ckpt)
    _, splits = load_corpus(data, tokenizer)
    block = model.config.block_size
    cpu = torch.device("cpu")
    # bf16 only where the CPU does it natively: emulated bf16 is slower than fp32
    with autocast(cpu, resolve_dtype("auto", cpu)):
        return {name: full_val_loss(model, splits.split(name), block, batch_size)
                for name in ("train", "val")}


@torch.no_grad()
def full_val_loss(model, ids: torch.Tensor, block_size: int, batch_size: int = 64, device="cpu") -> float:
    """Loss over the whole split: consecutive non-overlapping windows, every target counted once."""
    model.eval()
    n = (len(ids) - 1) // block_size
    x = ids[: n * block_size].view(n, block_size)
    y = ids[1 : n * block_size + 1].view(n, block_size)
    total = 0.0
    for i in range(0, n, batch_size):
        _, loss = model(x[i : i + batch_size].to(device), y[i : i + batch_size].to(device))
        total += loss.item() * len(x[i : i + batch_size])
    return total / n



def read_metrics(path: str | Path) -> tuple[list[dict], list[dict]]:
    """(training rows, evaluation rows) of a metrics.jsonl."""
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line]
    return [r for r in rows if "loss" in r], [r for r in rows if "val_loss" in r]


def plot_learning_curve(metrics: str | Path, out: str | Path, title: str = "") -> Path:
    """Train loss (every logged step) and evaluated train/val loss against steps, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

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
    fig.savefig(out)
    plt.close(fig)
    return Path(out)
