"""The generation engine: KV cache parity, sampling controls, streaming and stopping, the backend."""

import itertools

import pytest
import torch
from conftest import decode_logits

from model.generate.backend import Settings
from model.generate.engine import Generation
from model.generate.sampling import distribution, sample
from model.generate.torch_backend import RecomputeDecoder, TorchBackend, TorchDecoder, load_backend
from model.kv_cache import KVCache
from model.tokenizer import UnknownCharactersError

GREEDY = Settings(temperature=0.0, max_new_tokens=80)


def test_cached_logits_equal_uncached_for_prefill_and_50_decode_steps(tiny_model):
    torch.manual_seed(1)
    V, T = tiny_model.config.vocab_size, tiny_model.config.block_size
    ids = torch.randint(0, V, (2, 30))
    full, _ = tiny_model(ids)  # (2, 30, V), no cache
    cache = KVCache(tiny_model.config, rows=2)
    prefill, _ = tiny_model(ids[:, :10], cache=cache)
    steps = [tiny_model(ids[:, t:t + 1], cache=cache)[0] for t in range(10, 30)]
    cached = torch.cat([prefill, *steps], dim=1)
    torch.testing.assert_close(cached, full, rtol=0, atol=1e-5)
    assert cache.pos == 30 and T == 32


def test_chunk_after_cached_prefix_matches_full_forward(tiny_model):
    """A multi-token feed after a cached prefix must be causal within itself (the shifted mask)."""
    ids = torch.randint(0, tiny_model.config.vocab_size, (1, 24), generator=torch.Generator().manual_seed(2))
    full, _ = tiny_model(ids)
    cache = KVCache(tiny_model.config)
    a, _ = tiny_model(ids[:, :9], cache=cache)
    b, _ = tiny_model(ids[:, 9:], cache=cache)
    torch.testing.assert_close(torch.cat([a, b], 1), full, rtol=0, atol=1e-5)


@torch.no_grad()
def test_cache_refuses_to_overflow_block_size(tiny_model):
    cache = KVCache(tiny_model.config)
    tiny_model(torch.zeros(1, 32, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="exceed block_size 32"):
        tiny_model(torch.zeros(1, 1, dtype=torch.long), cache=cache)




def test_cached_and_recompute_decoders_agree_for_50_steps_across_block_size(tiny_model):
    """20 prompt tokens + 50 steps in a 32-token window: re-prefills twice on the way."""
    g = torch.Generator().manual_seed(3)
    V = tiny_model.config.vocab_size
    prompt = torch.randint(0, V, (20,), generator=g).tolist()
    tokens = torch.randint(0, V, (50,), generator=g).tolist()
    cached = decode_logits(TorchDecoder(tiny_model), prompt, tokens)
    recomputed = decode_logits(RecomputeDecoder(tiny_model), prompt, tokens)
    for step, (a, b) in enumerate(zip(cached, recomputed, strict=True)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=f"step {step}")


def test_window_keeps_the_last_half_after_block_size(tiny_model):
    """At the boundary the model sees exactly the last block_size // 2 tokens, as a fresh prefix."""
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(0, tiny_model.config.vocab_size, (33,), generator=g).tolist()
    logits = decode_logits(TorchDecoder(tiny_model), ids[:32], [ids[32]] * 2)
    # step 0: the 32 prompt tokens fill the window; step 1: the 33rd token does not fit
    expect, _ = tiny_model(torch.tensor([(ids[:32] + [ids[32]])[-16:]]))
    torch.testing.assert_close(logits[1], expect[0, -1], rtol=0, atol=1e-5)


def text_of(backend, prompt, settings):
    return "".join(e.text for e in backend.stream(prompt, settings))


def test_greedy_text_is_identical_with_and_without_cache(tiny_model, char_tok):
    backend = TorchBackend(tiny_model, char_tok)
    cached = text_of(backend, "ROMEO:", GREEDY)
    recompute = Generation(RecomputeDecoder(tiny_model), char_tok, "ROMEO:", GREEDY)
    assert "".join(e.text for e in recompute) == cached
    assert len(cached) == 80  # past the 32-token window more than twice


def test_same_seed_same_text_and_another_seed_differs(tiny_model, char_tok):
    backend = TorchBackend(tiny_model, char_tok)
    s = Settings(temperature=1.0, top_k=20, max_new_tokens=60, seed=7)
    first = text_of(backend, "All:", s)
    assert text_of(backend, "All:", s) == first
    assert text_of(backend, "All:", Settings(temperature=1.0, top_k=20, max_new_tokens=60, seed=8)) != first


def test_top_k_one_equals_greedy(tiny_model, char_tok):
    backend = TorchBackend(tiny_model, char_tok)
    assert text_of(backend, "Speak", Settings(temperature=1.5, top_k=1, max_new_tokens=50, seed=1)) == \
        text_of(backend, "Speak", Settings(temperature=0.0, max_new_tokens=50))


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([0.05, 0.4, 0.1, 0.3, 0.15])
    logits = probs.log()
    cases = {0.4: [1], 0.41: [1, 3], 0.7: [1, 3], 0.71: [1, 3, 4], 0.85: [1, 3, 4], 0.86: [1, 3, 4, 2],
             1.0: None}
    for p, kept in cases.items():
        q, ids = distribution(logits, temperature=1.0, top_p=p)
        if kept is None:
            torch.testing.assert_close(q, probs)
            continue
        assert ids.tolist() == kept, p
        torch.testing.assert_close(q, probs[kept] / probs[kept].sum())


def test_sampling_draws_only_kept_tokens_in_proportion():
    logits = torch.tensor([0.05, 0.4, 0.1, 0.3, 0.15]).log()
    g = torch.Generator().manual_seed(0)
    draws = torch.tensor([sample(logits, g, 1.0, top_k=2) for _ in range(4000)])
    assert set(draws.tolist()) == {1, 3}
    assert abs((draws == 1).float().mean().item() - 0.4 / 0.7) < 0.03


def test_temperature_sharpens_and_flattens():
    logits = torch.tensor([2.0, 1.0, 0.0])
    cold, _ = distribution(logits, temperature=0.5)
    hot, _ = distribution(logits, temperature=2.0)
    assert cold[0] > torch.softmax(logits, -1)[0] > hot[0]


def test_events_carry_probability_and_top_candidates(tiny_model, char_tok):
    backend = TorchBackend(tiny_model, char_tok)
    events = list(backend.stream("First", Settings(temperature=0.0, max_new_tokens=5)))
    assert [e.index for e in events] == [0, 1, 2, 3, 4]
    for e in events:
        assert e.top[0].id == e.id  # greedy picks the most likely candidate
        assert e.prob == pytest.approx(e.top[0].prob)
        assert [c.prob for c in e.top] == sorted((c.prob for c in e.top), reverse=True)
        assert e.text == char_tok.decode([e.id])


def test_closing_a_stream_stops_it_and_releases_the_cache(tiny_model, char_tok):
    gen = TorchBackend(tiny_model, char_tok).stream("All", Settings(max_new_tokens=100, seed=0))
    first = [next(gen) for _ in range(3)]
    gen.close()
    assert gen.stop_reason == "stopped" and gen.decoder is None
    assert list(gen) == [] and len(first) == 3


def test_stop_reasons(tiny_model, char_tok):
    backend = TorchBackend(tiny_model, char_tok)
    gen = backend.stream("All", Settings(temperature=0.0, max_new_tokens=7))
    assert len(list(gen)) == 7 and gen.stop_reason == "max_tokens"
    greedy = text_of(backend, "All", Settings(temperature=0.0, max_new_tokens=40))
    stop = greedy[10:12]
    gen = backend.stream("All", Settings(temperature=0.0, max_new_tokens=40, stop=(stop,)))
    text = "".join(e.text for e in gen)
    assert gen.stop_reason == "stop_string" and text.endswith(stop) and stop not in text[:-1]


def test_end_of_text_ends_the_stream_without_being_yielded(tiny_model, char_tok):
    # a head that always prefers end-of-text (untied from the embedding by replacing it)
    head = torch.nn.Linear(tiny_model.config.n_embd, tiny_model.config.vocab_size)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[char_tok.eot_id] = 10.0
    tiny_model.lm_head = head
    gen = TorchBackend(tiny_model, char_tok).stream("All", Settings(temperature=0.0))
    assert list(gen) == [] and gen.stop_reason == "eot"


def test_settings_replaced_mid_stream_apply_to_the_next_token(tiny_model, char_tok):
    backend = TorchBackend(tiny_model, char_tok)
    gen = backend.stream("All", Settings(temperature=2.0, max_new_tokens=20, seed=5))
    first = next(gen).text
    gen.settings = Settings(temperature=0.0, max_new_tokens=4)  # as the TUI does mid-generation
    rest = "".join(e.text for e in gen)
    assert gen.stop_reason == "max_tokens" and len(rest) == 3
    assert rest == text_of(backend, "All" + first, Settings(temperature=0.0, max_new_tokens=3))


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": -0.1}, "temperature must be a number >= 0 (0 = greedy), not -0.1"),
    ({"temperature": "0.5"}, "temperature must be a number >= 0 (0 = greedy), not '0.5'"),
    ({"temperature": float("nan")}, "temperature must be a number >= 0 (0 = greedy), not nan"),
    ({"top_k": 0}, "top-k must be a whole number >= 1, or off, not 0"),
    ({"top_k": "off"}, "top-k must be a whole number >= 1, or off, not 'off'"),
    ({"top_k": True}, "top-k must be a whole number >= 1, or off, not True"),
    ({"top_p": 0.0}, "top-p must be a number in (0, 1] (1 = off), not 0.0"),
    ({"top_p": 1.5}, "top-p must be a number in (0, 1] (1 = off), not 1.5"),
    ({"max_new_tokens": 0}, "max-new-tokens must be a whole number from 1 to 100000, not 0"),
    ({"max_new_tokens": 10**9}, "max-new-tokens must be a whole number from 1 to 100000, not 1000000000"),
    ({"max_new_tokens": 5.0}, "max-new-tokens must be a whole number from 1 to 100000, not 5.0"),
    ({"seed": 2**70}, "seed must be a whole number from 0 to 2^63-1, or off (random), not 11805916207"),
    ({"seed": -1}, "seed must be a whole number from 0 to 2^63-1, or off (random), not -1"),
    ({"stop": "\n"}, "stop must be a list of non-empty strings"),
    ({"stop": ["a"]}, "stop must be a list of non-empty strings"),  # Settings holds a tuple
])
def test_bad_settings_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError) as e:
        Settings(**kwargs)
    assert str(e.value).startswith(message)


def test_unknown_prompt_characters_rejected_or_replaced(tiny_model, char_tok):
    backend = TorchBackend(tiny_model, char_tok)
    assert backend.unknown_chars("naïve ☃") == ["ï", "☃"]
    with pytest.raises(UnknownCharactersError, match="'ï', '☃'"):
        backend.stream("naïve ☃", Settings())
    gen = backend.stream("naïve ☃", Settings(unknown="replace", temperature=0.0, max_new_tokens=3))
    assert gen.prompt_ids == char_tok.encode("na ve  ")
    assert len(list(gen)) == 3


def test_empty_prompt_starts_from_end_of_text(tiny_model, char_tok):
    gen = TorchBackend(tiny_model, char_tok).stream("", Settings(max_new_tokens=3, seed=0))
    assert gen.prompt_ids == [char_tok.eot_id] and len(list(gen)) == 3


def test_long_prompt_is_cropped_to_the_window(tiny_model, char_tok):
    gen = TorchBackend(tiny_model, char_tok).stream("a" * 100, Settings(max_new_tokens=2, seed=0))
    assert len(gen.prompt_ids) == 32 and len(list(gen)) == 2


def test_load_backend_from_slim_checkpoint(tiny_ckpt, tiny_model, char_tok):
    backend = load_backend(tiny_ckpt)
    info = backend.info()
    assert (info.backend, info.block_size, info.device) == ("torch", 32, "cpu")
    assert info.vocab_size == char_tok.vocab_size
    assert info.vocab == char_tok.chars
    s = Settings(temperature=0.0, max_new_tokens=30)
    assert text_of(backend, "All", s) == text_of(TorchBackend(tiny_model, char_tok), "All", s)


def test_stepping_with_next_logits_and_accept_equals_iterating(tiny_model, char_tok):
    """The step-by-step API is the loop itself: sampling what next_logits gives and accepting it
    yields exactly the events next() yields, and the logits are computed once per step."""
    s = Settings(temperature=1.0, top_k=10, max_new_tokens=40, seed=2)  # crosses the 32-token window
    backend = TorchBackend(tiny_model, char_tok)
    iterated = list(backend.stream("All:", s))
    stepped = Generation(backend.decoder(), backend.tokenizer, "All:", s)
    events = []
    for _ in range(40):
        logits = stepped.next_logits()
        assert stepped.next_logits() is logits  # cached until a token is accepted
        events.append(stepped.accept(sample(logits, stepped.generator, s.temperature, s.top_k, s.top_p)))
    assert [(e.id, e.text, e.top) for e in events] == [(e.id, e.text, e.top) for e in iterated]


def test_accept_takes_any_candidate_and_refuses_ids_outside_the_vocabulary(tiny_model, char_tok):
    backend = TorchBackend(tiny_model, char_tok)
    gen = Generation(backend.decoder(), char_tok, "All", Settings(temperature=0.0))
    event = gen.accept(char_tok.stoi["z"])  # not the argmax: the user's pick
    assert (event.index, event.text, gen.text) == (0, "z", "z")
    assert event.prob == pytest.approx(torch.softmax(event.logits, -1)[event.id].item())
    with pytest.raises(ValueError, match=rf"token id {char_tok.vocab_size} is outside the vocabulary"):
        gen.accept(char_tok.vocab_size)
    # the next step sees the picked token: the same logits as a prompt that ends with it
    after = Generation(backend.decoder(), char_tok, "Allz", Settings(temperature=0.0)).next_logits()
    torch.testing.assert_close(gen.next_logits(), after, rtol=0, atol=1e-5)


def test_accepting_end_of_text_ends_the_stream_without_an_event(tiny_model, char_tok):
    gen = TorchBackend(tiny_model, char_tok).stream("All", Settings(temperature=0.0))
    with pytest.raises(StopIteration):
        gen.accept(char_tok.eot_id)
    assert gen.stop_reason == "eot" and gen.decoder is None and gen.text == ""
    with pytest.raises(StopIteration):
        gen.next_logits()


def test_backend_offers_a_fresh_decoder_and_its_model(tiny_model, char_tok):
    backend = TorchBackend(tiny_model, char_tok)
    a, b = backend.decoder(), backend.decoder()
    assert a.cache is not b.cache and backend.torch_model() is tiny_model
    assert backend.tokenizer is char_tok


def test_a_generation_can_start_from_ids_instead_of_text(tiny_model, char_tok):
    # step mode's undo rebuilds the loop from the ids it took: those must be fed as they are, cropped
    decoder = TorchDecoder(tiny_model)
    ids = char_tok.encode("ROMEO: But soft") * 10
    generation = Generation(decoder, char_tok, "", Settings(temperature=0.0), prompt_ids=ids)
    assert generation.prompt_ids == ids[-decoder.block_size:]
    text = "ROMEO: But soft" * 10
    by_text = Generation(TorchDecoder(tiny_model), char_tok, text, Settings(temperature=0.0))
    assert [e.id for e in itertools.islice(generation, 5)] == [e.id for e in itertools.islice(by_text, 5)]
