"""Hugging Face GPT-2 in and out: import, tokenizer as data, export back, refusals, the offline hub."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from click.testing import CliRunner
from conftest import (
    EOT,
    PROMPT,
    REPO,
    VARIED_TEXT,
    genai_greedy,
    gpt2_folder,
    greedy_ort,
    hf_greedy,
)

from export.cli import main as export_cli
from model import checkpoint
from model.checkpoint import load_model
from model.config import GPTConfig
from model.generate.torch_backend import TorchDecoder
from model.gpt import GPT, Bigram
from model.hf.cli import main as import_cli
from model.hf.load import HFImportError, import_hf
from model.hf.save import export_hf
from model.tokenizer import GPT2_PATTERN, CharTokenizer

transformers = pytest.importorskip("transformers", reason="the dev extra: pip install -e '.[dev]'")
@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, shakespeare_available):
    return gpt2_folder(tmp_path_factory.mktemp("hf") / "gpt2")


@pytest.fixture(scope="module")
def imported(hf_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "gpt2.pt"
    import_hf(str(hf_dir), path, progress=False)
    return path


@pytest.fixture(scope="module")
def hf_model(hf_dir):
    return transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()


def greedy(model, prompt: list[int], steps: int) -> list[int]:
    decoder, out = TorchDecoder(model), []
    logits = decoder.feed(prompt)
    for _ in range(steps):
        out.append(int(logits.argmax()))
        logits = decoder.feed(out[-1:])
    return out


def test_imported_logits_equal_transformers(imported, hf_model):
    model, tok, meta = load_model(imported)
    assert model.config.activation == "gelu_tanh" and model.config.qkv_bias
    assert meta["source"].endswith("gpt2") and meta["imported_from"] == "huggingface"
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (2, 40), generator=g)
    with torch.no_grad():
        ours, _ = model(ids)
        theirs = hf_model(ids).logits
    assert theirs.abs().max() > 1  # not a flat, near-zero output that would match anything
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    for attention in ("explicit", "fused"):  # both paths honour gelu_tanh
        other = GPT(model.config.replace(attention=attention)).eval()
        other.load_state_dict(model.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(other(ids)[0], theirs, rtol=0, atol=1e-5)


def test_greedy_50_tokens_equal_generate(imported, hf_model):
    model, tok, _ = load_model(imported)
    prompt = tok.encode(PROMPT)
    ours = greedy(model, prompt, 50)
    assert len(set(ours)) > 3  # a varied continuation, not one token repeated
    assert ours == hf_greedy(hf_model, prompt, 50)


def test_tokenizer_ids_equal_the_hugging_face_tokenizer(imported, hf_dir):
    ours = load_model(imported)[1]
    theirs = transformers.AutoTokenizer.from_pretrained(hf_dir)
    for text in VARIED_TEXT:  # Hugging Face's tokenizer reads special tokens in the text, as training does
        ids = ours.encode(text, special=True)
        assert ids == theirs(text)["input_ids"], text
        assert ours.decode(ids) == text
    assert ours.encode(f"a{EOT}b", special=True)[1] == ours.eot_id == 400
    assert ours.eot_id not in ours.encode(f"a{EOT}b")  # a prompt cannot inject it


def test_imported_checkpoint_is_plain_data_needing_no_ranks_file(imported, monkeypatch, tmp_path):
    monkeypatch.setenv("GPT_BPE_RANKS", str(tmp_path / "absent.tiktoken"))
    ckpt = torch.load(imported, weights_only=True)  # plain data: loads without allowing any code
    assert set(ckpt["tokenizer"]) == {"kind", "vocab", "merges", "special", "eot", "pattern"}
    tok = load_model(imported)[1]  # would raise FileNotFoundError if it needed the ranks file
    assert tok.decode(tok.encode(PROMPT)) == PROMPT


def test_vocab_json_and_merges_txt_import_the_same_tokenizer(hf_dir, imported, tmp_path):
    folder = tmp_path / "legacy"
    shutil.copytree(hf_dir, folder)
    (folder / "tokenizer.json").unlink()
    (folder / "vocab.json").write_text(  # GPT-2's vocab.json lists the end-of-text token too
        json.dumps(json.loads((folder / "vocab.json").read_text()) | {EOT: 400}))
    import_hf(str(folder), tmp_path / "legacy.pt", progress=False)
    a, b = load_model(imported)[1], load_model(tmp_path / "legacy.pt")[1]
    for text in VARIED_TEXT:
        assert a.encode(text) == b.encode(text)


@pytest.mark.parametrize("field, value, message", [
    ("model_type", "llama", "model_type 'llama' is not 'gpt2'"),
    ("scale_attn_by_inverse_layer_idx", True, "scale_attn_by_inverse_layer_idx=True is not supported"),
    ("reorder_and_upcast_attn", True, "reorder_and_upcast_attn=True is not supported"),
    ("activation_function", "relu", "activation_function 'relu' is not supported"),
    ("n_inner", 48, "n_inner=48 is not supported"),
])
def test_non_gpt2_configs_are_refused_naming_the_field(hf_dir, tmp_path, field, value, message):
    folder = tmp_path / "other"
    shutil.copytree(hf_dir, folder)
    config = json.loads((folder / "config.json").read_text()) | {field: value}
    (folder / "config.json").write_text(json.dumps(config))
    result = CliRunner().invoke(import_cli, ["hf", str(folder), "--out", str(tmp_path / "x.pt")])
    assert result.exit_code == 1
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "x.pt").exists()


def test_hub_layout_without_prefix_and_with_mask_buffers_imports_the_same(hf_dir, imported, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "hub"
    shutil.copytree(hf_dir, folder)
    # openai-community/gpt2 stores GPT2Model's names and the causal-mask buffers
    state = {k.removeprefix("transformer."): v for k, v in load_file(hf_dir / "model.safetensors").items()}
    state["h.0.attn.bias"] = torch.ones(1, 1, 96, 96).tril()
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    import_hf(str(folder), tmp_path / "hub.pt", progress=False)
    for a, b in zip(load_model(imported)[0].state_dict().values(),
                    load_model(tmp_path / "hub.pt")[0].state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name, message", [
    ("model.safetensors", "cannot read {folder}/model.safetensors (SafetensorError"),
    ("config.json", "cannot read {folder}/config.json (JSONDecodeError"),
])
def test_damaged_files_are_one_line_errors(hf_dir, tmp_path, name, message):
    folder = tmp_path / "damaged"
    shutil.copytree(hf_dir, folder)
    (folder / name).write_bytes((folder / name).read_bytes()[:50])
    result = CliRunner().invoke(import_cli, ["hf", str(folder), "--out", str(tmp_path / "x.pt")])
    last = result.output.strip().splitlines()[-1]  # after the progress note on stderr
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert last.startswith("Error: " + message.format(folder=folder)) and last.endswith("download it again")


class Payload:  # a pickle that would run code if it were loaded without weights_only
    def __reduce__(self):
        return (print, ("code ran",))


def test_pytorch_model_bin_loads_only_as_weights(hf_dir, imported, tmp_path):
    from safetensors.torch import load_file

    folder = tmp_path / "bin"
    shutil.copytree(hf_dir, folder)
    (folder / "model.safetensors").unlink()
    torch.save(load_file(hf_dir / "model.safetensors"), folder / "pytorch_model.bin")
    import_hf(str(folder), tmp_path / "bin.pt", progress=False)
    for a, b in zip(load_model(imported)[0].parameters(), load_model(tmp_path / "bin.pt")[0].parameters(),
                    strict=True):
        assert torch.equal(a, b)
    torch.save({"transformer.wte.weight": Payload()}, folder / "pytorch_model.bin")
    with pytest.raises(HFImportError, match="does not load with weights_only=True"):
        import_hf(str(folder), tmp_path / "evil.pt", progress=False)


def test_offline_hub_id_is_a_one_line_error_saying_to_pass_a_folder(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # never touch the network
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # and no cached copy
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
    result = CliRunner().invoke(import_cli, ["hf", "openai-community/gpt2", "--out", str(tmp_path / "g.pt")])
    assert result.exit_code == 1
    assert result.output == (
        "Error: could not download openai-community/gpt2 from the Hugging Face hub (no network, or "
        "HF_HUB_OFFLINE set, and no cached copy); download it where you are online and pass its "
        "folder: gpt-import hf FOLDER --out CKPT\n")
    result = CliRunner().invoke(import_cli, ["hf", "./no/such/folder", "--out", str(tmp_path / "g.pt")])
    assert result.output.startswith("Error: ./no/such/folder is not a folder; pass a Hugging Face GPT-2")


def test_export_back_loads_in_transformers_with_equal_logits(imported, tmp_path):
    out = tmp_path / "back"
    result = CliRunner().invoke(export_cli, ["hf", "--ckpt", str(imported), "--out", str(out)])
    assert result.exit_code == 0, result.output
    model, tok, _ = load_model(imported)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.tensor([tok.encode(PROMPT)])
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, model(ids)[0], rtol=0, atol=1e-5)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    for text in VARIED_TEXT:
        assert hf_tok(text)["input_ids"] == tok.encode(text, special=True)
        assert hf_tok.decode(tok.encode(text, special=True)) == text


@pytest.mark.parametrize("changes", [
    {},  # the lecture's model: exact GELU, biases, tied
    {"bias": False, "qkv_bias": False, "tie_weights": False, "activation": "gelu_tanh"},
])
def test_char_model_exports_with_equal_logits_and_a_round_tripping_tokenizer(tmp_path, changes,
                                                                             shakespeare_available):
    from tokenizers import Tokenizer

    from model.data.corpus import text_source

    text = text_source("shakespeare").read_text(encoding="utf-8")
    tok = CharTokenizer.from_text(text)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=16,
                          dropout=0.0, **changes)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))  # biases and LayerNorm weights away from 0 and 1
    checkpoint.save(checkpoint.payload(model, tok), tmp_path / "char.pt")
    out = export_hf(tmp_path / "char.pt", tmp_path / "char")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.tensor([tok.encode("ROMEO:\nWhat light?")])
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, model(ids)[0], rtol=0, atol=1e-5)
    hf_tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    ids = hf_tok.encode(text).ids
    assert ids == tok.encode(text) and hf_tok.decode(ids) == text
    # outside the vocabulary: the same replacement as our unknown="replace"
    assert hf_tok.encode("hé").ids == tok.encode("hé", unknown="replace")
    auto = transformers.AutoTokenizer.from_pretrained(out)  # what generate(**inputs) is given
    assert set(auto("ROMEO:\n")) == {"input_ids", "attention_mask"}  # no token_type_ids: GPT-2 has none
    assert auto.decode(auto("ROMEO: a .")["input_ids"]) == "ROMEO: a ."


def test_bigram_does_not_export(tmp_path):
    model = Bigram(GPTConfig(kind="bigram", vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=1))
    checkpoint.save(checkpoint.payload(model, CharTokenizer("abcd")), tmp_path / "b.pt")
    result = CliRunner().invoke(export_cli, ["hf", "--ckpt", str(tmp_path / "b.pt"), "--out", str(tmp_path)])
    assert result.output == f"Error: {tmp_path / 'b.pt'} holds a bigram model; only the GPT exports\n"


@pytest.mark.slow  # a few training steps on Tiny Shakespeare
def test_init_from_an_imported_gpt2_lowers_its_loss_and_records_where_it_started(imported, tmp_path):
    from model.train.init_from import init_config
    from model.train.loop import TrainConfig, evaluate, setup, train, train_step

    model_config = init_config(imported, {"block_size": 32, "dropout": 0.0})
    cfg = TrainConfig(model=model_config, init_from=str(imported), out_dir=str(tmp_path / "ft"),
                      batch_size=8, max_iters=30, learning_rate=3e-3, warmup_iters=0, eval_interval=30,
                      eval_iters=4, device="cpu", dtype="fp32", progress=False)
    tr, tok = setup(cfg, log=lambda m: None)
    source, _, _ = load_model(imported)
    assert tr.model.config.block_size == 32 and tok.to_dict() == load_model(imported)[1].to_dict()
    assert torch.equal(tr.model.wpe.weight, source.wpe.weight[:32])  # the first 32 positions, cropped
    before = evaluate(tr)["val"]
    for _ in range(30):
        train_step(tr)
    assert evaluate(tr)["val"] < before - 0.5
    train(dataclasses.replace(cfg, max_iters=2), log=lambda m: None)
    meta = checkpoint.load(tmp_path / "ft" / "ckpt.pt")["meta"]
    assert meta["init_from"] == {"path": str(imported), "source": str(load_model(imported)[2]["source"]),
                                 "steps": None}
    assert meta["train_config"]["init_from"] == str(imported)


def test_gpt_train_init_from_flag(imported, tmp_path):
    from model.train.cli import main as train_cli

    text = tmp_path / "text.txt"
    text.write_text(PROMPT * 40)
    common = ["--init-from", str(imported), "--data", str(text), "--out", str(tmp_path / "o"),
              "--no-progress", "--device", "cpu", "--dtype", "fp32"]
    result = CliRunner().invoke(train_cli, [*common, "--n-layer", "4"])
    assert result.exit_code == 2  # a usage error, as every refused flag
    assert result.output == (f"Error: --n-layer cannot change with --init-from {imported}: its weights "
                             "fix them; drop the flag\n")
    result = CliRunner().invoke(train_cli, [*common, "--block-size", "16", "--max-iters", "2",
                                            "--batch-size", "2", "--eval-iters", "1"])
    assert result.exit_code == 0, result.output
    model, tok, meta = load_model(tmp_path / "o" / "ckpt.pt")
    assert model.config.block_size == 16 and model.config.activation == "gelu_tanh"
    assert tok.to_dict() == load_model(imported)[1].to_dict() and meta["init_from"]["path"] == str(imported)


def test_init_from_refuses_shape_flags_and_a_longer_block(imported):
    from model.train.init_from import init_config

    with pytest.raises(ValueError, match="--n-layer cannot change with --init-from"):
        init_config(imported, {"n_layer": 4})
    with pytest.raises(ValueError, match="--block-size 200 exceeds the 96 positions"):
        init_config(imported, {"block_size": 200})


@pytest.fixture(scope="module")
def onnx_dir(imported, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "gpt2"
    result = CliRunner().invoke(export_cli, ["onnx", "--ckpt", str(imported), "--out", f"{out}/"])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.slow  # one ONNX export, then Optimum and GenAI sessions
def test_onnx_folder_runs_in_optimum_and_genai_with_our_greedy_ids(onnx_dir, imported):
    from optimum.onnxruntime import ORTModelForCausalLM

    from export.ort_backend import load_ort_backend

    names = {p.name for p in onnx_dir.iterdir()}
    assert {"model.onnx", "config.json", "genai_config.json", "tokenizer.json"} <= names
    model, tok, _ = load_model(imported)
    prompt = tok.encode(PROMPT)
    ours = greedy(model, prompt, 30)
    ort = load_ort_backend(onnx_dir / "model.onnx", provider="cpu")
    assert ort.config.activation == "gelu_tanh"  # carried in the ONNX metadata
    assert greedy_ort(ort, prompt, 30) == ours
    optimum = ORTModelForCausalLM.from_pretrained(onnx_dir, provider="CPUExecutionProvider")
    assert hf_greedy(optimum, prompt, 30) == ours
    # GenAI stops at the end-of-text token, as our app does
    until_eot = ours[: ours.index(tok.eot_id)] if tok.eot_id in ours else ours
    assert len(until_eot) > 5 and genai_greedy(onnx_dir, prompt, 30) == until_eot
    import onnxruntime_genai as og

    genai_tok = og.Tokenizer(og.Model(str(onnx_dir)))
    for text in VARIED_TEXT:  # GenAI's tokenizer reads special tokens in the text, as training does
        assert list(genai_tok.encode(text)) == tok.encode(text, special=True), text


def converter_form(folder, pattern: str = GPT2_PATTERN, **changes) -> dict:
    """The folder's GPT-2 tokenizer.json rewritten in the form current converters write
    (transformers' TikTokenConverter): a Split on GPT-2's pattern, then ByteLevel without its regex,
    and ignore_merges; ``changes`` alter the Split (``split``), the ByteLevel (``level``) or the model."""
    tj = json.loads((folder / "tokenizer.json").read_text())
    split = {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False}
    level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    tj["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [split | changes.pop("split", {}),
                                                                 level | changes.pop("level", {})]}
    tj["model"] |= {"ignore_merges": True} | changes
    return tj


def test_the_converters_form_imports_and_encodes_as_tokenizers_does(hf_dir, imported, tmp_path):
    from tokenizers import Tokenizer

    folder = tmp_path / "new"
    shutil.copytree(hf_dir, folder)
    (folder / "tokenizer.json").write_text(json.dumps(converter_form(hf_dir)))
    import_hf(str(folder), tmp_path / "new.pt", progress=False)
    ours, before = load_model(tmp_path / "new.pt")[1], load_model(imported)[1]
    theirs = Tokenizer.from_file(str(folder / "tokenizer.json"))
    for text in VARIED_TEXT:
        ids = ours.encode(text, special=True)
        assert ids == theirs.encode(text).ids == before.encode(text, special=True), text
        assert ours.decode(ids) == text


@pytest.mark.parametrize("changes, message", [
    ({"pattern": "(a|aa)+$"}, "pre_tokenizer splits on the pattern '(a|aa)+$', not GPT-2's; only GPT-2's"),
    ({"split": {"behavior": "Removed"}}, "is not GPT-2's (ByteLevel, or a Split on GPT-2's pattern then"),
    ({"level": {"use_regex": True}}, "is not GPT-2's (ByteLevel, or a Split on GPT-2's pattern then"),
    ({"level": {"add_prefix_space": True}}, "is not GPT-2's (ByteLevel, or a Split on GPT-2's pattern then"),
    ({"ignore_merges": "yes"}, "model.ignore_merges='yes' is not true or false"),
    ({"drop_merge": 10}, "ignore_merges is true and 4 token(s) such as 'nd' are not made by the merges"),
])
def test_other_pre_tokenizers_and_merges_are_refused_in_one_line(hf_dir, tmp_path, changes, message):
    folder = tmp_path / "other"
    shutil.copytree(hf_dir, folder)
    drop = changes.pop("drop_merge", None)
    tj = converter_form(hf_dir, changes.pop("pattern", GPT2_PATTERN), **changes)
    if drop is not None:  # its token stays in the vocabulary, but no merge makes it any more
        del tj["model"]["merges"][drop]
    (folder / "tokenizer.json").write_text(json.dumps(tj))
    result = CliRunner().invoke(import_cli, ["hf", str(folder), "--out", str(tmp_path / "x.pt")])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.startswith(f"Error: {folder / 'tokenizer.json'}: ") and message in result.output
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.slow  # GPT-2's 50,257 tokens converted, then checked merge by merge
def test_gpt2s_tokenizer_json_as_transformers_converts_it_today_encodes_as_tiktoken(gpt2_bpe, tmp_path):
    """GPT-2's real ranks through transformers' own TikTokenConverter (the Sequence form, 108,299
    merges, ignore_merges) import as a tokenizer that encodes exactly as tiktoken's GPT-2."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from model.hf.load import tokenizer_from_hf

    converted = TikTokenConverter(gpt2_bpe.ranks_path, pattern=GPT2_PATTERN,
                                  additional_special_tokens=[EOT]).converted()
    converted.save(str(tmp_path / "tokenizer.json"))
    tok = tokenizer_from_hf(tmp_path, 50256)
    assert tok.eot_id == 50256 and len(tok.merges) > 100_000  # every way each token splits in two
    for text in [*VARIED_TEXT, PROMPT * 20, (REPO / "README.md").read_text(encoding="utf-8")]:
        assert tok.encode(text, special=True) == gpt2_bpe.encode(text, special=True), text[:60]
