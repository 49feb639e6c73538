"""Writing a file so that a crash at any moment leaves either the old file or the new one, never half."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def atomic_write(
    path: str | Path, mode: str = "wb", encoding: str | None = None,
    check: Callable[[Path], None] | None = None,
) -> Iterator[IO]:
    """Open a temp file beside ``path`` for the block to write; then flush, fsync and rename it over
    ``path``. ``check(temp_path)`` runs on the complete file before the rename: if it raises, the
    temp file is deleted and ``path`` is left as it was. Any exception does the same.

    The temp file is in the same folder because a rename is only atomic within one file system."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)  # reopened by name, so f.name is the temp path (some writers read it)
    tmp = Path(name)
    try:
        with open(tmp, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if check is not None:
            check(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
