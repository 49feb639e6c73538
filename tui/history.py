"""Prompt history: Up and Down in the prompt box recall earlier prompts and commands, kept across
restarts in one JSONL file in the user's data folder (like ollama's REPL and a shell)."""

from __future__ import annotations

import json
from pathlib import Path

from model.paths import data_dir

MAX_ENTRIES = 1000  # the file keeps the latest this many


def default_history_path() -> Path:
    """$XDG_DATA_HOME/gpt-from-scratch/history.jsonl (~/.local/share by default)."""
    return data_dir() / "history.jsonl"


class PromptHistory:
    """Entries oldest first, and a position while the user walks through them (None: not walking).
    A file that cannot be read or written costs the history, never the app."""

    def __init__(self, path: Path | None = None):
        self.path = path
        self.entries: list[str] = self._read() if path is not None else []
        self.position: int | None = None
        self.draft = ""  # what was in the box before walking back, given back past the newest

    def _read(self) -> list[str]:
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            return []
        entries = []
        for line in lines[-MAX_ENTRIES:]:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash: skip it
            if isinstance(entry, str):
                entries.append(entry)
        return entries

    def add(self, text: str) -> None:
        """Remember a sent prompt (not blank, not the same as the last one) and stop walking."""
        self.position = None
        if not text.strip() or (self.entries and self.entries[-1] == text):
            return
        self.entries.append(text)
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if len(self.entries) > MAX_ENTRIES * 2:  # rewrite now and then, so the file stays small
                self.entries = self.entries[-MAX_ENTRIES:]
                self.path.write_text("".join(json.dumps(e) + "\n" for e in self.entries), encoding="utf-8")
            else:
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(text) + "\n")
        except OSError:
            pass  # a read-only home: the history lasts this session only

    def previous(self, current: str) -> str | None:
        """The entry before the one shown (the newest at first); None at the oldest."""
        if not self.entries or self.position == 0:
            return None
        if self.position is None:
            self.draft, self.position = current, len(self.entries)
        self.position -= 1
        return self.entries[self.position]

    def next(self) -> str | None:
        """The entry after the one shown; past the newest, the draft; None when not walking."""
        if self.position is None:
            return None
        self.position += 1
        if self.position >= len(self.entries):
            self.position = None
            return self.draft
        return self.entries[self.position]
