"""Writing a file so that a crash at any moment leaves either the old file or the new one, never half."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


class WriteError(OSError):
    """A file could not be written (a full disk, a read-only folder); the message names the file and
    says that the old one, if any, is unchanged. The errno is the original one."""

    def __str__(self) -> str:
        return str(self.strerror)


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
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)  # reopened by name, so f.name is the temp path (some writers read it)
        tmp = Path(name)
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
