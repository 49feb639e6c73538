"""Generation in a child process: a Backend whose streams run in another Python process.

Why. In one process the app's rendering and the model's decode loop take turns on one GIL: every
few milliseconds of Textual work on the UI thread stall the decode thread at its next PyTorch call,
and on a small CPU the two also fight over cores (docs/performance.md has the measured
cost). In its own process the decode loop never waits for the UI: the child gets all but one core,
the UI the last one.

How. ``RemoteBackend(local, factory)`` keeps ``local``, the backend the app already loaded, for
everything but streaming: info, the vocabulary check, the tokenizer, and what the views into the
model use in process (``torch_model()`` for attention, ``decoder()`` for step mode). The child
builds its own copy with the same ``factory`` (a dataclass from tui.backends: it pickles, and its
``threads`` field takes the child's thread budget) and serves streams over one pipe. Until the
child is ready (a second or two after start) and after it has died, streams run in process as
before, so the app never waits for it.

The pipe, in order. Parent -> child: ``("stream", gid, prompt, settings)``, ``("settings", gid,
settings)`` and ``("close", gid)``, read by the child between tokens; ``None`` to exit. Child ->
parent: ``("ready",)`` or ``("failed", message)`` once; then per stream ``("started", gid,
prompt_ids)`` or ``("error", gid, exception)``, ``("tokens", gid, events)`` in batches of about
``FLUSH`` seconds, and ``("end", gid, stop_reason, exception | None)``. One reader thread in the
parent hands each stream its messages; a closed stream's late messages are dropped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import multiprocessing
import os
import pickle
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection

import torch

from model.generate.backend import Backend, BackendInfo, Decoder, Settings, StopReason, TokenEvent
from model.gpt import GPT, Bigram
from model.threads import asked_threads, choose_threads

FLUSH = 0.015  # s: the child sends the tokens of this long at once (the first at once): half the
# app's POST_EVERY, so the UI still gets tokens every ~30 ms, with few wake-ups of its reader thread
START_TIMEOUT = 30.0  # s: the longest a stream waits for the child to take it (a long prefill)
KILL_WAIT = 30.0  # s: the longest close() waits for a killed child to be gone


@contextlib.contextmanager
def _sigint_ignored():
    """SIGINT ignored while a child starts, so the child ignores it all its life: Ctrl+C while the
    app loads reaches every process in the terminal's group, and the child, still importing
    PyTorch, would print a traceback over the parent's one-line exit. The parent ends the child
    (over the pipe, or terminate()). Only the main thread may set signal handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def child_threads(asked: int | None = None) -> int:
    """Threads for the child's PyTorch: those asked for (--threads, OMP_NUM_THREADS), else the
    default for this machine's load (model.threads: the cores not kept busy by other work) but
    one, left for the UI."""
    explicit = asked_threads(asked)
    return explicit if explicit is not None else max(1, choose_threads() - 1)


# a tui.backends dataclass: ``threads``, ``settled``, ``for_ui``
Factory = Callable[[Callable[[str], None]], Backend]


class RemoteBackend:
    """model.generate.backend.Backend: streams in a child process on ``threads`` threads (default:
    ``child_threads()``), everything else from ``local``."""

    def __init__(self, local: Backend, factory: Factory, threads: int | None = None):
        self.local = local
        self.tokenizer = local.tokenizer
        context = multiprocessing.get_context("spawn")  # fork would copy the UI's threads and locks
        self._conn, child_end = context.Pipe()
        self.process = context.Process(target=serve, args=(factory, child_end, child_threads(threads)),
                                       name="gpt-tui generation", daemon=True)
        with _sigint_ignored():  # the child inherits it: Ctrl+C in the terminal is the parent's to act on
            self.process.start()
        child_end.close()
        self._send_lock = threading.Lock()
        self._inboxes: dict[int, queue.SimpleQueue] = {}
        self._ids = itertools.count()
        self._ready = threading.Event()
        # multiprocessing's Process is not safe to wait on from two threads: the reader thread and
        # close() both join it, and the one that loses the race to reap the child sees it alive
        self._reaping = threading.Lock()
        self.failure: str | None = None  # why the child cannot serve (set once it has gone)
        threading.Thread(target=self._read, name="gpt-tui generation reader", daemon=True).start()

    # ---- Backend ---------------------------------------------------------------------------

    def info(self) -> BackendInfo:
        return self.local.info()

    def unknown_chars(self, prompt: str) -> list[str]:
        return self.local.unknown_chars(prompt)

    def decoder(self) -> Decoder:
        return self.local.decoder()

    def torch_model(self) -> GPT | Bigram | None:
        return self.local.torch_model()

    def stream(self, prompt: str, settings: Settings):
        if not self.ready:
            return self.local.stream(prompt, settings)
        gid = next(self._ids)
        inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._inboxes[gid] = inbox
        self._send(("stream", gid, prompt, settings))
        try:
            kind, *payload = inbox.get(timeout=START_TIMEOUT)
        except queue.Empty:
            self._inboxes.pop(gid, None)
            self._send(("close", gid))
            raise RuntimeError(f"the generation process did not start the stream within "
                               f"{START_TIMEOUT:.0f} s") from None
        if kind != "started":  # "error": the child's exception (a prompt it refuses) or its exit
            self._inboxes.pop(gid, None)
            raise payload[0]
        return RemoteGeneration(self, gid, inbox, payload[0], settings)

    # ---- the child -------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self.failure is None

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until the child serves streams (True) or has failed or timed out (False)."""
        self._ready.wait(timeout)
        return self.ready

    def close(self) -> None:
        """Ask the child to exit; stop it if it does not within a second, kill it if that fails."""
        try:
            self._send(None)
        except OSError:
            pass
        with self._reaping:
            self.process.join(1.0)
            if self.process.is_alive():
                self.process.terminate()
                self.process.join(1.0)
            if self.process.is_alive():
                # a child blocked in a read (importing torch from a cold disk, say) acts on a signal
                # only once the read returns; wait for it rather than leave it behind
                self.process.kill()
                self.process.join(KILL_WAIT)

    def _send(self, message) -> None:
        with self._send_lock:  # the UI thread and workers (A/B) may send at the same time
            self._conn.send(message)

    def _read(self) -> None:
        """The reader thread: route the child's messages to their streams until the pipe closes."""
        try:
            while True:
                message = self._conn.recv()
                kind = message[0]
                if kind == "ready":
                    self._ready.set()
                elif kind == "failed":
                    self.failure = message[1]
                    self._ready.set()
                else:
                    inbox = self._inboxes.get(message[1])
                    if inbox is not None:  # None: a stream the parent has closed
                        inbox.put((kind, *message[2:]))
                    if kind in ("end", "error"):
                        self._inboxes.pop(message[1], None)
        except (EOFError, OSError):
            with self._reaping:
                self.process.join(1.0)  # the pipe closes as the child exits: wait for its exit code
                code = self.process.exitcode
            self.failure = self.failure or f"the generation process exited (code {code})"
            self._ready.set()
            error = RuntimeError(self.failure)
            for gid in list(self._inboxes):
                self._inboxes.pop(gid).put(("error", error))


class RemoteGeneration:
    """model.generate.backend.TokenStream over the pipe: settings and close() go to the child."""

    def __init__(self, remote: RemoteBackend, gid: int, inbox: queue.SimpleQueue, prompt_ids: list[int],
                 settings: Settings):
        self._remote, self._gid, self._inbox = remote, gid, inbox
        self.prompt_ids = prompt_ids
        self._settings = settings
        self.stop_reason: StopReason | None = None
        self._events: deque[TokenEvent] = deque()
        self._closed = False

    @property
    def settings(self) -> Settings:
        return self._settings

    @settings.setter
    def settings(self, settings: Settings) -> None:
        self._settings = settings
        if not self._closed and self.stop_reason is None:
            self._remote._send(("settings", self._gid, settings))

    def __iter__(self) -> RemoteGeneration:
        return self

    def __next__(self) -> TokenEvent:
        while not self._events:
            if self._closed or self.stop_reason is not None:
                raise StopIteration
            kind, *payload = self._inbox.get()
            if kind == "tokens":
                self._events.extend(payload[0])
            elif kind == "end":
                reason, error = payload
                self.stop_reason = reason
                if error is not None:
                    raise error
            elif kind == "error":  # the child exited mid-stream
                self._closed = True
                raise payload[0]
            # "closed": close() woke this reader up
        return _from_wire(self._events.popleft())

    def close(self) -> None:
        """Stop early: no more tokens from here; the child stops at its next token."""
        if self._closed:
            return
        self._closed = True
        if self.stop_reason is None:
            self.stop_reason = "stopped"
            self._remote._inboxes.pop(self._gid, None)
            try:
                self._remote._send(("close", self._gid))
            except OSError:  # the child is gone: nothing to stop
                pass
        self._inbox.put(("closed",))


def _to_wire(event: TokenEvent) -> TokenEvent:
    # a NumPy array pickles as its bytes; a tensor goes through torch's slower storage reduction
    return event if event.logits is None else dataclasses.replace(event, logits=event.logits.numpy())


def _from_wire(event: TokenEvent) -> TokenEvent:
    if event.logits is None:
        return event
    return dataclasses.replace(event, logits=torch.from_numpy(event.logits))


def _picklable(error: BaseException) -> BaseException:
    """``error`` if it crosses the pipe intact, else a RuntimeError saying what it was."""
    try:
        if str(pickle.loads(pickle.dumps(error))) == str(error):
            return error
    except Exception:
        pass
    return RuntimeError(f"{type(error).__name__}: {error}")


def serve(factory: Factory, conn: Connection, threads: int) -> None:
    """The child's main: make the backend, then run the streams the parent asks for, one at a time.

    Its stdout and stderr go to /dev/null: the parent's terminal belongs to the app's screen, and
    what goes wrong is reported over the pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    torch.set_num_threads(threads)  # sampling's own ops; the factory sets its backend's threads
    try:
        backend = dataclasses.replace(factory, threads=threads)(lambda message: None)
    except Exception as e:
        conn.send(("failed", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready",))
    inbox: deque = deque()  # messages read while streaming that belong to what comes next
    try:
        while True:
            message = inbox.popleft() if inbox else conn.recv()
            if message is None:
                return
            if message[0] == "stream":
                _serve_stream(backend, conn, inbox, *message[1:])
            # else: settings or close for a stream that has ended already
    except (EOFError, OSError, KeyboardInterrupt):  # the parent has gone (or ^C reached us too)
        return


def _serve_stream(backend: Backend, conn: Connection, inbox: deque, gid: int, prompt: str,
                  settings: Settings) -> None:
    try:
        generation = backend.stream(prompt, settings)
    except Exception as e:
        conn.send(("error", gid, _picklable(e)))
        return
    conn.send(("started", gid, generation.prompt_ids))
    batch: list[TokenEvent] = []
    sent = 0.0  # the first token goes at once: the time to first token is the user's wait
    error = None
    try:
        for event in generation:
            batch.append(_to_wire(event))
            now = time.perf_counter()
            if now - sent >= FLUSH:
                conn.send(("tokens", gid, batch))
                batch, sent = [], now
            while conn.poll():  # between tokens: new settings, stop, or what comes next
                message = conn.recv()
                if message is not None and message[1] == gid and message[0] == "settings":
                    generation.settings = message[2]
                elif message is not None and message[1] == gid and message[0] == "close":
                    generation.close()
                elif message is None or message[0] == "stream":  # the parent moved on: stop here
                    inbox.append(message)
                    generation.close()
    except Exception as e:  # the backend failed mid-stream: the parent raises it
        error = _picklable(e)
    finally:
        generation.close()
    if batch:
        conn.send(("tokens", gid, batch))
    conn.send(("end", gid, generation.stop_reason, error))


@dataclasses.dataclass(frozen=True)
class Offloaded:
    """A backend factory whose backends stream in a child process: ``RemoteBackend(factory(...))``."""

    factory: Factory
    threads: int | None = None  # the child's (--threads); None: child_threads() decides

    def __call__(self, progress: Callable[[str], None]) -> RemoteBackend:
        local = self.factory.for_ui()(progress)
        # the child decodes as this process chose (its step mode decodes here): one choice, one timing
        return RemoteBackend(local, self.factory.settled(local), self.threads)


def offloaded(factories: dict[str, Factory], threads: int | None = None) -> dict[str, Offloaded]:
    """The app's backend factories: each backend streams in a child process on ``threads`` threads
    (default: the free cores but one); this process, the UI's, keeps one (also for its own PyTorch
    work: the attention view, step mode)."""
    torch.set_num_threads(1)
    return {name: Offloaded(factory, threads) for name, factory in factories.items()}
