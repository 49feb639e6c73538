"""ONNX export and the ONNX Runtime backend: parity with PyTorch, metadata, refusals."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import decode_logits

from export.cli import main as export_cli
from export.graph import input_names
from export.onnx_export import export_onnx
from export.ort_backend import OnnxModelError, load_ort_backend
from export.validate import LOGIT_TOLERANCE, ValidationError, empty_past, padded_batch, validate_export
from model.generate.backend import Settings
from model.generate.torch_backend import TorchBackend, TorchDecoder

pytestmark = pytest.mark.slow  # one export of the tiny model: ~15 s


@pytest.fixture(scope="module")
def onnx_path(tiny_ckpt, tmp_path_factory):
    # validate=True: onnx.checker with full shape inference, parity and greedy checks all pass
    return export_onnx(tiny_ckpt, tmp_path_factory.mktemp("onnx") / "tiny.onnx", validate=True)


@pytest.fixture(scope="module")
def ort(onnx_path):
    return load_ort_backend(onnx_path, provider="cpu")


def test_one_self_contained_file_with_optimum_names(onnx_path, ort, tiny_config):
    assert [p.name for p in onnx_path.parent.iterdir()] == ["tiny.onnx"]  # no external data
    assert [i.name for i in ort.session.get_inputs()] == input_names(2)
    assert [o.name for o in ort.session.get_outputs()][:3] == ["logits", "present.0.key", "present.0.value"]
    assert ort.info().device == "CPUExecutionProvider"


def test_validation_reports_a_small_logit_difference(onnx_path, tiny_ckpt):
    from model.checkpoint import load_model

    model, _, _ = load_model(tiny_ckpt)
    assert validate_export(onnx_path, model) < LOGIT_TOLERANCE


def test_metadata_round_trips_tokenizer_and_config(ort, tiny_config, char_tok):
    assert ort.config == tiny_config
    assert ort.tokenizer.chars == char_tok.chars
    assert ort.info().meta == {"steps": 0}


def test_prefill_and_decode_logits_match_across_block_size(ort, tiny_model):
    g = torch.Generator().manual_seed(5)
    prompt = torch.randint(0, tiny_model.config.vocab_size, (20,), generator=g).tolist()
    tokens = torch.randint(0, tiny_model.config.vocab_size, (50,), generator=g).tolist()
    expect = decode_logits(TorchDecoder(tiny_model), prompt, tokens)
    got = decode_logits(ort.decoder(), prompt, tokens)  # 20 + 50 > 32: re-prefills on the way
    for step, (a, b) in enumerate(zip(got, expect, strict=True)):
        torch.testing.assert_close(a, b, rtol=0, atol=LOGIT_TOLERANCE, msg=f"step {step}")


def test_rows_of_two_lengths_in_the_cache_then_a_step_each_at_its_own_position(ort, tiny_model):
    prompts = [[5, 6, 7, 8, 9, 10, 11], [40, 41, 42]]
    ids, mask, positions = padded_batch(prompts, "cache")
    feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
    cache = empty_past(tiny_model.config, 2, "cache")
    feeds |= dict(zip(input_names(2)[3:], cache, strict=True))
    logits, *present = ort.session.run(None, feeds)
    assert np.isfinite(logits).all()  # padded rows included
    assert present[0].shape == cache[0].shape  # the cache comes back whole, the new slots written
    # one decode step for both rows, each at its own position, over the written cache
    step_mask = (np.arange(8)[None, :] <= np.array([[7], [3]])).astype(np.int64)  # (2, 8)
    step = {"input_ids": np.array([[12], [43]]), "attention_mask": step_mask,
            "position_ids": np.array([[7], [3]])} | dict(zip(input_names(2)[3:], present, strict=True))
    next_logits = ort.session.run(["logits"], step)[0]
    with torch.no_grad():
        for b, (p, new) in enumerate(zip(prompts, (12, 43), strict=True)):
            alone, _ = tiny_model(torch.tensor([p + [new]]))
            np.testing.assert_allclose(logits[b, :len(p)], alone[0, :-1].numpy(), atol=LOGIT_TOLERANCE)
            np.testing.assert_allclose(next_logits[b, 0], alone[0, -1].numpy(), atol=LOGIT_TOLERANCE)


def test_the_decoder_binds_one_cache_the_graph_writes_in_place(ort, onnx_path):
    import onnx

    proto = onnx.load(str(onnx_path))
    made_by = {out: node.op_type for node in proto.graph.node for out in node.output}
    assert {made_by[f"present.{i}.{kv}"] for i in range(2) for kv in ("key", "value")} == {"ScatterND"}
    decoder = ort.decoder()
    buffers = [b.copy() for b in decoder.cache.buffers]
    decoder.feed([1, 2, 3])
    decoder.feed([4])
    for before, after in zip(buffers, decoder.cache.buffers, strict=True):  # (1, H, S, D), same arrays
        written = np.abs(after - before).sum(axis=(0, 1, 3)) > 0  # (S,)
        assert written.tolist() == [True] * 4 + [False] * 28


def test_dynamic_dimensions_are_named(onnx_path):
    import onnx

    proto = onnx.load(str(onnx_path))
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in [*proto.graph.input, *proto.graph.output]}
    assert dims["attention_mask"] == ["batch", "total"]
    assert dims["input_ids"] == dims["position_ids"] == ["batch", "new"]
    assert dims["past_key_values.0.key"] == dims["present.1.value"] == ["batch", 2, "past", 8]


@pytest.fixture(scope="module")
def concat_path(tiny_ckpt, tmp_path_factory):
    return export_onnx(tiny_ckpt, tmp_path_factory.mktemp("concat") / "tiny.onnx", layout="concat")


def test_a_concat_layout_file_decodes_as_pytorch_one_row_at_a_time(concat_path, tiny_model, char_tok):
    import onnx

    proto = onnx.load(str(concat_path))
    mask = next(v for v in proto.graph.input if v.name == "attention_mask")
    assert [d.dim_param for d in mask.type.tensor_type.shape.dim] == ["batch", "total"]  # past + new, not s53
    backend = load_ort_backend(concat_path, provider="cpu")
    assert backend.layout == "concat" and backend.batch_decoder(4) is None
    greedy = Settings(temperature=0.0, max_new_tokens=70)  # past the 32-token window twice
    torch_text = "".join(e.text for e in TorchBackend(tiny_model, char_tok).stream("ROMEO:", greedy))
    assert "".join(e.text for e in backend.stream("ROMEO:", greedy)) == torch_text


def test_a_file_of_another_format_version_is_refused_in_one_line(onnx_path, tmp_path):
    import onnx

    proto = onnx.load(str(onnx_path))
    mark = next(p for p in proto.metadata_props if p.key == "gpt_from_scratch.format")
    mark.value = "gpt-from-scratch-onnx/9"
    onnx.save(proto, str(tmp_path / "future.onnx"))
    with pytest.raises(OnnxModelError) as e:
        load_ort_backend(tmp_path / "future.onnx", provider="cpu")
    assert str(e.value) == (f"{tmp_path / 'future.onnx'} is a gpt-from-scratch ONNX model of another format "
                            "('gpt-from-scratch-onnx/9'); re-export it with this version's gpt-export onnx")


def test_greedy_text_equals_pytorch_for_100_tokens(ort, tiny_model, char_tok):
    greedy = Settings(temperature=0.0, max_new_tokens=100)
    torch_text = "".join(e.text for e in TorchBackend(tiny_model, char_tok).stream("ROMEO:", greedy))
    assert "".join(e.text for e in ort.stream("ROMEO:", greedy)) == torch_text
    assert len(torch_text) == 100


def test_seeded_sampling_equals_pytorch(ort, tiny_model, char_tok):
    s = Settings(temperature=1.0, top_k=10, max_new_tokens=60, seed=3)
    assert "".join(e.text for e in ort.stream("All:", s)) == \
        "".join(e.text for e in TorchBackend(tiny_model, char_tok).stream("All:", s))


def test_over_long_input_and_bad_ids_are_clear_errors(ort):
    decoder = ort.decoder()
    with pytest.raises(ValueError, match="0 \\+ 33 positions exceed block_size 32"):
        decoder.feed([1] * 33)
    with pytest.raises(ValueError, match=r"token id 97 is outside the vocabulary \[0, 97\)"):
        decoder.feed([1, 97])
    with pytest.raises(ValueError, match="token id -1"):
        decoder.feed([-1])


def test_corrupted_and_foreign_onnx_files_are_refused(tmp_path, onnx_path):
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(onnx_path.read_bytes()[:5000])
    with pytest.raises(OnnxModelError, match=f"ONNX Runtime cannot load {damaged}"):
        load_ort_backend(damaged)
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
    foreign = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), foreign)
    with pytest.raises(OnnxModelError, match="is not a gpt-from-scratch ONNX model"):
        load_ort_backend(foreign)
    with pytest.raises(OnnxModelError, match="not found; export one with gpt-export onnx"):
        load_ort_backend(tmp_path / "missing.onnx")


def test_cuda_request_without_cuda_is_an_error_not_a_fallback(onnx_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    with pytest.raises(OnnxModelError, match="--provider cuda: ONNX Runtime cannot use CUDA here"):
        load_ort_backend(onnx_path, provider="cuda")


def test_a_file_that_fails_validation_never_becomes_the_output(tiny_ckpt, tmp_path, monkeypatch):
    import export.onnx_export

    out = tmp_path / "tiny.onnx"
    out.write_bytes(b"the previous export")
    seen = []

    def fails(path, model, say, shown):
        seen.append((path.stat().st_size > 1000, path != out, shown))
        raise ValidationError(f"{shown}: logits differ from PyTorch by 1.00e+00 (tolerance 1e-04)")

    monkeypatch.setattr(export.onnx_export, "validate_export", fails)
    with pytest.raises(ValidationError, match="tiny.onnx: logits differ"):
        export_onnx(tiny_ckpt, out)
    assert seen == [(True, True, out)]  # the whole graph, checked in a temp file, reported as out
    assert out.read_bytes() == b"the previous export" and list(tmp_path.iterdir()) == [out]


def test_cli_errors_are_one_line(tmp_path, tiny_ckpt):
    result = CliRunner().invoke(export_cli, ["onnx", "--ckpt", str(tmp_path / "nope.pt")])
    assert result.exit_code == 2  # a usage error
    assert result.output.strip() == f"Error: checkpoint {tmp_path / 'nope.pt'} not found; train one with " \
        "gpt-train or pass --ckpt PATH"


def test_gpt_tui_batch_on_onnx_equals_torch(onnx_path, tiny_ckpt):
    from tui.cli import main as tui_cli

    def completions(*flags):
        result = CliRunner().invoke(tui_cli, ["--ckpt", str(tiny_ckpt), "--batch", "-", "--seed", "4",
                                              "--max-new-tokens", "30", *flags], input="All:\nROMEO:\n")
        assert result.exit_code == 0, result.output
        rows = [json.loads(line) for line in result.stdout.splitlines()]
        return [(r["completion"], r["backend"]) for r in rows]

    on_torch, on_onnx = completions(), completions("--backend", "onnx", "--onnx", str(onnx_path))
    assert [c for c, _ in on_onnx] == [c for c, _ in on_torch]
    assert {b for _, b in on_torch} == {"torch"} and {b for _, b in on_onnx} == {"onnx"}


def with_metadata(onnx_path, tmp_path, **config_changes):
    import onnx

    proto = onnx.load(str(onnx_path))
    entry = next(p for p in proto.metadata_props if p.key == "gpt_from_scratch.config")
    entry.value = json.dumps(json.loads(entry.value) | config_changes)
    out = tmp_path / "lying.onnx"
    onnx.save(proto, str(out))
    return out


@pytest.mark.parametrize("changes, message", [
    ({"n_head": 1}, "past_key_values.0.key has 2 on axis 1, the config says 1"),
    ({"block_size": 64}, "a step at position 63 with token 96 fails"),
    ({"vocab_size": 200}, "logits are 97 wide, the config says vocab_size 200"),
])
def test_metadata_that_contradicts_the_graph_is_refused_at_load(onnx_path, tmp_path, changes, message):
    path = with_metadata(onnx_path, tmp_path, **changes)
    with pytest.raises(OnnxModelError, match=r"lying.onnx: its metadata does not match the graph \(") as e:
        load_ort_backend(path, provider="cpu")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_non_finite_logits_fail_validation(onnx_path, tiny_model, tmp_path):
    import onnx
    from onnx import numpy_helper

    nan_model = nan_copy(tiny_model)
    with pytest.raises(ValidationError, match="the logits hold NaN or infinity"):
        validate_export(onnx_path, nan_model)  # PyTorch gives NaN, ONNX Runtime does not
    proto = onnx.load(str(onnx_path))
    for init in proto.graph.initializer:  # and both give NaN: nothing to compare, still a failure
        array = numpy_helper.to_array(init)
        if array.dtype == np.float32 and array.ndim == 2:
            init.CopyFrom(numpy_helper.from_array(np.full_like(array, np.nan), init.name))
    onnx.save(proto, str(tmp_path / "nan.onnx"))
    with pytest.raises(ValidationError, match="the logits hold NaN or infinity"):
        validate_export(tmp_path / "nan.onnx", nan_model)


def nan_copy(model):
    import copy

    nan = copy.deepcopy(model)
    with torch.no_grad():
        for p in nan.parameters():
            p.fill_(float("nan"))
    return nan
