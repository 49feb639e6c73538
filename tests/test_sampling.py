"""The sampler's min-p and repetition penalty, on hand-made distributions."""

import math

import pytest
import torch

from model.generate.backend import Settings
from model.generate.engine import Generation
from model.generate.insight import explain, knob_probs
from model.generate.sampling import choose, distribution, penalize, recent_ids
from model.tokenizer import CharTokenizer


def logits_of(*probs: float) -> torch.Tensor:
    return torch.tensor([math.log(p) for p in probs])


def test_min_p_keeps_tokens_at_least_min_p_times_the_likeliest():
    logits = logits_of(0.5, 0.3, 0.12, 0.08)
    probs, ids = distribution(logits, 1.0, min_p=0.2)  # the bar is 0.2 * 0.5 = 0.1: the 0.08 goes
    assert ids.tolist() == [0, 1, 2]
    torch.testing.assert_close(probs, torch.tensor([0.5, 0.3, 0.12]) / 0.92)
    probs, ids = distribution(logits, 1.0, min_p=0.99)  # only the likeliest is ever kept
    assert ids.tolist() == [0] and probs.tolist() == [1.0]
    probs, ids = distribution(logits, 1.0, min_p=0.0)
    assert ids is None  # off: nothing filtered
    # after top-p (0.5 + 0.3 reach 0.8): min-p is relative to the likeliest, so order does not matter
    probs, ids = distribution(logits, 1.0, top_p=0.8, min_p=0.7)
    assert ids.tolist() == [0]


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = torch.tensor([2.0, -1.0, 0.5, 3.0])
    out = penalize(logits, [0, 1, 1, 1], 2.0)  # a token counts once however often it occurred
    assert out.tolist() == [1.0, -2.0, 0.5, 3.0]
    assert logits.tolist() == [2.0, -1.0, 0.5, 3.0]  # the input is left alone
    assert penalize(logits, [0], 1.0) is logits and penalize(logits, [], 2.0) is logits


def test_repetition_penalty_breaks_a_greedy_loop():
    # "so" is the favourite by a little; once seen, a penalty of 1.5 makes "o" win at temperature 0
    logits = torch.tensor([3.0, 2.5, 0.0])  # s, o, space
    g = torch.Generator().manual_seed(0)
    s = Settings(temperature=0, repetition_penalty=1.5, repetition_window=2)
    assert choose(logits, g, s, recent_ids([2, 2, 0], s)) == 1  # 3.0 / 1.5 = 2.0 < 2.5
    assert choose(logits, g, s, recent_ids([0, 2, 2], s)) == 0  # "s" fell out of the 2-token window
    assert recent_ids([0, 1, 2], Settings()) == []  # off: nothing to look at


def test_the_engine_passes_the_recent_tokens():
    tok = CharTokenizer("ab")

    class Decoder:
        block_size, pos = 16, 0

        def reset(self):
            self.pos = 0

        def feed(self, ids):
            self.pos += len(ids)
            return torch.tensor([2.0, 1.9, 0.0])  # a, b, eot: greedy says a, a, a...

    plain = Generation(Decoder(), tok, "b", Settings(temperature=0, max_new_tokens=4))
    assert "".join(e.text for e in plain) == "aaaa"
    s = Settings(temperature=0, max_new_tokens=4, repetition_penalty=1.1, repetition_window=1)
    assert "".join(e.text for e in Generation(Decoder(), tok, "b", s)) == "abab"


def test_the_next_token_view_shows_min_p_and_the_penalty_as_filtering():
    logits = logits_of(0.5, 0.3, 0.12, 0.08)
    view = explain(logits, str, Settings(temperature=1.0, min_p=0.2), n=4)
    assert [r.kept for r in view.rows] == [True, True, True, False] and view.kept == 3
    penalized = knob_probs(torch.tensor([2.0, 1.0]), Settings(temperature=0, repetition_penalty=4.0), [0])
    assert penalized.tolist() == [0.0, 1.0]  # greedy now takes token 1


@pytest.mark.parametrize("changes, message", [
    ({"min_p": 1.0}, "min-p must be a number in [0, 1)"),
    ({"min_p": -0.1}, "min-p must be a number in [0, 1)"),
    ({"repetition_penalty": 0.5}, "repetition-penalty must be a number >= 1"),
    ({"repetition_penalty": float("nan")}, "repetition-penalty must be a number >= 1"),
    ({"repetition_window": 0}, "repetition-window must be a whole number >= 1"),
    ({"repetition_window": 2.5}, "repetition-window must be a whole number >= 1"),
])
def test_bad_values_are_refused(changes, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        Settings(**changes)
