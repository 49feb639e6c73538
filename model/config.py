"""Model configuration: one frozen dataclass and the named presets built from it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

Attention = Literal["explicit", "fused"]

# Upper bounds, far above any model this project trains, so that a config read from a file cannot
# ask for absurd allocations: every attention layer holds a block_size^2 causal mask (1 GB at the
# bound), and the embeddings are vocab_size and block_size rows of n_embd floats.
LIMITS = {"vocab_size": 1 << 21, "block_size": 1 << 15, "n_layer": 1024, "n_head": 1024, "n_embd": 1 << 16}


@dataclass(frozen=True)
class GPTConfig:
    """Shape of a GPT (or of the bigram baseline when ``kind == "bigram"``).

    Stored in checkpoints as ``dataclasses.asdict(config)`` and rebuilt with ``GPTConfig(**d)``.
    """

    kind: Literal["gpt", "bigram"] = "gpt"
    vocab_size: int = 66  # Tiny Shakespeare: 65 characters + the end-of-text marker
    block_size: int = 256  # longest context; position embeddings are learned up to here
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.2
    bias: bool = True  # biases in Linear layers and LayerNorms, as in nanoGPT
    qkv_bias: bool = True  # bias on the query/key/value projection (off for our gpt2-124m)
    tie_weights: bool = True  # lm_head shares the token embedding matrix
    attention: Attention = "fused"  # "explicit" is the lecture's step-by-step maths

    def __post_init__(self) -> None:
        if self.kind not in ("gpt", "bigram"):
            raise ValueError(f"kind must be 'gpt' or 'bigram', not {self.kind!r}")
        for name, most in LIMITS.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
            if value > most:
                raise ValueError(f"{name} must be at most {most}, got {value}")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"n_embd must be divisible by n_head: {self.n_embd} % {self.n_head} != 0; "
                f"pick n_embd as a multiple of {self.n_head}"
            )
        for name in ("bias", "qkv_bias", "tie_weights"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.dropout, (int, float)) or isinstance(self.dropout, bool) \
                or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.attention not in ("explicit", "fused"):
            raise ValueError(f"attention must be 'explicit' or 'fused', not {self.attention!r}")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    def replace(self, **changes: object) -> GPTConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GPTConfig:
        if not isinstance(d, dict):
            raise ValueError(f"config must be a dict of GPTConfig fields, not {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = {str(k) for k in d} - known
        if unknown:
            raise ValueError(f"unknown config fields {sorted(unknown)}: checkpoint from a newer version?")
        return cls(**d)


PRESETS: dict[str, GPTConfig] = {
    # The lecture's / nanoGPT's train_shakespeare_char model: ~10.7M parameters.
    "shakespeare-char": GPTConfig(),
    "mini-13m": GPTConfig(n_layer=8),
    # GPT-2 small: 124.4M parameters with the tied embedding.
    "gpt2-124m": GPTConfig(
        vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768,
        dropout=0.1, qkv_bias=False,
    ),
    # Small enough to train in minutes on a laptop CPU (nanoGPT's CPU recipe, block 64 -> 128).
    "cpu": GPTConfig(block_size=128, n_layer=4, n_head=4, n_embd=128, dropout=0.0),
    "bigram": GPTConfig(kind="bigram", block_size=8, n_layer=1, n_head=1, n_embd=1, dropout=0.0),
}


def preset(name: str) -> GPTConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
