"""uvicorn's server, stopping as gpt-serve does: a signal drains the batch before the server ends.

uvicorn's own handler stops taking connections at once, cuts streams short after its graceful
timeout, and raises the signal again at the end (so SIGTERM would end the process by the signal,
not with 0). Here the first SIGTERM drains: the scheduler refuses new requests (503) and gives the
running ones ``drain`` seconds before it ends them (finish_reason "abort"); once every request has
ended and its last chunk is sent, the server stops and ``run`` returns. Ctrl+C does the same with no
wait; a second signal stops at once.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

import uvicorn

from serve.app import Service


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, service: Service, drain: float, log: Callable[[str], None]):
        super().__init__(config)
        self.service, self.drain, self.log = service, drain, log
        self.signal: int | None = None  # the first signal received: it decides the exit code
        self._draining: asyncio.Task | None = None

    def handle_exit(self, sig: int, frame) -> None:
        if self.signal is not None:  # a second signal: stop now
            self.should_exit = self.force_exit = True
            return
        self.signal = sig
        loop = self.service.loop
        if loop is None:  # the app has not started: nothing to drain
            self.should_exit = True
            return
        # a signal handler runs between two bytecodes of the loop's thread: hand the work to the loop
        loop.call_soon_threadsafe(self._start_drain, 0.0 if sig == signal.SIGINT else self.drain)

    def _start_drain(self, seconds: float) -> None:
        self._draining = asyncio.get_running_loop().create_task(self._drain_then_stop(seconds))

    async def _drain_then_stop(self, seconds: float) -> None:
        scheduler = self.service.scheduler
        if seconds and scheduler.active:
            self.log(f"draining: new requests get 503, running ones end within {seconds:g} s")
        scheduler.drain(seconds)
        give_up = time.monotonic() + seconds + 2  # a client that stopped reading holds no one up
        while (scheduler.active or self.service.open) and time.monotonic() < give_up:
            await asyncio.sleep(0.02)
        self.should_exit = True
