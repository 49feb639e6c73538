"""The generation worker's loop and the typed messages it hands the UI.

The worker (a thread) iterates a run's stream, times each token, and every ``POST_EVERY`` seconds
posts the new ones as ``TokensArrived``; at the end, ``RunFinished`` with the rest and any error.
Messages, not ``call_from_thread``: that would block the worker until the UI had rendered, and
rendering time would become generation time. Posted to the app's own queue, they arrive in order.
"""

from __future__ import annotations

from collections.abc import Callable

from textual.message import Message

from model.generate.backend import TokenEvent
from tui.transcript import Run

POST_EVERY = 0.03  # seconds between batches of tokens sent to the UI


class TokensArrived(Message):
    """New tokens of ``run``, in order."""

    def __init__(self, run: Run, events: list[TokenEvent]) -> None:
        super().__init__()
        self.run, self.events = run, events


class RunFinished(Message):
    """``run``'s stream has ended: its last tokens, and what went wrong if it failed."""

    def __init__(self, run: Run, events: list[TokenEvent], error: str | None) -> None:
        super().__init__()
        self.run, self.events, self.error = run, events, error


def stream_run(run: Run, post: Callable[[Message], object], cancelled: Callable[[], bool]) -> None:
    """Sample ``run``'s tokens, posting them in batches; nothing once ``cancelled()`` (replaced by a
    newer generation, or the app is closing). Runs in a worker thread."""
    generation = run.generation
    pending: list[TokenEvent] = []
    last_post = run.timing.start
    error = None
    try:
        for event in generation:
            now = run.timing.token()
            pending.append(event)
            if cancelled():
                break
            if now - last_post >= POST_EVERY:
                post(TokensArrived(run, pending))
                pending, last_post = [], now
    except Exception as e:  # a failing backend ends this run, not the app
        error = f"{type(e).__name__}: {e}"
    finally:
        generation.close()
        run.timing.finish()
    if not cancelled():
        post(RunFinished(run, pending, error))
