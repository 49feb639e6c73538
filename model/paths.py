"""Where the project keeps files it did not get as arguments: one per-user cache, named here once.

Paths come from arguments first, then from an environment variable, then from this cache; never
from the current working directory by accident.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

DATA_DIR_ENV = "GPT_DATA_DIR"  # a folder already holding tinyshakespeare.txt (CI, offline use)
RANKS_ENV = "GPT_BPE_RANKS"  # GPT-2's BPE ranks file (tiktoken's r50k_base.tiktoken)
RANKS_FILE = "gpt2.tiktoken"  # that file's name in our cache and in a $GPT_DATA_DIR folder
# tiktoken's download cache, in the order tiktoken.load.read_file_cached reads them
TIKTOKEN_CACHE_ENVS = ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR")


def cache_dir() -> Path:
    """Per-user cache for downloads and exports: $XDG_CACHE_HOME/gpt-from-scratch (~/.cache by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gpt-from-scratch"


def data_dir() -> Path:
    """Per-user data the app keeps (prompt history, sessions): $XDG_DATA_HOME/gpt-from-scratch
    (~/.local/share by default)."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "gpt-from-scratch"


def config_dir() -> Path:
    """Per-user settings: $XDG_CONFIG_HOME/gpt-from-scratch (~/.config by default)."""
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "gpt-from-scratch"


def ranks_path() -> Path:
    """Our copy of GPT-2's BPE ranks, kept once downloaded: gpt2.tiktoken in the cache."""
    return cache_dir() / RANKS_FILE


def tiktoken_cache_dir() -> Path | None:
    """tiktoken's own download cache, chosen as tiktoken chooses it: $TIKTOKEN_CACHE_DIR, else
    $DATA_GYM_CACHE_DIR, else data-gym-cache in the temporary folder; None when set to "" (tiktoken
    then keeps nothing)."""
    for name in TIKTOKEN_CACHE_ENVS:
        if name in os.environ:
            return Path(os.environ[name]) if os.environ[name] else None
    return Path(tempfile.gettempdir()) / "data-gym-cache"


def tiktoken_cached(url: str) -> Path | None:
    """Where tiktoken keeps its download of ``url``: the SHA-1 of the URL names the file."""
    folder = tiktoken_cache_dir()
    return folder / hashlib.sha1(url.encode()).hexdigest() if folder else None


def onnx_cache_dir() -> Path:
    """Where exports of checkpoints in read-only folders (an installed package) go."""
    return cache_dir() / "onnx"


def tokens_cache_dir() -> Path:
    """Where ``gpt-train --data FILE`` (and ``shakespeare``) keeps the text prepared as token shards."""
    return cache_dir() / "tokens"


class UnsafePathError(ValueError):
    """A file name read from a file (an index, a manifest) that would lead out of its folder."""


def name_inside(folder: Path, name: object, where: str, root: Path | None = None) -> Path:
    """``folder / name`` for a file name read from the file ``where``; refused (UnsafePathError, one
    line naming ``where`` and the entry) unless it is a plain name inside ``folder``: a string with no
    separator, not ``.`` or ``..``, not absolute, and if it is a symlink, one pointing inside ``root``
    (default ``folder``; the Hugging Face cache links a snapshot's files to blobs two levels up)."""
    plain = (isinstance(name, str) and name not in ("", ".", "..") and "\0" not in name
             and not any(sep in name for sep in ("/", "\\", os.sep)) and not Path(name).is_absolute())
    if not plain:
        raise UnsafePathError(f"{where}: entry {str(name)[:80]!r} is not a plain file name inside "
                              f"{folder}; refusing to follow it")
    path = folder / name
    if path.is_symlink():
        target, base = path.resolve(), (root or folder).resolve()
        if not target.is_relative_to(base):
            raise UnsafePathError(f"{where}: entry {name!r} is a symlink pointing out of {base} "
                                  f"(to {target}); refusing to follow it")
    return path
