"""Generation: sampling, stopping and the block-size window, written once for every backend.

A backend supplies a ``Decoder`` (one sequence's model state: ``feed(ids) -> next-token logits``);
``Generation`` turns it into a stream of ``TokenEvent``. Here: the PyTorch decoders (with the KV
cache, and nanoGPT-style recompute for tests and benchmarks) and the PyTorch ``Backend``.

The window. Positions are learned and absolute (``wpe`` has block_size rows), so once a sequence
has filled block_size positions the cache cannot slide: every cached key was computed at a
position that would have to shift by one. Instead, when the next token does not fit, the decoder
is reset and re-prefilled with the last half of the window (block_size // 2 tokens, the new one
included), and decoding carries on from there. The model thus always sees between half a window
and a full window of context. The cost stays low on average: one prefill of block_size // 2
tokens per block_size // 2 generated tokens, i.e. one prefilled token per generated token, and a
prefill runs all its tokens through each weight matrix in one batched matmul, which is far cheaper
per token than a decode step.

Decoding is lazy: a sampled token is fed to the model only when the next one is asked for, so
stopping (by the caller, max_new_tokens, a stop string) never pays for a forward pass it discards.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch.nn import functional as F

from model.backend import Backend, BackendInfo, Candidate, Decoder, Settings, StopReason, TokenEvent
from model.checkpoint import load_model
from model.gpt import GPT, Bigram
from model.kv_cache import KVCache
from model.sampling import sample, top_candidates
from model.tokenizer import CharTokenizer, Tokenizer
from model.train import Device, resolve_device

N_TOP = 5  # top candidates reported with every token (the TUI shows them)
# A BPE token can end inside a multi-byte character; hold its text back until the character is
# complete. A UTF-8 character has at most 4 bytes, so after 3 held tokens it is not coming.
_INCOMPLETE = "\ufffd"
_MAX_HELD = 3


class Generation:
    """The tokens for one prompt, sampled one per ``next()``; see model.backend.Generation.

    ``settings`` is read anew before every token, so a UI may replace it mid-way (the seed only
    counts at the start: it seeds this generation's random generator). The text of the prompt is
    not repeated in the output; an end-of-text token ends the stream without being yielded; the
    token that completes a stop string is yielded, then the stream ends.
    """

    def __init__(self, decoder: Decoder, tokenizer: Tokenizer, prompt: str, settings: Settings):
        self.decoder: Decoder | None = decoder  # None once finished: the cache can be freed
        self.tokenizer = tokenizer
        self.settings = settings
        self.block_size = decoder.block_size
        # an empty prompt starts a new document, as the model saw after every end-of-text marker
        ids = tokenizer.encode(prompt, settings.unknown) if prompt else [tokenizer.eot_id]
        # older text would fall outside the window the model can see anyway
        self.prompt_ids = ids[-self.block_size:]
        self.ids: list[int] = []  # generated so far
        self.text = ""  # their text, without the prompt
        self.stop_reason: StopReason | None = None
        self._held: list[int] = []  # ids whose text waits for the rest of a character
        self._logits: torch.Tensor | None = None  # the next token's, until one is accepted
        self.generator = torch.Generator()
        if settings.seed is None:
            self.generator.seed()  # fresh randomness from the OS
        else:
            self.generator.manual_seed(settings.seed)

    def __iter__(self) -> Generation:
        return self

    def __next__(self) -> TokenEvent:
        decoder = self.decoder  # a local reference: close() may run from another thread
        if self.stop_reason is not None or decoder is None:
            raise StopIteration
        s = self.settings  # once per token: a UI may have replaced it
        if len(self.ids) >= s.max_new_tokens:
            self._finish("max_tokens")
            raise StopIteration
        token = sample(self._logits_from(decoder), self.generator, s.temperature, s.top_k, s.top_p)
        if token == self.tokenizer.eot_id:
            self._finish("eot")
            raise StopIteration
        event = self.accept(token)
        if event.text and any(stop in self.text[-(len(stop) + len(event.text)):] for stop in s.stop):
            self._finish("stop_string")
        return event

    def next_logits(self) -> torch.Tensor:
        """Raw logits (V,) for the next token: computed when first asked, kept until ``accept``."""
        decoder = self.decoder
        if decoder is None:
            raise ValueError("this generation has ended; start a new one")
        return self._logits_from(decoder)

    def accept(self, token: int) -> TokenEvent:
        """Append ``token`` (sampled, or chosen by someone) and describe it: the one place a
        TokenEvent is built. Stopping rules are the iterator's, not applied here."""
        # the cached logits first: close() from another thread must not fail a sampled token
        logits = self._logits if self._logits is not None else self.next_logits()
        if not 0 <= token < logits.numel():
            raise ValueError(f"token id {token} is outside the vocabulary [0, {logits.numel()})")
        probs = F.softmax(logits, dim=-1)  # the model's own view, before temperature and filters
        top = tuple(Candidate(i, self.tokenizer.decode([i]), p) for i, p in top_candidates(probs, N_TOP))
        event = TokenEvent(index=len(self.ids), id=token, text=self._piece(token),
                           prob=float(probs[token]), top=top, logits=logits)
        self.ids.append(token)
        self.text += event.text
        self._logits = None
        return event

    def close(self) -> None:
        """Stop early and release the decoder (its cache); further ``next()`` calls end at once."""
        if self.stop_reason is None:
            self._finish("stopped")

    def _logits_from(self, decoder: Decoder) -> torch.Tensor:
        if self._logits is None:
            self._logits = self._next_logits(decoder)
        return self._logits

    def _next_logits(self, decoder: Decoder) -> torch.Tensor:
        """Feed what the decoder has not seen yet; return the logits (V,) for the next token."""
        if not self.ids:
            decoder.reset()  # a decoder may be reused: start from an empty cache
            return decoder.feed(self.prompt_ids)
        if decoder.pos < self.block_size:
            return decoder.feed(self.ids[-1:])
        # the window is full: re-prefill with its last half (see the module docstring)
        keep = max(1, self.block_size // 2)
        context = (self.prompt_ids + self.ids)[-keep:]
        decoder.reset()
        return decoder.feed(context)

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


def generate_batch(backend: Backend, prompts: Sequence[str], settings: Settings) -> list[str]:
    """The generated text for each prompt, one sequence after another.

    A per-sequence loop, not a padded batch. A padded batch is faster: bench/batch.py measures
    2.6x the loop's tokens/s for 4 prompts and 4.7x for 8 on the shipped model (greedy, the same
    tokens). The loop is kept for now because each result is then exactly what ``backend.stream``
    gives for that prompt alone (its seed, its settings, its stop strings, its block-size window),
    items can be written out in order as each finishes, and every backend supports it unchanged.
    A batched path would need per-row samplers, stopping and re-prefill; it is the next step if
    batch throughput matters.
    """
    return ["".join(event.text for event in backend.stream(prompt, settings)) for prompt in prompts]


def _ready(model: GPT | Bigram, device: torch.device | str | None) -> GPT | Bigram:
    """The model on device (default: where its weights are), in eval mode: dropout off."""
    device = device if device is not None else next(model.parameters()).device
    return model.to(device).eval()


class TorchDecoder:
    """A PyTorch GPT or bigram with a KV cache: the prompt in one pass, then one position a token."""

    def __init__(self, model: GPT | Bigram, device: torch.device | str | None = None):
        self.model = _ready(model, device)
        weight = next(self.model.parameters())
        self.device = weight.device
        self.block_size = model.config.block_size
        self.cache = KVCache(model.config, 1, self.device, weight.dtype)

    @property
    def pos(self) -> int:
        return self.cache.pos

    def reset(self) -> None:
        self.cache.reset()

    @torch.inference_mode()
    def feed(self, ids: list[int]) -> torch.Tensor:
        idx = torch.tensor([ids], device=self.device)  # (1, T)
        logits, _ = self.model(idx, cache=self.cache)  # (1, T, V); the cache advances by T
        return logits[0, -1].float().cpu()  # sampling runs on the CPU, the same on every device


class RecomputeDecoder:
    """No cache: every feed re-runs the model over the whole window, as nanoGPT's ``generate``.

    The reference the cached decoder is tested against, and the benchmark's baseline."""

    def __init__(self, model: GPT | Bigram, device: torch.device | str | None = None):
        self.model = _ready(model, device)
        self.device = next(self.model.parameters()).device
        self.block_size = model.config.block_size
        self.window: list[int] = []

    @property
    def pos(self) -> int:
        return len(self.window)

    def reset(self) -> None:
        self.window = []

    @torch.inference_mode()
    def feed(self, ids: list[int]) -> torch.Tensor:
        if self.pos + len(ids) > self.block_size:
            raise ValueError(
                f"{self.pos} + {len(ids)} positions exceed block_size {self.block_size}; "
                "reset() and re-feed the last part of the context (model.engine does this)"
            )
        self.window += ids
        logits, _ = self.model(torch.tensor([self.window], device=self.device))  # (1, pos, V)
        return logits[0, -1].float().cpu()


class TorchBackend:
    """model.backend.Backend over a PyTorch model: each stream gets its own decoder and cache."""

    def __init__(
        self, model: GPT | Bigram, tokenizer: Tokenizer, name: str = "<model>", meta: dict | None = None
    ):
        self.model = _ready(model, None)
        self.tokenizer = tokenizer
        self.name = name
        self.meta = dict(meta or {})

    def info(self) -> BackendInfo:
        config = self.model.config
        return BackendInfo(
            backend="torch",
            name=self.name,
            vocab_size=config.vocab_size,
            block_size=config.block_size,
            device=str(next(self.model.parameters()).device),
            vocab=self.tokenizer.chars if isinstance(self.tokenizer, CharTokenizer) else None,
            config=config.to_dict(),
            meta=self.meta,
        )

    def unknown_chars(self, prompt: str) -> list[str]:
        return self.tokenizer.unknown_chars(prompt)

    def decoder(self) -> TorchDecoder:
        return TorchDecoder(self.model)

    def torch_model(self) -> GPT | Bigram:
        return self.model

    def stream(self, prompt: str, settings: Settings) -> Generation:
        # a fresh cache per stream (a few MB): streams never share state, and closing one frees it
        return Generation(TorchDecoder(self.model), self.tokenizer, prompt, settings)


def load_backend(path: str | Path, device: Device = "cpu") -> TorchBackend:
    """A slim or full training checkpoint -> a PyTorch backend on cpu, cuda, mps (or auto)."""
    model, tokenizer, meta = load_model(path, resolve_device(device))
    return TorchBackend(model, tokenizer, name=str(path), meta=meta)
