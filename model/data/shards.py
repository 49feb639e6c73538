"""Prepared token folders: the manifest, the shard files, their checks, and reading windows from them.

A prepared folder (written by model.data.prepare, ``gpt-prepare``) holds

  manifest.json        what the folder holds; written last, so a folder without one is not prepared
  tokens_000000.bin    raw little-endian uint16 (uint32 when the vocabulary needs it) token ids,
  tokens_000001.bin    no header: ``np.memmap(path, dtype)`` reads one (nanoGPT's .bin layout)

The shards are one token stream cut into pieces; a split is a range of that stream (train first,
then val), so windows never depend on where the stream was cut into files.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model.paths import UnsafePathError, name_inside

FORMAT = "gpt-from-scratch/tokens/1"
MANIFEST = "manifest.json"
SHARD_PATTERN = "tokens_{:06d}.bin"
# The load-time check hashes this many bytes at each end of every shard: it catches a truncated,
# replaced or re-prepared file for the cost of two small reads, where a full hash of a 17 GB corpus
# would take minutes at every start. The full SHA-256 is checked by `gpt-prepare --verify DIR`.
EDGE_BYTES = 1 << 16
SPLITS = ("train", "val")


class DataError(ValueError):
    """Training data that cannot be found, read or trusted; the message says what to do."""


def dtype_for(vocab_size: int) -> np.dtype:
    """uint16 holds ids below 65,536 (GPT-2's 50,257 fit); larger vocabularies need uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def edge_digest(path: Path) -> str:
    """SHA-256 of the file's size, first and last EDGE_BYTES: the cheap check done at every load."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(size.to_bytes(8, "little"))
    with open(path, "rb") as f:
        h.update(f.read(EDGE_BYTES))
        f.seek(max(0, size - EDGE_BYTES))
        h.update(f.read(EDGE_BYTES))
    return h.hexdigest()


def full_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


def read_manifest(folder: Path) -> dict:
    """The folder's manifest, refused with one line when it is missing or not ours."""
    path = folder / MANIFEST
    if not path.is_file():
        raise DataError(f"{folder} is not a prepared token folder (no {MANIFEST}); "
                        f"prepare it with gpt-prepare SRC --out {folder}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path} is unreadable ({e}); re-run gpt-prepare --out {folder}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path} is not a {FORMAT} manifest; re-run gpt-prepare --out {folder}")
    problem = manifest_problem(manifest)
    if problem:
        raise DataError(f"{path}: {problem}; re-run gpt-prepare --out {folder}")
    return manifest


def _count(value: object) -> bool:
    """A JSON integer >= 0 (not a bool, a float or a string of digits)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _hex(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def manifest_problem(m: dict) -> str | None:
    """What is wrong with a manifest's fields, types and counts, in a few words; None if nothing."""
    vocab, shards, splits = m.get("vocab_size"), m.get("shards"), m.get("splits")
    if not _count(vocab) or not 2 <= vocab <= 1 << 32:
        return f"vocab_size {vocab!r:.40} is not an integer from 2 to 2**32"
    if not _count(m.get("eot_id")) or m["eot_id"] >= vocab:
        return f"eot_id {m.get('eot_id')!r:.40} is not a token id below vocab_size {vocab}"
    if m.get("dtype") != dtype_for(vocab).name:
        return f"dtype {m.get('dtype')!r:.40} is not {dtype_for(vocab).name}, which vocab_size {vocab} needs"
    if not isinstance(m.get("tokenizer"), dict):
        return "it has no tokenizer"
    if not isinstance(shards, list) or not shards:
        return "shards is not a list of shard entries"
    for i, shard in enumerate(shards):
        ok = isinstance(shard, dict) and isinstance(shard.get("file"), str) and _count(shard.get("tokens")) \
            and _hex(shard.get("sha256")) and _hex(shard.get("edge_sha256"))
        if not ok:
            return f"shard entry {i} is not {{file, tokens, sha256, edge_sha256}} ({str(shard)[:60]})"
    total = sum(s["tokens"] for s in shards)
    if m.get("tokens") != total:
        return f"tokens {m.get('tokens')!r:.40} is not the sum of its shards' tokens ({total})"
    if not isinstance(splits, dict) or not all(isinstance(splits.get(n), dict) and _count(
            splits[n].get("start")) and _count(splits[n].get("tokens")) for n in SPLITS):
        return "splits is not {train: {start, tokens}, val: {start, tokens}}"
    train, val = splits["train"], splits["val"]
    if train["start"] != 0 or train["tokens"] != val["start"] or val["start"] + val["tokens"] != total \
            or train["tokens"] < 2 or val["tokens"] < 2:
        return "its split and shard counts disagree"
    return None


def check_shards(folder: Path, manifest: dict, full: bool = False) -> None:
    """Every shard is there with the size its token count implies and its recorded checksum: the edge
    digest (cheap, at every load) or, with ``full``, the SHA-256 of the whole file."""
    itemsize = np.dtype(manifest["dtype"]).itemsize
    for shard in manifest["shards"]:
        path = shard_path(folder, shard["file"])
        want = int(shard["tokens"]) * itemsize
        if not path.is_file():
            raise DataError(f"{path} is missing; re-run gpt-prepare --out {folder}")
        if path.stat().st_size != want:
            raise DataError(f"{path} has {path.stat().st_size:,} bytes, its manifest says {want:,}; "
                            f"the folder was changed after preparing: re-run gpt-prepare --out {folder}")
        key, digest = ("sha256", full_digest) if full else ("edge_sha256", edge_digest)
        if digest(path) != shard[key]:
            raise DataError(f"{path} does not match its checksum in {MANIFEST}; "
                            f"re-run gpt-prepare --out {folder}")
        if full:  # every id below the vocabulary, or training would index past its embedding
            ids = np.memmap(path, dtype=np.dtype(manifest["dtype"]).newbyteorder("<"), mode="r")
            for begin in range(0, len(ids), 1 << 24):
                check_ids(torch.from_numpy(np.asarray(ids[begin:begin + (1 << 24)]).astype(np.int64)),
                          manifest["vocab_size"], str(path))


def check_ids(batch: torch.Tensor, vocab_size: int, where: str) -> None:
    """Every token id of ``batch`` is in 0..vocab_size-1, else DataError naming ``where`` (the shard
    or folder the ids came from). Cheap: one min and one max over the batch."""
    if batch.numel() == 0:
        return
    low, high = int(batch.min()), int(batch.max())
    if low < 0 or high >= vocab_size:
        bad = high if high >= vocab_size else low
        raise DataError(f"{where}: token id {bad} is outside the vocabulary (0..{vocab_size - 1}); the "
                        "data was changed after preparing: check the folder with gpt-prepare --verify DIR, "
                        "then prepare it again")


def shard_path(folder: Path, name: object) -> Path:
    """A shard file the manifest names: a plain name inside ``folder``, never a path out of it."""
    try:
        return name_inside(folder, name, str(folder / MANIFEST))
    except UnsafePathError as e:
        raise DataError(f"{e}; re-run gpt-prepare --out {folder}") from None


class TokenSplit:
    """A split of a prepared folder: a range of its token stream, read through memory maps.

    The maps are opened for each read and dropped after it (as nanoGPT does): pages of a long-lived
    map that were read stay counted in the process's resident memory, so over a long run it would
    grow towards the corpus size; a fresh map per batch keeps it at the batch's few pages."""

    def __init__(self, paths: list[Path], counts: list[int], dtype: np.dtype, start: int, length: int):
        self.paths, self.dtype = paths, dtype
        self.offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])  # shard k: [o[k], o[k+1])
        self.start, self.length = start, length

    def __len__(self) -> int:
        return self.length

    def read(self, begin: int, end: int, maps: dict | None = None) -> np.ndarray:
        """Tokens [begin, end) of this split as int64, across shard boundaries if need be."""
        maps = {} if maps is None else maps
        lo, hi = self.start + begin, self.start + end  # positions in the whole stream
        parts = []
        k = int(np.searchsorted(self.offsets, lo, side="right")) - 1
        while lo < hi:
            if k not in maps:
                maps[k] = np.memmap(self.paths[k], dtype=self.dtype, mode="r")
            take = min(hi, int(self.offsets[k + 1])) - lo
            first = lo - int(self.offsets[k])
            parts.append(maps[k][first:first + take])
            lo, k = lo + take, k + 1
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    def windows(self, starts: torch.Tensor, length: int) -> torch.Tensor:
        """(B,) starts -> (B, length) int64 token ids: tokens [s, s + length) of the split each."""
        maps: dict = {}  # one map per shard touched by this batch, unmapped when it returns
        rows = [self.read(int(s), int(s) + length, maps) for s in starts]
        return torch.from_numpy(np.stack(rows))

    def __getitem__(self, index: slice) -> torch.Tensor:
        """A slice as an int64 tensor (reports read whole splits this way)."""
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError("a TokenSplit takes contiguous slices only")
        begin, end, _ = index.indices(self.length)
        return torch.from_numpy(self.read(begin, max(begin, end)))


@dataclass(frozen=True)
class TokenData:
    """A prepared folder opened for training: its manifest and its two splits."""

    folder: Path
    manifest: dict
    train: TokenSplit
    val: TokenSplit

    def split(self, name: str) -> TokenSplit:
        return self.train if name == "train" else self.val

    @property
    def tokenizer_dict(self) -> dict:
        return self.manifest["tokenizer"]


def open_prepared(folder: str | Path, full_check: bool = False) -> TokenData:
    """Open a prepared folder after checking its manifest and shards (see check_shards)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    check_shards(folder, manifest, full=full_check)
    paths = [shard_path(folder, s["file"]) for s in manifest["shards"]]
    counts = [int(s["tokens"]) for s in manifest["shards"]]
    dtype = np.dtype(manifest["dtype"])
    train, val = (TokenSplit(paths, counts, dtype, int(manifest["splits"][n]["start"]),
                             int(manifest["splits"][n]["tokens"])) for n in SPLITS)
    return TokenData(folder, manifest, train, val)
