"""``gpt-train --init-from CKPT``: a new run that starts from a checkpoint's weights and tokenizer.

The checkpoint fixes the model's shape; a run may only crop its block size and change dropout and
attention (INIT_CHANGES). ``init_config`` builds that config before training (model.train.cli);
``start_from`` gives the model with those weights (model.train.loop.setup), the optimizer starts fresh.
"""

from __future__ import annotations

from pathlib import Path

import torch

from model import checkpoint
from model.config import GPTConfig
from model.gpt import build_model
from model.train.config import TrainConfig, flag

# what --init-from may change: the rest is fixed by the weights
INIT_CHANGES = ("block_size", "dropout", "attention")


def init_config(path: str | Path, changes: dict) -> GPTConfig:
    """The model config for ``--init-from path``: the checkpoint's, with ``changes`` from the flags
    (only INIT_CHANGES; block_size may only shrink, cropping the learned positions)."""
    config = GPTConfig.from_dict(checkpoint.load(path)["config"])
    fixed = sorted(set(changes) - set(INIT_CHANGES))
    if fixed:
        flags = ", ".join(flag(k) for k in fixed)
        raise ValueError(f"{flags} cannot change with --init-from {path}: its weights fix them; "
                         "drop the flag")
    if changes.get("block_size", 0) > config.block_size:
        raise ValueError(f"--block-size {changes['block_size']} exceeds the {config.block_size} positions "
                         f"{path} learned; --init-from can only crop")
    return config.replace(**changes)


def start_from(src: dict, cfg: TrainConfig) -> torch.nn.Module:
    """The model of checkpoint ``src`` under ``cfg.model``: same weights, positions cropped."""
    model, _ = checkpoint.restore_model(src, cfg.init_from)
    same = cfg.model.replace(**{k: getattr(model.config, k) for k in INIT_CHANGES})
    if same != model.config:
        raise ValueError(f"--init-from {cfg.init_from}: the model config differs from the checkpoint's "
                         "beyond block size, dropout and attention; build it with "
                         "model.train.init_from.init_config")
    state = model.state_dict()
    if "wpe.weight" in state:
        state["wpe.weight"] = state["wpe.weight"][: cfg.model.block_size]  # (block, C): the first rows
    cropped = build_model(cfg.model)
    cropped.load_state_dict(state)
    return cropped
