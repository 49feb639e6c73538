"""Writing a file so that a crash at any moment leaves either the old file or the new one, never half.

A write goes to a temp file beside its target, renamed over it when complete. One writer of a
target at a time holds its lock (``writing``): that is what makes it safe to delete the temp
files a killed writer left, which is done as the lock is taken, and it refuses a second command
writing the same file (two exports into one ``.onnx``) in one line instead of letting them race.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


class WriteError(OSError):
    """A file could not be written (a full disk, a read-only folder); the message names the file and
    says that the old one, if any, is unchanged. The errno is the original one."""

    def __str__(self) -> str:
        return str(self.strerror)


class OutputBusyError(WriteError):
    """Another process is writing the same file."""


_held: set[str] = set()  # the targets whose lock this process holds (taking it again is a no-op)
_held_guard = threading.Lock()


def take_flock(f: IO) -> str | None:
    """Lock the open file ``f`` exclusively without waiting and write our PID in it: None once
    taken, else the PID its holder wrote (for the refusal's message). The kernel drops the lock
    when the holder ends, however it ends."""
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        f.seek(0)
        return f.read().strip() or "unknown"
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return None


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Hold the writer's lock of ``path`` for the block: ``flock`` on a hidden file beside it, which
    the kernel releases however the process ends. Taken, it first removes what killed writers of
    ``path`` left (``remove_temps``); held by another process, it raises OutputBusyError at once.
    Re-entrant in one process, so a command may hold it around several atomic_writes of ``path``.
    The lock file is removed on release; a writer that opened it meanwhile sees it is no longer
    the file at that name and takes the new one."""
    path = Path(path)
    key = os.path.abspath(path)
    with _held_guard:
        mine = key in _held
        _held.add(key)
    if mine:
        yield
        return
    lock = path.parent / f".{path.name}.lock"
    f = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            f = open(lock, "a+", encoding="utf-8")
            if (holder := take_flock(f)) is not None:
                raise OutputBusyError(errno.EBUSY, f"{path} is being written by another process (PID "
                                                   f"{holder}); wait for it to finish, or write to "
                                                   "another path")
            try:
                if os.fstat(f.fileno()).st_ino == os.stat(lock).st_ino:
                    break
            except FileNotFoundError:
                pass
            f.close()  # its last holder removed it as we opened it: take the one at the name now
        remove_temps(path)
        yield
    finally:
        if f is not None and not f.closed:
            lock.unlink(missing_ok=True)  # before closing: no one can hold the name's file meanwhile
            f.close()
        with _held_guard:
            _held.discard(key)


@contextmanager
def atomic_write(
    path: str | Path, mode: str = "wb", encoding: str | None = None,
    check: Callable[[Path], None] | None = None,
) -> Iterator[IO]:
    """Open a temp file beside ``path`` for the block to write; then flush, fsync and rename it over
    ``path``. ``check(temp_path)`` runs on the complete file before the rename: if it raises, the
    temp file is deleted and ``path`` is left as it was. Any exception does the same; an OSError
    (a full disk) comes out as a one-line WriteError.

    The temp file is in the same folder because a rename is only atomic within one file system."""
    path = Path(path)
    tmp: Path | None = None
    try:
        with writing(path):  # one writer at a time: OutputBusyError if another has it
            fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            os.close(fd)  # reopened by name, so f.name is the temp path (some writers read it)
            tmp = Path(name)
            os.chmod(tmp, permissions(path))  # mkstemp's are owner-only
            with open(tmp, mode, encoding=encoding) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            if check is not None:
                check(tmp)
            os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        if isinstance(e, WriteError):
            raise
        raise write_error(path, e) from None
    except BaseException:
        _remove(tmp)
        raise


def permissions(path: Path, new: int = 0o666) -> int:
    """The mode ``path`` should have once written: the old file's own, or what open() (or mkdir,
    ``new=0o777``) gives a new one under the umask, as ``cp`` and ``torch.save`` leave it. The temp
    files and folders a write goes through are owner-only, which a model or data set people share
    must not stay."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        mask = os.umask(0o022)  # read by setting it: the only portable way; put back at once
        os.umask(mask)
        return new & ~mask


def write_error(path: Path, error: OSError) -> WriteError:
    """``error`` (from writing ``path``) as one line saying what is left on disk."""
    left = "the old file is unchanged" if path.exists() else "nothing was written"
    return WriteError(error.errno, f"could not write {path}: {error.strerror or error}; {left}")


def temp_files(path: str | Path) -> list[Path]:
    """Temp files atomic_write left beside ``path`` when its process was killed mid-write."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


def remove_temps(path: str | Path) -> int:
    """Delete what killed writers of ``path`` left beside it (temp files, and temp folders named the
    same way) -> how many. A writer of ``path`` running at this moment loses its temp and fails in one
    line; callers that can run twice at once hold a lock first."""
    stale = temp_files(path)
    for p in stale:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return len(stale)


def _remove(tmp: Path | None) -> None:
    if tmp is not None:
        tmp.unlink(missing_ok=True)
