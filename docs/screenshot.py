"""Draw README's picture of the app: the shipped model completing a prompt, with the next-token
panel and confidence colouring shown, as an SVG made by Textual itself (no terminal needed).

    python docs/screenshot.py [--out docs/app.svg]

The model runs in this process on one thread, sampling with a fixed seed, so the text is the same
each time; the app is the one `gpt-tui` opens.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

import torch

from model.checkpoint import load_model, resolve_ckpt
from model.generate.backend import Settings
from model.generate.torch_backend import TorchBackend
from tui.app import GPTApp

PROMPT = "ROMEO:"
SIZE = (120, 34)


async def draw(out: Path) -> None:
    path = resolve_ckpt()
    model, tokenizer, meta = load_model(path)
    backend = TorchBackend(model, tokenizer, path=f"checkpoints/{path.name}", meta=meta)
    settings = Settings(temperature=0.8, max_new_tokens=240, seed=1)
    with tempfile.TemporaryDirectory() as sessions:
        app = GPTApp(backend, settings=settings, session_dir=Path(sessions),
                     history_path=Path(sessions) / "history")
        async with app.run_test(size=SIZE) as pilot:
            app.query_one("#prompt").load_text(PROMPT)
            await pilot.press("enter")
            for _ in range(3000):  # until the completion is done (at most a minute)
                if app.current is not None and app.current.done:
                    break
                await pilot.pause(0.02)
            await pilot.press("f3", "f6")  # the next-token panel, confidence colouring
            await pilot.pause(0.5)
            out.parent.mkdir(parents=True, exist_ok=True)
            app.save_screenshot(filename=out.name, path=str(out.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "app.svg")
    args = parser.parse_args()
    torch.set_num_threads(1)
    asyncio.run(draw(args.out))
    print(args.out)


if __name__ == "__main__":
    main()
