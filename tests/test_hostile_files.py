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

from model import checkpoint
from model.bpe import GPT2_SPLIT, ByteBPETokenizer, bytes_to_unicode
from model.config import GPTConfig
from model.gpt import GPT
from model.hf.cli import main as import_cli
from model.hf.save import export_hf
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
    assert last.startswith(f"Error: {folder}/model.safetensors.index.json: entry '{shard[:40]}")
    assert last.endswith("refusing to follow it")


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
    from model.data.prepare import PrepareConfig, prepare

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
    from model.data.shards import DataError, open_prepared

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


# -- crafted Hugging Face folders ----------------------------------------------------------------

def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    path.write_text(json.dumps(change(data) if callable(change) else change, allow_nan=True))


def without(d: dict, key: str) -> dict:
    return {k: v for k, v in d.items() if k != key}


@pytest.mark.parametrize("change, message", [
    (lambda c: without(c, "n_embd"), "config.json lacks 'n_embd'"),
    (lambda c: c | {"n_embd": "16"}, "config.json: n_embd must be a positive integer, got '16'"),
    (lambda c: c | {"n_layer": 2.5}, "config.json: n_layer must be a positive integer"),
    (lambda c: c | {"vocab_size": [257]}, "config.json: vocab_size must be a positive integer"),
    (lambda c: c | {"activation_function": ["gelu"]}, "config.json: activation_function"),
    (lambda c: c | {"layer_norm_epsilon": float("nan")}, "layer_norm_epsilon must be a finite number"),
    (lambda c: c | {"layer_norm_epsilon": "1e-5"}, "layer_norm_epsilon must be a finite number"),
    (lambda c: c | {"resid_pdrop": {"x": 1}}, "resid_pdrop must be a finite number"),
    (lambda c: c | {"tie_word_embeddings": "yes"}, "tie_weights must be true or false"),
    (lambda c: c | {"scale_attn_weights": 1}, "scale_attn_weights=1 is not supported"),
    (lambda c: c | {"scale_attn_weights": "true"}, "scale_attn_weights='true' is not supported"),
    (lambda c: [c], "config.json holds a JSON list, not an object"),
])
def test_a_crafted_config_is_one_line_naming_the_file(hf_dir, tmp_path, change, message):
    folder = copy_of(hf_dir, tmp_path)
    edit_json(folder / "config.json", change)
    last = import_error(folder, tmp_path)
    assert last.startswith(f"Error: {folder}/config.json") and message in last


def test_a_huge_config_is_refused_before_it_is_read(hf_dir, tmp_path):
    folder = copy_of(hf_dir, tmp_path)
    edit_json(folder / "config.json", lambda c: c | {"padding": "x" * (2 << 20)})
    assert "bytes, more than the 1,048,576" in import_error(folder, tmp_path)


@pytest.mark.parametrize("change, message", [
    (lambda t: [t], "tokenizer.json holds a JSON list, not an object"),
    (lambda t: t | {"model": ["BPE"]}, "tokenizer.json: model is a JSON list, not an object"),
    (lambda t: t | {"model": t["model"] | {"merges": "a b"}}, "the merges are not a list"),
    (lambda t: t | {"model": t["model"] | {"merges": [["a", "b", "c"]]}}, "the merges are not a list"),
    (lambda t: t | {"model": t["model"] | {"merges": ["Ġ zz"]}}, "BPE merge 0 'Ġ zz' does not make a token"),
    (lambda t: t | {"model": t["model"] | {"vocab": {"a": "0"}}}, "the vocabulary is not an object of"),
    (lambda t: t | {"added_tokens": [{"content": 5, "id": "x"}]}, "added_tokens is not a list"),
    (lambda t: t | {"normalizer": ["x"]}, "normalizer [\"x\"] is not supported"),
])
def test_a_crafted_tokenizer_json_is_one_line_naming_the_file(hf_dir, tmp_path, change, message):
    folder = copy_of(hf_dir, tmp_path)
    edit_json(folder / "tokenizer.json", change)
    last = import_error(folder, tmp_path)
    assert last.startswith(f"Error: {folder}/tokenizer.json") and message in last


@pytest.mark.parametrize("merges, message", [
    ("#version: 0.2\né t\n".encode("latin-1"), "merges.txt is not UTF-8 text"),
    (b"#version: 0.2\nnotapair\n", "BPE merge 0 'notapair' does not make a token"),
])
def test_a_bad_merges_txt_is_one_line_naming_the_file(hf_dir, tmp_path, merges, message):
    folder = copy_of(hf_dir, tmp_path)
    (folder / "tokenizer.json").unlink()
    edit_json(folder / "vocab.json", lambda v: v | {EOT: 256})  # as GPT-2's own vocab.json
    (folder / "merges.txt").write_bytes(merges)
    last = import_error(folder, tmp_path)
    assert last.startswith(f"Error: {folder}/merges.txt") and message in last


def rewrite_weights(folder: Path, change) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(folder / "model.safetensors")
    change(state)
    save_file(state, folder / "model.safetensors")


def relabel_as_float(folder: Path, name: str) -> None:
    """Store ``name`` as int32 values, then change the header's dtype to F32 (the bytes stay)."""
    rewrite_weights(folder, lambda s: s.update({name: torch.ones_like(s[name], dtype=torch.int32)}))
    data = (folder / "model.safetensors").read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = data[8:8 + n].replace(b'"I32"', b'"F32"')
    (folder / "model.safetensors").write_bytes(data[:8] + header + data[8 + n:])


@pytest.mark.parametrize("change, message", [
    (lambda s: s.update({"transformer.wpe.weight": s["transformer.wpe.weight"].int()}),
     "transformer.wpe.weight holds torch.int32 values"),
    (lambda s: s["transformer.ln_f.weight"].__setitem__(0, float("nan")), "ln_f.weight holds NaN"),
    (lambda s: s.update({"transformer.wpe.weight": s["transformer.wpe.weight"][:4]}),
     "transformer.wpe.weight has shape (4, 16), its config.json wants (8, 16)"),
])
def test_weights_of_the_wrong_dtype_shape_or_value_are_refused(hf_dir, tmp_path, change, message):
    folder = copy_of(hf_dir, tmp_path)
    rewrite_weights(folder, change)
    last = import_error(folder, tmp_path)
    assert last.startswith(f"Error: {folder}/model.safetensors") and message in last


def test_integer_weights_relabelled_as_floats_are_refused(hf_dir, tmp_path):
    folder = copy_of(hf_dir, tmp_path)
    relabel_as_float(folder, "transformer.wpe.weight")
    assert "transformer.wpe.weight holds only subnormal values" in import_error(folder, tmp_path)


def first_shard_tokens(m: dict, value) -> None:
    m["shards"][0]["tokens"] = value


@pytest.mark.parametrize("change, message", [
    (lambda m: first_shard_tokens(m, "40"), "shard entry 0 is not {file, tokens, sha256, edge_sha256}"),
    (lambda m: first_shard_tokens(m, -1), "shard entry 0 is not"),
    (lambda m: m["shards"][0].update(sha256="x"), "shard entry 0 is not"),
    (lambda m: m.update(shards={}), "shards is not a list"),
    (lambda m: m.update(tokens=m["tokens"] + 1), "is not the sum of its shards' tokens"),
    (lambda m: m.update(vocab_size=True), "vocab_size True is not an integer"),
    (lambda m: m.update(eot_id=m["vocab_size"]), "is not a token id below vocab_size"),
    (lambda m: m.update(dtype="uint32"), "dtype 'uint32' is not uint16"),
    (lambda m: m.update(tokenizer=None), "it has no tokenizer"),
    (lambda m: m["splits"]["val"].update(start=1.5), "splits is not {train"),
    (lambda m: m["splits"]["val"].update(start=3, tokens=m["tokens"] - 3), "split and shard counts disagree"),
])
def test_a_tampered_manifest_is_refused_naming_it(prepared, change, message):
    from model.data.shards import DataError, open_prepared

    edit_manifest(prepared, change)
    with pytest.raises(DataError, match=r"manifest.json: ") as e:
        open_prepared(prepared)
    assert message in str(e.value) and str(e.value).endswith(f"re-run gpt-prepare --out {prepared}")


def test_a_shard_of_another_size_is_refused(prepared):
    from model.data.shards import DataError, open_prepared

    with open(prepared / "tokens_000000.bin", "ab") as f:
        f.write(b"\0\0")
    with pytest.raises(DataError, match="tokens_000000.bin has 82 bytes, its manifest says 80"):
        open_prepared(prepared)


def test_check_ids_names_where_the_ids_came_from_and_the_fix():
    from model.data.shards import DataError, check_ids

    check_ids(torch.tensor([[0, 5], [9, 1]]), 10, "data/x")
    check_ids(torch.zeros(0, dtype=torch.long), 10, "data/x")
    with pytest.raises(DataError, match=r"^data/x: token id 10 is outside the vocabulary \(0..9\).*"
                                        r"gpt-prepare --verify"):
        check_ids(torch.tensor([[0, 10]]), 10, "data/x")
    with pytest.raises(DataError, match="token id -1 is outside"):
        check_ids(torch.tensor([-1]), 10, "data/x")


def test_verify_finds_ids_beyond_the_vocabulary_even_with_matching_checksums(prepared):
    """A shard rewritten with an id past the vocabulary and its checksums recomputed: the cheap
    load-time check passes, --verify does not."""
    import numpy as np

    from model.data.cli import main as prepare_cli
    from model.data.shards import edge_digest, full_digest, open_prepared

    shard = prepared / "tokens_000000.bin"
    ids = np.fromfile(shard, dtype="<u2")
    ids[3] = 60000
    ids.tofile(shard)
    digests = {"sha256": full_digest(shard), "edge_sha256": edge_digest(shard)}
    edit_manifest(prepared, lambda m: m["shards"][0].update(digests))
    open_prepared(prepared)  # the edges and sizes match
    result = CliRunner().invoke(prepare_cli, ["--verify", str(prepared)])
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {shard}: token id 60000 is outside the vocabulary")


# -- full disks, killed runs and two runs at once ------------------------------------------------

def test_a_full_disk_while_importing_is_one_line(hf_dir, tmp_path, monkeypatch):
    import errno

    def full(payload, f):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full)
    last = import_error(hf_dir, tmp_path)
    assert last == f"Error: could not write {tmp_path / 'x.pt'}: No space left on device; nothing was written"


def test_a_full_disk_while_preparing_is_one_line_and_leaves_no_partial_folder(tmp_path, monkeypatch):
    import errno

    from model.data import prepare as prepare_module
    from model.data.cli import main as prepare_cli

    def full(self, ids):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(prepare_module.ShardWriter, "_write", full)
    (tmp_path / "a.txt").write_text("some text to prepare\n")
    out = tmp_path / "tokens"
    result = CliRunner().invoke(prepare_cli, [str(tmp_path / "a.txt"), "--out", str(out), "--no-progress"])
    assert result.exit_code == 1 and result.exception is None or isinstance(result.exception, SystemExit)
    assert result.output.splitlines()[-1] == (f"Error: could not write the shards of {out}: No space left on "
                                              f"device; {out} is as it was before this run")
    assert not list(tmp_path.glob(".tokens.partial-*"))


def test_a_killed_prepares_leftovers_go_at_the_next_run_and_a_second_run_is_refused(prepared):
    from model.data.prepare import PrepareConfig, prepare, prepare_lock
    from model.data.shards import DataError

    stale = prepared.parent / f".{prepared.name}.partial-abc123"
    stale.mkdir()
    (stale / "tokens_000000.bin").write_bytes(b"\0" * 10)
    cfg = PrepareConfig(sources=(str(prepared.parent / "a.txt"),), out=str(prepared), shard_tokens=40,
                        workers=1, progress=False)
    _, built = prepare(cfg, log=lambda m: None)
    assert not built and not stale.exists()
    with prepare_lock(prepared):  # another gpt-prepare holds it: flock is per open file, so this refuses
        with pytest.raises(DataError, match=rf"^{prepared} is being prepared by another gpt-prepare"):
            prepare(cfg, log=lambda m: None)


def test_a_killed_exports_temp_file_goes_at_the_next_export(tmp_path):
    from model.atomic import remove_temps

    out = tmp_path / "m.onnx"
    (tmp_path / ".m.onnx.k2j4.tmp").write_bytes(b"half")
    (tmp_path / ".m.onnx.x9.tmp").mkdir()  # quantize's staging folder
    (tmp_path / "other.onnx").write_bytes(b"kept")
    assert remove_temps(out) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["other.onnx"]
