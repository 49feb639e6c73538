"""The one-token step's variants (fixed shapes, compiled) give the eager step's logits and tokens."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO, decode_logits

from model import measured
from model.generate.backend import Settings
from model.generate.engine import Generation
from model.generate.torch_backend import RecomputeDecoder, TorchDecoder
from model.kv_cache import KVCache


def greedy(decoder, tokenizer, prompt="ROMEO:", steps=60):
    settings = Settings(temperature=0.0, max_new_tokens=steps)
    return [e.id for e in Generation(decoder, tokenizer, prompt, settings)]


def steps_and_window(tiny_model):
    g = torch.Generator().manual_seed(3)
    V = tiny_model.config.vocab_size
    prompt = torch.randint(0, V, (5,), generator=g).tolist()
    tokens = torch.randint(0, V, (60,), generator=g).tolist()  # 5 + 60 > block 32: re-prefills
    return prompt, tokens


def test_the_fixed_shape_step_gives_the_eager_logits_and_tokens(tiny_model, char_tok):
    prompt, tokens = steps_and_window(tiny_model)
    eager = decode_logits(TorchDecoder(tiny_model, step="eager"), prompt, tokens)
    static = decode_logits(TorchDecoder(tiny_model, step="static"), prompt, tokens)
    for i, (a, b) in enumerate(zip(static, eager, strict=True)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=f"step {i}")
    expect = greedy(RecomputeDecoder(tiny_model), char_tok)
    assert greedy(TorchDecoder(tiny_model, step="static"), char_tok) == expect
    assert greedy(TorchDecoder(tiny_model, step="eager"), char_tok) == expect


def test_auto_is_eager_on_the_cpu_and_cuda_graphs_need_cuda(tiny_model):
    assert TorchDecoder(tiny_model).step == "eager"
    with pytest.raises(ValueError, match=r"step='cuda_graph' needs a CUDA device, not cpu; use 'eager'"):
        TorchDecoder(tiny_model, step="cuda_graph")
    refused = r"step must be auto, eager, static, cuda_graph or compile, not 'fast'"
    with pytest.raises(ValueError, match=refused):
        TorchDecoder(tiny_model, step="fast")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_cuda_graph_step_gives_the_eager_tokens(tiny_model, char_tok):
    model = tiny_model.to("cuda")
    assert greedy(TorchDecoder(model, step="cuda_graph"), char_tok) == greedy(
        TorchDecoder(model, step="eager"), char_tok)


@pytest.mark.slow  # compiles the step once (a C++ build)
def test_the_compiled_step_gives_the_eager_logits_and_is_kept_for_later_processes(tiny_model, char_tok,
                                                                                   monkeypatch):
    from model.generate import compiled_step
    from model.generate.torch_backend import TorchBackend

    prompt, tokens = steps_and_window(tiny_model)
    eager = decode_logits(TorchDecoder(tiny_model, step="eager"), prompt, tokens)
    compiled = decode_logits(TorchDecoder(tiny_model, step="compile"), prompt, tokens)  # builds it
    for i, (a, b) in enumerate(zip(compiled, eager, strict=True)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=f"step {i}")
    path = compiled_step.package_path(tiny_model)
    assert path.is_file() and compiled_step.trusted(path)

    # a new decoder (the app makes one per generation) uses the loaded step: nothing is built again
    monkeypatch.setattr(compiled_step, "build", lambda *a: pytest.fail("built twice"))
    assert greedy(TorchDecoder(tiny_model, step="compile"), char_tok) == greedy(
        TorchDecoder(tiny_model, step="eager"), char_tok)

    # a later process loads the package and gets the same logits for the same step
    cache = KVCache(tiny_model.config).zero_()
    want = compiled_step.CompiledStep(path, torch.device("cpu")).run(cache, 5, 0)[0, -1]
    code = ("import json, sys, torch; from model.kv_cache import KVCache; "
            "from model.config import GPTConfig; from model.generate.compiled_step import CompiledStep; "
            "cache = KVCache(GPTConfig(**json.loads(sys.argv[2]))).zero_(); "
            "torch.save(CompiledStep(sys.argv[1], torch.device('cpu')).run(cache, 5, 0)[0, -1], sys.argv[3])")
    out = path.parent / "logits.pt"
    subprocess.run([sys.executable, "-c", code, str(path), json.dumps(tiny_model.config.to_dict()), str(out)],
                   cwd=REPO, check=True, timeout=120)
    torch.testing.assert_close(torch.load(out), want, rtol=0, atol=0)

    # `auto` uses it only where it was measured faster than the eager step
    for compiled_s, used in [(0.5, True), (0.95, False)]:  # seconds a step against eager's 1.0
        timing = {"eager": 1.0, "compiled": compiled_s}
        monkeypatch.setattr(measured, "path", lambda c=compiled_s: path.parent / f"measured-{c}.json")
        monkeypatch.setattr(compiled_step, "_race", lambda *a, t=timing: t)
        backend = TorchBackend(tiny_model, char_tok, step="auto")
        assert (backend.decoder().step == "compile") == used
        assert ("compiled one-token step" in backend.info().precision) == used


def test_a_compiled_step_is_named_by_its_weights_and_loaded_only_from_the_users_own_folder(tiny_model,
                                                                                         tmp_path):
    from model.generate import compiled_step

    path = compiled_step.package_path(tiny_model)
    assert path.parent == compiled_step.folder() and path.suffix == ".pt2"
    with torch.no_grad():
        tiny_model.lm_head.weight[0, 0] += 1.0
    assert compiled_step.package_path(tiny_model) != path  # retrained: another package
    assert compiled_step.package_path(tiny_model.to(torch.bfloat16)) != compiled_step.package_path(
        tiny_model.float())
    folder = tmp_path / "compiled"
    folder.mkdir(mode=0o700)
    package = folder / "step-x.pt2"
    package.write_bytes(b"not checked here: who may write it is")
    package.chmod(0o600)
    assert compiled_step.trusted(package)
    folder.chmod(0o777)  # anyone could have put it there
    assert not compiled_step.trusted(package)
    folder.chmod(0o700)
    package.chmod(0o666)
    assert not compiled_step.trusted(package)
    link = folder / "step-y.pt2"
    link.symlink_to(package)
    assert not compiled_step.trusted(link)
    assert not compiled_step.trusted(folder / "absent.pt2")


def test_bf16_decode_weights_give_the_fp32_logits_to_bf16_precision(tiny_model, char_tok):
    from model.generate.torch_backend import TorchBackend

    backend = TorchBackend(tiny_model, char_tok, precision="bf16")
    assert backend.decode_model.lm_head.weight.dtype == torch.bfloat16
    assert backend.torch_model().lm_head.weight.dtype == torch.float32  # the insight views keep fp32
    assert backend.info().precision == "bf16 weights (asked for)"
    prompt, tokens = steps_and_window(tiny_model)
    half = decode_logits(backend.decoder(), prompt, tokens)
    full = decode_logits(TorchDecoder(tiny_model), prompt, tokens)
    for i, (a, b) in enumerate(zip(half, full, strict=True)):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0, atol=0.05, msg=f"step {i}")


def test_auto_precision_keeps_the_faster_weights_and_says_why(tiny_model, char_tok, monkeypatch):
    import model.generate.torch_backend as tb

    monkeypatch.setattr(tb, "bf16_worth_timing", lambda device: False)
    backend = tb.TorchBackend(tiny_model, char_tok, precision="auto")
    assert backend.decode_model is backend.model
    assert backend.info().precision == "fp32 weights (no native bf16 here)"

    monkeypatch.setattr(tb, "bf16_worth_timing", lambda device: True)
    for fast, dtype in ((torch.bfloat16, torch.bfloat16), (torch.float32, torch.float32)):
        # a step that takes 1 ms in the fast type and 2 ms in the other
        monkeypatch.setattr(tb, "step_seconds",
                            lambda m, fast=fast: 1e-3 if m.lm_head.weight.dtype == fast else 2e-3)
        measured.path().unlink(missing_ok=True)  # timed afresh (tests/test_measured.py: kept otherwise)
        backend = tb.TorchBackend(tiny_model, char_tok, precision="auto")
        assert backend.decode_model.lm_head.weight.dtype == dtype
        fp32, bf16 = ("2.0", "1.0") if dtype == torch.bfloat16 else ("1.0", "2.0")
        name = "bf16" if dtype == torch.bfloat16 else "fp32"
        assert backend.info().precision == (f"{name} weights (a step: fp32 {fp32} ms, bf16 {bf16} ms; timed "
                                            "now, and kept for later runs)")


def test_fp32_precision_and_16_bit_checkpoints_decode_as_loaded(tiny_model, char_tok):
    import copy

    from model.generate.torch_backend import TorchBackend

    backend = TorchBackend(tiny_model, char_tok)  # the constructor's default: no timing, no copy
    assert backend.decode_model is backend.model and backend.info().precision == "fp32 weights (asked for)"
    half = TorchBackend(copy.deepcopy(tiny_model).to(torch.bfloat16), char_tok, precision="auto")
    assert half.decode_model is half.model and half.info().precision == "bfloat16 weights (as loaded)"


def test_the_exports_greedy_check_compares_every_step_even_past_end_of_text():
    """A model whose first greedy choice is end-of-text must still be compared over all steps."""
    from export.validate import greedy_ids

    class EndsAtOnce:  # argmax is token 0 (say end-of-text) at every step
        def __init__(self):
            self.fed: list[int] = []

        def feed(self, ids):
            self.fed += ids
            return torch.tensor([1.0, 0.0, 0.0])

    decoder = EndsAtOnce()
    assert greedy_ids(decoder, [2, 1], steps=5) == [0] * 5
    assert decoder.fed == [2, 1, 0, 0, 0, 0, 0]
