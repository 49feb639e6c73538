"""Choosing the next token from one row of logits: pure functions, randomness only from a Generator.

The knobs apply in the usual order (as in Hugging Face transformers and llama.cpp): the repetition
penalty lowers the logits of tokens seen in the last ``repetition_window`` tokens, the frequency and
presence penalties (OpenAI's) lower those of the tokens generated so far, temperature scales the
logits, top-k keeps the k largest, top-p keeps the smallest set of those whose probability mass
reaches p, min-p drops those less likely than min_p times the likeliest.
Temperature 0 means greedy: the argmax of the penalized logits, whatever top-k, top-p and min-p say
(the argmax survives all three filters). Arguments are assumed valid: ``model.generate.backend.Settings``
checks them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch.nn import functional as F

from model.generate.backend import Settings


def penalize(logits: torch.Tensor, recent: Sequence[int], penalty: float) -> torch.Tensor:
    """The CTRL repetition penalty (Keskar et al., 2019; llama.cpp's repeat_penalty): each token in
    ``recent`` gets its logit divided by ``penalty`` if positive, multiplied if negative, so it is
    always made less likely, once however often it occurred. Returns a new tensor (V,)."""
    if penalty == 1.0 or not recent:
        return logits
    ids = torch.tensor(sorted(set(recent)), dtype=torch.long)
    seen = logits[ids]
    out = logits.clone()
    out[ids] = torch.where(seen > 0, seen / penalty, seen * penalty)
    return out


def penalize_counts(logits: torch.Tensor, counts: Mapping[int, int], frequency: float,
                    presence: float) -> torch.Tensor:
    """OpenAI's frequency and presence penalties (llama.cpp's too): ``logit[j] -= frequency * c[j] +
    presence * (c[j] > 0)``, where ``counts`` maps each token generated so far to c, its number of
    occurrences. Frequency grows with every repeat (it damps a word used over and over), presence is
    paid once (it pushes towards new tokens); negative values encourage repeats. Subtracted, not
    divided, so unlike the repetition penalty it acts the same on a negative logit. Returns a new
    tensor (V,), or ``logits`` itself when there is nothing to do."""
    if (frequency == 0.0 and presence == 0.0) or not counts:
        return logits
    ids = torch.tensor(list(counts), dtype=torch.long)  # (N,) distinct generated tokens
    seen = torch.tensor(list(counts.values()), dtype=logits.dtype)  # (N,) each one's count, >= 1
    out = logits.clone()
    out[ids] = logits[ids] - (frequency * seen + presence)
    return out


def penalized(logits: torch.Tensor, settings: Settings, recent: Sequence[int] = (),
              counts: Mapping[int, int] | None = None) -> torch.Tensor:
    """``logits`` (V,) after every penalty of ``settings``, in llama.cpp's order: the repetition
    penalty over ``recent`` (from ``recent_ids``), then frequency and presence over ``counts`` (each
    generated token's occurrences)."""
    logits = penalize(logits, recent, settings.repetition_penalty)
    return penalize_counts(logits, counts or {}, settings.frequency_penalty, settings.presence_penalty)


def distribution(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float = 1.0,
    min_p: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What sampling draws from, for temperature > 0: logits (V,) -> (probs (K,), ids (K,)).

    probs sums to 1 over the K tokens kept. With top-k, top-p or min-p active, ids holds their token
    ids, most likely first; with none, nothing is filtered, ids is None and probs is in vocab order.
    """
    V = logits.size(-1)
    logits = logits / temperature
    k = V if top_k is None else min(top_k, V)  # a top_k beyond the vocabulary means "off"
    if k == V and top_p >= 1.0 and min_p <= 0.0:
        return F.softmax(logits, dim=-1), None  # no sort needed: the common, cheapest case
    top_logits, ids = torch.topk(logits, k)  # (K,) sorted, descending
    probs = F.softmax(top_logits, dim=-1)
    if top_p < 1.0:
        # keep a token while the mass of the tokens before it is still short of p: that is the
        # smallest prefix reaching p, and it always holds the first token
        mass_before = probs.cumsum(-1) - probs
        n = int((mass_before < top_p).sum())
        probs, ids = probs[:n] / probs[:n].sum(), ids[:n]
    if min_p > 0.0:
        # relative to the likeliest token, so renormalizing after top-p changes nothing; sorted
        # descending, so the kept ones are a prefix, and the first always stays
        n = int((probs >= min_p * probs[0]).sum())
        probs, ids = probs[:n] / probs[:n].sum(), ids[:n]
    return probs, ids


def sample(
    logits: torch.Tensor,
    generator: torch.Generator,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    min_p: float = 0.0,
) -> int:
    """One token id from logits (V,). The same generator state and arguments give the same id."""
    if temperature == 0:
        return int(logits.argmax())
    probs, ids = distribution(logits, temperature, top_k, top_p, min_p)
    choice = torch.multinomial(probs, 1, generator=generator)  # (1,)
    return int(choice if ids is None else ids[choice])


def recent_ids(ids: Sequence[int], settings: Settings) -> list[int]:
    """The tokens the repetition penalty looks at: the last ``repetition_window`` of ``ids`` (the
    prompt and the text so far, as the model sees them); none when the penalty is off."""
    if settings.repetition_penalty == 1.0:
        return []
    return list(ids[-settings.repetition_window:])


def choose(logits: torch.Tensor, generator: torch.Generator, settings: Settings,
           recent: Sequence[int] = (), counts: Mapping[int, int] | None = None) -> int:
    """``sample`` with every knob of ``settings``; ``recent`` are the ids from ``recent_ids``,
    ``counts`` how often each token was generated so far (for the frequency and presence penalties)."""
    s = settings
    return sample(penalized(logits, s, recent, counts), generator, s.temperature, s.top_k, s.top_p, s.min_p)


def top_candidates(probs: torch.Tensor, n: int) -> list[tuple[int, float]]:
    """The n most likely (id, prob) pairs of probs (V,), best first (n is clamped to V)."""
    values, ids = torch.topk(probs, min(n, probs.size(-1)))
    return list(zip(ids.tolist(), values.tolist(), strict=True))
