import base64
import hashlib
import json
import os

import pytest
from conftest import tiny_bpe
from tiktoken.load import read_file_cached as real_read_file_cached

from model.gpt2_ranks import R50K_SHA256, R50K_URL
from model.tokenizer import (
    EOT,
    BPETokenizer,
    CharTokenizer,
    TokenizerError,
    UnknownCharactersError,
    tokenizer_from_dict,
)


def test_char_round_trip_and_eot(char_tok):
    text = "ROMEO:\nBut, soft!"
    ids = char_tok.encode(text)
    assert char_tok.decode(ids) == text
    assert char_tok.eot_id == char_tok.vocab_size - 1
    assert char_tok.decode([*ids, char_tok.eot_id]) == text + EOT


def test_char_vocab_is_sorted_corpus_characters():
    tok = CharTokenizer.from_text("hello world")
    assert tok.chars == " dehlorw"
    assert tok.vocab_size == 9  # 8 characters + end-of-text


def test_unknown_character_is_named_in_the_error():
    tok = CharTokenizer.from_text("abc ")
    with pytest.raises(UnknownCharactersError) as e:
        tok.encode("cab é")
    assert e.value.chars == ["é"]
    assert str(e.value) == (
        "1 character(s) not in the vocabulary: 'é'; remove them or use unknown='replace'"
    )


def test_replace_mode_substitutes_a_space():
    tok = CharTokenizer.from_text("abc ")
    assert tok.decode(tok.encode("aéb", unknown="replace")) == "a b"


def test_char_tokenizer_dict_round_trip(char_tok):
    again = tokenizer_from_dict(char_tok.to_dict())
    assert again.encode("Speak, speak.") == char_tok.encode("Speak, speak.")


def write_ranks(path, tokens: list[bytes]) -> None:
    """A tiny .tiktoken ranks file: every byte as a token, then some merges (not GPT-2's, so refused)."""
    lines = [f"{base64.b64encode(t).decode()} {rank}" for rank, t in enumerate(tokens)]
    path.write_text("\n".join(lines) + "\n")


def test_gpt2_bpe_on_the_real_ranks(gpt2_ranks):
    tok = BPETokenizer(gpt2_ranks)
    assert tok.encode("hello world") == [31373, 995]  # GPT-2's own ids
    assert tok.eot_id == 50256 and tok.vocab_size == 50257 and tok.ranks_sha256 == R50K_SHA256
    assert tok.encode("x" + EOT, special=True) == [87, 50256]  # training text may hold the marker
    assert 50256 not in tok.encode("x" + EOT)  # a prompt cannot inject it
    assert tok.decode(tok.encode("x" + EOT)) == "x" + EOT
    assert tok.to_dict() == {"kind": "bpe", "encoding": "gpt2"}


def test_ranks_built_in_the_program_take_no_file():
    tok = tiny_bpe(b"he", b"ll", b"hell", b"hello")
    assert tok.encode("hello hello") == [259, ord(" "), 259] and tok.decode([259, 32]) == "hello "
    assert tok.eot_id == 260 and tok.ranks_path == "<in memory>"


@pytest.fixture
def nowhere(tmp_path, monkeypatch):
    """No ranks anywhere (no variable, empty folders) and no network: the download fails."""
    for name in ("GPT_BPE_RANKS", "GPT_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken"))

    def offline(url, expected_hash=None):
        raise ConnectionError(url)
    monkeypatch.setattr("tiktoken.load.read_file_cached", offline)
    return tmp_path


def test_not_found_names_every_place_looked_and_what_to_do(nowhere):
    with pytest.raises(TokenizerError) as e:
        BPETokenizer()
    cache, tiktoken_cache = nowhere / "cache" / "gpt-from-scratch", nowhere / "tiktoken"
    assert str(e.value) == (
        f"GPT-2's BPE ranks not found; looked at {cache}/gpt2.tiktoken (absent), tiktoken's cache "
        f"{tiktoken_cache}/0ea1e91bbb3a60f729a8dc8f777fd2fc07cd8df4 (absent), tiktoken's gpt2 vocab.bpe + "
        "encoder.json there (absent), a download from https://openaipublic.blob.core.windows.net/encodings/"
        "r50k_base.tiktoken (failed: ConnectionError); pass --ranks PATH or set GPT_BPE_RANKS to a copy of "
        "tiktoken's r50k_base.tiktoken (sha256 306cd27f03c1a714...; the openai-whisper package's source "
        "distribution ships it as whisper/assets/gpt2.tiktoken: pip download --no-deps openai-whisper)")


@pytest.mark.parametrize("place", ["data dir", "our cache", "tiktoken's cache", "download"])
def test_ranks_found_in_each_place_and_kept_in_our_cache(nowhere, gpt2_ranks, monkeypatch, place):
    data = gpt2_ranks.read_bytes()
    cache = nowhere / "cache" / "gpt-from-scratch" / "gpt2.tiktoken"
    if place == "data dir":
        (nowhere / "data").mkdir()
        (nowhere / "data" / "gpt2.tiktoken").write_bytes(data)
        monkeypatch.setenv("GPT_DATA_DIR", str(nowhere / "data"))
    elif place == "our cache":
        cache.parent.mkdir(parents=True)
        cache.write_bytes(data)
    elif place == "tiktoken's cache":  # where tiktoken.get_encoding("r50k_base") keeps its download
        (nowhere / "tiktoken").mkdir()
        (nowhere / "tiktoken" / hashlib.sha1(R50K_URL.encode()).hexdigest()).write_bytes(data)
    else:
        monkeypatch.setattr("tiktoken.load.read_file_cached", lambda url, expected_hash=None: data)
    tok = BPETokenizer()
    assert tok.encode(" the") == [262] and tok.ranks_sha256 == R50K_SHA256
    if place != "data dir":  # what came from elsewhere is copied where the next run looks first
        assert cache.read_bytes() == data and tok.ranks_path == str(cache)


def test_a_damaged_copy_is_passed_over_and_named(nowhere, gpt2_ranks):
    cache = nowhere / "cache" / "gpt-from-scratch" / "gpt2.tiktoken"
    cache.parent.mkdir(parents=True)
    cache.write_bytes(gpt2_ranks.read_bytes()[:-10])  # a download cut short
    (nowhere / "tiktoken").mkdir()
    (nowhere / "tiktoken" / hashlib.sha1(R50K_URL.encode()).hexdigest()).write_bytes(gpt2_ranks.read_bytes())
    assert BPETokenizer().encode(" the") == [262]  # found in tiktoken's cache, and the copy replaced
    assert hashlib.sha256(cache.read_bytes()).hexdigest() == R50K_SHA256
    cache.write_bytes(b"IQ== 0\n")
    (nowhere / "tiktoken" / hashlib.sha1(R50K_URL.encode()).hexdigest()).unlink()
    with pytest.raises(TokenizerError, match=r"tiktoken \(not GPT-2's ranks \(sha256 [0-9a-f]{16}\.\.\.\)"):
        BPETokenizer()


def test_a_named_file_that_is_not_gpt2s_is_refused_not_passed_over(tmp_path, monkeypatch, gpt2_ranks):
    other = tmp_path / "tiny.tiktoken"
    write_ranks(other, [bytes([b]) for b in range(256)] + [b"he"])
    digest = hashlib.sha256(other.read_bytes()).hexdigest()[:16]
    with pytest.raises(TokenizerError, match=rf"^GPT-2's BPE ranks at {other} \(--ranks\): not GPT-2's ranks "
                                             rf"\(sha256 {digest}\.\.\.\); pass --ranks PATH"):
        BPETokenizer(other)
    monkeypatch.setenv("GPT_BPE_RANKS", str(other))  # though the data folder holds the real ones
    with pytest.raises(TokenizerError, match=r"\(\$GPT_BPE_RANKS\): not GPT-2's ranks"):
        tokenizer_from_dict({"kind": "bpe", "encoding": "gpt2"})
    with pytest.raises(TokenizerError, match=r"missing.tiktoken \(--ranks\): absent"):
        BPETokenizer(tmp_path / "missing.tiktoken")
    monkeypatch.setenv("GPT_BPE_RANKS", str(gpt2_ranks))
    assert tokenizer_from_dict({"kind": "bpe", "encoding": "gpt2"}).decode([31373]) == "hello"


@pytest.mark.slow  # GPT-2's 50,000 merges recovered and written out, then rebuilt by tiktoken
def test_ranks_rebuilt_from_the_vocab_bpe_and_encoder_json_that_get_encoding_gpt2_keeps(
        nowhere, gpt2_bpe, monkeypatch):
    """tiktoken.get_encoding("gpt2") downloads GPT-2's own vocab.bpe and encoder.json, not the ranks
    file; found in tiktoken's cache they are rebuilt into the ranks, which must hash as GPT-2's. The
    pair is written here from the real ranks (no network), with the hashes of what was written."""
    from model import gpt2_ranks
    from model.hf.save import byte_bpe_from_ranks

    data = byte_bpe_from_ranks(gpt2_bpe)
    files = {gpt2_ranks.GPT2_VOCAB_BPE[0]: ("#version: 0.2\n" + "\n".join(data.merges) + "\n").encode(),
             gpt2_ranks.GPT2_ENCODER_JSON[0]: json.dumps({t: i for i, t in enumerate(data.vocab)}
                                                         | {EOT: 50256}).encode()}
    (nowhere / "tiktoken").mkdir()
    for url, content in files.items():
        (nowhere / "tiktoken" / hashlib.sha1(url.encode()).hexdigest()).write_bytes(content)
    for name in ("GPT2_VOCAB_BPE", "GPT2_ENCODER_JSON"):
        url = getattr(gpt2_ranks, name)[0]
        monkeypatch.setattr(gpt2_ranks, name, (url, hashlib.sha256(files[url]).hexdigest()))
    monkeypatch.setattr("tiktoken.load.read_file_cached", real_read_file_cached)  # from the cache only
    tok = BPETokenizer()
    assert tok.ranks == gpt2_bpe.ranks and tok.ranks_sha256 == R50K_SHA256


def test_ranks_flag_checks_the_file_before_any_work(tmp_path, monkeypatch, gpt2_ranks):
    from click.testing import CliRunner

    from model.data.cli import main as prepare_main
    from model.train.cli import main as train_main

    monkeypatch.delenv("GPT_BPE_RANKS", raising=False)  # the flag sets it: put back afterwards
    other = tmp_path / "other.tiktoken"
    write_ranks(other, [bytes([b]) for b in range(256)])
    (tmp_path / "t.txt").write_text("hello world\n" * 50)
    prepare_args = [str(tmp_path / "t.txt"), "--tokenizer", "gpt2", "--out", str(tmp_path / "o")]
    for main, args in [(prepare_main, prepare_args),
                       (train_main, ["--out", str(tmp_path / "run"), "--max-iters", "1"])]:
        result = CliRunner().invoke(main, [*args, "--ranks", str(other)])
        assert result.exit_code == 1 and len(result.output.splitlines()) == 1, result.output
        assert result.output.startswith(f"Error: GPT-2's BPE ranks at {other} (--ranks): not GPT-2's ranks")
        result = CliRunner().invoke(main, [*args, "--ranks", str(tmp_path / "absent.tiktoken")])
        assert result.exit_code == 2 and "does not exist" in result.output
    assert not (tmp_path / "o").exists() and not (tmp_path / "run").exists()
    result = CliRunner().invoke(prepare_main, [*prepare_args, "--ranks", str(gpt2_ranks), "--no-progress"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["vocab_size"] == 50257 and os.environ["GPT_BPE_RANKS"] == str(gpt2_ranks.resolve())


@pytest.fixture
def gpt2_bpe_ckpt(tmp_path, gpt2_bpe):
    """A random 1-layer, 16-wide GPT on GPT-2's tokenizer: its checkpoint names the encoding, and
    whoever loads it must find the ranks."""
    import torch

    from model import checkpoint
    from model.config import GPTConfig
    from model.gpt import GPT

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=gpt2_bpe.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16,
                          dropout=0.0))
    path = tmp_path / "bpe.pt"
    checkpoint.save(checkpoint.payload(model, gpt2_bpe, {"steps": 0}), path)
    return path


@pytest.mark.parametrize("command", ["gpt-tui", "gpt-export hf", "gpt-serve",
                                     pytest.param("gpt-export onnx", marks=pytest.mark.slow),  # an export
                                     pytest.param("gpt-export gguf", marks=pytest.mark.slow)])
def test_every_command_that_loads_a_model_takes_ranks(command, gpt2_bpe_ckpt, gpt2_ranks, nowhere, tmp_path,
                                                      monkeypatch):
    """A wrong file is refused in one line before any work; without the flag the ranks are nowhere
    (no $GPT_BPE_RANKS or data folder, empty caches, no network), and with it the command runs."""
    from click.testing import CliRunner

    from export.cli import main as gpt_export
    from serve.cli import main as gpt_serve
    from tui.cli import main as gpt_tui

    main, *sub = {"gpt-tui": gpt_tui, "gpt-serve": gpt_serve, "gpt-export": gpt_export}[command.split()[0]], \
        *command.split()[1:]
    other = tmp_path / "other.tiktoken"
    write_ranks(other, [bytes([b]) for b in range(256)])
    args = [*sub, "--ckpt", str(gpt2_bpe_ckpt)]
    result = CliRunner().invoke(main, [*args, "--ranks", str(other)])
    assert result.exit_code == 1 and len(result.output.splitlines()) == 1, result.output
    assert result.output.startswith(f"Error: GPT-2's BPE ranks at {other} (--ranks): not GPT-2's ranks")
    if command == "gpt-serve":
        return  # it would start serving: the model's loading is tests/test_serve_cli.py's
    out = {"gpt-tui": ["-p", "Hello", "-n", "3", "--seed", "1"], "gpt-export onnx": ["--out", "m.onnx"],
           "gpt-export hf": ["--out", "hf"], "gpt-export gguf": ["--out", "m.gguf"]}[command]
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, [*args, *out])
    assert result.exit_code == 1 and "pass --ranks PATH" in result.output, result.output
    result = CliRunner().invoke(main, [*args, *out, "--ranks", str(gpt2_ranks)])
    assert result.exit_code == 0, result.output
