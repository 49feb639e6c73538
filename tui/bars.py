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

    run: Run | None = None

    def show_run(self, run: Run | None) -> None:
        self.run = run
        if run is None:
            self.update("ready")
            return
        self.set_class(run.stop_reason == "stopped" or run.error is not None, "-stopped")
        ppl = run.perplexity
        width = self.content_region.width or self.size.width
        # the long form, else the same facts in fewer words, else without the seed (a fresh one has
        # 10 digits; /show and the session keep it): 80 columns keep ppl, the least replaceable
        for short, seed in ((False, True), (True, True), (True, False)):
            line = status_line(run.timing, run.stop_reason, run.context_used, run.info.block_size,
                               run.settings.seed if seed else None, not run.done, short)
            line += f"{' · ' if short else '  ·  '}ppl {ppl:.2f}" if ppl is not None else ""
            if len(line) <= width:
                break
        # one line of fixed height: repaint it, never re-lay-out the screen for it; plain Content,
        # as a str would be parsed as markup on every update. The error may come from a session
        # file (or a model's text): visible, or an OSC 52 in it would set the clipboard
        error = f"  ·  error: {visible(run.error)}" if run.error else ""
        self.update(Content(line + error), layout=False)

    def on_resize(self) -> None:
        if self.run is not None:
            self.show_run(self.run)


class TopBar(Static):
    """The checkpoint, backend and device: one line at the top, with a backend's loading progress."""

    shown: tuple[BackendInfo, str] | None = None

    def show_backend(self, info: BackendInfo, loading: str = "") -> None:
        self.shown = (info, loading)
        width = self.content_region.width or self.size.width
        name = run_name(info.path)
        # narrow terminals drop the words before the values, not the values
        for sep, words in (("  ·  ", True), (" · ", True), (" · ", False)):
            fields = [name, f"backend {info.backend}" if words else info.backend,
                      f"device {info.device}" if words else info.device,
                      f"block {info.block_size}", f"vocab {info.vocab_size}"] + ([loading] if loading else [])
            text = sep.join(fields)
            if len(text) <= width:
                break
        # Content, not a str: a file name such as "[@click=app.quit]x.pt" must not become markup
        self.update(Content(visible(text)))

    def on_resize(self) -> None:
        if self.shown is not None:
            self.show_backend(*self.shown)


def run_name(path: str) -> str:
    """A checkpoint as people tell them apart: its run folder too (out/sc/ckpt.pt -> sc/ckpt.pt)."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name
