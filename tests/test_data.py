import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import TEXT

from model.data.corpus import DataError, Splits, get_batch, open_corpus, shakespeare_path
from model.data.prepare import PrepareConfig, prepare
from model.data.shards import MANIFEST, open_prepared
from model.tokenizer import CharTokenizer
from model.train.cli import main as train_main


def test_shakespeare_comes_from_the_data_dir_without_download(tmp_path, monkeypatch):
    local = tmp_path / "local"
    local.mkdir()
    text = b"First Citizen:\n"
    (local / "tinyshakespeare.txt").write_bytes(text)
    monkeypatch.setattr("model.data.corpus.SHAKESPEARE_MD5", hashlib.md5(text).hexdigest())
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("GPT_DATA_DIR", str(local))
    assert shakespeare_path() == local / "tinyshakespeare.txt"
    assert shakespeare_path(tmp_path / "local") == local / "tinyshakespeare.txt"  # an argument wins too
    assert not (tmp_path / "cache").exists()  # nothing fetched or cached


def test_wrong_checksum_is_refused(tmp_path):
    (tmp_path / "tinyshakespeare.txt").write_text("not shakespeare")
    with pytest.raises(DataError, match="wrong checksum"):
        shakespeare_path(tmp_path)


def test_non_utf8_and_missing_files_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"abc\xff\xfe")
    with pytest.raises(DataError, match=r"bad.txt is not UTF-8 text \(invalid start byte near byte 3\)"):
        open_corpus(str(bad))
    with pytest.raises(DataError, match="nope.txt does not exist"):
        open_corpus(str(tmp_path / "nope.txt"))


def test_shakespeare_keeps_its_split_and_its_windows(shakespeare_available):
    """Prepared into shards, Tiny Shakespeare gives the ids, the 90/10 split and, for the same seed,
    the same training windows as the in-memory path it replaced (the shipped recipe reproduces)."""
    tok, data = open_corpus("shakespeare")
    assert tok.vocab_size == 66  # 65 characters + end-of-text
    assert (len(data.train), len(data.val)) == (1_003_854, 111_540)  # nanoGPT's split
    text = shakespeare_path().read_text(encoding="utf-8")
    before = Splits.from_ids(torch.tensor(CharTokenizer.from_text(text).encode(text)))
    assert torch.equal(data.val[:], before.val)
    for split in ("train", "val"):
        g_old, g_new = torch.Generator().manual_seed(1337), torch.Generator().manual_seed(1337)
        for _ in range(3):
            (x0, y0), (x1, y1) = (get_batch(before.split(split), 16, 256, g_old),
                                  get_batch(data.split(split), 16, 256, g_new))
            assert torch.equal(x0, x1) and torch.equal(y0, y1)


def test_a_text_file_is_tokenized_once(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text(TEXT)
    first, second = [], []
    tok, data = open_corpus(str(path), log=first.append)
    shard = data.folder / "tokens_000000.bin"
    written = shard.stat().st_mtime_ns
    tok2, data2 = open_corpus(str(path), log=second.append)
    assert len(first) == 1 and "prepared" in first[0] and second == []
    assert data2.folder == data.folder and shard.stat().st_mtime_ns == written
    assert tok2.to_dict() == tok.to_dict() == CharTokenizer.from_text(TEXT).to_dict()
    # resuming hands over the checkpoint's tokenizer: the same vocabulary finds the same folder
    assert open_corpus(str(path), tokenizer=tok)[1].folder == data.folder
    path.write_text(TEXT + "changed")  # new content: prepared again
    again = []
    open_corpus(str(path), log=again.append)
    assert len(again) == 1


def test_windows_cross_shard_boundaries_like_one_array(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text(TEXT)
    prepare(PrepareConfig(sources=(str(path),), out=str(tmp_path / "p"), shard_tokens=7, progress=False),
            log=lambda m: None)
    data = open_prepared(tmp_path / "p")
    assert len(data.manifest["shards"]) == -(-len(TEXT) // 7)
    ids = torch.tensor(CharTokenizer.from_text(TEXT).encode(TEXT))
    whole = Splits.from_ids(ids)
    assert torch.equal(data.train[:], whole.train) and torch.equal(data.val[3:20], whole.val[3:20])
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        assert all(torch.equal(a, b) for a, b in zip(get_batch(whole.split(split), 8, 16, g1),
                                                     get_batch(data.split(split), 8, 16, g2), strict=True))


def test_batches_are_seeded_windows_offset_by_one():
    ids = torch.arange(1000)
    x, y = get_batch(ids, 4, 16, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 16)
    assert torch.equal(y, x + 1)  # consecutive ids: target is the next token
    x2, _ = get_batch(ids, 4, 16, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2)


def test_split_too_short_for_block_size():
    with pytest.raises(DataError, match="too short for block_size 64"):
        get_batch(Splits.from_ids(torch.arange(50)).train, 2, 64, torch.Generator())


@pytest.fixture
def prepared(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text(TEXT * 3)
    out = tmp_path / "prepared"
    prepare(PrepareConfig(sources=(str(path),), out=str(out), shard_tokens=500, progress=False),
            log=lambda m: None)
    return out


def test_a_changed_folder_is_refused_in_one_line(prepared):
    shard = prepared / "tokens_000001.bin"
    ids = np.fromfile(shard, dtype=np.uint16)
    ids[-1] ^= 1
    ids.tofile(shard)
    with pytest.raises(DataError, match="tokens_000001.bin does not match its checksum in manifest.json"):
        open_prepared(prepared)
    ids[:-1].tofile(shard)
    with pytest.raises(DataError, match="tokens_000001.bin has 998 bytes, its manifest says 1,000"):
        open_prepared(prepared)
    (prepared / MANIFEST).write_text("{}")
    with pytest.raises(DataError, match="is not a gpt-from-scratch/tokens/1 manifest"):
        open_prepared(prepared)
    (prepared / MANIFEST).unlink()
    result = CliRunner().invoke(train_main, ["--data", str(prepared), "--out", str(prepared.parent / "o")])
    assert result.exit_code == 2  # a usage error, caught before any work
    assert result.output.strip() == (
        f"Error: --data {prepared} is a directory without manifest.json; prepare it with gpt-prepare SRC "
        f"--out {prepared}, or pass a UTF-8 text file or shakespeare")
    with pytest.raises(DataError, match="is not a prepared token folder .no manifest.json.; prepare it with"):
        open_prepared(prepared)


def test_a_folder_prepared_with_another_tokenizer_is_refused(prepared):
    other = CharTokenizer.from_text("abc")
    with pytest.raises(DataError, match="was prepared with another tokenizer .char, vocab 97. than the "
                                        "checkpoint's .char, vocab 4.; prepare the data with gpt-prepare"):
        open_corpus(str(prepared), tokenizer=other)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads Linux's /proc/self/maps")
def test_no_shard_stays_mapped_between_batches(prepared):
    """Pages read through a map that stays open count as resident memory: the maps are per batch."""
    data = open_prepared(prepared)
    x, _ = get_batch(data.train, 8, 16, torch.Generator().manual_seed(0))
    assert x.shape == (8, 16)
    assert str(prepared) not in Path("/proc/self/maps").read_text()
