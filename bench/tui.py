"""What the app's views into the model cost: tokens/s in the app (headless) against batch mode.

    python bench/tui.py [--tokens 500] [--runs 3]

The same model, prompt, seed and settings (temperature 0.8), three ways: the engine alone (what
batch mode runs), the app with every side panel hidden (F2's controls too), and the app with the
next-token panel, the attention panel and confidence colouring shown. tokens/s is wall-clock,
prefill included, median of --runs; the app's numbers include handing tokens to the UI thread.
Goal (issue 8): hidden panels cost under 5%, shown ones under 25%. Last line:
batch_tok_s=<f> hidden_tok_s=<f> shown_tok_s=<f> hidden_cost=<f>
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import shipped_or_random  # bench/ is first on sys.path when run as a script

# ... where this file would shadow the tui package: drop it before importing tui
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402

from model.backend import Backend, Settings  # noqa: E402
from model.engine import TorchBackend  # noqa: E402
from tui.app import GPTApp  # noqa: E402

PROMPT = "ROMEO:\n"


def batch_rate(backend: Backend, settings: Settings) -> float:
    start = time.perf_counter()
    tokens = sum(1 for _ in backend.stream(PROMPT, settings))
    return tokens / (time.perf_counter() - start)


async def app_rates(backend: Backend, settings: Settings, runs: int, shown: bool) -> list[float]:
    with tempfile.TemporaryDirectory() as sessions:
        app = GPTApp(backend, settings=settings, session_dir=Path(sessions))
        async with app.run_test(size=(160, 50)) as pilot:
            await pilot.press("f2")  # hide the controls: nothing on the side
            if shown:
                await pilot.press("f3", "f4", "f6")  # next token, attention, confidence colouring
            await pilot.pause()
            rates = []
            for _ in range(runs):
                start = time.perf_counter()
                app.start(PROMPT)
                # wait on the worker, not by polling: a busy poll of the UI loop starves the worker's
                # hand-offs to it and the run never finishes
                await app.workers.wait_for_complete()
                rates.append(app.current.timing.tokens / (time.perf_counter() - start))
            return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=500, help="new tokens per run")
    parser.add_argument("--runs", type=int, default=3, help="runs per way (median)")
    args = parser.parse_args()
    model, tokenizer, name = shipped_or_random()
    backend = TorchBackend(model, tokenizer, name=name)
    settings = Settings(temperature=0.8, max_new_tokens=args.tokens, seed=1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {name}; {args.tokens} tokens, "
          f"temperature 0.8, seed 1, median of {args.runs}")
    batch_rate(backend, settings)  # warm up
    batch = statistics.median(batch_rate(backend, settings) for _ in range(args.runs))
    hidden = statistics.median(asyncio.run(app_rates(backend, settings, args.runs, shown=False)))
    shown = statistics.median(asyncio.run(app_rates(backend, settings, args.runs, shown=True)))
    print(f"batch {batch:.1f} tok/s · app, panels hidden {hidden:.1f} · app, panels shown {shown:.1f} "
          f"(shown cost {1 - shown / batch:.1%})")
    print(f"batch_tok_s={batch:.2f} hidden_tok_s={hidden:.2f} shown_tok_s={shown:.2f} "
          f"hidden_cost={1 - hidden / batch:.4f}")


if __name__ == "__main__":
    main()
