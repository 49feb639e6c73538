"""Text to token ids for ``gpt-prepare``: the tokenizer to use, documents cut into pieces that
encode as the whole does, and encoders that run those pieces on every core at once.

Text is encoded in pieces of about a MiB on a thread pool (tiktoken's Rust encoder releases the GIL,
as in its ``encode_ordinary_batch``; characters go through a NumPy lookup table), in order, while
the main thread reads, decodes and writes (model.data.prepare). Short documents, the usual case (web
pages, files of a few KB), are joined into one piece with the end-of-text marker between them when
the encoder can read that marker as the token: tiktoken splits at special tokens before anything
else, so each document still encodes on its own, and a piece costs one call and one task instead
of one per document.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from model.data.shards import DataError
from model.data.sources import Document
from model.special import EOT
from model.tokenizer import BPETokenizer, CharTokenizer, Tokenizer, tokenizer_from_dict

PIECE_CHARS = 1 << 20  # text per unit of parallel work: large enough to amortise a task, small in memory


# -- pieces: documents cut where the tokenizer gives the same tokens as for the whole ------------

@dataclass(frozen=True)
class Piece:
    text: str
    starts_document: bool
    nbytes: int
    documents: int = 1  # > 1: that many whole documents joined by the encoder's separator


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


class _Group:
    """Whole short documents waiting to be joined into one piece."""

    def __init__(self, separator: str):
        self.separator = separator
        self.texts: list[str] = []
        self.chars = self.nbytes = 0

    def add(self, text: str, nbytes: int) -> None:
        self.texts.append(text)
        self.chars, self.nbytes = self.chars + len(text), self.nbytes + nbytes

    def take(self) -> Iterator[Piece]:
        """The group as one piece (none if empty), and the group emptied."""
        if self.texts:
            yield Piece(self.separator.join(self.texts), True, self.nbytes, len(self.texts))
        self.texts, self.chars, self.nbytes = [], 0, 0


def pieces(docs: Iterable[Document], cut: Callable[[str], int | None],
           piece_chars: int | None = None, separator: str | None = None) -> Iterator[Piece]:
    """Each document's text in pieces of about ``piece_chars``, cut only where ``cut`` allows.

    With a ``separator`` (the text the encoder reads as the end-of-text token), whole documents
    shorter than a piece are joined by it into pieces of about ``piece_chars``; a document that
    spells the separator itself is never joined, so its text stays text."""
    piece_chars = piece_chars or PIECE_CHARS
    group = _Group(separator or "")
    for doc in docs:
        buf, nbytes, first = "", 0, True
        for text, n in doc:
            buf, nbytes = buf + text, nbytes + n
            while len(buf) >= piece_chars and (at := cut(buf[: 2 * piece_chars])):
                yield from group.take()  # documents stay in order
                yield Piece(buf[:at], first, nbytes)
                buf, nbytes, first = buf[at:], 0, False
        if not (buf or nbytes):
            continue
        if separator and first and separator not in buf:
            group.add(buf, nbytes)
            if group.chars >= piece_chars:
                yield from group.take()
            continue
        yield from group.take()
        yield Piece(buf, first, nbytes)
    yield from group.take()


# -- tokenizers and their encoders ---------------------------------------------------------------

class Encoder(Protocol):
    """A piece's text -> its token ids. ``separator``: text that the encoder reads as the end-of-text
    token when asked to (``joined``), so whole documents can share a piece; None if it has none."""

    separator: str | None

    def __call__(self, text: str, joined: bool = False) -> np.ndarray: ...


class CharEncoder:
    """Characters -> ids through a lookup table over all code points: NumPy speed, no Python loop.
    Characters outside the vocabulary become the tokenizer's replacement (as training always did)."""

    separator = None  # a document costs one table lookup: nothing to gain from joining

    def __init__(self, tok: CharTokenizer):
        self.table = np.full(0x110000, tok.stoi[tok.replacement], dtype=np.uint32)
        for c, i in tok.stoi.items():
            self.table[ord(c)] = i

    def __call__(self, text: str, joined: bool = False) -> np.ndarray:
        return self.table[np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)]


class BPEEncoder:
    separator = EOT

    def __init__(self, tok: BPETokenizer):
        self.encoding = tok.encoding

    def __call__(self, text: str, joined: bool = False) -> np.ndarray:
        # into a NumPy buffer; text that spells <|endoftext|> is not the token, except the separators
        # of a joined piece (pieces() never joins a document that spells it)
        return self.encoding.encode_to_numpy(text, allowed_special={EOT} if joined else set(),
                                             disallowed_special=())


class TokenizerEncoder:
    """Any other tokenizer (a byte-level BPE carried as data, as imported from Hugging Face): its own
    encode, piece by piece."""

    separator = None

    def __init__(self, tok: Tokenizer):
        self.tok = tok

    def __call__(self, text: str, joined: bool = False) -> np.ndarray:
        # as the other encoders: text that spells <|endoftext|> is text, not the token
        return np.asarray(self.tok.encode(text, "replace"), dtype=np.uint32)


def encoder_for(tok: Tokenizer) -> Encoder:
    if isinstance(tok, BPETokenizer):
        return BPEEncoder(tok)
    return CharEncoder(tok) if isinstance(tok, CharTokenizer) else TokenizerEncoder(tok)


def tokenizer_identity(tok: Tokenizer) -> dict:
    """The tokenizer as stored, plus the ranks file's checksum for BPE (the dict names no file)."""
    d = tok.to_dict()
    if isinstance(tok, BPETokenizer):
        d = d | {"ranks_sha256": tok.ranks_sha256}
    return d


def resolve_tokenizer(spec: str) -> Tokenizer | None:
    """``gpt2`` -> the BPE tokenizer; a checkpoint path -> its tokenizer; ``char`` -> None (built
    from the corpus)."""
    if spec == "char":
        return None
    if spec == "gpt2":
        return BPETokenizer()  # found as model.gpt2_ranks says (gpt-prepare --ranks PATH first)
    path = Path(spec)
    if not path.is_file():
        raise DataError(f"--tokenizer {spec}: not char, gpt2 or an existing checkpoint file")
    from model.checkpoint import load  # only when a checkpoint is named: it imports the model

    try:
        return tokenizer_from_dict(load(path)["tokenizer"])
    except (ValueError, FileNotFoundError) as e:
        raise DataError(f"--tokenizer {spec}: {e}") from None


# -- encoding on every core ----------------------------------------------------------------------

def encode_stream(parts: Iterable[Piece], encode: Encoder, workers: int
                  ) -> Iterator[tuple[Piece, np.ndarray]]:
    """Encode pieces on ``workers`` threads, in order, at most 2 x workers pieces ahead of the reader."""
    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        for piece in parts:
            pending.append((piece, pool.submit(encode, piece.text, piece.documents > 1)))
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
