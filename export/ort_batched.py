"""Batched decoding on ONNX Runtime: model.generate.batched.BatchDecoder through the graph's own batch inputs.

The exported graph takes a batch with one past length P for every row, an attention_mask over the
P + T slots and per-row position_ids (export.graph). Rows of different lengths are therefore kept
right-aligned: row b's real keys fill the last lengths[b] columns of the past and the columns to
their left are padding, masked out. A decode step feeds one token per row and the past grows by
one column; a prefill runs a row alone (batch 1, no past) and its present is padded on the left
into the batch (or the batch is padded if the row is longer than P). Columns that are padding for
every row are dropped, so P stays the longest row's length, at most block_size. Rows that are
free take a dummy token under an all-zero mask; the graph lets every query see itself, so their
rows stay finite and are ignored.
"""

from __future__ import annotations

import numpy as np
import torch

from export.graph import input_names, output_names
from model.config import GPTConfig


class OrtBatchDecoder:
    """Up to ``rows`` sequences on one ONNX Runtime session, each at its own position."""

    def __init__(self, session, config: GPTConfig, rows: int):
        if rows < 1:
            raise ValueError(f"rows must be >= 1, got {rows}")
        self.session, self.config = session, config
        self.rows, self.block_size = rows, config.block_size
        self.names = input_names(config.n_layer)
        self.outputs = output_names(config.n_layer)
        self.lengths: list[int] = []  # real positions per row in use; len() = the batch's B
        self.past = self._empty(0, 0)  # 2L arrays (B, H, P, D)

    @property
    def P(self) -> int:
        return self.past[0].shape[2]

    def _empty(self, B: int, P: int) -> list[np.ndarray]:
        shape = (B, self.config.n_head, P, self.config.head_size)
        return [np.zeros(shape, dtype=np.float32) for _ in range(2 * self.config.n_layer)]

    def _mask(self, width: int) -> np.ndarray:
        """(B, width): 1 on each row's last lengths[b] columns."""
        cols = np.arange(width)[None, :]
        return (cols >= width - np.asarray(self.lengths)[:, None]).astype(np.int64)

    def _run(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, past) -> tuple:
        feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
        feeds |= dict(zip(self.names[3:], past, strict=True))
        logits, *present = self.session.run(self.outputs, feeds)
        return logits, present

    def step(self, tokens: dict[int, int]) -> dict[int, torch.Tensor]:
        B = len(self.lengths)
        if max(tokens) >= B:
            raise ValueError(f"row {max(tokens)} has not been prefilled")
        ids = np.zeros((B, 1), dtype=np.int64)
        positions = np.zeros((B, 1), dtype=np.int64)
        for b, t in tokens.items():
            if self.lengths[b] >= self.block_size:
                raise ValueError(f"row {b} is at block_size {self.block_size}; re-prefill it")
            ids[b, 0], positions[b, 0] = t, self.lengths[b]
        live = np.zeros((B, 1), dtype=np.int64)
        live[list(tokens)] = 1  # the new column is real for the rows that step
        mask = np.concatenate([self._mask(self.P), live], axis=1)  # (B, P + 1)
        logits, self.past = self._run(ids, mask, positions, self.past)
        for b in tokens:
            self.lengths[b] += 1
        self._trim()
        return {b: torch.from_numpy(logits[b, -1].copy()) for b in tokens}

    def prefill(self, row: int, ids: list[int]) -> torch.Tensor:
        T = len(ids)
        if not 1 <= T <= self.block_size:
            raise ValueError(f"a prefill takes 1 to block_size {self.block_size} tokens, not {T}")
        x = np.asarray([ids], dtype=np.int64)
        logits, present = self._run(x, np.ones_like(x), np.arange(T, dtype=np.int64)[None], self._empty(1, 0))
        if row >= len(self.lengths):  # new rows at the bottom: empty, all padding
            grow = row + 1 - len(self.lengths)
            self.past = [np.concatenate([p, q], axis=0) for p, q in zip(self.past, self._empty(grow, self.P),
                                                                          strict=True)]
            self.lengths += [0] * grow
        if T > self.P:  # pad every row on the left to the new row's length
            pad = ((0, 0), (0, 0), (T - self.P, 0), (0, 0))
            self.past = [np.pad(p, pad) for p in self.past]
        P = self.P
        for p, q in zip(self.past, present, strict=True):
            p[row] = 0
            p[row, :, P - T:] = q[0]
        self.lengths[row] = T
        self._trim()
        return torch.from_numpy(logits[0, -1].copy())

    def release(self, row: int) -> None:
        if row < len(self.lengths):
            self.lengths[row] = 0
            self._trim()

    def move(self, src: int, dst: int) -> None:
        for p in self.past:  # the same columns: right-aligned rows need no shift
            p[dst] = p[src]
        self.lengths[dst], self.lengths[src] = self.lengths[src], 0
        self._trim()

    def _trim(self) -> None:
        """Drop free rows at the bottom and columns that are padding for every row."""
        B = len(self.lengths)
        while B and self.lengths[B - 1] == 0:
            B -= 1
        drop = self.P - max(self.lengths[:B], default=0)
        if B < len(self.lengths) or drop:
            self.lengths = self.lengths[:B]
            self.past = [np.ascontiguousarray(p[:B, :, drop:]) for p in self.past]
