"""What training reads: Tiny Shakespeare (found or downloaded), any text file or prepared folder as
memory-mapped token shards (model.data.shards), and random windows of a split.

``--data FILE`` and ``--data shakespeare`` are prepared into the user cache on first use (model.data.prepare),
so tokenizing happens once; later runs and resumes open the shards.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from model.atomic import atomic_write
from model.data.prepare import PrepareConfig, prepare
from model.data.shards import MANIFEST, DataError, TokenData, TokenSplit, open_prepared
from model.paths import DATA_DIR_ENV, cache_dir, tokens_cache_dir
from model.tokenizer import Tokenizer, tokenizer_from_dict

__all__ = ["DATA_DIR_ENV", "DataError", "Splits", "TokenData", "get_batch", "open_corpus"]

SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
SHAKESPEARE_MD5 = "6fb458f1232090904fb40fe944165e91"
SHAKESPEARE_FILE = "tinyshakespeare.txt"


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


@dataclass
class Splits:
    """Both splits in memory: for benchmarks and tests that make their own token ids."""

    train: torch.Tensor  # (N_train,) int64 token ids
    val: torch.Tensor  # (N_val,)

    @classmethod
    def from_ids(cls, ids: torch.Tensor, train_fraction: float = 0.9) -> Splits:
        n = int(train_fraction * len(ids))  # first 90% train, last 10% val, as nanoGPT
        return cls(ids[:n], ids[n:])

    def split(self, name: str) -> torch.Tensor:
        return self.train if name == "train" else self.val


def text_source(data: str, data_dir: str | Path | None = None) -> Path:
    """``shakespeare`` (found or downloaded) or the path of a text file, which must exist."""
    path = shakespeare_path(data_dir) if data == "shakespeare" else Path(data)
    if not path.is_file():
        raise DataError(f"training text {path} does not exist; pass --data shakespeare or a text file "
                        "(or a folder prepared by gpt-prepare)")
    return path


def read_text(data: str, data_dir: str | Path | None = None) -> str:
    """The whole text of ``shakespeare`` or of a UTF-8 file, for the notebooks and tests that look
    at it (training reads prepared tokens instead)."""
    path = text_source(data, data_dir)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def cached_folder(text: Path, tokenizer: dict | str) -> Path:
    """The cache folder for ``text`` prepared with ``tokenizer`` ("char": built from the text)."""
    key = json.dumps({"path": str(text.resolve()), "tokenizer": tokenizer}, sort_keys=True)
    return tokens_cache_dir() / f"{text.stem[:40]}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def open_corpus(
    data: str, tokenizer: Tokenizer | None = None, data_dir: str | Path | None = None,
    log: Callable[[str], None] = lambda m: None, progress: bool = False,
) -> tuple[Tokenizer, TokenData]:
    """The tokenizer and the memory-mapped splits of ``data``: a prepared folder, ``shakespeare`` or a
    text file. A text file is prepared into the user cache first unless it already is (unchanged):
    with ``tokenizer`` when given (a resumed run's), else with a character vocabulary built from it."""
    path = Path(data)
    if data != "shakespeare" and path.is_dir():
        prepared = open_prepared(path)
        return _tokenizer_of(prepared, tokenizer), prepared
    if data != "shakespeare" and path.suffix == ".bin":
        raise DataError(f"{path}: pass the prepared folder holding {MANIFEST}, not a shard file")
    text = text_source(data, data_dir)
    folder, given = cached_folder(text, "char"), tokenizer
    if tokenizer is not None and _prepared_with(folder, tokenizer):
        given = None  # the folder whose vocabulary was built from this text has exactly this one
    elif tokenizer is not None:
        folder = cached_folder(text, tokenizer.to_dict())
    cfg = PrepareConfig(sources=(str(text),), out=str(folder), progress=progress)
    _, built = prepare(cfg, log=lambda m: None, tokenizer=given)
    if built:
        log(f"prepared {text} once into {folder}; later runs read the tokens from there")
    prepared = open_prepared(folder)
    return _tokenizer_of(prepared, tokenizer), prepared


def _prepared_with(folder: Path, tokenizer: Tokenizer) -> bool:
    try:
        return json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["tokenizer"] == tokenizer.to_dict()
    except (OSError, ValueError, KeyError):
        return False


def _tokenizer_of(prepared: TokenData, tokenizer: Tokenizer | None) -> Tokenizer:
    """The folder's tokenizer; a given one (a checkpoint's) must be the same."""
    saved = prepared.tokenizer_dict
    if tokenizer is not None:
        if tokenizer.to_dict() != saved or tokenizer.vocab_size != prepared.manifest["vocab_size"]:
            raise DataError(
                f"{prepared.folder} was prepared with another tokenizer ({saved['kind']}, vocab "
                f"{prepared.manifest['vocab_size']}) than the checkpoint's ({tokenizer.to_dict()['kind']}, "
                f"vocab {tokenizer.vocab_size}); prepare the data with gpt-prepare --tokenizer CKPT")
        return tokenizer
    try:
        tok = tokenizer_from_dict(saved)
    except (ValueError, FileNotFoundError) as e:
        raise DataError(f"{prepared.folder}: its tokenizer cannot be rebuilt ({e})") from None
    if tok.vocab_size != prepared.manifest["vocab_size"]:
        raise DataError(f"{prepared.folder} was prepared with a vocabulary of "
                        f"{prepared.manifest['vocab_size']} but the tokenizer here has {tok.vocab_size}; "
                        "use the same ranks file or re-prepare")
    return tok


def get_batch(
    ids: torch.Tensor | TokenSplit, batch_size: int, block_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows: x = ids[i : i+T], y = ids[i+1 : i+T+1], both (B, T).

    The starts are drawn the same way for a tensor and a prepared split, so the same token stream
    and generator give the same windows either way (the shipped model's recipe reproduces)."""
    if len(ids) <= block_size:
        raise DataError(
            f"split of {len(ids)} tokens is too short for block_size {block_size}; "
            "use more text or a smaller --block-size"
        )
    starts = torch.randint(len(ids) - block_size, (batch_size,), generator=generator)
    if isinstance(ids, TokenSplit):
        windows = ids.windows(starts, block_size + 1)  # (B, T+1), read from the memory maps
    else:
        offsets = torch.arange(block_size + 1)
        windows = ids[starts[:, None] + offsets]  # (B, T+1): one gather instead of B slices
    return windows[:, :-1], windows[:, 1:]
