"""The cache-layout graph on ONNX Runtime, for one sequence or many: buffers the graph writes in place.

``OrtCache`` holds each layer's keys and values for ``rows`` sequences as fixed-size arrays
(rows, H, block_size, D), allocated once. A run binds rows [first, first + B) of every array
through an ``IOBinding`` as both the ``past_key_values.*`` input and the ``present.*`` output, so
ONNX Runtime's ScatterND finds its output at its input's address and writes only the new slots
(export.graph): nothing of the past is copied per token, in NumPy or in the graph, as
onnxruntime-genai's ``past_present_share_buffer``. The rows of a batch are left-aligned: row b's
keys sit at slots 0..lengths[b]-1, its new token at slot lengths[b] (its position), and the mask
gives each row its own slots, as model.generate.torch_backend.TorchBatchDecoder does with PyTorch.

The buffers live in host memory: with the CUDA provider, ONNX Runtime copies them to the device and
back each run (as with NumPy feeds). TODO: device buffers (``OrtValue.ortvalue_from_shape_and_type``
on cuda) would close that, with a binding per batch size, since a device OrtValue cannot be sliced.
"""

from __future__ import annotations

import numpy as np
import torch

from export.graph import input_names, output_names
from model.config import GPTConfig


class OrtCache:
    """Keys and values of every layer for ``rows`` sequences, written in place by the graph."""

    def __init__(self, session, config: GPTConfig, rows: int):
        if rows < 1:
            raise ValueError(f"rows must be >= 1, got {rows}")
        self.session, self.config, self.rows = session, config, rows
        shape = (rows, config.n_head, config.block_size, config.head_size)  # (R, H, S, D)
        # zeros: a pass reads slots [0, total) of its rows and masks the ones a row has not written;
        # a masked score must be finite (NaN + -inf is NaN). np.zeros maps zeroed pages lazily
        self.buffers = [np.zeros(shape, dtype=np.float32) for _ in range(2 * config.n_layer)]
        self.past_names = input_names(config.n_layer)[3:]
        self.present_names = output_names(config.n_layer)[1:]
        self._bindings: dict[tuple[int, int], object] = {}  # (first row, B) -> its IOBinding

    def _binding(self, first: int, B: int):
        """The IOBinding of rows [first, first + B): each buffer's rows bound as past and present."""
        binding = self._bindings.get((first, B))
        if binding is None:
            from onnxruntime import OrtValue

            binding = self.session.io_binding()
            for past, present, buffer in zip(self.past_names, self.present_names, self.buffers, strict=True):
                rows = OrtValue.ortvalue_from_numpy(buffer[first:first + B])  # a view: no copy
                binding.bind_ortvalue_input(past, rows)
                binding.bind_ortvalue_output(present, rows)
            self._bindings[(first, B)] = binding
        return binding

    def run(self, first: int, ids: np.ndarray, positions: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The graph on rows [first, first + B): ids and positions (B, T), mask (B, total) -> logits
        (B, T, V); the new keys/values land in those rows' buffers at their positions."""
        from onnxruntime import OrtValue

        binding = self._binding(first, ids.shape[0])
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("attention_mask", mask)
        binding.bind_cpu_input("position_ids", positions)
        logits = np.empty((*ids.shape, self.config.vocab_size), dtype=np.float32)  # (B, T, V)
        binding.bind_ortvalue_output("logits", OrtValue.ortvalue_from_numpy(logits))
        self.session.run_with_iobinding(binding)
        return logits


class OrtBatchDecoder:
    """model.generate.batched.BatchDecoder on a cache-layout graph: up to ``rows`` sequences, each at
    its own position."""

    def __init__(self, session, config: GPTConfig, rows: int):
        self.cache = OrtCache(session, config, rows)
        self.rows, self.block_size = rows, config.block_size
        self.lengths = [0] * rows  # positions cached per row

    def prefill(self, row: int, ids: list[int]) -> torch.Tensor:
        T = len(ids)
        if not 1 <= T <= self.block_size:
            raise ValueError(f"a prefill takes 1 to block_size {self.block_size} tokens, not {T}")
        x = np.asarray([ids], dtype=np.int64)  # (1, T)
        logits = self.cache.run(row, x, np.arange(T, dtype=np.int64)[None], np.ones_like(x))
        self.lengths[row] = T
        return torch.from_numpy(logits[0, -1])  # (V,)

    def step(self, tokens: dict[int, int]) -> dict[int, torch.Tensor]:
        B = max(tokens) + 1  # rows [0, B): a free or prefilling row in between takes a dummy token
        # a row not stepping writes its dummy key at a slot nobody reads before it is rewritten:
        # its next free one (it is prefilled after the step, from slot 0)
        positions = [self.lengths[b] if b in tokens else min(self.lengths[b], self.block_size - 1)
                     for b in range(B)]
        if max(positions) >= self.block_size:
            raise ValueError(f"a row is at position {max(positions)}, past block_size {self.block_size}; "
                             "re-prefill it with the last part of its context")
        ids = np.asarray([[tokens.get(b, 0)] for b in range(B)], dtype=np.int64)  # (B, 1)
        pos = np.asarray(positions, dtype=np.int64)[:, None]  # (B, 1)
        total = max(positions) + 1  # up to the furthest row's new slot
        mask = (np.arange(total)[None, :] <= pos).astype(np.int64)  # (B, total): each row its own past
        logits = self.cache.run(0, ids, pos, mask)  # (B, 1, V)
        for b in tokens:
            self.lengths[b] += 1
        return {b: torch.from_numpy(logits[b, -1]) for b in tokens}

    def release(self, row: int) -> None:
        self.lengths[row] = 0

    def move(self, src: int, dst: int) -> None:
        n = self.lengths[src]
        for buffer in self.cache.buffers:  # left-aligned rows: the same slots
            buffer[dst, :, :n] = buffer[src, :, :n]
        self.lengths[dst], self.lengths[src] = n, 0
