"""The app's streamed generations as they run: starting one (a new document, a continuation or a
regeneration), taking the tokens its worker posts (tui.streaming), finishing it or ending it early.

``current`` is the latest run, streamed or stepped (step mode makes stepped ones, tui.step). A
finished run is recorded in the session (tui.restore.Recorder); a stop string is cut from its text
unless ``keep_stop``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

from model.generate.backend import Settings, TokenEvent
from model.generate.insight import piece
from tui.backends import Backends
from tui.output import OutputView
from tui.panels import NextTokenPanel, SidePanel
from tui.restore import Recorder
from tui.stats import Clock, Timing
from tui.step import StepMode
from tui.stops import trim_stop
from tui.transcript import Document, Run

# seconds between stats bar updates while tokens stream: a repaint at the bottom of the screen
# while the text grows at the top makes the compositor redraw everything between the two
STATS_EVERY = 0.25


class Runs:
    """``generate(run)`` starts the worker that streams ``run``; ``changed(run)`` redraws the stats
    bar; ``fixed_seed()`` says whether the user set the seed (recorded, so a reload keeps it)."""

    def __init__(self, backends: Backends, output: OutputView, panels: list[SidePanel],
                 next_token: NextTokenPanel, step: StepMode, recorder: Recorder, notify: Callable[..., None],
                 changed: Callable[[Run | None], None], generate: Callable[[Run], object], clock: Clock,
                 keep_stop: bool, fixed_seed: Callable[[], bool]):
        self.backends, self.output, self.panels, self.next_token = backends, output, panels, next_token
        self.step, self.recorder, self.notify, self.changed = step, recorder, notify, changed
        self.generate, self.clock, self.keep_stop, self.fixed_seed = generate, clock, keep_stop, fixed_seed
        self.current: Run | None = None
        self._stats_shown = 0.0  # when the stats bar was last updated during a generation

    def start(self, prompt: str, settings: Settings, document: Document | None = None,
              replace: bool = False) -> bool:
        """Generate from ``prompt`` (a new document), or continue ``document`` (or regenerate its last
        run when ``replace``) with ``settings`` (seeded). False, with a notice, when the prompt
        cannot be used."""
        backend = self.backends.current
        context = prompt if document is None else document.text_before_last if replace else document.text
        unknown = backend.unknown_chars(context)
        if unknown and settings.unknown == "reject":
            shown = " ".join(repr(c) for c in unknown)
            self.notify(f"not in the model's vocabulary: {shown}; edit the prompt or "
                             "/set unknown replace", "error", timeout=8)
            return False
        self.end_current()
        timing = Timing(self.clock)
        try:
            generation = backend.stream(context, settings)
        except Exception as e:  # a prompt the tokenizer refuses, a failing backend: say so, carry on
            self.notify(str(e) or type(e).__name__, "error", timeout=8)
            return False
        if unknown:
            shown = " ".join(repr(c) for c in unknown)
            self.notify(f"replaced {len(unknown)} unknown character(s): {shown}", "warning")
        info = backend.info()
        if document is None and len(generation.prompt_ids) >= info.block_size:  # continuing: expected
            self.notify(f"the prompt fills the context: the model sees only its last {info.block_size} "
                             "tokens", "warning")
        self.step.end()  # a normal generation ends a stepped one
        document = document or self.output.add_document(prompt)
        if replace and document.runs:
            document.runs.pop()
        run = Run(context, settings, info, timing, generation, document, len(generation.prompt_ids),
                  prompt_ids=list(generation.prompt_ids))
        document.runs.append(run)
        tokenizer = backend.tokenizer
        self.next_token.piece = functools.partial(piece, tokenizer)
        self.current = run
        self.output.cursor = None
        self.output.show(document)
        self.changed(run)
        self.generate(run)
        return True

    def take(self, run: Run, events: list[TokenEvent]) -> None:
        if run.done:  # finished early by a newer generation: these tokens came too late
            return
        run.add(events)
        for panel in self.panels:
            if panel.display:  # hidden: no work at all
                panel.show_tokens(run, events)
        self.output.show(run.document)
        now = time.perf_counter()  # not self.clock: tests' fake clocks count their reads
        if run is self.current and now - self._stats_shown >= STATS_EVERY:
            self.changed(run)
            self._stats_shown = now

    def finish(self, run: Run, events: list[TokenEvent], error: str | None) -> None:
        if run.done:
            return
        self.take(run, events)
        run.stop_reason = run.generation.stop_reason if error is None else None
        if run.stop_reason == "stop_string" and not self.keep_stop:
            run.text = trim_stop(run.text, run.generation.settings.stop)
        run.error = error
        run.done = True
        self.output.show(run.document)
        if run is self.current:
            self.changed(run)
        self.recorder.record(run, self.fixed_seed())
        if error:
            self.notify(f"generation failed: {error}", "error", timeout=10)

    def end_current(self) -> None:
        """Finish the running generation now, before another starts (its worker's last few tokens,
        not yet handed over, are dropped: the new generation must see the text as it is now)."""
        run = self.current
        if run is not None and not run.done:
            run.generation.close()
            if run.timing.end is None:
                run.timing.finish()
            self.finish(run, [], None)
