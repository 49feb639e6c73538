"""Many generations at once: one forward pass a step for every row of a batch, with continuous refill.

A batch-1 decode step reads every weight to compute one token; a step over B rows reads them once
for B tokens, so on a memory- or overhead-bound CPU B rows cost little more than one. ``Batch``
runs up to ``rows`` ``engine.Generation``s side by side over a ``BatchDecoder``: each step feeds
every row what its generation needs (a prompt, one token, or the window's re-prefill), then lets
each generation sample and stop exactly as it would alone. When a row ends (end of text, max
tokens, a stop string) its row is free for the next prompt at once (continuous refill), and the
busy rows are packed back to the low end: a decoder's step spans rows [0, highest busy row], so a
hole left by a short generation would otherwise be paid for by every step until the rows above it end.

Nothing about sampling is batched: each generation keeps its own settings, its own
``torch.Generator`` (seeded per item), stop strings and block-size window, because each one is
still an ``engine.Generation``; only the forward passes are shared. Its decoder is a ``_Row``:
asked to ``feed`` before the batch has computed its logits, the row notes what was asked and
raises ``_NeedsInput`` (nothing in ``Generation`` has changed by then); once the batched pass has
run, the same call returns the row's logits. So the decisions stay in the one decode loop.

Batched logits equal one-at-a-time logits up to the summation order of a matmul with B rows
instead of one (~1e-7 in fp32), so a token can differ only where two candidates tie that closely.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from model.generate.backend import Settings, TokenEvent
from model.generate.engine import Generation
from model.tokenizer import Tokenizer


class BatchDecoder(Protocol):
    """Model state for ``rows`` sequences, each at its own position (a backend's batched decoder)."""

    rows: int
    block_size: int

    def prefill(self, row: int, ids: list[int]) -> torch.Tensor:
        """Start row over with ids (1 <= len <= block_size) -> float32 logits (V,) on the CPU."""
        ...

    def step(self, tokens: dict[int, int]) -> dict[int, torch.Tensor]:
        """One token for each given row (row -> id), in one pass -> row -> float32 logits (V,) on the
        CPU. Each given row must have fewer than block_size positions."""
        ...

    def release(self, row: int) -> None:
        """Row is free: its state may be dropped."""
        ...

    def move(self, src: int, dst: int) -> None:
        """Row dst (free) takes over row src's state, as if it had been prefilled and stepped there;
        src is then free."""
        ...


class _NeedsInput(Exception):
    """Raised by a row asked to feed before the batch computed its logits; never leaves ``Batch``."""


class _Row:
    """model.generate.backend.Decoder for one row: hands back the logits the batch computed for it.

    A reset only takes effect with the feed that follows it: the generation asks twice (once to
    say what it needs, once to take the logits) and must see the same ``pos`` both times."""

    def __init__(self, block_size: int):
        self.block_size = block_size
        self.pos = 0
        self.fresh = True  # reset since the last feed: the next feed is a prefill
        self.wanted: list[int] | None = None  # what the generation asked to feed this step
        self.ready: torch.Tensor | None = None  # its logits, once the batch has run

    def reset(self) -> None:
        self.fresh = True

    def feed(self, ids: list[int]) -> torch.Tensor:
        if self.ready is None:
            self.wanted = list(ids)
            raise _NeedsInput
        logits, self.ready, self.wanted = self.ready, None, None
        self.pos = len(ids) if self.fresh else self.pos + len(ids)
        self.fresh = False
        return logits


@dataclass
class _Slot:
    generation: Generation
    row: _Row


class Batch:
    """Up to ``decoder.rows`` generations advanced together, one token each per ``step()``."""

    def __init__(self, decoder: BatchDecoder, tokenizer: Tokenizer):
        self.decoder = decoder
        self.tokenizer = tokenizer
        self.slots: list[_Slot | None] = [None] * decoder.rows

    @property
    def free(self) -> int:
        return sum(s is None for s in self.slots)

    def __len__(self) -> int:
        return len(self.slots) - self.free

    def add(self, prompt: str, settings: Settings) -> Generation:
        """Start a generation in the lowest free row (rows stay packed at the low end, so a step
        spans fewer rows). Raises ValueError when every row is busy, and whatever ``Generation``
        raises for the prompt (unknown characters) before taking a row."""
        if not self.free:
            raise ValueError(f"all {len(self.slots)} rows are busy; step() until one ends")
        row = _Row(self.decoder.block_size)
        generation = Generation(row, self.tokenizer, prompt, settings)
        self.slots[self.slots.index(None)] = _Slot(generation, row)
        return generation

    def step(self) -> list[tuple[Generation, TokenEvent | None]]:
        """One token for every running generation, in row order: (generation, its event), or
        (generation, None) when it has ended (``stop_reason`` says why) and its row is free."""
        out: list[tuple[Generation, TokenEvent | None]] = []
        needs: list[int] = []
        for b, slot in enumerate(self.slots):  # what each generation needs fed (nothing is sampled)
            if slot is None:
                continue
            try:
                next(slot.generation)
            except _NeedsInput:
                needs.append(b)
                continue
            except StopIteration:
                self._free(b)
                out.append((slot.generation, None))
                continue
            raise RuntimeError("a batched generation produced a token without the batch's logits")
        slots = [(b, self.slots[b]) for b in needs]
        decode = {b: s.row.wanted[0] for b, s in slots if not s.row.fresh}
        # the step first, then the prefills: a step also touches rows outside it (see the decoders)
        logits = self.decoder.step(decode) if decode else {}
        for b, s in slots:
            if s.row.fresh:
                logits[b] = self.decoder.prefill(b, s.row.wanted)
        for b, s in slots:
            s.row.ready = logits[b]
            try:
                out.append((s.generation, next(s.generation)))
            except StopIteration:  # end of text: not a token
                self._free(b)
                out.append((s.generation, None))
        self._pack()
        return out

    def cancel(self, generation: Generation) -> None:
        """Stop ``generation`` (a client went away, a user pressed Esc) and free its row at once, so
        the next ``step()`` no longer computes it; a generation already ended is left as it is."""
        for b, slot in enumerate(self.slots):
            if slot is not None and slot.generation is generation:
                generation.close()
                self._free(b)
                self._pack()
                return

    def close(self) -> None:
        """Stop every running generation and free its row."""
        for b, slot in enumerate(self.slots):
            if slot is not None:
                slot.generation.close()
                self._free(b)

    def _free(self, b: int) -> None:
        self.slots[b] = None
        self.decoder.release(b)

    def _pack(self) -> None:
        """Move the highest busy rows down into the free rows below them, so rows [0, len) are busy.
        Between steps, where no row is waiting for the batch's logits."""
        busy = [b for b, slot in enumerate(self.slots) if slot is not None]
        holes = [b for b, slot in enumerate(self.slots[:len(busy)]) if slot is None]
        for dst, src in zip(holes, reversed(busy), strict=False):  # each hole takes a row above it
            self.decoder.move(src, dst)
            self.slots[dst], self.slots[src] = self.slots[src], None


def generate_all(decoder: BatchDecoder, tokenizer: Tokenizer,
                 jobs: list[tuple[str, Settings]]) -> list[Generation]:
    """Run every (prompt, settings) to its end through one ``Batch``, refilling rows as they free
    up; the finished generations (their ``ids``, ``text``, ``stop_reason``) in job order."""
    batch = Batch(decoder, tokenizer)
    done: list[Generation] = []
    pending = list(reversed(jobs))
    while pending or len(batch):
        while pending and batch.free:
            prompt, settings = pending.pop()
            done.append(batch.add(prompt, settings))
        batch.step()
    return done
