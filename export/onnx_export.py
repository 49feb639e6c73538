"""Export a checkpoint to one self-contained ONNX file with a KV cache, named as decoders are elsewhere.

The graph (export.graph's ``OnnxDecoderModel``, whose names, inputs and two cache layouts are
described there) serves the prompt and every new token alike. The single file gets the ``cache``
layout, which our ONNX Runtime backend writes in place; the ONNX folder (export.folder) asks for
the ``concat`` layout that Optimum and onnxruntime-genai feed. The config, tokenizer and training
facts travel in the file's metadata (``gpt_from_scratch.*`` keys), so the .onnx alone is enough
to generate text. The file is written to a temp file beside the target and validated there; only
a file that passes becomes the output.

The exporter: ``torch.onnx.export(dynamo=True)``, torch 2.13's default and the maintained path
(the TorchScript exporter is deprecated). It captures the graph with ``torch.export``, so dynamic
sizes are declared, not inferred: batch, new tokens, past and total length are ``Dim``s, and the
sample inputs use sizes that are neither 0 nor 1 (B=2, T=3, P=4), because torch.export specialises
a dimension that is 0 or 1 in the example to that constant. The dimensions are then named in the
file as export.graph's ``DIMS`` say (the exporter calls a derived one ``s53``). Attention is
exported in the explicit form (MatMul, Where, Softmax), which ONNX Runtime fuses well; the
weights are the same as the fused path's.
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
    DIMS,
    FORMATS,
    META_PREFIX,
    PAST_DIMS,
    PRESENT_DIMS,
    WEIGHTS_KEY,
    Layout,
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


def onnx_metadata(ckpt: dict, layout: Layout = "cache") -> dict[str, str]:
    """What travels in the .onnx: enough to rebuild the tokenizer and know the model."""
    return {
        f"{META_PREFIX}format": FORMATS[layout],
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
    layout: Layout = "cache",
) -> Path:
    """Write ``out_path`` (default: the checkpoint's path with .onnx) with the cache ``layout``
    (export.graph) and, unless told not to, validate it first (checker with shape inference,
    parity, greedy tokens; see export.validate): a file that fails is deleted and an existing
    ``out_path`` is left as it was."""
    say = progress or (lambda message: None)
    ckpt_path = Path(ckpt_path)
    out = Path(out_path) if out_path else ckpt_path.with_suffix(".onnx")
    with writing(out):  # one export into out at a time; taking it removes a killed one's temp file
        say(f"loading {ckpt_path}")
        ckpt = load(ckpt_path)
        model, _ = restore_model(ckpt, ckpt_path)
        if not isinstance(model, GPT):
            raise CheckpointError(f"{ckpt_path} holds a {model.config.kind} model; only the GPT exports")
        wrapper = OnnxDecoderModel(model, layout)
        L = model.config.n_layer
        say(f"exporting {L} layers x {model.config.n_embd} (opset {opset or DEFAULT_OPSET})")
        batch, new, past = torch.export.Dim("batch"), torch.export.Dim("new"), torch.export.Dim("past")
        # the cache layout's mask spans any total <= past; the concat layout's is past + new, which
        # torch.export derives from the graph
        total = torch.export.Dim("total") if layout == "cache" else torch.export.Dim.AUTO
        dynamic = ({0: batch, 1: new}, {0: batch, 1: total}, {0: batch, 1: new},
                   tuple({0: batch, 2: past} for _ in range(2 * L)))  # *past arrives as one tuple
        onnx_log = logging.getLogger("torch.onnx")
        level = onnx_log.level
        onnx_log.setLevel(logging.ERROR)  # the exporter's notes are for its developers
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                wrapper, sample_inputs(model.config, batch=2, new=3, past=4, layout=layout), dynamo=True,
                dynamic_shapes=dynamic, input_names=input_names(L), output_names=output_names(L),
                opset_version=opset or DEFAULT_OPSET, optimize=True, verbose=False,
            )
        onnx_log.setLevel(level)
        proto = program.model_proto
        name_dims(proto, layout)
        for key, value in onnx_metadata(ckpt, layout).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value

        def check(tmp: Path) -> None:
            if validate:
                validate_export(tmp, model, say, shown=out)

        with atomic_write(out, check=check) as f:
            onnx.save_model(proto, f)  # one file, no external data
        return out


def name_dims(proto: onnx.ModelProto, layout: Layout) -> None:
    """Name the dynamic dimensions of the graph's inputs and outputs as export.graph says (in place)."""
    for value in [*proto.graph.input, *proto.graph.output]:
        names = DIMS.get(value.name)
        if names is None:  # a past or present key/value: [batch, H, length, D]
            names = (PAST_DIMS if value.name.startswith("past") else PRESENT_DIMS)[layout]
            axes = (0, 2)
        else:
            axes = (0, 1)
        dims = value.type.tensor_type.shape.dim
        for axis, name in zip(axes, names, strict=True):
            dims[axis].dim_param = name
