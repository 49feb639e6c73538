"""The Textual app: type a prompt, watch tokens stream, steer the sampler while it runs.

Generation runs in a thread worker that checks for cancellation every token and hands tokens to
the UI in batches about every 30 ms (``POST_EVERY``), so keys and repaints never wait for the
model. The worker only waits on the backend: the one gpt-tui gives the app decodes in a child
process (tui.remote), so the UI's rendering never holds the GIL the model needs. The UI talks
only to the ``Backend`` protocol; backends are made by injected factories, so tests use fakes and
the ONNX code is imported only when someone switches to it.

Side panels live in ``#panels`` and are shown or hidden with a key (F2: the controls). A panel
with a ``show_tokens(events)`` method receives every batch of ``TokenEvent``s while it is shown
(a hidden one gets nothing). The views into the model (F3-F9, /step, /ab) live in tui.insight.
"""

from __future__ import annotations

import gc
import secrets
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.message import Message
from textual.widgets import Footer, Static
from textual.worker import get_current_worker

from model.backend import Backend, Settings, TokenEvent
from tui import commands
from tui import settings as settings_text
from tui.backends import BackendFactory
from tui.controls import Controls
from tui.insight import InsightMixin
from tui.panels import legend
from tui.session import default_session_dir, file_sha256, record, save_jsonl, save_markdown
from tui.stats import Clock, Timing, status_line
from tui.transcript import Document, Run
from tui.widgets import OutputView, PromptArea, StatsBar

POST_EVERY = 0.03  # seconds between batches of tokens sent to the UI
# seconds between stats bar updates while tokens stream: a repaint at the bottom of the screen
# while the text grows at the top makes the compositor redraw everything between the two
STATS_EVERY = 0.25


def freeze_heap() -> None:
    """Put every object made so far (PyTorch, Textual, the loaded model: ~180,000 that live as long as
    the app) out of the garbage collector's reach. Otherwise its full collections walk them all while
    text streams: 150-210 ms of the UI's core every second generation or so, a stall on screen and
    memory traffic beside the model's; after this, 25-75 ms. Call it once, before the app runs."""
    gc.collect()
    gc.freeze()


class _Update(Message):
    """A call the generation worker hands to the UI without waiting for it (``call_from_thread``
    would block the worker until the UI had rendered, and rendering time would become
    generation time). Posted to the app's own queue, so updates run in the order sent."""

    def __init__(self, fn: Callable[..., None], *args) -> None:
        super().__init__()
        self.fn, self.args = fn, args


class GPTApp(InsightMixin, App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "gpt-tui"
    BINDINGS = [
        Binding("escape", "stop", "Stop"),
        Binding("ctrl+r", "regen", "Regenerate", priority=True),
        Binding("ctrl+n", "continue", "Continue", priority=True),
        Binding("ctrl+o", "copy_output", "Copy", priority=True),
        Binding("ctrl+s", "save", "Save", priority=True),
        Binding("ctrl+l", "clear", "Clear", priority=True),
        Binding("f2", "toggle_panel('controls')", "Controls"),
        Binding("f3", "toggle_panel('next-token')", "Next token", priority=True),
        Binding("f4", "toggle_panel('attention')", "Attention", priority=True),
        Binding("f5", "toggle_panel('ab')", "A/B", show=False, priority=True),
        # priority: the prompt box (a TextArea) binds F6 and F7 to selecting
        Binding("f6", "toggle_colours", "Confidence", priority=True),
        Binding("f7", "toggle_step", "Step mode", show=False, priority=True),
        Binding("f8", "step", "Step", show=False, priority=True),
        Binding("f9", "undo", "Undo step", show=False, priority=True),
        Binding("alt+left", "token_cursor(-1)", "Previous token", show=False, priority=True),
        Binding("alt+right", "token_cursor(1)", "Next token", show=False, priority=True),
        Binding("ctrl+q", "quit", "Quit", priority=True),
    ]

    def __init__(
        self,
        backend: Backend,
        backend_name: str = "torch",
        factories: dict[str, BackendFactory] | None = None,
        settings: Settings | None = None,
        clock: Clock = time.perf_counter,
        session_dir: Path | None = None,
        new_seed: Callable[[], int] = lambda: secrets.randbelow(2**31),
    ):
        super().__init__()
        self.backend = backend
        self.backend_name = backend_name
        self._backends: dict[str, Backend] = {backend_name: backend}  # loaded ones, reused on switch
        self.factories = dict(factories or {})
        self.settings = settings or Settings()
        self.clock = clock
        self.new_seed = new_seed
        started = datetime.now()
        self.session_path = (session_dir or default_session_dir()) / f"session-{started:%Y%m%d-%H%M%S}.jsonl"
        self.documents: list[Document] = []
        self.history: list[dict] = []  # a record per finished generation, for /save and /export
        self.current: Run | None = None  # the latest generation (running or done)
        self._stats_shown = 0.0  # when the stats bar was last updated during a generation

    # ---- screen ----------------------------------------------------------------------------

    @property
    def backend_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys([*self._backends, *self.factories]))

    def compose(self) -> ComposeResult:
        yield Static(id="topbar")
        with Horizontal(id="body"):
            with Vertical(id="main"):
                yield Static(legend(), id="legend")
                yield OutputView(id="output")
                yield PromptArea(id="prompt", placeholder="Type a prompt; Enter sends, Ctrl+J adds a line, "
                                                          "/help lists commands")
            with Vertical(id="panels"):
                yield Controls(self.settings, tuple(sorted(self.backend_names)), self.backend_name,
                               id="controls")
                yield from self.insight_panels()
        yield StatsBar("ready", id="stats")
        yield Footer()

    def on_mount(self) -> None:
        # looked up once: a DOM query on every batch of tokens costs milliseconds of the UI thread
        self.output = self.query_one(OutputView)
        self.controls = self.query_one(Controls)
        self.stats = self.query_one(StatsBar)
        self.side_panels = list(self.query("#panels > *"))
        self._show_backend()
        self.query_one(PromptArea).focus()

    def _show_backend(self, loading: str = "") -> None:
        info = self.backend.info()
        text = f"{Path(info.path).name}  ·  backend {info.backend}  ·  device {info.device}  ·  " \
               f"block {info.block_size}  ·  vocab {info.vocab_size}"
        self.query_one("#topbar", Static).update(text + (f"  ·  {loading}" if loading else ""))

    def _show_stats(self) -> None:
        run = self.current
        stats = self.stats
        if run is None:
            stats.update("ready")
            return
        stats.set_class(run.stop_reason == "stopped" or run.error is not None, "-stopped")
        line = status_line(run.timing, run.stop_reason, run.context_used, run.info.block_size,
                           run.settings.seed, not run.done)
        ppl = run.perplexity
        line += f"  ·  ppl {ppl:.2f}" if ppl is not None else ""
        # one line of fixed height: repaint it, never re-lay-out the screen for it; plain Content,
        # as a str would be parsed as markup on every update
        stats.update(Content(line + (f"  ·  error: {run.error}" if run.error else "")), layout=False)

    def notify_text(self, message: str, severity: str = "information", timeout: float | None = None) -> None:
        """A notification whose text is shown as is (it may hold prompt characters or file paths)."""
        self.notify(message, severity=severity, timeout=timeout, markup=False)  # type: ignore[arg-type]

    # ---- prompt and commands ---------------------------------------------------------------

    @on(PromptArea.Submitted)
    def _submitted(self, event: PromptArea.Submitted) -> None:
        line = event.text
        if commands.is_command(line):
            try:
                command = commands.parse(line, self.settings, self.backend_names)
            except commands.CommandError as e:
                self.notify_text(str(e), "error")
                event.prompt_area.restore(line)
                return
            self.execute(command)
        elif self.step_mode:
            if not self.step_submitted(line):
                event.prompt_area.restore(line)
        elif not self.start(commands.prompt_text(line)):
            event.prompt_area.restore(line)

    def execute(self, command: commands.Command) -> None:
        name = command.name
        if name == "set" and command.settings is not None:
            self.apply_settings(command.settings)
        elif name == "show" and command.args:
            self.output.add_note(self.model_note())
        elif name == "show":
            info = self.backend.info()
            self.output.add_note(f"{settings_text.describe(self.settings)}\n{'backend':>15}  {info.backend} "
                                 f"on {info.device}\n{'checkpoint':>15}  {info.path}")
        elif name == "help":
            self.output.add_note(commands.help_text() + "\n\nkeys: Enter send · Ctrl+J newline · Esc stop · "
                                 "Ctrl+R regenerate · Ctrl+N continue · Ctrl+O copy · Ctrl+S save · "
                                 "Ctrl+L clear · F2 controls · F3 next token · F4 attention · F5 A/B · "
                                 "F6 confidence · F7 step mode · F8 step · F9 undo · Alt+←/→ token · "
                                 "Ctrl+Q quit")
        elif name in ("step", "pick", "undo", "ab"):
            self.insight_command(command)
        elif name == "backend":
            self.switch_backend(command.args[0])
        elif name == "export":
            self.action_export(command.args[0] if command.args else None)
        elif name == "save":
            self.action_save(command.args[0] if command.args else None)
        else:  # clear, regen, continue, copy: the same as their keys
            getattr(self, f"action_{'copy_output' if name == 'copy' else name}")()

    def apply_settings(self, settings: Settings) -> None:
        """New settings for the next generation and for the next token of the running one."""
        self.settings = settings
        self.controls.show(settings)
        self.insight_settings(settings)
        run = self.current
        if run is not None and not run.done:
            # the seed counts only at the start: keep the one this run started with
            run.generation.settings = settings_text.replace(settings, {"seed": run.settings.seed})

    @on(Controls.SettingEdited)
    def _setting_edited(self, event: Controls.SettingEdited) -> None:
        try:
            self.apply_settings(settings_text.with_text(self.settings, event.field, event.text))
        except ValueError as e:
            self.controls.mark_invalid(event.field)
            self.notify_text(str(e), "error")

    # ---- generation ------------------------------------------------------------------------

    def start(self, prompt: str, document: Document | None = None, replace: bool = False) -> bool:
        """Generate from ``prompt`` (a new document), or continue ``document`` (or regenerate its last
        run when ``replace``). Returns False, with a notice, when the prompt cannot be used."""
        context = prompt if document is None else document.text_before_last if replace else document.text
        unknown = self.backend.unknown_chars(context)
        if unknown and self.settings.unknown == "reject":
            shown = " ".join(repr(c) for c in unknown)
            self.notify_text(f"not in the model's vocabulary: {shown}; edit the prompt or "
                             "/set unknown replace", "error", timeout=8)
            return False
        self._end_current()
        seed = self.settings.seed if self.settings.seed is not None else self.new_seed()
        settings = settings_text.replace(self.settings, {"seed": seed})
        timing = Timing(self.clock)
        try:
            generation = self.backend.stream(context, settings)
        except Exception as e:  # a prompt the tokenizer refuses, a failing backend: say so, carry on
            self.notify_text(str(e) or type(e).__name__, "error", timeout=8)
            return False
        if unknown:
            shown = " ".join(repr(c) for c in unknown)
            self.notify_text(f"replaced {len(unknown)} unknown character(s): {shown}", "warning")
        info = self.backend.info()
        if document is None and len(generation.prompt_ids) >= info.block_size:  # continuing: expected
            self.notify_text(f"the prompt fills the context: the model sees only its last {info.block_size} "
                             "tokens", "warning")
        if document is None:
            document = Document(prompt, self.output.add_document())
            self.documents.append(document)
        if replace and document.runs:
            document.runs.pop()
        run = Run(context, settings, info, timing, generation, document)
        document.runs.append(run)
        self.insight_started(run)
        self.current = run
        self._render(document)
        self._show_stats()
        self._generate(run)
        return True

    @work(thread=True, exclusive=True, group="generate")
    def _generate(self, run: Run) -> None:
        """Sample tokens; every POST_EVERY seconds hand the new ones to the UI."""
        worker = get_current_worker()
        pending: list[TokenEvent] = []
        last_post = run.timing.start
        error = None
        try:
            for event in run.generation:
                now = run.timing.token()
                pending.append(event)
                if worker.is_cancelled:  # replaced by a newer generation, or the app is closing
                    break
                if now - last_post >= POST_EVERY:
                    self.post_message(_Update(self._tokens, run, pending))
                    pending, last_post = [], now
        except Exception as e:  # a failing backend ends this run, not the app
            error = f"{type(e).__name__}: {e}"
        finally:
            run.generation.close()
            run.timing.finish()
        if not worker.is_cancelled:
            self.post_message(_Update(self._finished, run, pending, error))

    @on(_Update)
    def _update(self, message: _Update) -> None:
        message.fn(*message.args)

    def _tokens(self, run: Run, events: list[TokenEvent]) -> None:
        if run.done:  # finished early by a newer generation: these tokens came too late
            return
        run.text += "".join(e.text for e in events)
        self.insight_tokens(run, events)
        self._render(run.document)
        now = time.perf_counter()  # not self.clock: tests' fake clocks count their reads
        if run is self.current and now - self._stats_shown >= STATS_EVERY:
            self._show_stats()
            self._stats_shown = now

    def _finished(self, run: Run, events: list[TokenEvent], error: str | None) -> None:
        if run.done:
            return
        self._tokens(run, events)
        run.stop_reason = run.generation.stop_reason if error is None else None
        run.error = error
        run.done = True
        self._render(run.document)
        if run is self.current:
            self._show_stats()
        self.history.append(record(run.context, run.text, run.stop_reason, run.generation.settings,
                                   run.info, run.timing))
        if error:
            self.notify_text(f"generation failed: {error}", "error", timeout=10)

    def _render(self, document: Document) -> None:
        last = document.runs[-1] if document.runs else None
        document.view.show(document.prompt, "".join(r.text for r in document.runs),
                           last.stop_reason if last else None, last.error if last else None,
                           bool(last and not last.done), self.coloured_tokens(document))

    def stop(self) -> None:
        """Stop the running generation; its worker posts the text so far, marked as stopped."""
        if self.current is not None and not self.current.done:
            self.current.generation.close()

    def _end_current(self) -> None:
        """Finish the running generation now, before another starts (its worker's last few tokens,
        not yet handed over, are dropped: the new generation must see the text as it is now)."""
        run = self.current
        if run is not None and not run.done:
            run.generation.close()
            if run.timing.end is None:
                run.timing.finish()
            self._finished(run, [], None)

    # ---- actions (keys) --------------------------------------------------------------------

    def action_stop(self) -> None:
        self.stop()

    def action_regen(self) -> None:
        if not self.documents or not self.documents[-1].runs:
            self.notify_text("nothing to regenerate yet: type a prompt and press Enter", "warning")
            return
        self.start(self.documents[-1].prompt, self.documents[-1], replace=True)

    def action_continue(self) -> None:
        if not self.documents:
            self.notify_text("nothing to continue yet: type a prompt and press Enter", "warning")
            return
        self.start(self.documents[-1].prompt, self.documents[-1])

    def action_copy_output(self) -> None:
        if not self.documents:
            self.notify_text("nothing to copy yet", "warning")
            return
        text = self.documents[-1].text
        self.copy_to_clipboard(text)
        self.notify_text(f"copied {len(text)} characters (through the terminal's clipboard)")

    def action_clear(self) -> None:
        self._end_current()
        self.documents.clear()
        self.current = None
        self.output.clear()
        self._show_stats()

    def action_save(self, path: str | None = None) -> None:
        target = Path(path).expanduser() if path else self.session_path
        try:
            save_jsonl(self._records(), target)
        except OSError as e:
            self.notify_text(f"could not save to {target}: {e}", "error")
            return
        self.notify_text(f"saved {len(self.history)} generation(s) to {target}")

    def action_export(self, path: str | None = None) -> None:
        target = Path(path).expanduser() if path else self.session_path.with_suffix(".md")
        try:
            save_markdown(self._records(), target)
        except OSError as e:
            self.notify_text(f"could not export to {target}: {e}", "error")
            return
        self.notify_text(f"exported {len(self.history)} generation(s) to {target}")

    def _records(self) -> list[dict]:
        """The history, each with its checkpoint's hash (computed once per file, when saving)."""
        return [r | {"checkpoint_sha256": file_sha256(r["checkpoint"])} for r in self.history]

    def action_toggle_panel(self, panel_id: str) -> None:
        panel = self.query_one(f"#{panel_id}")
        panel.display = not panel.display
        if panel.display:
            self.show_panel(panel_id)

    async def action_quit(self) -> None:
        self._end_current()
        self.workers.cancel_group(self, "generate")
        self.exit()

    # ---- backends --------------------------------------------------------------------------

    @on(Controls.BackendPicked)
    def _backend_picked(self, event: Controls.BackendPicked) -> None:
        self.switch_backend(event.name)

    def switch_backend(self, name: str) -> None:
        if name == self.backend_name:
            self.controls.show_backend(name)
            return
        if name in self._backends:
            self._use_backend(name, self._backends[name])
            return
        if name not in self.factories:
            self.notify_text(f"no {name} backend here; available: {', '.join(self.backend_names)}", "error")
            self.controls.show_backend(self.backend_name)
            return
        self._show_backend(loading=f"loading {name}…")
        self._load_backend(name)

    @work(thread=True, exclusive=True, group="backend")
    def _load_backend(self, name: str) -> None:
        worker = get_current_worker()

        def progress(message: str) -> None:
            if worker.is_cancelled:  # the app is closing: abandon a long export at its next step
                raise RuntimeError("cancelled")
            self.call_from_thread(self._backend_progress, message)

        try:
            backend = self.factories[name](progress)
        except Exception as e:  # an import, export or load failure: say so, keep the current backend
            if not worker.is_cancelled:
                self.call_from_thread(self._backend_failed, name, str(e) or type(e).__name__)
            return
        if not worker.is_cancelled:
            self.call_from_thread(self._use_backend, name, backend)

    def _backend_progress(self, message: str) -> None:
        self._show_backend(loading=message)
        self.notify_text(message, timeout=5)

    def _backend_failed(self, name: str, message: str) -> None:
        self._show_backend()
        self.controls.show_backend(self.backend_name)
        self.notify_text(f"could not switch to {name}: {message}", "error", timeout=15)

    def _use_backend(self, name: str, backend: Backend) -> None:
        self._end_current()  # a generation belongs to the backend that started it
        self._backends[name] = backend
        self.backend, self.backend_name = backend, name
        self._show_backend()
        self.controls.show_backend(name)
        info = backend.info()
        self.notify_text(f"now generating with {info.backend} on {info.device}")
