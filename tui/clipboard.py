"""Ctrl+O: a document to the clipboard. The terminal's clipboard is reached with OSC 52, which the
app can send but never confirm (tmux drops it without `set -g set-clipboard on`; some terminals
ignore it), so the text is also written to a file whose path the notice gives."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def copy_text(text: str, send: Callable[[str], None], folder: Path) -> tuple[str, str]:
    """Send ``text`` with ``send`` (the app's OSC 52) and write it to ``folder``/clipboard.txt; the
    notice to show and its severity."""
    send(text)
    told = f"sent {len(text)} characters to the terminal's clipboard (OSC 52"
    told += "; tmux passes it on only with `set -g set-clipboard on`)" if os.environ.get("TMUX") else ")"
    path = folder / "clipboard.txt"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        return f"{told}; could not also write {path}: {e.strerror or e}", "warning"
    return f"{told}; also written to {path}", "information"
