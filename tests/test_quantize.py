"""Quantized and 16-bit ONNX files: they validate by loss against fp32, load like any .onnx and generate."""

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from conftest import TEXT
from onnx import TensorProto, helper, numpy_helper

from export.cli import main as export_cli
from export.onnx_export import export_onnx
from export.ort_backend import load_ort_backend
from export.quantize import QuantizeError, fold_head_transpose, quantize_export, split_loss
from model.generate.backend import Settings


def test_the_tied_heads_transpose_becomes_a_constant_weight():
    w = np.arange(6, dtype=np.float32).reshape(2, 3)  # (V, C), as wte
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["w"], ["wT"], perm=[1, 0]),
         helper.make_node("MatMul", ["x", "wT"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], [numpy_helper.from_array(w, "w")])
    proto = helper.make_model(graph)
    assert fold_head_transpose(proto) == 1
    assert [n.op_type for n in proto.graph.node] == ["MatMul"]
    folded = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    np.testing.assert_array_equal(folded["wT"], w.T)
    onnx.checker.check_model(proto)


def test_quantize_and_dtype_are_alternatives(tiny_ckpt):
    result = CliRunner().invoke(export_cli, ["onnx", "--ckpt", str(tiny_ckpt), "--quantize", "int8",
                                             "--dtype", "fp16"])
    assert result.exit_code == 2
    assert "--quantize and --dtype are alternatives; pass one" in result.output


@pytest.fixture(scope="module")
def fp32_path(tiny_ckpt, tmp_path_factory):
    return export_onnx(tiny_ckpt, tmp_path_factory.mktemp("q") / "tiny.onnx", validate=False)


@pytest.fixture(scope="module")
def val_ids(char_tok):
    return torch.tensor(char_tok.encode(TEXT * 3))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["int8", "int4", "fp16"])
def test_a_converted_file_validates_by_loss_and_generates(fp32_path, val_ids, kind, char_tok):
    out = fp32_path.with_suffix(f".{kind}.onnx")
    said = []
    fp32_loss, loss = quantize_export(fp32_path, out, kind, val_ids, said.append)
    assert np.isfinite(fp32_loss) and abs(loss / fp32_loss - 1) < 0.05
    assert any(f"val loss fp32 {fp32_loss:.4f}, {kind} {loss:.4f}" in m for m in said)
    backend = load_ort_backend(out, provider="cpu")  # the metadata came along: it loads alone
    assert backend.tokenizer.chars == char_tok.chars
    assert backend.info().precision == f"{kind} weights (as exported)"
    assert load_ort_backend(fp32_path, provider="cpu").info().precision == "fp32 weights (as exported)"
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"int8": "MatMulInteger", "int4": "MatMulNBits", "fp16": "Cast"}[kind] in ops
    events = list(backend.stream("ROMEO:", Settings(temperature=0.0, max_new_tokens=40)))
    assert len(events) == 40  # 6 + 40 > block 32: the window re-prefills on the way
    assert split_loss(backend, val_ids) == pytest.approx(loss)


def test_a_files_weights_type_is_shown_only_when_it_is_one_we_write(fp32_path, tmp_path):
    from export.graph import WEIGHTS_KEY

    proto = onnx.load(str(fp32_path))
    for value, shown in (("int4", "int4 weights (as exported)"), ("\x1b[2Jint8", "")):
        next(p for p in proto.metadata_props if p.key == WEIGHTS_KEY).value = value
        onnx.save(proto, str(tmp_path / "m.onnx"))
        assert load_ort_backend(tmp_path / "m.onnx", provider="cpu").info().precision == shown


@pytest.mark.slow
def test_a_file_worse_than_its_tolerance_is_refused_and_not_written(fp32_path, val_ids, monkeypatch):
    import export.quantize as quantize

    monkeypatch.setitem(quantize.LOSS_TOLERANCE, "int4", -0.5)  # demand a loss half of fp32's
    out = fp32_path.with_suffix(".refused.onnx")
    refused = r"refused\.onnx: int4 val loss .* against fp32 .*tolerance -50.0%"
    with pytest.raises(QuantizeError, match=refused):
        quantize_export(fp32_path, out, "int4", val_ids)
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []


@pytest.mark.slow
def test_bf16_is_a_valid_graph_even_where_it_cannot_run(fp32_path, val_ids):
    out = fp32_path.with_suffix(".bf16.onnx")
    said = []
    quantize_export(fp32_path, out, "bf16", val_ids, said.append)
    onnx.checker.check_model(str(out), full_check=True)
    inits = [t for t in onnx.load(str(out)).graph.initializer if t.dims and len(t.dims) == 2]
    assert inits and all(t.data_type == TensorProto.BFLOAT16 for t in inits)
    assert any("bf16" in m for m in said)


@pytest.mark.slow
def test_cli_exports_validates_and_converts_in_one_command(tiny_ckpt, tmp_path, shakespeare_available):
    out = tmp_path / "tiny.int8.onnx"
    result = CliRunner().invoke(export_cli, ["onnx", "--ckpt", str(tiny_ckpt), "--out", str(out),
                                             "--quantize", "int8"])
    assert result.exit_code == 0, result.output
    assert "max abs logit difference" in result.output  # the fp32 file passed its checks first
    assert "val loss fp32 " in result.output and ", int8 " in result.output
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.int8.onnx"]
    assert load_ort_backend(out, provider="cpu").config.n_layer == 2
