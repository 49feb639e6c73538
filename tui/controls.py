"""The controls panel: sampling settings and the backend switch.

It only reports what the user typed or picked (``SettingEdited``, ``BackendPicked``); the app
validates and applies it. The fields show the app's settings (one reactive, which `/set` changes
too), so the panel and the commands always agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual import on
from textual.app import ComposeResult
from textual.message import Message
from textual.widgets import Input, Label, Select

from model.generate.backend import Settings
from tui.panels import SidePanel

# (field, label, placeholder when empty)
FIELDS = (
    ("temperature", "temperature (0 = greedy)", "0.8"),
    ("top_k", "top-k", "off"),
    ("top_p", "top-p", "1.0"),
    ("max_new_tokens", "max new tokens", "500"),
    ("seed", "seed", "random"),
    ("min_p", "min-p (0 = off)", "0.0"),
    ("repetition_penalty", "repetition penalty", "1.0 (off)"),
    ("repetition_window", "repetition window", "64"),
    ("frequency_penalty", "frequency penalty", "0.0 (off)"),
    ("presence_penalty", "presence penalty", "0.0 (off)"),
)


def _text(settings: Settings, field: str) -> str:
    value = getattr(settings, field)
    return "" if value is None else str(value)


class Controls(SidePanel):
    """The sampling settings and the backend switch."""

    @dataclass
    class SettingEdited(Message):
        field: str
        text: str

    @dataclass
    class BackendPicked(Message):
        name: str

    def __init__(self, backends: tuple[str, ...], backend: str, **kwargs):
        super().__init__(**kwargs)
        self._backends = backends
        self._backend = backend

    def compose(self) -> ComposeResult:
        self._settings: Settings = self.app.settings
        yield Label("backend")
        yield Select([(b, b) for b in self._backends], value=self._backend, allow_blank=False,
                     id="backend", compact=True)
        for field, label, placeholder in FIELDS:
            yield Label(label)
            yield Input(_text(self._settings, field), placeholder=placeholder, id=f"set-{field}",
                        compact=True, select_on_focus=True)
        yield Label("unknown characters")
        yield Select([("reject", "reject"), ("replace", "replace")], value=self._settings.unknown,
                     allow_blank=False, id="set-unknown", compact=True)

    def on_mount(self) -> None:
        self.watch(self.app, "settings", self.show, init=False)

    def show(self, settings: Settings) -> None:
        """Display ``settings`` (the app's, whenever they change)."""
        self._settings = settings
        for field, _, _ in FIELDS:
            box = self.query_one(f"#set-{field}", Input)
            box.value = _text(settings, field)
            box.remove_class("-invalid")
        self.query_one("#set-unknown", Select).value = settings.unknown

    def show_backend(self, name: str, names: tuple[str, ...] | None = None) -> None:
        """``name`` as the active backend; ``names``: the backends there now (another model opened)."""
        self._backend = name
        select = self.query_one("#backend", Select)
        if names is not None and tuple(sorted(names)) != self._backends:
            self._backends = tuple(sorted(names))
            with select.prevent(Select.Changed):
                select.set_options([(b, b) for b in self._backends])
        if select.value != name:
            with select.prevent(Select.Changed):
                select.value = name

    def refuse(self, field: str) -> None:
        """A value the app refused: show the one in force again, marked until the next change."""
        box = self.query_one(f"#set-{field}", Input)
        box.value = _text(self._settings, field)
        box.add_class("-invalid")

    @on(Input.Submitted)
    @on(Input.Blurred)
    def _edited(self, event: Input.Submitted | Input.Blurred) -> None:
        field = (event.input.id or "").removeprefix("set-")
        if event.value != _text(self._settings, field):
            self.post_message(self.SettingEdited(field, event.value))

    @on(Select.Changed, "#set-unknown")
    def _unknown(self, event: Select.Changed) -> None:
        if event.value != self._settings.unknown:
            self.post_message(self.SettingEdited("unknown", str(event.value)))

    @on(Select.Changed, "#backend")
    def _backend_changed(self, event: Select.Changed) -> None:
        if event.value != self._backend:
            self.post_message(self.BackendPicked(str(event.value)))
