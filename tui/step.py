"""Step mode: one token at a time, any candidate may be taken instead of the sampled one, with undo.

It talks only to the ``Backend`` protocol: each step asks the backend for a Generation over the
text so far and feeds its decoder the prompt once, which gives the next token's logits without
sampling (a prefill a step: a few ms for the models this app runs, and nothing to keep in sync
when the user undoes or branches). Sampling uses the generation's own sampler and a generator
seeded once, whose state is saved per step, so undo and re-step draw the same token again.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from model.backend import Backend, Candidate, Settings, TokenEvent
from model.engine import N_TOP
from model.sampling import sample, top_candidates


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
        self.forward_passes = 0  # counted, so tests can show a knob preview makes none
        self._logits: torch.Tensor | None = None  # the next step's, cached until a token is taken
        self._decode = None
        self.prompt_ids: list[int] = []  # what the model was last fed (the stats bar counts it)

    @property
    def text(self) -> str:
        return "".join(t.event.text for t in self.taken)

    @property
    def events(self) -> list[TokenEvent]:
        return [t.event for t in self.taken]

    def decode(self, token: int) -> str:
        self.next_logits()  # makes sure a tokenizer is at hand
        return self._decode(token)

    def next_logits(self) -> torch.Tensor:
        """Raw logits (V,) for the token after prompt + text; one forward pass, then cached."""
        if self._logits is None:
            generation = self.backend.stream(self.prompt + self.text, self.settings)
            try:
                # model.engine.Generation: its decoder gives logits without sampling a token
                decoder, tokenizer = generation.decoder, generation.tokenizer  # type: ignore[attr-defined]
                decoder.reset()
                self.prompt_ids = generation.prompt_ids
                self._logits = decoder.feed(generation.prompt_ids)
                self._decode = lambda i: tokenizer.decode([i])
                self.forward_passes += 1
            finally:
                generation.close()
        return self._logits

    def step(self, token: int | None = None) -> TokenEvent:
        """Take ``token`` (None: sample it with the current settings) as the next one."""
        logits = self.next_logits()
        state = self.generator.get_state()
        s = self.settings
        chosen = sample(logits, self.generator, s.temperature, s.top_k, s.top_p) if token is None else token
        if not 0 <= chosen < logits.numel():
            raise ValueError(f"token id {chosen} is outside the vocabulary [0, {logits.numel()})")
        probs = F.softmax(logits, dim=-1)
        top = tuple(Candidate(i, self._decode(i), p) for i, p in top_candidates(probs, N_TOP))
        event = TokenEvent(index=len(self.taken), id=chosen, text=self._decode(chosen),
                           prob=float(probs[chosen]), top=top, logits=logits)
        self.taken.append(Taken(event, state, token is None))
        self._logits = None
        return event

    def undo(self) -> TokenEvent | None:
        """Drop the last token taken (and rewind the sampler); None when there is none."""
        if not self.taken:
            return None
        last = self.taken.pop()
        self.generator.set_state(last.generator_state)
        self._logits = last.event.logits  # the step it was taken at comes back as the next one
        return last.event
