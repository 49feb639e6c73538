"""model.atomic.atomic_write: the target holds the old file or the new one, never a partial one."""

import errno
import os
import stat
import subprocess
import sys

import pytest
from conftest import REPO

from model.atomic import OutputBusyError, WriteError, atomic_write, writing


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


def test_a_written_file_gets_the_umasks_mode_or_keeps_its_own(tmp_path):
    """As cp and torch.save: not the owner-only mode of the temp file it went through."""
    old = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "shared.pt") as f:
            f.write(b"x")
        assert stat.S_IMODE((tmp_path / "shared.pt").stat().st_mode) == 0o644
        os.umask(0o077)
        with atomic_write(tmp_path / "private.pt") as f:
            f.write(b"x")
        assert stat.S_IMODE((tmp_path / "private.pt").stat().st_mode) == 0o600
        (tmp_path / "shared.pt").chmod(0o664)
        with atomic_write(tmp_path / "shared.pt") as f:  # rewritten: it keeps the mode it had
            f.write(b"y")
        assert stat.S_IMODE((tmp_path / "shared.pt").stat().st_mode) == 0o664
    finally:
        os.umask(old)


def test_one_writer_at_a_time_and_a_killed_writers_temps_go_when_the_next_one_writes(tmp_path):
    out = tmp_path / "model.onnx"
    (tmp_path / ".model.onnx.killed.tmp").write_bytes(b"half")  # what kill -9 mid-write leaves
    (tmp_path / ".model.onnx.staging.tmp").mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from model.atomic import writing\n"
         "with writing(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)", str(out)],
        stdout=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline() == "held\n"
        assert not list(tmp_path.glob(".model.onnx.*.tmp"))  # taking the lock removed them
        with pytest.raises(OutputBusyError) as busy, atomic_write(out) as f:
            f.write(b"second")
        assert str(busy.value) == (f"{out} is being written by another process (PID {holder.pid}); wait "
                                   "for it to finish, or write to another path")
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    with atomic_write(out) as f:  # the holder is gone: the kernel dropped its lock
        f.write(b"x")
        with writing(out):  # the same process may take it again (an export around its writes)
            pass
    assert out.read_bytes() == b"x" and sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
