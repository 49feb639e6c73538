"""gpt-export gguf: the file read back with the gguf package's reader against the checkpoint (every
key and tensor), the tokenizer as llama.cpp reads it, refusals; and, where a llama.cpp build is
found (LLAMA_CPP_BIN, its bin folder), the file run by llama.cpp itself against our greedy tokens."""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch.nn import functional as F

from export.cli import GGUF_TYPES as CLI_TYPES
from export.cli import main as export_cli
from export.gguf import (
    GGUF_TYPES,
    GgufExportError,
    char_vocab,
    export_gguf,
    gguf_vocab,
    spelled,
    tanh_gelu_shift,
    write_gguf,
)
from model import checkpoint
from model.bpe import ByteBPETokenizer, bytes_to_unicode
from model.config import PRESETS, GPTConfig
from model.gpt import GPT
from model.kv_cache import KVCache
from model.special import EOT
from model.tokenizer import BPETokenizer, CharTokenizer

Q = gguf.GGMLQuantizationType


def fields(path: Path) -> dict[str, object]:
    return {k: f.contents() for k, f in gguf.GGUFReader(path).fields.items()
            if not k.startswith("GGUF.")}


def tensors(path: Path) -> dict[str, tuple[Q, np.ndarray]]:
    """name -> (type, values as f32 in our (out, in) layout)."""
    return {t.name: (t.tensor_type, gguf.quants.dequantize(t.data, t.tensor_type).reshape(
        tuple(int(n) for n in reversed(t.shape)))) for t in gguf.GGUFReader(path).tensors}


def expected_tensors(model: GPT) -> dict[str, torch.Tensor]:
    """llama.cpp's gpt2 names, spelled out here (not taken from export.gguf), and our weights."""
    s, C = model.state_dict(), model.config.n_embd
    zero = torch.zeros
    out = {"token_embd.weight": s["wte.weight"], "position_embd.weight": s["wpe.weight"],
           "output_norm.weight": s["ln_f.weight"], "output_norm.bias": s.get("ln_f.bias", zero(C))}
    parts = {"attn_norm": ("ln_1", C), "attn_qkv": ("attn.c_attn", 3 * C), "attn_output": ("attn.c_proj", C),
             "ffn_norm": ("ln_2", C), "ffn_up": ("mlp.c_fc", 4 * C), "ffn_down": ("mlp.c_proj", C)}
    for i in range(model.config.n_layer):
        for theirs, (ours, width) in parts.items():
            out[f"blk.{i}.{theirs}.weight"] = s[f"blocks.{i}.{ours}.weight"]
            out[f"blk.{i}.{theirs}.bias"] = s.get(f"blocks.{i}.{ours}.bias", zero(width))
    if not model.config.tie_weights:
        out["output.weight"] = s["lm_head.weight"]
    return out


def drawn(config: GPTConfig, value, seed: int = 0) -> GPT:
    """A GPT of ``config`` whose every parameter is ``value(name, p, noise)``, noise N(0, 1) of its
    shape from one seeded generator."""
    torch.manual_seed(seed)
    model = GPT(config).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(value(name, p, torch.randn(p.shape, generator=g)))
    return model


def random_model(config: GPTConfig, seed: int = 0) -> GPT:
    """Every weight random and large (biases and LayerNorms included, where the config has them), so
    a wrong mapping shows and the greedy choice has clear margins."""
    def value(name, p, noise):
        is_norm = ".ln_" in name or name.startswith("ln_f")
        return (1.0 + 0.2 * noise if is_norm and name.endswith("weight") else
                0.2 * noise if p.dim() == 1 else 0.5 * noise)

    return drawn(config, value, seed)


def save(model: GPT, tokenizer, path: Path) -> Path:
    checkpoint.save(checkpoint.payload(model, tokenizer, {"steps": 0}), path)
    return path


def test_cli_types_are_the_writers():
    assert CLI_TYPES == tuple(GGUF_TYPES)


@pytest.mark.parametrize("overrides", [{}, {"bias": False, "qkv_bias": False, "tie_weights": False}],
                         ids=["biases-tied", "no-biases-untied"])
def test_f32_file_holds_every_weight_and_key_of_the_checkpoint(tmp_path, char_tok, tiny_config, overrides):
    config = tiny_config.replace(**overrides, activation="gelu_tanh")
    model = random_model(config)
    out = export_gguf(save(model, char_tok, tmp_path / "m.pt"), tmp_path / "m.gguf", "f32")
    assert out.gelu_shift is None  # already llama.cpp's GELU
    got = tensors(out.path)
    want = expected_tensors(model)
    assert sorted(got) == sorted(want)
    for name, value in want.items():
        qtype, data = got[name]
        assert qtype == Q.F32, name
        np.testing.assert_array_equal(data, value.numpy(), err_msg=name)  # exact: f32 written as f32
    C = config.n_embd
    assert fields(out.path) == {
        "general.architecture": "gpt2", "general.type": "model", "general.name": "m",
        "gpt2.block_count": 2, "gpt2.context_length": 32, "gpt2.embedding_length": C,
        "gpt2.feed_forward_length": 4 * C, "gpt2.attention.head_count": 2,
        "gpt2.attention.layer_norm_epsilon": pytest.approx(1e-5), "general.file_type": 0,
        "general.quantization_version": 2,
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.tokens": [spelled(c.encode()) for c in char_tok.chars] + [EOT],
        "tokenizer.ggml.token_type": [1] * len(char_tok.chars) + [3],
        "tokenizer.ggml.merges": ["ÿ ÿ"],  # printable ASCII only: just the merge that never fires
        "tokenizer.ggml.bos_token_id": char_tok.eot_id, "tokenizer.ggml.eos_token_id": char_tok.eot_id,
        "tokenizer.ggml.unknown_token_id": char_tok.eot_id,
        "tokenizer.ggml.add_bos_token": False, "tokenizer.ggml.add_eos_token": False,
        "general.size_label": gguf.size_label(sum(v.numel() for v in want.values()), 0, 0, 0),
    }


def test_quantized_types_follow_the_converter(tmp_path, char_tok):
    # 32 wide: rows split into whole 32-value blocks, so every matrix quantizes
    config = GPTConfig(vocab_size=char_tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=32,
                       dropout=0.0, activation="gelu_tanh")
    model = random_model(config)
    want = expected_tensors(model)
    cases = [("q8_0", Q.Q8_0, Q.Q8_0, 1 / 127), ("q4_0", Q.Q4_0, Q.Q8_0, 1 / 8), ("f16", Q.F16, Q.F16, 1e-3)]
    for name, matrices, embedding, bound in cases:
        write_gguf(model, char_tok, tmp_path / f"{name}.gguf", name)
        got = tensors(tmp_path / f"{name}.gguf")
        assert got["token_embd.weight"][0] == embedding, name
        for tname, value in want.items():
            qtype, data = got[tname]
            if value.dim() == 1 or tname == "position_embd.weight":
                assert qtype == Q.F32, tname
                np.testing.assert_array_equal(data, value.numpy())
                continue
            if tname != "token_embd.weight":
                assert qtype == matrices, (name, tname)
            # a block's values are at most one quantization step (its largest |value| / levels) off
            err = np.abs(data - value.numpy()).max()
            assert 0 < err <= bound * float(value.abs().max()) + 1e-6, (name, tname, err)
    assert fields(tmp_path / "q4_0.gguf")["general.file_type"] == 2  # LLAMA_FTYPE_MOSTLY_Q4_0


def test_rows_that_do_not_split_into_blocks_fall_back_to_f16(tmp_path, tiny_ckpt):
    out = export_gguf(tiny_ckpt, tmp_path / "t.gguf", "q4_0")  # 16 wide: half a q4_0 block per row
    types = {name: qtype for name, (qtype, _) in tensors(out.path).items()}
    assert types["blk.0.attn_qkv.weight"] == types["token_embd.weight"] == Q.F16
    assert types["blk.0.attn_qkv.bias"] == Q.F32


def test_bpe_vocabulary_and_merges_go_out_as_gpt2s_with_placeholders_for_padding():
    b = bytes_to_unicode()
    vocab = [b[i] for i in range(256)] + ["Ġt", "he", "Ġthe"]
    tok = ByteBPETokenizer(vocab, ["Ġ t", "h e", "Ġt he"], {EOT: 259})
    v = gguf_vocab(tok, 264)  # an embedding padded past the tokenizer (as nanoGPT's 50304)
    assert v.tokens[:259] == vocab and v.tokens[259] == EOT
    assert v.tokens[260:] == ["[PAD260]", "[PAD261]", "[PAD262]", "[PAD263]"]
    assert v.types == [1] * 259 + [3] + [5] * 4  # NORMAL, CONTROL, UNUSED
    assert v.merges == ["Ġ t", "h e", "Ġt he"]


def test_characters_of_several_bytes_get_the_merges_that_join_their_bytes():
    tokens, merges = char_vocab(CharTokenizer("a é中😀"))
    assert tokens == ["a", "Ġ", "Ã©", "ä¸Ń", "ðŁĺĢ"]  # GPT-2's spelling of each one's UTF-8 bytes
    # é = c3 a9; 中 = e4 b8 ad; 😀 = f0 9f 98 80: each prefix joins the next byte, left to right
    assert merges == ["Ã ©", "ä ¸", "ä¸ Ń", "ð Ł", "ðŁ ĺ", "ðŁĺ Ģ"]


def test_a_lone_surrogate_is_refused_in_one_line(tmp_path, tiny_config):
    tok = CharTokenizer("ab\ud800")
    with pytest.raises(GgufExportError, match=r"^the character vocabulary holds U\+D800, a lone surrogate"):
        gguf_vocab(tok, 4)
    path = save(GPT(tiny_config.replace(vocab_size=4)), tok, tmp_path / "s.pt")
    (tmp_path / "s.gguf").write_bytes(b"old")
    result = CliRunner().invoke(export_cli, ["gguf", "--ckpt", str(path), "--out", str(tmp_path / "s.gguf")])
    assert result.exit_code == 1
    # the progress lines, then the reason in one line, no traceback
    assert result.stderr.splitlines()[-1].startswith("Error: the character vocabulary holds U+D800")
    assert "Traceback" not in result.output and result.stdout == ""
    assert (tmp_path / "s.gguf").read_bytes() == b"old"  # the old output is left as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.gguf", "s.pt"]  # no temp or lock left


def test_cli_writes_the_file_and_measures_the_exact_gelu(tmp_path, tiny_ckpt):
    result = CliRunner().invoke(export_cli, ["gguf", "--ckpt", str(tiny_ckpt), "--out",
                                             str(tmp_path / "t.gguf"), "--type", "f32"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"wrote {tmp_path / 't.gguf'} (") and "f32" in lines[0]
    assert lines[1].startswith("this model computes exact GELU and llama.cpp's gpt2 the tanh form: "
                               "over 32 tokens the model sampled, logits move by at most ")


def test_usage_errors_exit_2(tmp_path, tiny_ckpt):
    bad = CliRunner().invoke(export_cli, ["gguf", "--ckpt", str(tiny_ckpt), "--type", "q2_k"])
    assert bad.exit_code == 2
    missing = CliRunner().invoke(export_cli, ["gguf", "--ckpt", str(tmp_path / "nope.pt")])
    assert missing.exit_code == 2


def test_tanh_gelu_shift_is_the_difference_the_tanh_form_makes(tiny_model, char_tok):
    shift = tanh_gelu_shift(tiny_model, char_tok.eot_id, tokens=20)
    assert shift.tokens == 20
    assert 0 < shift.max_logit < 1e-2  # the two forms differ by at most ~5e-4 per activation
    same = GPT(tiny_model.config.replace(activation="gelu_tanh")).eval()
    same.load_state_dict(tiny_model.state_dict())
    assert tanh_gelu_shift(same, char_tok.eot_id, tokens=20).max_logit == 0  # a difference of forms only


def test_our_loaders_refuse_a_gguf_in_one_line(tmp_path, tiny_ckpt):
    from model.hf.cli import main as import_cli

    path = export_gguf(tiny_ckpt, tmp_path / "t.gguf", "f16").path
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.load(path)
    assert str(e.value) == (f"{path} is a GGUF file (for llama.cpp and ollama), not a checkpoint of ours; "
                            "pass the .pt it was exported from")
    result = CliRunner().invoke(import_cli, ["hf", str(path), "--out", str(tmp_path / "i.pt")])
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output


# --- llama.cpp itself: where a build is found (LLAMA_CPP_BIN, its bin folder) ------------------------

LLAMA_BIN = Path(os.environ.get("LLAMA_CPP_BIN", "/nonexistent"))
LLAMA_TOOLS = ("llama-completion", "llama-tokenize", "llama-quantize")
needs_llama = pytest.mark.skipif(
    not all((LLAMA_BIN / tool).is_file() for tool in LLAMA_TOOLS),
    reason="no llama.cpp build: set LLAMA_CPP_BIN to the bin folder holding llama-completion, "
           "llama-tokenize and llama-quantize (docs/export.md says how to build it)")
needs_ranks = pytest.mark.skipif(
    not (Path(os.environ.get("GPT_DATA_DIR", ".")) / "gpt2.tiktoken").is_file(),
    reason="GPT-2's ranks file gpt2.tiktoken is not in GPT_DATA_DIR")
# a prompt for GPT-2's tokenizer: contractions, numbers, runs of spaces and newlines, accents, CJK, emoji
BPE_PROMPT = ("Hello world! It's 2024, and we'll see   what's    next...\n\n  indented\tline "
              "naïve café – “quotes” 中文 😀 x=1+2 <tag> don't")


def gpt2_tokenizer() -> BPETokenizer:
    return BPETokenizer(Path(os.environ["GPT_DATA_DIR"]) / "gpt2.tiktoken")


def llama(tool: str, *args: str) -> str:
    run = subprocess.run([str(LLAMA_BIN / tool), *args], capture_output=True, check=False)
    assert run.returncode == 0, run.stderr.decode(errors="replace")[-2000:]
    return run.stdout.decode("utf-8", errors="surrogateescape")


def llama_ids(path: Path, prompt: str) -> list[int]:
    out = llama("llama-tokenize", "-m", str(path), "-p", prompt, "--ids", "--log-disable")
    return [int(i) for i in out.strip().strip("[]").split(",") if i.strip()]


def llama_greedy_text(path: Path, prompt: str, steps: int) -> bytes:
    """What llama-completion writes after the prompt: greedy (temperature 0), KV cache in f32 so
    only the arithmetic differs from ours, one thread. --no-repack: llama.cpp's AMX kernels for
    q8_0/q4_0 die with SIGILL on this machine's CPU, on llama-quantize's own files as on ours."""
    out = llama("llama-completion", "-m", str(path), "-p", prompt, "-n", str(steps), "--temp", "0",
                "-no-cnv", "--no-display-prompt", "-ctk", "f32", "-ctv", "f32", "-t", "1", "--no-warmup",
                "--simple-io", "-s", "0", "--no-repack")
    data = out.encode("utf-8", errors="surrogateescape")
    assert data.endswith(b"\n\n"), data[-40:]  # completion's closing lines
    return data[:-2].removesuffix(b" [end of text]\n")


@torch.no_grad()
def our_greedy(model: GPT, prompt: list[int], steps: int) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy ids after the prompt, and the logits each was chosen from (fp32, our KV cache)."""
    cache = KVCache(model.config)
    logits, _ = model(torch.tensor([prompt]), cache=cache)
    ids, seen = [], []
    for _ in range(steps):
        seen.append(logits[0, -1])
        ids.append(int(logits[0, -1].argmax()))
        logits, _ = model(torch.tensor([[ids[-1]]]), cache=cache)
    return ids, seen


@pytest.mark.slow
@needs_llama
def test_llama_cpp_encodes_every_character_as_we_do(tmp_path, char_tok, tiny_config):
    tok = CharTokenizer(char_tok.chars + "éè中文😀")  # two-, three- and four-byte characters too
    model = GPT(tiny_config.replace(vocab_size=tok.vocab_size))
    path = tmp_path / "c.gguf"
    write_gguf(model, tok, path, "f32")
    prompt = "".join(reversed(tok.chars)) + "café中文😀 x"
    assert llama_ids(path, prompt) == tok.encode(prompt)


@pytest.mark.slow
@needs_llama
@needs_ranks
def test_llama_cpp_encodes_gpt2_bpe_as_we_do(tmp_path):
    tok = gpt2_tokenizer()
    config = PRESETS["gpt2-124m"].replace(n_layer=1, n_head=1, n_embd=32, block_size=64, dropout=0.0)
    path = tmp_path / "b.gguf"
    write_gguf(GPT(config), tok, path, "f32")
    assert llama_ids(path, BPE_PROMPT) == tok.encode(BPE_PROMPT)


def ggml_gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU as llama.cpp's CPU backend computes it for f32 (ggml_vec_gelu_f32 with GGML_GELU_FP16):
    the tanh form looked up in a table of f16 inputs and f16 outputs, exact past +-10. Its f16
    rounding is the largest difference between its arithmetic and ours."""
    table = F.gelu(x.half().float(), approximate="tanh").half().float()
    return torch.where(x <= -10, torch.zeros_like(x), torch.where(x >= 10, x, table))


class GgmlGelu(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ggml_gelu(x)


def with_ggml_gelu(model: GPT) -> GPT:
    twin = copy.deepcopy(model)
    for block in twin.blocks:
        block.mlp.gelu = GgmlGelu()
    return twin


def gpt2_shaped(seed: int = 0) -> GPT:
    """GPT-2 124M's shape and tanh GELU, without q/k/v biases (our gpt2-124m preset, so zeros go
    out), with random weights drawn for clear greedy choices: matrices N(0, 4 / fan_in), so attention
    is peaked but not one-hot (a one-hot softmax flips on any rounding); small embeddings, so the
    blocks shape the text; and a final LayerNorm gain of ~5, so the tied head's logits spread widely."""
    config = PRESETS["gpt2-124m"].replace(activation="gelu_tanh", dropout=0.0)

    def value(name, p, noise):
        if name == "ln_f.weight":
            return 5.0 + noise
        if p.dim() == 1:
            return 1.0 + 0.2 * noise if name.endswith("weight") else 0.2 * noise
        if name in ("wte.weight", "wpe.weight"):
            return 0.1 * noise
        return 2.0 * noise / math.sqrt(p.size(1))

    return drawn(config, value, seed)


@pytest.mark.slow
@needs_llama
@needs_ranks
def test_gpt2_shaped_model_greedy_text_is_llama_cpps(tmp_path):
    tok = gpt2_tokenizer()
    model = gpt2_shaped()
    path = tmp_path / "g.gguf"
    write_gguf(model, tok, path, "f32")
    prompt = tok.encode("The meaning of life is")
    ids, _ = our_greedy(model, prompt, 50)
    assert len(set(ids)) > 10  # text, not one token repeated
    # the weights leave no near tie that llama.cpp's f16 GELU table would settle the other way
    assert our_greedy(with_ggml_gelu(model), prompt, 50)[0] == ids
    assert llama_greedy_text(path, tok.decode(prompt), 50) == b"".join(tok.token_bytes(i) for i in ids)


@pytest.mark.slow
@needs_llama
def test_shipped_model_greedy_text_is_llama_cpps(tmp_path):
    # exact GELU, run by llama.cpp in the tanh form through its f16 table: the text is the same all the
    # same, for as long as the block allows (should it ever differ, ggml_gelu shows which choice moved)
    model, tok, _ = checkpoint.load_model(checkpoint.resolve_ckpt("shakespeare.pt"))
    path = export_gguf(checkpoint.resolve_ckpt("shakespeare.pt"), tmp_path / "s.gguf", "f32").path
    prompt = "ROMEO:\n"
    steps = model.config.block_size - len(prompt)
    ids, _ = our_greedy(model, tok.encode(prompt), steps)
    assert llama_greedy_text(path, prompt, steps).decode() == tok.decode(ids)


@pytest.mark.slow
@needs_llama
@needs_ranks
def test_the_file_is_what_llama_cpps_converter_writes_for_gpt2(tmp_path, monkeypatch):
    # llama.cpp's own convert_hf_to_gguf.py, beside its build (LLAMA_CPP_BIN/../..), on our gpt-export
    # hf folder of a GPT-2-vocabulary model: the same keys and values but the name, the same tensors
    # byte for byte, at f16 and q8_0 (what the converter quantizes itself)
    source = LLAMA_BIN.parent.parent
    if not (source / "convert_hf_to_gguf.py").is_file() or not (source / "gguf-py").is_dir():
        pytest.skip(f"no llama.cpp source tree with convert_hf_to_gguf.py at {source}")
    from model.hf.save import export_hf

    monkeypatch.setenv("GPT_BPE_RANKS", str(Path(os.environ["GPT_DATA_DIR"]) / "gpt2.tiktoken"))
    config = PRESETS["gpt2-124m"].replace(n_layer=2, n_head=2, n_embd=64, block_size=64, dropout=0.0,
                                          activation="gelu_tanh")
    ckpt = save(random_model(config), gpt2_tokenizer(), tmp_path / "small.pt")
    export_hf(ckpt, tmp_path / "small")
    for kind in ("f16", "q8_0"):
        theirs = tmp_path / f"converter.{kind}.gguf"
        run = subprocess.run([sys.executable, str(source / "convert_hf_to_gguf.py"), str(tmp_path / "small"),
                              "--outfile", str(theirs), "--outtype", kind], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(source / "gguf-py")}, check=False)
        assert run.returncode == 0, run.stderr[-2000:]
        ours = export_gguf(ckpt, tmp_path / f"ours.{kind}.gguf", kind).path
        want, got = fields(theirs), fields(ours)
        assert want.pop("general.name") == "Small" and got.pop("general.name") == "small"
        assert got == want
        want_t = {t.name: (t.tensor_type, np.asarray(t.data)) for t in gguf.GGUFReader(theirs).tensors}
        got_t = {t.name: (t.tensor_type, np.asarray(t.data)) for t in gguf.GGUFReader(ours).tensors}
        assert sorted(got_t) == sorted(want_t)
        for name, (qtype, data) in want_t.items():
            assert got_t[name][0] == qtype, (kind, name)
            np.testing.assert_array_equal(got_t[name][1], data, err_msg=f"{kind} {name}")


@pytest.mark.slow
@needs_llama
def test_quantized_files_are_llama_quantizes_own_bytes_and_run(tmp_path):
    model, tok, _ = checkpoint.load_model(checkpoint.resolve_ckpt("shakespeare.pt"))
    write_gguf(model, tok, tmp_path / "f32.gguf", "f32")
    for kind in ("q8_0", "q4_0"):
        ours, theirs = tmp_path / f"{kind}.gguf", tmp_path / f"llama-{kind}.gguf"
        write_gguf(model, tok, ours, kind)
        llama("llama-quantize", str(tmp_path / "f32.gguf"), str(theirs), kind.upper())
        # llama.cpp's C quantizer from our f32 file, tensor for tensor: the same types (384 wide, its q4_0
        # gives the tied embedding q8_0 as ours does) and the same bytes
        want = {t.name: (t.tensor_type, np.asarray(t.data)) for t in gguf.GGUFReader(theirs).tensors}
        got = {t.name: (t.tensor_type, np.asarray(t.data)) for t in gguf.GGUFReader(ours).tensors}
        assert sorted(got) == sorted(want)
        for name, (qtype, data) in want.items():
            assert got[name][0] == qtype, (kind, name)
            np.testing.assert_array_equal(got[name][1], data, err_msg=f"{kind} {name}")
        text = llama_greedy_text(ours, "ROMEO:\n", 100).decode()
        assert len(text) == 100 and set(text) <= set(tok.chars), text  # one character a token
