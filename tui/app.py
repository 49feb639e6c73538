"""The Textual app: type a prompt, watch tokens stream, steer the sampler while it runs.

Generation runs in a thread worker (tui.streaming) that checks for cancellation every token and
hands tokens to the UI in typed messages about every 30 ms, so keys and repaints never wait for
the model. The worker only waits on the backend: the one gpt-tui gives the app decodes in a child
process (tui.remote), so the UI's rendering never holds the GIL the model needs. The UI talks
only to the ``Backend`` protocol; backends are made by injected factories, so tests use fakes and
the ONNX code is imported only when someone switches to it.

The app wires views that own their state: the transcript with its colouring and token cursor
(tui.output), the side panels in ``#panels`` (tui.controls, tui.panels: each gets the tokens while
shown), step mode (tui.step), the running generations (tui.runs), the session's records
(tui.restore), the prompt's history (tui.history). ``settings`` is one reactive the controls and
panels watch; commands are a table (tui.commands) whose actions are the same ``action_*`` methods
the keys (tui.keys) and the palette (tui.palette) run.
"""

from __future__ import annotations

import gc
import inspect
import time
from collections.abc import Callable
from pathlib import Path

from textual import on, work
from textual.actions import SkipAction
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.reactive import reactive
from textual.widgets import Footer, Static
from textual.worker import get_current_worker

from model.generate.backend import Backend, Settings
from model.terminal import visible
from tui import commands
from tui import settings as settings_text
from tui.backends import BackendFactory, Backends
from tui.bars import StatsBar, TopBar
from tui.clipboard import copy_text
from tui.controls import Controls
from tui.history import PromptHistory, default_history_path
from tui.keys import BINDINGS
from tui.output import OutputView
from tui.palette import AppCommands
from tui.panels import ABPanel, AttentionPanel, NextTokenPanel, SidePanel, legend
from tui.restore import Recorder, restore_documents
from tui.runs import Runs
from tui.session import Session
from tui.show import describe_model, describe_run_settings, describe_tokens
from tui.stats import Clock, Timing
from tui.step import StepMode
from tui.streaming import RunFinished, TokensArrived, stream_run
from tui.switch import BackendSwitch, ModelOpener
from tui.transcript import Document, Run
from tui.widgets import PromptArea


def freeze_heap() -> None:
    """Put every object made so far (PyTorch, Textual, the loaded model: all that live as long as the
    app) out of the garbage collector's reach, so its full collections do not walk them all
    while text streams (a stall on screen). Call it once, before the app runs."""
    gc.collect()
    gc.freeze()


class GPTApp(App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "gpt-tui"
    COMMANDS = App.COMMANDS | {AppCommands}
    # the screen gets -narrow below 100 columns: the side panels then overlay the transcript
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (100, "-wide")]
    BINDINGS = BINDINGS  # tui.keys: one table with docs/app.md's key table and /help
    # the prompt box is focused as the screen mounts, before on_mount runs: keys typed while the
    # model loaded wait in the terminal and arrive then; with the default ("*") they would go to
    # the first focusable widget, the transcript, which ignores them
    AUTO_FOCUS = "#prompt"
    NOTIFICATION_TIMEOUT = 4  # s (Textual's is 5): a notice is read at a glance; errors set longer ones

    settings: reactive[Settings] = reactive(Settings, init=False)  # for the next token and generation

    def __init__(
        self,
        backend: Backend,
        backend_name: str = "torch",
        factories: dict[str, BackendFactory] | None = None,
        settings: Settings | None = None,
        clock: Clock = time.perf_counter,
        session_dir: Path | None = None,
        new_seed: Callable[[], int] = settings_text.fresh_seed,
        session_file: Path | None = None,
        keep_stop: bool = False,
        open_model: ModelOpener | None = None,
        history_path: Path | None = None,
    ):
        super().__init__()
        self.backends = Backends(backend_name, backend, factories)  # loaded ones are reused on a switch
        self.set_reactive(GPTApp.settings, settings or Settings())
        self.clock = clock
        self.new_seed = new_seed
        self.session = Session(session_dir)  # a record per generation, saved after each one and on quit
        self.session_file, self.keep_stop, self.open_model = session_file, keep_stop, open_model
        self.history = PromptHistory(history_path or default_history_path())

    # ---- screen ----------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield TopBar(id="topbar")
        with Horizontal(id="body"):
            with Vertical(id="main"):
                yield Static(legend(), id="legend")
                yield OutputView(id="output")
                yield PromptArea(self.history, lambda line: commands.complete(line, self.backends.names),
                                 lambda line: commands.candidates(line, self.backends.names),
                                 id="prompt", placeholder="a prompt; Enter sends · /help · Ctrl+P palette")
            with Vertical(id="panels"):
                yield Controls(tuple(sorted(self.backends.names)), self.backend_name, id="controls")
                yield NextTokenPanel(id="next-token")
                yield AttentionPanel(self.backends, id="attention")
                yield ABPanel(self.backends, id="ab")
        yield StatsBar("ready", id="stats")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        # looked up once: a DOM query on every batch of tokens costs milliseconds of the UI thread
        self.output = self.query_one(OutputView)
        self.controls = self.query_one(Controls)
        self.next_token = self.query_one(NextTokenPanel)
        self.stats = self.query_one(StatsBar)
        self.side_panels = list(self.query("#panels > *").results(SidePanel))
        self.recorder = Recorder(self.session, self.notify_text)
        self.step = StepMode(self.output, self.next_token, self.notify_text, self._stepped)
        self.runs = Runs(self.backends, self.output, self.side_panels, self.next_token, self.step,
                         self.recorder, self.notify_text, self.stats.show_run, self._generate, self.clock,
                         self.keep_stop, lambda: self.settings.seed is not None)
        self.switch = BackendSwitch(self.backends, self.query_one(TopBar), self.controls, self.notify_text,
                                    self._leaving_backend, self._switch_landed)
        self._queued: tuple[str, Document | None, bool] | None = None  # sent while a switch loads
        legend_view = self.query_one("#legend")
        self.watch(self.output, "colours", lambda on: setattr(legend_view, "display", on), init=False)
        self.switch.show()
        self.controls.display = self.size.width >= 100  # small terminals: the transcript first (F2)
        self.query_one(PromptArea).focus()
        if self.session_file is not None:
            self.action_load(str(self.session_file))

    @property
    def documents(self) -> list[Document]:
        return self.output.documents

    def _show_stats(self) -> None:
        self.stats.show_run(self.current)

    def _stepped(self) -> None:
        """A stepped text changed: its stats, and its record in the session (kept up to date)."""
        self._show_stats()
        if self.current is not None and self.current.generation is None:
            self.recorder.record(self.current, self.settings.seed is not None)

    def notify_text(self, message: str, severity: str = "information", timeout: float | None = None) -> None:
        """A notification whose text is shown as is (it may hold prompt characters or file paths:
        no markup, and control characters made visible)."""
        self.notify(visible(message), severity=severity, timeout=timeout, markup=False)  # type: ignore[arg-type]

    # ---- prompt, settings and commands -----------------------------------------------------

    @on(PromptArea.Candidates)
    def _candidates(self, event: PromptArea.Candidates) -> None:
        """A second Tab: the ways the word may go on, or that none does."""
        found = event.candidates
        if not found:
            self.notify_text("nothing to complete", timeout=3)
        else:
            shown = "  ".join(found[:40]) + (f"  … {len(found) - 40} more" if len(found) > 40 else "")
            self.notify_text(shown, timeout=6)

    @on(PromptArea.Submitted)
    async def _submitted(self, event: PromptArea.Submitted) -> None:
        line = event.text
        if commands.is_command(line):
            try:
                command = commands.parse(line, self.settings, self.backends.names)
            except commands.CommandError as e:
                self.notify_text(str(e), "error")
                event.prompt_area.restore(line)
                return
            action = getattr(self, f"action_{commands.COMMANDS[command.name].action}")
            done = action(*((command.settings,) if command.settings is not None else command.args))
            if inspect.isawaitable(done):  # an async action (quit), run to its end as its key runs it
                await done
        elif line.startswith("//") and self.backend.unknown_chars("/") and self.settings.unknown == "reject":
            self.notify_text("this model's vocabulary has no '/', so //text cannot send it; drop the /, or "
                             "/set unknown replace to send its stand-in", "error", timeout=8)
            event.prompt_area.restore(line)
        elif self.step.on and not line and self.step.stepper is not None:
            self.step.step()  # Enter on an empty line: the next token
        elif not (self._start_step if self.step.on else self.start)(commands.prompt_text(line)):
            event.prompt_area.restore(line)

    def watch_settings(self, settings: Settings) -> None:
        """New settings apply to the next generation and to the next token of the running one."""
        run = self.current
        if run is not None and run.generation is not None and not run.done:
            # the seed counts only at the start: keep the one this run started with
            run.generation.settings = settings_text.replace(settings, {"seed": run.settings.seed})
        self.step.settings_changed(settings)

    @on(Controls.SettingEdited)
    def _setting_edited(self, event: Controls.SettingEdited) -> None:
        try:
            self.settings = settings_text.with_text(self.settings, event.field, event.text)
        except ValueError as e:
            self.controls.refuse(event.field)  # shows the value in force again, marked
            self.notify_text(f"{e}; still {settings_text.show(self.settings, event.field)}", "error")

    def action_set(self, settings: Settings) -> None:
        self.settings = settings

    def action_show(self, what: str = "") -> None:
        self.output.add_note(describe_model(self.backend) if what == "model" else
                             describe_run_settings(self.settings, self.backend.info()))

    def action_help(self) -> None:
        keys = [(b.key, b.action, b.description) for b in self.BINDINGS if isinstance(b, Binding)]
        self.output.add_note(commands.help_text(keys))

    def _seeded(self) -> Settings:
        """The settings for a new generation: with a fresh seed unless one is set."""
        seed = self.settings.seed if self.settings.seed is not None else self.new_seed()
        return settings_text.replace(self.settings, {"seed": seed})

    # ---- generation ------------------------------------------------------------------------

    def _start_step(self, prompt: str) -> bool:
        self.runs.end_current()
        run = self.step.start(self.backend, prompt, self._seeded(), Timing(self.clock))
        if run is not None:
            self.current = run
            self._show_stats()
        return run is not None

    @work(thread=True, exclusive=True, group="generate")
    def _generate(self, run: Run) -> None:
        worker = get_current_worker()
        stream_run(run, self.post_message, lambda: worker.is_cancelled)

    @on(TokensArrived)
    def _tokens_arrived(self, message: TokensArrived) -> None:
        self.runs.take(message.run, message.events)

    @on(RunFinished)
    def _run_finished(self, message: RunFinished) -> None:
        self.runs.finish(message.run, message.events, message.error)

    def start(self, prompt: str, document: Document | None = None, replace: bool = False) -> bool:
        if self.switch.loading:  # it belongs to the backend being loaded: run it when that lands
            self._queued = (prompt, document, replace)
            self.notify_text("waiting for the backend being loaded; it generates as soon as that is ready "
                             "(Esc cancels)", timeout=5)
            return True
        return self.runs.start(prompt, self._seeded(), document, replace)

    def _switch_landed(self) -> None:
        """A backend switch has ended (done or failed): a prompt sent meanwhile runs now, on
        whichever backend is active."""
        queued, self._queued = self._queued, None
        if queued is not None:
            self.start(*queued)

    @property
    def current(self) -> Run | None:
        return self.runs.current

    @current.setter
    def current(self, run: Run | None) -> None:
        self.runs.current = run

    # ---- actions: keys and commands --------------------------------------------------------

    def action_stop(self) -> None:
        """Stop the running generation; its worker posts the text so far, marked as stopped."""
        if self._queued is not None:
            self._queued = None
            self.notify_text("the prompt waiting for the backend is cancelled")
        elif self.current is not None and not self.current.done:
            self.current.generation.close()

    def action_interrupt(self) -> None:
        """Ctrl+C: stop a generation, as in llama.cpp and ollama; idle, Textual's own Ctrl+C."""
        if self.current is None or self.current.done:
            raise SkipAction()
        self.action_stop()

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
        document = self.output.selected or (self.documents[-1] if self.documents else None)
        if document is None:
            self.notify_text("nothing to copy yet", "warning")
            return
        self.notify_text(*copy_text(document.text, self.copy_to_clipboard, self.session.folder))

    def action_tokens(self) -> None:
        run = self.current
        if run is None or not run.prompt_ids:
            self.notify_text("no tokens to show: /tokens shows those of the last text generated here (a "
                             "reloaded session keeps the text only; Ctrl+R regenerates it)", "warning")
            return
        generated = [e.id for e in run.events]
        self.output.add_note(describe_tokens(run.prompt_ids, generated, self.backend.tokenizer))

    def action_clear(self) -> None:
        self.runs.end_current()
        self.output.clear()
        self.current = None
        self._show_stats()

    def action_save(self, path: str | None = None) -> None:
        self._report(self.session.save, path)

    def action_load(self, path: str | None = None) -> None:
        records = self.recorder.open(path)
        if records is None:
            return
        self.action_clear()
        self.settings, backend = restore_documents(self.output, records, self.settings, self.backend.info())
        self.current = self.documents[-1].runs[-1] if self.documents and self.documents[-1].runs else None
        self._show_stats()
        if backend in self.backends.names and backend != self.backend_name:
            self.switch.to(backend)

    def action_export(self, path: str | None = None) -> None:
        self._report(self.session.export, path)

    def _report(self, write: Callable[[str | None], str], path: str | None) -> None:
        try:
            self.notify_text(write(path))
        except OSError as e:
            self.notify_text(str(e), "error")

    def action_toggle_panel(self, panel_id: str, show: bool | None = None) -> None:
        panel = self.query_one(f"#{panel_id}", SidePanel)
        panel.display = not panel.display if show is None else show
        if panel.display:
            if self.size.width < 120 or self.size.height < 30:  # small: one panel at a time
                for other in self.side_panels:
                    other.display = other is panel
            panel.catch_up(self.current)

    def action_toggle_colours(self) -> None:
        self.output.colours = not self.output.colours

    def action_token_cursor(self, delta: int) -> None:
        if not self.output.move_cursor(delta):
            self.notify_text("no generated tokens to look at yet", "warning")

    @on(OutputView.TokenPicked)
    def _token_picked(self, message: OutputView.TokenPicked) -> None:
        self.next_token.display = True
        self.next_token.show_event(message.event, message.title)

    def action_toggle_step(self) -> None:
        self.step.toggle()

    def action_step(self) -> None:
        self.step.step()

    def action_pick(self, rank: str) -> None:
        self.step.pick(int(rank))

    def action_undo(self) -> None:
        self.step.undo()

    def action_ab(self, prompt: str | None = None) -> None:
        if prompt is None:
            prompt = self.documents[-1].prompt if self.documents else ""
        self.action_toggle_panel("ab", show=True)
        self.query_one(ABPanel).run(prompt, self._seeded())

    def _leaving_backend(self) -> None:
        """A switch of backend (or model) ends the running generation, which belongs to the old one:
        say so, rather than leave a "stopped" nobody asked for unexplained."""
        if self.current is not None and not self.current.done:
            self.runs.end_current()
            self.notify_text("the generation stopped: the backend changed while it ran; Ctrl+N (or "
                             "/continue) goes on with the new one", "warning", timeout=8)

    async def action_quit(self) -> None:
        self.runs.end_current()
        self.workers.cancel_group(self, "generate")
        self.session.autosave()  # Ctrl+Q never loses work
        self.exit()

    # ---- backends --------------------------------------------------------------------------

    @property
    def backend(self) -> Backend:
        return self.backends.current

    @property
    def backend_name(self) -> str:
        return self.backends.active

    @on(Controls.BackendPicked)
    def _backend_picked(self, event: Controls.BackendPicked) -> None:
        self.switch.to(event.name)

    def action_backend(self, name: str) -> None:
        self.switch.to(name)

    def action_model(self, path: str) -> None:
        if self.open_model is None:
            self.notify_text("/model needs the app started by gpt-tui", "error")
            return
        self.switch.open(path, self.open_model)
