"""``gpt-train --time-budget 2h``: the most steps that fit in a wall-clock budget, fixed at the start.

A budget could end a run whenever the clock says so, but then the learning rate would not know
where the run ends (its cosine decay is laid over the steps), and a resumed run or a rerun would
stop elsewhere. So the budget is turned into steps once, at the start of a fresh run, and from
there the run is an ordinary one: ``max_iters`` is fixed, the schedule decays to ``min_lr`` at the
last step, and ``--resume`` continues it exactly. The turning is measured, as ``--attention auto``
is: a few real optimizer steps on the run's own model, batch and precision (their effect is undone,
so the run starts from the very state it would have without a budget), and a few evaluation
forwards. ``plan_steps`` fits the steps and evaluations into what is left of the budget after the
start-up, keeping back a small margin for a slower stretch of the machine.

A shared machine can slow down by more than any margin worth keeping (a neighbour's load, a
clock that drops over hours), so the plan is backed by a deadline: ``out_of_time`` stops the run
early, evaluated and checkpointed, when another step and the final evaluation would no longer fit.
The steps it did take are the plan's steps, so up to there the run is the one planned.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from model.data.corpus import get_batch
from model.device import autocast
from model.train.config import SettingsError, format_duration

TIMED_STEPS = 4  # optimizer steps timed (median), after one untimed step that pays for allocation
MARGIN = 0.02  # of the budget, kept back: a step a few percent slower over hours must still fit


def evaluations(steps: int, eval_interval: int) -> int:
    """How many evaluations a run of ``steps`` takes: one every interval, and one at the end."""
    return steps // eval_interval + (steps % eval_interval != 0)


@dataclass(frozen=True)
class Plan:
    """What a budget became; stored in the checkpoint's settings beside the budget."""

    budget_s: float
    startup_s: float  # from the command's start to the end of measuring
    step_s: float  # median optimizer step
    eval_s: float  # one evaluation with its checkpoint, estimated from timed forwards
    max_iters: int

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self, eval_interval: int, warmup_iters: int, min_lr: float, decay_iters: int) -> str:
        n_eval = evaluations(self.max_iters, eval_interval)
        total = self.startup_s + self.max_iters * self.step_s + n_eval * self.eval_s
        return (f"time budget {format_duration(self.budget_s)}: a step takes {self.step_s:.3f} s (median of "
                f"{TIMED_STEPS}), an evaluation ~{self.eval_s:.1f} s, start-up {self.startup_s:.0f} s; "
                f"{self.max_iters:,} steps and {n_eval} evaluation(s) fit in {format_duration(total)} "
                f"({MARGIN:.0%} kept back): --max-iters {self.max_iters}, warmup {warmup_iters}, cosine to "
                f"{min_lr:g} at {'the last step' if decay_iters == self.max_iters else f'step {decay_iters}'}"
                )


def out_of_time(plan: dict, seconds: float, step_s: float) -> bool:
    """Whether a run under ``plan`` (a Plan as stored) that has trained for ``seconds`` must stop
    now: one more step of ``step_s`` and the closing evaluation would end past the budget."""
    return plan["startup_s"] + seconds + step_s + plan["eval_s"] > plan["budget_s"]


def plan_steps(budget_s: float, startup_s: float, step_s: float, eval_s: float,
               eval_interval: int, warmup_iters: int) -> int:
    """The most steps whose training and evaluations fit in what start-up left of the budget.

    A run too short to finish its warmup and evaluate once is no run: a SettingsError says what
    would fit."""
    left = budget_s * (1 - MARGIN) - startup_s
    # evaluations add at most one per interval: start from the estimate that counts them as a
    # fraction of a step, then step down until the discrete count fits
    steps = max(0, int(left / (step_s + eval_s / eval_interval)))
    while steps > 0 and steps * step_s + evaluations(steps, eval_interval) * eval_s > left:
        steps -= 1
    if steps <= warmup_iters:
        need = startup_s + (warmup_iters + 1) * step_s + eval_s
        raise SettingsError(
            f"--time-budget {format_duration(budget_s)} is too short: start-up took {startup_s:.0f} s, "
            f"a step takes {step_s:.2f} s and an evaluation ~{eval_s:.1f} s, so it fits {steps} steps, "
            f"not the {warmup_iters} warmup steps and one evaluation; give at least "
            f"{format_duration(need / (1 - MARGIN) + 1)}, or lower --warmup-iters or --eval-iters")
    return steps


def measure(tr, train_step: Callable, evaluate_batches: int) -> tuple[float, float]:
    """(seconds per optimizer step, seconds per evaluation) of the run ``tr`` (model.train.state.Trainer).

    Takes 1 + TIMED_STEPS real steps, then puts back the weights, optimizer, scaler, step and every
    random state it had, so that training starts as it would have unmeasured. An evaluation is
    ``evaluate_batches`` forwards in eval mode, timed on two batches drawn from a generator of its
    own, plus writing a checkpoint's worth of state to memory."""
    from model.train.state import rng_state, set_rng_state

    weights = {k: v.detach().clone() for k, v in tr.model.state_dict().items()}
    optimizer = copy.deepcopy(tr.optimizer.state_dict())
    scaler = copy.deepcopy(tr.scaler.state_dict()) if tr.scaler else None
    rngs, step, skipped = rng_state(tr), tr.step, tr.skipped
    times = []
    for _ in range(1 + TIMED_STEPS):
        _sync(tr.device)
        start = time.perf_counter()
        train_step(tr)
        _sync(tr.device)
        times.append(time.perf_counter() - start)
    with torch.no_grad():
        tr.model.load_state_dict(weights)
    tr.optimizer.load_state_dict(optimizer)
    if tr.scaler:
        tr.scaler.load_state_dict(scaler)
    set_rng_state(tr, rngs)
    tr.step, tr.skipped = step, skipped
    return statistics.median(times[1:]), _evaluation_seconds(tr, evaluate_batches, weights, optimizer)


def _evaluation_seconds(tr, batches: int, weights: dict, optimizer: dict) -> float:
    gen = torch.Generator().manual_seed(0)  # its own stream: the run's batches stay untouched
    x, y = get_batch(tr.splits.split("val"), tr.cfg.batch_size, tr.model.config.block_size, gen)
    x, y = x.to(tr.device), y.to(tr.device)
    tr.model.eval()
    times = []
    with torch.no_grad():
        for _ in range(2):
            _sync(tr.device)
            start = time.perf_counter()
            with autocast(tr.device, tr.amp_dtype):
                tr.model(x, y)
            _sync(tr.device)
            times.append(time.perf_counter() - start)
    tr.model.train()
    start = time.perf_counter()  # a checkpoint's bulk, serialised (the disk write comes on top)
    torch.save({"model": weights, "optimizer": optimizer}, _Sink())
    return batches * min(times) + time.perf_counter() - start


class _Sink:
    """A file that forgets what is written to it: torch.save's cost without memory or disk."""

    def write(self, data) -> int:
        return len(data)

    def flush(self) -> None:
        pass


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
