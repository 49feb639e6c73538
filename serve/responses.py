"""OpenAI-shaped answers: completions and chat completions, whole or as stream chunks, with their
usage and logprobs blocks; the field names and finish reasons are the API's own.

A ``Reply`` follows one request's tokens as they come: the text a client may see (the stop string
held back and cut, as tui.stops does for the app), the logprobs of each token, the counts for the
usage block. The HTTP layer feeds it scheduler messages and asks it for bodies.
"""

from __future__ import annotations

import math
import secrets
import time

from model.generate.backend import StopReason, TokenEvent
from serve.schema import Request
from tui.stops import StopFilter, trim_stop

# the engine's stop reasons as OpenAI's finish_reason: "abort" (as vLLM says) is a request the
# server ended, at shutdown after the drain
FINISH: dict[StopReason | None, str] = {"eot": "stop", "stop_string": "stop", "max_tokens": "length",
                                        "stopped": "abort", None: "abort"}
# a probability that underflowed to 0 has no logarithm; float32's smallest one stands in (JSON has
# no -Infinity)
_LOG_TINY = math.log(1.4e-45)


def logprob(p: float) -> float:
    return math.log(p) if p > 0 else _LOG_TINY


class Reply:
    """One request's answer as its tokens arrive."""

    def __init__(self, request: Request, model: str):
        self.request, self.model = request, model
        prefix = "chatcmpl" if request.kind == "chat" else "cmpl"
        self.id = f"{prefix}-{secrets.token_hex(12)}"
        self.created = int(time.time())
        self.shown = StopFilter(request.settings.stop)
        self.events: list[TokenEvent] = []
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.finish: str | None = None  # OpenAI's finish_reason, once it has ended
        self.error: str | None = None  # the model failed: what to tell the client
        self.started = time.perf_counter()

    # what arrives

    def token(self, event: TokenEvent) -> str:
        """Take a token; the text that can be shown now ("" while a stop string may be starting)."""
        self.events.append(event)
        return self.shown.feed(event.text)

    def end(self, reason: StopReason | None, completion_tokens: int) -> str:
        """The request has ended; the text held back until now."""
        self.finish = FINISH[reason]
        self.completion_tokens = completion_tokens
        return self.shown.end()

    # whole answers

    def text(self) -> str:
        """The completion without its stop string."""
        return trim_stop("".join(e.text for e in self.events), self.request.settings.stop)

    def usage(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}

    def body(self) -> dict:
        """The whole answer (a non-streamed request)."""
        text = self.text()
        kept = self._kept(len(text))
        if self.request.kind == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": text},
                      "logprobs": self._chat_logprobs(kept), "finish_reason": self.finish}
            return {"id": self.id, "object": "chat.completion", "created": self.created,
                    "model": self.model, "choices": [choice], "usage": self.usage()}
        start = len(self.request.prompt) if self.request.echo else 0
        if self.request.echo:
            text = self.request.prompt + text
        choice = {"index": 0, "text": text, "logprobs": self._completion_logprobs(kept, start),
                  "finish_reason": self.finish}
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": [choice], "usage": self.usage()}

    def _kept(self, length: int) -> list[TokenEvent]:
        """The tokens whose text starts within the first ``length`` characters (the stop string's
        tokens are cut with it)."""
        kept, at = [], 0
        for e in self.events:
            if at >= length and e.text:
                break
            kept.append(e)
            at += len(e.text)
        return kept

    # stream chunks

    def chunk(self, text: str, events: list[TokenEvent], finish: str | None = None) -> dict:
        """One stream chunk: ``text`` new since the last, the logprobs of ``events``."""
        if self.request.kind == "chat":
            delta = {"content": text} if text or finish is None else {}
            choice = {"index": 0, "delta": delta, "logprobs": self._chat_logprobs(events),
                      "finish_reason": finish}
            return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                    "model": self.model, "choices": [choice]}
        choice = {"index": 0, "text": text, "logprobs": self._completion_logprobs(events, 0),
                  "finish_reason": finish}
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": [choice]}

    def first_chunk(self) -> dict | None:
        """What a stream opens with: for chat, the assistant's role (as OpenAI sends it); for a
        completion with echo, the prompt."""
        if self.request.kind == "chat":
            chunk = self.chunk("", [])
            chunk["choices"][0]["delta"] = {"role": "assistant", "content": ""}
            return chunk
        return self.chunk(self.request.prompt, []) if self.request.echo else None

    def usage_chunk(self) -> dict:
        """The last chunk when stream_options.include_usage: no choices, the usage block."""
        kind = "chat.completion.chunk" if self.request.kind == "chat" else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": [],
                "usage": self.usage()}

    # logprobs blocks

    def _completion_logprobs(self, events: list[TokenEvent], start: int) -> dict | None:
        """The completions API's block: tokens, their logprobs, the top candidates, text offsets."""
        if self.request.logprobs is None:
            return None
        n = self.request.logprobs
        offsets, at = [], start
        for e in events:
            offsets.append(at)
            at += len(e.text)
        return {"tokens": [e.text for e in events], "token_logprobs": [logprob(e.prob) for e in events],
                "top_logprobs": [{c.text: logprob(c.prob) for c in e.top[:n]} for e in events],
                "text_offset": offsets}

    def _chat_logprobs(self, events: list[TokenEvent]) -> dict | None:
        """The chat API's block: each token with its logprob, UTF-8 bytes and top candidates."""
        if self.request.logprobs is None:
            return None
        n = self.request.logprobs
        return {"content": [{"token": e.text, "logprob": logprob(e.prob), "bytes": list(e.text.encode()),
                             "top_logprobs": [{"token": c.text, "logprob": logprob(c.prob),
                                               "bytes": list(c.text.encode("utf-8", "replace"))}
                                              for c in e.top[:n]]} for e in events]}
