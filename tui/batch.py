"""`gpt-tui --batch`: prompts in, one JSON object per prompt out, in order, each flushed when done.

Input is plain text (one prompt per non-blank line) or JSONL (``{"id", "prompt", ...settings}``),
told apart by the first non-blank line. Items are read lazily, so a pipe can feed prompts one at a
time and read each answer before sending the next. A bad item (invalid UTF-8, bad JSON, a lone
surrogate, a bad setting) becomes an output line carrying its error; the others still run. Output
lines are written whole or not at all (``LineFile``). Pure over a backend and streams: the CLI
only opens files.

With a backend's batch decoder, several items generate at once (model.generate.batched.Batch) and a
reader thread takes items in as they arrive; lines still come out in input order.
"""

from __future__ import annotations

import json
import math
import os
import queue
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Literal, TextIO

from model.generate.backend import Backend, BackendInfo, Settings, TokenEvent
from model.generate.batched import Batch, BatchDecoder
from model.generate.engine import Generation
from model.terminal import visible
from model.tokenizer import Tokenizer, UnknownCharactersError
from tui import settings as settings_text
from tui.logprobs import Logprobs
from tui.session import record
from tui.stats import STOP_NAMES, Clock, Timing
from tui.stops import trim_stop

Format = Literal["auto", "text", "jsonl"]
EXIT_OK, EXIT_USAGE, EXIT_ITEMS_FAILED, EXIT_INTERRUPTED = 0, 2, 3, 130


@dataclass(frozen=True)
class Item:
    id: object  # from the JSONL "id", else the input line number (1-based)
    prompt: str | None  # None when the line could not be read
    changes: dict = field(default_factory=dict)  # per-item settings, JSON-typed
    error: str | None = None


def read_items(lines: Iterable[str | bytes], fmt: Format = "auto") -> Iterator[Item]:
    """Items from input lines (bytes are decoded one line at a time, so one bad line costs only
    itself), lazily; blank lines and a leading byte-order mark are skipped."""
    for number, raw in enumerate(lines, 1):
        if isinstance(raw, bytes):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as e:
                yield Item(number, None, error=f"line {number} is not valid UTF-8 (byte "
                                               f"0x{raw[e.start]:02x} at column {e.start + 1})")
                continue
        else:
            line = raw.removeprefix("\ufeff") if number == 1 else raw
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        if fmt == "auto":
            fmt = "jsonl" if line.lstrip().startswith("{") else "text"
        yield _jsonl_item(number, line) if fmt == "jsonl" else Item(number, line)


def _jsonl_item(number: int, line: str) -> Item:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        return Item(number, None, error=f"line {number} is not valid JSON ({e.msg} at column {e.colno})")
    except RecursionError:
        return Item(number, None, error=f"line {number} is nested too deeply to be an item")
    except ValueError:  # an integer of more digits than Python converts (4300), e.g. a seed
        return Item(number, None, error=f"line {number} holds a number too long to read (over 4300 digits)")
    if not isinstance(obj, dict):
        return Item(number, None, error=f"line {number} must be a JSON object with a \"prompt\"")
    surrogate = _lone_surrogate(obj)
    if surrogate:
        return Item(number, None, error=f"line {number} holds a lone surrogate ({surrogate}), which "
                                        "is not text; fix the \\u escapes")
    item_id = obj.pop("id", None)
    if item_id is None:
        item_id = number
    elif isinstance(item_id, bool) or not isinstance(item_id, (str, int, float)) \
            or (isinstance(item_id, float) and not math.isfinite(item_id)):
        return Item(number, None, error=f"line {number}: \"id\" must be a string or a number")
    prompt = obj.pop("prompt", None)
    if not isinstance(prompt, str):
        return Item(item_id, None, error=f"line {number}: \"prompt\" must be a string")
    unknown = sorted(set(obj) - set(settings_text.FIELDS))
    if unknown:
        return Item(item_id, prompt, error=f"line {number}: unknown field(s) {unknown}; allowed: id, prompt, "
                                           + ", ".join(settings_text.FIELDS))
    return Item(item_id, prompt, obj)


def _lone_surrogate(obj: object) -> str | None:
    """The first lone surrogate (as its \\u escape) in a JSON value's strings, keys included."""
    if isinstance(obj, str):
        bad = next((c for c in obj if 0xD800 <= ord(c) < 0xE000), None)
        return None if bad is None else f"\\u{ord(bad):04x}"
    if isinstance(obj, dict):
        return next(filter(None, map(_lone_surrogate, [*obj, *obj.values()])), None)
    if isinstance(obj, list):
        return next(filter(None, map(_lone_surrogate, obj)), None)
    return None


class OutputError(Exception):
    """The output could not be written; the message names it, and the lines before are complete."""


class LineFile:
    """An output file descriptor written a whole line at a time. When a line fails half-way (a full
    disk), a regular file is cut back to the last complete line, so a reader never sees half a one."""

    def __init__(self, fd: int, name: str):
        self.fd, self.name = fd, name
        self.regular = stat.S_ISREG(os.fstat(fd).st_mode)  # not a pipe or terminal: it can be cut
        self.complete = os.fstat(fd).st_size if self.regular else 0

    def write(self, text: str) -> None:
        data = memoryview(text.encode("utf-8"))
        try:
            while data:
                data = data[os.write(self.fd, data):]
        except BrokenPipeError:  # the reader went away: nothing to cut, nothing more to say
            raise
        except OSError as e:
            if self.regular:
                try:
                    os.ftruncate(self.fd, self.complete)
                    os.lseek(self.fd, self.complete, os.SEEK_SET)
                except OSError:
                    pass
            raise OutputError(f"cannot write to {self.name} ({e.strerror or e}); the lines before "
                              "this item are complete") from None
        if self.regular:
            self.complete = os.fstat(self.fd).st_size

    def flush(self) -> None:  # every write goes straight to the file descriptor
        pass


# DEL and C1 controls are legal raw in JSON; escaped, a terminal showing the output cannot act on
# them. U+2028/9 too: some line readers split on them.
_JSON_ESCAPES = {c: f"\\u{c:04x}" for c in (0x7F, *range(0x80, 0xA0), 0x2028, 0x2029)}


def json_line(result: dict) -> str:
    """One output line: UTF-8 JSON with DEL, C1 controls, line separators and any lone surrogate as
    \\u escapes."""
    line = json.dumps(result, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:  # a surrogate from the model's own vocabulary: ASCII JSON keeps it
        line = json.dumps(result)
    return line.translate(_JSON_ESCAPES) + "\n"


@dataclass
class Summary:
    done: int = 0
    failed: int = 0
    tokens: int = 0
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_ITEMS_FAILED if self.failed else EXIT_OK

    def __str__(self) -> str:
        rate = f", {self.tokens / self.seconds:.1f} tokens/s" if self.seconds > 0 else ""
        tail = " (interrupted)" if self.interrupted else ""
        return (f"{self.done} item(s): {self.done - self.failed} ok, {self.failed} failed; "
                f"{self.tokens} tokens in {self.seconds:.2f} s{rate}{tail}")


def run_batch(
    backend: Backend,
    items: Iterable[Item],
    settings: Settings,
    out: TextIO,
    log: Callable[[str], None] = lambda m: None,
    clock: Clock | None = None,
    new_seed: Callable[[], int] = settings_text.fresh_seed,
    checkpoint_sha256: str | None = None,
    batch_decoder: BatchDecoder | None = None,
    keep_stop: bool = False,
    logprobs: int | None = None,
    info: BackendInfo | None = None,
) -> Summary:
    """Generate for each item in order, writing one JSON line per item to ``out`` as it finishes.

    With a ``batch_decoder`` (a backend's ``batch_decoder(rows)``), up to its rows items generate
    at once (model.generate.batched): a row that ends takes the next item, and each line is written as soon
    as it and every line before it are done. The completions are those of one item at a time.

    An item without a seed of its own gets the base seed plus its index (0 for the first item), so
    items differ yet the run repeats; without a base seed, a fresh one. Either way the seed is
    written out, so any line can be replayed alone. A stop string is cut from the completion
    unless ``keep_stop``. Ctrl+C stops after the lines already written; the summary says so.
    With ``logprobs`` N, each line carries its tokens' log-probabilities and N alternatives'
    (tui.logprobs). ``info`` stands for ``backend.info()`` in the lines where the caller knows
    better (the precision batch mode chose by default rather than the user asked for).
    """
    summary = Summary()
    kwargs = {} if clock is None else {"clock": clock}
    started = (clock or time.perf_counter)()
    run = _Run(settings, new_seed, checkpoint_sha256, kwargs, keep_stop, log, logprobs, backend.tokenizer,
               info or backend.info())
    indexed = enumerate(_guard(items, summary))
    if batch_decoder is None:
        results = (_run_item(backend, item, index, run) for index, item in indexed)
    else:
        results = _run_batched(backend, batch_decoder, indexed, run)
    for result in results:
        if result is None:  # interrupted mid-item: its line is not written
            summary.interrupted = True
            break
        try:
            out.write(json_line(result))
            out.flush()
        except BrokenPipeError:
            raise
        except OSError as e:  # a text stream; LineFile raises OutputError itself
            raise OutputError(f"cannot write the output ({e.strerror or e})") from None
        summary.done += 1
        summary.failed += result["error"] is not None
        summary.tokens += result["tokens"]
        summary.seconds += result["timing"]["total_s"] or 0.0
        name = STOP_NAMES.get(result["stop_reason"], "-")
        status = f"error: {result['error']}" if result["error"] else f"{result['tokens']} tokens, {name}"
        log(visible(f"[{result['id']}] {status}"))
    if batch_decoder is not None:  # items overlapped: the rate is over the wall time
        summary.seconds = (clock or time.perf_counter)() - started
    log(str(summary))
    return summary


def _guard(items: Iterable[Item], summary: Summary) -> Iterator[Item]:
    """The items, ending quietly (marked interrupted) if Ctrl+C arrives while waiting for input."""
    try:
        yield from items
    except KeyboardInterrupt:
        summary.interrupted = True


@dataclass(frozen=True)
class _Run:
    """What every item of one run shares: the flags' settings and how its lines are made."""

    base: Settings
    new_seed: Callable[[], int]
    sha: str | None
    clock: dict
    keep_stop: bool
    log: Callable[[str], None]
    logprobs: int | None  # alternatives per token in each line's "logprobs"; None: no such field
    tokenizer: Tokenizer  # the backend's, to name the tokens in "logprobs"
    info: BackendInfo

    def gatherer(self) -> Logprobs | None:
        return None if self.logprobs is None else Logprobs(self.tokenizer, self.logprobs)

    def settings(self, item: Item, index: int) -> tuple[Settings, str | None]:
        """The item's settings (the flags; its base seed + index; its own changes; a fresh seed if
        there is none) and its error."""
        base = self.base if self.base.seed is None else replace(self.base, seed=self.base.seed + index)
        settings, error = base, item.error
        if error is None:
            try:
                settings = settings_text.replace(base, item.changes)
            except ValueError as e:
                error = f"bad settings: {e}"
        if settings.seed is None:
            settings = settings_text.replace(settings, {"seed": self.new_seed()})
        return settings, error

    def result(self, item: Item, settings: Settings, timing: Timing, pieces: list[str],
               stop_reason: str | None, error: str | None, logprobs: Logprobs | None = None) -> dict:
        timing.finish()
        completion = "".join(pieces) if error is None or pieces else None
        if completion is not None and stop_reason == "stop_string" and not self.keep_stop:
            completion = trim_stop(completion, settings.stop)
        fields = record(item.prompt, completion, stop_reason, settings, self.info, timing, self.sha)
        if self.logprobs is not None:  # every token generated, the stop string's too (as OpenAI's)
            gathered = logprobs is not None and completion is not None
            fields["logprobs"] = logprobs.to_dict() if gathered else None
        return {"id": item.id, **fields, "error": error}

    def fills_context(self, item: Item, generation, block_size: int) -> None:
        if len(generation.prompt_ids) >= block_size:
            self.log(visible(f"[{item.id}]") + " the prompt fills the context; the model sees its last "
                     f"{block_size} tokens")


def _run_item(backend: Backend, item: Item, index: int, run: _Run) -> dict | None:
    timing = Timing(**run.clock)
    settings, error = run.settings(item, index)
    stop_reason = None
    pieces: list[str] = []
    logprobs = run.gatherer()
    if error is None:
        generation = None
        try:
            generation = backend.stream(item.prompt or "", settings)
            run.fills_context(item, generation, run.info.block_size)
            for event in generation:
                timing.token()
                pieces.append(event.text)
                if logprobs is not None:
                    logprobs.add(event)
            stop_reason = generation.stop_reason
        except KeyboardInterrupt:
            if generation is not None:
                generation.close()
            return None
        except Exception as e:  # a bad prompt or a failing backend: this item fails, the rest run
            error = _error_text(e)
    return run.result(item, settings, timing, pieces, stop_reason, error, logprobs)


def _error_text(e: Exception) -> str:
    if isinstance(e, UnknownCharactersError):
        shown = ", ".join(repr(c) for c in e.chars)
        return (f"{len(e.chars)} character(s) not in the vocabulary: {shown}; remove them, or pass "
                '--unknown replace (or "unknown": "replace" in the item)')
    return str(e) or type(e).__name__


@dataclass
class _Job:
    item: Item
    settings: Settings
    timing: Timing
    error: str | None
    pieces: list[str] = field(default_factory=list)
    generation: Generation | None = None
    result: dict | None = None  # set once done
    logprobs: Logprobs | None = None

    def take(self, event: TokenEvent) -> None:
        self.timing.token()
        self.pieces.append(event.text)
        if self.logprobs is not None:
            self.logprobs.add(event)


_END = object()  # the reader's last word: the input is exhausted


def _read_ahead(items: Iterable) -> queue.SimpleQueue:
    """Items read by a daemon thread into a queue (then _END, or the exception that stopped it), so
    free rows take items that have arrived while a pipe that waits for an answer never blocks us."""
    inbox: queue.SimpleQueue = queue.SimpleQueue()

    def read() -> None:
        try:
            for item in items:
                inbox.put(item)
            inbox.put(_END)
        except BaseException as e:  # handed to the main thread, which raises it
            inbox.put(e)

    threading.Thread(target=read, name="batch-input", daemon=True).start()
    return inbox


def _run_batched(backend: Backend, decoder: BatchDecoder, items: Iterable[tuple[int, Item]],
                 run: _Run) -> Iterator[dict | None]:
    """The results of ``items`` (index, item) in input order, generated up to ``decoder.rows`` at a
    time; None (and nothing after it) on Ctrl+C."""
    batch = Batch(decoder, backend.tokenizer)
    inbox = _read_ahead(items)
    jobs: deque[_Job] = deque()  # in input order, from the oldest not yet written
    running: dict[int, _Job] = {}  # id(generation) -> its job
    exhausted = False

    def finish(job: _Job, stop_reason: str | None) -> None:
        job.result = run.result(job.item, job.settings, job.timing, job.pieces, stop_reason, job.error,
                                job.logprobs)

    try:
        while True:
            while batch.free and not exhausted:  # refill: wait for input only when nothing runs
                if not len(batch) and jobs and jobs[0].result is not None:
                    break  # and nothing is left to write first: a pipe may wait for that line
                try:
                    item = inbox.get(block=not len(batch))
                except queue.Empty:
                    break
                if item is _END:
                    exhausted = True
                    break
                if isinstance(item, BaseException):
                    raise item
                index, item = item
                settings, error = run.settings(item, index)
                job = _Job(item, settings, Timing(**run.clock), error, logprobs=run.gatherer())
                jobs.append(job)
                if error is None:
                    try:
                        job.generation = batch.add(item.prompt or "", settings)
                    except Exception as e:
                        job.error = _error_text(e)
                if job.generation is None:
                    finish(job, None)
                    continue
                running[id(job.generation)] = job
                run.fills_context(item, job.generation, run.info.block_size)
            if not len(batch) and exhausted and not jobs:
                return
            try:
                steps = batch.step() if len(batch) else []
            except Exception as e:  # a failing backend: every running item fails, the rest run
                for job in running.values():
                    job.error = _error_text(e)
                    finish(job, None)
                running.clear()
                batch.close()
                steps = []
            for generation, event in steps:
                job = running[id(generation)]
                if event is None:
                    del running[id(generation)]
                    finish(job, generation.stop_reason)
                else:
                    job.take(event)
            while jobs and jobs[0].result is not None:
                yield jobs.popleft().result
    except KeyboardInterrupt:
        batch.close()
        yield None
