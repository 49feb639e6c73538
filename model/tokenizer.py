"""Tokenizers: characters (the lecture's) and GPT-2 byte-level BPE (through tiktoken, on GPT-2's own
ranks found on disk or downloaded once, model.gpt2_ranks; or carried in the checkpoint as data, model.bpe).

Both implement ``Tokenizer``; both serialise to a small plain dict stored in checkpoints.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol

import tiktoken

from model.gpt2_ranks import RanksError, load_ranks, serialize
from model.special import EOT, Unknown


class TokenizerError(ValueError):
    """A tokenizer that cannot be built: a damaged description, a missing or unreadable ranks file."""


class UnknownCharactersError(ValueError):
    """Raised for text holding characters outside a character vocabulary."""

    def __init__(self, chars: list[str]):
        self.chars = chars
        shown = ", ".join(repr(c) for c in chars)
        super().__init__(
            f"{len(chars)} character(s) not in the vocabulary: {shown}; "
            "remove them or use unknown='replace'"
        )

    def __reduce__(self):  # rebuilt from the characters, not the message (the app's child process)
        return type(self), (self.chars,)


class Tokenizer(Protocol):
    vocab_size: int
    eot_id: int

    def encode(self, text: str, unknown: Unknown = "reject", special: bool = False) -> list[int]:
        """``special``: whether the literal text ``<|endoftext|>`` is the end-of-text token. Prompts
        leave it off (typed text never injects a special token); training text may turn it on."""
        ...

    def decode(self, ids: list[int]) -> str: ...

    def token_bytes(self, token: int) -> bytes | None:
        """The bytes a byte-level token stands for; None for a character tokenizer (its ids stand
        for characters) and for special tokens."""
        ...

    def unknown_chars(self, text: str) -> list[str]: ...
    def to_dict(self) -> dict: ...


class CharTokenizer:
    """One token per character of the training corpus, plus the end-of-text marker as the last id."""

    def __init__(self, chars: str, replacement: str | None = None):
        if not isinstance(chars, str) or not chars:
            raise ValueError(f"a character vocabulary must be a non-empty string, not {chars!r:.40}")
        if len(set(chars)) != len(chars):
            raise ValueError("character vocabulary has duplicates")
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}
        self.eot_id = len(chars)
        self.vocab_size = len(chars) + 1
        # what an unknown character becomes in 'replace' mode: a space if we have one
        self.replacement = replacement or (" " if " " in self.stoi else chars[0])

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        if not text:
            raise ValueError("cannot build a character vocabulary from empty text")
        return cls("".join(sorted(set(text))))

    def unknown_chars(self, text: str) -> list[str]:
        return sorted({c for c in text if c not in self.stoi})

    def encode(self, text: str, unknown: Unknown = "reject", special: bool = False) -> list[int]:
        # one id per character: the end-of-text marker has no spelling here, whatever ``special`` says
        missing = self.unknown_chars(text)
        if missing:
            if unknown == "reject":
                raise UnknownCharactersError(missing)
            sub = self.stoi[self.replacement]
            return [self.stoi.get(c, sub) for c in text]
        return [self.stoi[c] for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(EOT if i == self.eot_id else self.chars[i] for i in ids)

    def token_bytes(self, token: int) -> None:
        return None

    def to_dict(self) -> dict:
        return {"kind": "char", "chars": self.chars}


GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


class BPETokenizer:
    """GPT-2's byte-level BPE through tiktoken, on GPT-2's ranks (model.gpt2_ranks: the path given,
    ``$GPT_BPE_RANKS``, the data folder, our cache, tiktoken's cache, a download; SHA-256 checked).
    Every byte sequence is encodable, so nothing is unknown.
    """

    def __init__(self, ranks_file: str | Path | None = None):
        try:
            ranks, source = load_ranks(ranks_file)
        except RanksError as e:
            raise TokenizerError(str(e)) from None
        self._build(ranks, source)

    @classmethod
    def from_ranks(cls, ranks: dict[bytes, int]) -> BPETokenizer:
        """A byte-level BPE over ranks made in the program (a notebook's own merges, a test's), with
        GPT-2's split pattern and its end-of-text token after the last rank. No file, no check: a
        checkpoint can only name GPT-2's own encoding, so these are for what is not saved."""
        tok = cls.__new__(cls)
        tok._build(dict(ranks), "<in memory>")
        return tok

    def _build(self, ranks: dict[bytes, int], source: str) -> None:
        self.ranks_path = source  # where the ranks were read (for messages)
        self.ranks = ranks  # token bytes -> rank, which is also its id
        # what a prepared folder records of its tokenizer (model.data.encoders); the real file's hash
        self.ranks_sha256 = hashlib.sha256(serialize(ranks)).hexdigest()
        self.eot_id = len(ranks)  # 50256 for GPT-2's
        self.vocab_size = len(ranks) + 1
        self._enc = tiktoken.Encoding(
            name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
            special_tokens={EOT: self.eot_id},
        )

    @property
    def encoding(self) -> tiktoken.Encoding:
        """The tiktoken encoding itself, for batch and NumPy encoding (model.data.encoders)."""
        return self._enc

    def unknown_chars(self, text: str) -> list[str]:
        return []

    def encode(self, text: str, unknown: Unknown = "reject", special: bool = False) -> list[int]:
        if special:
            return self._enc.encode(text, allowed_special={EOT})
        return self._enc.encode(text, allowed_special=set(), disallowed_special=())  # EOT as plain text

    def decode(self, ids: list[int]) -> str:
        return self._enc.decode(ids)

    def token_bytes(self, token: int) -> bytes | None:
        return None if token == self.eot_id else self._enc.decode_single_token_bytes(token)

    def to_dict(self) -> dict:
        return {"kind": "bpe", "encoding": "gpt2"}


def tokenizer_from_dict(d: dict, ranks_file: str | Path | None = None) -> Tokenizer:
    """Rebuild a tokenizer from ``to_dict()``'s output; TokenizerError (a ValueError) for anything else."""
    if not isinstance(d, dict):
        raise TokenizerError(f"a tokenizer must be a dict like {{'kind': 'char', 'chars': ...}}, "
                             f"not {type(d).__name__}")
    # a BPE is either tiktoken's GPT-2 encoding (ranks on disk) or carried whole as data (model.bpe)
    schema = {"char": {"kind", "chars"}, "bpe": {"kind", "encoding"},
              "bpe-data": {"kind", "vocab", "merges", "special", "eot", "pattern"}}
    kind = d.get("kind")
    if not isinstance(kind, str) or kind not in ("char", "bpe"):
        raise TokenizerError(f"unknown tokenizer kind {kind!r:.40}; expected 'char' or 'bpe'")
    if kind == "bpe" and "merges" in d:
        kind = "bpe-data"
    if set(d) != schema[kind]:
        raise TokenizerError(f"a {kind} tokenizer has the fields {sorted(schema[kind])}, "
                             f"not {sorted(map(str, d))}")
    if kind == "char":
        try:
            return CharTokenizer(d["chars"])
        except ValueError as e:
            raise TokenizerError(str(e)) from None
    if kind == "bpe-data":  # e.g. imported from Hugging Face
        from model.bpe import GPT2_SPLIT, ByteBPETokenizer

        # nothing read from a file is compiled as a regex: a crafted split pattern such as (a|aa)+$
        # backtracks exponentially, hanging a short prompt for minutes. The importer writes GPT-2's.
        if d["pattern"] != GPT2_SPLIT:
            raise TokenizerError(f"the BPE tokenizer's split pattern {str(d['pattern'])!r:.60} is not "
                                 "GPT-2's, the only one supported; re-import the model with gpt-import hf")
        try:
            return ByteBPETokenizer.from_dict(d)
        except (ValueError, TypeError, KeyError) as e:
            raise TokenizerError(f"the BPE tokenizer carried in the checkpoint is damaged ({e!s:.120})") \
                from None
    if d["encoding"] != "gpt2":
        raise TokenizerError(f"unknown BPE encoding {d['encoding']!r:.40}; only 'gpt2' is supported")
    return BPETokenizer(ranks_file)
