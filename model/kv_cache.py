"""A preallocated key/value cache, written by position, so each generated token costs one position of compute.

Without a cache, every new token re-runs the model over the whole context (nanoGPT's
``generate``). Attention at position t only needs the keys and values of positions <= t, and those
never change once computed, so we keep them: a decode step then computes q, k, v for one token
and attends over the stored past. The buffers are allocated once, up to ``block_size``, so
decoding does no allocation and ``reset()`` is free.

One write serves every caller, as gpt-fast's ``KVCache.update(input_pos, k, v)``: the new keys go
to the slots their positions name. A prompt writes slots 0..T-1, a decode step slot pos, each row
of a batch its own slot, and the fixed-shape step (compiled, or captured as a CUDA graph) the slot
a device tensor holds, so nothing in it depends on a Python int. What a pass reads back is slots
[0, span) of its rows: the driver of the pass sets ``span`` to the width of its mask (the past
plus the new tokens; every slot for the fixed-shape step, which masks the ones past its position).

Shapes: L layers, R rows (sequences), B rows in a pass (rows [0, B)), H heads, S = block_size
slots, D head size, T new tokens.
"""

from __future__ import annotations

import torch

from model.config import GPTConfig


class LayerKV:
    """One layer's keys and values: what ``CausalSelfAttention`` calls ``update`` on."""

    def __init__(self, owner: KVCache, k: torch.Tensor, v: torch.Tensor):
        self.owner = owner
        self.k, self.v = k, v  # (R, H, S, D) views into the owner's buffers

    def update(self, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new keys/values k, v (B, H, T, D) of rows [0, B) at the slots ``pos`` names,
        (T,) for every row alike or (B, T) for each row its own; return rows [0, B) over slots
        [0, span): (B, H, span, D)."""
        B, H, T, D = k.shape
        # the layer's buffer as a table of D-vectors, one line per (row, head, slot): the new
        # vector of (b, h, t) goes to line (b * H + h) * S + pos[b, t], all in one indexed copy
        lines = (self.owner.first_lines[:B, :, None] + pos.view(-1, 1, T)).view(-1)  # (B * H * T,)
        self.k.view(-1, D).index_copy_(0, lines, k.reshape(-1, D))
        self.v.view(-1, D).index_copy_(0, lines, v.reshape(-1, D))
        span = self.owner.span
        return self.k[:B, :, :span], self.v[:B, :, :span]  # (B, H, span, D)


class KVCache:
    """Keys and values of every layer for ``rows`` sequences.

    ``pos`` counts the positions every row has cached, for callers that move all rows together
    (``GPT.forward`` keeps it); a caller whose rows each have their own length (the batched
    decoder) keeps the lengths itself and passes each row's positions."""

    def __init__(
        self,
        config: GPTConfig,
        rows: int = 1,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        if rows < 1:
            raise ValueError(f"rows must be >= 1, got {rows}")
        shape = (config.n_layer, rows, config.n_head, config.block_size, config.head_size)
        # empty, not zeros: a pass that reads only the slots it wrote never sees the rest. One that
        # reads every slot and masks some (the fixed-shape step, a batch) zeroes the cache first
        # with zero_(): a masked score must be finite (NaN + -inf is NaN)
        k = torch.empty(shape, device=device, dtype=dtype)  # (L, R, H, S, D)
        self._bind(k, torch.empty_like(k))

    @classmethod
    def over(cls, k: torch.Tensor, v: torch.Tensor) -> KVCache:
        """A cache over existing (L, R, H, S, D) buffers, from position 0 (they are not copied)."""
        cache = cls.__new__(cls)
        cache._bind(k, v)
        return cache

    def _bind(self, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k, self.v = k, v  # (L, R, H, S, D)
        _, R, H, S, _ = k.shape
        self.block_size = S
        # line of (row r, head h, slot 0) in a layer's buffer seen as (R * H * S, D) lines
        heads = torch.arange(R * H, device=k.device).view(R, H)  # (R, H): r * H + h
        self.first_lines = heads * S  # (R, H)
        self.layers = [LayerKV(self, k[i], v[i]) for i in range(k.size(0))]
        self.pos = 0
        self.span = 0  # slots [0, span) the next pass reads back

    def check_room(self, n: int) -> None:
        if self.pos + n > self.block_size:
            raise ValueError(
                f"KV cache full: {self.pos} + {n} positions exceed block_size {self.block_size}; "
                "reset() and re-feed the last part of the context (model.generate.engine does this)"
            )

    def advance(self, n: int) -> None:
        self.check_room(n)
        self.pos += n

    def reset(self) -> None:
        self.pos = 0

    def zero_(self) -> KVCache:
        """Zero every slot (see ``__init__``); returns the cache."""
        self.k.zero_()
        self.v.zero_()
        return self

    def row(self, r: int) -> KVCache:
        """A one-row cache over row r's slice of the buffers (from position 0), for a row's prompt."""
        return KVCache.over(self.k[:, r:r + 1], self.v[:, r:r + 1])  # (L, 1, H, S, D)

    def move(self, src: int, dst: int, n: int) -> None:
        """Row dst takes row src's first n slots (its keys and values; dst's other slots keep what
        they held, finite and masked like any slot past a row's position)."""
        self.k[:, dst, :, :n] = self.k[:, src, :, :n]
        self.v[:, dst, :, :n] = self.v[:, src, :, :n]
