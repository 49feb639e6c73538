"""Switching the app's backend: a loaded one at once; another is made in a worker thread (an ONNX
export can take a while), with its progress on the top bar. A failure keeps the current one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from textual.worker import get_current_worker

from tui.backends import BackendFactory, Backends
from tui.bars import TopBar
from tui.controls import Controls


@dataclass(frozen=True)
class OpenedModel:
    """What /model PATH opens: its backends' factories; the backend the file is for (an .onnx is
    ONNX Runtime's; None: stay on the active one); and, for a backend that reads another file than
    PATH (PyTorch beside an .onnx), which file and why, said when it is switched to."""

    factories: dict[str, BackendFactory]
    backend: str | None = None
    sources: dict[str, str] = field(default_factory=dict)


ModelOpener = Callable[[str], OpenedModel]  # a path -> what opening it gives


class BackendSwitch:
    """Makes ``backends.active`` the backend the user picked (/backend or the controls panel).
    ``leaving()`` is called on the UI thread just before: a generation belongs to the backend that
    started it. ``landed()`` is called once a switch made in a worker has ended, done or failed (the
    app then runs a prompt sent meanwhile)."""

    def __init__(self, backends: Backends, topbar: TopBar, controls: Controls, notify: Callable[..., None],
                 leaving: Callable[[], None], landed: Callable[[], None] = lambda: None):
        self.backends, self.topbar, self.controls = backends, topbar, controls
        self.notify, self.leaving, self.landed = notify, leaving, landed
        self.loading = False  # a backend or model is being made in a worker: what is typed waits for it
        self.sources: dict[str, str] = {}  # the opened model's OpenedModel.sources

    def show(self, loading: str = "") -> None:
        self.topbar.show_backend(self.backends.current.info(), loading)

    def to(self, name: str) -> None:
        backends = self.backends
        if name == backends.active:
            self.controls.show_backend(name)
        elif name in backends.loaded:
            self._use(name)
        elif name not in backends.factories:
            self.notify(f"no {name} backend here; available: {', '.join(backends.names)}", "error")
            self.controls.show_backend(backends.active)
        else:
            self.show(loading=f"loading {name}…")
            self.loading = True
            self.topbar.run_worker(lambda: self._load(name), thread=True, exclusive=True, group="backend")

    def open(self, path: str, opener: ModelOpener) -> None:
        """/model PATH: the same backend on another checkpoint, made in a worker thread; the old
        model stays until the new one is ready (and stays if it fails)."""
        self.show(loading=f"opening {path}…")
        self.loading = True
        self.topbar.run_worker(lambda: self._open(path, opener), thread=True, exclusive=True, group="backend")

    def _open(self, path: str, opener: ModelOpener) -> None:
        worker = get_current_worker()
        app = self.topbar.app
        try:
            opened = opener(path)
            name = opened.backend or self.backends.active
            if name not in opened.factories:
                raise ValueError(f"no {name} backend for it")
            backend = opened.factories[name](lambda message: app.call_from_thread(self._progress, message))
        except Exception as e:  # a missing or damaged checkpoint: say so, keep the current model
            if not worker.is_cancelled:
                app.call_from_thread(self._failed, path, str(e) or type(e).__name__)
            return
        if not worker.is_cancelled:
            app.call_from_thread(self._replace, name, backend, opened)

    def _replace(self, name: str, backend, opened: OpenedModel) -> None:
        self.leaving()
        self.backends.replace(name, backend, opened.factories)
        self.sources = dict(opened.sources)
        self.show()
        self.controls.show_backend(name, self.backends.names)
        self.notify(f"opened {backend.info().path} ({name})")
        self._landed()

    def _load(self, name: str) -> None:
        """In the worker thread: make the backend, then hand it to the UI thread."""
        worker = get_current_worker()
        app = self.topbar.app

        def progress(message: str) -> None:
            if worker.is_cancelled:  # the app is closing: abandon a long export at its next step
                raise RuntimeError("cancelled")
            app.call_from_thread(self._progress, message)

        try:
            self.backends.get(name, progress)
        except Exception as e:  # an import, export or load failure: say so, keep the current backend
            if not worker.is_cancelled:
                app.call_from_thread(self._failed, name, str(e) or type(e).__name__)
            return
        if not worker.is_cancelled:
            app.call_from_thread(self._use, name)

    def _progress(self, message: str) -> None:
        self.show(loading=message)
        self.notify(message, timeout=5)

    def _failed(self, name: str, message: str) -> None:
        self.show()
        self.controls.show_backend(self.backends.active)
        self.notify(f"could not switch to {name}: {message}", "error", timeout=15)
        self._landed()

    def _use(self, name: str) -> None:
        self.leaving()
        self.backends.active = name
        self.show()
        self.controls.show_backend(name)
        info = self.backends.current.info()
        source = f" from {self.sources[name]}" if name in self.sources else ""
        self.notify(f"now generating with {info.backend} on {info.device}{source}",
                    timeout=8 if source else None)
        self._landed()

    def _landed(self) -> None:
        if self.loading:
            self.loading = False
            self.landed()
