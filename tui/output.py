"""The transcript pane: the documents generated so far, confidence colouring and the token cursor.

It owns what it shows: the documents, whether tokens are coloured by the model's confidence, and
which token of the last document the cursor is on. Moving the cursor or hovering a token posts
``TokenPicked``, so whoever shows a token's alternatives (the next-token panel) can.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from textual.containers import VerticalScroll
from textual.content import Content
from textual.message import Message
from textual.reactive import reactive
from textual.style import Style

from model.generate.backend import TokenEvent
from model.terminal import visible
from tui.panels import confidence_colour
from tui.transcript import Document
from tui.widgets import DocumentView, Note

_styles: dict[tuple[str, bool], Style] = {}  # parsed once: a colour, reversed or not (the cursor)


def _style(colour: str, reverse: bool) -> Style:
    key = (colour, reverse)
    if key not in _styles:
        _styles[key] = Style.parse(f"{colour} reverse" if reverse else colour)
    return _styles[key]


class OutputView(VerticalScroll):
    """The transcript. Anchored: it follows the end while text streams in, until the user scrolls
    away; scrolling back to the bottom follows again."""

    colours = reactive(False, init=False)  # confidence colouring of the generated tokens

    @dataclass
    class TokenPicked(Message):
        """The user points at a generated token (the cursor or the mouse): show its alternatives."""

        event: TokenEvent
        title: str

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.documents: list[Document] = []
        self.cursor: int | None = None  # the token of the last document whose alternatives are shown
        self.selected: Document | None = None  # clicked: what Ctrl+O copies (else the last one)
        self.numbers = itertools.count()  # each document's number in the session

    def on_mount(self) -> None:
        self.anchor()

    def add_document(self, prompt: str) -> Document:
        document = Document(prompt, DocumentView(classes="document"), number=next(self.numbers))
        self.mount(document.view)
        self.documents.append(document)
        self.cursor = None
        return document

    def add_note(self, text: str) -> None:
        """A note in the transcript, shown as is: notes quote checkpoint paths and metadata."""
        self.mount(Note(Content(visible(text))))

    def clear(self) -> None:
        self.documents.clear()
        self.cursor = self.selected = None
        self.remove_children()

    def on_document_view_clicked(self, message: DocumentView.Clicked) -> None:
        """Select the clicked document (click it again: none), for Ctrl+O."""
        document = next((d for d in self.documents if d.view is message.view), None)
        self.selected = None if document is self.selected else document
        for d in self.documents:
            d.view.set_class(d is self.selected, "-selected")

    def show(self, document: Document) -> None:
        """Draw ``document`` as it is now (after new tokens, a stop, a change of colouring)."""
        last = document.runs[-1] if document.runs else None
        document.view.show(document.prompt, "".join(r.text for r in document.runs),
                           last.stop_reason if last else None, last.error if last else None,
                           bool(last and not last.done), self._coloured(document))

    def _coloured(self, document: Document) -> list[tuple[str, Style]] | None:
        if not self.colours:
            return None
        cursor = self.cursor if self.documents and document is self.documents[-1] else None
        return [(e.text, _style(confidence_colour(e.prob), i == cursor))
                for i, e in enumerate(document.events)]

    def watch_colours(self) -> None:
        for document in self.documents:
            self.show(document)

    def move_cursor(self, delta: int) -> bool:
        """Move the token cursor over the last document (colouring it); False if it has no tokens."""
        events = self.documents[-1].events if self.documents else []
        if not events:
            return False
        self.colours = True
        start = len(events) if self.cursor is None else self.cursor
        self.cursor = max(0, min(len(events) - 1, start + delta))
        self._pick(self.documents[-1], self.cursor)
        return True

    def on_document_view_hovered(self, message: DocumentView.Hovered) -> None:
        document = next((d for d in self.documents if d.view is message.view), None)
        if document is not None and message.index < len(document.events):
            if document is self.documents[-1]:
                self.cursor = message.index
            self._pick(document, message.index)

    def _pick(self, document: Document, index: int) -> None:
        events = document.events
        self.post_message(self.TokenPicked(events[index], f"token {index + 1}/{len(events)}"))
        self.show(document)
