"""What `/show` writes into the transcript: the settings, backend and checkpoint; with `model`, the
architecture, vocabulary and training facts of the loaded checkpoint."""

from __future__ import annotations

import torch

from model.config import GPTConfig
from model.generate.backend import Backend, BackendInfo, Settings
from model.generate.insight import piece
from model.gpt import build_model, count_params
from model.terminal import visible
from tui import settings as settings_text


def describe_run_settings(settings: Settings, info: BackendInfo) -> str:
    """/show: the settings, then where they run."""
    return (f"{settings_text.describe(settings)}\n{'backend':>15}  {info.backend} on {info.device}\n"
            f"{'checkpoint':>15}  {info.path}")


def describe_tokens(prompt_ids: list[int], generated: list[int], tokenizer) -> str:
    """/tokens: the ids the model was fed (after replacing unknown characters and cropping to the
    window) and those it generated, each with its display piece (model.generate.insight.piece)."""
    def line(ids: list[int]) -> str:
        return " ".join(f"{i}:{piece(tokenizer, i)}" for i in ids) or "-"

    return (f"fed {len(prompt_ids)} token(s) (id:text): {line(prompt_ids)}\n"
            f"generated {len(generated)}: {line(generated)}")


def describe_origin(meta: dict) -> str:
    """Where a checkpoint's weights came from: an import (model.hf.load), the checkpoint a training run
    started from (model.train.init_from), or neither (trained here from random weights)."""
    origin = meta.get("init_from")
    if isinstance(origin, dict):  # first: a fine-tune of an import names both
        was = f" (itself from {origin['source']})" if origin.get("source") else ""
        steps = f" after its {origin['steps']} steps" if origin.get("steps") is not None else ""
        return f"fine-tuned from {origin.get('path', '?')}{steps}{was}"
    if meta.get("imported_from"):
        return f"imported from {meta['imported_from']}: {meta.get('source', '?')}"
    return "trained from random initialisation"


def describe_model(backend: Backend) -> str:
    """/show model: the architecture, vocabulary and training facts of the loaded checkpoint."""
    info, model = backend.info(), backend.torch_model()
    c = info.config
    if model is None and c:  # ONNX: count from the config, on the meta device (no memory, no maths)
        with torch.device("meta"):
            model = build_model(GPTConfig.from_dict(c))
    params = f"{count_params(model):,}" if model is not None else "-"
    meta = info.meta
    training = " · ".join(f"{k.replace('_', ' ')} {meta[k]:.4g}" if isinstance(meta[k], float) else
                          f"{k.replace('_', ' ')} {meta[k]}" for k in ("steps", "val_loss", "train_loss")
                          if k in meta) or "not recorded in the checkpoint"
    vocab = f"{info.vocab_size} tokens"
    if backend.tokenizer.token_bytes(0) is not None:  # GPT-2's kind: ids stand for bytes
        vocab += ", byte-level BPE"
    if info.vocab is not None:
        vocab += ": " + visible(info.vocab.replace("\n", "⏎").replace(" ", "␣")) + " + end of text"
    rows = [
        ("model", f"{c.get('kind', '?')} · {c.get('n_layer', '?')} layers · {c.get('n_head', '?')} heads"
                  f" · width {c.get('n_embd', '?')} · {c.get('attention', '?')} attention"),
        ("block size", str(info.block_size)),
        ("parameters", params),
        ("vocabulary", vocab),
        ("weights", visible(describe_origin(meta))),
        ("training", training),
        ("checkpoint", f"{info.path} ({info.backend} on {info.device})"),
    ]
    if info.precision:
        rows.append(("decoding", info.precision))
    return "\n".join(f"{k:>15}  {v}" for k, v in rows)
