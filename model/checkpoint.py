"""All checkpoint IO: one plain-data format, atomic writes, safe loads, errors that say what to do.

A checkpoint is a dict of plain data (``torch.load(weights_only=True)`` can read it):
  format     "gpt-from-scratch/1"
  config     GPTConfig as a dict
  tokenizer  tokenizer as a dict
  model      state dict
  train      (full checkpoints only) optimizer state, step, best val loss, settings, the number
             of processes and one RNG state per process (model.train.save_training)
  meta       free-form facts for people: steps trained, val loss, data checksum
A slim checkpoint is the same without ``train``, optionally with half-precision weights.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from model.atomic import atomic_write
from model.config import GPTConfig
from model.gpt import GPT, Bigram, build_model
from model.tokenizer import Tokenizer, tokenizer_from_dict

FORMAT = "gpt-from-scratch/1"
# the shipped model, which every tool opens by default
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "checkpoints"
DEFAULT_CKPT = "shakespeare.pt"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the fix."""


def save(payload: dict, path: str | Path) -> None:
    """Write atomically: a temp file in the same folder, fsync, then rename over the target.
    A crash at any moment leaves either the old file or the new one, never half of one."""
    with atomic_write(path) as f:
        torch.save({"format": FORMAT, **payload}, f)


def resolve_ckpt(name: str | Path = DEFAULT_CKPT) -> Path:
    """The checkpoint a user means: the path as given if it exists, else the same relative path
    inside the shipped checkpoints/ folder (so ``--ckpt shakespeare.pt`` works from anywhere)."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = SHIPPED_DIR / path
    if not path.is_absolute() and shipped.is_file():
        return shipped
    where = str(path) if path.is_absolute() else f"{path} (nor {shipped})"
    raise CheckpointError(f"checkpoint {where} not found; train one with gpt-train or pass --ckpt PATH")


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``; refuse anything else with a clear error."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; train one with gpt-train or pass --ckpt")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"refusing to load {path}: it needs arbitrary Python objects, which could run code "
            f"({first}); only load checkpoints written by gpt-train"
        ) from None
    except Exception as e:  # the weights-only unpickler fails in many ways on damaged bytes
        raise CheckpointError(
            f"{path} is truncated or not a PyTorch checkpoint ({type(e).__name__}); "
            "re-export it or use another file"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a gpt-from-scratch checkpoint (format {FORMAT})")
    missing = {"config", "tokenizer", "model"} - set(ckpt)
    if missing:
        raise CheckpointError(f"{path} lacks {sorted(missing)}; it is damaged or from another tool")
    return ckpt


def payload(model: torch.nn.Module, tokenizer: Tokenizer, meta: dict | None = None) -> dict:
    """What a slim checkpoint holds."""
    return {
        "config": model.config.to_dict(),
        "tokenizer": tokenizer.to_dict(),
        "model": {k: v for k, v in model.state_dict().items()},
        "meta": dict(meta or {}),
    }


def restore_model(ckpt: dict, path: str | Path = "<checkpoint>") -> tuple[GPT | Bigram, Tokenizer]:
    """Rebuild the model from the saved config (strict load, fp32) and its tokenizer."""
    try:
        config = GPTConfig.from_dict(ckpt["config"])
        tokenizer = tokenizer_from_dict(ckpt["tokenizer"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path} has an unusable config or tokenizer: {e}") from None
    if tokenizer.vocab_size > config.vocab_size:
        raise CheckpointError(
            f"{path}: tokenizer has {tokenizer.vocab_size} tokens but the model only {config.vocab_size}"
        )
    model = build_model(config)
    state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match its config ({str(e).splitlines()[0]})") from None
    return model, tokenizer


def load_model(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[GPT | Bigram, Tokenizer, dict]:
    """A slim or full checkpoint -> (model in eval mode on device, tokenizer, meta)."""
    ckpt = load(path)
    model, tokenizer = restore_model(ckpt, path)
    return model.to(device).eval(), tokenizer, ckpt.get("meta", {})


def write_slim(src: str | Path, dst: str | Path, dtype: torch.dtype = torch.float32) -> dict:
    """Copy weights, config, tokenizer and meta of ``src`` into an inference-only checkpoint."""
    ckpt = load(src)
    restore_model(ckpt, src)  # refuse to ship something that does not load
    weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    slim = {k: ckpt[k] for k in ("config", "tokenizer", "meta") if k in ckpt} | {"model": weights}
    train_config = slim.get("meta", {}).get("train_config")
    if train_config is not None:  # where the run wrote its files means nothing on another machine
        local = {k: v for k, v in train_config.items() if k != "out_dir"}
        slim["meta"] = slim["meta"] | {"train_config": local}
    save(slim, dst)
    return slim
