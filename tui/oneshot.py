"""`gpt-tui -p PROMPT`: one completion as plain text on stdout, streamed as it is sampled (like
`llama-cli -p` and `ollama run MODEL PROMPT`), then exit. Notices go to stderr, so a pipe gets only
the text. A pipe or file gets it byte for byte; a terminal gets it as the app shows it (control
characters as symbols, model.terminal.visible), so a model's ESC ] 0 ; cannot retitle the window."""

from __future__ import annotations

from collections.abc import Callable
from typing import TextIO

from model.generate.backend import Backend, Settings
from model.terminal import visible
from tui.logprobs import Logprobs
from tui.stops import StopFilter


def run_oneshot(backend: Backend, prompt: str, settings: Settings, out: TextIO,
                log: Callable[[str], None] = lambda m: None, keep_stop: bool = False,
                logprobs: Logprobs | None = None) -> str | None:
    """Stream the completion of ``prompt`` to ``out``; its stop reason. Ctrl+C stops it (raised on).
    ``logprobs`` gathers each token's log-probabilities (tui.logprobs)."""
    generation = backend.stream(prompt, settings)
    block = backend.info().block_size
    if len(generation.prompt_ids) >= block:
        log(f"the prompt fills the context; the model sees its last {block} tokens")
    shown = StopFilter(settings.stop, keep_stop)
    # visible() maps character by character, so a sequence split across tokens is caught too
    show: Callable[[str], str] = visible if _is_terminal(out) else str
    try:
        for event in generation:
            if logprobs is not None:
                logprobs.add(event)
            out.write(show(shown.feed(event.text)))
            out.flush()
    finally:
        generation.close()
        out.write(show(shown.end()))
        out.flush()
    return generation.stop_reason


def _is_terminal(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):  # a closed or file-like stream: not a terminal
        return False
