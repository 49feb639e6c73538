"""``gpt-train --attention auto``: time both attention paths on the run's own micro-step, keep the faster.

The explicit and fused paths compute the same maths (model.gpt), but which one is faster depends on
the device, the autocast dtype and the shape: a fused kernel is not always the fastest one a CPU
has for bf16. So a run measures instead of guessing: ``choose_attention`` times forward + backward
on one batch of the run's shape, the paths alternating so that a slow moment of a shared machine
hits both, and takes the smaller median. The training stack (model.train.loop.setup) calls it once, on
rank 0, before the weights are initialised; the checkpoint stores the concrete choice.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from model.config import Attention
from model.device import autocast

PATHS: tuple[Attention, ...] = ("fused", "explicit")  # on a tie the first wins: nanoGPT's path
STEPS = 3  # timed micro-steps per path, after one untimed warm-up each
BUDGET_S = 5.0  # stop timing early (after one step each) once this much time has gone
# rows of the run's (B, T) batch to time: a step's cost grows linearly in B, the attention paths
# differ in T, so a few full-length rows rank them like the whole batch in a fraction of the time
ROWS = 4


def choose_attention(
    model_factory: Callable[[Attention], torch.nn.Module],
    batch: tuple[torch.Tensor, torch.Tensor],
    device: torch.device,
    dtype: torch.dtype,
    steps: int = STEPS,
    clock: Callable[[], float] = time.perf_counter,
    budget_s: float = BUDGET_S,
) -> tuple[Attention, dict[Attention, float]]:
    """The faster attention path for one training micro-step -> (choice, median seconds per path).

    ``model_factory(path)`` builds the run's model with that path, on ``device``; ``batch`` is
    (x, y), both (B, T), on ``device``. Each step is forward + backward under autocast ``dtype``, as
    in training; no optimizer step is taken, so the factory's weights are left as they were. The
    caller owns the random state (dropout draws from it) and reseeds after."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    models = {path: model_factory(path).train() for path in PATHS}
    x, y = batch

    def micro_step(path: Attention) -> float:
        model = models[path]
        _sync(device)
        start = clock()
        with autocast(device, dtype):
            _, loss = model(x, y)
        loss.backward()
        _sync(device)  # GPUs run ahead of Python: wait, so the clock sees the work
        took = clock() - start
        model.zero_grad(set_to_none=True)
        return took

    for path in PATHS:  # the first call of each pays for allocation and kernel selection
        micro_step(path)
    times: dict[Attention, list[float]] = {path: [] for path in PATHS}
    began = clock()
    for i in range(steps):
        # alternate, and swap the order every round so neither path always goes first
        for path in PATHS if i % 2 == 0 else PATHS[::-1]:
            times[path].append(micro_step(path))
        if clock() - began > budget_s:
            break
    medians = {path: statistics.median(t) for path, t in times.items()}
    return min(PATHS, key=lambda p: medians[p]), medians


def describe(choice: Attention, medians: dict[Attention, float], batch: torch.Tensor,
             device: torch.device, dtype: torch.dtype) -> str:
    """The one line a run prints about what it measured and chose."""
    shown = ", ".join(f"{path} {1000 * medians[path]:.1f} ms" for path in PATHS)
    B, T = batch.shape
    return (f"attention auto: {shown} per micro-step (forward + backward, median, batch {B} x {T}, "
            f"{str(dtype).removeprefix('torch.')} on {device}): training with {choice}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
