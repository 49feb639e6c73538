"""The ONNX graph's contract, in one place: its input and output names, the metadata keys that travel
with it, and the module that is exported (the GPT with the past as inputs and the present as outputs).

  inputs   input_ids [B, T] int64, attention_mask [B, P+T] int64 (1 = real token, 0 = left
           padding), position_ids [B, T] int64, past_key_values.{i}.key / .value [B, H, P, D]
  outputs  logits [B, T, V], present.{i}.key / .value [B, H, P+T, D]

These are the names Hugging Face Optimum and onnxruntime-genai use for decoder-only models, so
their tools recognise the file. The prefill passes P = 0 (empty past tensors). The mask is built
inside the graph: query t (slot P + t) sees key s when s <= P + t and attention_mask[b, s] == 1,
and always sees itself, so a padded query row never has every score at -inf (no NaN), while real
tokens never see padding. The exporter (export.onnx_export), the checks (export.validate) and the
ONNX Runtime backend (export.ort_backend) all import these names from here.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from model.config import GPTConfig
from model.gpt import GPT

# metadata: gpt_from_scratch.format, .config, .tokenizer and .meta (JSON), so the file alone generates,
# and .weights: the type its weights were written in (fp32, or what export.quantize made of them)
META_PREFIX = "gpt_from_scratch."
WEIGHTS_KEY = f"{META_PREFIX}weights"
WEIGHT_TYPES = ("fp32", "fp16", "bf16", "int8", "int4")
FORMAT = "gpt-from-scratch-onnx/1"


def input_names(n_layer: int) -> list[str]:
    past = [f"past_key_values.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *past]


def output_names(n_layer: int) -> list[str]:
    return ["logits", *(f"present.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value"))]


class _PastLayer:
    """model.gpt.LayerCache over explicit past tensors: concatenates and remembers the present."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor):
        self.k, self.v = k, v

    def update(self, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        # the new keys follow the past whatever their positions: a left-padded row's positions
        # count its real tokens only, but its slots count the padding too
        self.k = torch.cat([self.k, k], dim=2)  # (B, H, P + T, D)
        self.v = torch.cat([self.v, v], dim=2)
        return self.k, self.v


class OnnxDecoderModel(nn.Module):
    """The GPT with the past as inputs and the present as outputs: what goes into the graph."""

    def __init__(self, gpt: GPT):
        super().__init__()
        # the same weights, attention written out step by step: MatMul, Where and Softmax, which
        # ONNX Runtime fuses well
        self.gpt = GPT(gpt.config.replace(attention="explicit", dropout=0.0))
        self.gpt.load_state_dict(gpt.state_dict())
        self.gpt.eval()

    def forward(self, input_ids, attention_mask, position_ids, *past):
        T = input_ids.size(1)
        P = past[0].size(2)
        S = attention_mask.size(1)  # P + T
        q_slot = torch.arange(T, device=input_ids.device) + P  # (T,) where each new token sits
        k_slot = torch.arange(S, device=input_ids.device)  # (S,)
        causal = k_slot[None, :] <= q_slot[:, None]  # (T, S)
        itself = k_slot[None, :] == q_slot[:, None]  # (T, S): keeps padded rows finite
        real = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
        mask = (causal[None, None] & real) | itself[None, None]  # (B, 1, T, S)
        layers = [_PastLayer(past[2 * i], past[2 * i + 1]) for i in range(self.gpt.config.n_layer)]
        logits = self.gpt.forward_at(input_ids, position_ids, causal=False, mask=mask, caches=layers)
        present = [t for layer in layers for t in (layer.k, layer.v)]
        return (logits, *present)


def sample_inputs(
    config: GPTConfig, batch: int, new: int, past: int, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """Random valid inputs (no padding): ids, mask, positions and past tensors of the given sizes."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.vocab_size, (batch, new), generator=g)
    mask = torch.ones(batch, past + new, dtype=torch.long)
    positions = torch.arange(past, past + new).expand(batch, new)
    shape = (batch, config.n_head, past, config.head_size)
    pasts = [torch.randn(shape, generator=g) for _ in range(2 * config.n_layer)]
    return (ids, mask, positions, *pasts)
