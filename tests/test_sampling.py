"""The sampler's min-p and penalties (repetition, frequency, presence), on hand-made distributions."""

import math
import re

import pytest
import torch

from model.generate.backend import Settings
from model.generate.engine import Generation
from model.generate.insight import explain, knob_probs
from model.generate.sampling import choose, distribution, penalize, penalize_counts, penalized, recent_ids
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


def test_frequency_and_presence_penalties_subtract_count_times_frequency_plus_presence():
    logits = torch.tensor([2.0, -1.0, 0.5, 3.0])
    out = penalize_counts(logits, {0: 3, 1: 1}, 0.5, 0.25)  # token 0 generated 3 times, token 1 once
    assert out.tolist() == [2.0 - 3 * 0.5 - 0.25, -1.0 - 0.5 - 0.25, 0.5, 3.0]  # exact in binary
    assert logits.tolist() == [2.0, -1.0, 0.5, 3.0]  # the input is left alone
    assert penalize_counts(logits, {0: 2}, -1.0, 0.0).tolist() == [4.0, -1.0, 0.5, 3.0]  # negative: repeat
    assert penalize_counts(logits, {0: 1}, 0.0, 0.0) is logits  # off, or nothing generated yet: no copy
    assert penalize_counts(logits, {}, 1.0, 1.0) is logits
    # beside the repetition penalty: that one first (divides 2.0 by 2), then the subtraction
    s = Settings(repetition_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25)
    assert penalized(logits, s, [0], {0: 2}).tolist() == [1.0 - 1.0 - 0.25, -1.0, 0.5, 3.0]


def test_the_engine_counts_generated_tokens_for_the_penalties_but_not_the_prompt():
    tok = CharTokenizer("ab")

    class Decoder:
        block_size, pos = 16, 0

        def reset(self):
            self.pos = 0

        def feed(self, ids):
            self.pos += len(ids)
            return torch.tensor([2.0, 1.0, 0.0])  # a, b, eot: greedy says a, a, a...

    def text(prompt: str, **knobs) -> str:
        s = Settings(temperature=0, max_new_tokens=6, **knobs)
        return "".join(e.text for e in Generation(Decoder(), tok, prompt, s))

    assert text("a") == "aaaaaa"
    # frequency 0.4: a's logit falls by 0.4 per "a" generated: 2.0, 1.6, 1.2, then 0.8 < b's 1.0 ...
    assert text("a", frequency_penalty=0.4) == "aaabab"
    assert text("aaaa", frequency_penalty=0.4) == "aaabab"  # the prompt's a's do not count
    # presence 1.5: once an a is out, b (1.0) beats a (0.5) until b is out too; then a again
    assert text("a", presence_penalty=1.5) == "abaaaa"


@pytest.mark.parametrize("changes, message", [
    ({"frequency_penalty": 2.5}, "frequency-penalty must be a number from -2 to 2 (0 = off), not 2.5"),
    ({"presence_penalty": -2.1}, "presence-penalty must be a number from -2 to 2 (0 = off), not -2.1"),
    ({"presence_penalty": float("inf")}, "presence-penalty must be a number from -2 to 2"),
    ({"frequency_penalty": "0.5"}, "frequency-penalty must be a number from -2 to 2"),
    ({"frequency_penalty": True}, "frequency-penalty must be a number from -2 to 2"),
])
def test_bad_penalties_are_refused(changes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Settings(**changes)


def test_the_next_token_view_shows_the_frequency_penalty():
    # greedy: a (2.0) would win, but generated twice with frequency 0.6 it falls to 0.8 < 1.0
    view = explain(torch.tensor([2.0, 1.0]), str, Settings(temperature=0, frequency_penalty=0.6), n=2,
                   counts={0: 2})
    assert [(r.id, r.kept) for r in view.rows] == [(0, False), (1, True)]


@pytest.fixture(scope="module")
def both_backends(tiny_ckpt, tmp_path_factory):
    from export.onnx_export import export_onnx
    from export.ort_backend import load_ort_backend
    from model.generate.torch_backend import load_backend

    path = export_onnx(tiny_ckpt, tmp_path_factory.mktemp("penalties") / "tiny.onnx", validate=False)
    return load_backend(tiny_ckpt, "cpu", "fp32"), load_ort_backend(path, provider="cpu", threads=1)


@pytest.mark.slow
def test_the_same_seed_and_penalties_give_the_same_text_on_torch_and_onnx(both_backends):
    torch_backend, ort_backend = both_backends
    knobs = dict(temperature=1.0, max_new_tokens=40, seed=11)
    penalties = dict(frequency_penalty=1.5, presence_penalty=-0.5)
    texts = {name: [e.text for e in b.stream("ROMEO:", Settings(**knobs, **penalties))]
             for name, b in (("torch", torch_backend), ("onnx", ort_backend))}
    assert texts["torch"] == texts["onnx"] and len(texts["torch"]) == 40
    plain = [e.text for e in torch_backend.stream("ROMEO:", Settings(**knobs))]
    assert plain != texts["torch"]  # the penalties did change what was sampled
