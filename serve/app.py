"""The HTTP side of gpt-serve: an ASGI app (FastAPI) whose routes speak OpenAI's API.

A request is read (up to ``MAX_BODY`` bytes), checked (serve.schema), and handed to the scheduler
thread as a ``Job`` with an inbox: an ``asyncio.Queue`` the scheduler fills from its thread (one
``call_soon_threadsafe`` per batch step, for every job that step touched). A streamed answer sends
a chunk per token as it arrives (server-sent events, sse-starlette); a whole one waits for the
end. Either way, a client that goes away cancels its job, whose row is free before the next step.

Every refusal is an OpenAI-shaped error with a 4xx status; nothing a client sends reaches the log
but through ``model.terminal.visible()``, and no exception escapes a route as a traceback.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi import Request as HttpRequest
from fastapi.responses import Response
from sse_starlette import EventSourceResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from model.generate.backend import Backend, TokenEvent
from model.terminal import visible
from serve.responses import Reply
from serve.scheduler import Draining, Ended, Job, Message, QueueFull, Scheduler, Started
from serve.schema import (
    MAX_BODY,
    ApiError,
    Request,
    chat_request,
    check_model,
    completion_request,
    parse_body,
)

Log = Callable[[str], None]
Shown = tuple[str, TokenEvent | None]  # text a client may see now, and the token it came with


def json_response(body: dict, status: int = 200) -> Response:
    # ASCII JSON: a lone surrogate from a model's vocabulary is escaped, never an encoding error
    return Response(json.dumps(body), status_code=status, media_type="application/json")


class Service:
    """What the routes share: the model, its scheduler, the inbox of each running job."""

    def __init__(self, backend: Backend, model: str, parallel: int, queue: int,
                 api_key: str | None = None, log: Log = lambda line: None, created: int = 0):
        decoder = backend.batch_decoder(parallel)  # type: ignore[attr-defined]
        if decoder is None:
            raise ValueError("this checkpoint is a bigram model, which has no batched decoder to serve "
                             "from; serve a GPT checkpoint")
        self.backend, self.model, self.api_key, self.log, self.created = backend, model, api_key, log, created
        self.block_size = backend.info().block_size
        self.scheduler = Scheduler(decoder, backend.tokenizer, queue, self._post)
        self.inboxes: dict[Job, asyncio.Queue] = {}
        self.open = 0  # answers under way: a drain waits for their last chunks
        self.loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """On the event loop, before the first request: the scheduler thread begins."""
        self.loop = asyncio.get_running_loop()
        self.scheduler.start()

    def _post(self, messages: list[tuple[Job, Message]]) -> None:
        """From the scheduler thread: one step's messages, to the event loop in one call."""
        if self.loop is None:
            return
        try:
            self.loop.call_soon_threadsafe(self._deliver, messages)
        except RuntimeError:  # the loop has closed: the server is gone, nobody is listening
            pass

    def _deliver(self, messages: list[tuple[Job, Message]]) -> None:
        for job, message in messages:
            inbox = self.inboxes.get(job)
            if inbox is not None:  # else its client has gone
                inbox.put_nowait(message)

    # requests

    def authorize(self, request: HttpRequest) -> None:
        if self.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given, key = (t.encode("utf-8", "surrogateescape") for t in (token.strip(), self.api_key))
        if scheme.lower() != "bearer" or not hmac.compare_digest(given, key):
            raise ApiError(401, "this server needs an API key: send Authorization: Bearer KEY with the key "
                                "gpt-serve was started with (--api-key)", code="invalid_api_key")

    async def read_body(self, request: HttpRequest) -> bytes:
        """The body, refused (413) past MAX_BODY bytes before more of it is read."""
        too_big = ApiError(413, f"the body is over {MAX_BODY} bytes; send a shorter prompt (the model reads "
                                f"only its last {self.block_size} tokens anyway)", code="request_too_large")
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_BODY:
            raise too_big
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY:
                raise too_big
            chunks.append(chunk)
        return b"".join(chunks)

    async def answer(self, request: HttpRequest, parse: Callable[[dict], Request]) -> Response:
        """A completion or chat request, from its body to its answer (whole or streamed)."""
        path = request.url.path
        try:
            self.authorize(request)
            body = parse_body(await self.read_body(request))
            check_model(body, self.model)
            checked = parse(body)
            self._check_vocabulary(checked)
            job, inbox = Job(checked.prompt, checked.settings), asyncio.Queue()
            self.inboxes[job] = inbox
            try:
                self.scheduler.submit(job)
            except QueueFull:
                del self.inboxes[job]
                raise ApiError(429, f"all {self.scheduler.rows} rows are busy and {self.scheduler.queue} "
                                    "requests wait already; retry in a moment", code="queue_full",
                               kind="rate_limit_error") from None
            except Draining:
                del self.inboxes[job]
                raise ApiError(503, "the server is shutting down", code="shutting_down",
                               kind="server_error") from None
        except ApiError as e:
            self.log(visible(f"{path} {e.status}: {e.message}"))
            return json_response(e.body(), e.status)
        except ClientDisconnect:  # gone while sending the body: nobody to answer
            return Response(status_code=400)
        except Exception as e:  # a bug of ours: one line in the log, a 500, and the server stays up
            self.log(visible(f"{path} 500: {type(e).__name__}: {e}"))
            error = ApiError(500, "the server failed on this request; its log says why", kind="server_error")
            return json_response(error.body(), 500)
        reply = Reply(checked, self.model)
        self.open += 1
        if checked.stream:
            return _Stream(self._stream(inbox, reply), lambda: self._ended(job, reply))
        try:
            return await self._whole(request, inbox, reply)
        finally:
            self._ended(job, reply)

    def _check_vocabulary(self, request: Request) -> None:
        if request.settings.unknown != "reject":
            return
        chars = self.backend.unknown_chars(request.prompt)
        if chars:
            param = "messages" if request.kind == "chat" else "prompt"
            shown = ", ".join(repr(c) for c in chars[:10]) + (", ..." if len(chars) > 10 else "")
            raise ApiError(400, f"{param} holds {len(chars)} character(s) the model does not know: {shown}; "
                                "remove them", param=param)

    async def _follow(self, inbox: asyncio.Queue, reply: Reply) -> AsyncIterator[Shown]:
        """(text that can be shown now, its token) as the job's tokens arrive, then (the text held
        back, None) once it has ended."""
        while True:
            message = await inbox.get()
            if isinstance(message, TokenEvent):
                yield reply.token(message), message
            elif isinstance(message, Started):
                reply.prompt_tokens = message.prompt_tokens
                if message.prompt_tokens >= self.block_size:
                    self.log(f"{reply.id}: the prompt fills the context; the model sees its last "
                             f"{self.block_size} tokens")
            elif isinstance(message, Ended):
                reply.error = message.error
                yield reply.end(message.reason, message.completion_tokens), None
                return

    async def _whole(self, request: HttpRequest, inbox: asyncio.Queue, reply: Reply) -> Response:
        async def collect() -> None:
            async for _ in self._follow(inbox, reply):
                pass

        done, gone = asyncio.ensure_future(collect()), asyncio.ensure_future(_disconnected(request))
        await asyncio.wait({done, gone}, return_when=asyncio.FIRST_COMPLETED)
        gone.cancel()
        if not done.done():  # the client went away: _ended cancels the job
            done.cancel()
            return Response(status_code=400)
        if reply.error is not None:
            error = ApiError(500, reply.error, code="model_failed", kind="server_error")
            return json_response(error.body(), 500)
        return json_response(reply.body())

    async def _stream(self, inbox: asyncio.Queue, reply: Reply) -> AsyncIterator[str]:
        """The answer as server-sent events: chunks, the last with the finish reason, [DONE]."""
        first = reply.first_chunk()
        if first is not None:
            yield json.dumps(first)
        async for text, event in self._follow(inbox, reply):
            if event is None and reply.error is not None:
                yield json.dumps(ApiError(500, reply.error, code="model_failed", kind="server_error").body())
            elif event is None:
                yield json.dumps(reply.chunk(text, [], reply.finish))
                if reply.request.include_usage:
                    yield json.dumps(reply.usage_chunk())
            elif text or reply.request.logprobs is not None:
                yield json.dumps(reply.chunk(text, [event]))
        yield "[DONE]"

    def _ended(self, job: Job, reply: Reply) -> None:
        """The answer is over, sent or abandoned: a job still running is cancelled (its row is free
        before the next step), and the log gets one line."""
        if reply.finish is None:
            self.scheduler.cancel(job)
        self.inboxes.pop(job, None)
        self.open -= 1
        what = reply.error or reply.finish or "client went away"
        seconds = time.perf_counter() - reply.started
        self.log(visible(f"{reply.id}: {reply.completion_tokens} tokens, {what}, seed "
                         f"{reply.request.settings.seed}, {seconds:.2f} s"))


class _Stream(EventSourceResponse):
    """Server-sent events that call ``ended`` once the response is over, however it ended: sent
    whole, the client gone mid-stream, or gone before the first chunk (when the generator never
    started, so no ``finally`` inside it would run)."""

    def __init__(self, chunks: AsyncIterator[str], ended: Callable[[], None]):
        super().__init__(chunks, sep="\n")
        self.ended = ended

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.ended()


async def _disconnected(request: HttpRequest) -> None:
    """Returns once the client has gone (the body is read already: the next message is that)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def create_app(service: Service) -> FastAPI:
    """The routes over ``service``; its scheduler runs while the app does (lifespan)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        yield
        service.scheduler.close()

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service

    @app.exception_handler(HTTPException)
    async def http_error(request: HttpRequest, exc: HTTPException) -> Response:
        # unknown paths, wrong methods: the OpenAI shape too, so a client's error handling works
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        error = ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", code=code)
        return json_response(error.body(), exc.status_code)

    @app.get("/health")
    async def health() -> Response:
        if service.scheduler.draining:
            return json_response({"status": "shutting down"}, 503)
        return json_response({"status": "ok"})

    def model_card() -> dict:
        return {"id": service.model, "object": "model", "created": service.created,
                "owned_by": "gpt-from-scratch"}

    @app.get("/v1/models")
    async def models(request: HttpRequest) -> Response:
        try:
            service.authorize(request)
        except ApiError as e:
            return json_response(e.body(), e.status)
        return json_response({"object": "list", "data": [model_card()]})

    @app.get("/v1/models/{model:path}")
    async def model(request: HttpRequest, model: str) -> Response:
        try:
            service.authorize(request)
            check_model({"model": model}, service.model)
        except ApiError as e:
            return json_response(e.body(), e.status)
        return json_response(model_card())

    @app.post("/v1/completions")
    async def completions(request: HttpRequest) -> Response:
        return await service.answer(request, completion_request)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: HttpRequest) -> Response:
        return await service.answer(request, chat_request)

    return app
