"""A run's state (``Trainer``) and its checkpoint: what is saved, and how a resumed run gets it back.

A full checkpoint holds everything a run needs to continue exactly: the optimizer, the fp16 scaler,
the step, the best val loss, the run's settings and one random state per rank. ``save_training``
writes it (rank 0, after gathering); ``load_for_resume`` reads it and the settings it fixes;
``saved_rng`` and ``restore_training`` put it back into a freshly built Trainer (model.train.setup).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from model import checkpoint, distributed, run_folder
from model.config import GPTConfig
from model.data import Splits, TokenData, get_batch
from model.distributed import Dist
from model.train_config import MODEL_FIELDS, TRAIN_FIELDS, TrainConfig, resumed


@dataclass
class Trainer:
    """The state one run carries from step to step."""

    cfg: TrainConfig
    model: torch.nn.Module  # the raw module (checkpoints, eval)
    forward: Callable  # model, compiled and/or wrapped in DDP: what training calls
    optimizer: torch.optim.Optimizer
    splits: Splits | TokenData  # TokenData: memory-mapped shards (model.shards)
    device: torch.device
    amp_dtype: torch.dtype
    batch_gen: torch.Generator  # data sampling; saved in checkpoints so resume is exact
    scaler: torch.amp.GradScaler | None = None
    step: int = 0
    best_val: float = float("inf")
    dist: Dist = distributed.SINGLE
    origin: dict = field(default_factory=dict)  # the checkpoint --init-from started from, if any
    skipped: int = 0  # fp16 steps the scaler skipped in a row
    saved: tuple[int, float] | None = None  # (step, val loss) of the checkpoint on disk
    seconds: float = 0.0  # wall time of the training loop so far, over every session of the run

    def batch(self, split: str = "train", gen: torch.Generator | None = None):
        x, y = get_batch(
            self.splits.split(split), self.cfg.batch_size, self.model.config.block_size,
            gen or self.batch_gen,
        )
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def checkpoint_path(cfg: TrainConfig) -> Path:
    return Path(cfg.out_dir) / run_folder.CKPT


def plain(d: dict) -> dict:
    """``d`` as JSON gives it back (tuples become lists): how settings are stored and compared."""
    return json.loads(json.dumps(d))


def rng_state(tr: Trainer) -> dict:
    """This rank's random state: batch sampling, and dropout on the CPU or its GPU."""
    return {
        "batch": tr.batch_gen.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(tr.device) if tr.device.type == "cuda" else None,
    }


def set_rng_state(tr: Trainer, state: dict) -> None:
    tr.batch_gen.set_state(state["batch"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and tr.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], tr.device)


def save_training(tr: Trainer, tokenizer, meta: dict) -> None:
    """Rank 0 writes the full state, with every rank's RNG state; all ranks must call it. A sharded
    (FSDP) run's weights and optimizer state are gathered first, so the file loads in one process."""
    weights, optimizer_state = distributed.full_state(tr.model, tr.optimizer)
    rngs = distributed.gather(rng_state(tr), tr.dist)
    if not tr.dist.is_main:
        return
    state = checkpoint.payload(tr.model, tokenizer, meta) | {"model": weights}
    state["train"] = {
        "step": tr.step,
        "best_val": tr.best_val,
        "optimizer": optimizer_state,
        "world_size": tr.dist.world_size,
        "rng": rngs,  # one dict per rank, in rank order
        "scaler": tr.scaler.state_dict() if tr.scaler else None,  # fp16: its scale, for exact resume
        "seconds": tr.seconds,
        # the model as built (vocabulary from the tokenizer), so the config describes the run
        "config": plain(dataclasses.asdict(tr.cfg.replace(model=tr.model.config))),
    }
    checkpoint.save(state, checkpoint_path(tr.cfg))


def saved_rng(t: dict, world_size: int, path: Path) -> list[dict]:
    """The per-rank RNG states of a checkpoint's ``train`` dict, checked against this run's size."""
    if "rng" not in t or "world_size" not in t:
        raise checkpoint.CheckpointError(f"{path} holds no per-process random state, so it cannot be "
                                         "resumed exactly; start a new run in another --out folder")
    if t["world_size"] != world_size:
        raise checkpoint.CheckpointError(
            f"{path} was written by {t['world_size']} process(es) and this run has {world_size}; "
            f"resume it with {t['world_size']} in all (torchrun --nnodes x --nproc-per-node), so every "
            "rank continues its own random stream"
        )
    return t["rng"]


def restore_training(tr: Trainer, ckpt: dict, rng: dict, log: Callable[[str], None]) -> None:
    """Continue ``tr`` (built with the checkpoint's weights, and sharded if it is) where ``ckpt``
    stopped: optimizer, fp16 scaler, step, best val loss, this rank's random state ``rng`` (from
    ``saved_rng``), and the --init-from origin the run records."""
    tr.origin = ckpt.get("meta", {}).get("init_from", {})
    t = ckpt["train"]
    distributed.load_optimizer(tr.model, tr.optimizer, t["optimizer"])
    if tr.scaler is not None and t.get("scaler"):
        tr.scaler.load_state_dict(t["scaler"])
    tr.step, tr.best_val = t["step"], t["best_val"]
    tr.seconds = float(t.get("seconds", 0.0))  # checkpoints from before it was kept start from 0
    tr.saved = (t["step"], ckpt.get("meta", {}).get("val_loss", float("nan")))
    set_rng_state(tr, rng)
    log(f"resumed from {checkpoint_path(tr.cfg)} at step {tr.step}")


def load_for_resume(cfg: TrainConfig, given: dict | None, named: dict[str, str] | None,
                    log: Callable[[str], None]) -> tuple[TrainConfig, dict]:
    """The checkpoint in ``cfg.out_dir`` and the run's config: its stored settings, with the
    ``given`` fields applied where a resumed run may change them (None: every field of ``cfg``
    counts as given). Each change is logged once; any other difference is a SettingsError."""
    path = checkpoint_path(cfg)
    ckpt = checkpoint.load(path)
    t = ckpt.get("train")
    if not isinstance(t, dict) or not isinstance(t.get("config"), dict) or "step" not in t:
        raise checkpoint.CheckpointError(f"{path} holds no training state (an inference-only "
                                          "checkpoint?), so it cannot be resumed; start a new run")
    try:
        model = GPTConfig.from_dict(ckpt["config"])
    except (TypeError, ValueError) as e:
        raise checkpoint.CheckpointError(f"{path} has an unusable model config: {e}") from None
    if given is None:  # vocab_size comes from the tokenizer, never from the caller
        given = {k: getattr(cfg, k) for k in TRAIN_FIELDS} | {
            k: getattr(cfg.model, k) for k in MODEL_FIELDS
            if k != "vocab_size" and not (k == "attention" and cfg.attention_auto)}  # auto: the stored choice
    resumed_cfg, notes = resumed(t["config"], model, given, cfg.out_dir, t["step"], path, named)
    for note in notes:
        log(note)
    return resumed_cfg, ckpt
