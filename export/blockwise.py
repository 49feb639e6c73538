"""4-bit weights in the form ONNX Runtime runs them: ``MatMulNBits`` for every MatMul with a constant
weight, ``GatherBlockQuantized`` for the token-embedding lookup, one table shared by lookup and head.

Where a GPT-2 file's bytes are: 38.6M of its 124M weights are the token-embedding table (50,257 x
768), which the graph reads twice, in the lookup (a Gather over ``input_ids``) and in the tied head
(a MatMul over its transpose). ONNX Runtime's own ``MatMulNBitsQuantizer`` quantizes the head from a
transposed copy and leaves the lookup's table fp32, so its int4 file was 3x llama.cpp's q4_0. Here
both read one 4-bit table:

  format  each row of the weight as MatMulNBits sees it (one output feature; for the embedding, one
          token) is cut into blocks of ``block`` values along K. A block keeps one fp32 scale
          s = m / -8, m its value of largest magnitude (sign kept, so m lands exactly on -8), and
          its values as round(w / s) clipped to [-8, 7], plus 8: two per byte, low nibble first.
  shared  MatMulNBits reads B as (N, K / block, block / 2) uint8 and GatherBlockQuantized reads
          data as (V, C / 2) uint8 with ``bits=4``: the same bytes in the same order, the scales
          (N, K / block) in both, and both take 8 as the zero point when none is given. The table is
          stored once, as MatMulNBits wants it (so its kernel prepacks it); the lookup reads it
          through a Reshape, which ONNX Runtime folds into a constant when it loads the file.

The position table stays fp32 (3 MB at GPT-2's shape; a position's row is read once per token).
A weight whose K no block size divides stays an fp32 MatMul.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from export.graph import input_names

# weights per scale: 32 as llama.cpp's q4_0; 16 (the smallest ONNX Runtime takes) where 32 does not divide K
BLOCKS = (32, 16)
MS_DOMAIN = "com.microsoft"
ROWS_PER_SLICE = 4096  # rows quantized at a time: a vocabulary's temporaries stay a few MB


def block_size(k: int) -> int | None:
    """The block for a weight with ``k`` input features, or None where no block divides it."""
    return next((b for b in BLOCKS if k % b == 0), None)


def quantize_rows(rows: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` (N, K), K a multiple of ``block`` -> (packed (N, K / block, block / 2) uint8,
    scales (N, K / block) float32), in the format of the module docstring."""
    N, K = rows.shape
    packed = np.empty((N, K // block, block // 2), np.uint8)
    scales = np.empty((N, K // block), np.float32)
    for r in range(0, N, ROWS_PER_SLICE):
        blocks = rows[r:r + ROWS_PER_SLICE].astype(np.float32).reshape(-1, K // block, block)  # (n, nb, b)
        extreme = np.take_along_axis(blocks, np.abs(blocks).argmax(-1, keepdims=True), -1)  # (n, nb, 1)
        scale = extreme / -8.0
        codes = np.clip(np.rint(blocks / np.where(scale == 0, 1, scale)), -8, 7).astype(np.int8) + 8
        codes = codes.astype(np.uint8)
        packed[r:r + ROWS_PER_SLICE] = codes[..., 0::2] | (codes[..., 1::2] << 4)  # low nibble first
        scales[r:r + ROWS_PER_SLICE] = scale[..., 0]
    return packed, scales


def dequantize_rows(packed: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The weights ``quantize_rows`` stands for, (N, K) float32: what both kernels compute with."""
    N, nb, half = packed.shape
    codes = np.stack([packed & 0xF, packed >> 4], axis=-1).reshape(N, nb, 2 * half)  # (N, nb, b)
    return ((codes.astype(np.float32) - 8) * scales[..., None]).reshape(N, nb * 2 * half)


@dataclass(frozen=True)
class Table:
    """A quantized weight in the graph: initializer names and its sizes as MatMulNBits names them."""

    packed: str  # (n, k / block, block / 2) uint8
    scales: str  # (n, k / block) float32
    block: int
    n: int  # output features (rows)
    k: int  # input features


class _Tables:
    """The quantized tables of one graph, made once per source weight: a tied table that the lookup
    and the head both read is quantized and stored once."""

    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.inits = {t.name: t for t in graph.initializer}
        self.made: dict[str, Table] = {}

    def rows_of(self, name: str, transposed: bool) -> Table | None:
        """The 2-D initializer ``name`` quantized as rows of output features:
        itself when ``transposed`` (a Transpose of it feeds the MatMul, as the tied head), else its
        transpose (a MatMul's weight is (K, N))."""
        key = f"{name}{'' if transposed else '^T'}"
        if key not in self.made:
            weight = numpy_helper.to_array(self.inits[name])
            rows = weight if transposed else weight.T
            block = block_size(rows.shape[1])
            if block is None:
                return None
            packed, scales = quantize_rows(rows, block)
            table = Table(f"{key}.q4", f"{key}.q4_scales", block, *rows.shape)
            self.graph.initializer.extend([numpy_helper.from_array(packed, table.packed),
                                           numpy_helper.from_array(scales, table.scales)])
            self.made[key] = table
        return self.made[key]


def to_int4(proto: onnx.ModelProto, accuracy_level: int = 4) -> None:
    """Rewrite ``proto`` in place: constant-weight MatMuls to MatMulNBits, the token-embedding Gather
    to GatherBlockQuantized over the same table as the tied head (module docstring).

    ``accuracy_level`` 4 lets the kernel take the activations to int8, which ONNX Runtime's CPU
    kernels are fastest at."""
    graph = proto.graph
    tables = _Tables(graph)
    inits = tables.inits
    two_d = {name for name, t in inits.items() if len(t.dims) == 2}
    # Transpose(W) of a 2-D initializer: the exported tied head is MatMul(x, Transpose(wte))
    transpose_of = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Transpose"
                    and n.input[0] in two_d and [list(a.ints) for a in n.attribute] in ([], [[1, 0]])}
    token_ids = input_names(1)[0]
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type == "MatMul" and (node.input[1] in two_d or node.input[1] in transpose_of):
            source, transposed = transpose_of.get(node.input[1], node.input[1]), node.input[1] in transpose_of
            table = tables.rows_of(source, transposed)
            if table is not None:
                nodes.append(helper.make_node(
                    "MatMulNBits", [node.input[0], table.packed, table.scales], list(node.output),
                    name=node.name, domain=MS_DOMAIN, K=table.k, N=table.n, bits=4, block_size=table.block,
                    accuracy_level=accuracy_level))
                continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if node.op_type == "Gather" and node.input[1] == token_ids and node.input[0] in two_d and axis == 0:
            table = tables.rows_of(node.input[0], transposed=True)
            if table is not None:
                flat = f"{table.packed}.rows"  # the (V, C / 2) view of the (V, C / block, block / 2) table
                shape = numpy_helper.from_array(np.array([table.n, table.k // 2], np.int64), f"{flat}.shape")
                graph.initializer.append(shape)
                nodes.append(helper.make_node("Reshape", [table.packed, shape.name], [flat],
                                              name=f"{flat}.view"))
                nodes.append(helper.make_node(
                    "GatherBlockQuantized", [flat, node.input[1], table.scales], list(node.output),
                    name=node.name, domain=MS_DOMAIN, bits=4, block_size=table.block, gather_axis=0,
                    quantize_axis=1))
                continue
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    _drop_unused(graph)
    if not any(o.domain == MS_DOMAIN for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))


def _drop_unused(graph: onnx.GraphProto) -> None:
    """Remove the nodes whose outputs nothing reads (the head's Transpose) and then the initializers
    no node reads (the fp32 weights that were quantized)."""
    outputs = {o.name for o in graph.output}
    while True:
        read = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if not any(o in read for o in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    unused = [t for t in graph.initializer if t.name not in read]
    for t in unused:
        graph.initializer.remove(t)
