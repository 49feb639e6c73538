"""Backend A/B: one prompt, seed and settings through two backends, compared step by step.

Each backend runs alone (so its tokens/s is its own); their per-step sampled tokens and raw
logits are then compared. Logits are compared up to and including the first step where the
tokens differ: after that the two continue from different texts and a difference means nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from model.generate.backend import Backend, Settings, TokenEvent


@dataclass(frozen=True)
class Side:
    name: str  # "torch", "onnx"
    text: str
    ids: tuple[int, ...]
    tokens_per_s: float | None  # tokens over wall time, prefill included
    path: str = ""  # the file it decoded from
    precision: str = ""  # its weights' type and why (BackendInfo.precision)


@dataclass(frozen=True)
class ABResult:
    prompt: str
    settings: Settings  # with the seed both used
    a: Side
    b: Side
    agree: tuple[bool, ...]  # per step, over the steps both made
    logit_diff: tuple[float, ...]  # per compared step: max |logits_a - logits_b|

    @property
    def agreement(self) -> float:
        """The fraction of steps where both sampled the same token (1.0 when neither made any)."""
        return sum(self.agree) / len(self.agree) if self.agree else 1.0

    @property
    def first_divergence(self) -> int | None:
        return next((i for i, same in enumerate(self.agree) if not same), None)

    @property
    def max_logit_diff(self) -> float:
        return max(self.logit_diff, default=0.0)


def _run(backend: Backend, prompt: str, settings: Settings) -> tuple[list[TokenEvent], float | None]:
    start = time.perf_counter()
    events = list(backend.stream(prompt, settings))
    elapsed = time.perf_counter() - start
    return events, (len(events) / elapsed if events and elapsed > 0 else None)


def compare_backends(a: Backend, b: Backend, prompt: str, settings: Settings,
                     names: tuple[str, str] = ("torch", "onnx")) -> ABResult:
    """Run ``prompt`` through ``a`` then ``b`` with the same settings and seed; compare them."""
    if settings.seed is None:
        raise ValueError("A/B needs a fixed seed so both backends draw the same random numbers; "
                         "set one with /set seed N")
    events_a, rate_a = _run(a, prompt, settings)
    events_b, rate_b = _run(b, prompt, settings)
    agree = tuple(x.id == y.id for x, y in zip(events_a, events_b, strict=False))
    compared = agree.index(False) + 1 if False in agree else len(agree)
    diffs = []
    for x, y in zip(events_a[:compared], events_b[:compared], strict=True):
        if x.logits is not None and y.logits is not None:
            diffs.append(float((x.logits.float() - y.logits.float()).abs().max()))

    def side(name: str, backend: Backend, events: list[TokenEvent], rate: float | None) -> Side:
        info = backend.info()  # what was compared: a logit difference means little without it
        return Side(name, "".join(e.text for e in events), tuple(e.id for e in events), rate, info.path,
                    info.precision)

    return ABResult(prompt, settings, side(names[0], a, events_a, rate_a),
                    side(names[1], b, events_b, rate_b), agree, tuple(diffs))
