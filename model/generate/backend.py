"""The one interface between generation backends (PyTorch, ONNX Runtime) and their users (TUI, batch).

A backend owns a model and its tokenizer. ``stream(prompt, settings)`` returns a ``TokenStream``:
an iterator of ``TokenEvent`` that reads ``settings`` anew before every token (so a UI can change
them mid-way), can be closed early, and tells why it stopped. Sampling, stop handling and the
block-size window live once in ``model.generate.engine.Generation``; a backend only supplies a ``Decoder``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch

from model.gpt import GPT, Bigram
from model.tokenizer import Tokenizer, Unknown

StopReason = Literal["eot", "max_tokens", "stop_string", "stopped"]


@dataclass(frozen=True)
class Settings:
    """Sampling controls. temperature 0 = greedy (argmax); top_k None = off; top_p 1.0 = off;
    min_p 0 = off; repetition_penalty 1.0 = off; frequency_penalty and presence_penalty 0 = off."""

    temperature: float = 0.8
    top_k: int | None = None
    top_p: float = 1.0
    max_new_tokens: int = 500
    seed: int | None = None  # None: fresh randomness each generation
    stop: tuple[str, ...] = ()  # stop once the output contains any of these
    unknown: Unknown = "reject"  # prompt characters outside the vocabulary: refuse, or replace them
    min_p: float = 0.0  # drop tokens less likely than min_p x the likeliest (0 = off)
    repetition_penalty: float = 1.0  # > 1 makes tokens seen lately less likely (1 = off)
    repetition_window: int = 64  # how many of the latest tokens (prompt included) it looks at
    # OpenAI's: a generated token's logit -= frequency_penalty x its count + presence_penalty (once
    # seen); over the generated tokens only, in [-2, 2] as the API allows (negative favours repeats)
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0

    def __post_init__(self) -> None:
        # messages name the settings as people type them (flags, /set, batch items): top-k, off
        if not _number(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be a number >= 0 (0 = greedy), not {self.temperature!r}")
        if self.top_k is not None and (not _whole(self.top_k) or self.top_k < 1):
            raise ValueError(f"top-k must be a whole number >= 1, or off, not {self.top_k!r}")
        if not _number(self.top_p) or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top-p must be a number in (0, 1] (1 = off), not {self.top_p!r}")
        if not _whole(self.max_new_tokens) or not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise ValueError(f"max-new-tokens must be a whole number from 1 to {MAX_NEW_TOKENS}, "
                             f"not {self.max_new_tokens!r}")
        if self.seed is not None and (not _whole(self.seed) or not 0 <= self.seed <= MAX_SEED):
            raise ValueError(f"seed must be a whole number from 0 to 2^63-1, or off (random), "
                             f"not {self.seed!r}")
        if not isinstance(self.stop, tuple) or not all(isinstance(x, str) and x for x in self.stop):
            raise ValueError(f"stop must be a list of non-empty strings like ['\\n\\n'], not {self.stop!r}")
        if self.unknown not in ("reject", "replace"):
            raise ValueError(f"unknown must be 'reject' or 'replace', not {self.unknown!r}")
        if not _number(self.min_p) or not 0.0 <= self.min_p < 1.0:
            raise ValueError(f"min-p must be a number in [0, 1) (0 = off), not {self.min_p!r}")
        if not _number(self.repetition_penalty) or self.repetition_penalty < 1.0:
            raise ValueError(f"repetition-penalty must be a number >= 1 (1 = off), not "
                             f"{self.repetition_penalty!r}")
        if not _whole(self.repetition_window) or self.repetition_window < 1:
            raise ValueError(f"repetition-window must be a whole number >= 1, not {self.repetition_window!r}")
        for name in ("frequency_penalty", "presence_penalty"):
            value = getattr(self, name)
            if not _number(value) or not -2.0 <= value <= 2.0:
                raise ValueError(f"{name.replace('_', '-')} must be a number from -2 to 2 (0 = off), "
                                 f"not {value!r}")


# A generation longer than this is a typo (the context window slides, so nothing else bounds it).
MAX_NEW_TOKENS = 100_000
MAX_SEED = 2**63 - 1  # torch.Generator takes 64 bits; NumPy and JSON readers are safe below 2^63


def _number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _whole(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class Candidate:
    id: int
    text: str
    prob: float  # the model's own probability: softmax of the raw logits (temperature 1)


@dataclass(frozen=True)
class TokenEvent:
    """One sampled token, streamed as soon as it exists."""

    index: int  # 0 for the first generated token
    id: int
    text: str  # its decoded piece
    prob: float  # the model's own probability of it (softmax of raw logits, before any knob)
    top: tuple[Candidate, ...] = ()  # the most likely candidates at this step, best first
    logits: torch.Tensor | None = field(default=None, repr=False, compare=False)  # (V,) raw


@dataclass(frozen=True)
class BackendInfo:
    backend: Literal["torch", "onnx"]
    path: str  # the checkpoint or .onnx file it came from
    vocab_size: int
    block_size: int
    device: str  # "cpu", "cuda:0", "CPUExecutionProvider", ...
    vocab: str | None = None  # the characters, for a character tokenizer
    config: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    # the decoding weights' type and why ("bf16 weights (a step: ...)", "int8 weights (as exported)");
    # "" where the backend cannot tell (an .onnx from before its weights were recorded)
    precision: str = ""


class Decoder(Protocol):
    """One sequence's model state: the only thing a backend must implement for the engine."""

    block_size: int
    pos: int  # tokens fed since the last reset

    def reset(self) -> None: ...

    def feed(self, ids: list[int]) -> torch.Tensor:
        """Append ids (pos + len(ids) <= block_size) -> float32 logits (V,) on the CPU for the next
        token (sampling runs there, so a seed gives the same draws on every device)."""
        ...


class TokenStream(Protocol):
    """What ``Backend.stream`` returns: the generated tokens of one prompt, as they come."""

    settings: Settings  # may be replaced between tokens
    prompt_ids: list[int]
    stop_reason: StopReason | None  # set once iteration has ended

    def __iter__(self) -> Iterator[TokenEvent]: ...
    def __next__(self) -> TokenEvent: ...
    def close(self) -> None: ...


class Backend(Protocol):
    """A model and its tokenizer, as every view and the batch runner use them."""

    tokenizer: Tokenizer  # encodes prompts, decodes candidates for the views

    def info(self) -> BackendInfo: ...
    def unknown_chars(self, prompt: str) -> list[str]: ...

    def decoder(self) -> Decoder:
        """A fresh decoder (its own cache) in this process: for step mode, which drives an
        ``engine.Generation`` token by token."""
        ...

    def torch_model(self) -> GPT | Bigram | None:
        """The PyTorch model in this process, for the attention view; None for ONNX Runtime."""
        ...

    def stream(self, prompt: str, settings: Settings) -> TokenStream: ...
