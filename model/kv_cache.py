"""A preallocated key/value cache, so each generated token costs one position of compute.

Without a cache, every new token re-runs the model over the whole context (nanoGPT's
``generate``). Attention at position t only needs the keys and values of positions <= t, and those
never change once computed, so we keep them: a decode step then computes q, k, v for one token
and attends over the stored past. The buffers are allocated once, up to ``block_size``, so
decoding does no allocation and ``reset()`` is free.

Shapes: L layers, B sequences (R rows of a batch cache), H heads, S = block_size slots, D head size.
"""

from __future__ import annotations

import torch

from model.config import GPTConfig


class LayerKV:
    """One layer's slice of the cache: what ``CausalSelfAttention`` calls ``update`` on."""

    def __init__(self, owner: KVCache, k: torch.Tensor, v: torch.Tensor):
        self.owner = owner
        self.k, self.v = k, v  # (B, H, S, D) views into the owner's buffers

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new (B, H, T, D) keys/values at owner.pos; return slots [0, pos + T)."""
        start = self.owner.pos
        end = start + k.size(2)
        self.owner.check_room(end - start)
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        # every layer writes at the same pos; the model calls advance() once after the last layer
        return self.k[:, :, :end], self.v[:, :, :end]  # (B, H, end, D)


class KVCache:
    """Keys and values of every layer for ``batch_size`` sequences that share one position."""

    def __init__(
        self,
        config: GPTConfig,
        batch_size: int = 1,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        shape = (config.n_layer, batch_size, config.n_head, config.block_size, config.head_size)
        # empty, not zeros: slots at or past pos are never read before they are written
        k = torch.empty(shape, device=device, dtype=dtype)  # (L, B, H, S, D)
        self._bind(k, torch.empty_like(k))

    @classmethod
    def over(cls, k: torch.Tensor, v: torch.Tensor) -> KVCache:
        """A cache over existing (L, B, H, S, D) buffers, from position 0 (they are not copied)."""
        cache = cls.__new__(cls)
        cache._bind(k, v)
        return cache

    def _bind(self, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k, self.v = k, v  # (L, B, H, S, D)
        self.block_size = k.size(3)
        self.layers = [LayerKV(self, k[i], v[i]) for i in range(k.size(0))]
        self.pos = 0

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


class StaticLayerKV:
    """One layer's slice of a ``KVCache`` for a one-token step of fixed shapes: the new key/value go
    to the slot a device tensor names, and every slot comes back (the caller masks the ones past
    it). Nothing depends on a Python int, so the step can be captured once (CUDA graphs) or
    compiled once (torch.compile) and replayed at every position."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, slot: torch.Tensor):
        self.k, self.v = k, v  # (1, H, S, D) views into a KVCache's buffers
        self.slot = slot  # (1,) int64 on the same device: where this step writes

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k.index_copy_(2, self.slot, k)  # (1, H, 1, D) into slot
        self.v.index_copy_(2, self.slot, v)
        return self.k, self.v  # (1, H, S, D)


class RowKV:
    """One layer's slice of a ``BatchKVCache`` for a decode step in which each row sits at its own
    position: what ``CausalSelfAttention`` calls ``update`` on."""

    def __init__(self, owner: BatchKVCache, k: torch.Tensor, v: torch.Tensor):
        self.owner = owner
        self.k, self.v = k, v  # (R, H, S, D) views into the owner's buffers

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write one new key/value per row, (B, H, 1, D), at each row's own slot; return slots
        [0, width) of rows [0, B): the caller masks each row's slots past its position."""
        rows, slots = self.owner.step_rows, self.owner.step_slots  # (B,), (B,)
        self.k[rows, :, slots] = k[:, :, 0]  # advanced indices first: (B, H, D)
        self.v[rows, :, slots] = v[:, :, 0]
        B, width = k.size(0), self.owner.step_width
        return self.k[:B, :, :width], self.v[:B, :, :width]  # (B, H, width, D)


class BatchKVCache:
    """Keys and values of ``rows`` sequences that each have their own length, for batched decoding
    with continuous refill: a row is prefilled alone (``row(b)`` is a one-sequence cache over its
    slice), then decode steps feed one token to each of rows [0, B) together (``step_layers``)."""

    def __init__(self, config: GPTConfig, rows: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        if rows < 1:
            raise ValueError(f"rows must be >= 1, got {rows}")
        self.config = config
        self.block_size = config.block_size
        shape = (config.n_layer, rows, config.n_head, config.block_size, config.head_size)
        # zeros, not empty: a step attends over slots [0, width) of every row and masks the ones a
        # row has not written; a masked score must be finite (NaN + -inf is NaN), so no stray bits
        self.k = torch.zeros(shape, device=device, dtype=dtype)  # (L, R, H, S, D)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.lengths = [0] * rows  # positions cached per row
        self.step_rows = self.step_slots = torch.empty(0, dtype=torch.long)
        self.step_width = 0

    def row(self, b: int) -> KVCache:
        """A one-sequence cache over row b's slice of the buffers (from position 0)."""
        return KVCache.over(self.k[:, b:b + 1], self.v[:, b:b + 1])  # (L, 1, H, S, D)

    def move(self, src: int, dst: int) -> None:
        """Row dst takes row src's keys and values (its written slots; dst's others keep finite
        leftovers, masked like any slot past a row's position); src becomes empty."""
        n = self.lengths[src]
        self.k[:, dst, :, :n] = self.k[:, src, :, :n]
        self.v[:, dst, :, :n] = self.v[:, src, :, :n]
        self.lengths[dst], self.lengths[src] = n, 0

    def step_layers(self, positions: list[int]) -> list[RowKV]:
        """The per-layer caches for one decode step of rows [0, len(positions)), row b writing its
        new key at slot positions[b]; keys are returned up to the furthest row's slot."""
        if max(positions) >= self.block_size:
            raise ValueError(f"a row is at position {max(positions)}, past block_size {self.block_size}; "
                             "re-prefill it with the last part of its context")
        device = self.k.device
        self.step_rows = torch.arange(len(positions), device=device)
        self.step_slots = torch.tensor(positions, device=device)
        self.step_width = max(positions) + 1
        return [RowKV(self, self.k[i], self.v[i]) for i in range(self.config.n_layer)]
