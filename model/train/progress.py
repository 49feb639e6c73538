"""What a training run shows while it runs: per log interval the step, loss, learning rate, ms/step,
tokens/s and MFU, and an ETA; as a rich progress bar, or as plain lines with ``--no-progress``.

MFU (model FLOPs utilisation) is nanoGPT's estimate: the FLOPs a step needs by PaLM's formula,
per second, over a peak that is an assumption stated at the start of the run (``peak_flops``).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from model.config import GPTConfig

# Dense bf16/fp16 tensor-core peaks from NVIDIA's datasheets (the SXM part where there are two),
# by a word of the device name. Any other GPU is measured against the A100's, as nanoGPT does.
GPU_PEAK_FLOPS = {"H100": 989e12, "A100": 312e12, "V100": 125e12, "T4": 65e12}
A100_PEAK = 312e12


def flops_per_token(config: GPTConfig, n_params: int) -> float | None:
    """Forward and backward FLOPs per trained token (nanoGPT's estimate_mfu, from the PaLM paper):
    6 per weight outside the position embedding, plus the attention scores and weighted sums.
    None for the bigram, which only looks rows up."""
    if config.kind != "gpt":
        return None
    n = n_params - config.block_size * config.n_embd  # position embeddings are looked up, not multiplied
    return 6 * n + 12 * config.n_layer * config.n_embd * config.block_size


@functools.cache
def peak_flops(device_type: str, device_name: str, dtype: torch.dtype) -> tuple[float, str]:
    """(FLOP/s that MFU is relative to, what that number is), for one device of the run."""
    if device_type == "cuda":
        for key, peak in GPU_PEAK_FLOPS.items():
            if key in device_name:
                return peak, f"the {key}'s dense bf16/fp16 peak of {peak / 1e12:.0f} TFLOP/s"
        return A100_PEAK, (f"an A100's bf16 peak of {A100_PEAK / 1e12:.0f} TFLOP/s, as nanoGPT "
                           f"({device_name} is not in model.train.progress.GPU_PEAK_FLOPS)")
    # CPUs (and Apple GPUs) publish no comparable figure: what a large matmul reaches here, measured
    # once per machine (the best of a few tries) and remembered, so that MFU keeps one baseline
    from model import measured

    device = torch.device(device_type)
    name = str(dtype).removeprefix("torch.")
    best, _ = measured.remembered("matmul rate", {"dtype": name}, device,
                                  lambda: {"flops": max(matmul_flops(device, dtype) for _ in range(3))})
    rate = best["flops"]
    what = "CPU" if device_type == "cpu" else device_type
    return rate, (f"this {what}'s {name} matmul rate, {rate / 1e9:.1f} GFLOP/s (measured once on this "
                  f"machine and kept in {measured.path()})")


def matmul_flops(device: torch.device, dtype: torch.dtype, n: int = 512, reps: int = 4) -> float:
    """FLOP/s of an n x n matmul here: big enough for the BLAS's fast path, a fraction of a second."""
    gen = torch.Generator().manual_seed(0)  # its own: the run's random streams stay untouched
    a, b = (torch.randn(n, n, generator=gen).to(device, dtype) for _ in range(2))
    a @ b  # warm-up: kernels, allocator
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device.type == "mps":
        torch.mps.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - start)


@dataclass
class StepStats:
    """One log interval."""

    step: int
    loss: float
    lr: float
    ms_per_step: float
    tokens_per_s: float
    mfu: float | None  # fraction of the stated peak


def eta_seconds(step: int, total: int, ms_per_step: float, eval_interval: int, eval_s: float) -> float:
    """Time left: the remaining steps at the current pace plus the evaluations still to come."""
    evals_left = total // eval_interval - step // eval_interval + (total % eval_interval != 0)
    return (total - step) * ms_per_step / 1000 + evals_left * eval_s


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class TrainProgress:
    """A bar with the latest interval's numbers and an ETA (or one plain line per interval)."""

    def __init__(self, total: int, done: int, eval_interval: int, enabled: bool = True,
                 log: Callable[[str], None] = print):
        self.total, self.eval_interval = total, eval_interval
        self.enabled = enabled
        self.log = log
        self.pace_ms: float | None = None  # smoothed ms/step, for the ETA
        self.eval_s = 0.0  # the last evaluation's duration
        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            console=Console(stderr=True), disable=not enabled,
        )
        self.task = self.progress.add_task("train", total=total, completed=done, info="")

    def __enter__(self) -> TrainProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def update(self, s: StepStats) -> None:
        # the first interval carries start-up costs; later ones are weighed in as nanoGPT smooths MFU
        self.pace_ms = s.ms_per_step if self.pace_ms is None else 0.7 * self.pace_ms + 0.3 * s.ms_per_step
        eta = eta_seconds(s.step, self.total, self.pace_ms, self.eval_interval, self.eval_s)
        mfu = "-" if s.mfu is None else f"{s.mfu:.2%}"
        numbers = (f"loss {s.loss:.4f}  lr {s.lr:.2e}  {s.ms_per_step:.1f} ms/step  "
                   f"{s.tokens_per_s:,.0f} tok/s  MFU {mfu}  ETA {format_duration(eta)}")
        if self.enabled:
            self.progress.update(self.task, completed=s.step, info=numbers)
        else:
            self.log(f"step {s.step}/{self.total}  {numbers}")

    def evaluated(self, seconds: float) -> None:
        self.eval_s = seconds

    def note(self, message: str) -> None:
        """A line above the bar (or a plain log line without one)."""
        if self.enabled:
            self.progress.console.print(message, markup=False, highlight=False)
        else:
            self.log(message)
