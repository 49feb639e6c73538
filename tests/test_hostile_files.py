"""Hostile files: a Hugging Face folder, a prepared token folder or a checkpoint crafted to escape
its folder, hang the tokenizer, crash the importer or train on garbage. Each is refused in one line
naming the file and what is wrong (exit 1 from the commands)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from export.hf_export import export_hf
from model import checkpoint
from model.bpe import GPT2_SPLIT, ByteBPETokenizer, bytes_to_unicode
from model.config import GPTConfig
from model.gpt import GPT
from model.import_cli import main as import_cli
from model.paths import UnsafePathError, name_inside
from model.special import EOT


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    """A tiny byte-level GPT-2 folder (256 bytes + end of text, no merges) as gpt-export hf writes it."""
    byte_char = bytes_to_unicode()
    tok = ByteBPETokenizer([byte_char[b] for b in range(256)], [], {EOT: 256})
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=257, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.0))
    base = tmp_path_factory.mktemp("hf")
    checkpoint.save(checkpoint.payload(model, tok), base / "bpe.pt")
    return export_hf(base / "bpe.pt", base / "gpt2")


def copy_of(hf_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "src"
    shutil.copytree(hf_dir, folder)
    return folder


def import_error(folder: Path, tmp_path: Path) -> str:
    """gpt-import hf on ``folder`` -> its one-line error (after asserting exit 1, no traceback)."""
    result = CliRunner().invoke(import_cli, ["hf", str(folder), "--out", str(tmp_path / "x.pt")])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(
        result.exception, SystemExit)
    return result.output.strip().splitlines()[-1]


def test_the_tiny_folder_imports(hf_dir, tmp_path):
    result = CliRunner().invoke(import_cli, ["hf", str(hf_dir), "--out", str(tmp_path / "x.pt")])
    assert result.exit_code == 0, result.output


# -- paths read from a file stay in their folder -------------------------------------------------

@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/b", "..", "", 7, None, ["x"], "a\\b"])
def test_name_inside_refuses_anything_but_a_plain_name(tmp_path, name):
    with pytest.raises(UnsafePathError, match=r"^index.json: entry .* is not a plain file name"):
        name_inside(tmp_path, name, "index.json")


def test_name_inside_refuses_a_symlink_pointing_out_and_keeps_one_pointing_in(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    (tmp_path / "secret").write_text("x")
    (folder / "real").write_text("x")
    (folder / "out").symlink_to(tmp_path / "secret")
    (folder / "in").symlink_to(folder / "real")
    with pytest.raises(UnsafePathError, match="symlink pointing out"):
        name_inside(folder, "out", "index.json")
    assert name_inside(folder, "in", "index.json") == folder / "in"
    assert name_inside(folder, "out", "index.json", root=tmp_path) == folder / "out"


def sharded(hf_dir: Path, tmp_path: Path, shard_name: str) -> Path:
    folder = copy_of(hf_dir, tmp_path)
    (folder / "model.safetensors").rename(tmp_path / "outside.safetensors")
    index = {"metadata": {}, "weight_map": {"transformer.wte.weight": shard_name}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder


@pytest.mark.parametrize("shard", ["../outside.safetensors", "ABS"])
def test_an_index_naming_a_file_outside_its_folder_is_refused(hf_dir, tmp_path, shard):
    shard = str(tmp_path / "outside.safetensors") if shard == "ABS" else shard
    folder = sharded(hf_dir, tmp_path, shard)
    last = import_error(folder, tmp_path)
    assert last.startswith(f"Error: {folder}/model.safetensors.index.json: entry {shard!r}")


def test_an_index_naming_a_symlink_out_of_its_folder_is_refused(hf_dir, tmp_path):
    folder = sharded(hf_dir, tmp_path, "link.safetensors")
    (folder / "link.safetensors").symlink_to(tmp_path / "outside.safetensors")
    assert "symlink pointing out" in import_error(folder, tmp_path)


def test_an_index_of_plain_names_in_the_folder_imports(hf_dir, tmp_path):
    folder = sharded(hf_dir, tmp_path, "model-00001-of-00001.safetensors")
    shutil.move(tmp_path / "outside.safetensors", folder / "model-00001-of-00001.safetensors")
    result = CliRunner().invoke(import_cli, ["hf", str(folder), "--out", str(tmp_path / "x.pt")])
    assert result.exit_code == 0, result.output


@pytest.fixture
def prepared(tmp_path) -> Path:
    """A small prepared folder (character tokens, shards of 40 tokens)."""
    from model.prepare import PrepareConfig, prepare

    (tmp_path / "a.txt").write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n" * 4)
    out = tmp_path / "tokens"
    prepare(PrepareConfig(sources=(str(tmp_path / "a.txt"),), out=str(out), shard_tokens=40, workers=1,
                          progress=False), log=lambda m: None)
    return out


def edit_manifest(folder: Path, change) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("name", ["../a.txt", "/etc/hostname"])
def test_a_manifest_naming_a_shard_outside_its_folder_is_refused(prepared, name):
    from model.shards import DataError, open_prepared

    edit_manifest(prepared, lambda m: m["shards"][0].update(file=name))
    with pytest.raises(DataError, match=rf"manifest.json: entry '{name}' is not a plain file name"):
        open_prepared(prepared)


def test_import_shows_a_hostile_folder_name_visibly(hf_dir, tmp_path):
    folder = tmp_path / "a\x1b]2;owned\x07b"
    shutil.copytree(hf_dir, folder)
    result = CliRunner().invoke(import_cli, ["hf", str(folder), "--out", str(tmp_path / "x.pt")])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output and "a␛]2;owned␇b" in result.output


# -- a carried tokenizer cannot bring its own regex ----------------------------------------------

def byte_bpe_dict(pattern: str) -> dict:
    byte_char = bytes_to_unicode()
    d = ByteBPETokenizer([byte_char[b] for b in range(256)], [], {EOT: 256}).to_dict()
    return d | {"pattern": pattern}


def test_a_carried_bpe_with_another_split_pattern_is_refused_before_compiling_it():
    from model.tokenizer import TokenizerError, tokenizer_from_dict

    with pytest.raises(TokenizerError, match=r"split pattern '\(a\|aa\)\+\$' is not GPT-2's"):
        tokenizer_from_dict(byte_bpe_dict("(a|aa)+$"))
    with pytest.raises(ValueError, match="not GPT-2's"):
        ByteBPETokenizer.from_dict(byte_bpe_dict("(a|aa)+$"))
    assert tokenizer_from_dict(byte_bpe_dict(GPT2_SPLIT)).encode("ab") == [97, 98]  # GPT-2's still loads


def test_a_checkpoint_carrying_a_hanging_pattern_is_refused_in_one_line(tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=257, block_size=8, n_layer=1, n_head=2, n_embd=16, dropout=0.0))
    ckpt = checkpoint.payload(model, ByteBPETokenizer([bytes_to_unicode()[b] for b in range(256)], [],
                                                      {EOT: 256}))
    ckpt["tokenizer"]["pattern"] = "(a|aa)+$"
    checkpoint.save(ckpt, tmp_path / "evil.pt")
    with pytest.raises(checkpoint.CheckpointError, match="split pattern .* is not GPT-2's"):
        checkpoint.load_model(tmp_path / "evil.pt")
