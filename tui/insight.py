"""The app's views into the model, kept out of app.py: next-token panel, confidence colouring and
the token cursor, step mode, attention, backend A/B and the model inspector.

``InsightMixin`` is mixed into ``GPTApp``; app.py calls four hooks (``insight_started``,
``insight_tokens``, ``insight_settings``, ``coloured_tokens``). Per streamed batch, a hidden panel
costs one ``display`` check; the events are kept on the run (a list append) so colouring and the
cursor can be switched on afterwards.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import torch
from textual import work
from textual.style import Style
from textual.widget import Widget
from textual.worker import get_current_worker

from model.backend import BackendInfo, Settings, TokenEvent
from model.compare import compare_backends
from model.config import GPTConfig
from model.gpt import build_model, count_params
from tui import commands
from tui.panels import ABPanel, AttentionPanel, AttentionSource, NextTokenPanel, confidence_colour
from tui.remote import in_process
from tui.stats import Timing
from tui.step import Stepper
from tui.transcript import Document, Run
from tui.widgets import DocumentView, visible

KEEP_LOGITS_MAX_VOCAB = 4096  # past steps keep their logits (for knob previews) up to this vocab


def describe_model(info: BackendInfo, model: torch.nn.Module | None = None) -> str:
    """/show model: the architecture, vocabulary and training facts of the loaded checkpoint."""
    c = info.config
    if model is None and c:  # ONNX: count from the config, on the meta device (no memory, no maths)
        with torch.device("meta"):
            model = build_model(GPTConfig.from_dict(c))
    params = f"{count_params(model):,}" if model is not None else "-"
    meta = info.meta
    training = " · ".join(f"{k.replace('_', ' ')} {meta[k]:.4g}" if isinstance(meta[k], float) else
                          f"{k.replace('_', ' ')} {meta[k]}" for k in ("steps", "val_loss", "train_loss")
                          if k in meta) or "not recorded in the checkpoint"
    vocab = f"{info.vocab_size} tokens"
    if info.vocab is not None:
        vocab += ": " + visible(info.vocab.replace("\n", "⏎").replace(" ", "␣")) + " + end of text"
    rows = [
        ("model", f"{c.get('kind', '?')} · {c.get('n_layer', '?')} layers · {c.get('n_head', '?')} heads"
                  f" · width {c.get('n_embd', '?')} · {c.get('attention', '?')} attention"),
        ("block size", str(info.block_size)),
        ("parameters", params),
        ("vocabulary", vocab),
        ("training", training),
        ("checkpoint", f"{info.path} ({info.backend} on {info.device})"),
    ]
    return "\n".join(f"{k:>15}  {v}" for k, v in rows)


class InsightMixin:
    colours = False  # confidence colouring of the output
    cursor: int | None = None  # the token of the last document whose alternatives are shown
    stepper: Stepper | None = None
    step_mode = False
    _styles: dict[tuple[str, bool], Style] = {}

    def insight_panels(self) -> Iterator[Widget]:
        yield NextTokenPanel(self.settings, id="next-token")
        yield AttentionPanel(self.attention_source, id="attention")
        yield ABPanel(id="ab")

    # ---- hooks called by app.py ------------------------------------------------------------

    def insight_started(self, run: Run) -> None:
        self.cursor, self.stepper = None, None  # a normal generation ends a stepped one
        tokenizer = getattr(run.generation, "tokenizer", None)  # model.engine.Generation has one
        if tokenizer is not None:
            self.query_one(NextTokenPanel).decode = lambda i: tokenizer.decode([i])

    def insight_tokens(self, run: Run, events: list[TokenEvent]) -> None:
        if run.info.vocab_size <= KEEP_LOGITS_MAX_VOCAB:
            run.events.extend(events)
        else:  # 200 kB a token for GPT-2's vocabulary: keep the top candidates only
            run.events.extend(dataclasses.replace(e, logits=None) for e in events)
        for panel in self.side_panels:
            if panel.display and hasattr(panel, "show_tokens"):  # hidden: no work at all
                panel.show_tokens(events)

    def insight_settings(self, settings: Settings) -> None:
        self.query_one(NextTokenPanel).preview(settings)  # the cached logits, no forward pass
        if self.stepper is not None:
            self.stepper.settings = dataclasses.replace(settings, seed=self.stepper.settings.seed)

    def coloured_tokens(self, document: Document) -> list[tuple[str, Style]] | None:
        if not self.colours:
            return None
        cursor = self.cursor if self.documents and document is self.documents[-1] else None
        return [(e.text, self._style(confidence_colour(e.prob), i == cursor))
                for i, e in enumerate(document.events)]

    def _style(self, colour: str, reverse: bool) -> Style:
        key = (colour, reverse)
        if key not in self._styles:
            self._styles[key] = Style.parse(f"{colour} reverse" if reverse else colour)
        return self._styles[key]

    def show_panel(self, panel_id: str) -> None:
        """Called when a panel becomes visible: give it the latest state it skipped while hidden."""
        run = self.current
        if panel_id == "next-token" and self.stepper is None and run is not None and run.events:
            last = run.events[-1]
            self.query_one(NextTokenPanel).show_event(last, f"token {last.index + 1}")
        elif panel_id == "attention":
            self.query_one(AttentionPanel).update_now()

    # ---- confidence colouring and the token cursor -----------------------------------------

    def action_toggle_colours(self) -> None:
        self.colours = not self.colours
        self.query_one("#legend").display = self.colours
        for document in self.documents:
            self._render(document)

    def action_token_cursor(self, delta: int) -> None:
        events = self.documents[-1].events if self.documents else []
        if not events:
            self.notify_text("no generated tokens to look at yet", "warning")
            return
        if not self.colours:
            self.action_toggle_colours()
        start = len(events) if self.cursor is None else self.cursor
        self.cursor = max(0, min(len(events) - 1, start + delta))
        self._show_past(self.documents[-1], self.cursor)

    def on_document_view_hovered(self, message: DocumentView.Hovered) -> None:
        document = next((d for d in self.documents if d.view is message.view), None)
        if document is not None and message.index < len(document.events):
            if document is self.documents[-1]:
                self.cursor = message.index
            self._show_past(document, message.index)

    def _show_past(self, document: Document, index: int) -> None:
        panel = self.query_one(NextTokenPanel)
        panel.display = True
        events = document.events
        panel.show_event(events[index], f"token {index + 1}/{len(events)}")
        self._render(document)

    # ---- step mode -------------------------------------------------------------------------

    def action_toggle_step(self) -> None:
        self.step_mode = not self.step_mode
        if not self.step_mode:
            self.stepper = None
            self.notify_text("step mode off: Enter generates as usual")
            return
        self.query_one(NextTokenPanel).display = True
        self.notify_text("step mode: type a prompt and Enter; then Enter (or F8) takes the next token, "
                         "/pick N takes candidate N instead, F9 undoes; F7 leaves", timeout=8)

    def step_submitted(self, text: str) -> bool:
        """Enter in step mode: a prompt starts a stepped document; an empty line takes a token."""
        if self.stepper is not None and not text:
            self.action_step()
            return True
        return self.start_step(commands.prompt_text(text))

    def start_step(self, prompt: str) -> bool:
        self._end_current()
        seed = self.settings.seed if self.settings.seed is not None else self.new_seed()
        settings = dataclasses.replace(self.settings, seed=seed)
        stepper = Stepper(in_process(self.backend), prompt, settings)  # it drives the decoder itself
        try:
            stepper.next_logits()
        except Exception as e:  # unknown characters under "reject", a failing backend
            self.notify_text(str(e) or type(e).__name__, "error", timeout=8)
            return False
        document = Document(prompt, self.output.add_document())
        self.documents.append(document)
        run = Run(prompt, settings, self.backend.info(), Timing(self.clock), stepper, document,  # type: ignore[arg-type]
                  done=True)
        document.runs.append(run)
        self.stepper, self.current, self.cursor = stepper, run, None
        self._stepped()
        return True

    def action_step(self, token: int | None = None) -> None:
        if self.stepper is None:
            self.notify_text("no stepped text: press F7 for step mode, then type a prompt", "warning")
            return
        taken = len(self.stepper.taken)
        try:
            self.stepper.step(token)
            self.stepper.next_logits()  # the panel shows the next step: fails on text it cannot read
        except Exception as e:  # e.g. a picked end-of-text the tokenizer will not read back
            if len(self.stepper.taken) > taken:
                self.stepper.undo()
            self.notify_text(str(e) or type(e).__name__, "error", timeout=8)
            return
        self._stepped()

    def pick(self, rank: int) -> None:
        """Take the candidate at ``rank`` (1 = the model's favourite) instead of sampling."""
        if self.stepper is None:
            self.notify_text("/pick works in step mode (F7) on the next token", "warning")
            return
        logits = self.stepper.next_logits()
        if rank > logits.numel():
            self.notify_text(f"there are only {logits.numel()} candidates", "error")
            return
        self.action_step(int(torch.topk(logits, rank).indices[-1]))

    def action_undo(self) -> None:
        if self.stepper is None or self.stepper.undo() is None:
            self.notify_text("nothing to undo", "warning")
            return
        self._stepped()

    def _stepped(self) -> None:
        stepper, run = self.stepper, self.current
        run.text, run.events = stepper.text, stepper.events
        run.timing.tokens = len(stepper.taken)
        self._render(run.document)
        self._show_stats()
        panel = self.query_one(NextTokenPanel)
        panel.decode = stepper.decode
        panel.show_next(stepper.next_logits(), f"step {len(stepper.taken) + 1}: Enter samples, /pick N")

    # ---- attention -------------------------------------------------------------------------

    def attention_source(self) -> AttentionSource | None:
        run = self.current
        if run is None or not self.documents:
            return None
        torch_backend = in_process(self._backends.get("torch"))
        model = getattr(torch_backend, "model", None)
        note = ""
        if self.backend_name != "torch":
            note = ("attention comes from the PyTorch model (the ONNX graph does not output it)"
                    + ("" if model is not None else "; /backend torch to load it"))
        tokenizer = getattr(torch_backend, "tokenizer", None) or getattr(run.generation, "tokenizer", None)
        if tokenizer is None:
            return AttentionSource(None, [], [], note)
        text = run.document.text
        ids = tokenizer.encode(text, "replace")[-run.info.block_size:] if text else [tokenizer.eot_id]
        return AttentionSource(model, ids, [tokenizer.decode([i]) for i in ids], note)

    # ---- backend A/B -----------------------------------------------------------------------

    def run_ab(self, prompt: str | None) -> None:
        if prompt is None:
            prompt = self.documents[-1].prompt if self.documents else ""
        seed = self.settings.seed if self.settings.seed is not None else self.new_seed()
        panel = self.query_one(ABPanel)
        panel.display = True
        panel.show_status("A/B: loading the backends and running both…")
        self._ab(prompt, dataclasses.replace(self.settings, seed=seed))

    @work(thread=True, exclusive=True, group="ab")
    def _ab(self, prompt: str, settings: Settings) -> None:
        worker = get_current_worker()
        try:
            backends = []
            for name in ("torch", "onnx"):
                backend = self._backends.get(name)
                if backend is None:
                    if name not in self.factories:
                        raise ValueError(f"no {name} backend here: A/B needs a checkpoint (for both)")
                    backend = self.factories[name](lambda message: None)
                    self.call_from_thread(self._backends.setdefault, name, backend)
                backends.append(backend)
            result = compare_backends(backends[0], backends[1], prompt, settings)
        except Exception as e:  # a failed export or load: say so in the panel
            if not worker.is_cancelled:
                self.call_from_thread(self.query_one(ABPanel).show_status, f"A/B failed: {e}")
            return
        if not worker.is_cancelled:
            self.call_from_thread(self.query_one(ABPanel).show_result, result)

    def model_note(self) -> str:
        return describe_model(self.backend.info(), getattr(in_process(self.backend), "model", None))

    def insight_command(self, command: commands.Command) -> None:
        if command.name == "step":
            self.action_toggle_step()
        elif command.name == "pick":
            self.pick(int(command.args[0]))
        elif command.name == "undo":
            self.action_undo()
        elif command.name == "ab":
            self.run_ab(command.args[0] if command.args else None)
