"""`--logprobs N` for `-p` and `--batch`: each generated token's log-probability and the N likeliest
alternatives', as the OpenAI completions API returns them (``tokens``, ``token_logprobs``,
``top_logprobs``), for people who script evaluations.

Which distribution: the model's own, the natural-log softmax of the raw logits at that step,
before the penalties, temperature, top-k, top-p and min-p reshape what sampling draws from (as
OpenAI's API and llama.cpp's server report them). So the numbers say what the model thinks of the
text, whatever knobs chose it, and a sampled token may well not be the likeliest.

A token's text is what it decodes to alone; a BPE token that is only part of a UTF-8 character
has no text of its own and is written ``bytes:\\xe2\\x80`` (OpenAI's form), so every token has a
distinct name and ``top_logprobs`` can key on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from model.generate.backend import TokenEvent
from model.generate.insight import piece
from model.tokenizer import Tokenizer

MAX_LOGPROBS = 20  # alternatives per token, as OpenAI's top_logprobs allows


def token_name(tokenizer: Tokenizer, token: int) -> str:
    """A token's text alone, or ``bytes:\\xNN...`` where its bytes are not whole characters."""
    raw = tokenizer.token_bytes(token)
    if raw is None:
        return tokenizer.decode([token])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


@dataclass
class Logprobs:
    """The log-probabilities of one generation's tokens, gathered as its events arrive."""

    tokenizer: Tokenizer
    n: int  # alternatives per token (0: the chosen token's only)
    ids: list[int] = field(default_factory=list)
    token_logprobs: list[float] = field(default_factory=list)
    top: list[list[tuple[int, float]]] = field(default_factory=list)  # per token: (id, logprob), best first

    def add(self, event: TokenEvent) -> None:
        if event.logits is not None:
            logprobs = F.log_softmax(event.logits.float(), dim=-1)  # (V,) the model's own
            chosen = float(logprobs[event.id])
            values, ids = torch.topk(logprobs, min(self.n, logprobs.numel()))
            top = list(zip(ids.tolist(), values.tolist(), strict=True))
        else:  # a backend that keeps no logits: its event's top candidates, as many as it has
            chosen = _log(event.prob)
            top = [(c.id, _log(c.prob)) for c in event.top[:self.n]]
        self.ids.append(event.id)
        self.token_logprobs.append(chosen)
        self.top.append(top)

    def to_dict(self) -> dict:
        """The OpenAI completions API's ``logprobs`` object, with the token ids beside it."""
        name = self._namer()
        return {
            "tokens": [name(i) for i in self.ids],
            "token_ids": list(self.ids),
            "token_logprobs": list(self.token_logprobs),
            "top_logprobs": [{name(i): lp for i, lp in top} for top in self.top] if self.n else None,
        }

    def table(self) -> str:
        """For people: one line per token, its piece as the app shows it (model.generate.insight.piece:
        a space as ␣, control characters as symbols), its logprob, then the alternatives'."""
        lines = ["logprobs (natural log, the model's own distribution before any sampling knob):"]
        for k, (token, lp, top) in enumerate(zip(self.ids, self.token_logprobs, self.top, strict=True)):
            alternatives = "  ".join(f"{piece(self.tokenizer, i)} {v:.3f}" for i, v in top)
            lines.append(f"{k + 1:>5}  {piece(self.tokenizer, token):<10} {lp:8.3f}"
                         + (f"   | {alternatives}" if alternatives else ""))
        return "\n".join(lines)

    def _namer(self) -> Callable[[int], str]:
        names: dict[int, str] = {}
        return lambda i: names.setdefault(i, token_name(self.tokenizer, i))


def _log(p: float) -> float:
    return math.log(max(p, 1e-45))  # a probability that underflowed to 0: as small as a float32 gets
