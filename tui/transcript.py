"""What the app keeps of what it generated: runs (one generation each) grouped into documents.

A document is one prompt and everything generated after it: continuing adds a run, regenerating
replaces the last. Side panels read these too (a run keeps its settings, timing and TokenStream).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from model.generate.backend import BackendInfo, Settings, TokenEvent, TokenStream
from model.generate.insight import perplexity
from tui.stats import Timing
from tui.widgets import DocumentView

KEEP_LOGITS_MAX_VOCAB = 4096  # past tokens keep their logits (for knob previews) up to this vocab


@dataclass(eq=False)
class Run:
    """One generation: what the model was fed, what came out, how and how fast."""

    context: str  # the text fed to the model (for a continuation: the whole document so far)
    settings: Settings  # at the start, with the seed actually used
    info: BackendInfo
    timing: Timing
    generation: TokenStream | None  # None: a stepped text (tui.step), which has no stream to stop
    document: Document
    prompt_tokens: int = 0  # how many tokens of the context the model was fed
    text: str = ""
    stop_reason: str | None = None
    error: str | None = None
    done: bool = False
    events: list[TokenEvent] = field(default_factory=list)  # logits dropped for a large vocabulary
    prompt_ids: list[int] = field(default_factory=list)  # the context as the model saw it (/tokens)

    @property
    def perplexity(self) -> float | None:
        return perplexity([e.prob for e in self.events])

    @property
    def context_used(self) -> int:
        return self.prompt_tokens + self.timing.tokens

    def add(self, events: list[TokenEvent]) -> None:
        """Streamed tokens: their text, and the events for colouring and the token cursor."""
        self.text += "".join(e.text for e in events)
        if self.info.vocab_size <= KEEP_LOGITS_MAX_VOCAB:
            self.events.extend(events)
        else:  # 200 kB a token for GPT-2's vocabulary: keep the top candidates only
            self.events.extend(dataclasses.replace(e, logits=None) for e in events)


@dataclass(eq=False)
class Document:
    """A prompt and its generations; continuations add runs, regenerating replaces the last."""

    prompt: str
    view: DocumentView
    runs: list[Run] = field(default_factory=list)
    number: int = 0  # its place in the session (0, 1, ...), kept in the session's records

    @property
    def text(self) -> str:
        return self.prompt + "".join(r.text for r in self.runs)

    @property
    def events(self) -> list[TokenEvent]:
        return [e for r in self.runs for e in r.events]

    @property
    def text_before_last(self) -> str:
        """What the last run was fed: the text to regenerate it from."""
        return self.prompt + "".join(r.text for r in self.runs[:-1])
