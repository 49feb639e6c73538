"""`gpt-tui -p PROMPT`: one completion as plain text on stdout, streamed as it is sampled (like
`llama-cli -p` and `ollama run MODEL PROMPT`), then exit. Notices go to stderr, so a pipe gets only
the text."""

from __future__ import annotations

from collections.abc import Callable
from typing import TextIO

from model.backend import Backend, Settings
from tui.stops import StopFilter


def run_oneshot(backend: Backend, prompt: str, settings: Settings, out: TextIO,
                log: Callable[[str], None] = lambda m: None, keep_stop: bool = False) -> str | None:
    """Stream the completion of ``prompt`` to ``out``; its stop reason. Ctrl+C stops it (raised on)."""
    generation = backend.stream(prompt, settings)
    block = backend.info().block_size
    if len(generation.prompt_ids) >= block:
        log(f"the prompt fills the context; the model sees its last {block} tokens")
    shown = StopFilter(settings.stop, keep_stop)
    try:
        for event in generation:
            out.write(shown.feed(event.text))
            out.flush()
    finally:
        generation.close()
        out.write(shown.end())
        out.flush()
    return generation.stop_reason
