"""Tokenize a corpus once into memory-mappable shards (``gpt-prepare``; model.shards reads them).

Sources are text files, folders (every ``*.txt`` below them), globs, or Hugging Face datasets
(``hf:ID[:CONFIG][@SPLIT]``, streamed; needs the optional ``datasets`` package). Each file or
dataset row is one document; an end-of-text token goes between documents. Text is read in pieces
of about a MiB and the pieces are encoded on all cores at once (tiktoken's Rust encoder releases
the GIL, as in its ``encode_ordinary_batch``); the main thread reads, decodes and writes meanwhile.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.atomic import atomic_write
from model.paths import ranks_path
from model.shards import (
    FORMAT,
    MANIFEST,
    SHARD_PATTERN,
    DataError,
    check_shards,
    dtype_for,
    edge_digest,
    read_manifest,
)
from model.tokenizer import BPETokenizer, CharTokenizer, Tokenizer, tokenizer_from_dict

PIECE_CHARS = 1 << 20  # text per unit of parallel work: large enough to amortise a task, small in memory
READ_BYTES = 1 << 20
HF_PREFIX = "hf:"


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


# -- sources -------------------------------------------------------------------------------------

Document = Iterator[tuple[str, int]]  # one document as (text, bytes read) chunks


@dataclass(frozen=True)
class HFSource:
    dataset: str
    config: str | None
    split: str

    @classmethod
    def parse(cls, src: str) -> HFSource:
        spec, _, split = src.removeprefix(HF_PREFIX).partition("@")
        dataset, _, config = spec.partition(":")
        if not dataset:
            raise DataError(f"{src}: write a Hugging Face source as hf:ID[:CONFIG][@SPLIT]")
        return cls(dataset, config or None, split or "train")


def expand(sources: Iterable[str]) -> list[Path | HFSource]:
    """Files as given, folders as every *.txt below them, globs as their matches (sorted)."""
    found: list[Path | HFSource] = []
    for src in sources:
        if src.startswith(HF_PREFIX):
            found.append(HFSource.parse(src))
            continue
        path = Path(src)
        if path.is_dir():
            matches = sorted(p for p in path.rglob("*.txt") if p.is_file())
        elif path.is_file():
            matches = [path]
        else:
            matches = sorted(Path(p) for p in glob.glob(src, recursive=True) if Path(p).is_file())
        if not matches:
            raise DataError(f"{src} matches no text file; give files, folders of *.txt, globs or hf:DATASET")
        found.extend(matches)
    return found


def fingerprint(sources: list[Path | HFSource], cfg: PrepareConfig) -> list[dict]:
    """What identifies the input: each file's path, size and modification time; each dataset's name."""
    out = []
    for s in sources:
        if isinstance(s, HFSource):
            out.append({"dataset": s.dataset, "config": s.config, "split": s.split,
                        "text_field": cfg.text_field, "max_documents": cfg.max_documents})
        else:
            st = s.stat()
            out.append({"path": str(s.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def read_file(path: Path) -> Document:
    """UTF-8 text in chunks, newlines translated as Python's text mode does (\\r\\n -> \\n)."""
    decoder = io.IncrementalNewlineDecoder(codecs.getincrementaldecoder("utf-8")(), translate=True)
    done = 0
    with open(path, "rb") as f:
        while True:
            raw = f.read(READ_BYTES)
            try:
                text = decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as e:
                raise DataError(f"{path} is not UTF-8 text ({e.reason} near byte {done + e.start}); "
                                "convert it or leave it out") from None
            done += len(raw)
            yield text, len(raw)
            if not raw:
                return


def hf_documents(src: HFSource, text_field: str, limit: int | None) -> Iterator[Document]:
    try:
        import datasets
    except ImportError:
        raise DataError(f"{HF_PREFIX}{src.dataset} needs the datasets package: "
                        "pip install 'gpt-from-scratch[hf]'") from None
    try:
        rows = iter(datasets.load_dataset(src.dataset, src.config, split=src.split, streaming=True))
        first = next(rows, None)
    except Exception as e:  # offline, unknown name, gated dataset: many exception types
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataError(f"cannot stream Hugging Face dataset {src.dataset} ({reason}); check the name "
                        "and that this machine is online, or prepare local text files") from None
    if first is None:
        return
    if text_field not in first:
        raise DataError(f"{src.dataset} rows have no {text_field!r} field (they have {sorted(first)}); "
                        "pass --text-field")
    for i, row in enumerate(_chain(first, rows, src)):
        if limit is not None and i >= limit:
            return
        text = row[text_field]
        yield iter([(text, len(text.encode("utf-8", "surrogatepass")))])


def _chain(first: dict, rest: Iterator[dict], src: HFSource) -> Iterator[dict]:
    yield first
    n = 1
    try:
        for row in rest:
            yield row
            n += 1
    except Exception as e:  # the connection dropped mid-stream, most likely
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataError(f"the stream of {src.dataset} failed after {n:,} documents ({reason}); run the "
                        "command again (the output folder is as it was)") from None


def documents(sources: list[Path | HFSource], cfg: PrepareConfig) -> Iterator[Document]:
    for s in sources:
        if isinstance(s, HFSource):
            yield from hf_documents(s, cfg.text_field, cfg.max_documents)
        else:
            yield read_file(s)


# -- pieces: documents cut where the tokenizer gives the same tokens as for the whole ------------

@dataclass(frozen=True)
class Piece:
    text: str
    starts_document: bool
    nbytes: int


# GPT-2's pre-tokenizer never joins text across these cuts: before a space between two non-spaces
# (the space starts the next word's piece, ` ?\p{L}+`), and after a newline between two non-spaces
# (a lone newline is its own piece). Elsewhere (inside a run of spaces or newlines) it might.
BPE_CUT = re.compile(r"(?<=\S)(?= \S)|(?<=\S\n)(?=\S)")
CUT_WINDOW = 1 << 16


def bpe_cut(text: str) -> int | None:
    """The last place in ``text`` where it can be cut without changing its BPE tokens, or None."""
    base = max(0, len(text) - CUT_WINDOW)
    last = None
    for m in BPE_CUT.finditer(text, base):
        last = m.start()
    if last is None and base > 0:  # no cut near the end: look further back
        for m in BPE_CUT.finditer(text):
            last = m.start()
    return last or None  # a cut at 0 would make an empty piece


def char_cut(text: str) -> int:
    return len(text)  # characters are independent: any cut is safe


def pieces(docs: Iterable[Document], cut: Callable[[str], int | None],
           piece_chars: int | None = None) -> Iterator[Piece]:
    """Each document's text in pieces of about ``piece_chars``, cut only where ``cut`` allows."""
    piece_chars = piece_chars or PIECE_CHARS
    for doc in docs:
        buf, nbytes, first = "", 0, True
        for text, n in doc:
            buf, nbytes = buf + text, nbytes + n
            while len(buf) >= piece_chars and (at := cut(buf[: 2 * piece_chars])):
                yield Piece(buf[:at], first, nbytes)
                buf, nbytes, first = buf[at:], 0, False
        if buf or nbytes:
            yield Piece(buf, first, nbytes)


# -- tokenizers ----------------------------------------------------------------------------------

class CharEncoder:
    """Characters -> ids through a lookup table over all code points: NumPy speed, no Python loop.
    Characters outside the vocabulary become the tokenizer's replacement (as training always did)."""

    def __init__(self, tok: CharTokenizer):
        self.table = np.full(0x110000, tok.stoi[tok.replacement], dtype=np.uint32)
        for c, i in tok.stoi.items():
            self.table[ord(c)] = i

    def __call__(self, text: str) -> np.ndarray:
        return self.table[np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)]


class BPEEncoder:
    def __init__(self, tok: BPETokenizer):
        self.encoding = tok.encoding

    def __call__(self, text: str) -> np.ndarray:
        # encode_ordinary into a NumPy buffer: text that spells <|endoftext|> is not the token
        return self.encoding.encode_to_numpy(text, disallowed_special=())


class TokenizerEncoder:
    """Any other tokenizer (a byte-level BPE carried as data, as imported from Hugging Face): its own
    encode, piece by piece."""

    def __init__(self, tok: Tokenizer):
        self.tok = tok

    def __call__(self, text: str) -> np.ndarray:
        # as the other encoders: text that spells <|endoftext|> is text, not the token
        return np.asarray(self.tok.encode(text, "replace"), dtype=np.uint32)


def encoder_for(tok: Tokenizer) -> Callable[[str], np.ndarray]:
    if isinstance(tok, BPETokenizer):
        return BPEEncoder(tok)
    return CharEncoder(tok) if isinstance(tok, CharTokenizer) else TokenizerEncoder(tok)


def tokenizer_identity(tok: Tokenizer) -> dict:
    """The tokenizer as stored, plus the ranks file's checksum for BPE (the dict names no file)."""
    d = tok.to_dict()
    if isinstance(tok, BPETokenizer):
        d = d | {"ranks_sha256": hashlib.sha256(Path(tok.ranks_path).read_bytes()).hexdigest()}
    return d


def resolve_tokenizer(spec: str) -> Tokenizer | None:
    """``gpt2`` -> the BPE tokenizer; a checkpoint path -> its tokenizer; ``char`` -> None (built
    from the corpus)."""
    if spec == "char":
        return None
    if spec == "gpt2":
        try:
            return BPETokenizer()
        except FileNotFoundError as e:
            raise DataError(str(e)) from None
    path = Path(spec)
    if not path.is_file():
        raise DataError(f"--tokenizer {spec}: not char, gpt2 or an existing checkpoint file")
    from model.checkpoint import load  # only when a checkpoint is named: it imports the model

    try:
        return tokenizer_from_dict(load(path)["tokenizer"], ranks_path())
    except (ValueError, FileNotFoundError) as e:
        raise DataError(f"--tokenizer {spec}: {e}") from None


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

    def __init__(self, folder: Path, dtype: np.dtype, shard_tokens: int):
        self.folder, self.dtype, self.shard_tokens = folder, dtype, shard_tokens
        self.shards: list[dict] = []
        self.tokens = 0
        self._file = None

    def write(self, ids: np.ndarray) -> None:
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
        self._close_file()
        return self.shards


def encode_stream(parts: Iterable[Piece], encode: Callable[[str], np.ndarray], workers: int
                  ) -> Iterator[tuple[Piece, np.ndarray]]:
    """Encode pieces on ``workers`` threads, in order, at most 2 x workers pieces ahead of the reader."""
    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        for piece in parts:
            pending.append((piece, pool.submit(encode, piece.text)))
            if len(pending) >= 2 * workers:
                piece, future = pending.popleft()
                yield piece, future.result()
        while pending:
            piece, future = pending.popleft()
            yield piece, future.result()


def char_vocabulary(docs: Iterable[Document], tick: Callable[[int, int], None]) -> CharTokenizer:
    """One streaming pass: the sorted set of characters (what CharTokenizer.from_text builds)."""
    chars: set[str] = set()
    for piece in pieces(docs, char_cut):
        chars.update(piece.text)
        tick(piece.nbytes, 0)
    if not chars:
        raise DataError("the sources hold no text; training needs some")
    return CharTokenizer("".join(sorted(chars)))


# -- the whole preparation -----------------------------------------------------------------------

def is_fresh(out: Path, wanted: dict) -> bool:
    """``out`` already holds this preparation of this input, its shards intact (the cheap check)."""
    try:
        manifest = read_manifest(out)
        check_shards(out, manifest)
    except DataError:
        return False
    return manifest.get("fingerprint") == wanted


def prepare(cfg: PrepareConfig, log: Callable[[str], None] = print,
            tokenizer: Tokenizer | None = None) -> tuple[dict, bool]:
    """Tokenize cfg.sources into cfg.out -> (manifest, whether anything was written). Unchanged input
    already prepared the same way is a no-op. ``tokenizer`` overrides cfg.tokenizer (training's resume).

    The shards are written in a temp folder beside ``out`` that takes its place when complete, so an
    interrupted run leaves the old folder (or none) and a concurrent run of the same input is harmless."""
    out = Path(cfg.out)
    train_src, val_src = expand(cfg.sources), expand(cfg.val_sources)
    tok = tokenizer or resolve_tokenizer(cfg.tokenizer)
    wanted = {"train": fingerprint(train_src, cfg), "val": fingerprint(val_src, cfg),
              "tokenizer": tokenizer_identity(tok) if tok else "char",
              "val_fraction": None if val_src else cfg.val_fraction, "shard_tokens": cfg.shard_tokens,
              "format": FORMAT}
    if is_fresh(out, wanted):
        log(f"{out} is up to date ({MANIFEST} matches the input); nothing to do")
        return read_manifest(out), False
    if out.exists() and not _only_ours(out):
        raise DataError(f"{out} holds files gpt-prepare did not write; choose an empty or new --out folder")
    workers = cfg.workers or os.cpu_count() or 1
    sized = [s for s in train_src + val_src if isinstance(s, Path)]
    total = None if len(sized) < len(train_src) + len(val_src) else sum(p.stat().st_size for p in sized)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))  # unique per run
    try:
        with PrepareProgress(total, cfg.progress) as bar:
            if tok is None:
                tok = char_vocabulary(documents(train_src + val_src, cfg), bar.task("vocabulary"))
            writer = ShardWriter(staging, dtype_for(tok.vocab_size), cfg.shard_tokens)
            tick = bar.task("tokenize")
            counts = {}
            for name, src in (("train", train_src), ("val", val_src)):
                start, docs = writer.tokens, 0
                # every BPE here pre-tokenizes as GPT-2 does
                cut = char_cut if isinstance(tok, CharTokenizer) else bpe_cut
                for piece, ids in encode_stream(pieces(documents(src, cfg), cut), encoder_for(tok), workers):
                    if piece.starts_document:
                        if docs:  # between documents, not before the first
                            writer.write(np.array([tok.eot_id]))
                        docs += 1
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
            json.dump(manifest, f, indent=1)
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
    if is_fresh(out, wanted):  # a concurrent run of the same input finished first: keep its folder
        return
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        os.rename(out, old / "folder")
        os.rename(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staging, out)
