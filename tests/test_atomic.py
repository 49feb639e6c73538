"""model.atomic.atomic_write: the target holds the old file or the new one, never a partial one."""

import errno
import os

import pytest

from model.atomic import WriteError, atomic_write


def test_writes_the_new_file_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write("new")
        assert path.read_text() == "old"  # nothing changes until the block ends
    assert path.read_text() == "new" and list(tmp_path.iterdir()) == [path]


def test_a_failing_check_keeps_the_old_file(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"old")
    seen = []

    def check(tmp):
        seen.append(tmp.read_bytes())
        raise ValueError("fails validation")

    with pytest.raises(ValueError, match="fails validation"):
        with atomic_write(path, check=check) as f:
            f.write(b"bad")
    assert seen == [b"bad"]  # the check saw the complete file
    assert path.read_bytes() == b"old" and list(tmp_path.iterdir()) == [path]


def test_an_interrupted_write_creates_nothing(tmp_path):
    path = tmp_path / "sub" / "ckpt.pt"
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(path) as f:
            f.write(b"half")
            raise KeyboardInterrupt
    assert list((tmp_path / "sub").iterdir()) == []


def test_a_full_disk_is_one_line_and_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    path.write_bytes(b"old")

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(WriteError, match=f"^could not write {path}: No space left on device; the old file "
                                         "is unchanged$") as e:
        with atomic_write(path) as f:
            f.write(b"new")
    assert e.value.errno == errno.ENOSPC
    assert path.read_bytes() == b"old" and list(tmp_path.iterdir()) == [path]
