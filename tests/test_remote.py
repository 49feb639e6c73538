"""The app's generation process (tui.remote) on the real tiny model: the same tokens as in process,
settings and stop reach it mid-stream, its errors cross the pipe, a dead child ends its stream
with a clear error, and the app streams through it."""

from __future__ import annotations

import asyncio

import pytest
import torch

from model.generate.backend import Settings
from model.generate.engine import Generation
from model.tokenizer import UnknownCharactersError
from tui.app import GPTApp
from tui.backends import TorchFactory
from tui.remote import RemoteBackend, RemoteGeneration

pytestmark = pytest.mark.slow  # every test starts a Python child that imports torch

# from "All:\n" the tiny model does not end by itself; a test that relies on stopping it earlier
# fails (rather than hangs) if the stop never arrives: it would run to the bound
BOUND = 5000
ENDLESS = Settings(temperature=0, max_new_tokens=BOUND)


def start(tiny_ckpt) -> RemoteBackend:
    factory = TorchFactory(tiny_ckpt)
    backend = RemoteBackend(factory(lambda message: None), factory, threads=1)
    assert backend.wait_ready(60), backend.failure
    return backend


@pytest.fixture(scope="module")
def remote(tiny_ckpt):
    backend = start(tiny_ckpt)
    yield backend
    backend.close()


def test_the_child_streams_the_tokens_the_engine_streams_in_process(remote):
    settings = Settings(temperature=0.8, top_k=10, max_new_tokens=80, seed=4)  # crosses block 32
    here = list(remote.local.stream("ROMEO:\n", settings))
    generation = remote.stream("ROMEO:\n", settings)
    there = list(generation)
    assert isinstance(generation, RemoteGeneration)
    # what the views use in this process comes from the local backend
    assert remote.torch_model() is remote.local.torch_model() and remote.tokenizer is remote.local.tokenizer
    assert [e.id for e in there] == [e.id for e in here] and len(there) == 80
    assert "".join(e.text for e in there) == "".join(e.text for e in here)
    # the child computes on 1 thread, this process on all: sums may round differently in the last bit
    assert [[c.id for c in e.top] for e in there] == [[c.id for c in e.top] for e in here]
    assert all(torch.allclose(a.logits, b.logits, atol=1e-5) for a, b in zip(there, here, strict=True))
    assert [e.prob for e in there] == pytest.approx([e.prob for e in here], abs=1e-6)
    assert generation.stop_reason == "max_tokens"


def test_new_settings_reach_the_child_mid_stream(remote):
    generation = remote.stream("All:\n", ENDLESS)
    next(generation)
    generation.settings = Settings(temperature=0, max_new_tokens=1)  # stop at the next token
    rest = list(generation)
    assert generation.stop_reason == "max_tokens" and 1 + len(rest) < BOUND  # stopped early, not at the end


def test_close_stops_the_child_and_the_next_stream_starts_clean(remote):
    generation = remote.stream("All:\n", ENDLESS)
    next(generation)
    generation.close()
    assert list(generation) == [] and generation.stop_reason == "stopped"
    # none of the closed stream's tokens leak into the next one
    settings = Settings(temperature=0.8, max_new_tokens=40, seed=4)
    fresh = [e.id for e in remote.stream("All:\n", settings)]
    assert fresh == [e.id for e in remote.local.stream("All:\n", settings)]


def test_a_prompt_the_child_refuses_raises_the_same_error_here(remote):
    settings = Settings(unknown="reject")
    with pytest.raises(UnknownCharactersError) as here:
        remote.local.stream("caf\u00e9", settings)
    with pytest.raises(UnknownCharactersError) as there:
        remote.stream("caf\u00e9", settings)
    assert str(there.value) == str(here.value) and there.value.chars == ["\u00e9"]


def test_a_dead_child_ends_its_stream_with_an_error_and_streams_go_in_process(tiny_ckpt):
    backend = start(tiny_ckpt)
    generation = backend.stream("All:\n", ENDLESS)
    next(generation)
    backend.process.kill()
    with pytest.raises(RuntimeError, match=r"^the generation process exited \(code -9\)$"):
        list(generation)
    assert not backend.ready and backend.failure == "the generation process exited (code -9)"
    fallback = backend.stream("ROMEO:\n", Settings(max_new_tokens=5, seed=1))
    assert isinstance(fallback, Generation) and len(list(fallback)) == 5


def test_streams_run_in_process_until_the_child_is_ready(tiny_ckpt):
    factory = TorchFactory(tiny_ckpt)
    backend = RemoteBackend(factory(lambda message: None), factory, threads=1)
    try:
        assert not backend.ready  # a new interpreter takes a second or more to import torch
        assert isinstance(backend.stream("ROMEO:\n", Settings(max_new_tokens=5, seed=1)), Generation)
    finally:
        backend.close()
    assert not backend.process.is_alive()


def test_the_app_streams_through_the_child_and_stops_it(remote, tmp_path):
    settings = Settings(temperature=0.8, max_new_tokens=60, seed=5)
    expected = "".join(e.text for e in remote.local.stream("ROMEO:\n", settings))

    async def run() -> tuple[str, str, str | None]:
        app = GPTApp(remote, settings=settings, session_dir=tmp_path)
        async with app.run_test(size=(100, 30)) as pilot:
            app.start("ROMEO:\n")
            await app.workers.wait_for_complete()
            await pilot.pause()
            text = app.current.text
            app.settings = ENDLESS
            app.start("All:\n")
            await pilot.pause(0.3)
            await pilot.press("escape")
            await app.workers.wait_for_complete()
            await pilot.pause()
            return text, app.current.stop_reason, app.current.error

    text, stop_reason, error = asyncio.run(run())
    assert text == expected
    assert stop_reason == "stopped" and error is None
