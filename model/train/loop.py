"""Training: AdamW or Muon, warmup + cosine decay, clipping, accumulation, evaluation, checkpoints, resume.

``train(TrainConfig)`` is the whole run; ``train_step`` is one optimizer step that tests can drive.
The CLI (model.train.cli) only builds a TrainConfig (model.train.config). What a checkpoint saves and a
resumed run gets back is model.train.state; starting from another checkpoint's weights is
model.train.init_from; the optimizers are model.train.optimizers; the steps a --time-budget buys,
model.train.time_budget. A run holds its folder's lock (model.train.run_folder) for its whole life, and never
writes a checkpoint it could not continue from: an evaluation or weights that are not finite stop
the run with the last good file in place.

Under ``torchrun`` the same loop runs on every rank with DDP (model.train.distributed): each rank samples
its own batches, DDP averages the gradients, evaluation is sharded across ranks, and rank 0 alone
logs and writes files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from model import checkpoint
from model.allocator import keep_freed_memory
from model.atomic import WriteError
from model.data.corpus import get_batch, open_corpus
from model.device import autocast, machine, resolve_device, resolve_dtype
from model.gpt import build_model, count_params
from model.tokenizer import tokenizer_from_dict
from model.train import distributed, run_folder, time_budget
from model.train.attention_choice import ROWS as AUTO_ROWS
from model.train.attention_choice import choose_attention
from model.train.attention_choice import describe as describe_choice
from model.train.config import SettingsError, TrainConfig, check_data, format_duration, resume_command
from model.train.distributed import Dist
from model.train.init_from import start_from
from model.train.optimizers import make_optimizer
from model.train.progress import StepStats, TrainProgress, flops_per_token, peak_flops
from model.train.state import (
    Trainer,
    checkpoint_path,
    load_for_resume,
    plain,
    restore_training,
    save_training,
    saved_rng,
)

__all__ = ["NonFiniteError", "SettingsError", "TrainConfig", "TrainingInterrupted", "make_optimizer", "train",
           "train_step"]

# fp16: the gradient scaler skips a step whose gradients overflow and halves its scale; at startup
# a few skips in a row are normal, this many means the run is not coming back
MAX_SKIPPED_STEPS = 8


class NonFiniteError(RuntimeError):
    """The loss, gradients, evaluation or weights stopped being numbers; training stops before the
    update, and before writing a checkpoint."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl+C; the message says what is saved and how to continue."""


def get_lr(it: int, cfg: TrainConfig) -> float:
    """Linear warmup to learning_rate, cosine decay to min_lr at decay_iters, then flat."""
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it >= cfg.decay_iters:
        return cfg.min_lr
    ratio = (it - cfg.warmup_iters) / max(1, cfg.decay_iters - cfg.warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))  # 1 -> 0
    return cfg.min_lr + coeff * (cfg.learning_rate - cfg.min_lr)


def train_step(tr: Trainer) -> tuple[float, float]:
    """One optimizer step over grad_accum micro-batches -> (mean loss, grad norm), both the same on
    every rank: the loss is averaged over ranks, the gradients by DDP."""
    cfg = tr.cfg
    lr = get_lr(tr.step, cfg)
    for group in tr.optimizer.param_groups:
        group["lr"] = lr
    total = torch.zeros((), device=tr.device)
    for micro in range(cfg.grad_accum):
        x, y = tr.batch()
        with distributed.grad_sync(tr.forward, sync=micro == cfg.grad_accum - 1):
            with autocast(tr.device, tr.amp_dtype):
                _, loss = tr.forward(x, y)
            loss = loss / cfg.grad_accum
            total += loss.detach()
            (tr.scaler.scale(loss) if tr.scaler else loss).backward()
    if tr.scaler:
        tr.scaler.unscale_(tr.optimizer)
    max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
    norm = torch.nn.utils.clip_grad_norm_(tr.model.parameters(), max_norm)
    loss_value, norm_value = distributed.mean(total, tr.dist).item(), distributed.item(norm)
    # with a scaler, overflowing gradients are its business (it skips the step); a loss that is not
    # a number is not: it was computed before any scaling
    if not math.isfinite(loss_value) or (not math.isfinite(norm_value) and tr.scaler is None):
        tr.optimizer.zero_grad(set_to_none=True)
        raise NonFiniteError(
            f"step {tr.step}: loss {loss_value} / gradient norm {norm_value} is not finite; "
            "stopped before the update (try a lower --learning-rate or --dtype fp32)"
        )
    if tr.scaler:  # fp16: the scaler skips steps with inf gradients and lowers its scale
        tr.skipped = 0 if math.isfinite(norm_value) else tr.skipped + 1
        if tr.skipped >= MAX_SKIPPED_STEPS:
            tr.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteError(
                f"step {tr.step}: the fp16 gradients overflowed {tr.skipped} steps in a row (the "
                "scaler skipped each); stopped (try --dtype bf16 or fp32, or a lower --learning-rate)")
        tr.scaler.step(tr.optimizer)
        tr.scaler.update()
    else:
        tr.optimizer.step()
    tr.optimizer.zero_grad(set_to_none=True)
    tr.step += 1
    return loss_value, norm_value


@torch.no_grad()
def evaluate(tr: Trainer, iters: int | None = None) -> dict[str, float]:
    """Mean loss over many random batches of each split, the same batches every time.

    Sharded: rank r computes batches r, r + W, r + 2W, ... and the sums are all-reduced, so every
    rank gets the number one process would (up to float rounding), W times faster."""
    tr.model.eval()
    out = {}
    for split in ("train", "val"):
        gen = torch.Generator().manual_seed(tr.cfg.seed + 1)  # fixed windows: comparable evals
        losses = torch.zeros(iters or tr.cfg.eval_iters, device=tr.device)
        for i in range(len(losses)):
            x, y = tr.batch(split, gen)  # every rank draws every batch: the same windows as one process
            if i % tr.dist.world_size != tr.dist.rank:
                continue
            with autocast(tr.device, tr.amp_dtype):
                _, loss = tr.model(x, y)
            losses[i] = loss.float()
        if distributed.is_sharded(tr.model) and tr.dist.rank >= len(losses) % tr.dist.world_size > 0:
            with autocast(tr.device, tr.amp_dtype):  # FSDP: every rank runs as many forwards (collectives)
                tr.model(x, y)
        out[split] = (distributed.mean(losses.sum(), tr.dist) * tr.dist.world_size / len(losses)).item()
    tr.model.train()
    return out


def setup(
    cfg: TrainConfig, log: Callable[[str], None] = print, dist: Dist = distributed.SINGLE,
    ckpt: dict | None = None,
) -> tuple[Trainer, object]:
    """Build everything a run needs, from scratch or from ``out_dir/ckpt.pt`` (or the loaded
    ``ckpt``) when resuming; ``cfg`` is used as given (``train`` checks it against the checkpoint).
    In a distributed run (``dist`` from model.train.distributed, its process group joined) every rank
    calls it; each reads the checkpoint itself, so OUT must be visible to every node."""
    device = distributed.device_for(dist, resolve_device(cfg.device))
    amp_dtype = resolve_dtype(cfg.dtype, device)
    if cfg.resume and ckpt is None:
        ckpt = checkpoint.load(checkpoint_path(cfg))
    rngs = saved_rng(ckpt["train"], dist.world_size, checkpoint_path(cfg)) if ckpt else None
    src = checkpoint.load(cfg.init_from) if cfg.init_from and not ckpt else None
    tokenizer = tokenizer_from_dict((ckpt or src)["tokenizer"]) if (ckpt or src) else None
    with distributed.local_main_first(dist):  # one download per node, not one per rank
        tokenizer, splits = open_corpus(cfg.data, tokenizer, log=log, progress=cfg.progress and dist.is_main)

    def fresh_model(cfg: TrainConfig) -> torch.nn.Module:
        if src:
            return start_from(src, cfg).to(device)
        return build_model(cfg.model.replace(vocab_size=tokenizer.vocab_size)).to(device)

    if cfg.attention_auto and not ckpt and cfg.model.kind == "gpt":  # a resumed run keeps its choice
        cfg = _pick_attention(cfg, fresh_model, splits, device, amp_dtype, dist, log)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = checkpoint.restore_model(ckpt, checkpoint_path(cfg))[0].to(device) if ckpt else fresh_model(cfg)
    if dist.rank > 0:  # but each rank its own dropout masks
        torch.manual_seed(distributed.rank_seed(cfg.seed, dist.rank))
    log(f"{model.config.kind} model: {count_params(model) / 1e6:.2f}M parameters, "
        f"vocab {model.config.vocab_size}, block {model.config.block_size}")
    if cfg.fsdp:
        if amp_dtype == torch.float16:
            raise ValueError("--fsdp runs in bf16 or fp32 (fp16 would need a sharded gradient scaler); "
                             "pass --dtype bf16 or --dtype fp32")
        model = distributed.shard(model, dist, amp_dtype)  # before the optimizer: it holds the shards
    optimizer = make_optimizer(model, cfg, device)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    batch_gen = distributed.batch_generator(cfg.seed, dist.rank)
    tr = Trainer(cfg, model, model, optimizer, splits, device, amp_dtype, batch_gen, scaler, dist=dist)
    if src:
        was = src.get("meta", {})
        tr.origin = {"path": str(cfg.init_from), "source": was.get("source"), "steps": was.get("steps")}
        log(f"starting from the weights of {cfg.init_from} with a fresh optimizer")
    elif ckpt:
        restore_training(tr, ckpt, rngs[dist.rank], log)
    # compile the inner module, then wrap it: torch.compile does not trace DDP's hooks well
    tr.forward = model if cfg.fsdp else distributed.wrap(torch.compile(model) if cfg.compile else model,
                                                         dist, device)
    return tr, tokenizer


def _pick_attention(cfg: TrainConfig, fresh_model: Callable[[TrainConfig], torch.nn.Module], splits,
                    device: torch.device, amp_dtype: torch.dtype, dist: Dist,
                    log: Callable[[str], None]) -> TrainConfig:
    """``cfg`` with the faster attention path for this run, measured on rank 0 and sent to all."""
    choice = [None]
    if dist.is_main:
        gen = torch.Generator().manual_seed(cfg.seed)
        x, y = get_batch(splits.split("train"), min(cfg.batch_size, AUTO_ROWS), cfg.model.block_size, gen)
        choice[0], medians = choose_attention(
            lambda path: fresh_model(cfg.replace(model=cfg.model.replace(attention=path))),
            (x.to(device), y.to(device)), device, amp_dtype)
        log(describe_choice(choice[0], medians, x, device, amp_dtype))
    if dist.enabled:  # one path for every rank: they must run the same computation
        torch.distributed.broadcast_object_list(choice, src=0)
    return cfg.replace(model=cfg.model.replace(attention=choice[0]))


def train(cfg: TrainConfig, log: Callable[[str], None] = print, given: dict | None = None,
          named: dict[str, str] | None = None, started: float | None = None) -> Trainer | None:
    """The whole run: returns the trainer with its final state; writes ckpt.pt and metrics.jsonl.
    Under torchrun (RANK/WORLD_SIZE set) this process is one rank of a data-parallel run, and
    returns None: its trainer is freed before the process group is left (see below).

    When resuming, the settings come from the checkpoint; ``given`` names the fields the caller
    chose (the flags on the command line; None: all of ``cfg``), see ``load_for_resume``. ``started``
    is the ``time.perf_counter()`` a --time-budget counts from (the command's start; None: now)."""
    started = time.perf_counter() if started is None else started
    keep_freed_memory()  # before the first step's activations: see model.allocator
    dist = distributed.from_env()
    log = log if dist.is_main else lambda m: None
    out = Path(cfg.out_dir)
    ckpt: dict | None = None
    try:
        with run_folder.locked(out) if dist.is_main else contextlib.nullcontext():
            if dist.is_main and (n := run_folder.remove_stale_temps(out)):
                log(f"removed {n} temp file(s) a killed run left in {out}")
            run_folder.check_start(out, cfg.resume, cfg.overwrite)
            if cfg.resume:
                cfg, ckpt = load_for_resume(cfg, given, named, log)
            check_data(cfg.data)
            with distributed.process_group(dist, distributed.device_for(dist, resolve_device(cfg.device))):
                tr = _run(cfg, log, dist, ckpt, started)
                if not dist.enabled:
                    return tr
                # the rank's model and optimizer hold the process group (DDP's reducer, FSDP's
                # meshes and sharded tensors) in reference cycles: free them while every rank is
                # still connected. Freed after the group is destroyed, at exit, gloo's threads
                # sometimes hung the rank or aborted it after its last checkpoint
                del tr
                gc.collect()
                return None
    except TrainingInterrupted:
        raise
    except KeyboardInterrupt:  # before training started
        raise TrainingInterrupted(_interrupted(cfg, None, ckpt)) from None


def _interrupted(cfg: TrainConfig, tr: Trainer | None, ckpt: dict | None) -> str:
    """What is true after Ctrl+C: the step reached, and what is saved."""
    path = checkpoint_path(cfg)
    at = f"at step {tr.step}" if tr else "before training started"
    saved = tr.saved if tr else (
        (ckpt["train"]["step"], ckpt.get("meta", {}).get("val_loss", float("nan"))) if ckpt else None)
    if saved is not None:
        return (f"interrupted {at}; {path} holds step {saved[0]} (val loss {saved[1]:.4f}): continue "
                f"with {resume_command(cfg)}")
    if cfg.resume:
        return f"interrupted {at}; {path} is unchanged: continue with {resume_command(cfg)}"
    again = (Path(cfg.out_dir) / run_folder.METRICS).exists()
    first = min(cfg.eval_interval, cfg.max_iters)
    return (f"interrupted {at}; nothing saved yet (the first checkpoint comes at step {first}): "
            f"start again with the same flags{' and --overwrite' if again else ''}")


def _run(cfg: TrainConfig, log: Callable[[str], None], dist: Dist, ckpt: dict | None,
         started: float) -> Trainer:
    tr: Trainer | None = None
    try:
        tr, tokenizer = setup(cfg, log, dist, ckpt)
        if cfg.time_budget is not None and cfg.budget_plan is None:  # a fresh run: fix its steps
            tr.cfg = _plan_budget(tr, started, log)
        elif cfg.budget_plan is not None:
            log(f"time budget {format_duration(cfg.time_budget)}: {cfg.max_iters:,} steps, fixed when the "
                f"run started; {format_duration(tr.seconds)} trained so far")
        _loop(tr, tokenizer, log)
        return tr
    except KeyboardInterrupt:
        raise TrainingInterrupted(_interrupted(cfg, tr, ckpt)) from None


def _plan_budget(tr: Trainer, started: float, log: Callable[[str], None]) -> TrainConfig:
    """The run's config with max_iters fitted to its --time-budget (model.train.time_budget), measured on
    rank 0 and sent to every rank, so that all take the same number of steps."""
    cfg, plan = tr.cfg, [None]
    step_s, eval_s = time_budget.measure(tr, train_step, 2 * cfg.eval_iters)
    if tr.dist.is_main:
        startup_s = time.perf_counter() - started
        try:
            steps = time_budget.plan_steps(cfg.time_budget, startup_s, step_s, eval_s, cfg.eval_interval,
                                           cfg.warmup_iters)
            plan[0] = time_budget.Plan(cfg.time_budget, startup_s, step_s, eval_s, steps).as_dict()
        except SettingsError as e:
            plan[0] = str(e)
    if tr.dist.enabled:
        torch.distributed.broadcast_object_list(plan, src=0)
    if isinstance(plan[0], str):
        raise SettingsError(plan[0])
    planned = cfg.replace(max_iters=plan[0]["max_iters"], budget_plan=plan[0])
    log(time_budget.Plan(**plan[0]).describe(cfg.eval_interval, cfg.warmup_iters, cfg.min_lr,
                                             planned.decay_iters))
    return planned


def _out_of_time(tr: Trainer, plan: dict, seconds: float, step_s: float) -> bool:
    """model.train.time_budget.out_of_time, agreed by every rank: one whose clock ran out stops them all."""
    late = time_budget.out_of_time(plan, seconds, step_s)
    if not tr.dist.enabled:
        return late
    flag = torch.tensor([float(late)], device=tr.device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item())


def _budget_spent(cfg: TrainConfig, step: int, step_s: float, resumed: bool) -> str:
    """The line a --time-budget run logs when its deadline comes before its last planned step."""
    budget = format_duration(cfg.time_budget)
    if resumed:
        return (f"the time budget {budget} was spent at step {step} of {cfg.max_iters:,}: nothing to do "
                f"(pass a --max-iters above {cfg.max_iters:,} to train on past the budget)")
    lr = get_lr(step, cfg)
    measured = cfg.budget_plan["step_s"]
    return (f"time budget {budget} spent: stopping at step {step} of {cfg.max_iters:,} (steps now take "
            f"{step_s:.3f} s, {step_s / measured:.0%} of the {measured:.3f} s measured at the start); the "
            f"learning rate is {lr:.3g}, on its way to {cfg.min_lr:g}")


def _loop(tr: Trainer, tokenizer, log: Callable[[str], None]) -> None:
    cfg, dist = tr.cfg, tr.dist
    out, path = Path(cfg.out_dir), checkpoint_path(cfg)
    # effective batch: every rank and every micro-step adds batch_size windows to one update
    tokens_per_step = dist.world_size * cfg.grad_accum * cfg.batch_size * tr.model.config.block_size
    log(f"{tokens_per_step:,} tokens per step ({dist.world_size} process(es) x {cfg.grad_accum} "
        f"micro-batch(es) x {cfg.batch_size} sequences x {tr.model.config.block_size} tokens), "
        f"device {tr.device}{' and one per rank' if dist.enabled else ''}, "
        f"autocast {str(tr.amp_dtype).removeprefix('torch.')}")
    flops = flops_per_token(tr.model.config, count_params(tr.model))
    if flops:
        name = torch.cuda.get_device_name(tr.device) if tr.device.type == "cuda" else ""
        peak, what = peak_flops(tr.device.type, name, tr.amp_dtype)
        log(f"MFU is per process, relative to {what}")
    settings = plain({k: v for k, v in dataclasses.asdict(cfg).items() if k != "model"})
    settings["world_size"] = dist.world_size
    facts = machine(tr.device)
    log(f"on {facts['device']}, {facts['threads']} thread(s), torch {facts['torch']}")
    metrics_path = out / run_folder.METRICS
    if dist.is_main:  # every rank has read what it needs (the process group met): now write
        if cfg.resume and (dropped := run_folder.cut_metrics(metrics_path, tr.step)):
            log(f"{metrics_path}: dropped {dropped} row(s) logged after step {tr.step}, the checkpoint's")
        elif cfg.overwrite and not cfg.resume:
            run_folder.clear(out)
        metrics = open(metrics_path, "a", encoding="utf-8")
    else:
        metrics = contextlib.nullcontext()

    def kept() -> str:
        return (f"{path} still holds step {tr.saved[0]} (val loss {tr.saved[1]:.4f})" if tr.saved
                else "nothing was saved")

    def record(**row) -> None:
        if dist.is_main:
            try:
                metrics.write(json.dumps(row) + "\n")
                metrics.flush()
            except OSError as e:
                raise WriteError(e.errno, f"could not write {metrics_path}: {e.strerror or e}; {kept()}") \
                    from None

    def evaluate_and_save() -> None:
        losses = evaluate(tr)
        finite_weights = all(bool(torch.isfinite(p).all()) for p in tr.model.parameters())
        if not (math.isfinite(losses["val"]) and math.isfinite(losses["train"]) and finite_weights):
            what = (f"evaluation gave val loss {losses['val']:.4g} (train {losses['train']:.4g})"
                    if finite_weights else "the weights hold values that are not finite")
            raise NonFiniteError(f"step {tr.step}: {what}; stopped without saving: {kept()} "
                                 "(try a lower --learning-rate or --dtype fp32)")
        best = losses["val"] < tr.best_val
        tr.best_val = min(tr.best_val, losses["val"])
        record(step=tr.step, train_loss=losses["train"], val_loss=losses["val"])
        bar.note(f"step {tr.step}: train {losses['train']:.4f}, val {losses['val']:.4f}")
        meta = {"steps": tr.step, "val_loss": losses["val"], "train_loss": losses["train"],
                "tokens_seen": tr.step * tokens_per_step, "train_seconds": round(tr.seconds, 1),
                "machine": facts, "train_config": settings}
        if tr.origin:
            meta["init_from"] = tr.origin
        try:
            save_training(tr, tokenizer, meta, best=best)
        except WriteError as e:
            raise WriteError(e.errno, f"step {tr.step}: {e}; free some space, then continue with "
                             f"{resume_command(cfg)}") from None
        tr.saved = (tr.step, losses["val"])

    t0, seconds0 = time.perf_counter(), tr.seconds  # training time of earlier sessions of this run
    show_bar = cfg.progress and dist.is_main
    if tr.step >= cfg.max_iters:
        log(f"{path} is at step {tr.step}, this run's --max-iters: nothing to do (pass a larger "
            "--max-iters to extend it)")
    # a --time-budget run stops at its deadline (model.train.time_budget.out_of_time) unless a resume
    # extended it past its planned steps, which makes it an ordinary run
    plan = cfg.budget_plan if cfg.budget_plan and cfg.max_iters == cfg.budget_plan["max_iters"] else None
    first_step, step_s = tr.step, plan["step_s"] if plan else 0.0
    with TrainProgress(cfg.max_iters, tr.step, cfg.eval_interval, enabled=show_bar, log=log) as bar, metrics:
        tr.model.train()
        tick, tick_step = time.perf_counter(), tr.step
        while tr.step < cfg.max_iters:
            if plan and _out_of_time(tr, plan, seconds0 + time.perf_counter() - t0, step_s):
                bar.note(_budget_spent(cfg, tr.step, step_s, resumed=tr.step == first_step))
                if tr.step > first_step and (tr.saved is None or tr.saved[0] != tr.step):
                    evaluate_and_save()
                break
            step_started = time.perf_counter()
            loss, norm = train_step(tr)
            tr.seconds = seconds0 + time.perf_counter() - t0
            step_s = max(plan["step_s"], time.perf_counter() - step_started) if plan else 0.0
            if tr.step % cfg.log_interval == 0 or tr.step == cfg.max_iters:
                now = time.perf_counter()
                steps, seconds = tr.step - tick_step, now - tick
                tok_s = steps * tokens_per_step / seconds
                mfu = flops * tok_s / dist.world_size / peak if flops else None
                stats = StepStats(tr.step, loss, get_lr(tr.step - 1, cfg), 1000 * seconds / steps, tok_s, mfu)
                record(step=tr.step, loss=loss, grad_norm=norm, lr=stats.lr, ms_per_step=stats.ms_per_step,
                       tokens_per_s=tok_s, mfu=mfu, elapsed_s=tr.seconds)
                bar.update(stats)
                tick, tick_step = now, tr.step
            if tr.step % cfg.eval_interval == 0 or tr.step == cfg.max_iters:
                started = time.perf_counter()
                tr.seconds = seconds0 + started - t0
                evaluate_and_save()
                bar.evaluated(time.perf_counter() - started)
                tick, tick_step = time.perf_counter(), tr.step  # evaluation time is not training throughput
    if tr.saved is not None:
        took = f" after {format_duration(tr.seconds)} of training" if tr.seconds else ""
        best = out / run_folder.BEST
        lower = (f"; {best} holds the weights of the lowest, {tr.best_val:.4f}"
                 if tr.best_val < tr.saved[1] and best.is_file() else "")
        log(f"done: {path} holds step {tr.saved[0]}, val loss {tr.saved[1]:.4f}{took}{lower}")
