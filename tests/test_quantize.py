"""Quantized and 16-bit ONNX files: they validate by loss against fp32 on the model's own data, load
like any .onnx and generate; int4 stores the token table once, in 4 bits; a quantized folder loads in
Optimum and GenAI."""


import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from conftest import TEXT
from onnx import TensorProto, helper, numpy_helper

from export.blockwise import dequantize_rows, quantize_rows, to_int4
from export.cli import main as export_cli
from export.judge import JudgeDataError, judge_data, split_loss, window_starts
from export.onnx_export import export_onnx
from export.ort_backend import load_ort_backend
from export.quantize import QuantizeError, fold_head_transpose, quantize_export
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


@pytest.mark.slow  # an ONNX export and conversion
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
                                             "--quantize", "int8", "--data", "shakespeare"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())  # the console wraps its lines
    assert "judging on the validation split of shakespeare (--data): 256 windows of 32 tokens" in said
    assert "max abs logit difference" in result.output  # the fp32 file passed its checks first
    assert "val loss fp32 " in result.output and ", int8 " in result.output
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.int8.onnx"]
    assert load_ort_backend(out, provider="cpu").config.n_layer == 2


def test_int4_blocks_keep_one_scale_each_and_pack_two_values_a_byte_low_nibble_first():
    rows = np.stack([np.linspace(-1, 0.5, 32), np.zeros(32), np.linspace(0.2, 3.2, 32)]).astype(np.float32)
    packed, scales = quantize_rows(rows, 32)
    assert packed.shape == (3, 1, 16) and packed.dtype == np.uint8 and scales.shape == (3, 1)
    # the value of largest magnitude lands on -8 exactly, sign kept: -1 -> scale 0.125, 3.2 -> -0.4
    np.testing.assert_array_equal(scales[:, 0], np.float32([0.125, 0.0, -0.4]))
    assert packed[0, 0, 0] & 0xF == 0 and packed[2, 0, 15] >> 4 == 0  # code -8 + 8
    back = dequantize_rows(packed, scales)
    assert back[0, 0] == -1 and back[2, -1] == pytest.approx(3.2) and not back[1].any()
    assert np.abs(back - rows).max() <= np.abs(scales).max() / 2 + 1e-6


def test_int4_graph_shares_the_token_table_between_lookup_and_head_and_computes_with_it():
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    wte = rng.standard_normal((40, 32)).astype(np.float32)  # (V, C)
    w2 = rng.standard_normal((32, 48)).astype(np.float32)  # (K, N): K = 32 takes blocks of 32
    w3 = rng.standard_normal((24, 8)).astype(np.float32)  # K = 24: no block divides it, stays fp32
    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("Gather", ["wte", "input_ids"], ["emb"]),
         helper.make_node("Transpose", ["wte"], ["wteT"], perm=[1, 0]),
         helper.make_node("MatMul", ["x", "wteT"], ["head"]),
         helper.make_node("MatMul", ["x", "w2"], ["y2"]),
         helper.make_node("MatMul", ["x24", "w3"], ["y3"])],
        "g", [value("input_ids", TensorProto.INT64, [None]), value("x", TensorProto.FLOAT, [None, 32]),
              value("x24", TensorProto.FLOAT, [None, 24])],
        [value(n, TensorProto.FLOAT, None) for n in ("emb", "head", "y2", "y3")],
        [numpy_helper.from_array(w, n) for w, n in ((wte, "wte"), (w2, "w2"), (w3, "w3"))])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    to_int4(proto, accuracy_level=0)  # fp32 activations: the outputs are exact maths on the 4-bit weights
    ops = [n.op_type for n in proto.graph.node]
    assert sorted(ops) == ["GatherBlockQuantized", "MatMul", "MatMulNBits", "MatMulNBits", "Reshape"]
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    assert "wte" not in inits and "w2" not in inits and "w3" in inits
    nodes = {n.output[0]: n for n in proto.graph.node}
    table = nodes["head"].input[1]  # the head's 4-bit table is the one the lookup reads
    assert nodes[nodes["emb"].input[0]].input[0] == table and nodes["emb"].input[2] == nodes["head"].input[2]

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    ids = np.array([0, 7, 39])
    x, x24 = rng.standard_normal((3, 32)).astype(np.float32), rng.standard_normal((3, 24)).astype(np.float32)
    emb, head, y2, y3 = session.run(None, {"input_ids": ids, "x": x, "x24": x24})
    wte4 = dequantize_rows(inits[table], inits[nodes["head"].input[2]])
    w2t4 = dequantize_rows(inits[nodes["y2"].input[1]], inits[nodes["y2"].input[2]])  # rows of w2.T
    np.testing.assert_array_equal(emb, wte4[ids])
    np.testing.assert_allclose(head, x @ wte4.T, atol=1e-5)
    np.testing.assert_allclose(y2, x @ w2t4.T, atol=1e-5)
    np.testing.assert_allclose(y3, x24 @ w3, atol=1e-5)
    assert 0 < np.abs(wte4 - wte).max() < 0.5  # quantized, not copied


def test_the_judge_spreads_its_windows_evenly_over_the_split():
    assert window_starts(1000, 32, tokens=128) == [0, 224, 480, 736]  # 4 of the 31 windows
    assert window_starts(1000, 32, tokens=10**6) == [32 * i for i in range(31)]  # all of them
    assert window_starts(40, 32, tokens=1) == [0]  # at least one
    with pytest.raises(ValueError, match=r"the split has 32 tokens, fewer than one window of 32 \+ 1"):
        window_starts(32, 32)


@pytest.mark.slow  # an ONNX export
def test_the_streamed_loss_is_the_windows_mean_as_pytorch_computes_it(fp32_path, val_ids, tiny_model):
    from model.train.report import full_val_loss

    backend = load_ort_backend(fp32_path, provider="cpu")
    whole = split_loss(backend, val_ids, tokens=10**6)
    assert whole == pytest.approx(full_val_loss(tiny_model, val_ids, 32), rel=1e-5)
    starts = window_starts(len(val_ids), 32, tokens=96)
    windows = torch.stack([val_ids[s:s + 33] for s in starts])  # (3, 33)
    with torch.no_grad():
        _, expect = tiny_model(windows[:, :-1], windows[:, 1:])
    some = split_loss(backend, val_ids, tokens=96)
    assert some == pytest.approx(float(expect), rel=1e-5)


@pytest.mark.parametrize(("data", "meta", "expect"), [
    (None, {"train_config": {"data": "shakespeare"}}, ("shakespeare", "what m.pt was trained on")),
    ("shakespeare", {"train_config": {"data": "/elsewhere/t.txt"}}, ("shakespeare", "--data")),
    (None, {"train_config": {"data": "/elsewhere/t.txt"}},
     "runs/m.pt was trained on /elsewhere/t.txt: pass --data with that text or folder to judge the int4 "
     "file on its validation split (a path stored in a checkpoint is never opened on its own), or "
     "--no-validate to write it unjudged"),
    (None, {"imported_from": "huggingface"},
     "runs/m.pt does not say what it was trained on (an import?): pass --data shakespeare, a text file "
     "or a gpt-prepare folder to judge the int4 file on, or --no-validate to write it unjudged"),
    ("no/such.txt", {}, "--data no/such.txt does not exist; pass shakespeare, a text file or a folder "
                        "written by gpt-prepare"),
])
def test_the_judge_reads_the_models_own_data_and_names_data_where_it_cannot(data, meta, expect):
    from pathlib import Path

    if isinstance(expect, tuple):
        assert judge_data(data, meta, Path("runs/m.pt"), "int4") == expect
    else:
        with pytest.raises(JudgeDataError) as caught:
            judge_data(data, meta, Path("runs/m.pt"), "int4")
        assert str(caught.value) == expect


def test_an_import_without_data_is_refused_before_any_export_work(tiny_ckpt, tmp_path):
    result = CliRunner().invoke(export_cli, ["onnx", "--ckpt", str(tiny_ckpt), "--out",
                                             str(tmp_path / "q.onnx"), "--quantize", "int4"])
    assert result.exit_code == 2
    assert result.output.endswith(
        f"Error: {tiny_ckpt} does not say what it was trained on (an import?): pass --data shakespeare, a "
        "text file or a gpt-prepare folder to judge the int4 file on, or --no-validate to write it "
        "unjudged\n")
    assert "exporting" not in result.output and list(tmp_path.iterdir()) == []
    result = CliRunner().invoke(export_cli, ["onnx", "--ckpt", str(tiny_ckpt), "--data", "shakespeare"])
    assert result.exit_code == 2
    assert result.output == ("Error: --data says what a converted file is judged on; pass it with --quantize "
                             "or --dtype\n")


@pytest.mark.slow
def test_cli_judges_on_the_given_text_and_only_our_lines_reach_the_terminal(tiny_ckpt, tmp_path, text_file):
    import os
    import subprocess
    import sys

    out = tmp_path / "tiny.int4.onnx"
    # a process of its own, as a person runs it: ONNX Runtime's int4 quantizer configured root logging
    # at INFO when imported and printed a line per node, which pytest's own log capture would hide
    result = subprocess.run([sys.executable, "-m", "export.cli", "onnx", "--ckpt", str(tiny_ckpt), "--out",
                             str(out), "--quantize", "int4", "--data", str(text_file)],
                            capture_output=True, text=True, env=os.environ | {"COLUMNS": "300"}, timeout=600)
    assert result.returncode == 0, result.stderr
    said = result.stderr.splitlines()
    assert f"judging on the validation split of {text_file} (--data): 6 windows of 32 tokens" in said[0]
    assert "val loss fp32 " in result.stderr and ", int4 " in result.stderr
    assert not [line for line in said if "INFO" in line or "WARNING" in line]
    assert result.stdout.startswith(f"wrote {out} (")


@pytest.mark.slow  # a 46M-weight export: GPT-2's vocabulary and width, one layer
def test_int4_at_gpt2s_vocabulary_stores_the_token_table_once_in_4_bits(tmp_path):
    from model import checkpoint
    from model.bpe import ByteBPETokenizer, bytes_to_unicode
    from model.config import preset
    from model.gpt import GPT

    config = preset("gpt2-124m").replace(n_layer=1, block_size=64, qkv_bias=True, activation="gelu_tanh",
                                         dropout=0.0)
    torch.manual_seed(0)
    ckpt = tmp_path / "g.pt"
    # GPT-2's vocabulary size: the 256 bytes, placeholder tokens, the end-of-text marker last
    vocab = [*bytes_to_unicode().values(), *(f"<t{i}>" for i in range(config.vocab_size - 257))]
    tokenizer = ByteBPETokenizer(vocab, [], {"<|endoftext|>": config.vocab_size - 1})
    checkpoint.save(checkpoint.payload(GPT(config), tokenizer, {"steps": 0}), ckpt)
    fp32 = export_onnx(ckpt, tmp_path / "g.onnx", validate=False)
    quantize_export(fp32, tmp_path / "g.int4.onnx", "int4", torch.empty(0), check=False)
    proto = onnx.load(str(tmp_path / "g.int4.onnx"))
    V, C = config.vocab_size, config.n_embd
    scales = {n.input[2] for n in proto.graph.node if n.domain == "com.microsoft"}
    floats = [t for t in proto.graph.initializer if t.data_type == TensorProto.FLOAT and len(t.dims) == 2]
    assert [tuple(t.dims) for t in floats if t.name not in scales] == [(64, C)]  # the positions alone
    tables = [t for t in proto.graph.initializer if t.data_type == TensorProto.UINT8 and t.dims[0] == V]
    assert len(tables) == 1 and list(tables[0].dims) == [V, C // 32, 16]
    # bytes per weight: 4 bits and a 4-byte scale per 32 (q4_0 stores 18 bytes per 32 weights)
    weights = sum(p.numel() for p in GPT(config).parameters()) - 64 * C  # all but the positions
    size = (tmp_path / "g.int4.onnx").stat().st_size
    metadata = sum(len(p.value) for p in proto.metadata_props)  # the vocabulary, as JSON
    assert size < weights * 20 / 32 + 64 * C * 4 + metadata + 256 * 1024  # + fp32 positions, biases, norms
    assert size < 1.3 * (weights * 18 / 32 + 64 * C * 4)


@pytest.fixture(scope="module")
def imported_gpt2(tmp_path_factory, shakespeare_available):
    """A random Hugging Face GPT-2 (a BPE trained on Tiny Shakespeare), imported: it names no data."""
    from conftest import gpt2_folder

    from model.hf.load import import_hf

    folder = gpt2_folder(tmp_path_factory.mktemp("hf") / "gpt2")
    path = tmp_path_factory.mktemp("ckpt") / "gpt2.pt"
    import_hf(str(folder), path, progress=False)
    return path


@pytest.mark.slow  # an export and a conversion, then Optimum and GenAI sessions
@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_a_quantized_folder_runs_in_optimum_and_genai_with_our_greedy_ids(imported_gpt2, tmp_path, kind):
    pytest.importorskip("optimum.onnxruntime", reason="the dev extra: pip install -e '.[dev]'")
    pytest.importorskip("onnxruntime_genai", reason="the dev extra: pip install -e '.[dev]'")
    from conftest import PROMPT, genai_greedy, greedy_ort, hf_greedy
    from optimum.onnxruntime import ORTModelForCausalLM

    out = tmp_path / kind
    result = CliRunner().invoke(export_cli, ["onnx", "--ckpt", str(imported_gpt2), "--out", f"{out}/",
                                             "--quantize", kind, "--data", "shakespeare"])
    assert result.exit_code == 0, result.output
    assert "val loss fp32 " in result.output
    assert "and the files Optimum and GenAI read beside it" in result.output
    names = {p.name for p in out.iterdir()}
    assert {"model.onnx", "config.json", "genai_config.json", "tokenizer.json"} <= names
    assert not [n for n in names if n.startswith(".")]  # no staging left behind
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert {"int8": {"MatMulInteger"}, "int4": {"MatMulNBits", "GatherBlockQuantized"}}[kind] <= ops
    ours_backend = load_ort_backend(out / "model.onnx", provider="cpu")
    assert ours_backend.weights == kind
    tok = ours_backend.tokenizer
    optimum = ORTModelForCausalLM.from_pretrained(out, provider="CPUExecutionProvider")
    compared = 0  # GenAI stops at end-of-text: prompts until enough tokens came before one
    for text in (PROMPT, "First Citizen:\nBefore we proceed", "KING RICHARD", "O Romeo, Romeo"):
        prompt = tok.encode(text)
        ours = greedy_ort(ours_backend, prompt, 30)
        assert hf_greedy(optimum, prompt, 30) == ours, text
        until_eot = ours[: ours.index(tok.eot_id)] if tok.eot_id in ours else ours
        assert genai_greedy(out, prompt, 30) == until_eot, text
        compared += len(until_eot)
    assert compared >= 20


def test_a_validation_split_shorter_than_a_window_is_refused_before_any_export_work(tiny_ckpt, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text(TEXT[:300])  # its last tenth, 30 characters, is the validation split
    out = tmp_path / "q.onnx"
    args = ["onnx", "--ckpt", str(tiny_ckpt), "--out", str(out), "--quantize", "int8", "--data", str(short)]
    result = CliRunner().invoke(export_cli, args, env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert result.output.endswith(f"Error: --data {short}: the split has 30 tokens, fewer than one window of "
                                  "32 + 1; judge on a longer text\n")
    assert not out.exists()
