"""Step mode: one token at a time, any candidate may be taken instead of the sampled one, with undo.

``Stepper`` is one stepped text. It drives the same decode loop as streaming (model.generate.engine's
``Generation``, over a decoder the backend makes in this process): ``next_logits()`` gives the next
token's logits without sampling, ``accept(token)`` takes the one sampled or picked. Sampling uses
a generator seeded once, whose state is saved per step, so undo and re-step draw the same token
again. Undo brings back the step's logits at once; the loop is rebuilt over the text before it
and fed when the next token is taken.

``StepMode`` is the app's view of it: on or off, the stepped document, the keys and commands, and
the next-token panel showing the step about to be taken.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch

from model.generate.backend import Backend, Settings, TokenEvent
from model.generate.engine import Generation
from model.generate.insight import piece
from model.generate.sampling import choose
from tui.output import OutputView
from tui.panels import NextTokenPanel
from tui.stats import Timing
from tui.transcript import Run


@dataclass(frozen=True)
class Taken:
    event: TokenEvent
    generator_state: torch.Tensor  # the generator before this step, restored by undo
    sampled: bool  # False: the user picked it


class Stepper:
    def __init__(self, backend: Backend, prompt: str, settings: Settings):
        if settings.seed is None:
            raise ValueError("step mode needs a seed; the app gives it one")
        self.backend, self.prompt, self.settings = backend, prompt, settings
        self.taken: list[Taken] = []
        self.generator = torch.Generator().manual_seed(settings.seed)
        self._decoder = backend.decoder()  # one cache, reused by every rebuild of the loop
        self.generation = Generation(self._decoder, backend.tokenizer, prompt, settings)
        self.prompt_ids = list(self.generation.prompt_ids)  # the prompt as the model sees it
        self._logits: torch.Tensor | None = None  # the next step's, cached until a token is taken

    @property
    def text(self) -> str:
        return "".join(t.event.text for t in self.taken)

    @property
    def events(self) -> list[TokenEvent]:
        return [t.event for t in self.taken]

    def piece(self, token: int) -> str:
        return piece(self.backend.tokenizer, token)

    def next_logits(self) -> torch.Tensor:
        """Raw logits (V,) for the token after prompt + text; one forward pass, then cached."""
        if self._logits is None:
            self._logits = self.generation.next_logits()
        return self._logits

    def step(self, token: int | None = None) -> TokenEvent:
        """Take ``token`` (None: sample it with the current settings) as the next one."""
        logits = self.next_logits()
        state = self.generator.get_state()
        chosen = token if token is not None else choose(logits, self.generator, self.settings, self.recent(),
                                                        self.counts())
        try:
            event = self.generation.accept(chosen)
        except Exception:
            self.generator.set_state(state)
            raise
        self.taken.append(Taken(event, state, token is None))
        self._logits = None
        return event

    def undo(self) -> TokenEvent | None:
        """Drop the last token taken (and rewind the sampler); None when there is none."""
        if not self.taken:
            return None
        last = self.taken.pop()
        self.generator.set_state(last.generator_state)
        self.generation = self._generation()  # the model is fed the shorter context when next asked
        self._logits = last.event.logits  # the step it was taken at comes back as the next one
        return last.event

    def recent(self) -> list[int]:
        """The ids the repetition penalty looks at for the next step."""
        self.generation.settings = self.settings
        return self.generation.recent()

    def counts(self) -> dict[int, int]:
        """How often each token taken so far occurs, for the frequency and presence penalties (the
        rebuilt loop of an undo holds the taken tokens as its prompt, so it cannot count them)."""
        return dict(Counter(t.event.id for t in self.taken))

    def _generation(self) -> Generation:
        """The loop over the prompt and the tokens taken, as ids: a picked BPE token need not be how
        the encoder would cut the text, and a piece still waiting for the rest of its character has
        no text at all."""
        ids = self.prompt_ids + [t.event.id for t in self.taken]
        return Generation(self._decoder, self.backend.tokenizer, "", self.settings, prompt_ids=ids)


class StepMode:
    """Step mode on or off, and the stepped text in the transcript with its next step in the panel.

    ``changed`` is called when the stepped run changes (the app redraws its stats bar)."""

    def __init__(self, output: OutputView, panel: NextTokenPanel, notify: Callable[..., None],
                 changed: Callable[[], None]):
        self.output, self.panel, self.notify, self.changed = output, panel, notify, changed
        self.on = False
        self.stepper: Stepper | None = None
        self.run: Run | None = None

    def toggle(self) -> None:
        self.on = not self.on
        if not self.on:
            self.end()
            self.notify("step mode off: Enter generates as usual")
            return
        self.panel.display = True
        self.notify("step mode: type a prompt and Enter; then Enter (or F8) takes the next token, "
                    "/pick N takes candidate N instead, F9 undoes; F7 leaves", timeout=8)

    def end(self) -> None:
        """A normal generation ends the stepped text (it stays in the transcript)."""
        self.stepper, self.run = None, None

    def start(self, backend: Backend, prompt: str, settings: Settings, timing: Timing) -> Run | None:
        """A new stepped document from ``prompt``; None, with a notice, if the backend refuses it."""
        try:
            stepper = Stepper(backend, prompt, settings)
            stepper.next_logits()
        except Exception as e:  # unknown characters under "reject", a failing backend
            self.notify(str(e) or type(e).__name__, "error", timeout=8)
            return None
        document = self.output.add_document(prompt)
        run = Run(prompt, settings, backend.info(), timing, None, document,
                  prompt_tokens=len(stepper.prompt_ids), done=True, prompt_ids=stepper.prompt_ids)
        document.runs.append(run)
        self.stepper, self.run = stepper, run
        self._stepped()
        return run

    def settings_changed(self, settings: Settings) -> None:
        if self.stepper is not None:  # the seed counts at the start only
            self.stepper.settings = dataclasses.replace(settings, seed=self.stepper.settings.seed)

    def step(self, token: int | None = None) -> None:
        if self.stepper is None:
            self.notify("no stepped text: press F7 for step mode, then type a prompt", "warning")
            return
        taken = len(self.stepper.taken)
        try:
            self.stepper.step(token)
            self.stepper.next_logits()  # the panel shows the next step: fails on text it cannot read
        except StopIteration:  # end-of-text was taken: the text is finished, as a generation's is
            self.notify("end of text: the stepped text is finished; type a prompt for a new one")
            self.run.stop_reason = "eot"
            self.end()
            self.changed()
            return
        except Exception as e:  # e.g. a token id outside the vocabulary
            if len(self.stepper.taken) > taken:
                self.stepper.undo()
            self.notify(str(e) or type(e).__name__, "error", timeout=8)
            return
        self._stepped()
        self.changed()

    def pick(self, rank: int) -> None:
        """Take the candidate at ``rank`` (1 = the model's favourite) instead of sampling."""
        if self.stepper is None:
            self.notify("/pick works in step mode (F7) on the next token", "warning")
            return
        logits = self.stepper.next_logits()
        if rank > logits.numel():
            self.notify(f"there are only {logits.numel()} candidates", "error")
            return
        self.step(int(torch.topk(logits, rank).indices[-1]))

    def undo(self) -> None:
        if self.stepper is None or self.stepper.undo() is None:
            self.notify("nothing to undo", "warning")
            return
        self._stepped()
        self.changed()

    def _stepped(self) -> None:
        stepper, run = self.stepper, self.run
        run.text, run.events = stepper.text, stepper.events
        run.timing.tokens = len(stepper.taken)
        self.output.show(run.document)
        self.panel.piece = stepper.piece
        history = stepper.generation.prompt_ids + stepper.generation.ids
        self.panel.show_next(stepper.next_logits(), f"step {len(stepper.taken) + 1}: Enter samples, /pick N",
                             history, [t.event.id for t in stepper.taken])
