"""The two one-line bars: the checkpoint and backend at the top, the latest run's stats at the bottom."""

from __future__ import annotations

from pathlib import Path

from textual.content import Content
from textual.widgets import Static

from model.generate.backend import BackendInfo
from model.terminal import visible
from tui.stats import status_line
from tui.transcript import Run


class StatsBar(Static):
    """tokens/s, time to first token, tokens, stop reason, context used: one line under the prompt."""

    def show_run(self, run: Run | None) -> None:
        if run is None:
            self.update("ready")
            return
        self.set_class(run.stop_reason == "stopped" or run.error is not None, "-stopped")
        ppl = run.perplexity
        for short in (False, True):  # the short form when the long one does not fit (80 columns)
            line = status_line(run.timing, run.stop_reason, run.context_used, run.info.block_size,
                               run.settings.seed, not run.done, short)
            line += f"{' · ' if short else '  ·  '}ppl {ppl:.2f}" if ppl is not None else ""
            if len(line) <= self.size.width:
                break
        # one line of fixed height: repaint it, never re-lay-out the screen for it; plain Content,
        # as a str would be parsed as markup on every update. The error may come from a session
        # file (or a model's text): visible, or an OSC 52 in it would set the clipboard
        error = f"  ·  error: {visible(run.error)}" if run.error else ""
        self.update(Content(line + error), layout=False)


class TopBar(Static):
    """The checkpoint, backend and device: one line at the top, with a backend's loading progress."""

    def show_backend(self, info: BackendInfo, loading: str = "") -> None:
        text = f"{run_name(info.path)}  ·  backend {info.backend}  ·  device {info.device}  ·  " \
               f"block {info.block_size}  ·  vocab {info.vocab_size}"
        # Content, not a str: a file name such as "[@click=app.quit]x.pt" must not become markup
        self.update(Content(visible(text + (f"  ·  {loading}" if loading else ""))))


def run_name(path: str) -> str:
    """A checkpoint as people tell them apart: its run folder too (out/sc/ckpt.pt -> sc/ckpt.pt)."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name
