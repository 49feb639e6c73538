"""gpt-serve live: a server on 127.0.0.1 and a free port, on a tiny model, driven by the official
openai client (whole and streamed), httpx for what that client would never send, and gpt-tui -p as
the reference every seeded answer must equal, whatever else the batch is running."""

from __future__ import annotations

import contextlib
import json
import threading
import time

import pytest

pytest.importorskip("fastapi")  # the serve extra (in dev)
# a live server in a thread: loading, starting and a -p run per reference take seconds in all
pytestmark = pytest.mark.slow
import httpx  # noqa: E402
import openai  # noqa: E402
import uvicorn  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from model.generate.torch_backend import load_backend  # noqa: E402
from serve.app import Service, create_app  # noqa: E402
from serve.cli import listen  # noqa: E402
from serve.schema import MAX_BODY  # noqa: E402
from tui.cli import main as gpt_tui  # noqa: E402

# greedy never ends the tiny model's text: a stream that runs until its client goes
LONG = {"temperature": 0, "max_tokens": 100_000}


@contextlib.contextmanager
def running(ckpt, parallel=4, queue=8, api_key=None):
    """A server on 127.0.0.1:<free port> in a thread -> (base URL, its Service, its log lines)."""
    lines: list[str] = []
    service = Service(load_backend(ckpt), "tiny", parallel, queue, api_key, lines.append)
    server = uvicorn.Server(uvicorn.Config(create_app(service), log_level="warning", access_log=False))
    sock, address = listen("127.0.0.1", 0)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield address, service, lines
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture(scope="module")
def server(tiny_ckpt):
    with running(tiny_ckpt) as started:
        yield started


@pytest.fixture
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server[0]}/v1", api_key="unused", max_retries=0, timeout=30)


def one_shot(ckpt, prompt: str, *flags: str) -> str:
    """What `gpt-tui -p PROMPT FLAGS` prints."""
    result = CliRunner().invoke(gpt_tui, ["--ckpt", str(ckpt), "--device", "cpu", "-p", prompt, *flags])
    assert result.exit_code == 0, result.output
    return result.stdout  # notices (a prompt cut to the window) go to stderr


def test_a_completion_is_the_one_shot_text_of_its_seed(client, tiny_ckpt):
    answer = client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=40, temperature=1.0, seed=7,
                                       extra_body={"top_k": 20})
    expect = one_shot(tiny_ckpt, "ROMEO:", "-n", "40", "--temperature", "1.0", "--seed", "7", "--top-k", "20")
    assert answer.choices[0].text == expect and expect
    assert answer.choices[0].finish_reason in ("stop", "length") and answer.model == "tiny"
    # a character model: a token per character (an end of text is no token)
    assert answer.usage.prompt_tokens == 6 and answer.usage.completion_tokens == len(expect)


def test_a_streamed_chat_is_the_one_shot_text_of_its_rendered_prompt(client, tiny_ckpt):
    messages = [{"role": "system", "content": "Go."}, {"role": "user", "content": "Hi"}]
    stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=60, temperature=0.9,
                                            seed=3, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    prompt = "System: Go.\nUser: Hi\nAssistant:"  # 31 characters: inside the tiny model's window
    expect = one_shot(tiny_ckpt, prompt, "-n", "60", "--temperature", "0.9", "--seed", "3",
                      "--stop", "\\nUser:")
    assert text == expect and expect
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == len(prompt)
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=60, temperature=0.9,
                                           seed=3)
    assert whole.choices[0].message.content == text and whole.choices[0].message.role == "assistant"


def test_two_concurrent_streams_with_different_seeds_equal_their_one_shot_runs(server, client, tiny_ckpt):
    _, service, _ = server
    batch = service.scheduler.batch
    sizes: list[int] = []
    step = batch.step

    def gated_step():  # the first step waits for both requests, so they share the batch from then on
        deadline = time.monotonic() + 10
        while not sizes and service.scheduler.active < 2 and time.monotonic() < deadline:
            time.sleep(0.001)
        sizes.append(len(batch))
        return step()

    jobs = {"a": ("ROMEO:", 1.0, 11), "b": ("First Citizen:", 0.8, 12)}
    texts: dict[str, str] = {}

    def stream(key: str) -> None:
        prompt, temperature, seed = jobs[key]
        chunks = client.completions.create(model="tiny", prompt=prompt, max_tokens=120,
                                           temperature=temperature, seed=seed, stream=True)
        texts[key] = "".join(c.choices[0].text for c in chunks)

    batch.step = gated_step
    try:
        threads = [threading.Thread(target=stream, args=(k,)) for k in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        del batch.step
    assert max(sizes) == 2  # they did run side by side
    for key, (prompt, temperature, seed) in jobs.items():
        assert texts[key] == one_shot(tiny_ckpt, prompt, "-n", "120", "--temperature", str(temperature),
                                      "--seed", str(seed))


def test_logprobs_are_the_models_own_and_greedy_picks_the_top_one(client):
    answer = client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=8, temperature=0, logprobs=3)
    block = answer.choices[0].logprobs
    assert "".join(block.tokens) == answer.choices[0].text and len(block.tokens) == 8
    for chosen, top, at in zip(block.token_logprobs, block.top_logprobs, block.text_offset, strict=True):
        assert len(top) == 3 and chosen == max(top.values()) and chosen <= 0
        assert at == block.text_offset[0] + sum(map(len, block.tokens[:block.text_offset.index(at)]))
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}],
                                          max_tokens=4, temperature=0, logprobs=True, top_logprobs=2)
    content = chat.choices[0].logprobs.content
    assert [len(c.top_logprobs) for c in content] == [2] * len(content)
    assert all(c.logprob == c.top_logprobs[0].logprob for c in content)


def test_models_health_and_echo(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"
    assert httpx.get(f"{server[0]}/health").json() == {"status": "ok"}
    echoed = client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=5, temperature=0, echo=True)
    plain = client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=5, temperature=0)
    assert echoed.choices[0].text == "ROMEO:" + plain.choices[0].text


def error(response: httpx.Response) -> tuple[int, str, str | None]:
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return response.status_code, body["error"]["message"], body["error"]["param"]


@pytest.mark.parametrize("content, status, message, param", [
    (b'{"model": "tiny", "prompt": ', 400,
     "the body is not valid JSON (Expecting value at line 1 column 29)", None),
    (b'{"model": "tiny", "prompt": 5}', 400,
     "prompt must be a string (one prompt; lists of several and token ids are not taken here)", "prompt"),
    (b'{"model": "tiny", "prompt": "x", "top_p": 2}', 400,
     "top_p must be a number in (0, 1] (1 = off), not 2", "top_p"),
    (b'{"model": "nope", "prompt": "x"}', 404,
     "the model \"nope\" does not exist here; this server has 'tiny' (GET /v1/models lists it)", "model"),
    ('{"model": "tiny", "prompt": "caf\u00e9 \u20ac"}'.encode(), 400,
     "prompt holds 2 character(s) the model does not know: 'é', '€'; remove them", "prompt"),
    (b"x" * (MAX_BODY + 1), 413,
     f"the body is over {MAX_BODY} bytes; send a shorter prompt (the model reads only its last 32 tokens "
     "anyway)", None),
])
def test_a_bad_request_is_an_openai_shaped_4xx_and_the_server_lives_on(server, content, status, message,
                                                                       param):
    url = f"{server[0]}/v1/completions"
    assert error(httpx.post(url, content=content, timeout=30)) == (status, message, param)
    again = httpx.post(url, json={"model": "tiny", "prompt": "x", "max_tokens": 2}, timeout=30)
    assert again.status_code == 200 and again.json()["usage"]["completion_tokens"] <= 2


def test_unknown_paths_and_methods_answer_in_the_same_shape(server):
    assert error(httpx.get(f"{server[0]}/v2/nothing")) == (404, "GET /v2/nothing: Not Found", None)
    assert error(httpx.get(f"{server[0]}/v1/completions")) == (405, "GET /v1/completions: Method Not Allowed",
                                                               None)


def test_a_prompt_over_the_context_is_cut_from_the_left(client, tiny_ckpt):
    prompt = "But, soft! what light through yonder window breaks? " * 3  # 156 characters, block 32
    answer = client.completions.create(model="tiny", prompt=prompt, max_tokens=10, temperature=0)
    assert answer.usage.prompt_tokens == 32
    assert answer.choices[0].text == one_shot(tiny_ckpt, prompt[-32:], "-n", "10", "--temperature", "0")


def test_a_client_gone_mid_stream_frees_its_row_within_a_step(server):
    address, service, lines = server
    scheduler = service.scheduler
    asked: list[int] = []  # scheduler.steps when the server saw the client go, and when the row was freed
    freed: list[int] = []
    cancel, batch_cancel = scheduler.cancel, scheduler.batch.cancel
    scheduler.cancel = lambda job: (asked.append(scheduler.steps), cancel(job))[1]
    scheduler.batch.cancel = lambda g: (freed.append(scheduler.steps), batch_cancel(g))[1]
    try:
        with httpx.stream("POST", f"{address}/v1/completions", timeout=30,
                          json={"model": "tiny", "prompt": "ROMEO:", "stream": True, **LONG}) as response:
            lines_read = 0
            for line in response.iter_lines():
                lines_read += line.startswith("data: ")
                if lines_read == 5:
                    break
            (job,) = service.inboxes  # the one request in flight
            generation = job.generation
        deadline = time.monotonic() + 10
        while len(scheduler.batch) and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(scheduler.batch) == 0 and scheduler.active == 0
        assert generation.stop_reason == "stopped" and len(generation.ids) < 100_000
        assert len(asked) == len(freed) == 1 and freed[0] - asked[0] <= 1
        assert any("client went away" in line for line in lines)
    finally:
        del scheduler.cancel, scheduler.batch.cancel


def test_a_full_queue_is_a_429_and_a_key_is_asked_for(tiny_ckpt):
    with running(tiny_ckpt, parallel=1, queue=0, api_key="s3cret") as (address, service, _):
        url, key = f"{address}/v1/completions", {"Authorization": "Bearer s3cret"}
        body = {"model": "tiny", "prompt": "ROMEO:"}
        assert error(httpx.post(url, json=body)) == (401, "this server needs an API key: send Authorization: "
                     "Bearer KEY with the key gpt-serve was started with (--api-key)", None)
        assert httpx.post(url, json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(f"{address}/health").status_code == 200  # open: a load balancer's probe has no key
        with httpx.stream("POST", url, headers=key, json={**body, "stream": True, **LONG}) as running_one:
            lines = running_one.iter_lines()  # kept: a dropped iterator closes the connection
            next(lines)
            assert error(httpx.post(url, headers=key, json=body)) == (
                429, "all 1 rows are busy and 0 requests wait already; retry in a moment", None)
        deadline = time.monotonic() + 10
        while service.scheduler.active and time.monotonic() < deadline:
            time.sleep(0.005)
        answer = httpx.post(url, headers=key, json={**body, "max_tokens": 3}, timeout=30)
        assert answer.status_code == 200 and json.loads(answer.text)["usage"]["completion_tokens"] == 3


def test_abandoned_whole_requests_free_their_rows_and_queue_places(server):
    address, service, _ = server
    body = {"model": "tiny", "prompt": "ROMEO:", **LONG}

    def abandon() -> None:  # the client gives up before the answer (100000 tokens) could come
        with contextlib.suppress(httpx.TimeoutException):
            httpx.post(f"{address}/v1/completions", json=body, timeout=0.5)

    threads = [threading.Thread(target=abandon) for _ in range(10)]  # 4 rows, 6 waiting
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    deadline = time.monotonic() + 10
    while service.scheduler.active and time.monotonic() < deadline:
        time.sleep(0.01)
    assert service.scheduler.active == 0 and len(service.scheduler.batch) == 0 and not service.inboxes
    assert service.open == 0
