"""A run's state (``Trainer``) and its checkpoint: what is saved, and how a resumed run gets it back.

A full checkpoint holds everything a run needs to continue exactly: the optimizer, the fp16 scaler,
the step, the best val loss, the run's settings and one random state per rank. ``save_training``
writes it (rank 0, after gathering); ``load_for_resume`` reads it and the settings it fixes;
``saved_rng`` and ``restore_training`` put it back into a freshly built Trainer (model.train.loop.setup).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from model import checkpoint
from model.config import GPTConfig
from model.data.corpus import Splits, TokenData, get_batch
from model.data.shards import check_ids
from model.train import distributed, run_folder
from model.train.config import MODEL_FIELDS, TRAIN_FIELDS, StoredSettingsError, TrainConfig, resumed
from model.train.distributed import Dist

MAX_WORLD_SIZE = 2**16
MAX_STEP = 10**9  # as TrainConfig's max_iters


@dataclass
class Trainer:
    """The state one run carries from step to step."""

    cfg: TrainConfig
    model: torch.nn.Module  # the raw module (checkpoints, eval)
    forward: Callable  # model, compiled and/or wrapped in DDP: what training calls
    optimizer: torch.optim.Optimizer
    splits: Splits | TokenData  # TokenData: memory-mapped shards (model.data.shards)
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
        # ids come from a file (a prepared folder, a token cache): one beyond the vocabulary would
        # index past the embedding; a min and a max per batch say so in one line instead
        check_ids(x, self.model.config.vocab_size, self.cfg.data)
        check_ids(y[:, -1], self.model.config.vocab_size, self.cfg.data)
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


def save_training(tr: Trainer, tokenizer, meta: dict, best: bool = False) -> None:
    """Rank 0 writes the full state, with every rank's RNG state; all ranks must call it. A sharded
    (FSDP) run's weights and optimizer state are gathered first, so the file loads in one process.
    ``best``: this evaluation's val loss is the run's lowest, so the weights alone (a slim file)
    also go to ``best.pt``, written first: a crash between the two leaves a checkpoint whose
    resumed run replays, bit-exact, to the same best.pt."""
    weights, optimizer_state = distributed.full_state(tr.model, tr.optimizer)
    rngs = distributed.gather(rng_state(tr), tr.dist)
    if not tr.dist.is_main:
        return
    state = checkpoint.payload(tr.model, tokenizer, meta) | {"model": weights}
    if best:
        checkpoint.save(state, Path(tr.cfg.out_dir) / run_folder.BEST)
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


def check_state(t: dict, path: Path) -> None:
    """The training state of a checkpoint has the types and bounds a run writes, before any of it
    is used: its digest shows the file is whole, not that a run wrote it (a step of -5 would have
    run the learning-rate schedule backwards, gradient ascent)."""
    def bad(what: str) -> checkpoint.CheckpointError:
        return checkpoint.CheckpointError(f"{path} holds a training state no run could write ({what}); "
                                          "it cannot be resumed: use another copy, or start a new run")

    step, world = t.get("step"), t.get("world_size")
    if not _is_int(step) or not 0 <= step <= MAX_STEP:
        raise bad(f"step {step!r:.40}")
    if "rng" not in t or "world_size" not in t:
        return  # an older file: saved_rng refuses it, saying why
    if not _is_int(world) or not 1 <= world <= MAX_WORLD_SIZE:
        raise bad(f"world size {world!r:.40}")
    best = t.get("best_val", float("inf"))
    if isinstance(best, bool) or not isinstance(best, (int, float)) or best != best:
        raise bad(f"best val loss {best!r:.40}")
    seconds = t.get("seconds", 0.0)
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds < float("inf"):
        raise bad(f"training seconds {seconds!r:.40}")
    rngs = t.get("rng")
    if not isinstance(rngs, list) or len(rngs) != world:
        raise bad("no random state per process")
    sizes = {"batch": torch.Generator().get_state().numel(), "torch": torch.get_rng_state().numel()}
    for rng in rngs:
        if not isinstance(rng, dict) or not all(
                isinstance(rng.get(k), torch.Tensor) and rng[k].dtype == torch.uint8 and rng[k].shape == (n,)
                for k, n in sizes.items()):
            raise bad("a random state of the wrong kind or size")
        if rng.get("cuda") is not None and not (isinstance(rng["cuda"], torch.Tensor)
                                                 and rng["cuda"].dtype == torch.uint8):
            raise bad("a CUDA random state of the wrong kind")
    scaler = t.get("scaler")
    if not isinstance(t.get("optimizer"), dict) or not (scaler is None or isinstance(scaler, dict)):
        raise bad("an optimizer or gradient-scaler state that is not a dict")


def check_optimizer_state(optimizer, state: dict, path: Path) -> None:
    """``state`` (an optimizer's saved state) fits ``optimizer``: the same groups and parameter
    counts, and every per-parameter tensor (moments, momentum) the shape of its parameter, finite.
    torch's load_state_dict checks the counts only; a wrong-sized moment failed mid-step."""
    parts = getattr(optimizer, "optimizers", None)
    if parts is not None:  # model.train.optimizers.Optimizers: one saved state per optimizer
        saved = state.get("optimizers")
        if not isinstance(saved, list) or len(saved) != len(parts):
            raise checkpoint.CheckpointError(f"{path}: its optimizer state is not that of this run's "
                                             f"{len(parts)} optimizers; it cannot be resumed")
        for opt, part in zip(parts, saved, strict=True):
            check_optimizer_state(opt, part if isinstance(part, dict) else {}, path)
        return
    groups, per_param = state.get("param_groups"), state.get("state")
    if any(isinstance(p, str) for g in groups or [] if isinstance(g, dict) for p in g.get("params", [])):
        return  # a sharded run's state, keyed by parameter name: torch's distributed loader checks it
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if not (isinstance(groups, list) and isinstance(per_param, dict)
            and len(groups) == len(optimizer.param_groups)
            and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups)
            and [len(g["params"]) for g in groups] == [len(g["params"]) for g in optimizer.param_groups]):
        raise checkpoint.CheckpointError(f"{path}: its optimizer state does not match this model's "
                                         "parameters; it cannot be resumed")
    index = [i for g in groups for i in g["params"]]
    for i, param in zip(index, params, strict=True):
        entry = per_param.get(i, {})
        if not isinstance(entry, dict):
            raise checkpoint.CheckpointError(f"{path}: optimizer state {i!r:.20} is not a dict")
        for key, value in entry.items():
            if not isinstance(value, torch.Tensor):
                raise checkpoint.CheckpointError(f"{path}: optimizer state {i} {key!r:.20} is not a tensor")
            wanted = () if key == "step" else param.shape
            finite = value.is_floating_point() and bool(torch.isfinite(value).all())
            if value.shape != wanted or not finite:
                raise checkpoint.CheckpointError(
                    f"{path}: optimizer state {i} {key!r:.20} has shape {tuple(value.shape)} or values "
                    f"unlike its parameter's {tuple(wanted)}; it cannot be resumed")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
    check_optimizer_state(tr.optimizer, t["optimizer"], checkpoint_path(tr.cfg))
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
    check_state(t, path)
    try:
        model = GPTConfig.from_dict(ckpt["config"])
    except (TypeError, ValueError) as e:
        raise checkpoint.CheckpointError(f"{path} has an unusable model config: {e}") from None
    if given is None:  # vocab_size comes from the tokenizer, never from the caller
        given = {k: getattr(cfg, k) for k in TRAIN_FIELDS} | {
            k: getattr(cfg.model, k) for k in MODEL_FIELDS
            if k != "vocab_size" and not (k == "attention" and cfg.attention_auto)}  # auto: the stored choice
    try:
        resumed_cfg, notes = resumed(t["config"], model, given, cfg.out_dir, t["step"], path, named)
    except StoredSettingsError as e:
        raise checkpoint.CheckpointError(str(e)) from None
    for note in notes:
        log(note)
    return resumed_cfg, ckpt
