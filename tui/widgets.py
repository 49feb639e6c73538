"""The app's widgets: the prompt, the transcript, the stats bar. Styles live in app.tcss.

Model output is untrusted text: it is shown through ``Content`` (never parsed as markup) with
control characters made visible, so a stray escape sequence cannot drive the terminal.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual import events
from textual.containers import VerticalScroll
from textual.content import Content
from textual.message import Message
from textual.style import Style
from textual.widgets import Static, TextArea

# C0 controls and DEL -> their Unicode "control picture" (ESC -> ␛), keeping newline and tab
_VISIBLE = {c: 0x2400 + c for c in range(32) if c not in (9, 10)} | {127: 0x2421}
START = "⟨start of text⟩"


def visible(text: str) -> str:
    return text.translate(_VISIBLE)


class PromptArea(TextArea):
    """The multiline prompt: Enter sends; Shift+Enter or Ctrl+J adds a newline."""

    @dataclass
    class Submitted(Message):
        prompt_area: PromptArea
        text: str

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            # clear now, not when the app gets the message: keys typed meanwhile belong to the next one
            text = self.text
            self.clear()
            self.post_message(self.Submitted(self, text))
        elif event.key in ("shift+enter", "ctrl+j"):
            event.stop()
            event.prevent_default()
            start, end = self.selection
            self.replace("\n", start, end, maintain_selection_offset=False)
        else:
            await super()._on_key(event)


    def restore(self, text: str) -> None:
        """Put back a submitted text the app could not use (unless the user already typed anew)."""
        if not self.text:
            self.load_text(text)
            self.move_cursor(self.document.end)


class DocumentView(Static):
    """One prompt and what was generated after it (continuations included), with a marker when the
    last generation was stopped or failed."""

    @dataclass
    class Hovered(Message):
        """The mouse is over generated token ``index`` of this document."""

        view: DocumentView
        index: int

    _height: int | None = None  # lines the content wrapped to at the last update

    def show(self, prompt: str, text: str, stop_reason: str | None, error: str | None,
             generating: bool, tokens: list[tuple[str, Style]] | None = None) -> None:
        """``tokens``: the generated text as (piece, style) pairs instead of ``text`` (confidence
        colouring); each piece carries its index, so hovering it can show its alternatives."""
        parts: list[str | tuple[str, str | Style]] = [
            (visible(prompt), "bold") if prompt else (START, "dim italic")]
        if tokens is None:
            parts.append(visible(text))
        else:
            parts += [(visible(piece), style + Style.from_meta({"token": i}))
                      for i, (piece, style) in enumerate(tokens)]
        if generating:
            parts.append(("▍", "$accent"))
        elif error:
            parts.append((f" ⚠ {visible(error)}", "bold $error"))
        elif stop_reason == "stopped":
            parts.append((" ⏹ stopped", "bold $warning"))
        content = Content.assemble(*parts)
        # a full layout of the screen costs far more than repainting this widget: ask for one only
        # when the text's height changes (a new line), not for every few tokens on the same line
        width = self.content_region.width
        height = content.get_height(self.styles, width) if width else None
        self.update(content, layout=height is None or height != self._height)
        self._height = height

    def on_mouse_move(self, event: events.MouseMove) -> None:
        index = self.get_style_at(event.x, event.y).meta.get("token")
        if index is not None:
            self.post_message(self.Hovered(self, index))


class Note(Static):
    """Command output shown in the transcript (/help, /show)."""


class OutputView(VerticalScroll):
    """The transcript. Anchored: it follows the end while text streams in, until the user scrolls
    away; scrolling back to the bottom follows again."""

    def on_mount(self) -> None:
        self.anchor()

    def add_document(self) -> DocumentView:
        view = DocumentView(classes="document")
        self.mount(view)
        return view

    def add_note(self, text: str) -> None:
        self.mount(Note(Content(text)))

    def clear(self) -> None:
        self.remove_children()


class StatsBar(Static):
    """tokens/s, time to first token, tokens, stop reason, context used: one line under the prompt."""
