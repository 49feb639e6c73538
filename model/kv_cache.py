"""A preallocated key/value cache, so each generated token costs one position of compute.

Without a cache, every new token re-runs the model over the whole context (nanoGPT's
``generate``). Attention at position t only needs the keys and values of positions <= t, and those
never change once computed, so we keep them: a decode step then computes q, k, v for one token
and attends over the stored past. The buffers are allocated once, up to ``block_size``, so
decoding does no allocation and ``reset()`` is free.

Shapes: L layers, B sequences, H heads, S = block_size slots, D head size.
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
        self.block_size = config.block_size
        shape = (config.n_layer, batch_size, config.n_head, config.block_size, config.head_size)
        # empty, not zeros: slots at or past pos are never read before they are written
        self.k = torch.empty(shape, device=device, dtype=dtype)  # (L, B, H, S, D)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.layers = [LayerKV(self, self.k[i], self.v[i]) for i in range(config.n_layer)]
        self.pos = 0

    def check_room(self, n: int) -> None:
        if self.pos + n > self.block_size:
            raise ValueError(
                f"KV cache full: {self.pos} + {n} positions exceed block_size {self.block_size}; "
                "reset() and re-feed the last part of the context (model.engine does this)"
            )

    def advance(self, n: int) -> None:
        self.check_room(n)
        self.pos += n

    def reset(self) -> None:
        self.pos = 0
