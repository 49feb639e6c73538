"""Check an exported .onnx against the PyTorch model it came from; raise with the figures if it is off.

1. ``onnx.checker`` with full shape inference.
2. Logit parity, ONNX Runtime against PyTorch (the same weights in eager mode, the file's cache
   layout), at several batch, prompt and past lengths, including a batch of prompts of different
   lengths; the max abs difference is reported and must stay under ``LOGIT_TOLERANCE``; a NaN or
   infinite logit on either side fails.
3. Greedy tokens: a prompt plus 20 steps through both backends' decoders must be identical (every
   step compared: end-of-text does not end it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch

from export.graph import Layout, OnnxDecoderModel, input_names, sample_inputs
from export.ort_backend import load_ort_backend
from model.generate.torch_backend import TorchDecoder
from model.gpt import GPT
from model.tokenizer import CharTokenizer

# fp32 on the CPU: kernels differ only in summation order, far below this
LOGIT_TOLERANCE = 1e-4
GREEDY_STEPS = 20
# (batch, new tokens, past): prefill, decode, a chunk after a past, a full window
PARITY_CASES = ((1, 7, 0), (2, 5, 0), (1, 1, 9), (3, 1, 4), (2, 4, 6))


class ValidationError(ValueError):
    """The exported model disagrees with PyTorch (or is not a valid ONNX model)."""


def padded_batch(prompts: list[list[int]], layout: Layout = "concat"
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Prompts of different lengths in one batch: (input_ids, attention_mask, position_ids), each (B, T).

    ``concat`` (Optimum's way): padding on the left, so every prompt ends at the last column, where
    the next token's logits are read; positions count real tokens only, so each row sees the
    positions it would alone. ``cache``: each row from slot 0, its position, padded on the right
    (a row's slots are its positions, export.graph)."""
    T = max(len(p) for p in prompts)
    ids = np.zeros((len(prompts), T), dtype=np.int64)
    mask = np.zeros((len(prompts), T), dtype=np.int64)
    for b, p in enumerate(prompts):
        real = slice(T - len(p), T) if layout == "concat" else slice(0, len(p))
        ids[b, real] = p
        mask[b, real] = 1
    if layout == "cache":
        return ids, mask, np.broadcast_to(np.arange(T), (len(prompts), T)).copy()
    positions = np.clip(mask.cumsum(axis=1) - 1, 0, None)
    return ids, mask, positions


def empty_past(config, batch: int, layout: Layout = "concat") -> list[np.ndarray]:
    """The past of a prompt: no slots (concat), or a zeroed cache of block_size slots (cache)."""
    slots = config.block_size if layout == "cache" else 0
    shape = (batch, config.n_head, slots, config.head_size)
    return [np.zeros(shape, dtype=np.float32) for _ in range(2 * config.n_layer)]


def max_logit_diff(session, model: GPT, layout: Layout = "cache") -> float:
    """Max |ORT - PyTorch| over all outputs for PARITY_CASES and a batch of two prompts of
    different lengths, in the file's cache layout."""
    wrapper = OnnxDecoderModel(model, layout)
    names = input_names(model.config.n_layer)
    worst = 0.0
    with torch.no_grad():
        for i, (batch, new, past) in enumerate(PARITY_CASES):
            new = min(new, model.config.block_size - past)
            inputs = sample_inputs(model.config, batch, new, past, layout, seed=i)
            expect = wrapper(*inputs)
            got = session.run(None, dict(zip(names, (x.numpy() for x in inputs), strict=True)))
            for g, e in zip(got, expect, strict=True):
                worst = float(np.maximum(worst, np.abs(g - e.numpy()).max()))  # NaN stays NaN
        # a padded batch: each row's real positions must match that prompt run alone
        V = model.config.vocab_size
        prompts = [[(3 * j + 1) % V for j in range(6)], [(5 * j + 2) % V for j in range(3)]]
        ids, mask, positions = padded_batch(prompts, layout)
        logits = session.run(["logits"], {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
                             | dict(zip(names[3:], empty_past(model.config, 2, layout), strict=True)))[0]
        for b, p in enumerate(prompts):
            alone, _ = model(torch.tensor([p]))
            real = logits[b, -len(p):] if layout == "concat" else logits[b, :len(p)]
            worst = float(np.maximum(worst, np.abs(real - alone[0].numpy()).max()))
    return worst


def greedy_ids(decoder, prompt_ids: list[int], steps: int) -> list[int]:
    """``steps`` argmax tokens after ``prompt_ids``, every one of them: end-of-text does not end the
    comparison (a model whose first choice is end-of-text would otherwise compare nothing)."""
    ids: list[int] = []
    logits = decoder.feed(prompt_ids)
    for _ in range(steps):
        ids.append(int(logits.argmax()))
        logits = decoder.feed(ids[-1:])
    return ids


def validate_export(path: Path, model: GPT, say: Callable[[str], None] = lambda m: None,
                    shown: Path | None = None) -> float:
    """Run the three checks on ``path``; return the max abs logit difference. Errors name ``shown``
    (default: ``path``), for the exporter, which checks a temp file before it becomes the output."""
    name = shown or path
    say("checking the graph (onnx.checker, full shape inference)")
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as e:
        raise ValidationError(f"{name} fails onnx.checker: {str(e).splitlines()[0]}") from None
    backend = load_ort_backend(path, provider="cpu")
    say("comparing logits with PyTorch")
    diff = max_logit_diff(backend.session, model.eval(), backend.layout)
    if not math.isfinite(diff):
        raise ValidationError(f"{name}: the logits hold NaN or infinity (in PyTorch or ONNX Runtime); "
                              "the weights are broken: export an earlier checkpoint")
    if not diff <= LOGIT_TOLERANCE:
        raise ValidationError(
            f"{name}: logits differ from PyTorch by {diff:.2e} (tolerance {LOGIT_TOLERANCE:.0e})")
    say(f"max abs logit difference {diff:.2e} (tolerance {LOGIT_TOLERANCE:.0e})")
    tokenizer = backend.tokenizer
    # a prompt of real text: the first characters of a char vocabulary, or a BPE's own pieces
    prompt = tokenizer.encode(tokenizer.chars[:5] if isinstance(tokenizer, CharTokenizer) else "The")
    prompt = prompt[:max(1, model.config.block_size // 2)]
    steps = min(GREEDY_STEPS, model.config.block_size - len(prompt))
    torch_ids = greedy_ids(TorchDecoder(model), prompt, steps)
    ort_ids = greedy_ids(backend.decoder(), prompt, steps)
    if torch_ids != ort_ids:
        first = next((i for i, (a, b) in enumerate(zip(torch_ids, ort_ids, strict=True)) if a != b), steps)
        raise ValidationError(f"{name}: greedy tokens differ from PyTorch at step {first}")
    say(f"greedy tokens identical for a prompt + {steps} steps")
    return diff
