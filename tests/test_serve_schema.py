"""gpt-serve's requests and answers without a server: what a body may say, the one mapping of its
knobs to Settings, the chat template, the OpenAI-shaped bodies, and the scheduler on its own."""

from __future__ import annotations

import math
import threading
import time

import pytest

from model.generate.backend import Candidate, Settings, TokenEvent
from model.generate.torch_backend import TorchBackend
from serve import chat
from serve.responses import Reply, logprob
from serve.scheduler import Draining, Ended, Job, QueueFull, Scheduler, Started
from serve.schema import ApiError, chat_request, check_model, completion_request, parse_body

X = {"model": "m", "prompt": "x"}  # a request that parses; the cases below add one bad field


def refusal(parse, body) -> tuple[int, str, str | None]:
    with pytest.raises(ApiError) as e:
        parse(body)
    return e.value.status, e.value.message, e.value.param


def test_knobs_map_onto_settings_with_gpt_tui_defaults():
    request = completion_request({"model": "m", "prompt": "ROMEO:", "temperature": 0, "top_p": 0.9,
                                  "top_k": 5, "min_p": 0.05, "repetition_penalty": 1.2, "max_tokens": 7,
                                  "seed": 3,
                                  "stop": "\n\n", "frequency_penalty": 0, "presence_penalty": 0.0, "n": 1,
                                  "user": "someone", "logit_bias": {}})
    assert request.settings == Settings(temperature=0.0, top_p=0.9, top_k=5, min_p=0.05,
                                        repetition_penalty=1.2, max_new_tokens=7, seed=3, stop=("\n\n",))
    penalised = completion_request({**X, "seed": 1, "frequency_penalty": 0.5, "presence_penalty": -1})
    assert penalised.settings == Settings(seed=1, frequency_penalty=0.5, presence_penalty=-1.0)
    plain = completion_request({**X, "seed": 1, "top_k": 0})  # 0 = off
    assert plain.settings == Settings(seed=1) and not plain.stream and plain.logprobs is None
    fresh = completion_request({"model": "m", "prompt": "x"}).settings.seed
    assert isinstance(fresh, int) and 0 <= fresh < 2**31  # a seed the log can name


def test_chat_renders_the_documented_template_and_stops_at_the_next_user_turn():
    request = chat_request({"model": "m", "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": [{"type": "text", "text": "Who?"}]}],
        "stop": ["END"], "max_completion_tokens": 9, "logprobs": True, "top_logprobs": 2})
    assert request.prompt == "System: Be brief.\nUser: Hi\nAssistant: Hello.\nUser: Who?\nAssistant:"
    assert request.settings.stop == ("END", "\nUser:") and request.settings.max_new_tokens == 9
    assert request.logprobs == 2 and chat.STOPS == ("\nUser:",)


@pytest.mark.parametrize("body, status, message, param", [
    ({"prompt": "x"}, 400, "model must be a string naming the model (this server has 'm')", "model"),
    ({"model": "gpt-4", "prompt": "x"}, 404, "the model \"gpt-4\" does not exist here; this server has 'm' "
     "(GET /v1/models lists it)", "model"),
    ({"model": "m"}, 400, "prompt must be a string (one prompt; lists of several and token ids are not taken "
     "here)", "prompt"),
    ({"model": "m", "prompt": [1, 2]}, 400, "prompt must be a string (one prompt; lists of several and token "
     "ids are not taken here)", "prompt"),
    ({**X, "temperature": "hot"}, 400, "temperature must be a number >= 0 "
     "(0 = greedy), not \"hot\"", "temperature"),
    ({**X, "temperature": -1}, 400, "temperature must be a number >= 0 (0 = greedy), "
     "not -1", "temperature"),
    ({**X, "top_p": 0}, 400, "top_p must be a number in (0, 1] (1 = off), not 0",
     "top_p"),
    ({**X, "min_p": 1}, 400, "min_p must be a number in [0, 1) (0 = off), not 1",
     "min_p"),
    ({**X, "top_k": 2.5}, 400, "top_k must be a whole number >= 0, not 2.5", "top_k"),
    ({**X, "max_tokens": 0}, 400, "max_tokens must be a whole number from 1 to 100000, "
     "not 0", "max_tokens"),
    ({**X, "max_tokens": True}, 400, "max_tokens must be a whole number from 1 to "
     "100000, not true", "max_tokens"),
    ({**X, "seed": -1}, 400, "seed must be a whole number from 0 to "
     "9223372036854775807, not -1", "seed"),
    ({**X, "stop": ["", "a"]}, 400, "stop must be a non-empty string or a list of them",
     "stop"),
    ({**X, "stop": ["s"] * 17}, 400, "stop takes at most 16 strings, not 17", "stop"),
    ({**X, "n": 2}, 400, "n: only 1 (one completion per request)", "n"),
    ({**X, "frequency_penalty": -2.5}, 400, "frequency_penalty must be a number from -2 "
     "to 2, not -2.5", "frequency_penalty"),
    ({**X, "presence_penalty": 3}, 400, "presence_penalty must be a number from -2 "
     "to 2, not 3", "presence_penalty"),
    ({**X, "logprobs": 6}, 400, "logprobs must be a whole number from 0 to 5, not 6",
     "logprobs"),
    ({**X, "logprobs": 1, "echo": True}, 400, "echo with logprobs would need the "
     "prompt's logprobs, which this server does not compute; leave out one of them", "echo"),
    ({**X, "stream": "yes"}, 400, "stream must be true or false, not \"yes\"",
     "stream"),
    ({**X, "stream_options": {"include_usage": True}}, 400,
     "stream_options needs stream: true", "stream_options"),
    ({**X, "tools": []}, 400, "unrecognized request argument \"tools\"; "
     "docs/serve.md lists the fields this server takes", "tools"),
    ({"model": "m", "prompt": "\ud800"}, 400, "prompt holds a lone surrogate (\\ud800), which is not text",
     "prompt"),
    ({**X, "suffix": "y"}, 400, "suffix: not supported (the models here only continue "
     "text)", "suffix"),
])
def test_a_bad_completion_request_is_refused_naming_its_field(body, status, message, param):
    def parse(b):
        check_model(b, "m")
        return completion_request(b)
    assert refusal(parse, body) == (status, message, param)


@pytest.mark.parametrize("body, message, param", [
    ({"messages": []}, "messages must be a non-empty list of {\"role\", \"content\"} objects", "messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role must be one of system, developer, "
     "user, assistant, not \"robot\"", "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content must be a "
     "string or a list of {\"type\": \"text\", \"text\": ...} parts (the models here read text only)",
     "messages[0].content"),
    ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "top_logprobs needs logprobs: true",
     "top_logprobs"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 3, "max_completion_tokens": 3},
     "give max_tokens or max_completion_tokens, not both", "max_tokens"),
])
def test_a_bad_chat_request_is_refused_naming_its_field(body, message, param):
    assert refusal(chat_request, {"model": "m", **body}) == (400, message, param)


@pytest.mark.parametrize("data, message", [
    (b"{", "the body is not valid JSON (Expecting property name enclosed in double quotes at line 1 "
     "column 2)"),
    (b"[1]", "the body must be a JSON object like {\"model\": ..., \"prompt\": ...}"),
    (b"\xff{}", "the body is not valid UTF-8 (byte 0xff at offset 0)"),
    (b'{"temperature": NaN}', "the body is not valid JSON (NaN is not a JSON number)"),
    (b"[" * 100_000, "the body is nested too deeply to be a request"),
    (b'{"seed": 1' + b"0" * 5000 + b"}", "the body is not valid JSON (Exceeds the limit (4300 digits) for "
     "integer string conversion: value has 5001 digits; use sys.set_int_max_str_digits() to increase the "
     "limit)"),
])
def test_a_body_that_is_not_a_json_object_is_one_clear_400(data, message):
    assert refusal(parse_body, data) == (400, message, None)


def event(index: int, text: str, prob: float, top: tuple[tuple[str, float], ...]) -> TokenEvent:
    return TokenEvent(index, 0, text, prob, tuple(Candidate(i, t, p) for i, (t, p) in enumerate(top)))


def test_a_reply_cuts_its_stop_string_and_builds_the_openai_logprobs_block():
    request = completion_request({"model": "m", "prompt": "Q", "stop": "\nA", "logprobs": 1, "seed": 1})
    reply = Reply(request, "m")
    shown = [reply.token(event(0, "ok", 0.5, (("ok", 0.5), ("no", 0.25)))),
             reply.token(event(1, "\n", 0.25, (("\n", 0.25),))),
             reply.token(event(2, "A", 1.0, (("A", 1.0),)))]
    shown.append(reply.end("stop_string", 3))
    reply.prompt_tokens = 1
    body = reply.body()
    assert "".join(shown) == body["choices"][0]["text"] == "ok"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}
    # the stop string's tokens go with it; one candidate each, as asked
    assert body["choices"][0]["logprobs"] == {"tokens": ["ok"], "token_logprobs": [math.log(0.5)],
                                              "top_logprobs": [{"ok": math.log(0.5)}], "text_offset": [0]}
    assert logprob(0.0) == math.log(1.4e-45)  # finite: JSON has no -Infinity


def test_a_chat_reply_has_the_chat_shape():
    request = chat_request({"model": "m", "messages": [{"role": "user", "content": "Hi"}], "logprobs": True,
                            "top_logprobs": 1, "seed": 1})
    reply = Reply(request, "m")
    reply.token(event(0, " yo", 0.5, ((" yo", 0.5), (" no", 0.1))))
    reply.end("max_tokens", 1)
    choice = reply.body()["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": " yo"}
    assert choice["finish_reason"] == "length"
    yo = {"token": " yo", "logprob": math.log(0.5), "bytes": [32, 121, 111]}
    assert choice["logprobs"] == {"content": [{**yo, "top_logprobs": [yo]}]}
    assert reply.first_chunk()["choices"][0]["delta"] == {"role": "assistant", "content": ""}


class Collected:
    """A scheduler's post: every message per job, and an event per ended job."""

    def __init__(self):
        self.messages: dict[Job, list] = {}
        self.ended = threading.Condition()

    def __call__(self, out):
        with self.ended:
            for job, message in out:
                self.messages.setdefault(job, []).append(message)
            self.ended.notify_all()

    def wait_ended(self, jobs, timeout=10.0):
        with self.ended:
            assert self.ended.wait_for(lambda: all(isinstance(self.messages.get(j, [None])[-1], Ended)
                                                   for j in jobs), timeout)


def test_the_scheduler_gives_each_job_its_alone_tokens_and_refuses_past_its_queue(tiny_model, char_tok):
    backend = TorchBackend(tiny_model, char_tok)
    posted = Collected()
    scheduler = Scheduler(backend.batch_decoder(2), char_tok, queue=1, post=posted)
    settings = [Settings(temperature=1.0, seed=s, max_new_tokens=20) for s in (1, 2, 3)]
    jobs = [Job("ROMEO:", s) for s in settings]
    for job in jobs:  # not started yet: they wait
        scheduler.submit(job)
    with pytest.raises(QueueFull):  # 2 rows + 1 waiting
        scheduler.submit(Job("x", settings[0]))
    scheduler.start()
    try:
        posted.wait_ended(jobs)
        for job, s in zip(jobs, settings, strict=True):
            alone = backend.stream("ROMEO:", s)
            messages = posted.messages[job]
            assert messages[0] == Started(6)
            assert [m.id for m in messages[1:-1]] == [e.id for e in alone]
            assert messages[-1] == Ended(alone.stop_reason, len(alone.ids))
        assert scheduler.active == 0 and len(scheduler.batch) == 0
    finally:
        scheduler.close()


def test_a_drain_ends_every_job_at_its_deadline_and_refuses_new_ones(tiny_model, char_tok):
    backend = TorchBackend(tiny_model, char_tok)
    posted = Collected()
    scheduler = Scheduler(backend.batch_decoder(1), char_tok, queue=4, post=posted)
    long = Settings(temperature=0.0, max_new_tokens=100_000)  # greedy never ends this random model's text
    running, waiting = Job("ROMEO:", long), Job("x", long)
    scheduler.submit(running)
    scheduler.submit(waiting)
    scheduler.start()
    try:
        deadline = time.monotonic() + 10
        while not posted.messages.get(running) and time.monotonic() < deadline:
            time.sleep(0.001)
        scheduler.drain(0.05)
        with pytest.raises(Draining):
            scheduler.submit(Job("y", long))
        posted.wait_ended([running, waiting])
        assert posted.messages[running][-1].reason == "stopped"
        assert 0 < posted.messages[running][-1].completion_tokens < 100_000
        assert posted.messages[waiting] == [Ended("stopped")]  # never had a row
        assert scheduler.active == 0 and len(scheduler.batch) == 0
    finally:
        scheduler.close()
