"""Timing one generation, the same way for the app's stats bar and batch output.

Time to first token covers the prompt's prefill and the first sample; tokens/s counts the tokens
after the first over the time since the first, so it measures decoding alone (the prefill already
shows in the time to first token). The clock is injected so tests and snapshots see fixed numbers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

Clock = Callable[[], float]


@dataclass
class Timing:
    clock: Clock = time.perf_counter
    start: float = field(init=False)
    first: float | None = field(default=None, init=False)  # when the first token arrived
    last: float | None = field(default=None, init=False)  # when the latest token arrived
    end: float | None = field(default=None, init=False)
    tokens: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.start = self.clock()

    def token(self) -> float:
        """Count one token; return the time it arrived."""
        now = self.clock()
        self.first = now if self.first is None else self.first
        self.last = now
        self.tokens += 1
        return now

    def finish(self) -> None:
        self.end = self.clock()

    @property
    def ttft(self) -> float | None:
        return None if self.first is None else self.first - self.start

    @property
    def total(self) -> float | None:
        return None if self.end is None else self.end - self.start

    @property
    def tokens_per_s(self) -> float | None:
        if self.tokens < 2 or self.last is None or self.first is None or self.last <= self.first:
            return None
        return (self.tokens - 1) / (self.last - self.first)

    def to_dict(self) -> dict:
        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 6)

        return {"ttft_s": r(self.ttft), "total_s": r(self.total), "tokens_per_s": r(self.tokens_per_s)}


STOP_NAMES = {"eot": "end of text", "max_tokens": "max tokens", "stop_string": "stop string",
              "stopped": "stopped"}


def status_line(timing: Timing, stop_reason: str | None, context: int, block_size: int,
                seed: int | None, generating: bool, short: bool = False) -> str:
    """The stats bar: state, tokens, tokens/s, time to first token, context used, seed (left out when
    None); ``short`` for a narrow terminal (the same facts in fewer words)."""
    state = "generating" if generating else STOP_NAMES.get(stop_reason or "", "done")
    rate = timing.tokens_per_s
    ttft = timing.ttft
    first = "ttft" if short else "first token"
    return (" · " if short else "  ·  ").join([
        state,
        f"{timing.tokens} {'tok' if short else 'tokens'}",
        f"{rate:.1f} {'t/s' if short else 'tok/s'}" if rate is not None else "- tok/s",
        f"{first} {ttft * 1000:.0f}{'' if short else ' '}ms" if ttft is not None else f"{first} -",
        f"{'ctx' if short else 'context'} {min(context, block_size)}/{block_size}",
        *([f"seed {seed}"] if seed is not None else []),
    ])
