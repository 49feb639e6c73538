"""Model configuration: one frozen dataclass and the named presets built from it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

Attention = Literal["explicit", "fused"]
Activation = Literal["gelu", "gelu_tanh"]

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
    # the MLP's GELU: exact (erf), or the tanh approximation GPT-2 was trained with ("gelu_new")
    activation: Activation = "gelu"

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
        if self.attention == "auto":
            raise ValueError("attention 'auto' is chosen by gpt-train --attention auto at the start of a run "
                             "(model.train.attention_choice); a model needs 'explicit' or 'fused'")
        if self.attention not in ("explicit", "fused"):
            raise ValueError(f"attention must be 'explicit' or 'fused', not {self.attention!r}")
        if self.activation not in ("gelu", "gelu_tanh"):
            raise ValueError(f"activation must be 'gelu' or 'gelu_tanh', not {self.activation!r}")

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
    # nanoGPT's CPU recipe (its README's "I only have a macbook"): trains in minutes on a laptop CPU.
    "cpu": GPTConfig(block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0),
    "bigram": GPTConfig(kind="bigram", block_size=8, n_layer=1, n_head=1, n_embd=1, dropout=0.0),
}


# The training settings each preset brings (TrainConfig field -> value), on top of TrainConfig's
# defaults, which are nanoGPT's train_shakespeare_char; every flag still overrides them.
PRESET_TRAINING: dict[str, dict[str, object]] = {
    "shakespeare-char": {},
    "mini-13m": {},
    # nanoGPT's train_gpt2.py; its 8 GPUs x 5 micro-batches become 40 accumulation steps here
    "gpt2-124m": {"batch_size": 12, "grad_accum": 40, "max_iters": 600_000, "learning_rate": 6e-4,
                  "min_lr": 6e-5, "warmup_iters": 2000, "beta2": 0.95, "eval_interval": 1000},
    # the rest of nanoGPT's CPU recipe: train_shakespeare_char with these flags, and fp32, as
    # nanoGPT computes on a CPU (no autocast there), even where this CPU has bf16
    "cpu": {"batch_size": 12, "eval_iters": 20, "log_interval": 1, "max_iters": 2000,
            "lr_decay_iters": 2000, "device": "cpu", "compile": False, "dtype": "fp32"},
    # the lecture's bigram.py: a constant learning rate of 1e-2, no warmup
    "bigram": {"batch_size": 32, "max_iters": 3000, "eval_interval": 300, "learning_rate": 1e-2,
               "min_lr": 1e-2, "warmup_iters": 0},
}


def preset(name: str) -> GPTConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
