"""Training text: find or download it, encode it once, split 90/10, sample random windows."""

from __future__ import annotations

import hashlib
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch

from model.atomic import atomic_write
from model.paths import DATA_DIR_ENV, cache_dir
from model.tokenizer import CharTokenizer, Tokenizer

SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
SHAKESPEARE_MD5 = "6fb458f1232090904fb40fe944165e91"
SHAKESPEARE_FILE = "tinyshakespeare.txt"


class DataError(ValueError):
    """The training text could not be found, fetched or read."""


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def shakespeare_path(data_dir: str | Path | None = None) -> Path:
    """Tiny Shakespeare on disk, checksum verified: from data_dir / $GPT_DATA_DIR, else the cache,
    else downloaded once into the cache."""
    local = data_dir or os.environ.get(DATA_DIR_ENV)
    if local:
        path = Path(local) / SHAKESPEARE_FILE
        if not path.is_file():
            raise DataError(f"{path} does not exist; unset {DATA_DIR_ENV} to download it")
        if md5(path) != SHAKESPEARE_MD5:
            raise DataError(f"{path} has the wrong checksum (want md5 {SHAKESPEARE_MD5})")
        return path
    path = cache_dir() / SHAKESPEARE_FILE
    if path.is_file() and md5(path) == SHAKESPEARE_MD5:
        return path

    def checksum(tmp: Path) -> None:
        if md5(tmp) != SHAKESPEARE_MD5:
            raise DataError(
                f"downloaded Tiny Shakespeare has the wrong checksum; try again ({SHAKESPEARE_URL})")

    try:
        with urllib.request.urlopen(SHAKESPEARE_URL, timeout=60) as r:
            with atomic_write(path, check=checksum) as f:
                f.write(r.read())
    except OSError as e:
        raise DataError(
            f"could not download Tiny Shakespeare ({e}); save it as {path} "
            f"or point {DATA_DIR_ENV} at a folder holding {SHAKESPEARE_FILE}"
        ) from None
    return path


def read_text(data: str, data_dir: str | Path | None = None) -> str:
    """``data`` is ``shakespeare`` or the path of a UTF-8 text file."""
    path = shakespeare_path(data_dir) if data == "shakespeare" else Path(data)
    if not path.is_file():
        raise DataError(f"training text {path} does not exist; pass --data shakespeare or a text file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    if len(text) < 2:
        raise DataError(f"{path} is empty; training needs text")
    return text


@dataclass
class Splits:
    train: torch.Tensor  # (N_train,) int64 token ids
    val: torch.Tensor  # (N_val,)

    @classmethod
    def from_ids(cls, ids: torch.Tensor, train_fraction: float = 0.9) -> Splits:
        n = int(train_fraction * len(ids))  # first 90% train, last 10% val, as nanoGPT
        return cls(ids[:n], ids[n:])

    def split(self, name: str) -> torch.Tensor:
        return self.train if name == "train" else self.val


def load_corpus(
    data: str, tokenizer: Tokenizer | None = None, data_dir: str | Path | None = None
) -> tuple[Tokenizer, Splits]:
    """Read, tokenize (building a character vocabulary unless given a tokenizer) and split."""
    text = read_text(data, data_dir)
    tok = tokenizer or CharTokenizer.from_text(text)
    ids = torch.tensor(tok.encode(text, unknown="replace", special=True), dtype=torch.long)
    return tok, Splits.from_ids(ids)


def get_batch(
    ids: torch.Tensor, batch_size: int, block_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows: x = ids[i : i+T], y = ids[i+1 : i+T+1], both (B, T)."""
    if len(ids) <= block_size:
        raise DataError(
            f"split of {len(ids)} tokens is too short for block_size {block_size}; "
            "use more text or a smaller --block-size"
        )
    starts = torch.randint(len(ids) - block_size, (batch_size,), generator=generator)
    offsets = torch.arange(block_size + 1)
    windows = ids[starts[:, None] + offsets]  # (B, T+1): one gather instead of B slices
    return windows[:, :-1], windows[:, 1:]
