"""Tokenize a corpus once into memory-mappable shards (``gpt-prepare``; model.data.shards reads them).

The sources (model.data.sources: files, folders, globs, Hugging Face datasets) are read as documents; an
end-of-text token goes between documents. Their text is encoded in pieces on every core
(model.data.encoders) while this module writes the tokens into shards in a temp folder, then puts the
finished folder in place of the old one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.atomic import WriteError, atomic_write, permissions, take_flock
from model.data.encoders import (
    bpe_cut,
    char_cut,
    char_vocabulary,
    encode_stream,
    encoder_for,
    pieces,
    resolve_tokenizer,
    tokenizer_identity,
)
from model.data.shards import (
    FORMAT,
    MANIFEST,
    SHARD_PATTERN,
    DataError,
    check_shards,
    dtype_for,
    edge_digest,
    read_manifest,
)
from model.data.sources import documents, expand, fingerprint
from model.tokenizer import CharTokenizer, Tokenizer


@dataclass(frozen=True)
class PrepareConfig:
    sources: tuple[str, ...]
    out: str
    tokenizer: str = "char"  # "char" (built from the corpus), "gpt2", or the path of a checkpoint
    val_sources: tuple[str, ...] = ()  # empty: val is the last val_fraction of the stream
    val_fraction: float = 0.1
    shard_tokens: int = 100_000_000  # 200 MB per uint16 shard
    workers: int = 0  # 0: every core
    text_field: str = "text"  # the column of a Hugging Face dataset holding the text
    max_documents: int | None = None  # per Hugging Face source: a sample of the stream
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("give at least one source: text files, folders, globs or hf:DATASET")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val fraction must be between 0 and 1, got {self.val_fraction}")
        if self.shard_tokens < 1:
            raise ValueError(f"shard tokens must be at least 1, got {self.shard_tokens}")


# -- progress ------------------------------------------------------------------------------------

class PrepareProgress:
    """MB read, MB/s, tokens written and time left, on stderr; silent when disabled."""

    def __init__(self, total_bytes: int | None, enabled: bool):
        from rich import progress as rp
        from rich.console import Console

        self.bar = rp.Progress(rp.TextColumn("[bold]{task.description}"), rp.BarColumn(), rp.DownloadColumn(),
                               rp.TransferSpeedColumn(), rp.TextColumn("{task.fields[tokens]:,} tokens"),
                               rp.TimeRemainingColumn(), console=Console(stderr=True), disable=not enabled)
        self.total = total_bytes

    def __enter__(self) -> PrepareProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    def task(self, name: str) -> Callable[[int, int], None]:
        task = self.bar.add_task(name, total=self.total, tokens=0)
        return lambda nbytes, tokens: self.bar.update(task, advance=nbytes, tokens=tokens)


# -- writing -------------------------------------------------------------------------------------

class ShardWriter:
    """Appends token ids to tokens_NNNNNN.bin files of ``shard_tokens`` each, hashing as it writes."""

    def __init__(self, folder: Path, dtype: np.dtype, shard_tokens: int, out: Path | None = None):
        self.folder, self.dtype, self.shard_tokens = folder, dtype, shard_tokens
        self.out = out or folder  # the folder the shards are for, named in errors
        self.shards: list[dict] = []
        self.tokens = 0
        self._file = None

    def write(self, ids: np.ndarray) -> None:
        try:
            self._write(ids)
        except OSError as e:  # a full disk: one line, the old folder is untouched
            raise self._error(e) from None

    def _error(self, e: OSError) -> WriteError:
        return WriteError(e.errno, f"could not write the shards of {self.out}: {e.strerror or e}; "
                                   f"{self.out} is as it was before this run")

    def _write(self, ids: np.ndarray) -> None:
        ids = ids.astype(self.dtype, copy=False)
        while len(ids):
            if self._file is None or self.shards[-1]["tokens"] == self.shard_tokens:
                self._open()
            room = self.shard_tokens - self.shards[-1]["tokens"]
            part, ids = ids[:room], ids[room:]
            data = part.astype(self.dtype.newbyteorder("<"), copy=False).tobytes()
            self._file.write(data)
            self._hash.update(data)
            self.shards[-1]["tokens"] += len(part)
            self.tokens += len(part)

    def _open(self) -> None:
        self._close_file()
        name = SHARD_PATTERN.format(len(self.shards))
        self._file, self._hash = open(self.folder / name, "wb"), hashlib.sha256()
        self.shards.append({"file": name, "tokens": 0})

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self.shards[-1]["sha256"] = self._hash.hexdigest()
            self.shards[-1]["edge_sha256"] = edge_digest(self.folder / self.shards[-1]["file"])
            self._file = None

    def close(self) -> list[dict]:
        try:
            self._close_file()
        except OSError as e:
            raise self._error(e) from None
        return self.shards


# -- the whole preparation -----------------------------------------------------------------------

def fresh_manifest(out: Path, wanted: dict) -> dict | None:
    """``out``'s manifest if it already holds this preparation of this input, its shards intact (the
    cheap check); else None."""
    try:
        manifest = read_manifest(out)
        check_shards(out, manifest)
    except DataError:
        return None
    return manifest if manifest.get("fingerprint") == wanted else None


def prepare(cfg: PrepareConfig, log: Callable[[str], None] = print,
            tokenizer: Tokenizer | None = None) -> tuple[dict, bool]:
    """Tokenize cfg.sources into cfg.out -> (manifest, whether anything was written). Unchanged input
    already prepared the same way is a no-op. ``tokenizer`` overrides cfg.tokenizer (training's resume).

    The shards are written in a temp folder beside ``out`` that takes its place when complete, so an
    interrupted run leaves the old folder (or none); the next run removes the temp folder. A second
    run into the same ``out`` at the same time is refused (a lock beside ``out``)."""
    out = Path(cfg.out)
    with prepare_lock(out):
        return _prepare(cfg, out, log, tokenizer)


@contextmanager
def prepare_lock(out: Path) -> Iterator[None]:
    """Hold the lock of ``out`` (a hidden file beside it: ``out`` itself is replaced by a rename)
    for the block, refusing at once if another gpt-prepare holds it; then remove what killed runs
    left beside ``out`` (their staging folders), which no one else is writing while we hold it."""
    lock = out.parent / f".{out.name}.lock"
    if lock.is_dir():  # where earlier versions kept it: a folder holding the lock file
        lock = lock / ".lock"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+", encoding="utf-8") as f:
        if (holder := take_flock(f)) is not None:
            raise DataError(f"{out} is being prepared by another gpt-prepare (PID {holder}); wait for it to "
                            "finish (the same input is then up to date), or pass another --out")
        for stale in [*out.parent.glob(f".{out.name}.partial-*"), *out.parent.glob(f".{out.name}.old-*")]:
            shutil.rmtree(stale, ignore_errors=True)
        yield


def _prepare(cfg: PrepareConfig, out: Path, log: Callable[[str], None],
             tokenizer: Tokenizer | None) -> tuple[dict, bool]:
    train_src, val_src = expand(cfg.sources), expand(cfg.val_sources)
    tok = tokenizer or resolve_tokenizer(cfg.tokenizer)
    wanted = {"train": fingerprint(train_src, cfg.text_field, cfg.max_documents),
              "val": fingerprint(val_src, cfg.text_field, cfg.max_documents),
              "tokenizer": tokenizer_identity(tok) if tok else "char",
              "val_fraction": None if val_src else cfg.val_fraction, "shard_tokens": cfg.shard_tokens,
              "format": FORMAT}
    if (manifest := fresh_manifest(out, wanted)) is not None:
        log(f"{out} is up to date ({MANIFEST} matches the input); nothing to do")
        return manifest, False
    if out.exists() and not _only_ours(out):
        raise DataError(f"{out} holds files gpt-prepare did not write; choose an empty or new --out folder")
    workers = cfg.workers or os.cpu_count() or 1
    sized = [f["bytes"] for f in wanted["train"] + wanted["val"] if "bytes" in f]
    total = sum(sized) if len(sized) == len(train_src) + len(val_src) else None  # None: a dataset streams
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))  # unique per run
    os.chmod(staging, permissions(out, new=0o777))  # mkdtemp's is owner-only
    try:
        with PrepareProgress(total, cfg.progress) as bar:
            if tok is None:
                tok = char_vocabulary(documents(train_src + val_src, cfg.text_field, cfg.max_documents),
                                      bar.task("vocabulary"))
            writer = ShardWriter(staging, dtype_for(tok.vocab_size), cfg.shard_tokens, out)
            tick = bar.task("tokenize")
            encode = encoder_for(tok)  # once for both splits (a character table is 4 MB to build)
            cut = char_cut if isinstance(tok, CharTokenizer) else bpe_cut  # every BPE here splits as GPT-2's
            counts = {}
            for name, src in (("train", train_src), ("val", val_src)):
                start, docs = writer.tokens, 0
                source_docs = documents(src, cfg.text_field, cfg.max_documents)
                parts = pieces(source_docs, cut, separator=encode.separator)
                for piece, ids in encode_stream(parts, encode, workers):
                    if piece.starts_document:
                        if docs:  # between documents, not before the first
                            writer.write(np.array([tok.eot_id]))
                        docs += piece.documents  # a joined piece holds the ones between its documents
                    writer.write(ids)
                    tick(piece.nbytes, writer.tokens)
                counts[name] = {"start": start, "tokens": writer.tokens - start, "documents": docs}
        shards = writer.close()
        if not val_src:  # the last val_fraction of the one stream, as nanoGPT splits
            n_train = int((1 - cfg.val_fraction) * writer.tokens)
            counts = {"train": {"start": 0, "tokens": n_train, "documents": counts["train"]["documents"]},
                      "val": {"start": n_train, "tokens": writer.tokens - n_train}}
        if counts["train"]["tokens"] < 2 or counts["val"]["tokens"] < 2:
            n_train, n_val = counts["train"]["tokens"], counts["val"]["tokens"]
            raise DataError(f"the sources give {n_train} train and {n_val} val tokens; "
                            "training needs more text")
        manifest = {"format": FORMAT, "tokenizer": tok.to_dict(), "vocab_size": tok.vocab_size,
                    "eot_id": tok.eot_id, "dtype": dtype_for(tok.vocab_size).name, "tokens": writer.tokens,
                    "splits": counts, "shards": shards, "fingerprint": wanted}
        with atomic_write(staging / MANIFEST, "w", encoding="utf-8") as f:
            # one line: json encodes in C only without indent, and the fingerprint lists every file
            json.dump(manifest, f)
        _install(staging, out, wanted)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"{out}: {writer.tokens:,} tokens in {len(shards)} shard(s) ({counts['train']['tokens']:,} train, "
        f"{counts['val']['tokens']:,} val), vocab {tok.vocab_size}")
    return manifest, True


def _only_ours(folder: Path) -> bool:
    return all(p.name == MANIFEST or re.fullmatch(r"tokens_\d{6}\.bin", p.name) for p in folder.iterdir())


def _install(staging: Path, out: Path, wanted: dict) -> None:
    """Put the finished folder in place of ``out`` (renames: never a half-written ``out``)."""
    if fresh_manifest(out, wanted) is not None:  # a concurrent run of the same input finished first
        return
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        os.rename(out, old / "folder")
        os.rename(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staging, out)
