"""Generation: sampling, stopping and the block-size window, written once for every backend.

A backend supplies a ``Decoder`` (one sequence's model state: ``feed(ids) -> next-token logits``);
``Generation`` turns it into a stream of ``TokenEvent``. The PyTorch decoders are in
model.generate.torch_backend, the ONNX Runtime one in export.ort_backend.

Three ways to drive it. As an iterator, each ``next()`` samples a token with the current settings.
Step by step, a caller reads ``next_logits()`` and hands any token it likes to ``accept()`` (step
mode lets the user pick a candidate). From outside, a caller that runs the forward passes itself
(model.generate.batched, one pass for many generations) asks ``to_feed()`` what the model must see
next and hands the logits to ``sample_from()``. All go through ``accept``, the one place a
``TokenEvent`` is built, so the text, held multi-byte pieces, stop strings and end-of-text are
handled alike.

The window. Positions are learned and absolute (``wpe`` has block_size rows), so once a sequence
has filled block_size positions the cache cannot slide: every cached key was computed at a
position that would have to shift by one. Instead, when the next token does not fit, the decoder
is reset and re-prefilled with the last half of the window (block_size // 2 tokens, the new one
included), and decoding carries on from there. The model thus always sees between half a window
and a full window of context. The cost stays low on average: one prefill of block_size // 2
tokens per block_size // 2 generated tokens, i.e. one prefilled token per generated token, and a
prefill runs all its tokens through each weight matrix in one batched matmul, which is far cheaper
per token than a decode step.

Decoding is lazy: a token is fed to the model only when the logits after it are asked for, so
stopping (by the caller, max_new_tokens, a stop string) never pays for a forward pass it discards.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from model.generate.backend import Candidate, Decoder, Settings, StopReason, TokenEvent
from model.generate.sampling import choose, recent_ids, top_candidates
from model.tokenizer import Tokenizer

N_TOP = 5  # top candidates reported with every token (the TUI shows them)
# A BPE token can end inside a multi-byte character; hold its text back until the character is
# complete. A UTF-8 character has at most 4 bytes, so after 3 held tokens it is not coming.
_INCOMPLETE = "\ufffd"
_MAX_HELD = 3


class Generation:
    """The tokens for one prompt over one decoder: model.generate.backend.TokenStream, and step by step.

    ``settings`` is read anew before every token, so a UI may replace it mid-way (the seed only
    counts at the start: it seeds this generation's random generator). The text of the prompt is
    not repeated in the output; an end-of-text token ends the stream without being yielded; the
    token that completes a stop string is yielded, then the stream ends.
    """

    def __init__(self, decoder: Decoder, tokenizer: Tokenizer, prompt: str, settings: Settings,
                 prompt_ids: list[int] | None = None):
        self.decoder: Decoder | None = decoder  # None once finished: the cache can be freed
        self.tokenizer = tokenizer
        self.settings = settings
        self.block_size = decoder.block_size
        # ``prompt_ids``, when given, are the context as ids already (step mode's undo): encoding the
        # text again could cut it otherwise than the tokens that were taken
        if prompt_ids is None:
            # an empty prompt starts a new document, as the model saw after every end-of-text marker
            prompt_ids = tokenizer.encode(prompt, settings.unknown) if prompt else [tokenizer.eot_id]
        # older text would fall outside the window the model can see anyway
        self.prompt_ids = list(prompt_ids)[-self.block_size:]
        self.ids: list[int] = []  # generated so far
        self.counts: dict[int, int] = {}  # how often each id in ``ids`` occurs: the frequency penalty's
        self.text = ""  # their text, without the prompt
        self.stop_reason: StopReason | None = None
        self._held: list[int] = []  # ids whose text waits for the rest of a character
        self._logits: torch.Tensor | None = None  # the next token's, until a token is accepted
        self._fed = 0  # positions the decoder holds since this generation last reset it
        self.generator = torch.Generator()
        if settings.seed is None:
            self.generator.seed()  # fresh randomness from the OS
        else:
            self.generator.manual_seed(settings.seed)

    def __iter__(self) -> Generation:
        return self

    def __next__(self) -> TokenEvent:
        if self.ended():
            raise StopIteration
        s = self.settings  # once per token: a UI may have replaced it
        logits = self.next_logits()  # (V,) float32
        token = choose(logits, self.generator, s, self.recent(), self.counts)
        event = self.accept(token)
        # stop strings are the stream's rule, not accept's: step mode takes tokens past them
        if event.text and any(stop in self.text[-(len(stop) + len(event.text)):] for stop in s.stop):
            self._finish("stop_string")
        return event

    def ended(self) -> bool:
        """Whether the stream is over; reaching max_new_tokens ends it here, before a forward pass."""
        if self.stop_reason is None and len(self.ids) >= self.settings.max_new_tokens:
            self._finish("max_tokens")
        return self.stop_reason is not None

    def to_feed(self) -> tuple[list[int], bool]:
        """What the model must see for the next token's logits, as (ids, start_over): the prompt,
        the last accepted token, or the last half of a full window (see the module docstring).
        ``start_over``: the ids begin a fresh cache instead of following the positions it holds."""
        if not self.ids:
            return self.prompt_ids, True
        if self._fed < self.block_size:
            return self.ids[-1:], False
        keep = max(1, self.block_size // 2)
        return (self.prompt_ids + self.ids)[-keep:], True

    def sample_from(self, logits: torch.Tensor) -> TokenEvent:
        """The next event, as ``next()`` gives it, from logits (V,) computed elsewhere for what
        ``to_feed()`` named (a batch's shared pass): this generation's decoder is not fed.
        Raises StopIteration where ``next()`` does."""
        self._took(self.to_feed(), logits)
        return next(self)

    def _took(self, fed: tuple[list[int], bool], logits: torch.Tensor) -> None:
        ids, start_over = fed
        self._fed = len(ids) if start_over else self._fed + len(ids)
        self._logits = logits

    def recent(self) -> list[int]:
        """The ids the repetition penalty looks at for the next token (the context's last ones)."""
        # only the window's worth of each: joining the whole context would copy it every token
        window = self.settings.repetition_window
        return recent_ids(self.prompt_ids[-window:] + self.ids[-window:], self.settings)

    def next_logits(self) -> torch.Tensor:
        """The raw logits (V,) for the next token: one forward pass, then cached until ``accept``.

        Feeds the decoder what it has not seen yet (the prompt, or the last accepted token, or the
        last half of the window when it is full; see the module docstring). Raises StopIteration
        once the stream has ended."""
        if self._logits is not None:
            return self._logits
        decoder = self.decoder  # a local reference: close() may run from another thread
        if decoder is None:  # finished, or closed meanwhile by another thread
            raise StopIteration
        ids, start_over = fed = self.to_feed()
        if start_over:
            decoder.reset()  # a decoder may be reused: start from an empty cache
        self._took(fed, decoder.feed(ids))
        return self._logits

    def accept(self, token: int) -> TokenEvent:
        """Append ``token`` (sampled or chosen) to the output and return its event.

        End-of-text ends the stream instead (stop_reason "eot") and raises StopIteration: it is
        never yielded. Stop strings are applied by the iterator, not here."""
        logits = self.next_logits()
        if not 0 <= token < logits.numel():
            raise ValueError(f"token id {token} is outside the vocabulary [0, {logits.numel()})")
        if token == self.tokenizer.eot_id:
            self._finish("eot")
            raise StopIteration
        probs = F.softmax(logits, dim=-1)  # the model's own view, before temperature and filters
        top = tuple(Candidate(i, self.tokenizer.decode([i]), p) for i, p in top_candidates(probs, N_TOP))
        event = TokenEvent(index=len(self.ids), id=token, text=self._piece(token),
                           prob=float(probs[token]), top=top, logits=logits)
        self.ids.append(token)
        self.counts[token] = self.counts.get(token, 0) + 1  # kept as it goes: no recount per token
        self.text += event.text
        self._logits = None  # the next step's logits need this token fed
        return event

    def close(self) -> None:
        """Stop early and release the decoder (its cache); further ``next()`` calls end at once."""
        if self.stop_reason is None:
            self._finish("stopped")

    def _piece(self, token: int) -> str:
        """The new text this token completes ("" while a multi-byte character is unfinished)."""
        pending = self._held + [token]
        text = self.tokenizer.decode(pending)
        if text.endswith(_INCOMPLETE) and len(pending) <= _MAX_HELD:
            self._held = pending
            return ""
        self._held = []
        return text

    def _finish(self, reason: StopReason) -> None:
        self.stop_reason = reason
        self.decoder = None
        self._logits = None
