"""The app's widgets: the prompt and one document of the transcript. Styles live in app.tcss; the
transcript pane that holds the documents is tui.output, the bars above and below are tui.bars.

Model output is untrusted text: it is shown through ``Content`` (never parsed as markup) with
control characters made visible, so a stray escape sequence cannot drive the terminal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from textual import events
from textual.content import Content
from textual.message import Message
from textual.style import Style
from textual.widget import Widget
from textual.widgets import Static, TextArea

from model.terminal import visible
from tui.history import PromptHistory

START = "⟨start of text⟩"


class PromptArea(TextArea):
    """The multiline prompt: Enter sends (in a triple-quote block, once its last line ends with the
    quotes); Shift+Enter or Ctrl+J adds a newline; a paste arrives whole (the terminal brackets it,
    so its newlines are not Enter); Up and Down at the first and last line walk the prompt history;
    Ctrl+D on an empty prompt quits; Tab completes a command (``complete``), and when it cannot add
    more, posts the candidates (as readline lists them on a second Tab). Inside a command Tab never
    moves the focus: the next keys would land in another widget."""

    @dataclass
    class Submitted(Message):
        prompt_area: PromptArea
        text: str

    @dataclass
    class Candidates(Message):
        """Tab could not complete further: what the last word may become (empty: nothing fits)."""

        prompt_area: PromptArea
        candidates: list[str]

    def __init__(self, history: PromptHistory | None = None,
                 complete: Callable[[str], str | None] = lambda line: None,
                 candidates: Callable[[str], list[str]] = lambda line: [], **kwargs) -> None:
        super().__init__(**kwargs)
        self.prompt_history = history or PromptHistory()
        self.complete = complete  # a line -> the line completed, or None
        self.candidates = candidates  # a line -> what its last word may become

    async def _on_key(self, event: events.Key) -> None:
        if event.key in ("shift+enter", "ctrl+j") or (event.key == "enter" and open_block(self.text)):
            event.stop()  # inside a """ block Enter is a new line too, until the block is closed
            event.prevent_default()
            start, end = self.selection
            self.replace("\n", start, end, maintain_selection_offset=False)
        elif event.key == "enter":
            event.stop()
            event.prevent_default()
            # clear now, not when the app gets the message: keys typed meanwhile belong to the next one
            text = self.text
            self.clear()
            self.prompt_history.add(text)
            self.post_message(self.Submitted(self, block_text(text)))
        elif event.key == "tab" and self.text.startswith("/") and "\n" not in self.text:
            event.stop()
            event.prevent_default()
            if done := self.complete(self.text):
                self._show(done)
            else:
                self.post_message(self.Candidates(self, self.candidates(self.text)))
        elif event.key == "ctrl+d" and not self.text:  # end of input, as at a shell or in ollama
            event.stop()
            event.prevent_default()
            await self.run_action("app.quit")
        elif event.key in ("up", "down") and self._at_edge(event.key):
            history = self.prompt_history
            recalled = history.previous(self.text) if event.key == "up" else history.next()
            if recalled is not None:
                event.stop()
                event.prevent_default()
                self._show(recalled)
        else:
            await super()._on_key(event)

    def _at_edge(self, key: str) -> bool:
        row = self.cursor_location[0]
        return row == 0 if key == "up" else row == self.document.line_count - 1

    def load_text(self, text: str) -> None:
        """Text from elsewhere (the history file, a refused command, the palette) shown visibly:
        TextArea draws control characters raw, so an ESC in the history file would reach the
        terminal. Sending it then sends the symbols, never the escape."""
        super().load_text(visible(text))

    def _show(self, text: str) -> None:
        self.load_text(text)
        self.move_cursor(self.document.end)

    def restore(self, text: str) -> None:
        """Put back a submitted text the app could not use (unless the user already typed anew),
        selected, so typing replaces it rather than gluing a new command to it."""
        if not self.text:
            self.load_text(text)
            self.select_all()


# A prompt that starts with """ goes on over several lines until one ends with """, as in
# `ollama run`; what is sent is the text between (a newline just inside either mark dropped).
BLOCK = '"""'


def open_block(text: str) -> bool:
    """``text`` is a triple-quote block still waiting for the line that closes it."""
    return text.startswith(BLOCK) and not (len(text) >= 2 * len(BLOCK) and text.endswith(BLOCK))


def block_text(text: str) -> str:
    """What a submitted prompt sends: a closed triple-quote block's inside, anything else as it is."""
    if not text.startswith(BLOCK) or open_block(text):
        return text
    inside = text[len(BLOCK):-len(BLOCK)]
    return inside.removeprefix("\n").removesuffix("\n")


Part = str | tuple[str, str | Style]  # a piece of text and its style, as Content.assemble takes


class DocumentView(Widget):
    """One prompt and what was generated after it (continuations included), with a marker when the
    last generation was stopped or failed.

    The text is shown in chunks of CHUNK_LINES lines (split at newlines, so the wrapping is the
    same), each its own Static. While text streams in only the last chunk changes, so an update
    re-wraps a few lines, not the whole document (cutting the text into chunks still walks it all).
    """

    DEFAULT_CSS = """
    DocumentView { height: auto; layout: vertical; }
    DocumentView > Static { height: auto; }
    """
    CHUNK_LINES = 16
    GROW = 8  # the live chunk is kept this many lines at a time taller than its text (see show)

    @dataclass
    class Hovered(Message):
        """The mouse is over generated token ``index`` of this document."""

        view: DocumentView
        index: int

    @dataclass
    class Clicked(Message):
        view: DocumentView

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._parts: list[Part] = []
        self._chunks: list[list[Part]] = []  # what each child Static shows
        self._height: int | None = None  # lines the live (last) chunk was given at the last update

    @property
    def content(self) -> Content:
        """The whole document as one Content (tests and readers; the screen shows it in chunks)."""
        return Content.assemble(*self._parts)

    def show(self, prompt: str, text: str, stop_reason: str | None, error: str | None,
             generating: bool, tokens: list[tuple[str, Style]] | None = None) -> None:
        """``tokens``: the generated text as (piece, style) pairs instead of ``text`` (confidence
        colouring); each piece carries its index, so hovering it can show its alternatives."""
        parts: list[Part] = [(visible(prompt), "bold") if prompt else (START, "dim italic")]
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
        self._parts = parts
        chunks = split_lines(parts, self.CHUNK_LINES)
        views = list(self.children)
        for view in views[len(chunks):]:  # a regenerated run can be shorter than the one it replaced
            view.remove()
        live = len(chunks) - 1
        for i, chunk in enumerate(chunks):
            if i >= len(views):
                self.mount(Static(Content.assemble(*chunk)))
            elif i == live:
                self._show_live(views[i], Content.assemble(*chunk), generating)
            elif chunk != self._chunks[i] or i == len(self._chunks) - 1:  # changed, or was the live one
                views[i].styles.min_height = None
                views[i].update(Content.assemble(*chunk))
        if len(chunks) > len(views):
            self._height = None
        self._chunks = chunks

    def _show_live(self, view: Static, content: Content, generating: bool) -> None:
        # A layout of the screen costs far more than repainting one widget: ask for one only
        # when the chunk's height changes. While text streams in, the chunk is
        # kept GROW lines at a time taller than its text (blank lines below it), so a layout comes
        # every few lines of text rather than at every line; the spare lines go when it ends.
        width = view.content_region.width
        height = content.get_height(view.styles, width) if width else None
        if height is not None:
            height = -(-height // self.GROW) * self.GROW if generating else height
            if height != self._height:
                view.styles.min_height = height if generating else None
        view.update(content, layout=height is None or height != self._height)
        self._height = height

    def on_click(self) -> None:
        self.post_message(self.Clicked(self))

    def on_mouse_move(self, event: events.MouseMove) -> None:
        index = self.screen.get_style_at(*event.screen_offset).meta.get("token")
        if index is not None:
            self.post_message(self.Hovered(self, index))


def split_lines(parts: list[Part], lines: int) -> list[list[Part]]:
    """``parts`` cut at every ``lines``-th newline into runs of parts: the newline itself goes (one
    widget below another already starts a new line) and a piece holding it is cut in two, both
    halves keeping its style. No empty run at the end."""
    chunks: list[list[Part]] = [[]]
    newlines = 0
    for part in parts:
        text, style = (part, None) if isinstance(part, str) else part
        start = 0
        at = text.find("\n")
        while at >= 0:
            newlines += 1
            if newlines % lines == 0:
                piece = text[start:at]
                if piece:
                    chunks[-1].append(piece if style is None else (piece, style))
                chunks.append([])
                start = at + 1
            at = text.find("\n", at + 1)
        if start == 0:
            chunks[-1].append(part)
        elif start < len(text):
            chunks[-1].append(text[start:] if style is None else (text[start:], style))
    if len(chunks) > 1 and not chunks[-1]:
        chunks.pop()
    return chunks


class Note(Static):
    """Command output shown in the transcript (/help, /show)."""
