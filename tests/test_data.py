import hashlib

import pytest
import torch

from model.data import DataError, Splits, get_batch, load_corpus, read_text, shakespeare_path


def test_shakespeare_comes_from_the_data_dir_without_download(tmp_path, monkeypatch):
    local = tmp_path / "local"
    local.mkdir()
    text = b"First Citizen:\n"
    (local / "tinyshakespeare.txt").write_bytes(text)
    monkeypatch.setattr("model.data.SHAKESPEARE_MD5", hashlib.md5(text).hexdigest())
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
    with pytest.raises(DataError, match="is not UTF-8 text"):
        read_text(str(bad))
    with pytest.raises(DataError, match="does not exist"):
        read_text(str(tmp_path / "nope.txt"))


def test_split_is_first_90_percent_train(shakespeare_available):
    tok, splits = load_corpus("shakespeare")
    assert tok.vocab_size == 66  # 65 characters + end-of-text
    assert (len(splits.train), len(splits.val)) == (1_003_854, 111_540)  # nanoGPT's split


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
