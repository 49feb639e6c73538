"""What a request may say, checked field by field, and the OpenAI-shaped error for what it may not.

Every check names the field as the API spells it (``top_p``, ``max_tokens``) and says what would
be accepted, in one line: a client's author reads it in an exception. Nothing here trusts the
body's types: JSON gives strings, numbers, booleans, null, lists and objects in any place, and a
number may be a float where a whole number belongs, a bool (which Python counts as an int), or
NaN (refused while parsing). The request's sampling knobs become ``Settings`` in one function,
``settings_from``; a field left out takes gpt-tui's default, so a request means what
`gpt-tui -p` with the same flags means.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from model.generate.backend import MAX_NEW_TOKENS, MAX_SEED, Settings
from model.generate.engine import N_TOP
from serve import chat
from tui.settings import fresh_seed

MAX_BODY = 1 << 20  # bytes: a prompt longer than any model's context is cut anyway (from the left)
MAX_STOPS = 16


class ApiError(Exception):
    """A request refused: the HTTP status and the body's ``{"error": {...}}`` fields."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code}}


@dataclass(frozen=True)
class Request:
    """A completion or chat request, checked: the text the model continues and how."""

    kind: Literal["completion", "chat"]
    prompt: str  # for chat, the messages through the template (serve.chat)
    settings: Settings
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage: a last chunk with the usage block
    logprobs: int | None = None  # candidates per token in the logprobs block; None: no block
    echo: bool = False  # completions: the prompt before the completion


# the fields each endpoint takes; anything else is refused by name, as OpenAI's API does
_SAMPLING = ("model", "max_tokens", "temperature", "top_p", "top_k", "min_p", "repetition_penalty",
             "frequency_penalty", "presence_penalty", "stop", "seed", "n", "stream", "stream_options",
             "logprobs", "user", "logit_bias")
COMPLETION_FIELDS = frozenset({*_SAMPLING, "prompt", "echo", "best_of", "suffix"})
CHAT_FIELDS = frozenset({*_SAMPLING, "messages", "max_completion_tokens", "top_logprobs"})


def parse_body(data: bytes) -> dict:
    """The body as a JSON object; ApiError naming what is wrong with it otherwise."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ApiError(400, f"the body is not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})") \
            from None
    try:
        body = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise ApiError(400, f"the body is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") \
            from None
    except RecursionError:
        raise ApiError(400, "the body is nested too deeply to be a request") from None
    except ValueError as e:  # NaN/Infinity (below), or an integer of over 4300 digits
        raise ApiError(400, f"the body is not valid JSON ({e})") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object like {\"model\": ..., \"prompt\": ...}")
    return body


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def check_model(body: Mapping, served: str) -> None:
    """The ``model`` field names the model this server holds (404 otherwise, as OpenAI answers)."""
    model = body.get("model")
    if not isinstance(model, str):
        raise ApiError(400, f"model must be a string naming the model (this server has {served!r})",
                       param="model")
    if model != served:
        raise ApiError(404, f"the model {_shown(model)} does not exist here; this server has {served!r} "
                            "(GET /v1/models lists it)", param="model", code="model_not_found")


def completion_request(body: Mapping) -> Request:
    """A /v1/completions body -> Request."""
    _known_fields(body, COMPLETION_FIELDS)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]  # clients send one prompt as a list of one
    if not isinstance(prompt, str):
        raise ApiError(400, "prompt must be a string (one prompt; lists of several and token ids are "
                            "not taken here)", param="prompt")
    _text(prompt, "prompt")
    _only(body, "best_of", (None, 1), "only 1 (one completion per request)")
    _only(body, "suffix", (None, ""), "not supported (the models here only continue text)")
    logprobs = _whole(body, "logprobs", 0, N_TOP)
    echo = bool(_boolean(body, "echo"))
    if echo and logprobs is not None:
        raise ApiError(400, "echo with logprobs would need the prompt's logprobs, which this server does "
                            "not compute; leave out one of them", param="echo")
    return Request("completion", prompt, settings_from(body), *_streaming(body), logprobs, echo)


def chat_request(body: Mapping) -> Request:
    """A /v1/chat/completions body -> Request, its messages rendered through serve.chat."""
    _known_fields(body, CHAT_FIELDS)
    prompt = chat.render(_messages(body.get("messages")))
    if body.get("max_tokens") is not None and body.get("max_completion_tokens") is not None:
        raise ApiError(400, "give max_tokens or max_completion_tokens, not both", param="max_tokens")
    top = _whole(body, "top_logprobs", 0, N_TOP)
    logprobs = (top or 0) if _boolean(body, "logprobs") else None
    if top is not None and logprobs is None:
        raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    return Request("chat", prompt, settings_from(body, chat.STOPS), *_streaming(body), logprobs)


def settings_from(body: Mapping, stops: tuple[str, ...] = ()) -> Settings:
    """The request's sampling knobs as Settings (the one place they are mapped); ``stops`` are
    added to the request's own. A seed left out is a fresh one, so the log can name it."""
    # every knob the request may set, None where it does not: Settings' default then holds
    changes: dict[str, object] = {name: _number(body, name, *bounds) for name, bounds in _RANGES.items()}
    top_k = _whole(body, "top_k", 0, None)
    changes["top_k"] = top_k or None  # 0 is off, as in llama.cpp's server
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    changes["max_new_tokens"] = _whole(body, name, 1, MAX_NEW_TOKENS)
    seed = _whole(body, "seed", 0, MAX_SEED)
    changes["seed"] = fresh_seed() if seed is None else seed
    changes["stop"] = (*_stops(body.get("stop")), *stops)
    _only(body, "n", (None, 1), "only 1 (one completion per request)")
    bias = body.get("logit_bias")
    if bias not in (None, {}):
        raise ApiError(400, "logit_bias is not supported; leave it out", param="logit_bias")
    if body.get("user") is not None and not isinstance(body.get("user"), str):
        raise ApiError(400, "user must be a string", param="user")
    try:
        return Settings(**{k: v for k, v in changes.items() if v is not None})  # type: ignore[arg-type]
    except ValueError as e:  # the checks above should leave nothing for Settings to refuse
        raise ApiError(400, str(e)) from None


# low, high (None = no bound), and how the bound reads in a message
_RANGES: dict[str, tuple[float, float | None, str]] = {
    "temperature": (0.0, None, ">= 0 (0 = greedy)"),
    "top_p": (0.0, 1.0, "in (0, 1] (1 = off)"),
    "min_p": (0.0, 1.0, "in [0, 1) (0 = off)"),
    "repetition_penalty": (1.0, None, ">= 1 (1 = off)"),
    "frequency_penalty": (-2.0, 2.0, "from -2 to 2"),  # OpenAI's, over the generated tokens
    "presence_penalty": (-2.0, 2.0, "from -2 to 2"),
}


def _known_fields(body: Mapping, allowed: frozenset[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(400, f"unrecognized request argument {_shown(unknown[0])}; docs/serve.md lists "
                            "the fields this server takes", param=unknown[0])


def _streaming(body: Mapping) -> tuple[bool, bool]:
    stream = bool(_boolean(body, "stream"))
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not stream:
        raise ApiError(400, "stream_options needs stream: true", param="stream_options")
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise ApiError(400, "stream_options must be an object like {\"include_usage\": true}",
                       param="stream_options")
    return stream, bool(_boolean(options, "include_usage", "stream_options.include_usage"))


def _messages(messages: object) -> list[tuple[str, str]]:
    """(role, text) of each message; roles and contents checked."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list of {\"role\", \"content\"} objects",
                       param="messages")
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise ApiError(400, f"{where} must be an object with a role and a content", param=where)
        role = message.get("role")
        if role not in chat.ROLES:
            raise ApiError(400, f"{where}.role must be one of {', '.join(chat.ROLES)}, not {_shown(role)}",
                           param=f"{where}.role")
        out.append((role, _text(_content(message.get("content"), f"{where}.content"), f"{where}.content")))
    return out


def _content(content: object, where: str) -> str:
    """A message's text: a string, or a list of text parts (as newer clients send it)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise ApiError(400, f"{where} must be a string or a list of {{\"type\": \"text\", \"text\": ...}} parts "
                        "(the models here read text only)", param=where)


def _stops(stop: object) -> tuple[str, ...]:
    stops = (stop,) if isinstance(stop, str) else stop if stop is not None else ()
    if not isinstance(stops, (list, tuple)) or not all(isinstance(s, str) and s for s in stops):
        raise ApiError(400, "stop must be a non-empty string or a list of them", param="stop")
    if len(stops) > MAX_STOPS:
        raise ApiError(400, f"stop takes at most {MAX_STOPS} strings, not {len(stops)}", param="stop")
    return tuple(_text(s, "stop") for s in stops)


def _text(text: str, where: str) -> str:
    """``text``, refused when it holds a lone surrogate (JSON's \\ud800 escapes): not text at all."""
    bad = next((c for c in text if 0xD800 <= ord(c) < 0xE000), None)
    if bad is not None:
        raise ApiError(400, f"{where} holds a lone surrogate (\\u{ord(bad):04x}), which is not text",
                       param=where)
    return text


def _number(body: Mapping, name: str, low: float, high: float | None, what: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    # the open ends: top_p > 0, min_p < 1
    if ok and (value < low or (high is not None and value > high) or (name == "top_p" and value == 0)
               or (name == "min_p" and value == 1)):
        ok = False
    if not ok:
        raise ApiError(400, f"{name} must be a number {what}, not {_shown(value)}", param=name)
    return float(value)


def _whole(body: Mapping, name: str, low: int, high: int | None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low \
            or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f">= {low}"
        raise ApiError(400, f"{name} must be a whole number {bounds}, not {_shown(value)}", param=name)
    return value


def _boolean(body: Mapping, name: str, where: str | None = None) -> bool | None:
    value, where = body.get(name), where or name
    if value is not None and not isinstance(value, bool):
        raise ApiError(400, f"{where} must be true or false, not {_shown(value)}", param=where)
    return value


def _only(body: Mapping, name: str, allowed: tuple, what: str) -> None:
    if body.get(name) not in allowed or isinstance(body.get(name), bool):
        raise ApiError(400, f"{name}: {what}", param=name)


def _shown(value: object) -> str:
    """A value for a message: its JSON, cut short (a client may send a megabyte in one field)."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):  # a huge int: json.dumps refuses over 4300 digits
        text = f"a {type(value).__name__}"
    return text if len(text) <= 40 else text[:37] + "..."
