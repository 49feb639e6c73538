"""Choosing the next token from one row of logits: pure functions, randomness only from a Generator.

The knobs apply in the usual order (as in Hugging Face transformers): temperature scales the
logits, top-k keeps the k largest, top-p keeps the smallest set of those whose probability mass
reaches p. Temperature 0 means greedy: the argmax, whatever top-k and top-p say (the argmax
survives both filters). Arguments are assumed valid: ``model.backend.Settings`` checks them.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def distribution(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What sampling draws from, for temperature > 0: logits (V,) -> (probs (K,), ids (K,)).

    probs sums to 1 over the K tokens kept. With top-k or top-p active, ids holds their token ids,
    most likely first; with neither, nothing is filtered, ids is None and probs is in vocab order.
    """
    V = logits.size(-1)
    logits = logits / temperature
    k = V if top_k is None else min(top_k, V)  # a top_k beyond the vocabulary means "off"
    if k == V and top_p >= 1.0:
        return F.softmax(logits, dim=-1), None  # no sort needed: the common, cheapest case
    top_logits, ids = torch.topk(logits, k)  # (K,) sorted, descending
    probs = F.softmax(top_logits, dim=-1)
    if top_p < 1.0:
        # keep a token while the mass of the tokens before it is still short of p: that is the
        # smallest prefix reaching p, and it always holds the first token
        mass_before = probs.cumsum(-1) - probs
        n = int((mass_before < top_p).sum())
        probs, ids = probs[:n] / probs[:n].sum(), ids[:n]
    return probs, ids


def sample(
    logits: torch.Tensor,
    generator: torch.Generator,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float = 1.0,
) -> int:
    """One token id from logits (V,). The same generator state and arguments give the same id."""
    if temperature == 0:
        return int(logits.argmax())
    probs, ids = distribution(logits, temperature, top_k, top_p)
    choice = torch.multinomial(probs, 1, generator=generator)  # (1,)
    return int(choice if ids is None else ids[choice])


def top_candidates(probs: torch.Tensor, n: int) -> list[tuple[int, float]]:
    """The n most likely (id, prob) pairs of probs (V,), best first (n is clamped to V)."""
    values, ids = torch.topk(probs, min(n, probs.size(-1)))
    return list(zip(ids.tolist(), values.tolist(), strict=True))
