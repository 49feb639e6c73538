"""What the app's views into the model cost: tokens/s in the app (headless) against batch mode.

    python bench/app.py [--tokens 500] [--runs 9] [--ckpt checkpoints/shakespeare.pt] [--backend torch]

The same model, prompt, seed and settings (temperature 0.8), four ways, in rounds (one run of each
per round, so the machine's drift hits all four alike; the order turns by one each round, so none
always runs after another; medians over --runs rounds):
  batch   the engine in this process on every core, as `gpt-tui --batch` runs it;
  child   the app's generation process alone, streamed without the app (tui.remote);
  hidden  the app, every side panel hidden (F2's controls too);
  shown   the app with the next-token panel, the attention panel and confidence colouring.
The app is made as gpt-tui makes it (generation in a child process, the UI keeps one core). Its
tokens/s is wall-clock from Enter until the UI has taken the last token, prefill included.
Goal (issue 8): hidden panels cost under 5%, shown ones under 25%. Rounds vary by +-15% on a small
VM, so the costs are also given as the median of each round's own ratio to batch mode with a 90%
bootstrap interval over the rounds: a goal is met reliably when the interval lies below it. Last line:
batch_tok_s=<f> hidden_tok_s=<f> shown_tok_s=<f> hidden_cost=<f>
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

# bench/ is first on sys.path when this runs as a script, where this file shadows the tui package
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402

from model.checkpoint import DEFAULT_CKPT, SHIPPED_DIR  # noqa: E402
from model.generate.backend import Backend, Settings  # noqa: E402
from tui.app import GPTApp, freeze_heap  # noqa: E402
from tui.backends import OnnxFactory, TorchFactory  # noqa: E402
from tui.remote import offloaded  # noqa: E402

PROMPT = "ROMEO:\n"
MODES = ("batch", "child", "hidden", "shown")


def stream_rate(backend: Backend, settings: Settings) -> float:
    start = time.perf_counter()
    tokens = sum(1 for _ in backend.stream(PROMPT, settings))
    return tokens / (time.perf_counter() - start)


async def app_rate(backend: Backend, name: str, settings: Settings, shown: bool) -> float:
    with tempfile.TemporaryDirectory() as sessions:
        app = GPTApp(backend, name, settings=settings, session_dir=Path(sessions))
        async with app.run_test(size=(160, 50)) as pilot:
            await pilot.press("f2")  # hide the controls: nothing on the side
            if shown:
                await pilot.press("f3", "f4", "f6")  # next token, attention, confidence colouring
            await pilot.pause()
            start = time.perf_counter()
            app.start(PROMPT)
            # wait on the worker, not by polling: a busy poll of the UI loop starves the worker's
            # hand-offs to it and the run never finishes
            await app.workers.wait_for_complete()
            while not app.current.done:  # then until the UI has taken the last tokens
                await asyncio.sleep(0.001)
            return app.current.timing.tokens / (time.perf_counter() - start)


def interval(values: list[float], level: float = 0.9, draws: int = 4000) -> tuple[float, float]:
    """A bootstrap interval for the median of ``values`` (resampling them; a fixed seed)."""
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(draws))
    return medians[int(draws * (1 - level) / 2)], medians[int(draws * (1 + level) / 2) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=500, help="new tokens per run")
    parser.add_argument("--runs", type=int, default=9, help="rounds (medians)")
    parser.add_argument("--ckpt", type=Path, default=SHIPPED_DIR / DEFAULT_CKPT, help="the checkpoint")
    parser.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                        help="onnx: ONNX Runtime on the checkpoint's export (made on first use)")
    args = parser.parse_args()
    if args.backend == "torch":
        factory = TorchFactory(args.ckpt, "cpu")
    else:
        factory = OnnxFactory(args.ckpt, provider="cpu")
    settings = Settings(temperature=0.8, max_new_tokens=args.tokens, seed=1)
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads; {args.ckpt.name} on {args.backend}; {args.tokens} "
          f"tokens, temperature 0.8, seed 1, median of {args.runs} rounds")
    backend = factory(lambda message: None)  # batch mode's
    app_backend = offloaded({args.backend: factory})[args.backend](lambda message: None)  # the app's
    if not app_backend.wait_ready(60):
        sys.exit(f"the app's generation process did not start: {app_backend.failure}")
    freeze_heap()  # as gpt-tui does before the app runs

    def measure(mode: str) -> float:
        if mode == "batch":  # batch mode has every core
            torch.set_num_threads(threads)
            return stream_rate(backend, settings)
        torch.set_num_threads(1)  # the app's UI process keeps one core
        if mode == "child":
            return stream_rate(app_backend, settings)
        return asyncio.run(app_rate(app_backend, args.backend, settings, shown=mode == "shown"))

    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    for round_ in range(args.runs + 1):  # round 0 warms up
        turn = round_ % len(MODES)
        figures = {mode: measure(mode) for mode in MODES[turn:] + MODES[:turn]}
        print(f"round {round_}{' (warm-up)' if round_ == 0 else ''}: "
              + " · ".join(f"{mode} {figures[mode]:.1f}" for mode in MODES), flush=True)
        if round_:
            for mode, rate in figures.items():
                rates[mode].append(rate)
    app_backend.close()
    batch, child, hidden, shown = (statistics.median(rates[mode]) for mode in MODES)
    print(f"tok/s: batch {batch:.1f} · child alone {child:.1f} ({1 - child / batch:.1%} below batch) · "
          f"app, panels hidden {hidden:.1f} ({1 - hidden / batch:.1%}) · shown {shown:.1f} "
          f"({1 - shown / batch:.1%})")
    costs = {mode: [1 - rate / base for rate, base in zip(rates[mode], rates["batch"], strict=True)]
             for mode in MODES[1:]}
    print("cost against batch mode, median of the rounds' own ratios [90% interval]: " + " · ".join(
        f"{mode} {statistics.median(c):.1%} [{low:.1%}, {high:.1%}]"
        for mode, c in costs.items() for low, high in [interval(c)]))
    print(f"batch_tok_s={batch:.2f} hidden_tok_s={hidden:.2f} shown_tok_s={shown:.2f} "
          f"hidden_cost={1 - hidden / batch:.4f}")


if __name__ == "__main__":
    main()
