"""Smaller ONNX files: int8 / int4 weights for the CPU, fp16 / bf16 for GPU runtimes, judged by quality.

A batch-1 decode step reads every weight once, so once the weights outgrow the CPU's caches the
bytes per weight set the speed; fewer bytes per weight is the way past that limit.

  int8  ONNX Runtime's ``quantize_dynamic``: every MatMul with a constant weight becomes
        MatMulInteger on int8 weights (one scale per output channel), the activations quantized
        on the fly per call. The tied head, exported as ``MatMul(x, Transpose(wte))``, gets its
        transpose folded into an initializer first so that it is quantized too; the embedding
        lookups stay fp32.
  int4  export.blockwise: weight-only, 4 bits in blocks of 32 with a scale each (``MatMulNBits``,
        a contrib op) for every MatMul, and the token embedding as ``GatherBlockQuantized`` over the
        same 4-bit table as the tied head, so the largest matrix is stored once, in 4 bits.
  fp16 / bf16  every float weight and activation inside the graph in 16 bits, the inputs and
        outputs kept fp32 so the backend feeds the file like any other; for GPU runtimes (ONNX Runtime's
        CPU provider runs fp16 slowly and bf16 not at all, so a bf16 file's loss is checked only
        where CUDA runs).

Logit parity would fail by design, so a converted file is validated by quality instead: its
validation loss against the fp32 graph's, both through ONNX Runtime on the same windows of the
model's own data (export.judge: which data, how many windows, streamed), with a tolerance per kind
(``LOSS_TOLERANCE``). The fp32 loss is measured once per command, before the conversion.
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

from export.blockwise import to_int4
from export.graph import WEIGHTS_KEY, Layout
from export.judge import JudgeDataError, judge_data, split_loss, window_starts
from export.ort_backend import OnnxModelError, OrtBackend, load_ort_backend
from model.atomic import atomic_write, write_error, writing
from model.terminal import visible

Quantize = Literal["int8", "int4"]
Dtype = Literal["fp16", "bf16"]
# the largest relative rise in validation loss a file may show against fp32 before it is refused;
# a tolerance, not a goal: docs/export.md states what each kind measures
LOSS_TOLERANCE = {"int8": 0.02, "int4": 0.06, "fp16": 0.005, "bf16": 0.02}


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
    if kind == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        fold_head_transpose(proto)  # the tied head's weight as a constant, so that it is quantized too
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
        out = proto
        to_int4(out)
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


def judged_loss(backend: OrtBackend, ids, what: str, status: Callable[[str], None]) -> float:
    """export.judge.split_loss of the graph behind ``backend``, its progress told to ``status``."""
    def progress(done: int, total: int) -> None:
        status(f"val loss of the {what} graph: window {done} of {total}")

    return split_loss(backend, ids, progress=progress)


def quantize_export(
    fp32_path: Path,
    out: Path,
    kind: Quantize | Dtype,
    val_ids,
    say: Callable[[str], None] = lambda m: None,
    check: bool = True,
    status: Callable[[str], None] = lambda m: None,
) -> tuple[float, float]:
    """Convert ``fp32_path`` to ``kind`` and write it to ``out`` only if its validation loss on
    ``val_ids`` (a tensor or a TokenSplit; export.judge picks the windows) is within
    ``LOSS_TOLERANCE[kind]`` of the fp32 file's and it generates; returns (fp32 loss, its loss).
    ``status`` gets the transient progress lines. fp16 / bf16 files are checked only where the CPU
    provider runs them."""
    losses = [math.nan, math.nan]
    if check:
        say("validation loss of the fp32 graph (ONNX Runtime)")
        # the fp32 session lives only for this: it is gone before the converted one loads
        losses[0] = judged_loss(load_ort_backend(fp32_path, provider="cpu"), val_ids, "fp32", status)

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
        losses[1] = judged_loss(backend, val_ids, kind, status)
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


def judge_split(ckpt_path: Path, data: str | None, kind: str, say: Callable[[str], None]):
    """The validation split a converted file of ``ckpt_path`` is judged on (export.judge.judge_data
    says which, or refuses with JudgeDataError), opened with the checkpoint's tokenizer."""
    from model.checkpoint import CheckpointError, load
    from model.config import GPTConfig
    from model.data.corpus import open_corpus
    from model.tokenizer import tokenizer_from_dict

    ckpt = load(ckpt_path)
    try:
        block = GPTConfig.from_dict(ckpt["config"]).block_size
        meta, tokenizer = ckpt.get("meta", {}), tokenizer_from_dict(ckpt["tokenizer"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{ckpt_path} has an unusable config or tokenizer: {e}") from None
    del ckpt  # the weights: the fp32 export loads them again, and the peak is its own
    source, why = judge_data(data, meta, ckpt_path, kind)
    val = open_corpus(source, tokenizer)[1].val
    try:
        windows = len(window_starts(len(val), block))
    except ValueError as e:
        raise JudgeDataError(f"--data {visible(source)}: {e}; judge on a longer text") from None
    say(f"judging on the validation split of {visible(source)} ({why}): {windows} "
        f"window{'s' * (windows != 1)} of {block} tokens")
    return val


def export_converted(
    ckpt_path: Path,
    out: Path | None,
    kind: Quantize | Dtype,
    opset: int | None = None,
    say: Callable[[str], None] = lambda m: None,
    validate: bool = True,
    data: str | None = None,
    status: Callable[[str], None] = lambda m: None,
    layout: Layout = "cache",
) -> Path:
    """``gpt-export onnx --quantize/--dtype``: the fp32 export (validated against PyTorch as usual)
    into a temp folder, then converted to ``kind`` into ``out`` (default: the checkpoint's path
    with ``.{kind}.onnx``), judged on the validation split of ``data`` (default: the checkpoint's
    own, see export.judge); the data is settled before any export work starts. ``layout``: the
graph's KV cache (export.graph; the ONNX folder takes "concat")."""
    from export.onnx_export import export_onnx

    out = Path(out) if out else ckpt_path.with_suffix(f".{kind}.onnx")
    val_ids = judge_split(ckpt_path, data, kind, say) if validate else torch.empty(0, dtype=torch.long)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(ckpt_path, Path(tmp) / "fp32.onnx", opset, say, validate=validate, layout=layout)
        quantize_export(fp32, out, kind, val_ids, say, check=validate, status=status)
    return out
