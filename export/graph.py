"""The ONNX graph's contract, in one place: its input and output names, the two cache layouts, the
metadata keys that travel with it, and the module that is exported.

Both layouts have the names Hugging Face Optimum and onnxruntime-genai use for decoder-only models:

  inputs   input_ids [batch, new] int64, attention_mask [batch, total] int64 (1 = a real slot),
           position_ids [batch, new] int64, past_key_values.{i}.key / .value [batch, H, past, D]
  outputs  logits [batch, new, V], present.{i}.key / .value

They differ in what the past is:

- ``cache`` (format ``gpt-from-scratch-onnx/2``, our own backend's): the past is a fixed-size cache
  of ``past`` >= total slots, and the present is that cache with the new keys/values written at
  the slots their positions name (a ScatterND), the rest untouched. So a runtime binds each present
  output to the very buffer it feeds as the past (IOBinding), and ONNX Runtime's ScatterND, seeing
  its output at its input's address, writes the new slots in place: no copy of the past per token,
  as onnxruntime-genai's ``past_present_share_buffer``. Attention reads slots [0, total); a row's
  keys sit at their positions, so rows of different lengths share a batch left-aligned, each
  masked to its own slots.
- ``concat`` (format ``gpt-from-scratch-onnx/1``, every file from before the cache layout, and the
  ONNX folder's graph, export.folder): the past holds exactly the P slots seen so far and the
  present is past + new (a Concat, a new buffer every step), total = P + new. This is what
  Optimum's ``ORTModelForCausalLM`` feeds (it passes an empty past first and left-pads a batch)
  and what onnxruntime-genai runs with ``past_present_share_buffer: false``.

The mask is built inside the graph: query t sees key s when s is at or before the query's slot and
attention_mask[b, s] == 1, and always sees itself, so a padded or idle query row never has every
score at -inf (no NaN), while real tokens never see padding. The exporter (export.onnx_export), the
checks (export.validate) and the ONNX Runtime backend (export.ort_backend) import all of this from
here.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn

from model.config import GPTConfig
from model.gpt import GPT

# metadata: gpt_from_scratch.format, .config, .tokenizer and .meta (JSON), so the file alone generates,
# and .weights: the type its weights were written in (fp32, or what export.quantize made of them)
META_PREFIX = "gpt_from_scratch."
WEIGHTS_KEY = f"{META_PREFIX}weights"
WEIGHT_TYPES = ("fp32", "fp16", "bf16", "int8", "int4")
Layout = Literal["cache", "concat"]
FORMATS: dict[Layout, str] = {"cache": "gpt-from-scratch-onnx/2", "concat": "gpt-from-scratch-onnx/1"}
# the names of the dynamic dimensions, written into the file (the exporter would call some s53)
DIMS = {"input_ids": ("batch", "new"), "position_ids": ("batch", "new"), "logits": ("batch", "new"),
        "attention_mask": ("batch", "total")}
PAST_DIMS: dict[Layout, tuple[str, str]] = {"cache": ("batch", "past"), "concat": ("batch", "past")}
PRESENT_DIMS: dict[Layout, tuple[str, str]] = {"cache": ("batch", "past"), "concat": ("batch", "total")}


def input_names(n_layer: int) -> list[str]:
    past = [f"past_key_values.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *past]


def output_names(n_layer: int) -> list[str]:
    return ["logits", *(f"present.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value"))]


class _ConcatLayer:
    """model.gpt.LayerCache over explicit past tensors: the new keys follow the past, whatever their
    positions (a left-padded row's positions count its real tokens, its slots the padding too)."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor):
        self.k, self.v = k, v  # (B, H, P, D)

    def update(self, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        self.k = torch.cat([self.k, k], dim=2)  # (B, H, P + T, D)
        self.v = torch.cat([self.v, v], dim=2)
        return self.k, self.v


class _CacheLayer:
    """model.gpt.LayerCache over a fixed-size cache input: the present is the cache with the new
    keys/values at the slots of their positions (one ScatterND each), read back up to ``total``."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, total: int):
        self.k, self.v = k, v  # (B, H, S, D)
        self.total = total

    def update(self, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        B, H, T, _ = k.shape
        # index (b, h, pos[b, t]) for each new vector (b, h, t): ScatterND's indices, (B, H, T, 3)
        b = torch.arange(B, device=k.device)[:, None, None].expand(B, H, T)
        h = torch.arange(H, device=k.device)[None, :, None].expand(B, H, T)
        index = (b, h, pos[:, None, :].expand(B, H, T))
        self.k = self.k.index_put(index, k)  # (B, H, S, D): the cache with the new slots written
        self.v = self.v.index_put(index, v)
        return self.k[:, :, :self.total], self.v[:, :, :self.total]  # (B, H, total, D)


class OnnxDecoderModel(nn.Module):
    """The GPT with the past as inputs and the present as outputs, in either layout: what goes into
    the graph."""

    def __init__(self, gpt: GPT, layout: Layout = "cache"):
        super().__init__()
        # the same weights, attention written out step by step: MatMul, Where and Softmax, which
        # ONNX Runtime fuses well
        self.gpt = GPT(gpt.config.replace(attention="explicit", dropout=0.0))
        self.gpt.load_state_dict(gpt.state_dict())
        self.gpt.eval()
        self.layout = layout

    def forward(self, input_ids, attention_mask, position_ids, *past):
        B, T = input_ids.shape
        total = attention_mask.size(1)
        k_slot = torch.arange(total, device=input_ids.device)  # (total,)
        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(self.gpt.config.n_layer)]
        if self.layout == "cache":
            q_slot = position_ids  # (B, T): a token's slot is its position
            layers = [_CacheLayer(k, v, total) for k, v in pairs]
        else:
            P = past[0].size(2)  # the new tokens follow the past's P slots
            q_slot = (torch.arange(T, device=input_ids.device) + P).expand(B, T)  # (B, T)
            layers = [_ConcatLayer(k, v) for k, v in pairs]
        causal = k_slot[None, None, :] <= q_slot[:, :, None]  # (B, T, total)
        itself = k_slot[None, None, :] == q_slot[:, :, None]  # (B, T, total): keeps idle rows finite
        real = attention_mask.bool()[:, None, :]  # (B, 1, total)
        mask = ((causal & real) | itself)[:, None]  # (B, 1, T, total)
        logits = self.gpt.forward_at(input_ids, position_ids, causal=False, mask=mask, caches=layers)
        present = [t for layer in layers for t in (layer.k, layer.v)]
        return (logits, *present)


def sample_inputs(config: GPTConfig, batch: int, new: int, past: int, layout: Layout = "cache",
                  seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random valid inputs (no padding) for ``new`` tokens after ``past`` positions: ids, mask,
    positions and past tensors; the cache layout's has two slots more than ``past + new``, random
    like the rest: the graph must read only slots [0, total)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.vocab_size, (batch, new), generator=g)
    mask = torch.ones(batch, past + new, dtype=torch.long)
    positions = torch.arange(past, past + new).expand(batch, new)
    slots = past + new + 2 if layout == "cache" else past  # the cache: room to spare past total
    shape = (batch, config.n_head, slots, config.head_size)
    pasts = [torch.randn(shape, generator=g) for _ in range(2 * config.n_layer)]
    return (ids, mask, positions, *pasts)
