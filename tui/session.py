"""What a generation leaves behind: one record per generation, saved as JSONL, exported as Markdown.

The same record serves the app's sessions and batch output, so a line from either can be replayed:
prompt, settings and seed, backend and checkpoint (with its SHA-256) give the same completion.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path

from model.atomic import atomic_write
from model.generate.backend import BackendInfo, Settings
from model.paths import data_dir
from tui import settings as settings_text
from tui.stats import STOP_NAMES, Timing


def default_session_dir() -> Path:
    """$XDG_DATA_HOME/gpt-from-scratch/sessions (~/.local/share by default)."""
    return data_dir() / "sessions"


def file_sha256(path: str | Path) -> str | None:
    """SHA-256 of a file (None if it is not a file), cached while its size and mtime stay the same."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        return None
    return _sha256(str(path.resolve()), st.st_size, st.st_mtime_ns) if path.is_file() else None


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def record(prompt: str, completion: str, stop_reason: str | None, settings: Settings, info: BackendInfo,
           timing: Timing, checkpoint_sha256: str | None = None) -> dict:
    """One generation as plain JSON data."""
    return {
        "prompt": prompt,
        "completion": completion,
        "tokens": timing.tokens,
        "stop_reason": stop_reason,
        "settings": {k: v for k, v in settings_text.to_dict(settings).items() if k != "seed"},
        "seed": settings.seed,
        "backend": info.backend,
        "device": info.device,
        "precision": info.precision or None,  # the decoding weights' type, where the backend knows it
        "checkpoint": info.path,
        "checkpoint_sha256": checkpoint_sha256,
        "timing": timing.to_dict(),
    }


def save_jsonl(records: Iterable[dict], path: str | Path) -> Path:
    """Write records one per line, atomically (a crash leaves the old file or the new one)."""
    path = Path(path).expanduser()
    with atomic_write(path, "w", encoding="utf-8") as f:
        for r in records:
            line = json.dumps(r, ensure_ascii=False)
            try:
                line.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate (a model's own vocabulary): ASCII JSON keeps it
                line = json.dumps(r)
            f.write(line + "\n")
    return path


class Session:
    """The app's generations so far, one record each, and where /save and /export write them.

    The app's records also say which document (``document``, numbered from 0 in the session) and
    which part of it (``run``: 0 the first generation, then continuations) they are; a regenerated
    part is recorded again with the same numbers, so ``documents`` can rebuild the transcript."""

    def __init__(self, folder: Path | None = None):
        started = datetime.now()
        self.folder = folder or default_session_dir()
        self.path = self.folder / f"session-{started:%Y%m%d-%H%M%S}.jsonl"
        self.history: list[dict] = []

    def put(self, rec: dict, replace_last: bool = False) -> None:
        """Add a record; ``replace_last``: it supersedes the last one (a stepped text, growing)."""
        if replace_last and self.history:
            self.history[-1] = rec
        else:
            self.history.append(rec)

    def autosave(self) -> str | None:
        """Save to the session's own file if there is anything to save; an error message or None."""
        if not self.history:
            return None
        try:
            self.save()
        except OSError as e:
            return str(e)
        return None

    def latest_other(self) -> Path | None:
        """The newest session file in the folder other than this one (for /load without a path)."""
        try:
            found = [p for p in self.folder.glob("session-*.jsonl") if p != self.path]
        except OSError:
            return None
        return max(found, key=lambda p: (p.stat().st_mtime, p.name), default=None)

    def open(self, path: Path) -> list[dict]:
        """Read a saved session and make it this one: its records, and its file for later saves.
        SessionError (this one unchanged) when the file cannot be used."""
        records = read_session(path)
        self.history, self.path = records, path
        return records

    def save(self, path: str | None = None) -> str:
        """Write the session as JSONL (to ``path``, else its own file); a line saying where."""
        return self._write(save_jsonl, Path(path).expanduser() if path else self.path, "saved", "save")

    def export(self, path: str | None = None) -> str:
        """Write the session as Markdown (beside its own file by default); a line saying where."""
        target = Path(path).expanduser() if path else self.path.with_suffix(".md")
        return self._write(save_markdown, target, "exported", "export")

    def _write(self, save: Callable[[list[dict], Path], object], target: Path, done: str, verb: str) -> str:
        # each record with its checkpoint's hash (computed once per file, when saving)
        records = [r | {"checkpoint_sha256": file_sha256(r["checkpoint"])} if r.get("checkpoint") else r
                   for r in self.history]
        try:
            save(records, target)
        except OSError as e:
            raise OSError(f"could not {verb} to {target}: {e}") from None
        return f"{done} {len(self.history)} generation(s) to {target}"


def documents(records: list[dict]) -> list[tuple[str, list[dict]]]:
    """The transcript a session's records make: (prompt, the record of each part) per document, in
    order; of a part recorded twice (regenerated) the later record. A record without numbers (a
    batch line) is a document of its own."""
    parts: dict[object, dict[int, dict]] = {}
    for i, r in enumerate(records):
        key = r.get("document", f"line {i}")
        run = r.get("run", 0)
        parts.setdefault(key, {})[run if isinstance(run, int) else 0] = r
    out = []
    for runs in parts.values():
        ordered = [runs[k] for k in sorted(runs)]
        out.append((ordered[0]["prompt"], ordered))
    return out

def load_jsonl(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class SessionError(ValueError):
    """A session file that cannot be loaded; one line naming the file and what is wrong."""


MAX_SESSION_BYTES = 256 << 20  # far above any session typed by hand; a bigger file is not one
_MAX_INT = 2**63 - 1  # tokens, seeds and numbers: a session's are far smaller

# what the app reads of a record, and the JSON types each may have (None: may be null or absent)
_STR, _INT = (str,), (int,)
_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {  # name -> (types, required)
    "prompt": (_STR, True), "completion": ((str, type(None)), True),
    "tokens": (_INT, False), "stop_reason": (_STR, False), "error": (_STR, False),
    "seed": (_INT, False), "backend": (_STR, False), "checkpoint": (_STR, False),
    "checkpoint_sha256": (_STR, False), "settings": ((dict,), False), "fixed_seed": ((bool,), False),
    "document": ((int, str), False), "run": (_INT, False),
}


def read_session(path: str | Path) -> list[dict]:
    """The records of a session file, each checked for what the app reads of it; SessionError
    saying which line and field otherwise (not JSONL, not UTF-8, a wrong type, a huge number...)."""
    where = f"could not load {path}"
    try:
        size = Path(path).stat().st_size
        if size > MAX_SESSION_BYTES:
            raise SessionError(f"{where}: {size:,} bytes is too big for a session file "
                               f"(at most {MAX_SESSION_BYTES >> 20} MiB)")
        records = load_jsonl(path)
    except SessionError:
        raise
    except OSError as e:
        raise SessionError(f"{where}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise SessionError(f"{where}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset "
                           f"{e.start} of a block); is it a session file?") from None
    except json.JSONDecodeError as e:
        raise SessionError(f"{where}: not a JSONL session file ({e})") from None
    except (ValueError, RecursionError):  # an integer past 4300 digits; nesting past the stack
        raise SessionError(f"{where}: a line holds a number too long or nesting too deep to read") from None
    for number, rec in enumerate(records, 1):
        problem = _record_problem(rec)
        if problem:
            raise SessionError(f"{where}: record {number} {problem}")
    return records


def _record_problem(rec: object) -> str | None:
    """What is wrong with one record, or None."""
    if not isinstance(rec, dict):
        return "is not a JSON object (a gpt-tui record with a prompt)"
    for name, (types, required) in _FIELDS.items():
        if name not in rec:
            if required:
                return f"has no {name!r}"
            continue
        value = rec[name]
        if value is None and not required or value is None and type(None) in types:
            continue
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            return f"has {name!r} of the wrong type ({type(value).__name__})"
        if isinstance(value, int) and not isinstance(value, bool) and not 0 <= value <= _MAX_INT:
            return f"has {name!r} out of range (0 to 2^63-1)"
        if isinstance(value, str) and any(0xD800 <= ord(c) < 0xE000 for c in value):
            return f"has {name!r} holding a lone surrogate, which is not text"
    return None


def _fence(text: str) -> str:
    """A code fence longer than any run of backticks in text, so the text cannot close it."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def to_markdown(records: Iterable[dict], title: str = "gpt-tui session") -> str:
    """The session for people: each generation's settings in a line, then prompt and completion."""
    out = [f"# {title}", ""]
    for i, r in enumerate(records, 1):
        s = r.get("settings") or {}  # a loaded session's records may lack what ours hold
        facts = [r.get("backend", "?"), f"temperature {s.get('temperature', '?')}",
                 f"top-k {s.get('top_k') or 'off'}", f"top-p {s.get('top_p', '?')}", f"seed {r.get('seed')}",
                 f"{r.get('tokens', '?')} tokens"]
        stop = r.get("stop_reason") or "-"
        facts.append(STOP_NAMES.get(stop, stop))
        out += [f"## {i}", "", "*" + " · ".join(str(f) for f in facts) + "*", ""]
        for label, text in (("Prompt", r["prompt"]), ("Completion", r["completion"])):
            text = text or ""  # a failed line's completion is null
            fence = _fence(text)
            out += [f"**{label}**", "", fence, text, fence, ""]
        out += [f"Checkpoint `{r.get('checkpoint')}` (sha256 {r.get('checkpoint_sha256') or 'unknown'})", ""]
    return "\n".join(out)


def save_markdown(records: Iterable[dict], path: str | Path, title: str = "gpt-tui session") -> Path:
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_markdown(records, title), encoding="utf-8", errors="backslashreplace")
    return path
