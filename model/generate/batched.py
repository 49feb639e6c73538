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
still an ``engine.Generation``; only the forward passes are shared. A step reads top to bottom:
1. ask each running generation what the model must see next (``Generation.to_feed()``: its prompt,
   its last token, or the window's re-prefill); one that has ended frees its row;
2. run the passes: one decode step for the rows that carry on, a prefill for each row that starts over;
3. hand each generation its logits (``Generation.sample_from()``), which samples, stops and builds
   the event exactly as ``next()`` does alone.

Batched logits equal one-at-a-time logits up to the summation order of a matmul with B rows
instead of one (~1e-7 in fp32), so a token can differ only where two candidates tie that closely.
"""

from __future__ import annotations

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


class _InBatch:
    """The decoder of a generation in a ``Batch``: its logits come from the batch's shared passes
    (``Generation.sample_from``), so it is never fed itself."""

    def __init__(self, block_size: int):
        self.block_size = block_size
        self.pos = 0

    def reset(self) -> None:
        pass

    def feed(self, ids: list[int]) -> torch.Tensor:
        raise RuntimeError("a generation in a Batch is advanced by Batch.step(), not by next()")


class Batch:
    """Up to ``decoder.rows`` generations advanced together, one token each per ``step()``."""

    def __init__(self, decoder: BatchDecoder, tokenizer: Tokenizer):
        self.decoder = decoder
        self.tokenizer = tokenizer
        self.rows: list[Generation | None] = [None] * decoder.rows  # row -> its generation

    @property
    def free(self) -> int:
        return self.rows.count(None)

    def __len__(self) -> int:
        return len(self.rows) - self.free

    def add(self, prompt: str, settings: Settings) -> Generation:
        """Start a generation in the lowest free row (rows stay packed at the low end, so a step
        spans fewer rows). Raises ValueError when every row is busy, and whatever ``Generation``
        raises for the prompt (unknown characters) before taking a row."""
        if not self.free:
            raise ValueError(f"all {len(self.rows)} rows are busy; step() until one ends")
        generation = Generation(_InBatch(self.decoder.block_size), self.tokenizer, prompt, settings)
        self.rows[self.rows.index(None)] = generation
        return generation

    def step(self) -> list[tuple[Generation, TokenEvent | None]]:
        """One token for every running generation, in row order: (generation, its event), or
        (generation, None) when it has ended (``stop_reason`` says why) and its row is free."""
        out: list[tuple[Generation, TokenEvent | None]] = []
        # 1. what each generation needs the model to see; one that has ended leaves its row
        wanted: dict[int, tuple[list[int], bool]] = {}
        for b, generation in enumerate(self.rows):
            if generation is None:
                continue
            if generation.ended():
                self._free(b)
                out.append((generation, None))
            else:
                wanted[b] = generation.to_feed()
        # 2. the forward passes: the decode step first, then the prefills (a step also writes rows
        # outside it, see the decoders; a prefill then starts its row over)
        carry_on = {b: ids[0] for b, (ids, start_over) in wanted.items() if not start_over}
        logits = self.decoder.step(carry_on) if carry_on else {}
        for b, (ids, start_over) in wanted.items():
            if start_over:
                logits[b] = self.decoder.prefill(b, ids)
        # 3. each generation samples from its own logits, as it would alone
        for b in wanted:
            generation = self.rows[b]
            try:
                out.append((generation, generation.sample_from(logits[b])))
            except StopIteration:  # end of text: not a token
                self._free(b)
                out.append((generation, None))
        self._pack()
        return out

    def cancel(self, generation: Generation) -> None:
        """Stop ``generation`` (a client went away, a user pressed Esc) and free its row at once, so
        the next ``step()`` no longer computes it; a generation already ended is left as it is."""
        for b, running in enumerate(self.rows):
            if running is generation:
                generation.close()
                self._free(b)
                self._pack()
                return

    def close(self) -> None:
        """Stop every running generation and free its row."""
        for b, generation in enumerate(self.rows):
            if generation is not None:
                generation.close()
                self._free(b)

    def _free(self, b: int) -> None:
        self.rows[b] = None
        self.decoder.release(b)

    def _pack(self) -> None:
        """Move the highest busy rows down into the free rows below them, so rows [0, len) are busy.
        Between steps, where every generation has taken its logits."""
        busy = [b for b, generation in enumerate(self.rows) if generation is not None]
        holes = [b for b, generation in enumerate(self.rows[:len(busy)]) if generation is None]
        for dst, src in zip(holes, reversed(busy), strict=False):  # each hole takes a row above it
            self.decoder.move(src, dst)
            self.rows[dst], self.rows[src] = self.rows[src], None


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
