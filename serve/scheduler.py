"""The one thread that owns the batch: requests join it, share its forward passes, and leave it.

``model.generate.batched.Batch`` is not thread-safe and need not be: only this thread touches it.
The HTTP side (the event loop) hands over ``Job``s with ``submit`` and ``cancel`` under one lock;
this thread, between two steps, takes the cancels first (a client that went away frees its row
before the next step computes it), then fills free rows from the waiting jobs in arrival order,
then runs one ``Batch.step()`` and hands everything that step produced to ``post`` in one call
(one wake-up of the event loop per step, not one per token).

Admission is counted here too: at most ``rows`` jobs decode and ``queue`` wait; one more is
refused at once (``QueueFull``: the client hears 429 and may retry) rather than waiting unseen.
``drain(seconds)`` refuses new jobs (``Draining``) and lets the running ones go on until the
deadline, then ends every job left with the stop reason ``stopped``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from model.generate.backend import Settings, StopReason, TokenEvent
from model.generate.batched import Batch, BatchDecoder
from model.generate.engine import Generation
from model.tokenizer import Tokenizer


@dataclass(eq=False)  # a job is itself, whatever it holds: a key for the app's inboxes
class Job:
    prompt: str
    settings: Settings
    generation: Generation | None = field(default=None, repr=False)  # set once it has a row
    done: bool = False  # its Ended has been posted


@dataclass(frozen=True)
class Started:
    """The job has a row; the model reads ``prompt_tokens`` of its prompt (the window's worth)."""

    prompt_tokens: int


@dataclass(frozen=True)
class Ended:
    """The job is over: ``reason`` as model.generate.engine gives it, or an ``error`` for people."""

    reason: StopReason | None
    completion_tokens: int = 0
    error: str | None = None


Message = TokenEvent | Started | Ended
Post = Callable[[list[tuple[Job, Message]]], None]


class QueueFull(Exception):
    """Every row is busy and the queue is full."""


class Draining(Exception):
    """The server is shutting down: no new jobs."""


class Scheduler:
    """Jobs through one ``Batch`` of ``decoder.rows`` rows, on a thread of its own (``start``)."""

    def __init__(self, decoder: BatchDecoder, tokenizer: Tokenizer, queue: int, post: Post):
        self.batch = Batch(decoder, tokenizer)
        self.rows, self.queue, self.post = decoder.rows, queue, post
        self.steps = 0  # batch steps run so far
        self._cond = threading.Condition()
        # shared with the event loop, under _cond:
        self._waiting: deque[Job] = deque()
        self._cancels: list[Job] = []
        self._active = 0  # jobs submitted and not yet ended (waiting or decoding)
        self._deadline: float | None = None  # draining: time.monotonic() at which every job ends
        self._closed = False
        # this thread's own: id(generation) -> its job
        self._running: dict[int, Job] = {}
        self._thread = threading.Thread(target=self._run, name="gpt-serve-batch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue ``job``; QueueFull or Draining when it cannot be taken."""
        with self._cond:
            if self._deadline is not None or self._closed:
                raise Draining
            if self._active >= self.rows + self.queue:
                raise QueueFull
            self._active += 1
            self._waiting.append(job)
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        """The client went away: drop ``job`` from the queue, or free its row before the next step.
        Harmless for a job that has ended."""
        with self._cond:
            if job in self._waiting:
                self._waiting.remove(job)
                self._active -= 1
                return
            self._cancels.append(job)
            self._cond.notify()

    def drain(self, seconds: float) -> None:
        """Take no new jobs; end the running and waiting ones ``seconds`` from now (or sooner, if
        an earlier drain asked for that)."""
        with self._cond:
            deadline = time.monotonic() + seconds
            self._deadline = deadline if self._deadline is None else min(self._deadline, deadline)
            self._cond.notify()

    @property
    def draining(self) -> bool:
        with self._cond:
            return self._deadline is not None

    @property
    def active(self) -> int:
        """Jobs waiting or decoding."""
        with self._cond:
            return self._active

    def close(self) -> None:
        """Stop the thread (every job has ended or is abandoned with the process) and wait for it."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._waiting or self._cancels or self._running or self._closed):
                    self._cond.wait()
                if self._closed:
                    return
                cancels, self._cancels = self._cancels, []
                deadline = self._deadline
            out: list[tuple[Job, Message]] = []
            try:
                for job in cancels:  # before anything else, so their rows are free for this step
                    self._cancel(job, out)
                if deadline is not None and time.monotonic() >= deadline:
                    self._end_everything(out)
                else:
                    self._fill(out)
                    self._step(out)
            except Exception as e:  # a bug of ours: the running jobs fail, this thread goes on serving
                self.batch.close()
                for job in list(self._running.values()):
                    self._end(job, Ended(None, error=f"the server failed: {e or type(e).__name__}"), out)
            if out:
                self.post(out)

    def _fill(self, out: list) -> None:
        """Free rows take the waiting jobs, oldest first."""
        while self.batch.free:
            with self._cond:
                if not self._waiting:
                    return
                job = self._waiting.popleft()
            try:
                job.generation = self.batch.add(job.prompt, job.settings)
            except Exception as e:  # the app checks prompts first; whatever is left fails this job only
                self._end(job, Ended(None, error=str(e) or type(e).__name__), out)
                continue
            self._running[id(job.generation)] = job
            out.append((job, Started(len(job.generation.prompt_ids))))

    def _step(self, out: list) -> None:
        if not len(self.batch):
            return
        try:
            steps = self.batch.step()
        except Exception as e:  # a failing backend: the running jobs fail, the server stays up
            self.batch.close()
            for job in list(self._running.values()):
                self._end(job, Ended(None, error=f"the model failed: {e or type(e).__name__}"), out)
            return
        self.steps += 1
        for generation, event in steps:
            job = self._running[id(generation)]
            if event is None:
                self._end(job, Ended(generation.stop_reason, len(generation.ids)), out)
            else:  # without its logits: a view of the step's (rows, V) tensor would keep it all alive
                out.append((job, replace(event, logits=None)))

    def _end_everything(self, out: list) -> None:
        """The drain's deadline: every job ends now, with what it has."""
        with self._cond:
            waiting, self._waiting = list(self._waiting), deque()
        for job in list(self._running.values()):
            self._cancel(job, out)
        for job in waiting:
            self._end(job, Ended("stopped"), out)

    def _cancel(self, job: Job, out: list) -> None:
        """End a decoding job now (its row is free at once); one that has ended stays as it is."""
        generation = job.generation
        if generation is not None and not job.done:
            self.batch.cancel(generation)
            self._end(job, Ended("stopped", len(generation.ids)), out)

    def _end(self, job: Job, ended: Ended, out: list) -> None:
        job.done = True
        if job.generation is not None:
            self._running.pop(id(job.generation), None)
        with self._cond:
            self._active -= 1
        out.append((job, ended))
