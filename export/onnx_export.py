"""Export a checkpoint to one self-contained ONNX file with a KV cache, named as decoders are elsewhere.

The graph (export.graph's ``OnnxDecoderModel``, whose names and inputs are described there) serves
the prompt and every new token alike. The config, tokenizer and training facts travel in the
file's metadata (``gpt_from_scratch.*`` keys), so the .onnx alone is enough to generate text. The
file is written to a temp file beside the target and validated there; only a file that passes
becomes the output.

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

import onnx
import torch

from export.graph import (
    FORMAT,
    META_PREFIX,
    WEIGHTS_KEY,
    OnnxDecoderModel,
    input_names,
    output_names,
    sample_inputs,
)
from export.validate import validate_export
from model.atomic import atomic_write, writing
from model.checkpoint import CheckpointError, load, restore_model
from model.gpt import GPT

DEFAULT_OPSET = 18


def onnx_metadata(ckpt: dict) -> dict[str, str]:
    """What travels in the .onnx: enough to rebuild the tokenizer and know the model."""
    return {
        f"{META_PREFIX}format": FORMAT,
        f"{META_PREFIX}config": json.dumps(ckpt["config"]),
        f"{META_PREFIX}tokenizer": json.dumps(ckpt["tokenizer"]),
        f"{META_PREFIX}meta": json.dumps(_jsonable(ckpt.get("meta", {}))),
        WEIGHTS_KEY: "fp32",
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
    validate it first (checker with shape inference, parity, greedy tokens; see export.validate):
    a file that fails is deleted and an existing ``out_path`` is left as it was."""
    say = progress or (lambda message: None)
    ckpt_path = Path(ckpt_path)
    out = Path(out_path) if out_path else ckpt_path.with_suffix(".onnx")
    with writing(out):  # one export into out at a time; taking it removes a killed one's temp file
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
        onnx_log.setLevel(logging.ERROR)  # the exporter's notes are for its developers
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                wrapper, sample_inputs(model.config, batch=2, new=3, past=4), dynamo=True,
                dynamic_shapes=dynamic, input_names=input_names(L), output_names=output_names(L),
                opset_version=opset or DEFAULT_OPSET, optimize=True, verbose=False,
            )
        onnx_log.setLevel(level)
        proto = program.model_proto
        for key, value in onnx_metadata(ckpt).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value

        def check(tmp: Path) -> None:
            if validate:
                validate_export(tmp, model, say, shown=out)

        with atomic_write(out, check=check) as f:
            onnx.save_model(proto, f)  # one file, no external data
        return out
