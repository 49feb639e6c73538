"""Export a checkpoint to one self-contained ONNX file with a KV cache, named as decoders are elsewhere.

The graph (``OnnxDecoderModel``) serves the prompt and every new token alike:

  inputs   input_ids [B, T] int64, attention_mask [B, P+T] int64 (1 = real token, 0 = left
           padding), position_ids [B, T] int64, past_key_values.{i}.key / .value [B, H, P, D]
  outputs  logits [B, T, V], present.{i}.key / .value [B, H, P+T, D]

These are the names Hugging Face Optimum and onnxruntime-genai use for decoder-only models, so
their tools recognise the file. The prefill passes P = 0 (empty past tensors). The mask is built
inside the graph: query t (slot P + t) sees key s when s <= P + t and attention_mask[b, s] == 1,
and always sees itself, so a padded query row never has every score at -inf (no NaN), while real
tokens never see padding. The config, tokenizer and training facts travel in the file's metadata
(``gpt_from_scratch.*`` keys), so the .onnx alone is enough to generate text.

The exporter: ``torch.onnx.export(dynamo=True)``, torch 2.13's default and the maintained path
(the TorchScript exporter is deprecated). It captures the graph with ``torch.export``, so dynamic
sizes are declared, not inferred: batch, new tokens and past length are ``Dim``s, and the sample
inputs use sizes that are neither 0 nor 1 (B=2, T=3, P=4), because torch.export specialises a
dimension that is 0 or 1 in the example to that constant. Attention is exported in the explicit
form (MatMul, Where, Softmax), which ONNX Runtime fuses well; the weights are the same as the
fused path's.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

from model.checkpoint import CheckpointError, load, restore_model
from model.gpt import GPT

META_PREFIX = "gpt_from_scratch."
FORMAT = "gpt-from-scratch-onnx/1"
DEFAULT_OPSET = 18


def input_names(n_layer: int) -> list[str]:
    past = [f"past_key_values.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *past]


def output_names(n_layer: int) -> list[str]:
    return ["logits", *(f"present.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value"))]


class _PastLayer:
    """model.gpt.LayerCache over explicit past tensors: concatenates and remembers the present."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor):
        self.k, self.v = k, v

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k = torch.cat([self.k, k], dim=2)  # (B, H, P + T, D)
        self.v = torch.cat([self.v, v], dim=2)
        return self.k, self.v


class OnnxDecoderModel(nn.Module):
    """The GPT with the past as inputs and the present as outputs: what goes into the graph."""

    def __init__(self, gpt: GPT):
        super().__init__()
        # the same weights, attention written out step by step (see the module docstring)
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
        logits = self.gpt.logits(input_ids, position_ids, causal=False, mask=mask, caches=layers)
        present = [t for layer in layers for t in (layer.k, layer.v)]
        return (logits, *present)


def sample_inputs(config, batch: int, new: int, past: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random valid inputs (no padding): ids, mask, positions and past tensors of the given sizes."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.vocab_size, (batch, new), generator=g)
    mask = torch.ones(batch, past + new, dtype=torch.long)
    positions = torch.arange(past, past + new).expand(batch, new)
    shape = (batch, config.n_head, past, config.head_size)
    pasts = [torch.randn(shape, generator=g) for _ in range(2 * config.n_layer)]
    return (ids, mask, positions, *pasts)


def onnx_metadata(ckpt: dict) -> dict[str, str]:
    """What travels in the .onnx: enough to rebuild the tokenizer and know the model."""
    return {
        f"{META_PREFIX}format": FORMAT,
        f"{META_PREFIX}config": json.dumps(ckpt["config"]),
        f"{META_PREFIX}tokenizer": json.dumps(ckpt["tokenizer"]),
        f"{META_PREFIX}meta": json.dumps(_jsonable(ckpt.get("meta", {}))),
    }


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=str))


def export_onnx(
    ckpt_path: str | Path,
    out_path: str | Path | None = None,
    opset: int | None = None,
    progress: Callable[[str], None] | None = None,
    validate: bool = True,
) -> Path:
    """Write ``out_path`` (default: the checkpoint's path with .onnx) and, unless told not to,
    validate it (checker with shape inference, parity, greedy tokens; see export.validate)."""
    say = progress or (lambda message: None)
    ckpt_path = Path(ckpt_path)
    out = Path(out_path) if out_path else ckpt_path.with_suffix(".onnx")
    say(f"loading {ckpt_path}")
    ckpt = load(ckpt_path)
    model, _ = restore_model(ckpt, ckpt_path)
    if not isinstance(model, GPT):
        raise CheckpointError(f"{ckpt_path} holds a {model.config.kind} model; only the GPT exports")
    wrapper = OnnxDecoderModel(model)
    L = model.config.n_layer
    say(f"exporting {L} layers x {model.config.n_embd} (opset {opset or DEFAULT_OPSET})")
    batch, new, past = torch.export.Dim("batch"), torch.export.Dim("new"), torch.export.Dim("past")
    # the mask's length is past + new: let torch.export derive it from the graph
    dynamic = ({0: batch, 1: new}, {0: batch, 1: torch.export.Dim.AUTO}, {0: batch, 1: new},
               tuple({0: batch, 2: past} for _ in range(2 * L)))  # *past arrives as one tuple
    onnx_log = logging.getLogger("torch.onnx")
    level = onnx_log.level
    onnx_log.setLevel(logging.ERROR)  # the exporter's notes (e.g. torchvision absent) are for its developers
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper, sample_inputs(model.config, batch=2, new=3, past=4), dynamo=True,
            dynamic_shapes=dynamic, input_names=input_names(L), output_names=output_names(L),
            opset_version=opset or DEFAULT_OPSET, optimize=True, verbose=False,
        )
    onnx_log.setLevel(level)
    proto = program.model_proto
    import onnx

    for key, value in onnx_metadata(ckpt).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    onnx.save_model(proto, tmp, save_as_external_data=False)  # one file, no side data
    tmp.replace(out)
    if validate:
        from export.validate import validate_export

        validate_export(out, model, say)
    return out
