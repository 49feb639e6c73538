"""`gpt-tui --batch`: prompts in, one JSON object per prompt out, in order, each flushed when done.

Input is plain text (one prompt per non-blank line) or JSONL (``{"id", "prompt", ...settings}``),
told apart by the first non-blank line. Items are read lazily, so a pipe can feed prompts one at a
time and read each answer before sending the next. A bad item becomes an output line carrying its
error; the others still run. Pure over a backend and streams: the CLI only opens files.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Literal, TextIO

from model.backend import Backend, Settings
from model.tokenizer import UnknownCharactersError
from tui import settings as settings_text
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


def read_items(lines: Iterable[str], fmt: Format = "auto") -> Iterator[Item]:
    """Items from input lines, lazily; blank lines are skipped."""
    for number, line in enumerate(lines, 1):
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
    if not isinstance(obj, dict):
        return Item(number, None, error=f"line {number} must be a JSON object with a \"prompt\"")
    item_id = obj.pop("id", number)
    prompt = obj.pop("prompt", None)
    if not isinstance(prompt, str):
        return Item(item_id, None, error=f"line {number}: \"prompt\" must be a string")
    unknown = sorted(set(obj) - set(settings_text.FIELDS))
    if unknown:
        return Item(item_id, prompt, error=f"line {number}: unknown field(s) {unknown}; allowed: id, prompt, "
                                           + ", ".join(settings_text.FIELDS))
    return Item(item_id, prompt, obj)


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
    new_seed: Callable[[], int] = lambda: secrets.randbelow(2**31),
    checkpoint_sha256: str | None = None,
    keep_stop: bool = False,
) -> Summary:
    """Generate for each item in order, writing one JSON line per item to ``out`` as it finishes.

    An item without a seed of its own gets the base seed plus its index (0 for the first item), so
    items differ yet the run repeats; without a base seed, a fresh one. Either way the seed is
    written out, so any line can be replayed alone. A stop string is cut from the completion
    unless ``keep_stop``. Ctrl+C stops after the lines already written; the summary says so.
    """
    summary = Summary()
    kwargs = {} if clock is None else {"clock": clock}
    for index, item in enumerate(_guard(items, summary)):
        base = settings if settings.seed is None else replace(settings, seed=settings.seed + index)
        result = _run_item(backend, item, base, log, new_seed, checkpoint_sha256, kwargs, keep_stop)
        if result is None:  # interrupted mid-item: its line is not written
            summary.interrupted = True
            break
        out.write(json.dumps(result, ensure_ascii=False) + "\n")
        out.flush()
        summary.done += 1
        summary.failed += result["error"] is not None
        summary.tokens += result["tokens"]
        summary.seconds += result["timing"]["total_s"] or 0.0
        name = STOP_NAMES.get(result["stop_reason"], "-")
        status = f"error: {result['error']}" if result["error"] else f"{result['tokens']} tokens, {name}"
        log(f"[{result['id']}] {status}")
    log(str(summary))
    return summary


def _guard(items: Iterable[Item], summary: Summary) -> Iterator[Item]:
    """The items, ending quietly (marked interrupted) if Ctrl+C arrives while waiting for input."""
    try:
        yield from items
    except KeyboardInterrupt:
        summary.interrupted = True


def _run_item(backend: Backend, item: Item, base: Settings, log: Callable[[str], None],
              new_seed: Callable[[], int], sha: str | None, clock: dict, keep_stop: bool) -> dict | None:
    info = backend.info()
    timing = Timing(**clock)
    settings, error, completion, stop_reason = base, item.error, None, None
    if error is None:
        try:
            settings = settings_text.replace(base, item.changes)
        except ValueError as e:
            error = f"bad settings: {e}"
    if settings.seed is None:
        settings = settings_text.replace(settings, {"seed": new_seed()})
    if error is None:
        generation = None
        pieces: list[str] = []
        try:
            generation = backend.stream(item.prompt or "", settings)
            if len(generation.prompt_ids) >= info.block_size:
                log(f"[{item.id}] the prompt fills the context; the model sees its last "
                    f"{info.block_size} tokens")
            for event in generation:
                timing.token()
                pieces.append(event.text)
            stop_reason = generation.stop_reason
        except KeyboardInterrupt:
            if generation is not None:
                generation.close()
            return None
        except UnknownCharactersError as e:
            shown = ", ".join(repr(c) for c in e.chars)
            error = (f"{len(e.chars)} character(s) not in the vocabulary: {shown}; remove them, or pass "
                     '--unknown replace (or "unknown": "replace" in the item)')
        except Exception as e:  # a bad prompt or a failing backend: this item fails, the rest run
            error = str(e) or type(e).__name__
        completion = "".join(pieces) if error is None or pieces else None
        if completion is not None and stop_reason == "stop_string" and not keep_stop:
            completion = trim_stop(completion, settings.stop)
    timing.finish()
    result = record(item.prompt, completion, stop_reason, settings, info, timing, sha)
    return {"id": item.id, **result, "error": error}
