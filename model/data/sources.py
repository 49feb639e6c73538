"""What ``gpt-prepare`` reads: sources expanded into files and datasets, read as documents.

A source is a text file, a folder (every ``*.txt`` below it), a glob, or a Hugging Face dataset
(``hf:ID[:CONFIG][@SPLIT]``, streamed; needs the optional ``datasets`` package). Each file or
dataset row is one document, read as (text, bytes read) chunks so a large file is never whole in
memory; model.data.encoders cuts documents into pieces and model.data.prepare writes their tokens.
"""

from __future__ import annotations

import codecs
import glob
import io
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from model.data.shards import DataError

READ_BYTES = 1 << 20
HF_PREFIX = "hf:"


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
        # sorted by parts, which is Path's own order, without a Path comparison per step of the sort
        if path.is_dir():
            matches = sorted((p for p in path.rglob("*.txt") if p.is_file()), key=_parts)
        elif path.is_file():
            matches = [path]
        else:
            matches = sorted((Path(p) for p in glob.glob(src, recursive=True) if Path(p).is_file()),
                             key=_parts)
        if not matches:
            raise DataError(f"{src} matches no text file; give files, folders of *.txt, globs or hf:DATASET")
        found.extend(matches)
    return found


def _parts(path: Path) -> tuple[str, ...]:
    return path.parts


def fingerprint(sources: list[Path | HFSource], text_field: str, max_documents: int | None) -> list[dict]:
    """What identifies the input: each file's path, size and modification time; each dataset's name."""
    out = []
    for s in sources:
        if isinstance(s, HFSource):
            out.append({"dataset": s.dataset, "config": s.config, "split": s.split,
                        "text_field": text_field, "max_documents": max_documents})
        else:
            st = s.stat()
            # absolute, not resolved: it names the file for this check only, and resolving would lstat
            # every folder on every file's path
            out.append({"path": os.path.abspath(s), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns})
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


def documents(sources: list[Path | HFSource], text_field: str, max_documents: int | None
              ) -> Iterator[Document]:
    """Each file, or each row of each dataset (the first ``max_documents``), as one document."""
    for s in sources:
        if isinstance(s, HFSource):
            yield from hf_documents(s, text_field, max_documents)
        else:
            yield read_file(s)
