"""Byte-level BPE carried as plain data: GPT-2's algorithm over a vocabulary and a merge list.

The checkpoint holds the tokenizer itself (token strings, merges, special tokens), so a model
imported from Hugging Face needs no ranks file or download at run time. The algorithm is GPT-2's
``encoder.py`` (and the ``tokenizers`` library's BPE): split the text on special tokens, cut each
part with the pre-tokenizer pattern, map its UTF-8 bytes to printable characters, then merge the
adjacent pair with the lowest merge index until none is left.

Tokens are stored as the byte-to-unicode strings of ``vocab.json`` (``"Ġthe"`` is b" the"), which
JSON and ``torch.load(weights_only=True)`` both carry as they are.
"""

from __future__ import annotations

from functools import lru_cache

from model.special import EOT, Unknown

# GPT-2's pre-tokenizer, as the tokenizers library's ByteLevel(use_regex=True) writes it
GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 bytes to printable characters (space -> 'Ġ')."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)  # the unprintable bytes move past Latin-1
            n += 1
    return dict(zip(printable, map(chr, chars), strict=True))


class ByteBPETokenizer:
    """model.tokenizer.Tokenizer over a byte-level BPE given as data.

    ``vocab``: token strings in id order (ids 0..n-1, no gaps); ``merges``: "left right" pairs,
    highest priority first; ``special``: text -> id for tokens matched before BPE (end of text)."""

    def __init__(self, vocab: list[str], merges: list[str], special: dict[str, int],
                 eot: str = EOT, pattern: str = GPT2_SPLIT):
        import regex  # tiktoken's dependency: \p{L} classes, which re lacks

        if pattern != GPT2_SPLIT:  # a pattern from a file could backtrack for hours: (a|aa)+$
            raise ValueError(f"a BPE split pattern {pattern!r:.60} is not GPT-2's, the only one supported")
        self.vocab, self.merges, self.special = list(vocab), list(merges), dict(special)
        self.pattern = pattern
        self.stoi = {t: i for i, t in enumerate(self.vocab)}
        if len(self.stoi) != len(self.vocab):
            raise ValueError("BPE vocabulary has duplicate tokens")
        self.ranks: dict[tuple[str, str], int] = {}
        for i, merge in enumerate(self.merges):
            left, _, right = merge.partition(" ")
            if not right or left + right not in self.stoi:
                raise ValueError(f"BPE merge {i} {merge!r} does not make a token of the vocabulary")
            self.ranks.setdefault((left, right), i)
        for text, i in self.special.items():
            if not 0 <= i < len(self.vocab) + len(self.special):
                raise ValueError(f"special token {text!r} has id {i}, outside the vocabulary")
        if eot not in self.special:
            raise ValueError(f"BPE tokenizer has no {eot!r} special token; add it (the end-of-text marker)")
        self.eot, self.eot_id = eot, self.special[eot]
        self.vocab_size = max([len(self.vocab) - 1, *self.special.values()]) + 1
        self.byte_char = bytes_to_unicode()
        self.char_byte = {c: b for b, c in self.byte_char.items()}
        self.itos = dict(enumerate(self.vocab)) | {i: t for t, i in self.special.items()}
        self.special_ids = set(self.special.values())
        self._split = regex.compile(pattern)
        # longest first, so one special token that prefixes another does not win
        names = sorted(self.special, key=len, reverse=True)
        self._specials = regex.compile("|".join(map(regex.escape, names)))
        self._cache: dict[str, list[int]] = {}

    def unknown_chars(self, text: str) -> list[str]:
        return []  # every byte has a token

    def encode(self, text: str, unknown: Unknown = "reject", special: bool = False) -> list[int]:
        """Every byte has a token, so nothing is unknown. ``special``: text that spells a special
        token (``<|endoftext|>``) becomes that token, as training text may; a prompt's stays text."""
        if not special:
            return self._encode_ordinary(text)
        ids: list[int] = []
        start = 0
        for m in self._specials.finditer(text):
            ids += self._encode_ordinary(text[start:m.start()])
            ids.append(self.special[m.group()])
            start = m.end()
        return ids + self._encode_ordinary(text[start:])

    def _encode_ordinary(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece in self._split.findall(text):
            cached = self._cache.get(piece)
            if cached is None:
                word = "".join(self.byte_char[b] for b in piece.encode("utf-8"))
                cached = [self.stoi[t] for t in self._bpe(word)]
                if len(self._cache) < 100_000:  # words repeat; bound the memory all the same
                    self._cache[piece] = cached
            ids += cached
        return ids

    def _bpe(self, word: str) -> list[str]:
        """Merge the adjacent pair with the lowest merge index, every occurrence left to right."""
        parts = list(word)
        while len(parts) > 1:
            pairs = {(a, b) for a, b in zip(parts, parts[1:], strict=False)}
            best = min(pairs, key=lambda p: self.ranks.get(p, len(self.ranks)))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return parts

    def tokens_not_made_by_merges(self) -> list[str]:
        """The tokens that BPE over their own bytes does not end in (none for GPT-2's): where a
        tokenizer takes a word that is a token whole (tokenizers' ``ignore_merges``), it differs
        from this one on exactly these words."""
        return [t for t in self.vocab if len(t) > 1 and self._bpe(t) != [t]]

    def piece(self, token: int) -> str:
        """One token as vocab.json spells it ("Ġthe"), or the special token's text."""
        return self.itos[token]

    def token_bytes(self, token: int) -> bytes | None:
        if token in self.special_ids:
            return None
        return bytes(self.char_byte[c] for c in self.itos.get(token, ""))

    def decode(self, ids: list[int]) -> str:
        out, run = [], bytearray()  # bytes of ordinary tokens, joined so split characters heal
        for i in ids:
            if i in self.special_ids:
                out.append(run.decode("utf-8", errors="replace") + self.itos[i])
                run = bytearray()
            else:  # an id past the vocabulary (a padded embedding) decodes to nothing
                run += self.token_bytes(i)
        return "".join(out) + run.decode("utf-8", errors="replace")

    def to_dict(self) -> dict:
        return {"kind": "bpe", "vocab": self.vocab, "merges": self.merges, "special": self.special,
                "eot": self.eot, "pattern": self.pattern}

    @classmethod
    def from_dict(cls, d: dict) -> ByteBPETokenizer:
        return cls(d["vocab"], d["merges"], d["special"], d.get("eot", EOT), d.get("pattern", GPT2_SPLIT))
