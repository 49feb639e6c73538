"""Smaller ONNX files: int8 / int4 weights for the CPU, fp16 / bf16 for GPU runtimes, judged by quality.

A batch-1 decode step reads every weight once, so once the weights outgrow the CPU's caches the
bytes per weight set the speed; fewer bytes per weight is the way past that limit. ONNX Runtime's
own tools do the work:

  int8  ``quantize_dynamic``: every MatMul with a constant weight becomes MatMulInteger on int8
        weights (one scale per output channel), the activations quantized on the fly per call.
  int4  ``MatMulNBitsQuantizer``: weight-only, 4 bits in blocks of 32 with a scale each
        (``MatMulNBits``, a contrib op), with ``accuracy_level`` 4: the activations go to int8 inside
        the kernel, which is what ONNX Runtime's CPU kernels are fastest at.
  fp16 / bf16  every float weight and activation inside the graph in 16 bits, the inputs and
        outputs kept fp32 so the backend feeds the file like any other; for GPU runtimes (ONNX Runtime's
        CPU provider runs fp16 slowly and bf16 not at all, so a bf16 file's loss is checked only
        where CUDA runs).

The tied head: the exporter writes the head as ``MatMul(x, Transpose(wte))``; the transpose is
folded into its own initializer first so the head (the largest matrix at GPT-2's vocabulary) is a
plain weight MatMul and gets quantized too. The embedding lookups (Gather) stay fp32: a lookup
reads one row per token, so its bytes do not bound a decode step.

Logit parity would fail by design, so a quantized file is validated by quality instead: the
whole-split validation loss of the quantized graph against the fp32 graph's, both through ONNX
Runtime on the same windows (``split_loss``), with a tolerance per kind (``LOSS_TOLERANCE``).
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch.nn import functional as F

from export.graph import WEIGHTS_KEY
from export.ort_backend import OnnxModelError, OrtBackend, load_ort_backend
from model.atomic import atomic_write, write_error, writing

Quantize = Literal["int8", "int4"]
Dtype = Literal["fp16", "bf16"]
# the largest relative rise in validation loss a file may show against fp32 before it is refused;
# a tolerance, not a goal: docs/export.md states what each kind measures
LOSS_TOLERANCE = {"int8": 0.02, "int4": 0.06, "fp16": 0.005, "bf16": 0.02}
INT4_BLOCK = 32  # weights per scale: 32 is ONNX Runtime's finest block, the best quality


class QuantizeError(ValueError):
    """A quantized file that fails its quality check, or a source file that cannot be quantized."""


def fold_head_transpose(proto: onnx.ModelProto) -> int:
    """Replace each ``Transpose`` of a 2-D initializer by a transposed initializer (in place), so
    that MatMuls reading it see a constant weight; returns how many were folded."""
    inits = {t.name: t for t in proto.graph.initializer}
    folded = []
    for node in proto.graph.node:
        if node.op_type != "Transpose" or node.input[0] not in inits:
            continue
        weight = numpy_helper.to_array(inits[node.input[0]])
        if weight.ndim != 2:
            continue
        perm = [a.ints for a in node.attribute if a.name == "perm"]
        if perm and list(perm[0]) != [1, 0]:
            continue
        transposed = numpy_helper.from_array(np.ascontiguousarray(weight.T), node.output[0])
        proto.graph.initializer.append(transposed)
        folded.append(node)
    for node in folded:
        proto.graph.node.remove(node)
    return len(folded)


def _copy_metadata(src: onnx.ModelProto, dst: onnx.ModelProto, weights: str) -> None:
    """src's metadata into dst (what the converters kept is replaced), saying what the weights are now."""
    props = {p.key: p.value for p in src.metadata_props} | {WEIGHTS_KEY: weights}
    kept = [p for p in dst.metadata_props if p.key not in props]
    del dst.metadata_props[:]
    for key, value in [*((p.key, p.value) for p in kept), *props.items()]:
        entry = dst.metadata_props.add()
        entry.key, entry.value = key, value


def convert(src: Path, dst: Path, kind: Quantize | Dtype) -> None:
    """Write ``src`` (an fp32 gpt-export file) as ``kind`` to ``dst``, metadata carried over."""
    proto = onnx.load(str(src))
    fold_head_transpose(proto)
    if kind == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with tempfile.TemporaryDirectory() as tmp:
            folded = Path(tmp) / "folded.onnx"
            onnx.save_model(proto, str(folded))
            # its advice to pre-process (shape inference) is for convolutional models; it logs to root
            root = logging.getLogger()
            level = root.level
            root.setLevel(logging.ERROR)
            try:
                quantize_dynamic(folded, dst, op_types_to_quantize=["MatMul"], per_channel=True,
                                 weight_type=QuantType.QInt8)
            finally:
                root.setLevel(level)
        out = onnx.load(str(dst))
    elif kind == "int4":
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        quantizer = MatMulNBitsQuantizer(proto, bits=4, block_size=INT4_BLOCK, is_symmetric=True,
                                         accuracy_level=4, op_types_to_quantize=("MatMul",))
        quantizer.process()
        out = quantizer.model.model
    elif kind in ("fp16", "bf16"):
        from onnxruntime.transformers.float16 import convert_float_to_float16

        out = convert_float_to_float16(proto, keep_io_types=True, disable_shape_infer=True)
        if kind == "bf16":
            out = _fp16_to_bf16(out)
        _sort_nodes(out.graph)  # the converter appends its input casts last; the checker wants order
    else:
        raise ValueError(f"kind must be int8, int4, fp16 or bf16, not {kind!r}")
    _copy_metadata(proto, out, kind)
    onnx.save_model(out, str(dst))


def _sort_nodes(graph: onnx.GraphProto) -> None:
    """Order the nodes so each comes after the producers of its inputs (in place, stable)."""
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in known for i in n.input)]
        if not ready:
            raise QuantizeError("the converted graph has a cycle or an undefined input; re-export it")
        for node in ready:
            known.update(node.output)
        ordered += ready
        pending = [n for n in pending if n not in ready]
    del graph.node[:]
    graph.node.extend(ordered)


def _fp16_to_bf16(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The fp16 graph with bfloat16 in place of float16: initializers re-encoded, Casts retargeted
    (the two formats differ only in how the 16 bits split between exponent and mantissa)."""
    fp16, bf16 = onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16
    for i, init in enumerate(proto.graph.initializer):
        if init.data_type == fp16:
            values = numpy_helper.to_array(init).astype(np.float32)
            proto.graph.initializer[i].CopyFrom(
                onnx.helper.make_tensor(init.name, bf16, values.shape, values.flatten().tolist()))
    for node in proto.graph.node:
        for attr in node.attribute:
            if attr.name == "to" and attr.i == fp16:
                attr.i = bf16
            if attr.t is not None and attr.t.data_type == fp16:
                values = numpy_helper.to_array(attr.t).astype(np.float32)
                attr.t.CopyFrom(onnx.helper.make_tensor(attr.t.name, bf16, values.shape,
                                                        values.flatten().tolist()))
    for value in [*proto.graph.value_info, *proto.graph.input, *proto.graph.output]:
        if value.type.tensor_type.elem_type == fp16:
            value.type.tensor_type.elem_type = bf16
    return proto


def split_loss(backend: OrtBackend, ids: torch.Tensor, batch_size: int = 16) -> float:
    """Mean cross-entropy over every target of ``ids`` (consecutive block_size windows, each target
    once, as model.train.report.full_val_loss) through the ONNX Runtime graph: prefill only, no past."""
    config = backend.config
    block = config.block_size
    n = (len(ids) - 1) // block
    if n < 1:
        raise ValueError(f"the split has {len(ids)} tokens, fewer than one window of {block} + 1")
    x = ids[: n * block].view(n, block).numpy().astype(np.int64)
    y = ids[1: n * block + 1].view(n, block)
    total = 0.0
    for i in range(0, n, batch_size):
        xb = x[i: i + batch_size]
        B = len(xb)
        logits = torch.from_numpy(backend.window_logits(xb)).float()  # (B, T, V)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y[i: i + B].reshape(-1))
        total += float(loss) * B
    return total / n


def quantize_export(
    fp32_path: Path,
    out: Path,
    kind: Quantize | Dtype,
    val_ids: torch.Tensor,
    say: Callable[[str], None] = lambda m: None,
    check: bool = True,
) -> tuple[float, float]:
    """Convert ``fp32_path`` to ``kind`` and write it to ``out`` only if its validation loss on
    ``val_ids`` is within ``LOSS_TOLERANCE[kind]`` of the fp32 file's and it generates; returns
    (fp32 loss, its loss). fp16 / bf16 files are checked only where the CPU provider runs them."""
    losses = [math.nan, math.nan]
    if check:
        say("validation loss of the fp32 graph (whole split, ONNX Runtime)")
        losses[0] = split_loss(load_ort_backend(fp32_path, provider="cpu"), val_ids)

    def validate(tmp: Path) -> None:
        if not check:
            return
        onnx.checker.check_model(str(tmp))
        try:  # the CPU provider has no bf16 kernels: a bf16 file is measured on a GPU or not at all
            backend = load_ort_backend(tmp, provider="cuda" if kind == "bf16" else "cpu")
        except OnnxModelError:
            if kind != "bf16":
                raise
            say("bf16: a valid graph, but its loss is not checked (ONNX Runtime runs bf16 only on "
                "CUDA, and CUDA is not usable here)")
            return
        say(f"validation loss of the {kind} graph")
        losses[1] = split_loss(backend, val_ids)
        rise = losses[1] / losses[0] - 1
        say(f"val loss fp32 {losses[0]:.4f}, {kind} {losses[1]:.4f} ({rise:+.2%}; "
            f"tolerance {LOSS_TOLERANCE[kind]:+.1%})")
        if not rise <= LOSS_TOLERANCE[kind]:  # also catches NaN
            raise QuantizeError(f"{out}: {kind} val loss {losses[1]:.4f} is {rise:+.2%} against fp32 "
                                f"{losses[0]:.4f} (tolerance {LOSS_TOLERANCE[kind]:+.1%}); keep fp32 "
                                "or try the other kind")
        # it must also run the decode path (past inputs), not only the prefill
        decoder = backend.decoder()
        decoder.feed([0, 1])
        if not torch.isfinite(decoder.feed([2])).all():
            raise QuantizeError(f"{out}: the {kind} graph gives non-finite logits when decoding")

    say(f"converting to {kind}")
    # the staging folder is beside out (the same file system) and named as atomic_write's temps, so
    # that the next writer of out removes it if this process is killed; the lock, held throughout,
    # keeps a second export from removing it while this one converts
    with writing(out), tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.",
                                                   suffix=".tmp") as tmp:
        staged = Path(tmp) / "model.onnx"
        try:
            convert(fp32_path, staged, kind)
        except OSError as e:  # a full disk while converting: one line, out untouched
            raise write_error(out, e) from None
        with atomic_write(out, check=validate) as f:
            f.write(staged.read_bytes())
    return losses[0], losses[1]


def export_converted(
    ckpt_path: Path,
    out: Path | None,
    kind: Quantize | Dtype,
    opset: int | None = None,
    say: Callable[[str], None] = lambda m: None,
    validate: bool = True,
    data: str = "shakespeare",
) -> Path:
    """``gpt-export onnx --quantize/--dtype``: the fp32 export (validated against PyTorch as usual)
    into a temp folder, then converted to ``kind`` into ``out`` (default: the checkpoint's path
    with ``.{kind}.onnx``), judged on the validation split of ``data``."""
    from export.onnx_export import export_onnx
    from model.data.corpus import open_corpus

    out = Path(out) if out else ckpt_path.with_suffix(f".{kind}.onnx")
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(ckpt_path, Path(tmp) / "fp32.onnx", opset, say, validate=validate)
        val_ids = torch.empty(0, dtype=torch.long)
        if validate:
            tokenizer = load_ort_backend(fp32, provider="cpu").tokenizer
            val_ids = open_corpus(data, tokenizer)[1].val
        quantize_export(fp32, out, kind, val_ids, say, check=validate)
    return out
