"""Looking inside a step of generation: what the knobs keep, how sure the model was, where it looked.

Pure functions over tensors the generator already has (a step's raw logits) or over the PyTorch
model (attention). Nothing here runs unless a view asks, so generation pays nothing for it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from model.generate.backend import Settings
from model.generate.sampling import distribution, penalized
from model.gpt import GPT
from model.special import EOT
from model.terminal import visible

# how a token's whitespace is shown: one convention for every view that lists tokens
SHOWN_WHITESPACE = str.maketrans({" ": "␣", "\n": "⏎", "\t": "⇥"})


@dataclass(frozen=True)
class Row:
    """One candidate token at one step."""

    id: int
    text: str
    logit: float
    prob: float  # the model's own probability (softmax of the raw logits)
    rank: int  # 1 = the model's favourite
    kept: bool  # whether the current temperature/top-k/top-p could still sample it
    knob_prob: float  # its probability in what sampling draws from (0 when filtered out)


@dataclass(frozen=True)
class StepView:
    rows: tuple[Row, ...]  # the n most likely, best first
    entropy: float  # bits, of the distribution sampling draws from (after the knobs)
    model_entropy: float  # bits, of the model's own distribution
    kept: int  # how many tokens the knobs keep
    chosen: Row | None = None  # the token taken at this step, if any
    surprisal: float | None = None  # bits, -log2 of the model's probability of the chosen token


def piece(tokenizer, token: int) -> str:
    """One token as the app shows it: spaces as ␣, newline ⏎, tab ⇥, controls as their pictures,
    and the bytes of a BPE token that is only part of a UTF-8 character as <0xE2> (its decoded
    text would be a meaningless U+FFFD). ``"∅"`` for a token that stands for nothing."""
    raw = tokenizer.token_bytes(token)
    if raw is None:
        text = tokenizer.decode([token])
    else:  # undecodable bytes come back as lone surrogates U+DC80..U+DCFF, one per byte
        text = "".join(f"<0x{ord(c) - 0xDC00:02X}>" if 0xDC80 <= ord(c) <= 0xDCFF else c
                       for c in raw.decode("utf-8", errors="surrogateescape"))
    if text == EOT:
        return text
    return visible(text.translate(SHOWN_WHITESPACE)) or "∅"


def _bits(probs: torch.Tensor) -> float:
    p = probs[probs > 0]
    return float(-(p * p.log2()).sum())


def knob_probs(logits: torch.Tensor, settings: Settings, recent: Sequence[int] = (),
               counts: Mapping[int, int] | None = None) -> torch.Tensor:
    """What sampling draws from under ``settings``, spread back over the vocabulary: (V,).
    ``recent``: the ids the repetition penalty looks at (model.generate.sampling.recent_ids);
    ``counts``: each generated token's occurrences, for the frequency and presence penalties."""
    logits = penalized(logits, settings, recent, counts)
    if settings.temperature == 0:  # greedy: all the mass on the argmax
        out = torch.zeros_like(logits)
        out[logits.argmax()] = 1.0
        return out
    probs, ids = distribution(logits, settings.temperature, settings.top_k, settings.top_p, settings.min_p)
    if ids is None:
        return probs
    return torch.zeros_like(logits).index_copy_(0, ids, probs)


def explain(logits: torch.Tensor, decode: Callable[[int], str], settings: Settings,
            chosen: int | None = None, n: int = 10, recent: Sequence[int] = (),
            counts: Mapping[int, int] | None = None) -> StepView:
    """The n most likely next tokens from raw logits (V,), with what ``settings`` do to them
    (``recent``: the ids the repetition penalty looks at; ``counts``: the generated ones, counted).

    Costs one softmax and one top-k over V: cheap enough to redo whenever a knob moves, with no
    forward pass (the logits are the step's cached ones)."""
    logits = logits.float()
    probs = F.softmax(logits, dim=-1)  # (V,)
    knob = knob_probs(logits, settings, recent, counts)  # (V,)
    top = torch.topk(logits, min(n, logits.numel())).indices.tolist()
    ranks = {i: r + 1 for r, i in enumerate(top)}

    def row(i: int) -> Row:
        rank = ranks.get(i) or int((logits > logits[i]).sum()) + 1
        return Row(i, decode(i), float(logits[i]), float(probs[i]), rank, bool(knob[i] > 0), float(knob[i]))

    rows = tuple(row(i) for i in top)
    chosen_row = None if chosen is None else next((r for r in rows if r.id == chosen), None) or row(chosen)
    surprisal = None if chosen_row is None else -math.log2(max(chosen_row.prob, 1e-45))
    return StepView(rows, _bits(knob), _bits(probs), int((knob > 0).sum()), chosen_row, surprisal)


def perplexity(probs: Sequence[float]) -> float | None:
    """exp of the mean negative log-likelihood of the tokens taken, under the model's own probs."""
    if not probs:
        return None
    return math.exp(-sum(math.log(max(p, 1e-45)) for p in probs) / len(probs))


@torch.inference_mode()
def attention_weights(model: GPT, ids: Sequence[int], last: int | None = None) -> torch.Tensor:
    """Each layer's attention softmax over ``ids`` (at most block_size): (L, H, T, T), or only
    the ``last`` queries' rows: (L, H, last, T) (a 1024-token window's full maps would take
    L*H*T*T floats, 600 MB at GPT-2 124M).

    Opt-in and separate from generation: one pass of ``GPT.forward_at`` that collects each
    layer's softmax (the explicit path's, under the causal mask). It reads the model and changes
    nothing (no hooks), so it is safe while another thread generates with the same model."""
    T = len(ids)
    if not 0 < T <= model.config.block_size:
        raise ValueError(f"need 1..{model.config.block_size} tokens for attention, got {T}; crop the context")
    device = next(model.parameters()).device
    idx = torch.tensor([list(ids)], device=device)  # (1, T)
    weights: list[torch.Tensor] = _LastRows(last) if last else []
    model.forward_at(idx, torch.arange(T, device=device), weights=weights)
    return torch.stack([w[0].float() for w in weights]).cpu()  # (L, H, T, T)


class _LastRows(list):
    """A weights list for ``forward_at`` that keeps only the last ``n`` query rows of each layer,
    copied, so the layer's full (B, H, T, T) map is freed before the next layer makes its own."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def append(self, att: torch.Tensor) -> None:
        super().append(att[:, :, -self.n:].clone())  # (B, H, n, T)
